import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { DeviceRegistry, type RegistryDeps } from '../../../src/daemon/registry';
import { installationMark } from '../../../src/daemon/ownership';
import { IoOp } from '../../../src/io/bio';
import { MemoryDevice } from '../../../src/testing/memory-device';
import { FakeKernel, TestBed } from '../../support/fake-ublk';

const options = { readOnly: false };
const INSTALLATION = installationMark('/var/lib/ublk-dm');

describe('DeviceRegistry shutdown with handover (the next daemon reattaches)', () => {
  let bed: TestBed;
  let kernel: FakeKernel;

  const deps = (): RegistryDeps => ({ ...bed.deps(), recovery: kernel });

  beforeEach(async () => {
    bed = await TestBed.create();
    kernel = new FakeKernel(INSTALLATION);
  });
  afterEach(() => bed.cleanup());

  it('leaves a recoverable device running in the kernel: not stopped, link and saved table kept, tables released', async () => {
    const registry = new DeviceRegistry(deps());
    await registry.create('vol', '0 64 linear mem 0\n', options);
    const tables = bed.builtTables.length;
    const report = await registry.shutdown({ handOver: true });
    assert.deepEqual(report, { handedOver: ['vol'], removed: [], failed: [] });
    assert.equal(bed.ublk.devices[0]!.stopped, false, 'no STOP_DEV: the kernel keeps the device for the next daemon');
    assert.equal(await bed.linkTarget('vol'), '/dev/ublkb0', 'the link still names the same device');
    assert.deepEqual((await bed.store.loadAll()).devices.map((d) => d.ublk?.id), [0], 'the saved record names the kernel device');
    assert.equal(bed.builtTables.length, tables);
    assert.deepEqual(registry.list(), [], 'the registry no longer serves it');
  });

  it('in-flight I/O completes before the handover; I/O that arrives after waits unanswered (the kernel re-issues it to the next daemon)', async () => {
    const registry = new DeviceRegistry(deps());
    await registry.create('vol', '0 64 linear mem 0\n', options);
    const device = bed.ublk.devices[0]!;
    const gate = bed.memory.mem!.hold(['write']);
    const inFlight = device.submit({ op: IoOp.Write, sector: 0, sectorCount: 1, data: Buffer.alloc(512, 7) });
    await gate.whenWaiting(1);
    let handedOver = false;
    const shutdown = registry.shutdown({ handOver: true }).then(() => (handedOver = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(handedOver, false, 'the handover waits for the write being served');
    gate.release();
    assert.equal(await inFlight, 512, 'the write in flight is answered');
    await shutdown;
    let lateAnswered = false;
    void device.submit({ op: IoOp.Read, sector: 0, sectorCount: 1, data: Buffer.alloc(512) }).then(() => (lateAnswered = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(lateAnswered, false, 'a request after the handover is not served by this daemon');
    assert.equal(bed.memory.mem!.calls.read, 0, 'nor mapped to the backing device');
  });

  it('a device made without recovery is removed, as before; so is every device without handOver', async () => {
    kernel.enabled = false;
    const registry = new DeviceRegistry(deps());
    await registry.create('plain', '0 8 zero\n', options);
    kernel.enabled = true;
    await registry.create('kept', '0 8 zero\n', options);
    assert.deepEqual(await registry.shutdown({ handOver: true }), { handedOver: ['kept'], removed: ['plain'], failed: [] });
    assert.deepEqual(bed.ublk.devices.map((d) => d.stopped), [true, false]);

    const other = new DeviceRegistry(deps());
    await other.create('gone', '0 8 zero\n', options);
    assert.deepEqual(await other.shutdown(), { handedOver: [], removed: ['gone'], failed: [] });
    assert.equal(bed.ublk.devices[2]!.stopped, true, 'without handOver the kernel device is removed');
  });

  it('suspends upper devices before the devices they are built on, and detaches none until all are suspended', async () => {
    bed.memory['/dev/ublkb0'] = new MemoryDevice(64, { devno: { major: 259, minor: 0 }, tableName: '259:0' });
    const registry = new DeviceRegistry(deps());
    await registry.create('a-lower', '0 64 linear mem 0\n', options);
    await registry.create('b-upper', '0 64 linear /dev/ublkb0 0\n', options);
    const order: string[] = [];
    for (const name of ['a-lower', 'b-upper']) {
      const device = registry.get(name);
      const suspend = device.suspend.bind(device);
      const detach = device.detach.bind(device);
      device.suspend = async (how) => {
        order.push(`${name} suspend`);
        await new Promise((resolve) => setTimeout(resolve, 10));
        await suspend(how);
        assert.deepEqual(how, { noflush: true }, 'pushed-back I/O waits for the next daemon instead of failing');
      };
      device.detach = async () => {
        order.push(`${name} detach`);
        await detach();
      };
    }
    assert.deepEqual((await registry.shutdown({ handOver: true })).handedOver, ['a-lower', 'b-upper']);
    assert.deepEqual(order, ['b-upper suspend', 'a-lower suspend', 'a-lower detach', 'b-upper detach']);
  });

  it('a device the user suspended is handed over as it is', async () => {
    const registry = new DeviceRegistry(deps());
    await registry.create('vol', '0 8 zero\n', options);
    await registry.suspend('vol');
    assert.deepEqual(await registry.shutdown({ handOver: true }), { handedOver: ['vol'], removed: [], failed: [] });
  });
});

describe('DeviceRegistry: saved devices that could not be restored', () => {
  let bed: TestBed;

  beforeEach(async () => {
    bed = await TestBed.create();
  });
  afterEach(() => bed.cleanup());

  async function withBrokenSaves(): Promise<DeviceRegistry> {
    const first = new DeviceRegistry(bed.deps());
    await first.create('good', '0 8 zero\n', options);
    await first.create('bad', '0 64 linear mem 0\n', options);
    await first.shutdown();
    delete bed.memory.mem; // its backing device is gone
    await fsp.writeFile(`${bed.store.dir}/torn.json`, '{"format": 1, "name": "torn", "tab');
    const next = new DeviceRegistry(bed.deps());
    await next.restoreSaved();
    return next;
  }

  it('are listed with why, beside the devices that came back', async () => {
    const registry = await withBrokenSaves();
    assert.deepEqual(registry.list().map((d) => d.name), ['good']);
    const failures = registry.failures();
    assert.deepEqual(failures.map((f) => [f.name, f.state]), [['bad', 'failed'], ['torn', 'failed']]);
    assert.match(failures[0]!.reason, /mem/, failures[0]!.reason);
    assert.match(failures[1]!.reason, /torn\.json cannot be read/);
  });

  it('a read verb naming one says why it is not there', async () => {
    const registry = await withBrokenSaves();
    assert.throws(() => registry.get('bad'), (err: Error & { code?: string }) => err.code === 'ENOENT' && /could not be restored \(.*mem/.test(err.message));
    assert.throws(() => registry.get('never'), /^Error: device never does not exist$|device never does not exist$/);
  });

  it('create of the same name is refused and changes nothing; remove forgets it and deletes its saved table', async () => {
    const registry = await withBrokenSaves();
    bed.memory.mem = new MemoryDevice(64);
    const before = await fsp.readFile(`${bed.store.dir}/bad.json`, 'utf8');
    await assert.rejects(registry.create('bad', '0 8 zero\n', options), (err: Error & { code?: string }) => err.code === 'EEXIST' && /remove bad/.test(err.message));
    assert.equal(await fsp.readFile(`${bed.store.dir}/bad.json`, 'utf8'), before, 'the saved table is untouched');
    await registry.remove('bad');
    await registry.remove('torn');
    assert.deepEqual(registry.failures(), []);
    assert.deepEqual((await fsp.readdir(bed.store.dir)).sort(), ['good.json']);
    await registry.create('bad', '0 8 zero\n', options);
    assert.deepEqual(registry.list().map((d) => d.name), ['bad', 'good']);
  });
});
