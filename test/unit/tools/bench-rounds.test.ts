import { strict as assert } from 'node:assert';

import { coreRatios, cServerRatios, formatCoreReport, mergeRounds, type CoreReport, type CoreRun } from '../../../tools/bench-core';
import { formatSpread, median, roundOrder, roundRatios } from '../../../tools/bench-rounds';

describe('bench: cells measured in rounds', () => {
  it('takes the median of an odd or even count, leaving out what was not measured', () => {
    assert.equal(median([5, 1, 3]), 3);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.equal(median([7, NaN]), 7);
    assert.ok(Number.isNaN(median([])));
  });

  it('pairs ratios round by round, and prints their range only when there are two or more', () => {
    assert.deepEqual(roundRatios([10, 20, 30], [5, 40]), [2, 0.5]);
    assert.equal(formatSpread([0.5, 2, 1.25]), '0.50-2.00');
    assert.equal(formatSpread([0.5]), '');
    assert.equal(formatSpread([NaN, 0.7, 0.9]), '0.70-0.90');
  });

  it('runs every other round in the reverse order', () => {
    assert.deepEqual(roundOrder(['a', 'b', 'c'], 0), ['a', 'b', 'c']);
    assert.deepEqual(roundOrder(['a', 'b', 'c'], 1), ['c', 'b', 'a']);
    assert.deepEqual(roundOrder(['a', 'b', 'c'], 2), ['a', 'b', 'c']);
  });

  it('merges a cell\'s runs into medians and keeps each round\'s IOPS in round order', () => {
    const run = (round: number, device: CoreRun['device'], iops: number, cpu?: number): CoreRun => ({
      round, device, pattern: 'randread', iodepth: 1, iops, meanLatencyUs: Math.round(1e6 / iops),
      ...(device === 'null' ? { queueLoop: 'default' as const } : {}),
      ...(cpu !== undefined ? { cpuMicrosPerIo: cpu, userMicrosPerIo: cpu / 2, systemMicrosPerIo: cpu / 2, sleepsPerIo: 1 } : {}),
    });
    // Runs arrive in the order the rounds ran them, devices interleaved.
    const cells = mergeRounds([
      run(0, 'null_blk', 80000), run(0, 'null', 4000, 250), run(1, 'null', 6000, 150), run(1, 'null_blk', 50000),
      run(2, 'null_blk', 70000), run(2, 'null', 5000, 200),
    ]);
    assert.equal(cells.length, 2);
    const ours = cells.find((c) => c.device === 'null');
    const kernel = cells.find((c) => c.device === 'null_blk');
    assert.deepEqual(ours?.roundIops, [4000, 6000, 5000]);
    assert.equal(ours?.iops, 5000);
    assert.equal(ours?.cpuMicrosPerIo, 200);
    assert.equal(ours?.queueLoop, 'default');
    assert.deepEqual(kernel?.roundIops, [80000, 50000, 70000]);
    assert.equal(kernel?.iops, 70000);
    assert.equal(kernel?.cpuMicrosPerIo, undefined, 'the kernel\'s devices have no server to measure');
  });

  it('gives every ratio its rounds, and prints the medians\' ratio with their range', () => {
    const cell = (device: CoreRun['device'], rounds: number[], queueLoop?: 'default') => mergeRounds(rounds.map((iops, round) => ({
      round, device, pattern: 'randread' as const, iodepth: 1, iops, meanLatencyUs: 0, ...(queueLoop ? { queueLoop } : {}),
    })));
    const results = [
      ...cell('null_blk', [1000, 2000, 1000]), ...cell('ublksrv-null', [100, 100, 200]), ...cell('null', [50, 100, 100], 'default'),
    ];
    const ratios = cServerRatios(results, ['default']);
    const oursOverServer = ratios.find((r) => r.of === 'ours' && r.over === 'ublksrv-null' && r.pattern === 'randread' && r.iodepth === 1);
    assert.equal(oursOverServer?.ratio, 1);
    assert.deepEqual(oursOverServer?.roundRatios, [0.5, 1, 0.5]);
    const report: CoreReport = {
      backingMiB: 1024, runtimeSeconds: 4, rounds: 3, queues: 1, depth: 128, loopDirectIo: true, results, ratios: [],
      ublksrv: '/x/ublk', cServerRatios: ratios, daemonMemory: {}, idleCpuPercent: {}, schedulers: { null_blk: 'none', 'ublksrv-null': 'none' },
    };
    const text = formatCoreReport(report);
    assert.match(text, /I\/O schedulers: null_blk none, ublksrv-null none/);
    assert.match(text, /ours null \(default\) \/ ublksrv null\s+1\.00 0\.50-1\.00/);
    assert.match(text, /median IOPS of 3 rounds/);
    // Cells never measured print '-', not a number.
    assert.match(text, /ours null \(default\) \/ ublksrv null\s+1\.00 0\.50-1\.00\s+-\s+-\s+-/);
  });

  it('sets our linear over the loop device beside dm-linear over it, in its own table', () => {
    const cell = (device: CoreRun['device'], rounds: number[], queueLoop?: 'default') => mergeRounds(rounds.map((iops, round) => ({
      round, device, pattern: 'randread' as const, iodepth: 1, iops, meanLatencyUs: 0,
      ...(queueLoop ? { queueLoop, cpuMicrosPerIo: 300, userMicrosPerIo: 100, systemMicrosPerIo: 200, sleepsPerIo: 2.5 } : {}),
    })));
    const results = [...cell('dm-linear', [4000, 5000, 6000]), ...cell('linear-loop', [1000, 2500, 1500], 'default')];
    const report: CoreReport = {
      backingMiB: 1024, runtimeSeconds: 4, rounds: 3, queues: 1, depth: 128, loopDirectIo: true, results, ratios: [],
      ublksrv: null, cServerRatios: [], daemonMemory: { default: { rssMiB: 70, peakMiB: 72, anonHugePagesMiB: 0, mappedBackingMiB: 0, ownMiB: 70 } }, idleCpuPercent: { default: 1 }, schedulers: {},
    };
    report.ratios.push(...coreRatios(results, ['default']));
    const ratio = report.ratios.find((r) => r.ours === 'linear-loop' && r.kernel === 'dm-linear' && r.pattern === 'randread' && r.iodepth === 1);
    assert.equal(ratio?.ratio, 0.3);
    assert.deepEqual(ratio?.roundRatios, [0.25, 0.5, 0.25]);
    assert.match(formatCoreReport(report), /randread\s+1\s+5000\s+1500\s+0\.30 0\.25-0\.50\s+\| 300, 2\.5/);
  });
});
