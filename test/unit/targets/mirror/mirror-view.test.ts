import assert from 'node:assert/strict';
import { EIO } from '../../../../src/base/errno';
import { isServedByQueueThreads, tablePlan } from '../../../../src/daemon/queue-threads';
import { DeviceEvents } from '../../../../src/dm/mapped-device';
import { DaemonScope } from '../../../../src/dm/scope';
import { buildTable, parseTableText, type Table } from '../../../../src/dm/table';
import type { MapOutcome, Target } from '../../../../src/dm/target';
import { IoOp, NO_DATA, type Bio } from '../../../../src/io/bio';
import { queueThreadTargetTypes } from '../../../../src/targets';
import { MirrorView } from '../../../../src/targets/mirror/view';
import { MemoryDevice, memoryDeviceOpener } from '../../../../src/testing/memory-device';
import { loadMemoryTable, submitted } from '../../../../src/testing/tables';

function bio(op: IoOp, sector: number, sectorCount: number, data: Uint8Array = NO_DATA): Bio {
  return { op, sector, sectorCount, data, fua: false, noUnmap: false };
}

/** (A function: deepEqual above narrows the list's own type.) */
const opsOf = (list: ReadonlyArray<readonly [IoOp, number]>): IoOp[] => list.map(([op]) => op);

const mapped = (target: Target, b: Bio) => submitted<MapOutcome>((x, done) => target.map(x, done), b);

describe('mirror: a queue thread\'s view', () => {
  /** The owner's table of a mirror at device sector 64, and a queue thread's copy built from its plan, which may open only the legs. */
  async function rig(features: string, log = 'core 2 8 nosync') {
    const legs = { a: new MemoryDevice(128, { tableName: '7:1' }), b: new MemoryDevice(128, { tableName: '7:2' }), log: new MemoryDevice(64, { tableName: '7:9' }) };
    legs.a.contents.fill(0xaa);
    legs.b.contents.fill(0xbb);
    const owner = await loadMemoryTable(`0 64 zero\n64 64 mirror ${log} 2 a 0 b 0 ${features}`, legs, { device: new DeviceEvents('m') });
    assert.equal(isServedByQueueThreads(owner), false, 'its writes go to the owner: created, it stays on the daemon thread');
    const plan = tablePlan(owner);
    assert.ok(plan !== null && plan.views !== undefined, 'a queue thread views a mirror reloaded onto it');
    const forwarded: Array<[IoOp, number]> = [];
    const ownerTarget = owner.segments[1]!.target;
    const copy: Table = await buildTable(parseTableText(plan.text), {
      scope: new DaemonScope({ targetTypes: queueThreadTargetTypes }),
      device: new DeviceEvents('m'),
      openDevice: memoryDeviceOpener({ '7:1': legs.a, '7:2': legs.b }), // no log device: the view must not open it
      queueViews: {
        shares: new Map(plan.views.map((view) => [view.startSector, view.share])),
        forward: (b, deviceSector, done) => {
          forwarded.push([b.op, deviceSector]);
          ownerTarget.map({ ...b, sector: deviceSector - 64 }, done);
        },
      },
    });
    const view = copy.segments[1]!.target;
    assert.ok(view instanceof MirrorView);
    return { legs, owner: ownerTarget, view, forwarded };
  }

  it('reads the default leg itself, in sync or not, and sends every write to the owner', async () => {
    const { legs, view, forwarded } = await rig('');
    const back = Buffer.alloc(1024);
    assert.equal(await mapped(view, bio(IoOp.Read, 8, 2, back)), 1024);
    assert.ok(back.every((byte) => byte === 0xaa), 'read from leg a, the default');
    assert.deepEqual(forwarded, []);
    assert.equal(await mapped(view, bio(IoOp.Write, 8, 2, Buffer.alloc(1024, 0x11))), 1024);
    assert.deepEqual(forwarded, [[IoOp.Write, 72]]);
    assert.equal(legs.a.contents[8 * 512], 0x11);
    assert.equal(legs.b.contents[8 * 512], 0x11, 'the owner wrote both legs');
    await mapped(view, bio(IoOp.Flush, 0, 0));
    assert.deepEqual(opsOf(forwarded), [IoOp.Write, IoOp.Flush]);
  });

  it('with handle_errors, a read that fails on the default leg goes to the owner, which fails over; later reads go to the new default here', async () => {
    const { legs, owner, view, forwarded } = await rig('1 handle_errors');
    legs.a.failOp('read', EIO);
    const back = Buffer.alloc(512);
    assert.equal(await mapped(view, bio(IoOp.Read, 0, 1, back)), 512);
    assert.equal(back[0], 0xbb, 'the owner read leg b');
    assert.deepEqual(forwarded, [[IoOp.Read, 64]]);
    assert.match(owner.status('info'), / 1 RA /);
    const readsOfA = legs.a.calls.read;
    assert.equal(await mapped(view, bio(IoOp.Read, 1, 1, back)), 512);
    assert.equal(back[0], 0xbb);
    assert.equal(forwarded.length, 1, 'leg b, the new default, is read here');
    assert.equal(legs.a.calls.read, readsOfA);
  });

  it('without handle_errors the default stays on the failed leg: the view reads nothing itself from then on', async () => {
    const { legs, view, forwarded } = await rig('');
    legs.a.failOp('read', EIO);
    assert.equal(await mapped(view, bio(IoOp.Read, 0, 1, Buffer.alloc(512))), 512);
    legs.a.failOp('read', null);
    assert.equal(await mapped(view, bio(IoOp.Read, 0, 1, Buffer.alloc(512))), 512);
    assert.equal(forwarded.length, 2, 'the second read went to the owner too');
  });

  it('serves reads in place from the shared leg, never writes', async () => {
    const { view } = await rig('');
    Object.assign(view.devices()[0]!, { inPlaceAddress: (sector: number) => 0x80000 + sector * 512 });
    assert.equal(view.inPlaceAddress!(8, 4096, 'read'), 0x80000 + 8 * 512);
    assert.equal(view.inPlaceAddress!(8, 4096, 'write'), 0);
  });

  it('never opens a disk log: the owner alone keeps it', async () => {
    const { view } = await rig('', 'disk 2 log 8');
    assert.deepEqual(view.devices().map((device) => device.tableName), ['7:1', '7:2']);
  });

  it('is built only with the owner\'s read leg', async () => {
    await assert.rejects(
      buildTable(parseTableText('0 64 mirror core 2 8 nosync 2 a 0 b 0'), {
        scope: new DaemonScope({ targetTypes: queueThreadTargetTypes }),
        device: new DeviceEvents('m'),
        openDevice: memoryDeviceOpener({ a: new MemoryDevice(64), b: new MemoryDevice(64) }),
      }),
      /mirror: a queue thread views mirror only with its owner's read leg/,
    );
  });
});
