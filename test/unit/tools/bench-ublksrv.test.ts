import { strict as assert } from 'node:assert';

import { cServerRatios, type CoreCell } from '../../../tools/bench-core';
import { checkUblksrv, serverPidOfListing } from '../../../tools/bench-ublksrv';

describe('bench: the C server (ublksrv) beside ours', () => {
  it('reads the server pid from `ublk list`, and says so when there is none', () => {
    const listing =
      'dev id 90: nr_hw_queues 1 queue_depth 128 block size 512 dev_capacity 524288000\n' +
      '\tmax rq size 524288 daemon pid 4242 flags 0x42 state LIVE\n';
    assert.equal(serverPidOfListing(90, listing), 4242);
    assert.throws(() => serverPidOfListing(90, 'no device 90'), /ublksrv device 90: no daemon pid/);
  });

  it('refuses a --ublksrv path that is not ublksrv\'s ublk program', () => {
    assert.throws(() => checkUblksrv('/nonexistent/sbin/ublk'), /--ublksrv: \/nonexistent\/sbin\/ublk is not an executable/);
  });

  it('sets ours over the C server and the C server over the kernel, cell by cell', () => {
    const cell = (device: CoreCell['device'], iops: number, queueLoop?: 'threads'): CoreCell =>
      ({ device, pattern: 'randread', iodepth: 1, iops, roundIops: [iops], meanLatencyUs: 0, ...(queueLoop ? { queueLoop } : {}) });
    const results = [
      cell('null_blk', 1000), cell('ublksrv-null', 100), cell('null', 50, 'threads'),
      cell('loop', 400), cell('ublksrv-loop', 200), cell('linear', 300, 'threads'),
      cell('dm-linear', 800), cell('ublksrv-loop-dev', 400), cell('linear-loop', 100, 'threads'),
    ];
    const ratios = cServerRatios(results, ['threads']).filter((r) => r.pattern === 'randread' && r.iodepth === 1);
    const find = (of: string, over: string) => ratios.find((r) => r.of === of && r.over === over)?.ratio;
    assert.equal(find('ours', 'ublksrv-null'), 0.5);
    assert.equal(find('ours', 'ublksrv-loop'), 1.5);
    assert.equal(find('ublksrv', 'null_blk'), 0.1);
    assert.equal(find('ublksrv', 'loop'), 0.5);
    // Our linear over the loop device against the C server's loop over the same device.
    assert.equal(find('ours', 'ublksrv-loop-dev'), 0.25);
    assert.equal(find('ublksrv', 'dm-linear'), 0.5);
    // A cell not measured is NaN (printed as '-'), never a made-up number.
    assert.ok(cServerRatios(results, ['threads']).some((r) => r.pattern === 'randwrite' && Number.isNaN(r.ratio)));
  });
});
