import assert from 'node:assert/strict';
import { EIO, EOPNOTSUPP } from '../../../src/base/errno';
import { MemoryDevice, memoryDeviceOpener } from '../../../src/testing/memory-device';
import { IoOp } from '../../../src/io/bio';
import { TargetError, type MapOutcome, type Target, type TargetContext, type TargetType } from '../../../src/dm/target';
import type { Bio } from '../../../src/io/bio';
import { TableError } from '../../../src/dm/table';
import { loadMemoryTable, testScope } from '../../../src/testing/tables';
import { DeviceEvents } from '../../../src/dm/mapped-device';
import { builtInTargetTypes } from '../../../src/targets';
import { TargetTypeRegistry } from '../../../src/dm/scope';
import { errorTargetType } from '../../../src/targets/error';
import { linearTargetType } from '../../../src/targets/linear';
import { nullTargetType } from '../../../src/targets/null';
import { zeroTargetType } from '../../../src/targets/zero';

const NO_DATA = new Uint8Array(0);

function io(op: IoOp, sector: number, sectorCount: number, data: Uint8Array = NO_DATA, fua = false, noUnmap = false): Bio {
  return { op, sector, sectorCount, data, fua, noUnmap };
}

function contextFor(devices: Record<string, MemoryDevice>, startSector: number, lengthSectors: number): TargetContext {
  return { startSector, lengthSectors, scope: testScope(), device: new DeviceEvents('test'), openDevice: memoryDeviceOpener(devices) };
}

/** A target's answer to one piece of I/O, as a promise. */
function mapped(target: Target, bio: Bio): Promise<MapOutcome> {
  return new Promise((resolve) => target.map(bio, resolve));
}

/** Asserts that creating `type` with `args` fails with exactly `message`. */
async function rejectsWithTargetError(
  type: TargetType,
  ctx: TargetContext,
  args: string[],
  message: string | RegExp,
): Promise<void> {
  await assert.rejects(type.create(ctx, args), (error: unknown) => {
    assert.ok(error instanceof TargetError, `expected TargetError, got ${String(error)}`);
    if (typeof message === 'string') assert.equal(error.message, message);
    else assert.match(error.message, message);
    return true;
  });
}

function pattern(byteLength: number, seed: number): Buffer {
  const buf = Buffer.alloc(byteLength);
  for (let i = 0; i < byteLength; i++) buf[i] = (i * 7 + seed) & 0xff;
  return buf;
}

describe('targets: registry', () => {
  it('the built-in types are linear, striped, zero, error, null, flakey, delay, log-writes, the snapshot family and mirror', () => {
    assert.deepEqual(new TargetTypeRegistry(builtInTargetTypes).names(), ['delay', 'error', 'flakey', 'linear', 'log-writes', 'mirror', 'null', 'snapshot', 'snapshot-merge', 'snapshot-origin', 'striped', 'zero']);
  });

  it('refuses a second type with a registered name', () => {
    const registry = new TargetTypeRegistry(builtInTargetTypes);
    assert.throws(() => registry.register({ name: 'zero', create: zeroTargetType.create }), /already registered/);
  });

  it('two scopes do not share registrations', () => {
    const custom = { name: 'custom', create: zeroTargetType.create };
    const one = testScope([custom]);
    assert.equal(one.targetTypes.get('custom'), custom);
    assert.equal(testScope().targetTypes.get('custom'), undefined);
  });
});

describe('targets: linear', () => {
  it('rejects one argument: Invalid argument count', async () => {
    await rejectsWithTargetError(linearTargetType, contextFor({}, 0, 8), ['disk'], 'Invalid argument count');
  });

  it('rejects three arguments: Invalid argument count', async () => {
    const disk = new MemoryDevice(64);
    await rejectsWithTargetError(linearTargetType, contextFor({ disk }, 0, 8), ['disk', '0', '1'], 'Invalid argument count');
  });

  for (const offset of ['x', '-1', '1.5', '0x10', '', '99999999999999999999']) {
    it(`rejects offset ${JSON.stringify(offset)}: Invalid device sector`, async () => {
      const disk = new MemoryDevice(64);
      await rejectsWithTargetError(linearTargetType, contextFor({ disk }, 0, 8), ['disk', offset], 'Invalid device sector');
      assert.equal(disk.openHandleCount, 0, 'the sector is checked before the device is opened');
    });
  }

  it('rejects a missing device: Device lookup failed with the cause', async () => {
    await rejectsWithTargetError(linearTargetType, contextFor({}, 0, 8), ['/nope', '0'], 'Device lookup failed: open /nope: ENOENT');
  });

  it('rejects an area past the device end: Device too small for target', async () => {
    const disk = new MemoryDevice(64, { tableName: '7:3' });
    await rejectsWithTargetError(
      linearTargetType,
      contextFor({ disk }, 0, 8),
      ['disk', '57'],
      'Device too small for target: 7:3 start=57, len=8, dev_size=64',
    );
  });

  it('accepts an area ending exactly at the device end', async () => {
    const disk = new MemoryDevice(64);
    const target = await linearTargetType.create(contextFor({ disk }, 0, 8), ['disk', '56']);
    assert.equal(target.type, 'linear');
  });

  it('rejects an offset not aligned to a 4096-byte logical block', async () => {
    const disk = new MemoryDevice(64, { tableName: '7:4', logicalBlockBytes: 4096 });
    await rejectsWithTargetError(
      linearTargetType,
      contextFor({ disk }, 0, 8),
      ['disk', '3'],
      'start=3 not aligned to h/w logical block size 4096 of 7:4',
    );
  });

  it('maps reads and writes at offset + target sector, passing fua on', async () => {
    const disk = new MemoryDevice(64);
    const target = await linearTargetType.create(contextFor({ disk }, 100, 16), ['disk', '10']);
    const data = pattern(1024, 3);
    assert.equal(await mapped(target, io(IoOp.Write, 2, 2, data, true)), 1024);
    assert.deepEqual(disk.contents.subarray(12 * 512, 14 * 512), data);
    assert.equal(disk.fuaWriteCount, 1);
    const back = Buffer.alloc(1024);
    assert.equal(await mapped(target, io(IoOp.Read, 2, 2, back)), 1024);
    assert.deepEqual(back, data);
  });

  it('passes flush, discard and write-zeroes through to the device', async () => {
    const disk = new MemoryDevice(64);
    disk.contents.fill(0xaa);
    const target = await linearTargetType.create(contextFor({ disk }, 0, 32), ['disk', '8']);
    await mapped(target, io(IoOp.Write, 0, 1, pattern(512, 1)));
    assert.equal(disk.isFlushed, false);
    assert.equal(await mapped(target, io(IoOp.Flush, 0, 0)), 0);
    assert.equal(disk.isFlushed, true);
    assert.equal(await mapped(target, io(IoOp.Discard, 1, 2)), 0);
    assert.ok(disk.contents.subarray(9 * 512, 11 * 512).every((b) => b === 0));
    assert.equal(await mapped(target, io(IoOp.WriteZeroes, 4, 1, NO_DATA, false, true)), 0);
    assert.ok(disk.contents.subarray(12 * 512, 13 * 512).every((b) => b === 0));
    assert.equal(disk.contents[11 * 512], 0xaa, 'sector past the discard untouched');
    assert.deepEqual(
      [disk.calls.flush, disk.calls.discard, disk.calls.writeZeroes],
      [1, 1, 1],
    );
  });

  it('passes the device error back unchanged', async () => {
    const disk = new MemoryDevice(64);
    disk.failOp('read', EIO);
    const target = await linearTargetType.create(contextFor({ disk }, 0, 8), ['disk', '0']);
    assert.equal(await mapped(target, io(IoOp.Read, 0, 1, Buffer.alloc(512))), -EIO);
  });

  it('prints TABLE as "<dev> <offset>" and INFO empty', async () => {
    const disk = new MemoryDevice(64, { tableName: '8:16' });
    const target = await linearTargetType.create(contextFor({ disk }, 0, 8), ['disk', '24']);
    assert.equal(target.status('table'), '8:16 24');
    assert.equal(target.status('info'), '');
    assert.equal(target.devices().length, 1);
  });

  it('a failing linear line names the line in the table error', async () => {
    await assert.rejects(loadMemoryTable('0 8 zero\n8 8 linear disk', {}), (error: unknown) => {
      assert.ok(error instanceof TableError);
      assert.equal(error.message, 'line 2: linear: Invalid argument count');
      return true;
    });
  });
});

describe('targets: zero', () => {
  let target: Target;
  before(async () => {
    target = await zeroTargetType.create(contextFor({}, 0, 8), []);
  });

  it('rejects arguments: No arguments required', async () => {
    await rejectsWithTargetError(zeroTargetType, contextFor({}, 0, 8), ['x'], 'No arguments required');
  });

  it('fills reads with zeroes', async () => {
    const buf = Buffer.alloc(1024, 0xff);
    assert.equal(await mapped(target, io(IoOp.Read, 3, 2, buf)), 1024);
    assert.ok(buf.every((b) => b === 0));
  });

  it('accepts writes and drops them', async () => {
    const data = Buffer.alloc(512, 0x11);
    assert.equal(await mapped(target, io(IoOp.Write, 0, 1, data)), 512);
    const back = Buffer.alloc(512, 0xff);
    await mapped(target, io(IoOp.Read, 0, 1, back));
    assert.ok(back.every((b) => b === 0));
  });

  it('succeeds discard and flush', async () => {
    assert.equal(await mapped(target, io(IoOp.Discard, 0, 8)), 0);
    assert.equal(await mapped(target, io(IoOp.Flush, 0, 0)), 0);
  });

  it('fails write-zeroes with EOPNOTSUPP', async () => {
    assert.equal(await mapped(target, io(IoOp.WriteZeroes, 0, 8)), -EOPNOTSUPP);
  });

  it('has empty status strings', () => {
    assert.equal(target.status('table'), '');
    assert.equal(target.status('info'), '');
  });
});

describe('targets: error', () => {
  it('takes no arguments and fails every data operation with EIO', async () => {
    const target = await errorTargetType.create(contextFor({}, 0, 8), []);
    assert.equal(await mapped(target, io(IoOp.Read, 0, 1, Buffer.alloc(512))), -EIO);
    assert.equal(await mapped(target, io(IoOp.Write, 0, 1, Buffer.alloc(512))), -EIO);
    assert.equal(await mapped(target, io(IoOp.Discard, 0, 8)), -EIO);
    assert.equal(await mapped(target, io(IoOp.WriteZeroes, 0, 8)), -EIO);
  });

  it('completes flush with 0', async () => {
    const target = await errorTargetType.create(contextFor({}, 0, 8), []);
    assert.equal(await mapped(target, io(IoOp.Flush, 0, 0)), 0);
  });

  it('with <dev> <offset> opens and validates the device but still fails I/O without touching it', async () => {
    const disk = new MemoryDevice(64);
    const target = await errorTargetType.create(contextFor({ disk }, 0, 8), ['disk', '8']);
    assert.equal(target.devices().length, 1);
    assert.equal(await mapped(target, io(IoOp.Read, 0, 1, Buffer.alloc(512))), -EIO);
    assert.equal(disk.calls.read, 0);
    assert.equal(target.status('table'), '');
  });

  it('with <dev> <offset>: a missing device is Device lookup failed', async () => {
    await rejectsWithTargetError(errorTargetType, contextFor({}, 0, 8), ['/nope', '0'], /^Device lookup failed: /);
  });

  it('with <dev> <offset>: a bad offset is Invalid device sector', async () => {
    const disk = new MemoryDevice(64);
    await rejectsWithTargetError(errorTargetType, contextFor({ disk }, 0, 8), ['disk', 'z'], 'Invalid device sector');
  });

  it('with <dev> <offset>: an area past the end is Device too small for target', async () => {
    const disk = new MemoryDevice(4, { tableName: '1:1' });
    await rejectsWithTargetError(
      errorTargetType,
      contextFor({ disk }, 0, 8),
      ['disk', '0'],
      'Device too small for target: 1:1 start=0, len=8, dev_size=4',
    );
  });

  it('ignores other argument counts, as the kernel does', async () => {
    const target = await errorTargetType.create(contextFor({}, 0, 8), ['a', 'b', 'c']);
    assert.deepEqual(target.devices(), []);
  });
});

describe('targets: null (not a kernel target)', () => {
  it('rejects arguments', async () => {
    await rejectsWithTargetError(nullTargetType, contextFor({}, 0, 8), ['x'], 'No arguments required');
  });

  it('completes every operation without touching data', async () => {
    const target = await nullTargetType.create(contextFor({}, 0, 8), []);
    const buf = Buffer.alloc(1024, 0x5a);
    assert.equal(await mapped(target, io(IoOp.Read, 0, 2, buf)), 1024);
    assert.ok(buf.every((b) => b === 0x5a), 'read left the buffer alone');
    assert.equal(await mapped(target, io(IoOp.Write, 0, 2, buf)), 1024);
    assert.equal(await mapped(target, io(IoOp.Flush, 0, 0)), 0);
    assert.equal(await mapped(target, io(IoOp.Discard, 0, 8)), 0);
    assert.equal(await mapped(target, io(IoOp.WriteZeroes, 0, 8)), 0);
  });
});
