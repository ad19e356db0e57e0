import { EIO, EOPNOTSUPP } from '../../base/errno';
import { passthroughCapabilities, REQUEUE, TargetError, type DeviceHandle, type MapDone, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../../dm/target';
import { parseSectorNumber } from '../../dm/table-args';
import { dmIo, flatMemory, regionBit, type DmIoRequest, type IoRegion } from '../../dmio';
import { IoOp, NO_DATA, type Bio } from '../../io/bio';
import type { BlockDevice } from '../../io/block-device';
import { KCOPYD_IGNORE_ERROR, KcopydClient } from '../../kcopyd';
import { DirtyLogError, type DirtyLog } from './dirty-log';
import { parseLogPart } from './log-types';
import { RegionHash, RegionState } from './region-hash';
import { RegionHolds, SWEEP_MS } from './region-holds';
import { RESYNC_THROTTLE, resyncThrottleParameter } from './resync-throttle';

/**
 * mirror <log_type> <#log_args> <log_args...> <#mirrors> <dev> <offset>... [<#features> <feature>...]
 *
 * dm-raid1 (spec mirror.md): the legs are kept identical region by region. All writes go through
 * one worker, whose pass walks its work in the kernel's fixed order (do_mirror): settle region
 * states and flush the log; start recovery; reads; writes; failures. The ordering rule that
 * matters is in doWrites: the log flush that makes the dirty marks durable completes before any
 * data write is issued.
 */

type LegErrorType = 'write' | 'flush' | 'sync' | 'read';

/** One mirror leg: its device, where the target starts on it, and what has gone wrong on it. */
export class MirrorLeg {
  errorCount = 0;
  readonly errorTypes = new Set<LegErrorType>();

  constructor(
    readonly device: BlockDevice,
    readonly offsetSectors: number,
  ) {}

  /** The kernel's device_status_char: most severe first. */
  get statusChar(): string {
    if (this.errorCount === 0) return 'A';
    for (const [type, char] of [['flush', 'F'], ['write', 'D'], ['sync', 'S'], ['read', 'R']] as const) {
      if (this.errorTypes.has(type)) return char;
    }
    return 'U';
  }
}

interface MirrorFeatures {
  readonly handleErrors: boolean;
  readonly keepLog: boolean;
}

interface QueuedIo {
  readonly bio: Bio;
  readonly done: MapDone;
  /** Target-relative region. */
  readonly region: number;
}

export class MirrorTarget implements Target {
  readonly type = 'mirror';
  /** The region hash, the log and the worker are shared state: one thread owns them. */
  readonly threadModel = 'owner-thread';
  readonly maxIoSectors: number;
  readonly capabilities: TargetCapabilities;

  private readonly regionHash: RegionHash;
  /** What a queue thread's view (view.ts) reads: the read leg's word, then the region holds. */
  private readonly viewShare: SharedArrayBuffer;
  /**
   * The leg a queue thread's view may read from, or -1 (it forwards its reads): the default leg
   * while it has no errors. Every write reaches the default leg, so it holds the truth in every
   * region, in sync or not.
   */
  private readonly readLegShare: Int32Array;
  /** The regions views may write to all legs themselves. */
  private readonly holds: RegionHolds;
  /** Whether queue threads view this mirror (queueViewShare() was asked for): only then are regions held. */
  private viewed = false;
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Regions whose recovery waits for view writes still in flight (after a revoke). */
  private recoveryAwaitingViews: number[] = [];
  private defaultLeg = 0;
  /** Set when every region is in sync; cleared by a failed write (status event logic, §6). */
  private inSync = false;
  private logFailure = false;
  /** Recovery runs only while the table is live (resume to presuspend). */
  private recoveryAllowed = false;
  private suspending: { noflush: boolean } | undefined;
  private reads: QueuedIo[] = [];
  private writes: QueuedIo[] = [];
  private failures: QueuedIo[] = [];
  private held: QueuedIo[] = [];
  private passRunning = false;
  private passWanted = false;
  private passDone: Array<() => void> = [];
  private readonly recoveryIdle: Array<() => void> = [];

  constructor(
    private readonly legs: readonly MirrorLeg[],
    private readonly log: DirtyLog,
    private readonly features: MirrorFeatures,
    /** The target's length: the last region may be shorter than the others. */
    private readonly targetSectors: number,
    private readonly device: DeviceHandle,
    /** Resync copies; the daemon's shares the per-daemon resync throttle. */
    private readonly kcopyd: KcopydClient = new KcopydClient(),
  ) {
    this.maxIoSectors = log.regionSectors;
    const heldRegions = log.regionCount <= MAX_HELD_REGIONS ? log.regionCount : 0;
    this.viewShare = new SharedArrayBuffer(VIEW_SHARE_HOLDS_OFFSET + RegionHolds.byteLength(heldRegions));
    this.readLegShare = new Int32Array(this.viewShare, 0, 1);
    this.holds = RegionHolds.create(this.viewShare, VIEW_SHARE_HOLDS_OFFSET, log.regionSectors);
    this.regionHash = new RegionHash(log, features.handleErrors, (region) => this.holds.busy(region));
    this.capabilities = passthroughCapabilities(legs.map((leg) => leg.device));
    // The kernel's worker makes its first pass at construction, before the table is live: a
    // `nosync` log is already all in sync then, and its "in sync" event is lost (spec §4.2).
    this.inSync = log.syncCount() === log.regionCount;
    this.publishReadLeg();
  }

  queueViewShare(): SharedArrayBuffer {
    this.viewed = true;
    return this.viewShare;
  }

  /** Called whenever the default leg or a leg's errors change, before the I/O that saw it is answered. */
  private publishReadLeg(): void {
    Atomics.store(this.readLegShare, 0, this.legs[this.defaultLeg]!.errorCount === 0 ? this.defaultLeg : -1);
  }

  map(bio: Bio, done: MapDone): void {
    const region = Math.floor(bio.sector / this.log.regionSectors);
    const io = { bio, done, region };
    if (bio.op === IoOp.Read && this.log.inSync(region)) {
      this.readFromChosenLeg(io);
      return;
    }
    (bio.op === IoOp.Read ? this.reads : this.writes).push(io);
    this.wake();
  }

  status(kind: StatusKind): string {
    const devices = this.legs.map((leg) => leg.device.tableName);
    if (kind === 'info') {
      const chars = this.legs.map((leg) => leg.statusChar).join('');
      return `${this.legs.length} ${devices.join(' ')} ${this.log.syncCount()}/${this.log.regionCount} 1 ${chars} ${this.log.status('info')}`;
    }
    const legs = this.legs.map((leg) => `${leg.device.tableName} ${leg.offsetSectors}`).join(' ');
    const features = [...(this.features.handleErrors ? ['handle_errors'] : []), ...(this.features.keepLog ? ['keep_log'] : [])];
    return `${this.log.status('table')} ${this.legs.length} ${legs}${features.length > 0 ? ` ${features.length} ${features.join(' ')}` : ''}`;
  }

  async resume(): Promise<void> {
    await this.log.resume();
    this.suspending = undefined;
    this.recoveryAllowed = true;
    this.wake();
  }

  /**
   * Recovery stops after the region in flight; held writes are answered now: REQUEUE under
   * --noflush (re-issued after resume, to the new table), EIO otherwise (§4 step 9).
   */
  async presuspend(options: { noflush: boolean }): Promise<void> {
    this.suspending = options;
    this.recoveryAllowed = false;
    // Views' writes come here from now on, and the regions they held are cleaned as ours are
    // once the queue threads have drained (postsuspend's pass), leaving the log as the kernel's.
    this.holds.revokeAll();
    this.sweep();
    for (const io of this.held.splice(0)) this.completeHeld(io);
    if (this.regionHash.recoveriesInFlight > 0) await new Promise<void>((resolve) => this.recoveryIdle.push(resolve));
    await this.log.presuspend?.();
  }

  async postsuspend(): Promise<void> {
    this.sweep(); // the queue threads have drained: every region presuspend revoked is free now
    await this.nextPass();
    await this.log.postsuspend();
  }

  devices(): BlockDevice[] {
    return [...this.legs.map((leg) => leg.device), ...this.log.devices()];
  }

  async destroy(): Promise<void> {
    this.recoveryAllowed = false;
    clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    await this.kcopyd.destroy();
  }

  /** The legs' flush, for the log to call before it writes clean bits (§4 mirror_flush). */
  readonly flushLegs = async (): Promise<number> => {
    const errors = await dmIo({ op: 'write', memory: flatMemory(NO_DATA), preflush: true }, this.legs.map((leg) => ({ device: leg.device, sector: 0, count: 0 })));
    this.legs.forEach((leg, index) => {
      if (errors & regionBit(index)) this.failLeg(leg, 'flush');
    });
    return errors === 0 ? 0 : -EIO;
  };

  private wake(): void {
    if (this.passRunning) {
      this.passWanted = true;
      return;
    }
    this.passRunning = true;
    setImmediate(() => void this.runPasses());
  }

  private nextPass(): Promise<void> {
    return new Promise((resolve) => {
      this.passDone.push(resolve);
      this.wake();
    });
  }

  private async runPasses(): Promise<void> {
    do {
      this.passWanted = false;
      const waiting = this.passDone.splice(0);
      await this.pass();
      for (const resolve of waiting) resolve();
    } while (this.passWanted || this.passDone.length > 0);
    this.passRunning = false;
  }

  /** do_mirror: one pass in the kernel's order. */
  private async pass(): Promise<void> {
    // update_states settles regions in memory at once and then flushes the log. The next
    // region's copy starts while that flush runs, not after it (the kernel waits): the copy
    // touches nothing the flush writes, and its own clean bit can only be written by a later
    // flush, which flushes the legs first. One region in flight as in the kernel; the copy and
    // the log's leg flush + log write + log device flush overlap instead of adding up.
    const statesFlushed = this.regionHash.updateStates();
    this.doRecovery();
    await statesFlushed;
    this.doReads();
    await this.doWrites();
    this.doFailures();
    if (!this.inSync && this.log.syncCount() === this.log.regionCount) {
      this.inSync = true;
      for (const leg of this.legs) {
        leg.errorCount = 0;
        leg.errorTypes.clear();
      }
      this.device.raiseEvent();
    }
  }

  /**
   * New recovery work only while the table is live; a region already taken keeps going (it may
   * be waiting for its writes to drain), which is what a suspend waits for (dm_rh_stop_recovery).
   */
  private doRecovery(): void {
    if (this.recoveryAllowed) this.regionHash.startRecovery();
    const ready = [...this.recoveryAwaitingViews.splice(0), ...this.regionHash.takeQuiesced()];
    for (const region of ready) {
      // A region held for views is in sync and never recovered; one revoked by a failed write
      // may still have their writes in flight, which its copy must not race.
      if (this.holds.busy(region)) this.recoveryAwaitingViews.push(region);
      else this.recover(region);
    }
    if (this.recoveryAwaitingViews.length > 0) this.startSweeping();
  }

  /** Copy a region from the default leg to every other leg (kcopyd, one region at a time). */
  private recover(region: number): void {
    const source = this.legs[this.defaultLeg]!;
    const others = this.legs.filter((_, index) => index !== this.defaultLeg);
    const firstSector = region * this.log.regionSectors;
    const sectorCount = Math.min(this.log.regionSectors, this.targetSectors - firstSector);
    this.kcopyd.copy(
      { device: source.device, sector: source.offsetSectors + firstSector, count: sectorCount },
      others.map((leg) => ({ device: leg.device, sector: leg.offsetSectors + firstSector, count: sectorCount })),
      this.features.handleErrors ? 0 : KCOPYD_IGNORE_ERROR,
      (readErr, writeErr) => {
        if (readErr) this.failLeg(source, 'sync');
        others.forEach((leg, index) => {
          if (writeErr & regionBit(index)) this.failLeg(leg, 'sync');
        });
        this.regionHash.recoveryDone(region, !readErr && writeErr === 0);
        if (this.regionHash.recoveriesInFlight === 0) for (const idle of this.recoveryIdle.splice(0)) idle();
        this.wake();
      },
      undefined,
    );
  }

  private doReads(): void {
    for (const io of this.reads.splice(0)) {
      const state = this.regionHash.stateOf(io.region);
      if (state === RegionState.Clean || state === RegionState.Dirty) {
        this.readFromChosenLeg(io);
      } else {
        // Out of sync: only the default leg holds the truth.
        const leg = this.legs[this.defaultLeg]!;
        if (leg.errorCount > 0) io.done(-EIO);
        else this.readFrom(leg, io);
      }
    }
  }

  /** choose_mirror: the default leg, or walking backwards to the first leg without errors. */
  private readFromChosenLeg(io: QueuedIo): void {
    for (let step = 0; step < this.legs.length; step++) {
      const leg = this.legs[(this.defaultLeg - step + this.legs.length) % this.legs.length]!;
      if (leg.errorCount === 0) return this.readFrom(leg, io);
    }
    io.done(-EIO);
  }

  private readFrom(leg: MirrorLeg, io: QueuedIo): void {
    leg.device.read(io.bio.data, leg.offsetSectors + io.bio.sector).then(
      (result) => this.readDone(leg, io, result),
      () => this.readDone(leg, io, -EIO),
    );
  }

  private readDone(leg: MirrorLeg, io: QueuedIo, result: number): void {
    if (result >= 0 || result === -EOPNOTSUPP) return io.done(result);
    this.failLeg(leg, 'read');
    const defaultOk = this.legs[this.defaultLeg]!.errorCount === 0;
    const anotherLeg = this.log.inSync(io.region) && this.legs.some((other) => other.errorCount === 0);
    if (defaultOk || anotherLeg) {
      this.reads.push(io); // the worker picks another leg
      this.wake();
    } else {
      io.done(-EIO);
    }
  }

  private async doWrites(): Promise<void> {
    const writes = this.writes.splice(0);
    if (writes.length === 0) return;
    const toAllLegs: QueuedIo[] = [];
    const toDefaultLeg: QueuedIo[] = [];
    for (const io of writes) {
      if (!countsForRegion(io.bio)) {
        toAllLegs.push(io);
        continue;
      }
      const state = this.regionHash.stateOf(io.region);
      if (state === RegionState.Recovering) {
        // A copy never races a write: it goes again once the region's copy has ended (§4.1).
        this.regionHash.delay(io.region, () => {
          this.writes.push(io);
          this.wake();
        });
      } else {
        (state === RegionState.NoSync ? toDefaultLeg : toAllLegs).push(io);
      }
    }
    for (const io of [...toAllLegs, ...toDefaultLeg]) if (countsForRegion(io.bio)) this.regionHash.incPending(io.region);
    // The dirty marks are durable before any data write is issued.
    if ((await this.log.flush()) < 0) this.logFailure = true;
    this.holdForViews(toAllLegs);

    if (this.logFailure && this.features.handleErrors) this.failures.push(...toAllLegs);
    else for (const io of toAllLegs) this.writeToLegs(io, this.legs);

    const someLegFailed = this.legs.some((leg) => leg.errorCount > 0);
    for (const io of toDefaultLeg) {
      if (someLegFailed && this.features.handleErrors && !this.features.keepLog) this.failures.push(io);
      else this.writeToLegs(io, [this.legs[this.defaultLeg]!]);
    }
  }

  /** One multi-region dm-io write: the same data to every leg, each at its own offset. */
  private writeToLegs(io: QueuedIo, legs: readonly MirrorLeg[]): void {
    const { bio } = io;
    const regions: IoRegion[] = legs.map((leg) => ({
      device: leg.device,
      sector: bio.op === IoOp.Flush ? 0 : leg.offsetSectors + bio.sector,
      count: bio.sectorCount,
    }));
    dmIo(requestFor(bio), regions).then(
      (errors) => this.writeDone(io, legs, errors),
      () => this.writeDone(io, legs, (1 << legs.length) - 1),
    );
  }

  private writeDone(io: QueuedIo, legs: readonly MirrorLeg[], errors: number): void {
    if (errors === 0) return this.complete(io, io.bio.op === IoOp.Write ? io.bio.data.byteLength : 0);
    if (io.bio.op === IoOp.Discard) return this.complete(io, -EOPNOTSUPP); // degrades nothing
    legs.forEach((leg, index) => {
      if (errors & regionBit(index)) this.failLeg(leg, io.bio.op === IoOp.Flush ? 'flush' : 'write');
    });
    if (io.bio.op === IoOp.Flush) {
      this.regionHash.markFlushFailure();
      this.holds.revokeAll();
    }
    this.failures.push(io);
    this.wake();
  }

  /** do_failures (§4 step 7). */
  private doFailures(): void {
    for (const io of this.failures.splice(0)) {
      if (!this.logFailure) {
        if (countsForRegion(io.bio)) {
          this.holds.revoke(io.region);
          this.regionHash.markNoSync(io.region);
        }
        this.inSync = false;
      }
      const anyLegValid = this.legs.some((leg) => leg.errorCount === 0);
      if (!anyLegValid || (this.features.keepLog && this.logFailure)) {
        this.complete(io, -EIO);
      } else if (this.features.handleErrors && !this.features.keepLog) {
        if (this.suspending !== undefined) this.completeHeld(io);
        else this.held.push(io);
      } else {
        // The data is on at least one leg (§4 step 7).
        this.complete(io, io.bio.op === IoOp.Write ? io.bio.data.byteLength : 0);
      }
    }
  }

  private completeHeld(io: QueuedIo): void {
    if (this.suspending?.noflush) {
      if (countsForRegion(io.bio)) this.regionHash.decPending(io.region);
      io.done(REQUEUE);
    } else {
      this.complete(io, -EIO);
    }
  }

  private complete(io: QueuedIo, result: number): void {
    if (countsForRegion(io.bio)) this.regionHash.decPending(io.region);
    io.done(result);
    this.wake();
  }

  /**
   * After the log flush of a pass: the regions of writes about to go to every leg, marked dirty
   * durably now, may take views' writes too, while the legs and the log are healthy and the
   * table is not being suspended.
   */
  private holdForViews(toAllLegs: readonly QueuedIo[]): void {
    if (!this.viewed || this.logFailure || this.suspending !== undefined || this.legs.some((leg) => leg.errorCount > 0)) return;
    let held = false;
    for (const io of toAllLegs) {
      if (io.bio.op !== IoOp.Write || io.region >= this.holds.regionCount) continue;
      this.holds.hold(io.region);
      held = true;
    }
    if (held) this.startSweeping();
  }

  private startSweeping(): void {
    if (this.sweepTimer !== undefined) return;
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweepTimer.unref(); // a held region is cleaned at suspend anyway
  }

  /** Release held regions idle for a sweep, and run a pass for what that frees. */
  private sweep(): void {
    const freed = this.holds.sweep();
    for (const region of freed) this.regionHash.released(region);
    if (freed.length > 0 || this.recoveryAwaitingViews.length > 0) this.wake();
    if (!this.holds.anyBusy && this.recoveryAwaitingViews.length === 0 && this.sweepTimer !== undefined) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }

  /** fail_mirror (§7). */
  private failLeg(leg: MirrorLeg, type: LegErrorType): void {
    leg.errorCount++;
    this.holds.revokeAll(); // a failed leg changes how writes are done: the owner does them all
    this.publishReadLeg();
    if (leg.errorTypes.has(type)) return;
    leg.errorTypes.add(type);
    if (!this.features.handleErrors) return; // recorded, shown in status, no event
    if (leg === this.legs[this.defaultLeg] && (this.inSync || this.features.keepLog)) {
      const healthy = this.legs.findIndex((other) => other.errorCount === 0);
      if (healthy >= 0) this.defaultLeg = healthy;
      this.publishReadLeg();
    }
    this.device.raiseEvent();
  }
}

/** Where the region holds start in the view share, after the read leg's word. */
export const VIEW_SHARE_HOLDS_OFFSET = Int32Array.BYTES_PER_ELEMENT;
/**
 * Regions held for views at most (16 MiB of share): 2 TiB of mirror in LVM's 512 KiB regions. A
 * larger mirror's views send every write to the owner. The share's pages are touched only where
 * regions are written.
 */
const MAX_HELD_REGIONS = 1 << 22;

/** Flushes and discards are sent to all legs without region accounting. */
function countsForRegion(bio: Bio): boolean {
  return bio.op === IoOp.Write || bio.op === IoOp.WriteZeroes;
}

function requestFor(bio: Bio): DmIoRequest {
  switch (bio.op) {
    case IoOp.Write:
      return { op: 'write', memory: flatMemory(bio.data), fua: bio.fua };
    case IoOp.Flush:
      return { op: 'write', memory: flatMemory(NO_DATA), preflush: true };
    case IoOp.Discard:
      return { op: 'discard' };
    default:
      return { op: 'writeZeroes', noUnmap: bio.noUnmap };
  }
}

/** mirror_ctr's checks, in its order and words (spec §1). */
export const mirrorTargetType: TargetType = {
  name: 'mirror',
  version: [1, 14, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    let mirror: MirrorTarget | undefined;
    let log: DirtyLog;
    let logWords: number;
    try {
      const part = parseLogPart(args);
      logWords = part.wordCount;
      log = await part.type.create({
        args: part.args,
        targetSectors: ctx.lengthSectors,
        openDevice: (spec) => ctx.openDevice(spec),
        // The log calls back only once the mirror exists (flushes happen from resume on).
        flushLegs: () => mirror!.flushLegs(),
        raiseEvent: () => ctx.device.raiseEvent(),
        warn: (message) => ctx.scope.warn(`${ctx.device.name}: mirror: dirty region log: ${message}`),
        ...(ctx.rebuilt ? { rebuilt: ctx.rebuilt } : {}),
      });
    } catch (error) {
      // Every log failure reads the same to the user, as in the kernel; ours keeps the detail.
      if (error instanceof DirtyLogError) throw new TargetError(`Error creating mirror dirty log: ${error.message}`);
      throw error;
    }
    const { legs, rest } = await openLegs(ctx, args.slice(logWords));
    const features = parseFeatures(rest);
    mirror = new MirrorTarget(legs, log, features, ctx.lengthSectors, ctx.device, new KcopydClient({ throttle: ctx.scope.get(RESYNC_THROTTLE), readSourceThroughPageCache: true }));
    return mirror;
  },
  parameters: [resyncThrottleParameter],
};

/** `<#mirrors> <dev> <offset>...` opened as dm-raid1's constructor does; `rest` is what follows them (the features). */
export async function openLegs(ctx: TargetContext, words: readonly string[]): Promise<{ legs: MirrorLeg[]; rest: readonly string[] }> {
  const legCount = parseSectorNumber(words[0] ?? '');
  if (legCount === undefined || legCount < 2 || legCount > 9) throw new TargetError('Invalid number of mirrors');
  const rest = words.slice(1);
  if (rest.length < legCount * 2) throw new TargetError('Too few mirror arguments');
  const legs: MirrorLeg[] = [];
  for (let index = 0; index < legCount; index++) {
    const offset = parseSectorNumber(rest[index * 2 + 1]!);
    if (offset === undefined) throw new TargetError('Invalid offset');
    let device: BlockDevice;
    try {
      device = await ctx.openDevice(rest[index * 2]!);
    } catch (cause) {
      throw new TargetError(`Device lookup failure: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    }
    if (offset + ctx.lengthSectors > device.sizeSectors) {
      throw new TargetError(`Device too small for target: ${device.tableName} start=${offset}, len=${ctx.lengthSectors}, dev_size=${device.sizeSectors}`);
    }
    legs.push(new MirrorLeg(device, offset));
  }
  return { legs, rest: rest.slice(legCount * 2) };
}

function parseFeatures(rest: readonly string[]): MirrorFeatures {
  if (rest.length === 0) return { handleErrors: false, keepLog: false };
  const count = parseSectorNumber(rest[0]!);
  if (count === undefined) throw new TargetError('Invalid number of features');
  if (count > rest.length - 1) throw new TargetError('Not enough arguments to support feature count');
  let handleErrors = false;
  let keepLog = false;
  for (const word of rest.slice(1, 1 + count)) {
    if (word === 'handle_errors') handleErrors = true;
    else if (word === 'keep_log') keepLog = true;
    else throw new TargetError('Unrecognised feature requested');
  }
  if (rest.length > 1 + count) throw new TargetError('Too many mirror arguments');
  if (keepLog && !handleErrors) throw new TargetError('keep_log feature requires the handle_errors feature');
  return { handleErrors, keepLog };
}
