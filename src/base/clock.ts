import { performance } from 'node:perf_hooks';

/**
 * Time as the time-based targets (flakey, delay) see it: a monotonic millisecond clock and
 * one-shot timers. The daemon uses the system's; host tests pass a ManualClock
 * (src/testing/manual-clock.ts) and move time by hand.
 */
export interface Clock {
  /** Monotonic milliseconds; only differences mean anything. */
  nowMs(): number;
  /**
   * What nowMs() counts from, in Unix-epoch milliseconds. Each thread counts from its own start
   * (performance.timeOrigin): a time another thread must understand (when a flakey started,
   * for its queue-thread views) goes as timeOriginMs + nowMs().
   */
  readonly timeOriginMs: number;
  /** Call `fire` once after `delayMs`; the returned function cancels it. */
  setTimer(delayMs: number, fire: () => void): () => void;
}

export const systemClock: Clock = {
  nowMs: () => performance.now(),
  timeOriginMs: performance.timeOrigin,
  setTimer(delayMs, fire) {
    const timer = setTimeout(fire, delayMs);
    return () => clearTimeout(timer);
  },
};
