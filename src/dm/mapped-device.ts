import { DmError, EIO, ErrnoError } from '../base/errno';
import { SECTOR_BYTES } from '../base/units';
import type { Bio, IoDone } from '../io/bio';
import type { BlockDevice } from '../io/block-device';
import type { DeviceHandle, StatusKind, SuspendOptions, Target, TargetCapabilities } from './target';

/*
 * The collaborators a mapped device is built from, described by the few members it uses. The
 * real ones are dm/table.ts (Table), dm/dispatcher.ts (Dispatcher) and ublk/device.ts
 * (UblkDevice); tests hand in fakes, so device lifecycle logic runs without the kernel's ublk.
 */

/** A built table (dm/table.ts `Table`). */
export interface DeviceTable {
  readonly segments: readonly { readonly startSector: number; readonly lengthSectors: number; readonly target: Target }[];
  readonly sizeSectors: number;
  readonly capabilities: TargetCapabilities;
  /** How the table text named each device it opened (dm/table.ts keeps it). */
  readonly deviceSpecs?: ReadonlyMap<string, BlockDevice>;
  devices(): readonly BlockDevice[];
  destroy(): Promise<void>;
}

/** dm/dispatcher.ts `Dispatcher`: runs requests against the live table, owns suspend. */
export interface DeviceDispatcher {
  readonly suspended: boolean;
  submit(bio: Bio, done: IoDone): void;
  /** Presuspend hooks, new I/O waits, in-flight I/O drains, postsuspend hooks. */
  suspend(options?: SuspendOptions): Promise<void>;
  /** Preresume/resume hooks, then the waiting I/O goes. */
  resume(): Promise<void>;
  /** Only while suspended; returns the table it replaced. */
  swapTable(next: DeviceTable): unknown;
  /** What queue threads sent to this thread, when they serve the device (absent otherwise). */
  readonly forwarded?: ForwardedCounts;
}

/**
 * Requests of a device that queue threads sent to the daemon thread (where owner-thread targets
 * keep their state) since it was made, and how many of those had their bytes copied there and
 * back rather than served in the queue's shared tag memory.
 */
export interface ForwardedCounts {
  readonly requests: number;
  readonly copied: number;
}

export interface UblkCreateOptions {
  readonly sizeSectors: number;
  readonly queues?: number;
  readonly depth?: number;
  readonly logicalBlockBytes?: number;
  readonly readOnly?: boolean;
  /** Advertise discard / write-zeroes: only when every target of the table takes them. */
  readonly discard: boolean;
  readonly writeZeroes: boolean;
  /** The mark the kernel keeps with the device (ublksrv_flags), so that a later process knows it for its own. */
  readonly serverFlags?: bigint;
  /** Make a device that survives this process (ublk user recovery, when the kernel offers it). */
  readonly recovery?: boolean;
  /** Reattach to this existing device, whose server died, instead of making a new one. */
  readonly recoverFrom?: UblkIdentity;
}

/** What a later process needs to reattach to a ublk device whose server died; saved with the table. */
export interface UblkIdentity {
  /** The ublk device id: /dev/ublkbN, /dev/ublkcN. */
  readonly id: number;
  /** The mark the kernel keeps with the device (ublksrv_flags): checked before reattaching. */
  readonly serverFlags: bigint;
  readonly queues: number;
  readonly depth: number;
  readonly maxIoBytes: number;
  /** UBLK_F_* flags the kernel granted. */
  readonly features: bigint;
}

/** A started ublk device (ublk/device.ts `UblkDevice`). */
export interface UblkHandle {
  readonly id: number;
  readonly blockPath: string;
  readonly devno: { readonly major: number; readonly minor: number };
  /** Hardware queues and tags per queue the kernel granted. */
  readonly queues: number;
  readonly depth: number;
  /** Set when the device can be reattached to after this process dies (user recovery granted). */
  readonly identity?: UblkIdentity;
  /** STOP_DEV + DEL_DEV; the handler must keep answering until this settles. */
  stop(): Promise<void>;
}

/** `dispatcher`: the device's, for a factory that serves queues elsewhere and must keep it informed. */
export type UblkFactory = (
  options: UblkCreateOptions,
  handler: (bio: Bio, done: IoDone) => void,
  dispatcher?: DeviceDispatcher,
) => Promise<UblkHandle>;

/** Makes the dispatcher for a new device's first table: suspended, so that start() resumes it. */
export type DispatcherFactory = (table: DeviceTable) => DeviceDispatcher;

/** A user-facing failure of a device operation, with the errno name the CLI reports. */
export class DeviceError extends DmError {
  constructor(message: string, code: 'EINVAL' | 'ENOENT' | 'EEXIST' | 'EBUSY' | 'ENXIO') {
    super(message, code);
  }
}

/**
 * A device's dm event counter (targets.md §8.2): 32 bits from 0, moved only by targets, with
 * `wait`ers woken on every change. It exists before the device's first table is built, because
 * the targets of that table keep it, and it lives as long as the device.
 */
export class DeviceEvents implements DeviceHandle {
  private eventNr = 0;
  private waiters: Array<{ readonly resolve: (eventNr: number) => void; readonly reject: (error: Error) => void }> = [];

  constructor(readonly name: string) {}

  get eventNumber(): number {
    return this.eventNr;
  }

  raiseEvent(): void {
    this.eventNr = (this.eventNr + 1) >>> 0;
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.resolve(this.eventNr);
  }

  /** dm's DEV_WAIT: the event number once it differs from `eventNr` (at once if it already does). */
  wait(eventNr: number): Promise<number> {
    if (this.eventNr !== eventNr) return Promise.resolve(this.eventNr);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** The device is going away: nobody is left to raise the event a waiter waits for. */
  close(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.reject(new DeviceError(`device ${this.name} was removed while waiting for an event`, 'ENXIO'));
  }
}

/** How the device was asked for (kept with its saved table). */
export interface MappedDeviceOptions {
  readonly readOnly: boolean;
  readonly queues?: number;
  readonly depth?: number;
}

/** A table together with the text it was built from (the text is what gets saved). */
interface LoadedTable {
  readonly table: DeviceTable;
  readonly text: string;
}

/**
 * One device-mapper device: a ublk block device whose requests a dispatcher runs against the
 * live table, an inactive slot for `reload`, and the event counter targets move. The device's
 * size is fixed when it is created (changing it needs ublk UPDATE_SIZE).
 */
export class MappedDevice {
  private live: LoadedTable;
  private inactive: LoadedTable | undefined;

  private constructor(
    readonly events: DeviceEvents,
    readonly options: MappedDeviceOptions,
    readonly sizeSectors: number,
    private readonly dispatcher: DeviceDispatcher,
    private readonly ublk: UblkHandle,
    live: LoadedTable,
  ) {
    this.live = live;
  }

  /**
   * Start serving `table` on a new ublk device. The table belongs to the device from here on:
   * if the ublk device cannot be created the table is destroyed.
   */
  static async start(
    events: DeviceEvents,
    table: DeviceTable,
    tableText: string,
    options: MappedDeviceOptions,
    createUblk: UblkFactory,
    createDispatcher: DispatcherFactory,
    ublkOptions: Pick<UblkCreateOptions, 'serverFlags' | 'recovery' | 'recoverFrom'> = {},
  ): Promise<MappedDevice> {
    try {
      if (table.sizeSectors <= 0) throw new DeviceError('table is empty', 'EINVAL');
      const dispatcher = createDispatcher(table);
      // The table's preresume/resume hooks run before the disk appears (a snapshot becomes
      // active, a mirror starts its resync), as dmsetup create's resume does.
      if (dispatcher.suspended) await dispatcher.resume();
      const ublk = await createUblk(
        {
          sizeSectors: table.sizeSectors,
          logicalBlockBytes: largestLogicalBlock(table),
          readOnly: options.readOnly,
          discard: table.capabilities.discard,
          writeZeroes: table.capabilities.writeZeroes,
          ...(options.queues !== undefined ? { queues: options.queues } : {}),
          ...(options.depth !== undefined ? { depth: options.depth } : {}),
          ...ublkOptions,
        },
        (bio, done) => dispatcher.submit(bio, done),
        dispatcher,
      );
      return new MappedDevice(events, options, table.sizeSectors, dispatcher, ublk, { table, text: tableText });
    } catch (err) {
      await table.destroy();
      throw err;
    }
  }

  get name(): string {
    return this.events.name;
  }

  get blockPath(): string {
    return this.ublk.blockPath;
  }

  get devno(): { readonly major: number; readonly minor: number } {
    return this.ublk.devno;
  }

  get queues(): number {
    return this.ublk.queues;
  }

  get depth(): number {
    return this.ublk.depth;
  }

  /** What its queue threads sent to the daemon thread; undefined when that thread serves its queues. */
  get forwarded(): ForwardedCounts | undefined {
    return this.dispatcher.forwarded;
  }

  /** The ublk device id (N of /dev/ublkbN). */
  get ublkId(): number {
    return this.ublk.id;
  }

  /** What a later daemon needs to reattach to this device if this one dies; undefined if it cannot. */
  get ublkIdentity(): UblkIdentity | undefined {
    return this.ublk.identity;
  }

  get suspended(): boolean {
    return this.dispatcher.suspended;
  }

  get liveTableText(): string {
    return this.live.text;
  }

  get hasInactiveTable(): boolean {
    return this.inactive !== undefined;
  }

  get liveTargetCount(): number {
    return this.live.table.segments.length;
  }

  /** The 32-bit event number `info` shows (§8.2: only target-raised events count). */
  get eventNumber(): number {
    return this.events.eventNumber;
  }

  hasTargetType(type: string): boolean {
    return this.live.table.segments.some((segment) => segment.target.type === type);
  }

  /** `table` (kind 'table') or `status` (kind 'info') lines of the live or the inactive table. */
  targetLines(kind: StatusKind, inactive = false): Array<{ startSector: number; lengthSectors: number; type: string; text: string }> {
    const loaded = inactive ? this.inactive : this.live;
    if (!loaded) return [];
    return loaded.table.segments.map((segment) => ({
      startSector: segment.startSector,
      lengthSectors: segment.lengthSectors,
      type: segment.target.type,
      text: segment.target.status(kind),
    }));
  }

  /** `reload`: the new table replaces any inactive one; the live table is untouched. */
  async loadInactive(table: DeviceTable, tableText: string): Promise<void> {
    const previous = this.inactive;
    this.inactive = { table, text: tableText };
    await previous?.table.destroy();
  }

  async suspend(options: SuspendOptions = { noflush: false }): Promise<void> {
    if (this.dispatcher.suspended) throw new DeviceError(`device ${this.name} is already suspended`, 'EINVAL');
    await this.dispatcher.suspend(options);
  }

  /**
   * `resume`, in the kernel's order (do_resume): with an inactive table, suspend if needed and
   * swap it in; then the new table's preresume and resume hooks run while the old table still
   * exists (a snapshot taking over from the table it replaces needs it); only then is the old
   * table retired. A table of another size is refused and stays in the inactive slot.
   */
  async resume(): Promise<void> {
    const next = this.inactive;
    if (!next) {
      if (this.dispatcher.suspended) await this.dispatcher.resume();
      return;
    }
    if (next.table.sizeSectors !== this.sizeSectors) {
      throw new DeviceError(
        `device ${this.name} is ${this.sizeSectors} sectors and the inactive table ${next.table.sizeSectors}: ` +
          'table size change needs ublk UPDATE_SIZE, Linux 6.16+',
        'EINVAL',
      );
    }
    if (!this.dispatcher.suspended) await this.dispatcher.suspend();
    const old = this.live.table;
    this.dispatcher.swapTable(next.table);
    this.live = next;
    this.inactive = undefined;
    try {
      await this.dispatcher.resume();
    } finally {
      await retireTable(old, next.table);
    }
  }

  /** `message`: to the live target whose range holds `sector`. */
  async message(sector: number, words: string[]): Promise<string> {
    if (sector >= this.sizeSectors) {
      throw new DeviceError(`sector ${sector} is beyond the end of ${this.name} (${this.sizeSectors} sectors)`, 'EINVAL');
    }
    const segment = this.live.table.segments.find(
      (s) => sector >= s.startSector && sector < s.startSector + s.lengthSectors,
    );
    if (!segment) throw new DeviceError(`no target at sector ${sector}`, 'EINVAL');
    const target = segment.target;
    if (!target.message) throw new DeviceError(`target type ${target.type} takes no messages`, 'EINVAL');
    return target.message(words);
  }

  /**
   * Remove the kernel device and release the tables. A suspended device is resumed first: the
   * kernel may write back (or fail) queued I/O while the disk goes away, and STOP_DEV returns
   * only once every request is answered, so waiting I/O must be able to run.
   */
  async stop(): Promise<void> {
    if (this.dispatcher.suspended) await this.dispatcher.resume();
    await this.ublk.stop();
    // Nothing new can arrive now; this waits for stragglers and lets targets flush metadata.
    await this.dispatcher.suspend();
    this.events.close();
    const inactive = this.inactive;
    this.inactive = undefined;
    await Promise.all([this.live.table.destroy(), inactive?.table.destroy()]);
  }

  /**
   * Handover to the next daemon: release the tables of a suspended device and leave its ublk
   * device running. Suspend first (the registry does, every device before any is detached: a
   * snapshot must not stop copying out while its origin still takes writes). Requests that
   * arrive from now on wait unmapped in the dispatcher; when this process exits the kernel
   * takes them back (requeued: ublk REISSUE, so nothing half-done is repeated) and keeps the
   * device quiesced until UblkDevice.recover.
   */
  async detach(): Promise<void> {
    if (!this.dispatcher.suspended) throw new DeviceError(`device ${this.name} must be suspended before it is detached`, 'EBUSY');
    this.events.close();
    const inactive = this.inactive;
    this.inactive = undefined;
    await Promise.all([this.live.table.destroy(), inactive?.table.destroy()]);
  }
}

/**
 * Destroy a table a swap replaced. First the devices only it used get a flush: writes
 * acknowledged through it may still sit in their caches, and the FLUSH requests that follow go
 * to the new table's devices only, so nothing else would ever make them durable.
 */
async function retireTable(old: DeviceTable, replacement: DeviceTable): Promise<void> {
  const kept = new Set(replacement.devices().map((device) => device.key));
  const dropped = old.devices().filter((device) => !kept.has(device.key));
  const results = await Promise.all(dropped.map((device) => device.flush().catch(() => -EIO)));
  await old.destroy();
  const failed = results.findIndex((result) => result < 0);
  if (failed >= 0) throw new ErrnoError(`flushing ${dropped[failed]!.tableName}, which the new table no longer uses`, -results[failed]!);
}

function largestLogicalBlock(table: DeviceTable): number {
  let logicalBlockBytes = SECTOR_BYTES;
  for (const segment of table.segments) {
    for (const device of segment.target.devices()) {
      logicalBlockBytes = Math.max(logicalBlockBytes, device.logicalBlockBytes);
    }
  }
  return logicalBlockBytes;
}
