import { strict as assert } from 'node:assert';

import { kernelCollaborators } from '../../../src/daemon/kernel';
import { QUEUE_THREADS, ThreadedDispatcher } from '../../../src/daemon/queue-threads';
import { Dispatcher } from '../../../src/dm/dispatcher';
import type { DeviceTable } from '../../../src/dm/mapped-device';
import { DaemonScope } from '../../../src/dm/scope';
import { ALL_CAPABILITIES, type Target, type ThreadModel } from '../../../src/dm/target';

function tableOf(...threadModels: Array<ThreadModel | 'owner-thread with a view'>): DeviceTable {
  const segments = threadModels.map((model, index) => {
    const threadModel: ThreadModel = model === 'any-queue' ? 'any-queue' : 'owner-thread';
    const target: Target = {
      ...(model === 'owner-thread with a view' ? { queueViewShare: () => new SharedArrayBuffer(8) } : {}),
      type: threadModel === 'any-queue' ? 'linear' : 'striped',
      threadModel,
      capabilities: ALL_CAPABILITIES,
      map: (_bio, done) => done(0),
      status: (kind) => (kind === 'table' ? '/srv/a.img 0' : ''),
      devices: () => [],
      destroy: async () => {},
    };
    return { startSector: index * 2048, lengthSectors: 2048, target };
  });
  return { segments, sizeSectors: segments.length * 2048, capabilities: ALL_CAPABILITIES, devices: () => [], destroy: async () => {} };
}

describe('daemon: where a new device is served', () => {
  let scope: DaemonScope;

  beforeEach(() => {
    scope = new DaemonScope();
  });

  afterEach(() => {
    scope.get(QUEUE_THREADS).close();
  });

  it('gives a stateless table to the queue threads', () => {
    const dispatcher = kernelCollaborators(scope, 'threads').createDispatcher(tableOf('any-queue', 'any-queue'));
    assert.ok(dispatcher instanceof ThreadedDispatcher);
  });

  it('serves a table that keeps one instance of its state on the daemon thread, not forwarded from queue threads', () => {
    // A view (snapshot-origin's) would still forward its copy-outs: created so, it is served here too.
    for (const table of [tableOf('owner-thread'), tableOf('any-queue', 'owner-thread'), tableOf('owner-thread with a view')]) {
      const dispatcher = kernelCollaborators(scope, 'threads').createDispatcher(table);
      assert.ok(dispatcher instanceof Dispatcher, 'not a plain dispatcher');
      assert.ok(!(dispatcher instanceof ThreadedDispatcher), 'handed to the queue threads');
    }
  });

  it('serves every table on the daemon thread when UBLK_DM_QUEUE_LOOP=main', () => {
    const dispatcher = kernelCollaborators(scope, 'main').createDispatcher(tableOf('any-queue'));
    assert.ok(dispatcher instanceof Dispatcher);
  });
});
