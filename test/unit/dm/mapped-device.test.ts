import assert from 'node:assert/strict';
import { Dispatcher } from '../../../src/dm/dispatcher';
import { DeviceEvents, MappedDevice, type DeviceTable } from '../../../src/dm/mapped-device';
import { ALL_CAPABILITIES, type Target, type TargetType } from '../../../src/dm/target';
import { IoOp } from '../../../src/io/bio';
import { MemoryDevice } from '../../../src/testing/memory-device';
import { loadMemoryTable } from '../../../src/testing/tables';
import { FakeUblk } from '../../support/fake-ublk';

/** A target type whose every hook and destroy writes `<name>.<hook>` to `log`. */
function loggingType(log: string[]): TargetType {
  return {
    name: 'logging',
    async create(_ctx, args): Promise<Target> {
      const name = args[0]!;
      const note = (hook: string) => async () => void log.push(`${name}.${hook}`);
      return {
        type: 'logging',
        capabilities: ALL_CAPABILITIES,
        threadModel: 'any-queue',
        map: (bio, done) => done(bio.data.byteLength),
        status: () => name,
        devices: () => [],
        presuspend: note('presuspend'),
        postsuspend: note('postsuspend'),
        preresume: note('preresume'),
        resume: note('resume'),
        destroy: note('destroy'),
      };
    },
  };
}

async function started(events: DeviceEvents, table: DeviceTable, text = ''): Promise<{ device: MappedDevice; ublk: FakeUblk }> {
  const ublk = new FakeUblk();
  const device = await MappedDevice.start(events, table, text, { readOnly: false }, ublk.factory, (t) => new Dispatcher(t, { suspended: true }));
  return { device, ublk };
}

describe('MappedDevice: start', () => {
  it("the first table's preresume and resume hooks run before the ublk device exists (create = load + resume)", async () => {
    const log: string[] = [];
    const events = new DeviceEvents('vol');
    const ublk = new FakeUblk();
    const factory: typeof ublk.factory = async (options, handler) => {
      log.push('ublk created');
      return ublk.factory(options, handler);
    };
    await MappedDevice.start(events, await loadMemoryTable('0 8 logging first', {}, { types: [loggingType(log)], device: events }), '', { readOnly: false }, factory, (t) => new Dispatcher(t, { suspended: true }));
    assert.deepEqual(log, ['first.preresume', 'first.resume', 'ublk created']);
  });
});

describe('MappedDevice: resume with a new table (do_resume order)', () => {
  it("the new table's preresume and resume run while the old table still exists; the old one is destroyed last", async () => {
    const log: string[] = [];
    const types = [loggingType(log)];
    const events = new DeviceEvents('vol');
    const { device } = await started(events, await loadMemoryTable('0 8 logging old', {}, { types, device: events }));
    await device.loadInactive(await loadMemoryTable('0 8 logging new', {}, { types, device: events }), '0 8 logging new');
    await device.resume();
    assert.deepEqual(log, ['old.preresume', 'old.resume', 'old.presuspend', 'old.postsuspend', 'new.preresume', 'new.resume', 'old.destroy']);
  });

  it('devices only the old table used are flushed before it is destroyed; writes acknowledged through it become durable', async () => {
    const a = new MemoryDevice(64);
    const b = new MemoryDevice(64);
    const events = new DeviceEvents('vol');
    const { device, ublk } = await started(events, await loadMemoryTable('0 64 linear a 0', { a }, { device: events }));
    assert.equal(await ublk.devices[0]!.submit({ op: IoOp.Write, sector: 0, sectorCount: 1, data: Buffer.alloc(512, 1) }), 512);
    assert.equal(a.isFlushed, false);
    await device.loadInactive(await loadMemoryTable('0 64 linear b 0', { b }, { device: events }), '0 64 linear b 0');
    await device.resume();
    assert.equal(a.isFlushed, true, 'the FLUSHes that follow go to b only: a had to be flushed by the swap');
    assert.equal(b.calls.flush, 0, 'the device the new table keeps is left to the FLUSHes that follow');
  });

  it('a device both tables use is not flushed by the swap', async () => {
    const a = new MemoryDevice(64);
    const events = new DeviceEvents('vol');
    const { device } = await started(events, await loadMemoryTable('0 64 linear a 0', { a }, { device: events }));
    await device.loadInactive(await loadMemoryTable('0 64 linear a 0', { a }, { device: events }), '0 64 linear a 0');
    await device.resume();
    assert.equal(a.calls.flush, 0);
  });

  it('a failed flush of a dropped device is reported; the new table is live all the same', async () => {
    const a = new MemoryDevice(64);
    const events = new DeviceEvents('vol');
    const { device } = await started(events, await loadMemoryTable('0 64 linear a 0', { a }, { device: events }));
    a.failOp('flush', 5);
    await device.loadInactive(await loadMemoryTable('0 64 zero', {}, { device: events }), '0 64 zero');
    await assert.rejects(device.resume(), /flushing .* no longer uses: EIO/);
    assert.equal(device.liveTableText, '0 64 zero');
    assert.equal(device.suspended, false);
  });
});

describe('DeviceEvents: dm events and wait', () => {
  it('wait returns at once when the number already differs, else on the next event', async () => {
    const events = new DeviceEvents('vol');
    events.raiseEvent();
    assert.equal(await events.wait(0), 1);
    let woke: number | undefined;
    const waiting = events.wait(1).then((n) => (woke = n));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(woke, undefined, 'no event yet');
    events.raiseEvent();
    await waiting;
    assert.equal(woke, 2);
  });

  it('the counter wraps at 32 bits', () => {
    const events = new DeviceEvents('vol');
    for (let i = 0; i < 3; i++) events.raiseEvent();
    assert.equal(events.eventNumber, 3);
    (events as unknown as { eventNr: number }).eventNr = 0xffffffff;
    events.raiseEvent();
    assert.equal(events.eventNumber, 0);
  });

  it('a target raises events through its context; waiters of a removed device are told ENXIO', async () => {
    let raise!: () => void;
    const raising: TargetType = {
      name: 'raising',
      async create(ctx): Promise<Target> {
        raise = () => ctx.device.raiseEvent();
        return { type: 'raising', capabilities: ALL_CAPABILITIES, threadModel: 'any-queue', map: (_b, done) => done(0), status: () => '', devices: () => [], destroy: async () => {} };
      },
    };
    const events = new DeviceEvents('vol');
    const { device } = await started(events, await loadMemoryTable('0 8 raising', {}, { types: [raising], device: events }));
    raise();
    assert.equal(device.eventNumber, 1);
    const waiting = events.wait(1);
    await device.stop();
    await assert.rejects(waiting, (error: { code?: string }) => error.code === 'ENXIO');
  });
});
