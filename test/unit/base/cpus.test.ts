import { strict as assert } from 'node:assert';
import { countCpuList, parseCpuList, possibleCpuCount } from '../../../src/base/cpus';
import { cpus } from 'node:os';

describe('CPU counts', function () {
  it('counts the CPUs a kernel CPU list names', function () {
    assert.equal(countCpuList('0\n'), 1);
    assert.equal(countCpuList('0-3'), 4);
    assert.equal(countCpuList('0-1,4-5,7'), 5);
  });

  it("reads blk-mq's cpu_list form too, with a space after each comma", function () {
    assert.deepEqual(parseCpuList('0, 1\n'), [0, 1]);
    assert.deepEqual(parseCpuList('2-3,5'), [2, 3, 5]);
  });

  it('refuses what is not a CPU list', function () {
    assert.throws(() => countCpuList(''), /not a CPU list/);
    assert.throws(() => countCpuList('3-1'), /not a CPU list/);
    assert.throws(() => countCpuList('a-b'), /not a CPU list/);
  });

  it('finds at least as many possible CPUs as online ones', function () {
    assert.ok(possibleCpuCount() >= cpus().length);
  });
});
