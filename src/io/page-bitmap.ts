import { PAGE_BYTES } from '../base/units';

/** Pages per chunk of the bitmap: one 4 KiB Uint32Array covers 128 MiB of file. */
const CHUNK_PAGES = 32768;
const CHUNK_WORDS = CHUNK_PAGES / 32;

/**
 * A set of a file's pages, addressed by byte range: a FileDevice serving in place keeps two, the
 * pages it knows hold data and those it knows are holes (learned from lseek once per extent
 * rather than asked per request).
 *
 * Sparse: a chunk is made when one of its pages is first marked, so a huge sparse file costs
 * only for the extents it has.
 */
export class PageBitmap {
  private readonly chunks = new Map<number, Uint32Array>();

  /** Whether every page that [startByte, endByte) touches is marked. */
  covers(startByte: number, endByte: number): boolean {
    const endPage = pageAfter(endByte);
    for (let page = Math.floor(startByte / PAGE_BYTES); page < endPage; page++) {
      if (!this.has(page)) return false;
    }
    return true;
  }

  /** Whether any page that [startByte, endByte) touches is marked. */
  touchesAny(startByte: number, endByte: number): boolean {
    const endPage = pageAfter(endByte);
    for (let page = Math.floor(startByte / PAGE_BYTES); page < endPage; page++) {
      if (this.has(page)) return true;
    }
    return false;
  }

  private has(page: number): boolean {
    const chunk = this.chunks.get(Math.floor(page / CHUNK_PAGES));
    if (chunk === undefined) return false;
    const bit = page % CHUNK_PAGES;
    return (chunk[bit >>> 5]! & (1 << (bit & 31))) !== 0;
  }

  /** Mark every page that [startByte, endByte) touches (tmpfs holds data and holes by whole pages). */
  mark(startByte: number, endByte: number): void {
    this.set(Math.floor(startByte / PAGE_BYTES), pageAfter(endByte), true);
  }

  /** Unmark every page, and give back the memory of every chunk. */
  clear(): void {
    this.chunks.clear();
  }

  /** Unmark every page that [startByte, endByte) touches. */
  unmark(startByte: number, endByte: number): void {
    this.set(Math.floor(startByte / PAGE_BYTES), pageAfter(endByte), false);
  }

  private set(startPage: number, endPage: number, marked: boolean): void {
    let page = startPage;
    while (page < endPage) {
      const chunkIndex = Math.floor(page / CHUNK_PAGES);
      const chunkEnd = Math.min(endPage, (chunkIndex + 1) * CHUNK_PAGES);
      let chunk = this.chunks.get(chunkIndex);
      if (chunk === undefined) {
        if (!marked) {
          page = chunkEnd;
          continue;
        }
        chunk = new Uint32Array(CHUNK_WORDS);
        this.chunks.set(chunkIndex, chunk);
      }
      for (; page < chunkEnd; page++) {
        const bit = page % CHUNK_PAGES;
        const word = bit >>> 5;
        const mask = 1 << (bit & 31);
        chunk[word] = marked ? chunk[word]! | mask : chunk[word]! & ~mask;
      }
    }
  }
}

/** The page after the one holding the range's last byte: [floor(start / page), pageAfter(end)) are the pages it touches. */
function pageAfter(endByte: number): number {
  return Math.ceil(endByte / PAGE_BYTES);
}
