import { allocPageAligned, native } from '../io/native';
import { PAGE_BYTES } from '../base/units';

/**
 * `pageCount` PAGE_BYTES pages cut from one page-aligned slab. Pages of one slab that end up
 * adjacent in a page list are merged into a single iovec by dm-io, so a pool allocated this way
 * costs few iovecs per I/O.
 */
export function allocatePages(pageCount: number): Uint8Array[] {
  const slab = allocateSlab(pageCount * PAGE_BYTES);
  const pages: Uint8Array[] = new Array(pageCount);
  for (let i = 0; i < pageCount; i++) pages[i] = new Uint8Array(slab, i * PAGE_BYTES, PAGE_BYTES);
  return pages;
}

function allocateSlab(byteLength: number): ArrayBuffer {
  // Page alignment only matters to O_DIRECT devices; when the addon is not built (host unit
  // tests) an ordinary ArrayBuffer serves every other device.
  let addon: ReturnType<typeof native> | undefined;
  try {
    addon = native();
  } catch {
    addon = undefined;
  }
  if (addon && typeof addon.allocAligned === 'function') return allocPageAligned(byteLength);
  return new ArrayBuffer(byteLength);
}
