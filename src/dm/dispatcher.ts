import { EBUSY, EINVAL, EIO, ErrnoError, type IoResult } from '../base/errno';
import { IoOp } from '../io/bio';
import { type Target, type TargetIo } from './target';
import { findSegmentIndex, type Segment, type Table } from './table';
import { sectorsToBytes } from '../base/units';

/**
 * The core that serves one device's requests: it routes each request to the targets under it
 * (split at segment ends and at each target's maxIoSectors boundaries), completes it once, and
 * implements suspend and resume as dm does (targets.md §8.1, without the filesystem freeze,
 * which userspace cannot do: every suspend behaves as `--nolockfs`).
 */

/** One request from the block device, in device sectors. */
export interface BlockRequest {
  readonly op: IoOp;
  readonly sector: number;
  readonly sectorCount: number;
  /** sectorCount * 512 bytes for Read and Write; may be empty for the other operations. */
  readonly data: Uint8Array;
  readonly fua: boolean;
  readonly noUnmap: boolean;
}

/** The part of a segment the splitter needs (a Segment, or a test fixture). */
export interface SplittableSegment {
  readonly startSector: number;
  readonly lengthSectors: number;
  readonly target: { readonly maxIoSectors?: number };
}

/** One piece of a split request. */
export interface RequestPiece {
  readonly segmentIndex: number;
  /** First sector of the piece, relative to its segment's start. */
  readonly targetSector: number;
  readonly sectorCount: number;
  /** Where the piece's data starts in the request's buffer. */
  readonly byteOffset: number;
}

/**
 * Sectors from `targetSector` that one piece may cover: up to the segment's end, the target's
 * next maxIoSectors boundary (counted from the target's start) and the request's end.
 */
function pieceSectorCount(segment: SplittableSegment, targetSector: number, remainingSectors: number): number {
  let limit = segment.lengthSectors - targetSector;
  const maxIoSectors = segment.target.maxIoSectors;
  if (maxIoSectors !== undefined) limit = Math.min(limit, maxIoSectors - (targetSector % maxIoSectors));
  return Math.min(limit, remainingSectors);
}

/**
 * Split [sector, sector + sectorCount) into pieces that never cross a segment end or a
 * maxIoSectors boundary. The pieces tile the request in order. Throws RangeError when the
 * range is empty or does not lie inside the segments.
 */
export function splitRequest(segments: readonly SplittableSegment[], sector: number, sectorCount: number): RequestPiece[] {
  if (sectorCount <= 0) throw new RangeError(`cannot split an empty request (${sectorCount} sectors)`);
  let segmentIndex = findSegmentIndex(segments, sector);
  const last = segments[segments.length - 1];
  if (segmentIndex < 0 || last === undefined || sector + sectorCount > last.startSector + last.lengthSectors) {
    throw new RangeError(`sectors ${sector}+${sectorCount} lie outside the table`);
  }
  const pieces: RequestPiece[] = [];
  let doneSectors = 0;
  while (doneSectors < sectorCount) {
    const segment = segments[segmentIndex]!;
    const targetSector = sector + doneSectors - segment.startSector;
    const count = pieceSectorCount(segment, targetSector, sectorCount - doneSectors);
    pieces.push({ segmentIndex, targetSector, sectorCount: count, byteOffset: sectorsToBytes(doneSectors) });
    doneSectors += count;
    if (targetSector + count === segment.lengthSectors) segmentIndex++;
  }
  return pieces;
}

const NO_DATA = new Uint8Array(0);

const FLUSH_IO: TargetIo = Object.freeze({
  op: IoOp.Flush,
  sector: 0,
  sectorCount: 0,
  data: NO_DATA,
  fua: false,
  noUnmap: false,
});

function carriesData(op: IoOp): boolean {
  return op === IoOp.Read || op === IoOp.Write;
}

/**
 * Where the dispatcher is in the suspend cycle. New requests are mapped only while 'active'
 * or 'presuspending' (presuspend hooks run before I/O is blocked, as in dm_suspend); in the
 * other states they wait in the deferred queue.
 */
type DispatcherState = 'active' | 'presuspending' | 'draining' | 'suspended' | 'resuming';

interface DeferredRequest {
  readonly request: BlockRequest;
  readonly resolve: (result: IoResult) => void;
  readonly reject: (error: unknown) => void;
}

type SuspendHook = 'presuspend' | 'postsuspend' | 'preresume' | 'resume';

export class Dispatcher {
  private liveTable: Table;
  private state: DispatcherState = 'active';
  private deferred: DeferredRequest[] = [];
  private mappedCount = 0;
  private notifyDrained: (() => void) | undefined;

  constructor(table: Table) {
    this.liveTable = table;
  }

  get table(): Table {
    return this.liveTable;
  }

  get suspended(): boolean {
    return this.state === 'suspended';
  }

  /** Requests handed to targets and not yet completed. */
  get inFlight(): number {
    return this.mappedCount;
  }

  /** Requests waiting for resume. */
  get deferredCount(): number {
    return this.deferred.length;
  }

  /**
   * Serve one request: bytes moved for Read/Write, 0 for the others, or -errno. Rejects only
   * when a target's map rejects (a bug in the target), after every piece of the request has
   * settled, so the in-flight count never runs ahead of the targets.
   */
  handle(request: BlockRequest): Promise<IoResult> {
    if (this.ioBlocked()) return this.defer(request);
    return this.mapCounted(request);
  }

  /**
   * handle() without a promise on the common path: a Read or Write inside one segment whose
   * target has mapCb goes straight to it; everything else takes handle() and its promise.
   * `done` is called exactly once; where handle() would reject (a target bug), `done` gets -EIO.
   */
  handleCb(request: BlockRequest, done: (result: IoResult) => void): void {
    const segment = this.ioBlocked() ? undefined : this.fastPathSegment(request);
    if (segment === undefined) {
      this.handle(request).then(done, () => done(-EIO));
      return;
    }
    this.mappedCount++;
    let completed = false;
    const finish = (result: IoResult): void => {
      if (completed) return;
      completed = true;
      this.unmapOne();
      done(result);
    };
    try {
      segment.target.mapCb!(
        {
          op: request.op,
          sector: request.sector - segment.startSector,
          sectorCount: request.sectorCount,
          data: request.data,
          fua: request.fua,
          noUnmap: request.noUnmap,
        },
        finish,
      );
    } catch {
      finish(-EIO);
    }
  }

  /** The segment of a data request that fits one piece of it, if its target has mapCb. */
  private fastPathSegment(request: BlockRequest): Segment | undefined {
    const { op, sector, sectorCount } = request;
    if (op !== IoOp.Read && op !== IoOp.Write) return undefined;
    const segments = this.liveTable.segments;
    if (!(sector >= 0 && sectorCount > 0 && sector + sectorCount <= this.liveTable.sizeSectors)) return undefined;
    if (request.data.byteLength !== sectorsToBytes(sectorCount)) return undefined;
    const segment = segments[findSegmentIndex(segments, sector)]!;
    if (segment.target.mapCb === undefined) return undefined;
    const fits = pieceSectorCount(segment, sector - segment.startSector, sectorCount) === sectorCount;
    return fits ? segment : undefined;
  }

  /**
   * dm_suspend without the freeze: presuspend hooks; then new requests are deferred and the
   * ones already mapped drain; then postsuspend hooks. If a presuspend hook throws, the targets
   * already presuspended get their resume hook back and the dispatcher stays active.
   */
  async suspend(): Promise<void> {
    if (this.state === 'suspended') throw new ErrnoError('device is already suspended', EINVAL);
    if (this.state !== 'active') throw new ErrnoError(`device is busy (${this.state})`, EBUSY);
    const table = this.liveTable;

    this.state = 'presuspending';
    const presuspended: Target[] = [];
    try {
      for (const segment of table.segments) {
        await segment.target.presuspend?.();
        presuspended.push(segment.target);
      }
    } catch (error) {
      this.state = 'active';
      await undoPresuspend(presuspended);
      throw error;
    }

    this.state = 'draining';
    await this.drain();
    this.state = 'suspended';
    // A postsuspend failure leaves the device suspended: its I/O is already drained.
    await runHooks(table, 'postsuspend');
  }

  /**
   * dm_resume: preresume hooks (a throw leaves the device suspended), resume hooks, then the
   * deferred requests are mapped in arrival order. Resuming an active dispatcher does nothing,
   * as in the kernel.
   */
  async resume(): Promise<void> {
    if (this.state === 'active') return;
    if (this.state !== 'suspended') throw new ErrnoError(`device is busy (${this.state})`, EBUSY);
    const table = this.liveTable;

    this.state = 'resuming';
    try {
      await runHooks(table, 'preresume');
      await runHooks(table, 'resume');
    } catch (error) {
      this.state = 'suspended';
      throw error;
    }

    this.state = 'active';
    const queued = this.deferred;
    this.deferred = [];
    for (const { request, resolve, reject } of queued) this.mapCounted(request).then(resolve, reject);
  }

  /** Make `next` the live table; only while suspended. Returns the old table for the caller to destroy. */
  swapTable(next: Table): Table {
    if (this.state !== 'suspended') throw new ErrnoError('the table can only be swapped while suspended', EINVAL);
    const previous = this.liveTable;
    this.liveTable = next;
    return previous;
  }

  private ioBlocked(): boolean {
    return this.state !== 'active' && this.state !== 'presuspending';
  }

  private defer(request: BlockRequest): Promise<IoResult> {
    return new Promise((resolve, reject) => this.deferred.push({ request, resolve, reject }));
  }

  private drain(): Promise<void> {
    if (this.mappedCount === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.notifyDrained = resolve;
    });
  }

  private async mapCounted(request: BlockRequest): Promise<IoResult> {
    this.mappedCount++;
    try {
      return await this.route(request);
    } finally {
      this.unmapOne();
    }
  }

  private unmapOne(): void {
    if (--this.mappedCount === 0 && this.notifyDrained !== undefined) {
      const notify = this.notifyDrained;
      this.notifyDrained = undefined;
      notify();
    }
  }

  /** A result right away for requests that need no target, else the targets' promise. */
  private route(request: BlockRequest): IoResult | Promise<IoResult> {
    const table = this.liveTable;
    const { op, sector, sectorCount } = request;
    if (op === IoOp.Flush) return flushAll(table);

    // Checked at mapping time, not arrival: a deferred request meets the table live at resume.
    if (!(sector >= 0 && sectorCount >= 0 && sector + sectorCount <= table.sizeSectors)) return -EIO;
    if (carriesData(op) && request.data.byteLength !== sectorsToBytes(sectorCount)) {
      throw new RangeError(`request data is ${request.data.byteLength} bytes for ${sectorCount} sectors`);
    }
    if (sectorCount === 0) return 0;

    const segment = table.segments[findSegmentIndex(table.segments, sector)]!;
    const targetSector = sector - segment.startSector;
    if (pieceSectorCount(segment, targetSector, sectorCount) === sectorCount) {
      return segment.target.map({
        op,
        sector: targetSector,
        sectorCount,
        data: carriesData(op) ? request.data : NO_DATA,
        fua: request.fua,
        noUnmap: request.noUnmap,
      });
    }
    return mapPieces(table, request);
  }
}

/** A request that spans pieces: map them all concurrently, complete once. */
async function mapPieces(table: Table, request: BlockRequest): Promise<IoResult> {
  const withData = carriesData(request.op);
  const pieces = splitRequest(table.segments, request.sector, request.sectorCount);
  const outcomes = await Promise.allSettled(
    pieces.map((piece) =>
      table.segments[piece.segmentIndex]!.target.map({
        op: request.op,
        sector: piece.targetSector,
        sectorCount: piece.sectorCount,
        data: withData
          ? request.data.subarray(piece.byteOffset, piece.byteOffset + sectorsToBytes(piece.sectorCount))
          : NO_DATA,
        fua: request.fua,
        noUnmap: request.noUnmap,
      }),
    ),
  );
  const result = combineOutcomes(outcomes);
  return withData || result < 0 ? result : 0;
}

/** Every segment's target gets the flush once, concurrently; the first error (in table order) wins. */
async function flushAll(table: Table): Promise<IoResult> {
  const segments = table.segments;
  if (segments.length === 1) return segments[0]!.target.map(FLUSH_IO);
  const outcomes = await Promise.allSettled(segments.map((segment) => segment.target.map(FLUSH_IO)));
  return combineOutcomes(outcomes);
}

/**
 * The request's result from its pieces' outcomes, in request order: a rejection (target bug) is
 * rethrown; otherwise the first -errno; otherwise the sum of the pieces' results.
 */
function combineOutcomes(outcomes: readonly PromiseSettledResult<IoResult>[]): IoResult {
  let total = 0;
  let firstError: IoResult | undefined;
  for (const outcome of outcomes) {
    if (outcome.status === 'rejected') throw outcome.reason;
    if (outcome.value < 0) firstError ??= outcome.value;
    else total += outcome.value;
  }
  return firstError ?? total;
}

/** Give targets whose presuspend ran their resume hook back; the presuspend failure is what gets reported. */
async function undoPresuspend(targets: readonly Target[]): Promise<void> {
  for (const target of targets) {
    try {
      await target.resume?.();
    } catch {
      // Reported through the presuspend failure.
    }
  }
}

/** Run one suspend hook on every target, in table order, one after another (as dm does). */
async function runHooks(table: Table, hook: SuspendHook): Promise<void> {
  for (const segment of table.segments) await segment.target[hook]?.();
}
