import { EIO } from '../../base/errno';
import { SECTOR_BYTES } from '../../base/units';
import { dmIo, flatMemory, type IoRegion } from '../../dmio';
import type { BlockDevice } from '../../io/block-device';
import { allocPageAligned } from '../../io/native';
import { RegionLog, bitmapBytes, parseRegionLogArgs, type RegionLogGeometry } from './core-log';
import { DirtyLogError, type DirtyLog, type DirtyLogArgs, type DirtyLogType } from './dirty-log';

/*
 * THE disk dirty log ("disk"): the kernel's dm-log.c on-disk format (spec/mirror.md §9). This
 * file is the only place that knows it.
 *
 * From sector 0 of the log device, read and written as ONE I/O of `logIoBytes` bytes:
 *
 *   bytes 0-3       le32 magic 0x4D695272 ("MiRr" as a number, "rRiM" on disk)
 *   bytes 4-7       le32 version: 2 (1 is read as 2: on a little-endian host it stored the same bytes)
 *   bytes 8-15      le64 nr_regions: how many regions the bitmap describes
 *   bytes 16-1023   not interpreted: read, and written back unchanged
 *   bytes 1024-     (sector 2) the clean bitmap: region r is byte 1024 + r/8, bit r%8 (LSB
 *                   first); 1 = clean (in sync, nothing in flight), 0 = resynchronise. Its
 *                   length is whole 64-bit words (the x86-64 kernel's unsigned long); bits past
 *                   the last region are written as 0.
 *   then            up to the log device's logical block size: written back as read.
 *
 * The clean bits are kept inside that same buffer (as the kernel does), so a write of the log is
 * the buffer as it stands. Sync and recovering bits are memory only (core-log.ts).
 *
 * Load, at EVERY resume (§9.4): a `sync` or `nosync` in the table, or a wrong magic, makes the
 * log "new" (nr_regions 0), so the sync word is re-applied at each resume: nosync marks every
 * region clean again — also regions a failed leg write left dirty — and sync resynchronises
 * everything again. That is the kernel's behaviour, and ours. Regions from nr_regions up (a new
 * log, or a grown device) become clean with nosync and dirty otherwise; then sync := clean, and
 * the header (nr_regions = region count) and bitmap are written and the log device flushed.
 *
 * Ordering (flush(), the reason this format survives a crash; §2):
 *   - a region is dirty on disk (log write + empty PREFLUSH to the log device) before flush()
 *     returns, which is before the mirror issues the write to the legs;
 *   - a region goes clean on disk only after the legs were flushed (the mirror's flushLegs is
 *     called first whenever something was cleaned); that pass needs no log device flush: the
 *     next dirtying flush makes it durable.
 */

/** "MiRr" as a number (MIRROR_MAGIC); anything else at byte 0 makes a new log. */
export const LOG_MAGIC = 0x4d695272;
export const LOG_DISK_VERSION = 2;
/** Version 1 kept the bitmap in host word order: on little-endian hosts, identical to 2. */
export const LOG_DISK_VERSION_1 = 1;
/** The bitmap starts at sector 2 (LOG_OFFSET). */
export const BITMAP_OFFSET_SECTORS = 2;
export const BITMAP_BYTE_OFFSET = BITMAP_OFFSET_SECTORS * SECTOR_BYTES;

const HEADER_MAGIC_OFFSET = 0;
const HEADER_VERSION_OFFSET = 4;
const HEADER_NR_REGIONS_OFFSET = 8;

/** The one I/O's length: header sectors plus bitmap, rounded up to the log device's logical block. */
export function logIoBytes(regionCount: number, logicalBlockBytes: number): number {
  const bytes = BITMAP_BYTE_OFFSET + bitmapBytes(regionCount);
  return Math.ceil(bytes / logicalBlockBytes) * logicalBlockBytes;
}

// ---- On-disk header: the only little-endian code of the log. ---------------------------------

/** Bytes 0-15 as stored (the kernel's log_header_disk); nr_regions is a full le64. */
export interface LogHeader {
  readonly magic: number;
  readonly version: number;
  readonly nrRegions: bigint;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function decodeLogHeader(bytes: Uint8Array): LogHeader {
  const dv = view(bytes);
  return {
    magic: dv.getUint32(HEADER_MAGIC_OFFSET, true),
    version: dv.getUint32(HEADER_VERSION_OFFSET, true),
    nrRegions: dv.getBigUint64(HEADER_NR_REGIONS_OFFSET, true),
  };
}

/** Writes bytes 0-15 only: the rest of the first sectors stays as it was read. */
export function encodeLogHeader(bytes: Uint8Array, header: LogHeader): void {
  const dv = view(bytes);
  dv.setUint32(HEADER_MAGIC_OFFSET, header.magic, true);
  dv.setUint32(HEADER_VERSION_OFFSET, header.version, true);
  dv.setBigUint64(HEADER_NR_REGIONS_OFFSET, header.nrRegions, true);
}

const NEW_LOG_HEADER: LogHeader = { magic: LOG_MAGIC, version: LOG_DISK_VERSION, nrRegions: 0n };

// ---- The log. ----------------------------------------------------------------------------

export class DiskLog extends RegionLog {
  readonly type = 'disk';

  /** The header as last read (or made new): written back with nr_regions = region count at resume. */
  private header: LogHeader = NEW_LOG_HEADER;
  /** The log device returned an error once (status D); the first failure of any kind raises the event. */
  private logDeviceFailed = false;
  /** A flush of the log device failed (status F, which wins over D). */
  private logDeviceFlushFailed = false;
  /** Flushes and resumes run one at a time, in call order. */
  private queueTail: Promise<unknown> = Promise.resolve();

  private constructor(
    geometry: RegionLogGeometry,
    private readonly device: BlockDevice,
    private readonly callbacks: Pick<DirtyLogArgs, 'flushLegs' | 'raiseEvent' | 'warn'>,
    /** Header, bitmap and tail as one I/O buffer; the clean bits are a view into it. */
    private readonly buffer: Uint8Array,
    /** What a flush writes: the buffer as it was when the flush began (see flushNow). */
    private readonly writeImage: Uint8Array,
  ) {
    super(geometry, buffer.subarray(BITMAP_BYTE_OFFSET, BITMAP_BYTE_OFFSET + bitmapBytes(geometry.regionCount)));
  }

  /** Checks the geometry against the device (no I/O: resume loads). Throws DirtyLogError. */
  static create(geometry: RegionLogGeometry, device: BlockDevice, callbacks: Pick<DirtyLogArgs, 'flushLegs' | 'raiseEvent' | 'warn'>): DiskLog {
    const ioBytes = logIoBytes(geometry.regionCount, device.logicalBlockBytes);
    if (ioBytes > device.sizeSectors * SECTOR_BYTES) {
      throw new DirtyLogError(`log device ${device.tableName} too small: need ${ioBytes} bytes`);
    }
    // Page-aligned memory: the log device may be opened with O_DIRECT.
    const buffer = new Uint8Array(allocPageAligned(ioBytes));
    const writeImage = new Uint8Array(allocPageAligned(ioBytes));
    return new DiskLog(geometry, device, callbacks, buffer, writeImage);
  }

  flush(): Promise<number> {
    return this.serialise(() => this.flushNow());
  }

  /** The kernel's disk_resume (§9.4). Failures mark the log device failed; the mirror carries on. */
  resume(): Promise<void> {
    return this.serialise(() => this.load());
  }

  /** The bitmap goes out at suspend, as the kernel's postsuspend = disk_flush. */
  async postsuspend(): Promise<void> {
    await this.flush();
  }

  devices(): BlockDevice[] {
    return [this.device];
  }

  /**
   * INFO `3 disk <dev> <A|D|F>` (F: a log device flush failed; D: the log device failed);
   * TABLE `disk <#args> <dev> <region_size> [sync|nosync]`. The mirror adds the spaces around.
   */
  status(kind: 'info' | 'table'): string {
    if (kind === 'info') {
      const health = this.logDeviceFlushFailed ? 'F' : this.logDeviceFailed ? 'D' : 'A';
      return `3 disk ${this.device.tableName} ${health}`;
    }
    return `disk ${this.tableArgCount(1)} ${this.device.tableName} ${this.regionArgsText()}`;
  }

  private serialise<T>(step: () => Promise<T>): Promise<T> {
    const run = this.queueTail.then(step);
    this.queueTail = run.catch(() => undefined);
    return run;
  }

  private async load(): Promise<void> {
    let header = this.header;
    let loaded = false;
    if ((await this.ioWholeLog('read', this.buffer)) === 0) {
      header = this.headerAsRead(decodeLogHeader(this.buffer));
      loaded = header.version === LOG_DISK_VERSION;
      if (!loaded) this.warn('incompatible disk log version');
    }
    if (!loaded) {
      // Unreadable or unsupported: every region out of sync (the header is still written back,
      // unsupported version and all, so such a log stays failed on every resume).
      this.warn(`${this.device.tableName}: Failed to read header on dirty region log device`);
      this.failLogDevice();
      header = { ...header, nrRegions: 0n };
    }

    // Regions the header does not cover (a new log, or the device grew); then the bits past the
    // last region up to the word boundary (the device shrank).
    const firstUncovered = header.nrRegions < BigInt(this.regionCount) ? Number(header.nrRegions) : this.regionCount;
    if (this.syncMode === 'nosync') this.setBits(this.cleanBits, firstUncovered, this.regionCount);
    else this.clearBits(this.cleanBits, firstUncovered, this.regionCount);
    this.clearBits(this.cleanBits, this.regionCount, this.cleanBits.byteLength * 8);
    this.syncFromCleanBits();

    this.header = { ...header, nrRegions: BigInt(this.regionCount) };
    encodeLogHeader(this.buffer, this.header);
    let result = await this.ioWholeLog('write', this.buffer);
    if (result === 0) {
      result = await this.flushLogDevice();
      if (result !== 0) this.logDeviceFlushFailed = true;
    }
    if (result !== 0) {
      this.warn(`${this.device.tableName}: Failed to write header on dirty region log device`);
      this.failLogDevice();
    }
    // The touched flags stay as the loops above left them, as in the kernel: the next flush()
    // writes the log again (and flushes the legs first if a nosync resume set bits).
  }

  /** read_header's rules: a sync word or a foreign magic makes a new log; version 1 reads as 2. */
  private headerAsRead(onDisk: LogHeader): LogHeader {
    const header = this.syncMode !== 'default' || onDisk.magic !== LOG_MAGIC ? NEW_LOG_HEADER : onDisk;
    return header.version === LOG_DISK_VERSION_1 ? { ...header, version: LOG_DISK_VERSION } : header;
  }

  /** The kernel's disk_flush, with the state it writes taken when it starts. */
  private async flushNow(): Promise<number> {
    if (!this.touchedCleaned && !this.touchedDirtied) return 0;
    // Take the flags and the bitmap now: a region cleaned while the legs flush has data the leg
    // flush may not cover, so it must wait for the next flush (which flushes the legs again).
    const cleaned = this.touchedCleaned;
    let dirtied = this.touchedDirtied;
    this.touchedCleaned = false;
    this.touchedDirtied = false;
    this.writeImage.set(this.buffer);

    if (cleaned && (await this.callbacks.flushLegs()) !== 0) {
      // Which regions' data reached the legs is unknown now: all dirty, and none goes clean again.
      this.flushFailed = true;
      this.clearBits(this.cleanBits, 0, this.regionCount);
      this.touchedDirtied = false;
      dirtied = true;
      this.writeImage.set(this.buffer);
    }

    if ((await this.ioWholeLog('write', this.writeImage)) !== 0) {
      this.failLogDevice();
      this.touchedCleaned ||= cleaned;
      this.touchedDirtied ||= dirtied;
      return -EIO;
    }
    if (dirtied && (await this.flushLogDevice()) !== 0) {
      this.logDeviceFlushFailed = true;
      this.failLogDevice();
      this.touchedDirtied = true;
      return -EIO;
    }
    return 0;
  }

  /** Header and bitmap as the one I/O at sector 0; 0 or -EIO. */
  private async ioWholeLog(op: 'read' | 'write', bytes: Uint8Array): Promise<number> {
    const region: IoRegion = { device: this.device, sector: 0, count: bytes.byteLength / SECTOR_BYTES };
    return (await dmIo({ op, memory: flatMemory(bytes) }, [region])) === 0 ? 0 : -EIO;
  }

  /** An empty PREFLUSH write to the log device (the kernel's flush_header); 0 or -EIO. */
  private async flushLogDevice(): Promise<number> {
    const region: IoRegion = { device: this.device, sector: 0, count: 0 };
    return (await dmIo({ op: 'write', memory: flatMemory(new Uint8Array(0)), preflush: true }, [region])) === 0 ? 0 : -EIO;
  }

  private failLogDevice(): void {
    if (this.logDeviceFailed) return;
    this.logDeviceFailed = true;
    this.callbacks.raiseEvent();
  }

  private warn(message: string): void {
    this.callbacks.warn?.(message);
  }
}

export const diskLogType: DirtyLogType = {
  name: 'disk',
  /** `<log_dev> <region_size> [sync|nosync]`: count, device, then core's checks, then the size. */
  async create(args: DirtyLogArgs): Promise<DirtyLog> {
    if (args.args.length < 2 || args.args.length > 3) {
      throw new DirtyLogError('wrong number of arguments to disk dirty region log');
    }
    let device: BlockDevice;
    try {
      device = await args.openDevice(args.args[0]);
    } catch (cause) {
      const reason = cause instanceof Error ? cause.message : String(cause);
      throw new DirtyLogError(`log device ${args.args[0]}: ${reason}`, { cause });
    }
    // The table owns the device it opened: a failure below leaves nothing for us to close.
    const geometry = parseRegionLogArgs(args.args.slice(1), args.targetSectors);
    return DiskLog.create(geometry, device, args);
  },
};
