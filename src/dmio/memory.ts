import { PAGE_BYTES, SECTOR_BYTES } from '../base/units';

/**
 * The caller's memory for one dm-io request, in the three kinds of the kernel documentation.
 * dm-io never copies it: every region gets views (Uint8Array over the same ArrayBuffer) handed
 * straight to readv/writev. For a multi-region write the memory is replayed from its start for
 * each region.
 */

/** One piece of a bio vector: `byteLength` bytes of `buffer` from `byteOffset` (a bio_vec). */
export interface BioVecSegment {
  readonly buffer: Uint8Array;
  readonly byteOffset: number;
  readonly byteLength: number;
}

export type IoMemory =
  /** A chain of PAGE_BYTES pages; the first is used from `firstPageByteOffset`, the rest from 0. */
  | { readonly kind: 'pageList'; readonly pages: readonly Uint8Array[]; readonly firstPageByteOffset: number }
  /** An array of segments, used in order (DM_IO_BIO / dm_io_*_bvec). */
  | { readonly kind: 'bioVec'; readonly segments: readonly BioVecSegment[] }
  /** One contiguous buffer for large I/O without many pages (DM_IO_VMA / DM_IO_KMEM). */
  | { readonly kind: 'flat'; readonly buffer: Uint8Array };

export function pageListMemory(pages: readonly Uint8Array[], firstPageByteOffset = 0): IoMemory {
  if (!Number.isInteger(firstPageByteOffset) || firstPageByteOffset < 0 || firstPageByteOffset >= PAGE_BYTES) {
    throw new RangeError(`first page byte offset ${firstPageByteOffset} is outside a ${PAGE_BYTES}-byte page`);
  }
  for (const page of pages) {
    if (page.byteLength !== PAGE_BYTES) {
      throw new RangeError(`a page list page must be ${PAGE_BYTES} bytes, got ${page.byteLength}`);
    }
  }
  return { kind: 'pageList', pages, firstPageByteOffset };
}

export function bioVecMemory(segments: readonly BioVecSegment[]): IoMemory {
  for (const segment of segments) {
    const end = segment.byteOffset + segment.byteLength;
    if (segment.byteOffset < 0 || segment.byteLength < 0 || end > segment.buffer.byteLength) {
      throw new RangeError(`bio vector segment [${segment.byteOffset}, ${end}) lies outside its ${segment.buffer.byteLength}-byte buffer`);
    }
  }
  return { kind: 'bioVec', segments };
}

export function flatMemory(buffer: Uint8Array): IoMemory {
  return { kind: 'flat', buffer };
}

export function memoryByteLength(memory: IoMemory): number {
  switch (memory.kind) {
    case 'pageList':
      return memory.pages.length * PAGE_BYTES - (memory.pages.length > 0 ? memory.firstPageByteOffset : 0);
    case 'bioVec':
      return memory.segments.reduce((sum, segment) => sum + segment.byteLength, 0);
    case 'flat':
      return memory.buffer.byteLength;
  }
}

/** Linux takes at most IOV_MAX iovecs per readv/writev. */
export const IOV_MAX = 1024;
/**
 * Largest single read/write we issue. Linux truncates one rw call at MAX_RW_COUNT (2 GiB - 4 KiB),
 * which would come back as a short transfer; a power of two below it keeps pieces sector-aligned.
 */
export const MAX_IO_BYTES = 1 << 30;

/** A run of bytes in one ArrayBuffer; views are only made when a piece is handed to a device. */
interface Span {
  readonly arrayBuffer: ArrayBufferLike;
  readonly byteOffset: number;
  readonly byteLength: number;
}

/** One readv/writev: whole sectors, at `sectorOffset` sectors into the region. */
export interface IoPiece {
  readonly sectorOffset: number;
  readonly sectorCount: number;
  readonly views: Uint8Array[];
}

/**
 * Cuts the first `regionByteLength` bytes of `memory` into pieces of at most IOV_MAX views and
 * MAX_IO_BYTES bytes, each a whole number of sectors. Adjacent runs of the same ArrayBuffer (pages
 * of one slab, say) are merged into one view, so a page list from a contiguous pool costs one
 * iovec rather than one per page.
 */
export function cutIntoPieces(memory: IoMemory, regionByteLength: number): IoPiece[] {
  const pieces: IoPiece[] = [];
  let pending: Span[] = [];
  let pendingBytes = 0;
  let emittedBytes = 0;

  const emitAlignedPrefix = (): void => {
    let excessBytes = pendingBytes % SECTOR_BYTES;
    const carried: Span[] = [];
    while (excessBytes > 0) {
      const last = pending.pop() as Span;
      if (last.byteLength <= excessBytes) {
        carried.unshift(last);
        excessBytes -= last.byteLength;
      } else {
        const keptBytes = last.byteLength - excessBytes;
        pending.push({ arrayBuffer: last.arrayBuffer, byteOffset: last.byteOffset, byteLength: keptBytes });
        carried.unshift({ arrayBuffer: last.arrayBuffer, byteOffset: last.byteOffset + keptBytes, byteLength: excessBytes });
        excessBytes = 0;
      }
    }
    const pieceBytes = pending.reduce((sum, span) => sum + span.byteLength, 0);
    pieces.push({
      sectorOffset: emittedBytes / SECTOR_BYTES,
      sectorCount: pieceBytes / SECTOR_BYTES,
      views: pending.map((span) => new Uint8Array(span.arrayBuffer, span.byteOffset, span.byteLength)),
    });
    emittedBytes += pieceBytes;
    pending = carried;
    pendingBytes = carried.reduce((sum, span) => sum + span.byteLength, 0);
  };

  const append = (arrayBuffer: ArrayBufferLike, byteOffset: number, byteLength: number): void => {
    while (byteLength > 0) {
      const takenBytes = Math.min(byteLength, MAX_IO_BYTES - pendingBytes);
      const last = pending[pending.length - 1];
      if (last && last.arrayBuffer === arrayBuffer && last.byteOffset + last.byteLength === byteOffset) {
        pending[pending.length - 1] = { arrayBuffer, byteOffset: last.byteOffset, byteLength: last.byteLength + takenBytes };
      } else {
        pending.push({ arrayBuffer, byteOffset, byteLength: takenBytes });
      }
      pendingBytes += takenBytes;
      byteOffset += takenBytes;
      byteLength -= takenBytes;
      if (pending.length === IOV_MAX || pendingBytes === MAX_IO_BYTES) emitAlignedPrefix();
    }
  };

  let remainingBytes = regionByteLength;
  const take = (view: Uint8Array, viewByteOffset: number, viewByteLength: number): void => {
    const takenBytes = Math.min(remainingBytes, viewByteLength);
    if (takenBytes === 0) return;
    append(view.buffer, view.byteOffset + viewByteOffset, takenBytes);
    remainingBytes -= takenBytes;
  };

  switch (memory.kind) {
    case 'pageList': {
      let byteOffset = memory.firstPageByteOffset;
      for (let i = 0; i < memory.pages.length && remainingBytes > 0; i++) {
        take(memory.pages[i], byteOffset, PAGE_BYTES - byteOffset);
        byteOffset = 0;
      }
      break;
    }
    case 'bioVec':
      for (let i = 0; i < memory.segments.length && remainingBytes > 0; i++) {
        const segment = memory.segments[i];
        take(segment.buffer, segment.byteOffset, segment.byteLength);
      }
      break;
    case 'flat':
      take(memory.buffer, 0, memory.buffer.byteLength);
      break;
  }
  if (remainingBytes > 0) {
    throw new RangeError(`memory holds fewer than the region's ${regionByteLength} bytes`);
  }
  if (pendingBytes > 0) emitAlignedPrefix();
  return pieces;
}
