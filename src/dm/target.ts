import { DmError, EIO, type IoResult } from '../base/errno';
import type { Bio } from '../io/bio';
import type { BlockDevice, InPlaceAccess } from '../io/block-device';
import type { DaemonScope } from './scope';

/**
 * The target contract, shaped like the kernel's `struct target_type`: a constructor that only
 * validates its arguments and opens devices, a `map` that does one piece of I/O, status and
 * message hooks, and suspend hooks. The core (Dispatcher) owns splitting requests at segment
 * and `maxIoSectors` boundaries, suspend, draining, requeueing and accounting; a target never
 * sees a piece of I/O that crosses its own end.
 */

/**
 * dm's DM_MAPIO_REQUEUE: "not now". The core holds the whole request and maps it again later:
 * at once while the device runs, after resume while a `--noflush` suspend is under way; a
 * suspend that flushes fails it with EIO instead (the kernel's dm_handle_requeue).
 */
export const REQUEUE: unique symbol = Symbol('REQUEUE');
export type Requeue = typeof REQUEUE;

/** What a piece of I/O ends with: bytes moved (Read/Write) or 0, -errno, or REQUEUE. */
export type MapOutcome = IoResult | Requeue;

/** Completes one piece of I/O; called exactly once. */
export type MapDone = (outcome: MapOutcome) => void;

export type StatusKind = 'info' | 'table';

/**
 * Where a target's I/O may run once devices are served by several worker threads: any queue's
 * thread (stateless targets, rebuilt per worker from the table text), or only the thread that
 * owns the target (snapshot, mirror: workers forward their I/O to it).
 */
export type ThreadModel = 'any-queue' | 'owner-thread';

/** What a target can take besides read, write and flush; the device advertises what all segments can. */
export interface TargetCapabilities {
  readonly discard: boolean;
  readonly writeZeroes: boolean;
  readonly fua: boolean;
}

export interface SuspendOptions {
  /** `suspend --noflush`: requeued I/O waits for resume instead of failing. */
  readonly noflush: boolean;
}

export interface Target {
  /** The target type name as written in tables ("linear"). */
  readonly type: string;
  /**
   * Largest piece this target accepts, in sectors, aligned from the target's start (striped:
   * chunk size; snapshot: chunk size; mirror: region size). The core splits at these boundaries.
   * Undefined means no limit beyond the segment.
   */
  readonly maxIoSectors?: number;
  readonly capabilities: TargetCapabilities;
  readonly threadModel: ThreadModel;

  /**
   * Do one piece of I/O (target-relative sectors) and call `done` once: bytes moved
   * (Read/Write) or 0 (others), -errno, or REQUEUE. Flush reaches every target of the table
   * once (the core sends it); a target with nothing to flush answers 0. Unsupported operations
   * answer -EOPNOTSUPP. A throw is a bug in the target: the core answers -EIO for it.
   * `bio` and its data are the target's until it calls `done`, not after: as the kernel frees a
   * bio at endio, the ublk layer refills the same object and buffer for the tag's next request.
   */
  map(bio: Bio, done: MapDone): void;

  /**
   * Optional, for a target that passes data through unchanged to a device that can serve in
   * place (linear over a tmpfs file; BlockDevice.inPlaceAddress): where the bytes of
   * [sector, sector + byteLength) (target-relative) are, or 0 to have map() serve the request.
   * The core asks it for a read or write that fits in the target, instead of calling map(): a
   * read is answered from the address, and a write's data is copied there by ublk before the
   * core sees the request again. So only a target whose map() would do exactly that copy and
   * nothing else (no copy-out first, no second leg) may have it.
   */
  inPlaceAddress?(sector: number, byteLength: number, access: InPlaceAccess): number;

  /**
   * Optional, for an 'owner-thread' target part of whose I/O needs none of its state: memory it
   * shares with a queue thread's view of it (a target type of the same name built there with a
   * QueueView), which serves that part on the queue thread and forwards the rest to this one.
   * The view reads only what this target keeps true in the memory (snapshot-origin: the chunks
   * every snapshot already holds; striped shares none, its view sends only failed I/O here).
   * Undefined: the queue threads forward all of its I/O.
   */
  queueViewShare?(): SharedArrayBuffer | undefined;

  /**
   * Optional, with queueViewShare: its view sends the owner nothing but I/O that failed (striped,
   * whose error counts live here), so a table of such targets and 'any-queue' ones is served by
   * queue threads from the start, as a stateless one is. A view that forwards part of the I/O by
   * design (snapshot-origin's first writes) leaves its table with the owner thread at create.
   */
  readonly queueViewServesAll?: boolean;

  /** INFO (`dmsetup status`) or TABLE (`dmsetup table`) text, without the `start len type` prefix. */
  status(kind: StatusKind): string;

  /** Runtime command (`dmsetup message`); absent when the target takes none. Returns reply text. */
  message?(argv: string[]): Promise<string>;

  /** Stop background work before I/O is drained for a suspend. */
  presuspend?(options: SuspendOptions): Promise<void>;
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

/**
 * The mapped device a table belongs to, as its targets see it. It exists before the table is
 * built (a target may keep it), and outlives reloads: the next table gets the same handle.
 */
export interface DeviceHandle {
  /** The dm name (`ublk-dm ls`). */
  readonly name: string;
  /** Raise a dm event: `info` shows the new event number, `wait`ers wake (snapshot invalid, mirror leg failed). */
  raiseEvent(): void;
}

/** What a constructor gets besides its arguments. */
export interface TargetContext {
  /** Start of the segment in the device, in sectors. */
  readonly startSector: number;
  /** Length of the segment in sectors. */
  readonly lengthSectors: number;
  /** Per-daemon state: the ring, shared registries (origins), throttles. */
  readonly scope: DaemonScope;
  /** The device this table is for. */
  readonly device: DeviceHandle;
  /**
   * Open a backing device named by a path or "major:minor". Devices are shared between the
   * segments of one table and closed when the table is destroyed, so targets do not close them.
   */
  openDevice(spec: string): Promise<BlockDevice>;
  /**
   * Present when a new daemon rebuilds a saved table (after a restart or a crash): whatever the
   * previous daemon held only in memory is gone, and a target that kept state there must say
   * what it lost (`warn`, which the daemon logs) and come back in a state that does not lie (a
   * transient snapshot Invalid, a core-log mirror out of sync).
   */
  readonly rebuilt?: RebuiltTable;
  /** Present only when a queue thread builds its view of an owner-thread target (Target.queueViewShare). */
  readonly queueView?: QueueView;
}

/** What a queue thread's view of an owner-thread target gets to serve with. */
export interface QueueView {
  /** The memory the owner-thread target shares (its queueViewShare()). */
  readonly share: SharedArrayBuffer;
  /** Send what the view cannot serve to the owner thread's table, at `deviceSector` (not target-relative). */
  forward(bio: Bio, deviceSector: number, done: MapDone): void;
}

/**
 * A view type's QueueView, sharing at least `minShareBytes`; without one, the TargetError that
 * makes the queue thread forward all of the segment's I/O instead. `needs` says what the view
 * reads from its owner ("its owner's write map").
 */
export function requireQueueView(ctx: TargetContext, typeName: string, minShareBytes: number, needs: string): QueueView {
  const view = ctx.queueView;
  if (view === undefined || view.share.byteLength < minShareBytes) throw new TargetError(`a queue thread views ${typeName} only with ${needs}`);
  return view;
}

export interface RebuiltTable {
  warn(message: string): void;
}

/** A constructor failure: `message` is what the user sees, like the kernel's ti->error. */
export class TargetError extends DmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'EINVAL', options);
  }
}

export interface TargetType {
  readonly name: string;
  /** What `dmsetup targets` shows: the kernel's version of the type this one follows. */
  readonly version?: readonly [number, number, number];
  /** The kernel's ctr: validate `args`, open devices; throw TargetError and leave nothing behind. */
  create(ctx: TargetContext, args: string[]): Promise<Target>;
  /**
   * Tunables shared by every device of the type in one daemon, as the kernel's module parameters
   * (`/sys/module/dm_mirror/parameters/raid1_resync_throttle`); read and set with `ublk-dm param`.
   */
  readonly parameters?: readonly TargetParameter[];
}

/** One tunable of a target type; its value lives in the DaemonScope (under the type's ScopeKey). */
export interface TargetParameter {
  /** Unique across types; the kernel's parameter name where there is one. */
  readonly name: string;
  readonly description: string;
  get(scope: DaemonScope): string;
  /** Throws TargetError for a value it refuses, changing nothing. */
  set(scope: DaemonScope, value: string): void;
}

/**
 * For authors who like straight-line async code: `map = asyncMap(async (bio) => ...)`. A
 * rejection is a bug in the target and completes the piece with -EIO.
 */
export function asyncMap(fn: (bio: Bio) => Promise<MapOutcome>): (bio: Bio, done: MapDone) => void {
  return (bio, done) => {
    fn(bio).then(done, () => done(-EIO));
  };
}

/** Every capability: for targets that take anything (they fail or ignore what they cannot do). */
export const ALL_CAPABILITIES: TargetCapabilities = Object.freeze({ discard: true, writeZeroes: true, fua: true });

/** What a target that passes I/O straight to `devices` can do: what all of them can. */
export function passthroughCapabilities(devices: readonly BlockDevice[]): TargetCapabilities {
  return {
    discard: devices.every((device) => device.capabilities.discard),
    writeZeroes: devices.every((device) => device.capabilities.writeZeroes),
    fua: true,
  };
}
