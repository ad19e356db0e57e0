import { dmIoNotify, type DmIoRequest } from '../dmio/dmio';
import type { ErrorBits, IoRegion } from '../dmio/region';
import { PAGE_BYTES, SECTOR_BYTES } from '../base/units';
import {
  DEFAULT_SUB_JOB_SECTORS, KCOPYD_IGNORE_ERROR, KCOPYD_MAX_REGIONS, KCOPYD_WRITE_SEQ, MAX_SUB_JOB_SECTORS,
  SECTORS_PER_PAGE, SPLIT_COUNT,
} from './constants';
import { JobQueue } from './job-queue';
import { KcopydJob, type KcopydNotify, type KcopydPreparedCallback } from './job';
import { PagePool } from './page-pool';
import { THROTTLE_SLEEP_MS, type KcopydThrottle } from './throttle';

/**
 * A kcopyd client, shaped like drivers/md/dm-kcopyd.c: four job lists and one worker that walks
 * them in a fixed order each time it runs —
 *   callback_jobs → (moved to) complete_jobs: run callbacks, return pages, let sub-jobs take the
 *   next piece; pages_jobs: give jobs their pages, stopping at the first that cannot have them;
 *   io_jobs: issue reads and writes through dm-io.
 * I/O completions only move a job to a list and wake the worker (a microtask: it runs once the
 * code that woke it has returned, so callbacks of one client never run concurrently or
 * re-entrantly from an I/O completion, yet no event-loop turn is spent per step of a copy).
 *
 * A job larger than the sub-job size is split: SPLIT_COUNT sub-jobs each take the next piece of at
 * most sub-job size, in ascending order, until the job is done or (without IGNORE_ERROR) has
 * failed; the user's callback then runs once with the errors of all pieces OR-ed together.
 */

export interface KcopydResult {
  readonly readErr: boolean;
  readonly writeErr: ErrorBits;
}

export interface KcopydProgress {
  /** Bytes of every copy and zero job submitted so far (source-sized, not per destination). */
  readonly bytesQueued: number;
  /** Bytes whose pieces were written to every destination without error. */
  readonly bytesCopied: number;
  /** Bytes of pieces that failed or were abandoned after an error; copied + failed = queued when idle. */
  readonly bytesFailed: number;
}

export interface KcopydClientOptions {
  /** Shared throttle (the modern API); null or absent = unthrottled. */
  readonly throttle?: KcopydThrottle | null;
  /**
   * Pages the client may hold at once (the old API's num_pages). Default: enough for SPLIT_COUNT
   * sub-jobs in flight. With fewer pages than one sub-job needs, sub-jobs shrink to fit the pool.
   */
  readonly poolPages?: number;
  /** Sub-job size in sectors (dm_mod.kcopyd_subjob_size_kb × 2); default 1024. */
  readonly subJobSectors?: number;
  /**
   * Read sources through the page cache (default false: around it, as the kernel's kcopyd).
   * For clients whose copies are long and sequential (a mirror's resync, region after region):
   * readahead keeps the source disk busy between sub-jobs, and a cached source costs no read.
   * Copies of scattered chunks (a snapshot's copy-out) gain nothing and would fill the cache.
   */
  readonly readSourceThroughPageCache?: boolean;
}

type AnyNotify = KcopydNotify<unknown>;

const ZERO_PAGE = new Uint8Array(PAGE_BYTES);

export class KcopydClient {
  readonly throttle: KcopydThrottle | null;
  /** Sectors per piece: the configured sub-job size, shrunk to what the page pool can hold. */
  readonly subJobSectors: number;
  readonly readSourceThroughPageCache: boolean;

  private readonly pool: PagePool;
  private readonly zeroPages: readonly Uint8Array[];
  private readonly callbackJobs = new JobQueue<KcopydJob>();
  private readonly completeJobs = new JobQueue<KcopydJob>();
  private readonly pagesJobs = new JobQueue<KcopydJob>();
  private readonly ioJobs = new JobQueue<KcopydJob>();
  private readonly prepared = new Set<KcopydJob>();

  /** Jobs submitted and not yet past their callback (nr_jobs). */
  private jobCount = 0;
  private workerQueued = false;
  private throttleSleeping = false;
  private destroyed = false;
  private destroyWaiters: Array<() => void> = [];
  private flushWaiters: Array<() => void> = [];
  private bytesQueued = 0;
  private bytesCopied = 0;
  private bytesFailed = 0;

  constructor(options: KcopydClientOptions = {}) {
    const configuredSubJobSectors = options.subJobSectors ?? DEFAULT_SUB_JOB_SECTORS;
    if (!Number.isInteger(configuredSubJobSectors) || configuredSubJobSectors <= 0 || configuredSubJobSectors > MAX_SUB_JOB_SECTORS) {
      throw new RangeError(`sub-job size must be 1..${MAX_SUB_JOB_SECTORS} sectors, got ${configuredSubJobSectors}`);
    }
    const poolPages = options.poolPages ?? SPLIT_COUNT * Math.ceil(configuredSubJobSectors / SECTORS_PER_PAGE);
    if (!Number.isInteger(poolPages) || poolPages <= 0) {
      throw new RangeError(`a kcopyd client needs at least one page, got ${poolPages}`);
    }
    this.throttle = options.throttle ?? null;
    this.readSourceThroughPageCache = options.readSourceThroughPageCache ?? false;
    this.subJobSectors = Math.min(configuredSubJobSectors, poolPages * SECTORS_PER_PAGE);
    this.pool = new PagePool(poolPages);
    // The shared zero page "repeated forever": as many references as the largest piece needs.
    this.zeroPages = new Array(Math.ceil(this.subJobSectors / SECTORS_PER_PAGE)).fill(ZERO_PAGE);
  }

  get poolPages(): number {
    return this.pool.capacity;
  }

  get progress(): KcopydProgress {
    return { bytesQueued: this.bytesQueued, bytesCopied: this.bytesCopied, bytesFailed: this.bytesFailed };
  }

  /** Jobs submitted (or prepared) whose callback has not returned yet. */
  get jobsInFlight(): number {
    return this.jobCount;
  }

  /**
   * Copies `from` to every destination (1..KCOPYD_MAX_REGIONS, each with from.count sectors).
   * `notify(readErr, writeErr, context)` runs exactly once, from this client's worker.
   */
  copy<C>(from: IoRegion, dests: readonly IoRegion[], flags: number, notify: KcopydNotify<C>, context: C): void {
    this.assertAcceptingJobs();
    assertDestinations(dests, from.count);
    this.start(new KcopydJob(normaliseFlags(flags), from, dests, from.count, 'read', notify as AnyNotify, context, null));
  }

  /** Makes every destination read as zeroes; write-zeroes when all support it, else zero pages. */
  zero<C>(dests: readonly IoRegion[], flags: number, notify: KcopydNotify<C>, context: C): void {
    this.assertAcceptingJobs();
    assertDestinations(dests, dests[0]?.count ?? 0);
    const op = dests.every(supportsWriteZeroes) ? 'writeZeroes' : 'write';
    this.start(new KcopydJob(normaliseFlags(flags), null, dests, dests[0].count, op, notify as AnyNotify, context, null));
  }

  /** `copy` as a promise of its result. */
  copyAndWait(from: IoRegion, dests: readonly IoRegion[], flags = 0): Promise<KcopydResult> {
    return new Promise((resolve) => this.copy(from, dests, flags, resolveResult, resolve));
  }

  /** `zero` as a promise of its result. */
  zeroAndWait(dests: readonly IoRegion[], flags = 0): Promise<KcopydResult> {
    return new Promise((resolve) => this.zero(dests, flags, resolveResult, resolve));
  }

  /**
   * Reserves a job whose only work is its callback, so a caller doing its own I/O can deliver
   * the completion through this client (serialised with its copies). Counts as a job in flight
   * until `doCallback` has been called and the callback has run.
   */
  prepareCallback<C>(notify: KcopydNotify<C>, context: C): KcopydPreparedCallback {
    this.assertAcceptingJobs();
    const job = new KcopydJob(0, null, [], 0, 'write', notify as AnyNotify, context, null);
    this.jobCount++;
    this.prepared.add(job);
    return job as unknown as KcopydPreparedCallback;
  }

  /** Queues a prepared callback; safe from any context, including I/O completions. */
  doCallback(handle: KcopydPreparedCallback, readErr: boolean, writeErr: ErrorBits): void {
    const job = handle as unknown as KcopydJob;
    if (!this.prepared.delete(job)) throw new Error('doCallback: not a pending callback prepared by this client');
    job.readErr = readErr;
    job.writeErr = writeErr;
    this.callbackJobs.push(job);
    this.wake();
  }

  /** Kicks the worker; resolves once it has run over the work queued now (not device I/O). */
  flush(): Promise<void> {
    return new Promise((resolve) => {
      this.flushWaiters.push(resolve);
      this.wake();
    });
  }

  /**
   * Refuses new jobs, then waits until every job submitted or prepared has completed and had its
   * callback run. There is no cancellation: jobs in flight run to the end.
   */
  destroy(): Promise<void> {
    this.destroyed = true;
    if (this.jobCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.destroyWaiters.push(resolve));
  }

  // ---- submission -------------------------------------------------------------------------

  private start(job: KcopydJob): void {
    this.bytesQueued += job.sectorCount * SECTOR_BYTES;
    if (job.sectorCount <= this.subJobSectors) this.dispatch(job);
    else this.split(job);
  }

  private dispatch(job: KcopydJob): void {
    this.jobCount++;
    if (job.sectorCount === 0) this.callbackJobs.push(job);
    else if (job.isZero) this.ioJobs.push(job);
    else this.pagesJobs.push(job);
    this.wake();
  }

  private split(master: KcopydJob): void {
    this.jobCount++;
    master.isSplitMaster = true;
    master.subJobsLeft = SPLIT_COUNT;
    for (let i = 0; i < SPLIT_COUNT; i++) {
      this.segmentComplete(new KcopydJob(master.flags, master.source, master.dests, 0, master.op, null, null, master));
    }
  }

  /**
   * A piece finished (or a fresh sub-job starts): fold its errors into the master and hand it the
   * next piece, unless the job is done or has failed without IGNORE_ERROR; the last sub-job to
   * retire queues the master's completion.
   */
  private segmentComplete(subJob: KcopydJob): void {
    const master = subJob.master as KcopydJob;
    if (subJob.readErr) {
      master.readErr = true;
      master.firstUnreadSectors = Math.min(master.firstUnreadSectors, subJob.writeOffsetSectors);
    }
    master.writeErr = (master.writeErr | subJob.writeErr) >>> 0;

    let pieceSectors = 0;
    const pieceOffsetSectors = master.progressSectors;
    if ((!master.readErr && master.writeErr === 0) || master.flags & KCOPYD_IGNORE_ERROR) {
      pieceSectors = Math.min(this.subJobSectors, master.sectorCount - pieceOffsetSectors);
      master.progressSectors += pieceSectors;
    }

    if (pieceSectors > 0) {
      subJob.source = master.source && shifted(master.source, pieceOffsetSectors, pieceSectors);
      subJob.dests = master.dests.map((dest) => shifted(dest, pieceOffsetSectors, pieceSectors));
      subJob.sectorCount = pieceSectors;
      subJob.op = master.op;
      subJob.readErr = false;
      subJob.writeErr = 0;
      subJob.writeOffsetSectors = pieceOffsetSectors;
      this.dispatch(subJob);
    } else if (--master.subJobsLeft === 0) {
      this.completeJobs.push(master);
      this.wake();
    }
  }

  // ---- the worker -------------------------------------------------------------------------

  private wake(): void {
    if (this.workerQueued || this.throttleSleeping) return;
    this.workerQueued = true;
    // Not setImmediate: under a loaded VM one loop turn costs as much as the I/O it starts, and a
    // copy takes three of them (issue the read, issue the write, run the callback). The worker
    // wakes itself only for work that moves a job forward (a sub-job's next piece, a write
    // skipped after a failure), never to poll, so a microtask cannot starve the event loop.
    queueMicrotask(this.runWorker);
  }

  private readonly runWorker = (): void => {
    this.workerQueued = false;
    const flushWaiters = this.flushWaiters;
    this.flushWaiters = [];

    this.completeJobs.spliceTail(this.callbackJobs);
    for (let job = this.completeJobs.shift(); job; job = this.completeJobs.shift()) this.runComplete(job);
    this.runPagesJobs();
    this.runIoJobs();

    if (this.throttleSleeping) this.flushWaiters.unshift(...flushWaiters);
    else for (const resolve of flushWaiters) resolve();
  };

  private runComplete(job: KcopydJob): void {
    if (job.pages) {
      this.pool.give(job.pages);
      job.pages = null;
    }
    this.account(job);
    try {
      if (job.master) this.segmentComplete(job);
      else (job.notify as AnyNotify)(job.readErr, job.writeErr, job.context);
    } finally {
      if (--this.jobCount === 0 && this.destroyWaiters.length > 0) {
        const waiters = this.destroyWaiters;
        this.destroyWaiters = [];
        for (const resolve of waiters) resolve();
      }
    }
  }

  private account(job: KcopydJob): void {
    if (job.isSplitMaster) {
      this.bytesFailed += (job.sectorCount - job.progressSectors) * SECTOR_BYTES; // never handed out
    } else if (job.dests.length > 0) {
      const pieceBytes = job.sectorCount * SECTOR_BYTES;
      if (job.readErr || job.writeErr !== 0) this.bytesFailed += pieceBytes;
      else this.bytesCopied += pieceBytes;
    }
  }

  private runPagesJobs(): void {
    for (let job = this.pagesJobs.shift(); job; job = this.pagesJobs.shift()) {
      const pages = this.pool.take(Math.ceil(job.sectorCount / SECTORS_PER_PAGE));
      if (!pages) {
        this.pagesJobs.pushHead(job); // wait at the head until a completing job returns pages
        return;
      }
      job.pages = pages;
      this.ioJobs.push(job);
    }
  }

  private runIoJobs(): void {
    for (;;) {
      const index = this.nextRunnableIoJob();
      if (index < 0) return;
      const job = this.ioJobs.at(index);
      const master = job.master;
      if (master && job.op !== 'read' && job.flags & KCOPYD_WRITE_SEQ && isBehindFailure(job, master)) {
        this.ioJobs.removeAt(index);
        job.readErr = master.readErr;
        job.writeErr = master.writeErr;
        this.completeJobs.push(job);
        this.wake();
        continue;
      }
      if (this.throttle && !this.throttle.admit(job.throttleSleeps)) {
        job.throttleSleeps++;
        this.sleepForThrottle(this.throttle);
        return;
      }
      job.throttleSleeps = 0;
      this.ioJobs.removeAt(index);
      if (master && job.op !== 'read' && job.flags & KCOPYD_WRITE_SEQ) master.nextWriteOffsetSectors += job.sectorCount;
      this.issue(job);
    }
  }

  /** pop_io_job: any read or unordered write; an ordered write only at its master's write offset. */
  private nextRunnableIoJob(): number {
    for (let i = 0; i < this.ioJobs.length; i++) {
      const job = this.ioJobs.at(i);
      const master = job.master;
      if (job.op === 'read' || !(job.flags & KCOPYD_WRITE_SEQ) || !master) return i;
      if (job.writeOffsetSectors === master.nextWriteOffsetSectors || isBehindFailure(job, master)) return i;
    }
    return -1;
  }

  /** The kernel's worker sleeps in io_job_start; ours stops for the sleep and resumes after it. */
  private sleepForThrottle(throttle: KcopydThrottle): void {
    this.throttleSleeping = true;
    throttle.clock.sleep(THROTTLE_SLEEP_MS).then(() => {
      this.throttleSleeping = false;
      this.wake();
    });
  }

  private issue(job: KcopydJob): void {
    let request: DmIoRequest;
    if (job.op === 'read') {
      request = {
        op: 'read',
        memory: { kind: 'pageList', pages: job.pages as Uint8Array[], firstPageByteOffset: 0 },
        throughPageCache: this.readSourceThroughPageCache,
      };
      dmIoNotify(request, [job.source as IoRegion], this.ioComplete, job);
    } else if (job.op === 'writeZeroes') {
      dmIoNotify({ op: 'writeZeroes' }, job.dests, this.ioComplete, job);
    } else {
      const pages = job.isZero ? this.zeroPages : (job.pages as Uint8Array[]);
      request = { op: 'write', memory: { kind: 'pageList', pages, firstPageByteOffset: 0 } };
      dmIoNotify(request, job.dests, this.ioComplete, job);
    }
  }

  /** complete_io: runs from an I/O completion, so it only moves the job on and wakes the worker. */
  private readonly ioComplete = (errorBits: ErrorBits, job: KcopydJob): void => {
    this.throttle?.finish();
    if (errorBits !== 0) {
      if (job.op === 'read') job.readErr = true;
      else job.writeErr = (job.writeErr | errorBits) >>> 0;
      if (!(job.flags & KCOPYD_IGNORE_ERROR)) {
        this.completeJobs.push(job);
        this.wake();
        return;
      }
    }
    if (job.op === 'read') {
      // With IGNORE_ERROR after a failed read, dm-io zero-filled the pages: zeroes are written.
      job.op = 'write';
      this.ioJobs.push(job);
    } else {
      this.completeJobs.push(job);
    }
    this.wake();
  };

  private assertAcceptingJobs(): void {
    if (this.destroyed) throw new Error('kcopyd client is being destroyed');
  }
}

/** The old API: a client that may use `poolPages` pages (kcopyd_client_create(num_pages)). */
export function kcopydClientCreate(poolPages: number): KcopydClient {
  return new KcopydClient({ poolPages });
}

/** The modern API: dm_kcopyd_client_create(throttle); null means unthrottled. */
export function dmKcopydClientCreate(throttle: KcopydThrottle | null): KcopydClient {
  return new KcopydClient({ throttle });
}

/**
 * A sequential write that must not be issued: after a write error (as in the kernel), or when it
 * lies past a piece whose read failed. The kernel only checks the former, so its later pieces
 * would wait forever for the failed piece's turn; ours complete, still in order, without writing.
 */
function isBehindFailure(job: KcopydJob, master: KcopydJob): boolean {
  return master.writeErr !== 0 || job.writeOffsetSectors > master.firstUnreadSectors;
}

/** WRITE_SEQ errors cannot be ignored: a gap would be written over in sequence. */
function normaliseFlags(flags: number): number {
  return flags & KCOPYD_WRITE_SEQ ? flags & ~KCOPYD_IGNORE_ERROR : flags;
}

function assertDestinations(dests: readonly IoRegion[], sectorCount: number): void {
  if (dests.length < 1 || dests.length > KCOPYD_MAX_REGIONS) {
    throw new RangeError(`kcopyd takes 1..${KCOPYD_MAX_REGIONS} destinations, got ${dests.length}`);
  }
  for (const dest of dests) {
    if (dest.count !== sectorCount) {
      throw new RangeError(`every destination must have the source's ${sectorCount} sectors, got ${dest.count}`);
    }
  }
}

function shifted(region: IoRegion, byOffsetSectors: number, count: number): IoRegion {
  return { device: region.device, sector: region.sector + byOffsetSectors, count };
}

/** Capabilities are declared, never assumed: others get zero pages written. */
function supportsWriteZeroes(region: IoRegion): boolean {
  return region.device.capabilities.writeZeroes;
}

function resolveResult(readErr: boolean, writeErr: ErrorBits, resolve: (result: KcopydResult) => void): void {
  resolve({ readErr, writeErr });
}
