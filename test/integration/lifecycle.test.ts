/**
 * Device lifecycle through the CLI and daemon: suspend/resume, reload under a live mount,
 * daemon restart, remove (idle and busy), and bad input that must change nothing.
 */
import { strict as assert } from 'node:assert';
import { existsSync, readlinkSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { Sandbox, requireRealUblk, makeBackingFile, mustSh, sh, sha256OfFile, sleep, ublkBlockNodes } from './harness';

const MiB = 1 << 20;

describe('integration: device lifecycle', function () {
  let box: Sandbox;

  before(function () {
    requireRealUblk();
    box = new Sandbox('life');
  });
  after(async function () {
    await box?.cleanup();
  });

  it('create prints the device, links /dev/ublk-dm/NAME, and ls/table/status/info report it', async function () {
    const backing = await makeBackingFile(box.dir, 'show.img', 4 * MiB);
    const dev = await box.create('show', `0 8192 linear ${backing} 0`);
    assert.equal(readlinkSync(join(box.linkDir, 'show')), dev);
    const major = (await mustSh(`stat -c '%t' ${dev}`)).trim();
    const minor = (await mustSh(`stat -c '%T' ${dev}`)).trim();
    const mm = `${parseInt(major, 16)}:${parseInt(minor, 16)}`;
    assert.equal(await box.ok(['ls']), `show\t(${mm})\n`);
    assert.equal(await box.ok(['table', 'show']), `0 8192 linear ${backing} 0\n`);
    assert.equal(await box.ok(['status', 'show']), '0 8192 linear \n');
    const info = await box.ok(['info', 'show']);
    assert.match(info, /^Name:              show$/m);
    assert.match(info, /^State:             ACTIVE$/m);
    assert.match(info, /^Tables present:    LIVE$/m);
    assert.match(info, new RegExp(`^Major, minor:      ${mm.replace(':', ', ')}$`, 'm'));
    assert.match(info, /^Number of targets: 1$/m);
    const json = JSON.parse(await box.ok(['info', 'show', '--json']));
    assert.equal(json.name, 'show');
    assert.equal(json.blockPath, dev);
    await box.ok(['remove', 'show']);
    assert.ok(!existsSync(dev), 'the block device is gone after remove');
    assert.ok(!existsSync(join(box.linkDir, 'show')), 'the link is gone after remove');
  });

  it('suspend: new I/O waits until resume, then completes', async function () {
    const backing = await makeBackingFile(box.dir, 'susp.img', 4 * MiB);
    const dev = await box.create('susp', `0 8192 linear ${backing} 0`);
    await box.ok(['suspend', 'susp']);
    assert.match(await box.ok(['info', 'susp']), /^State:             SUSPENDED$/m);
    const reader = spawn('dd', [`if=${dev}`, 'of=/dev/null', 'bs=4k', 'count=1', 'iflag=direct']);
    const exited = new Promise<number>((r) => reader.on('exit', (code) => r(code ?? -1)));
    let done = false;
    void exited.then(() => { done = true; });
    await sleep(2000);
    assert.equal(done, false, 'a read issued while suspended must wait');
    await box.ok(['resume', 'susp']);
    assert.equal(await exited, 0, 'the held read completes after resume');
    assert.match(await box.ok(['info', 'susp']), /^State:             ACTIVE$/m);
    const second = await box.cli(['resume', 'susp']);
    assert.equal(second.code, 0, 'resuming an active device is harmless');
    await box.ok(['suspend', 'susp']);
    const again = await box.cli(['suspend', 'susp']);
    assert.notEqual(again.code, 0, 'suspending a suspended device is an error');
    await box.ok(['resume', 'susp']);
    await box.ok(['remove', 'susp']);
  });

  it('reload + resume swaps the table under a live mount', async function () {
    const a = await makeBackingFile(box.dir, 'swapA.img', 32 * MiB, 'zero');
    const b = await makeBackingFile(box.dir, 'swapB.img', 32 * MiB, 'zero');
    const dev = await box.create('swap', `0 ${(32 * MiB) / 512} linear ${a} 0`);
    const mnt = join(box.dir, 'swapmnt');
    await mustSh(`mkfs.ext4 -q -F ${dev} && mkdir -p ${mnt} && mount ${dev} ${mnt} && echo before > ${mnt}/one && sync`);
    try {
      await box.ok(['reload', 'swap', '--table', `0 ${(32 * MiB) / 512} linear ${b} 0`]);
      assert.match(await box.ok(['info', 'swap']), /^Tables present:    LIVE & INACTIVE$/m);
      assert.equal(await box.ok(['table', 'swap']), `0 ${(32 * MiB) / 512} linear ${a} 0\n`, 'reload alone changes nothing live');
      await box.ok(['suspend', 'swap']);
      await mustSh(`cp ${a} ${b}`);
      await box.ok(['resume', 'swap']);
      assert.equal(await box.ok(['table', 'swap']), `0 ${(32 * MiB) / 512} linear ${b} 0\n`);
      const aSum = await sha256OfFile(a);
      await mustSh(`head -c 300000 /dev/urandom > ${mnt}/two && sync && cat ${mnt}/one`);
      assert.equal(await sha256OfFile(a), aSum, 'after the swap nothing is written to the old backing file');
    } finally {
      await sh(`umount ${mnt}`);
    }
    await mustSh(`fsck.ext4 -fn ${b}`);
    await box.ok(['remove', 'swap']);
  });

  it('remove refuses a mounted device with a clear error and keeps it; removes it when idle', async function () {
    const backing = await makeBackingFile(box.dir, 'busy.img', 16 * MiB, 'zero');
    const dev = await box.create('busy', `0 ${(16 * MiB) / 512} linear ${backing} 0`);
    const mnt = join(box.dir, 'busymnt');
    await mustSh(`mkfs.ext4 -q -F ${dev} && mkdir -p ${mnt} && mount ${dev} ${mnt}`);
    try {
      const r = await box.cli(['remove', 'busy']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /busy|in use|mounted|open/i);
      assert.ok(existsSync(dev), 'the device is kept');
      await mustSh(`echo still-here > ${mnt}/x && sync && cat ${mnt}/x`);
    } finally {
      await mustSh(`umount ${mnt}`);
    }
    await box.ok(['remove', 'busy']);
    assert.ok(!existsSync(dev));
  });

  it('a daemon stopped with shutdown --remove-devices removes its kernel devices and brings them back on restart', async function () {
    const backing = await makeBackingFile(box.dir, 'restart.img', 8 * MiB);
    const dev = await box.create('restart', `0 ${(8 * MiB) / 512} linear ${backing} 0`, ['--queues', '2']);
    await mustSh(`dd if=/dev/urandom of=${dev} bs=64k count=16 oflag=direct conv=fsync`);
    const sum = await sha256OfFile(backing);
    await box.stopDaemon();
    assert.ok(!existsSync(dev), 'shutdown --remove-devices removed the kernel device');
    assert.ok((await readdir(box.stateDir)).length > 0, 'the saved table is kept');
    await box.startDaemon();
    const ls = JSON.parse(await box.ok(['ls', '--json'])) as Array<{ name: string; blockPath: string }>;
    const back = ls.find((d) => d.name === 'restart');
    assert.ok(back, 'the device is back after restart');
    assert.equal(await sha256OfFile(back.blockPath), sum, 'and serves the same bytes');
    assert.equal(JSON.parse(await box.ok(['info', 'restart', '--json'])).queues, 2, 'with its options');
    await box.ok(['remove', 'restart']);
    assert.equal((await readdir(box.stateDir)).filter((f) => f.includes('restart')).length, 0, 'remove deletes the saved table');
  });

  describe('bad input: clear error, non-zero exit, nothing created, nothing written', function () {
    let backing: string;
    let sum: string;
    before(async function () {
      backing = await makeBackingFile(box.dir, 'bad.img', 1 * MiB);
      sum = await sha256OfFile(backing);
    });
    afterEach(async function () {
      assert.equal(await sha256OfFile(backing), sum, 'the backing file is unchanged');
    });

    async function refused(args: string[], pattern: RegExp, run: 'in-process' | 'binary' = 'in-process'): Promise<void> {
      const nodesBefore = await ublkBlockNodes();
      const lsBefore = await box.ok(['ls']);
      // In the test's process (a node start costs seconds in the guest); one test runs the real
      // binary, for the exit status scripts see.
      const r = run === 'binary' ? await box.cliProcess(args) : await box.cli(args);
      assert.notEqual(r.code, 0, `ublk-dm ${args.join(' ')} must fail`);
      assert.match(r.stderr, pattern);
      assert.deepEqual(await ublkBlockNodes(), nodesBefore, 'no block device was created');
      assert.equal(await box.ok(['ls']), lsBefore, 'no device was registered');
    }

    it('the real binary exits non-zero with the error on stderr', async function () {
      await refused(['create', 'bad0', '--table', `0 2048 linear ${backing}`], /Invalid argument count/, 'binary');
    });

    it('malformed table', async function () {
      await refused(['create', 'bad1', '--table', `0 2048 linear ${backing}`], /Invalid argument count/);
      await refused(['create', 'bad1', '--table', `0 abc linear ${backing} 0`], /line 1/);
      await refused(['create', 'bad1', '--table', `8 2048 linear ${backing} 0`], /Gap in table/);
      await refused(['create', 'bad1', '--table', '0 2048 frobnicate'], /unknown target type/i);
      await refused(['create', 'bad1', '--table', '0 0 zero'], /zero-length/i);
    });

    it('missing backing file', async function () {
      await refused(['create', 'bad2', '--table', `0 2048 linear ${box.dir}/does-not-exist.img 0`], /does-not-exist\.img/);
    });

    it('segment past the end of the backing file', async function () {
      await refused(['create', 'bad3', '--table', `0 4096 linear ${backing} 0`], /too small/i);
      await refused(['create', 'bad3', '--table', `0 2048 linear ${backing} 1`], /too small/i);
    });

    it('duplicate name', async function () {
      await box.create('dup', `0 2048 linear ${backing} 0`);
      try {
        await refused(['create', 'dup', '--table', '0 2048 zero'], /exists/i);
        assert.equal(await box.ok(['table', 'dup']), `0 2048 linear ${backing} 0\n`, 'the first device is untouched');
      } finally {
        await box.ok(['remove', 'dup']);
      }
    });

    it('removing an unknown name', async function () {
      await refused(['remove', 'no-such-device'], /no-such-device/);
    });

    it('a reload with a bad table leaves the live table alone', async function () {
      await box.create('keep', `0 2048 linear ${backing} 0`);
      try {
        const r = await box.cli(['reload', 'keep', '--table', '0 2048 linear /nonexistent/x 0']);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /nonexistent/);
        assert.match(await box.ok(['info', 'keep']), /^Tables present:    LIVE$/m);
        assert.equal(await box.ok(['table', 'keep']), `0 2048 linear ${backing} 0\n`);
      } finally {
        await box.ok(['remove', 'keep']);
      }
    });
  });
});

