import { EIO, ENODEV, EOPNOTSUPP, ETIMEDOUT, ErrnoError, type IoResult } from '../base/errno';
import { PAGE_BYTES, SECTOR_BYTES } from '../base/units';
import { IoOp, NO_DATA, carriesData, type InPlaceBio, type IoDone } from '../io/bio';
import { allocPageAligned, allocSharedPageAligned, native } from '../io/native';
import type { IoRing } from '../io/ring';
import {
  UBLK_IO_F_FUA,
  UBLK_IO_F_NOUNMAP,
  UBLK_IO_RES_NEED_GET_DATA,
  UBLK_IO_RES_OK,
  UBLK_U_IO_COMMIT_AND_FETCH_REQ,
  UBLK_U_IO_FETCH_REQ,
  UBLK_U_IO_NEED_GET_DATA,
  decodeIoDescInto,
  descriptorMmapByteLength,
  descriptorMmapByteOffset,
  type IoDesc,
} from './abi';

/**
 * One ublk queue served on one ring: its descriptor mapping, a buffer per tag, and each tag's
 * FETCH → handle → COMMIT_AND_FETCH cycle. The kernel takes a queue's commands only from the
 * task that fetched first, so a queue lives on one thread for good: the daemon's (ThreadQueues)
 * or a queue thread's (daemon/queue-thread.ts).
 */

/**
 * A request as the kernel delivered it: a Bio (device-relative) and where it came from. The
 * object is the tag's own and is refilled for the tag's next request, as its data buffer is: it
 * belongs to the handler until `done`, and nothing may read it after.
 */
export interface UblkRequest extends InPlaceBio {
  readonly queueId: number;
  readonly tag: number;
}

/**
 * Who says where the data of a device's writes goes, when ublk delivers them without it
 * (UBLK_F_NEED_GET_DATA): a Dispatcher serving in place. A nonzero placeWrite() is an address
 * ublk copies the write's data to; the queue then hands the request to landed() instead of the
 * handler, or reports abandoned() if it never lands there.
 */
export interface WritePlacer {
  placeWrite(request: UblkRequest): number;
  landed(request: UblkRequest, done: IoDone): void;
  abandoned(): void;
}

/**
 * Serves one request: `done` takes bytes moved (Read/Write) or 0, or -errno; calls after the
 * first are ignored, and so are calls for a request already answered. A throw completes the
 * request with -EIO.
 */
export type UblkHandler = (req: UblkRequest, done: IoDone) => void;

/** Where a device's queues are, as the code that serves them needs to know. */
export interface UblkQueueGeometry {
  readonly devId: number;
  /** /dev/ublkcN, open in this process (descriptors are per process, so any thread may use it). */
  readonly charFd: number;
  readonly queues: number;
  readonly depth: number;
  readonly maxIoBytes: number;
  /** The device has UBLK_F_NEED_GET_DATA: a write arrives without its data, which the server asks for. */
  readonly needGetData?: boolean;
}

/**
 * Whoever serves a device's queues. UblkDevice does the control side (ADD_DEV ... DEL_DEV) and
 * asks its QueueServer to start before START_DEV (or END_USER_RECOVERY), and to report once
 * every tag is retired after STOP_DEV.
 */
export interface QueueServer {
  /**
   * Post every queue's FETCHes; resolves once they are posted. `submitterCpus[q]`: the CPUs whose
   * requests blk-mq sends to queue q (GET_QUEUE_AFFINITY; empty if unknown), for placing the
   * threads that serve them.
   */
  start(geometry: UblkQueueGeometry, submitterCpus: ReadonlyArray<readonly number[]>): Promise<void>;
  /** Resolves once every tag of every queue was completed without a request (STOP_DEV's ABORT). */
  retired(timeoutMs: number): Promise<void>;
  /** Release what start() set up. Only after retired(), or when start() failed. */
  close(): Promise<void>;
}

/** Where a tag is in its FETCH → handle → COMMIT_AND_FETCH cycle. */
const enum TagPhase {
  /** A FETCH or COMMIT_AND_FETCH is posted; the kernel owns the tag. */
  Posted,
  /** The handler owns the request. */
  Serving,
  /** The kernel completed the tag's command with ABORT (or an error): it is never re-posted. */
  Retired,
}

export class UblkQueue {
  private readonly tags: TagSlot[] = [];
  private readonly descriptorMapping: ArrayBuffer;
  private readonly descriptorWords: Uint32Array;
  /** The descriptor being dispatched, decoded into one object for the queue rather than one per request. */
  private readonly desc: IoDesc = { op: 0, flags: 0, sectorCount: 0, sector: 0, bufAddress: 0 };
  private retiredTags = 0;
  private serving = 0;
  private firstCommandError: number | undefined;
  private onAllRetired: (() => void) | undefined;
  private unmapped = false;
  /** Called once every tag is retired (for a thread that must release the queue itself). */
  onRetired: (() => void) | undefined;
  /** Every tag's buffer, one after the other (`depth` x `maxIoBytes`, page-aligned). */
  readonly tagMemory: Uint8Array;

  constructor(
    readonly ring: IoRing,
    private readonly geometry: UblkQueueGeometry,
    readonly queueId: number,
    private readonly handler: UblkHandler,
    /** Places writes on a device with needGetData; without one their data goes to the tag's buffer. */
    private readonly placer?: WritePlacer,
    /**
     * 'shared': the tags' buffers lie in a SharedArrayBuffer (tagMemory.buffer), which a queue
     * thread shares with the daemon thread so that a forwarded request's bytes are not copied.
     */
    tagMemoryKind: 'private' | 'shared' = 'private',
  ) {
    const addon = native();
    const { charFd, depth, maxIoBytes } = geometry;
    this.descriptorMapping = addon.mmapReadOnly(charFd, descriptorMmapByteOffset(queueId), descriptorMmapByteLength(depth));
    this.descriptorWords = new Uint32Array(this.descriptorMapping);
    try {
      const queueBuffer = tagMemoryKind === 'shared' ? allocSharedPageAligned(depth * maxIoBytes) : new Uint8Array(allocPageAligned(depth * maxIoBytes));
      this.tagMemory = queueBuffer;
      const queueAddress = addon.addressOf(queueBuffer);
      for (let tag = 0; tag < depth; tag++) {
        const byteOffset = tag * maxIoBytes;
        this.tags.push(new TagSlot(this, queueId, tag, queueBuffer.subarray(byteOffset, byteOffset + maxIoBytes), queueAddress + byteOffset));
      }
    } catch (error) {
      this.unmap();
      throw error;
    }
  }

  get charFd(): number {
    return this.geometry.charFd;
  }

  get allRetired(): boolean {
    return this.retiredTags === this.tags.length;
  }

  /** Requests handed to the handler and not answered yet (a target's backing I/O is out for them). */
  get requestsInService(): number {
    return this.serving;
  }

  /** @internal */
  requestBegan(): void {
    this.serving++;
  }

  /** @internal */
  requestAnswered(): void {
    this.serving--;
  }

  postFetches(): void {
    // The ring must not be released while this thread runs (IoRing.keepUntilExit).
    this.ring.keepUntilExit();
    for (const slot of this.tags) slot.post(UBLK_U_IO_FETCH_REQ, 0);
  }

  /**
   * @internal A write arrived without its data (UBLK_F_NEED_GET_DATA): name where ublk copies
   * it, the place the placer gives or the tag's buffer.
   */
  placeData(slot: TagSlot): void {
    if (slot.placedWrite) {
      // ublk could not copy into the place named (the file shrank under its mapping) and asks
      // again: into the tag's own buffer this time, and the write is served as any other.
      slot.placedWrite = false;
      this.placer!.abandoned();
      slot.getData(slot.bufferAddress);
      return;
    }
    let address = 0;
    if (this.placer !== undefined) {
      const desc = decodeIoDescInto(this.descriptorWords, slot.tag, this.desc);
      const byteLength = desc.sectorCount * SECTOR_BYTES;
      if (desc.op === IoOp.Write && byteLength <= slot.buffer.length) {
        this.fillRequest(slot.request, IoOp.Write, desc, slot.dataView(byteLength));
        address = this.placer.placeWrite(slot.request);
      }
    }
    slot.placedWrite = address !== 0;
    slot.getData(address !== 0 ? address : slot.bufferAddress);
  }

  /** @internal A placed write's command failed: it will not land. */
  abandonPlacedWrite(): void {
    this.placer!.abandoned();
  }

  private fillRequest(request: TagRequest, op: IoOp, desc: IoDesc, data: Uint8Array): void {
    request.op = op;
    request.fua = (desc.flags & UBLK_IO_F_FUA) !== 0;
    request.noUnmap = (desc.flags & UBLK_IO_F_NOUNMAP) !== 0;
    request.sector = desc.sector;
    request.sectorCount = desc.sectorCount;
    request.data = data;
  }

  /** @internal A FETCH/COMMIT completed with a request: hand it to the handler. */
  dispatch(slot: TagSlot): void {
    const desc = decodeIoDescInto(this.descriptorWords, slot.tag, this.desc);
    slot.request.inPlaceAddress = 0;
    if (slot.placedWrite) {
      slot.placedWrite = false;
      if (desc.op === IoOp.Write && desc.sectorCount * SECTOR_BYTES <= slot.buffer.length) {
        this.dispatchLanded(slot, desc);
        return;
      }
      // Not the write placed here: its copy faulted, ublk requeued it (blk-mq may hand it to
      // another tag), and this tag now brings another request. Serve that one as any other.
      this.placer!.abandoned();
    }
    const op = knownOp(desc.op);
    if (op === undefined) {
      slot.commit(-EOPNOTSUPP);
      return;
    }
    const withData = carriesData(op);
    const byteLength = desc.sectorCount * SECTOR_BYTES;
    if (withData && byteLength > slot.buffer.length) {
      slot.commit(-EIO); // the kernel never sends more than max_sectors; refuse rather than overrun
      return;
    }
    // ublk_drv copies a read's data out of the tag's buffer through get_user_pages. A page never
    // written is mapped to the shared zero page, which the lock-free fast path refuses, so a
    // target that answers reads without writing the buffer (null) would send every read down the
    // slow path (mmap lock, VMA walk). Each page is written once, when a read first reaches it:
    // the buffer is resident only as far as reads have gone, as a target filling it would make it.
    if (op === IoOp.Read) slot.makeResident(byteLength);
    const done = slot.begin(op, withData ? byteLength : 0);
    const request = slot.request;
    this.fillRequest(request, op, desc, withData ? slot.dataView(byteLength) : NO_DATA);
    try {
      this.handler(request, done);
    } catch {
      done(-EIO);
    }
  }

  /** A placed write's data is where the placer said: it answers the write (ublk may have copied only a prefix, then shortened the request). */
  private dispatchLanded(slot: TagSlot, desc: IoDesc): void {
    const byteLength = desc.sectorCount * SECTOR_BYTES;
    const done = slot.begin(IoOp.Write, byteLength);
    this.fillRequest(slot.request, IoOp.Write, desc, slot.dataView(byteLength));
    this.placer!.landed(slot.request, done);
  }

  /** @internal The tag's command completed without a request (ABORT, or a rejected command). */
  retire(result: IoResult): void {
    if (result !== -ENODEV) this.firstCommandError ??= result;
    this.retiredTags++;
    if (!this.allRetired) return;
    this.onAllRetired?.();
    this.onRetired?.();
  }

  /** Every tag retired, or a timeout error naming how many are not. */
  retired(timeoutMs: number): Promise<void> {
    if (this.allRetired) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.onAllRetired = undefined;
        const detail = this.firstCommandError === undefined ? '' : ` (a command failed with ${this.firstCommandError})`;
        reject(
          new ErrnoError(
            `ublk device ${this.geometry.devId} queue ${this.queueId}: ${this.tags.length - this.retiredTags} tags not aborted after stop${detail}`,
            ETIMEDOUT,
          ),
        );
      }, timeoutMs);
      this.onAllRetired = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Release the descriptor mapping (the tag buffers go with the last reference). Idempotent. */
  unmap(): void {
    if (this.unmapped) return;
    this.unmapped = true;
    native().unmap(this.descriptorMapping);
  }
}

/** Every queue of a device on this thread's ring, handing requests to one handler. */
export class ThreadQueues implements QueueServer {
  private readonly queues: UblkQueue[] = [];

  constructor(
    private readonly ring: IoRing,
    private readonly handler: UblkHandler,
  ) {}

  /** One thread serves every queue here (the daemon's): there is nothing to place. */
  async start(geometry: UblkQueueGeometry): Promise<void> {
    for (let queueId = 0; queueId < geometry.queues; queueId++) {
      this.queues.push(new UblkQueue(this.ring, geometry, queueId, this.handler));
    }
    for (const queue of this.queues) queue.postFetches();
  }

  async retired(timeoutMs: number): Promise<void> {
    await Promise.all(this.queues.map((queue) => queue.retired(timeoutMs)));
  }

  async close(): Promise<void> {
    for (const queue of this.queues.splice(0)) queue.unmap();
  }
}

/** @internal What a TagSlot needs of its queue; an interface so unit tests can stand in for it. */
export interface TagOwner {
  readonly ring: Pick<IoRing, 'ublkIoCmdCb' | 'isClosed'>;
  readonly charFd: number;
  dispatch(slot: TagSlot): void;
  placeData(slot: TagSlot): void;
  abandonPlacedWrite(): void;
  retire(result: IoResult): void;
  /** A request was handed out (begin), and later answered (its first valid done). */
  requestBegan(): void;
  requestAnswered(): void;
}

/**
 * The request a tag serves: one object per tag, refilled by UblkQueue.dispatch for each request
 * the tag delivers (UblkRequest says for how long a handler may read it).
 */
class TagRequest implements UblkRequest {
  op = IoOp.Read;
  fua = false;
  noUnmap = false;
  sector = 0;
  sectorCount = 0;
  data: Uint8Array = NO_DATA;
  inPlaceAddress = 0;

  constructor(
    readonly queueId: number,
    readonly tag: number,
  ) {}
}

/** @internal One (queue, tag): its buffer, its request object and the callbacks of its cycle, bound once. */
export class TagSlot {
  private phase = TagPhase.Posted;
  private op = IoOp.Read;
  private dataByteLength = 0;
  /** Counts the requests delivered to this tag; names the one being served. */
  private generation = 0;
  private lastView: Uint8Array = NO_DATA;
  /** How far from its start the buffer's pages are this process's own (makeResident); page-aligned. */
  private residentBytes = 0;
  /** @internal What UblkQueue.dispatch hands the handler. */
  readonly request: TagRequest;
  /** @internal The write being delivered has its data copied to a place the queue's placer gave. */
  placedWrite = false;

  constructor(
    private readonly device: TagOwner,
    readonly queueId: number,
    readonly tag: number,
    /** maxIoBytes of page-aligned memory the kernel copies request data to and from. */
    readonly buffer: Uint8Array,
    /** @internal The address of `buffer`, named to ublk in every command. */
    readonly bufferAddress: number,
  ) {
    this.request = new TagRequest(queueId, tag);
  }

  /**
   * The buffer's first `byteLength` bytes. The view is kept and handed to the next request of the
   * same length (at a steady block size, every one): a typed array made per request is one of
   * the costlier allocations on the request path, and the view aliases the same bytes either way.
   */
  dataView(byteLength: number): Uint8Array {
    if (this.lastView.length !== byteLength) this.lastView = this.buffer.subarray(0, byteLength);
    return this.lastView;
  }

  /** Bytes at the buffer's start known to be in pages of their own, not the zero page. */
  get residentByteLength(): number {
    return this.residentBytes;
  }

  /**
   * Write each page of the buffer's first `byteLength` bytes that no read has reached before
   * (UblkQueue.dispatch says why). Each byte is written with its own value: a target that leaves
   * a read's buffer alone (null) still answers with what was there.
   */
  makeResident(byteLength: number): void {
    if (byteLength <= this.residentBytes) return;
    const buffer = this.buffer;
    const end = Math.min(byteLength, buffer.length);
    let offset = this.residentBytes;
    for (; offset < end; offset += PAGE_BYTES) buffer[offset] = buffer[offset]!;
    this.residentBytes = offset;
  }

  /** `address`: the buffer the command names (the tag's, unless the data is elsewhere). */
  post(cmdOp: number, result: IoResult, address: number = this.bufferAddress): void {
    this.phase = TagPhase.Posted;
    try {
      this.device.ring.ublkIoCmdCb(this.device.charFd, cmdOp, this.queueId, this.tag, result, address, this.onCommandDone);
    } catch {
      // A full SQ the kernel would not take (EBUSY/EAGAIN) is passing: completions being reaped
      // meanwhile make room. Giving the tag up instead would leave the kernel's request
      // unanswered forever, and STOP_DEV waiting behind it; so keep the command and its result
      // and try again on the next turn. Only a closed ring is final.
      if (this.device.ring.isClosed) this.retire(-EIO);
      else setImmediate(() => this.post(cmdOp, result, address));
    }
  }

  /**
   * The kernel delivered a request: the handler owns the tag until the returned `done` is
   * called. Each delivery has its own generation, and `done` is bound to it, so a late or
   * repeated call for an earlier request cannot answer the one the tag serves now.
   */
  begin(op: IoOp, dataByteLength: number): IoDone {
    this.phase = TagPhase.Serving;
    this.op = op;
    this.dataByteLength = dataByteLength;
    this.device.requestBegan();
    const generation = ++this.generation;
    return (result) => this.handled(generation, result);
  }

  /**
   * Answer the request and fetch the next. A read answered in place names its data's address,
   * which ublk copies from now; the address then stays the tag's until its next command, which
   * is harmless only because such a device's writes come without their data (Dispatcher).
   */
  commit(result: IoResult): void {
    const inPlace = this.request.inPlaceAddress;
    this.post(UBLK_U_IO_COMMIT_AND_FETCH_REQ, result, inPlace !== 0 && result > 0 ? inPlace : this.bufferAddress);
  }

  /** @internal Ask ublk for the data of the write being delivered, copied to `address`. */
  getData(address: number): void {
    this.post(UBLK_U_IO_NEED_GET_DATA, 0, address);
  }

  readonly onCommandDone = (result: IoResult): void => {
    if (result === UBLK_IO_RES_OK) {
      this.device.dispatch(this);
    } else if (result === UBLK_IO_RES_NEED_GET_DATA) {
      this.device.placeData(this);
    } else {
      this.retire(result);
    }
  };

  private handled(generation: number, result: IoResult): void {
    if (generation !== this.generation || this.phase !== TagPhase.Serving) return; // stale, or answered
    this.device.requestAnswered();
    if (typeof result !== 'number' || !Number.isInteger(result)) {
      this.commit(-EIO);
    } else if (result < 0) {
      this.commit(result);
    } else if (carriesData(this.op)) {
      this.commit(Math.min(result, this.dataByteLength));
    } else {
      this.commit(0);
    }
  }

  private retire(result: IoResult): void {
    if (this.placedWrite) {
      // The write's data will not land where it was placed: its command failed, or cannot be sent.
      this.placedWrite = false;
      this.device.abandonPlacedWrite();
    }
    if (this.phase === TagPhase.Retired) return;
    this.phase = TagPhase.Retired;
    this.device.retire(result);
  }
}

function knownOp(op: number): IoOp | undefined {
  switch (op) {
    case IoOp.Read:
    case IoOp.Write:
    case IoOp.Flush:
    case IoOp.Discard:
    case IoOp.WriteZeroes:
      return op;
    default:
      return undefined;
  }
}

