import type { BlockDevice } from '../../io/block-device';

/**
 * Exception stores: where a snapshot records which origin chunk went to which COW chunk. Two
 * types, registered by name as the kernel's dm_exception_store_type: persistent ("P", the on-disk
 * format of persistent-store.ts, with option "O" for overflow) and transient ("N", memory only).
 * snapshot.ts talks to this interface and never sees the COW layout.
 *
 * Chunk numbers are in the snapshot's chunk size and fit a JS number (2^53 chunks).
 */

export interface ExceptionStoreUsage {
  /** Sectors handed out, metadata included (persistent) or data only (transient). */
  readonly allocatedSectors: number;
  /** The COW device's size in sectors (not rounded to chunks). */
  readonly totalSectors: number;
  readonly metadataSectors: number;
}

/** What prepareMerge found: the newest committed exception and the run ending at it. */
export interface MergeRun {
  readonly lastOldChunk: number;
  readonly lastNewChunk: number;
  /** Records, ending at the last one, whose old and new chunks are both consecutive (≥ 1). */
  readonly count: number;
}

export interface ExceptionStore {
  /** As the table prints it: "P", "PO" or "N". */
  readonly tableText: string;
  /** The chunk size in force, in sectors: a persistent header overrides the table's. */
  readonly chunkSectors: number;
  /**
   * PO: a snapshot write that finds the store full marks the snapshot Overflow instead of Invalid.
   * Set by the table; a handover gives the destination's choice to the store it takes over.
   */
  overflowSupported: boolean;
  readonly mergeSupported: boolean;

  /**
   * Load (the kernel's read_metadata): `add(oldChunk, newChunk)` for every committed exception, in
   * record order. A blank persistent store is initialised here. Resolves to whether the snapshot
   * is valid (a header with valid = 0 loads as invalid, without exceptions). Rejects with a
   * StoreLoadError when the COW holds something else or cannot be read.
   */
  readMetadata(add: (oldChunk: number, newChunk: number) => void): Promise<boolean>;

  /** A COW chunk for a new exception, or undefined when full. Counts one more pending exception. */
  prepareException(): number | undefined;

  /**
   * The copy for `oldChunk` into `newChunk` has finished (`copyValid` false: it failed). `done`
   * runs once the record is durable, with whether the store is still valid. Calls must come in
   * allocation order. A persistent store batches: the area is written (FLUSH + FUA) only when no
   * other prepared exception is pending or the area is full, then every waiting `done` runs in
   * commit order.
   */
  commitException(oldChunk: number, newChunk: number, copyValid: boolean, done: (valid: boolean) => void): void;

  /**
   * The store now belongs to another table, whose own handle on the same COW device is `cow`
   * (a handover: the kernel re-points store->snap). The old table closes its handle when it goes.
   */
  useCow(cow: BlockDevice): void;
  /** Invalidate the snapshot for good (persistent: the header is rewritten with valid = 0). */
  dropSnapshot(): Promise<void>;

  usage(): ExceptionStoreUsage;

  /** Merge side (persistent only): the next run to merge, newest first; null when nothing is left. */
  prepareMerge?(): Promise<MergeRun | null>;
  /** Clear the last `count` records durably (FLUSH + FUA). */
  commitMerge?(count: number): Promise<void>;
}

/** The store layer's load failures; the target reports them as the kernel does. */
export class StoreLoadError extends Error {
  constructor(
    message: string,
    /** ENXIO: not a snapshot ("Invalid or corrupt snapshot"); EINVAL/EIO otherwise. */
    readonly code: 'ENXIO' | 'EINVAL' | 'EIO',
  ) {
    super(message);
  }
}

/** A store's construction failure (bad option, bad chunk size): the reason, for the log. */
export class StoreConfigError extends Error {}

export interface ExceptionStoreArgs {
  readonly cow: BlockDevice;
  /** The origin's logical block size also constrains the chunk size. */
  readonly originLogicalBlockBytes: number;
  /** From the table; 0 = unspecified (persistent: from the header, or the default for a new store). */
  readonly chunkSectors: number;
  /** The characters after the store letter ("O" in "PO"). */
  readonly options: string;
  /** A handover destination's store, never loaded: a transient one may have chunk size 0. */
  readonly awaitingHandover?: boolean;
}

export interface ExceptionStoreType {
  /** "P" or "N". */
  readonly name: string;
  /** Validate the options and chunk size; no I/O yet. Throws StoreConfigError. */
  create(args: ExceptionStoreArgs): ExceptionStore;
}
