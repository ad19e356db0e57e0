/**
 * A snapshot's completed exceptions: origin chunk → COW chunk. The kernel packs runs of
 * consecutive chunks into one hash entry to save kernel memory; a Map of numbers is small enough
 * here, and nothing of it reaches the disk.
 */
export class ExceptionTable {
  private readonly cowChunkByOrigin = new Map<number, number>();

  lookup(originChunk: number): number | undefined {
    return this.cowChunkByOrigin.get(originChunk);
  }

  insert(originChunk: number, cowChunk: number): void {
    this.cowChunkByOrigin.set(originChunk, cowChunk);
  }

  remove(originChunk: number): void {
    this.cowChunkByOrigin.delete(originChunk);
  }

  get size(): number {
    return this.cowChunkByOrigin.size;
  }
}
