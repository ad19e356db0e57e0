/**
 * IoRing.blockDiscard against a real block device: a loop device over a tmpfs file (loop turns
 * a discard into a hole punch in its backing file), so both the block layer's discard counter
 * and the file's allocation show whether the discard happened.
 */
import { strict as assert } from 'node:assert';
import { promises as fsp } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';

import { EINVAL } from '../../src/base/errno';
import { IoRing } from '../../src/io/ring';
import { Sandbox, mustSh, requireRealUblk } from './harness';

const BACKING_BYTES = 8 << 20;
const DISCARD_BYTE_OFFSET = 1 << 20;
const DISCARD_BYTE_LENGTH = 4 << 20;
/** /sys/block/<dev>/stat, 0-based: the 12th field counts discards completed. */
const STAT_DISCARDS_COMPLETED = 11;

async function discardsCompleted(loopName: string): Promise<number> {
  const fields = (await fsp.readFile(`/sys/block/${loopName}/stat`, 'utf8')).trim().split(/\s+/);
  return Number(fields[STAT_DISCARDS_COMPLETED]);
}

describe('integration: IoRing.blockDiscard on a loop device', function () {
  let box: Sandbox;
  let backingPath: string;
  let loopPath: string;
  let ring: IoRing;

  before(async function () {
    requireRealUblk(); // the guest: root, and a kernel new enough for BLOCK_URING_CMD_DISCARD
    box = new Sandbox('discard');
    await mustSh(`mount -t tmpfs -o size=64m tmpfs ${box.dir}`);
    backingPath = join(box.dir, 'backing');
    await mustSh(`head -c ${BACKING_BYTES} /dev/urandom > ${backingPath}`);
    loopPath = (await mustSh(`losetup -f --show ${backingPath}`)).trim();
    ring = IoRing.create({ entries: 8 });
  });
  after(async function () {
    ring?.close();
    if (loopPath) await mustSh(`losetup -d ${loopPath}`);
    if (box) {
      await mustSh(`umount ${box.dir}`);
      await box.cleanup();
    }
  });

  it('discards the range: the loop counts a discard and its file gets a hole reading as zeroes', async function () {
    const loopName = loopPath.replace('/dev/', '');
    const discardsBefore = await discardsCompleted(loopName);
    const blocksBefore = (await fsp.stat(backingPath)).blocks;
    const loop = await fsp.open(loopPath, 'r+');
    try {
      assert.equal(await ring.blockDiscard(loop.fd, DISCARD_BYTE_OFFSET, DISCARD_BYTE_LENGTH), 0);
    } finally {
      await loop.close();
    }
    assert.ok((await discardsCompleted(loopName)) > discardsBefore, 'the block layer completed a discard');
    const blocksAfter = (await fsp.stat(backingPath)).blocks;
    // st_blocks counts 512-byte units whatever the filesystem.
    assert.equal(blocksBefore - blocksAfter, DISCARD_BYTE_LENGTH / 512, 'exactly the range was deallocated');
    const backing = await fsp.readFile(backingPath);
    assert.ok(backing.subarray(DISCARD_BYTE_OFFSET, DISCARD_BYTE_OFFSET + DISCARD_BYTE_LENGTH).every((b) => b === 0));
    assert.ok(backing.subarray(0, DISCARD_BYTE_OFFSET).some((b) => b !== 0), 'bytes before the range kept');
    assert.ok(backing.subarray(DISCARD_BYTE_OFFSET + DISCARD_BYTE_LENGTH).some((b) => b !== 0), 'bytes after it kept');
  });

  it('needs the device open for writing (-EBADF) and a block-aligned range (-EINVAL)', async function () {
    const readOnly = await fsp.open(loopPath, 'r');
    try {
      assert.equal(await ring.blockDiscard(readOnly.fd, 0, 4096), -constants.errno.EBADF);
    } finally {
      await readOnly.close();
    }
    const loop = await fsp.open(loopPath, 'r+');
    try {
      assert.equal(await ring.blockDiscard(loop.fd, 100, 4096), -EINVAL);
    } finally {
      await loop.close();
    }
  });
});
