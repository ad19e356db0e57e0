/**
 * Data-path behaviour of real /dev/ublkbN devices served by linear, zero and error tables,
 * checked with the tools people use on block devices (mkfs, mount, fsck, fio, dd, blkdiscard)
 * and, where the kernel has the same target, against the kernel's own dm as an oracle.
 */
import { strict as assert } from 'node:assert';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox, requireRealUblk, makeBackingFile, mustSh, sh, sha256OfFile, fileBlocks, sha256 } from './harness';

const MiB = 1 << 20;

describe('integration: I/O on real ublk devices', function () {
  let box: Sandbox;

  before(function () {
    requireRealUblk();
    box = new Sandbox('io');
  });
  after(async function () {
    await box?.cleanup();
  });

  it('linear over a file: mkfs.ext4, mount, files, umount, fsck clean, device bytes = backing bytes', async function () {
    const backing = await makeBackingFile(box.dir, 'fs.img', 64 * MiB, 'zero');
    const dev = await box.create('fs', `0 ${(64 * MiB) / 512} linear ${backing} 0`);
    const mnt = join(box.dir, 'mnt');
    await mustSh(`mkfs.ext4 -q -F ${dev} && mkdir -p ${mnt} && mount ${dev} ${mnt}`);
    try {
      await mustSh(`for i in $(seq 1 20); do head -c $((i * 37 * 1024)) /dev/urandom > ${mnt}/f$i; done; mkdir ${mnt}/d; cp ${mnt}/f7 ${mnt}/d/copy; sync`);
      const sums = await mustSh(`cd ${mnt} && sha256sum f* d/copy`);
      await mustSh(`umount ${mnt} && mount ${dev} ${mnt}`);
      assert.equal(await mustSh(`cd ${mnt} && sha256sum f* d/copy`), sums, 'files read back after remount');
    } finally {
      await sh(`umount ${mnt}`);
    }
    await mustSh(`fsck.ext4 -fn ${dev}`);
    assert.equal(await sha256OfFile(dev), await sha256OfFile(backing), 'device bytes equal the backing file');
    await box.ok(['remove', 'fs']);
  });

  it('fio random writes then verify (crc32c), QD 32, device with 2 queues', async function () {
    const backing = await makeBackingFile(box.dir, 'fio.img', 64 * MiB, 'zero');
    const dev = await box.create('fio', `0 ${(64 * MiB) / 512} linear ${backing} 0`, ['--queues', '2']);
    const info = JSON.parse(await box.ok(['info', 'fio', '--json']));
    assert.equal(info.queues, 2, 'the device has two queues');
    // Two jobs, so both vCPUs (and so both hardware queues) submit; each verifies its own half.
    const out = await mustSh(`fio --name=verify --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 ` +
      `--rw=randwrite --bs=4k --iodepth=32 --numjobs=2 --size=16M --offset_increment=32M --verify=crc32c ` +
      `--do_verify=1 --verify_fatal=1 --verify_state_save=0 --group_reporting --output-format=terse`, { timeoutMs: 600_000 });
    const fields = out.trim().split('\n').pop()!.split(';');
    assert.equal(fields[4], '0', `fio reported errors: ${out}`);
    await box.ok(['remove', 'fio']);
  });

  it('three segments (linear + zero + linear) read back as expected, and match kernel dm on the same table', async function () {
    const a = await makeBackingFile(box.dir, 'a.img', 4 * MiB);
    const b = await makeBackingFile(box.dir, 'b.img', 4 * MiB);
    const table = [`0 2048 linear ${a} 1024`, '2048 1024 zero', `3072 4096 linear ${b} 0`].join('\n');
    const dev = await box.create('three', table);
    const got = await readFile(dev);
    const aBytes = await readFile(a);
    const bBytes = await readFile(b);
    const expected = Buffer.concat([aBytes.subarray(1024 * 512, 3072 * 512), Buffer.alloc(1024 * 512), bBytes.subarray(0, 4096 * 512)]);
    assert.equal(got.length, 7168 * 512, 'device size is the sum of the segments');
    assert.equal(sha256(got), sha256(expected));

    // The kernel's dm-linear/dm-zero over loop devices of the same files is the oracle.
    const loopA = (await mustSh(`losetup -f --show ${a}`)).trim();
    const loopB = (await mustSh(`losetup -f --show ${b}`)).trim();
    try {
      const kTable = [`0 2048 linear ${loopA} 1024`, '2048 1024 zero', `3072 4096 linear ${loopB} 0`].join('\n');
      await mustSh(`dmsetup create oracle3 <<'T'\n${kTable}\nT`);
      try {
        assert.equal(sha256(await readFile('/dev/mapper/oracle3')), sha256(got), 'same bytes as kernel dm');
        // Same table on our side over the loop devices: table and status text must match dmsetup's byte for byte.
        await box.create('three-loop', kTable);
        assert.equal(await box.ok(['table', 'three-loop']), await mustSh('dmsetup table oracle3'));
        assert.equal(await box.ok(['status', 'three-loop']), await mustSh('dmsetup status oracle3'));
        await box.ok(['remove', 'three-loop']);
      } finally {
        await sh('dmsetup remove oracle3');
      }
    } finally {
      await sh(`losetup -d ${loopA} ${loopB}`);
    }
    await box.ok(['remove', 'three']);
  });

  it('error target: dd gets EIO', async function () {
    const dev = await box.create('err', '0 2048 error');
    const r = await sh(`dd if=${dev} of=/dev/null bs=4k count=1 iflag=direct`);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Input\/output error/);
    const w = await sh(`dd if=/dev/zero of=${dev} bs=4k count=1 oflag=direct`);
    assert.notEqual(w.code, 0);
    assert.match(w.stderr, /Input\/output error/);
    await box.ok(['remove', 'err']);
  });

  it('FLUSH reaches the backing device (kernel flush counter of the loop device under us moves)', async function () {
    const img = await makeBackingFile(box.dir, 'flush.img', 8 * MiB, 'zero');
    const loop = (await mustSh(`losetup -f --show ${img}`)).trim();
    const statPath = `/sys/block/${loop.replace('/dev/', '')}/stat`;
    // Field 16 of /sys/block/X/stat: flush requests completed.
    const flushes = async () => Number((await readFile(statPath, 'utf8')).trim().split(/\s+/)[15]);
    try {
      const dev = await box.create('flush', `0 ${(8 * MiB) / 512} linear ${loop} 0`);
      await mustSh(`dd if=/dev/urandom of=${dev} bs=4k count=16 oflag=direct`);
      const before = await flushes();
      await mustSh(`dd if=/dev/urandom of=${dev} bs=4k count=1 oflag=direct conv=fsync`);
      assert.ok(await flushes() > before, 'an fsync on our device sent a flush to the loop device');
      const beforeFua = await flushes();
      // O_DSYNC direct writes arrive as FUA writes; they must be made durable underneath too.
      await mustSh(`dd if=/dev/urandom of=${dev} bs=4k count=4 oflag=direct,dsync`);
      assert.ok(await flushes() > beforeFua, 'FUA writes reached stable storage on the loop device');
      await box.ok(['remove', 'flush']);
    } finally {
      await sh(`losetup -d ${loop}`);
    }
  });

  it('discard punches holes in the backing file', async function () {
    const backing = await makeBackingFile(box.dir, 'discard.img', 16 * MiB);
    const dev = await box.create('discard', `0 ${(16 * MiB) / 512} linear ${backing} 0`);
    const before = await fileBlocks(backing);
    await mustSh(`blkdiscard -o ${4 * MiB} -l ${8 * MiB} ${dev}`);
    const after = await fileBlocks(backing);
    assert.ok(before - after >= (8 * MiB) / 512, `8 MiB deallocated (blocks ${before} -> ${after})`);
    const zeroes = await mustSh(`dd if=${dev} bs=1M skip=4 count=8 iflag=direct status=none | tr -d '\\0' | wc -c`);
    assert.equal(zeroes.trim(), '0', 'the discarded range reads back as zeroes');
    const head = await mustSh(`dd if=${dev} bs=1M count=4 iflag=direct status=none | sha256sum`);
    assert.equal(head.split(' ')[0], await sha256OfFile(backing, 4 * MiB), 'data outside the range is untouched');
    await box.ok(['remove', 'discard']);
  });

  it('write-zeroes (BLKZEROOUT) zeroes a range of the backing file', async function () {
    const backing = await makeBackingFile(box.dir, 'zeroout.img', 8 * MiB);
    const dev = await box.create('zeroout', `0 ${(8 * MiB) / 512} linear ${backing} 0`);
    const tailBefore = await mustSh(`tail -c ${6 * MiB} ${backing} | sha256sum`);
    const blocksBefore = await fileBlocks(backing);
    // BLKZEROOUT asks for zeroes without deallocation (NOUNMAP); tmpfs has no ZERO_RANGE.
    await mustSh(`blkdiscard -z -o ${1 * MiB} -l ${1 * MiB} ${dev}`);
    assert.equal(await fileBlocks(backing), blocksBefore, 'the zeroed range stays allocated');
    const zeroes = await mustSh(`dd if=${backing} bs=1M skip=1 count=1 status=none | tr -d '\\0' | wc -c`);
    assert.equal(zeroes.trim(), '0', 'the range is zero in the backing file');
    assert.equal(await mustSh(`tail -c ${6 * MiB} ${backing} | sha256sum`), tailBefore, 'the rest is untouched');
    await box.ok(['remove', 'zeroout']);
  });
});
