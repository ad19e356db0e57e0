import assert from 'node:assert/strict';
import { diskLogType } from '../../../../src/targets/mirror/disk-log';
import {
  MirrorSide,
  createLog,
  goldenImage,
  goldenLog,
  goldenLogDevice,
  goldenLogWords,
  goldenStatusParts,
  recoverUntil,
  regionsOf,
  startingImage,
  type GoldenLog,
} from './log-fixtures';

/**
 * The disk log against logs the 6.12 kernel wrote (test/golden/mirror, made by
 * tools/golden/make-mirror-golden.sh): we must read what it wrote, and write what it writes.
 */

const CASES = ['disk-midsync', 'disk-synced', 'disk-sync', 'disk-nosync', 'disk-grown', 'disk-inflight', 'disk-v1', 'disk-v3'];
/** Images whose header a default load accepts (version 3 is refused: the log reports D). */
const READABLE = CASES.filter((name) => name !== 'disk-v3');

/** The image loaded as a mirror without a sync word would load it: from its bitmap. */
async function loadAsDefault(golden: GoldenLog, name = golden.name): Promise<{ side: MirrorSide; log: Awaited<ReturnType<typeof createLog>> }> {
  const side = new MirrorSide(goldenLogDevice(golden, goldenImage(name)));
  const log = await createLog(diskLogType, side, ['log', `${golden.regionSectors}`], golden.targetSectors);
  await log.resume();
  return { side, log };
}

/** The table's log part: "disk 2 7:2 64", "disk 3 7:2 64 nosync". */
function kernelTableLogPart(golden: GoldenLog): string {
  const words = golden.table.split(' ');
  const at = words.indexOf('disk');
  return words.slice(at, at + 2 + Number(words[at + 1])).join(' ');
}

describe('disk log against kernel-written logs', () => {
  describe('reading', () => {
    for (const name of READABLE) {
      const golden = goldenLog(name);
      const expectedClean = regionsOf(golden.cleanRanges);

      it(`${name}: loads exactly the clean regions the kernel left`, async () => {
        const { log } = await loadAsDefault(golden);
        const clean = Array.from({ length: log.regionCount }, (_, r) => r).filter((r) => log.isClean(r));
        assert.deepEqual(clean, expectedClean);
      });

      it(`${name}: counts the clean regions as in sync and reports the log healthy`, async () => {
        const { log } = await loadAsDefault(golden);
        assert.equal(log.syncCount(), expectedClean.length);
        assert.equal(log.status('info'), '3 disk 7:2 A');
      });
    }

    it('disk-inflight: the region with the write in flight is the only resync work after a crash', async () => {
      const { log } = await loadAsDefault(goldenLog('disk-inflight'));
      assert.equal(log.getResyncWork(), 1);
      assert.equal(log.getResyncWork(), undefined);
    });

    it('disk-v3: refuses version 3 as the kernel did: status D, one event, nothing in sync', async () => {
      const golden = goldenLog('disk-v3');
      const { side, log } = await loadAsDefault(golden);
      assert.equal(log.status('info'), goldenStatusParts(golden).logInfo);
      assert.equal(side.events, 1);
      assert.equal(log.syncCount(), 0);
      assert.ok(side.warnings.includes('incompatible disk log version'));
    });
  });

  describe('writing: the same sequence gives the kernel\'s bytes', () => {
    for (const name of CASES) {
      const golden = goldenLog(name);
      const kernel = goldenStatusParts(golden);

      it(`${name}: ${golden.from ?? 'a zeroed device'} → ${golden.logArgs.split(' ').slice(1).join(' ')} → ${kernel.syncCount}/${kernel.regionCount}`, async () => {
        const side = new MirrorSide(goldenLogDevice(golden, startingImage(golden)));
        const log = await createLog(diskLogType, side, goldenLogWords(golden), golden.targetSectors);
        await log.resume();
        await recoverUntil(log, kernel.syncCount);
        // Regions in sync but dirty on disk had a write in flight when the kernel's copy was taken.
        const clean = new Set(regionsOf(golden.cleanRanges));
        for (let region = 0; region < log.regionCount; region++) {
          if (log.inSync(region) && !clean.has(region)) log.markRegion(region);
        }
        await log.postsuspend();

        assert.ok(side.device!.inner.contents.equals(goldenImage(name)), 'log device differs from the kernel\'s');
        assert.equal(log.status('info'), kernel.logInfo);
        assert.equal(log.status('table'), kernelTableLogPart(golden));
      });
    }
  });
});
