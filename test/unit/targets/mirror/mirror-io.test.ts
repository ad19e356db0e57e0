import assert from 'node:assert/strict';
import { DeviceEvents } from '../../../../src/dm/mapped-device';
import { REQUEUE, type MapOutcome } from '../../../../src/dm/target';
import { IoOp, NO_DATA, type Bio } from '../../../../src/io/bio';
import type { BlockDevice } from '../../../../src/io/block-device';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { submitted } from '../../../../src/testing/tables';
import type { DirtyLog } from '../../../../src/targets/mirror/dirty-log';
import { MirrorLeg, MirrorTarget } from '../../../../src/targets/mirror/mirror';

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
