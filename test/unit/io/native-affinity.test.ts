import { strict as assert } from 'node:assert';
import { Worker } from 'node:worker_threads';

import { nativeAddonPath } from '../../../src/base/package-files';
import { native } from '../../../src/io/native';

/** The addon's threadCpus / setThreadCpus: a queue thread places itself, and only itself. */
describe('native thread affinity', () => {
  it('moves the calling thread only: a worker pinned to one CPU leaves the thread that started it as it was', async () => {
    const before = native().threadCpus();
    assert.ok(before.length > 0 && before.every((cpu, i) => Number.isInteger(cpu) && (i === 0 || cpu > before[i - 1]!)), `not ascending CPUs: ${before}`);
    const last = before[before.length - 1]!;
    const seen = await new Promise<number[]>((resolve, reject) => {
      const worker = new Worker(
        `const { parentPort, workerData } = require('node:worker_threads');
         const addon = require(workerData.addon);
         addon.setThreadCpus([workerData.cpu]);
         parentPort.postMessage(addon.threadCpus());`,
        { eval: true, workerData: { addon: nativeAddonPath(), cpu: last } },
      );
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    assert.deepEqual(seen, [last]);
    assert.deepEqual(native().threadCpus(), before);
  });

  it('refuses a set with no online CPU (EINVAL), and CPUs that are not CPU numbers, changing nothing', () => {
    const before = native().threadCpus();
    assert.throws(() => native().setThreadCpus([1023]), (error: NodeJS.ErrnoException) => error.errno === 22 && /sched_setaffinity/.test(error.message));
    assert.throws(() => native().setThreadCpus([]), (error: NodeJS.ErrnoException) => error.errno === 22);
    for (const bad of [[-1], [1024], [0.5], ['0']]) {
      assert.throws(() => native().setThreadCpus(bad as number[]), /every CPU must be an integer from 0 to 1023/, String(bad));
    }
    assert.deepEqual(native().threadCpus(), before);
  });
});
