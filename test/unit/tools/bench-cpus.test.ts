import { strict as assert } from 'node:assert';

import { spreadCpuSet } from '../../../tools/bench-cpus';

describe('bench queues: the CPUs spread over the possible ones', () => {
  it('puts 2 of 4 possible CPUs on 0 and 2, one per queue of a 2-queue device', () => {
    assert.deepEqual(spreadCpuSet([0, 1], 4), [0, 2]);
    assert.deepEqual(spreadCpuSet([0, 1], 8), [0, 4]);
    assert.deepEqual(spreadCpuSet([0, 1, 2, 3], 8), [0, 2, 4, 6]);
  });

  it('leaves a set that is spread already, every CPU online, or a count that does not divide', () => {
    assert.equal(spreadCpuSet([0, 2], 4), undefined);
    assert.equal(spreadCpuSet([0, 1], 2), undefined);
    assert.equal(spreadCpuSet([0, 1, 2], 4), undefined);
    assert.equal(spreadCpuSet([], 4), undefined);
  });
});
