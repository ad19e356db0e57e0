/**
 * The on-disk format of dm-log-writes (drivers/md/dm-log-writes.c), which the kernel's target,
 * xfstests' replay-log and our `ublk-dm replay-log` all read: see docs/log-writes.md.
 *
 *   sector 0 (one log block):  super   { magic u64, version u64, nr_entries u64, sectorsize u32 }
 *   then, per entry:           entry   { sector u64, nr_sectors u64, flags u64, data_len u64 }
 *                              in a block of its own (a mark's name follows the entry in it),
 *                              then nr_sectors blocks of written data (none for discards, flushes
 *                              and marks).
 * All little-endian. "sector" and "nr_sectors" count blocks of `sectorsize` bytes (the logical
 * block size of the logged device), not 512-byte sectors.
 */

export const LOG_MAGIC = 0x6a736677736872n;
export const LOG_VERSION = 1n;
export const LOG_SUPER_BYTES = 28;
export const LOG_ENTRY_BYTES = 32;

export const LogFlag = Object.freeze({
  Flush: 1 << 0,
  Fua: 1 << 1,
  Discard: 1 << 2,
  Mark: 1 << 3,
  Metadata: 1 << 4,
});

export interface LogSuper {
  readonly entryCount: number;
  /** Bytes per log block and per unit of an entry's sector and nr_sectors. */
  readonly blockBytes: number;
}

export interface LogEntry {
  /** In blocks of the log's blockBytes. */
  readonly block: number;
  readonly blockCount: number;
  readonly flags: number;
  /** Length of the entry's own data: a mark's name, else the written bytes. */
  readonly dataLength: number;
}

/** A log file that is not one: wrong magic, version or block size. */
export class LogFormatError extends Error {}

export function encodeSuper(entryCount: number, blockBytes: number): Buffer {
  const block = Buffer.alloc(blockBytes);
  block.writeBigUInt64LE(LOG_MAGIC, 0);
  block.writeBigUInt64LE(LOG_VERSION, 8);
  block.writeBigUInt64LE(BigInt(entryCount), 16);
  block.writeUInt32LE(blockBytes, 24);
  return block;
}

export function decodeSuper(block: Uint8Array): LogSuper {
  const view = Buffer.from(block.buffer, block.byteOffset, block.byteLength);
  if (view.byteLength < LOG_SUPER_BYTES) throw new LogFormatError('the log is shorter than its super block');
  const magic = view.readBigUInt64LE(0);
  if (magic !== LOG_MAGIC) throw new LogFormatError(`not a dm-log-writes log: magic 0x${magic.toString(16)}, expected 0x${LOG_MAGIC.toString(16)}`);
  const version = view.readBigUInt64LE(8);
  if (version !== LOG_VERSION) throw new LogFormatError(`unsupported log version ${version}, expected ${LOG_VERSION}`);
  const blockBytes = view.readUInt32LE(24);
  if (blockBytes < 512 || (blockBytes & (blockBytes - 1)) !== 0) throw new LogFormatError(`invalid log block size ${blockBytes}`);
  const entryCount = view.readBigUInt64LE(16);
  if (entryCount > BigInt(Number.MAX_SAFE_INTEGER)) throw new LogFormatError(`invalid entry count ${entryCount}`);
  return { entryCount: Number(entryCount), blockBytes };
}

/** An entry's block: the entry, then (for a mark) its name, zero-padded to the block size. */
export function encodeEntry(entry: LogEntry, blockBytes: number, markName?: Uint8Array): Buffer {
  const block = Buffer.alloc(blockBytes);
  block.writeBigUInt64LE(BigInt(entry.block), 0);
  block.writeBigUInt64LE(BigInt(entry.blockCount), 8);
  block.writeBigUInt64LE(BigInt(entry.flags), 16);
  block.writeBigUInt64LE(BigInt(entry.dataLength), 24);
  if (markName !== undefined) block.set(markName, LOG_ENTRY_BYTES);
  return block;
}

export function decodeEntry(block: Uint8Array): LogEntry {
  const view = Buffer.from(block.buffer, block.byteOffset, block.byteLength);
  const safe = (offset: number, what: string): number => {
    const value = view.readBigUInt64LE(offset);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new LogFormatError(`corrupt log entry: ${what} ${value}`);
    return Number(value);
  };
  return { block: safe(0, 'sector'), blockCount: safe(8, 'nr_sectors'), flags: safe(16, 'flags'), dataLength: safe(24, 'data_len') };
}

/** A mark entry's name, from its entry block. */
export function markNameOf(entry: LogEntry, block: Uint8Array): string {
  return Buffer.from(block.subarray(LOG_ENTRY_BYTES, LOG_ENTRY_BYTES + entry.dataLength)).toString('latin1');
}

/** Log blocks an entry takes: its own block, plus its data unless it is a discard (or carries none). */
export function entryLogBlocks(entry: LogEntry): number {
  return 1 + ((entry.flags & LogFlag.Discard) !== 0 ? 0 : entry.blockCount);
}
