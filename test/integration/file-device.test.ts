/**
 * FileDevice over real block devices (loop devices; needs root and loop: fails, never skips,
 * without them). The block layer's own counters (/sys/block/<dev>/stat) tell a discard from a
 * write-zeroes, which a loop device over a tmpfs file would both turn into a hole; a loop device
 * over a ramfs file (ramfs has no fallocate) has neither, and must declare so.
 */
import { strict as assert } from 'node:assert';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';

import { EOPNOTSUPP } from '../../src/base/errno';
import { openFileDevice, type FileDevice } from '../../src/io/file-device';
import { IoRing } from '../../src/io/ring';
import { mustSh, sh, sha256OfFile } from './harness';

const BACKING_BYTES = 8 << 20;
const DISCARD_SECTOR = 2048;
const DISCARD_SECTOR_COUNT = 8192;

/** /sys/block/<dev>/stat fields, 0-based (Documentation/block/stat.rst). */
const STAT_WRITES_COMPLETED = 4;
const STAT_DISCARDS_COMPLETED = 11;
const STAT_DISCARD_SECTORS = 13;

async function blockStat(devicePath: string): Promise<number[]> {
  const name = devicePath.replace('/dev/', '');
  return (await fsp.readFile(`/sys/block/${name}/stat`, 'utf8')).trim().split(/\s+/).map(Number);
}

async function queueLimit(devicePath: string, limit: string): Promise<number> {
  return Number(await fsp.readFile(`/sys/block/${devicePath.replace('/dev/', '')}/queue/${limit}`, 'utf8'));
}

/** A loop device over a file of random bytes on a fresh mount of `fsType`. */
async function loopOver(fsType: 'tmpfs' | 'ramfs', dir: string): Promise<{ loopPath: string; backingPath: string }> {
  const mountPoint = join(dir, fsType);
  await mustSh(`mkdir -p ${mountPoint} && mount -t ${fsType} ${fsType} ${mountPoint}`);
  const backingPath = join(mountPoint, 'backing');
  await mustSh(`head -c ${BACKING_BYTES} /dev/urandom > ${backingPath}`);
  const loopPath = (await mustSh(`losetup -f --show ${backingPath}`)).trim();
  return { loopPath, backingPath };
}

describe('integration: FileDevice over loop devices', function () {
  let dir: string;
  let ring: IoRing;
  const loops: string[] = [];

  before(async function () {
    if (process.getuid?.() !== 0) throw new Error('this test needs root (run it through tools/guest-run)');
    dir = await fsp.mkdtemp(join(os.tmpdir(), 'ublkdm-filedev-'));
    ring = IoRing.create({ entries: 16 });
  });
  after(async function () {
    ring?.close();
    for (const loopPath of loops) await sh(`losetup -d ${loopPath}`);
    if (dir) await sh(`umount ${dir}/tmpfs ${dir}/ramfs; rm -rf ${dir}`);
  });

  async function open(fsType: 'tmpfs' | 'ramfs'): Promise<{ device: FileDevice; loopPath: string; backingPath: string }> {
    const loop = await loopOver(fsType, dir);
    loops.push(loop.loopPath);
    return { ...loop, device: await openFileDevice(loop.loopPath, { ring }) };
  }

  it('discard on a block device is a discard (not a write-zeroes): the loop counts it and its file gets the hole', async function () {
    const { device, loopPath, backingPath } = await open('tmpfs');
    try {
      assert.deepEqual(device.capabilities, { discard: true, writeZeroes: true });
      const statBefore = await blockStat(loopPath);
      const blocksBefore = (await fsp.stat(backingPath)).blocks;
      assert.equal(await device.discard(DISCARD_SECTOR, DISCARD_SECTOR_COUNT), 0);
      const statAfter = await blockStat(loopPath);
      assert.equal(statAfter[STAT_DISCARDS_COMPLETED] - statBefore[STAT_DISCARDS_COMPLETED], 1, 'one discard completed');
      assert.equal(statAfter[STAT_DISCARD_SECTORS] - statBefore[STAT_DISCARD_SECTORS], DISCARD_SECTOR_COUNT);
      // The block layer counts write-zeroes as writes: a write-zeroes standing in would show here.
      assert.equal(statAfter[STAT_WRITES_COMPLETED], statBefore[STAT_WRITES_COMPLETED], 'no write of any kind');
      // st_blocks counts 512-byte units whatever the filesystem.
      assert.equal(blocksBefore - (await fsp.stat(backingPath)).blocks, DISCARD_SECTOR_COUNT, 'exactly the range was deallocated');
      const readBack = Buffer.alloc(DISCARD_SECTOR_COUNT * 512);
      assert.equal(await device.read(readBack, DISCARD_SECTOR), readBack.byteLength);
      assert.ok(readBack.every((b) => b === 0), 'the device reads the range as zeroes (its page cache was dropped)');
    } finally {
      await device.close();
    }
  });

  it('a device whose queue has neither discard nor write-zeroes declares so, and answers -EOPNOTSUPP without writing', async function () {
    const { device, loopPath, backingPath } = await open('ramfs');
    try {
      assert.equal(await queueLimit(loopPath, 'discard_max_bytes'), 0, 'precondition: loop over ramfs cannot discard');
      assert.equal(await queueLimit(loopPath, 'write_zeroes_max_bytes'), 0, 'precondition: nor write zeroes');
      assert.deepEqual(device.capabilities, { discard: false, writeZeroes: false });
      const sumBefore = await sha256OfFile(backingPath);
      const statBefore = await blockStat(loopPath);
      assert.equal(await device.discard(DISCARD_SECTOR, DISCARD_SECTOR_COUNT), -EOPNOTSUPP);
      assert.equal(await device.writeZeroes(DISCARD_SECTOR, DISCARD_SECTOR_COUNT, true), -EOPNOTSUPP);
      assert.equal(await device.writeZeroes(DISCARD_SECTOR, DISCARD_SECTOR_COUNT, false), -EOPNOTSUPP);
      const statAfter = await blockStat(loopPath);
      assert.equal(statAfter[STAT_WRITES_COMPLETED], statBefore[STAT_WRITES_COMPLETED], 'nothing was written');
      assert.equal(statAfter[STAT_DISCARDS_COMPLETED], statBefore[STAT_DISCARDS_COMPLETED], 'nothing was discarded');
      assert.equal(await sha256OfFile(backingPath), sumBefore, 'the backing file is untouched');
    } finally {
      await device.close();
    }
  });
});
