/**
 * Queue threads (daemon/queue-threads.ts): devices with several queues keep every byte, a table
 * swap that moves a device between serving from the threads' own table copies and forwarding to
 * the daemon thread loses nothing in either direction, and the daemon thread's own queue loop
 * (UBLK_DM_QUEUE_LOOP=main) still serves.
 */
import { strict as assert } from 'node:assert';
import { readFile, readdir } from 'node:fs/promises';
import { cpus } from 'node:os';
import { basename } from 'node:path';
import { parseCpuList, possibleCpuCount } from '../../src/base/cpus';
import { Sandbox, daemonPid, requireRealUblk, makeBackingFile, mustSh, sh } from './harness';
import { background, cleanBits, eventNumber, parseMirrorStatus } from './mirror-support';

const MiB = 1 << 20;

/** fio writes with crc32c verify data, then reads it all back and checks it. */
async function fioVerify(dev: string, extra = ''): Promise<void> {
  const r = await sh(
    `fio --name=qt --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k ` +
      `--iodepth=16 --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 ${extra}`,
    { timeoutMs: 600_000 },
  );
  assert.equal(r.code, 0, `fio verify on ${dev} failed:\n${r.stdout}\n${r.stderr}`);
}

/** Offset-stamped pattern over the first `sizeMiB` MiB, written (mode 'write') or checked ('verify'). */
async function stamp(dev: string, mode: 'write' | 'verify', sizeMiB: number): Promise<void> {
  const rw = mode === 'write' ? '--rw=write --do_verify=0' : '--rw=write --verify_only=1';
  const r = await sh(
    `fio --name=stamp --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 --bs=64k --iodepth=8 ` +
      `--size=${sizeMiB}M --verify=pattern --verify_pattern=%o --verify_fatal=1 ${rw}`,
    { timeoutMs: 600_000 },
  );
  assert.equal(r.code, 0, `fio ${mode} stamp on ${dev} failed:\n${r.stdout}\n${r.stderr}`);
}

describe('integration: queue threads', function () {
  let box: Sandbox;

  before(function () {
    requireRealUblk();
    box = new Sandbox('qthreads');
  });

  after(async function () {
    await box?.cleanup();
  });

  // ublk grants at most one queue per possible CPU: the guest has 4 (2 online; the queues of the
  // others exist but get no requests). A machine with fewer fails the 4-queue case with the
  // kernel's grant in the message, rather than leave it out unseen (issue 11 asks for both).
  for (const queues of [2, 4]) {
    it(`serves a ${queues}-queue linear device with fio verify from ${queues} jobs`, async function () {
      const backing = await makeBackingFile(box.dir, `q${queues}.img`, 64 * MiB, 'zero');
      const dev = await box.create(`q${queues}`, `0 ${(64 * MiB) / 512} linear ${backing} 0`, ['--queues', String(queues)]);
      const hardwareQueues = await readdir(`/sys/block/${basename(dev)}/mq`);
      assert.equal(hardwareQueues.length, queues, `the kernel shows ${hardwareQueues.length} queues`);
      // A job per queue, spread over the online CPUs: every queue of an online CPU gets requests.
      const jobBytes = Math.floor(64 / queues);
      await fioVerify(dev, `--numjobs=${queues} --size=${jobBytes}M --offset_increment=${jobBytes}M --cpus_allowed=0-${cpus().length - 1} --cpus_allowed_policy=split`);
      await box.ok(['remove', `q${queues}`]);
    });
  }

  it('runs each queue thread off the CPUs blk-mq maps to its queue (UBLK_DM_QUEUE_CPUS=apart), and where it was once the device goes', async function () {
    // One queue per possible CPU (4 in the guest): each queue has CPUs of its own to stay off.
    const queues = possibleCpuCount();
    assert.ok(queues >= 2, `this machine has ${queues} possible CPU: no queue has CPUs to stay off`);
    const backing = await makeBackingFile(box.dir, 'place.img', 8 * MiB, 'zero');
    const dev = await box.create('place', `0 ${(8 * MiB) / 512} linear ${backing} 0`, ['--queues', String(queues)]);
    const pid = await daemonPid(box);
    // Compared on the online CPUs only: the kernel keeps a thread's mask within the online CPUs
    // when it sets one (sched_setaffinity), not when a thread inherits its creator's.
    const online = parseCpuList(await readFile('/sys/devices/system/cpu/online', 'utf8'));
    const allowed = (await allowedCpus(`/proc/${pid}/status`)).filter((cpu) => online.includes(cpu));
    const threads = await daemonThreadCpus(pid, online);
    let placed = 0;
    for (let queueId = 0; queueId < queues; queueId++) {
      // The kernel's own map, not GET_QUEUE_AFFINITY's answer that the daemon placed by.
      const submitters = parseCpuList(await readFile(`/sys/block/${basename(dev)}/mq/${queueId}/cpu_list`, 'utf8'));
      const apart = allowed.filter((cpu) => !submitters.includes(cpu));
      // With no online CPU apart from its queue's, a thread stays where it was; with none of its
      // queue's online, apart is everywhere: neither says whether the daemon placed it.
      if (apart.length === 0 || apart.length === allowed.length) continue;
      placed++;
      assert.ok(threads.includes(apart.join(',')), `queue ${queueId} takes CPUs ${submitters}: no thread of the daemon runs on ${apart} alone (its threads: ${threads.join(' | ')})`);
    }
    assert.ok(placed >= 2, `only ${placed} queues had an online CPU to run apart on`);
    await box.ok(['remove', 'place']);
    const after = await daemonThreadCpus(pid, online);
    assert.ok(after.every((cpus) => cpus === allowed.join(',')), `with no device, a thread still runs apart: ${after.join(' | ')} (the daemon: ${allowed})`);
  });

  it('serves a 1-queue linear over a tmpfs file: fio verify, and the bytes are the file\'s', async function () {
    const shm = `${box.dir}/shm`;
    await mustSh(`mkdir -p ${shm} && mount -t tmpfs -o size=96m ublkdm-test ${shm}`);
    try {
      const backing = `${shm}/back.img`;
      await mustSh(`truncate -s 64M ${backing}`);
      const dev = await box.create('shm', `0 ${(64 * MiB) / 512} linear ${backing} 0`);
      await fioVerify(dev, '--iodepth=32');
      await stamp(dev, 'write', 16);
      await stamp(dev, 'verify', 16);
      await mustSh(`cmp -n ${16 * MiB} ${dev} ${backing}`);
      await box.ok(['remove', 'shm']);
    } finally {
      await sh(`umount ${shm}`);
    }
  });

  describe('in place over a tmpfs file', function () {
    let shm: string;

    before(async function () {
      shm = `${box.dir}/inplace`;
      await mustSh(`mkdir -p ${shm} && mount -t tmpfs -o size=160m ublkdm-inplace ${shm}`);
    });

    after(async function () {
      if (shm) await sh(`umount ${shm}`);
    });

    /** Whether the daemon has `file` mapped: a queue thread serving it in place maps it whole. */
    async function daemonMaps(file: string): Promise<boolean> {
      const maps = await readFile(`/proc/${await daemonPid(box)}/maps`, 'utf8');
      return maps.split('\n').some((line) => line.endsWith(` ${file}`));
    }

    it('has ublk copy between the requests and a shared mapping of the file, on 2 queues: fio verify, and the bytes are the file\'s', async function () {
      const backing = `${shm}/two.img`;
      await mustSh(`truncate -s 32M ${backing}`);
      const dev = await box.create('inplace2', `0 ${(32 * MiB) / 512} linear ${backing} 0`, ['--queues', '2']);
      await stamp(dev, 'write', 16);
      assert.ok(await daemonMaps(backing), `the daemon did not map ${backing}: the writes did not go in place`);
      await stamp(dev, 'verify', 16);
      await mustSh(`cmp -n ${16 * MiB} ${dev} ${backing}`);
      await fioVerify(dev, `--numjobs=2 --size=8M --offset_increment=8M --iodepth=32 --cpus_allowed=0-${cpus().length - 1} --cpus_allowed_policy=split`);
      await mustSh(`cmp ${dev} ${backing}`);
      await box.ok(['remove', 'inplace2']);
      assert.ok(!(await daemonMaps(backing)), `the daemon still maps ${backing} after the device went`);
    });

    it('loses no write across suspends and a reload to another file under a writer (a write being copied in place holds the suspend)', async function () {
      const first = `${shm}/first.img`;
      const second = `${shm}/second.img`;
      await mustSh(`truncate -s 16M ${first}`);
      const sectors = (16 * MiB) / 512;
      const dev = await box.create('inplacesw', `0 ${sectors} linear ${first} 0`, ['--queues', '2']);
      // Each loop writes the 16 MiB in random order and reads it back: a write the suspend let
      // land in the first file after the copy below is missing from the second.
      const writer = sh(
        `fio --name=sw --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k ` +
          `--iodepth=32 --size=16M --loops=6 --verify=crc32c --do_verify=1 --verify_fatal=1`,
        { timeoutMs: 600_000 },
      );
      await new Promise((resolve) => setTimeout(resolve, 1500));
      for (let round = 0; round < 3; round++) {
        await box.ok(['suspend', 'inplacesw']);
        await box.ok(['resume', 'inplacesw']);
      }
      await box.ok(['suspend', 'inplacesw']);
      await mustSh(`cp ${first} ${second}`);
      await box.ok(['reload', 'inplacesw', '--table', `0 ${sectors} linear ${second} 0`]);
      await box.ok(['resume', 'inplacesw']);
      const sealed = await mustSh(`sha256sum < ${first}`);
      const r = await writer;
      assert.equal(r.code, 0, `fio verify across the suspends and the reload failed:\n${r.stdout}\n${r.stderr}`);
      assert.equal(await mustSh(`sha256sum < ${first}`), sealed, 'the first file changed after the reload');
      await mustSh(`cmp ${dev} ${second}`);
      await box.ok(['remove', 'inplacesw']);
    });

    it('a file shrunk under the device: a read past its new end fails with EIO instead of coming back for ever, a write there extends it', async function () {
      const backing = `${shm}/shrink.img`;
      await mustSh(`dd if=/dev/zero of=${backing} bs=1M count=8 status=none`);
      const dev = await box.create('inplacesh', `0 ${(8 * MiB) / 512} linear ${backing} 0`);
      await stamp(dev, 'write', 8);
      assert.ok(await daemonMaps(backing), 'not served in place');
      await mustSh(`truncate -s 4M ${backing}`);
      const past = await sh(`dd if=${dev} of=/dev/null bs=4k skip=1536 count=1 iflag=direct status=none`, { timeoutMs: 60_000 });
      assert.notEqual(past.code, 0, 'a read past the end of the shrunk file succeeded');
      assert.match(past.stderr, /Input\/output error/);
      await stamp(dev, 'verify', 4);
      await mustSh(`dd if=/dev/urandom of=${box.dir}/block bs=4k count=1 status=none`);
      await mustSh(`dd if=${box.dir}/block of=${dev} bs=4k seek=1536 count=1 oflag=direct status=none`);
      await mustSh(`cmp -n 4096 -i 0:${6 * MiB} ${box.dir}/block ${backing}`);
      // One direct read: a buffered one reads ahead past the file's new end, which fails.
      await mustSh(`dd if=${dev} of=${box.dir}/readback bs=4k skip=1536 count=1 iflag=direct status=none && cmp ${box.dir}/block ${box.dir}/readback`);
      const size = Number(await mustSh(`stat -c %s ${backing}`));
      assert.equal(size, 6 * MiB + 4096, 'the write past the end did not extend the file to its end');
      await box.ok(['remove', 'inplacesh']);
    });

    it('a range one queue thread punched is read as zeros by another without filling it again', async function () {
      // Each queue thread keeps its own record of where the file has data; one whose record
      // still said data after another thread's discard read the hole through the mapping, which
      // faults pages back into the file (and on a full tmpfs fails, and ublk requeues the read).
      const queues = possibleCpuCount();
      const backing = `${shm}/punch.img`;
      await mustSh(`dd if=/dev/zero of=${backing} bs=1M count=16 status=none`);
      const dev = await box.create('inplacepu', `0 ${(16 * MiB) / 512} linear ${backing} 0`, ['--queues', String(queues)]);
      await stamp(dev, 'write', 16);
      assert.ok(await daemonMaps(backing), 'not served in place');
      // Two online CPUs whose requests go to different queues, so to different queue threads.
      const online = parseCpuList(await readFile('/sys/devices/system/cpu/online', 'utf8'));
      const queueOf = new Map<number, number>();
      for (let queueId = 0; queueId < queues; queueId++) {
        for (const cpu of parseCpuList(await readFile(`/sys/block/${basename(dev)}/mq/${queueId}/cpu_list`, 'utf8'))) queueOf.set(cpu, queueId);
      }
      const puncher = online[0]!;
      const reader = online.find((cpu) => queueOf.get(cpu) !== queueOf.get(puncher));
      assert.ok(reader !== undefined, `every online CPU (${online}) submits to queue ${queueOf.get(puncher)}: no second queue thread to read with`);
      // Both threads learn the whole file as data.
      for (const cpu of [puncher, reader]) await mustSh(`taskset -c ${cpu} dd if=${dev} of=/dev/null bs=64k iflag=direct status=none`);
      const allocated = async (): Promise<number> => Number(await mustSh(`stat -c %b ${backing}`));
      const whole = await allocated();
      await mustSh(`taskset -c ${puncher} blkdiscard -o ${4 * MiB} -l ${4 * MiB} ${dev}`);
      const punched = await allocated();
      assert.ok(punched < whole, `the discard punched nothing (${whole} blocks before, ${punched} after)`);
      const read = await sh(`taskset -c ${reader} dd if=${dev} of=${box.dir}/punch-read bs=64k skip=64 count=64 iflag=direct status=none`, { timeoutMs: 60_000 });
      assert.equal(read.code, 0, `reading the punched range failed:\n${read.stderr}`);
      await mustSh(`cmp -n ${4 * MiB} ${box.dir}/punch-read /dev/zero`);
      assert.equal(await allocated(), punched, 'the other queue thread\'s read filled the punched range again');
      await mustSh(`rm -f ${box.dir}/punch-read`);
      await box.ok(['remove', 'inplacepu']);
    });

    it('reads a sparse file\'s holes as zeros without filling them, also with the tmpfs full', async function () {
      const backing = `${shm}/sparse.img`;
      await mustSh(`truncate -s 64M ${backing}`);
      const dev = await box.create('inplacesp', `0 ${(64 * MiB) / 512} linear ${backing} 0`);
      await stamp(dev, 'write', 1);
      assert.ok(await daemonMaps(backing), 'not served in place');
      const allocated = async (): Promise<number> => Number(await mustSh(`stat -c %b ${backing}`));
      const before = await allocated();
      // A read of a hole through the file's mapping would fault a page into the file, as loop's
      // reads never do; with no room left in the tmpfs that fault fails, and ublk requeues the
      // read for ever.
      const filled = await sh(`dd if=/dev/zero of=${shm}/filler bs=1M status=none`, { timeoutMs: 120_000 });
      assert.notEqual(filled.code, 0, 'the filler did not fill the tmpfs');
      try {
        const read = await sh(`dd if=${dev} of=${box.dir}/sparse-read bs=64k iflag=direct status=none`, { timeoutMs: 60_000 });
        assert.equal(read.code, 0, `reading the sparse device failed:\n${read.stderr}`);
        await mustSh(`cmp -n ${63 * MiB} -i ${MiB}:0 ${box.dir}/sparse-read /dev/zero`);
        assert.equal(await allocated(), before, 'reading the holes allocated pages of the file');
        // A write into a hole has no room: it fails (ublk's copy into the mapping faults, and the
        // pwrite it falls back to gets ENOSPC) rather than coming back for ever.
        const full = await sh(`dd if=/dev/urandom of=${dev} bs=4k seek=4096 count=1 oflag=direct status=none`, { timeoutMs: 60_000 });
        assert.notEqual(full.code, 0, 'a write into a hole of a full tmpfs succeeded');
        assert.match(full.stderr, /No space left on device|Input\/output error/);
      } finally {
        await sh(`rm -f ${shm}/filler ${box.dir}/sparse-read`);
      }
      await stamp(dev, 'verify', 1);
      await box.ok(['remove', 'inplacesp']);
    });

    it('serves striped on the queue threads, in place within a chunk, and counts a stripe\'s errors where the table lives (status D, an event)', async function () {
      // A tmpfs of its own: the tests above leave theirs near full.
      const stripeDir = `${box.dir}/stripes`;
      await mustSh(`mkdir -p ${stripeDir} && mount -t tmpfs -o size=40m ublkdm-stripes ${stripeDir}`);
      try {
        const stripes = [`${stripeDir}/stripe0.img`, `${stripeDir}/stripe1.img`];
        await mustSh(`truncate -s 16M ${stripes.join(' ')}`);
        const chunkBytes = 64 * 1024;
        const dev = await box.create('striped2', `0 ${(32 * MiB) / 512} striped 2 ${chunkBytes / 512} ${stripes[0]} 0 ${stripes[1]} 0`, ['--queues', '2']);
        await fioVerify(dev, `--numjobs=2 --size=8M --offset_increment=8M --iodepth=32 --cpus_allowed=0-${cpus().length - 1} --cpus_allowed_policy=split`);
        for (const stripe of stripes) assert.ok(await daemonMaps(stripe), `the daemon did not map ${stripe}: its writes did not go in place`);
        // Requests across chunks (1 MiB) are split and served from the tags' buffers: each chunk lands on its stripe.
        await mustSh(`fio --name=big --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=4 --size=4M --verify=pattern --verify_pattern=%o --verify_fatal=1`, { timeoutMs: 600_000 });
        await mustSh(`cmp -n ${chunkBytes} ${dev} ${stripes[0]}`);
        await mustSh(`cmp -n ${chunkBytes} -i ${chunkBytes}:0 ${dev} ${stripes[1]}`);
        await mustSh(`cmp -n ${chunkBytes} -i ${2 * chunkBytes}:${chunkBytes} ${dev} ${stripes[0]}`);
        await box.ok(['remove', 'striped2']);

        await mustSh(`DM_DISABLE_UDEV=1 dmsetup create qterror --table '0 ${(16 * MiB) / 512} error'`);
        try {
          const broken = await box.create('striped-err', `0 ${(32 * MiB) / 512} striped 2 ${chunkBytes / 512} ${stripes[0]} 0 /dev/mapper/qterror 0`, ['--queues', '2']);
          await mustSh(`dd if=${broken} of=/dev/null bs=64k count=1 iflag=direct`);
          assert.match(await box.ok(['status', 'striped-err']), / 1 AA\n?$/);
          const failed = await sh(`dd if=${broken} of=/dev/null bs=64k skip=1 count=1 iflag=direct`);
          assert.notEqual(failed.code, 0, 'a read of a chunk on the error stripe succeeded');
          assert.match(await box.ok(['status', 'striped-err']), / 1 AD\n?$/);
          assert.ok(eventNumber(await box.ok(['info', 'striped-err'])) >= 1, 'no event for the stripe error');
          await box.ok(['remove', 'striped-err']);
        } finally {
          await sh('DM_DISABLE_UDEV=1 dmsetup remove qterror');
        }
      } finally {
        await sh(`umount ${stripeDir}`);
      }
    });

    it('serves flakey on the queue threads, in place while up; reloaded always down with drop_writes, writes succeed and the file keeps its bytes', async function () {
      const backing = `${shm}/flakey.img`;
      await mustSh(`truncate -s 16M ${backing}`);
      const sectors = (16 * MiB) / 512;
      const dev = await box.create('flakeyq', `0 ${sectors} flakey ${backing} 0 1000 0`, ['--queues', '2']);
      await fioVerify(dev, `--numjobs=2 --size=4M --offset_increment=4M --cpus_allowed=0-${cpus().length - 1} --cpus_allowed_policy=split`);
      assert.ok(await daemonMaps(backing), `the daemon did not map ${backing}: flakey's I/O did not go in place`);
      await mustSh(`cp ${backing} ${box.dir}/flakey-before.img`);
      await box.ok(['reload', 'flakeyq', '--table', `0 ${sectors} flakey ${backing} 0 0 1000 1 drop_writes`]);
      await box.ok(['resume', 'flakeyq']);
      await mustSh(`dd if=/dev/urandom of=${dev} bs=64k count=32 oflag=direct status=none`);
      await mustSh(`cmp ${backing} ${box.dir}/flakey-before.img`);
      await mustSh(`cmp -n ${2 * MiB} ${dev} ${box.dir}/flakey-before.img`);
      await box.ok(['remove', 'flakeyq']);
      await sh(`rm -f ${backing} ${box.dir}/flakey-before.img`);
    });

    it('serves a mirror reloaded from linear: the queue threads read its default leg, its writes reach both legs through the daemon thread', async function () {
      const [linear, legA, legB] = ['mlinear', 'mlegA', 'mlegB'].map((name) => `${shm}/${name}.img`);
      await mustSh(`truncate -s 8M ${linear} ${legA} ${legB}`);
      const sectors = (8 * MiB) / 512;
      const dev = await box.create('mirrorq', `0 ${sectors} linear ${linear} 0`, ['--queues', '2']);
      // As lvconvert -m1 does: the device's queues stay with the threads that fetched them.
      await box.ok(['reload', 'mirrorq', '--table', `0 ${sectors} mirror core 2 64 nosync 2 ${legA} 0 ${legB} 0`]);
      await box.ok(['resume', 'mirrorq']);
      await fioVerify(dev, `--numjobs=2 --size=4M --offset_increment=4M --cpus_allowed=0-${cpus().length - 1} --cpus_allowed_policy=split`);
      await mustSh(`cmp ${legA} ${legB}`);
      // Reads come from the default leg only: with leg B's bytes changed under the device, every
      // read still returns leg A's. (Both legs' files are mapped by the daemon either way: its
      // thread copies the writes to tmpfs through mappings.)
      await mustSh(`dd if=/dev/urandom of=${legB} bs=1M count=8 conv=notrunc status=none`);
      await mustSh(`cmp ${dev} ${legA}`);
      await box.ok(['remove', 'mirrorq']);
      await sh(`rm -f ${linear} ${legA} ${legB}`);
    });
  });

  it('a mirror reloaded from linear with a disk log: queue threads write both legs of a region the log marks, which stays marked while they do and is cleaned by a suspend', async function () {
    const [legA, legB, log] = ['hlegA', 'hlegB', 'hlog'].map((name) => `${box.dir}/${name}.img`);
    await mustSh(`truncate -s 8M ${legA} ${legB} && truncate -s 1M ${log}`);
    const sectors = (8 * MiB) / 512;
    const regions = 16; // of 512 KiB
    const dev = await box.create('mirrorh', `0 ${sectors} linear ${legA} 0`, ['--queues', '2']);
    await box.ok(['reload', 'mirrorh', '--table', `0 ${sectors} mirror disk 2 ${log} 1024 2 ${legA} 0 ${legB} 0`]);
    await box.ok(['resume', 'mirrorh']);
    for (let i = 0; i < 600 && parseMirrorStatus(await box.ok(['status', 'mirrorh'])).inSync < regions; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(parseMirrorStatus(await box.ok(['status', 'mirrorh'])).inSync, regions, 'resynced');
    const forwarded = async () => (JSON.parse(await box.ok(['info', 'mirrorh', '--json'])) as { forwarded?: { requests: number; copied: number } }).forwarded!;
    const before = await forwarded();

    // 4k writes all over the device from both queues for 4 s; midway every region is being
    // written, so each must be dirty in the log on disk.
    const fio = background(
      `fio --name=held --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k --iodepth=8 ` +
        `--numjobs=2 --cpus_allowed=0-${cpus().length - 1} --cpus_allowed_policy=split --time_based --runtime=4 --group_reporting --output-format=json`,
    );
    await new Promise((r) => setTimeout(r, 2500));
    const midway = cleanBits(await readFile(log), regions);
    const result = await fio.exited;
    assert.equal(result.code, 0, `fio failed: ${result.stderr}`);
    assert.deepEqual(midway, new Array(regions).fill(false), 'a region clean in the log while writes land in it');
    const writes = (JSON.parse(result.stdout) as { jobs: Array<{ write: { total_ios: number } }> }).jobs[0]!.write.total_ios;
    const after = await forwarded();
    const sent = after.requests - before.requests;
    assert.ok(writes > 200, `only ${writes} writes`);
    assert.ok(sent < writes / 4, `${sent} of ${writes} writes went to the daemon thread: the queue threads did not write held regions`);
    assert.equal(after.copied, 0, 'a forwarded request had its bytes copied: not served in the tag memory');

    await box.ok(['suspend', 'mirrorh']);
    await mustSh(`cmp ${legA} ${legB}`);
    assert.deepEqual(cleanBits(await readFile(log), regions), new Array(regions).fill(true), 'a suspend leaves every region clean, as the kernel does');
    await box.ok(['resume', 'mirrorh']);
    await fioVerify(dev, '--size=4M');
    await box.ok(['remove', 'mirrorh']);
    await mustSh(`cmp ${legA} ${legB}`);
  });

  it('refuses more queues than the kernel grants (one per possible CPU), leaving no device behind', async function () {
    const tooMany = possibleCpuCount() + 1;
    const backing = await makeBackingFile(box.dir, 'many.img', 8 * MiB);
    const before = (await readdir('/sys/class/ublk-char')).length;
    const r = await box.cli(['create', 'many', '--table', `0 ${(8 * MiB) / 512} linear ${backing} 0`, '--queues', String(tooMany)]);
    assert.notEqual(r.code, 0, 'create succeeded');
    assert.match(r.stderr, new RegExp(`kernel granted \\d+ queues .* asked ${tooMany}`));
    assert.equal((await readdir('/sys/class/ublk-char')).length, before, 'a ublk device was left behind');
    assert.doesNotMatch(await box.ok(['ls']), /many/);
  });

  it('keeps every byte across swaps between a local copy and forwarding (linear -> delay -> linear)', async function () {
    const backing = await makeBackingFile(box.dir, 'swap.img', 32 * MiB, 'zero');
    const sectors = (32 * MiB) / 512;
    const dev = await box.create('swap', `0 ${sectors} linear ${backing} 0`, ['--queues', '2']);
    await stamp(dev, 'write', 8);

    // delay keeps one instance (it counts what it holds): the queue threads now forward.
    await box.ok(['reload', 'swap', '--table', `0 ${sectors} delay ${backing} 0 0`]);
    await box.ok(['resume', 'swap']);
    assert.match(await box.ok(['table', 'swap']), /delay/);
    await stamp(dev, 'verify', 8);
    await fioVerify(dev, '--offset=16M');
    // Requests of 4 KiB to 1 MiB, 32 at once: the shared buffers they travel in come and go by size.
    const mixed = await sh(
      `fio --name=mixed --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-1m ` +
        `--iodepth=32 --offset=16M --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1`,
      { timeoutMs: 600_000 },
    );
    assert.equal(mixed.code, 0, `fio verify of mixed sizes on ${dev} failed:\n${mixed.stdout}\n${mixed.stderr}`);

    await box.ok(['reload', 'swap', '--table', `0 ${sectors} linear ${backing} 0`]);
    await box.ok(['resume', 'swap']);
    await stamp(dev, 'verify', 8);
    await fioVerify(dev, '--offset=16M --verify_only=1 --rw=randwrite');
    // What went through either path is in the backing file itself.
    await mustSh(`cmp -n ${8 * MiB} ${dev} ${backing}`);
    await box.ok(['remove', 'swap']);
  });

  it('serves from the daemon thread when UBLK_DM_QUEUE_LOOP=main', async function () {
    const main = new Sandbox('qmain');
    main.env.UBLK_DM_QUEUE_LOOP = 'main';
    try {
      const backing = await makeBackingFile(main.dir, 'main.img', 64 * MiB, 'zero');
      const dev = await main.create('m', `0 ${(64 * MiB) / 512} linear ${backing} 0`, ['--queues', '2']);
      await fioVerify(dev, `--numjobs=2 --offset_increment=32M --cpus_allowed=0,1 --cpus_allowed_policy=split`);
      await main.ok(['remove', 'm']);
    } finally {
      await main.cleanup();
    }
  });

  it('refuses to start a daemon with an unknown UBLK_DM_QUEUE_LOOP', async function () {
    const bad = new Sandbox('qbad');
    bad.env.UBLK_DM_QUEUE_LOOP = 'fibers';
    try {
      const r = await bad.cliProcess(['daemon']);
      assert.notEqual(r.code, 0, 'the daemon started');
      assert.match(r.stderr + r.stdout, /UBLK_DM_QUEUE_LOOP must be "main" or "threads"/);
    } finally {
      await bad.cleanup();
    }
  });
});

/** Cpus_allowed_list of a /proc status file. */
async function allowedCpus(statusPath: string): Promise<number[]> {
  const match = /^Cpus_allowed_list:\s*(\S+)$/m.exec(await readFile(statusPath, 'utf8'));
  assert.ok(match, `no Cpus_allowed_list in ${statusPath}`);
  return parseCpuList(match[1]!);
}

/** The CPUs of `among` each thread of the daemon may run on, as "0,2,3" (its io_uring workers left out). */
async function daemonThreadCpus(pid: number, among: readonly number[]): Promise<string[]> {
  const lists: string[] = [];
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    if ((await readFile(`/proc/${pid}/task/${tid}/comm`, 'utf8')).startsWith('iou-')) continue;
    lists.push((await allowedCpus(`/proc/${pid}/task/${tid}/status`)).filter((cpu) => among.includes(cpu)).join(','));
  }
  return lists;
}
