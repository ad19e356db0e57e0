import assert from 'node:assert/strict';
import type { IoResult } from '../../../../src/base/errno';
import type { DaemonScope } from '../../../../src/dm/scope';
import type { BlockDevice } from '../../../../src/io/block-device';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { loadMemoryTable, testScope } from '../../../../src/testing/tables';
import { RESYNC_THROTTLE } from '../../../../src/targets/mirror/resync-throttle';

const REGION_SECTORS = 8;
const REGIONS = 12;
const WRITE_DELAY_MS = 10;

/** A leg whose writes take WRITE_DELAY_MS: resync copies keep I/O outstanding for a measurable time. */
function slowWrites(inner: BlockDevice): BlockDevice {
  const later = <T>(result: Promise<T>): Promise<T> => new Promise((resolve) => setTimeout(() => resolve(result), WRITE_DELAY_MS));
  return Object.assign(Object.create(inner) as BlockDevice, {
    write: (buf: Uint8Array, sector: number, fua: boolean): Promise<IoResult> => later(inner.write(buf, sector, fua)),
    writev: (bufs: Uint8Array[], sector: number, fua: boolean): Promise<IoResult> => later(inner.writev(bufs, sector, fua)),
    writeCb: undefined,
  });
}

/** Resync of a core-log mirror over a slow second leg, start to n/n, in milliseconds. */
async function timedResync(scope: DaemonScope): Promise<number> {
  const leg0 = new MemoryDevice(REGIONS * REGION_SECTORS);
  const leg1 = new MemoryDevice(REGIONS * REGION_SECTORS);
  leg0.contents.fill(0x5a);
  const table = await loadMemoryTable(`0 ${REGIONS * REGION_SECTORS} mirror core 1 ${REGION_SECTORS} 2 a 0 b 0`, {}, {
    scope,
    openDevice: async (spec) => (spec === 'a' ? leg0.open() : slowWrites(leg1.open())),
  });
  const [mirror] = table.segments;
  const started = performance.now();
  await mirror!.target.resume?.();
  while (!mirror!.target.status('info').includes(`${REGIONS}/${REGIONS}`)) {
    if (performance.now() - started > 20_000) assert.fail(`no resync after 20 s: ${mirror!.target.status('info')}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  const elapsedMs = performance.now() - started;
  assert.ok(leg1.contents.equals(leg0.contents), 'the resync copied leg 0');
  await mirror!.target.destroy();
  return elapsedMs;
}

describe('mirror: the per-daemon resync throttle (raid1_resync_throttle)', () => {
  it('is 100 (unthrottled) by default, as the kernel\'s module parameter', () => {
    const scope = testScope();
    assert.deepEqual(scope.parameterSettings('raid1_resync_throttle').map((s) => s.value), ['100']);
    assert.equal(scope.get(RESYNC_THROTTLE).limiting, false);
  });

  it('is one throttle for every mirror of a scope (daemon), and each scope has its own', async () => {
    const scope = testScope();
    const other = testScope();
    scope.setParameter('raid1_resync_throttle', '25');
    assert.equal(scope.get(RESYNC_THROTTLE).percent, 25);
    assert.equal(other.get(RESYNC_THROTTLE).percent, 100, 'another daemon is not affected');
    // Two mirrors of the scope: their kcopyd clients hold that same throttle object.
    const legs = Object.fromEntries(['a', 'b', 'c', 'd'].map((name) => [name, new MemoryDevice(64)]));
    const first = await loadMemoryTable('0 64 mirror core 2 8 nosync 2 a 0 b 0', legs, { scope });
    const second = await loadMemoryTable('0 64 mirror core 2 8 nosync 2 c 0 d 0', legs, { scope });
    for (const table of [first, second]) {
      const kcopyd = (table.segments[0]!.target as unknown as { kcopyd: { throttle: unknown } }).kcopyd;
      assert.equal(kcopyd.throttle, scope.get(RESYNC_THROTTLE));
    }
  });

  it('refuses a value that is not an unsigned integer, keeping the old one', () => {
    const scope = testScope();
    scope.setParameter('raid1_resync_throttle', '40');
    for (const bad of ['', '-1', '12.5', 'fast', '4294967296']) {
      assert.throws(() => scope.setParameter('raid1_resync_throttle', bad), /raid1_resync_throttle: .* is not a percentage/);
    }
    assert.equal(scope.parameterSettings('raid1_resync_throttle')[0]!.value, '40');
    assert.throws(() => scope.setParameter('no_such_knob', '1'), (e: Error & { code?: string }) => e.code === 'ENOENT');
  });

  it('a low throttle slows a resync down (the kernel: 1 % stretches a 4 MiB resync to seconds)', async function () {
    this.timeout(30_000);
    const unthrottledMs = await timedResync(testScope());
    const slowScope = testScope();
    slowScope.setParameter('raid1_resync_throttle', '10');
    const throttledMs = await timedResync(slowScope);
    // 12 copies of >= 10 ms of outstanding I/O each; at 10 % each must be followed by ~90 ms idle.
    assert.ok(throttledMs > 4 * unthrottledMs && throttledMs > 500, `throttled ${throttledMs.toFixed(0)} ms vs unthrottled ${unthrottledMs.toFixed(0)} ms`);
  });
});
