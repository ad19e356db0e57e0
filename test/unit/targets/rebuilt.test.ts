import assert from 'node:assert/strict';
import { MemoryDevice } from '../../../src/testing/memory-device';
import { loadMemoryTable } from '../../../src/testing/tables';

/**
 * A saved table rebuilt by a new daemon (after a restart or a crash): targets whose state lived
 * only in the old daemon's memory say so and come back in a state that does not lie.
 */
describe('tables rebuilt by a new daemon (TargetContext.rebuilt)', () => {
  let warnings: string[];
  const rebuilt = { warn: (message: string) => warnings.push(message) };
  beforeEach(() => {
    warnings = [];
  });

  function snapshotDevices(): Record<string, MemoryDevice> {
    return { origin: new MemoryDevice(64), cow: new MemoryDevice(256) };
  }

  it('a transient (N) snapshot comes back Invalid, with a warning', async () => {
    const table = await loadMemoryTable('0 64 snapshot origin cow N 8', snapshotDevices(), { rebuilt });
    try {
      assert.equal(table.segments[0]!.target.status('info'), 'Invalid');
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, /transient \(N\) snapshot .* did not survive .* Invalid/);
    } finally {
      await table.destroy();
    }
  });

  it('a transient snapshot created anew is valid, and a persistent one rebuilt stays valid, both without a warning', async () => {
    const fresh = await loadMemoryTable('0 64 snapshot origin cow N 8', snapshotDevices());
    const persistent = await loadMemoryTable('0 64 snapshot origin cow P 8', snapshotDevices(), { rebuilt });
    try {
      assert.notEqual(fresh.segments[0]!.target.status('info'), 'Invalid');
      assert.notEqual(persistent.segments[0]!.target.status('info'), 'Invalid');
      assert.deepEqual(warnings, []);
    } finally {
      await fresh.destroy();
      await persistent.destroy();
    }
  });

  function mirrorDevices(): Record<string, MemoryDevice> {
    return { a: new MemoryDevice(64), b: new MemoryDevice(64), log: new MemoryDevice(64) };
  }

  /** `<in_sync>/<regions>` of a mirror status line. */
  function syncCount(status: string): string {
    return / (\d+\/\d+) /.exec(status)![1]!;
  }

  it('a core-log mirror with nosync comes back with every region out of sync, with a warning', async () => {
    const fresh = await loadMemoryTable('0 64 mirror core 2 8 nosync 2 a 0 b 0', mirrorDevices());
    const table = await loadMemoryTable('0 64 mirror core 2 8 nosync 2 a 0 b 0', mirrorDevices(), { rebuilt });
    try {
      assert.equal(syncCount(fresh.segments[0]!.target.status('info')), '8/8', 'created anew, nosync means in sync');
      assert.equal(syncCount(table.segments[0]!.target.status('info')), '0/8', 'rebuilt, nothing is known to be in sync');
      assert.match(table.segments[0]!.target.status('table'), /^core 2 8 nosync 2 /, 'the table text keeps its nosync');
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, /core log .* did not survive .* all 8 regions are out of sync despite nosync/);
    } finally {
      await fresh.destroy();
      await table.destroy();
    }
  });

  it('a core-log mirror without nosync warns too; a disk-log mirror rebuilt does not', async () => {
    const core = await loadMemoryTable('0 64 mirror core 1 8 2 a 0 b 0', mirrorDevices(), { rebuilt });
    const disk = await loadMemoryTable('0 64 mirror disk 2 log 8 2 a 0 b 0', mirrorDevices(), { rebuilt });
    try {
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, /core log/);
    } finally {
      await core.destroy();
      await disk.destroy();
    }
  });
});
