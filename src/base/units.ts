/**
 * Units. Device-mapper speaks in 512-byte sectors whatever the device's logical block size;
 * buffers and files speak in bytes. Every number that crosses between the two goes through
 * these helpers, and every variable says its unit in its name (`sector`, `sectorCount`,
 * `byteOffset`, `byteLength`).
 */
export const SECTOR_SHIFT = 9;
export const SECTOR_BYTES = 512;
export const PAGE_BYTES = 4096;

/**
 * Whether `value` (a non-negative safe integer: a byte offset, length or address) is a multiple of
 * `powerOfTwo` (at most 2^30). Tested with a mask, not %: an address or a large offset is past
 * 2^31, a double to V8, and a double's % costs 16 ns natively and 150-190 under TCG; & takes the
 * value's low 32 bits exactly, which are all a power of two up to 2^30 looks at.
 */
export function isMultipleOfPowerOfTwo(value: number, powerOfTwo: number): boolean {
  return (value & (powerOfTwo - 1)) === 0;
}

export function sectorsToBytes(sectorCount: number): number {
  return sectorCount * SECTOR_BYTES;
}

/** Whole sectors in a byte count; throws if the byte count is not sector-aligned. */
export function bytesToSectors(byteLength: number): number {
  if (byteLength % SECTOR_BYTES !== 0) {
    throw new RangeError(`${byteLength} bytes is not a whole number of 512-byte sectors`);
  }
  return byteLength / SECTOR_BYTES;
}
