import { createHook } from 'node:async_hooks';

import type { IoRing, WaitClock, WaitOptions } from '../io/ring';

/** What a RingTurns drives, and asks before each wait. */
export interface RingTurnsOptions {
  readonly ring: Pick<IoRing, 'waitAndDispatch' | 'submitQueued'>;
  /** How long the next wait may sleep, in milliseconds. */
  waitMs(): number;
  /** How the next wait waits (always with queued: 'hold'). */
  waitOptions(): WaitOptions;
  /** Before each wait: hand other threads what the last callbacks queued for them. */
  beforeWait?(): void;
  /** Something outside the ring needs the event loop (a control step opening files): end the turn. */
  mustYield(): boolean;
  /** Checked before every wait; once true, `onStop` runs instead of the next turn and no turn follows. */
  stopping(): boolean;
  onStop(): void;
  /** A completion callback threw; the loop goes on. */
  onError(error: unknown): void;
  /**
   * After each wait: how long it waited in the kernel (not the callbacks it ran after), and how
   * many callbacks it ran. Waits are timed only when this is given.
   */
  waited?(waitMicros: number, completions: number): void;
}

/**
 * Waits one turn may chain while no asynchronous work appears: bounds how long timers set
 * before the turn (none on the request path) wait for libuv.
 */
export const WAITS_PER_TURN = 64;

/**
 * Drives a caller-driven ring from a thread that has nothing else to wait on (a queue thread).
 *
 * One turn waits in the ring and runs what completed, again and again while that work stays
 * synchronous; then lets the microtasks and libuv run. A turn of libuv costs as much as a
 * request under TCG (an epoll_wait and the immediate's callback), and the COMMIT_AND_FETCH a
 * request ends with can ride in the io_uring_enter of the next wait, so a request served between
 * two waits of one turn costs one syscall, as in a C server's loop.
 *
 * Once anything asynchronous was queued (a promise made or resolved: a control step, a flush's
 * `.then`; an immediate; a timer), the turn ends: a promise continuation must not sit behind a
 * blocking wait. An async hook notices, so no target has to know this rule. Each turn is its
 * own macrotask, so everything the previous one queued has run before this one waits.
 */
export class RingTurns {
  private asyncWorkQueued = false;
  private readonly hook = createHook({
    init: () => {
      this.asyncWorkQueued = true;
    },
    promiseResolve: () => {
      this.asyncWorkQueued = true;
    },
  });
  private started = false;
  /** The last wait's length, which the ring fills when `waited` wants it. */
  private readonly clock: WaitClock = { waitMicros: 0 };

  constructor(private readonly options: RingTurnsOptions) {}

  /** Turns run from the next macrotask on, until `stopping()`. */
  start(): void {
    if (this.started) throw new Error('RingTurns: already started');
    this.started = true;
    this.hook.enable();
    setImmediate(this.turn);
  }

  private readonly turn = (): void => {
    const { ring, waited } = this.options;
    if (this.options.stopping()) {
      this.hook.disable();
      this.options.onStop();
      return;
    }
    this.asyncWorkQueued = false;
    try {
      for (let wait = 0; wait < WAITS_PER_TURN; wait++) {
        this.options.beforeWait?.();
        const ran = ring.waitAndDispatch(this.options.waitMs(), this.options.waitOptions(), waited ? this.clock : undefined);
        waited?.(this.clock.waitMicros, ran);
        if (ran === 0 || this.asyncWorkQueued || this.options.mustYield() || this.options.stopping()) break;
      }
      ring.submitQueued();
    } catch (error) {
      this.options.onError(error);
    }
    setImmediate(this.turn);
  };
}
