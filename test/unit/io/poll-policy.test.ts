import { strict as assert } from 'node:assert';

import { LONE_BACKING_POLL_FACTOR, POLL_MAX_BATCH, PollPolicy, WaitPolicies } from '../../../src/io/poll-policy';

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

describe('WaitPolicies (a queue thread\'s waits: for the client, for one backing I/O, for several)', () => {
  it('picks by the requests in service, and polls longer for the only one', () => {
    const policies = new WaitPolicies(200);
    assert.equal(policies.pick(0), policies.client);
    assert.equal(policies.pick(1), policies.loneBacking);
    assert.equal(policies.pick(2), policies.backing);
    assert.equal(policies.pick(128), policies.backing);
    assert.equal(policies.client.budgetMicros, 200);
    assert.equal(policies.backing.budgetMicros, 200);
    assert.equal(policies.loneBacking.budgetMicros, 200 * LONE_BACKING_POLL_FACTOR);
  });

  it('learns each gap apart: a slow read does not stop the poll for the client', () => {
    const policies = new WaitPolicies(200);
    policies.pick(1).waited(5_000, 1); // a read that outlasted even the longer budget
    assert.equal(policies.loneBacking.pollsNext, false);
    assert.equal(policies.client.pollsNext, true);
    assert.equal(policies.backing.pollsNext, true);
    // Within twice the longer budget counts as soon for the lone read, not for the client.
    policies.pick(1).waited(1_500, 1);
    assert.equal(policies.loneBacking.pollsNext, true);
    policies.pick(0).waited(1_500, 1);
    assert.equal(policies.client.pollsNext, false);
  });

  it('never polls with a client budget of 0 (UBLK_DM_POLL_US=0)', () => {
    const policies = new WaitPolicies(0);
    for (const inService of [0, 1, 2]) assert.equal(policies.pick(inService).pollsNext, false);
  });
});

