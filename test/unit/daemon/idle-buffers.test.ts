import { strict as assert } from 'node:assert';

import { IdleBuffers } from '../../../src/daemon/idle-buffers';

const KIB = 1024;

describe('IdleBuffers: buffers of forwarded requests kept for the next request', () => {
  const kept = (buffers: IdleBuffers<string>, byteLength: number): string[] => {
    const out: string[] = [];
    for (let buffer = buffers.take(byteLength); buffer !== undefined; buffer = buffers.take(byteLength)) out.push(buffer);
    return out;
  };

  it('while busy keeps up to the busy limit, so that large requests in flight do not each make a buffer', () => {
    const buffers = new IdleBuffers<string>({ keptBytes: 64 * KIB, busyKeptBytes: 512 * KIB });
    for (let i = 0; i < 5; i++) assert.equal(buffers.give(`big${i}`, 128 * KIB), i < 4, `buffer ${i}`);
    assert.equal(buffers.aboveIdleLimit, true);
    assert.deepEqual(kept(buffers, 128 * KIB).sort(), ['big0', 'big1', 'big2', 'big3']);
    assert.equal(buffers.aboveIdleLimit, false);
  });

  it('gives memory back once a whole period passed with nothing taken, largest first, down to the idle limit', () => {
    const buffers = new IdleBuffers<string>({ keptBytes: 64 * KIB, busyKeptBytes: 1024 * KIB });
    // Requests came: each took (none kept yet: the caller made one) and gave back.
    for (let i = 0; i < 4; i++) assert.equal(buffers.take(128 * KIB), undefined);
    for (let i = 0; i < 20; i++) assert.equal(buffers.take(4 * KIB), undefined);
    for (let i = 0; i < 4; i++) buffers.give(`big${i}`, 128 * KIB);
    for (let i = 0; i < 20; i++) buffers.give(`small${i}`, 4 * KIB);
    const dropped: string[] = [];
    buffers.trimIfIdle((buffer) => dropped.push(buffer));
    assert.equal(dropped.length, 0, 'taken from since the last look: still busy');
    assert.equal(buffers.take(4 * KIB), 'small19');
    buffers.give('small19', 4 * KIB);
    buffers.trimIfIdle((buffer) => dropped.push(buffer));
    assert.equal(dropped.length, 0, 'a take in this period too');
    buffers.trimIfIdle((buffer) => dropped.push(buffer));
    assert.deepEqual(dropped.filter((name) => name.startsWith('big')).length, 4, 'every large one went');
    assert.equal(dropped.length, 4 + 4, 'then small ones, until 64 KiB are left: 16 of 4 KiB');
    assert.equal(kept(buffers, 128 * KIB).length, 0);
    assert.equal(kept(buffers, 4 * KIB).length, 16);
  });

  it('does nothing while no more than the idle limit is kept', () => {
    const buffers = new IdleBuffers<string>({ keptBytes: 64 * KIB, busyKeptBytes: 1024 * KIB });
    buffers.give('a', 64 * KIB);
    const dropped: string[] = [];
    buffers.trimIfIdle((buffer) => dropped.push(buffer));
    buffers.trimIfIdle((buffer) => dropped.push(buffer));
    assert.equal(dropped.length, 0);
    assert.equal(buffers.take(64 * KIB), 'a');
  });
});
