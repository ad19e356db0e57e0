import { SECTOR_BYTES } from '../../base/units';

/**
 * Chunks: a snapshot's unit of copy-on-write, a power-of-two number of sectors. Chunk numbers are
 * `sector >> chunkShift`, always in units of one snapshot's own chunk size (snapshots of one
 * origin may differ).
 */

/** The kernel's limit: INT_MAX >> SECTOR_SHIFT sectors. */
export const MAX_CHUNK_SECTORS = 0x7fffffff >>> 9;

export class ChunkGeometry {
  readonly chunkShift: number;

  constructor(readonly chunkSectors: number) {
    if (!isPowerOfTwo(chunkSectors)) throw new RangeError(`chunk size ${chunkSectors} is not a power of two`);
    this.chunkShift = Math.log2(chunkSectors);
  }

  chunkOf(sector: number): number {
    return Math.floor(sector / this.chunkSectors);
  }

  firstSector(chunk: number): number {
    return chunk * this.chunkSectors;
  }

  /** Sector offset inside its chunk. */
  offsetInChunk(sector: number): number {
    return sector % this.chunkSectors;
  }

  get chunkBytes(): number {
    return this.chunkSectors * SECTOR_BYTES;
  }
}

export function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && (value & (value - 1)) === 0 && value <= 2 ** 30;
}

/**
 * Why `chunkSectors` cannot be a chunk size for devices with these logical block sizes, in the
 * store layer's words (dm-exception-store.c), or undefined when it can.
 */
export function chunkSizeProblem(chunkSectors: number, logicalBlockBytes: readonly number[]): string | undefined {
  if (!isPowerOfTwo(chunkSectors)) return 'Chunk size is not a power of 2';
  for (const bytes of logicalBlockBytes) {
    if (chunkSectors % (bytes / SECTOR_BYTES) !== 0) return 'Chunk size is not a multiple of device blocksize';
  }
  if (chunkSectors > MAX_CHUNK_SECTORS) return 'Chunk size is too high';
  return undefined;
}
