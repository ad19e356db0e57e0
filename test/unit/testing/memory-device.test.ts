import assert from 'node:assert/strict';
import { EIO, ENOENT } from '../../../src/base/errno';
import { MemoryDevice, memoryDeviceOpener } from '../../../src/testing/memory-device';

describe('memdev: MemoryDevice', () => {
  it('reads back what was written, with readv/writev over several buffers', async () => {
    const device = new MemoryDevice(8);
    const data = Buffer.alloc(1024, 0x42);
    assert.equal(await device.write(data, 2, false), 1024);
    const parts = [Buffer.alloc(512), Buffer.alloc(1024)];
    assert.equal(await device.readv(parts, 1), 1536);
    assert.ok(parts[0]!.every((b) => b === 0));
    assert.deepEqual(parts[1], data);
    assert.equal(await device.writev([Buffer.alloc(512, 1), Buffer.alloc(512, 2)], 6, false), 1024);
    assert.deepEqual([device.contents[6 * 512], device.contents[7 * 512]], [1, 2]);
    assert.deepEqual([device.calls.write, device.calls.readv, device.calls.writev], [1, 1, 1]);
  });

  it('tracks whether writes since the last flush are durable; FUA writes need no flush', async () => {
    const device = new MemoryDevice(8);
    assert.equal(device.isFlushed, true);
    await device.write(Buffer.alloc(512), 0, true);
    assert.equal(device.isFlushed, true);
    assert.equal(device.fuaWriteCount, 1);
    await device.write(Buffer.alloc(512), 0, false);
    assert.equal(device.isFlushed, false);
    await device.flush();
    assert.equal(device.isFlushed, true);
  });

  it('discard and writeZeroes zero exactly their range', async () => {
    const device = new MemoryDevice(8);
    device.contents.fill(0xff);
    await device.discard(1, 2);
    await device.writeZeroes(5, 1, true);
    const zeroed = (sector: number) => device.contents.subarray(sector * 512, sector * 512 + 512).every((b) => b === 0);
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map(zeroed), [false, true, true, false, false, true, false, false]);
  });

  it('fails I/O past the end with EIO and rejects a partial-sector buffer', async () => {
    const device = new MemoryDevice(8);
    assert.equal(await device.read(Buffer.alloc(1024), 7), -EIO);
    await assert.rejects(device.read(Buffer.alloc(100), 0), RangeError);
  });

  it('fails an operation with an injected errno until cleared', async () => {
    const device = new MemoryDevice(8);
    device.failOp('write', EIO);
    assert.equal(await device.write(Buffer.alloc(512, 9), 0, false), -EIO);
    assert.equal(device.contents[0], 0, 'a failed write changes nothing');
    device.failOp('write', null);
    assert.equal(await device.write(Buffer.alloc(512), 0, false), 512);
  });

  it('holds chosen operations at a gate until released', async () => {
    const device = new MemoryDevice(8);
    const gate = device.hold(['read']);
    let done = false;
    const read = device.read(Buffer.alloc(512), 0).then((r) => ((done = true), r));
    await gate.whenWaiting(1);
    assert.equal(gate.waitingCount, 1);
    assert.equal(await device.write(Buffer.alloc(512), 0, false), 512, 'writes are not held');
    assert.equal(done, false);
    gate.release();
    assert.equal(await read, 512);
  });

  it('hands out handles that close on their own; the opener fails unknown names with ENOENT', async () => {
    const device = new MemoryDevice(8);
    const open = memoryDeviceOpener({ disk: device });
    const first = await open('disk');
    const second = await open('disk');
    assert.equal(device.openHandleCount, 2);
    await first.close();
    await first.close();
    assert.equal(device.openHandleCount, 1);
    await assert.rejects(first.read(Buffer.alloc(512), 0), /closed handle/);
    assert.equal(await second.read(Buffer.alloc(512), 0), 512);
    await assert.rejects(open('missing'), (error: NodeJS.ErrnoException) => error.errno === ENOENT);
  });
});
