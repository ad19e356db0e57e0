import type { ScopeKey } from '../../dm/scope';
import type { DeviceKey } from '../../io/block-device';
import { OriginWriteMap, type OriginWriteRule } from './origin-write-map';

/**
 * Every snapshot of every origin in one daemon, by the origin's device key: the instantiable
 * form of dm-snap.c's `_origins` hash. A snapshot registers when it is constructed (inactive
 * until its table is resumed) and leaves when it is destroyed; snapshot-origin asks it which
 * snapshots a write must copy out to. Changes are synchronous: no await between a lookup and
 * an insert.
 */

/** What the origin write path needs from a snapshot. */
export interface OriginSnapshot {
  /** 0 for a handover destination until its resume (it has no store of its own yet). */
  readonly chunkSectors: number;
  /** Its table has been resumed: origin writes copy out to it (a handover source stays active). */
  readonly active: boolean;
  /** A snapshot-merge target. */
  readonly merging: boolean;
  /** The COW device's key: two live tables over one COW would each believe they own it. */
  readonly cowKey: DeviceKey;
  /**
   * Make sure the chunks under [sector, sector + sectorCount) are (or are being) copied out:
   * returns a promise-free wait (`whenCopied(resume)`) if a copy must finish first, or undefined
   * when nothing needs doing for this snapshot (inactive, invalid, beyond its length, already
   * excepted).
   */
  copyOutFor(sector: number, sectorCount: number): ((resume: () => void) => void) | undefined;
  /**
   * No origin write to [sector, sector + sectorCount) would make it copy anything out, now or
   * until the registry hears of a change (add, remove, resort, activated): every chunk there has a
   * committed exception, the snapshot is invalid, or the range is beyond it. An inactive or
   * merging snapshot answers false.
   */
  holds(sector: number, sectorCount: number): boolean;
}

export class OriginRegistry {
  private readonly byOrigin = new Map<DeviceKey, OriginSnapshot[]>();
  /** The write map of each origin a snapshot-origin target is over, and how many such targets. */
  private readonly writeMaps = new Map<DeviceKey, { readonly map: OriginWriteMap; users: number }>();

  /** Sorted by chunk size, largest first, a newcomer after its equals (as the kernel's list). */
  add(origin: DeviceKey, snapshot: OriginSnapshot): void {
    const list = this.byOrigin.get(origin) ?? [];
    let index = list.findIndex((other) => other.chunkSectors < snapshot.chunkSectors);
    if (index < 0) index = list.length;
    list.splice(index, 0, snapshot);
    this.byOrigin.set(origin, list);
    this.changed(origin);
  }

  remove(origin: DeviceKey, snapshot: OriginSnapshot): void {
    const list = this.byOrigin.get(origin);
    if (list === undefined) return;
    const index = list.indexOf(snapshot);
    if (index >= 0) list.splice(index, 1);
    if (list.length === 0) this.byOrigin.delete(origin);
    this.changed(origin);
  }

  /** A snapshot of `origin` went active: origin writes copy out to it from now on. */
  activated(origin: DeviceKey): void {
    this.changed(origin);
  }

  /**
   * The map of where writes to `origin` copy nothing out (origin-write-map.ts), for a
   * snapshot-origin target over it, which gives it back with releaseWriteMap when destroyed.
   */
  acquireWriteMap(origin: DeviceKey, originSectors: number): OriginWriteMap {
    let entry = this.writeMaps.get(origin);
    if (entry === undefined) {
      entry = { map: OriginWriteMap.create(originSectors), users: 0 };
      entry.map.reset(this.writeRule(origin));
      this.writeMaps.set(origin, entry);
    }
    entry.users++;
    return entry.map;
  }

  releaseWriteMap(origin: DeviceKey): void {
    const entry = this.writeMaps.get(origin);
    if (entry !== undefined && --entry.users === 0) this.writeMaps.delete(origin);
  }

  /** The snapshot (of any origin) whose COW is `cow`, if one is registered. */
  usingCow(cow: DeviceKey): OriginSnapshot | undefined {
    for (const list of this.byOrigin.values()) {
      const found = list.find((snapshot) => snapshot.cowKey === cow);
      if (found !== undefined) return found;
    }
    return undefined;
  }

  /** A handover changed the snapshot's chunk size: back into its place in the order. */
  resort(origin: DeviceKey, snapshot: OriginSnapshot): void {
    this.remove(origin, snapshot);
    this.add(origin, snapshot);
  }

  snapshotsOf(origin: DeviceKey): readonly OriginSnapshot[] {
    return this.byOrigin.get(origin) ?? [];
  }

  /**
   * The smallest chunk size among the origin's snapshots: origin writes are split at it, read at
   * every write (not frozen at resume as in the kernel, where skipping the suspend/resume dance
   * silently loses snapshot data, spec §1.1).
   */
  minChunkSectors(origin: DeviceKey): number | undefined {
    const list = this.byOrigin.get(origin);
    if (list === undefined) return undefined;
    // From the smallest up, skipping handover destinations' 0 (the kernel's min_not_zero).
    for (let index = list.length - 1; index >= 0; index--) {
      if (list[index]!.chunkSectors > 0) return list[index]!.chunkSectors;
    }
    return undefined;
  }

  /**
   * dm-snap's do_origin for one write: ask every snapshot to copy out what the write is about to
   * overwrite. `proceed` runs once no snapshot needs anything more (at once when none did); after
   * each wait the snapshots are asked again, since a snapshot may have started another copy meanwhile.
   */
  beforeOriginWrite(origin: DeviceKey, sector: number, sectorCount: number, proceed: () => void): void {
    const snapshots = this.snapshotsOf(origin);
    let firstWait: ((resume: () => void) => void) | undefined;
    // Every snapshot gets its copies started now (all in parallel); the write waits for the first
    // one found, then everything is asked again, which waits for the next, and so on.
    for (const snapshot of snapshots) {
      const wait = snapshot.copyOutFor(sector, sectorCount);
      firstWait ??= wait;
    }
    if (firstWait === undefined) {
      this.writeMaps.get(origin)?.map.markHeld(sector, sectorCount, (granule, granuleSectors) =>
        snapshots.every((snapshot) => snapshot.holds(granule, granuleSectors)),
      );
      proceed();
    } else {
      firstWait(() => this.beforeOriginWrite(origin, sector, sectorCount, proceed));
    }
  }

  /** Whatever the origin's write map said may no longer hold: start it over. */
  private changed(origin: DeviceKey): void {
    this.writeMaps.get(origin)?.map.reset(this.writeRule(origin));
  }

  /** Granules of the smallest chunk size: the size writes are split at, so a write marks its whole granule. */
  private writeRule(origin: DeviceKey): OriginWriteRule {
    if (this.snapshotsOf(origin).length === 0) return 'no-snapshots';
    const granuleSectors = this.minChunkSectors(origin);
    return granuleSectors === undefined ? 'nothing-known' : { granuleSectors };
  }
}

export const ORIGINS: ScopeKey<OriginRegistry> = { name: 'snapshot origins', create: () => new OriginRegistry() };
