/**
 * `ublk-dm snapshot create | ls | merge` on real devices: the LVM way of taking a snapshot,
 * using it, and merging it back, with the data checked at each step.
 */
import { strict as assert } from 'node:assert';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox, mustSh, requireRealUblk } from './harness';

const SECTORS = 32768; // 16 MiB

/** The 8-byte stamp at the start of 4 KiB block `block` of `dev` (read with O_DIRECT by dd). */
async function stampAt(dev: string, block: number): Promise<string> {
  return (await mustSh(`dd if=${dev} bs=4096 skip=${block} count=1 iflag=direct status=none | head -c 8`)).toString();
}

async function stamp(dev: string, block: number, text: string): Promise<void> {
  await mustSh(`printf '${text}' | dd of=${dev} bs=4096 seek=${block} count=1 conv=sync oflag=direct status=none`);
}

describe('integration: snapshot commands', function () {
  let box: Sandbox;
  let originFile: string;

  before(async function () {
    requireRealUblk();
    box = new Sandbox('snapcli');
    originFile = join(box.dir, 'origin.img');
    // Every 4 KiB block starts with its number: O0000000, O0000001, ...
    const block = Buffer.alloc(4096);
    await writeFile(originFile, Buffer.concat(Array.from({ length: 4096 }, (_, i) => {
      block.fill(0);
      block.write(`O${String(i).padStart(7, '0')}`);
      return Buffer.from(block);
    })));
  });
  after(async function () {
    await box?.cleanup();
  });

  it('snapshot create turns a linear origin into snapshot-origin and makes a snapshot that keeps the old data', async function () {
    const base = await box.create('base', `0 ${SECTORS} linear ${originFile} 0`);
    const cow = join(box.dir, 'cow.img');
    const snap = (await box.ok(['snapshot', 'create', 'snap', '--origin', 'base', '--cow', cow, '--size', '4m', '--chunk', '4k'])).trim();
    assert.match(snap, /^\/dev\/ublkb\d+$/);
    assert.equal(await box.ok(['table', 'base']), `0 ${SECTORS} snapshot-origin ${originFile}\n`);
    assert.equal(await box.ok(['table', 'snap']), `0 ${SECTORS} snapshot ${originFile} ${cow} P 8\n`);

    for (const block of [5, 3, 0]) await stamp(base, block, `N${String(block).padStart(7, '0')}`);
    assert.equal(await stampAt(snap, 5), 'O0000005');
    assert.equal(await stampAt(base, 5), 'N0000005');
    assert.equal(await stampAt(snap, 7), 'O0000007');
    assert.equal(await box.ok(['status', 'snap']), `0 ${SECTORS} snapshot 40/8192 16\n`, 'the kernel counts the same (spec §9.2)');

    const listed = JSON.parse(await box.ok(['snapshot', 'ls', '--json'])) as Array<{ snapshot: string; origin: string; usedPercent: number }>;
    assert.deepEqual(listed.map((l) => [l.snapshot, l.origin]), [['snap', 'base']]);
  });

  it('a snapshot of a missing origin, or onto an existing COW with --size, changes nothing', async function () {
    const before = await box.ok(['ls']);
    const r1 = await box.cli(['snapshot', 'create', 'nope', '--origin', 'missing', '--cow', join(box.dir, 'x.img'), '--size', '1m']);
    assert.notEqual(r1.code, 0);
    assert.ok(!existsSync(join(box.dir, 'x.img')), 'no COW file left behind');
    const r2 = await box.cli(['snapshot', 'create', 'nope', '--origin', 'base', '--cow', join(box.dir, 'cow.img'), '--size', '1m']);
    assert.match(r2.stderr, /exists/);
    assert.equal(await box.ok(['ls']), before);
    assert.equal((await box.ok(['info', 'base'])).includes('ACTIVE'), true, 'the origin is not left suspended');
  });

  it('snapshot merge --wait puts the snapshot back into the origin and returns it to snapshot-origin', async function () {
    const base = (await box.ok(['ls', '--json'])).includes('"base"') ? JSON.parse(await box.ok(['ls', '--json'])).find((d: { name: string }) => d.name === 'base').blockPath : '';
    const snap = JSON.parse(await box.ok(['ls', '--json'])).find((d: { name: string }) => d.name === 'snap').blockPath;
    await stamp(snap, 9, 'S0000009'); // a write to the snapshot is merged too
    const progress = (await box.ok(['snapshot', 'merge', 'snap', '--wait', '--json'])).trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(progress[progress.length - 1].finished, true);
    assert.equal(await box.ok(['table', 'base']), `0 ${SECTORS} snapshot-origin ${originFile}\n`);
    assert.ok(!(await box.ok(['ls'])).includes('snap'), 'the snapshot device is gone');
    assert.equal(await stampAt(base, 5), 'O0000005', 'the origin holds the snapshot image again');
    assert.equal(await stampAt(base, 9), 'S0000009');
    assert.equal(await stampAt(base, 7), 'O0000007');
  });
});
