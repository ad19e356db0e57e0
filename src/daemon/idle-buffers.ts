/**
 * Buffers of forwarded requests not in use, kept by size for the next request of that size
 * (forward-channel.ts' SharedBufferPool on a queue thread, queue-threads.ts' ForwardBuffers on
 * the daemon thread). A new buffer is memory the kernel zeroes and faults in page by page,
 * which under TCG cost more than the request it carries (a 512 KiB write: 128 faults and a
 * clear of each page), and a garbage-collected one is work for V8's marker too.
 *
 * How many to keep: while requests come, up to `busyKeptBytes`, enough for every request in
 * flight at the depths users run large I/O at (32 requests of 512 KiB, the most one ublk request
 * carries); once none came for a whole period of `trimIfIdle` calls, only `keptBytes`, so that
 * a burst of large requests does not hold its memory for good.
 */
export interface IdleBufferLimits {
  /** Kept once idle. */
  readonly keptBytes: number;
  /** Kept while busy. */
  readonly busyKeptBytes: number;
}

/** How often a holder of IdleBuffers calls trimIfIdle while it keeps more than once idle. */
export const TRIM_LOOK_MS = 1000;

export const FORWARD_BUFFER_LIMITS: IdleBufferLimits = { keptBytes: 4 * 1024 * 1024, busyKeptBytes: 16 * 1024 * 1024 };

export class IdleBuffers<T> {
  private readonly bySize = new Map<number, T[]>();
  private idleBytes = 0;
  private takenSinceTrimCheck = 0;

  constructor(private readonly limits: IdleBufferLimits = FORWARD_BUFFER_LIMITS) {}

  /** An idle buffer of exactly `byteLength` bytes, or undefined: the caller makes one. */
  take(byteLength: number): T | undefined {
    this.takenSinceTrimCheck++;
    const buffer = this.bySize.get(byteLength)?.pop();
    if (buffer !== undefined) this.idleBytes -= byteLength;
    return buffer;
  }

  /** Keep `buffer` for the next request of its size; false when that would keep too much (the caller drops it). */
  give(buffer: T, byteLength: number): boolean {
    if (this.idleBytes + byteLength > this.limits.busyKeptBytes) return false;
    let kept = this.bySize.get(byteLength);
    if (kept === undefined) {
      kept = [];
      this.bySize.set(byteLength, kept);
    }
    kept.push(buffer);
    this.idleBytes += byteLength;
    return true;
  }

  /** Whether more is kept than once idle: trimIfIdle has something to do. */
  get aboveIdleLimit(): boolean {
    return this.idleBytes > this.limits.keptBytes;
  }

  /**
   * Called now and then: when nothing was taken since the last call, drops idle buffers (the
   * largest first) until no more than `keptBytes` are kept, handing each to `drop`.
   */
  trimIfIdle(drop: (buffer: T) => void): void {
    const taken = this.takenSinceTrimCheck;
    this.takenSinceTrimCheck = 0;
    if (taken > 0 || !this.aboveIdleLimit) return;
    const sizes = [...this.bySize.keys()].sort((a, b) => b - a);
    for (const size of sizes) {
      const kept = this.bySize.get(size)!;
      while (kept.length > 0 && this.idleBytes > this.limits.keptBytes) {
        drop(kept.pop()!);
        this.idleBytes -= size;
      }
      if (kept.length === 0) this.bySize.delete(size);
    }
  }
}
