import { EIO, EOPNOTSUPP, type IoResult } from '../../base/errno';
import { TargetError, type DeviceHandle, type MapDone, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../../dm/target';
import { IoOp, type Bio } from '../../io/bio';
import type { BlockDevice, DeviceKey } from '../../io/block-device';
import { KcopydClient } from '../../kcopyd';
import { ChunkGeometry } from './chunk';
import { cancelHandoverFrom, checkHandoverResume, completeHandover, validateHandover, type HandoverParty, type HeldExceptions } from './handover';
import { loadSnapshotArgs, type SnapshotFeatures } from './snapshot-args';
import { ORIGINS, type OriginRegistry } from './origin-registry';
import { InOrderCompleter, PendingException } from './pending-exception';
import { TransientStore } from './transient-store';

/**
 * snapshot <origin_dev> <COW_dev> <P|PO|N> <chunk_size> [<#features> <feature>...]
 *
 * The frozen image of an origin (spec snapshot.md §1.2, §3): reads of chunks with a completed
 * exception come from the COW device, others from the origin; writes allocate an exception.
 * Origin writes reach this snapshot through the scope's origin registry (copyOutFor). The
 * ordering rules of §3.7 live in three places: the origin write waits on the PendingException
 * until its record is durable (pendingComplete), copies are committed in allocation order
 * (InOrderCompleter), and the store's commit is the durability point.
 *
 * The store, the completed exceptions, validity and overflow live in `held`, which a handover
 * (handover.ts) moves to a new table over the same COW at that table's resume.
 */

export class SnapshotTarget implements Target, HandoverParty {
  readonly type = 'snapshot';
  /** Its exception table and pending copies are shared state: one thread owns them. */
  readonly threadModel = 'owner-thread';
  readonly merging = false;
  readonly capabilities: TargetCapabilities;

  private geometryInForce: ChunkGeometry | undefined;
  /** Origin writes copy out to this snapshot only once its table has been resumed (§2). */
  private activated = false;
  private suspendedNow = false;
  private readonly pending = new Map<number, PendingException>();
  private readonly completer: InOrderCompleter<PendingException>;
  private readonly trackedReads = new Map<number, number>();
  private readonly readDrainWaiters = new Map<number, Array<() => void>>();
  private readonly idleWaiters: Array<() => void> = [];
  private readonly kcopyd = new KcopydClient();

  constructor(
    private readonly origin: BlockDevice,
    private readonly cow: BlockDevice,
    /** Its exceptions, store and state: swapped with another table's by a handover. */
    public held: HeldExceptions,
    private readonly features: SnapshotFeatures,
    /** Absolute device sectors of this target: [startSector, startSector + lengthSectors). */
    private readonly startSector: number,
    private readonly lengthSectors: number,
    private readonly device: DeviceHandle,
    private readonly registry: OriginRegistry,
  ) {
    this.capabilities = { discard: features.discardZeroesCow, writeZeroes: false, fua: true };
    this.completer = new InOrderCompleter((pe) => this.commit(pe));
    // register_snapshot: the check again, synchronously with the insert.
    if (validateHandover(registry, origin.key, cow.key, false) !== held.unloaded) {
      throw new TargetError('Snapshot cow pairing for exception table handover failed');
    }
    registry.add(origin.key, this);
  }

  /** 0 until a handover destination has taken its store over (the kernel's chunk_size = 0). */
  get chunkSectors(): number {
    return this.held.tableChunkSectors;
  }

  /** Bios never straddle chunks. */
  get maxIoSectors(): number {
    return this.held.store.chunkSectors;
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

  get pendingCopies(): number {
    return this.pending.size;
  }

  becomeActive(): void {
    this.suspendedNow = false;
    this.activated = true;
    this.registry.activated(this.origin.key);
  }

  whenIdle(): Promise<void> {
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The chunk geometry of the store in force (a handover may change it at resume). */
  private get geometry(): ChunkGeometry {
    const chunkSectors = this.held.store.chunkSectors;
    if (this.geometryInForce?.chunkSectors !== chunkSectors) this.geometryInForce = new ChunkGeometry(chunkSectors);
    return this.geometryInForce;
  }

  private get valid(): boolean {
    return this.held.valid;
  }

  map(bio: Bio, done: MapDone): void {
    // The kernel's snapshot_map chunks the bio's device sector, not the target-relative one.
    const sector = this.startSector + bio.sector;
    switch (bio.op) {
      case IoOp.Flush:
        this.cow.flush().then(done, () => done(-EIO));
        return;
      case IoOp.Read:
        this.read(bio, sector, done);
        return;
      case IoOp.Write:
        this.write(bio, sector, done);
        return;
      case IoOp.Discard:
        this.discard(bio, sector, done);
        return;
      default:
        done(-EOPNOTSUPP);
    }
  }

  /** The origin write path (do_origin) for this snapshot; see OriginSnapshot. */
  copyOutFor(sector: number, sectorCount: number): ((resume: () => void) => void) | undefined {
    if (!this.activated || !this.valid) return undefined;
    const endSector = Math.min(sector + sectorCount, this.startSector + this.lengthSectors);
    if (sector >= endSector || sector < this.startSector) return undefined;
    let waitOn: PendingException | undefined;
    for (let chunk = this.geometry.chunkOf(sector); chunk <= this.geometry.chunkOf(endSector - 1); chunk++) {
      if (this.held.exceptions.lookup(chunk) !== undefined) continue;
      let pe = this.pending.get(chunk);
      if (pe === undefined) {
        pe = this.allocate(chunk);
        if (pe === undefined) {
          // Even a PO store invalidates here: overflow is for writes to the snapshot (§3.1).
          this.invalidate();
          return undefined;
        }
      }
      this.startCopy(pe);
      waitOn ??= pe;
    }
    if (waitOn === undefined) return undefined;
    const pe = waitOn;
    return (resume) => pe.originWaiters.push(resume);
  }

  holds(sector: number, sectorCount: number): boolean {
    if (!this.activated) return false;
    if (!this.valid) return true;
    const startSector = Math.max(sector, this.startSector);
    const endSector = Math.min(sector + sectorCount, this.startSector + this.lengthSectors);
    for (let chunk = this.geometry.chunkOf(startSector); startSector < endSector && chunk <= this.geometry.chunkOf(endSector - 1); chunk++) {
      if (this.held.exceptions.lookup(chunk) === undefined) return false;
    }
    return true;
  }

  status(kind: StatusKind): string {
    if (kind === 'table') {
      const features = [
        ...(this.features.discardZeroesCow ? ['discard_zeroes_cow'] : []),
        ...(this.features.discardPassdownOrigin ? ['discard_passdown_origin'] : []),
      ];
      const tail = features.length > 0 ? ` ${features.length} ${features.join(' ')}` : '';
      return `${this.origin.tableName} ${this.cow.tableName} ${this.held.store.tableText} ${this.held.tableChunkSectors}${tail}`;
    }
    if (!this.valid) return 'Invalid';
    if (this.held.overflowed) return 'Overflow';
    const usage = this.held.store.usage();
    return `${usage.allocatedSectors}/${usage.totalSectors} ${usage.metadataSectors}`;
  }

  async postsuspend(): Promise<void> {
    this.suspendedNow = true;
  }

  /** snapshot_preresume: the handover rules of §5.3. */
  async preresume(): Promise<void> {
    checkHandoverResume(this.registry, this);
  }

  /** A handover destination takes its source's exceptions first; then, re-sorted by its real chunk size, it goes active. */
  async resume(): Promise<void> {
    await completeHandover(this.registry, this);
    this.becomeActive();
  }

  devices(): BlockDevice[] {
    return [this.origin, this.cow];
  }

  /** Leave the origin's list (no new copies), then wait for the copies under way to commit. */
  async destroy(): Promise<void> {
    cancelHandoverFrom(this.registry, this);
    this.registry.remove(this.origin.key, this);
    if (this.pending.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    await this.kcopyd.destroy();
  }

  private read(bio: Bio, sector: number, done: MapDone): void {
    if (!this.valid) return done(-EIO);
    const chunk = this.geometry.chunkOf(sector);
    const cowChunk = this.held.exceptions.lookup(chunk);
    if (cowChunk !== undefined) {
      this.cow.read(bio.data, this.cowSector(cowChunk, sector)).then(done, () => done(-EIO));
      return;
    }
    // From the origin, tracked: a copy of this chunk finishing now must not let the origin write
    // it holds overwrite the chunk under this read (§3.5a).
    this.trackRead(chunk, +1);
    this.origin.read(bio.data, sector).then(
      (result) => {
        this.trackRead(chunk, -1);
        done(result);
      },
      () => {
        this.trackRead(chunk, -1);
        done(-EIO);
      },
    );
  }

  private write(bio: Bio, sector: number, done: MapDone): void {
    if (!this.valid || this.held.overflowed) return done(-EIO);
    const chunk = this.geometry.chunkOf(sector);
    const cowChunk = this.held.exceptions.lookup(chunk);
    if (cowChunk !== undefined) {
      this.writeToCow(bio, cowChunk, sector, done);
      return;
    }
    let pe = this.pending.get(chunk);
    if (pe === undefined) {
      pe = this.allocate(chunk);
      if (pe === undefined) {
        if (this.held.store.overflowSupported) this.held.overflowed = true; // in memory only: no event, no header (§3.3)
        else this.invalidate();
        return done(-EIO);
      }
    }
    const coversChunk = this.geometry.offsetInChunk(sector) === 0 && bio.sectorCount === this.geometry.chunkSectors;
    if (coversChunk && !pe.started) {
      // The write replaces the copy: its completion is the copy's (§3.3).
      const started = pe;
      started.started = true;
      started.fullChunkWrite = { bytes: bio.data.byteLength, done };
      this.cow.write(bio.data, this.cowSector(started.cowChunk, sector), bio.fua).then(
        (result) => this.copyFinished(started, result === bio.data.byteLength),
        () => this.copyFinished(started, false),
      );
      return;
    }
    pe.snapshotWrites.push({ bio, done });
    this.startCopy(pe);
  }

  /**
   * discard_zeroes_cow (§1.2): a whole-chunk discard of an excepted chunk zeroes the COW chunk;
   * a partial one is passed down to the COW chunk; a chunk without a completed exception needs
   * nothing. discard_passdown_origin also discards the origin device directly (no copy-out).
   */
  private discard(bio: Bio, sector: number, done: MapDone): void {
    if (!this.features.discardZeroesCow) return done(-EOPNOTSUPP);
    if (!this.valid) return done(-EIO);
    const chunk = this.geometry.chunkOf(sector);
    const cowChunk = this.held.exceptions.lookup(chunk);
    const passdown = this.features.discardPassdownOrigin ? this.origin.discard(sector, bio.sectorCount) : Promise.resolve(0);
    let own: Promise<IoResult>;
    if (cowChunk === undefined) {
      own = Promise.resolve(0);
    } else if (bio.sectorCount === this.geometry.chunkSectors) {
      own = this.kcopyd
        .zeroAndWait([{ device: this.cow, sector: this.cowSector(cowChunk, sector), count: bio.sectorCount }])
        .then((result) => (result.writeErr === 0 ? 0 : -EIO));
    } else {
      own = this.cow.discard(this.cowSector(cowChunk, sector), bio.sectorCount);
    }
    Promise.all([own, passdown]).then(
      ([ownResult, passdownResult]) => done(ownResult < 0 ? ownResult : passdownResult < 0 ? passdownResult : 0),
      () => done(-EIO),
    );
  }

  private writeToCow(bio: Bio, cowChunk: number, sector: number, done: MapDone): void {
    this.cow.write(bio.data, this.cowSector(cowChunk, sector), bio.fua).then(done, () => done(-EIO));
  }

  private cowSector(cowChunk: number, sector: number): number {
    return this.geometry.firstSector(cowChunk) + this.geometry.offsetInChunk(sector);
  }

  private allocate(originChunk: number): PendingException | undefined {
    const cowChunk = this.held.store.prepareException();
    if (cowChunk === undefined) return undefined;
    const pe = new PendingException(originChunk, cowChunk, this.completer.allocate());
    this.pending.set(originChunk, pe);
    return pe;
  }

  private startCopy(pe: PendingException): void {
    if (pe.started) return;
    pe.started = true;
    const firstSector = this.geometry.firstSector(pe.originChunk);
    // The origin's last chunk may be short (the kernel copies only what the origin has).
    const sectorCount = Math.min(this.geometry.chunkSectors, this.origin.sizeSectors - firstSector);
    if (sectorCount <= 0) {
      this.copyFinished(pe, false);
      return;
    }
    this.kcopyd.copy(
      { device: this.origin, sector: firstSector, count: sectorCount },
      [{ device: this.cow, sector: this.geometry.firstSector(pe.cowChunk), count: sectorCount }],
      0,
      (readErr, writeErr) => this.copyFinished(pe, !readErr && writeErr === 0),
      undefined,
    );
  }

  private copyFinished(pe: PendingException, ok: boolean): void {
    pe.copyOk = ok;
    this.completer.finished(pe);
  }

  /** In allocation order: the store makes the record durable, then pendingComplete. */
  private commit(pe: PendingException): void {
    this.held.store.commitException(pe.originChunk, pe.cowChunk, pe.copyOk === true, (storeValid) => this.pendingComplete(pe, storeValid));
  }

  /**
   * The record is durable (or the copy or the commit failed). Success: the exception goes into
   * the table first, so new reads go to the COW, and only when reads of the chunk from the origin
   * have drained are the origin writes let go (§3.5a). Failure: the snapshot is invalid, its
   * writes fail, and the origin writes go ahead all the same (§3.5 step 3).
   */
  private pendingComplete(pe: PendingException, storeValid: boolean): void {
    if (!storeValid || pe.copyOk !== true || !this.valid) {
      this.invalidate();
      pe.fullChunkWrite?.done(-EIO);
      for (const write of pe.snapshotWrites) write.done(-EIO);
      this.release(pe);
      return;
    }
    this.held.exceptions.insert(pe.originChunk, pe.cowChunk);
    this.afterTrackedReads(pe.originChunk, () => {
      pe.fullChunkWrite?.done(pe.fullChunkWrite.bytes);
      for (const { bio, done } of pe.snapshotWrites) this.writeToCow(bio, pe.cowChunk, this.startSector + bio.sector, done);
      this.release(pe);
    });
  }

  private release(pe: PendingException): void {
    this.pending.delete(pe.originChunk);
    for (const resume of pe.originWaiters) resume();
    if (this.pending.size === 0) for (const idle of this.idleWaiters.splice(0)) idle();
  }

  /** For good (§3.6): status Invalid, header rewritten, a dm event; origin writes skip us from now on. */
  private invalidate(): void {
    if (!this.valid) return;
    this.held.valid = false;
    this.held.store.dropSnapshot().catch(() => undefined); // the snapshot is invalid in memory whatever the disk says
    this.device.raiseEvent();
  }

  private trackRead(chunk: number, delta: 1 | -1): void {
    const count = (this.trackedReads.get(chunk) ?? 0) + delta;
    if (count > 0) {
      this.trackedReads.set(chunk, count);
      return;
    }
    this.trackedReads.delete(chunk);
    const waiters = this.readDrainWaiters.get(chunk);
    if (waiters === undefined) return;
    this.readDrainWaiters.delete(chunk);
    for (const waiter of waiters) waiter();
  }

  private afterTrackedReads(chunk: number, then: () => void): void {
    if (!this.trackedReads.has(chunk)) return then();
    const waiters = this.readDrainWaiters.get(chunk) ?? [];
    waiters.push(then);
    this.readDrainWaiters.set(chunk, waiters);
  }
}

/** snapshot_ctr: see snapshot-args.ts for the argument checks. */
export const snapshotTargetType: TargetType = {
  name: 'snapshot',
  version: [1, 16, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    const parts = await loadSnapshotArgs(ctx, args);
    if (ctx.rebuilt !== undefined && parts.held.store instanceof TransientStore) {
      // Its exceptions lived in the previous daemon's memory: served empty it would read as the
      // origin does now, a point in time it never was.
      ctx.rebuilt.warn('snapshot: a transient (N) snapshot lived in the previous daemon\'s memory and did not survive it: it is Invalid');
      parts.held.valid = false;
    }
    return new SnapshotTarget(parts.origin, parts.cow, parts.held, parts.features, ctx.startSector, ctx.lengthSectors, ctx.device, ctx.scope.get(ORIGINS));
  },
};
