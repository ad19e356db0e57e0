import assert from 'node:assert/strict';
import { DeviceError } from '../../../src/dm/mapped-device';
import { DeviceRegistry } from '../../../src/daemon/registry';
import { IoOp } from '../../../src/io/bio';
import { TestBed } from '../../support/fake-ublk';
import { MemoryDevice } from '../../../src/testing/memory-device';

function rejectsWith(code: string, pattern: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof Error, `expected an Error, got ${String(err)}`);
    assert.equal((err as { code?: string }).code, code, err.message);
    assert.match(err.message, pattern);
    return true;
  };
}

const ZERO_8 = '0 8 zero\n';
const options = { readOnly: false };

describe('DeviceRegistry', () => {
  let bed: TestBed;
  let registry: DeviceRegistry;

  beforeEach(async () => {
    bed = await TestBed.create();
    registry = new DeviceRegistry(bed.deps());
  });
  afterEach(() => bed.cleanup());

  describe('create', () => {
    it('starts a ublk device of the table size, links it, saves the table and lists it', async () => {
      const created = await registry.create('vol0', '0 8 zero\n8 8 error\n', { readOnly: true, queues: 2 });
      assert.deepEqual(created, { name: 'vol0', blockPath: '/dev/ublkb0', major: 259, minor: 0 });
      assert.equal(bed.ublk.devices.length, 1);
      assert.deepEqual(bed.ublk.devices[0]!.options, {
        sizeSectors: 16, logicalBlockBytes: 512, readOnly: true, queues: 2, discard: true, writeZeroes: false,
      }, 'zero + error: discard taken by both, write-zeroes refused by zero');
      assert.equal(await bed.linkTarget('vol0'), '/dev/ublkb0');
      const saved = (await bed.store.loadAll()).devices;
      assert.match(saved[0]!.uuid, /^[0-9a-f-]{36}$/);
      assert.deepEqual(saved, [
        { name: 'vol0', uuid: saved[0]!.uuid, table: '0 8 zero\n8 8 error\n', options: { readOnly: true, queues: 2 }, lowers: [] },
      ]);
      assert.deepEqual(registry.list(), [{ name: 'vol0', major: 259, minor: 0, blockPath: '/dev/ublkb0' }]);
    });

    it('serves I/O through the dispatcher to the table', async () => {
      await registry.create('vol0', '0 64 linear mem 0\n', options);
      const device = bed.ublk.devices[0]!;
      const data = Buffer.alloc(1024, 0xab);
      assert.equal(await device.submit({ op: IoOp.Write, sector: 4, sectorCount: 2, data: data }), 1024);
      assert.deepEqual(bed.memory.mem!.contents.subarray(2048, 3072), data);
      const readBuffer = Buffer.alloc(1024);
      assert.equal(await device.submit({ op: IoOp.Read, sector: 4, sectorCount: 2, data: readBuffer }), 1024);
      assert.deepEqual(readBuffer, data);
    });

    it('refuses a duplicate name before building anything', async () => {
      await registry.create('vol0', ZERO_8, options);
      const builds = bed.builtTables.length;
      await assert.rejects(registry.create('vol0', ZERO_8, options), rejectsWith('EEXIST', /vol0 already exists/));
      assert.equal(bed.builtTables.length, builds, 'no table was built for the duplicate');
      assert.equal(bed.ublk.devices.length, 1);
    });

    it('refuses two concurrent creates of one name: exactly one wins', async () => {
      const results = await Promise.allSettled([registry.create('vol0', ZERO_8, options), registry.create('vol0', ZERO_8, options)]);
      assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
      assert.equal(bed.ublk.devices.length, 1);
    });

    it('creates nothing from a bad table and names the line', async () => {
      await assert.rejects(registry.create('vol0', '0 8 zero\n8 8 bogus\n', options), /line 2: bogus: unknown target type/);
      assert.equal(bed.ublk.devices.length, 0);
      assert.equal(await bed.linkTarget('vol0'), undefined);
      assert.deepEqual((await bed.store.loadAll()).devices, []);
      assert.deepEqual(registry.list(), []);
    });

    it('refuses names that cannot be file names', async () => {
      for (const name of ['', '.hidden', '-x', 'a/b', '..', 'x'.repeat(128)]) {
        await assert.rejects(registry.create(name, ZERO_8, options), rejectsWith('EINVAL', /invalid device name/));
      }
      assert.equal(bed.ublk.devices.length, 0);
    });

    it('releases the table when the ublk device cannot be created', async () => {
      bed.ublk.failNext = new Error('ublk: no /dev/ublk-control');
      await assert.rejects(registry.create('vol0', '0 64 linear mem 0\n', options), /no \/dev\/ublk-control/);
      assert.equal(bed.memory.mem!.openHandleCount, 0, 'the table closed its device');
      assert.equal(await bed.linkTarget('vol0'), undefined);
      assert.deepEqual((await bed.store.loadAll()).devices, []);
      assert.deepEqual(registry.list(), []);
    });
  });

  describe('reload and resume', () => {
    it('keeps a reloaded table inactive until resume, then makes it live and saves it', async () => {
      await registry.create('vol0', '0 64 linear mem 0\n', options);
      await registry.reload('vol0', '0 64 zero\n');
      assert.deepEqual(registry.tables('vol0', 'table')[0]!.targets.map((t) => t.type), ['linear']);
      assert.deepEqual(registry.tables('vol0', 'table', true)[0]!.targets.map((t) => t.type), ['zero']);
      assert.equal((await registry.info('vol0'))[0]!.inactiveTable, true);

      await registry.resume('vol0');
      assert.deepEqual(registry.tables('vol0', 'table')[0]!.targets, [{ startSector: 0, lengthSectors: 64, type: 'zero', text: '' }]);
      assert.deepEqual(registry.tables('vol0', 'table', true)[0]!.targets, []);
      const info = (await registry.info('vol0'))[0]!;
      assert.equal(info.inactiveTable, false);
      assert.equal(info.suspended, false);
      assert.equal(bed.memory.mem!.openHandleCount, 0, 'the old live table was destroyed');
      assert.equal((await bed.store.loadAll()).devices[0]!.table, '0 64 zero\n');
    });

    it('leaves both slots as they were when the reloaded table is bad', async () => {
      await registry.create('vol0', ZERO_8, options);
      await registry.reload('vol0', '0 8 error\n');
      await assert.rejects(registry.reload('vol0', '0 8 linear nosuchdev 0\n'), /line 1: linear/);
      assert.deepEqual(registry.tables('vol0', 'table')[0]!.targets.map((t) => t.type), ['zero']);
      assert.deepEqual(registry.tables('vol0', 'table', true)[0]!.targets.map((t) => t.type), ['error']);
    });

    it('refuses a table of another size, keeps it inactive and the device running', async () => {
      await registry.create('vol0', ZERO_8, options);
      await registry.reload('vol0', '0 16 zero\n');
      await assert.rejects(registry.resume('vol0'), rejectsWith('EINVAL', /UPDATE_SIZE, Linux 6\.16\+/));
      const info = (await registry.info('vol0'))[0]!;
      assert.equal(info.suspended, false);
      assert.equal(info.inactiveTable, true);
      assert.equal(info.sizeSectors, 8);
      assert.equal((await bed.store.loadAll()).devices[0]!.table, ZERO_8);
    });

    it('holds new I/O while suspended and runs it on resume, against the new table', async () => {
      await registry.create('vol0', '0 64 linear mem 0\n', options);
      await registry.suspend('vol0');
      assert.equal((await registry.info('vol0'))[0]!.suspended, true);
      await assert.rejects(registry.suspend('vol0'), rejectsWith('EINVAL', /already suspended/));

      bed.memory.mem!.contents.fill(0x55);
      let done = false;
      const buffer = Buffer.alloc(512, 1);
      const read = bed.ublk.devices[0]!.submit({ op: IoOp.Read, sector: 0, sectorCount: 1, data: buffer });
      void read.then(() => (done = true));
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(done, false, 'I/O waits while suspended');

      await registry.reload('vol0', '0 64 zero\n');
      await registry.resume('vol0');
      assert.equal(await read, 512);
      assert.deepEqual(buffer, Buffer.alloc(512), 'read from the zero table, not the old linear one');
    });
  });

  describe('remove', () => {
    it('errors for an unknown name', async () => {
      await assert.rejects(registry.remove('nope'), rejectsWith('ENOENT', /nope does not exist/));
    });

    it('refuses a device that is mounted or open, changing nothing', async () => {
      await registry.create('vol0', ZERO_8, options);
      bed.usage.set('/dev/ublkb0', { openFds: 1, mounts: 1, holders: [] });
      await assert.rejects(registry.remove('vol0'), rejectsWith('EBUSY', /vol0 is busy: mounted \(1 mount\), open \(1 file descriptor\)/));
      assert.equal(bed.ublk.live.length, 1);
      assert.equal(await bed.linkTarget('vol0'), '/dev/ublkb0');
      assert.equal((await bed.store.loadAll()).devices.length, 1);
      assert.equal((await registry.info('vol0'))[0]!.openCount, 2);
    });

    it('refuses a device another device holds', async () => {
      await registry.create('vol0', ZERO_8, options);
      bed.usage.set('/dev/ublkb0', { openFds: 0, mounts: 0, holders: ['dm-3'] });
      await assert.rejects(registry.remove('vol0'), rejectsWith('EBUSY', /held by dm-3/));
    });

    it('stops the ublk device, destroys the table, removes the link and the saved table', async () => {
      await registry.create('vol0', '0 64 linear mem 0\n', options);
      await registry.remove('vol0');
      assert.equal(bed.ublk.devices[0]!.stopped, true);
      assert.equal(bed.memory.mem!.openHandleCount, 0);
      assert.equal(await bed.linkTarget('vol0'), undefined);
      assert.deepEqual((await bed.store.loadAll()).devices, []);
      assert.deepEqual(registry.list(), []);
    });

    it('keeps serving I/O while the ublk device stops, even if it was suspended', async () => {
      await registry.create('vol0', '0 64 linear mem 0\n', options);
      await registry.suspend('vol0');
      const device = bed.ublk.devices[0]!;
      let resultDuringStop: number | undefined;
      device.duringStop = async () => {
        resultDuringStop = await device.submit({ op: IoOp.Write, sector: 0, sectorCount: 1, data: Buffer.alloc(512) });
      };
      await registry.remove('vol0');
      assert.equal(resultDuringStop, 512);
    });
  });

  describe('restart', () => {
    it('shutdown removes kernel devices but keeps saved tables; restoreSaved brings them back', async () => {
      await registry.create('a', ZERO_8, options);
      await registry.create('b', '0 64 linear mem 0\n', { readOnly: true, depth: 32 });
      await registry.shutdown();
      assert.equal(bed.ublk.live.length, 0);
      assert.equal(await bed.linkTarget('a'), undefined);
      assert.equal((await bed.store.loadAll()).devices.length, 2);

      const next = new DeviceRegistry(bed.deps());
      assert.deepEqual(await next.restoreSaved(), { restored: ['a', 'b'], recovered: [], failed: [], deletedKernelDevices: [] });
      assert.deepEqual(next.list().map((d) => d.name), ['a', 'b']);
      assert.deepEqual(bed.ublk.live.map((d) => d.options), [
        { sizeSectors: 8, logicalBlockBytes: 512, readOnly: false, discard: true, writeZeroes: false },
        { sizeSectors: 64, logicalBlockBytes: 512, readOnly: true, depth: 32, discard: true, writeZeroes: true },
      ]);
      assert.equal(await bed.linkTarget('b'), bed.ublk.live[1]!.blockPath);
    });

    it('goes on with the others when a saved device cannot come back, and keeps its file', async () => {
      await bed.store.save({ name: 'bad', table: '0 8 linear gone 0\n', options, uuid: 'u-bad', lowers: [] });
      await bed.store.save({ name: 'good', table: ZERO_8, options, uuid: 'u-good', lowers: [] });
      assert.deepEqual(await registry.restoreSaved(), { restored: ['good'], recovered: [], failed: ['bad'], deletedKernelDevices: [] });
      assert.deepEqual((await bed.store.loadAll()).devices.map((d) => d.name), ['bad', 'good']);
    });
  });

  describe('reads and messages', () => {
    it('reports info as dmsetup does', async () => {
      await registry.create('vol0', '0 8 zero\n8 8 error\n', options);
      assert.deepEqual(await registry.info('vol0'), [
        {
          name: 'vol0', suspended: false, readOnly: false, readAheadSectors: 256, liveTable: true, inactiveTable: false,
          openCount: 0, eventNumber: 0, major: 259, minor: 0, targetCount: 2, sizeSectors: 16, blockPath: '/dev/ublkb0', queues: 1, depth: 128,
        },
      ]);
    });

    it('counts target-raised events', async () => {
      await registry.create('vol0', ZERO_8, options);
      registry.get('vol0').events.raiseEvent();
      registry.get('vol0').events.raiseEvent();
      assert.equal((await registry.info('vol0'))[0]!.eventNumber, 2);
    });

    it('filters ls by target type and lists all devices sorted by name', async () => {
      await registry.create('b', ZERO_8, options);
      await registry.create('a', '0 8 error\n', options);
      assert.deepEqual(registry.list().map((d) => d.name), ['a', 'b']);
      assert.deepEqual(registry.list('zero').map((d) => d.name), ['b']);
      assert.deepEqual(registry.tables(undefined, 'info').map((r) => r.name), ['a', 'b']);
    });

    it('rejects messages beyond the device and to targets without a handler', async () => {
      await registry.create('vol0', ZERO_8, options);
      await assert.rejects(registry.message('vol0', 8, ['x']), rejectsWith('EINVAL', /beyond the end/));
      await assert.rejects(registry.message('vol0', 0, ['x']), rejectsWith('EINVAL', /zero takes no messages/));
      await assert.rejects(registry.message('nope', 0, ['x']), (err) => err instanceof DeviceError && err.code === 'ENOENT');
    });
  });

  describe('stacks of our own devices', () => {
    // The fake kernel numbers ublk devices 259:<id>; a MemoryDevice with that devno stands in
    // for /dev/ublkb<id> as a table sees it.
    const asOurDevice = (id: number, spec: string): void => {
      bed.memory[spec] = new MemoryDevice(64, { devno: { major: 259, minor: id }, tableName: `259:${id}` });
    };
    beforeEach(() => {
      for (let id = 0; id < 16; id++) asOurDevice(id, `259:${id}`);
    });

    it('a table over one of our devices is saved with that device by name, uuid and size', async () => {
      await registry.create('lower', '0 64 linear mem 0\n', options);
      asOurDevice(0, '/dev/ublkb0');
      await registry.create('upper', '0 64 linear /dev/ublkb0 0\n', options);
      const saved = (await bed.store.loadAll()).devices;
      const lower = saved.find((d) => d.name === 'lower')!;
      assert.deepEqual(saved.find((d) => d.name === 'upper')!.lowers, [{ spec: '/dev/ublkb0', name: 'lower', uuid: lower.uuid, sizeSectors: 64 }]);
    });

    it('restores lower devices first and rewrites the spec to the number the lower device has now', async () => {
      await registry.create('zz-lower', '0 64 linear mem 0\n', options);
      asOurDevice(0, '/dev/ublkb0');
      await registry.create('aa-upper', '0 64 linear /dev/ublkb0 0\n', options);
      await registry.shutdown();

      // Next start: an unrelated device is made first, so numbers are handed out differently.
      const next = new DeviceRegistry(bed.deps());
      await next.create('unrelated', ZERO_8, options);
      // ('unrelated' is saved too, and fails to come back a second time: it is already there.)
      assert.deepEqual((await next.restoreSaved()).restored, ['zz-lower', 'aa-upper'], 'lower first, not name order');
      const lowerMinor = next.get('zz-lower').devno.minor;
      assert.notEqual(lowerMinor, 0);
      assert.equal(next.tables('aa-upper', 'table')[0]!.targets[0]!.text, `259:${lowerMinor} 0`, 'over zz-lower, not over whatever is 259:0 now');
      const saved = (await bed.store.loadAll()).devices.find((d) => d.name === 'aa-upper')!;
      assert.equal(saved.table, '0 64 linear /dev/ublkb0 0\n', 'the saved table is left as the user wrote it');
      await next.shutdown();
    });

    it('shutdown stops upper devices before the devices they are built on, not all at once', async () => {
      await registry.create('a-lower', '0 64 linear mem 0\n', options);
      asOurDevice(0, '/dev/ublkb0');
      await registry.create('b-upper', '0 64 linear /dev/ublkb0 0\n', options);
      const order: string[] = [];
      const [lowerDevice, upperDevice] = bed.ublk.devices;
      lowerDevice!.duringStop = async () => {
        order.push(`lower begins (upper stopped: ${upperDevice!.stopped})`);
      };
      upperDevice!.duringStop = async () => {
        order.push('upper begins');
        await new Promise((resolve) => setTimeout(resolve, 20));
      };
      await registry.shutdown();
      assert.deepEqual(order, ['upper begins', 'lower begins (upper stopped: true)']);
    });

    it('refuses to restore a table whose lower device is missing, and builds nothing over anything else', async () => {
      await registry.create('lower', '0 64 linear mem 0\n', options);
      asOurDevice(0, '/dev/ublkb0');
      await registry.create('upper', '0 64 linear /dev/ublkb0 0\n', options);
      await registry.shutdown();
      await bed.store.delete('lower');
      const builds = bed.builtTables.length;
      const next = new DeviceRegistry(bed.deps());
      assert.deepEqual(await next.restoreSaved(), { restored: [], recovered: [], failed: ['upper'], deletedKernelDevices: [] });
      assert.equal(bed.builtTables.length, builds, 'no table was built');
    });

    it('refuses a lower device of the same name that is not the same device (uuid)', async () => {
      await registry.create('lower', '0 64 linear mem 0\n', options);
      asOurDevice(0, '/dev/ublkb0');
      await registry.create('upper', '0 64 linear /dev/ublkb0 0\n', options);
      await registry.shutdown();
      const lower = (await bed.store.loadAll()).devices.find((d) => d.name === 'lower')!;
      await bed.store.save({ ...lower, uuid: 'someone-else' });
      const next = new DeviceRegistry(bed.deps());
      const result = await next.restoreSaved();
      assert.deepEqual(result.failed, ['upper']);
    });

    it('a snapshot table is restored before the origin tables, whatever the names', async () => {
      bed.memory.cow = new MemoryDevice(64);
      await bed.store.save({ name: 'a-origin', uuid: 'u-o', table: '0 64 snapshot-origin mem\n', options, lowers: [] });
      await bed.store.save({ name: 'z-snap', uuid: 'u-s', table: '0 64 snapshot mem cow N 8\n', options, lowers: [] });
      assert.deepEqual((await registry.restoreSaved()).restored, ['z-snap', 'a-origin']);
    });

    it('a snapshot whose COW a saved snapshot-merge is merging comes after the merge, which keeps the COW', async () => {
      bed.memory.cow = new MemoryDevice(64);
      bed.memory.cow2 = new MemoryDevice(64);
      await bed.store.save({ name: 'a-merged', uuid: 'u-m', table: '0 64 snapshot mem cow P 8\n', options, lowers: [] });
      await bed.store.save({ name: 'b-other', uuid: 'u-b', table: '0 64 snapshot mem cow2 P 8\n', options, lowers: [] });
      await bed.store.save({ name: 'c-origin', uuid: 'u-o', table: '0 64 snapshot-merge mem cow P 8\n', options, lowers: [] });
      const result = await registry.restoreSaved();
      assert.deepEqual(result.restored, ['b-other', 'c-origin'], 'the other snapshot listens before the merge writes the origin');
      assert.deepEqual(result.failed, ['a-merged']);
    });

    it('a saved table that names one of our devices without recording it is not restored onto it', async () => {
      await registry.create('lower', '0 64 linear mem 0\n', options);
      asOurDevice(0, '/dev/ublkb0');
      await bed.store.save({ name: 'legacy', uuid: 'u-legacy', table: '0 64 linear /dev/ublkb0 0\n', options, lowers: [] });
      assert.ok((await registry.restoreSaved()).failed.includes('legacy'));
      assert.throws(() => registry.get('legacy'), /does not exist/);
    });
  });
});
