import assert from 'node:assert/strict';
import { coreLogType, parseKernelUnsigned } from '../../../../src/targets/mirror/core-log';
import { DirtyLogError, type DirtyLog } from '../../../../src/targets/mirror/dirty-log';
import { MirrorSide, REGION_COUNT, createLog } from './log-fixtures';

async function coreLog(words: readonly string[], targetSectors?: number): Promise<DirtyLog> {
  return createLog(coreLogType, new MirrorSide(), words, targetSectors);
}

async function assertLogError(words: readonly string[], message: string, targetSectors?: number): Promise<void> {
  await assert.rejects(coreLog(words, targetSectors), (e: unknown) => e instanceof DirtyLogError && e.message === message, words.join(' '));
}

function regionsWhere(log: DirtyLog, test: (region: number) => boolean): number[] {
  return Array.from({ length: log.regionCount }, (_, r) => r).filter(test);
}

describe('core dirty log', () => {
  describe('arguments', () => {
    it('takes one or two arguments, else "wrong number of arguments to dirty region log"', async () => {
      await assertLogError([], 'wrong number of arguments to dirty region log');
      await assertLogError(['64', 'nosync', 'x'], 'wrong number of arguments to dirty region log');
    });

    it('accepts only the words sync and nosync after the region size, case-sensitively', async () => {
      for (const word of ['block_on_error', 'NOSYNC', 'Sync']) {
        await assertLogError(['64', word], `unrecognised sync argument to dirty region log: ${word}`);
      }
    });

    it('checks the sync word before the region size, as the kernel does', async () => {
      await assertLogError(['48', 'bogus'], 'unrecognised sync argument to dirty region log: bogus');
    });

    it('rejects a region size that is not a power of two', async () => {
      await assertLogError(['48'], 'invalid region size 48');
    });

    it('rejects region sizes below 2 sectors', async () => {
      await assertLogError(['1'], 'invalid region size 1');
      await assertLogError(['0'], 'invalid region size 0');
    });

    it('rejects a region size larger than the target, and accepts one equal to it', async () => {
      await assertLogError(['16384'], 'invalid region size 16384', 8192);
      assert.equal((await coreLog(['8192'], 8192)).regionCount, 1);
    });

    it('rejects a region size that is not plain decimal digits', async () => {
      for (const text of ['64k', '+64', '-64', '', '0x40']) await assertLogError([text], `invalid region size ${text}`);
    });

    it('reads numbers as the kernel\'s %u does: digits only, modulo 2^32', () => {
      assert.equal(parseKernelUnsigned('4294967360'), 64);
      assert.equal(parseKernelUnsigned('4294967295'), 4294967295);
      assert.equal(parseKernelUnsigned('-1'), undefined);
    });

    it('rejects more than 2^32-1 regions', async () => {
      await assertLogError(['2'], 'region count exceeds limit of 4294967295', 2 ** 33 + 2);
    });

    it('counts regions rounding up', async () => {
      assert.equal((await coreLog(['64'])).regionCount, REGION_COUNT);
      assert.equal((await coreLog(['64'], 8001)).regionCount, 126);
    });
  });

  describe('state at construction', () => {
    it('starts with every region clean and none in sync by default', async () => {
      const log = await coreLog(['64']);
      assert.equal(regionsWhere(log, (r) => log.isClean(r)).length, REGION_COUNT);
      assert.equal(regionsWhere(log, (r) => log.inSync(r)).length, 0);
      assert.equal(log.syncCount(), 0);
    });

    it('starts with every region in sync with nosync', async () => {
      const log = await coreLog(['64', 'nosync']);
      assert.equal(regionsWhere(log, (r) => log.inSync(r)).length, REGION_COUNT);
      assert.equal(log.syncCount(), REGION_COUNT);
    });

    it('treats sync like the default: everything to resynchronise', async () => {
      const log = await coreLog(['64', 'sync']);
      assert.equal(log.syncCount(), 0);
      assert.equal(log.getResyncWork(), 0);
    });
  });

  describe('bits', () => {
    it('markRegion clears the clean bit and clearRegion sets it again, leaving sync alone', async () => {
      const log = await coreLog(['64', 'nosync']);
      log.markRegion(9);
      assert.deepEqual(regionsWhere(log, (r) => !log.isClean(r)), [9]);
      assert.equal(log.inSync(9), true);
      log.clearRegion(9);
      assert.equal(log.isClean(9), true);
    });

    it('setRegionSync moves a region in and out of sync and counts it', async () => {
      const log = await coreLog(['64', 'nosync']);
      log.setRegionSync(3, false);
      assert.equal(log.inSync(3), false);
      assert.equal(log.syncCount(), REGION_COUNT - 1);
      log.setRegionSync(3, false);
      assert.equal(log.syncCount(), REGION_COUNT - 1, 'a region already out of sync is not counted twice');
      log.setRegionSync(3, true);
      assert.equal(log.inSync(3), true);
      assert.equal(log.syncCount(), REGION_COUNT);
    });
  });

  describe('resync work', () => {
    it('hands out regions out of sync upwards, each once while it is recovering', async () => {
      const log = await coreLog(['64']);
      assert.equal(log.getResyncWork(), 0);
      assert.equal(log.getResyncWork(), 1);
      log.setRegionSync(0, true);
      assert.equal(log.getResyncWork(), 2);
    });

    it('skips regions in sync', async () => {
      const log = await coreLog(['64', 'nosync']);
      log.setRegionSync(70, false);
      assert.equal(log.getResyncWork(), 70);
      assert.equal(log.getResyncWork(), undefined);
    });

    it('never goes back: a region falling out of sync behind the cursor waits for resume', async () => {
      const log = await coreLog(['64', 'nosync']);
      log.setRegionSync(10, false);
      assert.equal(log.getResyncWork(), 10);
      log.setRegionSync(10, true);
      log.setRegionSync(4, false);
      assert.equal(log.getResyncWork(), undefined);
      await log.resume();
      assert.equal(log.getResyncWork(), 4);
    });

    it('after resume, skips a region still recovering', async () => {
      const log = await coreLog(['64', 'nosync']);
      log.setRegionSync(4, false);
      log.setRegionSync(6, false);
      assert.equal(log.getResyncWork(), 4);
      await log.resume();
      assert.equal(log.getResyncWork(), 6);
    });
  });

  it('keeps every bit across suspend and resume of the same table', async () => {
    const log = await coreLog(['64']);
    log.markRegion(2);
    log.setRegionSync(log.getResyncWork()!, true);
    await log.postsuspend();
    await log.resume();
    assert.equal(log.isClean(2), false);
    assert.equal(log.inSync(0), true);
    assert.equal(log.syncCount(), 1);
  });

  it('flush succeeds without flushing the legs: nothing is persisted', async () => {
    const side = new MirrorSide();
    const log = await createLog(coreLogType, side, ['64']);
    log.markRegion(1);
    log.clearRegion(2);
    assert.equal(await log.flush(), 0);
    assert.deepEqual(side.legFlushAtStep, []);
  });

  it('prints "1 core" and the table words, the sync word only when given', async () => {
    assert.equal((await coreLog(['64'])).status('info'), '1 core');
    assert.equal((await coreLog(['64'])).status('table'), 'core 1 64');
    assert.equal((await coreLog(['64', 'nosync'])).status('table'), 'core 2 64 nosync');
    assert.equal((await coreLog(['64', 'sync'])).status('table'), 'core 2 64 sync');
  });

  it('holds no device', async () => {
    assert.deepEqual((await coreLog(['64'])).devices(), []);
  });
});
