import { strict as assert } from 'node:assert';

import { RingTurns, WAITS_PER_TURN, type RingTurnsOptions } from '../../../src/daemon/ring-turns';
import type { WaitClock, WaitOptions } from '../../../src/io/ring';

const HOLD: WaitOptions = { queued: 'hold' };

/**
 * A ring whose waits run a scripted callback each: `script[i]` is what the i-th wait's
 * completion callback does, and returns how many callbacks it ran. Nothing blocks.
 */
class ScriptedRing {
  readonly log: string[] = [];
  waits = 0;

  constructor(private readonly script: (wait: number) => number) {}

  waitAndDispatch(_timeoutMs: number, _options: WaitOptions, clock?: WaitClock): number {
    const wait = this.waits++;
    this.log.push(`wait ${wait}`);
    // As the real ring: the clock gets the kernel wait's length (here 100 us per wait number).
    if (clock) clock.waitMicros = 100 * wait;
    return this.script(wait);
  }

  submitQueued(): void {
    this.log.push('submit');
  }
}

function turnsOver(ring: ScriptedRing, overrides: Partial<RingTurnsOptions> & { stopAfterWaits: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    new RingTurns({
      ring,
      waitMs: () => 0,
      waitOptions: () => HOLD,
      mustYield: () => false,
      stopping: () => ring.waits >= overrides.stopAfterWaits,
      onStop: resolve,
      onError: reject,
      ...overrides,
    }).start();
  });
}

describe('RingTurns (a queue thread waits in its ring, not in libuv)', () => {
  it('chains waits while their callbacks stay synchronous, up to WAITS_PER_TURN, then submits and yields', async () => {
    const ring = new ScriptedRing(() => 1);
    await turnsOver(ring, { stopAfterWaits: WAITS_PER_TURN + 1 });
    const firstSubmit = ring.log.indexOf('submit');
    assert.equal(firstSubmit, WAITS_PER_TURN, 'one turn waited WAITS_PER_TURN times before it submitted what was held');
  });

  it('calls beforeWait before every wait, so what the last callbacks queued for other threads is sent before the thread blocks', async () => {
    const ring = new ScriptedRing(() => 1);
    await turnsOver(ring, { stopAfterWaits: 3, beforeWait: () => ring.log.push('before') });
    assert.deepEqual(ring.log.slice(0, 6), ['before', 'wait 0', 'before', 'wait 1', 'before', 'wait 2']);
  });

  it('tells `waited` what the ring timed for each wait, and asks for no timing without it', async () => {
    const ring = new ScriptedRing(() => 2);
    const seen: Array<[number, number]> = [];
    await turnsOver(ring, { stopAfterWaits: 3, waited: (waitMicros, completions) => seen.push([waitMicros, completions]) });
    assert.deepEqual(seen.slice(0, 3), [[0, 2], [100, 2], [200, 2]]);

    const untimed = new ScriptedRing(() => 1);
    const clocks: Array<WaitClock | undefined> = [];
    const wait = untimed.waitAndDispatch.bind(untimed);
    untimed.waitAndDispatch = (timeoutMs, options, clock) => { clocks.push(clock); return wait(timeoutMs, options, clock); };
    await turnsOver(untimed, { stopAfterWaits: 2 });
    assert.deepEqual(clocks.slice(0, 2), [undefined, undefined]);
  });

  it('ends the turn at a wait that ran nothing (a timeout)', async () => {
    const ring = new ScriptedRing((wait) => (wait === 1 ? 0 : 1));
    await turnsOver(ring, { stopAfterWaits: 3 });
    assert.deepEqual(ring.log.slice(0, 3), ['wait 0', 'wait 1', 'submit']);
  });

  it('a promise continuation queued by a callback runs before the next wait, without any target asking for it', async () => {
    const order: string[] = [];
    const ring = new ScriptedRing((wait) => {
      order.push(`wait ${wait}`);
      if (wait === 0) void Promise.resolve().then(() => order.push('continuation'));
      return 1;
    });
    await turnsOver(ring, { stopAfterWaits: 3 });
    assert.deepEqual(order, ['wait 0', 'continuation', 'wait 1', 'wait 2']);
  });

  it('so does an immediate, and a promise a callback resolves', async () => {
    const order: string[] = [];
    let resolveFlush: (() => void) | undefined;
    const flushed = new Promise<void>((resolve) => (resolveFlush = resolve)).then(() => order.push('flushed'));
    const ring = new ScriptedRing((wait) => {
      order.push(`wait ${wait}`);
      if (wait === 1) setImmediate(() => order.push('immediate'));
      if (wait === 3) resolveFlush!();
      return 1;
    });
    await turnsOver(ring, { stopAfterWaits: 5 });
    await flushed;
    assert.deepEqual(order, ['wait 0', 'wait 1', 'immediate', 'wait 2', 'wait 3', 'flushed', 'wait 4']);
  });

  it('mustYield and stopping end the chain at once; a stop runs onStop instead of the next turn', async () => {
    let yieldNow = false;
    const ring = new ScriptedRing((wait) => {
      yieldNow = wait === 0;
      return 1;
    });
    await turnsOver(ring, { stopAfterWaits: 2, mustYield: () => yieldNow });
    assert.deepEqual(ring.log, ['wait 0', 'submit', 'wait 1', 'submit'], 'no wait after the stop was seen');
  });

  it('a callback that throws is reported and the loop goes on', async () => {
    const errors: unknown[] = [];
    const ring = new ScriptedRing((wait) => {
      if (wait === 0) throw new Error('boom');
      return 1;
    });
    await turnsOver(ring, { stopAfterWaits: 2, onError: (error) => errors.push(error) });
    assert.equal(errors.length, 1);
    assert.equal(ring.waits, 2);
  });
});
