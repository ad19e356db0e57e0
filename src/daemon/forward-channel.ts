import { IoOp } from '../io/bio';
import { FORWARD_BUFFER_LIMITS, IdleBuffers, type IdleBufferLimits } from './idle-buffers';

/** A buffer forwarded bytes go through, and the id requests name it by. */
export interface SharedBuffer {
  readonly id: number;
  readonly bytes: Uint8Array;
}

/**
 * The I/O half of the link between a queue thread and the daemon thread (queue-thread.ts,
 * queue-threads.ts): requests a queue thread forwards, and their answers, go through rings of
 * records in shared memory, and their bytes through shared buffers, instead of MessagePort
 * messages. A message cost a structured clone, an ArrayBuffer transferred and collected, and the
 * port's own dispatch on both threads: under TCG more than the target's work (a flakey forwarded
 * at QD 1 ran at a quarter of its speed on the daemon thread). Control stays on the port.
 *
 * Each ring has one writer thread and one reader thread. Wakeups: the daemon thread waits on a
 * ring's bell with Atomics.waitAsync (which leaves its event loop free, and keeps no process
 * alive); a queue thread, which waits in io_uring_enter, is woken by its doorbell eventfd.
 */

const WRITTEN = 0;
const READ = 1;
const BELL = 2;
const HEADER_BYTES = 16;

/** A single-writer, single-reader ring of fixed-size records of numbers (float64: sectors need 53 bits). */
export class RecordRing {
  readonly share: SharedArrayBuffer;
  readonly capacity: number;
  private readonly header: Int32Array;
  /** The records, `fields` numbers each: the writer fills one in place, the reader reads it in place. */
  readonly records: Float64Array;

  static create(capacity: number, fields: number): RecordRing {
    if (!Number.isInteger(Math.log2(capacity)) || capacity < 1) throw new RangeError('RecordRing: capacity must be a power of 2');
    if (!Number.isInteger(fields) || fields < 1) throw new RangeError('RecordRing: a record needs at least one field');
    return new RecordRing(new SharedArrayBuffer(HEADER_BYTES + capacity * fields * 8), fields);
  }

  constructor(
    share: SharedArrayBuffer,
    readonly fields: number,
  ) {
    this.share = share;
    this.header = new Int32Array(share, 0, HEADER_BYTES / 4);
    this.records = new Float64Array(share, HEADER_BYTES);
    this.capacity = this.records.length / fields;
    if (!Number.isInteger(Math.log2(this.capacity))) throw new RangeError('RecordRing: not a ring');
  }

  /** Records written and not yet read. */
  get pending(): number {
    return (Atomics.load(this.header, WRITTEN) - Atomics.load(this.header, READ)) | 0;
  }

  /**
   * Writer: the index in `records` where the next record goes, or -1 when the ring is full. The
   * record is the reader's once publish() is called.
   */
  slot(): number {
    if (this.pending >= this.capacity) return -1;
    return (Atomics.load(this.header, WRITTEN) & (this.capacity - 1)) * this.fields;
  }

  /** Writer: the record at slot() is filled. */
  publish(): void {
    Atomics.add(this.header, WRITTEN, 1);
  }

  /** Reader: hand every record written so far to `take` (its index in `records`), oldest first. */
  drain(take: (records: Float64Array, at: number) => void): number {
    const written = Atomics.load(this.header, WRITTEN);
    let read = Atomics.load(this.header, READ);
    let count = 0;
    while (((written - read) | 0) > 0) {
      take(this.records, (read & (this.capacity - 1)) * this.fields);
      read = (read + 1) | 0;
      // Each record is given back as soon as it is read: `take` may let the writer run.
      Atomics.store(this.header, READ, read);
      count++;
    }
    return count;
  }

  /** Writer: wake a reader sleeping in sleep(), if it is (one notify per sleep, not per record). */
  ring(): void {
    if (Atomics.exchange(this.header, BELL, 1) === 0) Atomics.notify(this.header, BELL, 1);
  }

  /**
   * Reader, after a drain: a promise that settles once the writer has rung, or undefined when
   * records came meanwhile (drain again now). No record written before ring() can be missed: the
   * bell is cleared before the ring is looked at, and waitAsync returns at once if it rang since.
   */
  sleep(): Promise<unknown> | undefined {
    Atomics.store(this.header, BELL, 0);
    if (this.pending > 0) return undefined;
    const wait = Atomics.waitAsync(this.header, BELL, 0);
    return wait.async ? wait.value : undefined;
  }
}

/** A forwarded request's record: where each field is. */
export const REQUEST_FIELDS = 8;
const DEV_ID = 0;
const ID = 1;
const OP = 2;
const SECTOR = 3;
const SECTOR_COUNT = 4;
const FLAGS = 5;
const BUFFER_ID = 6;
const BYTE_OFFSET = 7;
const FUA = 1;
const NO_UNMAP = 2;
const IN_TAG_MEMORY = 4;
/** The buffer id of a request that carries no bytes (flush, discard, write-zeroes). */
export const NO_BUFFER = -1;

/** A request a queue thread forwards to the daemon thread, whose table instance serves it. */
export interface ForwardedRequest {
  readonly devId: number;
  readonly id: number;
  readonly op: IoOp;
  readonly sector: number;
  readonly sectorCount: number;
  readonly fua: boolean;
  readonly noUnmap: boolean;
  /** The shared buffer with a write's bytes, or for a read's (SharedBufferPool), or NO_BUFFER. */
  readonly bufferId: number;
  /** Where in that buffer the bytes are. */
  readonly byteOffset: number;
  /**
   * The buffer is the queue's tag memory (UblkQueue.tagMemory): the bytes are the ublk tag's own,
   * aligned as a tag's buffer is, and the daemon thread serves the request in them, no copy made.
   */
  readonly inTagMemory: boolean;
}

export function writeRequest(records: Float64Array, at: number, request: ForwardedRequest): void {
  records[at + DEV_ID] = request.devId;
  records[at + ID] = request.id;
  records[at + OP] = request.op;
  records[at + SECTOR] = request.sector;
  records[at + SECTOR_COUNT] = request.sectorCount;
  records[at + FLAGS] = (request.fua ? FUA : 0) | (request.noUnmap ? NO_UNMAP : 0) | (request.inTagMemory ? IN_TAG_MEMORY : 0);
  records[at + BUFFER_ID] = request.bufferId;
  records[at + BYTE_OFFSET] = request.byteOffset;
}

export function readRequest(records: Float64Array, at: number): ForwardedRequest {
  const flags = records[at + FLAGS]!;
  return {
    devId: records[at + DEV_ID]!,
    id: records[at + ID]!,
    op: records[at + OP]! as IoOp,
    sector: records[at + SECTOR]!,
    sectorCount: records[at + SECTOR_COUNT]!,
    fua: (flags & FUA) !== 0,
    noUnmap: (flags & NO_UNMAP) !== 0,
    bufferId: records[at + BUFFER_ID]!,
    byteOffset: records[at + BYTE_OFFSET]!,
    inTagMemory: (flags & IN_TAG_MEMORY) !== 0,
  };
}

/** An answer's record: the request, and bytes moved or -errno (a read's bytes are in its buffer). */
export const ANSWER_FIELDS = 3;

export function writeAnswer(records: Float64Array, at: number, devId: number, id: number, result: number): void {
  records[at] = devId;
  records[at + 1] = id;
  records[at + 2] = result;
}

/**
 * The queue thread's shared buffers for forwarded bytes, kept for the next request of the same
 * size (idle-buffers.ts says how many). A new one is announced to the daemon thread (`announce`,
 * a port message sent before the record that names it, so the daemon thread finds it by then),
 * and one dropped is too.
 */
export class SharedBufferPool {
  private readonly idle: IdleBuffers<SharedBuffer>;
  private nextId = 0;

  constructor(
    private readonly announce: (event: { readonly kind: 'buffer'; readonly id: number; readonly share?: SharedArrayBuffer }) => void,
    limits: IdleBufferLimits = FORWARD_BUFFER_LIMITS,
  ) {
    this.idle = new IdleBuffers(limits);
  }

  take(byteLength: number): SharedBuffer {
    const kept = this.idle.take(byteLength);
    if (kept !== undefined) return kept;
    const share = new SharedArrayBuffer(byteLength);
    const id = this.nextId++;
    this.announce({ kind: 'buffer', id, share });
    return { id, bytes: new Uint8Array(share) };
  }

  give(buffer: SharedBuffer): void {
    if (!this.idle.give(buffer, buffer.bytes.byteLength)) this.discard(buffer);
  }

  /**
   * Announce memory that is not the pool's (a queue's tag memory), for requests to name by the
   * id returned; discard() it when it is no longer named.
   */
  register(share: SharedArrayBuffer): number {
    const id = this.nextId++;
    this.announce({ kind: 'buffer', id, share });
    return id;
  }

  /** Whether trimIfIdle may have buffers to drop. */
  get aboveIdleLimit(): boolean {
    return this.idle.aboveIdleLimit;
  }

  /** Now and then (the queue thread: about once a second while nothing is forwarded): see IdleBuffers. */
  trimIfIdle(): void {
    this.idle.trimIfIdle((buffer) => this.discard(buffer));
  }

  /**
   * Never to be used again, and forgotten by the daemon thread: a buffer whose request was
   * abandoned, which the daemon thread may still be filling (it holds the memory until then).
   */
  discard(buffer: { readonly id: number }): void {
    this.announce({ kind: 'buffer', id: buffer.id });
  }
}
