import type { BlockDevice } from '../../io/block-device';
import { DirtyLogError, type DirtyLog, type DirtyLogArgs, type DirtyLogType } from './dirty-log';

/*
 * The region bitmaps every dirty log keeps (the kernel's `struct log_c` in dm-log.c, shared by
 * "core" and "disk"; spec/mirror.md §2), and the "core" log type itself, which is nothing more.
 *
 * Three bits per region: clean (persisted by the disk log), sync and recovering (memory only).
 * Bit r of a bitmap is byte r >> 3, bit r & 7: the kernel's `*_le` bit helpers on uint32_t
 * arrays give exactly that on every host, and it is the disk log's on-disk layout (§9.2), so the
 * disk log can keep its clean bits inside the very buffer it writes.
 *
 * Every bit operation records that the log was touched: setting any bit (clean, sync or
 * recovering) "touches cleaned", clearing one "touches dirtied". The disk log's flush() writes
 * only when something was touched and orders its I/O by which (§2).
 */

/** The table's sync word: absent, `sync` (resynchronise everything), `nosync` (assume in sync). */
export type LogSyncMode = 'default' | 'sync' | 'nosync';

/** What the table's `<region_size> [sync|nosync]` describes, checked against the target. */
export interface RegionLogGeometry {
  readonly regionSectors: number;
  readonly regionCount: number;
  readonly syncMode: LogSyncMode;
}

/** The kernel's region count is an unsigned int (and the 2026 check says so out loud). */
const MAX_REGION_COUNT = 0xffffffff;
/** The bitmaps are arrays of unsigned longs: their length rounds up to 64 regions (x86-64). */
export const BITMAP_WORD_REGIONS = 64;

/**
 * A word as the kernel's `sscanf("%u%c")` reads it: decimal digits only (no sign, no spaces) and
 * nothing after them; the value wraps modulo 2^32 as the kernel's conversion does.
 * Undefined when the kernel would not convert it.
 */
export function parseKernelUnsigned(text: string): number | undefined {
  if (!/^[0-9]+$/.test(text)) return undefined;
  return Number(BigInt(text) % 0x1_0000_0000n);
}

/**
 * `<region_size> [sync|nosync]` in the kernel's order (create_log_context): count, sync word,
 * region size, region count. Throws DirtyLogError with the kernel's log message.
 */
export function parseRegionLogArgs(args: readonly string[], targetSectors: number): RegionLogGeometry {
  if (args.length < 1 || args.length > 2) throw new DirtyLogError('wrong number of arguments to dirty region log');

  let syncMode: LogSyncMode = 'default';
  if (args.length > 1) {
    // strcmp: case-sensitive, so "NOSYNC" is as foreign as "block_on_error".
    if (args[1] === 'sync') syncMode = 'sync';
    else if (args[1] === 'nosync') syncMode = 'nosync';
    else throw new DirtyLogError(`unrecognised sync argument to dirty region log: ${args[1]}`);
  }

  const regionSectors = parseKernelUnsigned(args[0]);
  if (regionSectors === undefined || !isValidRegionSize(regionSectors, targetSectors)) {
    throw new DirtyLogError(`invalid region size ${args[0]}`);
  }

  const regionCount = Math.ceil(targetSectors / regionSectors);
  if (regionCount > MAX_REGION_COUNT) throw new DirtyLogError(`region count exceeds limit of ${MAX_REGION_COUNT}`);
  return { regionSectors, regionCount, syncMode };
}

/** A power of two, at least 2 sectors, no larger than the target (the kernel's _check_region_size). */
function isValidRegionSize(regionSectors: number, targetSectors: number): boolean {
  if (regionSectors < 2 || regionSectors > targetSectors) return false;
  return (regionSectors & (regionSectors - 1)) === 0;
}

/** Bytes of one bitmap: whole 64-bit words (the kernel's bitset_size). */
export function bitmapBytes(regionCount: number): number {
  return Math.ceil(regionCount / BITMAP_WORD_REGIONS) * (BITMAP_WORD_REGIONS / 8);
}

export function testRegionBit(bits: Uint8Array, region: number): boolean {
  return (bits[region >>> 3] & (1 << (region & 7))) !== 0;
}

function setRegionBits(bits: Uint8Array, firstRegion: number, endRegion: number, value: boolean): void {
  let region = firstRegion;
  // Bit by bit up to a byte boundary, whole bytes in the middle, bit by bit at the tail: a
  // 2^32-region resume must not loop per region.
  for (; region < endRegion && (region & 7) !== 0; region++) setOne(bits, region, value);
  const wholeBytesEnd = region + ((endRegion - region) & ~7);
  if (wholeBytesEnd > region) bits.fill(value ? 0xff : 0, region >>> 3, wholeBytesEnd >>> 3);
  for (region = Math.max(region, wholeBytesEnd); region < endRegion; region++) setOne(bits, region, value);
}

function setOne(bits: Uint8Array, region: number, value: boolean): void {
  if (value) bits[region >>> 3] |= 1 << (region & 7);
  else bits[region >>> 3] &= ~(1 << (region & 7));
}

/** Set bits among the first `byteLength` bytes (the kernel's memweight). */
export function countSetBits(bits: Uint8Array, byteLength = bits.byteLength): number {
  let count = 0;
  for (let i = 0; i < byteLength; i++) {
    let byte = bits[i];
    while (byte !== 0) {
      byte &= byte - 1;
      count++;
    }
  }
  return count;
}

/** The first region ≥ `fromRegion` and < `endRegion` whose bit is 0, or `endRegion` (find_next_zero_bit_le). */
function findNextZeroBit(bits: Uint8Array, endRegion: number, fromRegion: number): number {
  let region = fromRegion;
  while (region < endRegion) {
    if ((region & 7) === 0 && bits[region >>> 3] === 0xff) {
      region += 8;
      continue;
    }
    if (!testRegionBit(bits, region)) return region;
    region++;
  }
  return endRegion;
}

/**
 * The bitmaps and operations core and disk logs share. Subclasses supply the clean bits' storage
 * (the disk log's lives inside its I/O buffer), flush, the suspend hooks and the status.
 */
export abstract class RegionLog implements DirtyLog {
  abstract readonly type: string;
  readonly regionSectors: number;
  readonly regionCount: number;
  readonly syncMode: LogSyncMode;

  protected readonly syncBits: Uint8Array;
  protected readonly recoveringBits: Uint8Array;
  /** A bit was set since the last successful write of the log. */
  protected touchedCleaned = false;
  /** A bit was cleared since the last log write that was followed by a log device flush. */
  protected touchedDirtied = false;
  /** The legs' flush failed once: which regions are clean is unknown, so none ever becomes clean again. */
  protected flushFailed = false;

  private syncRegions: number;
  /** Where getResyncWork() looks next; moves forward only, back to 0 only at resume. */
  private resyncSearchRegion = 0;

  protected constructor(
    geometry: RegionLogGeometry,
    protected readonly cleanBits: Uint8Array,
    /** Start with no region in sync whatever the sync word says (a core log rebuilt after its daemon died). */
    nothingInSync = false,
  ) {
    this.regionSectors = geometry.regionSectors;
    this.regionCount = geometry.regionCount;
    this.syncMode = geometry.syncMode;
    const byteLength = bitmapBytes(this.regionCount);
    // The kernel's construction: every region clean; in sync only with nosync (bits past the
    // last region included, as its memset does; nothing reads them).
    cleanBits.fill(0xff, 0, byteLength);
    const allInSync = this.syncMode === 'nosync' && !nothingInSync;
    this.syncBits = new Uint8Array(byteLength).fill(allInSync ? 0xff : 0);
    this.syncRegions = allInSync ? this.regionCount : 0;
    this.recoveringBits = new Uint8Array(byteLength);
  }

  isClean(region: number): boolean {
    return testRegionBit(this.cleanBits, region);
  }

  inSync(region: number): boolean {
    return testRegionBit(this.syncBits, region);
  }

  markRegion(region: number): void {
    this.clearBits(this.cleanBits, region, region + 1);
  }

  clearRegion(region: number): void {
    if (!this.flushFailed) this.setBits(this.cleanBits, region, region + 1);
  }

  getResyncWork(): number | undefined {
    while (this.resyncSearchRegion < this.regionCount) {
      const region = findNextZeroBit(this.syncBits, this.regionCount, this.resyncSearchRegion);
      this.resyncSearchRegion = region + 1;
      if (region >= this.regionCount) return undefined;
      if (testRegionBit(this.recoveringBits, region)) continue;
      this.setBits(this.recoveringBits, region, region + 1);
      return region;
    }
    return undefined;
  }

  setRegionSync(region: number, inSync: boolean): void {
    this.clearBits(this.recoveringBits, region, region + 1);
    if (inSync) {
      // The kernel counts up without looking at the bit; the region hash only reports regions it
      // recovered, whose bit was 0. Kept so the status counts as the kernel's would.
      this.setBits(this.syncBits, region, region + 1);
      this.syncRegions++;
    } else if (testRegionBit(this.syncBits, region)) {
      this.syncRegions--;
      this.clearBits(this.syncBits, region, region + 1);
    }
  }

  syncCount(): number {
    return this.syncRegions;
  }

  abstract flush(): Promise<number>;
  abstract status(kind: 'info' | 'table'): string;
  abstract resume(): Promise<void>;
  abstract postsuspend(): Promise<void>;
  abstract devices(): BlockDevice[];

  /** The table words after the log type's own (e.g. the log device): `<region_size> [sync|nosync]`. */
  protected regionArgsText(): string {
    return this.syncMode === 'default' ? `${this.regionSectors}` : `${this.regionSectors} ${this.syncMode}`;
  }

  /** The argument count the table prints: the log type's own words plus region size and sync word. */
  protected tableArgCount(ownWords: number): number {
    return ownWords + (this.syncMode === 'default' ? 1 : 2);
  }

  /** Bits [first, end) to 1; touches "cleaned" when the range is not empty, as each kernel set_bit does. */
  protected setBits(bits: Uint8Array, firstRegion: number, endRegion: number): void {
    if (endRegion <= firstRegion) return;
    setRegionBits(bits, firstRegion, endRegion, true);
    this.touchedCleaned = true;
  }

  /** Bits [first, end) to 0; touches "dirtied" when the range is not empty. */
  protected clearBits(bits: Uint8Array, firstRegion: number, endRegion: number): void {
    if (endRegion <= firstRegion) return;
    setRegionBits(bits, firstRegion, endRegion, false);
    this.touchedDirtied = true;
  }

  /** Resume of a loaded disk log: sync bits := clean bits (a copy, no bit operation: no touch), cursor to 0. */
  protected syncFromCleanBits(): void {
    this.syncBits.set(this.cleanBits.subarray(0, this.syncBits.byteLength));
    this.syncRegions = countSetBits(this.syncBits);
    this.resetResyncCursor();
  }

  protected resetResyncCursor(): void {
    this.resyncSearchRegion = 0;
  }
}

/**
 * "core": the bitmaps in memory only. Initialised once, at construction: a suspend/resume of the
 * same table keeps every bit (only the resync cursor restarts), while a new table — even the
 * same line — starts over, resynchronising everything unless `nosync` (`sync` = default).
 */
export class CoreLog extends RegionLog {
  readonly type = 'core';

  constructor(geometry: RegionLogGeometry, nothingInSync = false) {
    super(geometry, new Uint8Array(bitmapBytes(geometry.regionCount)), nothingInSync);
  }

  /** Nothing is persisted, so nothing to order: the kernel's core_flush is a no-op. */
  async flush(): Promise<number> {
    return 0;
  }

  async resume(): Promise<void> {
    this.resetResyncCursor();
  }

  async postsuspend(): Promise<void> {}

  devices(): BlockDevice[] {
    return [];
  }

  /** INFO `1 core`; TABLE `core <#args> <region_size> [sync|nosync]` (the mirror adds the spaces around it). */
  status(kind: 'info' | 'table'): string {
    if (kind === 'info') return '1 core';
    return `core ${this.tableArgCount(0)} ${this.regionArgsText()}`;
  }
}

export const coreLogType: DirtyLogType = {
  name: 'core',
  async create(args: DirtyLogArgs): Promise<DirtyLog> {
    const geometry = parseRegionLogArgs(args.args, args.targetSectors);
    if (args.rebuilt !== undefined) {
      // Which regions a write had dirtied lived in the previous daemon's memory: after a crash
      // the legs may differ anywhere, so every region is out of sync, nosync or not.
      args.rebuilt.warn(
        `mirror: a core log lived in the previous daemon's memory and did not survive it: all ${geometry.regionCount} regions are out of sync` +
          (geometry.syncMode === 'nosync' ? ' despite nosync' : '') +
          ' and resynchronise from the default leg',
      );
    }
    return new CoreLog(geometry, args.rebuilt !== undefined);
  },
};
