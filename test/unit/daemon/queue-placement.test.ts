import { strict as assert } from 'node:assert';

import { DEFAULT_QUEUE_PLACEMENT, queuePlacementFromEnvironment, queueThreadCpus, sameCpus } from '../../../src/daemon/queue-placement';

describe('queue placement: the CPUs a queue thread runs on', () => {
  // The guest's layout in the bench's queue part: CPUs 0-3 possible, a 2-queue device maps 0-1 to
  // queue 0 and 2-3 to queue 1.
  const allowed = [0, 1, 2, 3];

  it("'apart' keeps a thread off the CPUs that submit to its queues", () => {
    assert.deepEqual(queueThreadCpus('apart', allowed, [[0, 1]]), [2, 3]);
    assert.deepEqual(queueThreadCpus('apart', allowed, [[2, 3]]), [0, 1]);
    // Queue 1 of a 2-queue device and of a 4-queue one: off both.
    assert.deepEqual(queueThreadCpus('apart', allowed, [[2, 3], [1]]), [0]);
  });

  it("'with' keeps it on them, as ublksrv does", () => {
    assert.deepEqual(queueThreadCpus('with', allowed, [[0, 1]]), [0, 1]);
    assert.deepEqual(queueThreadCpus('with', allowed, [[2, 3], [1]]), [1, 2, 3]);
  });

  it("'any' leaves it where it may run", () => {
    assert.deepEqual(queueThreadCpus('any', allowed, [[0, 1]]), allowed);
  });

  it('never goes outside the CPUs the thread was allowed (a taskset of the daemon), and never to none', () => {
    assert.deepEqual(queueThreadCpus('apart', [0, 1], [[0]]), [1]);
    assert.deepEqual(queueThreadCpus('with', [0, 1], [[1, 2, 3]]), [1]);
    // A 1-queue device's queue takes every CPU's requests: nowhere is apart, so the thread stays.
    assert.deepEqual(queueThreadCpus('apart', allowed, [allowed]), allowed);
    // Submitters all outside the allowed CPUs: nowhere is with them.
    assert.deepEqual(queueThreadCpus('with', [0, 1], [[2, 3]]), [0, 1]);
    // No device served, or no affinity known: the allowed CPUs.
    assert.deepEqual(queueThreadCpus('apart', allowed, []), allowed);
    assert.deepEqual(queueThreadCpus('with', allowed, [[]]), allowed);
  });

  it('answers in ascending order without repeats, whatever order it was given', () => {
    assert.deepEqual(queueThreadCpus('any', [3, 1, 1, 0], []), [0, 1, 3]);
    assert.ok(sameCpus([0, 2], [0, 2]));
    assert.ok(!sameCpus([0, 2], [0, 2, 3]));
    assert.ok(!sameCpus([0, 2], [0, 3]));
  });

  it('reads UBLK_DM_QUEUE_CPUS: the default when unset, the three placements, anything else refused', () => {
    assert.equal(DEFAULT_QUEUE_PLACEMENT, 'apart');
    assert.equal(queuePlacementFromEnvironment({}), 'apart');
    assert.equal(queuePlacementFromEnvironment({ UBLK_DM_QUEUE_CPUS: '' }), 'apart');
    for (const placement of ['apart', 'with', 'any'] as const) assert.equal(queuePlacementFromEnvironment({ UBLK_DM_QUEUE_CPUS: placement }), placement);
    for (const bad of ['APART', 'same', '0,1']) {
      assert.throws(() => queuePlacementFromEnvironment({ UBLK_DM_QUEUE_CPUS: bad }), /UBLK_DM_QUEUE_CPUS must be "apart", "with" or "any"/, bad);
    }
  });
});
