import assert from 'node:assert/strict';
import { SECTOR_BYTES } from '../../../../src/base/units';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { StoreConfigError, type ExceptionStore } from '../../../../src/targets/snapshot/exception-store';
import { transientStoreType } from '../../../../src/targets/snapshot/transient-store';
import { usageText } from './store-fixtures';

const KIB256_SECTORS = 512;

function transientStore(cow = new MemoryDevice(KIB256_SECTORS), chunkSectors = 8, options = ''): ExceptionStore {
  return transientStoreType.create({ cow, originLogicalBlockBytes: SECTOR_BYTES, chunkSectors, options });
}

describe('transient exception store', () => {
  it('puts the first exception at COW chunk 0 and counts on from there', () => {
    const store = transientStore();
    assert.deepEqual([store.prepareException(), store.prepareException()], [0, 1]);
  });

  it('reports sectors handed out, the COW size and no metadata', () => {
    const store = transientStore();
    assert.equal(usageText(store), '0/512 0');
    store.prepareException();
    store.prepareException();
    assert.equal(usageText(store), '16/512 0');
  });

  it('uses every whole chunk of the COW and refuses the next', () => {
    const store = transientStore(new MemoryDevice(KIB256_SECTORS + 7));
    for (let i = 0; i < 64; i++) assert.equal(store.prepareException(), i);
    assert.equal(store.prepareException(), undefined);
  });

  it('calls back at once with the copy validity', () => {
    const store = transientStore();
    const results: boolean[] = [];
    store.commitException(5, 0, true, (valid) => results.push(valid));
    store.commitException(3, 1, false, (valid) => results.push(valid));
    assert.deepEqual(results, [true, false]);
  });

  it('neither reads nor writes the COW device', async () => {
    const cow = new MemoryDevice(KIB256_SECTORS);
    const store = transientStore(cow);
    assert.equal(await store.readMetadata(() => assert.fail('no exceptions to load')), true);
    store.commitException(5, store.prepareException()!, true, () => {});
    await store.dropSnapshot();
    assert.equal(cow.calls.read + cow.calls.write + cow.calls.flush, 0);
  });

  it('ignores its options and prints N', () => {
    for (const options of ['', 'O', 'xyz']) assert.equal(transientStore(undefined, 8, options).tableText, 'N');
  });

  it('refuses chunk size 0: there is no header to take it from', () => {
    assert.throws(() => transientStore(undefined, 0), (e: unknown) => e instanceof StoreConfigError && e.message === 'Chunk size not set');
  });

  it('refuses a chunk size that is not a power of two', () => {
    assert.throws(() => transientStore(undefined, 12), (e: unknown) => e instanceof StoreConfigError && e.message === 'Chunk size is not a power of 2');
  });

  it('does not support merging', () => {
    const store = transientStore();
    assert.equal(store.mergeSupported, false);
    assert.equal(store.prepareMerge, undefined);
  });
});
