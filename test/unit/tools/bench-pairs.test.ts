import { strict as assert } from 'node:assert';

import { formatPairReport, pollStatus, type PairReport } from '../../../tools/bench-pairs';
import { flakeyPair, reloadedMirrorPair, stripedPair } from '../../../tools/bench-pair-targets';
import { mirrorInSync } from '../../../tools/bench-mirror';

describe('bench: pair parts (ours beside the kernel\'s same table)', () => {
  it('prints each cell with both sides\' IOPS and their ratio, and a failure under them', () => {
    const report: PairReport = {
      title: 'flakey, always up (ours/dm-flakey)',
      kernelName: 'dm-flakey',
      results: [
        { side: 'kernel', workload: 'randread 4k', iodepth: 1, iops: 2000, mibPerSecond: 8 },
        { side: 'ours', workload: 'randread 4k', iodepth: 1, iops: 3000, mibPerSecond: 12 },
      ],
      ratios: [{ workload: 'randread 4k', iodepth: 1, ratio: 1.5 }],
      error: 'fio: no such device\nmore',
    };
    const lines = formatPairReport(report).split('\n');
    assert.equal(lines[1], 'flakey, always up (ours/dm-flakey)');
    assert.match(lines[3]!, /^randread 4k +1 +2000 +3000 +1\.50$/);
    assert.equal(lines[4], 'flakey bench FAILED: fio: no such device');
  });

  it('builds our tables from the backing it is given (the kernel\'s come from the same text)', async () => {
    const tables: string[] = [];
    const defer = () => undefined;
    const send = (async (request: { verb: string; table?: string }) => {
      if (request.table !== undefined) tables.push(request.table);
      return { blockPath: '/dev/ublkb9' };
    }) as never;
    await stripedPair().ours({ backing: ['/a', '/b', '/c', '/d'], defer }, send);
    assert.deepEqual(tables, ['0 524288 striped 4 128 /a 0 /b 0 /c 0 /d 0']);
    await flakeyPair().ours({ backing: ['/f'], defer }, send);
    assert.equal(tables[1], '0 524288 flakey /f 0 3600 0');
    assert.deepEqual(reloadedMirrorPair(1024).files.map((f) => f.content), ['random', 'zeros', 'zeros']);
  });

  it('waits for a mirror until every region is in sync with both legs alive', () => {
    assert.equal(mirrorInSync('0 8 mirror 2 a b 8/8 1 AA 1 core'), true);
    assert.equal(mirrorInSync('0 8 mirror 2 a b 3/8 1 AA 1 core'), false, 'still copying');
    assert.equal(mirrorInSync('0 8 mirror 2 a b 8/8 1 AD 1 core'), false, 'a leg failed');
  });

  it('polls a status until it says done, and gives up with the last line', async () => {
    const lines = ['0 8 mirror 2 a b 3/8 1 AA 1 core', '0 8 mirror 2 a b 8/8 1 AA 1 core'];
    let reads = 0;
    await pollStatus(async () => lines[Math.min(reads++, 1)]!, (s) => s.includes('8/8'), 5);
    assert.equal(reads, 2);
    await assert.rejects(pollStatus(async () => 'stuck', () => false, 0), /gave up after 0 s waiting on status: stuck/);
  });
});
