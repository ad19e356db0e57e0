import type { IoResult } from '../base/errno';
import type { DeviceOptions, TargetLine } from '../wire/protocol';
import type { BlockRequest } from './dispatcher';
import type { StatusKind, Target } from './target';
import type { UblkRequest } from '../ublk/device';
import { SECTOR_BYTES, sectorsToBytes } from '../base/units';

/*
 * The collaborators a mapped device is built from, described by the few members it uses. The
 * real ones are src/table.ts (Table), src/dispatch.ts (Dispatcher) and src/ublk/device.ts
 * (UblkDevice); tests hand in fakes, so device lifecycle logic runs without the kernel's ublk.
 */

/** A built table (src/table.ts `Table`). */
export interface DeviceTable {
  readonly segments: readonly { readonly startSector: number; readonly lengthSectors: number; readonly target: Target }[];
  readonly sizeSectors: number;
  destroy(): Promise<void>;
}

/** One request as the dispatcher takes it. */
export type DispatchRequest = BlockRequest;

/** src/dispatch.ts `Dispatcher`: runs requests against the live table, owns suspend. */
export interface DeviceDispatcher {
  readonly suspended: boolean;
  handle(request: DispatchRequest): Promise<IoResult>;
  /** Optional promise-free handle(): `done` gets the result (-EIO where handle() would reject). */
  handleCb?(request: DispatchRequest, done: (result: IoResult) => void): void;
  /** Presuspend hooks, new I/O waits, in-flight I/O drains, postsuspend hooks. */
  suspend(): Promise<void>;
  /** Preresume/resume hooks, then the waiting I/O goes. */
  resume(): Promise<void>;
  /** Only while suspended; returns the table it replaced. */
  swapTable(next: DeviceTable): DeviceTable;
}

/** One request from the kernel: the fields of src/ublk/device.ts `UblkRequest` used here. */
export type UblkRequestView = Pick<UblkRequest, 'op' | 'fua' | 'noUnmap' | 'sector' | 'sectorCount' | 'buffer'>;

export interface UblkCreateOptions {
  readonly sizeSectors: number;
  readonly queues?: number;
  readonly depth?: number;
  readonly logicalBlockBytes?: number;
  readonly readOnly?: boolean;
}

/** A started ublk device (src/ublk/device.ts `UblkDevice`). */
export interface UblkHandle {
  readonly id: number;
  readonly blockPath: string;
  readonly devno: { readonly major: number; readonly minor: number };
  /** Hardware queues and tags per queue the kernel granted. */
  readonly queues: number;
  readonly depth: number;
  /** STOP_DEV + DEL_DEV; the handler must keep answering until this settles. */
  stop(): Promise<void>;
}

export type UblkFactory = (
  options: UblkCreateOptions,
  handler: (request: UblkRequestView) => Promise<IoResult>,
  /** handler's promise-free form; when given, the device may use it instead. */
  callbackHandler?: (request: UblkRequestView, done: (result: IoResult) => void) => void,
) => Promise<UblkHandle>;

export type DispatcherFactory = (table: DeviceTable) => DeviceDispatcher;

/** A user-facing failure of a device operation, with the errno name the CLI reports. */
export class DeviceError extends Error {
  constructor(
    message: string,
    readonly code: 'EINVAL' | 'ENOENT' | 'EEXIST' | 'EBUSY' | 'ENXIO',
  ) {
    super(message);
  }
}

/** A table together with the text it was built from (the text is what gets saved). */
interface LoadedTable {
  readonly table: DeviceTable;
  readonly text: string;
}

/**
 * One device-mapper device: a ublk block device whose requests a dispatcher runs against the
 * live table, an inactive slot for `reload`, and the event counter targets bump. The device's
 * size is fixed when it is created (changing it needs ublk UPDATE_SIZE).
 */
export class MappedDevice {
  private live: LoadedTable;
  private inactive: LoadedTable | undefined;
  private events = 0;

  private constructor(
    readonly name: string,
    readonly options: DeviceOptions,
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
    name: string,
    table: DeviceTable,
    tableText: string,
    options: DeviceOptions,
    createUblk: UblkFactory,
    createDispatcher: DispatcherFactory,
  ): Promise<MappedDevice> {
    try {
      if (table.sizeSectors <= 0) throw new DeviceError('table is empty', 'EINVAL');
      const dispatcher = createDispatcher(table);
      const ublk = await createUblk(
        {
          sizeSectors: table.sizeSectors,
          logicalBlockBytes: largestLogicalBlock(table),
          readOnly: options.readOnly,
          ...(options.queues !== undefined ? { queues: options.queues } : {}),
          ...(options.depth !== undefined ? { depth: options.depth } : {}),
        },
        (request) => dispatcher.handle(dispatchRequest(request)),
        dispatcher.handleCb === undefined
          ? undefined
          : (request, done) => dispatcher.handleCb!(dispatchRequest(request), done),
      );
      return new MappedDevice(name, options, table.sizeSectors, dispatcher, ublk, { table, text: tableText });
    } catch (err) {
      await table.destroy();
      throw err;
    }
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
    return this.events;
  }

  /** Called on behalf of a target (snapshot invalidated, mirror leg failed, ...). */
  raiseEvent(): void {
    this.events = (this.events + 1) >>> 0;
  }

  hasTargetType(type: string): boolean {
    return this.live.table.segments.some((segment) => segment.target.type === type);
  }

  /** `table` (kind 'table') or `status` (kind 'info') lines of the live or the inactive table. */
  targetLines(kind: StatusKind, inactive = false): TargetLine[] {
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

  async suspend(): Promise<void> {
    if (this.dispatcher.suspended) throw new DeviceError(`device ${this.name} is already suspended`, 'EINVAL');
    await this.dispatcher.suspend();
  }

  /**
   * `resume`: with an inactive table, suspend if needed, swap it in, destroy the old live table,
   * resume. A table of another size is refused and stays in the inactive slot.
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
    const old = this.dispatcher.swapTable(next.table);
    this.live = next;
    this.inactive = undefined;
    try {
      await old.destroy();
    } finally {
      await this.dispatcher.resume();
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
    const inactive = this.inactive;
    this.inactive = undefined;
    await Promise.all([this.live.table.destroy(), inactive?.table.destroy()]);
  }
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

/** The request's data, exactly sectorCount sectors long (a view, never a copy) if the buffer is larger. */
function dispatchRequest(request: UblkRequestView): DispatchRequest {
  return {
    op: request.op,
    sector: request.sector,
    sectorCount: request.sectorCount,
    data: requestData(request),
    fua: request.fua,
    noUnmap: request.noUnmap,
  };
}

function requestData(request: UblkRequestView): Uint8Array {
  const byteLength = sectorsToBytes(request.sectorCount);
  return request.buffer.byteLength > byteLength ? request.buffer.subarray(0, byteLength) : request.buffer;
}
