import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { adoptPunchCounter, countPunch, punchCount, sharedPunchCounter } from '../../../src/io/punch-count';

describe('punch-count: the hole punches every thread of the process counts', () => {
  it("counts a punch made in another thread that adopted this thread's counter", async () => {
    const before = punchCount();
    const modulePath = path.join(__dirname, '../../../src/io/punch-count.js');
    const worker = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       const counting = require(workerData.modulePath);
       counting.adoptPunchCounter(workerData.counter);
       counting.countPunch();
       parentPort.postMessage(counting.punchCount());`,
      { eval: true, workerData: { modulePath, counter: sharedPunchCounter() } },
    );
    const seenThere = await new Promise<number>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    assert.equal(seenThere, (before + 1) | 0);
    assert.equal(punchCount(), (before + 1) | 0, 'seen here');
    assert.equal(countPunch(), (before + 1) | 0, 'countPunch returns the count before it');
  });

  it('refuses a counter other threads cannot see', () => {
    assert.throws(() => adoptPunchCounter(new Int32Array(1)), /SharedArrayBuffer/);
  });
});
