import { EIO } from '../../base/errno';
import { TargetError, type MapDone, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../../dm/target';
import { IoOp, type Bio } from '../../io/bio';
import type { BlockDevice, DeviceKey } from '../../io/block-device';
import { KcopydClient } from '../../kcopyd';
import { ChunkGeometry } from './chunk';
import { cancelHandoverFrom, checkHandoverResume, completeHandover, validateHandover, type HandoverParty, type HeldExceptions } from './handover';
import { ORIGINS, type OriginRegistry } from './origin-registry';
import { loadSnapshotArgs } from './snapshot-args';

/**
 * snapshot-merge <origin_dev> <COW_dev> P <chunk_size>: put in the origin device's table in
 * place of snapshot-origin, it makes the origin show the snapshot's contents at once and copies
 * the snapshot's exceptions back into the origin in the background, newest first (spec
 * snapshot.md §5). The merge loop is the crash-safety rule: a record is cleared from the COW
 * (flush + FUA) only after its data is in the origin and the origin has been flushed, so a crash
 * in between merges the same chunks again.
 *
 * Loaded over the COW of an active snapshot of the origin (LVM's way), it reads nothing at
 * construction and takes that snapshot's exceptions and store over at resume (handover.ts).
 */
export class SnapshotMergeTarget implements Target, HandoverParty {
  readonly type = 'snapshot-merge';
  readonly threadModel = 'owner-thread';
  readonly merging = true;
  /** Discards complete at once (and do nothing), as in the kernel. */
  readonly capabilities: TargetCapabilities = { discard: true, writeZeroes: false, fua: true };
  /** A merge takes no copies of the origin, so nothing is ever pending here. */
  readonly pendingCopies = 0;

  private geometryInForce: ChunkGeometry | undefined;
  private activated = false;
  private suspendedNow = false;
  private mergeFailed = false;
  /** Chunks of the step being merged: writes to them wait for the step's commit. */
  private readonly mergingChunks = new Set<number>();
  private heldWrites: Array<{ readonly bio: Bio; readonly done: MapDone }> = [];
  private readonly writesInFlight = new Map<number, number>();
  private writesDrained: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private stopRequested = false;
  private readonly kcopyd = new KcopydClient();

  constructor(
    private readonly origin: BlockDevice,
    private readonly cow: BlockDevice,
    /** Its exceptions, store and state: taken from the live snapshot by a handover. */
    public held: HeldExceptions,
    private readonly startSector: number,
    private readonly registry: OriginRegistry,
  ) {
    if (validateHandover(registry, origin.key, cow.key, true) !== held.unloaded) {
      throw new TargetError('Snapshot cow pairing for exception table handover failed');
    }
    registry.add(origin.key, this);
  }

  get chunkSectors(): number {
    return this.held.tableChunkSectors;
  }

  get cowKey(): DeviceKey {
    return this.cow.key;
  }

  get originKey(): DeviceKey {
    return this.origin.key;
  }

  get cowDevice(): BlockDevice {
    return this.cow;
  }

  get active(): boolean {
    return this.activated;
  }

  get suspended(): boolean {
    return this.suspendedNow;
  }

  becomeActive(): void {
    this.suspendedNow = false;
    this.activated = true;
  }

  whenIdle(): Promise<void> {
    return Promise.resolve();
  }

  private get geometry(): ChunkGeometry {
    const chunkSectors = this.held.store.chunkSectors;
    if (this.geometryInForce?.chunkSectors !== chunkSectors) this.geometryInForce = new ChunkGeometry(chunkSectors);
    return this.geometryInForce;
  }

  private get valid(): boolean {
    return this.held.valid;
  }

  private get store() {
    return this.held.store;
  }

  private get exceptions() {
    return this.held.exceptions;
  }

  /** Split like snapshot-origin: at the smallest chunk size of the origin's snapshots. */
  get maxIoSectors(): number | undefined {
    return this.registry.minChunkSectors(this.origin.key);
  }

  /**
   * While a merge writes the COW back into the origin, origin writes stay on the thread that
   * runs it: more than the kernel asks (it skips a merging snapshot), and they are rare then.
   */
  holds(): boolean {
    return false;
  }

  /** A merging snapshot takes no copies of the origin (spec §3.1 step 1). */
  copyOutFor(): undefined {
    return undefined;
  }

  map(bio: Bio, done: MapDone): void {
    const sector = this.startSector + bio.sector;
    if (bio.op === IoOp.Discard) return done(0);
    if (bio.op === IoOp.Flush) {
      Promise.all([this.origin.flush(), this.cow.flush()]).then(
        ([originResult, cowResult]) => done(originResult < 0 ? originResult : cowResult),
        () => done(-EIO),
      );
      return;
    }
    const chunk = this.geometry.chunkOf(sector);
    const cowChunk = this.valid ? this.exceptions.lookup(chunk) : undefined;
    if (cowChunk === undefined) {
      this.toOrigin(bio, sector, done);
      return;
    }
    const cowSector = this.geometry.firstSector(cowChunk) + this.geometry.offsetInChunk(sector);
    if (bio.op === IoOp.Read) {
      this.cow.read(bio.data, cowSector).then(done, () => done(-EIO));
      return;
    }
    if (this.mergingChunks.has(chunk)) {
      // Resubmitted after the step commits, when the chunk lives in the origin again.
      this.heldWrites.push({ bio, done });
      return;
    }
    this.countWrite(chunk, +1);
    this.cow.write(bio.data, cowSector, bio.fua).then(
      (result) => {
        this.countWrite(chunk, -1);
        done(result);
      },
      () => {
        this.countWrite(chunk, -1);
        done(-EIO);
      },
    );
  }

  status(kind: StatusKind): string {
    if (kind === 'table') return `${this.origin.tableName} ${this.cow.tableName} ${this.store.tableText} ${this.held.tableChunkSectors}`;
    if (!this.valid) return 'Invalid';
    if (this.mergeFailed) return 'Merge failed';
    const usage = this.store.usage();
    return `${usage.allocatedSectors}/${usage.totalSectors} ${usage.metadataSectors}`;
  }

  async postsuspend(): Promise<void> {
    this.suspendedNow = true;
  }

  /** snapshot_preresume: the handover rules of §5.3. */
  async preresume(): Promise<void> {
    checkHandoverResume(this.registry, this);
  }

  /**
   * merge_resume: a handover destination first takes the live snapshot's exceptions; then the
   * merge runs while the table is live; a failed merge stays failed for this table (§5.2 step 7).
   */
  async resume(): Promise<void> {
    await completeHandover(this.registry, this);
    this.becomeActive();
    if (!this.valid || this.loop !== undefined) return;
    this.stopRequested = false;
    this.loop = this.mergeLoop().finally(() => {
      this.loop = undefined;
    });
  }

  /** Stop after the step under way: its copy and commit finish first. */
  async presuspend(): Promise<void> {
    this.stopRequested = true;
    await this.loop;
  }

  devices(): BlockDevice[] {
    return [this.origin, this.cow];
  }

  async destroy(): Promise<void> {
    cancelHandoverFrom(this.registry, this);
    this.stopRequested = true;
    await this.loop;
    this.registry.remove(this.origin.key, this);
    await this.kcopyd.destroy();
  }

  private toOrigin(bio: Bio, sector: number, done: MapDone): void {
    if (bio.op === IoOp.Read) {
      this.origin.read(bio.data, sector).then(done, () => done(-EIO));
      return;
    }
    const write = (): void => {
      const pending = bio.op === IoOp.Write ? this.origin.write(bio.data, sector, bio.fua) : this.origin.writeZeroes(sector, bio.sectorCount, bio.noUnmap);
      pending.then(done, () => done(-EIO));
    };
    // Other snapshots of the origin still need their copies first.
    this.registry.beforeOriginWrite(this.origin.key, sector, bio.sectorCount, write);
  }

  private async mergeLoop(): Promise<void> {
    while (!this.stopRequested && !this.mergeFailed) {
      const run = await this.store.prepareMerge!().catch(() => 'failed' as const);
      if (run === 'failed') return this.fail(); // "Read error in exception store: shutting down merge"
      if (run === null) return; // merged: no event (spec §4.4)
      const firstOriginChunk = run.lastOldChunk - run.count + 1;
      const firstCowChunk = run.lastNewChunk - run.count + 1;
      const destSector = this.geometry.firstSector(firstOriginChunk);
      const sectorCount = Math.min(run.count * this.geometry.chunkSectors, this.origin.sizeSectors - destSector);

      // Other snapshots keep the origin's old data before the merge overwrites it.
      await new Promise<void>((proceed) => this.registry.beforeOriginWrite(this.origin.key, destSector, sectorCount, proceed));
      const chunks = Array.from({ length: run.count }, (_, i) => firstOriginChunk + i);
      for (const chunk of chunks) this.mergingChunks.add(chunk);
      await this.writesDone(chunks);

      const copied = await this.kcopyd.copyAndWait(
        { device: this.cow, sector: this.geometry.firstSector(firstCowChunk), count: sectorCount },
        [{ device: this.origin, sector: destSector, count: sectorCount }],
      );
      if (copied.readErr || copied.writeErr !== 0) return this.fail();
      if ((await this.origin.flush()) < 0) return this.fail();
      try {
        await this.store.commitMerge!(run.count);
      } catch {
        return this.fail();
      }
      for (const chunk of chunks) this.exceptions.remove(chunk);
      this.mergingChunks.clear();
      for (const { bio, done } of this.heldWrites.splice(0)) this.map(bio, done);
    }
  }

  private fail(): void {
    this.mergeFailed = true;
    this.mergingChunks.clear();
    for (const { done } of this.heldWrites.splice(0)) done(-EIO);
  }

  private countWrite(chunk: number, delta: 1 | -1): void {
    const count = (this.writesInFlight.get(chunk) ?? 0) + delta;
    if (count > 0) this.writesInFlight.set(chunk, count);
    else this.writesInFlight.delete(chunk);
    if (delta < 0 && this.writesDrained !== undefined) this.writesDrained();
  }

  /** Until no write to the COW copies of `chunks` is in flight (the merge must copy what they wrote). */
  private async writesDone(chunks: readonly number[]): Promise<void> {
    while (chunks.some((chunk) => this.writesInFlight.has(chunk))) {
      await new Promise<void>((resolve) => (this.writesDrained = resolve));
      this.writesDrained = undefined;
    }
  }
}

export const snapshotMergeTargetType: TargetType = {
  name: 'snapshot-merge',
  version: [1, 5, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    const parts = await loadSnapshotArgs(ctx, args, { forMerge: true });
    return new SnapshotMergeTarget(parts.origin, parts.cow, parts.held, ctx.startSector, ctx.scope.get(ORIGINS));
  },
};
