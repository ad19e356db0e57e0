/**
 * The regions of a mirror that queue threads may write to all legs themselves, without the owner
 * thread (view.ts): regions the owner has marked dirty in the log, durably, while every leg and
 * the log are healthy. The owner keeps such a region's dirty mark, and takes no recovery to it,
 * until no view write is in flight there; so a crash in the middle of a view's write leaves the
 * region dirty in the log, and it is resynced, as after a crash in the middle of the owner's.
 *
 * Layout, 32-bit words from an offset in a SharedArrayBuffer: the region size in sectors, then one
 * word per region: HELD (the owner lets views write), TOUCHED (a view wrote since the owner's
 * last sweep) and, below them, the count of view writes in flight.
 *
 * A view counts itself in before it looks at HELD (one atomic add), and the owner releases a
 * region only by swapping a word of exactly HELD for 0: so either the view sees HELD gone and
 * forwards its write, or the owner sees the count and keeps the region. Every word is read and
 * written with Atomics, whose sequential consistency this argument needs.
 *
 * The kernel's dm-raid1 clears a region's mark as soon as its writes drain; the owner here clears
 * a held one after it has seen no view write for a whole sweep (SWEEP_MS, at most twice that
 * idle), as md's write-intent bitmap does: while writes keep coming, one log write marks the
 * region, not one per burst.
 */

const REGION_SECTORS_WORD = 0;
const FIRST_REGION_WORD = 1;
const HELD = 1 << 30;
const TOUCHED = 1 << 29;
const COUNT_MASK = TOUCHED - 1;

/** How often the owner looks for held regions that no view wrote to since the last look. */
export const SWEEP_MS = 1000;

export class RegionHolds {
  readonly regionSectors: number;
  private readonly words: Int32Array;
  /** Owner side: regions whose word is not 0 (held, or revoked with view writes in flight). */
  private readonly busyRegions = new Set<number>();

  /** Bytes the holds of `regionCount` regions take in a share. */
  static byteLength(regionCount: number): number {
    return (FIRST_REGION_WORD + regionCount) * Int32Array.BYTES_PER_ELEMENT;
  }

  /** The owner's, at `byteOffset` in `share` (zeroed, byteLength() long): `regionSectors` a region, none held. */
  static create(share: SharedArrayBuffer, byteOffset: number, regionSectors: number): RegionHolds {
    if (!Number.isSafeInteger(regionSectors) || regionSectors <= 0) throw new RangeError(`region holds: region size ${regionSectors}`);
    Atomics.store(new Int32Array(share, byteOffset, 1), REGION_SECTORS_WORD, regionSectors);
    return new RegionHolds(share, byteOffset);
  }

  /** A view's, over what the owner made at `byteOffset` in `share`. */
  static over(share: SharedArrayBuffer, byteOffset: number): RegionHolds {
    return new RegionHolds(share, byteOffset);
  }

  private constructor(share: SharedArrayBuffer, byteOffset: number) {
    if (byteOffset % Int32Array.BYTES_PER_ELEMENT !== 0 || share.byteLength < byteOffset + RegionHolds.byteLength(0) || (share.byteLength - byteOffset) % Int32Array.BYTES_PER_ELEMENT !== 0) {
      throw new RangeError('region holds: not a share of them');
    }
    this.words = new Int32Array(share, byteOffset);
    this.regionSectors = Atomics.load(this.words, REGION_SECTORS_WORD);
    if (this.regionSectors <= 0) throw new RangeError('region holds: no region size');
  }

  get regionCount(): number {
    return this.words.length - FIRST_REGION_WORD;
  }

  /** The region [sector, sector + sectorCount) lies in, or -1 when it spans two or lies outside. */
  regionOf(sector: number, sectorCount: number): number {
    const region = Math.floor(sector / this.regionSectors);
    if (sectorCount <= 0 || Math.floor((sector + sectorCount - 1) / this.regionSectors) !== region) return -1;
    return region < this.regionCount ? region : -1;
  }

  /**
   * View side: count a write to `region` in, if the owner holds it. False: it does not, nothing
   * was counted, and the write goes to the owner.
   */
  enter(region: number): boolean {
    const index = FIRST_REGION_WORD + region;
    if ((Atomics.add(this.words, index, 1) & HELD) === 0) {
      Atomics.sub(this.words, index, 1);
      return false;
    }
    if ((Atomics.load(this.words, index) & TOUCHED) === 0) Atomics.or(this.words, index, TOUCHED);
    return true;
  }

  /** View side: a write counted in by enter() has finished on every leg (or been answered by the owner). */
  leave(region: number): void {
    Atomics.sub(this.words, FIRST_REGION_WORD + region, 1);
  }

  /** Owner side: views may write to `region` from now on. Only for a region whose dirty mark is durable. */
  hold(region: number): void {
    const index = FIRST_REGION_WORD + region;
    if ((Atomics.load(this.words, index) & HELD) !== 0) return;
    Atomics.or(this.words, index, HELD | TOUCHED);
    this.busyRegions.add(region);
  }

  /** Owner side: whether `region`'s dirty mark must stay (held, or view writes still in flight). */
  busy(region: number): boolean {
    return region < this.regionCount && Atomics.load(this.words, FIRST_REGION_WORD + region) !== 0;
  }

  /** Owner side: whether any region is held or has view writes in flight. */
  get anyBusy(): boolean {
    return this.busyRegions.size > 0;
  }

  /** Owner side: no new view write to `region` (those in flight finish; busy() says when). */
  revoke(region: number): void {
    if (region < this.regionCount) Atomics.and(this.words, FIRST_REGION_WORD + region, COUNT_MASK);
  }

  /** Owner side: revoke() every region, before anything that changes how writes must be done. */
  revokeAll(): void {
    for (const region of this.busyRegions) this.revoke(region);
  }

  /**
   * Owner side, every SWEEP_MS: release the held regions no view wrote to since the last sweep,
   * and forget those revoked whose writes have drained. Returns the regions no longer busy.
   */
  sweep(): number[] {
    const freed: number[] = [];
    for (const region of this.busyRegions) {
      const index = FIRST_REGION_WORD + region;
      const word = Atomics.load(this.words, index);
      if ((word & COUNT_MASK) !== 0) continue; // view writes in flight
      let nowFree: boolean;
      if ((word & HELD) === 0) {
        // Revoked and drained. A view that found HELD just before the revoke may have set TOUCHED after it.
        nowFree = Atomics.compareExchange(this.words, index, word, 0) === word;
      } else if ((word & TOUCHED) !== 0) {
        Atomics.compareExchange(this.words, index, word, HELD);
        nowFree = false;
      } else {
        nowFree = Atomics.compareExchange(this.words, index, HELD, 0) === HELD;
      }
      if (nowFree) {
        this.busyRegions.delete(region);
        freed.push(region);
      }
    }
    return freed;
  }
}
