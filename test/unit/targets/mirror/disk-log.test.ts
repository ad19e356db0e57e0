import assert from 'node:assert/strict';
import { EIO } from '../../../../src/base/errno';
import type { DirtyLog } from '../../../../src/targets/mirror/dirty-log';
import { DirtyLogError } from '../../../../src/targets/mirror/dirty-log';
import { diskLogType, logIoBytes } from '../../../../src/targets/mirror/disk-log';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { LoggingDevice } from '../snapshot/store-fixtures';
import { MirrorSide, REGION_COUNT, createLog, diskBitmap, logDevice, setRegions } from './log-fixtures';

/** A log device image written by hand (not by our encoder): header, then `bitmap` at byte 1024. */
function handWrittenLog(options: { magic?: number; version?: number; nrRegions?: number; bitmap?: number[] } = {}): Buffer {
  const image = Buffer.alloc(128 * 512);
  image.writeUInt32LE(options.magic ?? 0x4d695272, 0);
  image.writeUInt32LE(options.version ?? 2, 4);
  image.writeBigUInt64LE(BigInt(options.nrRegions ?? REGION_COUNT), 8);
  Buffer.from(options.bitmap ?? []).copy(image, 1024);
  return image;
}

/** 125 regions all clean on disk, as the kernel leaves a synchronised log (ff ×15, 1f). */
const ALL_CLEAN_BITMAP = [...Array(15).fill(0xff), 0x1f];

async function resumedLog(words: string[], image?: Uint8Array): Promise<{ side: MirrorSide; device: LoggingDevice; log: DirtyLog }> {
  const device = logDevice(128, image);
  const side = new MirrorSide(device);
  const log = await createLog(diskLogType, side, words);
  await log.resume();
  return { side, device, log };
}

/** A resumed log whose post-resume rewrite is done, with the I/O record cleared: a quiet log. */
async function quietLog(words: string[], image?: Uint8Array): Promise<{ side: MirrorSide; device: LoggingDevice; log: DirtyLog }> {
  const resumed = await resumedLog(words, image);
  await resumed.log.flush();
  resumed.device.log.length = 0;
  resumed.side.legFlushAtStep.length = 0;
  return resumed;
}

function syncedRegions(log: DirtyLog): number[] {
  return Array.from({ length: log.regionCount }, (_, r) => r).filter((r) => log.inSync(r));
}

describe('disk dirty log', () => {
  describe('arguments', () => {
    it('takes two or three arguments, else "wrong number of arguments to disk dirty region log"', async () => {
      for (const words of [['log'], ['log', '64', 'nosync', 'x']]) {
        await assert.rejects(createLog(diskLogType, new MirrorSide(logDevice()), words), (e: unknown) =>
          e instanceof DirtyLogError && e.message === 'wrong number of arguments to disk dirty region log');
      }
    });

    it('fails when the log device cannot be opened', async () => {
      await assert.rejects(createLog(diskLogType, new MirrorSide(logDevice()), ['missing', '64']), DirtyLogError);
    });

    it('checks the words after the device as a core log does', async () => {
      await assert.rejects(createLog(diskLogType, new MirrorSide(logDevice()), ['log', '48']), (e: unknown) =>
        e instanceof DirtyLogError && e.message === 'invalid region size 48');
    });

    it('needs the one I/O to fit: header sectors plus whole 64-bit bitmap words, rounded to the logical block', () => {
      assert.equal(logIoBytes(125, 512), 1536);
      assert.equal(logIoBytes(1000, 512), 1536);
      assert.equal(logIoBytes(125, 4096), 4096);
      assert.equal(logIoBytes(8192 * 8 - 1, 512), 1024 + 8192);
    });

    it('rejects a log device smaller than that: "log device <dev> too small: need <n> bytes"', async () => {
      await assert.rejects(createLog(diskLogType, new MirrorSide(logDevice(2)), ['log', '64']), (e: unknown) =>
        e instanceof DirtyLogError && e.message === 'log device 7:2 too small: need 1536 bytes');
      await createLog(diskLogType, new MirrorSide(logDevice(3)), ['log', '64']);
    });

    it('sizes the I/O by the log device\'s logical block size', async () => {
      const device = new LoggingDevice(new MemoryDevice(8, { tableName: '7:2', logicalBlockBytes: 4096 }));
      const log = await createLog(diskLogType, new MirrorSide(device), ['log', '64']);
      await log.resume();
      assert.deepEqual(device.steps.slice(0, 2), ['read@0', 'write@0']);
      assert.equal(device.inner.calls.read, 1);
      await assert.rejects(
        createLog(diskLogType, new MirrorSide(new LoggingDevice(new MemoryDevice(7, { tableName: '7:2', logicalBlockBytes: 4096 }))), ['log', '64']),
        (e: unknown) => e instanceof DirtyLogError && e.message === 'log device 7:2 too small: need 4096 bytes',
      );
    });
  });

  describe('on-disk layout', () => {
    it('writes the header at resume: magic "rRiM", version 2, nr_regions as le64', async () => {
      const { device } = await resumedLog(['log', '64']);
      assert.equal(device.inner.contents.subarray(0, 16).toString('hex'), '7252694d020000007d00000000000000');
    });

    it('keeps region r in bit r%8 of byte 1024 + r/8', async () => {
      const { device, log } = await quietLog(['log', '64', 'nosync']);
      log.markRegion(9);
      log.markRegion(124);
      await log.flush();
      assert.equal(diskBitmap(device).toString('hex'), 'ff' + 'fd' + 'ff'.repeat(13) + '0f');
    });

    it('writes the bits past the last region as 0 even when the device had them set', async () => {
      const { device } = await resumedLog(['log', '64'], handWrittenLog({ bitmap: Array(16).fill(0xff) }));
      assert.equal(diskBitmap(device)[15], 0x1f);
    });

    it('writes back bytes 16-1023 and the end of the last block as they were read', async () => {
      const image = handWrittenLog({ bitmap: ALL_CLEAN_BITMAP });
      image[100] = 0xaa;
      image[1535] = 0xbb;
      const { device } = await resumedLog(['log', '64'], image);
      assert.equal(device.inner.contents[100], 0xaa);
      assert.equal(device.inner.contents[1535], 0xbb);
    });
  });

  describe('load at resume', () => {
    it('takes the clean bits from the device as the sync bits', async () => {
      const { log } = await resumedLog(['log', '64'], handWrittenLog({ bitmap: [0x05, 0x80] }));
      assert.deepEqual(syncedRegions(log), [0, 2, 15]);
      assert.equal(log.syncCount(), 3);
    });

    it('treats a zeroed device as a new log: every region to resynchronise', async () => {
      const { log, device } = await resumedLog(['log', '64']);
      assert.equal(log.syncCount(), 0);
      assert.deepEqual(setRegions(diskBitmap(device), 128), []);
    });

    it('treats a foreign magic as a new log, whatever its bitmap says', async () => {
      const { log } = await resumedLog(['log', '64'], handWrittenLog({ magic: 0x12345678, bitmap: ALL_CLEAN_BITMAP }));
      assert.equal(log.syncCount(), 0);
    });

    it('reads version 1 as version 2 and writes 2 back', async () => {
      const { log, device } = await resumedLog(['log', '64'], handWrittenLog({ version: 1, bitmap: ALL_CLEAN_BITMAP }));
      assert.equal(log.syncCount(), REGION_COUNT);
      assert.equal(device.inner.contents.readUInt32LE(4), 2);
      assert.equal(log.status('info'), '3 disk 7:2 A');
    });

    it('refuses any other version: D, one event, every region out of sync, the version written back unchanged', async () => {
      const { log, device, side } = await resumedLog(['log', '64'], handWrittenLog({ version: 7, bitmap: ALL_CLEAN_BITMAP }));
      assert.equal(log.status('info'), '3 disk 7:2 D');
      assert.equal(side.events, 1);
      assert.equal(log.syncCount(), 0);
      assert.equal(device.inner.contents.readUInt32LE(4), 7);
      assert.deepEqual(side.warnings, ['incompatible disk log version', '7:2: Failed to read header on dirty region log device']);
    });

    it('on a read failure: D, one event, every region out of sync', async () => {
      const device = logDevice(128, handWrittenLog({ bitmap: ALL_CLEAN_BITMAP }));
      device.inner.failOp('read', EIO);
      const side = new MirrorSide(device);
      const log = await createLog(diskLogType, side, ['log', '64']);
      await log.resume();
      assert.equal(log.status('info'), '3 disk 7:2 D');
      assert.equal(side.events, 1);
      assert.equal(log.syncCount(), 0);
    });

    it('marks the regions of a grown device dirty (default)', async () => {
      const device = logDevice(128, handWrittenLog({ bitmap: ALL_CLEAN_BITMAP }));
      const log = await createLog(diskLogType, new MirrorSide(device), ['log', '64'], 8192);
      await log.resume();
      assert.deepEqual(Array.from({ length: 128 }, (_, r) => r).filter((r) => !log.inSync(r)), [125, 126, 127]);
      assert.equal(device.inner.contents.readUInt32LE(8), 128);
    });

    it('writes header and bitmap, then flushes the log device', async () => {
      const { device } = await resumedLog(['log', '64']);
      assert.deepEqual(device.steps, ['read@0', 'write@0', 'flush']);
    });

    it('re-applies nosync at every resume: regions dirtied on disk are clean and in sync again', async () => {
      const { log, device } = await quietLog(['log', '64', 'nosync']);
      log.markRegion(1);
      log.setRegionSync(1, false);
      await log.postsuspend();
      assert.equal(diskBitmap(device)[0], 0xfd);
      await log.resume();
      assert.equal(log.isClean(1), true);
      assert.equal(log.syncCount(), REGION_COUNT);
      assert.equal(diskBitmap(device)[0], 0xff);
    });

    it('re-applies sync at every resume: everything resynchronised again', async () => {
      const { log } = await quietLog(['log', '64', 'sync']);
      for (let region = log.getResyncWork(); region !== undefined; region = log.getResyncWork()) {
        log.clearRegion(region);
        log.setRegionSync(region, true);
      }
      assert.equal(log.syncCount(), REGION_COUNT);
      await log.postsuspend();
      await log.resume();
      assert.equal(log.syncCount(), 0);
    });

    it('keeps the persisted bits across suspend and resume without a sync word', async () => {
      const { log } = await quietLog(['log', '64'], handWrittenLog({ bitmap: ALL_CLEAN_BITMAP }));
      log.markRegion(1);
      log.setRegionSync(1, false);
      await log.postsuspend();
      await log.resume();
      assert.equal(log.inSync(1), false);
      assert.equal(log.syncCount(), REGION_COUNT - 1);
    });

    it('restarts the resync cursor at resume', async () => {
      const { log } = await quietLog(['log', '64'], handWrittenLog({ bitmap: ALL_CLEAN_BITMAP }));
      log.setRegionSync(10, false);
      assert.equal(log.getResyncWork(), 10);
      log.setRegionSync(10, true);
      // A failed write: dirty on disk (so the reload keeps it out of sync) and out of sync now.
      log.markRegion(3);
      log.setRegionSync(3, false);
      assert.equal(log.getResyncWork(), undefined);
      await log.postsuspend();
      await log.resume();
      assert.equal(log.getResyncWork(), 3);
    });
  });

  describe('flush ordering', () => {
    it('does no I/O when nothing changed since the last flush', async () => {
      const { log, device, side } = await quietLog(['log', '64', 'nosync']);
      assert.equal(await log.flush(), 0);
      assert.deepEqual(device.steps, []);
      assert.deepEqual(side.legFlushAtStep, []);
    });

    it('dirtying: the log is written, then the log device flushed, before flush() resolves; the legs are not flushed', async () => {
      const { log, device, side } = await quietLog(['log', '64', 'nosync']);
      log.markRegion(5);
      assert.equal(await log.flush(), 0);
      assert.deepEqual(device.steps, ['write@0', 'flush']);
      assert.ok(device.inner.isFlushed);
      assert.equal(diskBitmap(device)[0], 0xdf);
      assert.deepEqual(side.legFlushAtStep, []);
    });

    it('cleaning: the legs are flushed before the log is written, and the log device is not flushed', async () => {
      const { log, device, side } = await quietLog(['log', '64'], handWrittenLog({ bitmap: [0xfe] }));
      log.clearRegion(0);
      assert.equal(await log.flush(), 0);
      assert.deepEqual(side.legFlushAtStep, [0]);
      assert.deepEqual(device.steps, ['write@0']);
      assert.equal(diskBitmap(device)[0], 0xff);
    });

    it('both: legs flushed, then the log written, then the log device flushed', async () => {
      const { log, device, side } = await quietLog(['log', '64'], handWrittenLog({ bitmap: [0xfe] }));
      log.clearRegion(0);
      log.markRegion(3);
      await log.flush();
      assert.deepEqual(side.legFlushAtStep, [0]);
      assert.deepEqual(device.steps, ['write@0', 'flush']);
    });

    it('resync bookkeeping touches the log too: handing out work rewrites it after a leg flush', async () => {
      const { log, device, side } = await quietLog(['log', '64']);
      assert.equal(log.getResyncWork(), 0);
      await log.flush();
      assert.deepEqual(side.legFlushAtStep, [0]);
      assert.deepEqual(device.steps, ['write@0']);
    });

    it('a region cleaned while the legs flush waits for the next flush (its data may not be covered)', async () => {
      const { log, device, side } = await quietLog(['log', '64'], handWrittenLog({ bitmap: [0xfc] }));
      log.clearRegion(0);
      side.duringLegFlush = () => {
        side.duringLegFlush = undefined;
        log.clearRegion(1);
      };
      await log.flush();
      assert.equal(diskBitmap(device)[0], 0xfd, 'region 1 must not be written clean by this flush');
      await log.flush();
      assert.equal(diskBitmap(device)[0], 0xff);
      assert.equal(side.legFlushAtStep.length, 2);
    });

    it('a failed leg flush marks every region dirty on disk, flushes the log device, and no region goes clean again', async () => {
      const { log, device, side } = await quietLog(['log', '64', 'nosync']);
      side.legFlushResult = -EIO;
      log.clearRegion(3);
      assert.equal(await log.flush(), 0);
      assert.deepEqual(setRegions(diskBitmap(device), 128), []);
      assert.deepEqual(device.steps, ['write@0', 'flush']);
      log.clearRegion(4);
      assert.equal(log.isClean(4), false);
    });
  });

  describe('log device failures', () => {
    it('a failed log write: flush fails with EIO, status D, one event', async () => {
      const { log, device, side } = await quietLog(['log', '64', 'nosync']);
      device.inner.failOp('write', EIO);
      log.markRegion(5);
      assert.equal(await log.flush(), -EIO);
      assert.equal(log.status('info'), '3 disk 7:2 D');
      assert.equal(side.events, 1);
    });

    it('a failed log device flush: status F, which wins over D, one event', async () => {
      const { log, device, side } = await quietLog(['log', '64', 'nosync']);
      device.inner.failOp('flush', EIO);
      log.markRegion(5);
      assert.equal(await log.flush(), -EIO);
      assert.equal(log.status('info'), '3 disk 7:2 F');
      assert.equal(side.events, 1);
    });

    it('raises the event only for the first failure', async () => {
      const { log, device, side } = await quietLog(['log', '64', 'nosync']);
      device.inner.failOp('write', EIO);
      log.markRegion(5);
      await log.flush();
      device.inner.failOp('write', null);
      device.inner.failOp('flush', EIO);
      log.markRegion(6);
      await log.flush();
      assert.equal(log.status('info'), '3 disk 7:2 F');
      assert.equal(side.events, 1);
    });

    it('keeps what a failed write did not store for the next flush', async () => {
      const { log, device } = await quietLog(['log', '64', 'nosync']);
      device.inner.failOp('write', EIO);
      log.markRegion(5);
      await log.flush();
      device.inner.failOp('write', null);
      assert.equal(await log.flush(), 0);
      assert.equal(diskBitmap(device)[0], 0xdf);
    });
  });

  it('prints its status and table words with the log device\'s name', async () => {
    const { log } = await resumedLog(['log', '64']);
    assert.equal(log.status('info'), '3 disk 7:2 A');
    assert.equal(log.status('table'), 'disk 2 7:2 64');
    assert.equal((await resumedLog(['log', '64', 'nosync'])).log.status('table'), 'disk 3 7:2 64 nosync');
  });

  it('holds its log device', async () => {
    const { log, device } = await resumedLog(['log', '64']);
    assert.deepEqual(log.devices(), [device]);
  });
});
