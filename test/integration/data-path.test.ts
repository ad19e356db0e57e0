/**
 * Data-path guarantees that hold at the edges: requests split across segments whose pieces
 * come back short, discards over block devices (and over devices that cannot discard), and the
 * durability of the outgoing table when `reload` + `resume` swaps tables. Each test builds the
 * edge from real kernel pieces (a tiny full tmpfs, a truncated backing file, loop devices,
 * kernel dm) and checks what a user of /dev/ublkbN can observe.
 */
import { strict as assert } from 'node:assert';
import { readFile, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox, requireRealUblk, makeBackingFile, mustSh, sh, fileBlocks, randomName } from './harness';

const KiB = 1024;
const MiB = 1 << 20;

/** /sys/dev/block/MAJ:MIN of a device node (dmsetup without udev makes real nodes, not links). */
async function sysfsDir(dev: string): Promise<string> {
  const rdev = (await stat(dev)).rdev;
  const major = (rdev >> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  return `/sys/dev/block/${major}:${minor}`;
}

/** Field `n` (1-based, as in Documentation/block/stat.rst) of the device's sysfs stat. */
async function blockStat(dev: string, n: number): Promise<number> {
  const path = `${await sysfsDir(dev)}/stat`;
  const fields = (await readFile(path, 'utf8')).trim().split(/\s+/);
  if (fields.length < n) throw new Error(`${path} has ${fields.length} fields, not ${n}`);
  return Number(fields[n - 1]);
}
const DISCARDS_COMPLETED = 12;
const FLUSHES_COMPLETED = 16;

async function queueLimit(dev: string, limit: string): Promise<number> {
  return Number((await readFile(`${await sysfsDir(dev)}/queue/${limit}`, 'utf8')).trim());
}

interface DdResult {
  code: number;
  /** What dd says it moved ("N bytes ... copied"). */
  bytes: number;
  stderr: string;
}

/** dd with byte offsets; O_DIRECT on the device side. */
async function dd(args: string): Promise<DdResult> {
  const r = await sh(`dd ${args}`);
  const copied = /(\d+) bytes\b[^\n]*copied/.exec(r.stderr);
  return { code: r.code, bytes: copied ? Number(copied[1]) : 0, stderr: r.stderr };
}

describe('integration: data path at the edges (split requests, discard, table swap)', function () {
  let box: Sandbox;
  /** Undo steps of the running test, run newest first in afterEach whatever happened. */
  let undo: Array<() => Promise<unknown>> = [];

  before(function () {
    requireRealUblk();
    box = new Sandbox('dpath');
  });
  afterEach(async function () {
    const steps = undo.reverse();
    undo = [];
    const failures: string[] = [];
    for (const step of steps) {
      try {
        await step();
      } catch (error) {
        failures.push(String(error));
      }
    }
    if (failures.length > 0) throw new Error(`cleanup failed:\n${failures.join('\n')}`);
  });
  after(async function () {
    await box?.cleanup();
  });

  /** A device of ours, removed after the test (before the loops and mounts under it). */
  async function device(name: string, table: string, extra: string[] = []): Promise<string> {
    const dev = await box.create(name, table, extra);
    undo.push(async () => {
      const r = await box.cli(['remove', name]);
      if (r.code !== 0 && !/no such device|not found|does not exist/i.test(r.stderr)) throw new Error(`remove ${name}: ${r.stderr}`);
    });
    return dev;
  }

  async function loopOver(file: string): Promise<string> {
    const loop = (await mustSh(`losetup -f --show ${file}`)).trim();
    undo.push(() => mustSh(`losetup -d ${loop}`));
    return loop;
  }

  /** A tmpfs of `bytes` mounted under the sandbox. */
  async function tinyTmpfs(label: string, bytes: number): Promise<string> {
    const mnt = join(box.dir, label);
    await mustSh(`mkdir -p ${mnt} && mount -t tmpfs -o size=${bytes} tmpfs ${mnt}`);
    undo.push(() => mustSh(`umount ${mnt}`));
    return mnt;
  }

  it('a write split across two segments never reports bytes it did not move (first segment short on a full tmpfs)', async function () {
    // Segment 1 is a sparse 1 MiB file on a 64 KiB tmpfs with exactly one page free: a write
    // of 8 KiB to it moves 4 KiB and stops (a short write, not an error). Segment 2 is a file
    // on the ordinary /tmp. The 16 KiB write covers the last 8 KiB of segment 1 and the first
    // 8 KiB of segment 2, so it is split into two 8 KiB pieces and the first comes back short.
    // (A tmpfs with no page free makes the piece fail with ENOSPC instead, which fails the
    // whole request: the edge is a short piece.) Summing the pieces to 12 KiB tells ublk that
    // the first 12 KiB are done; it requeues only the last 4 KiB, and 4 KiB in the middle
    // are never written.
    const tiny = await tinyTmpfs('full', 64 * KiB);
    await mustSh(`head -c ${60 * KiB} /dev/zero > ${tiny}/fill && truncate -s ${1 * MiB} ${tiny}/seg1`);
    const free = Number((await mustSh(`df -B1 --output=avail ${tiny} | tail -1`)).trim());
    assert.equal(free, 4 * KiB, 'the tiny tmpfs has exactly one page free');
    const seg2 = await makeBackingFile(box.dir, 'short-w-seg2.img', 1 * MiB, 'zero');
    const name = randomName('shortw');
    const dev = await device(name, [`0 2048 linear ${tiny}/seg1 0`, `2048 2048 linear ${seg2} 0`].join('\n'));

    const pattern = await makeBackingFile(box.dir, 'short-w-pattern', 16 * KiB);
    const offset = 1 * MiB - 8 * KiB;
    const w = await dd(`if=${pattern} of=${dev} bs=16k count=1 seek=${offset} oflag=direct,seek_bytes`);
    // The honest outcomes: the write fails, or it succeeds (in whole or in part) and every
    // byte it reports moved reads back as written. Never success with wrong bytes.
    const readBack = join(box.dir, 'short-w-back');
    await mustSh(`dd if=${dev} of=${readBack} bs=16k count=1 skip=${offset} iflag=direct,skip_bytes status=none`);
    const back = await readFile(readBack);
    const want = await readFile(pattern);
    const reported = w.bytes;
    for (let at = 0; at < reported; at += 4 * KiB) {
      assert.ok(back.subarray(at, at + 4 * KiB).equals(want.subarray(at, at + 4 * KiB)),
        `dd exited ${w.code} reporting ${w.bytes} bytes written (${w.stderr.trim().split('\n').pop()}), ` +
        `but bytes ${at}..${at + 4 * KiB} of the write do not read back as written`);
    }
  });

  it('a read split across two segments whose first piece hits EOF never returns stale data of an earlier request', async function () {
    // One queue, depth 1: every request uses tag 0, so its buffer holds the data of the
    // request before. A 16 KiB pattern is written (to segment 2, away from the range read),
    // then segment 1's backing file is truncated under the live table, then a 16 KiB read
    // covers the last 8 KiB of segment 1 (now past EOF: the piece reads 0 bytes) and the
    // first 8 KiB of segment 2. The read must fail, or return what the backing holds there
    // (zeroes past EOF, as loop returns; segment 2's bytes) - never the earlier pattern.
    // (An error target as segment 1 fails the whole request, so the edge is a short piece:
    // 0 + 8 KiB reported makes ublk copy the buffer's first 8 KiB, which nobody filled.)
    const seg1 = await makeBackingFile(box.dir, 'eof-seg1.img', 1 * MiB);
    const seg2 = await makeBackingFile(box.dir, 'eof-seg2.img', 1 * MiB);
    const name = randomName('eofr');
    const dev = await device(name, [`0 2048 linear ${seg1} 0`, `2048 2048 linear ${seg2} 0`].join('\n'), ['--queues', '1', '--depth', '1']);
    const pattern = await makeBackingFile(box.dir, 'eof-pattern', 16 * KiB);
    await mustSh(`dd if=${pattern} of=${dev} bs=16k count=1 seek=${1.5 * MiB} oflag=direct,seek_bytes status=none`);
    await truncate(seg1, 512 * KiB);

    const offset = 1 * MiB - 8 * KiB;
    const out = join(box.dir, 'eof-read');
    const r = await dd(`if=${dev} of=${out} bs=16k count=1 skip=${offset} iflag=direct,skip_bytes`);
    if (r.code === 0 || r.bytes > 0) {
      const got = await readFile(out);
      const expected = Buffer.concat([Buffer.alloc(8 * KiB), (await readFile(seg2)).subarray(0, 8 * KiB)]).subarray(0, got.length);
      const stale = got.subarray(0, 8 * KiB).equals((await readFile(pattern)).subarray(0, 8 * KiB));
      assert.ok(got.equals(expected),
        `dd exited ${r.code} reporting ${r.bytes} bytes read, but they are not the backing's bytes` +
        (stale ? ': the first 8 KiB are the pattern written by the request before (stale tag buffer)' : ''));
    }
  });

  it('discard over a loop device reaches it as a discard (its discard counter moves) and deallocates the file', async function () {
    // fallocate(PUNCH_HOLE) on a block device is a write-zeroes, not a discard: it is counted
    // as writes in /sys/block/loopN/stat. A real discard (BLKDISCARD) is counted in field 12.
    const img = await makeBackingFile(box.dir, 'disc-loop.img', 16 * MiB);
    const loop = await loopOver(img);
    assert.ok(await queueLimit(loop, 'discard_max_bytes') > 0, `${loop} (over a tmpfs file) takes discards`);
    const name = randomName('discl');
    const dev = await device(name, `0 ${(16 * MiB) / 512} linear ${loop} 0`);
    const discardsBefore = await blockStat(loop, DISCARDS_COMPLETED);
    const blocksBefore = await fileBlocks(img);
    await mustSh(`blkdiscard -o ${4 * MiB} -l ${8 * MiB} ${dev}`);
    const discardsAfter = await blockStat(loop, DISCARDS_COMPLETED);
    const blocksAfter = await fileBlocks(img);
    assert.ok(discardsAfter > discardsBefore,
      `blkdiscard on ${dev} reached ${loop} as discards (discards completed ${discardsBefore} -> ${discardsAfter}; ` +
      `writes completed now ${await blockStat(loop, 5)})`);
    assert.ok(blocksBefore - blocksAfter >= (8 * MiB) / 512, `the loop's file got holes (blocks ${blocksBefore} -> ${blocksAfter})`);
  });

  it('over a backing device that cannot discard, the device advertises no discard (discard_max_bytes 0)', async function () {
    // Kernel dm's snapshot-origin target takes no discards (its queue says discard_max_bytes 0,
    // whatever the device under it can do), so it is a real block device without discard.
    const img = await makeBackingFile(box.dir, 'nodisc.img', 8 * MiB, 'zero');
    const loop = await loopOver(img);
    const dmName = randomName('nodisc');
    await mustSh(`echo '0 ${(8 * MiB) / 512} snapshot-origin ${loop}' | dmsetup create ${dmName}`);
    undo.push(() => mustSh(`dmsetup remove ${dmName}`));
    const dmDev = `/dev/mapper/${dmName}`;
    assert.equal(await queueLimit(dmDev, 'discard_max_bytes'), 0, `${dmDev} (snapshot-origin) cannot discard`);
    const name = randomName('nodsc');
    const dev = await device(name, `0 ${(8 * MiB) / 512} linear ${dmDev} 0`);
    const blkdiscard = await sh(`blkdiscard -l ${1 * MiB} ${dev}`);
    assert.equal(await queueLimit(dev, 'discard_max_bytes'), 0,
      `${dev} over ${dmDev} must not advertise discard (blkdiscard on it: exit ${blkdiscard.code} ${blkdiscard.stderr.trim()})`);
  });

  it("reload + resume flushes the outgoing table's devices (flush counter of the old loop device moves)", async function () {
    // Writes acknowledged through the old table may sit in the old device's volatile cache
    // (for loop over a file: the file's page cache) until a FLUSH. Once the old table is gone
    // a later FLUSH on our device goes only to the new table's devices, so the swap itself
    // must flush the old ones. Observable: field 16 of /sys/block/loopA/stat (flush requests
    // completed) - loop counts every REQ_PREFLUSH it completes, as io.test.ts's FLUSH test
    // relies on. Nothing else sends A a flush here: the writes are O_DIRECT without sync, and
    // closing a block device writes back its page cache but sends no flush.
    const imgA = await makeBackingFile(box.dir, 'swap-a.img', 8 * MiB, 'zero');
    const imgB = await makeBackingFile(box.dir, 'swap-b.img', 8 * MiB, 'zero');
    const loopA = await loopOver(imgA);
    const loopB = await loopOver(imgB);
    const name = randomName('swapf');
    const dev = await device(name, `0 ${(8 * MiB) / 512} linear ${loopA} 0`);
    // The observable works: a FLUSH through our device reaches A and moves its counter.
    const controlBefore = await blockStat(loopA, FLUSHES_COMPLETED);
    await mustSh(`dd if=/dev/urandom of=${dev} bs=64k count=1 oflag=direct conv=fsync status=none`);
    assert.ok(await blockStat(loopA, FLUSHES_COMPLETED) > controlBefore, `control: an fsync on ${dev} moved ${loopA}'s flush counter`);
    // Then writes that nobody flushes.
    await mustSh(`dd if=/dev/urandom of=${dev} bs=64k count=16 seek=1 oflag=direct status=none`);
    const flushesBefore = await blockStat(loopA, FLUSHES_COMPLETED);
    await box.ok(['reload', name, '--table', `0 ${(8 * MiB) / 512} linear ${loopB} 0`]);
    await box.ok(['resume', name]);
    assert.equal(await box.ok(['table', name]), `0 ${(8 * MiB) / 512} linear ${(await mustSh(`cat /sys/block/${loopB.replace('/dev/', '')}/dev`)).trim()} 0\n`,
      'the new table is live');
    const flushesAfter = await blockStat(loopA, FLUSHES_COMPLETED);
    assert.ok(flushesAfter > flushesBefore, `${loopA} got a flush when the table over it was swapped out (flushes ${flushesBefore} -> ${flushesAfter})`);
  });
});
