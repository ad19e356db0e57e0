/**
 * The mirror target (dm-raid1) on real /dev/ublkbN devices: resync under load, a filesystem, leg
 * failures with and without handle_errors (with the kernel's dm as the failing leg), repair by
 * reload, the disk log read and written by the kernel's own dm-mirror in both directions, bad
 * tables, and a daemon crash in the middle of a resync. Spec: /work/shared/spec/mirror.md.
 *
 * Where a resync has to be caught in progress, the legs after leg 0 are the kernel's dm-delay
 * (writes and flushes delayed) over a loop device: every region copy then takes at least the
 * delay, whatever the speed of the machine, while reads from leg 0 stay fast.
 */
import { strict as assert } from 'node:assert';
import { copyFile, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox, requireRealUblk, makeBackingFile, mustSh, sh, sha256OfFile, sha256, sleep, randomName } from './harness';
import { background, blockOf, cleanBits, eventNumber, headerHex, parseMirrorStatus, stamp, stampCommand, type Background, type SyncStatus } from './mirror-support';

const MiB = 1 << 20;
const LEG_BYTES = 16 * MiB;
const LEG_SECTORS = LEG_BYTES / 512; // 32768

describe('integration: mirror target (dm-raid1) on real devices', function () {
  let box: Sandbox;
  /** Undo steps of the running test, run last-registered first in afterEach (also after a failure). */
  let undo: Array<() => Promise<unknown>> = [];

  before(function () {
    requireRealUblk();
    box = new Sandbox('mirror');
  });

  afterEach(async function () {
    for (const step of undo.reverse()) {
      try { await step(); } catch { /* keep undoing */ }
    }
    undo = [];
    // Anything the test left behind on our side.
    const ls = await box.cli(['ls', '--json']);
    if (ls.code === 0) {
      for (const d of JSON.parse(ls.stdout) as Array<{ name: string }>) {
        await box.cli(['resume', d.name]);
        await box.cli(['remove', d.name]);
      }
    }
    await sh(`rm -rf ${box.dir}/t; mkdir -p ${box.dir}/t`);
  });

  after(async function () {
    await box?.cleanup();
  });

  /** A fresh file in this test's directory. */
  async function file(name: string, bytes: number, fill: 'random' | 'zero' = 'random'): Promise<string> {
    await mustSh(`mkdir -p ${box.dir}/t`);
    return makeBackingFile(join(box.dir, 't'), name, bytes, fill);
  }

  async function ourCreate(name: string, table: string): Promise<string> {
    undo.push(async () => { await box.cli(['resume', name]); await box.cli(['remove', name]); });
    return box.create(name, table);
  }

  async function losetup(path: string): Promise<string> {
    const loop = (await mustSh(`losetup -f --show ${path}`)).trim();
    undo.push(() => sh(`losetup -d ${loop}`));
    return loop;
  }

  /** A kernel dm device (for a leg that can be made to fail, be slow, or for the kernel's own mirror). */
  async function dmCreate(table: string): Promise<{ name: string; path: string }> {
    const name = randomName('mj');
    await mustSh(`dmsetup create ${name} --table "${table}"`);
    undo.push(() => sh(`dmsetup remove --retry ${name}`));
    return { name, path: `/dev/mapper/${name}` };
  }

  /** A leg whose writes and flushes take `ms` each (the kernel's dm-delay over a loop device of `backing`). */
  async function slowLeg(backing: string, ms: number): Promise<{ name: string; path: string; loop: string }> {
    const loop = await losetup(backing);
    return { ...(await dmCreate(`0 ${LEG_SECTORS} delay ${loop} 0 0 ${loop} 0 ${ms}`)), loop };
  }

  async function status(name: string): Promise<SyncStatus> {
    return parseMirrorStatus(await box.ok(['status', name]));
  }

  async function waitInSync(name: string, timeoutMs = 180_000): Promise<SyncStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await status(name);
      if (s.inSync === s.regions) return s;
      if (Date.now() > deadline) throw new Error(`${name} not in sync after ${timeoutMs} ms: ${s.line}`);
      await sleep(500);
    }
  }

  /**
   * The event number once it reaches `expected`, then again a little later (so one event too
   * many shows). The status counts the last region in sync before the pass that copied it
   * raises the in-sync event (as the kernel's do_mirror does), so right after waitInSync the
   * event may still be on its way.
   */
  async function settledEventNumber(name: string, expected: number, timeoutMs = 10_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (eventNumber(await box.ok(['info', name])) < expected && Date.now() < deadline) await sleep(200);
    await sleep(500);
    return eventNumber(await box.ok(['info', name]));
  }

  async function kernelWaitInSync(name: string, timeoutMs = 120_000): Promise<SyncStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = parseMirrorStatus(await mustSh(`dmsetup status ${name}`));
      if (s.inSync === s.regions) return s;
      if (Date.now() > deadline) throw new Error(`kernel ${name} not in sync after ${timeoutMs} ms: ${s.line}`);
      await sleep(300);
    }
  }

  async function assertSameFiles(a: string, b: string, what: string): Promise<void> {
    const r = await sh(`cmp ${a} ${b}`);
    assert.equal(r.code, 0, `${what}: ${r.stdout}${r.stderr}`);
  }

  // ---- 1. Resync under fio ----------------------------------------------------------------

  // Three legs: the copy goes to two destinations at once. Two-leg resyncs run in the crash,
  // repair and kernel-interop tests below (a resync under fio at 2 legs too cost 30 s in the guest).
  for (const legCount of [3]) {
    it(`${legCount}-leg disk-log mirror over differing legs: fio crc32c verify at QD 16 during the full resync passes, the resync completes, every leg equals leg 0, event number 1`, async function () {
      const legs = [await file('leg0', LEG_BYTES)];
      const tableLegs = [legs[0]!];
      for (let i = 1; i < legCount; i++) {
        legs.push(await file(`leg${i}`, LEG_BYTES));
        tableLegs.push((await slowLeg(legs[i]!, 50)).path);
      }
      const log = await file('log', MiB, 'zero');
      // 128 regions of 128 KiB; each copy waits >= 50 ms for the slow legs' write and again for the flush.
      const dev = await ourCreate('m', `0 ${LEG_SECTORS} mirror disk 2 ${log} 256 ${legCount} ${tableLegs.map((l) => `${l} 0`).join(' ')}`);
      const fio = background(`fio --name=verify --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 ` +
        `--rw=randwrite --bs=4k --iodepth=16 --size=${LEG_BYTES} --io_size=${4 * MiB} --verify=crc32c --do_verify=1 --verify_fatal=1 ` +
        `--verify_state_save=0 --output-format=terse`);
      undo.push(async () => fio.kill());
      // fio was started before this status was taken: a count below the total means fio ran into the resync.
      const during = await status('m');
      assert.equal(during.regions, 128);
      assert.ok(during.inSync < during.regions, `the resync is still running after fio started: ${during.line}`);
      const f = await fio.exited;
      assert.equal(f.code, 0, `fio failed: ${f.stdout}${f.stderr}`);
      assert.equal(f.stdout.trim().split('\n').pop()!.split(';')[4], '0', `fio reported errors: ${f.stdout}`);
      const end = await waitInSync('m');
      assert.equal(end.legChars, 'A'.repeat(legCount), end.line);
      assert.equal(await settledEventNumber('m', 1), 1, 'one event: the mirror came into sync');
      await box.ok(['remove', 'm']);
      for (let i = 1; i < legCount; i++) await assertSameFiles(legs[0]!, legs[i]!, `leg ${i} equals leg 0`);
    });
  }

  // ---- 2. A filesystem -------------------------------------------------------------------

  it('core-log nosync mirror: mkfs.ext4, mount, files, umount, fsck -fn clean, legs byte-identical', async function () {
    const leg0 = await file('leg0', 32 * MiB, 'zero');
    const leg1 = await file('leg1', 32 * MiB, 'zero');
    const dev = await ourCreate('fs', `0 ${(32 * MiB) / 512} mirror core 2 1024 nosync 2 ${leg0} 0 ${leg1} 0`);
    const mnt = join(box.dir, 't', 'mnt');
    await mustSh(`mkfs.ext4 -q -F ${dev} && mkdir -p ${mnt} && mount ${dev} ${mnt}`);
    undo.push(() => sh(`umount ${mnt}`));
    await mustSh(`for i in $(seq 1 12); do head -c $((i * 53 * 1024)) /dev/urandom > ${mnt}/f$i; done; mkdir ${mnt}/d; cp ${mnt}/f5 ${mnt}/d/copy; sync`);
    const sums = await mustSh(`cd ${mnt} && sha256sum f* d/copy`);
    await mustSh(`umount ${mnt} && mount ${dev} ${mnt}`);
    assert.equal(await mustSh(`cd ${mnt} && sha256sum f* d/copy`), sums, 'files read back after remount');
    await mustSh(`umount ${mnt}`);
    await mustSh(`fsck.ext4 -fn ${dev}`);
    const s = await status('fs');
    assert.equal(`${s.inSync}/${s.regions} ${s.legChars}`, '64/64 AA', s.line);
    await box.ok(['remove', 'fs']);
    await assertSameFiles(leg0, leg1, 'leg 1 equals leg 0');
  });

  for (const logType of ['core', 'disk'] as const) {
    it(`a ${logType}-log nosync mirror shows event number 0: the in-sync event fires before the table is live and is lost (spec §4.2)`, async function () {
      const leg0 = await file('leg0', LEG_BYTES);
      const leg1 = await file('leg1', LEG_BYTES);
      const log = await file('log', MiB, 'zero');
      const kLog = await file('klog', MiB, 'zero');
      const logPart = (dev: string) => (logType === 'core' ? 'core 2 1024 nosync' : `disk 3 ${dev} 1024 nosync`);
      // The kernel's dm-mirror on the same table (over loop devices) is the oracle.
      const k = await dmCreate(`0 ${LEG_SECTORS} mirror ${logPart(await losetup(kLog))} 2 ${await losetup(leg0)} 0 ${await losetup(leg1)} 0`);
      assert.match(await mustSh(`dmsetup status ${k.name}`), / 32\/32 1 AA /);
      await ourCreate('m', `0 ${LEG_SECTORS} mirror ${logPart(log)} 2 ${leg0} 0 ${leg1} 0`);
      assert.match((await status('m')).line, / 32\/32 1 AA /);
      await sleep(500);
      const kernelEvents = eventNumber(await mustSh(`dmsetup info ${k.name}`));
      assert.equal(kernelEvents, 0, 'the kernel\'s nosync mirror: Event number: 0');
      assert.equal(eventNumber(await box.ok(['info', 'm'])), kernelEvents, 'ours: the same event number as the kernel\'s');
    });
  }

  // ---- 3./4. Leg failure ------------------------------------------------------------------

  /** leg 0 a file, leg 1 the kernel's dm-linear over a loop device of a file (to be switched to `error`). */
  async function failableLegs(): Promise<{ leg0: string; leg1File: string; leg1: { name: string; path: string } }> {
    const leg0 = await file('leg0', LEG_BYTES);
    const leg1File = await file('leg1', LEG_BYTES);
    await mustSh(`cp ${leg0} ${leg1File}`);
    const loop = await losetup(leg1File);
    const leg1 = await dmCreate(`0 ${LEG_SECTORS} linear ${loop} 0`);
    return { leg0, leg1File, leg1 };
  }

  async function failLeg(leg: { name: string }): Promise<void> {
    await mustSh(`dmsetup reload ${leg.name} --table "0 ${LEG_SECTORS} error" && dmsetup resume ${leg.name}`);
  }

  it('without handle_errors, a write when leg 1 starts failing succeeds, lands on leg 0, status shows 31/32 AD, no event', async function () {
    const { leg0, leg1 } = await failableLegs();
    const dev = await ourCreate('m', `0 ${LEG_SECTORS} mirror core 2 1024 nosync 2 ${leg0} 0 ${leg1.path} 0`);
    assert.equal((await status('m')).legChars, 'AA');
    const eventsBefore = eventNumber(await box.ok(['info', 'm']));
    await failLeg(leg1);
    await mustSh(stampCommand(dev, 'F', 7));
    const s = await status('m');
    assert.match(s.line, / 31\/32 1 AD 1 core$/, 'region 0 out of sync, leg 1 dead');
    assert.equal(eventNumber(await box.ok(['info', 'm'])), eventsBefore, 'errors not handled: no event');
    assert.deepEqual(await blockOf(leg0, 7), stamp('F', 7), 'the data is on leg 0');
    assert.deepEqual((await mustSh(`dd if=${dev} bs=4096 skip=7 count=1 iflag=direct status=none | head -c 8`)), 'F0000007', 'and reads back');
  });

  /** handle_errors mirror, leg 1 failed, a write held in the background: what §11.5 shows. */
  async function heldWrite(): Promise<{ dev: string; leg0: string; writer: Background; eventsBefore: number }> {
    const { leg0, leg1 } = await failableLegs();
    const dev = await ourCreate('m', `0 ${LEG_SECTORS} mirror core 2 1024 nosync 2 ${leg0} 0 ${leg1.path} 0 1 handle_errors`);
    const eventsBefore = eventNumber(await box.ok(['info', 'm']));
    await failLeg(leg1);
    const writer = background(stampCommand(dev, 'H', 9));
    // If the test fails while the write is held: a flushing suspend answers it with EIO.
    undo.push(async () => {
      if (!writer.finished()) { await box.cli(['suspend', 'm']); await box.cli(['resume', 'm']); }
      writer.kill();
      await Promise.race([writer.exited, sleep(5000)]);
    });
    await sleep(2000);
    assert.equal(writer.finished(), false, 'with handle_errors the write to a failed leg is held');
    assert.equal(eventNumber(await box.ok(['info', 'm'])), eventsBefore + 1, 'the leg failure raised one event');
    const s = await status('m');
    assert.match(s.line, / 31\/32 1 AD 1 core$/, 'leg 1 dead, its region out of sync');
    assert.equal(writer.finished(), false, 'still held');
    return { dev, leg0, writer, eventsBefore };
  }

  it('with handle_errors, a write to a failed leg is held (event +1, AD); suspend --noflush, reload linear on leg 0, resume: it completes on leg 0', async function () {
    const { leg0, writer } = await heldWrite();
    await box.ok(['suspend', '--noflush', 'm']);
    assert.equal(writer.finished(), false, 'a noflush suspend pushes the held write back instead of failing it');
    await box.ok(['reload', 'm', '--table', `0 ${LEG_SECTORS} linear ${leg0} 0`]);
    await box.ok(['resume', 'm']);
    const w = await Promise.race([writer.exited, sleep(60_000).then(() => undefined)]);
    assert.ok(w, 'the held write completed after resume');
    assert.equal(w.code, 0, `the held write succeeded on the new table: ${w.stderr}`);
    assert.equal(await box.ok(['status', 'm']), `0 ${LEG_SECTORS} linear \n`);
    assert.deepEqual(await blockOf(leg0, 9), stamp('H', 9), 'its data is on leg 0');
  });

  it('with handle_errors, a plain (flushing) suspend fails the held write with EIO', async function () {
    const { writer } = await heldWrite();
    await box.ok(['suspend', 'm']);
    const w = await Promise.race([writer.exited, sleep(60_000).then(() => undefined)]);
    assert.ok(w, 'the held write was answered by the suspend');
    assert.notEqual(w.code, 0, 'the writer failed');
    assert.match(w.stderr, /Input\/output error/);
    await box.ok(['resume', 'm']);
  });

  // ---- 5. Repair --------------------------------------------------------------------------

  it('repair: reload naming a fresh file as leg 1 with a "sync" disk log resynchronises it from leg 0 until it equals leg 0', async function () {
    const leg0 = await file('leg0', LEG_BYTES);
    const oldLeg1 = await file('leg1', LEG_BYTES);
    await mustSh(`cp ${leg0} ${oldLeg1}`);
    const newLeg1 = await file('leg1new', LEG_BYTES);
    const log = await file('log', MiB, 'zero');
    const dev = await ourCreate('m', `0 ${LEG_SECTORS} mirror disk 3 ${log} 1024 nosync 2 ${leg0} 0 ${oldLeg1} 0`);
    await mustSh(`dd if=/dev/urandom of=${dev} bs=64k seek=40 count=16 oflag=direct status=none`);
    const eventsBefore = eventNumber(await box.ok(['info', 'm']));
    await box.ok(['reload', 'm', '--table', `0 ${LEG_SECTORS} mirror disk 3 ${log} 1024 sync 2 ${leg0} 0 ${newLeg1} 0`]);
    await box.ok(['suspend', 'm']);
    await box.ok(['resume', 'm']);
    assert.equal(await box.ok(['table', 'm']), `0 ${LEG_SECTORS} mirror disk 3 ${log} 1024 sync 2 ${leg0} 0 ${newLeg1} 0\n`);
    const end = await waitInSync('m');
    assert.equal(`${end.inSync}/${end.regions} ${end.legChars}`, '32/32 AA', end.line);
    assert.equal(await settledEventNumber('m', eventsBefore + 1), eventsBefore + 1, 'the new table came into sync: one event');
    await box.ok(['remove', 'm']);
    await assertSameFiles(leg0, newLeg1, 'the new leg equals leg 0');
  });

  // ---- 6. The disk log between us and the kernel ------------------------------------------

  it('ours -> kernel: a disk log ours left fully in sync loads in the kernel\'s dm-mirror at 32/32, and the kernel copies nothing', async function () {
    const leg0 = await file('leg0', LEG_BYTES);
    const leg1 = await file('leg1', LEG_BYTES);
    const log = await file('log', MiB, 'zero');
    await ourCreate('m', `0 ${LEG_SECTORS} mirror disk 2 ${log} 1024 2 ${leg0} 0 ${leg1} 0`);
    await waitInSync('m');
    await box.ok(['remove', 'm']);
    await assertSameFiles(leg0, leg1, 'ours resynchronised leg 1');
    // A marker on leg 1 in region 3: a kernel that resynchronised anything would copy leg 0 over it.
    await mustSh(stampCommand(leg1, 'M', 3 * 128 + 5).replace('oflag=direct ', ''));
    const leg1Sum = await sha256OfFile(leg1);
    const [l0, l1, lg] = [await losetup(leg0), await losetup(leg1), await losetup(log)];
    const k = await dmCreate(`0 ${LEG_SECTORS} mirror disk 2 ${lg} 1024 2 ${l0} 0 ${l1} 0`);
    const first = parseMirrorStatus(await mustSh(`dmsetup status ${k.name}`));
    assert.equal(`${first.inSync}/${first.regions} ${first.legChars}`, '32/32 AA', `the kernel reads every region as clean: ${first.line}`);
    assert.match(first.line, / 3 disk \d+:\d+ A$/);
    await sleep(1000);
    await mustSh(`dmsetup remove ${k.name}`);
    await mustSh(`losetup -d ${l1}`);
    assert.equal(await sha256OfFile(leg1), leg1Sum, 'the kernel copied nothing to leg 1');
  });

  it('ours -> kernel: a disk log ours left mid-resync makes the kernel resynchronise exactly its dirty regions', async function () {
    const leg0 = await file('leg0', LEG_BYTES);
    const leg1 = await file('leg1', LEG_BYTES);
    const log = await file('log', MiB, 'zero');
    const slow = await slowLeg(leg1, 100);
    const regions = LEG_SECTORS / 256; // 128: each copy >= 200 ms (write and flush delayed)
    await ourCreate('m', `0 ${LEG_SECTORS} mirror disk 2 ${log} 256 2 ${leg0} 0 ${slow.path} 0`);
    const during = await status('m');
    assert.ok(during.inSync < regions, `resync in progress: ${during.line}`);
    await box.ok(['remove', 'm']);
    await mustSh(`dmsetup remove --retry ${slow.name} && losetup -d ${slow.loop}`);

    const logBytes = await readFile(log);
    assert.equal(logBytes.subarray(0, 16).toString('hex'), headerHex(regions), `header: rRiM, version 2, ${regions} regions`);
    const clean = cleanBits(logBytes, regions);
    const cleanCount = clean.filter(Boolean).length;
    assert.ok(cleanCount >= during.inSync && cleanCount < regions, `ours wrote ${cleanCount} clean regions at remove (status said ${during.inSync}/${regions})`);
    const a = await readFile(leg0);
    const regionBytes = 256 * 512;
    const region = (buf: Buffer, r: number) => buf.subarray(r * regionBytes, (r + 1) * regionBytes);
    const b = await readFile(leg1);
    for (let r = 0; r < regions; r++) if (clean[r]) assert.ok(region(a, r).equals(region(b, r)), `region ${r} is clean in the log, so leg 1 holds leg 0's data`);
    // Markers on leg 1 in every clean region: the kernel must leave those alone.
    const leg1File = await open(leg1, 'r+');
    try {
      for (let r = 0; r < regions; r++) if (clean[r]) await leg1File.write(Buffer.from(`MARK${r}`), 0, undefined, r * regionBytes + 100);
    } finally {
      await leg1File.close();
    }
    const marked = await readFile(leg1);

    // Leg 1 behind dm-delay here too: each region copy of the kernel's takes >= 200 ms, so its
    // first status comes before the dirty regions are done (raid1_resync_throttle is no help:
    // the kernel accounts it in jiffies, and loop I/O on tmpfs finishes within one).
    const [l0, lg] = [await losetup(leg0), await losetup(log)];
    const kSlow = await slowLeg(leg1, 100);
    const k = await dmCreate(`0 ${LEG_SECTORS} mirror disk 2 ${lg} 256 2 ${l0} 0 ${kSlow.path} 0`);
    const first = parseMirrorStatus(await mustSh(`dmsetup status ${k.name}`));
    assert.ok(first.inSync >= cleanCount && first.inSync < regions, `the kernel starts from the ${cleanCount} clean regions: ${first.line}`);
    await kernelWaitInSync(k.name);
    await mustSh(`dmsetup remove ${k.name}`);
    await mustSh(`dmsetup remove --retry ${kSlow.name} && losetup -d ${kSlow.loop} ${l0} ${lg}`);
    const after = await readFile(leg1);
    for (let r = 0; r < regions; r++) {
      if (clean[r]) assert.ok(region(after, r).equals(region(marked, r)), `clean region ${r}: the kernel left leg 1 alone`);
      else assert.ok(region(after, r).equals(region(a, r)), `dirty region ${r}: the kernel copied leg 0 to leg 1`);
    }
  });

  it('kernel -> ours: a disk log the kernel left in sync loads in ours at 32/32 at once, and ours copies nothing', async function () {
    const leg0 = await file('leg0', LEG_BYTES);
    const leg1 = await file('leg1', LEG_BYTES);
    const log = await file('log', MiB, 'zero');
    const [l0, l1, lg] = [await losetup(leg0), await losetup(leg1), await losetup(log)];
    const k = await dmCreate(`0 ${LEG_SECTORS} mirror disk 2 ${lg} 1024 2 ${l0} 0 ${l1} 0`);
    await kernelWaitInSync(k.name);
    await mustSh(`dd if=/dev/urandom of=${k.path} bs=64k seek=20 count=16 oflag=direct status=none`);
    await mustSh(`dmsetup remove ${k.name}`);
    await mustSh(`losetup -d ${l0} ${l1} ${lg}`);
    const logBytes = await readFile(log);
    assert.equal(logBytes.subarray(0, 16).toString('hex'), headerHex(32), 'kernel header: rRiM, version 2, 32 regions');
    assert.equal(logBytes.subarray(1024, 1032).toString('hex'), 'ffffffff00000000', 'kernel bitmap: all 32 regions clean');
    await assertSameFiles(leg0, leg1, 'the kernel left the legs identical');
    // A marker on leg 1 in region 5: ours resynchronising anything would copy leg 0 over it.
    await mustSh(stampCommand(leg1, 'M', 5 * 128 + 1).replace('oflag=direct ', ''));
    const sums = [await sha256OfFile(leg0), await sha256OfFile(leg1), await sha256OfFile(log)];
    await ourCreate('m', `0 ${LEG_SECTORS} mirror disk 2 ${log} 1024 2 ${leg0} 0 ${leg1} 0`);
    const s = await status('m');
    assert.match(s.line, / 32\/32 1 AA 3 disk \S+ A$/, 'every region clean at once');
    await sleep(1000);
    assert.equal(eventNumber(await box.ok(['info', 'm'])), 1, 'an all-clean log at activation: the in-sync event (spec §6)');
    await box.ok(['remove', 'm']);
    assert.deepEqual([await sha256OfFile(leg0), await sha256OfFile(leg1), await sha256OfFile(log)], sums, 'legs and log untouched');
  });

  // ---- 7. Bad tables ----------------------------------------------------------------------

  const badTables: Array<{ what: string; message: RegExp; table: (f: Record<string, string>) => string }> = [
    { what: 'a log device too small for header and bitmap', message: /Error creating mirror dirty log.*too small/, table: (f) => `0 ${LEG_SECTORS} mirror disk 2 ${f.tinyLog} 1024 2 ${f.leg0} 0 ${f.leg1} 0` },
    { what: 'a leg shorter than the target', message: /too small/, table: (f) => `0 ${LEG_SECTORS} mirror core 1 1024 2 ${f.leg0} 0 ${f.short} 0` },
    { what: 'an unknown feature', message: /Unrecognised feature requested/, table: (f) => `0 ${LEG_SECTORS} mirror core 1 1024 2 ${f.leg0} 0 ${f.leg1} 0 1 frobnicate` },
    { what: 'keep_log without handle_errors', message: /keep_log feature requires the handle_errors feature/, table: (f) => `0 ${LEG_SECTORS} mirror core 1 1024 2 ${f.leg0} 0 ${f.leg1} 0 1 keep_log` },
    { what: 'one leg', message: /Invalid number of mirrors/, table: (f) => `0 ${LEG_SECTORS} mirror disk 2 ${f.log} 1024 1 ${f.leg0} 0` },
  ];
  describe('bad tables', function () {
    // One set of files for every bad table (random legs cost seconds each in the guest); each
    // test checks that none of them changed.
    let f: Record<string, string>;
    let sums: string[];
    before(async function () {
      const dir = join(box.dir, 'bad');
      await mustSh(`mkdir -p ${dir}`);
      f = {
        leg0: await makeBackingFile(dir, 'leg0', LEG_BYTES),
        leg1: await makeBackingFile(dir, 'leg1', LEG_BYTES),
        short: await makeBackingFile(dir, 'short', LEG_BYTES / 2),
        log: await makeBackingFile(dir, 'log', MiB),
        tinyLog: await makeBackingFile(dir, 'tinylog', 1024),
      };
      sums = await Promise.all(Object.values(f).map((p) => sha256OfFile(p)));
    });

    for (const bad of badTables) {
      it(`refuses ${bad.what}: a clear error, non-zero exit, no device, no file changed`, async function () {
        const r = await box.cli(['create', 'bad', '--table', bad.table(f)]);
        if (r.code === 0) undo.push(() => box.cli(['remove', 'bad']));
        assert.notEqual(r.code, 0, `create must fail: ${r.stdout}`);
        assert.match(r.stderr, bad.message);
        assert.deepEqual(JSON.parse(await box.ok(['ls', '--json'])), [], 'no device');
        assert.deepEqual(await Promise.all(Object.values(f).map((p) => sha256OfFile(p))), sums, 'no file changed');
      });
    }
  });

  it('a log device with a foreign header is no error: like the kernel, ours takes it as a new log, resynchronises everything and writes the same log bytes', async function () {
    const leg0 = await file('leg0', LEG_BYTES);
    const leg1 = await file('leg1', LEG_BYTES);
    const ourLog = await file('log', MiB); // random bytes: no "rRiM" magic
    const kLeg0 = join(box.dir, 't', 'kleg0');
    const kLeg1 = join(box.dir, 't', 'kleg1');
    const kLog = join(box.dir, 't', 'klog');
    await copyFile(leg0, kLeg0);
    await copyFile(leg1, kLeg1);
    await copyFile(ourLog, kLog);
    const original = await readFile(ourLog);

    await ourCreate('m', `0 ${LEG_SECTORS} mirror disk 2 ${ourLog} 1024 2 ${leg0} 0 ${leg1} 0`);
    const end = await waitInSync('m');
    assert.match(end.line, / 32\/32 1 AA 3 disk \S+ A$/);
    await box.ok(['remove', 'm']);
    await assertSameFiles(leg0, leg1, 'every region was resynchronised');

    const [l0, l1, lg] = [await losetup(kLeg0), await losetup(kLeg1), await losetup(kLog)];
    const k = await dmCreate(`0 ${LEG_SECTORS} mirror disk 2 ${lg} 1024 2 ${l0} 0 ${l1} 0`);
    await kernelWaitInSync(k.name);
    await mustSh(`dmsetup remove ${k.name}`);
    await mustSh(`losetup -d ${l0} ${l1} ${lg}`);

    const ours = await readFile(ourLog);
    const kernels = await readFile(kLog);
    assert.equal(ours.subarray(0, 16).toString('hex'), headerHex(32), 'our header: rRiM, version 2, 32 regions');
    assert.ok(ours.subarray(16, 1024).equals(original.subarray(16, 1024)), 'bytes 16-1023 written back as read');
    assert.equal(sha256(ours.subarray(0, 1536)), sha256(kernels.subarray(0, 1536)), `same log I/O as the kernel's:\nours   ${ours.subarray(1024, 1040).toString('hex')}\nkernel ${kernels.subarray(1024, 1040).toString('hex')}`);
    assert.ok(ours.subarray(1536).equals(original.subarray(1536)), 'nothing written past the log I/O');
  });

  it('a log header of an unknown version (3): like the kernel, the log shows D with one more event, every region is resynchronised, the daemon log says why, and the header keeps its version', async function () {
    const leg0 = await file('leg0', LEG_BYTES);
    const leg1 = await file('leg1', LEG_BYTES);
    const log = await file('log', MiB, 'zero');
    const v3 = Buffer.alloc(1536);
    v3.write(headerHex(32), 'hex');
    v3.writeUInt32LE(3, 4);
    v3.fill(0xff, 1024, 1028); // every region clean, if the version were understood
    await writeFile(log, v3, { flag: 'r+' });
    const kLeg0 = join(box.dir, 't', 'kleg0');
    const kLeg1 = join(box.dir, 't', 'kleg1');
    const kLog = join(box.dir, 't', 'klog');
    await copyFile(leg0, kLeg0);
    await copyFile(leg1, kLeg1);
    await copyFile(log, kLog);

    const [l0, l1, lg] = [await losetup(kLeg0), await losetup(kLeg1), await losetup(kLog)];
    const k = await dmCreate(`0 ${LEG_SECTORS} mirror disk 2 ${lg} 1024 2 ${l0} 0 ${l1} 0`);
    const kEnd = await kernelWaitInSync(k.name);
    await sleep(500);
    const kEvents = eventNumber(await mustSh(`dmsetup info ${k.name}`));
    await mustSh(`dmsetup remove ${k.name}`);
    await mustSh(`losetup -d ${l0} ${l1} ${lg}`);
    assert.match(kEnd.line, / 32\/32 1 AA 3 disk \S+ D$/, 'the kernel: log device failed');

    await ourCreate('m', `0 ${LEG_SECTORS} mirror disk 2 ${log} 1024 2 ${leg0} 0 ${leg1} 0`);
    const end = await waitInSync('m');
    await sleep(500);
    assert.match(end.line, / 32\/32 1 AA 3 disk \S+ D$/, 'ours: log device failed, as the kernel');
    assert.equal(eventNumber(await box.ok(['info', 'm'])), kEvents, `the same event number as the kernel (${kEvents}: log failure, in sync)`);
    await box.ok(['remove', 'm']);
    await assertSameFiles(leg0, leg1, 'every region was resynchronised');
    const daemonLog = await readFile(join(box.env.UBLK_DM_RUN_DIR!, 'daemon.log'), 'utf8');
    assert.match(daemonLog, /m: mirror: dirty region log: incompatible disk log version/, 'the daemon log says why');
    const ours = await readFile(log);
    const kernels = await readFile(kLog);
    assert.equal(ours.readUInt32LE(4), 3, 'the version is written back unchanged');
    assert.equal(ours.subarray(0, 1536).toString('hex'), kernels.subarray(0, 1536).toString('hex'), 'the same log bytes as the kernel left');
  });

  // ---- 8. Daemon crash --------------------------------------------------------------------

  it('SIGKILL of the daemon mid-resync: the restarted daemon restores the mirror, the resync carries on from the log and ends with identical legs', async function () {
    const leg0 = await file('leg0', LEG_BYTES);
    const leg1 = await file('leg1', LEG_BYTES);
    const log = await file('log', MiB, 'zero');
    const slow = await slowLeg(leg1, 100);
    await ourCreate('m', `0 ${LEG_SECTORS} mirror disk 2 ${log} 256 2 ${leg0} 0 ${slow.path} 0`);
    const before = await status('m');
    assert.ok(before.inSync < before.regions, `resync in progress at the kill: ${before.line}`);
    const pid = Number((await readFile(join(box.env.UBLK_DM_RUN_DIR!, 'ublk-dm.pid'), 'utf8')).trim());
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 100; i++) {
      try { process.kill(pid, 0); } catch { break; }
      await sleep(100);
    }
    // The next CLI call starts a daemon, which restores the saved mirror. Poll: a request that
    // reaches the new daemon between its bind() and its restore gate is answered with an empty
    // registry (a daemon start race, not the mirror's business; see the report of this test).
    let listed: Array<{ name: string }> = [];
    for (let i = 0; i < 60 && listed.length === 0; i++) {
      if (i > 0) await sleep(1000);
      listed = JSON.parse(await box.ok(['ls', '--json'])) as Array<{ name: string }>;
    }
    const daemonLog = (await sh(`tail -n 30 ${join(box.env.UBLK_DM_RUN_DIR!, 'daemon.log')}`)).stdout;
    assert.deepEqual(listed.map((d) => d.name), ['m'], `the restarted daemon restored the mirror; daemon.log:\n${daemonLog}`);
    const after = await status('m');
    assert.ok(after.inSync > 0 || before.inSync < 4, `the resync went on from the clean regions on disk, not from 0: ${before.line} -> ${after.line}`);
    const end = await waitInSync('m');
    assert.equal(end.legChars, 'AA', end.line);
    await box.ok(['remove', 'm']);
    await assertSameFiles(leg0, leg1, 'leg 1 equals leg 0');
  });
});
