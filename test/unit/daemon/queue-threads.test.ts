import { strict as assert } from 'node:assert';

import { DEFAULT_POLL_MICROS, ForwardBuffers, isServedByQueueThreads, pollMicrosFromEnvironment, queueLoopFromEnvironment, tablePlan } from '../../../src/daemon/queue-threads';
import { isDirectIoAligned } from '../../../src/io/native';
import type { DeviceTable } from '../../../src/dm/mapped-device';
import { ALL_CAPABILITIES, type Target, type ThreadModel } from '../../../src/dm/target';
import type { BlockDevice } from '../../../src/io/block-device';

function fakeTarget(type: string, threadModel: ThreadModel, tableText: string): Target {
  return { type, threadModel, capabilities: ALL_CAPABILITIES, map: (_bio, done) => done(0), status: (kind) => (kind === 'table' ? tableText : 'info'), devices: () => [], destroy: async () => {} };
}

function fakeTable(segments: Array<[number, Target]>, devices: Array<Pick<BlockDevice, 'tableName' | 'key'>>): DeviceTable {
  let start = 0;
  const laidOut = segments.map(([lengthSectors, target]) => {
    const segment = { startSector: start, lengthSectors, target };
    start += lengthSectors;
    return segment;
  });
  return { segments: laidOut, sizeSectors: start, capabilities: ALL_CAPABILITIES, devices: () => devices as BlockDevice[], destroy: async () => {} };
}

describe('queue threads: which tables they copy', () => {
  it('plans a copy of a stateless table from its own table text, naming each device with its identity', () => {
    const table = fakeTable(
      [
        [2048, fakeTarget('linear', 'any-queue', '/srv/a.img 0')],
        [8, fakeTarget('zero', 'any-queue', '')],
        [1024, fakeTarget('linear', 'any-queue', '7:0 2048')],
      ],
      [
        { tableName: '/srv/a.img', key: 'file:64:12' },
        { tableName: '7:0', key: 'blk:7:0' },
      ],
    );
    assert.deepEqual(tablePlan(table), {
      text: '0 2048 linear /srv/a.img 0\n2048 8 zero \n2056 1024 linear 7:0 2048',
      devices: [
        { spec: '/srv/a.img', key: 'file:64:12' },
        { spec: '7:0', key: 'blk:7:0' },
      ],
    });
  });

  it('plans no copy when any target keeps one instance (the threads forward)', () => {
    const table = fakeTable(
      [
        [2048, fakeTarget('linear', 'any-queue', '/srv/a.img 0')],
        [2048, fakeTarget('delay', 'owner-thread', '/srv/a.img 2048 10')],
      ],
      [{ tableName: '/srv/a.img', key: 'file:64:12' }],
    );
    assert.equal(tablePlan(table), null);
  });

  it('plans a copy with a view of an owner-thread target that offers one, carrying the memory it shares', () => {
    const share = new SharedArrayBuffer(8);
    const origin: Target = { ...fakeTarget('snapshot-origin', 'owner-thread', '7:0'), queueViewShare: () => share };
    const table = fakeTable(
      [
        [2048, fakeTarget('linear', 'any-queue', '/srv/a.img 0')],
        [4096, origin],
      ],
      [{ tableName: '/srv/a.img', key: 'file:64:12' }, { tableName: '7:0', key: 'blk:7:0' }],
    );
    const plan = tablePlan(table);
    assert.equal(plan?.text, '0 2048 linear /srv/a.img 0\n2048 4096 snapshot-origin 7:0');
    assert.deepEqual(plan?.views, [{ startSector: 2048, share }]);
    assert.equal(plan?.views?.[0]?.share, share, 'the same memory, not a copy');
    const withoutView: Target = { ...origin, queueViewShare: () => undefined };
    assert.equal(tablePlan(fakeTable([[4096, withoutView]], [])), null);
  });

  it('serves from the threads at create a table whose owner-thread targets\' views serve all their I/O (striped), not one whose views forward part (snapshot-origin)', () => {
    const linear = fakeTarget('linear', 'any-queue', '/srv/a.img 0');
    const striped: Target = { ...fakeTarget('striped', 'owner-thread', '2 8 7:0 0 7:1 0'), queueViewShare: () => new SharedArrayBuffer(0), queueViewServesAll: true };
    const origin: Target = { ...fakeTarget('snapshot-origin', 'owner-thread', '7:0'), queueViewShare: () => new SharedArrayBuffer(8) };
    const delay = fakeTarget('delay', 'owner-thread', '/srv/a.img 0 10');
    assert.equal(isServedByQueueThreads(fakeTable([[2048, linear], [2048, striped]], [])), true);
    assert.equal(isServedByQueueThreads(fakeTable([[2048, linear], [2048, origin]], [])), false);
    assert.equal(isServedByQueueThreads(fakeTable([[2048, striped], [2048, delay]], [])), false);
    // Serving all of it takes a view to serve it with.
    assert.equal(isServedByQueueThreads(fakeTable([[2048, { ...striped, queueViewShare: () => undefined }]], [])), false);
  });

  it('reads UBLK_DM_QUEUE_LOOP: threads by default, main when asked, anything else refused', () => {
    assert.equal(queueLoopFromEnvironment({}), 'threads');
    assert.equal(queueLoopFromEnvironment({ UBLK_DM_QUEUE_LOOP: 'threads' }), 'threads');
    assert.equal(queueLoopFromEnvironment({ UBLK_DM_QUEUE_LOOP: 'main' }), 'main');
    assert.throws(() => queueLoopFromEnvironment({ UBLK_DM_QUEUE_LOOP: 'Main' }), /must be "main" or "threads"/);
  });

  it('reads UBLK_DM_POLL_US: the default when unset, 0 to never poll, anything but whole microseconds refused', () => {
    assert.equal(pollMicrosFromEnvironment({}), DEFAULT_POLL_MICROS);
    assert.equal(pollMicrosFromEnvironment({ UBLK_DM_POLL_US: '' }), DEFAULT_POLL_MICROS);
    assert.equal(pollMicrosFromEnvironment({ UBLK_DM_POLL_US: '0' }), 0);
    assert.equal(pollMicrosFromEnvironment({ UBLK_DM_POLL_US: '250' }), 250);
    for (const bad of ['-1', '1.5', '5e2', ' 10', 'fast']) {
      assert.throws(() => pollMicrosFromEnvironment({ UBLK_DM_POLL_US: bad }), /UBLK_DM_POLL_US must be a whole number of microseconds/, bad);
    }
  });
});

describe('queue threads: buffers of forwarded requests', () => {
  it('hands a buffer given back to the next request of its size, page-aligned either way', () => {
    const buffers = new ForwardBuffers();
    const first = buffers.take(4096);
    assert.equal(first.byteLength, 4096);
    assert.ok(isDirectIoAligned(first, first.byteLength, 4096));
    buffers.give(first);
    assert.equal(buffers.take(8192).byteLength, 8192, 'another size gets its own');
    assert.equal(buffers.take(4096), first);
    assert.notEqual(buffers.take(4096), first, 'taken twice');
  });

  it('keeps idle buffers only up to its byte budget', () => {
    const buffers = new ForwardBuffers({ keptBytes: 8192, busyKeptBytes: 8192 });
    const [a, b, c] = [buffers.take(4096), buffers.take(4096), buffers.take(4096)];
    for (const buffer of [a, b, c]) buffers.give(buffer);
    const again = new Set([buffers.take(4096), buffers.take(4096), buffers.take(4096)]);
    assert.equal([a, b, c].filter((buffer) => again.has(buffer)).length, 2);
  });
});
