import { sectorsToBytes } from '../base/units';
import { findSegmentIndex } from './table';

/**
 * Cutting a request into pieces no target has to cut again: at segment ends and at each
 * target's maxIoSectors boundaries (counted from the target's start), as dm's
 * max_io_len / dm_accept_partial_bio do before a clone is mapped.
 */

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
 * next maxIoSectors boundary and the request's end.
 */
export function pieceSectorCount(segment: SplittableSegment, targetSector: number, remainingSectors: number): number {
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
