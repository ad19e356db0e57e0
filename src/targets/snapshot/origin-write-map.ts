/**
 * Where a write to an origin copies nothing out: the granules (runs of sectors) that every
 * snapshot of the origin already holds, committed. The origin registry keeps it on the thread
 * that owns the snapshots; a queue thread's view of snapshot-origin (origin-view.ts) reads it
 * through shared memory, without a lock, and sends such writes straight to the origin instead of
 * forwarding them to that thread.
 *
 * Layout, an Int32Array over a SharedArrayBuffer: word 0 says how to read the rest (the granule
 * in sectors, NOTHING_KNOWN, or NO_SNAPSHOTS), then one bit per granule from sector 0.
 *
 * A bit is set only for a granule that no snapshot would copy out for, and only on the owner
 * thread, in the same synchronous step as that finding. Anything that could make such a granule
 * need a copy again (a snapshot added, removed, re-sorted or activated) goes through reset(),
 * also on the owner thread and synchronous with the change, which clears every bit before the
 * change takes effect. So a reader that tests a bit after the change sees it clear and forwards;
 * one that tested it before is a write already in flight when the snapshot was taken, which may
 * land on either side of it, as with the kernel's dm-snapshot of an origin that was not suspended.
 */

const HEADER_WORD = 0;
const FIRST_BIT_WORD = 1;
const NOTHING_KNOWN = 0;
const NO_SNAPSHOTS = -1;
/** Bits are allocated for 4 KiB granules (LVM's default chunk), at most this many: 128 GiB of origin. */
const SMALLEST_GRANULE_SECTORS = 8;
const MAX_BITS = 2 ** 25;

/** What reset() is told about the origin's snapshots. */
export type OriginWriteRule = { readonly granuleSectors: number } | 'no-snapshots' | 'nothing-known';

export class OriginWriteMap {
  readonly share: SharedArrayBuffer;
  private readonly words: Int32Array;
  private readonly capacityBits: number;

  /** The owner's map of an origin of `originSectors` (nothing known yet). */
  static create(originSectors: number): OriginWriteMap {
    const bits = Math.min(Math.ceil(originSectors / SMALLEST_GRANULE_SECTORS), MAX_BITS);
    return new OriginWriteMap(new SharedArrayBuffer((FIRST_BIT_WORD + Math.ceil(bits / 32)) * 4), originSectors);
  }

  /** A reader's view of the owner's map. */
  static over(share: SharedArrayBuffer): OriginWriteMap {
    if (share.byteLength < (FIRST_BIT_WORD + 1) * 4 || share.byteLength % 4 !== 0) throw new RangeError('origin write map: not a map');
    return new OriginWriteMap(share, undefined);
  }

  private constructor(
    share: SharedArrayBuffer,
    /** Known to the owner only, which alone resets. */
    private readonly originSectors: number | undefined,
  ) {
    this.share = share;
    this.words = new Int32Array(share);
    this.capacityBits = (this.words.length - FIRST_BIT_WORD) * 32;
  }

  /**
   * Forget every granule, then read bits in `rule`'s granules from now on. Granules too small for
   * the bits allocated leave nothing known: every write is forwarded.
   */
  reset(rule: OriginWriteRule): void {
    if (this.originSectors === undefined) throw new Error('origin write map: only its owner resets it');
    Atomics.store(this.words, HEADER_WORD, NOTHING_KNOWN);
    this.words.fill(0, FIRST_BIT_WORD);
    let header = NOTHING_KNOWN;
    if (rule === 'no-snapshots') {
      header = NO_SNAPSHOTS;
    } else if (rule !== 'nothing-known' && Number.isSafeInteger(rule.granuleSectors) && rule.granuleSectors > 0) {
      if (Math.ceil(this.originSectors / rule.granuleSectors) <= this.capacityBits) header = rule.granuleSectors;
    }
    Atomics.store(this.words, HEADER_WORD, header);
  }

  /**
   * Owner side: mark each granule that [sector, sector + sectorCount) touches and `held` says no
   * snapshot would copy out for (asked of the whole granule, not only the part written).
   */
  markHeld(sector: number, sectorCount: number, held: (sector: number, sectorCount: number) => boolean): void {
    const granule = Atomics.load(this.words, HEADER_WORD);
    if (granule <= 0 || sectorCount <= 0) return;
    const last = Math.min(Math.floor((sector + sectorCount - 1) / granule), this.capacityBits - 1);
    for (let index = Math.floor(sector / granule); index <= last; index++) {
      const word = FIRST_BIT_WORD + (index >>> 5);
      const bit = 1 << (index & 31);
      if ((Atomics.load(this.words, word) & bit) !== 0) continue;
      if (held(index * granule, granule)) Atomics.or(this.words, word, bit);
    }
  }

  /** Reader side: whether a write to [sector, sector + sectorCount) copies nothing out. */
  covers(sector: number, sectorCount: number): boolean {
    const granule = Atomics.load(this.words, HEADER_WORD);
    if (granule === NO_SNAPSHOTS) return true;
    if (granule <= 0 || sectorCount <= 0) return false;
    const last = Math.floor((sector + sectorCount - 1) / granule);
    if (last >= this.capacityBits) return false;
    for (let index = Math.floor(sector / granule); index <= last; index++) {
      if ((Atomics.load(this.words, FIRST_BIT_WORD + (index >>> 5)) & (1 << (index & 31))) === 0) return false;
    }
    // A reset between the loads may have changed the granule the bits are in: trust none of them.
    return Atomics.load(this.words, HEADER_WORD) === granule;
  }
}
