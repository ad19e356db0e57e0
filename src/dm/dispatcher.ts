import { EBUSY, EINVAL, EIO, ErrnoError, type IoResult } from '../base/errno';
import { sectorsToBytes } from '../base/units';
import { carriesData, IoOp, NO_DATA, type Bio, type InPlaceBio, type IoDone } from '../io/bio';
import { pieceSectorCount, splitRequest } from './split';
import type { InPlaceAccess } from '../io/block-device';
import { REQUEUE, type MapOutcome, type SuspendOptions, type Target } from './target';
import { findSegmentIndex, type Segment } from './table';

/**
 * The core that serves one device's requests: it routes each request to the targets under it
 * (split at segment ends and at each target's maxIoSectors boundaries), completes it once, and
 * implements suspend and resume as dm does (targets.md §8.1, without the filesystem freeze,
 * which userspace cannot do: every suspend behaves as `--nolockfs`).
 *
 * A request's result is never more than what really moved: for a split Read or Write it is the
 * contiguous prefix of pieces that completed in full (ublk then re-issues only the tail, which
 * meets the failure again on its own), so a short or failed piece in the middle can neither hide
 * a hole in written data nor expose stale bytes of the tag buffer to a reader.
 */

/** The table the dispatcher maps against (a Table, or a test fixture). */
export interface DispatchTable {
  readonly segments: readonly Segment[];
  readonly sizeSectors: number;
}

/**
 * Where the dispatcher is in the suspend cycle. New requests are mapped only while 'active'
 * or 'presuspending' (presuspend hooks run before I/O is blocked, as in dm_suspend); in the
 * other states they wait in the deferred queue.
 */
type DispatcherState = 'active' | 'presuspending' | 'draining' | 'suspended' | 'resuming';

interface WaitingRequest {
  readonly bio: Bio;
  readonly done: IoDone;
}

const FLUSH_BIO: Bio = Object.freeze({ op: IoOp.Flush, sector: 0, sectorCount: 0, data: NO_DATA, fua: false, noUnmap: false });

export class Dispatcher<T extends DispatchTable = DispatchTable> {
  private liveTable: T;
  private state: DispatcherState = 'active';
  /** Whether the suspend under way (or in force) is `--noflush`. */
  private noflush = false;
  private deferred: WaitingRequest[] = [];
  private mappedCount = 0;
  private notifyDrained: (() => void) | undefined;
  private readonly inPlace: boolean;

  /**
   * `suspended`: start as a freshly loaded dm device does, with the table's resume hooks not yet
   * run; the first resume() runs them (dmsetup create is load + resume).
   *
   * `inPlace`: serve in place where the table's targets can (Target.inPlaceAddress): reads are
   * answered with an address (every request submitted must then be an InPlaceBio), and writes
   * are placed through placeWrite(). Only for a ublk device whose writes ublk delivers without
   * their data (UBLK_F_NEED_GET_DATA): otherwise ublk would copy the next write of a tag
   * answered so to the address the read named, into the device.
   */
  constructor(table: T, options: { readonly suspended?: boolean; readonly inPlace?: boolean } = {}) {
    this.liveTable = table;
    if (options.suspended) this.state = 'suspended';
    this.inPlace = options.inPlace ?? false;
  }

  get table(): T {
    return this.liveTable;
  }

  get suspended(): boolean {
    return this.state === 'suspended';
  }

  /** Requests handed to targets and not yet completed. */
  get inFlight(): number {
    return this.mappedCount;
  }

  /** Requests waiting for resume (arrived while suspended, or requeued under `--noflush`). */
  get deferredCount(): number {
    return this.deferred.length;
  }

  /** Serve one request; `done` gets bytes moved for Read/Write, 0 for the others, or -errno, once. */
  submit(bio: Bio, done: IoDone): void {
    if (this.ioBlocked()) {
      this.deferred.push({ bio, done });
      return;
    }
    this.mappedCount++;
    let completed = false;
    this.route(bio, (outcome) => {
      if (completed) return; // a target that answers twice: the first answer stands
      completed = true;
      this.settle(bio, done, outcome);
    });
  }

  /**
   * Where ublk should copy a write's data before the write is submitted (UBLK_F_NEED_GET_DATA):
   * the device's own bytes, when the whole request falls in one target that serves in place and
   * the device is active; or 0 for the request's buffer, and the write is then submit()ted as
   * any. A placed write counts as mapped from now until landed() or abandoned(), so a suspend or
   * a table swap waits for the copy into the old table's device.
   */
  placeWrite(bio: Bio): number {
    if (!this.inPlace || this.state !== 'active' || bio.op !== IoOp.Write) return 0;
    const table = this.liveTable;
    const { sector, sectorCount } = bio;
    if (!(sectorCount > 0 && sector >= 0 && sector + sectorCount <= table.sizeSectors)) return 0;
    const segment = table.segments[findSegmentIndex(table.segments, sector)]!;
    const targetSector = sector - segment.startSector;
    if (pieceSectorCount(segment, targetSector, sectorCount) !== sectorCount) return 0;
    const address = this.inPlaceAddressIn(segment.target, targetSector, sectorsToBytes(sectorCount), 'write');
    if (address !== 0) this.mappedCount++;
    return address;
  }

  /** Where `target` has these bytes, when this dispatcher serves in place and the target can; else 0. */
  private inPlaceAddressIn(target: Target, targetSector: number, byteLength: number, access: InPlaceAccess): number {
    return this.inPlace && target.inPlaceAddress !== undefined ? target.inPlaceAddress(targetSector, byteLength, access) : 0;
  }

  /**
   * ublk copied a placed write's data to the device: answer it with the bytes of `bio` (ublk
   * shortens a request it could copy only part of, and delivers the rest as another).
   */
  landed(bio: Bio, done: IoDone): void {
    done(sectorsToBytes(bio.sectorCount));
    this.unmapped();
  }

  /** A placed write will not land there (its command failed, or ublk could not copy to the place). */
  abandoned(): void {
    this.unmapped();
  }

  /**
   * dm_suspend without the freeze: presuspend hooks; then new requests are deferred and the
   * ones already mapped drain; then postsuspend hooks. If a presuspend hook throws, the targets
   * already presuspended get their resume hook back and the dispatcher stays active.
   *
   * `beforeBlocking` runs after the presuspend hooks, while requests are still mapped: queue
   * threads that forward I/O here drain their own through it (a failure counts as a presuspend
   * failure).
   */
  async suspend(options: SuspendOptions = { noflush: false }, beforeBlocking?: () => Promise<void>): Promise<void> {
    if (this.state === 'suspended') throw new ErrnoError('device is already suspended', EINVAL);
    if (this.state !== 'active') throw new ErrnoError(`device is busy (${this.state})`, EBUSY);
    const table = this.liveTable;

    this.state = 'presuspending';
    this.noflush = options.noflush;
    const presuspended: Target[] = [];
    try {
      for (const segment of table.segments) {
        await segment.target.presuspend?.(options);
        presuspended.push(segment.target);
      }
      await beforeBlocking?.();
    } catch (error) {
      this.state = 'active';
      this.noflush = false;
      await undoPresuspend(presuspended);
      throw error;
    }

    this.state = 'draining';
    await this.drain();
    this.state = 'suspended';
    // A postsuspend failure leaves the device suspended: its I/O is already drained.
    for (const segment of table.segments) await segment.target.postsuspend?.();
  }

  /**
   * dm_resume: preresume hooks (a throw leaves the device suspended), resume hooks, then the
   * waiting requests are mapped in order against the table live now. Resuming an active
   * dispatcher does nothing, as in the kernel.
   */
  async resume(): Promise<void> {
    if (this.state === 'active') return;
    if (this.state !== 'suspended') throw new ErrnoError(`device is busy (${this.state})`, EBUSY);
    const table = this.liveTable;

    this.state = 'resuming';
    try {
      for (const segment of table.segments) await segment.target.preresume?.();
      for (const segment of table.segments) await segment.target.resume?.();
    } catch (error) {
      this.state = 'suspended';
      throw error;
    }

    this.state = 'active';
    this.noflush = false;
    const waiting = this.deferred;
    this.deferred = [];
    for (const { bio, done } of waiting) this.submit(bio, done);
  }

  /** Make `next` the live table; only while suspended. Returns the old table for the caller to destroy. */
  swapTable(next: T): T {
    if (this.state !== 'suspended') throw new ErrnoError('the table can only be swapped while suspended', EINVAL);
    const previous = this.liveTable;
    this.liveTable = next;
    return previous;
  }

  private ioBlocked(): boolean {
    return this.state !== 'active' && this.state !== 'presuspending';
  }

  private drain(): Promise<void> {
    if (this.mappedCount === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.notifyDrained = resolve;
    });
  }

  /** A mapped request is answered, or pushed back (dm_handle_requeue). */
  private settle(bio: Bio, done: IoDone, outcome: MapOutcome): void {
    if (outcome === REQUEUE) {
      if (this.state === 'active' || this.state === 'resuming') {
        // Mapped again on a later turn, so a target that keeps refusing cannot starve the loop;
        // if a suspend starts meanwhile, submit() defers it.
        setImmediate(() => this.submit(bio, done));
      } else if (this.noflush) {
        this.deferred.push({ bio, done });
      } else {
        done(-EIO); // a flushing suspend must not leave I/O behind it
      }
    } else {
      done(outcome);
    }
    this.unmapped();
  }

  private unmapped(): void {
    if (--this.mappedCount === 0 && this.notifyDrained !== undefined) {
      const notify = this.notifyDrained;
      this.notifyDrained = undefined;
      notify();
    }
  }

  private route(bio: Bio, finish: (outcome: MapOutcome) => void): void {
    const table = this.liveTable;
    const { op, sector, sectorCount } = bio;
    if (op === IoOp.Flush) {
      flushAll(table, finish);
      return;
    }
    // Checked at mapping time, not arrival: a deferred request meets the table live at resume.
    if (!(sector >= 0 && sectorCount >= 0 && sector + sectorCount <= table.sizeSectors)) {
      finish(-EIO);
      return;
    }
    if (carriesData(op) && bio.data.length !== sectorsToBytes(sectorCount)) {
      finish(-EIO); // the ublk layer sizes every data view exactly: this is a bug below us
      return;
    }
    if (sectorCount === 0) {
      finish(0);
      return;
    }
    const segment = table.segments[findSegmentIndex(table.segments, sector)]!;
    const targetSector = sector - segment.startSector;
    if (pieceSectorCount(segment, targetSector, sectorCount) === sectorCount) {
      const address = op === IoOp.Read ? this.inPlaceAddressIn(segment.target, targetSector, bio.data.length, 'read') : 0;
      if (address !== 0) {
        (bio as InPlaceBio).inPlaceAddress = address;
        finish(bio.data.length);
        return;
      }
      mapSafely(segment.target, targetSector === sector ? bio : { ...bio, sector: targetSector }, finish);
      return;
    }
    mapPieces(table, bio, finish);
  }
}

/** target.map, with a throw (a bug in the target) answered as -EIO. */
function mapSafely(target: Target, bio: Bio, done: (outcome: MapOutcome) => void): void {
  try {
    target.map(bio, done);
  } catch {
    done(-EIO);
  }
}

/** A request that spans pieces: map them all concurrently, answer once when all have answered. */
function mapPieces(table: DispatchTable, bio: Bio, finish: (outcome: MapOutcome) => void): void {
  const withData = carriesData(bio.op);
  const pieces = splitRequest(table.segments, bio.sector, bio.sectorCount);
  const outcomes: Array<MapOutcome | undefined> = new Array(pieces.length);
  let outstanding = pieces.length;
  pieces.forEach((piece, index) => {
    const pieceBio: Bio = {
      op: bio.op,
      sector: piece.targetSector,
      sectorCount: piece.sectorCount,
      data: withData ? bio.data.subarray(piece.byteOffset, piece.byteOffset + sectorsToBytes(piece.sectorCount)) : NO_DATA,
      fua: bio.fua,
      noUnmap: bio.noUnmap,
    };
    mapSafely(table.segments[piece.segmentIndex]!.target, pieceBio, (outcome) => {
      if (outcomes[index] !== undefined) return;
      outcomes[index] = outcome;
      if (--outstanding === 0) finish(withData ? movedPrefix(outcomes as MapOutcome[], pieces.map((p) => sectorsToBytes(p.sectorCount))) : firstError(outcomes as MapOutcome[]));
    });
  });
}

/** Every segment's target gets the flush once, concurrently; the first error (in table order) wins. */
function flushAll(table: DispatchTable, finish: (outcome: MapOutcome) => void): void {
  const segments = table.segments;
  if (segments.length === 1) {
    mapSafely(segments[0]!.target, FLUSH_BIO, finish);
    return;
  }
  const outcomes: Array<MapOutcome | undefined> = new Array(segments.length);
  let outstanding = segments.length;
  segments.forEach((segment, index) => {
    mapSafely(segment.target, FLUSH_BIO, (outcome) => {
      if (outcomes[index] !== undefined) return;
      outcomes[index] = outcome;
      if (--outstanding === 0) finish(firstError(outcomes as MapOutcome[]));
    });
  });
}

/**
 * A split Read or Write's result: REQUEUE if any piece asked for it (the whole request goes
 * again, as dm requeues the original bio); else the bytes of the contiguous prefix that moved in
 * full, plus the partial count of the first short piece. With nothing moved, the first piece's
 * error, or -EIO for a piece that moved nothing without one (ublk would re-issue a zero-byte
 * write for ever).
 */
export function movedPrefix(outcomes: readonly MapOutcome[], pieceByteLengths: readonly number[]): MapOutcome {
  if (outcomes.includes(REQUEUE)) return REQUEUE;
  let movedBytes = 0;
  for (let index = 0; index < outcomes.length; index++) {
    const outcome = outcomes[index] as IoResult;
    const expected = pieceByteLengths[index]!;
    if (outcome < 0) return movedBytes > 0 ? movedBytes : outcome;
    movedBytes += Math.min(outcome, expected);
    if (outcome < expected) break;
  }
  return movedBytes > 0 ? movedBytes : -EIO;
}

/** Flush, Discard and WriteZeroes pieces: REQUEUE if any asked for it, else the first error in order, else 0. */
function firstError(outcomes: readonly MapOutcome[]): MapOutcome {
  if (outcomes.includes(REQUEUE)) return REQUEUE;
  for (const outcome of outcomes) if ((outcome as IoResult) < 0) return outcome;
  return 0;
}

/** Give targets whose presuspend ran their resume hook back; the presuspend failure is what gets reported. */
async function undoPresuspend(targets: readonly Target[]): Promise<void> {
  for (const target of targets) {
    try {
      await target.resume?.();
    } catch {
      // Reported through the presuspend failure.
    }
  }
}

/**
 * Whether a device serving `table` should have ublk deliver writes without their data
 * (UBLK_F_NEED_GET_DATA), for placeWrite(): some target of it can serve in place.
 */
export function servesInPlace(table: DispatchTable): boolean {
  return table.segments.some((segment) => segment.target.inPlaceAddress !== undefined && segment.target.devices().some((device) => device.servesInPlace === true));
}
