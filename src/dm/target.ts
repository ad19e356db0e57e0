import type { BlockDevice } from '../io/block-device';
import type { IoResult } from '../base/errno';
import type { IoOp } from '../io/bio';

/**
 * The target contract, shaped like the kernel's `struct target_type`: a constructor that only
 * validates its arguments and opens devices, a `map` that does one piece of I/O, status and
 * message hooks, and suspend hooks. The core (Dispatcher) owns splitting requests at segment
 * and `maxIoSectors` boundaries, suspend, draining and accounting; a target never sees a piece
 * of I/O that crosses its own end.
 */

/** One piece of a request, as seen by one target. */
export interface TargetIo {
  readonly op: IoOp;
  /** First sector, relative to the start of the target (the kernel's dm_target_offset). */
  readonly sector: number;
  /** Length in 512-byte sectors (0 for Flush). */
  readonly sectorCount: number;
  /**
   * The data for Read (to fill) and Write (to send): exactly sectorCount * 512 bytes, a view of
   * the request's buffer. Empty for Flush, Discard and WriteZeroes.
   */
  readonly data: Uint8Array;
  /** Write with Forced Unit Access: stable on the backing device before completion. */
  readonly fua: boolean;
  /** WriteZeroes must not deallocate (REQ_NOUNMAP). */
  readonly noUnmap: boolean;
}

export type StatusKind = 'info' | 'table';

export interface Target {
  /** The target type name as written in tables ("linear"). */
  readonly type: string;
  /**
   * Largest piece this target accepts, in sectors, aligned from the target's start (striped:
   * chunk size; snapshot: chunk size; mirror: region size). The core splits at these boundaries.
   * Undefined means no limit beyond the segment.
   */
  readonly maxIoSectors?: number;

  /**
   * Do one piece of I/O: bytes moved (Read/Write) or 0 (others) on success, or -errno.
   * Flush reaches every target of the table once (the core sends it); a target with nothing to
   * flush returns 0. Unsupported operations return -EOPNOTSUPP.
   */
  map(io: TargetIo): Promise<IoResult>;

  /**
   * Optional fast form of map for the per-request hot path: the same I/O, with the result
   * passed to `done` (exactly once) instead of a promise. A throw means what a rejection of
   * map means (a bug), and `done` is then never called.
   */
  mapCb?(io: TargetIo, done: (result: IoResult) => void): void;

  /** INFO (`dmsetup status`) or TABLE (`dmsetup table`) text, without the `start len type` prefix. */
  status(kind: StatusKind): string;

  /** Runtime command (`dmsetup message`); absent when the target takes none. Returns reply text. */
  message?(argv: string[]): Promise<string>;

  /** Stop background work before I/O is drained for a suspend. */
  presuspend?(): Promise<void>;
  /** After the device is suspended and idle: flush metadata. */
  postsuspend?(): Promise<void>;
  /** Before resume: validate; a throw leaves the device suspended. */
  preresume?(): Promise<void>;
  /** Pick background work up again. */
  resume?(): Promise<void>;

  /** The devices under this target (the kernel's iterate_devices). */
  devices(): BlockDevice[];

  /** Release everything the constructor took (the kernel's dtr). */
  destroy(): Promise<void>;
}

/** What a constructor gets besides its arguments. */
export interface TargetContext {
  /** Start of the segment in the device, in sectors. */
  readonly startSector: number;
  /** Length of the segment in sectors. */
  readonly lengthSectors: number;
  /**
   * Open a backing device named by a path or "major:minor". Devices are shared between the
   * segments of one table and closed when the table is destroyed, so targets do not close them.
   */
  openDevice(spec: string): Promise<BlockDevice>;
}

/** A constructor failure: `message` is what the user sees, like the kernel's ti->error. */
export class TargetError extends Error {}

export interface TargetType {
  readonly name: string;
  /** The kernel's ctr: validate `args`, open devices; throw TargetError and leave nothing behind. */
  create(ctx: TargetContext, args: string[]): Promise<Target>;
}
