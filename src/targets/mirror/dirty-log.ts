import type { BlockDevice } from '../../io/block-device';

/**
 * Dirty logs: which regions of a mirror may differ between its legs. Two types registered by
 * name, as the kernel's dm_dirty_log_type: `core` (memory) and `disk` (disk-log.ts, THE on-disk
 * format). mirror.ts and the region hash talk to this interface and never see the bitmap.
 * Semantics: spec mirror.md §2 and §9.4. Region numbers are relative to the target's start.
 *
 * The bit operations are synchronous (they change memory); only flush and the suspend hooks do
 * I/O, as in the kernel, where the region hash calls flush() before issuing writes.
 */
export interface DirtyLog {
  /** "core" or "disk". */
  readonly type: string;
  readonly regionSectors: number;
  readonly regionCount: number;

  /** Clean bit set: no writes in flight and in sync when last marked. */
  isClean(region: number): boolean;
  /** Sync bit set: every leg holds the same data. */
  inSync(region: number): boolean;
  /** Clear the clean bit (made durable by the next flush, before the write goes to the legs). */
  markRegion(region: number): void;
  /** Set the clean bit (ignored after a flush failure; written only after the legs were flushed). */
  clearRegion(region: number): void;
  /**
   * Write what changed (disk: header + bitmap; a flush of the log device when something was
   * dirtied; the legs' flush callback first when something was cleaned). Resolves to 0 or -errno.
   */
  flush(): Promise<number>;
  /** The next region to recover (marked recovering), or undefined when none is left before the cursor resets at resume. */
  getResyncWork(): number | undefined;
  /** Recovery of `region` finished (or failed): clears recovering, sets or clears the sync bit. */
  setRegionSync(region: number, inSync: boolean): void;
  /** Regions whose sync bit is set (status: `<sync>/<total>`). */
  syncCount(): number;

  /** Status parts: INFO (`<#args> <type> [<dev> <A|D|F>]`) and TABLE (`<type> <#args> <args...>`). */
  status(kind: 'info' | 'table'): string;

  /** Resume: (re)load from disk, apply sync/nosync, reset the resync cursor. */
  resume(): Promise<void>;
  presuspend?(): Promise<void>;
  postsuspend(): Promise<void>;
  /** Devices the log holds (disk: its log device). */
  devices(): BlockDevice[];
}

/** What a log type is made from: the table's log arguments and the mirror's geometry. */
export interface DirtyLogArgs {
  readonly args: readonly string[];
  readonly targetSectors: number;
  /** Opens the log device (disk); the table owns it. */
  openDevice(spec: string): Promise<BlockDevice>;
  /** The mirror's flush of every leg, called before clean bits are written (§2). Resolves to 0 or -errno. */
  flushLegs(): Promise<number>;
  /** A dm event (log device failed), raised once. */
  raiseEvent(): void;
  /**
   * Optional: where the kernel's DMWARN lines of the log go ("dirty region log: ..."), e.g. why a
   * disk log reports `D` ("incompatible disk log version"). Absent: dropped.
   */
  warn?(message: string): void;
  /** A saved table rebuilt by a new daemon: what lived only in the old daemon's memory is gone (TargetContext.rebuilt). */
  readonly rebuilt?: { warn(message: string): void };
}

/** A log's construction failure: the mirror reports "Error creating mirror dirty log", this is the detail. */
export class DirtyLogError extends Error {}

export interface DirtyLogType {
  readonly name: string;
  /** Validate the arguments and open devices; no I/O on them yet (resume loads). Throws DirtyLogError. */
  create(args: DirtyLogArgs): Promise<DirtyLog>;
}
