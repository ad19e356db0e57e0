import { allocatePages } from '../dmio/pages';

/**
 * A client's pages: a fixed number, taken all-or-nothing by a job and given back when it
 * completes. Unlike the kernel, which tries the system allocator first and only falls back on its
 * reserve, this pool is the only source, so a client never holds more than it was created with.
 * Pages are handed out in slab order and returned so that the next taker gets the same run, which
 * keeps a job's pages adjacent (one iovec for dm-io).
 */
export class PagePool {
  readonly capacity: number;
  private readonly free: Uint8Array[];

  constructor(pageCount: number) {
    this.capacity = pageCount;
    this.free = allocatePages(pageCount).reverse();
  }

  get freeCount(): number {
    return this.free.length;
  }

  /** `pageCount` pages, or null (taking none) when fewer are free. */
  take(pageCount: number): Uint8Array[] | null {
    if (pageCount > this.free.length) return null;
    const pages: Uint8Array[] = new Array(pageCount);
    for (let i = 0; i < pageCount; i++) pages[i] = this.free.pop() as Uint8Array;
    return pages;
  }

  give(pages: readonly Uint8Array[]): void {
    for (let i = pages.length - 1; i >= 0; i--) this.free.push(pages[i]);
  }
}
