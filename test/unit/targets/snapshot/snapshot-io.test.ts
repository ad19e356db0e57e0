import assert from 'node:assert/strict';
import { EIO } from '../../../../src/base/errno';
import { DeviceEvents } from '../../../../src/dm/mapped-device';
import type { MapOutcome, Target } from '../../../../src/dm/target';
import { IoOp, NO_DATA, type Bio } from '../../../../src/io/bio';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { submitted, testScope } from '../../../../src/testing/tables';
import type { ExceptionStore, ExceptionStoreUsage } from '../../../../src/targets/snapshot/exception-store';
import { SnapshotOriginTarget } from '../../../../src/targets/snapshot/origin';
import { SnapshotOriginView } from '../../../../src/targets/snapshot/origin-view';
import { OriginWriteMap } from '../../../../src/targets/snapshot/origin-write-map';
import { ORIGINS, type OriginRegistry } from '../../../../src/targets/snapshot/origin-registry';
import { HeldExceptions } from '../../../../src/targets/snapshot/handover';
import { InOrderCompleter } from '../../../../src/targets/snapshot/pending-exception';
import { SnapshotTarget } from '../../../../src/targets/snapshot/snapshot';

const CHUNK = 8;
const CHUNK_BYTES = CHUNK * 512;

/**
 * A store that hands out COW chunks 0, 1, 2... up to `capacity` and, unless `holdCommits`, makes
 * every commit durable at once; held commits wait in `heldCommits` for the test to release them.
 */
class FakeStore implements ExceptionStore {
  readonly tableText: string;
  readonly mergeSupported: boolean = false;
  holdCommits = false;
  readonly heldCommits: Array<() => void> = [];
  readonly committed: Array<[number, number]> = [];
  dropped = false;
  private nextChunk = 0;

  constructor(
    readonly chunkSectors: number,
    private readonly capacity: number,
    readonly overflowSupported = false,
  ) {
    this.tableText = overflowSupported ? 'PO' : 'P';
  }

  async readMetadata(): Promise<boolean> {
    return true;
  }
  prepareException(): number | undefined {
    return this.nextChunk < this.capacity ? this.nextChunk++ : undefined;
  }
  commitException(oldChunk: number, newChunk: number, copyValid: boolean, done: (valid: boolean) => void): void {
    const commit = () => {
      this.committed.push([oldChunk, newChunk]);
      done(copyValid);
    };
    if (this.holdCommits) this.heldCommits.push(commit);
    else commit();
  }
  useCow(): void {}
  async dropSnapshot(): Promise<void> {
    this.dropped = true;
  }
  usage(): ExceptionStoreUsage {
    return { allocatedSectors: this.nextChunk * this.chunkSectors, totalSectors: this.capacity * this.chunkSectors, metadataSectors: 0 };
  }
}

function stamp(byte: number, sectorCount = CHUNK): Buffer {
  return Buffer.alloc(sectorCount * 512, byte);
}

function io(target: Target, op: IoOp, sector: number, data: Uint8Array = NO_DATA): Promise<MapOutcome> {
  const bio: Bio = { op, sector, sectorCount: data.byteLength / 512, data, fua: false, noUnmap: false };
  return submitted<MapOutcome>((b, done) => target.map(b, done), bio);
}

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

interface Rig {
  origin: MemoryDevice;
  cow: MemoryDevice;
  store: FakeStore;
  events: DeviceEvents;
  registry: OriginRegistry;
  originTarget: SnapshotOriginTarget;
  snapshot: SnapshotTarget;
}

async function rig(options: { capacity?: number; overflow?: boolean; chunk?: number; resume?: boolean } = {}): Promise<Rig> {
  const chunk = options.chunk ?? CHUNK;
  const origin = new MemoryDevice(64 * CHUNK);
  origin.contents.fill(0x11);
  const cow = new MemoryDevice(64 * CHUNK);
  const store = new FakeStore(chunk, options.capacity ?? 32, options.overflow ?? false);
  const events = new DeviceEvents('snap');
  const registry = testScope().get(ORIGINS);
  const snapshot = new SnapshotTarget(
    origin.open(), cow.open(), HeldExceptions.loaded(store, true, []),
    { discardZeroesCow: false, discardPassdownOrigin: false }, 0, 64 * CHUNK, events, registry,
  );
  if (options.resume ?? true) await snapshot.resume();
  const originTarget = new SnapshotOriginTarget(origin.open(), 0, registry);
  return { origin, cow, store, events, registry, originTarget, snapshot };
}

describe('snapshot: the origin write path', () => {
  it('an origin write copies the old chunk to the COW first; the snapshot keeps reading the old data', async () => {
    const r = await rig();
    assert.equal(await io(r.originTarget, IoOp.Write, 3 * CHUNK, stamp(0x22)), CHUNK_BYTES);
    assert.deepEqual(r.store.committed, [[3, 0]]);
    assert.ok(r.cow.contents.subarray(0, CHUNK_BYTES).every((b) => b === 0x11), 'old data in COW chunk 0');
    const back = Buffer.alloc(CHUNK_BYTES);
    assert.equal(await io(r.snapshot, IoOp.Read, 3 * CHUNK, back), CHUNK_BYTES);
    assert.ok(back.every((b) => b === 0x11), 'the snapshot still reads the old data');
    assert.ok(r.origin.contents.subarray(3 * CHUNK_BYTES, 4 * CHUNK_BYTES).every((b) => b === 0x22));
  });

  it('the origin write waits until the exception is committed, not just copied', async () => {
    const r = await rig();
    r.store.holdCommits = true;
    let answered = false;
    const write = io(r.originTarget, IoOp.Write, 0, stamp(0x22)).then((result) => ((answered = true), result));
    await settle();
    assert.equal(r.store.heldCommits.length, 1, 'the copy finished and asked for a commit');
    assert.equal(answered, false);
    assert.ok(r.origin.contents.subarray(0, CHUNK_BYTES).every((b) => b === 0x11), 'origin untouched before the commit');
    r.store.heldCommits[0]!();
    assert.equal(await write, CHUNK_BYTES);
    assert.ok(r.origin.contents.subarray(0, CHUNK_BYTES).every((b) => b === 0x22));
  });

  it('a second write to an excepted chunk goes straight to the origin', async () => {
    const r = await rig();
    await io(r.originTarget, IoOp.Write, 0, stamp(0x22));
    const reads = r.origin.calls.read;
    await io(r.originTarget, IoOp.Write, 0, stamp(0x33));
    assert.equal(r.origin.calls.read, reads, 'no second copy');
    assert.equal(r.store.committed.length, 1);
  });

  it('a snapshot that was never resumed is not copied to (inactive until its table is live)', async () => {
    const r = await rig({ resume: false });
    await io(r.originTarget, IoOp.Write, 0, stamp(0x22));
    assert.equal(r.store.committed.length, 0);
  });

  it('a full COW on an origin write invalidates the snapshot (event, header drop) and the write still goes through', async () => {
    const r = await rig({ capacity: 1, overflow: true });
    await io(r.originTarget, IoOp.Write, 0, stamp(0x22));
    assert.equal(await io(r.originTarget, IoOp.Write, CHUNK, stamp(0x22)), CHUNK_BYTES);
    assert.equal(r.snapshot.status('info'), 'Invalid', 'even a PO store: overflow is for snapshot writes only');
    assert.equal(r.events.eventNumber, 1);
    assert.equal(r.store.dropped, true);
    assert.equal(await io(r.snapshot, IoOp.Read, 0, Buffer.alloc(512)), -EIO);
    assert.ok(r.origin.contents.subarray(CHUNK_BYTES, 2 * CHUNK_BYTES).every((b) => b === 0x22));
  });

  it('origin writes are split at the smallest chunk size of the live snapshots, read at every request', async () => {
    const r = await rig({ chunk: 16 });
    assert.equal(r.originTarget.maxIoSectors, 16);
    const small = new SnapshotTarget(
      r.origin.open(), new MemoryDevice(64 * CHUNK).open(), HeldExceptions.loaded(new FakeStore(4, 8), true, []),
      { discardZeroesCow: false, discardPassdownOrigin: false }, 0, 64 * CHUNK, new DeviceEvents('s4'), r.registry,
    );
    assert.equal(r.originTarget.maxIoSectors, 4);
    await small.destroy();
    assert.equal(r.originTarget.maxIoSectors, 16);
  });
});

describe('snapshot: a queue thread\'s view of the origin', () => {
  /** A view as a queue thread builds it, forwarding to the owner's origin target (and counting). */
  function viewOf(r: Rig): { view: SnapshotOriginView; forwarded: Array<[IoOp, number]> } {
    const forwarded: Array<[IoOp, number]> = [];
    const view = new SnapshotOriginView(r.origin.open(), 0, OriginWriteMap.over(r.originTarget.queueViewShare()), (bio, deviceSector, done) => {
      forwarded.push([bio.op, deviceSector]);
      r.originTarget.map({ ...bio, sector: deviceSector }, done);
    });
    return { view, forwarded };
  }

  function secondSnapshot(r: Rig): SnapshotTarget {
    return new SnapshotTarget(
      r.origin.open(), new MemoryDevice(64 * CHUNK).open(), HeldExceptions.loaded(new FakeStore(CHUNK, 32), true, []),
      { discardZeroesCow: false, discardPassdownOrigin: false }, 0, 64 * CHUNK, new DeviceEvents('snap2'), r.registry,
    );
  }

  it('serves reads and rewrites of chunks every snapshot holds; forwards the first write of a chunk, which copies it out', async () => {
    const r = await rig();
    const { view, forwarded } = viewOf(r);
    assert.equal(await io(view, IoOp.Read, 3 * CHUNK, Buffer.alloc(CHUNK_BYTES)), CHUNK_BYTES);
    assert.equal(await io(view, IoOp.Write, 3 * CHUNK, stamp(0x22)), CHUNK_BYTES);
    assert.deepEqual(forwarded, [[IoOp.Write, 3 * CHUNK]], 'the read stayed, the first write went to the owner');
    assert.deepEqual(r.store.committed, [[3, 0]]);
    assert.equal(await io(view, IoOp.Write, 3 * CHUNK + 2, stamp(0x33, 2)), 1024);
    assert.equal(await io(view, IoOp.Write, 4 * CHUNK, stamp(0x44)), CHUNK_BYTES);
    assert.deepEqual(forwarded, [[IoOp.Write, 3 * CHUNK], [IoOp.Write, 4 * CHUNK]], 'the rewrite of chunk 3 stayed');
    assert.deepEqual(r.store.committed, [[3, 0], [4, 1]]);
    assert.ok(r.origin.contents.subarray(3 * CHUNK_BYTES + 1024, 3 * CHUNK_BYTES + 2048).every((b) => b === 0x33), 'the rewrite landed');
    const back = Buffer.alloc(CHUNK_BYTES);
    await io(r.snapshot, IoOp.Read, 3 * CHUNK, back);
    assert.ok(back.every((b) => b === 0x11), 'the snapshot still reads the old data');
  });

  it('sends every write to the owner again once another snapshot goes active, until that one holds the chunk too', async () => {
    const r = await rig();
    const { view, forwarded } = viewOf(r);
    await io(view, IoOp.Write, 0, stamp(0x22));
    const late = secondSnapshot(r);
    await io(view, IoOp.Write, 0, stamp(0x33));
    assert.equal(forwarded.length, 2, 'a registered snapshot, even inactive, keeps writes with the owner');
    await late.resume();
    await io(view, IoOp.Write, 0, stamp(0x44));
    assert.equal(forwarded.length, 3, 'activation forgot what the map knew');
    const back = Buffer.alloc(CHUNK_BYTES);
    await io(late, IoOp.Read, 0, back);
    assert.ok(back.every((b) => b === 0x33), 'the late snapshot copied chunk 0 out before the write');
    await io(view, IoOp.Write, 0, stamp(0x55));
    assert.equal(forwarded.length, 3, 'both snapshots hold chunk 0 now');
  });

  it('serves in place (over a tmpfs file) reads, and writes only where the map says no copy is needed', async () => {
    const r = await rig();
    const device = r.origin.open();
    Object.assign(device, { inPlaceAddress: () => 0x7000 });
    const view = new SnapshotOriginView(device, 0, OriginWriteMap.over(r.originTarget.queueViewShare()), (bio, sector, done) =>
      r.originTarget.map({ ...bio, sector }, done),
    );
    assert.equal(view.inPlaceAddress(3 * CHUNK, CHUNK_BYTES, 'read'), 0x7000);
    assert.equal(view.inPlaceAddress(3 * CHUNK, CHUNK_BYTES, 'write'), 0, 'a first write must reach the owner');
    await io(view, IoOp.Write, 3 * CHUNK, stamp(0x22));
    assert.equal(view.inPlaceAddress(3 * CHUNK, CHUNK_BYTES, 'write'), 0x7000, 'the snapshot holds chunk 3 now');
    assert.equal(view.inPlaceAddress(3 * CHUNK, 2 * CHUNK_BYTES, 'write'), 0, 'chunk 4 is not held');
  });

  it('forwards discards, and keeps nothing from a snapshot that left: with none left, every write stays', async () => {
    const r = await rig();
    const { view, forwarded } = viewOf(r);
    await io(view, IoOp.Write, 0, stamp(0x22));
    await io(view, IoOp.Discard, 0);
    assert.deepEqual(forwarded.map(([op]) => op), [IoOp.Write, IoOp.Discard]);
    await r.snapshot.destroy();
    await io(view, IoOp.Write, 8 * CHUNK, stamp(0x22));
    assert.equal(forwarded.length, 2, 'no snapshot: nothing to copy out');
  });
});

describe('snapshot: writes to the snapshot', () => {
  it('a partial-chunk write copies the chunk first, then lands on top of it in the COW', async () => {
    const r = await rig();
    assert.equal(await io(r.snapshot, IoOp.Write, 5 * CHUNK + 1, stamp(0x44, 1)), 512);
    const back = Buffer.alloc(CHUNK_BYTES);
    await io(r.snapshot, IoOp.Read, 5 * CHUNK, back);
    assert.ok(back.subarray(0, 512).every((b) => b === 0x11) && back.subarray(512, 1024).every((b) => b === 0x44) && back.subarray(1024).every((b) => b === 0x11));
    assert.ok(r.origin.contents.subarray(5 * CHUNK_BYTES, 6 * CHUNK_BYTES).every((b) => b === 0x11), 'the origin is unchanged');
  });

  it('a whole-chunk write skips the copy', async () => {
    const r = await rig();
    const reads = r.origin.calls.read;
    assert.equal(await io(r.snapshot, IoOp.Write, 7 * CHUNK, stamp(0x55)), CHUNK_BYTES);
    assert.equal(r.origin.calls.read, reads);
    assert.deepEqual(r.store.committed, [[7, 0]]);
  });

  it('PO: a full store fails the write and marks the snapshot Overflow, without an event; reads go on', async () => {
    const r = await rig({ capacity: 1, overflow: true });
    await io(r.snapshot, IoOp.Write, 0, stamp(0x55));
    assert.equal(await io(r.snapshot, IoOp.Write, CHUNK, stamp(0x55)), -EIO);
    assert.equal(r.snapshot.status('info'), 'Overflow');
    assert.equal(r.events.eventNumber, 0);
    assert.equal(await io(r.snapshot, IoOp.Write, 0, stamp(0x66)), -EIO, 'every snapshot write fails while overflowed');
    assert.equal(await io(r.snapshot, IoOp.Read, 0, Buffer.alloc(CHUNK_BYTES)), CHUNK_BYTES);
  });

  it('P: a full store on a snapshot write invalidates it', async () => {
    const r = await rig({ capacity: 0 });
    assert.equal(await io(r.snapshot, IoOp.Write, 0, stamp(0x55)), -EIO);
    assert.equal(r.snapshot.status('info'), 'Invalid');
    assert.equal(r.events.eventNumber, 1);
  });
});

describe('snapshot: InOrderCompleter', () => {
  it('completes in allocation order whatever order items finish in', () => {
    const completed: number[] = [];
    const completer = new InOrderCompleter<{ sequence: number }>((item) => completed.push(item.sequence));
    const items = [0, 1, 2, 3].map(() => ({ sequence: completer.allocate() }));
    completer.finished(items[2]!);
    completer.finished(items[1]!);
    assert.deepEqual(completed, [], 'held until the first finishes');
    completer.finished(items[0]!);
    assert.deepEqual(completed, [0, 1, 2]);
    completer.finished(items[3]!);
    assert.deepEqual(completed, [0, 1, 2, 3]);
  });
});

describe('snapshot-merge', () => {
  /** A store with merge support over `records` (oldest first), each cleared record really gone. */
  class MergingStore extends FakeStore {
    override readonly mergeSupported = true;
    readonly mergeSteps: number[] = [];
    constructor(readonly records: Array<[number, number]>) {
      super(CHUNK, 32);
    }
    override async readMetadata(): Promise<boolean> {
      return true;
    }
    async prepareMerge() {
      const last = this.records[this.records.length - 1];
      if (last === undefined) return null;
      let count = 1;
      while (count < this.records.length) {
        const previous = this.records[this.records.length - 1 - count]!;
        if (previous[0] !== last[0] - count || previous[1] !== last[1] - count) break;
        count++;
      }
      return { lastOldChunk: last[0], lastNewChunk: last[1], count };
    }
    async commitMerge(count: number): Promise<void> {
      this.mergeSteps.push(count);
      this.records.splice(this.records.length - count, count);
    }
  }

  async function mergeRig(records: Array<[number, number]>) {
    const origin = new MemoryDevice(64 * CHUNK);
    origin.contents.fill(0x11);
    const cow = new MemoryDevice(64 * CHUNK);
    for (const [oldChunk, newChunk] of records) cow.contents.fill(0x50 + oldChunk, newChunk * CHUNK_BYTES, (newChunk + 1) * CHUNK_BYTES);
    const store = new MergingStore(records.map(([o, n]) => [o, n]));
    const registry = testScope().get(ORIGINS);
    const { SnapshotMergeTarget } = await import('../../../../src/targets/snapshot/merge');
    const target = new SnapshotMergeTarget(origin.open(), cow.open(), HeldExceptions.loaded(store, true, records), 0, registry);
    return { origin, cow, store, target };
  }

  it('shows the snapshot at once: an excepted chunk reads from the COW before anything is merged', async () => {
    const { target } = await mergeRig([[3, 2]]);
    const back = Buffer.alloc(CHUNK_BYTES);
    assert.equal(await io(target, IoOp.Read, 3 * CHUNK, back), CHUNK_BYTES);
    assert.ok(back.every((b) => b === 0x53));
  });

  it('merges newest first, one consecutive run per step, and ends with the origin holding the snapshot', async () => {
    const { origin, store, target } = await mergeRig([[1, 2], [5, 3], [6, 4], [7, 5]]);
    await target.resume();
    await target.presuspend(); // stops after the step under way...
    await target.resume(); // ...and resume carries on from the records left
    await new Promise((resolve) => setTimeout(resolve, 20));
    await target.presuspend();
    assert.deepEqual(store.mergeSteps, [3, 1], 'chunks 5-7 in one step (a run), then chunk 1');
    for (const chunk of [1, 5, 6, 7]) assert.ok(origin.contents.subarray(chunk * CHUNK_BYTES, (chunk + 1) * CHUNK_BYTES).every((b) => b === 0x50 + chunk));
    assert.ok(origin.contents.subarray(0, CHUNK_BYTES).every((b) => b === 0x11), 'chunks never excepted are untouched');
    assert.equal(origin.isFlushed, true, 'the origin was flushed before the records were cleared');
    await target.destroy();
  });

  it('a failed copy stops the merge with status "Merge failed" and leaves the records', async () => {
    const { cow, store, target } = await mergeRig([[1, 2]]);
    cow.failOp('read', 5);
    await target.resume();
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(target.status('info'), 'Merge failed');
    assert.deepEqual(store.mergeSteps, []);
    await target.destroy();
  });
});
