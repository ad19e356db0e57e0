import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import * as winston from 'winston';
import { DeviceRegistry, type RegistryDeps } from '../../../src/daemon/registry';
import { installationMark, isMarkedBy } from '../../../src/daemon/ownership';
import { FakeKernel, TestBed } from '../../support/fake-ublk';
import type { RebuiltTable } from '../../../src/dm/target';
import { UnquiescedDeviceError } from '../../../src/ublk/unquiesced';

const ZERO_8 = '0 8 zero\n';
const options = { readOnly: false };
const INSTALLATION = installationMark('/var/lib/ublk-dm');
const OTHER_INSTALLATION = installationMark('/somewhere/else');

/** A logger whose lines the test can read. */
function capturingLogger(): { log: winston.Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      lines.push(String(chunk).trim());
      callback();
    },
  });
  const log = winston.createLogger({
    format: winston.format.printf(({ level, message }) => `${level}: ${message}`),
    transports: [new winston.transports.Stream({ stream })],
  });
  return { log, lines };
}

describe('DeviceRegistry with ublk user recovery', () => {
  let bed: TestBed;
  let kernel: FakeKernel;
  let logged: { log: winston.Logger; lines: string[] };
  let rebuiltFlags: boolean[];

  function deps(): RegistryDeps {
    const base = bed.deps();
    return {
      ...base,
      buildTable: (text, device, rebuilt?: RebuiltTable) => {
        rebuiltFlags.push(rebuilt !== undefined);
        return base.buildTable(text, device, rebuilt);
      },
      log: logged.log,
      recovery: kernel,
    };
  }

  /** What the kernel would hold after the daemon that made `registry`'s devices died. */
  async function crash(): Promise<void> {
    const saved = (await bed.store.loadAll()).devices;
    kernel.devices = saved.map((d) => ({ id: d.ublk!.id, state: 'quiesced' as const, serverPid: 4242, serverFlags: d.ublk!.serverFlags }));
    for (const device of bed.ublk.live) device.stopped = true; // the process is gone: nothing serves them now
  }

  beforeEach(async () => {
    bed = await TestBed.create();
    kernel = new FakeKernel(INSTALLATION);
    logged = capturingLogger();
    rebuiltFlags = [];
  });
  afterEach(() => bed.cleanup());

  it('makes recoverable devices marked as this installation\'s, and saves what a later daemon needs', async () => {
    const registry = new DeviceRegistry(deps());
    await registry.create('vol', ZERO_8, { readOnly: false, queues: 2 });
    const made = bed.ublk.devices[0]!.options;
    assert.equal(made.recovery, true);
    assert.ok(made.serverFlags !== undefined && isMarkedBy(made.serverFlags, INSTALLATION));
    const [saved] = (await bed.store.loadAll()).devices;
    assert.deepEqual(saved!.ublk, { id: 0, serverFlags: made.serverFlags, queues: 2, depth: 128, maxIoBytes: 524288, features: 0x18n });
    assert.deepEqual(rebuiltFlags, [false], 'a new table is not a rebuilt one');
  });

  it('--no-recovery: devices are still marked (so a dead one can be found) but not recoverable, and nothing is saved for recovery', async () => {
    kernel.enabled = false;
    const registry = new DeviceRegistry(deps());
    await registry.create('vol', ZERO_8, options);
    assert.equal(bed.ublk.devices[0]!.options.recovery, false);
    assert.ok(isMarkedBy(bed.ublk.devices[0]!.options.serverFlags!, INSTALLATION));
    assert.equal((await bed.store.loadAll()).devices[0]!.ublk, undefined);
  });

  it('after a crash the next daemon reattaches each saved device to its quiesced kernel device, same id, table rebuilt', async () => {
    const first = new DeviceRegistry(deps());
    await first.create('a', ZERO_8, options);
    await first.create('b', '0 64 linear mem 0\n', options);
    await crash();
    const identities = (await bed.store.loadAll()).devices.map((d) => d.ublk);
    rebuiltFlags = [];

    const next = new DeviceRegistry(deps());
    const report = await next.restoreSaved();
    assert.deepEqual(report, { restored: ['a', 'b'], recovered: ['a', 'b'], failed: [], deletedKernelDevices: [] });
    assert.deepEqual(bed.ublk.live.map((d) => d.options.recoverFrom), identities);
    assert.deepEqual(next.list().map((d) => d.blockPath), ['/dev/ublkb0', '/dev/ublkb1']);
    assert.deepEqual(kernel.deleted, []);
    assert.deepEqual(rebuiltFlags, [true, true], 'saved tables are rebuilt ones');
    assert.deepEqual((await bed.store.loadAll()).devices.map((d) => d.ublk), identities, 'the records still name the same devices');
  });

  it('reattaches to a device still LIVE whose server is gone (the kernel has not quiesced it yet), not to one a live process serves', async () => {
    const first = new DeviceRegistry(deps());
    await first.create('gone', ZERO_8, options);
    await first.create('held', ZERO_8, options);
    await crash();
    kernel.devices = kernel.devices.map((d) => ({ ...d, state: 'live' as const, serverPid: d.id === 0 ? 4242 : 777 }));
    kernel.alivePids.add(777);

    const next = new DeviceRegistry(deps());
    const report = await next.restoreSaved();
    assert.deepEqual(report.recovered, ['gone']);
    assert.deepEqual(report.failed, ['held']);
    assert.deepEqual(kernel.deleted, [], 'a device a live process serves is never deleted');
    assert.ok(logged.lines.some((l) => /held.*live, served by process 777/.test(l)), logged.lines.join('\n'));
  });

  it('a saved device whose kernel device is DEAD: deleted and made anew, and the log says so', async () => {
    const first = new DeviceRegistry(deps());
    await first.create('vol', ZERO_8, options);
    await crash();
    kernel.devices = kernel.devices.map((d) => ({ ...d, state: 'dead' as const, serverPid: -1 }));

    const next = new DeviceRegistry(deps());
    const report = await next.restoreSaved();
    assert.deepEqual(report, { restored: ['vol'], recovered: [], failed: [], deletedKernelDevices: [] });
    assert.deepEqual(kernel.deleted, [0]);
    assert.equal(bed.ublk.live[0]!.options.recoverFrom, undefined, 'a new device');
    assert.equal(bed.ublk.live[0]!.id, 1);
    assert.equal((await bed.store.loadAll()).devices[0]!.ublk!.id, 1, 'the record names the new device');
    assert.ok(logged.lines.some((l) => /^warn: vol's ublk device 0 is dead, not recoverable: deleting it and making a new device$/.test(l)), logged.lines.join('\n'));
  });

  it('a failed reattach falls back to delete + make anew, and says so', async () => {
    const first = new DeviceRegistry(deps());
    await first.create('vol', ZERO_8, options);
    await crash();
    bed.ublk.failRecover = new Error('START_USER_RECOVERY: EINVAL');

    const next = new DeviceRegistry(deps());
    const report = await next.restoreSaved();
    assert.deepEqual(report.restored, ['vol']);
    assert.deepEqual(report.recovered, []);
    assert.deepEqual(kernel.deleted, [0]);
    assert.equal(bed.ublk.live.length, 1);
    assert.equal(bed.ublk.live[0]!.options.recoverFrom, undefined);
    assert.ok(logged.lines.some((l) => /cannot reattach to vol's ublk device 0: START_USER_RECOVERY: EINVAL; deleting it/.test(l)), logged.lines.join('\n'));
  });

  it('a failed reattach to a device in use (mounted) leaves it in the kernel: no delete, no new device, the restore fails and says why', async () => {
    const first = new DeviceRegistry(deps());
    await first.create('vol', ZERO_8, options);
    await crash();
    bed.ublk.failRecover = new Error('START_USER_RECOVERY: EBUSY');
    kernel.usage.set(0, { openFds: 0, mounts: 1, holders: [] });

    const next = new DeviceRegistry(deps());
    const report = await next.restoreSaved();
    assert.deepEqual(report, { restored: [], recovered: [], failed: ['vol'], deletedKernelDevices: [] });
    assert.deepEqual(kernel.deleted, [], 'neither as the saved device nor as a leftover');
    assert.equal(bed.ublk.live.length, 0, 'no second device over the same backing');
    assert.equal((await bed.store.loadAll()).devices[0]!.ublk!.id, 0, 'the saved record still names it, for the next try');
    assert.ok(
      logged.lines.some((l) => /cannot restore vol: cannot reattach to vol's ublk device 0: START_USER_RECOVERY: EBUSY; it is mounted \(1 mount\), so it is left in the kernel/.test(l)),
      logged.lines.join('\n'),
    );
    assert.ok(logged.lines.some((l) => /ublk device 0 \(quiesced\) has no daemon but is mounted \(1 mount\): left in the kernel, not deleted/.test(l)), logged.lines.join('\n'));

    // The next start finds it unused and reattaches.
    bed.ublk.failRecover = undefined;
    const third = new DeviceRegistry(deps());
    assert.deepEqual((await third.restoreSaved()).recovered, ['vol']);
  });

  it('a mounted device the kernel never quiesced: the restore fails saying a reboot frees it, and not that a restart would', async () => {
    const first = new DeviceRegistry(deps());
    await first.create('vol', ZERO_8, options);
    await crash();
    bed.ublk.failRecover = new UnquiescedDeviceError('ublk device 0', 4242);
    kernel.usage.set(0, { openFds: 0, mounts: 1, holders: [] });

    const report = await new DeviceRegistry(deps()).restoreSaved();
    assert.deepEqual(report.failed, ['vol']);
    assert.deepEqual(kernel.deleted, [], 'left alone');
    const line = logged.lines.find((l) => /cannot restore vol: /.test(l)) ?? logged.lines.join('\n');
    assert.match(line, /only a reboot frees it: ETIMEDOUT; it is mounted \(1 mount\), so it is left in the kernel as it is \(its I\/O waits\) instead of being deleted$/);
  });

  it('a kernel device with the same id but another mark is not the saved one: left alone, a new device is made', async () => {
    const first = new DeviceRegistry(deps());
    await first.create('vol', ZERO_8, options);
    await crash();
    kernel.devices = kernel.devices.map((d) => ({ ...d, serverFlags: d.serverFlags ^ 1n }));

    const next = new DeviceRegistry(deps());
    const report = await next.restoreSaved();
    assert.deepEqual(report.recovered, []);
    assert.equal(bed.ublk.live[0]!.options.recoverFrom, undefined);
    // Same installation mark, nobody serving it, no saved device claims it: a leftover, deleted.
    assert.deepEqual(report.deletedKernelDevices, [0]);
  });

  it('deletes dead kernel devices of this installation that nothing claims, and only those', async () => {
    const next = new DeviceRegistry(deps());
    const mark = (installation: number, device: number) => (BigInt(installation) << 32n) | BigInt(device);
    kernel.devices = [
      { id: 3, state: 'dead', serverPid: -1, serverFlags: mark(INSTALLATION, 1) }, // crashed between ADD_DEV and saving
      { id: 4, state: 'quiesced', serverPid: 99, serverFlags: mark(INSTALLATION, 2) }, // its saved table is gone
      { id: 5, state: 'live', serverPid: 777, serverFlags: mark(INSTALLATION, 3) }, // someone serves it
      { id: 6, state: 'dead', serverPid: -1, serverFlags: mark(OTHER_INSTALLATION, 4) }, // another daemon's
      { id: 7, state: 'dead', serverPid: -1, serverFlags: 0n }, // another ublk server's
    ];
    kernel.alivePids.add(777);
    const report = await next.restoreSaved();
    assert.deepEqual(report.deletedKernelDevices, [3, 4]);
    assert.deepEqual(kernel.devices.map((d) => d.id), [5, 6, 7]);
    assert.ok(logged.lines.some((l) => /deleted dead ublk device 3 \(dead\)/.test(l)));
  });

  it('without recovery deps (the in-process library) nothing is marked, recoverable or swept', async () => {
    const registry = new DeviceRegistry(bed.deps());
    await registry.create('vol', ZERO_8, options);
    assert.equal(bed.ublk.devices[0]!.options.recovery, undefined);
    assert.equal(bed.ublk.devices[0]!.options.serverFlags, undefined);
    assert.equal((await bed.store.loadAll()).devices[0]!.ublk, undefined);
  });
});
