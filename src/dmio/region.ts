import type { BlockDevice } from '../io/block-device';

/**
 * Where an I/O goes: the kernel's `struct dm_io_region`. All three fields are in 512-byte
 * sectors; `count` keeps the kernel's name because our users know the struct by it.
 * A region with count 0 is skipped, except that with `preflush` it flushes its device.
 */
export interface IoRegion {
  readonly device: BlockDevice;
  readonly sector: number;
  readonly count: number;
}

/**
 * Regions per call. The kernel allows BITS_PER_LONG (64); we cap at 32 so the error bitset is a
 * plain number (bit i = region i; read it with `(bits >>> i) & 1`). No in-tree user comes close:
 * dm-raid1 writes to at most 9 legs.
 */
export const DM_IO_MAX_REGIONS = 32;

/** A bitset with bit i set when region i (or destination i) failed; always non-negative. */
export type ErrorBits = number;

export function regionBit(regionIndex: number): ErrorBits {
  return (1 << regionIndex) >>> 0;
}

export function assertValidRegions(regions: readonly IoRegion[]): void {
  if (regions.length > DM_IO_MAX_REGIONS) {
    throw new RangeError(`dm-io takes at most ${DM_IO_MAX_REGIONS} regions, got ${regions.length}`);
  }
  for (const region of regions) {
    if (!Number.isSafeInteger(region.sector) || region.sector < 0) {
      throw new RangeError(`region sector ${region.sector} is not a non-negative integer`);
    }
    if (!Number.isSafeInteger(region.count) || region.count < 0) {
      throw new RangeError(`region count ${region.count} is not a non-negative integer`);
    }
  }
}
