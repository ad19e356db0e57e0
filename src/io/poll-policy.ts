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

/**
 * How many times the client's budget a thread polls for the backing I/O of its only request in
 * service. At QD 1 over a loop device under TCG the read outlasts the client's 200 us budget, so
 * the thread slept and was woken for nearly every read; the loop device's worker often runs on
 * the thread's CPU, which each poll's sched_yield hands over. In a same-boot A/B over a loop
 * device (tools/ab-guest.sh, 10 pairs, both orders) 1000 us served QD 1 randread 1.23-1.44x (ahead
 * in 16 of 20 pairs) and randwrite 1.40-1.67x (13 of 20); QD 32, whose waits find batches and
 * poll little, moved 0.93-1.12x, and the untouched null control 1.06-1.12x. With more requests
 * in service the wait is for whichever completes first, and the client's budget stays.
 */
export const LONE_BACKING_POLL_FACTOR = 5;

/**
 * The gaps a queue thread's wait can be for, each with its own PollPolicy: the client's next
 * request (nothing in service), the backing I/O of the only request in service, or of several.
 * One policy for the client and the backing turned polling off for the client's gap after every
 * slow read.
 */
export class WaitPolicies {
  readonly client: PollPolicy;
  readonly loneBacking: PollPolicy;
  readonly backing: PollPolicy;

  constructor(clientBudgetMicros: number) {
    this.client = new PollPolicy(clientBudgetMicros);
    this.loneBacking = new PollPolicy(clientBudgetMicros * LONE_BACKING_POLL_FACTOR);
    this.backing = new PollPolicy(clientBudgetMicros);
  }

  /** The policy of the next wait, with `requestsInService` requests handed to targets and not answered. */
  pick(requestsInService: number): PollPolicy {
    if (requestsInService === 0) return this.client;
    return requestsInService === 1 ? this.loneBacking : this.backing;
  }
}
