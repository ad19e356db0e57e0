import { ECANCELED, type IoResult } from '../base/errno';
import { STAGED_SQE_WORDS, StagedSqeKind, native, stableAddressOf, type NativeRing } from './native';
import { POLL_MAX_BATCH } from './poll-policy';

/**
 * IoRing: the JS owner of one native io_uring. It hands out tokens, keeps every buffer of a
 * request alive until its completion, routes completions to callbacks, and batches submission:
 * every prep only queues an SQE and schedules one flush (a microtask), so all the I/O issued
 * while handling a batch of completions goes to the kernel in one io_uring_enter, as soon as
 * the code handling them has returned.
 *
 * Every operation comes in two forms: `fooCb(..., done)` (no promise allocated; returns the
 * request's token, for cancel) and `foo(...)`, a promise of the same raw result. Results are
 * IoResults: I/O errors arrive as negative numbers, never as rejections.
 */

export type IoCallback = (result: IoResult) => void;

/** Names one request in flight, for cancel(). */
export type IoToken = number;

export interface IoRingOptions {
  /** Submission queue size (the completion queue is 4x). Default 256. */
  entries?: number;
  /** 128-byte SQEs (ublk control commands need them). */
  sqe128?: boolean;
  /**
   * 'event-loop' (default): completions arrive through libuv and submission is batched per
   * microtask. 'caller': a thread that has nothing else to wait on (a queue thread) drives the
   * ring itself with waitAndDispatch(), which submits and waits in one io_uring_enter.
   */
  drivenBy?: 'event-loop' | 'caller';
}

/** How waitAndDispatch() waits, and what it does with the I/O its callbacks queue. */
export interface WaitOptions {
  /**
   * 'submit': hand it to the kernel before returning. 'hold': leave it for the caller's next
   * waitAndDispatch, which submits it in the same io_uring_enter it waits in (one syscall per
   * request instead of two), or for submitQueued().
   */
  readonly queued: 'submit' | 'hold';
  /**
   * Poll this long (io_uring_enter calls that never sleep) before sleeping. In a VM, sleeping
   * and being woken again costs a thread more than a short poll that finds the next completion.
   */
  readonly pollMicros?: number;
}

const SUBMIT_QUEUED: WaitOptions = { queued: 'submit' };

/**
 * Filled by waitAndDispatch when given one: how long its wait in the kernel took (polling and
 * sleeping), without the callbacks it ran afterwards. A poll policy judges the gap between
 * requests by it; a target's own work (a tmpfs copy, under TCG tens of microseconds) is not part
 * of that gap.
 */
export interface WaitClock {
  waitMicros: number;
}

/** pwritev2 flag: this write is durable before it completes (FUA). */
export const RWF_DSYNC = 2;

const DEFAULT_ENTRIES = 256;
const COMPLETIONS_PER_BATCH = 256;
/** Requests staged between two submits before they are prepared early (a queue's depth is at most 4096). */
const STAGED_SQES = 256;
/** Submit-and-reap rounds per flush before yielding to the event loop (no starving timers and I/O). */
const INLINE_ROUNDS = 4;
/**
 * Flushes run as microtasks per event-loop turn; after that they wait for the next turn. A
 * microtask flush saves a loop turn per I/O hop (under a loaded VM a turn costs as much as a
 * tmpfs write), and the cap keeps a stream of inline completions from starving timers and sockets.
 */
const MICROTASK_FLUSHES_PER_TURN = 8;

// A token is generation << SLOT_BITS | slot: slots are reused, and the generation keeps a late
// cancel() from hitting whichever request took the slot next (one that came a multiple of 1024
// requests later still could; the one caller, a control command's timeout, cancels only a
// request in flight, whose slot nobody else holds). A token fits 31 bits: an int32, and a small
// integer to V8, so each completion's token is taken apart with integer operations. As a double
// (the wider generation this once had) its % and / cost 16 ns natively and 150-190 under TCG,
// once per completion.
const SLOT_BITS = 21;
const SLOT_LIMIT = 2 ** SLOT_BITS;
const SLOT_MASK = SLOT_LIMIT - 1;
const GENERATION_MASK = 2 ** (31 - SLOT_BITS) - 1;

export class IoRing {
  private readonly ring: NativeRing;
  private readonly completedTokens: Int32Array;
  private readonly completedResults: Int32Array;
  /** Requests queued for the next submit, read by the addon (NativeRing.stageSqes). */
  private readonly stagedSqes = new Float64Array(1 + STAGED_SQES * STAGED_SQE_WORDS);
  /**
   * The last wait's length, written by the addon once a caller asked for it (NativeRing.timeWaitsInto).
   * Timed there, not here: Node's performance.now() checks its receiver with a hasOwnProperty
   * on every call, which under TCG cost a queue thread 5 % of its CPU (two calls per wait).
   */
  private readonly waitTimes = new Float64Array(1);
  private waitsTimed = false;

  private readonly callbacks: Array<IoCallback | undefined> = [];
  /** Whatever the kernel reads or writes for the request in each slot. */
  private readonly inFlightBuffers: unknown[] = [];
  private readonly generations: number[] = [];
  private readonly freeSlots: number[] = [];
  private inFlightCount = 0;
  /** Requests done synchronously, waiting for the next waitAndDispatch() (completeInline). */
  private readonly inlineCallbacks: IoCallback[] = [];
  private readonly inlineResults: IoResult[] = [];
  private flushScheduled = false;
  /** Flushes run as microtasks since the event loop last turned (see MICROTASK_FLUSHES_PER_TURN). */
  private microtaskFlushes = 0;
  private turnMarkQueued = false;
  /** SQEs prepared since the last submit. */
  private unsubmittedCount = 0;
  private closed = false;
  private waits = 0;

  static create(options: IoRingOptions = {}): IoRing {
    return new IoRing(options.entries ?? DEFAULT_ENTRIES, options.sqe128 ?? false, options.drivenBy === 'caller');
  }

  private constructor(
    entries: number,
    sqe128: boolean,
    private readonly callerDriven: boolean,
  ) {
    this.completedTokens = new Int32Array(COMPLETIONS_PER_BATCH);
    this.completedResults = new Int32Array(COMPLETIONS_PER_BATCH);
    const Ring = native().Ring;
    // Bound methods, not the object's own (NativeRingHandle.boundMethods says why).
    this.ring = new Ring(
      entries,
      sqe128,
      this.completedTokens,
      this.completedResults,
      (count) => this.onCompletions(count),
      callerDriven,
    ).boundMethods();
    this.ring.stageSqes(this.stagedSqes);
  }

  /**
   * Caller-driven rings only: submit everything queued and wait until at least one request
   * completes or `timeoutMs` passes (-1: no limit), then run the callbacks of every completion
   * ready. Returns how many callbacks ran.
   *
   * What those callbacks queue (a COMMIT_AND_FETCH, a backing read) is submitted before it
   * returns, unless `options.queued` is 'hold' (see WaitOptions).
   */
  waitAndDispatch(timeoutMs: number, options: WaitOptions = SUBMIT_QUEUED, clock?: WaitClock): number {
    if (!this.callerDriven) throw new Error('waitAndDispatch: this ring is driven by the event loop');
    if (this.closed) return 0;
    this.waits++;
    const queued = options.queued;
    this.unsubmittedCount = 0;
    if (clock && !this.waitsTimed) {
      this.ring.timeWaitsInto(this.waitTimes);
      this.waitsTimed = true;
    }
    // Requests already done inline must not wait behind a blocking io_uring_enter.
    let total = this.ring.wait(this.inlineCallbacks.length > 0 ? 0 : 1, timeoutMs, options.pollMicros ?? 0);
    if (clock) clock.waitMicros = this.waitTimes[0]!;
    let count = total;
    while (count > 0) {
      this.onCompletions(count);
      if (this.closed || count < COMPLETIONS_PER_BATCH) break;
      count = this.ring.reap();
      total += count;
    }
    total += this.runInlineCompletions();
    for (let round = 0; round < INLINE_ROUNDS && !this.closed; round++) {
      if (queued === 'submit' && this.unsubmittedCount > 0) {
        this.submitQueued();
      } else if (this.inlineCallbacks.length === 0) {
        break;
      }
      total += this.runInlineCompletions();
    }
    return total;
  }

  /** Caller-driven rings only: hand the kernel what is queued now, without waiting. */
  submitQueued(): void {
    if (!this.callerDriven) throw new Error('submitQueued: this ring is driven by the event loop');
    if (this.closed || this.unsubmittedCount === 0) return;
    this.unsubmittedCount = 0;
    this.ring.submit();
  }

  /**
   * How many times waitAndDispatch() was called (on a ring the event loop drives: how many times
   * it flushed): the callbacks one wait runs share a number, so what holds for a whole batch of
   * requests (a file's size) can be looked up once for it.
   */
  get waitCount(): number {
    return this.waits;
  }

  /** Whether this ring is driven by waitAndDispatch() (a queue thread's) rather than the event loop. */
  get isCallerDriven(): boolean {
    return this.callerDriven;
  }

  /**
   * A request this thread did itself, synchronously (a copy to or from a memory-backed file,
   * which io_uring would hand to a worker thread: one more wakeup per I/O). Its callback runs as
   * a completion's would, never from inside the call that issued it: from the next
   * waitAndDispatch() on a caller-driven ring, from the next flush on an event-loop ring.
   */
  completeInline(done: IoCallback, result: IoResult): void {
    if (this.closed) throw new Error('IoRing is closed');
    this.inlineCallbacks.push(done);
    this.inlineResults.push(result);
    this.scheduleFlush();
  }

  /**
   * Run the inline completions queued so far (not those their callbacks queue: the next call
   * does). They are run in place and then shifted out, not spliced into new arrays: this runs
   * once a wait, and the request path allocates nothing it can avoid.
   */
  private runInlineCompletions(): number {
    const callbacks = this.inlineCallbacks;
    const results = this.inlineResults;
    const count = callbacks.length;
    if (count === 0) return 0;
    let firstError: unknown;
    for (let i = 0; i < count; i++) {
      try {
        callbacks[i]!(results[i]!);
      } catch (error) {
        firstError ??= error;
      }
    }
    // What the callbacks queued sits after `count`: move it to the front for the next call.
    callbacks.copyWithin(0, count);
    callbacks.length -= count;
    results.copyWithin(0, count);
    results.length -= count;
    if (firstError !== undefined) throw firstError;
    return count;
  }

  /** Requests submitted or queued and not yet completed. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Reads and writes of memory that never moves (allocPageAligned's: ublk tag buffers, page
   * pools) are staged, not a call into the addon each, so a request served from a disk crosses into
   * the addon once (the wait that delivers it), as one served from memory does. Other buffers go
   * through a call, which finds their bytes.
   */
  readCb(fd: number, buf: Uint8Array, fileByteOffset: number, done: IoCallback): IoToken {
    const token = this.nextToken();
    const address = stableAddressOf(buf);
    if (address === undefined) this.ring.prepRead(fd, buf, fileByteOffset, token);
    else this.stage(StagedSqeKind.Read, fd, address, buf.length, fileByteOffset, 0, 0, token);
    return this.issued(token, done, buf);
  }

  read(fd: number, buf: Uint8Array, fileByteOffset: number): Promise<IoResult> {
    return new Promise((resolve) => this.readCb(fd, buf, fileByteOffset, resolve));
  }

  /** Staged, as readCb says, when `buf` lies in memory that never moves. */
  writeCb(fd: number, buf: Uint8Array, fileByteOffset: number, rwFlags: number, done: IoCallback): IoToken {
    const token = this.nextToken();
    const address = stableAddressOf(buf);
    if (address === undefined) this.ring.prepWrite(fd, buf, fileByteOffset, rwFlags, token);
    else this.stage(StagedSqeKind.Write, fd, address, buf.length, fileByteOffset, rwFlags, 0, token);
    return this.issued(token, done, buf);
  }

  write(fd: number, buf: Uint8Array, fileByteOffset: number, rwFlags = 0): Promise<IoResult> {
    return new Promise((resolve) => this.writeCb(fd, buf, fileByteOffset, rwFlags, resolve));
  }

  readvCb(fd: number, bufs: Uint8Array[], fileByteOffset: number, done: IoCallback): IoToken {
    const token = this.nextToken();
    this.ring.prepReadv(fd, bufs, fileByteOffset, token);
    return this.issued(token, done, bufs);
  }

  readv(fd: number, bufs: Uint8Array[], fileByteOffset: number): Promise<IoResult> {
    return new Promise((resolve) => this.readvCb(fd, bufs, fileByteOffset, resolve));
  }

  writevCb(fd: number, bufs: Uint8Array[], fileByteOffset: number, rwFlags: number, done: IoCallback): IoToken {
    const token = this.nextToken();
    this.ring.prepWritev(fd, bufs, fileByteOffset, rwFlags, token);
    return this.issued(token, done, bufs);
  }

  writev(fd: number, bufs: Uint8Array[], fileByteOffset: number, rwFlags = 0): Promise<IoResult> {
    return new Promise((resolve) => this.writevCb(fd, bufs, fileByteOffset, rwFlags, resolve));
  }

  /** fsync, or fdatasync when `datasync`. */
  fsyncCb(fd: number, datasync: boolean, done: IoCallback): IoToken {
    const token = this.nextToken();
    this.ring.prepFsync(fd, datasync, token);
    return this.issued(token, done, undefined);
  }

  fsync(fd: number, datasync: boolean): Promise<IoResult> {
    return new Promise((resolve) => this.fsyncCb(fd, datasync, resolve));
  }

  /** fallocate(2); `mode` takes FALLOC_FL_* bits. */
  fallocateCb(fd: number, mode: number, byteOffset: number, byteLength: number, done: IoCallback): IoToken {
    const token = this.nextToken();
    this.ring.prepFallocate(fd, mode, byteOffset, byteLength, token);
    return this.issued(token, done, undefined);
  }

  fallocate(fd: number, mode: number, byteOffset: number, byteLength: number): Promise<IoResult> {
    return new Promise((resolve) => this.fallocateCb(fd, mode, byteOffset, byteLength, resolve));
  }

  /**
   * IORING_OP_URING_CMD. `payload` is copied into the SQE at once; `keepAlive` is held until
   * completion (the buffer a payload's address field points at).
   */
  uringCmdCb(fd: number, cmdOp: number, payload: Uint8Array, keepAlive: unknown, done: IoCallback): IoToken {
    const token = this.nextToken();
    this.ring.prepUringCmd(fd, cmdOp, payload, token);
    return this.issued(token, done, keepAlive);
  }

  uringCmd(fd: number, cmdOp: number, payload: Uint8Array, keepAlive?: unknown): Promise<IoResult> {
    return new Promise((resolve) => this.uringCmdCb(fd, cmdOp, payload, keepAlive, resolve));
  }

  /**
   * A ublk I/O command (FETCH_REQ, COMMIT_AND_FETCH_REQ). The buffer at `bufAddress` is the
   * caller's to keep alive: it outlives any one command.
   *
   * Every request ends with one of these, so it is not a call into the addon: the command is
   * written into a shared array the addon prepares from on the next submit or wait.
   */
  ublkIoCmdCb(
    fd: number,
    cmdOp: number,
    queueId: number,
    tag: number,
    result: IoResult,
    bufAddress: number,
    done: IoCallback,
  ): IoToken {
    const token = this.nextToken();
    this.stage(StagedSqeKind.UblkIoCmd, fd, cmdOp, queueId, tag, result, bufAddress, token);
    return this.issued(token, done, undefined);
  }

  ublkIoCmd(fd: number, cmdOp: number, queueId: number, tag: number, result: IoResult, bufAddress: number): Promise<IoResult> {
    return new Promise((resolve) => this.ublkIoCmdCb(fd, cmdOp, queueId, tag, result, bufAddress, resolve));
  }

  /**
   * Discard [byteOffset, byteOffset + byteLength) of a block device opened for writing, without
   * blocking the thread as ioctl(BLKDISCARD) would (Linux 6.12+; older kernels answer -EINVAL or
   * -EOPNOTSUPP). Both must be multiples of the device's logical block size. Result: 0 or -errno.
   */
  blockDiscardCb(fd: number, byteOffset: number, byteLength: number, done: IoCallback): IoToken {
    checkByteRange('blockDiscard', byteOffset, byteLength);
    const token = this.nextToken();
    this.ring.prepBlockDiscard(fd, byteOffset, byteLength, token);
    return this.issued(token, done, undefined);
  }

  blockDiscard(fd: number, byteOffset: number, byteLength: number): Promise<IoResult> {
    return new Promise((resolve) => this.blockDiscardCb(fd, byteOffset, byteLength, resolve));
  }

  /**
   * Ask the kernel to cancel request `target`. The result is the cancel's own: 0 (cancelled;
   * the target completes with -ECANCELED), -ENOENT (not found or already done), -EALREADY
   * (running; it may still complete normally).
   */
  cancelCb(target: IoToken, done: IoCallback): IoToken {
    const token = this.nextToken();
    this.ring.prepCancel(target, token);
    return this.issued(token, done, undefined);
  }

  cancel(target: IoToken): Promise<IoResult> {
    return new Promise((resolve) => this.cancelCb(target, resolve));
  }

  /**
   * From now on the kernel keeps this ring until the process exits, whatever closes it here
   * (close(), or the addon's finalizer when a worker's environment goes). Every ring that carries
   * ublk I/O commands needs it. Linux 6.12 cancels a queue's commands when its ring is released,
   * and a request that reaches the queue at that moment is handed to the task work of the thread
   * that submitted them: if that thread is still running, it delivers the request after the
   * cancel aborted the queue's others, so nothing ever ends it, the device never quiesces and no
   * later daemon can take it over (seen as the mirror handover that stayed LIVE). Released at
   * exit instead, when every thread is exiting, the kernel requeues such a request.
   */
  keepUntilExit(): void {
    this.ring.keepUntilExit();
  }

  /**
   * Event-loop rings: after a wakeup that ran a few completions (at most POLL_MAX_BATCH, the
   * queue threads' rule), poll up to `micros` for the next
   * before the thread goes back to sleep in the event loop (0: never). A thread woken for each
   * request of a client at QD 1 pays a VM's wakeup per request, which under TCG costs more than
   * serving it; caller-driven rings poll in waitAndDispatch() instead (WaitOptions.pollMicros).
   * The loop's timers and other handles wait at most `micros` behind a poll.
   */
  pollAfterWakeups(micros: number): void {
    if (this.callerDriven) throw new Error('pollAfterWakeups: this ring is driven by its caller, which polls in waitAndDispatch');
    if (!Number.isInteger(micros) || micros < 0) throw new RangeError(`poll budget must be 0 or more whole microseconds, not ${micros}`);
    if (!this.closed) this.ring.pollAfterWakeups(micros, POLL_MAX_BATCH);
  }

  /** Tear the ring down; every request still pending completes with -ECANCELED. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ring.close();
    // Staged commands never reached the kernel; their callbacks are cancelled below with the rest.
    this.stagedSqes[0] = 0;
    const errors: unknown[] = [];
    // Inline requests were done: their callbacks get their results, not a cancel.
    try {
      this.runInlineCompletions();
    } catch (error) {
      errors.push(error);
    }
    for (let slot = 0; slot < this.callbacks.length; slot++) {
      const done = this.callbacks[slot];
      if (done === undefined) continue;
      this.release(slot);
      try {
        done(-ECANCELED);
      } catch (error) {
        errors.push(error);
      }
    }
    if (errors.length > 0) throw errors[0];
  }

  /** Write one record for the addon to prepare on the next submit (NativeRing.stageSqes, StagedSqeKind). */
  private stage(kind: StagedSqeKind, fd: number, a: number, b: number, c: number, d: number, e: number, token: IoToken): void {
    const staged = this.stagedSqes;
    if (staged[0] === STAGED_SQES) {
      this.ring.prepStaged();
      // Still full: the SQ is, too, and the kernel takes no more for now (the caller retries).
      if (staged[0] === STAGED_SQES) throw new Error('io_uring_get_sqe: Device or resource busy');
    }
    const at = 1 + staged[0] * STAGED_SQE_WORDS;
    staged[at] = kind;
    staged[at + 1] = fd;
    staged[at + 2] = a;
    staged[at + 3] = b;
    staged[at + 4] = c;
    staged[at + 5] = d;
    staged[at + 6] = e;
    staged[at + 7] = token;
    staged[0]++;
  }

  /**
   * The token the next request will have: a free slot, not yet taken. The prep gets it before
   * anything is recorded, so a prep that throws leaves nothing to undo.
   */
  private nextToken(): IoToken {
    if (this.closed) throw new Error('IoRing is closed');
    let slot = this.freeSlots[this.freeSlots.length - 1];
    if (slot === undefined) {
      slot = this.callbacks.length;
      if (slot >= SLOT_LIMIT) throw new RangeError(`IoRing: more than ${SLOT_LIMIT} requests in flight`);
      this.callbacks.push(undefined);
      this.inFlightBuffers.push(undefined);
      this.generations.push(0);
      this.freeSlots.push(slot);
    }
    return (this.generations[slot] << SLOT_BITS) | slot;
  }

  /** The prep for `token` (from nextToken) succeeded: take its slot and schedule the submit. */
  private issued(token: IoToken, done: IoCallback, buffers: unknown): IoToken {
    const slot = this.freeSlots.pop()!;
    this.callbacks[slot] = done;
    this.inFlightBuffers[slot] = buffers;
    this.inFlightCount++;
    this.unsubmittedCount++;
    this.scheduleFlush();
    return token;
  }

  private release(slot: number): void {
    this.callbacks[slot] = undefined;
    this.inFlightBuffers[slot] = undefined;
    this.generations[slot] = (this.generations[slot] + 1) & GENERATION_MASK;
    this.freeSlots.push(slot);
    this.inFlightCount--;
  }

  /** Soon (a microtask) while this turn's budget lasts, else on the next turn; `yieldFirst`: next turn. */
  private scheduleFlush(yieldFirst = false): void {
    if (this.flushScheduled || this.callerDriven) return;
    this.flushScheduled = true;
    if (yieldFirst || this.microtaskFlushes >= MICROTASK_FLUSHES_PER_TURN) {
      setImmediate(this.flush);
      return;
    }
    this.microtaskFlushes++;
    queueMicrotask(this.flush);
    if (!this.turnMarkQueued) {
      this.turnMarkQueued = true;
      setImmediate(this.markTurn);
    }
  }

  /** The event loop has turned: a new budget of microtask flushes. */
  private readonly markTurn = (): void => {
    this.turnMarkQueued = false;
    this.microtaskFlushes = 0;
  };

  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.closed) return;
    this.waits++;
    // Much of what we submit completes inside io_uring_enter (page-cache I/O, ublk requests
    // delivered as task work while we were in the kernel), and copies to and from tmpfs were done
    // inline (completeInline): run them here rather than waiting a loop turn for the eventfd.
    // Callbacks that queue more I/O synchronously get it submitted in the next round; promise
    // continuations run after this returns and schedule the next flush.
    //
    // The eventfd stays armed throughout, although each inline completion then also signals it
    // and costs one empty reap on a later turn. Disarming it meanwhile (IORING_CQ_EVENTFD_DISABLED)
    // cannot be made safe from here: the kernel tests that flag after publishing a CQE without a
    // full barrier, so a CQE posted by an io-wq worker (fsync, fallocate) just as we re-arm can
    // be missed by both sides, and only signalling the eventfd ourselves after every flush would
    // cover it, which is the very wakeup disarming saves.
    try {
      for (let round = 0; round < INLINE_ROUNDS; round++) {
        if (this.unsubmittedCount > 0) {
          this.unsubmittedCount = 0;
          this.ring.submit();
        }
        const count = this.ring.reap();
        if (count > 0) this.onCompletions(count);
        if (this.closed) return;
        if (this.runInlineCompletions() === 0 && count === 0) return;
        if (this.closed) return;
      }
    } finally {
      // A throwing callback ends the flush: CQEs left over signal the eventfd again, inline
      // completions left over nobody would, so they get a flush of their own.
      if (!this.closed && this.inlineCallbacks.length > 0) this.scheduleFlush(true);
    }
    // Out of rounds, maybe with completions left in the CQ or on the kernel's overflow list
    // (which signals nobody): take them on the next turn, after timers and other I/O had theirs.
    // (A callback may have queued a microtask flush already: that one counts against the budget.)
    this.scheduleFlush(true);
  };

  private onCompletions(count: number): void {
    let firstError: unknown;
    let failed = false;
    for (let i = 0; i < count; i++) {
      const token = this.completedTokens[i];
      const slot = token & SLOT_MASK;
      const done = this.callbacks[slot];
      if (done === undefined || this.generations[slot] !== token >>> SLOT_BITS) continue;
      this.release(slot);
      // One throwing callback must not strand the rest of the batch; the first error is
      // rethrown afterwards and surfaces as an uncaught exception.
      try {
        done(this.completedResults[i]);
      } catch (error) {
        if (!failed) {
          failed = true;
          firstError = error;
        }
      }
    }
    if (failed) throw firstError;
  }
}

/**
 * The native side converts through int64/uint64: a fraction, a negative or a value past 2^53
 * would reach the kernel as some other range, so refuse it here.
 */
function checkByteRange(what: string, byteOffset: number, byteLength: number): void {
  if (!Number.isSafeInteger(byteOffset) || byteOffset < 0 || !Number.isSafeInteger(byteLength) || byteLength < 0) {
    throw new RangeError(`${what}: byteOffset and byteLength must be non-negative integers (got ${byteOffset}, ${byteLength})`);
  }
}
