import type { Bio } from '../../io/bio';
import type { MapDone } from '../../dm/target';

/**
 * A chunk being copied out: from allocation until its record is durable. While it exists the
 * chunk is locked: origin writes wait for it (`originWaiters`), snapshot writes to it queue on it
 * (`snapshotWrites`) and are sent to the COW chunk after the commit.
 */
export class PendingException {
  /** The copy (or the full-chunk write standing in for it) has been issued. */
  started = false;
  /** undefined while copying; then whether the copy succeeded. */
  copyOk: boolean | undefined = undefined;
  readonly originWaiters: Array<() => void> = [];
  readonly snapshotWrites: Array<{ readonly bio: Bio; readonly done: MapDone }> = [];
  /** A snapshot write covering the whole chunk, issued instead of the copy (spec §3.3). */
  fullChunkWrite: { readonly bytes: number; readonly done: MapDone } | undefined = undefined;

  constructor(
    readonly originChunk: number,
    readonly cowChunk: number,
    /** Allocation order: completions are committed in it. */
    readonly sequence: number,
  ) {}
}

/**
 * Commits in allocation order whatever order copies finish in (the kernel's copy_callback with
 * exception_complete_sequence): an early finisher waits in a holding area until everything
 * allocated before it has finished.
 */
export class InOrderCompleter<T extends { readonly sequence: number }> {
  private nextSequence = 0;
  private nextToComplete = 0;
  private readonly early = new Map<number, T>();

  constructor(private readonly complete: (item: T) => void) {}

  /** The sequence number for the next item allocated. */
  allocate(): number {
    return this.nextSequence++;
  }

  /** `item` finished; completes it and every held item it was holding up, in order. */
  finished(item: T): void {
    this.early.set(item.sequence, item);
    for (let next = this.early.get(this.nextToComplete); next !== undefined; next = this.early.get(this.nextToComplete)) {
      this.early.delete(this.nextToComplete);
      this.nextToComplete++;
      this.complete(next);
    }
  }
}
