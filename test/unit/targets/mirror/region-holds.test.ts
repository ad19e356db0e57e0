import assert from 'node:assert/strict';
import { RegionHolds } from '../../../../src/targets/mirror/region-holds';

/** The owner's holds of 8 regions of 16 sectors, after one reserved word, and a view's over the same share. */
function rig() {
  const share = new SharedArrayBuffer(4 + RegionHolds.byteLength(8));
  const owner = RegionHolds.create(share, 4, 16);
  const view = RegionHolds.over(share, 4);
  return { share, owner, view };
}

describe('mirror: region holds', () => {
  it('a view counts itself in only where the owner holds the region', () => {
    const { owner, view } = rig();
    assert.equal(view.regionSectors, 16);
    assert.equal(view.regionCount, 8);
    assert.equal(view.enter(3), false);
    assert.equal(owner.busy(3), false, 'a refused enter leaves nothing counted');
    owner.hold(3);
    assert.equal(view.enter(3), true);
    assert.equal(view.enter(2), false, 'another region is not held');
    view.leave(3);
    assert.equal(owner.busy(3), true, 'still held');
  });

  it('finds the one region a write lies in, or none when it spans two or lies past the end', () => {
    const { view } = rig();
    assert.equal(view.regionOf(16, 16), 1);
    assert.equal(view.regionOf(20, 4), 1);
    assert.equal(view.regionOf(30, 4), -1);
    assert.equal(view.regionOf(8 * 16, 1), -1);
    assert.equal(view.regionOf(0, 0), -1);
  });

  it('a revoke stops new view writes at once, and the region stays busy until those in flight leave', () => {
    const { owner, view } = rig();
    owner.hold(1);
    assert.equal(view.enter(1), true);
    owner.revoke(1);
    assert.equal(view.enter(1), false);
    assert.equal(owner.busy(1), true, 'one write in flight');
    assert.deepEqual(owner.sweep(), [], 'a sweep frees nothing with a write in flight');
    view.leave(1);
    assert.deepEqual(owner.sweep(), [1]);
    assert.equal(owner.busy(1), false);
    assert.equal(owner.anyBusy, false);
  });

  it('a sweep releases a held region only after a whole sweep with no view write', () => {
    const { owner, view } = rig();
    owner.hold(0);
    owner.hold(5);
    assert.deepEqual(owner.sweep(), [], 'held just now: touched');
    assert.equal(view.enter(5), true);
    view.leave(5);
    assert.deepEqual(owner.sweep(), [0], 'region 5 was written since the last sweep');
    assert.equal(view.enter(0), false, 'released');
    assert.deepEqual(owner.sweep(), [5]);
    assert.equal(owner.anyBusy, false);
  });

  it('a revokeAll() covers every held region; a view that saw HELD just before still counts', () => {
    const { owner, view } = rig();
    for (const region of [0, 2, 7]) owner.hold(region);
    assert.equal(view.enter(7), true);
    owner.revokeAll();
    assert.deepEqual([0, 2, 7].map((region) => view.enter(region)), [false, false, false]);
    assert.deepEqual(owner.sweep().sort(), [0, 2]);
    view.leave(7);
    assert.deepEqual(owner.sweep(), [7]);
  });

  it('a share of no regions holds none and is safe to ask about any region', () => {
    const share = new SharedArrayBuffer(RegionHolds.byteLength(0));
    const owner = RegionHolds.create(share, 0, 1024);
    assert.equal(owner.regionOf(0, 8), -1);
    assert.equal(owner.busy(5), false);
    owner.revoke(5);
  });

  it('refuses a share that is not one', () => {
    assert.throws(() => RegionHolds.over(new SharedArrayBuffer(8), 4), /no region size/);
    assert.throws(() => RegionHolds.over(new SharedArrayBuffer(6), 0), /not a share of them/);
    assert.throws(() => RegionHolds.create(new SharedArrayBuffer(8), 0, 0), /region size 0/);
  });
});
