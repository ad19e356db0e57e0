/**
 * A disk-log mirror across a daemon crash (issue 8 item 7, spec mirror.md §2 flush ordering and
 * §9.4 load): the daemon is killed with SIGKILL while writes are acknowledged (a) on an in-sync
 * mirror (a2: one reloaded from a linear, its queue threads writing) and (b) in the middle of a
 * resync, then restarted. What must hold, as the kernel's
 * dm-mirror would have it:
 *   - every region the log on disk shows clean holds the same bytes on both legs at the kill;
 *   - after the restart only the regions the log shows dirty are copied: a marker put on leg 1
 *     in a clean region (while the daemon is down) survives the resync, one put in a dirty
 *     region is overwritten by leg 0's bytes;
 *   - every acknowledged write is on both legs after the resync, and the legs end identical
 *     except for the clean-region marker.
 *
 * Acknowledged writes are tracked with dd writers that stamp `W<block><seq>` into 4 KiB blocks
 * with O_DIRECT and append `<block> <seq>` to their own file only once dd returned; the writers
 * own disjoint blocks, so each block's stamps come in sequence order. (conv=nocreat: once the
 * daemon is dead its /dev/ublkbN may vanish, and dd would otherwise "succeed" into a new file.) fio writes crc32c-verified
 * blocks at QD 16 on the other half of the device at the same time, so many regions have writes
 * in flight when the daemon dies.
 */
import { strict as assert } from 'node:assert';
import { existsSync, realpathSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Sandbox, makeBackingFile, mustSh, randomName, requireRealUblk, sh, sleep } from './harness';
import { background, cleanBits, headerHex, parseMirrorStatus, type Background, type SyncStatus } from './mirror-support';

const MiB = 1 << 20;
const LEG_BYTES = 16 * MiB;
const LEG_SECTORS = LEG_BYTES / 512;
const REGION_SECTORS = 256;
const REGION_BYTES = REGION_SECTORS * 512;
const REGIONS = LEG_SECTORS / REGION_SECTORS; // 128
const BLOCK = 4096;
const WRITERS = 4;
/** The dd writers stamp blocks of the first half; fio writes the second half. */
const STAMPED_BLOCKS = LEG_BYTES / 2 / BLOCK;

/** `WRITERS` dd loops, writer w on blocks b with b % WRITERS == w, each logging acknowledged writes to ack.<w>. */
function stampWriters(dev: string, dir: string): Background {
  return background(
    `for w in $(seq 0 ${WRITERS - 1}); do (s=0; while true; do i=$(( (RANDOM % ${STAMPED_BLOCKS / WRITERS}) * ${WRITERS} + w )); s=$((s+1)); ` +
      `printf 'W%07d%08d' $i $s | dd of=${dev} bs=${BLOCK} seek=$i count=1 conv=sync,notrunc,nocreat oflag=direct status=none 2>/dev/null || exit 0; ` +
      `echo "$i $s" >> ${dir}/ack.$w; done) & done; wait`,
  );
}

/** The last acknowledged sequence number of every block a writer stamped. */
async function acknowledged(dir: string): Promise<Map<number, number>> {
  const last = new Map<number, number>();
  for (let w = 0; w < WRITERS; w++) {
    const path = join(dir, `ack.${w}`);
    if (!existsSync(path)) continue;
    for (const line of (await readFile(path, 'utf8')).split('\n')) {
      const m = /^(\d+) (\d+)$/.exec(line);
      if (m) last.set(Number(m[1]), Math.max(last.get(Number(m[1])) ?? 0, Number(m[2])));
    }
  }
  return last;
}

/** Blocks whose content is not that last acknowledged write or a later one of the same writer. */
function missingAcknowledged(leg: Buffer, acks: Map<number, number>): string[] {
  const bad: string[] = [];
  for (const [block, seq] of acks) {
    const text = leg.toString('latin1', block * BLOCK, block * BLOCK + 16);
    const m = /^W(\d{7})(\d{8})$/.exec(text);
    if (!m || Number(m[1]) !== block || Number(m[2]) < seq) bad.push(`${block}: acked #${seq}, found ${JSON.stringify(text)}`);
  }
  return bad;
}

function region(buf: Buffer, r: number): Buffer {
  return buf.subarray(r * REGION_BYTES, (r + 1) * REGION_BYTES);
}

const MARKER_OFFSET = 100;

describe('integration: a disk-log mirror across a daemon crash (SIGKILL)', function () {
  let box: Sandbox;
  let undo: Array<() => Promise<unknown>> = [];

  before(function () {
    requireRealUblk();
    box = new Sandbox('mirrorcrash');
    // What the log must carry across a crash, with the devices dying with the daemon: with ublk
    // user recovery (recovery.test.ts) the kernel would re-issue the killed writers' queued
    // writes to the next daemon, after the "at the kill" images this test compares against.
    box.env.UBLK_DM_RECOVERY = 'off';
  });
  afterEach(async function () {
    for (const step of undo.reverse()) {
      try { await step(); } catch { /* keep undoing */ }
    }
    undo = [];
    const ls = await box.cli(['ls', '--json']);
    if (ls.code === 0) for (const d of JSON.parse(ls.stdout) as Array<{ name: string }>) await box.cli(['remove', d.name]);
    await sh(`rm -rf ${box.dir}/t`);
  });
  after(async function () {
    await box?.cleanup();
  });

  async function dir(): Promise<string> {
    const path = join(box.dir, 't');
    await mustSh(`mkdir -p ${path}`);
    return path;
  }

  async function status(name: string): Promise<SyncStatus> {
    return parseMirrorStatus(await box.ok(['status', name]));
  }

  async function waitInSync(name: string, timeoutMs = 240_000): Promise<SyncStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await status(name);
      if (s.inSync === s.regions) return s;
      if (Date.now() > deadline) throw new Error(`${name} not in sync after ${timeoutMs} ms: ${s.line}`);
      await sleep(500);
    }
  }

  /** A leg whose writes and flushes take `ms` (the kernel's dm-delay over a loop device of `backing`). */
  async function slowLeg(backing: string, ms: number): Promise<string> {
    const loop = (await mustSh(`losetup -f --show ${backing}`)).trim();
    undo.push(() => sh(`losetup -d ${loop}`));
    const name = randomName('mc');
    await mustSh(`dmsetup create ${name} --table "0 ${LEG_SECTORS} delay ${loop} 0 0 ${loop} 0 ${ms}"`);
    undo.unshift(() => sh(`dmsetup remove --retry ${name}`)); // undone before the loop device
    return `/dev/mapper/${name}`;
  }

  /**
   * While the writers run: acknowledged writes keep coming, and the log on disk shows regions
   * dirty (a write is only issued once its region's dirty bit is durable). Returns a line for messages.
   */
  async function writesFlowing(files: { log: string; dir: string }): Promise<string> {
    const probes: string[] = [];
    let sawDirty = false;
    const acksBefore = (await acknowledged(files.dir)).size;
    for (let i = 0; i < 10 && !sawDirty; i++) {
      const dirty = cleanBits(await readFile(files.log), REGIONS).filter((c) => !c).length;
      probes.push(`${dirty} dirty`);
      sawDirty = dirty > 0;
      if (!sawDirty) await sleep(200);
    }
    const acksAfter = (await acknowledged(files.dir)).size;
    const line = `log probes [${probes.join(', ')}], acknowledged blocks ${acksBefore} -> ${acksAfter}, status ${(await status('m')).line}`;
    assert.ok(sawDirty, `with writes in flight the log on disk shows dirty regions: ${line}`);
    return line;
  }

  /** The kernel's dm-linear over a loop device of `backing`. */
  async function kernelLinear(backing: string): Promise<{ name: string; path: string }> {
    const loop = (await mustSh(`losetup -f --show ${backing}`)).trim();
    undo.push(() => sh(`losetup -d ${loop}`));
    const name = randomName('mc');
    await mustSh(`dmsetup create ${name} --table "0 ${LEG_SECTORS} linear ${loop} 0"`);
    undo.unshift(() => sh(`dmsetup resume ${name}; dmsetup remove --retry ${name}`));
    return { name, path: `/dev/mapper/${name}` };
  }

  /** SIGKILL, then `afterSignal` (a stalled leg must be let go: the dying process waits for its I/O), then wait for the end. */
  async function killDaemon(afterSignal: () => Promise<unknown> = async () => {}): Promise<void> {
    const pid = Number((await readFile(join(box.env.UBLK_DM_RUN_DIR!, 'ublk-dm.pid'), 'utf8')).trim());
    process.kill(pid, 'SIGKILL');
    await afterSignal();
    for (let i = 0; i < 200; i++) {
      try { process.kill(pid, 0); } catch { return; }
      await sleep(50);
    }
    throw new Error(`daemon ${pid} survived SIGKILL`);
  }

  /**
   * From the kill to the end: the log's clean bitmap read before the restart, clean regions
   * identical, markers, restart, resync to n/n, then every check of the file comment.
   */
  async function restartAndCheck(files: { leg0: string; leg1: string; log: string; dir: string }): Promise<void> {
    const logBytes = await readFile(files.log);
    assert.equal(logBytes.subarray(0, 16).toString('hex'), headerHex(REGIONS), 'the log header survived the kill');
    const clean = cleanBits(logBytes, REGIONS);
    const cleanRegions = clean.flatMap((c, r) => (c ? [r] : []));
    const dirtyRegions = clean.flatMap((c, r) => (c ? [] : [r]));
    assert.ok(cleanRegions.length > 0 && dirtyRegions.length > 0, `the kill left clean and dirty regions: ${cleanRegions.length} clean`);

    const leg0AtKill = await readFile(files.leg0);
    const leg1AtKill = await readFile(files.leg1);
    const differingClean = cleanRegions.filter((r) => !region(leg0AtKill, r).equals(region(leg1AtKill, r)));
    assert.deepEqual(differingClean, [], 'every region the log shows clean is identical on both legs');

    // While the daemon is down: a leg-1 marker in a clean region, and one in a dirty region.
    const cleanMarked = cleanRegions[Math.floor(cleanRegions.length / 2)]!;
    const dirtyMarked = dirtyRegions[Math.floor(dirtyRegions.length / 2)]!;
    const marker = (r: number) => Buffer.from(`MARKER-${r}-`.padEnd(32, '#'));
    const leg1File = await open(files.leg1, 'r+');
    for (const r of [cleanMarked, dirtyMarked]) await leg1File.write(marker(r), 0, 32, r * REGION_BYTES + MARKER_OFFSET);
    await leg1File.close();
    const acks = await acknowledged(files.dir);
    assert.ok(acks.size > 0, 'the writers had writes acknowledged before the kill');

    // The next CLI call starts a daemon, which restores the mirror from its saved table.
    const listed = JSON.parse(await box.ok(['ls', '--json'])) as Array<{ name: string }>;
    assert.deepEqual(listed.map((d) => d.name), ['m'], 'the restarted daemon restored the mirror');
    const first = await status('m');
    assert.ok(first.inSync >= cleanRegions.length, `the resync starts from the ${cleanRegions.length} clean regions of the log: ${first.line}`);
    const end = await waitInSync('m');
    assert.equal(end.legChars, 'AA', end.line);
    await box.ok(['remove', 'm']);

    const leg0After = await readFile(files.leg0);
    const leg1After = await readFile(files.leg1);
    assert.ok(leg0After.equals(leg0AtKill), 'leg 0 (the resync source) is as the crash left it');
    assert.ok(marker(cleanMarked).equals(leg1After.subarray(cleanMarked * REGION_BYTES + MARKER_OFFSET, cleanMarked * REGION_BYTES + MARKER_OFFSET + 32)),
      `region ${cleanMarked} is clean in the log: not copied, the marker on leg 1 is still there (as the kernel would leave it)`);
    assert.ok(region(leg1After, dirtyMarked).equals(region(leg0After, dirtyMarked)), `region ${dirtyMarked} is dirty in the log: copied from leg 0 over the marker`);
    for (const [name, leg] of [['leg 0', leg0After], ['leg 1', leg1After]] as const) {
      const missing = missingAcknowledged(leg, acks);
      assert.deepEqual(missing.slice(0, 10), [], `${name} holds every acknowledged write (${missing.length} of ${acks.size} blocks missing)`);
    }
    // Byte-identical but for the clean-region marker.
    marker(cleanMarked).fill(0);
    leg0After.copy(leg1After, cleanMarked * REGION_BYTES + MARKER_OFFSET, cleanMarked * REGION_BYTES + MARKER_OFFSET, cleanMarked * REGION_BYTES + MARKER_OFFSET + 32);
    const differing = Array.from({ length: REGIONS }, (_, r) => r).filter((r) => !region(leg0After, r).equals(region(leg1After, r)));
    assert.deepEqual(differing, [], 'the legs are identical (apart from the clean-region marker)');
  }

  /**
   * Writers and fio on an in-sync mirror, leg 1 stalled, then the kill and restartAndCheck.
   * `reloaded`: made as a linear over leg 0 and reloaded as the mirror (lvconvert -m1), so its
   * queue threads write the regions the log holds marked for them, not only the daemon thread.
   */
  async function killedDuringWrites(reloaded: boolean): Promise<void> {
    const d = await dir();
    const leg0 = await makeBackingFile(d, 'leg0', LEG_BYTES);
    const leg1 = join(d, 'leg1');
    await mustSh(`cp ${leg0} ${leg1}`);
    const log = await makeBackingFile(d, 'log', MiB, 'zero');
    // Leg 1 through the kernel's dm-linear, so it can be made to stall (suspend) under the writes.
    const leg1Dm = await kernelLinear(leg1);
    const mirrorTable = `0 ${LEG_SECTORS} mirror disk 2 ${log} ${REGION_SECTORS} 2 ${leg0} 0 ${leg1Dm.path} 0`;
    let dev: string;
    if (reloaded) {
      dev = await box.create('m', `0 ${LEG_SECTORS} linear ${leg0} 0`, ['--queues', '2']);
      await box.ok(['reload', 'm', '--table', mirrorTable]);
      await box.ok(['resume', 'm']);
    } else {
      dev = await box.create('m', mirrorTable);
    }
    await waitInSync('m');

    const writers = stampWriters(dev, d);
    undo.push(async () => writers.kill());
    const fio = background(`cd ${d} && fio --name=load --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k ` +
      `--iodepth=16 --offset=${LEG_BYTES / 2} --size=${LEG_BYTES / 2} --time_based --runtime=120 --verify=crc32c --do_verify=0 --verify_state_save=0`);
    undo.push(async () => fio.kill());
    await sleep(4000);
    assert.equal(fio.finished(), false, `fio is still writing: ${(fio.finished() && (await fio.exited).stderr) || ''}`);
    // A stalled leg: the writes issued from now on are in flight when the daemon dies, so their
    // regions must be dirty on disk (without the stall the kill may land between a pass that
    // cleaned every region and the next one, when the log is all clean and nothing is in flight).
    await mustSh(`dmsetup suspend ${leg1Dm.name}`);
    undo.push(() => sh(`dmsetup resume ${leg1Dm.name}`));
    const flowing = await writesFlowing({ log, dir: d });
    if (reloaded) {
      // The queue threads wrote most of it: under a quarter of the device's writes reached the
      // daemon thread (every one would, without the holds).
      const { forwarded } = JSON.parse(await box.ok(['info', 'm', '--json'])) as { forwarded: { requests: number } };
      const writes = Number((await readFile(`/sys/block/${basename(realpathSync(dev))}/stat`, 'utf8')).trim().split(/\s+/)[4]);
      assert.ok(forwarded.requests < writes / 4, `${forwarded.requests} requests forwarded, ${writes} writes completed`);
    }
    // What leg 1 held reaches it once resumed, or not: the crash decides, the resync repairs.
    await killDaemon(() => mustSh(`dmsetup resume ${leg1Dm.name}`));
    process.stderr.write(`      before the kill: ${flowing}\n`);
    await Promise.race([Promise.all([writers.exited, fio.exited]), sleep(10_000)]);
    writers.kill();
    fio.kill();
    await sleep(500);
    await restartAndCheck({ leg0, leg1, log, dir: d });
  }

  it('(a) killed during acknowledged writes and fio crc32c writes on an in-sync mirror, leg 1 stalled: restart resyncs only the dirty regions, every acknowledged write is on both legs', async function () {
    await killedDuringWrites(false);
  });

  it('(a2) the same on a mirror reloaded from a linear, whose queue threads write the regions the log holds for them', async function () {
    await killedDuringWrites(true);
  });

  it('(b) killed in the middle of a resync with acknowledged writes going on: restart resyncs only the dirty regions, every acknowledged write is on both legs', async function () {
    const d = await dir();
    const leg0 = await makeBackingFile(d, 'leg0', LEG_BYTES);
    const leg1 = await makeBackingFile(d, 'leg1', LEG_BYTES);
    const log = await makeBackingFile(d, 'log', MiB, 'zero');
    // Every region copy waits >= 200 ms on leg 1 (its write, then the leg flush before its clean
    // bit): the kill lands mid-resync however fast the rest is.
    const slow = await slowLeg(leg1, 200);
    const dev = await box.create('m', `0 ${LEG_SECTORS} mirror disk 2 ${log} ${REGION_SECTORS} 2 ${leg0} 0 ${slow} 0`);
    const writers = stampWriters(dev, d);
    undo.push(async () => writers.kill());
    // Kill only once the writers hold acknowledged writes (their first ones can wait on a region
    // being copied) and a few regions are in sync.
    for (let i = 0; i < 100 && (await acknowledged(d)).size === 0; i++) await sleep(200);
    let before = await status('m');
    for (let i = 0; i < 100 && before.inSync < 4; i++) {
      await sleep(200);
      before = await status('m');
    }
    assert.ok(before.inSync >= 4 && before.inSync < REGIONS, `the kill comes in the middle of the resync: ${before.line}`);
    const flowing = await writesFlowing({ log, dir: d });
    await killDaemon();
    process.stderr.write(`      before the kill: ${flowing}\n`);
    await Promise.race([writers.exited, sleep(10_000)]);
    writers.kill();
    await sleep(1000); // writes dm-delay still held reach the file
    await restartAndCheck({ leg0, leg1, log, dir: d });
  });
});
