import assert from 'node:assert/strict';
import { IoOp, NO_DATA, type Bio } from '../../../src/io/bio';
import { DaemonScope } from '../../../src/dm/scope';
import { TableError } from '../../../src/dm/table';
import type { MapOutcome } from '../../../src/dm/target';
import { builtInTargetTypes } from '../../../src/targets';
import type { DelayTarget } from '../../../src/targets/delay';
import { ManualClock } from '../../../src/testing/manual-clock';
import { MemoryDevice } from '../../../src/testing/memory-device';
import { loadMemoryTable } from '../../../src/testing/tables';

function bio(op: IoOp, sector: number, sectorCount: number, data: Uint8Array = NO_DATA): Bio {
  return { op, sector, sectorCount, data, fua: false, noUnmap: false };
}

/** Let completions already queued run: MemoryDevice answers through promises. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

async function delay(args: string, devices: Record<string, MemoryDevice>) {
  const clock = new ManualClock();
  const scope = new DaemonScope({ targetTypes: builtInTargetTypes, clock });
  const table = await loadMemoryTable(`0 64 delay ${args}`, devices, { scope });
  const target = table.segments[0]!.target as DelayTarget;
  const finished: Array<[string, MapOutcome]> = [];
  const submit = (label: string, b: Bio) => target.map(b, (outcome) => finished.push([label, outcome]));
  return { clock, target, finished, submit };
}

describe('targets: delay', () => {
  it('holds a read for its delay from arrival, then sends it to the device', async () => {
    const disk = new MemoryDevice(64);
    disk.contents.fill(5, 512, 1024);
    const { clock, target, finished, submit } = await delay('disk 0 100', { disk });
    const back = Buffer.alloc(512);
    submit('r', bio(IoOp.Read, 1, 1, back));
    assert.equal(target.status('info'), '1 0 0');
    clock.advance(99);
    await settle();
    assert.deepEqual(finished, []);
    assert.equal(disk.calls.read, 0);
    clock.advance(1);
    await settle();
    assert.deepEqual(finished, [['r', 512]]);
    assert.equal(back[0], 5);
    assert.equal(target.status('info'), '0 0 0');
  });

  it('releases due pieces in arrival order, and a later piece of a faster class first', async () => {
    const disk = new MemoryDevice(64);
    const { clock, target, finished, submit } = await delay('disk 0 50 disk 0 10', { disk });
    submit('read1', bio(IoOp.Read, 0, 1, Buffer.alloc(512)));
    clock.advance(5);
    submit('write1', bio(IoOp.Write, 1, 1, Buffer.alloc(512, 1)));
    submit('read2', bio(IoOp.Read, 2, 1, Buffer.alloc(512)));
    submit('write2', bio(IoOp.Write, 3, 1, Buffer.alloc(512, 2)));
    assert.equal(target.status('info'), '2 2 0');
    clock.advance(10); // writes due at 15
    await settle();
    assert.deepEqual(finished.map(([label]) => label), ['write1', 'write2']);
    clock.advance(100);
    await settle();
    assert.deepEqual(finished.map(([label]) => label), ['write1', 'write2', 'read1', 'read2']);
  });

  it('routes reads, writes and flushes to their own class devices (9 arguments)', async () => {
    const r = new MemoryDevice(64);
    const w = new MemoryDevice(72);
    const f = new MemoryDevice(64);
    const { clock, finished, submit } = await delay('r 0 0 w 8 0 f 0 20', { r, w, f });
    submit('read', bio(IoOp.Read, 0, 1, Buffer.alloc(512)));
    submit('write', bio(IoOp.Write, 0, 1, Buffer.alloc(512, 9)));
    submit('discard', bio(IoOp.Discard, 0, 1));
    submit('flush', bio(IoOp.Flush, 0, 0));
    await settle();
    assert.deepEqual(finished.map(([label]) => label), ['read', 'write', 'discard']);
    assert.equal(w.contents[8 * 512], 0, 'the discard after the write zeroed it');
    assert.deepEqual([r.calls.read, w.calls.write, w.calls.discard, f.calls.flush], [1, 1, 1, 0]);
    clock.advance(20);
    await settle();
    assert.equal(f.calls.flush, 1);
    assert.equal(w.calls.flush + r.calls.flush, 0);
  });

  it('with 6 arguments, flushes take the write class', async () => {
    const r = new MemoryDevice(64);
    const w = new MemoryDevice(64);
    const { target, submit } = await delay('r 0 0 w 0 30', { r, w });
    submit('flush', bio(IoOp.Flush, 0, 0));
    assert.equal(target.status('info'), '0 0 1');
    assert.equal(target.status('table'), `${r.tableName} 0 0 ${w.tableName} 0 30`);
  });

  it('presuspend sends everything held at once and stops delaying until resume', async () => {
    const disk = new MemoryDevice(64);
    const { clock, target, finished, submit } = await delay('disk 0 1000', { disk });
    submit('a', bio(IoOp.Write, 0, 1, Buffer.alloc(512)));
    submit('b', bio(IoOp.Read, 0, 1, Buffer.alloc(512)));
    await target.presuspend!();
    await settle();
    assert.deepEqual(finished.map(([label]) => label), ['a', 'b']);
    submit('c', bio(IoOp.Read, 0, 1, Buffer.alloc(512)));
    await settle();
    assert.equal(finished.length, 3, 'not delayed while suspending');
    await target.resume!();
    submit('d', bio(IoOp.Read, 0, 1, Buffer.alloc(512)));
    await settle();
    assert.equal(finished.length, 3, 'delayed again after resume');
    assert.equal(clock.pendingTimerCount, 1);
  });

  it('delay 0 passes straight through without a timer', async () => {
    const disk = new MemoryDevice(64);
    const { clock, finished, submit } = await delay('disk 0 0', { disk });
    submit('w', bio(IoOp.Write, 0, 1, Buffer.alloc(512)));
    await settle();
    assert.equal(finished.length, 1);
    assert.equal(clock.pendingTimerCount, 0);
  });

  it('table and status print like the kernel (targets.md §10)', async () => {
    const leg2 = new MemoryDevice(8192, { tableName: '254:5' });
    const leg1 = new MemoryDevice(8192, { tableName: '254:4' });
    const scope = new DaemonScope({ targetTypes: builtInTargetTypes, clock: new ManualClock() });
    const one = (await loadMemoryTable('0 8192 delay leg2 0 10', { leg2 }, { scope })).segments[0]!.target;
    assert.equal(one.status('info'), '0 0 0');
    assert.equal(one.status('table'), '254:5 0 10');
    const two = (await loadMemoryTable('0 8192 delay leg2 0 10 leg1 0 20', { leg2, leg1 }, { scope })).segments[0]!.target;
    assert.equal(two.status('table'), '254:5 0 10 254:4 0 20');
  });

  const errors: Array<[string, string]> = [
    ['disk 0', 'Requires exactly 3, 6 or 9 arguments'],
    ['disk 0 1 disk 0', 'Requires exactly 3, 6 or 9 arguments'],
    ['disk x 1', 'Invalid device sector'],
    ['disk 0 x', 'Invalid delay'],
    ['disk 0 1 disk 0 -5', 'Invalid delay'],
    ['nope 0 1', 'Device lookup failed: open nope: ENOENT'],
    ['disk 60 1', 'Device too small for target: mem-delay start=60, len=64, dev_size=64'],
  ];
  for (const [args, message] of errors) {
    it(`delay ${args}: ${message}`, async () => {
      const disk = new MemoryDevice(64, { tableName: 'mem-delay' });
      await assert.rejects(loadMemoryTable(`0 64 delay ${args}`, { disk }), (error: unknown) => {
        assert.ok(error instanceof TableError, String(error));
        assert.equal(error.reason, `delay: ${message}`);
        return true;
      });
    });
  }
});
