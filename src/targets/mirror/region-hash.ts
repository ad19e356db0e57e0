import type { DirtyLog } from './dirty-log';

/**
 * The region hash (the kernel's dm-region-hash.c, spec mirror.md §3): the state of every region
 * that has writes in flight or work pending, the rest being whatever the dirty log says. It knows
 * nothing of the mirror above it: the mirror hands it the log and a `dispatchDelayed` callback,
 * and calls `updateStates` at the start of every worker pass.
 */

export const enum RegionState {
  Clean = 0x01,
  Dirty = 0x02,
  NoSync = 0x04,
  Recovering = 0x08,
}

interface Region {
  readonly region: number;
  state: RegionState;
  pendingWrites: number;
  /** Writes held while the region is being recovered (§4.1). */
  delayed: Array<() => void>;
}

export class RegionHash {
  private readonly regions = new Map<number, Region>();
  /** Regions to retire at the next updateStates, by how their story ended (kernel list names). */
  private clean = new Set<Region>();
  private recovered: Region[] = [];
  private failedRecovered: Region[] = [];
  private quiesced: Region[] = [];
  /** Regions in recovery (handed out by getResyncWork, quiescing or copying). */
  private recovering = 0;
  /** A flush failed on some leg: a region whose writes drain becomes NOSYNC, not CLEAN (§3 dec). */
  private flushFailure = false;

  constructor(
    private readonly log: DirtyLog,
    /** handle_errors: a failed recovery leaves the region out of sync. */
    private readonly handleErrors: boolean,
    /**
     * Whether writes the hash does not count (a queue thread's, region-holds.ts) still need
     * `region`'s dirty mark: a drained region then stays DIRTY until released().
     */
    private readonly markNeededElsewhere: (region: number) => boolean = () => false,
  ) {}

  /** CLEAN, DIRTY, NOSYNC or RECOVERING. */
  stateOf(region: number): RegionState {
    const known = this.regions.get(region);
    if (known !== undefined) return known.state;
    return this.log.inSync(region) ? RegionState.Clean : RegionState.NoSync;
  }

  /** Before a write is issued to the legs: a CLEAN region becomes DIRTY and its clean bit is cleared. */
  incPending(region: number): void {
    const entry = this.lookup(region);
    entry.pendingWrites++;
    if (entry.state === RegionState.Clean) {
      entry.state = RegionState.Dirty;
      this.clean.delete(entry);
      this.log.markRegion(region);
    }
  }

  /** A write finished. At zero in-flight writes the region is ready to be cleaned or recovered. */
  decPending(region: number): void {
    const entry = this.regions.get(region);
    if (entry === undefined || --entry.pendingWrites > 0) return;
    if (this.flushFailure) {
      this.setNoSync(entry);
    } else if (entry.state === RegionState.Recovering) {
      this.quiesced.push(entry);
    } else if (entry.state === RegionState.Dirty) {
      entry.state = RegionState.Clean;
      this.clean.add(entry);
    }
  }

  /**
   * The writes markNeededElsewhere() stood for have ended: a region kept DIRTY for them, with no
   * write of ours in flight, becomes clean at the next updateStates.
   */
  released(region: number): void {
    const entry = this.regions.get(region);
    if (entry === undefined || entry.state !== RegionState.Dirty || entry.pendingWrites > 0) return;
    entry.state = RegionState.Clean;
    this.clean.add(entry);
  }

  /** A write to `region` failed on some leg: the legs differ there now (§3 mark_nosync). */
  markNoSync(region: number): void {
    const entry = this.lookup(region);
    this.log.setRegionSync(region, false);
    if (entry.state === RegionState.Recovering) this.recoveryEnded(entry, false);
    entry.state = RegionState.NoSync;
  }

  /** A flush failed on some leg (flushes are not counted per region, so remember it). */
  markFlushFailure(): void {
    this.flushFailure = true;
  }

  /** Hold a write to a region under recovery until its copy ends. */
  delay(region: number, resubmit: () => void): void {
    this.lookup(region).delayed.push(resubmit);
  }

  /**
   * The start of every worker pass, in the kernel's order: recovered regions become clean and in
   * sync, failed recoveries in sync or not (handle_errors), drained regions clean; their delayed
   * writes go again; then the log is flushed. Resolves to the flush's result.
   */
  async updateStates(): Promise<number> {
    const recovered = this.recovered;
    const failed = this.failedRecovered;
    const cleaned = [...this.clean];
    this.recovered = [];
    this.failedRecovered = [];
    this.clean.clear();
    for (const entry of recovered) {
      this.log.clearRegion(entry.region);
      this.log.setRegionSync(entry.region, true);
      this.retire(entry);
    }
    for (const entry of failed) {
      this.log.setRegionSync(entry.region, !this.handleErrors);
      this.retire(entry);
    }
    for (const entry of cleaned) {
      if (entry.state !== RegionState.Clean || entry.pendingWrites > 0) continue; // dirtied again since
      if (this.markNeededElsewhere(entry.region)) {
        // Its mark stays, and a write of ours finds it DIRTY: no mark again, no log write.
        entry.state = RegionState.Dirty;
        continue;
      }
      this.log.clearRegion(entry.region);
      this.regions.delete(entry.region);
    }
    return this.log.flush();
  }

  /**
   * Take the next out-of-sync region for recovery (at most one at a time, as the kernel's
   * MAX_RECOVERY). It becomes RECOVERING at once; it is ready to copy when its writes drained.
   */
  startRecovery(): boolean {
    if (this.recovering > 0) return false;
    const region = this.log.getResyncWork();
    if (region === undefined) return false;
    const entry = this.lookup(region);
    this.clean.delete(entry);
    entry.state = RegionState.Recovering;
    this.recovering++;
    if (entry.pendingWrites === 0) this.quiesced.push(entry);
    return true;
  }

  /** Regions whose recovery may copy now (no writes in flight). */
  takeQuiesced(): number[] {
    const ready = this.quiesced.map((entry) => entry.region);
    this.quiesced = [];
    return ready;
  }

  /** The copy of `region` ended; the next updateStates settles it. */
  recoveryDone(region: number, success: boolean): void {
    const entry = this.regions.get(region);
    if (entry === undefined || entry.state !== RegionState.Recovering) return;
    this.recoveryEnded(entry, success);
  }

  /** Recoveries under way (handed out and not yet settled). */
  get recoveriesInFlight(): number {
    return this.recovering;
  }

  private recoveryEnded(entry: Region, success: boolean): void {
    this.recovering--;
    (success ? this.recovered : this.failedRecovered).push(entry);
  }

  private retire(entry: Region): void {
    this.regions.delete(entry.region);
    for (const resubmit of entry.delayed.splice(0)) resubmit();
  }

  private setNoSync(entry: Region): void {
    this.log.setRegionSync(entry.region, false);
    entry.state = RegionState.NoSync;
    this.regions.delete(entry.region);
  }

  private lookup(region: number): Region {
    let entry = this.regions.get(region);
    if (entry === undefined) {
      entry = { region, state: this.log.inSync(region) ? RegionState.Clean : RegionState.NoSync, pendingWrites: 0, delayed: [] };
      this.regions.set(region, entry);
      if (entry.state === RegionState.Clean) this.clean.add(entry);
    }
    return entry;
  }
}
