import { receiveMessageOnPort, workerData } from 'node:worker_threads';

import { ENODEV, type IoResult } from '../base/errno';
import { IoOp, carriesData, type Bio } from '../io/bio';
import { openFileDevice } from '../io/file-device';
import { copyBytes, native } from '../io/native';
import { adoptPunchCounter } from '../io/punch-count';
import { WaitPolicies } from '../io/poll-policy';
import { IoRing, type WaitOptions } from '../io/ring';
import { Dispatcher } from '../dm/dispatcher';
import { DaemonScope } from '../dm/scope';
import { Table, loadTable } from '../dm/table';
import { ALL_CAPABILITIES, type MapDone, type Target, type DeviceHandle } from '../dm/target';
import { queueThreadTargetTypes } from '../targets';
import { UblkQueue } from '../ublk/queue';
import { queueThreadCpus, sameCpus } from './queue-placement';
import { RingTurns } from './ring-turns';
import { TRIM_LOOK_MS } from './idle-buffers';
import { ANSWER_FIELDS, NO_BUFFER, REQUEST_FIELDS, RecordRing, SharedBufferPool, writeRequest, type ForwardedRequest, type SharedBuffer } from './forward-channel';
import type { AttachMessage, FromQueueThread, QueueThreadData, TablePlan, ToQueueThread } from './queue-thread-protocol';

/**
 * A queue thread (a worker_thread): serves queue k of every device the daemon hands it, on its
 * own io_uring, and waits in io_uring_enter rather than in libuv, as a C ublk server's queue
 * thread does: a request goes from its CQE to the target and its COMMIT_AND_FETCH goes back in
 * the same io_uring_enter as the backing I/O it caused, with no eventfd, epoll or callback
 * into JS from the loop in between.
 *
 * A device whose table is stateless ('any-queue' targets: linear, zero, error, null) is served
 * from a copy of the table built here; so is one whose owner-thread targets offer a view
 * (snapshot-origin), which forwards only what the view cannot serve. Any other is forwarded to
 * the daemon thread, where the one instance of its targets lives (design.md: 'owner-thread').
 */

const RING_ENTRIES = 512;
/** While a control step awaits something outside the ring (opening files), wait at most this long in it. */
const ASYNC_POLL_MS = 1;
/**
 * An idle wait still ends now and then: a thread blocked in the kernel cannot be terminated, so
 * this bounds how long a dying process waits for it even if its doorbell is never rung.
 */
const IDLE_WAIT_MS = 1000;
const ONE_DOORBELL_READ_BYTES = 8;

const { doorbellFd, port, stopFlag, pollMicros, placement, punchCounter, requestRing, answerRing } = workerData as QueueThreadData;
// Before any file is opened: a punch here must reach the daemon thread's devices and the other queue threads'.
adoptPunchCounter(punchCounter);
/** The CPUs this thread was allowed at start (the daemon's own affinity), ascending: placement stays within them. */
const startCpus = native().threadCpus();
/** The CPUs it is allowed now. */
let placedCpus = startCpus;
const waitPolicies = new WaitPolicies(pollMicros);
/** The policy of the wait under way: picked before it, told how it went after it. */
let waitPolicy = waitPolicies.client;
/** The ways a wait in a turn goes (the policy picks): made once, not per wait. */
const sleepAtOnce: WaitOptions = { queued: 'hold' };
const pollFirst: WaitOptions = { queued: 'hold', pollMicros };
const pollLongFirst: WaitOptions = { queued: 'hold', pollMicros: waitPolicies.loneBacking.budgetMicros };
const ring = IoRing.create({ entries: RING_ENTRIES, drivenBy: 'caller' });
const scope = new DaemonScope({ targetTypes: queueThreadTargetTypes, ring, warn: (message) => send({ kind: 'warn', message }) });
const doorbellBuffer = new Uint8Array(ONE_DOORBELL_READ_BYTES);
/** Control steps in progress that wait on libuv (file opens and closes): the loop must let it run. */
let asyncSteps = 0;
let exiting = false;

function send(message: FromQueueThread, transfer?: ArrayBuffer[]): void {
  port.postMessage(message, transfer);
}

/**
 * Requests forwarded to the daemon thread and not answered yet. While there are any, the thread
 * sleeps rather than polls: the answer needs the daemon thread to run, and on a VM with few
 * CPUs a polling thread takes the CPU it would run on.
 */
let forwardedInFlight = 0;

/** Forwarded requests go out through shared memory (forward-channel.ts), answers come back so. */
const requests = new RecordRing(requestRing, REQUEST_FIELDS);
const answers = new RecordRing(answerRing, ANSWER_FIELDS);
const sharedBuffers = new SharedBufferPool((event) => send(event));
/**
 * Requests published and not answered (every one is, also for a device gone meanwhile). No more
 * go out than the answer ring holds, so the daemon thread always has room for an answer; the
 * rest wait in `overflow`.
 */
let publishedInFlight = 0;
const overflow: ForwardedRequest[] = [];
/** Records published since the daemon thread was last rung: it is rung once a turn, before the wait. */
let unrung = false;

function publishForwarded(request: ForwardedRequest): boolean {
  if (publishedInFlight >= answers.capacity) return false;
  const at = requests.slot();
  if (at < 0) return false;
  writeRequest(requests.records, at, request);
  requests.publish();
  publishedInFlight++;
  unrung = true;
  return true;
}

/** When shared buffers were last offered to trim (Date.now(): cheap, and any jump just looks early or late once). */
let trimLookedAtMs = 0;

/** About once a second while nothing is forwarded: a burst of large requests gives its memory back. */
function trimIdleBuffers(): void {
  if (forwardedInFlight > 0 || !sharedBuffers.aboveIdleLimit) return;
  const now = Date.now();
  if (Math.abs(now - trimLookedAtMs) < TRIM_LOOK_MS) return;
  trimLookedAtMs = now;
  sharedBuffers.trimIfIdle();
}

/** Before each wait (RingTurns' beforeWait): what waited for room, then one wakeup of the daemon thread. */
function sendForwarded(): void {
  trimIdleBuffers();
  while (overflow.length > 0 && publishForwarded(overflow[0]!)) overflow.shift();
  if (!unrung) return;
  unrung = false;
  requests.ring();
}

interface WaitingRequest {
  readonly bio: Bio;
  readonly done: MapDone;
  /** The pool's buffer its bytes were copied to (not in the tag memory), else undefined. */
  readonly buffer: SharedBuffer | undefined;
}

/**
 * Forwards every request to the daemon thread (or, through forwardAt, what a view of an
 * owner-thread target cannot serve); its answer arrives in the answer ring.
 */
class ForwardTarget implements Target {
  readonly type = 'forward';
  readonly threadModel = 'owner-thread';
  readonly capabilities = ALL_CAPABILITIES;
  private nextId = 0;
  private readonly waiting = new Map<number, WaitingRequest>();
  /** The queue's tag memory (UblkQueue.tagMemory), once useTagMemory named it. */
  private tagShare: SharedArrayBuffer | undefined;
  /** Its id for the daemon thread, announced with the first request that names it. */
  private tagShareId = NO_BUFFER;

  constructor(private readonly devId: number) {}

  /**
   * The tags' buffers lie in `tagMemory`, shared: a request whose bytes are there (as every
   * request's are, but for writes placed elsewhere) is forwarded by where they are, not copied.
   */
  useTagMemory(tagMemory: Uint8Array): void {
    if (tagMemory.buffer instanceof SharedArrayBuffer) this.tagShare = tagMemory.buffer;
  }

  /** As the only segment of the device, its target sectors are device sectors. */
  map(bio: Bio, done: MapDone): void {
    this.forwardAt(bio, bio.sector, done);
  }

  readonly forwardAt = (bio: Bio, deviceSector: number, done: MapDone): void => {
    const id = this.nextId++;
    let buffer: SharedBuffer | undefined;
    let bufferId = NO_BUFFER;
    let byteOffset = 0;
    const inTagMemory = carriesData(bio.op) && this.tagShare !== undefined && bio.data.buffer === this.tagShare;
    if (inTagMemory) {
      if (this.tagShareId === NO_BUFFER) this.tagShareId = sharedBuffers.register(this.tagShare!);
      bufferId = this.tagShareId;
      byteOffset = bio.data.byteOffset;
    } else if (carriesData(bio.op)) {
      // Bytes outside the tag memory travel in a buffer of the pool. No forwarding path makes
      // such bytes today (the targets that place writes in a file's mapping are served here, not
      // forwarded); the copy keeps a future one correct.
      buffer = sharedBuffers.take(bio.data.byteLength);
      if (bio.op === IoOp.Write) copyBytes(buffer.bytes, bio.data);
      bufferId = buffer.id;
    }
    this.waiting.set(id, { bio, done, buffer });
    forwardedInFlight++;
    const request: ForwardedRequest = {
      devId: this.devId,
      id,
      op: bio.op,
      sector: deviceSector,
      sectorCount: bio.sectorCount,
      fua: bio.fua,
      noUnmap: bio.noUnmap,
      bufferId,
      byteOffset,
      inTagMemory,
    };
    if (overflow.length > 0 || !publishForwarded(request)) overflow.push(request);
  };

  answered(id: number, result: IoResult): void {
    const request = this.waiting.get(id);
    if (request === undefined) return;
    this.waiting.delete(id);
    forwardedInFlight--;
    const { bio, buffer } = request;
    if (buffer !== undefined) {
      if (result > 0 && bio.op === IoOp.Read) copyBytes(bio.data, buffer.bytes.subarray(0, Math.min(result, bio.data.byteLength)));
      sharedBuffers.give(buffer);
    }
    request.done(result);
  }

  /** The queue is going away: nobody will answer. */
  abandon(): void {
    forwardedInFlight -= this.waiting.size;
    const abandoned = [...this.waiting.values()];
    this.waiting.clear();
    // A request still waiting for room must not go out for a queue that is gone.
    for (let index = overflow.length - 1; index >= 0; index--) if (overflow[index]!.devId === this.devId) overflow.splice(index, 1);
    for (const { done, buffer } of abandoned) {
      // Its answer may still come (and a read's bytes with it): the buffer cannot be reused.
      if (buffer !== undefined) sharedBuffers.discard(buffer);
      done(-ENODEV);
    }
    // The daemon thread forgets the tag memory too (it keeps what requests in service hold).
    if (this.tagShareId !== NO_BUFFER) sharedBuffers.discard({ id: this.tagShareId });
    this.tagShareId = NO_BUFFER;
    this.tagShare = undefined;
  }

  status(): string {
    return '';
  }

  devices(): [] {
    return [];
  }

  async destroy(): Promise<void> {}
}

/** One device's queue on this thread, and what it serves requests with. */
class DeviceQueue {
  readonly queue: UblkQueue;
  readonly dispatcher: Dispatcher<Table>;
  readonly forward: ForwardTarget;
  /** The CPUs whose requests blk-mq sends to this queue. */
  readonly submitterCpus: readonly number[];
  private readonly forwardTable: Table;

  constructor(attach: AttachMessage, forward: ForwardTarget, initial: Table | undefined) {
    this.submitterCpus = attach.submitterCpus;
    this.forward = forward;
    this.forwardTable = new Table([{ startSector: 0, lengthSectors: attach.sizeSectors, target: this.forward }], []);
    // In place only where ublk asks for write data: see Dispatcher's inPlace.
    this.dispatcher = new Dispatcher<Table>(initial ?? this.forwardTable, { inPlace: attach.needGetData });
    const { devId, charFd, queues, depth, maxIoBytes, needGetData } = attach;
    this.queue = new UblkQueue(
      ring,
      { devId, charFd, queues, depth, maxIoBytes, needGetData },
      attach.queueId,
      (request, done) => this.dispatcher.submit(request, done),
      this.dispatcher,
      'shared',
    );
    this.forward.useTagMemory(this.queue.tagMemory);
  }

  get local(): boolean {
    return this.dispatcher.table !== this.forwardTable;
  }

  /** Serve from `next` (a local copy) or, when undefined, forward. The dispatcher must be suspended. */
  replaceTable(next: Table | undefined): Table | undefined {
    const previous = this.dispatcher.swapTable(next ?? this.forwardTable);
    return previous === this.forwardTable ? undefined : previous;
  }
}

const devices = new Map<number, DeviceQueue>();

function requestsInService(): number {
  let count = 0;
  for (const device of devices.values()) count += device.queue.requestsInService;
  return count;
}

/** Move the thread to the CPUs its placement picks for the queues it serves now (queue-placement.ts). */
function place(): void {
  const cpus = queueThreadCpus(placement, startCpus, [...devices.values()].map((device) => device.submitterCpus));
  if (sameCpus(cpus, placedCpus)) return;
  try {
    native().setThreadCpus(cpus);
    placedCpus = cpus;
  } catch {
    // EINVAL: none of them is online (a queue whose CPUs were taken offline). The thread runs
    // where it was allowed at start, which the scheduler always honours.
    if (sameCpus(placedCpus, startCpus)) return;
    try {
      native().setThreadCpus(startCpus);
      placedCpus = startCpus;
    } catch (error) {
      send({ kind: 'warn', message: `queue thread: cannot run on CPUs ${startCpus.join(',')} again: ${String(error)}` });
    }
  }
}

/**
 * A local copy of a planned table, or undefined when it cannot be made exactly (a device whose
 * identity changed, a target that is not stateless and has no view here): the queue then
 * forwards instead, which is always correct. Views forward through `forward`.
 */
async function buildCopy(plan: TablePlan | null, devId: number, forward: ForwardTarget): Promise<Table | undefined> {
  if (plan === null) return undefined;
  const name = `ublk device ${devId}`;
  const expected = new Map(plan.devices.map((device) => [device.spec, device.key]));
  const handle: DeviceHandle = { name, raiseEvent: () => send({ kind: 'event', devId }) };
  try {
    const table = await loadTable(plan.text, {
      scope,
      device: handle,
      ...(plan.views ? { queueViews: { shares: new Map(plan.views.map((view) => [view.startSector, view.share])), forward: forward.forwardAt } } : {}),
      openDevice: async (spec) => {
        const device = await openFileDevice(spec, { ring });
        if (expected.get(spec) !== device.key) {
          await device.close();
          throw new Error(`${spec} is no longer the device the table was loaded with`);
        }
        return device;
      },
    });
    if (table.segments.every((segment) => segment.target.threadModel === 'any-queue')) return table;
    await table.destroy();
  } catch (error) {
    send({ kind: 'warn', message: `queue thread: ${name} forwards its I/O: ${String(error)}` });
  }
  return undefined;
}

async function attach(message: AttachMessage): Promise<boolean> {
  const forward = new ForwardTarget(message.devId);
  const copy = await buildCopy(message.table, message.devId, forward);
  let device: DeviceQueue;
  try {
    device = new DeviceQueue(message, forward, copy);
  } catch (error) {
    await copy?.destroy();
    throw error;
  }
  devices.set(message.devId, device);
  place();
  device.queue.onRetired = () => {
    // Closing the copy's files goes through libuv: keep the waits short until it is done.
    asyncSteps++;
    void retire(message.devId, message.queueId).finally(() => asyncSteps--);
  };
  device.queue.postFetches();
  return device.local;
}

/** Every tag of the queue was aborted (STOP_DEV): release it and tell the daemon thread. */
async function retire(devId: number, queueId: number): Promise<void> {
  const device = devices.get(devId);
  if (device === undefined) return;
  devices.delete(devId);
  place();
  device.forward.abandon();
  device.queue.unmap();
  let error: string | undefined;
  try {
    await device.dispatcher.table.destroy();
  } catch (cause) {
    error = String(cause);
  }
  send({ kind: 'retired', devId, queueId, ...(error ? { error } : {}) });
}

async function resume(devId: number, swap: TablePlan | null | undefined): Promise<boolean> {
  const device = deviceOf(devId);
  if (swap === undefined) {
    if (device.dispatcher.suspended) await device.dispatcher.resume();
    return device.local;
  }
  const copy = await buildCopy(swap, devId, device.forward);
  // A forwarding queue was left running through the daemon's suspend (the daemon thread held
  // its I/O); it drains now, through the daemon thread, which is running again.
  if (!device.dispatcher.suspended) await device.dispatcher.suspend();
  const previous = device.replaceTable(copy);
  await device.dispatcher.resume();
  await previous?.destroy();
  return device.local;
}

function deviceOf(devId: number): DeviceQueue {
  const device = devices.get(devId);
  if (device === undefined) throw new Error(`queue thread serves no ublk device ${devId}`);
  return device;
}

async function control(message: Exclude<ToQueueThread, { kind: 'exit' }>): Promise<void> {
  asyncSteps++;
  try {
    let local: boolean;
    switch (message.kind) {
      case 'attach':
        local = await attach(message);
        break;
      case 'suspend': {
        const device = deviceOf(message.devId);
        if (device.local && !device.dispatcher.suspended) await device.dispatcher.suspend({ noflush: message.noflush });
        local = device.local;
        break;
      }
      case 'resume':
        local = await resume(message.devId, message.swap);
        break;
    }
    send({ kind: 'reply', seq: message.seq, local });
  } catch (error) {
    send({ kind: 'reply', seq: message.seq, error: error instanceof Error ? error.message : String(error) });
  } finally {
    asyncSteps--;
  }
}

function handle(message: ToQueueThread): void {
  switch (message.kind) {
    case 'exit':
      exiting = true;
      return;
    default:
      void control(message);
  }
}

/** The doorbell rang: read every answer and message waiting, then wait for the next ring. */
function onDoorbell(): void {
  answers.drain(takeAnswer);
  for (let received = receiveMessageOnPort(port); received !== undefined; received = receiveMessageOnPort(port)) {
    handle(received.message as ToQueueThread);
  }
  if (!exiting) ring.readCb(doorbellFd, doorbellBuffer, 0, onDoorbell);
}

function takeAnswer(records: Float64Array, at: number): void {
  publishedInFlight--;
  devices.get(records[at]!)?.forward.answered(records[at + 1]!, records[at + 2]!);
}

function stopping(): boolean {
  return exiting || Atomics.load(stopFlag, 0) !== 0;
}

new RingTurns({
  ring,
  // While a control step awaits libuv (opening files), waits stay short.
  waitMs: () => (asyncSteps > 0 ? ASYNC_POLL_MS : IDLE_WAIT_MS),
  // Never poll while a forwarded request is out: its answer needs the daemon thread's CPU.
  waitOptions: () => {
    waitPolicy = waitPolicies.pick(requestsInService());
    if (!waitPolicy.pollsNext || forwardedInFlight > 0) return sleepAtOnce;
    return waitPolicy === waitPolicies.loneBacking ? pollLongFirst : pollFirst;
  },
  beforeWait: sendForwarded,
  mustYield: () => asyncSteps > 0,
  stopping,
  onStop: () => {
    // COMMITs of requests already answered go to the kernel first: left unsubmitted, they would
    // be re-issued to the next daemon (harmless, as after a crash, but needless).
    ring.waitAndDispatch(0);
    ring.close();
    port.close();
  },
  onError: (error) => send({ kind: 'warn', message: `queue thread: a completion callback threw: ${String(error)}` }),
  // The policy needs each wait's length; with polling off nothing does, and nothing is timed.
  ...(pollMicros > 0 ? { waited: (waitMicros: number, completions: number) => waitPolicy.waited(waitMicros, completions) } : {}),
}).start();

onDoorbell();
