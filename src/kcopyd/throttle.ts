import { performance } from 'node:perf_hooks';

/**
 * The kcopyd throttle (struct dm_kcopyd_throttle): limits the share of time during which
 * throttled kcopyd I/O is outstanding, for every client sharing the object, so background copies
 * (resync, snapshot merge) leave room for foreground I/O. `percent` may be changed at any time,
 * like the module parameters dm_snapshot.snapshot_copy_throttle and dm_mirror.raid1_resync_throttle;
 * 100 (or more) turns all accounting off.
 *
 * Accounting follows the kernel, with milliseconds for jiffies (HZ = 1000): `totalPeriodMs`
 * accumulates all elapsed time, `ioPeriodMs` the time with at least one I/O outstanding; both are
 * halved (repeatedly) once the total passes ACCOUNT_INTERVAL_MS, an exponential decay over about a
 * second. Before each I/O, if the I/O share is above `percent`, the client sleeps SLEEP_MS and asks
 * again, at most MAX_SLEEPS times, then issues anyway.
 */

/** Time source and sleeper; injectable so tests run on simulated time. */
export interface ThrottleClock {
  /** Monotonic milliseconds. */
  now(): number;
  sleep(ms: number): Promise<void>;
}

export const realClock: ThrottleClock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};

export const THROTTLE_SLEEP_MS = 100;
export const THROTTLE_MAX_SLEEPS = 10;
/** 1 << SHIFT_HZ jiffies at HZ = 1000. */
export const ACCOUNT_INTERVAL_MS = 1024;

export class KcopydThrottle {
  /** Percentage of time kcopyd I/O may be outstanding. */
  percent: number;
  readonly clock: ThrottleClock;
  private ioJobsInFlight = 0;
  private ioPeriodMs = 0;
  private totalPeriodMs = 0;
  private lastMs: number;

  constructor(percent = 100, clock: ThrottleClock = realClock) {
    this.percent = percent;
    this.clock = clock;
    this.lastMs = clock.now();
  }

  get limiting(): boolean {
    return this.percent < 100;
  }

  /**
   * io_job_start without the sleep: true when the I/O may be issued now (and it is counted as
   * outstanding); false when the caller must sleep THROTTLE_SLEEP_MS and ask again, having slept
   * `sleepsSoFar` times already.
   */
  admit(sleepsSoFar: number): boolean {
    if (this.limiting) {
      this.advance(this.ioJobsInFlight > 0);
      if (this.totalPeriodMs >= ACCOUNT_INTERVAL_MS) {
        const shift = bitLength(Math.floor(this.totalPeriodMs / ACCOUNT_INTERVAL_MS));
        this.totalPeriodMs /= 2 ** shift;
        this.ioPeriodMs /= 2 ** shift;
      }
      const skewMs = this.ioPeriodMs - (this.percent * this.totalPeriodMs) / 100;
      if (skewMs > 0 && sleepsSoFar < THROTTLE_MAX_SLEEPS) return false;
    }
    this.ioJobsInFlight++;
    return true;
  }

  /** io_job_finish: one admitted I/O completed. */
  finish(): void {
    this.ioJobsInFlight--;
    if (this.limiting && this.ioJobsInFlight === 0) this.advance(true);
  }

  /** Share of the current window with I/O outstanding, 0..1 (for status and tests). */
  get ioShare(): number {
    return this.totalPeriodMs === 0 ? 0 : this.ioPeriodMs / this.totalPeriodMs;
  }

  private advance(ioWasOutstanding: boolean): void {
    const now = this.clock.now();
    const elapsedMs = now - this.lastMs;
    this.lastMs = now;
    if (ioWasOutstanding) this.ioPeriodMs += elapsedMs;
    this.totalPeriodMs += elapsedMs;
    if (this.ioPeriodMs > this.totalPeriodMs) this.ioPeriodMs = this.totalPeriodMs;
  }
}

/** fls(): 1-based index of the highest set bit, 0 for 0. */
function bitLength(value: number): number {
  return value === 0 ? 0 : 32 - Math.clz32(value);
}
