import { writeSync, closeSync } from 'node:fs';
import * as path from 'node:path';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';

import { EINVAL, ENODEV, ETIMEDOUT, ErrnoError } from '../base/errno';
import { NO_DATA, IoOp, type Bio, type IoDone } from '../io/bio';
import { adoptSharedMemory, allocPageAligned, copyBytes, native } from '../io/native';
import { FORWARD_BUFFER_LIMITS, IdleBuffers, TRIM_LOOK_MS, type IdleBufferLimits } from './idle-buffers';
import { sharedPunchCounter } from '../io/punch-count';
import { SECTOR_BYTES } from '../base/units';
import { Dispatcher } from '../dm/dispatcher';
import type { DeviceDispatcher, DeviceTable, ForwardedCounts } from '../dm/mapped-device';
import type { ScopeKey } from '../dm/scope';
import type { SuspendOptions } from '../dm/target';
import type { QueueServer, UblkQueueGeometry } from '../ublk/queue';
import { queuePlacementFromEnvironment } from './queue-placement';
import { ANSWER_FIELDS, NO_BUFFER, REQUEST_FIELDS, RecordRing, readRequest, writeAnswer, type ForwardedRequest } from './forward-channel';
import type { FromQueueThread, QueueThreadData, Reply, TablePlan, ToQueueThread } from './queue-thread-protocol';

/**
 * The daemon thread's side of queue threads (daemon/queue-thread.ts): the pool of threads (thread
 * k serves queue k of every device), the QueueServer a device's UblkDevice starts its queues
 * with, and the dispatcher that keeps a device's suspend, resume and table swaps in step across
 * the threads.
 *
 * Which way a device goes is decided per table: a table of stateless targets is copied into each
 * queue thread, which then serves it alone; so is one whose stateful targets offer views
 * (snapshot-origin), whose copies forward only what they cannot serve; any other table stays
 * here, and the queue threads forward all its requests to this thread's dispatcher, through
 * shared memory (forward-channel.ts). The daemon thread's copy of the table still answers
 * `status` and `table`.
 */

/** How the daemon serves queues: on its own event loop, or in queue threads. */
export type QueueLoop = 'main' | 'threads';

/** UBLK_DM_QUEUE_LOOP=main|threads; threads unless told otherwise. */
export function queueLoopFromEnvironment(env: NodeJS.ProcessEnv = process.env): QueueLoop {
  const value = env.UBLK_DM_QUEUE_LOOP;
  if (value === undefined || value === '' || value === 'threads') return 'threads';
  if (value === 'main') return 'main';
  throw new ErrnoError(`UBLK_DM_QUEUE_LOOP must be "main" or "threads", not ${JSON.stringify(value)}`, EINVAL);
}

/**
 * How long a queue thread polls its ring before it sleeps, unless UBLK_DM_POLL_US says otherwise
 * (PollPolicy; 0 never polls). A wakeup costs more than the request it wakes for, and at QD 1 the
 * next request comes one client round trip after the answer: under TCG, 200 us of polling (with
 * a sched_yield per poll, so a client on the same CPU runs first) served 7 of 8 QD 1 cells of two
 * boots' benches 1.1-2.6x faster (2x with the client on another CPU, no faster on the same one);
 * 2-job loads and QD 32 moved 0.63-1.41x, within the noise (the C server's cells, which the
 * setting does not touch, swung 0.69-1.75x between runs). Earlier, 500 us without the yield cost
 * 2-job loads 16-60 %.
 */
export const DEFAULT_POLL_MICROS = 200;

/** UBLK_DM_POLL_US: microseconds a queue thread polls before it sleeps (0: never). */
export function pollMicrosFromEnvironment(env: NodeJS.ProcessEnv = process.env): number {
  const value = env.UBLK_DM_POLL_US;
  if (value === undefined || value === '') return DEFAULT_POLL_MICROS;
  const micros = Number(value);
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(micros)) {
    throw new ErrnoError(`UBLK_DM_POLL_US must be a whole number of microseconds, not ${JSON.stringify(value)}`, EINVAL);
  }
  return micros;
}

const CONTROL_TIMEOUT_MS = 60_000;
/**
 * Records in each forwarding ring of a queue thread: the most requests it has forwarded and not
 * seen answered at once (32 devices at depth 128 on one queue each; more wait on the thread).
 */
const FORWARD_RING_RECORDS = 4096;
const DOORBELL = new Uint8Array(new BigUint64Array([1n]).buffer);

/** A thread waiting in its ring is woken to see it must stop, so that the process can end. */
const livePools = new Set<QueueThreadPool>();
process.once('exit', () => {
  for (const pool of [...livePools]) pool.close();
  earlyThread?.stop();
});

/**
 * Queue thread 0, started before the daemon needs it (startQueueThreadEarly): it loads its
 * modules while the daemon thread loads its own. Each takes seconds on a slow CPU (the TCG
 * guest), and a daemon that restarts over live devices leaves their I/O waiting for both.
 * The first pool takes it as its thread 0.
 */
let earlyThread: QueueThread | undefined;

/** Start queue thread 0 now, if this daemon will serve its queues from threads. */
export function startQueueThreadEarly(env: NodeJS.ProcessEnv = process.env): void {
  if (earlyThread !== undefined || queueLoopFromEnvironment(env) !== 'threads') return;
  earlyThread = new QueueThread();
}

/** The pool, one per scope (daemon), closed with it. */
export const QUEUE_THREADS: ScopeKey<QueueThreadPool> = {
  name: 'queue-threads',
  create: (scope) => new QueueThreadPool(scope.warn),
  dispose: (pool) => pool.close(),
};

export class QueueThreadPool {
  private readonly threads: QueueThread[] = [];
  private readonly servers = new Map<number, RemoteQueues>();
  private closed = false;

  constructor(readonly warn: (message: string) => void) {
    livePools.add(this);
  }

  /** The thread serving queue `queueId` of every device, started on first use. */
  thread(queueId: number): QueueThread {
    if (this.closed) throw new Error('queue threads are closed');
    while (this.threads.length <= queueId) {
      const thread = this.threads.length === 0 ? earlyThread ?? new QueueThread() : new QueueThread();
      if (thread === earlyThread) earlyThread = undefined;
      thread.adopt(this);
      this.threads.push(thread);
    }
    return this.threads[queueId]!;
  }

  register(devId: number, server: RemoteQueues): void {
    this.servers.set(devId, server);
  }

  unregister(devId: number, server: RemoteQueues): void {
    if (this.servers.get(devId) === server) this.servers.delete(devId);
  }

  /** @internal A queue thread's message about a device. */
  deliver(thread: QueueThread, message: Exclude<FromQueueThread, Reply | { kind: 'warn' } | { kind: 'buffer' }>): void {
    this.servers.get(message.devId)?.receive(thread, message);
  }

  /** @internal A request a queue thread forwarded: every one is answered, for a device gone too. */
  serveForwarded(thread: QueueThread, request: ForwardedRequest, bytes: Uint8Array | undefined): void {
    const server = this.servers.get(request.devId);
    if (server === undefined) thread.answer(request.devId, request.id, -ENODEV);
    else server.serveForwarded(thread, request, bytes);
  }

  /** Stop every thread (devices still attached stop being served). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    livePools.delete(this);
    for (const thread of this.threads.splice(0)) thread.stop();
  }
}

/** One queue thread, as the daemon thread talks to it. */
export class QueueThread {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly doorbellFd: number;
  private readonly stopFlag = new Int32Array(new SharedArrayBuffer(4));
  private nextSeq = 0;
  private readonly replies = new Map<number, { readonly resolve: (reply: Reply) => void; readonly reject: (error: Error) => void }>();
  private exited = false;
  /** The pool it serves; none yet for a thread started early (it has no device before that). */
  private pool: QueueThreadPool | undefined;
  /** Forwarded requests and their answers (forward-channel.ts), and the shared buffers they name by id. */
  private readonly requests = RecordRing.create(FORWARD_RING_RECORDS, REQUEST_FIELDS);
  private readonly answers = RecordRing.create(FORWARD_RING_RECORDS, ANSWER_FIELDS);
  private readonly sharedBuffers = new Map<number, Uint8Array>();
  private doorbellDue = false;

  constructor() {
    const { port1, port2 } = new MessageChannel();
    this.doorbellFd = native().createEventFd();
    this.port = port1;
    const data: QueueThreadData = {
      doorbellFd: this.doorbellFd,
      port: port2,
      stopFlag: this.stopFlag,
      pollMicros: pollMicrosFromEnvironment(),
      placement: queuePlacementFromEnvironment(),
      punchCounter: sharedPunchCounter(),
      requestRing: this.requests.share,
      answerRing: this.answers.share,
    };
    this.worker = new Worker(path.join(__dirname, 'queue-thread.js'), { workerData: data, transferList: [port2] });
    // Neither keeps the daemon alive: it lives as long as its socket, and exits with its devices.
    this.worker.unref();
    this.port.unref();
    this.port.on('message', (message: FromQueueThread) => this.receive(message));
    this.worker.on('error', (error) => this.warn(`queue thread failed: ${error.stack ?? String(error)}`));
    this.worker.on('exit', () => this.onExit());
    // A wait that keeps no process alive, like the port.
    this.onRequests();
  }

  adopt(pool: QueueThreadPool): void {
    this.pool = pool;
  }

  private warn(message: string): void {
    if (this.pool !== undefined) this.pool.warn(message);
    else process.stderr.write(`ublk-dm: ${message}\n`);
  }

  /** Post and ring the doorbell: the thread is waiting in its ring, not on the port. */
  post(message: ToQueueThread, transfer?: ArrayBuffer[]): void {
    if (this.exited) return;
    this.port.postMessage(message, transfer);
    writeSync(this.doorbellFd, DOORBELL);
  }

  /**
   * Answer a forwarded request (a read's bytes are in its shared buffer already). The answers of
   * one callback run (a reap of the ring: often several) share one ring of the doorbell, after it.
   */
  answer(devId: number, id: number, result: number): void {
    if (this.exited) return;
    const at = this.answers.slot();
    // The thread publishes no more requests than this ring holds, so it is never full here.
    if (at < 0) throw new Error('queue thread: more answers than requests');
    writeAnswer(this.answers.records, at, devId, id, result);
    this.answers.publish();
    if (this.doorbellDue) return;
    this.doorbellDue = true;
    queueMicrotask(this.ringDoorbell);
  }

  private readonly ringDoorbell = (): void => {
    this.doorbellDue = false;
    if (!this.exited) writeSync(this.doorbellFd, DOORBELL);
  };

  /** Serve what the thread forwarded, then sleep until it rings again. */
  private readonly onRequests = (): void => {
    for (;;) {
      if (this.exited) return;
      this.requests.drain(this.takeRequest);
      const rung = this.requests.sleep();
      if (rung !== undefined) {
        void rung.then(this.onRequests);
        return;
      }
    }
  };

  private readonly takeRequest = (records: Float64Array, at: number): void => {
    const request = readRequest(records, at);
    let bytes: Uint8Array | undefined;
    if (request.bufferId !== NO_BUFFER) {
      bytes = this.sharedBuffers.get(request.bufferId);
      if (bytes === undefined) {
        // Announced on the port before the record was written: take what the port holds.
        for (let received = receiveMessageOnPort(this.port); received !== undefined; received = receiveMessageOnPort(this.port)) {
          this.receive(received.message as FromQueueThread);
        }
        bytes = this.sharedBuffers.get(request.bufferId);
      }
      if (bytes === undefined) {
        this.answer(request.devId, request.id, -ENODEV);
        this.warn(`queue thread forwarded a request with an unknown buffer ${request.bufferId}`);
        return;
      }
      const byteLength = request.sectorCount * SECTOR_BYTES;
      if (request.byteOffset !== 0 || byteLength !== bytes.byteLength) bytes = bytes.subarray(request.byteOffset, request.byteOffset + byteLength);
    }
    if (this.pool === undefined) this.answer(request.devId, request.id, -ENODEV);
    else this.pool.serveForwarded(this, request, bytes);
  };

  /** A control step, answered with whether the queue now serves from a local table copy. */
  request(message: DistributiveOmit<Extract<ToQueueThread, { seq: number }>, 'seq'>): Promise<boolean> {
    const seq = this.nextSeq++;
    return new Promise<boolean>((resolve, reject) => {
      if (this.exited) {
        reject(new Error('the queue thread has exited'));
        return;
      }
      const timer = setTimeout(() => {
        this.replies.delete(seq);
        reject(new ErrnoError(`queue thread did not answer ${message.kind} in ${CONTROL_TIMEOUT_MS / 1000} s`, ETIMEDOUT));
      }, CONTROL_TIMEOUT_MS);
      this.replies.set(seq, {
        resolve: (reply) => {
          clearTimeout(timer);
          if (reply.error !== undefined) reject(new Error(reply.error));
          else resolve(reply.local ?? false);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.post({ ...message, seq } as ToQueueThread);
    });
  }

  stop(): void {
    Atomics.store(this.stopFlag, 0, 1);
    this.post({ kind: 'exit' });
  }

  private receive(message: FromQueueThread): void {
    switch (message.kind) {
      case 'reply': {
        const waiter = this.replies.get(message.seq);
        this.replies.delete(message.seq);
        waiter?.resolve(message);
        return;
      }
      case 'warn':
        this.warn(message.message);
        return;
      case 'buffer':
        if (message.share === undefined) {
          this.sharedBuffers.delete(message.id);
        } else {
          adoptSharedMemory(message.share);
          this.sharedBuffers.set(message.id, new Uint8Array(message.share));
        }
        return;
      default:
        this.pool?.deliver(this, message);
    }
  }

  private onExit(): void {
    this.exited = true;
    for (const waiter of this.replies.values()) waiter.reject(new Error('the queue thread has exited'));
    this.replies.clear();
    try {
      closeSync(this.doorbellFd);
    } catch {
      // already closed
    }
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/**
 * A table queue threads serve wholly from their own copies, sending the daemon thread no request
 * but what failed: every target 'any-queue', or owner-thread with a view that serves all its I/O
 * (Target.queueViewServesAll).
 */
export function isServedByQueueThreads(table: DeviceTable): boolean {
  return table.segments.every(
    ({ target }) => target.threadModel === 'any-queue' || (target.queueViewServesAll === true && target.queueViewShare?.() !== undefined),
  );
}

/**
 * What a queue thread can build its copy of a table from: every target 'any-queue', or an
 * owner-thread one that offers a view (Target.queueViewShare), whose memory goes with the plan.
 * The copy is built from the table's own `table` text, with the identity of each device. Null:
 * the thread forwards every request.
 */
export function tablePlan(table: DeviceTable): TablePlan | null {
  const views: Array<{ readonly startSector: number; readonly share: SharedArrayBuffer }> = [];
  for (const segment of table.segments) {
    if (segment.target.threadModel === 'any-queue') continue;
    const share = segment.target.queueViewShare?.();
    if (share === undefined) return null;
    views.push({ startSector: segment.startSector, share });
  }
  const text = table.segments
    .map((segment) => `${segment.startSector} ${segment.lengthSectors} ${segment.target.type} ${segment.target.status('table')}`)
    .join('\n');
  return { text, devices: table.devices().map((device) => ({ spec: device.tableName, key: device.key })), ...(views.length > 0 ? { views } : {}) };
}

/**
 * A device's dispatcher when its queues are served by queue threads. The daemon thread's
 * Dispatcher keeps dm's suspend semantics and serves forwarded requests; the queue threads'
 * copies are suspended after the presuspend hooks, while forwarded I/O can still drain through
 * here, and resumed (swapping in a copy of the new table) after this thread's resume hooks ran.
 */
export class ThreadedDispatcher implements DeviceDispatcher {
  readonly main: Dispatcher<DeviceTable>;
  private queues: RemoteQueues | undefined;
  private swapped = false;

  constructor(
    table: DeviceTable,
    private readonly pool: QueueThreadPool,
  ) {
    this.main = new Dispatcher<DeviceTable>(table, { suspended: true });
  }

  get suspended(): boolean {
    return this.main.suspended;
  }

  /** The QueueServer the device's UblkDevice starts its queues with. */
  queueServer(sizeSectors: number): QueueServer {
    this.queues = new RemoteQueues(this.pool, sizeSectors, this);
    return this.queues;
  }

  /** The plan queue threads should serve the live table with (null: forward all of it). */
  livePlan(): TablePlan | null {
    return tablePlan(this.main.table);
  }

  submit(bio: Bio, done: IoDone): void {
    this.main.submit(bio, done);
  }

  suspend(options: SuspendOptions = { noflush: false }): Promise<void> {
    const queues = this.queues;
    return this.main.suspend(options, queues === undefined ? undefined : () => queues.suspend(options));
  }

  async resume(): Promise<void> {
    await this.main.resume();
    const swap = this.swapped ? this.livePlan() : undefined;
    this.swapped = false;
    await this.queues?.resume(swap);
  }

  swapTable(next: DeviceTable): DeviceTable {
    const previous = this.main.swapTable(next);
    this.swapped = true;
    return previous;
  }

  get forwarded(): ForwardedCounts | undefined {
    return this.queues?.forwarded;
  }
}

/** A device's queues, each served by its queue thread. */
class RemoteQueues implements QueueServer {
  private devId = -1;
  /** After close() the threads serve the device no more: suspend and resume have nothing to do there. */
  private closed = false;
  private threads: QueueThread[] = [];
  private readonly retiredQueues = new Set<number>();
  /** Page-aligned buffers of the requests its queue threads forward here. */
  private readonly buffers = new ForwardBuffers();
  private onRetired: (() => void) | undefined;
  private retireError: string | undefined;
  /** Requests served here for the threads, and those of them whose bytes were copied (ForwardedCounts). */
  readonly forwarded = { requests: 0, copied: 0 };

  constructor(
    private readonly pool: QueueThreadPool,
    private readonly sizeSectors: number,
    private readonly dispatcher: ThreadedDispatcher,
  ) {}

  async start(geometry: UblkQueueGeometry, submitterCpus: ReadonlyArray<readonly number[]>): Promise<void> {
    this.devId = geometry.devId;
    this.pool.register(geometry.devId, this);
    const table = this.dispatcher.livePlan();
    this.threads = Array.from({ length: geometry.queues }, (_, queueId) => this.pool.thread(queueId));
    await Promise.all(
      this.threads.map((thread, queueId) =>
        thread.request({
          kind: 'attach',
          devId: geometry.devId,
          queueId,
          charFd: geometry.charFd,
          queues: geometry.queues,
          depth: geometry.depth,
          maxIoBytes: geometry.maxIoBytes,
          sizeSectors: this.sizeSectors,
          table,
          submitterCpus: submitterCpus[queueId] ?? [],
          needGetData: geometry.needGetData ?? false,
        }),
      ),
    );
  }

  /** Suspend the threads' local copies; if one fails, those already suspended resume. */
  async suspend(options: SuspendOptions): Promise<void> {
    if (this.closed) return;
    const outcomes = await Promise.allSettled(this.threads.map((thread) => thread.request({ kind: 'suspend', devId: this.devId, noflush: options.noflush })));
    const failed = outcomes.find((outcome) => outcome.status === 'rejected');
    if (failed === undefined) return;
    await this.resume(undefined).catch(() => undefined);
    throw (failed as PromiseRejectedResult).reason;
  }

  async resume(swap: TablePlan | null | undefined): Promise<void> {
    if (this.closed) return;
    await Promise.all(this.threads.map((thread) => thread.request({ kind: 'resume', devId: this.devId, ...(swap !== undefined ? { swap } : {}) })));
  }

  retired(timeoutMs: number): Promise<void> {
    if (this.retiredQueues.size === this.threads.length) return this.retiredResult();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.onRetired = undefined;
        reject(new ErrnoError(`ublk device ${this.devId}: ${this.threads.length - this.retiredQueues.size} queues not aborted after stop`, ETIMEDOUT));
      }, timeoutMs);
      this.onRetired = () => {
        clearTimeout(timer);
        this.retiredResult().then(resolve, reject);
      };
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.pool.unregister(this.devId, this);
  }

  /** @internal A queue thread's message about this device. */
  receive(thread: QueueThread, message: Exclude<FromQueueThread, Reply | { kind: 'warn' } | { kind: 'buffer' }>): void {
    switch (message.kind) {
      case 'retired':
        this.retiredQueues.add(message.queueId);
        if (message.error !== undefined) this.retireError ??= message.error;
        if (this.retiredQueues.size === this.threads.length) this.onRetired?.();
        return;
      case 'event':
        // Stateless targets raise none; a table that does stays on this thread.
        return;
    }
  }

  private retiredResult(): Promise<void> {
    return this.retireError === undefined ? Promise.resolve() : Promise.reject(new Error(this.retireError));
  }

  /**
   * @internal A request a queue thread forwarded: run it through the dispatcher here. Its bytes
   * are served where they are when they are the ublk tag's own (in the queue's shared tag
   * memory, aligned as a tag's buffer for backing I/O that goes O_DIRECT); others are copied from
   * and to `shared` through a page-aligned buffer.
   */
  serveForwarded(thread: QueueThread, request: ForwardedRequest, shared: Uint8Array | undefined): void {
    this.forwarded.requests++;
    if (shared !== undefined && request.inTagMemory) {
      const bio: Bio = { op: request.op, sector: request.sector, sectorCount: request.sectorCount, fua: request.fua, noUnmap: request.noUnmap, data: shared };
      this.dispatcher.submit(bio, (result) => thread.answer(this.devId, request.id, result));
      return;
    }
    if (shared !== undefined) this.forwarded.copied++;
    const data = shared !== undefined ? this.buffers.take(request.sectorCount * SECTOR_BYTES) : NO_DATA;
    if (shared !== undefined && request.op === IoOp.Write) copyBytes(data, shared.subarray(0, data.byteLength));
    const bio: Bio = { op: request.op, sector: request.sector, sectorCount: request.sectorCount, fua: request.fua, noUnmap: request.noUnmap, data };
    this.dispatcher.submit(bio, (result) => {
      if (shared !== undefined) {
        if (request.op === IoOp.Read && result > 0) copyBytes(shared, data.subarray(0, Math.min(result, shared.byteLength)));
        // Done with it, as a ublk tag's buffer is once its request is answered.
        this.buffers.give(data);
      }
      thread.answer(this.devId, request.id, result);
    });
  }
}

/**
 * Page-aligned buffers for forwarded requests (so that the targets' backing I/O can go O_DIRECT
 * as it does for requests served here), kept for the next request of the same size
 * (idle-buffers.ts says how many): a fresh one each time is memory from the addon, zeroed, faulted
 * in and finalized by the GC. Once idle, `keptBytes` stay: by default enough for every tag of a
 * 4-queue, depth-128 device at 4 KiB.
 */
export class ForwardBuffers {
  private readonly idle: IdleBuffers<Uint8Array>;
  private trimTimer: NodeJS.Timeout | undefined;

  constructor(limits: IdleBufferLimits = { keptBytes: 2 * 1024 * 1024, busyKeptBytes: FORWARD_BUFFER_LIMITS.busyKeptBytes }) {
    this.idle = new IdleBuffers(limits);
  }

  take(byteLength: number): Uint8Array {
    return this.idle.take(byteLength) ?? new Uint8Array(allocPageAligned(byteLength));
  }

  give(buffer: Uint8Array): void {
    // One not kept is dropped: the GC frees it.
    if (!this.idle.give(buffer, buffer.byteLength) || !this.idle.aboveIdleLimit || this.trimTimer !== undefined) return;
    this.trimTimer = setTimeout(this.trim, TRIM_LOOK_MS).unref();
  }

  private readonly trim = (): void => {
    this.trimTimer = undefined;
    this.idle.trimIfIdle(() => {});
    if (this.idle.aboveIdleLimit) this.trimTimer = setTimeout(this.trim, TRIM_LOOK_MS).unref();
  };
}
