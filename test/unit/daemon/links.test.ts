import assert from 'node:assert/strict';
import { mkdtempSync, readlinkSync, rmSync, existsSync, writeFileSync, mkdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DeviceLinks } from '../../../src/daemon/links';
import { daemonPaths } from '../../../src/daemon/paths';

describe('daemon: device links', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'links-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('links NAME in the link directory and in the mapper directory, and removes both', async () => {
    const links = new DeviceLinks(path.join(dir, 'ublk-dm'), path.join(dir, 'mapper'));
    await links.create('vol', '/dev/ublkb3');
    assert.equal(readlinkSync(path.join(dir, 'ublk-dm', 'vol')), '/dev/ublkb3');
    assert.equal(readlinkSync(path.join(dir, 'mapper', 'vol')), '/dev/ublkb3');
    await links.create('vol', '/dev/ublkb4'); // a stale link from before a crash is replaced
    assert.equal(readlinkSync(path.join(dir, 'mapper', 'vol')), '/dev/ublkb4');
    await links.remove('vol');
    assert.ok(!existsSync(path.join(dir, 'ublk-dm', 'vol')));
    assert.ok(!existsSync(path.join(dir, 'mapper', 'vol')));
  });

  it('never replaces or removes a mapper entry that is not one of ours (a kernel dm device of the same name)', async () => {
    const mapper = path.join(dir, 'mapper');
    mkdirSync(mapper);
    writeFileSync(path.join(mapper, 'node'), ''); // stands in for the kernel's block node
    symlinkSync('../dm-3', path.join(mapper, 'udevlink'));
    const links = new DeviceLinks(path.join(dir, 'ublk-dm'), mapper);
    for (const name of ['node', 'udevlink']) {
      await links.create(name, '/dev/ublkb1');
      assert.equal(readlinkSync(path.join(dir, 'ublk-dm', name)), '/dev/ublkb1');
      await links.remove(name);
    }
    assert.ok(existsSync(path.join(mapper, 'node')));
    assert.equal(readlinkSync(path.join(mapper, 'udevlink')), '../dm-3');
  });

  it('uses /dev/mapper only with the default link directory, unless UBLK_DM_MAPPER_DIR says', () => {
    assert.equal(daemonPaths({}).mapperDir, '/dev/mapper');
    assert.equal(daemonPaths({ UBLK_DM_LINK_DIR: '/tmp/l' }).mapperDir, undefined);
    assert.equal(daemonPaths({ UBLK_DM_LINK_DIR: '/tmp/l', UBLK_DM_MAPPER_DIR: '/tmp/m' }).mapperDir, '/tmp/m');
    assert.equal(daemonPaths({ UBLK_DM_MAPPER_DIR: '' }).mapperDir, undefined);
  });
});
