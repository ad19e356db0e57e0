import assert from 'node:assert/strict';
import { EIO } from '../../../../src/base/errno';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { StoreConfigError, StoreLoadError } from '../../../../src/targets/snapshot/exception-store';
import {
  areaLocationChunk,
  decodeHeader,
  decodeRecord,
  encodeHeader,
  encodeRecord,
  exceptionsPerArea,
  SNAP_MAGIC,
} from '../../../../src/targets/snapshot/persistent-store';
import {
  addExceptions,
  chunkBytesOf,
  commit,
  load,
  LoggingDevice,
  persistentStore,
  settle,
  usageText,
} from './store-fixtures';

/** Chunk 8 (4 KiB): E = 256 records per area; area 0 = chunk 1, area 1 = chunk 258. */
const CHUNK = 8;
const E8 = 256;
const KIB256_SECTORS = 512;
const MIB2_SECTORS = 4096;

async function freshStore(sizeSectors = KIB256_SECTORS): Promise<{ device: MemoryDevice; store: ReturnType<typeof persistentStore> }> {
  const device = new MemoryDevice(sizeSectors);
  const store = persistentStore(device, CHUNK);
  await load(store);
  return { device, store };
}

/** Writes a header (and nothing else) into chunk 0 of `device`. */
function putHeader(device: MemoryDevice, fields: { magic?: number; valid?: number; version?: number; chunkSectors?: number }): void {
  encodeHeader(chunkBytesOf(device, 0, CHUNK), {
    magic: fields.magic ?? SNAP_MAGIC,
    valid: fields.valid ?? 1,
    version: fields.version ?? 1,
    chunkSectors: fields.chunkSectors ?? CHUNK,
  });
}

function putRecords(device: MemoryDevice, area: number, records: Array<[number, number]>, chunkSectors = CHUNK): void {
  const bytes = chunkBytesOf(device, areaLocationChunk(area, exceptionsPerArea(chunkSectors)), chunkSectors);
  records.forEach(([oldChunk, newChunk], index) => encodeRecord(bytes, index, { oldChunk, newChunk }));
}

function recordsOnDisk(device: MemoryDevice, area: number, count: number): Array<[number, number]> {
  const bytes = chunkBytesOf(device, areaLocationChunk(area, E8), CHUNK);
  return Array.from({ length: count }, (_, i) => {
    const r = decodeRecord(bytes, i);
    return [r.oldChunk, r.newChunk] as [number, number];
  });
}

/** Area 0 full: old chunk i → new chunk i + 2 for i = 0..255 (as 256 origin writes make it). */
function fullArea0(): Array<[number, number]> {
  return Array.from({ length: E8 }, (_, i) => [i, i + 2] as [number, number]);
}

describe('persistent exception store', () => {
  describe('layout', () => {
    it('holds chunk size × 32 records per area', () => {
      assert.equal(exceptionsPerArea(8), 256);
      assert.equal(exceptionsPerArea(16), 512);
    });

    it('places area a at chunk 1 + a·(E+1), each area followed by its E data chunks', () => {
      assert.deepEqual([0, 1, 2].map((a) => areaLocationChunk(a, 512)), [1, 514, 1027]);
      assert.deepEqual([0, 1, 2].map((a) => areaLocationChunk(a, 256)), [1, 258, 515]);
    });

    it('encodes the header as little-endian magic, valid, version, chunk size, then zeroes', () => {
      const chunk0 = new Uint8Array(4096).fill(0xaa);
      encodeHeader(chunk0, { magic: SNAP_MAGIC, valid: 1, version: 1, chunkSectors: 16 });
      assert.deepEqual([...chunk0.subarray(0, 16)], [0x53, 0x6e, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 0x10, 0, 0, 0]);
      assert.ok(chunk0.subarray(16).every((b) => b === 0));
      assert.deepEqual(decodeHeader(chunk0), { magic: SNAP_MAGIC, valid: 1, version: 1, chunkSectors: 16 });
    });

    it('refuses a chunk number above 2^53 - 1 in a record', () => {
      const area = new Uint8Array(4096);
      new DataView(area.buffer).setBigUint64(8, 2n ** 53n, true);
      assert.throws(() => decodeRecord(area, 0), (e: unknown) => e instanceof StoreLoadError && e.code === 'EINVAL');
    });
  });

  describe('options and chunk size', () => {
    it('takes O or o as the first option character as overflow support, printing PO', () => {
      for (const options of ['O', 'o', 'Oxyz']) {
        const store = persistentStore(new MemoryDevice(KIB256_SECTORS), CHUNK, options);
        assert.equal(store.overflowSupported, true, options);
        assert.equal(store.tableText, 'PO', options);
      }
      assert.equal(persistentStore(new MemoryDevice(KIB256_SECTORS)).tableText, 'P');
    });

    it('rejects any other option with the rest of the argument in the message', () => {
      assert.throws(
        () => persistentStore(new MemoryDevice(KIB256_SECTORS), CHUNK, 'Xo'),
        (e: unknown) => e instanceof StoreConfigError && e.message === 'Unsupported persistent store option: Xo',
      );
    });

    it('rejects a table chunk size that is not a power of two', () => {
      assert.throws(() => persistentStore(new MemoryDevice(KIB256_SECTORS), 12), /Chunk size is not a power of 2/);
    });

    it('rejects a table chunk size smaller than the COW logical block', () => {
      const cow = new MemoryDevice(KIB256_SECTORS, { logicalBlockBytes: 4096 });
      assert.throws(() => persistentStore(cow, 4), (e: unknown) => e instanceof StoreConfigError && /multiple of device blocksize/.test(e.message));
    });
  });

  describe('loading', () => {
    it('initialises a blank COW: header, then zeroed area 0, both plain writes', async () => {
      const memory = new MemoryDevice(KIB256_SECTORS);
      chunkBytesOf(memory, 1, CHUNK).fill(0x5a);
      const device = new LoggingDevice(memory);
      const loaded = await load(persistentStore(device, CHUNK));
      assert.deepEqual(loaded, { valid: true, exceptions: [] });
      assert.deepEqual(device.steps, ['read@0', 'write@0', 'write@8(zeroes)']);
      assert.deepEqual([...memory.contents.subarray(0, 16)], [0x53, 0x6e, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
    });

    it('reports a new store as header chunk + area 0 used', async () => {
      const { store } = await freshStore();
      assert.equal(usageText(store), '16/512 16');
    });

    it('uses the default chunk size of 32 for table chunk size 0 on a blank COW', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      const store = persistentStore(device, 0);
      await load(store);
      assert.equal(store.chunkSectors, 32);
      assert.equal(decodeHeader(device.contents).chunkSectors, 32);
      assert.equal(usageText(store), '64/512 64');
    });

    it('rejects a COW whose magic is neither 0 nor SnAp with ENXIO', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      device.contents.write('O0000005', 0, 'latin1');
      await assert.rejects(load(persistentStore(device)), (e: unknown) =>
        e instanceof StoreLoadError && e.code === 'ENXIO' && e.message === 'Invalid or corrupt snapshot');
    });

    it('rejects a disk version other than 1 with EINVAL', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      putHeader(device, { version: 2 });
      await assert.rejects(load(persistentStore(device)), (e: unknown) => e instanceof StoreLoadError && e.code === 'EINVAL');
    });

    it('loads a header that says invalid as invalid, reading no exceptions', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      putHeader(device, { valid: 0 });
      putRecords(device, 0, [[5, 2]]);
      assert.deepEqual(await load(persistentStore(device)), { valid: false, exceptions: [] });
    });

    it('lets the header chunk size override the table one', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      putHeader(device, { chunkSectors: 16 });
      const store = persistentStore(device, 8);
      await load(store);
      assert.equal(store.chunkSectors, 16);
      assert.equal(usageText(store), '32/512 32');
    });

    it('rejects a header chunk size that is not a power of two with EINVAL', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      putHeader(device, { chunkSectors: 12 });
      await assert.rejects(load(persistentStore(device)), (e: unknown) => e instanceof StoreLoadError && e.code === 'EINVAL');
    });

    it('stops at the first record whose new chunk is 0 and ignores the records after it', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      putHeader(device, {});
      putRecords(device, 0, [[5, 2], [0, 3], [9, 0], [7, 4]]);
      const store = persistentStore(device);
      assert.deepEqual(await load(store), { valid: true, exceptions: [[5, 2], [0, 3]] });
      assert.equal(usageText(store), '32/512 16');
    });

    it('drops records after the terminator from the area it writes next', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      putHeader(device, {});
      putRecords(device, 0, [[5, 2], [9, 0], [7, 4]]);
      const store = persistentStore(device);
      await load(store);
      await addExceptions(store, [6]);
      assert.deepEqual(recordsOnDisk(device, 0, 3), [[5, 2], [6, 3], [0, 0]]);
    });

    it('continues into the next area after a full one and skips that area chunk for next_free', async () => {
      const device = new MemoryDevice(MIB2_SECTORS);
      putHeader(device, {});
      putRecords(device, 0, fullArea0());
      const store = persistentStore(device);
      const loaded = await load(store);
      assert.equal(loaded.exceptions.length, E8);
      // next_free = 257 + 1 = 258 = area 1, so 259; metadata: header + areas 0 and 1.
      assert.equal(usageText(store), `${259 * CHUNK}/${MIB2_SECTORS} 24`);
    });

    it('fails the load when the area after a full one lies beyond the device', async () => {
      const device = new MemoryDevice(258 * CHUNK);
      putHeader(device, {});
      putRecords(device, 0, fullArea0());
      await assert.rejects(load(persistentStore(device)), (e: unknown) => e instanceof StoreLoadError && e.code === 'EIO');
    });
  });

  describe('allocation', () => {
    it('hands out data chunks from 2 upwards, stepping over area chunks', async () => {
      const { store } = await freshStore(MIB2_SECTORS);
      const chunks = Array.from({ length: E8 + 1 }, () => store.prepareException());
      assert.equal(chunks[0], 2);
      assert.equal(chunks[E8 - 1], 257);
      assert.equal(chunks[E8], 259);
    });

    it('holds 62 exceptions in a 256 KiB COW with chunk 8 and refuses the 63rd', async () => {
      const { store } = await freshStore();
      const chunks = Array.from({ length: 62 }, () => store.prepareException());
      assert.ok(chunks.every((c) => c !== undefined));
      assert.equal(store.prepareException(), undefined);
    });

    it('never hands out a chunk that only partly fits the device', async () => {
      const { store } = await freshStore(KIB256_SECTORS + CHUNK - 1);
      for (let i = 0; i < 62; i++) store.prepareException();
      assert.equal(store.prepareException(), undefined);
    });

    it('counts each allocated chunk in usage', async () => {
      const { store } = await freshStore();
      store.prepareException();
      assert.equal(usageText(store), '24/512 16');
    });
  });

  describe('commit', () => {
    it('writes the area once no other prepared exception is pending, and only then calls back', async () => {
      const { device, store } = await freshStore();
      const first = store.prepareException()!;
      const second = store.prepareException()!;
      const calls: string[] = [];
      store.commitException(5, first, true, (valid) => calls.push(`5:${valid}`));
      await settle();
      assert.equal(device.fuaWriteCount, 0);
      assert.equal(calls.length, 0, "no callback before the area write");
      store.commitException(3, second, true, (valid) => calls.push(`3:${valid}`));
      await settle();
      assert.equal(device.fuaWriteCount, 1);
      assert.deepEqual(calls, ['5:true', '3:true']);
      assert.deepEqual(recordsOnDisk(device, 0, 2), [[5, 2], [3, 3]]);
    });

    it('writes the area with a flush before it and FUA on it', async () => {
      const device = new LoggingDevice(new MemoryDevice(KIB256_SECTORS));
      const store = persistentStore(device);
      await load(store);
      device.log.length = 0;
      await addExceptions(store, [5]);
      assert.deepEqual(device.steps, ['flush', 'write@8+fua']);
    });

    it('writes a full area even while other prepared exceptions are pending', async () => {
      const { device, store } = await freshStore(MIB2_SECTORS);
      const chunks = Array.from({ length: E8 + 1 }, () => store.prepareException()!);
      const results = chunks.slice(0, E8).map((newChunk, oldChunk) => commit(store, oldChunk, newChunk));
      assert.deepEqual(new Set(await Promise.all(results)), new Set([true]));
      assert.equal(device.fuaWriteCount, 1);
      assert.deepEqual(recordsOnDisk(device, 0, E8), fullArea0());
    });

    it('zeroes the next area before writing the area a commit filled, then moves on to it', async () => {
      const memory = new MemoryDevice(MIB2_SECTORS);
      chunkBytesOf(memory, 258, CHUNK).fill(0x5a);
      const device = new LoggingDevice(memory);
      const store = persistentStore(device);
      await load(store);
      const chunks = Array.from({ length: E8 }, () => store.prepareException()!);
      device.log.length = 0;
      await Promise.all(chunks.map((newChunk, oldChunk) => commit(store, oldChunk, newChunk)));
      assert.deepEqual(device.steps, [`write@${258 * CHUNK}(zeroes)`, 'flush', 'write@8+fua']);
      assert.ok(chunkBytesOf(memory, 258, CHUNK).every((b) => b === 0));
      assert.equal(usageText(store), `${259 * CHUNK}/${MIB2_SECTORS} 24`);
    });

    it('puts the first record after a rollover into the next area', async () => {
      const { device, store } = await freshStore(MIB2_SECTORS);
      await addExceptions(store, [...Array(E8 + 1).keys()]);
      assert.deepEqual(recordsOnDisk(device, 1, 2), [[256, 259], [0, 0]]);
    });

    it('invalidates on a failed copy and does not write the area', async () => {
      const { device, store } = await freshStore();
      const newChunk = store.prepareException()!;
      assert.equal(await commit(store, 5, newChunk, false), false);
      assert.equal(device.fuaWriteCount, 0);
      assert.deepEqual(recordsOnDisk(device, 0, 1), [[0, 0]]);
    });

    it('reports every later commit invalid after a failed copy', async () => {
      const { store } = await freshStore();
      await commit(store, 5, store.prepareException()!, false);
      assert.equal(await commit(store, 3, store.prepareException()!), false);
    });

    it('invalidates when the area write fails', async () => {
      const { device, store } = await freshStore();
      device.failOp('write', EIO);
      assert.equal(await commit(store, 5, store.prepareException()!), false);
    });

    it('writes a batch that closes while the previous area write is in flight after it, whole', async () => {
      const { device, store } = await freshStore();
      const gate = device.hold(['write']);
      const first = commit(store, 5, store.prepareException()!);
      await gate.whenWaiting(1);
      const second = commit(store, 3, store.prepareException()!);
      await settle();
      assert.equal(gate.waitingCount, 1, 'the second batch waits for the first write');
      gate.release();
      assert.deepEqual(await Promise.all([first, second]), [true, true]);
      assert.equal(device.fuaWriteCount, 2);
      assert.deepEqual(recordsOnDisk(device, 0, 2), [[5, 2], [3, 3]]);
    });

    it('leaves only committed records for a load after a crash mid-batch', async () => {
      const { device, store } = await freshStore();
      await addExceptions(store, [5]);
      const held = store.prepareException()!;
      store.prepareException();
      store.commitException(3, held, true, () => assert.fail('a batch with a pending exception must not complete'));
      await settle();
      const afterCrash = new MemoryDevice(KIB256_SECTORS);
      device.contents.copy(afterCrash.contents);
      assert.deepEqual(await load(persistentStore(afterCrash)), { valid: true, exceptions: [[5, 2]] });
    });
  });

  describe('dropSnapshot', () => {
    it('rewrites chunk 0 with valid = 0 and zeroes after the header, with a plain write', async () => {
      const memory = new MemoryDevice(KIB256_SECTORS);
      const device = new LoggingDevice(memory);
      const store = persistentStore(device);
      await load(store);
      await addExceptions(store, [5]);
      chunkBytesOf(memory, 0, CHUNK).fill(0x5a, 16);
      device.log.length = 0;
      await store.dropSnapshot();
      assert.deepEqual(device.steps, ['write@0']);
      const chunk0 = chunkBytesOf(memory, 0, CHUNK);
      assert.deepEqual([...chunk0.subarray(0, 16)], [0x53, 0x6e, 0x41, 0x70, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]);
      assert.ok(chunk0.subarray(16).every((b) => b === 0));
      assert.deepEqual(recordsOnDisk(memory, 0, 1), [[5, 2]]);
    });

    it('loads as invalid afterwards', async () => {
      const { device, store } = await freshStore();
      await store.dropSnapshot();
      assert.equal((await load(persistentStore(device))).valid, false);
    });
  });

  describe('merge side', () => {
    it('returns the newest record first with the run of consecutive records ending at it', async () => {
      const { store } = await freshStore();
      await addExceptions(store, [5, 6, 7, 1]);
      assert.deepEqual(await store.prepareMerge(), { lastOldChunk: 1, lastNewChunk: 5, count: 1 });
      await store.commitMerge(1);
      assert.deepEqual(await store.prepareMerge(), { lastOldChunk: 7, lastNewChunk: 4, count: 3 });
    });

    it('does not count a run where only the old chunks are consecutive', async () => {
      const device = new MemoryDevice(KIB256_SECTORS);
      putHeader(device, {});
      putRecords(device, 0, [[5, 2], [6, 4]]);
      const gapped = persistentStore(device);
      await load(gapped);
      assert.equal((await gapped.prepareMerge())!.count, 1);
    });

    it('counts a run only within one area, then reads the previous area from disk', async () => {
      const { device, store } = await freshStore(MIB2_SECTORS);
      await addExceptions(store, [...Array(E8 + 4).keys()]);
      assert.deepEqual(await store.prepareMerge(), { lastOldChunk: 259, lastNewChunk: 262, count: 4 });
      await store.commitMerge(4);
      device.calls.read = 0;
      assert.deepEqual(await store.prepareMerge(), { lastOldChunk: 255, lastNewChunk: 257, count: E8 });
      assert.equal(device.calls.read, 1);
    });

    it('zeroes merged records on disk with a flush and FUA, and shrinks the allocation', async () => {
      const memory = new MemoryDevice(KIB256_SECTORS);
      const device = new LoggingDevice(memory);
      const store = persistentStore(device);
      await load(store);
      await addExceptions(store, [5, 3, 6]);
      await store.prepareMerge();
      device.log.length = 0;
      await store.commitMerge(1);
      assert.deepEqual(device.steps, ['flush', 'write@8+fua']);
      assert.deepEqual(recordsOnDisk(memory, 0, 3), [[5, 2], [3, 3], [0, 0]]);
      assert.equal(usageText(store), '32/512 16');
    });

    it('reports nothing left once every record is merged', async () => {
      const { store } = await freshStore();
      await addExceptions(store, [5]);
      await store.commitMerge((await store.prepareMerge())!.count);
      assert.equal(await store.prepareMerge(), null);
      assert.equal(usageText(store), '16/512 16');
    });

    it('refuses to merge more records than are committed', async () => {
      const { store } = await freshStore();
      await addExceptions(store, [5]);
      await store.prepareMerge();
      await assert.rejects(store.commitMerge(2));
    });

    it('rejects when the merged area cannot be written', async () => {
      const { device, store } = await freshStore();
      await addExceptions(store, [5]);
      await store.prepareMerge();
      device.failOp('write', EIO);
      await assert.rejects(store.commitMerge(1));
    });

    it('loads a partly merged store with the unmerged records and merges on from there', async () => {
      const { device, store } = await freshStore();
      await addExceptions(store, [5, 3, 0]);
      await store.prepareMerge();
      await store.commitMerge(1);
      const reloaded = persistentStore(device);
      assert.deepEqual(await load(reloaded), { valid: true, exceptions: [[5, 2], [3, 3]] });
      assert.equal(usageText(reloaded), '32/512 16');
      assert.deepEqual(await reloaded.prepareMerge(), { lastOldChunk: 3, lastNewChunk: 3, count: 1 });
    });
  });
});
