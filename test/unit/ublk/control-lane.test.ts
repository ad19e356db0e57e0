import assert from 'node:assert/strict';
import { ControlLane } from '../../../src/ublk/control';

/** A command the test completes by hand: `released` settles when `release` is called. */
function manual(log: string[], name: string) {
  let release!: () => void;
  let resolveResult!: (value: string) => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const result = new Promise<string>((resolve) => (resolveResult = resolve));
  return {
    submit: () => {
      log.push(`submit ${name}`);
      return { result, released };
    },
    complete: () => {
      log.push(`complete ${name}`);
      resolveResult(name);
      release();
    },
    /** The caller gives up (timeout) but the kernel still has the command. */
    giveUp: () => resolveResult(`${name} timed out`),
    release: () => release(),
  };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('ControlLane (one ublk control command at a time)', () => {
  it('submits each command only after the one before it has completed, in order', async () => {
    const lane = new ControlLane();
    const log: string[] = [];
    const a = manual(log, 'a');
    const b = manual(log, 'b');
    const c = manual(log, 'c');
    const results = [lane.run(a.submit), lane.run(b.submit), lane.run(c.submit)];
    await tick();
    assert.deepEqual(log, ['submit a']);
    a.complete();
    await tick();
    assert.deepEqual(log, ['submit a', 'complete a', 'submit b']);
    b.complete();
    await tick();
    c.complete();
    assert.deepEqual(await Promise.all(results), ['a', 'b', 'c']);
    assert.deepEqual(log, ['submit a', 'complete a', 'submit b', 'complete b', 'submit c', 'complete c']);
  });

  it('a command whose caller gave up still holds the lane until the kernel lets it go', async () => {
    const lane = new ControlLane();
    const log: string[] = [];
    const slow = manual(log, 'slow');
    const next = manual(log, 'next');
    const slowResult = lane.run(slow.submit);
    const nextResult = lane.run(next.submit);
    await tick();
    slow.giveUp();
    assert.equal(await slowResult, 'slow timed out');
    await tick();
    assert.deepEqual(log, ['submit slow'], 'the next command waits for the kernel, not for the caller');
    slow.release();
    await tick();
    assert.deepEqual(log, ['submit slow', 'submit next']);
    next.complete();
    assert.equal(await nextResult, 'next');
  });
});
