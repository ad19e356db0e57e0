/**
 * A wait that ran more completions than this found a client with requests to spare: the next
 * comes within one request's service time, so a sleeping wait seldom sleeps, and polling there
 * cost null randread QD 32 0.81x in a same-boot A/B (tools/ab-guest.sh).
 */
export const POLL_MAX_BATCH = 4;

/**
 * How long a thread that waits in its ring polls before it sleeps (WaitOptions.pollMicros).
 *
 * Sleeping costs a thread more than the request it wakes for when the next request comes soon:
 * under qemu TCG a wakeup takes hundreds of microseconds, and at QD 1 the next request comes one
 * client round trip after the last answer. So poll after a wait that found work within twice
 * the budget, and sleep at once after one that took longer or timed out (the client went idle,
 * or sends slowly) or found a batch (the client keeps many requests in flight). An idle thread
 * polls once, at the end of a burst, and never while idle.
 */
export class PollPolicy {
  private polling = true;

  /** `budgetMicros` 0 turns polling off. */
  constructor(readonly budgetMicros: number) {
    if (!Number.isFinite(budgetMicros) || budgetMicros < 0) throw new RangeError(`poll budget must be 0 or more microseconds, not ${budgetMicros}`);
  }

  /** Whether the next wait polls for the budget before it sleeps. */
  get pollsNext(): boolean {
    return this.polling && this.budgetMicros > 0;
  }

  /**
   * A wait ended after `waitMicros` in the kernel (not counting the callbacks it ran: a slow
   * target is not a slow client), having run `completions` callbacks (0: it timed out).
   */
  waited(waitMicros: number, completions: number): void {
    this.polling = completions > 0 && completions <= POLL_MAX_BATCH && waitMicros <= 2 * this.budgetMicros;
  }
}
