import { performance } from 'node:perf_hooks';

/**
 * Time as the time-based targets (flakey, delay) see it: a monotonic millisecond clock and
 * one-shot timers. The daemon uses the system's; host tests pass a ManualClock
 * (src/testing/manual-clock.ts) and move time by hand.
 */
export interface Clock {
  /** Monotonic milliseconds; only differences mean anything. */
  nowMs(): number;
  /** Call `fire` once after `delayMs`; the returned function cancels it. */
  setTimer(delayMs: number, fire: () => void): () => void;
}

export const systemClock: Clock = {
  nowMs: () => performance.now(),
  setTimer(delayMs, fire) {
    const timer = setTimeout(fire, delayMs);
    return () => clearTimeout(timer);
  },
};
