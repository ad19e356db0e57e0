import type { ScopeKey } from '../../dm/scope';
import type { DeviceKey } from '../../io/block-device';

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
}

export class OriginRegistry {
  private readonly byOrigin = new Map<DeviceKey, OriginSnapshot[]>();

  /** Sorted by chunk size, largest first, a newcomer after its equals (as the kernel's list). */
  add(origin: DeviceKey, snapshot: OriginSnapshot): void {
    const list = this.byOrigin.get(origin) ?? [];
    let index = list.findIndex((other) => other.chunkSectors < snapshot.chunkSectors);
    if (index < 0) index = list.length;
    list.splice(index, 0, snapshot);
    this.byOrigin.set(origin, list);
  }

  remove(origin: DeviceKey, snapshot: OriginSnapshot): void {
    const list = this.byOrigin.get(origin);
    if (list === undefined) return;
    const index = list.indexOf(snapshot);
    if (index >= 0) list.splice(index, 1);
    if (list.length === 0) this.byOrigin.delete(origin);
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
    if (firstWait === undefined) proceed();
    else firstWait(() => this.beforeOriginWrite(origin, sector, sectorCount, proceed));
  }
}

export const ORIGINS: ScopeKey<OriginRegistry> = { name: 'snapshot origins', create: () => new OriginRegistry() };
