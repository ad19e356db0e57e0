import type { IoResult } from '../base/errno';
import type { ReadOptions } from '../io/block-device';
import { SECTOR_BYTES } from '../base/units';
import { cutIntoPieces, memoryByteLength, type IoMemory, type IoPiece } from './memory';
import { assertValidRegions, regionBit, type ErrorBits, type IoRegion } from './region';

/**
 * dm-io: one memory buffer, up to DM_IO_MAX_REGIONS regions, one error bit per region.
 *
 * The kernel's "synchronous" calls block until every bio finished; Node cannot block, so the
 * synchronous form here is the promise-returning `dmIo()` (and the `dmIoSync*` helpers), which
 * resolves to the error bitset once every piece completed. The kernel's asynchronous form is
 * `dmIoNotify()` (and the `dmIoAsync*` helpers): it returns after submission and calls
 * `notify(errorBits, context)` exactly once, from an I/O completion. Neither form ever rejects on
 * an I/O error; misuse (too many regions, memory shorter than a region) throws synchronously.
 *
 * A region is cut into pieces of whole sectors (see cutIntoPieces), each one read/write or
 * readv/writev on the device; all pieces of all regions run concurrently, so one failing region
 * never hides or stops the others. A piece that fails or moves fewer bytes than asked sets its
 * region's bit; a failed read piece is zero-filled, as the kernel zero-fills failed read bios.
 */

export type DmIoDataOp = 'read' | 'write';

export type DmIoRequest =
  | {
      readonly op: DmIoDataOp;
      readonly memory: IoMemory;
      /** Flush each device before its region's I/O; a count-0 region then means "flush only". */
      readonly preflush?: boolean;
      /** Writes reach stable storage before they complete (REQ_FUA). */
      readonly fua?: boolean;
      /**
       * Reads go through the page cache where the device has one (not in the kernel's dm-io,
       * whose bios always go around it): kcopyd's source reads, see ReadOptions.
       */
      readonly throughPageCache?: boolean;
    }
  | {
      readonly op: 'discard' | 'writeZeroes';
      readonly preflush?: boolean;
      /** writeZeroes only: keep the space allocated (REQ_NOUNMAP). */
      readonly noUnmap?: boolean;
    };

const THROUGH_PAGE_CACHE: ReadOptions = { throughPageCache: true };

export type DmIoNotifyFn<C> = (errorBits: ErrorBits, context: C) => void;

/** Asynchronous dm-io: `notify(errorBits, context)` runs exactly once, after every piece finished. */
export function dmIoNotify<C>(request: DmIoRequest, regions: readonly IoRegion[], notify: DmIoNotifyFn<C>, context: C): void {
  assertValidRegions(regions);
  if (request.op === 'read' && regions.length > 1) {
    // The kernel refuses this and reports bit 0; we report it the same way, never synchronously.
    queueMicrotask(() => notify(1, context));
    return;
  }
  if ('memory' in request) {
    const memoryBytes = memoryByteLength(request.memory);
    for (const region of regions) {
      if (region.count * SECTOR_BYTES > memoryBytes) {
        throw new RangeError(`a ${region.count}-sector region needs more than the ${memoryBytes} bytes of memory given`);
      }
    }
  }
  const io = new IoInFlight(notify, context);
  for (let regionIndex = 0; regionIndex < regions.length; regionIndex++) {
    const region = regions[regionIndex];
    if (region.count === 0 && !request.preflush) continue;
    if (request.preflush) {
      io.hold();
      region.device.flush().then(
        (result) => {
          if (result < 0) io.fail(regionIndex);
          if (region.count > 0) issueRegion(io, request, region, regionIndex);
          io.release();
        },
        () => {
          io.fail(regionIndex);
          io.release();
        },
      );
    } else {
      issueRegion(io, request, region, regionIndex);
    }
  }
  io.release();
}

/** Synchronous dm-io (a promise, see the header): resolves to the error bitset. */
export function dmIo(request: DmIoRequest, regions: readonly IoRegion[]): Promise<ErrorBits> {
  return new Promise((resolve, reject) => {
    try {
      dmIoNotify(request, regions, resolve, undefined);
    } catch (error) {
      reject(error);
    }
  });
}

/**
 * The kernel's `struct io`: error bits plus an in-flight count that starts at 1, a guard so the
 * notify cannot fire while regions are still being submitted.
 */
class IoInFlight<C> {
  private errorBits = 0;
  private inFlight = 1;

  constructor(
    private readonly notify: DmIoNotifyFn<C>,
    private readonly context: C,
  ) {}

  hold(): void {
    this.inFlight++;
  }

  fail(regionIndex: number): void {
    this.errorBits = (this.errorBits | regionBit(regionIndex)) >>> 0;
  }

  release(): void {
    if (--this.inFlight === 0) this.notify(this.errorBits, this.context);
  }

  /** Counts `io` and settles it: success only when it moved exactly `expectedBytes`. */
  track(regionIndex: number, io: Promise<IoResult>, expectedBytes: number, zeroOnFailure: Uint8Array[] | null): void {
    this.hold();
    const onFailure = (): void => {
      this.fail(regionIndex);
      if (zeroOnFailure) for (const view of zeroOnFailure) view.fill(0);
    };
    io.then(
      (result) => {
        if (result < 0 || result !== expectedBytes) onFailure();
        this.release();
      },
      () => {
        // BlockDevice promises reject only on misuse; the region still fails rather than hang.
        onFailure();
        this.release();
      },
    );
  }
}

function issueRegion<C>(io: IoInFlight<C>, request: DmIoRequest, region: IoRegion, regionIndex: number): void {
  const device = region.device;
  switch (request.op) {
    case 'discard':
      io.track(regionIndex, device.discard(region.sector, region.count), 0, null);
      return;
    case 'writeZeroes':
      io.track(regionIndex, device.writeZeroes(region.sector, region.count, request.noUnmap ?? false), 0, null);
      return;
    case 'read':
    case 'write': {
      const pieces = cutIntoPieces(request.memory, region.count * SECTOR_BYTES);
      for (const piece of pieces) issuePiece(io, request, region, regionIndex, piece);
      return;
    }
  }
}

function issuePiece<C>(io: IoInFlight<C>, request: DmIoRequest & { op: DmIoDataOp }, region: IoRegion, regionIndex: number, piece: IoPiece): void {
  const device = region.device;
  const sector = region.sector + piece.sectorOffset;
  const byteLength = piece.sectorCount * SECTOR_BYTES;
  const single = piece.views.length === 1 ? piece.views[0] : null;
  if (request.op === 'read') {
    const options = request.throughPageCache ? THROUGH_PAGE_CACHE : undefined;
    const result = single ? device.read(single, sector, options) : device.readv(piece.views, sector, options);
    io.track(regionIndex, result, byteLength, piece.views);
  } else {
    const fua = request.fua ?? false;
    const result = single ? device.write(single, sector, fua) : device.writev(piece.views, sector, fua);
    io.track(regionIndex, result, byteLength, null);
  }
}
