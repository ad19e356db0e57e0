import { strict as assert } from 'node:assert';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { cServerQueueRatios, formatQueueReport, queueCells, queuesReached, type QueueCell, type QueueReport, type QueueRun } from '../../../tools/bench-queues';

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
      cServerRatios: [],
    };
    const text = formatQueueReport(report);
    assert.match(text, /medians of 3 rounds/);
    assert.match(text, /x1\.10 0\.90-1\.20/);
    assert.match(text, /x0\.90! 0\.80-0\.95/);
    assert.doesNotMatch(text, /C server/);
  });
});

describe('bench queues: merging the rounds into cells', () => {
  const run = (device: QueueRun['device'], queues: number, pattern: 'randread' | 'randwrite', iops: number, cpuMicrosPerIo = 10): QueueRun => ({
    device, ...(device.startsWith('ublksrv') ? {} : { queueLoop: 'default' as const }), queues, pattern, iops, cpuMicrosPerIo,
  });

  it('takes each cell\'s medians, keeps its rounds in order, and sets each against the same device and pattern with 1 queue', () => {
    // Three rounds, the devices in reverse order in the middle one (as roundOrder runs them).
    const runs: QueueRun[] = [
      run('null', 1, 'randread', 100, 20), run('null', 2, 'randread', 150, 30), run('linear', 1, 'randread', 50), run('null', 1, 'randwrite', 40),
      run('null', 2, 'randread', 90, 10), run('null', 1, 'randread', 120, 40), run('linear', 1, 'randread', 70), run('null', 1, 'randwrite', 60),
      run('null', 1, 'randread', 80, 30), run('null', 2, 'randread', 160, 50), run('linear', 1, 'randread', 60), run('null', 1, 'randwrite', 50),
    ];
    const cells = queueCells(runs);
    assert.equal(cells.length, 4);
    const find = (device: string, queues: number, pattern: string): QueueCell =>
      cells.find((c) => c.device === device && c.queues === queues && c.pattern === pattern) ?? assert.fail(`${device} ${queues}q ${pattern}`);
    const two = find('null', 2, 'randread');
    assert.deepEqual(two.roundIops, [150, 90, 160]);
    assert.equal(two.iops, 150);
    assert.equal(two.cpuMicrosPerIo, 30);
    assert.equal(two.ratioToOneQueue, 150 / 100);
    assert.deepEqual(two.roundRatiosToOneQueue, [1.5, 90 / 120, 2]);
    const one = find('null', 1, 'randread');
    assert.deepEqual(one.roundIops, [100, 120, 80]);
    assert.equal(one.ratioToOneQueue, 1);
    // Another device or pattern is never the 1-queue reference: each of these is its own.
    const linear = find('linear', 1, 'randread');
    assert.equal(linear.iops, 60);
    assert.equal(linear.ratioToOneQueue, 1);
    assert.deepEqual(linear.roundRatiosToOneQueue, [1, 1, 1]);
    const write = find('null', 1, 'randwrite');
    assert.equal(write.iops, 50);
    assert.equal(write.ratioToOneQueue, 1);
  });

  it('gives a cell whose 1-queue device was never measured no ratio, rather than one against another cell', () => {
    const [cell] = queueCells([run('null', 2, 'randread', 100), run('null', 1, 'randwrite', 50)]);
    assert.ok(Number.isNaN(cell.ratioToOneQueue));
    assert.deepEqual(cell.roundRatiosToOneQueue, []);
  });
});

describe('bench queues: against the C server', () => {
  const run = (device: QueueRun['device'], queues: number, iops: number): QueueRun => ({
    device, ...(device.startsWith('ublksrv') ? {} : { queueLoop: 'threads' as const }), queues, pattern: 'randread', iops, cpuMicrosPerIo: 10,
  });
  // Two rounds; in each, ours and the C server's with 1 and 2 queues.
  const runs = [
    run('null', 1, 100), run('ublksrv-null', 1, 200), run('null', 2, 150), run('ublksrv-null', 2, 100), run('linear', 1, 50), run('ublksrv-loop', 1, 50),
    run('null', 1, 120), run('ublksrv-null', 1, 150), run('null', 2, 170), run('ublksrv-null', 2, 200), run('linear', 1, 70), run('ublksrv-loop', 1, 35),
  ];

  it('sets each of our cells against its counterpart with as many queues, never against another queue count or target', () => {
    const cells = queueCells(runs);
    // The C server's cells are their own, each with its own ratio to 1 queue.
    const theirs = cells.find((c) => c.device === 'ublksrv-null' && c.queues === 2) ?? assert.fail('ublksrv-null 2q');
    assert.equal(theirs.queueLoop, undefined);
    assert.equal(theirs.ratioToOneQueue, 150 / 175);
    const ratios = cServerQueueRatios(cells);
    assert.equal(ratios.length, 3);
    const find = (device: string, queues: number) => ratios.find((r) => r.device === device && r.queues === queues) ?? assert.fail(`${device} ${queues}q`);
    assert.equal(find('null', 1).ratio, 110 / 175);
    assert.deepEqual(find('null', 1).roundRatios, [0.5, 0.8]);
    assert.equal(find('null', 2).ratio, 160 / 150);
    assert.deepEqual(find('null', 2).roundRatios, [1.5, 0.85]);
    assert.deepEqual(find('linear', 1).roundRatios, [1, 2]);
    assert.equal(find('linear', 1).queueLoop, 'threads');
  });

  it('has no ratio for a cell whose counterpart did not run', () => {
    assert.deepEqual(cServerQueueRatios(queueCells([run('null', 1, 100), run('ublksrv-loop', 1, 100)])), []);
  });

  it('prints the C server\'s rows beside ours and the ratios below', () => {
    const cells = queueCells(runs);
    const report: QueueReport = {
      cpus: 2, possibleCpus: 4, fioJobs: 2, iodepthPerJob: 16, depth: 128, rounds: 2, skippedQueueCounts: [], queuesReached: { 1: 1, 2: 2 },
      results: cells, cServerRatios: cServerQueueRatios(cells),
    };
    const text = formatQueueReport(report);
    assert.match(text, /^ublksrv-null -\s+randread\s+175 /m);
    assert.match(text, /C server's counterpart/);
    assert.match(text, /^null\s+threads randread\s+x0\.63 0\.50-0\.80\s+x1\.07 0\.85-1\.50/m);
  });
});
