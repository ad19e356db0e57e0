import { strict as assert } from 'node:assert';

import { POLL_MAX_BATCH, PollPolicy } from '../../../src/io/poll-policy';

describe('PollPolicy (poll the ring before sleeping while requests come soon)', () => {
  it('polls first, and again after every wait that found work within twice the budget', () => {
    const policy = new PollPolicy(500);
    assert.equal(policy.pollsNext, true);
    policy.waited(300, 1);
    assert.equal(policy.pollsNext, true);
    policy.waited(1000, 4);
    assert.equal(policy.pollsNext, true, 'a poll that ran out and a short sleep after it');
  });

  it('sleeps at once after a long gap or a timeout, and polls again once requests come soon', () => {
    const policy = new PollPolicy(500);
    policy.waited(1001, 1);
    assert.equal(policy.pollsNext, false, 'the client sends more slowly than the budget');
    policy.waited(1_000_000, 0);
    assert.equal(policy.pollsNext, false, 'idle: the wait timed out');
    policy.waited(5_000, 1);
    assert.equal(policy.pollsNext, false, 'the first request after idle');
    policy.waited(400, 1);
    assert.equal(policy.pollsNext, true, 'the next came within the budget');
  });

  it('sleeps at once after a wait that found a batch: a deep client needs no poll', () => {
    const policy = new PollPolicy(500);
    policy.waited(10, POLL_MAX_BATCH + 1);
    assert.equal(policy.pollsNext, false);
    policy.waited(10, POLL_MAX_BATCH);
    assert.equal(policy.pollsNext, true, 'a few at once: a shallow client still gets the poll');
  });

  it('never polls with a budget of 0, and refuses a negative one', () => {
    const policy = new PollPolicy(0);
    policy.waited(0, 1);
    assert.equal(policy.pollsNext, false);
    assert.throws(() => new PollPolicy(-1), RangeError);
  });
});
