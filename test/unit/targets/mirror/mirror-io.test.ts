import assert from 'node:assert/strict';
import { DeviceEvents } from '../../../../src/dm/mapped-device';
import { REQUEUE, type MapOutcome } from '../../../../src/dm/target';
import { IoOp, NO_DATA, type Bio } from '../../../../src/io/bio';
import type { BlockDevice } from '../../../../src/io/block-device';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { submitted } from '../../../../src/testing/tables';
import type { DirtyLog } from '../../../../src/targets/mirror/dirty-log';
import { MirrorLeg, MirrorTarget, VIEW_SHARE_HOLDS_OFFSET } from '../../../../src/targets/mirror/mirror';
import { RegionHolds, SWEEP_MS } from '../../../../src/targets/mirror/region-holds';
import { MirrorView } from '../../../../src/targets/mirror/view';

const REGION = 8;
const REGION_BYTES = REGION * 512;
const REGIONS = 16;

/** A core log per spec §2, recording the order of marks and flushes. */
class RecordingLog implements DirtyLog {
  readonly type = 'core';
  readonly regionSectors = REGION;
  readonly regionCount = REGIONS;
  readonly events: string[] = [];
  private readonly clean = new Array<boolean>(REGIONS).fill(true);
  private readonly sync: boolean[];
  private readonly recovering = new Set<number>();
  private cursor = 0;

  constructor(inSync: boolean) {
    this.sync = new Array<boolean>(REGIONS).fill(inSync);
  }
  isClean(region: number): boolean {
    return this.clean[region]!;
  }
  inSync(region: number): boolean {
    return this.sync[region]!;
  }
  markRegion(region: number): void {
    this.clean[region] = false;
    this.events.push(`mark ${region}`);
  }
  clearRegion(region: number): void {
    this.clean[region] = true;
    this.events.push(`clear ${region}`);
  }
  /** What the test wants noted at each flush (e.g. how many data writes had reached the legs). */
  noteAtFlush: () => string = () => '';
  async flush(): Promise<number> {
    this.events.push(`flush${this.noteAtFlush()}`);
    return 0;
  }
  getResyncWork(): number | undefined {
    while (this.cursor < REGIONS && (this.sync[this.cursor] || this.recovering.has(this.cursor))) this.cursor++;
    if (this.cursor >= REGIONS) return undefined;
    this.recovering.add(this.cursor);
    return this.cursor;
  }
  setRegionSync(region: number, inSync: boolean): void {
    this.recovering.delete(region);
    this.sync[region] = inSync;
  }
  syncCount(): number {
    return this.sync.filter(Boolean).length;
  }
  status(kind: 'info' | 'table'): string {
    return kind === 'info' ? '1 core' : `core 1 ${REGION}`;
  }
  async resume(): Promise<void> {
    this.cursor = 0;
  }
  async postsuspend(): Promise<void> {}
  devices(): BlockDevice[] {
    return [];
  }
}

function leg(fill: number): MemoryDevice {
  const device = new MemoryDevice(REGIONS * REGION);
  device.contents.fill(fill);
  return device;
}

function rigMirror(options: { inSync?: boolean; handleErrors?: boolean } = {}) {
  const legs = [leg(0x11), leg(0x22)];
  const log = new RecordingLog(options.inSync ?? true);
  const events = new DeviceEvents('m');
  const mirror = new MirrorTarget(
    legs.map((device) => new MirrorLeg(device.open(), 0)),
    log,
    { handleErrors: options.handleErrors ?? false, keepLog: false },
    REGIONS * REGION,
    events,
  );
  return { legs, log, events, mirror };
}

function io(mirror: MirrorTarget, op: IoOp, sector: number, data: Uint8Array = NO_DATA): Promise<MapOutcome> {
  const bio: Bio = { op, sector, sectorCount: data.byteLength / 512, data, fua: false, noUnmap: false };
  return submitted<MapOutcome>((b, done) => mirror.map(b, done), bio);
}

async function settle(ms = 20): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

describe('mirror: writes', () => {
  it('a write reaches every leg, and its region was marked dirty and the log flushed before', async () => {
    const { legs, log, mirror } = rigMirror();
    await mirror.resume();
    await settle();
    log.noteAtFlush = () => ` (${legs.map((d) => d.calls.write + d.calls.writev).join('+')} data writes)`;
    const data = Buffer.alloc(REGION_BYTES, 0x33);
    assert.equal(await io(mirror, IoOp.Write, 2 * REGION, data), REGION_BYTES);
    for (const device of legs) assert.ok(device.contents.subarray(2 * REGION_BYTES, 3 * REGION_BYTES).every((b) => b === 0x33));
    const markAt = log.events.indexOf('mark 2');
    assert.ok(markAt >= 0, 'the region was marked dirty');
    assert.equal(log.events[markAt + 1], 'flush (0+0 data writes)', 'the log was flushed after the mark and before any data write');
    await settle();
    assert.ok(log.events.includes('clear 2'), 'the region goes clean again once the write drained');
  });

  it('while out of sync, a write goes to the default leg only (recovery carries it over)', async () => {
    const { legs, mirror } = rigMirror({ inSync: false });
    const data = Buffer.alloc(REGION_BYTES, 0x33);
    assert.equal(await io(mirror, IoOp.Write, 5 * REGION, data), REGION_BYTES);
    assert.ok(legs[0]!.contents.subarray(5 * REGION_BYTES, 6 * REGION_BYTES).every((b) => b === 0x33));
    assert.ok(legs[1]!.contents.subarray(5 * REGION_BYTES, 6 * REGION_BYTES).every((b) => b === 0x22), 'the other leg is not written');
  });
});

describe('mirror: resync', () => {
  it('copies every region from the default leg, counts up to n/n and raises one event', async () => {
    const { legs, events, mirror } = rigMirror({ inSync: false });
    assert.match(mirror.status('info'), / 0\/16 1 AA 1 core$/);
    await mirror.resume();
    for (let i = 0; i < 50 && !mirror.status('info').includes('16/16'); i++) await settle(5);
    assert.match(mirror.status('info'), /^2 \S+ \S+ 16\/16 1 AA 1 core$/);
    assert.ok(legs[1]!.contents.equals(legs[0]!.contents));
    assert.equal(events.eventNumber, 1);
  });
});

describe('mirror: resync pipelining', () => {
  it('the next region\'s copy runs while the log flush of the last one is under way, and the resync still ends identical at n/n', async () => {
    const { legs, log, mirror } = rigMirror({ inSync: false });
    const readsDuringFlush: number[] = [];
    log.flush = async () => {
      log.events.push('flush');
      const readsBefore = legs[0]!.calls.read + legs[0]!.calls.readv;
      await settle(10); // a slow log device
      readsDuringFlush.push(legs[0]!.calls.read + legs[0]!.calls.readv - readsBefore);
      return 0;
    };
    await mirror.resume();
    for (let i = 0; i < 400 && !mirror.status('info').includes(`${REGIONS}/${REGIONS}`); i++) await settle(5);
    assert.match(mirror.status('info'), / 16\/16 1 AA 1 core$/);
    assert.ok(legs[1]!.contents.equals(legs[0]!.contents));
    assert.ok(readsDuringFlush.filter((n) => n > 0).length >= REGIONS / 2, `copies overlapped flushes: reads during each flush ${JSON.stringify(readsDuringFlush)}`);
    // A region goes clean only in a pass after its copy ended (the next flush then covers it).
    for (let r = 0; r < REGIONS; r++) assert.ok(log.events.indexOf(`clear ${r}`) > 0);
  });
});

describe('mirror: suspend during resync', () => {
  it('presuspend waits for the region being copied, stops there, and resume carries on to n/n', async () => {
    const { legs, mirror } = rigMirror({ inSync: false });
    const gate = legs[0]!.hold(['read', 'readv']);
    await mirror.resume();
    await gate.whenWaiting(1);
    let suspended = false;
    const suspending = mirror.presuspend({ noflush: false }).then(() => (suspended = true));
    await settle();
    assert.equal(suspended, false, 'the copy in flight holds the suspend');
    gate.release();
    await suspending;
    await settle();
    const [inSync] = mirror.status('info').split(' ')[3]!.split('/').map(Number);
    assert.ok(inSync! >= 1 && inSync! < REGIONS, `stopped part way (${inSync}/${REGIONS})`);
    await mirror.resume();
    for (let i = 0; i < 100 && !mirror.status('info').includes(`${REGIONS}/${REGIONS}`); i++) await settle(5);
    assert.ok(legs[1]!.contents.equals(legs[0]!.contents));
  });
});

describe('mirror: leg failures', () => {
  it('without handle_errors a failed leg write still succeeds: status D, no event', async () => {
    const { legs, events, mirror } = rigMirror();
    await mirror.resume();
    await settle();
    const before = events.eventNumber;
    legs[1]!.failOp('writev', 5);
    legs[1]!.failOp('write', 5);
    assert.equal(await io(mirror, IoOp.Write, 0, Buffer.alloc(REGION_BYTES, 0x44)), REGION_BYTES);
    assert.match(mirror.status('info'), / 1 AD 1 core$/);
    assert.equal(events.eventNumber, before);
  });

  it('with handle_errors the write is held and an event raised; a --noflush suspend requeues it', async () => {
    const { legs, events, mirror } = rigMirror({ handleErrors: true });
    await mirror.resume();
    await settle();
    const before = events.eventNumber;
    legs[1]!.failOp('writev', 5);
    legs[1]!.failOp('write', 5);
    let outcome: MapOutcome | undefined;
    void io(mirror, IoOp.Write, 0, Buffer.alloc(REGION_BYTES, 0x44)).then((o) => (outcome = o));
    for (let i = 0; i < 200 && events.eventNumber === before; i++) await settle(5); // the failure reached the worker
    await settle();
    assert.equal(outcome, undefined, 'held');
    assert.equal(events.eventNumber, before + 1);
    assert.ok(legs[0]!.contents.subarray(0, REGION_BYTES).every((b) => b === 0x44), 'already on the primary');
    await mirror.presuspend({ noflush: true });
    assert.equal(outcome, REQUEUE);
  });

  it('a read error on the default leg is served from another leg', async () => {
    const { legs, mirror } = rigMirror();
    await mirror.resume();
    await settle();
    legs[0]!.failOp('read', 5);
    const back = Buffer.alloc(REGION_BYTES);
    assert.equal(await io(mirror, IoOp.Read, 0, back), REGION_BYTES);
    assert.ok(back.every((b) => b === 0x22));
    assert.match(mirror.status('info'), / 1 RA 1 core$/);
  });
});

describe('mirror: regions held for queue threads\' writes', () => {
  /** An in-sync mirror queue threads view, and one view built over its share. */
  async function rigViewed(options: { handleErrors?: boolean; inSync?: boolean; resume?: boolean } = {}) {
    const rig = rigMirror(options);
    const share = rig.mirror.queueViewShare();
    const forwarded: Array<[IoOp, number]> = [];
    const view = new MirrorView(
      rig.legs.map((device) => new MirrorLeg(device.open(), 0)),
      new Int32Array(share, 0, 1),
      0,
      (b, deviceSector, done) => {
        forwarded.push([b.op, deviceSector]);
        rig.mirror.map({ ...b, sector: deviceSector }, done);
      },
      '',
      RegionHolds.over(share, VIEW_SHARE_HOLDS_OFFSET),
    );
    if (options.resume ?? true) await rig.mirror.resume(); // (a resume starts the resync of a mirror out of sync)
    await settle();
    return { ...rig, view, forwarded };
  }

  const viewIo = (view: MirrorView, sector: number, data: Uint8Array) =>
    submitted<MapOutcome>((b, done) => view.map(b, done), { op: IoOp.Write, sector, sectorCount: data.byteLength / 512, data, fua: false, noUnmap: false });

  it('after the owner marked a region for a write, the views write there to every leg themselves, and its mark stays', async () => {
    const { legs, log, view, forwarded } = await rigViewed();
    assert.equal(await viewIo(view, 3 * REGION, Buffer.alloc(REGION_BYTES, 0x51)), REGION_BYTES);
    assert.deepEqual(forwarded, [[IoOp.Write, 3 * REGION]], 'the first write to a region goes to the owner, which marks it');
    await settle();
    assert.ok(!log.events.includes('clear 3'), 'the owner keeps the mark of a region it holds for views');
    const eventsBefore = log.events.length;
    assert.equal(await viewIo(view, 3 * REGION + 2, Buffer.alloc(1024, 0x52)), 1024);
    assert.equal(forwarded.length, 1, 'served by the view');
    for (const device of legs) {
      assert.ok(device.contents.subarray(3 * REGION_BYTES, 3 * REGION_BYTES + 1024).every((b) => b === 0x51));
      assert.ok(device.contents.subarray(3 * REGION_BYTES + 1024, 3 * REGION_BYTES + 2048).every((b) => b === 0x52), 'on every leg');
    }
    await settle();
    assert.deepEqual(log.events.slice(eventsBefore), [], 'no mark, no log flush for a held region');
    assert.equal(await viewIo(view, 4 * REGION, Buffer.alloc(512, 0x53)), 512);
    assert.equal(await viewIo(view, 5 * REGION - 1, Buffer.alloc(1024, 0x54)), 1024);
    assert.deepEqual(forwarded.slice(1), [[IoOp.Write, 4 * REGION], [IoOp.Write, 5 * REGION - 1]], 'another region, and a write across two, go to the owner');
  });

  it('a suspend cleans the held regions as the kernel\'s leaves them, and views write nothing themselves until the owner marks again', async () => {
    const { mirror, log, view, forwarded } = await rigViewed();
    await viewIo(view, 0, Buffer.alloc(512, 1));
    await viewIo(view, 2 * REGION, Buffer.alloc(512, 2));
    await settle();
    assert.ok(!log.events.includes('clear 0') && !log.events.includes('clear 2'));
    await mirror.presuspend({ noflush: false });
    await mirror.postsuspend();
    const lastFlush = log.events.lastIndexOf('flush');
    for (const region of [0, 2]) {
      const clearedAt = log.events.indexOf(`clear ${region}`);
      assert.ok(clearedAt >= 0 && clearedAt < lastFlush, `region ${region} cleaned, then the log flushed: ${log.events.join(', ')}`);
    }
    await mirror.resume();
    await viewIo(view, 0, Buffer.alloc(512, 3));
    assert.equal(forwarded.length, 3, 'after the resume the owner marks the region again first');
  });

  it('a view write in flight at presuspend keeps its region marked until it lands; postsuspend then cleans it', async () => {
    const { mirror, legs, log, view } = await rigViewed();
    await viewIo(view, 7 * REGION, Buffer.alloc(512, 1));
    await settle();
    const gate = legs[1]!.hold(['write', 'writev']);
    const inFlight = viewIo(view, 7 * REGION, Buffer.alloc(512, 2));
    await gate.whenWaiting(1);
    await mirror.presuspend({ noflush: false });
    await settle();
    assert.ok(!log.events.includes('clear 7'), 'not cleaned under a write in flight');
    gate.release();
    assert.equal(await inFlight, 512); // the queue threads drain here, between the two hooks
    await mirror.postsuspend();
    assert.ok(log.events.includes('clear 7'), log.events.join(', '));
  });

  it('a view write that fails on a leg is done again by the owner, which fails the leg; no region is held from then on', async () => {
    const { legs, mirror, view, forwarded } = await rigViewed();
    await viewIo(view, 6 * REGION, Buffer.alloc(512, 1));
    await settle();
    legs[1]!.failOp('write', 5);
    legs[1]!.failOp('writev', 5);
    assert.equal(await viewIo(view, 6 * REGION, Buffer.alloc(512, 2)), 512, 'without handle_errors the data on the default leg counts');
    assert.deepEqual(forwarded, [[IoOp.Write, 6 * REGION], [IoOp.Write, 6 * REGION]], 'the failed write went to the owner');
    assert.match(mirror.status('info'), / AD 1 core$/);
    legs[1]!.failOp('write', null);
    legs[1]!.failOp('writev', null);
    await viewIo(view, 6 * REGION, Buffer.alloc(512, 3));
    assert.equal(forwarded.length, 3, 'the owner holds nothing for views while a leg has failed');
  });

  it('holds nothing in a region out of sync, nor for a mirror no queue thread views', async () => {
    const outOfSync = await rigViewed({ inSync: false, resume: false });
    await viewIo(outOfSync.view, 0, Buffer.alloc(512, 1));
    await viewIo(outOfSync.view, 0, Buffer.alloc(512, 1));
    assert.equal(outOfSync.forwarded.length, 2);
    await outOfSync.mirror.destroy();

    const { mirror, log } = rigMirror();
    await mirror.resume();
    await io(mirror, IoOp.Write, 0, Buffer.alloc(512, 1));
    await settle();
    assert.ok(log.events.includes('clear 0'), 'unviewed, a region goes clean as soon as its write drained');
  });
});

describe('mirror: held regions left idle', () => {
  it('are cleaned within two sweeps of the last view write, with the mirror left running', async function () {
    this.timeout(10_000);
    const { mirror, log } = rigMirror();
    const share = mirror.queueViewShare();
    const holds = RegionHolds.over(share, VIEW_SHARE_HOLDS_OFFSET);
    await mirror.resume();
    await io(mirror, IoOp.Write, 9 * REGION, Buffer.alloc(512, 1));
    await settle();
    assert.ok(!log.events.includes('clear 9'));
    assert.equal(holds.enter(9), true, 'held for views');
    holds.leave(9);
    const started = Date.now();
    while (!log.events.includes('clear 9') && Date.now() - started < 2 * SWEEP_MS + 1000) await settle(50);
    assert.ok(log.events.includes('clear 9'), `cleaned after ${Date.now() - started} ms: ${log.events.join(', ')}`);
    assert.equal(holds.enter(9), false, 'released');
    await mirror.destroy();
  });
});
