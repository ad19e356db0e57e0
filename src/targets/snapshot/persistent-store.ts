import { ErrnoError, EIO } from '../../base/errno';
import { SECTOR_BYTES } from '../../base/units';
import type { BlockDevice } from '../../io/block-device';
import { allocPageAligned } from '../../io/native';
import { chunkSizeProblem } from './chunk';
import {
  StoreConfigError,
  StoreLoadError,
  type ExceptionStore,
  type ExceptionStoreArgs,
  type ExceptionStoreType,
  type ExceptionStoreUsage,
  type MergeRun,
} from './exception-store';
import { checkTableChunkSize } from './store-common';

/*
 * THE persistent exception store ("P", "PO"): the kernel's dm-snap-persistent.c on-disk format
 * (spec/snapshot.md §6). This file is the only place that knows it.
 *
 * The COW device is an array of chunks of `chunkSectors` sectors:
 *
 *   chunk 0              header: le32 magic "SnAp", le32 valid, le32 version (1), le32 chunk size
 *                        in sectors, then zeroes to the end of the chunk
 *   chunk 1              metadata area 0: E records of { le64 old_chunk, le64 new_chunk }
 *   chunks 2 .. E+1      the data chunks area 0 describes
 *   chunk E+2            area 1, then its E data chunks, and so on: area a is at 1 + a*(E+1)
 *
 * with E = chunk bytes / 16 = chunkSectors * 32 records per area. Records are appended in commit
 * order; the first record whose new_chunk is 0 ends the table (chunk 0 is the header, so it is
 * never a data chunk; old_chunk 0 is legitimate). Every area but the last is full.
 *
 * Ordering, the reason this format survives a crash (§3.7, §6.5):
 *   - a data chunk is copied before the area write that records it; that area write is
 *     PREFLUSH + FUA, so the copy is durable no later than the record pointing at it;
 *   - when a commit fills an area, the next area is zeroed first (plain write, ordered by the
 *     same PREFLUSH), so after a crash it reads as empty rather than as stale records;
 *   - the header is written only at initialisation and at invalidation, never per commit.
 */

/** "SnAp" read as a little-endian u32. 0 in its place means a blank device: initialise it. */
export const SNAP_MAGIC = 0x70416e53;
export const SNAPSHOT_DISK_VERSION = 1;
/** The header occupies chunk 0 only; area 0 follows it. */
export const HEADER_CHUNKS = 1;
export const EXCEPTION_RECORD_BYTES = 16;
/** Table chunk size 0 on a blank store: the kernel's DM_CHUNK_SIZE_DEFAULT_SECTORS. */
export const DEFAULT_CHUNK_SECTORS = 32;

const HEADER_MAGIC_OFFSET = 0;
const HEADER_VALID_OFFSET = 4;
const HEADER_VERSION_OFFSET = 8;
const HEADER_CHUNK_SIZE_OFFSET = 12;
const RECORD_OLD_OFFSET = 0;
const RECORD_NEW_OFFSET = 8;

/** E: how many exception records one chunk-sized area holds. */
export function exceptionsPerArea(chunkSectors: number): number {
  return (chunkSectors * SECTOR_BYTES) / EXCEPTION_RECORD_BYTES;
}

/** The COW chunk holding metadata area `area` (0-based): each area is followed by its E data chunks. */
export function areaLocationChunk(area: number, perArea: number): number {
  return HEADER_CHUNKS + area * (perArea + 1);
}

/** True when `chunk` is an area chunk, which allocation must step over. */
function isAreaChunk(chunk: number, perArea: number): boolean {
  return chunk % (perArea + 1) === HEADER_CHUNKS;
}

// ---- On-disk records: the only little-endian code of the store. ----------------------------

/** Chunk 0 as stored. */
export interface DiskHeader {
  readonly magic: number;
  /** Non-zero counts as valid (the kernel tests `valid` for truth). */
  readonly valid: number;
  readonly version: number;
  readonly chunkSectors: number;
}

/** One 16-byte record of an area as stored; `newChunk` 0 is the terminator. */
export interface DiskException {
  readonly oldChunk: number;
  readonly newChunk: number;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function decodeHeader(chunk0: Uint8Array): DiskHeader {
  const dv = view(chunk0);
  return {
    magic: dv.getUint32(HEADER_MAGIC_OFFSET, true),
    valid: dv.getUint32(HEADER_VALID_OFFSET, true),
    version: dv.getUint32(HEADER_VERSION_OFFSET, true),
    chunkSectors: dv.getUint32(HEADER_CHUNK_SIZE_OFFSET, true),
  };
}

/** Fills `chunk0` (all of it: the kernel writes the rest of the header chunk as zeroes). */
export function encodeHeader(chunk0: Uint8Array, header: DiskHeader): void {
  chunk0.fill(0);
  const dv = view(chunk0);
  dv.setUint32(HEADER_MAGIC_OFFSET, header.magic, true);
  dv.setUint32(HEADER_VALID_OFFSET, header.valid, true);
  dv.setUint32(HEADER_VERSION_OFFSET, header.version, true);
  dv.setUint32(HEADER_CHUNK_SIZE_OFFSET, header.chunkSectors, true);
}

/** Throws StoreLoadError(EINVAL) for a chunk number a JS number cannot hold exactly. */
export function decodeRecord(area: Uint8Array, index: number): DiskException {
  const dv = view(area);
  const at = index * EXCEPTION_RECORD_BYTES;
  return {
    oldChunk: safeChunk(dv.getBigUint64(at + RECORD_OLD_OFFSET, true)),
    newChunk: safeChunk(dv.getBigUint64(at + RECORD_NEW_OFFSET, true)),
  };
}

export function encodeRecord(area: Uint8Array, index: number, record: DiskException): void {
  const dv = view(area);
  const at = index * EXCEPTION_RECORD_BYTES;
  dv.setBigUint64(at + RECORD_OLD_OFFSET, BigInt(record.oldChunk), true);
  dv.setBigUint64(at + RECORD_NEW_OFFSET, BigInt(record.newChunk), true);
}

function clearRecord(area: Uint8Array, index: number): void {
  area.fill(0, index * EXCEPTION_RECORD_BYTES, (index + 1) * EXCEPTION_RECORD_BYTES);
}

function safeChunk(value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new StoreLoadError(`chunk number ${value} in snapshot metadata is too large`, 'EINVAL');
  }
  return Number(value);
}

// ---- The store. -----------------------------------------------------------------------------

/** Page-aligned and chunk-sized, so metadata I/O can go to an O_DIRECT descriptor. */
function chunkBuffer(chunkSectors: number): Uint8Array {
  return new Uint8Array(allocPageAligned(chunkSectors * SECTOR_BYTES));
}

/**
 * One batch made durable by one area write (the kernel does this inline in commit_exception; we
 * queue it because our I/O is asynchronous and a second batch may be ready while the first is
 * still being written). `areaBytes` is a copy taken when the batch closed, so records committed
 * meanwhile neither reach the disk before their own flush nor tear this write.
 */
interface AreaCommit {
  readonly area: number;
  readonly areaBytes: Uint8Array;
  /** The batch filled the area: zero area + 1 first. */
  readonly filled: boolean;
  readonly callbacks: Array<(valid: boolean) => void>;
}

export class PersistentStore implements ExceptionStore {
  overflowSupported: boolean;
  readonly mergeSupported = true;

  private chunkSectorsInForce: number;
  private perArea: number;
  private valid = true;
  /** The next COW chunk to hand out (§6.4). */
  private nextFreeChunk = HEADER_CHUNKS + 1;
  private currentArea = 0;
  /** Records used in the current area. */
  private currentCommitted = 0;
  /** Exceptions prepared and not yet committed: while any remain, commits are batched. */
  private pendingCount = 0;
  /** The current area as it will be written: committed records, then zeroes. */
  private area: Uint8Array;
  /** Callbacks of records in `area` whose batch has not closed yet, in commit order. */
  private waiting: Array<(valid: boolean) => void> = [];
  private readonly commitQueue: AreaCommit[] = [];
  private writingArea = false;
  private spareAreaBuffers: Uint8Array[] = [];
  private zeroChunk: Uint8Array | undefined;

  constructor(
    private cow: BlockDevice,
    private readonly originLogicalBlockBytes: number,
    tableChunkSectors: number,
    options: string,
  ) {
    // Only the first option character counts, as in the kernel ("POxyz" loads and prints "PO").
    this.overflowSupported = options.length > 0;
    if (options.length > 0 && options[0].toUpperCase() !== 'O') {
      throw new StoreConfigError(`Unsupported persistent store option: ${options}`);
    }
    // Until the header is read, a table chunk size of 0 means the default for a new store.
    this.chunkSectorsInForce = tableChunkSectors !== 0 ? tableChunkSectors : defaultChunkSectors(cow);
    this.perArea = exceptionsPerArea(this.chunkSectorsInForce);
    this.area = chunkBuffer(this.chunkSectorsInForce);
  }

  get tableText(): string {
    return this.overflowSupported ? 'PO' : 'P';
  }

  get chunkSectors(): number {
    return this.chunkSectorsInForce;
  }

  /** §6.7. Rejects with StoreLoadError; resolves false for a header that says invalid. */
  async readMetadata(add: (oldChunk: number, newChunk: number) => void): Promise<boolean> {
    const header = await this.readHeader();
    if (header.magic === 0) {
      await this.initialise();
      return true;
    }
    if (header.version !== SNAPSHOT_DISK_VERSION) {
      throw new StoreLoadError(`unable to handle snapshot disk version ${header.version}`, 'EINVAL');
    }
    if (header.valid === 0) {
      this.valid = false;
      return false;
    }
    await this.readAreas(add);
    return true;
  }

  prepareException(): number | undefined {
    // The chunk handed out must lie wholly inside the device.
    if ((this.nextFreeChunk + 1) * this.chunkSectorsInForce > this.cow.sizeSectors) return undefined;
    const newChunk = this.nextFreeChunk;
    this.nextFreeChunk = this.skipAreaChunk(newChunk + 1);
    this.pendingCount++;
    return newChunk;
  }

  /**
   * The ordering rule of §6.5, in the kernel's order: record into the in-memory area; hold the
   * batch open while other prepared exceptions are pending (unless the area is full); otherwise
   * close the batch and make it durable, then run every waiting callback in commit order.
   */
  commitException(oldChunk: number, newChunk: number, copyValid: boolean, done: (valid: boolean) => void): void {
    if (!copyValid) this.valid = false;
    encodeRecord(this.area, this.currentCommitted++, { oldChunk, newChunk });
    this.waiting.push(done);
    this.pendingCount--;
    const filled = this.currentCommitted === this.perArea;
    if (this.pendingCount > 0 && !filled) return;

    const areaBytes = this.takeAreaBuffer();
    areaBytes.set(this.area);
    this.commitQueue.push({ area: this.currentArea, areaBytes, filled, callbacks: this.waiting });
    this.waiting = [];
    if (filled) {
      // The kernel moves on after the write; moving on now is the same to every later commit,
      // which will land in the next area's batch, queued behind this one.
      this.currentArea++;
      this.currentCommitted = 0;
      this.area.fill(0);
    }
    if (!this.writingArea) void this.writeQueuedAreas();
  }

  useCow(cow: BlockDevice): void {
    if (cow.key !== this.cow.key) throw new Error(`a store of ${this.cow.tableName} cannot move to ${cow.tableName}`);
    this.cow = cow;
  }

  /** Invalidation for good: the header is rewritten with valid = 0 (plain write, areas untouched). */
  async dropSnapshot(): Promise<void> {
    this.valid = false;
    // As the kernel: a failed header write leaves the store invalid in memory all the same.
    await this.writeHeader(0);
  }

  usage(): ExceptionStoreUsage {
    return {
      allocatedSectors: this.nextFreeChunk * this.chunkSectorsInForce,
      totalSectors: this.cow.sizeSectors,
      // The header chunk and areas 0 .. currentArea.
      metadataSectors: (this.currentArea + 2) * this.chunkSectorsInForce,
    };
  }

  /**
   * §6.6: the newest committed record and how many records before it, within this area, continue
   * it (old and new both one less each step). Steps back into the previous area, read from disk,
   * when the current one is used up. Null: nothing left to merge.
   */
  async prepareMerge(): Promise<MergeRun | null> {
    if (this.currentCommitted === 0) {
      if (this.currentArea === 0) return null;
      this.currentArea--;
      await this.readCurrentArea();
      this.currentCommitted = this.perArea;
    }
    const last = decodeRecord(this.area, this.currentCommitted - 1);
    let count = 1;
    for (; count < this.currentCommitted; count++) {
      const before = decodeRecord(this.area, this.currentCommitted - 1 - count);
      if (before.oldChunk !== last.oldChunk - count || before.newChunk !== last.newChunk - count) break;
    }
    return { lastOldChunk: last.oldChunk, lastNewChunk: last.newChunk, count };
  }

  /** §6.6: clear the last `count` records durably (FLUSH + FUA); next_free follows for status. */
  async commitMerge(count: number): Promise<void> {
    if (count > this.currentCommitted) {
      throw new ErrnoError(`merge of ${count} records but only ${this.currentCommitted} are committed`, EIO);
    }
    for (let i = 0; i < count; i++) clearRecord(this.area, this.currentCommitted - 1 - i);
    if (!(await this.writeDurably(this.area, this.areaSector(this.currentArea)))) {
      throw new ErrnoError(`write of snapshot metadata area ${this.currentArea}`, EIO);
    }
    this.currentCommitted -= count;
    this.nextFreeChunk = areaLocationChunk(this.currentArea, this.perArea) + this.currentCommitted + 1;
  }

  // ---- Loading. ---------------------------------------------------------------------------

  /** Reads chunk 0 in the chunk size in force and lets a header's chunk size override it. */
  private async readHeader(): Promise<DiskHeader> {
    const chunk0 = chunkBuffer(this.chunkSectorsInForce);
    const result = await this.cow.read(chunk0, 0);
    if (result !== chunk0.byteLength) throw new StoreLoadError('Unable to read snapshot header', 'EIO');
    const header = decodeHeader(chunk0);
    if (header.magic === 0) return header;
    if (header.magic !== SNAP_MAGIC) throw new StoreLoadError('Invalid or corrupt snapshot', 'ENXIO');
    if (header.chunkSectors !== this.chunkSectorsInForce) {
      const problem = chunkSizeProblem(header.chunkSectors, [this.cow.logicalBlockBytes, this.originLogicalBlockBytes]);
      if (problem !== undefined) {
        throw new StoreLoadError(`invalid on-disk chunk size ${header.chunkSectors}: ${problem}.`, 'EINVAL');
      }
      this.useChunkSize(header.chunkSectors);
    }
    return header;
  }

  /** A blank device: header, then a zeroed area 0, both plain writes (§6.7 step 2). */
  private async initialise(): Promise<void> {
    await this.writeHeader(1);
    this.area.fill(0);
    const result = await this.cow.write(this.area, this.areaSector(0), false);
    if (result !== this.area.byteLength) throw new StoreLoadError('Unable to initialise snapshot metadata area 0', 'EIO');
    this.currentArea = 0;
    this.currentCommitted = 0;
    this.nextFreeChunk = HEADER_CHUNKS + 1;
  }

  /**
   * §6.7 step 6-7: areas in order until one holds a terminator; that one becomes the current
   * area. Records after the terminator are ignored and dropped from the in-memory copy, so the
   * next area write stores zeroes there.
   */
  private async readAreas(add: (oldChunk: number, newChunk: number) => void): Promise<void> {
    for (let area = 0; ; area++) {
      this.currentArea = area;
      const result = await this.cow.read(this.area, this.areaSector(area));
      if (result !== this.area.byteLength) {
        throw new StoreLoadError(`Unable to read snapshot metadata area ${area}`, 'EIO');
      }
      for (let index = 0; index < this.perArea; index++) {
        const record = decodeRecord(this.area, index);
        if (record.newChunk === 0) {
          this.currentCommitted = index;
          this.area.fill(0, index * EXCEPTION_RECORD_BYTES);
          this.nextFreeChunk = this.skipAreaChunk(this.nextFreeChunk);
          return;
        }
        this.nextFreeChunk = Math.max(this.nextFreeChunk, record.newChunk + 1);
        add(record.oldChunk, record.newChunk);
      }
    }
  }

  private useChunkSize(chunkSectors: number): void {
    this.chunkSectorsInForce = chunkSectors;
    this.perArea = exceptionsPerArea(chunkSectors);
    this.area = chunkBuffer(chunkSectors);
    this.zeroChunk = undefined;
    this.spareAreaBuffers = [];
  }

  // ---- Writing. ---------------------------------------------------------------------------

  /** Queued batches, one at a time, in order; each one's callbacks run after its write. */
  private async writeQueuedAreas(): Promise<void> {
    this.writingArea = true;
    try {
      for (let commit = this.commitQueue.shift(); commit !== undefined; commit = this.commitQueue.shift()) {
        await this.writeAreaCommit(commit);
        this.spareAreaBuffers.push(commit.areaBytes);
        for (const done of commit.callbacks) done(this.valid);
      }
    } finally {
      this.writingArea = false;
    }
  }

  /** §6.5 step 4a-b. Any failure invalidates the store; an invalid store's area is not written. */
  private async writeAreaCommit(commit: AreaCommit): Promise<void> {
    if (commit.filled) {
      const zeroes = this.zeroChunkBuffer();
      const result = await this.cow.write(zeroes, this.areaSector(commit.area + 1), false);
      if (result !== zeroes.byteLength) this.valid = false;
    }
    if (!this.valid) return;
    if (!(await this.writeDurably(commit.areaBytes, this.areaSector(commit.area)))) this.valid = false;
  }

  /** PREFLUSH (earlier writes, the copied data among them, are durable first) then FUA. */
  private async writeDurably(bytes: Uint8Array, sector: number): Promise<boolean> {
    if ((await this.cow.flush()) < 0) return false;
    return (await this.cow.write(bytes, sector, true)) === bytes.byteLength;
  }

  /** Merge side: rereads the current area (the previous one, once the newer is merged away). */
  private async readCurrentArea(): Promise<void> {
    const result = await this.cow.read(this.area, this.areaSector(this.currentArea));
    if (result !== this.area.byteLength) {
      throw new ErrnoError(`read of snapshot metadata area ${this.currentArea}`, result < 0 ? -result : EIO);
    }
  }

  private async writeHeader(valid: number): Promise<void> {
    const chunk0 = chunkBuffer(this.chunkSectorsInForce);
    encodeHeader(chunk0, { magic: SNAP_MAGIC, valid, version: SNAPSHOT_DISK_VERSION, chunkSectors: this.chunkSectorsInForce });
    const result = await this.cow.write(chunk0, 0, false);
    if (result !== chunk0.byteLength) throw new StoreLoadError('Unable to write snapshot header', 'EIO');
  }

  private areaSector(area: number): number {
    return areaLocationChunk(area, this.perArea) * this.chunkSectorsInForce;
  }

  /** §6.4 step 2 / §6.7 step 7: a next-free chunk that landed on an area chunk moves past it. */
  private skipAreaChunk(chunk: number): number {
    return isAreaChunk(chunk, this.perArea) ? chunk + 1 : chunk;
  }

  private takeAreaBuffer(): Uint8Array {
    return this.spareAreaBuffers.pop() ?? chunkBuffer(this.chunkSectorsInForce);
  }

  private zeroChunkBuffer(): Uint8Array {
    this.zeroChunk ??= chunkBuffer(this.chunkSectorsInForce);
    return this.zeroChunk;
  }
}

function defaultChunkSectors(cow: BlockDevice): number {
  return Math.max(DEFAULT_CHUNK_SECTORS, cow.logicalBlockBytes / SECTOR_BYTES);
}

export const persistentStoreType: ExceptionStoreType = {
  name: 'P',
  create(args: ExceptionStoreArgs): ExceptionStore {
    checkTableChunkSize(args);
    return new PersistentStore(args.cow, args.originLogicalBlockBytes, args.chunkSectors, args.options);
  },
};
