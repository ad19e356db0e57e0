import assert from 'node:assert/strict';
import { OriginWriteMap } from '../../../../src/targets/snapshot/origin-write-map';

describe('snapshot: the origin write map (shared with queue threads)', () => {
  const everyGranule = () => true;

  it('knows nothing until told, then covers only granules marked held, read through the shared memory', () => {
    const owner = OriginWriteMap.create(1024);
    const reader = OriginWriteMap.over(owner.share);
    assert.equal(reader.covers(0, 8), false, 'a new map knows nothing');
    owner.reset({ granuleSectors: 16 });
    owner.markHeld(20, 4, everyGranule);
    assert.equal(reader.covers(16, 16), true, 'the whole granule of the write');
    assert.equal(reader.covers(24, 4), true);
    assert.equal(reader.covers(28, 8), false, 'straddles into a granule not held');
    assert.equal(reader.covers(0, 8), false);
  });

  it('asks the owner about whole granules, and marks only those it says are held', () => {
    const owner = OriginWriteMap.create(1024);
    owner.reset({ granuleSectors: 8 });
    const asked: Array<[number, number]> = [];
    owner.markHeld(4, 16, (sector, count) => (asked.push([sector, count]), sector !== 8));
    assert.deepEqual(asked, [[0, 8], [8, 8], [16, 8]]);
    assert.equal(owner.covers(0, 8), true);
    assert.equal(owner.covers(8, 8), false);
    assert.equal(owner.covers(16, 8), true);
  });

  it('forgets every granule on reset, and covers everything while the origin has no snapshot', () => {
    const owner = OriginWriteMap.create(1024);
    owner.reset({ granuleSectors: 8 });
    owner.markHeld(0, 1024, everyGranule);
    assert.equal(owner.covers(0, 1024), true);
    owner.reset({ granuleSectors: 8 });
    assert.equal(owner.covers(0, 8), false, 'a snapshot came: nothing is held by it yet');
    owner.reset('no-snapshots');
    assert.equal(owner.covers(512, 64), true);
    owner.markHeld(0, 8, everyGranule);
    owner.reset('nothing-known');
    assert.equal(owner.covers(0, 8), false);
  });

  it('knows nothing of granules finer than its bits allow (4 KiB), and nothing past the origin', () => {
    const owner = OriginWriteMap.create(64);
    owner.reset({ granuleSectors: 1 });
    owner.markHeld(0, 64, everyGranule);
    assert.equal(owner.covers(0, 1), false, '64 granules of 1 sector need more bits than the 8 (rounded to 32) allocated');
    owner.reset({ granuleSectors: 8 });
    owner.markHeld(0, 4096, everyGranule);
    assert.equal(owner.covers(0, 64), true);
    assert.equal(owner.covers(32 * 8, 8), false, 'beyond the bits allocated');
  });

  it('refuses memory that is not a map, and a reset from a reader', () => {
    assert.throws(() => OriginWriteMap.over(new SharedArrayBuffer(4)), /not a map/);
    const reader = OriginWriteMap.over(OriginWriteMap.create(64).share);
    assert.throws(() => reader.reset('no-snapshots'), /only its owner/);
  });
});
