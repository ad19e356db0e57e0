import assert from 'node:assert/strict';
import { parseCommand, UsageError } from '../../../src/cli/cli';
import { formatSnapshotList, originTable, parseChunkSize, parseUsage } from '../../../src/cli/snapshot';

describe('CLI: snapshot commands', () => {
  it('parses snapshot create with sizes in the units LVM users type', () => {
    assert.deepEqual(parseCommand(['snapshot', 'create', 's1', '--origin', 'base', '--cow', '/var/c.img', '--size', '64m', '--chunk', '8k']), {
      verb: 'snapshot-create', name: 's1', origin: 'base', cow: '/var/c.img', cowBytes: 64 << 20, chunkSectors: 16, store: 'P',
    });
    assert.equal((parseCommand(['snapshot', 'create', 's1', '--origin', 'b', '--cow', 'c', '--chunk', '32s']) as { chunkSectors: number }).chunkSectors, 32);
    assert.throws(() => parseCommand(['snapshot', 'create', 's1', '--origin', 'b', '--cow', 'c', '--chunk', '4q']), UsageError);
    assert.throws(() => parseCommand(['snapshot', 'create', 's1', '--cow', 'c']), UsageError, '--origin is required');
  });

  it('parses snapshot merge and ls', () => {
    assert.deepEqual(parseCommand(['snapshot', 'merge', 's1', '--wait']), { verb: 'snapshot-merge', name: 's1', wait: true, json: false });
    assert.deepEqual(parseCommand(['snapshot', 'ls', '--json']), { verb: 'snapshot-ls', json: true });
  });

  it('takes an origin only from a one-line linear-at-0 or snapshot-origin table', () => {
    const report = (type: string, text: string) => ({ name: 'base', targets: [{ startSector: 0, lengthSectors: 2048, type, text }] });
    assert.deepEqual(originTable(report('linear', '7:0 0')), { lengthSectors: 2048, device: '7:0', type: 'linear' });
    assert.deepEqual(originTable(report('snapshot-origin', '/img')), { lengthSectors: 2048, device: '/img', type: 'snapshot-origin' });
    assert.throws(() => originTable(report('linear', '7:0 8')), /one-line table/);
    assert.throws(() => originTable(report('zero', '')), /has zero/);
  });

  it('reads snapshot status lines and chunk sizes', () => {
    assert.deepEqual(parseUsage('56/512 16'), { state: 'ok', allocatedSectors: 56, totalSectors: 512, metadataSectors: 16 });
    assert.deepEqual(parseUsage('Invalid'), { state: 'Invalid' });
    assert.equal(parseChunkSize('64k'), 128);
  });

  it('lists snapshots in aligned columns', () => {
    const text = formatSnapshotList([{ snapshot: 's1', origin: 'base', cow: '/c.img', store: 'P', chunkSectors: 8, status: '56/512 16', usedPercent: 10.9 }]);
    assert.equal(text, 'SNAPSHOT  ORIGIN  COW     STORE  CHUNK  USE%\ns1        base    /c.img  P      8      10.9\n');
  });
});

describe('CLI: wait --progress on a mirror', () => {
  it('sums in-sync regions over mirror segments until all are in sync', async () => {
    const { waitForResync } = await import('../../../src/cli/resync');
    const lines = ['2 7:0 7:1 10/32 1 AA 1 core', '2 7:0 7:1 32/32 1 AA 1 core'];
    const seen: Array<{ done: number; total: number; finished: boolean }> = [];
    const send = (async () => [{ name: 'm', targets: [{ startSector: 0, lengthSectors: 8, type: 'mirror', text: lines.shift()! }] }]) as never;
    await waitForResync(send, 'm', (p) => seen.push({ done: p.done, total: p.total, finished: p.finished }));
    assert.deepEqual(seen, [{ done: 10, total: 32, finished: false }, { done: 32, total: 32, finished: true }]);
  });
});
