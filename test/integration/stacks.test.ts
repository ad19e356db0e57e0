/**
 * Stacks of our own devices: a table whose backing device is another ublk-dm device (by its
 * /dev/ublkbN path, by its /dev/ublk-dm/NAME link, or by MAJ:MIN). A saved table must come back
 * over the same device it was created over, never over whichever device happens to hold that
 * number after a daemon restart: that would write one device's data into another's backing file.
 */
import { strict as assert } from 'node:assert';
import type { ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox, requireRealUblk, makeBackingFile, mustSh, sha256OfFile } from './harness';

const MiB = 1 << 20;
const SECTORS_PER_MiB = MiB / 512;

interface Info {
  name: string;
  major: number;
  minor: number;
  blockPath: string;
  /** Only on a saved device that did not come back, with why. */
  state?: 'failed';
  reason?: string;
}

/** Every device as `info --json` reports it (one CLI call: each costs seconds in the TCG guest). */
async function infos(box: Sandbox): Promise<Info[]> {
  return JSON.parse(await box.ok(['info', '--json'])) as Info[];
}

/** MAJ:MIN of a block node, from the node itself. */
async function devnoOfNode(dev: string): Promise<string> {
  const [major, minor] = (await mustSh(`stat -c '%t %T' ${dev}`)).trim().split(' ');
  return `${parseInt(major, 16)}:${parseInt(minor, 16)}`;
}

/**
 * What each device is built on, in words a failure message can show: for a linear table over
 * one of our devices (its MAJ:MIN in `table` matched against `info --json`), `linear over NAME at
 * SECTOR`; otherwise the table line as printed. Also returns each device's block path.
 */
async function topology(box: Sandbox): Promise<{ stack: Record<string, string>; paths: Map<string, string> }> {
  // Two CLI runs at once: the guest has two CPUs and each run is mostly node starting up.
  const [devices, tables] = await Promise.all([infos(box), box.ok(['table'])]);
  const nameByDevno = new Map(devices.map((d) => [`${d.major}:${d.minor}`, d.name]));
  const stack: Record<string, string> = {};
  for (const d of devices) {
    const lines = tables.split('\n').filter((l) => l.startsWith(`${d.name}: `)).map((l) => l.slice(d.name.length + 2));
    const m = lines.length === 1 ? /^0 \d+ linear (\d+:\d+) (\d+)$/.exec(lines[0]) : null;
    const over = m ? nameByDevno.get(m[1]) : undefined;
    stack[d.name] = m && over ? `linear over ${over} at ${m[2]}` : lines.join(' | ');
  }
  return { stack, paths: new Map(devices.map((d) => [d.name, d.blockPath])) };
}

/** sha256 of `count` 64 KiB blocks at block `skip` of a file or device (read with O_DIRECT for devices). */
async function sumAt(path: string, skip: number, count: number, direct: boolean): Promise<string> {
  const flag = direct ? ' iflag=direct' : '';
  return (await mustSh(`dd if=${path} bs=64k skip=${skip} count=${count}${flag} status=none | sha256sum`)).split(' ')[0];
}

/** Write a pattern file through a device at 64 KiB block `seek`, as an application would, durably. */
async function writeAt(dev: string, pattern: string, seek: number): Promise<void> {
  await mustSh(`dd if=${pattern} of=${dev} bs=64k seek=${seek} oflag=direct conv=fsync,notrunc status=none`);
}

/** Everything the daemon writes to stderr from now on (restore messages come after the socket exists). */
function captureLog(child: ChildProcess): () => string {
  let text = '';
  child.stderr?.on('data', (d) => { text += d; });
  return () => text;
}

/**
 * Stop the daemon removing every kernel device (`shutdown --remove-devices`; the saved tables,
 * which go with the sandbox, are kept); if it does not stop, remove the devices one by one. Never throws.
 */
async function teardown(box: Sandbox | undefined, topDown: string[]): Promise<void> {
  if (!box) return;
  try {
    await box.stopDaemon();
    rmSync(box.dir, { recursive: true, force: true });
    return;
  } catch (err) {
    console.error(`teardown: ${(err as Error).message}; removing devices one by one`);
  }
  for (const name of topDown) await box.cli(['remove', name]).catch(() => undefined);
  await box.cleanup().catch(() => undefined);
}

describe('integration: stacks of our own devices across a daemon restart', function () {
  let box: Sandbox | undefined;
  let topDown: string[] = [];

  before(function () {
    requireRealUblk();
  });
  afterEach(async function () {
    await teardown(box, topDown);
    box = undefined;
    topDown = [];
  });

  it('a three-level stack of our own devices comes back over the same lower devices after a clean restart', async function () {
    box = new Sandbox('stack3');
    topDown = ['bb-top', 'mm-middle', 'zz-bottom', 'aaa-unrelated'];
    const bottomImg = await makeBackingFile(box.dir, 'zz-bottom.img', 8 * MiB);
    const unrelatedImg = await makeBackingFile(box.dir, 'aaa-unrelated.img', 8 * MiB);
    await box.startDaemon();

    // Creation order gives the numbers: zz-bottom takes the lowest free one and aaa-unrelated the
    // next. Name order (how saved tables are read back) differs from dependency order, and puts
    // the unrelated device first: on restart it is the first to ask for a number, so it gets the
    // one zz-bottom had. A table saved as "/dev/ublkbN of zz-bottom" then names aaa-unrelated.
    const bottomDev = await box.create('zz-bottom', `0 ${8 * SECTORS_PER_MiB} linear ${bottomImg} 0`);
    const unrelatedDev = await box.create('aaa-unrelated', `0 ${8 * SECTORS_PER_MiB} linear ${unrelatedImg} 0`);
    // mm-middle: 4 MiB of zz-bottom from 2 MiB on, named by the /dev/ublkbN path create printed.
    await box.create('mm-middle', `0 ${4 * SECTORS_PER_MiB} linear ${bottomDev} ${2 * SECTORS_PER_MiB}`);
    // bb-top: 2 MiB of mm-middle from 1 MiB on, named by the daemon's /dev/ublk-dm/NAME link.
    const middleLink = join(box.linkDir, 'mm-middle');
    assert.ok(existsSync(middleLink), `the daemon made ${middleLink}`);
    const topDev = await box.create('bb-top', `0 ${2 * SECTORS_PER_MiB} linear ${middleLink} ${1 * SECTORS_PER_MiB}`);
    // So bb-top byte b is mm-middle byte b + 1 MiB is zz-bottom byte b + 3 MiB (block 48 of 64 KiB).
    const TOP_IN_BOTTOM = 48;

    const asCreated = {
      'aaa-unrelated': `0 ${8 * SECTORS_PER_MiB} linear ${unrelatedImg} 0`,
      'bb-top': `linear over mm-middle at ${1 * SECTORS_PER_MiB}`,
      'mm-middle': `linear over zz-bottom at ${2 * SECTORS_PER_MiB}`,
      'zz-bottom': `0 ${8 * SECTORS_PER_MiB} linear ${bottomImg} 0`,
    };

    // Distinct data: 256 KiB through bb-top at 512 KiB (block 8), 256 KiB to aaa-unrelated at 0.
    const topData = await makeBackingFile(box.dir, 'top-data', 256 * 1024);
    const unrelatedData = await makeBackingFile(box.dir, 'unrelated-data', 256 * 1024);
    const topSum = await sha256OfFile(topData);
    const unrelatedDataSum = await sha256OfFile(unrelatedData);
    await writeAt(topDev, topData, 8);
    await writeAt(unrelatedDev, unrelatedData, 0);
    assert.equal(await sumAt(bottomImg, TOP_IN_BOTTOM + 8, 4, false), topSum, 'before the restart: bb-top writes land in zz-bottom.img at 3.5 MiB');
    const unrelatedSum = await sha256OfFile(unrelatedImg);

    await box.stopDaemon();
    assert.ok(!existsSync(topDev), 'shutdown --remove-devices removed the kernel devices');
    await box.startDaemon();

    // 1. Every device is back, each upper over the same device as before (by MAJ:MIN from info --json).
    // (`table` prints a block device as MAJ:MIN; topology() matches it against `info --json`.)
    const { stack: after, paths: back } = await topology(box);
    assert.deepEqual(after, asCreated, 'after the restart every device is back over the same lower device');

    // 2. Nothing was written into the unrelated device, and the data is where it was.
    assert.equal(await sha256OfFile(unrelatedImg), unrelatedSum, 'aaa-unrelated.img is unchanged by the restart');
    assert.equal(await sumAt(back.get('bb-top')!, 8, 4, true), topSum, 'bb-top reads back what was written through it');
    assert.equal(await sumAt(back.get('aaa-unrelated')!, 0, 4, true), unrelatedDataSum, 'aaa-unrelated reads back its own data');

    // 3. New writes through the restored stack land in zz-bottom.img, at the right offset, and nowhere else.
    const laterData = await makeBackingFile(box.dir, 'later-data', 256 * 1024);
    const laterSum = await sha256OfFile(laterData);
    await writeAt(back.get('bb-top')!, laterData, 16);
    assert.equal(await sumAt(bottomImg, TOP_IN_BOTTOM + 16, 4, false), laterSum, 'a write through the restored bb-top lands in zz-bottom.img at 4 MiB');
    assert.equal(await sumAt(bottomImg, TOP_IN_BOTTOM + 8, 4, false), topSum, 'the earlier write is still there');
    assert.equal(await sha256OfFile(unrelatedImg), unrelatedSum, 'aaa-unrelated.img is unchanged by writes through the restored stack');
  });

  it('a saved table is never restored onto a device other than the one it was created over', async function () {
    // The lower device cannot come back after the restart (its backing file is missing while the
    // daemon is down: a disk that did not show up at boot). Deterministic, and it keeps every
    // saved table, so the same stack must come back whole once the file is back. The upper names
    // the lower by MAJ:MIN; an unrelated device that sorts first takes that number on restart.
    // The upper must then stay down (not listed, the log says why) rather than be built over the
    // unrelated device, and nothing may be written anywhere.
    box = new Sandbox('stackgone');
    topDown = ['p-upper', 'z-lower', 'aaa-other'];
    const lowerImg = await makeBackingFile(box.dir, 'z-lower.img', 4 * MiB);
    const otherImg = await makeBackingFile(box.dir, 'aaa-other.img', 4 * MiB);
    await box.startDaemon();
    // z-lower first, so it has the lowest number, which aaa-other (first by name) gets on restart.
    const lowerDevno = await devnoOfNode(await box.create('z-lower', `0 ${4 * SECTORS_PER_MiB} linear ${lowerImg} 0`));
    await box.create('aaa-other', `0 ${4 * SECTORS_PER_MiB} linear ${otherImg} 0`);
    const upperDev = await box.create('p-upper', `0 ${2 * SECTORS_PER_MiB} linear ${lowerDevno} ${1 * SECTORS_PER_MiB}`);
    const upperData = await makeBackingFile(box.dir, 'upper-data', 256 * 1024);
    await writeAt(upperDev, upperData, 0);
    const upperSum = await sha256OfFile(upperData);
    const lowerSum = await sha256OfFile(lowerImg);
    const otherSum = await sha256OfFile(otherImg);

    await box.stopDaemon();
    const away = `${lowerImg}.away`;
    await rename(lowerImg, away);
    const log = captureLog(await box.startDaemon());

    const listed = await infos(box);
    assert.deepEqual(listed.filter((d) => d.state !== 'failed').map((d) => d.name), ['aaa-other'], 'with z-lower missing, p-upper stays down instead of being built over another device');
    assert.match(log(), /(error|warn): .*p-upper/, `the daemon's log says why p-upper is not back:\n${log()}`);
    const notBack = new Map(listed.filter((d) => d.state === 'failed').map((d) => [d.name, d.reason ?? '']));
    assert.deepEqual([...notBack.keys()], ['p-upper', 'z-lower'], '`info` shows both devices that did not come back');
    assert.match(notBack.get('p-upper')!, /z-lower/, 'p-upper: its lower device is not there');
    assert.match(notBack.get('z-lower')!, /z-lower\.img/, 'z-lower: its backing file is missing');
    assert.match(await box.ok(['ls']), /^p-upper\t\(not restored: .*z-lower/m, '`ls` shows it too, with why');
    assert.equal(await sha256OfFile(otherImg), otherSum, 'aaa-other.img is unchanged');
    assert.equal(await sha256OfFile(away), lowerSum, 'z-lower.img is unchanged');
    const saved = await readdir(box.stateDir);
    assert.ok(saved.includes('p-upper.json') && saved.includes('z-lower.json'), `the saved tables are kept (${saved.join(', ')})`);

    // The disk is back: the next start brings the whole stack back, the upper over the lower.
    await box.stopDaemon();
    await rename(away, lowerImg);
    await box.startDaemon();
    const whole = await topology(box);
    assert.deepEqual(whole.stack, {
      'aaa-other': `0 ${4 * SECTORS_PER_MiB} linear ${otherImg} 0`,
      'p-upper': `linear over z-lower at ${1 * SECTORS_PER_MiB}`,
      'z-lower': `0 ${4 * SECTORS_PER_MiB} linear ${lowerImg} 0`,
    }, 'with z-lower back, the stack comes back as created');
    assert.equal(await sumAt(whole.paths.get('p-upper')!, 0, 4, true), upperSum, 'p-upper reads back what was written through it');
    assert.equal(await sha256OfFile(otherImg), otherSum, 'aaa-other.img is still unchanged');
  });

  it('a device another of our devices is built on cannot be removed (EBUSY) until the upper is gone', async function () {
    box = new Sandbox('stackbusy');
    topDown = ['bb-top', 'mm-middle', 'zz-bottom'];
    const bottomImg = await makeBackingFile(box.dir, 'zz-bottom.img', 4 * MiB);
    await box.startDaemon();
    const bottomDev = await box.create('zz-bottom', `0 ${4 * SECTORS_PER_MiB} linear ${bottomImg} 0`);
    const middleDev = await box.create('mm-middle', `0 ${4 * SECTORS_PER_MiB} linear ${bottomDev} 0`);
    const topDev = await box.create('bb-top', `0 ${4 * SECTORS_PER_MiB} linear ${join(box.linkDir, 'mm-middle')} 0`);
    const bottomSum = await sha256OfFile(bottomImg);

    const refused = await Promise.all([box.cli(['remove', 'mm-middle']), box.cli(['remove', 'zz-bottom'])]);
    for (const [i, name] of ['mm-middle', 'zz-bottom'].entries()) {
      assert.notEqual(refused[i].code, 0, `remove ${name} must be refused while a device is built on it`);
      assert.match(refused[i].stderr, /busy/i);
    }
    for (const dev of [topDev, middleDev, bottomDev]) assert.ok(existsSync(dev), `${dev} is kept`);
    assert.equal(await sha256OfFile(topDev), bottomSum, 'and the stack still serves the same bytes');

    await box.ok(['remove', 'bb-top']);
    await box.ok(['remove', 'mm-middle']);
    await box.ok(['remove', 'zz-bottom']);
    for (const dev of [topDev, middleDev, bottomDev]) assert.ok(!existsSync(dev), `${dev} is gone`);
  });
});
