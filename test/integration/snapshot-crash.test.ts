/**
 * Snapshots across daemon crashes and restarts:
 *  - killed in the middle of origin writes, the snapshot reads exactly its point-in-time image
 *    after a restart (every copy-out the origin write waited for was committed first; any other
 *    was never let through to the origin);
 *  - killed in the middle of a merge, the restarted daemon loads snapshot-merge from the COW and
 *    finishes the merge, and the origin ends with the snapshot's content;
 *  - a snapshot whose origin is one of our own devices comes back over it after a clean restart
 *    and after a SIGKILL.
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { sendRequest } from '../../src/cli/client';
import { daemonPaths } from '../../src/daemon/paths';
import { Sandbox, mustSh, requireRealUblk, sleep } from './harness';

const BLOCKS = 4096; // 16 MiB of 4 KiB blocks

/**
 * The blocks (4 KiB) of a device or file whose first 8 bytes are not one of the stamps `want(i)`
 * allows, as "i:stamp" (the first ten) and a count. Read here, not by a child process: a node
 * start costs seconds in the TCG guest.
 */
async function badBlocks(path: string, want: (block: number) => readonly string[]): Promise<string> {
  const bad: string[] = [];
  const chunk = Buffer.alloc(256 * 4096);
  const file = await open(path, 'r');
  try {
    for (let first = 0; first < BLOCKS; first += 256) {
      const { bytesRead } = await file.read(chunk, 0, chunk.length, first * 4096);
      for (let i = first; i < Math.min(first + 256, BLOCKS); i++) {
        const offset = (i - first) * 4096;
        // A block the read fell short of is bad too: a short device must not pass unread.
        const got = offset + 4096 <= bytesRead ? chunk.toString('latin1', offset, offset + 8) : '(not read)';
        if (!want(i).includes(got)) bad.push(`${i}:${JSON.stringify(got)}`);
      }
    }
  } finally {
    await file.close();
  }
  return `${bad.slice(0, 10).join(' ')} (${bad.length} bad)`.trim();
}

const stampOf = (letter: string, block: number): string => letter + String(block).padStart(7, '0');

/** Every block starts with `<letter><block>` for one of `letters`. */
function eachBlockIsOneOf(letters: string): (block: number) => string[] {
  return (i) => [...letters].map((l) => stampOf(l, i));
}

/** `S<block>` for the blocks in `sBlocks`, `O<block>` for the others. */
function snapshotImage(sBlocks: readonly number[]): (block: number) => string[] {
  const s = new Set(sBlocks);
  return (i) => [stampOf(s.has(i) ? 'S' : 'O', i)];
}

/** Writes `<letter><block>` (zero-padded to 4 KiB) into the given blocks of a file or device, then fsyncs. */
async function stampWith(path: string, letter: string, blocks: Iterable<number>, flags = 'r+'): Promise<void> {
  const block = Buffer.alloc(4096);
  const file = await open(path, flags);
  try {
    for (const i of blocks) {
      block.fill(0);
      block.write(stampOf(letter, i));
      await file.write(block, 0, 4096, i * 4096);
    }
    await file.sync();
  } finally {
    await file.close();
  }
}

const allBlocks = (): number[] => Array.from({ length: BLOCKS }, (_, i) => i);

/** A file of BLOCKS 4 KiB blocks, block i starting with `O<i>`. */
async function stampedOrigin(file: string): Promise<void> {
  await stampWith(file, 'O', allBlocks(), 'w');
}

/** Stamps `<letter><block>` into the given 4 KiB blocks of a device, in that order, with O_DIRECT. */
async function stampBlocks(dev: string, letter: string, blocks: readonly number[]): Promise<void> {
  await mustSh(`for i in ${blocks.join(' ')}; do printf '${letter}%07d' $i | dd of=${dev} bs=4096 seek=$i count=1 conv=sync oflag=direct status=none || exit 1; done`);
}

async function daemonPid(box: Sandbox): Promise<number> {
  return Number((await readFile(join(box.env.UBLK_DM_RUN_DIR!, 'ublk-dm.pid'), 'utf8')).trim());
}

describe('integration: a snapshot across a daemon crash', function () {
  let box: Sandbox;

  before(function () {
    requireRealUblk();
    box = new Sandbox('snapcrash');
  });
  after(async function () {
    await box?.cleanup();
  });

  it('SIGKILL during origin writes: after restart the snapshot reads its point-in-time image, the origin old or new per block', async function () {
    const originFile = join(box.dir, 'origin.img');
    await stampedOrigin(originFile);
    await box.create('base', `0 ${BLOCKS * 8} linear ${originFile} 0`);
    await box.ok(['snapshot', 'create', 'snap', '--origin', 'base', '--cow', join(box.dir, 'cow.img'), '--size', '24m', '--chunk', '4k']);
    const base = JSON.parse(await box.ok(['ls', '--json'])).find((d: { name: string }) => d.name === 'base').blockPath as string;

    // Four writers stamping N<block> over random blocks with O_DIRECT. The kill does not fail
    // their writes: the kernel holds them (ublk user recovery) until the next daemon serves them,
    // and the writers' SIGKILL takes effect once the write they wait on completes.
    const writer = spawn('bash', ['-c', `for w in 1 2 3 4; do (while true; do i=$((RANDOM % ${BLOCKS})); printf 'N%07d' $i | dd of=${base} bs=4096 seek=$i count=1 conv=sync oflag=direct status=none 2>/dev/null || exit 0; done) & done; wait`], { stdio: 'ignore', detached: true });
    await sleep(4000);
    const pid = Number((await readFile(join(box.env.UBLK_DM_RUN_DIR!, 'ublk-dm.pid'), 'utf8')).trim());
    process.kill(pid, 'SIGKILL');
    await sleep(500);
    process.kill(-writer.pid!, 'SIGKILL');

    // The next CLI call starts a daemon, which reattaches to both devices and rebuilds their
    // tables from what is saved (the snapshot's exceptions from its COW).
    const listed = JSON.parse(await box.ok(['ls', '--json'])) as Array<{ name: string; blockPath: string }>;
    assert.deepEqual(listed.map((d) => d.name), ['base', 'snap']);
    assert.equal(listed.find((d) => d.name === 'base')!.blockPath, base, 'the origin is the same device');
    const status = (await box.ok(['status', 'snap'])).trim();
    assert.match(status, /^0 32768 snapshot \d+\/49152 \d+$/, 'valid, with exceptions');
    const snap = listed.find((d) => d.name === 'snap')!.blockPath;
    assert.equal(await badBlocks(snap, eachBlockIsOneOf('O')), '(0 bad)', 'the snapshot holds only the original blocks');
    assert.equal(await badBlocks(listed.find((d) => d.name === 'base')!.blockPath, eachBlockIsOneOf('ON')), '(0 bad)', 'the origin holds old or new blocks, nothing torn');
    assert.notEqual(status.split(' ')[3], '16/49152', 'the writer got copy-outs committed before the kill');
  });

  it('SIGKILL during a merge: the restarted daemon resumes it from the COW and the origin ends with the snapshot image', async function () {
    const originFile = join(box.dir, 'merge-origin.img');
    await stampedOrigin(originFile);
    await box.create('mbase', `0 ${BLOCKS * 8} linear ${originFile} 0`);
    await box.ok(['snapshot', 'create', 'msnap', '--origin', 'mbase', '--cow', join(box.dir, 'merge-cow.img'), '--size', '24m', '--chunk', '4k']);
    const devices = JSON.parse(await box.ok(['ls', '--json'])) as Array<{ name: string; blockPath: string }>;
    const base = devices.find((d) => d.name === 'mbase')!.blockPath;
    const snap = devices.find((d) => d.name === 'msnap')!.blockPath;

    // Every other block of the origin overwritten (buffered, so written back in large requests):
    // the exceptions are of chunks 0, 2, 4... and each merge step merges one of them.
    await stampWith(base, 'N', allBlocks().filter((i) => i % 2 === 0));
    const sBlocks = [1, 7, 2, 4001, 4095];
    await stampBlocks(snap, 'S', sBlocks); // writes to the snapshot are merged too
    assert.equal(await badBlocks(snap, snapshotImage(sBlocks)), '(0 bad)', 'the snapshot image before the merge');

    const socketPath = daemonPaths(box.env).socketPath;
    /** Sectors of exceptions left in `name` (snapshot or snapshot-merge status `A/T M`: A - M). */
    const usage = async (name = 'mbase'): Promise<{ remaining: number; text: string }> => {
      const [status] = await sendRequest(socketPath, { verb: 'status', name });
      const text = status!.targets[0]!.text;
      const m = /^(\d+)\/(\d+) (\d+)$/.exec(text);
      assert.ok(m, `status ${JSON.stringify(text)}`);
      return { remaining: Number(m[1]) - Number(m[3]), text };
    };
    const total = (await usage('msnap')).remaining;
    assert.ok(total >= (BLOCKS / 2 + 3) * 8, `${total} sectors to merge: the even blocks and 3 more written to the snapshot`);

    await box.ok(['snapshot', 'merge', 'msnap']);
    // Kill it once some but not most of the merge is done.
    let before = total;
    for (let i = 0; i < 2000 && before > total * 0.8; i++) {
      await sleep(20);
      before = (await usage()).remaining;
    }
    process.kill(await daemonPid(box), 'SIGKILL');
    assert.ok(before > 0 && before < total, `killed mid-merge: ${before} of ${total} sectors left`);
    await sleep(500);

    // The next CLI call starts a daemon, which loads mbase's saved snapshot-merge table from disk.
    const listed = JSON.parse(await box.ok(['ls', '--json'])) as Array<{ name: string; blockPath: string }>;
    assert.deepEqual(listed.map((d) => d.name).filter((n) => n.startsWith('m')), ['mbase'], 'the snapshot device was removed when the merge began');
    assert.match(await box.ok(['table', 'mbase']), /^0 32768 snapshot-merge \S+ \S+ P 8\n$/);
    const afterRestart = await usage();
    assert.ok(afterRestart.remaining <= before, `the merge picks up where it stopped (${afterRestart.text}, ${before} left before the kill)`);
    // Reads during the merge already show the snapshot's image.
    const restartedBase = listed.find((d) => d.name === 'mbase')!.blockPath;
    assert.equal(await badBlocks(restartedBase, snapshotImage(sBlocks)), '(0 bad)', 'the origin shows the snapshot image while merging');

    let finished = afterRestart;
    for (let i = 0; i < 3000 && finished.remaining > 0; i++) {
      await sleep(100);
      finished = await usage();
    }
    assert.equal(finished.text, '16/49152 16', 'merged: allocated back to the metadata (spec §4.1)');
    const info = JSON.parse(await box.ok(['info', 'mbase', '--json'])) as { eventNumber: number };
    assert.equal(info.eventNumber, 0, 'a merge raises no event, finished or not (spec §4.4)');
    assert.equal(await badBlocks(restartedBase, snapshotImage(sBlocks)), '(0 bad)', 'the origin device holds the snapshot image');

    // As `snapshot merge --wait` would have ended: back to snapshot-origin; the file itself holds the image.
    await box.ok(['suspend', 'mbase']);
    await box.ok(['reload', 'mbase', '--table', `0 ${BLOCKS * 8} snapshot-origin ${originFile}`]);
    await box.ok(['resume', 'mbase']);
    await box.ok(['remove', 'mbase']);
    assert.equal(await badBlocks(originFile, snapshotImage(sBlocks)), '(0 bad)', 'the origin file holds the snapshot image');
  });

  describe('a snapshot of one of our own devices', () => {
    let originFile: string;
    let written: number[] = [];

    /** Every device by name as `ls --json` reports it. */
    async function paths(): Promise<Map<string, string>> {
      const devices = JSON.parse(await box.ok(['ls', '--json'])) as Array<{ name: string; blockPath: string }>;
      return new Map(devices.map((d) => [d.name, d.blockPath]));
    }

    /** The snapshot reads only original blocks; the origin reads N for `written`, O elsewhere. */
    async function checkStack(label: string): Promise<void> {
      const dev = await paths();
      assert.equal(await badBlocks(dev.get('stk-snap')!, eachBlockIsOneOf('O')), '(0 bad)', `${label}: the snapshot holds the original blocks`);
      const n = new Set(written);
      const originBad = await badBlocks(dev.get('stk-base')!, (i) => [stampOf(n.has(i) ? 'N' : 'O', i)]);
      assert.equal(originBad, '(0 bad)', `${label}: the origin holds exactly the blocks written`);
    }

    it('snapshot-origin and snapshot over our linear over a file: copy-out works through the lower device', async function () {
      originFile = join(box.dir, 'stack-origin.img');
      await stampedOrigin(originFile);
      const lower = await box.create('stk-lower', `0 ${BLOCKS * 8} linear ${originFile} 0`);
      await box.create('stk-base', `0 ${BLOCKS * 8} linear ${lower} 0`);
      await box.ok(['snapshot', 'create', 'stk-snap', '--origin', 'stk-base', '--cow', join(box.dir, 'stack-cow.img'), '--size', '24m', '--chunk', '4k']);
      assert.match(await box.ok(['table', 'stk-snap']), /^0 32768 snapshot \d+:\d+ \S+ P 8\n$/, 'the origin is the lower device, by number');
      written = [5, 3, 0, 4095, 100];
      await stampBlocks((await paths()).get('stk-base')!, 'N', written);
      await checkStack('before any restart');
    });

    it('survives a clean restart: the lower device comes back first and the snapshot keeps its exceptions', async function () {
      const statusBefore = await box.ok(['status', 'stk-snap']);
      await box.stopDaemon();
      assert.deepEqual([...(await paths()).keys()].filter((n) => n.startsWith('stk-')).sort(), ['stk-base', 'stk-lower', 'stk-snap']);
      assert.equal(await box.ok(['status', 'stk-snap']), statusBefore);
      await checkStack('after a clean restart');
      const more = [6, 4000];
      await stampBlocks((await paths()).get('stk-base')!, 'N', more);
      written = [...written, ...more];
      await checkStack('written after the restart');
    });

    it('survives SIGKILL during origin writes: the snapshot reads its image, the origin old or new per block', async function () {
      const base = (await paths()).get('stk-base')!;
      const writer = spawn('bash', ['-c', `for w in 1 2; do (while true; do i=$((RANDOM % ${BLOCKS})); printf 'N%07d' $i | dd of=${base} bs=4096 seek=$i count=1 conv=sync oflag=direct status=none 2>/dev/null || exit 0; done) & done; wait`], { stdio: 'ignore', detached: true });
      await sleep(4000);
      process.kill(await daemonPid(box), 'SIGKILL');
      await sleep(500);
      process.kill(-writer.pid!, 'SIGKILL');

      const dev = await paths();
      assert.deepEqual([...dev.keys()].filter((n) => n.startsWith('stk-')).sort(), ['stk-base', 'stk-lower', 'stk-snap']);
      assert.match(await box.ok(['status', 'stk-snap']), /^0 32768 snapshot \d+\/49152 \d+\n$/, 'valid');
      assert.equal(await badBlocks(dev.get('stk-snap')!, eachBlockIsOneOf('O')), '(0 bad)', 'the snapshot holds only the original blocks');
      assert.equal(await badBlocks(dev.get('stk-base')!, eachBlockIsOneOf('ON')), '(0 bad)', 'the origin holds old or new blocks, nothing torn');
      assert.equal(await badBlocks(dev.get('stk-lower')!, eachBlockIsOneOf('ON')), '(0 bad)', 'the lower device too');
    });
  });
});
