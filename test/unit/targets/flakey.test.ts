import assert from 'node:assert/strict';
import { EIO } from '../../../src/base/errno';
import { IoOp, NO_DATA, type Bio } from '../../../src/io/bio';
import { DaemonScope } from '../../../src/dm/scope';
import { TableError, buildTable, parseTableText } from '../../../src/dm/table';
import type { MapOutcome, Target } from '../../../src/dm/target';
import { builtInTargetTypes, queueThreadTargetTypes } from '../../../src/targets';
import { FlakeyTarget, FlakeyView, KERNEL_OPF, parseFlakeyFeatures } from '../../../src/targets/flakey';
import type { Clock } from '../../../src/base/clock';
import { DeviceEvents } from '../../../src/dm/mapped-device';
import { isServedByQueueThreads, tablePlan } from '../../../src/daemon/queue-threads';
import { ManualClock } from '../../../src/testing/manual-clock';
import { MemoryDevice, memoryDeviceOpener } from '../../../src/testing/memory-device';
import { loadMemoryTable, submitted } from '../../../src/testing/tables';

function bio(op: IoOp, sector: number, sectorCount: number, data: Uint8Array = NO_DATA, fua = false): Bio {
  return { op, sector, sectorCount, data, fua, noUnmap: false };
}

const mapped = (target: Target, b: Bio) => submitted<MapOutcome>((x, done) => target.map(x, done), b);

async function flakey(args: string, disk = new MemoryDevice(64, { tableName: '254:5' })) {
  const clock = new ManualClock();
  const scope = new DaemonScope({ targetTypes: builtInTargetTypes, clock });
  const table = await loadMemoryTable(`0 64 flakey disk ${args}`, { disk }, { scope });
  return { clock, disk, target: table.segments[0]!.target as FlakeyTarget };
}

async function loadError(args: string): Promise<string> {
  const disk = new MemoryDevice(64);
  try {
    await loadMemoryTable(`0 64 flakey disk ${args}`, { disk });
  } catch (error) {
    assert.ok(error instanceof TableError, String(error));
    return error.reason.replace(/^flakey: /, '');
  }
  assert.fail(`flakey ${args} loaded`);
}

describe('targets: flakey', () => {
  it('is up for <up> whole seconds from construction, then down for <down>, and round again', async () => {
    const { clock, target } = await flakey('0 5 2');
    const states: boolean[] = [];
    for (let second = 0; second < 14; second++) {
      states.push(target.isDown);
      clock.advance(1000);
    }
    // up 0-4, down 5-6, up 7-11, down 12-13
    assert.deepEqual(states.map((down) => (down ? 'D' : 'u')).join(''), 'uuuuuDDuuuuuDD');
  });

  it('with no features, fails reads and writes while down and passes them while up', async () => {
    const { clock, disk, target } = await flakey('0 1 1');
    const data = Buffer.alloc(512, 7);
    assert.equal(await mapped(target, bio(IoOp.Write, 3, 1, data)), 512);
    clock.advance(1000);
    assert.equal(await mapped(target, bio(IoOp.Write, 4, 1, data)), -EIO);
    assert.equal(await mapped(target, bio(IoOp.Read, 3, 1, Buffer.alloc(512))), -EIO);
    assert.equal(await mapped(target, bio(IoOp.Flush, 0, 0)), -EIO);
    assert.equal(disk.contents[4 * 512], 0);
    clock.advance(1000);
    const back = Buffer.alloc(512);
    assert.equal(await mapped(target, bio(IoOp.Read, 3, 1, back)), 512);
    assert.deepEqual(back, data);
  });

  it('drop_writes: writes, flushes and discards succeed while down and change nothing; reads still pass', async () => {
    const { clock, disk, target } = await flakey('0 0 1 1 drop_writes');
    disk.contents.fill(1, 0, 512);
    assert.equal(await mapped(target, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 9))), 512);
    assert.equal(await mapped(target, bio(IoOp.Flush, 0, 0)), 0);
    assert.equal(await mapped(target, bio(IoOp.Discard, 0, 1)), 0);
    assert.equal(disk.contents[0], 1);
    assert.deepEqual([disk.calls.write, disk.calls.flush, disk.calls.discard], [0, 0, 0]);
    const back = Buffer.alloc(512);
    assert.equal(await mapped(target, bio(IoOp.Read, 0, 1, back)), 512);
    assert.equal(back[0], 1);
    clock.advance(5000); // always down: up is 0
    assert.ok(target.isDown);
  });

  it('error_writes fails writes but lets reads through; error_reads fails reads but lets writes through', async () => {
    const w = await flakey('0 0 1 1 error_writes');
    assert.equal(await mapped(w.target, bio(IoOp.Write, 0, 1, Buffer.alloc(512))), -EIO);
    assert.equal(await mapped(w.target, bio(IoOp.Read, 0, 1, Buffer.alloc(512))), 512);
    const r = await flakey('0 0 1 1 error_reads');
    assert.equal(await mapped(r.target, bio(IoOp.Read, 0, 1, Buffer.alloc(512))), -EIO);
    assert.equal(await mapped(r.target, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 3))), 512);
    assert.equal(r.disk.contents[0], 3);
  });

  it('corrupt_bio_byte w: writes a copy with byte N replaced, the caller\'s buffer untouched', async () => {
    const { disk, target } = await flakey('0 0 5 5 corrupt_bio_byte 32 w 1 0');
    const data = Buffer.alloc(1024, 0x55);
    assert.equal(await mapped(target, bio(IoOp.Write, 2, 2, data)), 1024);
    assert.equal(data[31], 0x55);
    assert.equal(disk.contents[2 * 512 + 31], 1);
    assert.equal(disk.contents.subarray(2 * 512, 4 * 512).filter((b) => b !== 0x55).length, 1);
  });

  it('corrupt_bio_byte r: a successful read comes back with byte N replaced; flags must all match', async () => {
    const { disk, target } = await flakey('0 0 5 5 corrupt_bio_byte 1 r 255 0');
    disk.contents.fill(0x11, 0, 512);
    const back = Buffer.alloc(512);
    await mapped(target, bio(IoOp.Read, 0, 1, back));
    assert.equal(back[0], 255);
    assert.equal(disk.contents[0], 0x11);

    const fuaOnly = await flakey(`0 0 5 5 corrupt_bio_byte 1 w 255 ${KERNEL_OPF.fua}`);
    await mapped(fuaOnly.target, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 2)));
    assert.equal(fuaOnly.disk.contents[0], 2, 'a write without FUA is not corrupted');
    await mapped(fuaOnly.target, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 2), true));
    assert.equal(fuaOnly.disk.contents[0], 255, 'a FUA write is');
  });

  it('corrupt_bio_byte past the end of a piece changes nothing', async () => {
    const { disk, target } = await flakey('0 0 5 5 corrupt_bio_byte 513 w 1 0');
    await mapped(target, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 4)));
    assert.ok(disk.contents.subarray(0, 512).every((b) => b === 4));
  });

  it('random_write_corrupt 1000000000 replaces exactly one byte of every write while down', async () => {
    const { disk, target } = await flakey('0 0 2 2 random_write_corrupt 1000000000');
    const data = Buffer.alloc(4096, 0);
    await mapped(target, bio(IoOp.Write, 0, 8, data));
    // The random value may be 0 (the byte's own value) once in 256: allow at most one difference.
    assert.ok(disk.contents.subarray(0, 4096).filter((b) => b !== 0).length <= 1);
    assert.ok(data.every((b) => b === 0));
    const pinned = new FlakeyTarget(disk.open(), 0, { upSeconds: 0, downSeconds: 1 },
      parseFlakeyFeatures(['2', 'random_write_corrupt', '1000000000']), new ManualClock(), (bound) => (bound === 256 ? 0xee : bound === 4096 ? 100 : 0));
    await mapped(pinned, bio(IoOp.Write, 0, 8, data));
    assert.equal(disk.contents[100], 0xee);
  });

  it('table status prints the features in the kernel order, with implied ones (targets.md §10)', async () => {
    assert.equal((await flakey('0 5 5')).target.status('table'), '254:5 0 5 5 2 error_reads error_writes');
    assert.equal((await flakey('0 5 5 1 drop_writes')).target.status('table'), '254:5 0 5 5 1 drop_writes');
    assert.equal((await flakey('0 5 5 0')).target.status('table'), '254:5 0 5 5 2 error_reads error_writes');
    assert.equal(
      (await flakey('8 1 2 8 random_write_corrupt 7 ERROR_READS corrupt_bio_byte 3 W 9 0', new MemoryDevice(128, { tableName: '254:5' }))).target.status('table'),
      '254:5 8 1 2 8 error_reads corrupt_bio_byte 3 w 9 0 random_write_corrupt 7',
    );
    assert.equal((await flakey('0 1 2 3 random_read_corrupt 5 drop_writes')).target.status('table'), '254:5 0 1 2 3 drop_writes random_read_corrupt 5');
    assert.equal((await flakey('0 5 5')).target.status('info'), '');
  });

  const errors: Array<[string, string]> = [
    ['0 5', 'Invalid argument count'],
    ['x 5 5', 'Invalid device sector'],
    ['0 x 5', 'Invalid up interval'],
    ['0 5 -1', 'Invalid down interval'],
    ['0 0 0', 'Total (up + down) interval is zero'],
    ['0 4294967295 1', 'Interval overflow'],
    ['0 5 5 12', 'Invalid number of feature args'],
    ['0 5 5 2 drop_writes', 'Invalid number of feature args'],
    ['0 5 5 1 bogus', 'Unrecognised flakey feature requested'],
    ['0 5 5 2 drop_writes drop_writes', 'Feature drop_writes duplicated'],
    ['0 5 5 2 error_writes drop_writes', 'Feature drop_writes conflicts with feature error_writes'],
    ['0 5 5 2 drop_writes error_writes', 'Feature error_writes conflicts with feature drop_writes'],
    ['0 5 5 2 error_reads error_reads', 'Feature error_reads duplicated'],
    ['0 5 5 4 corrupt_bio_byte 1 w 0', 'Feature corrupt_bio_byte requires 4 parameters'],
    ['0 5 5 5 corrupt_bio_byte 0 w 0 0', 'Invalid corrupt bio byte'],
    ['0 5 5 5 corrupt_bio_byte 1 x 0 0', 'Invalid corrupt bio direction (r or w)'],
    ['0 5 5 5 corrupt_bio_byte 1 w 256 0', 'Invalid corrupt value to write into bio byte (0-255)'],
    ['0 5 5 5 corrupt_bio_byte 1 w 0 x', 'Invalid corrupt bio flags mask'],
    ['0 5 5 1 random_read_corrupt', 'Feature random_read_corrupt requires a parameter'],
    ['0 5 5 2 random_read_corrupt 1000000001', 'Invalid random corrupt argument'],
    ['0 5 5 6 drop_writes corrupt_bio_byte 1 w 0 0', 'drop_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the WRITE flag set'],
    ['0 5 5 3 error_writes random_write_corrupt 1', 'error_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the WRITE flag set'],
    ['0 5 5 6 error_reads corrupt_bio_byte 1 r 0 0', 'error_reads is incompatible with random_read_corrupt or corrupt_bio_byte with the READ flag set'],
  ];
  for (const [args, message] of errors) {
    it(`flakey ${args}: ${message}`, async () => {
      assert.equal(await loadError(args), message);
    });
  }

  it('a missing device fails after the arguments are checked: Device lookup failed', async () => {
    await assert.rejects(loadMemoryTable('0 64 flakey nope 0 1 1', {}), /flakey: Device lookup failed: open nope: ENOENT/);
  });
});

describe('flakey: a queue thread\'s view', () => {
  /** The owner's flakey table, and a queue thread's copy built from its plan on a clock that counts from another origin, as a worker's does. */
  async function rig(args: string) {
    const disk = new MemoryDevice(64, { tableName: '254:5' });
    const ownerClock = new ManualClock();
    ownerClock.advance(5_000); // the table is loaded some time after the owner thread started
    const owner = await loadMemoryTable(`0 64 flakey disk ${args}`, { disk }, { scope: new DaemonScope({ targetTypes: builtInTargetTypes, clock: ownerClock }) });
    assert.equal(isServedByQueueThreads(owner), true, 'a flakey table goes to the queue threads');
    const plan = tablePlan(owner);
    assert.ok(plan !== null && plan.views !== undefined);
    // The thread builds its copy 1.5 s into the schedule (a resume, say), and started 3.5 s after
    // the owner thread: its nowMs() reads 3500 less.
    ownerClock.advance(1_500);
    const workerClock: Clock = { nowMs: () => ownerClock.nowMs() - 3_500, timeOriginMs: ownerClock.timeOriginMs + 3_500, setTimer: ownerClock.setTimer.bind(ownerClock) };
    const copy = await buildTable(parseTableText(plan.text), {
      scope: new DaemonScope({ targetTypes: queueThreadTargetTypes, clock: workerClock }),
      device: new DeviceEvents('f'),
      openDevice: memoryDeviceOpener({ '254:5': disk }),
      queueViews: { shares: new Map(plan.views.map((view) => [view.startSector, view.share])), forward: () => assert.fail('a flakey view forwards nothing') },
    });
    const view = copy.segments[0]!.target;
    assert.ok(view instanceof FlakeyView);
    return { clock: ownerClock, disk, owner: owner.segments[0]!.target as FlakeyTarget, view };
  }

  it('goes down and up with its owner, counted from the owner\'s start, and serves every request itself', async () => {
    const { clock, disk, owner, view } = await rig('0 2 1 1 drop_writes');
    const states: Array<[boolean, boolean]> = [];
    for (let step = 0; step < 3; step++) {
      if (step > 0) clock.advance(500);
      states.push([owner.isDown, view.isDown]);
    }
    // 1.5 to 2.5 s after the owner's start: up for 2 s, then down.
    assert.deepEqual(states, [[false, false], [true, true], [true, true]]);
    assert.equal(await mapped(view, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 7))), 512);
    assert.equal(disk.contents[0], 0, 'the write was dropped while down');
    clock.advance(500);
    assert.equal(view.isDown, false);
    assert.equal(await mapped(view, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 7))), 512);
    assert.equal(disk.contents[0], 7, 'up again at 3 s: the write landed');
    assert.equal(view.status('table'), owner.status('table'));
  });

  it('serves in place (a tmpfs file) only while up, where it is linear', async () => {
    const { clock, view } = await rig('0 2 1');
    // The view's own handle of the device, made to answer as a tmpfs file's does.
    Object.assign(view.devices()[0]!, { inPlaceAddress: (sector: number) => 0x40000 + sector * 512 });
    assert.equal(view.inPlaceAddress!(8, 4096, 'read'), 0x40000 + 8 * 512, 'up at 1.5 s');
    assert.equal(view.inPlaceAddress!(8, 4096, 'write'), 0x40000 + 8 * 512);
    clock.advance(500);
    assert.equal(view.inPlaceAddress!(8, 4096, 'read'), 0, 'down at 2 s: mapped, so that it fails');
    assert.equal(view.inPlaceAddress!(8, 4096, 'write'), 0);
  });

  it('is built only with its owner\'s start', async () => {
    await assert.rejects(
      buildTable(parseTableText('0 64 flakey disk 0 1 1'), {
        scope: new DaemonScope({ targetTypes: queueThreadTargetTypes, clock: new ManualClock() }),
        device: new DeviceEvents('f'),
        openDevice: memoryDeviceOpener({ disk: new MemoryDevice(64) }),
      }),
      /flakey: a queue thread views flakey only with its owner's start/,
    );
  });
});

