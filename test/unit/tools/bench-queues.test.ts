import { strict as assert } from 'node:assert';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { queuesReached } from '../../../tools/bench-queues';

/** A /sys/block/DEV/mq tree: one cpu_list per hardware queue, as blk-mq writes it. */
function mqTree(cpuLists: readonly string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'ublkdm-mq-'));
  cpuLists.forEach((list, queue) => {
    mkdirSync(join(dir, String(queue)));
    writeFileSync(join(dir, String(queue), 'cpu_list'), `${list}\n`);
  });
  return dir;
}

describe('bench queues: the queues fio reaches', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('counts the queues whose CPUs include a submitter: 2 queues over 4 possible CPUs reach one from CPUs 0 and 1', () => {
    const twoQueues = mqTree(['0, 1', '2, 3']);
    const fourQueues = mqTree(['0', '1', '2', '3']);
    dirs.push(twoQueues, fourQueues);
    assert.equal(queuesReached(twoQueues, [0, 1]), 1);
    assert.equal(queuesReached(fourQueues, [0, 1]), 2);
    assert.equal(queuesReached(twoQueues, [0, 1, 2, 3]), 2);
  });

  it('says nothing when sysfs does not', () => {
    assert.equal(queuesReached(join(tmpdir(), 'no-such-mq-dir-ublkdm'), [0]), undefined);
  });
});
