import { strict as assert } from 'node:assert';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { formatQueueReport, queuesReached, type QueueCell, type QueueReport } from '../../../tools/bench-queues';

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

describe('bench queues: the table of medians', () => {
  it('prints each ratio to 1 queue with the range of its rounds, and marks one that shrank', () => {
    const cell = (queues: number, roundIops: number[], ratioToOneQueue: number, roundRatiosToOneQueue: number[]): QueueCell => ({
      device: 'null', queueLoop: 'default', queues, pattern: 'randread', iops: roundIops[1], cpuMicrosPerIo: 20, roundIops, ratioToOneQueue, roundRatiosToOneQueue,
    });
    const report: QueueReport = {
      cpus: 2, possibleCpus: 4, fioJobs: 2, iodepthPerJob: 16, depth: 128, rounds: 3, skippedQueueCounts: [], queuesReached: { 1: 1, 2: 1, 4: 2 },
      results: [cell(1, [100, 100, 100], NaN, []), cell(2, [120, 110, 90], 1.1, [1.2, 1.1, 0.9]), cell(4, [80, 90, 95], 0.9, [0.8, 0.9, 0.95])],
    };
    const text = formatQueueReport(report);
    assert.match(text, /medians of 3 rounds/);
    assert.match(text, /x1\.10 0\.90-1\.20/);
    assert.match(text, /x0\.90! 0\.80-0\.95/);
  });
});
