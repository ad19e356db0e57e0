import { nativeAddonPath } from '../base/package-files';
import { isMultipleOfPowerOfTwo } from '../base/units';

/**
 * The native addon's surface (native/*.cc), typed. The addon is transport only: io_uring rings,
 * ublk command submission, aligned buffers, the descriptor mmap and a few ioctls. It knows
 * nothing of targets or tables.
 *
 * Completions are delivered in batches: the addon writes up to `tokens.length` (token, result)
 * pairs into the two typed arrays given to the Ring constructor and calls `onCompletions(count)`
 * once per batch, from the libuv loop (the ring's eventfd is watched with uv_poll; nothing
 * blocks or spins on the JS thread).
 */
export interface NativeRing {
  /** Queue a read of buf.byteLength bytes at fileByteOffset. */
  prepRead(fd: number, buf: ArrayBufferView, fileByteOffset: number, token: number): void;
  /** Queue a write; rwFlags are RWF_* (RWF_DSYNC = 2 for FUA). */
  prepWrite(fd: number, buf: ArrayBufferView, fileByteOffset: number, rwFlags: number, token: number): void;
  /** Queue a readv into the buffers in order. */
  prepReadv(fd: number, bufs: ArrayBufferView[], fileByteOffset: number, token: number): void;
  /** Queue a writev from the buffers in order. */
  prepWritev(fd: number, bufs: ArrayBufferView[], fileByteOffset: number, rwFlags: number, token: number): void;
  /** Queue fsync (datasync = fdatasync). */
  prepFsync(fd: number, datasync: boolean, token: number): void;
  /** Queue fallocate(fd, mode, byteOffset, byteLength). */
  prepFallocate(fd: number, mode: number, byteOffset: number, byteLength: number, token: number): void;
  /**
   * Queue an IORING_OP_URING_CMD with `payload` copied into the SQE's command area (at most 16
   * bytes on a normal ring, 80 on an sqe128 ring).
   */
  prepUringCmd(fd: number, cmdOp: number, payload: Uint8Array, token: number): void;
  /**
   * From now on, the hot path's requests (ublk FETCH_REQ / COMMIT_AND_FETCH_REQ, reads and writes
   * of memory that never moves) are queued by writing them into `records` instead of by a call
   * each (one crossing into the addon per request, not one per SQE): records[0] is how many are
   * staged, record i the STAGED_SQE_WORDS numbers from 1 + i * STAGED_SQE_WORDS, laid out as
   * StagedSqeKind says. submit(), wait() and prepStaged() prepare them and lower records[0] to the
   * number that got no SQE (the SQ stayed full); those stay at the front.
   */
  stageSqes(records: Float64Array): void;
  /** Prepare the staged requests now, without submitting (the staging array is full). */
  prepStaged(): void;
  /**
   * From now on every wait() writes into times[0] how long it waited in the kernel (polling and
   * sleeping), in microseconds, without the collecting after it.
   */
  timeWaitsInto(times: Float64Array): void;
  /**
   * Queue a discard of [byteOffset, byteOffset + byteLength) on a block device opened for
   * writing (IORING_OP_URING_CMD with BLOCK_URING_CMD_DISCARD, Linux 6.12+). Both must be
   * multiples of the device's logical block size; the kernel answers -EINVAL otherwise.
   */
  prepBlockDiscard(fd: number, byteOffset: number, byteLength: number, token: number): void;
  /** Queue an async cancel of the request whose token is `targetToken`. */
  prepCancel(targetToken: number, token: number): void;
  /** Submit everything queued; returns the number submitted. Never waits for completions. */
  submit(): number;
  /**
   * Move up to one batch of completions into the arrays given to the constructor and return how
   * many (0: none ready). When the CQ is empty it first collects what the kernel holds back (CQ
   * overflow, pending task work). Never waits; onCompletions is not called.
   */
  reap(): number;
  /**
   * Caller-driven rings: submit what is queued, then block the thread until `minComplete`
   * completions are ready or `timeoutMs` passed (-1: no limit), and collect up to a batch as
   * reap() does. Returns how many were collected (0 after a timeout or a signal). With
   * `pollMicros`, it polls that long without sleeping before it blocks.
   */
  wait(minComplete: number, timeoutMs: number, pollMicros?: number): number;
  /** Stop watching the ring and tear it down. Pending requests are abandoned. */
  close(): void;
  /** Hold a close-on-exec second descriptor of the ring that is never closed (IoRing.keepUntilExit). */
  keepUntilExit(): void;
  /** Event-loop rings: poll up to `micros` for the next completion after a wakeup that ran at most `maxBatch` (IoRing.pollAfterWakeups). */
  pollAfterWakeups(micros: number, maxBatch: number): void;
}

/** What `new Ring(...)` makes: a handle whose only method gives the ring's methods. */
export interface NativeRingHandle {
  /**
   * The NativeRing methods as functions bound to this ring, made once: calling one skips the
   * unwrap of `this`, and V8's receiver check, that an instance method pays on every call (the
   * request path makes one or two such calls per request). The functions keep the ring alive.
   */
  boundMethods(): NativeRing;
}

/** Numbers per staged request (NativeRing.stageSqes). */
export const STAGED_SQE_WORDS = 8;

/**
 * A staged record's first number, and what its other seven are:
 * - UblkIoCmd: kind, fd, cmdOp, queueId, tag, result, bufAddress, token
 * - Read:      kind, fd, address, byteLength, fileByteOffset, 0, 0, token
 * - Write:     kind, fd, address, byteLength, fileByteOffset, rwFlags, 0, token
 */
export const enum StagedSqeKind {
  UblkIoCmd = 0,
  Read = 1,
  Write = 2,
}

export interface NativeRingConstructor {
  new (
    entries: number,
    sqe128: boolean,
    tokens: Int32Array,
    results: Int32Array,
    onCompletions: (count: number) => void,
    /** No eventfd and no libuv watcher: the owner calls wait() (a queue thread). */
    callerDriven?: boolean,
  ): NativeRingHandle;
}

export interface NativeAddon {
  Ring: NativeRingConstructor;
  /** A non-blocking eventfd (a doorbell another thread rings to wake a thread waiting in its ring). */
  createEventFd(): number;
  /** A page-aligned, zero-filled buffer of `byteLength` bytes, outside the V8 heap; freed on GC. */
  allocAligned(byteLength: number, alignment: number): ArrayBuffer;
  /** The address of a view's first byte (for ublk command `addr` fields). */
  addressOf(view: ArrayBufferView): number;
  /** madvise(MADV_NOHUGEPAGE) over the whole pages of `view` (advice: refused by a kernel without THP, silently). */
  adviseNoHugePages(view: ArrayBufferView): void;
  /** mmap(PROT_READ, MAP_SHARED) of `byteLength` bytes of `fd` at `fileByteOffset`; munmap on GC or unmap(). */
  mmapReadOnly(fd: number, fileByteOffset: number, byteLength: number): ArrayBuffer;
  /** mmap(PROT_READ | PROT_WRITE, MAP_SHARED): stores into it are stores into the file. Released as mmapReadOnly's. */
  mmapShared(fd: number, fileByteOffset: number, byteLength: number): ArrayBuffer;
  /** fstat(fd).st_size, or -errno: cheaper per call than fs.fstatSync's Stats. */
  fileSize(fd: number): number;
  /**
   * lseek(fd, fileByteOffset, SEEK_DATA): where the first data at or after the offset begins,
   * or -errno (-ENXIO when there is none before the end). Moves the descriptor's position, which
   * pread, pwrite and the ring do not use.
   */
  nextData(fd: number, fileByteOffset: number): number;
  /** lseek(SEEK_HOLE), as nextData: where the first hole at or after the offset begins (the file's end counts as one). */
  nextHole(fd: number, fileByteOffset: number): number;
  /**
   * Copy `target.byteLength` bytes of a file mapping (mmapShared / mmapReadOnly) from
   * `mappingByteOffset` into `target`: the bytes copied, or -EFAULT when a page of the mapping
   * could not be read (the file shrank under it). The fault is caught, never the process's end.
   */
  copyFromMapping(mapping: ArrayBuffer, mappingByteOffset: number, target: ArrayBufferView): number;
  /** Copy `source` into an mmapShared mapping at `mappingByteOffset`, as copyFromMapping; -EFAULT also when a hole cannot be filled (a full tmpfs). */
  copyToMapping(mapping: ArrayBuffer, mappingByteOffset: number, source: ArrayBufferView): number;
  /** Copy all of `source` to the start of `target` (which must be at least as long) in vector moves: the bytes copied. */
  copyBytes(target: ArrayBufferView, source: ArrayBufferView): number;
  /** munmap now; the ArrayBuffer must not be used afterwards (it is detached). */
  unmap(buffer: ArrayBuffer): void;
  /** ioctl(BLKGETSIZE64) on a block device fd. */
  blockDeviceBytes(fd: number): number;
  /** pread(2) into `view` on this thread: bytes read, or -errno (never throws for an I/O error). */
  pread(fd: number, view: ArrayBufferView, fileByteOffset: number): number;
  /** pwrite(2) from `view` on this thread: bytes written, or -errno (never throws for an I/O error). */
  pwrite(fd: number, view: ArrayBufferView, fileByteOffset: number): number;
  /** preadv(2) into 1 to IOV_MAX views on this thread: bytes read, or -errno. */
  preadv(fd: number, views: readonly ArrayBufferView[], fileByteOffset: number): number;
  /** pwritev(2) from 1 to IOV_MAX views on this thread: bytes written, or -errno. */
  pwritev(fd: number, views: readonly ArrayBufferView[], fileByteOffset: number): number;
  /** ioctl(BLKSSZGET) on a block device fd. */
  logicalBlockBytes(fd: number): number;
  /** The CPUs the calling thread may run on (sched_getaffinity of the thread itself), ascending. */
  threadCpus(): number[];
  /** Let the calling thread run only on `cpus` (sched_setaffinity); EINVAL when none of them is online. */
  setThreadCpus(cpus: readonly number[]): void;
}

let cached: NativeAddon | undefined;

/** Loads build/Release/ublkdm_native.node once. */
export function native(): NativeAddon {
  if (!cached) {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    cached = require(nativeAddonPath()) as NativeAddon;
  }
  return cached;
}

/**
 * Buffers whose memory lies outside the V8 heap and never moves (allocPageAligned's, and shared
 * memory: allocSharedPageAligned's and those adopted from another thread), with the address of
 * their first byte once something asked for it (ADDRESS_NOT_ASKED before): the address holds
 * while the buffer lives.
 */
const stableBuffers = new WeakMap<ArrayBufferLike, number>();
const ADDRESS_NOT_ASKED = -1;
const PAGE_BYTES = 4096;

/** Page-aligned, zero-filled memory outside the V8 heap, usable for O_DIRECT I/O. */
export function allocPageAligned(byteLength: number): ArrayBuffer {
  const buffer = native().allocAligned(byteLength, 4096);
  // Not asked yet: a buffer made for one request (a forwarded write) may never need it.
  stableBuffers.set(buffer, ADDRESS_NOT_ASKED);
  return buffer;
}

/**
 * `byteLength` bytes of zero-filled memory in a SharedArrayBuffer (the view's `buffer`), starting
 * on a page boundary, as allocPageAligned's: memory a queue thread's ublk tags and the daemon
 * thread can both use, so that a request forwarded between them carries no copy of its bytes.
 * The SharedArrayBuffer is a page longer, for the alignment.
 */
export function allocSharedPageAligned(byteLength: number): Uint8Array {
  const share = new SharedArrayBuffer(byteLength + PAGE_BYTES);
  const whole = new Uint8Array(share);
  const address = native().addressOf(whole);
  const view = new Uint8Array(share, (PAGE_BYTES - (address % PAGE_BYTES)) % PAGE_BYTES, byteLength);
  stableBuffers.set(share, address);
  // As allocAligned's large buffers: a tag's few KiB must not make a huge page resident.
  native().adviseNoHugePages(view);
  return view;
}

/** A SharedArrayBuffer from another thread (allocSharedPageAligned's): its memory never moves either. */
export function adoptSharedMemory(share: SharedArrayBuffer): void {
  if (!stableBuffers.has(share)) stableBuffers.set(share, ADDRESS_NOT_ASKED);
}

/**
 * The address of `view`'s first byte when it lies in memory that never moves (above), else
 * undefined: what a request staged for the kernel (NativeRing.stageSqes) can carry instead of
 * the view. Valid while the view's buffer is alive; the caller keeps it alive until the kernel is
 * done with it.
 */
export function stableAddressOf(view: ArrayBufferView): number | undefined {
  const known = stableViewAddresses.get(view);
  if (known !== undefined) return known;
  const buffer = view.buffer;
  const bufferAddress = stableBuffers.get(buffer);
  if (bufferAddress === undefined) return undefined;
  let viewAddress: number;
  if (bufferAddress !== ADDRESS_NOT_ASKED) {
    viewAddress = bufferAddress + view.byteOffset;
  } else {
    viewAddress = native().addressOf(view);
    stableBuffers.set(buffer, viewAddress - view.byteOffset);
  }
  stableViewAddresses.set(view, viewAddress);
  return viewAddress;
}

/**
 * The addresses stableAddressOf found, by view. The request path asks again and again about the
 * same views (a tag's data view, kept across its requests), and this lookup spares it
 * `view.buffer`, which in Node 20 is a call into C++ on every read (~25 ns natively, far more
 * under TCG), and `byteOffset`, a builtin call too.
 */
const stableViewAddresses = new WeakMap<ArrayBufferView, number>();

/**
 * True when `view` (`byteLength` bytes long: the caller knows it, and reading it is a builtin
 * call) starts and ends on `alignmentBytes` (a power of two) boundaries of page-aligned memory:
 * the condition for handing it to an O_DIRECT file descriptor.
 */
export function isDirectIoAligned(view: ArrayBufferView, byteLength: number, alignmentBytes: number): boolean {
  if (!isMultipleOfPowerOfTwo(byteLength, alignmentBytes)) return false;
  const address = stableAddressOf(view);
  return address !== undefined && isMultipleOfPowerOfTwo(address, alignmentBytes);
}

/**
 * Below this, a copy stays in JS: the call into the addon costs more than the copy.
 */
const NATIVE_COPY_MIN_BYTES = 1024;

/**
 * Copy all of `source` to the start of `target` (at least as long). Large copies go through the
 * addon's vector moves: V8 copies into or out of a SharedArrayBuffer 8 bytes at a time (it must
 * tolerate other threads writing it), and glibc's memcpy moves a few KiB to a few hundred KiB
 * with `rep movsb`, both of which qemu's TCG (our test guests) runs slowly; on hardware the
 * ways are alike.
 */
export function copyBytes(target: Uint8Array, source: Uint8Array): void {
  if (source.byteLength < NATIVE_COPY_MIN_BYTES) target.set(source);
  else native().copyBytes(target, source);
}
