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

  it('deletes a saved device, and deleting an unknown one is not an error', async () => {
    await store.save({ name: 'a', table: '0 8 zero\n', options: { readOnly: false }, uuid: 'u-1', lowers: [] });
    await store.delete('a');
    await store.delete('never-saved');
    assert.deepEqual((await store.loadAll()).devices, []);
  });
});
