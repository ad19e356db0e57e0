/**
 * The ublk server layer on its own (no daemon, no table): this mocha process serves a RAM
 * buffer through UblkDevice and real tools talk to /dev/ublkbN. Tools run asynchronously: a
 * synchronous spawn would stop this thread from serving the I/O it waits for.
 */
import { strict as assert } from 'node:assert';
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';

import { EIO, EOPNOTSUPP, type IoResult } from '../../src/base/errno';
import { IoOp, type IoDone } from '../../src/io/bio';
import { IoRing } from '../../src/io/ring';
import { UblkDevice, type UblkRequest } from '../../src/ublk/device';
import { schedulerPath } from '../../src/ublk/io-scheduler';
import { SECTOR_BYTES } from '../../src/base/units';
import { parseCpuList, possibleCpuCount } from '../../src/base/cpus';
import { Sandbox, mustSh, requireRealUblk, sh } from './harness';

const SIZE_SECTORS = 8192; // 4 MiB

/** A RAM disk as a ublk handler, counting what reaches it. */
class RamDisk {
  readonly memory = Buffer.alloc(SIZE_SECTORS * SECTOR_BYTES);
  readonly ops = new Map<IoOp, number>();
  readonly queuesSeen = new Set<number>();
  failReads = false;

  constructor() {
    for (let i = 0; i < this.memory.length; i += 4) this.memory.writeUInt32LE(i, i);
  }

  readonly serve = (req: UblkRequest, done: IoDone): void => {
    // Answered on a later turn, as a handler doing real I/O would.
    const result = this.apply(req);
    setImmediate(() => done(result));
  };

  private apply(req: UblkRequest): IoResult {
    this.ops.set(req.op, (this.ops.get(req.op) ?? 0) + 1);
    this.queuesSeen.add(req.queueId);
    const byteOffset = req.sector * SECTOR_BYTES;
    const byteLength = req.sectorCount * SECTOR_BYTES;
    switch (req.op) {
      case IoOp.Read:
        if (this.failReads) return -EIO;
        this.memory.copy(req.data, 0, byteOffset, byteOffset + byteLength);
        return byteLength;
      case IoOp.Write:
        this.memory.set(req.data, byteOffset);
        return byteLength;
      case IoOp.Flush:
        return 0;
      case IoOp.Discard:
      case IoOp.WriteZeroes:
        this.memory.fill(0, byteOffset, byteOffset + byteLength);
        return 0;
      default:
        return -EOPNOTSUPP;
    }
  }
}

async function discardMaxBytes(device: UblkDevice): Promise<number> {
  return Number(await readFile(`/sys/block/${device.blockPath.replace('/dev/', '')}/queue/discard_max_bytes`, 'utf8'));
}

describe('integration: the ublk layer serving a RAM disk', function () {
  let box: Sandbox;
  let ring: IoRing;

  before(function () {
    requireRealUblk();
    box = new Sandbox('layer');
    ring = IoRing.create();
  });
  after(async function () {
    ring?.close();
    await box?.cleanup();
  });

  it('reads, writes, flushes and discards reach the handler; stop removes the device', async function () {
    const disk = new RamDisk();
    const device = await UblkDevice.create({ ring, sizeSectors: SIZE_SECTORS, depth: 32, discard: true }, disk.serve);
    try {
      assert.ok((await discardMaxBytes(device)) > 0, 'discard advertised when asked for');
      assert.match(device.blockPath, /^\/dev\/ublkb\d+$/);
      assert.equal(await mustSh(`blockdev --getsz ${device.blockPath}`), `${SIZE_SECTORS}\n`);
      assert.equal(await mustSh(`blockdev --getss ${device.blockPath}`), '512\n', '512-byte logical blocks by default');
      const readBack = join(box.dir, 'read');
      await mustSh(`dd if=${device.blockPath} of=${readBack} bs=64K count=16 iflag=direct status=none`);
      assert.ok((await readFile(readBack)).equals(disk.memory.subarray(0, 1 << 20)), 'a direct read returns the RAM bytes');

      await mustSh(`head -c 16384 /dev/urandom > ${box.dir}/w && dd if=${box.dir}/w of=${device.blockPath} bs=16K seek=25 oflag=direct,dsync conv=fsync status=none`);
      const written = await readFile(join(box.dir, 'w'));
      assert.ok(disk.memory.subarray(400 * 1024, 416 * 1024).equals(written), 'the write landed at 400 KiB');
      assert.ok((disk.ops.get(IoOp.Flush) ?? 0) > 0, 'fsync reached the handler as FLUSH');

      await mustSh(`blkdiscard -o 0 -l 65536 ${device.blockPath}`);
      assert.ok(disk.memory.subarray(0, 65536).every((b) => b === 0), 'discard reached the handler');
    } finally {
      await device.stop();
    }
    assert.ok(!existsSync(device.blockPath), 'stop removed the block device');
    assert.ok(!existsSync(device.charPath), 'and the char device');
  });

  it('starts a device with no I/O scheduler, as kernel dm and loop; keeps the kernel\'s when asked; a refused one is a warning', async function () {
    const scheduler = async (device: UblkDevice) => (await readFile(schedulerPath(device.id), 'utf8')).trim();
    const disk = new RamDisk();
    const warnings: string[] = [];
    const plain = await UblkDevice.create({ ring, sizeSectors: SIZE_SECTORS, depth: 8, warn: (m) => warnings.push(m) }, disk.serve);
    try {
      assert.match(await scheduler(plain), /^\[none\]/);
    } finally {
      await plain.stop();
    }
    // blk-mq's own choice for a 1-queue device: mq-deadline.
    const kept = await UblkDevice.create({ ring, sizeSectors: SIZE_SECTORS, depth: 8, ioScheduler: '' }, disk.serve);
    try {
      assert.match(await scheduler(kept), /\[mq-deadline\]/);
    } finally {
      await kept.stop();
    }
    const refused = await UblkDevice.create({ ring, sizeSectors: SIZE_SECTORS, depth: 8, ioScheduler: 'no-such-elevator', warn: (m) => warnings.push(m) }, disk.serve);
    try {
      assert.match(await scheduler(refused), /\[mq-deadline\]/, 'the device serves with the kernel\'s choice');
      assert.equal(await mustSh(`blockdev --getsz ${refused.blockPath}`), `${SIZE_SECTORS}\n`);
    } finally {
      await refused.stop();
    }
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(warnings[0]!, new RegExp(`ublk device ${refused.id}: could not set .*scheduler to no-such-elevator`));
  });

  it('a handler error reaches the reader as EIO', async function () {
    const disk = new RamDisk();
    disk.failReads = true;
    const device = await UblkDevice.create({ ring, sizeSectors: SIZE_SECTORS, depth: 8 }, disk.serve).catch((err) => {
      // The partition scan during START_DEV reads through us; a failing read must not fail START_DEV.
      throw new Error(`create failed while reads fail: ${err.message}`);
    });
    try {
      const r = await sh(`dd if=${device.blockPath} of=/dev/null bs=4k count=1 iflag=direct`);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /Input\/output error/);
      assert.equal(await discardMaxBytes(device), 0, 'no discard unless asked for');
      assert.notEqual((await sh(`blkdiscard -o 0 -l 65536 ${device.blockPath}`)).code, 0, 'so blkdiscard fails');
      assert.equal(disk.ops.get(IoOp.Discard) ?? 0, 0);
    } finally {
      await device.stop();
    }
  });

  it('requests from two CPUs arrive on the two hardware queues blk-mq maps them to (one job pinned to each)', async function () {
    // One queue per possible CPU: blk-mq groups neighbouring CPUs, so with 4 possible CPUs a
    // 2-queue device maps CPUs 0 and 1 both to queue 0 (src/base/cpus.ts). Each tag's buffer is
    // kept at 64 KiB (dd asks 4 KiB): on a host with 64 possible CPUs, 16 tags of the default
    // 512 KiB would hold 512 MiB for this test alone.
    const queues = Math.max(2, possibleCpuCount());
    const disk = new RamDisk();
    const device = await UblkDevice.create({ ring, sizeSectors: SIZE_SECTORS, queues, depth: 16, maxIoBytes: 64 * 1024 }, disk.serve);
    try {
      assert.equal(device.queues, queues);
      const expected = await queuesOfCpus(device.blockPath, [0, 1]);
      assert.equal(expected.length, 2, `blk-mq maps CPUs 0 and 1 to two queues of ${queues}`);
      await mustSh(`for cpu in 0 1; do taskset -c $cpu dd if=${device.blockPath} of=/dev/null bs=4k count=64 iflag=direct status=none & done; wait`);
      assert.deepEqual([...disk.queuesSeen].sort((a, b) => a - b), expected, 'requests arrived on both CPUs\' hardware queues');
    } finally {
      await device.stop();
    }
  });
});

/** The hardware queues (sorted) that blk-mq maps `cpus` to, from /sys/block/DEV/mq/N/cpu_list. */
async function queuesOfCpus(blockPath: string, cpus: readonly number[]): Promise<number[]> {
  const mqDir = `/sys/block/${blockPath.replace('/dev/', '')}/mq`;
  const found = new Set<number>();
  for (const entry of await readdir(mqDir)) {
    const listed = parseCpuList(await readFile(join(mqDir, entry, 'cpu_list'), 'utf8'));
    if (cpus.some((cpu) => listed.includes(cpu))) found.add(Number(entry));
  }
  return [...found].sort((a, b) => a - b);
}
