import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { EOPNOTSUPP } from '../../../src/base/errno';
import { MemoryDevice } from '../../../src/testing/memory-device';
import { PAGE_BYTES, SECTOR_BYTES } from '../../../src/base/units';
import {
  DM_IO_MAX_REGIONS, IOV_MAX, allocatePages, dmIo, dmIoAsync, dmIoAsyncBvec, dmIoAsyncVm, dmIoDiscard,
  dmIoSync, dmIoSyncBvec, dmIoSyncVm, dmIoWriteZeroes, flatMemory, type BioVecSegment, type ErrorBits, type IoRegion,
} from '../../../src/dmio';
import { FaultDevice } from '../../../src/testing/fault-device';

const DEVICE_SECTORS = 64 * 1024; // 32 MiB

/** Pages that each own their ArrayBuffer, so dm-io cannot merge them into one iovec. */
function separatePages(pageCount: number): Uint8Array[] {
  return Array.from({ length: pageCount }, () => new Uint8Array(randomBytes(PAGE_BYTES)));
}

function concat(views: readonly Uint8Array[]): Buffer {
  return Buffer.concat(views.map((view) => Buffer.from(view.buffer, view.byteOffset, view.byteLength)));
}

function deviceBytes(device: MemoryDevice, sector: number, sectorCount: number): Buffer {
  return device.contents.subarray(sector * SECTOR_BYTES, (sector + sectorCount) * SECTOR_BYTES);
}

function region(device: IoRegion['device'], sector: number, count: number): IoRegion {
  return { device, sector, count };
}

describe('dm-io', () => {
  describe('page list', () => {
    it('writes from an unaligned offset in the first page across page boundaries, byte for byte', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const pages = separatePages(4);
      const firstPageByteOffset = 1000;
      const count = 17; // 8704 bytes: the rest of page 0, all of page 1, part of page 2
      const bits = await dmIoSync([region(device, 333, count)], 'write', pages, firstPageByteOffset);
      assert.equal(bits, 0);
      const expected = concat(pages).subarray(firstPageByteOffset, firstPageByteOffset + count * SECTOR_BYTES);
      assert.deepEqual(deviceBytes(device, 333, count), expected);
      assert.ok(deviceBytes(device, 332, 1).every((b) => b === 0), 'sector before the region untouched');
      assert.ok(deviceBytes(device, 333 + count, 1).every((b) => b === 0), 'sector after the region untouched');
    });

    it('reads into an unaligned offset and leaves the bytes around the region alone', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      device.contents.set(randomBytes(device.contents.length));
      const pages = separatePages(3);
      const before = concat(pages);
      const firstPageByteOffset = 4095;
      const count = 9;
      const bits = await dmIoSync([region(device, 77, count)], 'read', pages, firstPageByteOffset);
      assert.equal(bits, 0);
      const after = concat(pages);
      const end = firstPageByteOffset + count * SECTOR_BYTES;
      assert.deepEqual(after.subarray(firstPageByteOffset, end), deviceBytes(device, 77, count));
      assert.deepEqual(after.subarray(0, firstPageByteOffset), before.subarray(0, firstPageByteOffset));
      assert.deepEqual(after.subarray(end), before.subarray(end));
    });

    it(`splits a region of more than IOV_MAX separate pages into several writev calls, cut at sector boundaries`, async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const pageCount = IOV_MAX + 300;
      const pages = separatePages(pageCount);
      const firstPageByteOffset = 100;
      const count = Math.floor((pageCount * PAGE_BYTES - firstPageByteOffset) / SECTOR_BYTES);
      const bits = await dmIoSync([region(device, 5, count)], 'write', pages, firstPageByteOffset);
      assert.equal(bits, 0);
      assert.equal(device.calls.writev, 2);
      const expected = concat(pages).subarray(firstPageByteOffset, firstPageByteOffset + count * SECTOR_BYTES);
      assert.ok(deviceBytes(device, 5, count).equals(expected));
    });

    it('merges adjacent pages of one slab into a single write', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const pages = allocatePages(IOV_MAX * 2);
      for (const page of pages) page.set(randomBytes(PAGE_BYTES));
      const count = pages.length * (PAGE_BYTES / SECTOR_BYTES);
      assert.equal(await dmIoSync([region(device, 0, count)], 'write', pages, 0), 0);
      assert.equal(device.calls.write + device.calls.writev, 1);
      assert.ok(deviceBytes(device, 0, count).equals(concat(pages)));
    });
  });

  describe('bio vector', () => {
    it('moves exactly the segment bytes, at odd offsets and lengths, both ways', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const backing = new Uint8Array(randomBytes(20000));
      const lengths = [1, 511, 2870, 700, 4096, 13, 1]; // 16 sectors
      const segments: BioVecSegment[] = [];
      let byteOffset = 3;
      for (const byteLength of lengths) {
        segments.push({ buffer: backing, byteOffset, byteLength });
        byteOffset += byteLength + 7; // gaps between segments must never be read or written
      }
      const totalBytes = lengths.reduce((a, b) => a + b, 0);
      assert.equal(totalBytes % SECTOR_BYTES, 0, 'test data is a whole number of sectors');
      const count = totalBytes / SECTOR_BYTES;
      const expected = concat(segments.map((s) => s.buffer.subarray(s.byteOffset, s.byteOffset + s.byteLength)));

      assert.equal(await dmIoSyncBvec([region(device, 1001, count)], 'write', segments), 0);
      assert.ok(deviceBytes(device, 1001, count).equals(expected));

      const target = new Uint8Array(20000).fill(0x5a);
      const readSegments = segments.map((s) => ({ ...s, buffer: target }));
      assert.equal(await dmIoSyncBvec([region(device, 1001, count)], 'read', readSegments), 0);
      for (const s of readSegments) {
        assert.deepEqual(target.subarray(s.byteOffset, s.byteOffset + s.byteLength), backing.subarray(s.byteOffset, s.byteOffset + s.byteLength));
        assert.equal(target[s.byteOffset + s.byteLength], 0x5a, 'the gap after a segment is untouched');
      }
      assert.equal(target[0], 0x5a);
    });

    it('maps a multi-segment region to one readv/writev', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const a = new Uint8Array(1024);
      const b = new Uint8Array(512);
      await dmIoSyncBvec([region(device, 0, 3)], 'write', [
        { buffer: a, byteOffset: 0, byteLength: 1024 }, { buffer: b, byteOffset: 0, byteLength: 512 },
      ]);
      assert.equal(device.calls.writev, 1);
      assert.equal(device.calls.write, 0);
    });
  });

  describe('flat buffer', () => {
    it('writes and reads a large buffer at an unaligned view offset', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const backing = new Uint8Array(randomBytes(4 * 1024 * 1024 + 1000));
      const view = backing.subarray(1000); // byteOffset 1000 into its ArrayBuffer
      const count = view.byteLength / SECTOR_BYTES;
      assert.equal(await dmIoSyncVm([region(device, 2048, count)], 'write', view), 0);
      assert.ok(deviceBytes(device, 2048, count).equals(view));
      const readBack = new Uint8Array(view.byteLength);
      assert.equal(await dmIoSyncVm([region(device, 2048, count)], 'read', readBack), 0);
      assert.deepEqual(readBack, view);
    });

    it('uses only the region\'s bytes of a longer buffer', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const data = new Uint8Array(randomBytes(4096));
      assert.equal(await dmIoSyncVm([region(device, 10, 2)], 'write', data), 0);
      assert.ok(deviceBytes(device, 10, 2).equals(data.subarray(0, 1024)));
      assert.ok(deviceBytes(device, 12, 6).every((b) => b === 0));
    });
  });

  describe('multi-region writes and error bits', () => {
    it('replays the buffer from its start for each region', async () => {
      const devices = [new MemoryDevice(DEVICE_SECTORS), new MemoryDevice(DEVICE_SECTORS), new MemoryDevice(DEVICE_SECTORS)];
      const pages = separatePages(3);
      const count = 20;
      const regions = [region(devices[0], 0, count), region(devices[1], 999, count), region(devices[2], 31, count)];
      assert.equal(await dmIoSync(regions, 'write', pages, 200), 0);
      const expected = concat(pages).subarray(200, 200 + count * SECTOR_BYTES);
      regions.forEach((r, i) => assert.ok(deviceBytes(devices[i], r.sector, count).equals(expected), `region ${i}`));
    });

    it('sets only the bit of the failed destination and still writes the others', async () => {
      const good0 = new MemoryDevice(DEVICE_SECTORS);
      const bad = new FaultDevice(new MemoryDevice(DEVICE_SECTORS)).failSectors('write', 105);
      const good2 = new MemoryDevice(DEVICE_SECTORS);
      const data = new Uint8Array(randomBytes(16 * SECTOR_BYTES));
      const bits = await dmIoSyncVm([region(good0, 100, 16), region(bad, 100, 16), region(good2, 100, 16)], 'write', data);
      assert.equal(bits, 0b010);
      assert.ok(deviceBytes(good0, 100, 16).equals(data));
      assert.ok(deviceBytes(good2, 100, 16).equals(data));
    });

    it('reports every failed region of a write at once', async () => {
      const inner = new MemoryDevice(DEVICE_SECTORS);
      const device = new FaultDevice(inner).failSectors('write', 50).failSectors('write', 300);
      const data = new Uint8Array(8 * SECTOR_BYTES);
      const regions = [region(device, 0, 8), region(device, 48, 8), region(device, 100, 8), region(device, 299, 8)];
      assert.equal(await dmIoSyncVm(regions, 'write', data), 0b1010);
    });

    it('fails a region when one piece of it fails, while its other pieces are written', async () => {
      const inner = new MemoryDevice(DEVICE_SECTORS);
      const device = new FaultDevice(inner);
      const pages = separatePages(IOV_MAX * 2); // two pieces of 1024 pages each
      const count = pages.length * 8;
      device.failSectors('write', count - 1); // in the second piece only
      assert.equal(await dmIoSync([region(device, 0, count)], 'write', pages, 0), 1);
      const firstPieceSectors = IOV_MAX * 8;
      assert.ok(deviceBytes(inner, 0, firstPieceSectors).equals(concat(pages.slice(0, IOV_MAX))));
      assert.ok(deviceBytes(inner, firstPieceSectors, 8).every((b) => b === 0), 'failed piece not written');
    });

    it('bit 31 is reported as a non-negative number', async () => {
      const good = new MemoryDevice(DEVICE_SECTORS);
      const bad = new FaultDevice(new MemoryDevice(DEVICE_SECTORS)).failAll('write');
      const regions = Array.from({ length: DM_IO_MAX_REGIONS }, (_, i) => region(i === 31 ? bad : good, i, 1));
      const bits = await dmIoSyncVm(regions, 'write', new Uint8Array(SECTOR_BYTES));
      assert.equal(bits, 2 ** 31);
    });

    it(`refuses more than ${DM_IO_MAX_REGIONS} regions`, () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const regions = Array.from({ length: DM_IO_MAX_REGIONS + 1 }, (_, i) => region(device, i, 1));
      assert.throws(() => dmIoAsyncVm(regions, 'write', new Uint8Array(SECTOR_BYTES), () => undefined, null), RangeError);
    });

    it('refuses memory shorter than a region', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      await assert.rejects(dmIoSyncVm([region(device, 0, 3)], 'write', new Uint8Array(1024)), RangeError);
    });
  });

  describe('reads', () => {
    it('zero-fills the buffer of a failed read and sets bit 0', async () => {
      const inner = new MemoryDevice(DEVICE_SECTORS);
      inner.contents.fill(0x11);
      const device = new FaultDevice(inner).failSectors('read', 10);
      const buffer = new Uint8Array(4 * SECTOR_BYTES).fill(0x77);
      assert.equal(await dmIoSyncVm([region(device, 8, 4)], 'read', buffer), 1);
      assert.ok(buffer.every((b) => b === 0), 'failed read buffer is zero-filled, not left scribbled');
    });

    it('zero-fills only the failed piece of a long page-list read', async () => {
      const inner = new MemoryDevice(DEVICE_SECTORS);
      inner.contents.fill(0x11);
      const device = new FaultDevice(inner).failSectors('read', 0);
      const pages = separatePages(IOV_MAX + 1);
      const count = pages.length * 8;
      assert.equal(await dmIoSync([region(device, 0, count)], 'read', pages, 0), 1);
      assert.ok(pages.slice(0, IOV_MAX).every((page) => page.every((b) => b === 0)));
      assert.ok(pages[IOV_MAX].every((b) => b === 0x11), 'the piece that succeeded holds the data');
    });

    it('refuses a read from two regions with bit 0, asynchronously, exactly once', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const calls: Array<[ErrorBits, string]> = [];
      dmIoAsyncVm([region(device, 0, 1), region(device, 1, 1)], 'read', new Uint8Array(1024), (bits, ctx) => calls.push([bits, ctx]), 'ctx');
      assert.equal(calls.length, 0, 'not called synchronously');
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(calls, [[1, 'ctx']]);
      assert.equal(device.calls.read + device.calls.readv, 0);
    });

    it('fails a short read (past the end of the device)', async () => {
      const device = new MemoryDevice(16);
      assert.equal(await dmIoSyncVm([region(device, 12, 8)], 'read', new Uint8Array(8 * SECTOR_BYTES)), 1);
    });
  });

  describe('async forms', () => {
    it('call notify(errorBits, context) exactly once for each memory kind', async () => {
      const good = new MemoryDevice(DEVICE_SECTORS);
      const bad = new FaultDevice(new MemoryDevice(DEVICE_SECTORS)).failAll('write');
      const regions = [region(good, 0, 2), region(bad, 0, 2)];
      const results: Array<[ErrorBits, number]> = [];
      const notify = (bits: ErrorBits, ctx: number): void => { results.push([bits, ctx]); };
      const data = new Uint8Array(PAGE_BYTES);
      dmIoAsync(regions, 'write', [data], 0, notify, 1);
      dmIoAsyncBvec(regions, 'write', [{ buffer: data, byteOffset: 0, byteLength: 1024 }], notify, 2);
      dmIoAsyncVm(regions, 'write', data, notify, 3);
      for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(results.sort((a, b) => a[1] - b[1]), [[0b10, 1], [0b10, 2], [0b10, 3]]);
    });
  });

  describe('count 0, flush, discard and write-zeroes', () => {
    it('skips count-0 regions', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      assert.equal(await dmIoSyncVm([region(device, 0, 0)], 'write', new Uint8Array(0)), 0);
      assert.equal(device.calls.write + device.calls.writev + device.calls.flush, 0);
    });

    it('flushes each device of a count-0 region when preflush is asked, and reports a failed flush', async () => {
      const a = new MemoryDevice(DEVICE_SECTORS);
      const b = new MemoryDevice(DEVICE_SECTORS);
      b.failOp('flush', 5);
      const bits = await dmIo({ op: 'write', memory: flatMemory(new Uint8Array(0)), preflush: true }, [region(a, 0, 0), region(b, 0, 0)]);
      assert.equal(bits, 0b10);
      assert.equal(a.calls.flush, 1);
      assert.equal(a.calls.write + a.calls.writev, 0);
    });

    it('flushes before writing a region with preflush, and passes FUA to the write', async () => {
      const device = new MemoryDevice(DEVICE_SECTORS);
      const data = new Uint8Array(randomBytes(1024));
      const bits = await dmIo({ op: 'write', memory: flatMemory(data), preflush: true, fua: true }, [region(device, 4, 2)]);
      assert.equal(bits, 0);
      assert.equal(device.calls.flush, 1);
      assert.equal(device.fuaWriteCount, 1);
      assert.ok(deviceBytes(device, 4, 2).equals(data));
    });

    it('discards and write-zeroes each region, with a bit for a device that cannot', async () => {
      const a = new MemoryDevice(DEVICE_SECTORS);
      const b = new MemoryDevice(DEVICE_SECTORS);
      a.contents.fill(0xff);
      b.contents.fill(0xff);
      b.failOp('discard', EOPNOTSUPP);
      assert.equal(await dmIoDiscard([region(a, 8, 8), region(b, 8, 8)]), 0b10);
      assert.ok(deviceBytes(a, 8, 8).every((x) => x === 0));
      assert.equal(a.contents[8 * SECTOR_BYTES - 1], 0xff);
      b.failOp('writeZeroes', EOPNOTSUPP);
      assert.equal(await dmIoWriteZeroes([region(b, 0, 4), region(a, 100, 4)]), 0b01);
      assert.ok(deviceBytes(a, 100, 4).every((x) => x === 0));
    });
  });
});
