import assert from 'node:assert/strict';
import { EIO, EOPNOTSUPP } from '../../../src/base/errno';
import { IoOp, NO_DATA, type Bio } from '../../../src/io/bio';
import { Dispatcher, servesInPlace } from '../../../src/dm/dispatcher';
import { DeviceEvents } from '../../../src/dm/mapped-device';
import { TableError, buildTable, parseTableText } from '../../../src/dm/table';
import type { MapOutcome } from '../../../src/dm/target';
import { MemoryDevice, memoryDeviceOpener } from '../../../src/testing/memory-device';
import { loadMemoryTable, submitted } from '../../../src/testing/tables';
import { queueThreadTargetTypes } from '../../../src/targets';
import { DaemonScope } from '../../../src/dm/scope';
import { StripedView } from '../../../src/targets/striped-view';
import { StripeLayout } from '../../../src/targets/striped';
import { tablePlan } from '../../../src/daemon/queue-threads';

function bio(op: IoOp, sector: number, sectorCount: number, data: Uint8Array = NO_DATA): Bio {
  return { op, sector, sectorCount, data, fua: false, noUnmap: false };
}

/** Each 512-byte sector of the image holds its own sector number in every byte pair. */
function stampedImage(sectorCount: number): Buffer {
  const image = Buffer.alloc(sectorCount * 512);
  for (let s = 0; s < sectorCount; s++) for (let i = 0; i < 512; i += 4) image.writeUInt32LE(s, s * 512 + i);
  return image;
}

async function loadError(text: string, devices: Record<string, MemoryDevice>): Promise<string> {
  try {
    await loadMemoryTable(text, devices);
  } catch (error) {
    assert.ok(error instanceof TableError, `expected TableError, got ${String(error)}`);
    return error.message;
  }
  assert.fail(`"${text}" loaded`);
}

describe('targets: striped', () => {
  const disks = () => ({ a: new MemoryDevice(256, { tableName: '7:1' }), b: new MemoryDevice(256, { tableName: '7:2' }), c: new MemoryDevice(256, { tableName: '7:3' }) });

  it('writes chunks round robin, at each stripe offset, and reads them back through a split request', async () => {
    const d = disks();
    const table = await loadMemoryTable('0 384 striped 3 8 a 16 b 0 c 64', d);
    const dispatcher = new Dispatcher(table);
    const image = stampedImage(384);
    assert.equal(await submitted(dispatcher.submit.bind(dispatcher), bio(IoOp.Write, 0, 384, image)), 384 * 512);
    // Chunk k of the target (8 sectors) lies on stripe k mod 3, row floor(k / 3).
    for (let chunk = 0; chunk < 48; chunk++) {
      const stripe = [d.a, d.b, d.c][chunk % 3]!;
      const start = [16, 0, 64][chunk % 3]! + Math.floor(chunk / 3) * 8;
      assert.deepEqual(stripe.contents.subarray(start * 512, (start + 8) * 512), image.subarray(chunk * 8 * 512, (chunk + 1) * 8 * 512), `chunk ${chunk}`);
    }
    const back = Buffer.alloc(384 * 512);
    assert.equal(await submitted(dispatcher.submit.bind(dispatcher), bio(IoOp.Read, 0, 384, back)), 384 * 512);
    assert.deepEqual(back, image);
  });

  it('takes a chunk size that is not a power of two and a stripe count that is not either', async () => {
    const d = disks();
    const table = await loadMemoryTable('0 36 striped 3 3 a 0 b 0 c 0', d);
    const image = stampedImage(36);
    const dispatcher = new Dispatcher(table);
    await submitted(dispatcher.submit.bind(dispatcher), bio(IoOp.Write, 0, 36, image));
    // Target chunk 4 (sectors 12..14) is row 1 of stripe 1 (b), sectors 3..5.
    assert.deepEqual(d.b.contents.subarray(3 * 512, 6 * 512), image.subarray(12 * 512, 15 * 512));
  });

  it('sends a flush to every stripe', async () => {
    const d = disks();
    const table = await loadMemoryTable('0 48 striped 3 8 a 0 b 0 c 0', d);
    assert.equal(await submitted<MapOutcome>((b, done) => table.segments[0]!.target.map(b, done), bio(IoOp.Flush, 0, 0)), 0);
    assert.deepEqual([d.a.calls.flush, d.b.calls.flush, d.c.calls.flush], [1, 1, 1]);
  });

  it('cuts a discard into the part on each stripe, as stripe_map_range does', async () => {
    const d = disks();
    for (const disk of Object.values(d)) disk.contents.fill(0xaa);
    const table = await loadMemoryTable('0 96 striped 3 8 a 0 b 0 c 0', d);
    // Target sectors 4..44: chunk 0 from 4 (a row 0), chunks 1, 2 (b, c row 0), chunks 3, 4 (a, b row 1), chunk 5 up to 44 (c row 1, 4 sectors).
    const target = table.segments[0]!.target;
    assert.equal(await submitted<MapOutcome>((b, done) => target.map(b, done), bio(IoOp.Discard, 4, 40)), 0);
    const zeroSectors = (disk: MemoryDevice): number[] => {
      const out: number[] = [];
      for (let s = 0; s < 32; s++) if (disk.contents[s * 512] === 0) out.push(s);
      return out;
    };
    const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
    assert.deepEqual(zeroSectors(d.a), range(4, 16));
    assert.deepEqual(zeroSectors(d.b), range(0, 16));
    assert.deepEqual(zeroSectors(d.c), range(0, 12));
  });

  it('a discard with no part on a stripe does not touch that stripe', async () => {
    const d = disks();
    const table = await loadMemoryTable('0 48 striped 3 8 a 0 b 0 c 0', d);
    await submitted<MapOutcome>((b, done) => table.segments[0]!.target.map(b, done), bio(IoOp.Discard, 9, 4));
    assert.deepEqual([d.a.calls.discard, d.b.calls.discard, d.c.calls.discard], [0, 1, 0]);
  });

  it('status and table print like the kernel (targets.md §10)', async () => {
    const leg0 = new MemoryDevice(8192, { tableName: '254:3' });
    const leg1 = new MemoryDevice(8192, { tableName: '254:4' });
    const table = await loadMemoryTable('0 16384 striped 2 8 leg0 0 leg1 0', { leg0, leg1 });
    const target = table.segments[0]!.target;
    assert.equal(target.status('info'), '2 254:3 254:4 1 AA');
    assert.equal(target.status('table'), '2 8 254:3 0 254:4 0');
  });

  it('an I/O error marks the stripe D and raises an event for each of its first 14 errors', async () => {
    const d = disks();
    const events = new DeviceEvents('s');
    const table = await loadMemoryTable('0 48 striped 3 8 a 0 b 0 c 0', d, { device: events });
    const target = table.segments[0]!.target;
    d.b.failOp('read', EIO);
    for (let i = 0; i < 20; i++) {
      assert.equal(await submitted<MapOutcome>((b, done) => target.map(b, done), bio(IoOp.Read, 8, 1, Buffer.alloc(512))), -EIO);
    }
    assert.equal(target.status('info'), '3 7:1 7:2 7:3 1 ADA');
    assert.equal(events.eventNumber, 14);
  });

  it('EOPNOTSUPP is not counted as a stripe error', async () => {
    const d = disks();
    const table = await loadMemoryTable('0 48 striped 3 8 a 0 b 0 c 0', d);
    d.a.failOp('discard', EOPNOTSUPP);
    assert.equal(await submitted<MapOutcome>((b, done) => table.segments[0]!.target.map(b, done), bio(IoOp.Discard, 0, 8)), -EOPNOTSUPP);
    assert.equal(table.segments[0]!.target.status('info'), '3 7:1 7:2 7:3 1 AAA');
  });

  const errors: Array<[string, string]> = [
    ['0 48 striped 3', 'Not enough arguments'],
    ['0 48 striped 0 8', 'Invalid stripe count'],
    ['0 48 striped x 8', 'Invalid stripe count'],
    ['0 48 striped 3 0 a 0 b 0 c 0', 'Invalid chunk_size'],
    ['0 48 striped 3 -8 a 0 b 0 c 0', 'Invalid chunk_size'],
    ['0 50 striped 3 8 a 0 b 0 c 0', 'Target length not divisible by number of stripes'],
    ['0 45 striped 3 8 a 0 b 0 c 0', 'Target length not divisible by chunk size'],
    ['0 48 striped 3 8 a 0 b 0', 'Not enough destinations specified'],
    ['0 48 striped 3 8 a 0 b 0 c 0 d', 'Not enough destinations specified'],
    ['0 48 striped 3 8 a 0 b x c 0', "Couldn't parse stripe destination"],
    ['0 48 striped 3 8 a 0 b 0 nope 0', "Couldn't parse stripe destination: open nope: ENOENT"],
    ['0 48 striped 3 8 a 0 b 250 c 0', 'Device too small for target: 7:2 start=250, len=16, dev_size=256'],
  ];
  for (const [text, message] of errors) {
    it(`"${text}" fails: ${message}`, async () => {
      assert.match(await loadError(text, disks()), new RegExp(`striped: ${message.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
    });
  }
});

describe('striped: a queue thread\'s view', () => {
  const disks = () => ({ a: new MemoryDevice(256, { tableName: '7:1' }), b: new MemoryDevice(256, { tableName: '7:2' }), c: new MemoryDevice(256, { tableName: '7:3' }) });
  /** The owner's table of one striped segment at device sector 64, and a queue thread's copy of it built as the thread builds it. */
  async function rig(d: ReturnType<typeof disks>) {
    const text = '0 64 zero\n64 48 striped 3 8 a 0 b 0 c 0';
    const events = new DeviceEvents('s');
    const owner = await loadMemoryTable(text, d, { device: events });
    const plan = tablePlan(owner);
    assert.ok(plan !== null, 'a striped table is planned for queue threads, not forwarded');
    const forwarded: Array<[IoOp, number]> = [];
    const copy = await buildTable(parseTableText(plan.text), {
      scope: new DaemonScope({ targetTypes: queueThreadTargetTypes }),
      device: new DeviceEvents('s'),
      // The plan names each device as its table does: the thread opens the same ones.
      openDevice: memoryDeviceOpener({ '7:1': d.a, '7:2': d.b, '7:3': d.c }),
      queueViews: {
        shares: new Map(plan.views!.map((view) => [view.startSector, view.share])),
        forward: (b, deviceSector, done) => {
          forwarded.push([b.op, deviceSector]);
          owner.segments[1]!.target.map({ ...b, sector: deviceSector - 64 }, done);
        },
      },
    });
    const view = copy.segments[1]!.target;
    assert.ok(view instanceof StripedView);
    return { owner: owner.segments[1]!.target, view, forwarded, events };
  }

  it('does reads, writes and flushes on the stripes itself, where the owner would put them', async () => {
    const d = disks();
    const { owner, view, forwarded } = await rig(d);
    const image = stampedImage(8);
    // Target chunk 4 (sectors 32..39) is row 1 of stripe 1 (b): sectors 8..15.
    assert.equal(await submitted<MapOutcome>((b, done) => view.map(b, done), bio(IoOp.Write, 32, 8, image)), 8 * 512);
    assert.deepEqual(d.b.contents.subarray(8 * 512, 16 * 512), image);
    const back = Buffer.alloc(8 * 512);
    assert.equal(await submitted<MapOutcome>((b, done) => owner.map(b, done), bio(IoOp.Read, 32, 8, back)), 8 * 512);
    assert.deepEqual(back, image);
    assert.equal(await submitted<MapOutcome>((b, done) => view.map(b, done), bio(IoOp.Flush, 0, 0)), 0);
    assert.deepEqual([d.a.calls.flush, d.b.calls.flush, d.c.calls.flush], [1, 1, 1]);
    assert.deepEqual(forwarded, []);
    assert.equal(view.status('table'), owner.status('table'));
    assert.equal(view.maxIoSectors, 8);
  });

  it('sends failed I/O to the owner, in device sectors: done again there, its errors are counted (D, events) once', async () => {
    const d = disks();
    const { owner, view, forwarded, events } = await rig(d);
    d.b.failOp('write', EIO);
    assert.equal(await submitted<MapOutcome>((b, done) => view.map(b, done), bio(IoOp.Write, 8, 1, Buffer.alloc(512))), -EIO);
    assert.deepEqual(forwarded, [[IoOp.Write, 72]]);
    assert.equal(owner.status('info'), '3 7:1 7:2 7:3 1 ADA');
    assert.equal(events.eventNumber, 1);
    // A failure the owner's try does not meet again: the request succeeds and nothing is counted.
    d.c.failOp('read', EIO);
    const read = view.map.bind(view);
    const pending = submitted<MapOutcome>(read, bio(IoOp.Read, 16, 1, Buffer.alloc(512)));
    d.c.failOp('read', null);
    assert.equal(await pending, 512);
    assert.equal(owner.status('info'), '3 7:1 7:2 7:3 1 ADA');
  });

  it('answers EOPNOTSUPP itself, as the owner would without counting it', async () => {
    const d = disks();
    const { view, forwarded } = await rig(d);
    d.a.failOp('discard', EOPNOTSUPP);
    assert.equal(await submitted<MapOutcome>((b, done) => view.map(b, done), bio(IoOp.Discard, 0, 8)), -EOPNOTSUPP);
    assert.deepEqual(forwarded, []);
  });

  it('serves in place within one chunk of a stripe that can, never across a chunk boundary', () => {
    const d = disks();
    const b = Object.assign(d.b.open(), { inPlaceAddress: (sector: number) => 0x10000 + sector * 512 });
    const layout = new StripeLayout([{ device: d.a, deviceStartSector: 0 }, { device: b, deviceStartSector: 0 }, { device: d.c, deviceStartSector: 0 }], 8);
    const view = new StripedView(layout, 0, () => assert.fail('nothing is forwarded'));
    // Target sector 34 is stripe b's sector 10 (row 1, chunk 4, 2 sectors in).
    assert.equal(view.inPlaceAddress(34, 6 * 512, 'read'), 0x10000 + 10 * 512);
    assert.equal(view.inPlaceAddress(34, 6 * 512, 'write'), 0x10000 + 10 * 512);
    assert.equal(view.inPlaceAddress(34, 7 * 512, 'read'), 0, 'crosses into chunk 5, on stripe c');
    assert.equal(view.inPlaceAddress(40, 512, 'read'), 0, 'stripe c has no in-place address');
  });

  it('has writes placed (UBLK_F_NEED_GET_DATA) when a stripe serves in place, so the view can serve them so', async () => {
    const d = disks();
    const table = await loadMemoryTable('0 48 striped 3 8 a 0 b 0 c 0', d);
    assert.equal(servesInPlace(table), false);
    const inPlace = { ...d, b: Object.assign(Object.create(d.b) as MemoryDevice, { open: () => Object.assign(d.b.open(), { servesInPlace: true }) }) };
    assert.equal(servesInPlace(await loadMemoryTable('0 48 striped 3 8 a 0 b 0 c 0', inPlace)), true);
  });

  it('is built only with the owner to send failed I/O to', async () => {
    await assert.rejects(
      buildTable(parseTableText('0 48 striped 3 8 a 0 b 0 c 0'), {
        scope: new DaemonScope({ targetTypes: queueThreadTargetTypes }),
        device: new DeviceEvents('s'),
        openDevice: memoryDeviceOpener(disks()),
      }),
      /striped: a queue thread views striped only with its owner/,
    );
  });
});

