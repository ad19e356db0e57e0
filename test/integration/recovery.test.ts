/**
 * The daemon dies, the devices do not: ublk user recovery. A SIGKILLed daemon's devices stay in
 * the kernel (quiesced, their I/O queued) and the next daemon reattaches to them, same
 * /dev/ublkbN, with nothing failed. And no kernel device is ever left behind: not by a crash,
 * not by a failed or crowded create.
 */
import { strict as assert } from 'node:assert';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox, background, daemonPid, dmesgLineCount, makeBackingFile, mustSh, newDmesgErrors, processExited, requireRealUblk, sh, sha256OfFile, sleep } from './harness';

const MiB = 1 << 20;

interface Listed {
  name: string;
  blockPath: string;
}

/** SIGKILL the daemon and wait until it is gone. */
async function killDaemon(box: Sandbox): Promise<void> {
  const pid = await daemonPid(box);
  process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 200 && !processExited(pid); i++) await sleep(50);
  assert.ok(processExited(pid), `daemon ${pid} survived SIGKILL`);
}

/** The ublk devices the kernel holds (every one has a char device from ADD_DEV to DEL_DEV). */
async function kernelUblkIds(): Promise<number[]> {
  const out = await sh('ls /sys/class/ublk-char 2>/dev/null');
  return out.stdout
    .split('\n')
    .map((name) => /^ublkc(\d+)$/.exec(name)?.[1])
    .filter((id): id is string => id !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
}

function idOf(blockPath: string): number {
  return Number(/^\/dev\/ublkb(\d+)$/.exec(blockPath)![1]);
}

async function listed(box: Sandbox): Promise<Listed[]> {
  return JSON.parse(await box.ok(['ls', '--json'])) as Listed[];
}

/**
 * fio writing `size` of 4 KiB blocks with crc32c headers, then reading every block back to
 * verify. The rate keeps the write phase a few seconds long whatever the guest's speed, so a
 * kill a second in lands among the writes.
 */
function fioVerify(dev: string, size: string, rateIops = 800): string {
  return `fio --name=recov --filename=${dev} --allow_file_create=0 --ioengine=libaio --direct=1 --rw=randwrite --bs=4k ` +
    `--iodepth=8 --size=${size} --rate_iops=${rateIops} --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 ` +
    `--output-format=terse`;
}

/** fio's terse line: field 4 is the error count; the exit code says whether verify passed. */
function assertFioClean(result: { code: number; output: string }): void {
  assert.equal(result.code, 0, `fio failed:\n${result.output}`);
  const terse = result.output.trim().split('\n').pop()!.split(';');
  assert.equal(terse[4], '0', `fio reported errors:\n${result.output}`);
}

describe('integration: the daemon dies, the devices do not (ublk user recovery)', function () {
  let box: Sandbox;
  let baseline: number[];

  before(async function () {
    requireRealUblk();
    box = new Sandbox('recov');
    baseline = await kernelUblkIds();
  });
  after(async function () {
    await box?.cleanup();
  });

  /** The kernel's devices that this suite made: exactly the ones the daemon lists. */
  async function assertKernelHoldsOnlyListed(): Promise<void> {
    const ours = (await listed(box)).map((d) => idOf(d.blockPath)).sort((a, b) => a - b);
    const kernel = (await kernelUblkIds()).filter((id) => !baseline.includes(id));
    assert.deepEqual(kernel, ours, 'the kernel holds no ublk device the daemon does not list');
  }

  it('SIGKILL during fio --verify=crc32c writes on linear: the next daemon recovers the same /dev/ublkbN, fio finishes and verifies', async function () {
    const backing = await makeBackingFile(box.dir, 'fio.img', 32 * MiB, 'zero');
    const dev = await box.create('lin', `0 ${(32 * MiB) / 512} linear ${backing} 0`, ['--queues', '2']);
    const fio = background(fioVerify(dev, '16m'));
    await sleep(1500);
    await killDaemon(box);
    await sleep(1000);
    assert.ok(existsSync(`/sys/block/${dev.replace('/dev/', '')}`), 'the kernel keeps the block device while no daemon runs');
    assert.equal(fio.child.exitCode, null, 'fio waits for the daemon instead of failing');

    const back = await listed(box); // starts the next daemon, which recovers the device
    assert.deepEqual(back.map((d) => [d.name, d.blockPath]), [['lin', dev]], 'the same device, same number');
    assertFioClean(await fio.done);
    assert.equal(JSON.parse(await box.ok(['info', 'lin', '--json'])).queues, 2, 'with its queues');
    await assertKernelHoldsOnlyListed();
    await box.ok(['remove', 'lin']);
  });

  it('SIGKILL with ext4 mounted and a writer running: the writer goes on, no EIO, every fsynced file intact, fsck clean', async function () {
    const backing = await makeBackingFile(box.dir, 'fs.img', 64 * MiB, 'zero');
    const dev = await box.create('fs', `0 ${(64 * MiB) / 512} linear ${backing} 0`);
    const mnt = join(box.dir, 'fsmnt');
    const sums = join(box.dir, 'fs.sums');
    const stop = join(box.dir, 'fs.stop');
    await mustSh(`mkfs.ext4 -q -F ${dev} && mkdir -p ${mnt} && mount ${dev} ${mnt}`);
    const dmesgBefore = await dmesgLineCount();
    try {
      // Every file is fsynced before its checksum is recorded: each recorded file must read back so.
      const writer = background(
        `i=0; while [ ! -e ${stop} ]; do ` +
          `dd if=/dev/urandom of=${mnt}/f$i bs=64k count=4 conv=fsync status=none || { echo "write f$i failed"; exit 1; }; ` +
          `sha256sum ${mnt}/f$i >> ${sums} || exit 1; i=$((i+1)); done; echo "wrote $i files"`,
      );
      await sleep(2000);
      await killDaemon(box);
      await sleep(1500);
      assert.equal(writer.child.exitCode, null, 'the writer waits while no daemon runs');
      assert.deepEqual((await listed(box)).map((d) => d.blockPath), [dev], 'the same device comes back');
      const before = (await readFile(sums, 'utf8')).split('\n').length;
      await sleep(3000);
      await mustSh(`touch ${stop}`);
      const result = await writer.done;
      assert.equal(result.code, 0, `the writer saw an error: ${result.output}`);
      assert.ok((await readFile(sums, 'utf8')).split('\n').length > before, 'the writer went on writing after recovery');
      await mustSh(`sha256sum --quiet -c ${sums}`);
      assert.deepEqual(await newDmesgErrors(dmesgBefore, dev), [], 'no I/O error, no ext4 or JBD2 complaint in the kernel log');
    } finally {
      await sh(`umount ${mnt}`);
    }
    await mustSh(`fsck.ext4 -fn ${dev}`);
    await box.ok(['remove', 'fs']);
  });

  it('SIGKILL three times in a row during I/O: every time the same device, fio verifies, no dead ublk device left', async function () {
    const backing = await makeBackingFile(box.dir, 'again.img', 16 * MiB, 'zero');
    const dev = await box.create('again', `0 ${(16 * MiB) / 512} linear ${backing} 0`);
    // An unrelated second device rides along through every crash.
    const other = await makeBackingFile(box.dir, 'other.img', 4 * MiB);
    const otherSum = await sha256OfFile(other);
    const otherDev = await box.create('other', `0 ${(4 * MiB) / 512} linear ${other} 0`);
    // Three rounds: the first recovers from the original daemon, the others from recovered ones.
    for (let round = 1; round <= 3; round++) {
      const fio = background(fioVerify(dev, '8m', 1000));
      await sleep(1000);
      await killDaemon(box);
      const back = await listed(box);
      assert.deepEqual(back.map((d) => [d.name, d.blockPath]), [['again', dev], ['other', otherDev]], `round ${round}: the same devices`);
      assertFioClean(await fio.done);
    }
    assert.equal(await sha256OfFile(otherDev), otherSum, 'the other device serves its bytes');
    await assertKernelHoldsOnlyListed();
    await box.ok(['remove', 'again']);
    await box.ok(['remove', 'other']);
  });

  it('SIGKILL during fio on the top of a three-level stack of our own devices: all come back on their numbers, fio verifies, the unrelated device untouched', async function () {
    const bottomImg = await makeBackingFile(box.dir, 'st-bottom.img', 16 * MiB, 'zero');
    const unrelatedImg = await makeBackingFile(box.dir, 'st-unrelated.img', 4 * MiB);
    const unrelatedSum = await sha256OfFile(unrelatedImg);
    const bottom = await box.create('st-bottom', `0 ${(16 * MiB) / 512} linear ${bottomImg} 0`);
    await box.create('st-aaa-unrelated', `0 ${(4 * MiB) / 512} linear ${unrelatedImg} 0`);
    await box.create('st-middle', `0 ${(12 * MiB) / 512} linear ${bottom} ${(2 * MiB) / 512}`);
    const top = await box.create('st-top', `0 ${(8 * MiB) / 512} linear ${join(box.linkDir, 'st-middle')} ${(2 * MiB) / 512}`);
    const before = (await listed(box)).map((d) => [d.name, d.blockPath]);
    const fio = background(fioVerify(top, '8m', 600));
    await sleep(2000);
    await killDaemon(box);
    assert.deepEqual((await listed(box)).map((d) => [d.name, d.blockPath]), before, 'every device on its number');
    assertFioClean(await fio.done);
    // top sector s is middle s + 2 MiB is bottom s + 4 MiB: what fio wrote through the stack is there.
    assert.equal(await sha256OfFile(top), (await mustSh(`dd if=${bottomImg} bs=1M skip=4 count=8 status=none | sha256sum`)).split(' ')[0]);
    assert.equal(await sha256OfFile(unrelatedImg), unrelatedSum, 'nothing was written to the unrelated device');
    for (const name of ['st-top', 'st-middle', 'st-bottom', 'st-aaa-unrelated']) await box.ok(['remove', name]);
  });

  it('ten parallel creates, then ten parallel removes: all succeed, and the kernel holds no device the daemon does not list', async function () {
    await box.ok(['ls']); // one daemon, up before the crowd arrives
    const names = Array.from({ length: 10 }, (_, i) => `par${i}`);
    const files = await Promise.all(names.map((name) => makeBackingFile(box.dir, `${name}.img`, 4 * MiB, 'zero')));
    const created = await Promise.all(names.map((name, i) => box.cli(['create', name, '--table', `0 ${(4 * MiB) / 512} linear ${files[i]} 0`])));
    for (const [i, r] of created.entries()) assert.equal(r.code, 0, `create ${names[i]}: ${r.stderr}`);
    assert.deepEqual((await listed(box)).map((d) => d.name).sort(), names);
    await assertKernelHoldsOnlyListed();
    const removed = await Promise.all(names.map((name) => box.cli(['remove', name])));
    for (const [i, r] of removed.entries()) assert.equal(r.code, 0, `remove ${names[i]}: ${r.stderr}`);
    assert.deepEqual(await listed(box), []);
    assert.deepEqual((await kernelUblkIds()).filter((id) => !baseline.includes(id)), [], 'every kernel device is gone');
  });

  it('a transient (N) snapshot cannot survive the daemon: after a SIGKILL it comes back Invalid, with a warning, its origin intact', async function () {
    const originFile = await makeBackingFile(box.dir, 'tso.img', 4 * MiB);
    const originSum = await sha256OfFile(originFile);
    await box.create('tso', `0 ${(4 * MiB) / 512} linear ${originFile} 0`);
    await box.ok(['snapshot', 'create', 'tsnap', '--origin', 'tso', '--cow', join(box.dir, 'tso.cow'), '--size', '2m', '--chunk', '4k', '--store', 'N']);
    assert.match(await box.ok(['status', 'tsnap']), /^0 8192 snapshot \d+\/\d+ \d+\n$/, 'valid before the crash');
    const [originDev] = (await listed(box)).filter((d) => d.name === 'tso').map((d) => d.blockPath);
    await killDaemon(box);
    const back = await listed(box);
    assert.deepEqual(back.map((d) => d.name), ['tsnap', 'tso']);
    assert.equal(back.find((d) => d.name === 'tso')!.blockPath, originDev, 'the origin is reattached');
    assert.equal(await box.ok(['status', 'tsnap']), '0 8192 snapshot Invalid\n', 'its exceptions were in the dead daemon\'s memory');
    const log = await readFile(join(box.env.UBLK_DM_RUN_DIR!, 'daemon.log'), 'utf8');
    assert.match(log, /warn: tsnap: snapshot: a transient \(N\) snapshot .* did not survive it: it is Invalid/);
    assert.equal(await sha256OfFile(originDev!), originSum, 'the origin reads as before');
    await box.ok(['remove', 'tsnap']);
    await box.ok(['remove', 'tso']);
  });

  it('a daemon run with --no-recovery: its SIGKILLed device dies, the next daemon makes it anew and deletes the dead one', async function () {
    await box.stopDaemon();
    box.env.UBLK_DM_RECOVERY = 'off';
    try {
      await box.startDaemon();
    } finally {
      delete box.env.UBLK_DM_RECOVERY;
    }
    const backing = await makeBackingFile(box.dir, 'norec.img', 4 * MiB);
    const dev = await box.create('norec', `0 ${(4 * MiB) / 512} linear ${backing} 0`);
    const sum = await sha256OfFile(backing);
    await killDaemon(box);
    for (let i = 0; i < 100 && existsSync(`/sys/block/${dev.replace('/dev/', '')}`); i++) await sleep(50);
    assert.ok(!existsSync(`/sys/block/${dev.replace('/dev/', '')}`), 'without recovery the block device dies with the daemon');
    assert.ok((await kernelUblkIds()).includes(idOf(dev)), 'and its dead ublk device is still in the kernel');
    const back = (await listed(box)).filter((d) => d.name === 'norec'); // the next daemon (recovery on again)
    assert.equal(back.length, 1);
    assert.equal(await sha256OfFile(back[0]!.blockPath), sum, 'made anew over the same table');
    await assertKernelHoldsOnlyListed();
    await box.ok(['remove', 'norec']);
  });
});
