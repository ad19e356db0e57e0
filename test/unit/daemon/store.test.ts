import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DeviceStore } from '../../../src/daemon/store';

describe('DeviceStore', () => {
  let dir: string;
  let store: DeviceStore;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublk-dm-store-'));
    store = new DeviceStore(path.join(dir, 'state'));
  });
  afterEach(() => fsp.rm(dir, { recursive: true, force: true }));

  it('loads nothing from a state directory that does not exist yet', async () => {
    assert.deepEqual(await store.loadAll(), { devices: [], failures: [] });
  });

  it('saves one JSON file per device and loads them all back', async () => {
    await store.save({ name: 'b', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] });
    await store.save({ name: 'a', table: '0 16 error\n', options: { readOnly: true, queues: 2, depth: 32 }, uuid: 'u-1', lowers: [] });
    assert.deepEqual((await fsp.readdir(store.dir)).sort(), ['a.json', 'b.json']);
    const { devices, failures } = await store.loadAll();
    assert.deepEqual(failures, []);
    assert.deepEqual(devices, [
      { name: 'a', table: '0 16 error\n', options: { readOnly: true, queues: 2, depth: 32 }, uuid: 'u-1', lowers: [] },
      { name: 'b', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] },
    ]);
  });

  it('replaces a saved table atomically and leaves no temporary file', async () => {
    await store.save({ name: 'a', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] });
    await store.save({ name: 'a', table: '0 8 error\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] });
    assert.deepEqual(await fsp.readdir(store.dir), ['a.json']);
    assert.equal((await store.loadAll()).devices[0]?.table, '0 8 error\n');
  });

  it('keeps the saved files private (0600) in a 0700 directory', async () => {
    await store.save({ name: 'a', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] });
    assert.equal((await fsp.stat(path.join(store.dir, 'a.json'))).mode & 0o777, 0o600);
    assert.equal((await fsp.stat(store.dir)).mode & 0o777, 0o700);
  });

  it('ignores leftover temporary files from an interrupted save', async () => {
    await store.save({ name: 'a', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] });
    await fsp.writeFile(path.join(store.dir, '.b.json.123.tmp'), '{"half":');
    const { devices, failures } = await store.loadAll();
    assert.deepEqual(devices.map((d) => d.name), ['a']);
    assert.deepEqual(failures, []);
  });

  it('reports unreadable files without losing the others, and leaves them in place', async () => {
    await store.save({ name: 'good', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] });
    await fsp.writeFile(path.join(store.dir, 'broken.json'), 'not json');
    await fsp.writeFile(path.join(store.dir, 'renamed.json'), JSON.stringify({ format: 1, name: 'other', table: '' }));
    const { devices, failures } = await store.loadAll();
    assert.deepEqual(devices.map((d) => d.name), ['good']);
    assert.deepEqual(failures.map((f) => path.basename(f.file)).sort(), ['broken.json', 'renamed.json']);
    assert.ok(await fsp.stat(path.join(store.dir, 'broken.json')));
  });

  it('keeps the ublk identity a later daemon reattaches with, 64-bit values exact (hex in the file)', async () => {
    const ublk = { id: 7, serverFlags: 0xfedc_ba98_7654_3210n, queues: 2, depth: 128, maxIoBytes: 524288, features: 0x58n };
    await store.save({ name: 'a', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [], ublk });
    const raw = JSON.parse(await fsp.readFile(path.join(store.dir, 'a.json'), 'utf8'));
    assert.deepEqual(raw.ublk, { id: 7, serverFlags: '0xfedcba9876543210', queues: 2, depth: 128, maxIoBytes: 524288, features: '0x58' });
    assert.deepEqual((await store.loadAll()).devices[0]!.ublk, ublk);
  });

  it('reports a file whose ublk identity is malformed, and keeps it', async () => {
    await fsp.mkdir(store.dir, { recursive: true });
    await fsp.writeFile(
      path.join(store.dir, 'a.json'),
      JSON.stringify({ format: 1, name: 'a', table: '0 8 zero\n', ublk: { id: 7, serverFlags: 12, queues: 1, depth: 1, maxIoBytes: 4096, features: '0x18' } }),
    );
    const { devices, failures } = await store.loadAll();
    assert.deepEqual(devices, []);
    assert.match(failures[0]!.error.message, /"ublk" needs id, serverFlags/);
  });

  it('deletes a saved device, and deleting an unknown one is not an error', async () => {
    await store.save({ name: 'a', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] });
    await store.delete('a');
    await store.delete('never-saved');
    assert.deepEqual((await store.loadAll()).devices, []);
  });
});
