import { DmError } from '../../base/errno';
import { TargetError } from '../../dm/target';
import type { BlockDevice, DeviceKey } from '../../io/block-device';
import { ExceptionTable } from './exception-table';
import type { ExceptionStore } from './exception-store';
import type { OriginRegistry, OriginSnapshot } from './origin-registry';

/**
 * Exception handover (spec snapshot.md §5.3, dm-snap.c's __handover_exceptions): a new snapshot
 * or snapshot-merge table loaded over the COW of an active snapshot of the same origin does not
 * read the COW; at its resume it takes the live one's completed exceptions and store, whose
 * in-memory state is the truth (batched records may not be on disk yet), and the live one becomes
 * Invalid, silently. This is how a table reload and LVM's merge keep a snapshot's exceptions.
 */

/**
 * What a handover moves from one table to the other, as the kernel swaps `complete` and `store`
 * and copies `valid` and `snapshot_overflowed`: one object, so the swap is two assignments.
 */
export class HeldExceptions {
  /** Set only for overflow on a PO store (§3.3); in memory only. */
  overflowed = false;

  constructor(
    public store: ExceptionStore,
    readonly exceptions: ExceptionTable,
    public valid: boolean,
    /**
     * The store was never loaded: it belongs to a handover destination until its resume, then to
     * the source it was swapped into. The kernel marks it with chunk size 0, which `table` shows.
     */
    readonly unloaded: boolean,
  ) {}

  static loaded(store: ExceptionStore, valid: boolean, records: ReadonlyArray<readonly [number, number]>): HeldExceptions {
    const exceptions = new ExceptionTable();
    for (const [originChunk, cowChunk] of records) exceptions.insert(originChunk, cowChunk);
    return new HeldExceptions(store, exceptions, valid, false);
  }

  static awaitingHandover(store: ExceptionStore): HeldExceptions {
    return new HeldExceptions(store, new ExceptionTable(), true, true);
  }

  /** The chunk size `table` prints: 0 for a store that was never loaded. */
  get tableChunkSectors(): number {
    return this.unloaded ? 0 : this.store.chunkSectors;
  }
}

/** One side of a handover: a snapshot or snapshot-merge target. */
export interface HandoverParty extends OriginSnapshot {
  readonly originKey: DeviceKey;
  /** Its own table's handle on the COW device (each table opens, and closes, its own). */
  readonly cowDevice: BlockDevice;
  /** Its device is suspended (the kernel's dm_suspended(ti)). */
  readonly suspended: boolean;
  held: HeldExceptions;
  /** Exceptions being copied out: each will write into `held` when it completes. */
  readonly pendingCopies: number;
  /** Resolves once pendingCopies is 0. */
  whenIdle(): Promise<void>;
  /**
   * Origin writes copy out to it from now on (the kernel's `active = 1`). Called in the same
   * synchronous step as the swap, so no origin write falls between the source and it.
   */
  becomeActive(): void;
}

/** What __find_snapshots_sharing_cow finds among the origin's snapshots for `self`'s COW. */
interface CowSharing {
  /** The active snapshot using the COW. */
  readonly source: HandoverParty | undefined;
  /** An inactive snapshot using it: a handover destination. */
  readonly destination: HandoverParty | undefined;
  /** Snapshots over the COW (registered ones: a table under construction is not yet). */
  readonly count: number;
  /** A snapshot-merge of the origin, whatever its COW. */
  readonly merging: OriginSnapshot | undefined;
}

function sharingCow(registry: OriginRegistry, originKey: DeviceKey, cowKey: DeviceKey): CowSharing {
  let source: HandoverParty | undefined;
  let destination: HandoverParty | undefined;
  let merging: OriginSnapshot | undefined;
  let count = 0;
  for (const snapshot of registry.snapshotsOf(originKey)) {
    if (snapshot.merging) merging = snapshot;
    if (snapshot.cowKey !== cowKey) continue;
    count++;
    if (snapshot.active) source = snapshot as HandoverParty;
    else destination = snapshot as HandoverParty;
  }
  return { source, destination, count, merging };
}

/**
 * register_snapshot's check (__validate_exception_handover), for a new table over `cowKey` not
 * yet registered: true when it is a handover destination (it must not read the COW), false when
 * it loads on its own. Throws the kernel's errors for pairings it refuses. A COW in use by a
 * snapshot of another origin is refused too: the kernel does not look there, and both tables
 * would write the COW.
 */
export function validateHandover(registry: OriginRegistry, originKey: DeviceKey, cowKey: DeviceKey, forMerge: boolean): boolean {
  const found = sharingCow(registry, originKey, cowKey);
  if (found.count === 0 && registry.usingCow(cowKey) !== undefined) {
    throw new TargetError('COW device is in use by a snapshot of another origin');
  }
  if (found.count >= 2 || found.destination !== undefined) throw new TargetError('Snapshot cow pairing for exception table handover failed');
  if (found.source === undefined) return false;
  if (!forMerge) return true;
  if (found.merging !== undefined) throw new TargetError('A snapshot is already merging.');
  if (!found.source.held.store.mergeSupported) throw new TargetError('Snapshot exception store does not support snapshot-merge.');
  return true;
}

/**
 * snapshot_preresume: a source cannot resume while its destination waits, and a destination
 * cannot take over until its source is suspended.
 */
export function checkHandoverResume(registry: OriginRegistry, self: HandoverParty): void {
  const { source, destination } = sharingCow(registry, self.originKey, self.cowKey);
  if (source === undefined || destination === undefined) return;
  if (self === source) throw new DmError('Unable to resume snapshot source until handover completes.', 'EINVAL');
  if (!source.suspended) throw new DmError('Unable to perform snapshot handover until source is suspended.', 'EINVAL');
}

/**
 * snapshot_resume's handover, for `self` about to become active: when it is the destination of
 * a pending handover, wait until the source copies nothing out any more, then swap in one
 * synchronous step (no origin write can start a copy in between, which is what the kernel's
 * internal suspend of the origin ensures). The destination takes the source's exceptions, store,
 * validity and overflow; the source keeps the destination's unloaded store and becomes Invalid,
 * without an event and without a write to the COW. The destination keeps its own table's P/PO.
 */
export async function completeHandover(registry: OriginRegistry, self: HandoverParty): Promise<void> {
  for (;;) {
    const { source, destination } = sharingCow(registry, self.originKey, self.cowKey);
    if (source === undefined || destination !== self) return;
    if (source.pendingCopies > 0) {
      await source.whenIdle();
      continue; // look again: the source may have gone, or started another copy meanwhile
    }
    const taken = source.held;
    const left = self.held;
    taken.store.overflowSupported = left.store.overflowSupported;
    // Each store now writes through its new owner's handle: the source's table closes its own.
    taken.store.useCow(self.cowDevice);
    left.store.useCow(source.cowDevice);
    self.held = taken;
    source.held = left;
    left.valid = false;
    registry.resort(self.originKey, self); // reregister_snapshot: its chunk size is known now
    self.becomeActive();
    return;
  }
}

/**
 * snapshot_dtr: a source destroyed before its destination resumed cancels the handover, and the
 * destination, which never read the COW, is invalid.
 */
export function cancelHandoverFrom(registry: OriginRegistry, self: HandoverParty): void {
  const { source, destination } = sharingCow(registry, self.originKey, self.cowKey);
  if (source === self && destination !== undefined) destination.held.valid = false; // "Cancelling snapshot handover."
}
