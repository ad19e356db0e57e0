/**
 * striped, flakey and delay on real /dev/ublkbN devices: striped against the kernel's dm-striped
 * on the same kind of files (the same bytes must land in each file), flakey in the power-cut
 * scenario filesystem test suites run through `$DMSETUP_PROG`, and delay timed from outside.
 */
import { strict as assert } from 'node:assert';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox, makeBackingFile, mustSh, projectRoot, requireRealUblk, sh } from './harness';

const MiB = 1 << 20;

describe('fault-injection family on real devices (striped, flakey, delay, ublk-dmsetup)', function () {
  this.timeout(600_000);
  let box: Sandbox;
  let work: string;
  let mapperDir: string;
  let dmsetup: string;
  const undo: Array<() => Promise<unknown>> = [];

  before(async () => {
    requireRealUblk();
    for (const tool of ['dmsetup', 'losetup', 'fio', 'mkfs.ext4', 'fsck.ext4', 'cmp']) await mustSh(`command -v ${tool}`);
    box = new Sandbox('fault');
    work = join(box.dir, 'work');
    mkdirSync(work);
    // Where /dev/mapper/NAME links would go, kept inside the sandbox so the guest's /dev/mapper (kernel dm's) is not touched.
    mapperDir = join(box.dir, 'mapper');
    box.env.UBLK_DM_MAPPER_DIR = mapperDir;
    dmsetup = `${process.execPath} ${join(projectRoot, 'bin', 'ublk-dmsetup')}`;
  });

  afterEach(async () => {
    for (const step of undo.splice(0).reverse()) await step().catch(() => undefined);
  });

  after(async () => {
    await box?.cleanup();
  });

  it('striped over 3 files puts the same bytes in each file as the kernel\'s dm-striped over loop devices of like files', async () => {
    const stripeBytes = 4 * MiB;
    const chunkSectors = 128;
    const lengthSectors = (3 * stripeBytes) / 512;
    const ours = await Promise.all([0, 1, 2].map((i) => makeBackingFile(work, `ours${i}`, stripeBytes, 'zero')));
    const theirs = await Promise.all([0, 1, 2].map((i) => makeBackingFile(work, `kernel${i}`, stripeBytes, 'zero')));
    const loops: string[] = [];
    for (const file of theirs) loops.push((await mustSh(`losetup -f --show --direct-io=on ${file}`)).trim());
    undo.push(async () => {
      for (const loop of loops) await sh(`losetup -d ${loop}`);
    });
    const dev = await box.create('st', `0 ${lengthSectors} striped 3 ${chunkSectors} ${ours.map((f) => `${f} 0`).join(' ')}`);
    undo.push(() => box.cli(['remove', 'st']));
    await mustSh(`DM_DISABLE_UDEV=1 dmsetup create kst --table '0 ${lengthSectors} striped 3 ${chunkSectors} ${loops.map((l) => `${l} 0`).join(' ')}'`);
    undo.push(() => sh('DM_DISABLE_UDEV=1 dmsetup remove kst'));

    // Offset-stamped data (fio's buffers differ from run to run otherwise): the content of each
    // block depends only on where it is, so both devices must end up identical. One pass of
    // 96 KiB writes crosses chunk boundaries; one of random 4 KiB writes lands inside chunks.
    for (const target of [dev, '/dev/mapper/kst']) {
      for (const pass of ['--rw=write --bs=96k', '--rw=randwrite --bs=4k --size=2M --randseed=7']) {
        await mustSh(`fio --name=stamp --filename=${target} --allow_file_create=0 --ioengine=io_uring --direct=1 ${pass} ` +
          `--verify=pattern --verify_pattern=%o --do_verify=0 --verify_state_save=0 --output-format=terse`, { timeoutMs: 300_000 });
      }
    }
    await mustSh(`cmp ${dev} /dev/mapper/kst`);
    assert.equal((await box.ok(['status', 'st'])).trim(), `0 ${lengthSectors} striped 3 ${ours.join(' ')} 1 AAA`);
    await box.ok(['remove', 'st']);
    await mustSh('DM_DISABLE_UDEV=1 dmsetup remove kst');
    for (let i = 0; i < 3; i++) await mustSh(`cmp ${ours[i]} ${theirs[i]}`);
    const allZero = await sh(`cmp -s -n ${stripeBytes} /dev/zero ${ours[0]}`);
    assert.notEqual(allZero.code, 0, 'the stripes were written: the first is not all zeroes');
  });

  it('power cut: ublk-dmsetup switches flakey to drop_writes under a mounted ext4; every fsynced file survives, the rest is gone, fsck is clean', async () => {
    const file = await makeBackingFile(work, 'flakey.img', 64 * MiB, 'zero');
    const sectors = (64 * MiB) / 512;
    const mnt = join(box.dir, 'mnt');
    mkdirSync(mnt);
    undo.push(() => sh(`umount ${mnt}; ${dmsetup} remove pc`, { env: box.env }));
    // Written the way xfstests' common/dmflakey drives $DMSETUP_PROG.
    const script = `
      set -euo pipefail
      DMSETUP_PROG="${dmsetup}"
      allow="0 ${sectors} flakey ${file} 0 180 0"
      drop="0 ${sectors} flakey ${file} 0 0 180 1 drop_writes"
      $DMSETUP_PROG create pc --table "$allow"
      dev=${mapperDir}/pc
      test -b "$(readlink -f $dev)"
      mkfs.ext4 -q -F $dev
      mount $dev ${mnt}
      for i in 1 2 3 4; do
        head -c 1048576 /dev/urandom | dd of=${mnt}/kept$i bs=1M conv=fsync status=none
      done
      sync
      sha256sum ${mnt}/kept* > ${box.dir}/kept.sha
      $DMSETUP_PROG suspend --nolockfs pc
      $DMSETUP_PROG load pc --table "$drop"
      $DMSETUP_PROG resume pc
      $DMSETUP_PROG table pc | grep -q 'drop_writes'
      head -c 1048576 /dev/urandom > ${mnt}/lost
      rm ${mnt}/kept4
      sync
      umount ${mnt}
      $DMSETUP_PROG suspend pc
      $DMSETUP_PROG load pc --table "$allow"
      $DMSETUP_PROG resume pc
      mount $dev ${mnt}
      sha256sum -c ${box.dir}/kept.sha
      test ! -e ${mnt}/lost
      umount ${mnt}
      fsck.ext4 -fn $dev
      $DMSETUP_PROG remove pc
      test ! -e $dev
    `;
    const result = await sh(script, { env: box.env, timeoutMs: 400_000 });
    assert.equal(result.code, 0, `the power-cut script failed:\n${result.stdout}\n${result.stderr}`);
    assert.match(result.stdout, /kept4: OK/, 'a file removed after the cut is still there');
  });

  it('delay holds reads and writes for their own delays, shows them held in status, and a suspend sends them at once', async () => {
    const file = await makeBackingFile(work, 'delay.img', 4 * MiB, 'random');
    const sectors = (4 * MiB) / 512;
    const dev = await box.create('dl', `0 ${sectors} delay ${file} 0 0 ${file} 0 8000`);
    undo.push(() => box.cli(['remove', 'dl']));
    const timed = async (command: string): Promise<number> => {
      const started = process.hrtime.bigint();
      await mustSh(command, { env: box.env });
      return Number(process.hrtime.bigint() - started) / 1e6;
    };
    const readMs = await timed(`dd if=${dev} of=/dev/null bs=4k count=1 iflag=direct status=none`);
    // A write is held: status shows it in the write class until it leaves. The delay is long
    // because each CLI call costs a second or more in the TCG guest.
    const writer = sh(`dd if=/dev/zero of=${dev} bs=4k count=1 seek=5 oflag=direct status=none`);
    const started = process.hrtime.bigint();
    let held = '';
    for (let i = 0; i < 20 && !/ 0 1 0$/.test(held); i++) held = (await box.ok(['status', 'dl'])).trim();
    assert.match(held, / delay 0 1 0$/, 'the write is held in the write class');
    assert.equal((await writer).code, 0);
    const writeMs = Number(process.hrtime.bigint() - started) / 1e6;
    assert.ok(writeMs >= 7900, `the write took ${writeMs} ms, less than its 8000 ms delay`);
    assert.ok(readMs < writeMs, `reads are not delayed (read ${readMs} ms, write ${writeMs} ms)`);
    assert.equal((await box.ok(['status', 'dl'])).trim(), `0 ${sectors} delay 0 0 0`);

    // Suspend does not wait out a long delay: presuspend sends the held write at once.
    await box.ok(['reload', 'dl', '--table', `0 ${sectors} delay ${file} 0 60000`]);
    await box.ok(['resume', 'dl']);
    const slow = sh(`dd if=/dev/zero of=${dev} bs=4k count=1 seek=9 oflag=direct status=none`);
    held = '';
    for (let i = 0; i < 20 && !/ 0 1 0$/.test(held); i++) held = (await box.ok(['status', 'dl'])).trim();
    assert.match(held, / delay 0 1 0$/, 'the write waits out its 60 s delay');
    const suspendMs = await timed(`${dmsetup} suspend dl`);
    assert.equal((await slow).code, 0);
    assert.ok(suspendMs < 30_000, `suspend waited ${suspendMs} ms: it should release the held write at once`);
    await box.ok(['resume', 'dl']);
  });

  it('log-writes records mkfs and two rounds of files; replay-log to each mark gives an fsck-clean ext4 with that mark\'s files; the kernel\'s log of the same replays too', async () => {
    const sizeBytes = 64 * MiB;
    const sectors = sizeBytes / 512;
    const mnt = join(box.dir, 'lwmnt');
    mkdirSync(mnt);
    const cli = `${process.execPath} ${join(projectRoot, 'bin', 'ublk-dm')}`;
    undo.push(() => sh(`umount ${mnt}; ${dmsetup} remove lw; DM_DISABLE_UDEV=1 dmsetup remove klw`, { env: box.env }));
    const script = `
      set -euo pipefail
      cd ${work}
      truncate -s ${sizeBytes} lw-dev.img
      truncate -s 512M lw-log.img
      record() {  # record DEVICE MESSAGE_CMD: mkfs, mark, files, mark, files, mark
        local dev=$1 message=$2
        mkfs.ext4 -q -F $dev
        $message mkfs
        for round in 1 2; do
          mount $dev ${mnt}
          for i in 1 2 3; do head -c 300000 /dev/urandom > ${mnt}/r$round-$i; done
          sha256sum ${mnt}/r* | sed "s|${mnt}/||" > ${work}/sums-$round
          umount ${mnt}
          $message files$round
        done
      }
      $DMSETUP create lw --table "0 ${sectors} log-writes ${work}/lw-dev.img ${work}/lw-log.img"
      record ${mapperDir}/lw "$DMSETUP message lw 0 mark"
      $DMSETUP status lw
      $DMSETUP remove lw
      # --check mark runs fsck at every mark on the way: the mkfs mark is checked by both replays.
      for n in 1 2; do
        truncate -s 0 replay.img; truncate -s ${sizeBytes} replay.img
        ${cli} replay-log --log lw-log.img --replay replay.img --end-mark files$n --check mark --fsck "fsck.ext4 -fn ${work}/replay.img >/dev/null"
        mount -o ro,noload replay.img ${mnt}
        (cd ${mnt} && sha256sum -c ${work}/sums-$n)
        umount ${mnt}
      done
      # The kernel's log-writes over loop devices, replayed by ours.
      truncate -s 0 k-dev.img k-log.img; truncate -s ${sizeBytes} k-dev.img; truncate -s 512M k-log.img
      kdev=$(losetup -f --show k-dev.img); klog=$(losetup -f --show k-log.img)
      DM_DISABLE_UDEV=1 dmsetup create klw --table "0 ${sectors} log-writes $kdev $klog"
      record /dev/mapper/klw "env DM_DISABLE_UDEV=1 dmsetup message klw 0 mark"
      DM_DISABLE_UDEV=1 dmsetup remove klw
      losetup -d $kdev $klog
      truncate -s 0 replay.img; truncate -s ${sizeBytes} replay.img
      ${cli} replay-log --log k-log.img --replay replay.img --end-mark files2 --check mark --fsck "fsck.ext4 -fn ${work}/replay.img >/dev/null"
      mount -o ro,noload replay.img ${mnt}; (cd ${mnt} && sha256sum -c ${work}/sums-2); umount ${mnt}
    `;
    const result = await sh(`DMSETUP="${dmsetup}"; ${script}`, { env: box.env, timeoutMs: 500_000 });
    assert.equal(result.code, 0, `the log-writes script failed:\n${result.stdout}\n${result.stderr}`);
    assert.equal((result.stdout.match(/checked after entry \d+ \(mark files2\): ok/g) ?? []).length, 2, result.stdout);
    assert.equal((result.stdout.match(/checked after entry \d+ \(mark mkfs\): ok/g) ?? []).length, 3, result.stdout);
    assert.match(result.stdout, /r2-3: OK/);
  });
});
