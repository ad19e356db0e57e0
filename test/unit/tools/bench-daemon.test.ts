import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';

import { cpuSplitOfStat, cpuTicksOfStat, sleepsOfStatus } from '../../../tools/bench-daemon';

describe('bench: the daemon CPU time read from /proc/PID/stat', () => {
  it('adds utime and stime (fields 14 and 15), also past a command name with spaces and parentheses', () => {
    const stat = '4242 (node (ublk) d) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 11 0 100 0 0';
    assert.equal(cpuTicksOfStat(stat), 1234 + 567);
    assert.deepEqual(cpuSplitOfStat(stat), { userTicks: 1234, systemTicks: 567 });
  });

  it('reads the sleeps (voluntary context switches) of a thread, not the involuntary ones', () => {
    const status = 'Name:\tnode\nvoluntary_ctxt_switches:\t812\nnonvoluntary_ctxt_switches:\t33\n';
    assert.equal(sleepsOfStatus(status), 812);
    const mine = sleepsOfStatus(readFileSync('/proc/thread-self/status', 'latin1'));
    assert.ok(Number.isInteger(mine) && mine >= 0, String(mine));
  });

  it('reads this process: a number that grows as it burns CPU', () => {
    const before = cpuTicksOfStat(readFileSync('/proc/self/stat', 'latin1'));
    const until = Date.now() + 60;
    while (Date.now() < until); // about 6 ticks at 100 Hz
    const after = cpuTicksOfStat(readFileSync('/proc/self/stat', 'latin1'));
    assert.ok(Number.isInteger(before) && after > before, `${before} -> ${after}`);
  });
});
