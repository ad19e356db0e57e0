import type { ErrorBits, IoRegion } from '../dmio/region';

/** The completion callback: read error (boolean), write error bitset (bit i = destination i), context. */
export type KcopydNotify<C> = (readErr: boolean, writeErr: ErrorBits, context: C) => void;

export type JobOp = 'read' | 'write' | 'writeZeroes';

/**
 * One kcopyd job record, as in the kernel: a user's copy or zero job, a sub-job (piece) of a
 * split job, the master of a split job, or a prepared callback. Sub-job records are reused piece
 * after piece, so the fields that change per piece are mutable.
 */
export class KcopydJob {
  op: JobOp;
  source: IoRegion | null;
  dests: readonly IoRegion[];
  sectorCount: number;
  readErr = false;
  writeErr: ErrorBits = 0;
  /** Pool pages holding the piece's data between its read and its write. */
  pages: Uint8Array[] | null = null;
  /** Sectors from the start of the master job to this piece (WRITE_SEQ ordering). */
  writeOffsetSectors = 0;
  /** Throttle sleeps taken before the job's current I/O. */
  throttleSleeps = 0;

  // Master state (split jobs only).
  isSplitMaster = false;
  progressSectors = 0;
  subJobsLeft = 0;
  nextWriteOffsetSectors = 0;
  /** Offset of the earliest piece whose read failed (WRITE_SEQ stops writing there). */
  firstUnreadSectors = Infinity;

  constructor(
    readonly flags: number,
    source: IoRegion | null,
    dests: readonly IoRegion[],
    sectorCount: number,
    op: JobOp,
    /** The user's callback; null for sub-jobs, whose completion goes to their master. */
    readonly notify: KcopydNotify<unknown> | null,
    readonly context: unknown,
    /** Set on sub-jobs: the split job they take pieces from. */
    readonly master: KcopydJob | null,
  ) {
    this.source = source;
    this.dests = dests;
    this.sectorCount = sectorCount;
    this.op = op;
  }

  /** A zero job writes the shared zero page list and has no source. */
  get isZero(): boolean {
    return this.source === null;
  }
}

/** What `prepareCallback` hands back: pass it to `doCallback` exactly once. */
export interface KcopydPreparedCallback {
  readonly __kcopydPreparedCallback: true;
}
