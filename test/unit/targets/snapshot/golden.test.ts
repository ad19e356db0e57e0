import assert from 'node:assert/strict';
import { SECTOR_BYTES } from '../../../../src/base/units';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { areaLocationChunk, exceptionsPerArea } from '../../../../src/targets/snapshot/persistent-store';
import {
  addExceptions,
  chunkBytesOf,
  goldenCase,
  goldenDevice,
  goldenStatusInfo,
  goldenTableStore,
  load,
  persistentStore,
  usageText,
  type GoldenCase,
} from './store-fixtures';

/**
 * The persistent store against COW devices the 6.12 kernel wrote (test/golden, made by
 * tools/golden/make-golden.sh): we must read what it wrote, and write what it writes.
 */

const LOADABLE = ['p8-fresh', 'p8-writes', 'p8-invalid', 'p0-default', 'p8-rollover', 'p8-merged', 'p8-half-merged', 'p16-one-write', 'p8-one-write'];

/** The header chunk and every area location inside the device: all the metadata there can be. */
function metadataChunks(chunkSectors: number, cowBytes: number): number[] {
  const deviceChunks = cowBytes / (chunkSectors * SECTOR_BYTES);
  const chunks = [0];
  for (let area = 0; areaLocationChunk(area, exceptionsPerArea(chunkSectors)) < deviceChunks; area++) {
    chunks.push(areaLocationChunk(area, exceptionsPerArea(chunkSectors)));
  }
  return chunks;
}

function assertSameMetadata(ours: MemoryDevice, kernel: MemoryDevice, chunkSectors: number): void {
  for (const chunk of metadataChunks(chunkSectors, kernel.contents.byteLength)) {
    assert.ok(chunkBytesOf(ours, chunk, chunkSectors).equals(chunkBytesOf(kernel, chunk, chunkSectors)), `metadata chunk ${chunk} differs`);
  }
}

/** The 8-byte tag at the start of a data chunk: which origin 4 KiB block its data came from. */
function tagOf(device: MemoryDevice, chunk: number, chunkSectors: number): string {
  return chunkBytesOf(device, chunk, chunkSectors).toString('latin1', 0, 8);
}

async function loadGolden(golden: GoldenCase): Promise<{ device: MemoryDevice; store: ReturnType<typeof persistentStore>; valid: boolean; exceptions: Array<[number, number]> }> {
  const device = goldenDevice(golden);
  const { store: storeText, chunkSectors } = goldenTableStore(golden);
  const store = persistentStore(device, chunkSectors, storeText.slice(1));
  return { device, store, ...(await load(store)) };
}

describe('persistent store against kernel-written images', () => {
  describe('loading', () => {
    for (const name of LOADABLE) {
      const golden = goldenCase(name);

      it(`${name}: loads the kernel's validity and exceptions`, async () => {
        const { valid, exceptions } = await loadGolden(golden);
        assert.equal(valid, golden.valid);
        assert.deepEqual(exceptions, golden.exceptions);
      });

      it(`${name}: prints the kernel's usage and chunk size`, async () => {
        const { store, valid } = await loadGolden(golden);
        assert.equal(store.chunkSectors, goldenTableStore(golden).chunkSectors);
        if (valid) assert.equal(usageText(store), goldenStatusInfo(golden.status));
        else assert.equal(goldenStatusInfo(golden.status), 'Invalid');
      });

      if (golden.exceptions.length === 0) continue;
      it(`${name}: maps every exception to a COW chunk holding that origin chunk's data`, async () => {
        const { device, store, exceptions } = await loadGolden(golden);
        const blocksPerChunk = (store.chunkSectors * SECTOR_BYTES) / 4096;
        for (const [oldChunk, newChunk] of exceptions) {
          assert.match(tagOf(device, newChunk, store.chunkSectors), new RegExp(`^[OS]${String(oldChunk * blocksPerChunk).padStart(7, '0')}$`));
        }
      });
    }

    it('p0-default: a table chunk size of 0 or 16 takes the header chunk size 32', async () => {
      const golden = goldenCase('p0-default');
      for (const tableChunkSectors of [0, 16]) {
        const store = persistentStore(goldenDevice(golden), tableChunkSectors);
        await load(store);
        assert.equal(store.chunkSectors, 32);
        assert.equal(`0 8192 snapshot ${usageText(store)}`, golden.reloadedAsP16!.status);
      }
    });
  });

  describe('writing what the kernel writes', () => {
    it('p8-fresh: initialising a blank COW gives the kernel image byte for byte', async () => {
      const kernel = goldenDevice(goldenCase('p8-fresh'));
      const ours = new MemoryDevice(kernel.sizeSectors);
      await load(persistentStore(ours, 8));
      assert.ok(ours.contents.equals(kernel.contents));
    });

    it('p0-default: initialising with table chunk size 0 gives the kernel metadata', async () => {
      const kernel = goldenDevice(goldenCase('p0-default'));
      const ours = new MemoryDevice(kernel.sizeSectors);
      await load(persistentStore(ours, 0));
      assertSameMetadata(ours, kernel, 32);
    });

    for (const name of ['p8-writes', 'p8-rollover', 'p16-one-write', 'p8-one-write']) {
      it(`${name}: the same exceptions give the kernel's metadata chunks byte for byte`, async () => {
        const golden = goldenCase(name);
        const kernel = goldenDevice(golden);
        const { chunkSectors } = goldenTableStore(golden);
        const ours = new MemoryDevice(kernel.sizeSectors);
        const store = persistentStore(ours, chunkSectors);
        await load(store);
        const newChunks = await addExceptions(store, golden.exceptions.map(([oldChunk]) => oldChunk));
        assert.deepEqual(newChunks, golden.exceptions.map(([, newChunk]) => newChunk));
        assertSameMetadata(ours, kernel, chunkSectors);
        assert.equal(usageText(store), goldenStatusInfo(golden.status));
      });
    }

    it('p8-invalid: dropping the snapshot writes the kernel header', async () => {
      const kernel = goldenDevice(goldenCase('p8-invalid'));
      const ours = goldenDevice(goldenCase('p8-writes'));
      const store = persistentStore(ours, 8);
      await load(store);
      await store.dropSnapshot();
      assert.ok(chunkBytesOf(ours, 0, 8).equals(chunkBytesOf(kernel, 0, 8)));
    });

    it('p8-merged: merging the rollover store to the end gives the kernel metadata', async () => {
      const kernel = goldenDevice(goldenCase('p8-merged'));
      const { device, store } = await loadGolden(goldenCase('p8-rollover'));
      for (let run = await store.prepareMerge(); run !== null; run = await store.prepareMerge()) {
        await store.commitMerge(run.count);
      }
      assertSameMetadata(device, kernel, 8);
      assert.equal(usageText(store), goldenStatusInfo(goldenCase('p8-merged').status));
    });

    it('p8-half-merged: merging on from where the kernel stopped empties the store', async () => {
      const { device, store } = await loadGolden(goldenCase('p8-half-merged'));
      for (let run = await store.prepareMerge(); run !== null; run = await store.prepareMerge()) {
        await store.commitMerge(run.count);
      }
      assert.ok(chunkBytesOf(device, 1, 8).every((b) => b === 0));
      assert.equal(usageText(store), '16/2048 16');
    });
  });
});
