/**
 * dm-snapshot (snapshot-origin + snapshot, persistent store) on real /dev/ublkbN devices:
 * point-in-time images under concurrent origin writes, several snapshots of one origin,
 * writable snapshots, a live filesystem, a full COW, bad tables, and COW devices exchanged
 * with the kernel's own dm-snapshot in both directions (spec: /work/shared/spec/snapshot.md).
 *
 * Data is stamped the way fio's `--verify=pattern --verify_pattern='"G<gen>"%o'` stamps it:
 * each block holds the 10-byte unit "G<gen>" + its byte offset (u64 LE), repeated from the
 * block start. So every block says which generation it is and where it belongs, and a wrong
 * read names both.
 *
 * The snapshot dance is dmsetup's (spec §1.4): the origin starts as `linear ORIGIN 0`;
 * suspend it, reload it as `snapshot-origin ORIGIN`, create the snapshot, resume the origin.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox, requireRealUblk, makeBackingFile, mustSh, sh, sha256OfFile, sleep, ublkBlockNodes } from './harness';

const KiB = 1024;
const MiB = 1 << 20;
const BLOCK = 4096;

// ---------------------------------------------------------------- stamped data and its model

/** One stamped block, byte for byte what fio writes with verify_pattern '"G<gen>"%o'. */
function stampInto(buf: Buffer, at: number, gen: number, deviceOffset: number, length: number): void {
  const unit = Buffer.alloc(10);
  unit.write(`G${gen}`, 0, 'latin1');
  unit.writeBigUInt64LE(BigInt(deviceOffset), 2);
  for (let i = 0; i < length; i += 10) unit.copy(buf, at + i, 0, Math.min(10, length - i));
}

/** What a device should read: starts as generation 1 everywhere, then takes the writes we make. */
class Image {
  readonly bytes: Buffer;
  constructor(readonly size: number, gen = 1) {
    this.bytes = Buffer.alloc(size);
    this.stamp(gen, 0, size, BLOCK);
  }
  /** Generation `gen` over [offset, offset+length) in blocks of `bs` (fio's block size). */
  stamp(gen: number, offset: number, length: number, bs = BLOCK): void {
    for (let off = offset; off < offset + length; off += bs) stampInto(this.bytes, off, gen, off, bs);
  }
  put(offset: number, data: Buffer): void {
    data.copy(this.bytes, offset);
  }
  clone(): Image {
    const c = new Image(0);
    (c as { bytes: Buffer }).bytes = Buffer.from(this.bytes);
    (c as { size: number }).size = this.size;
    return c;
  }
}

function describeBlock(buf: Buffer, off: number): string {
  const b = buf.subarray(off, off + 10);
  if (b.length < 10) return '(short)';
  if (b[0] === 0x47) return `${b.subarray(0, 2).toString('latin1')}@${b.readBigUInt64LE(2)}`;
  return `bytes ${b.toString('hex')}`;
}

/** Compares 4 KiB block by block; the message lists the first wrong blocks and what they hold. */
function assertImage(got: Buffer, want: Image, label: string): void {
  assert.equal(got.length, want.size, `${label}: device size`);
  const wrong: string[] = [];
  let count = 0;
  for (let off = 0; off < want.size; off += BLOCK) {
    if (got.subarray(off, off + BLOCK).equals(want.bytes.subarray(off, off + BLOCK))) continue;
    count++;
    if (wrong.length < 8) wrong.push(`block @${off}: read ${describeBlock(got, off)}, want ${describeBlock(want.bytes, off)}`);
  }
  assert.equal(count, 0, `${label}: ${count} of ${want.size / BLOCK} blocks differ:\n  ${wrong.join('\n  ')}`);
}

/** A file holding `image`, generation-stamped (the origin's backing before any device exists). */
async function writeImageFile(dir: string, name: string, image: Image): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, image.bytes);
  return path;
}

// ---------------------------------------------------------------- devices and tools

/** `set -o pipefail` so a failing dd in a pipe fails the command. */
function must(cmd: string, timeoutMs = 300_000): Promise<string> {
  return mustSh(`set -o pipefail; ${cmd}`, { timeoutMs });
}

/** The whole device, read with O_DIRECT (no page cache of an earlier read can answer). */
async function readDevice(dir: string, dev: string): Promise<Buffer> {
  const tmp = join(dir, `read-${Date.now()}-${Math.random().toString(16).slice(2)}.bin`);
  try {
    await must(`dd if=${dev} of=${tmp} bs=1M iflag=direct status=none`);
    return await readFile(tmp);
  } finally {
    await rm(tmp, { force: true });
  }
}

async function deviceSha(dev: string): Promise<string> {
  return (await must(`dd if=${dev} bs=1M iflag=direct status=none | sha256sum`)).split(' ')[0]!;
}

/**
 * Random 4 KiB (or `bs`) writes of generation `gen` over [offset, offset+size) at queue depth
 * `qd`: fio's random map writes each block of the range exactly once. The device must already
 * exist: fio would otherwise create a regular file (hence the check and --allow_file_create=0).
 */
async function fioStamp(dev: string, gen: number, offset: number, size: number, opts: { qd?: number; bs?: number } = {}): Promise<void> {
  await must(`test -b ${dev}`);
  const out = await must(`fio --name=gen${gen} --filename=${dev} --allow_file_create=0 --ioengine=io_uring --direct=1 ` +
    `--rw=randwrite --bs=${opts.bs ?? BLOCK} --iodepth=${opts.qd ?? 16} --offset=${offset} --size=${size} ` +
    `--verify=pattern --verify_pattern='"G${gen}"%o' --do_verify=0 --verify_state_save=0 --output-format=terse`);
  const fields = out.trim().split('\n').pop()!.split(';');
  assert.equal(fields[4], '0', `fio gen ${gen} on ${dev} reported errors: ${out}`);
}

/** dd of `data` at byte `offset` of `dev`, O_DIRECT; returns the dd result (the caller checks). */
async function ddWrite(dir: string, dev: string, offset: number, data: Buffer) {
  const src = join(dir, `w-${offset}.bin`);
  await writeFile(src, data);
  try {
    return await sh(`dd if=${src} of=${dev} bs=${data.length} seek=${offset}B count=1 oflag=direct,seek_bytes conv=notrunc status=none`);
  } finally {
    await rm(src, { force: true });
  }
}

/** Persistent store usage after `exceptions` allocations (spec §4.1, §6.4): `<alloc>/<cow> <meta>`. */
function persistentUsage(exceptions: number, chunk: number, cowSectors: number): string {
  const perArea = chunk * 32;
  let nextFree = 2;
  for (let i = 0; i < exceptions; i++) {
    nextFree++;
    if (nextFree % (perArea + 1) === 1) nextFree++;
  }
  const currentArea = Math.floor(exceptions / perArea);
  return `${nextFree * chunk}/${cowSectors} ${(currentArea + 2) * chunk}`;
}

/** Chunks (of `chunk` sectors) touched by byte ranges. */
function chunksTouched(ranges: Array<[number, number]>, chunk: number): Set<number> {
  const bytes = chunk * 512;
  const set = new Set<number>();
  for (const [off, len] of ranges) for (let c = Math.floor(off / bytes); c <= Math.floor((off + len - 1) / bytes); c++) set.add(c);
  return set;
}

async function losetup(file: string): Promise<string> {
  return (await must(`losetup -f --show ${file}`)).trim();
}

async function requireKernelSnapshot(): Promise<void> {
  requireRealUblk();
  for (const tool of ['dmsetup', 'losetup', 'fio', 'mkfs.ext4', 'fsck.ext4', 'fsfreeze']) {
    const r = await sh(`command -v ${tool}`);
    if (r.code !== 0) throw new Error(`${tool} is missing: these tests need it`);
  }
  const targets = await must('dmsetup targets');
  for (const t of ['snapshot-origin', 'snapshot ']) {
    if (!targets.includes(t)) throw new Error(`the kernel has no dm ${t.trim()} target (modprobe dm-snapshot): ${targets}`);
  }
}

// ---------------------------------------------------------------- ours, or the kernel as oracle

/**
 * The device-mapper a test drives. `ours` is ublk-dm through its CLI (what these tests are
 * for). `kernel` is dmsetup over loop devices of the same files: set
 * UBLK_DM_SNAPSHOT_ORACLE=kernel to run the same tests against the kernel's dm-snapshot, which
 * shows that the tests themselves (data, sizes, expected numbers) are right.
 */
interface Dm {
  readonly label: string;
  /** What a table names for this backing file. */
  dev(file: string): Promise<string>;
  create(name: string, table: string): Promise<string>;
  /** A create that should fail: its exit code and every word of error it produced. */
  tryCreate(name: string, table: string): Promise<{ code: number; text: string }>;
  suspend(name: string): Promise<void>;
  reload(name: string, table: string): Promise<void>;
  resume(name: string): Promise<void>;
  status(name: string): Promise<string>;
  table(name: string): Promise<string>;
  eventNumber(name: string): Promise<number>;
  names(): Promise<string[]>;
  remove(name: string): Promise<void>;
  cleanup(): Promise<void>;
}

class OurDm implements Dm {
  readonly label = 'ublk-dm';
  constructor(readonly box: Sandbox) {}
  async dev(file: string) { return file; }
  create(name: string, table: string) { return this.box.create(name, table); }
  async tryCreate(name: string, table: string) {
    const r = await this.box.cli(['create', name, '--table', table]);
    return { code: r.code, text: r.stderr + r.stdout };
  }
  async suspend(name: string) { await this.box.ok(['suspend', name]); }
  async reload(name: string, table: string) { await this.box.ok(['reload', name, '--table', table]); }
  async resume(name: string) { await this.box.ok(['resume', name]); }
  status(name: string) { return this.box.ok(['status', name]); }
  table(name: string) { return this.box.ok(['table', name]); }
  async eventNumber(name: string) { return Number(JSON.parse(await this.box.ok(['info', name, '--json'])).eventNumber); }
  async names() {
    const r = await this.box.cli(['ls', '--json']);
    if (r.code !== 0) return [];
    return (JSON.parse(r.stdout) as Array<{ name: string }>).map((d) => d.name);
  }
  async remove(name: string) { await this.box.ok(['remove', name]); }
  async cleanup() {
    // Snapshots before their origin.
    const names = await this.names();
    for (const n of [...names.filter((x) => x.startsWith('snap')), ...names.filter((x) => !x.startsWith('snap'))]) {
      const r = await this.box.cli(['remove', n]);
      if (r.code !== 0) throw new Error(`remove ${n}: ${r.stderr}`);
    }
  }
}

class KernelDm implements Dm {
  readonly label = 'kernel dm';
  private readonly loops: string[] = [];
  private readonly prefix = 'kso-';
  async dev(file: string) {
    const loop = await losetup(file);
    this.loops.push(loop);
    return loop;
  }
  async create(name: string, table: string) {
    await must(`dmsetup create ${this.prefix}${name} <<'T'\n${table}\nT`);
    return `/dev/mapper/${this.prefix}${name}`;
  }
  async tryCreate(name: string, table: string) {
    await sh('dmesg -C');
    const r = await sh(`dmsetup create ${this.prefix}${name} <<'T'\n${table}\nT`);
    const log = await sh('dmesg');
    return { code: r.code, text: r.stderr + r.stdout + log.stdout };
  }
  // ublk-dm cannot freeze filesystems, so neither does the oracle.
  async suspend(name: string) { await must(`dmsetup suspend --nolockfs ${this.prefix}${name}`); }
  async reload(name: string, table: string) { await must(`dmsetup load ${this.prefix}${name} <<'T'\n${table}\nT`); }
  async resume(name: string) { await must(`dmsetup resume ${this.prefix}${name}`); }
  status(name: string) { return must(`dmsetup status ${this.prefix}${name}`); }
  table(name: string) { return must(`dmsetup table ${this.prefix}${name}`); }
  async eventNumber(name: string) { return Number((await must(`dmsetup info -c --noheadings -o events ${this.prefix}${name}`)).trim()); }
  async names() {
    const out = await must('dmsetup ls');
    return out.split('\n').map((l) => l.split('\t')[0]!).filter((n) => n.startsWith(this.prefix)).map((n) => n.slice(this.prefix.length));
  }
  async remove(name: string) { await must(`dmsetup remove ${this.prefix}${name}`); }
  async cleanup() {
    const names = await this.names();
    for (const n of [...names.filter((x) => x.startsWith('snap')), ...names.filter((x) => !x.startsWith('snap'))]) {
      await sh(`dmsetup remove ${this.prefix}${n}`);
    }
    for (const loop of this.loops.splice(0)) await sh(`losetup -d ${loop}`);
  }
}

const oracle = process.env.UBLK_DM_SNAPSHOT_ORACLE === 'kernel';

// ---------------------------------------------------------------- the tests

describe(`integration: dm-snapshot (snapshot-origin + snapshot, persistent store)${oracle ? ' [KERNEL ORACLE RUN]' : ''}`, function () {
  let box: Sandbox;
  /** This test's files (in the guest's tmpfs). */
  let work: string;
  let dm: Dm;
  /** Undo steps for this test, run last-in first-out in afterEach whatever happened. */
  let undo: Array<{ label: string; run: () => Promise<unknown> }>;
  const later = (label: string, run: () => Promise<unknown>) => { undo.push({ label, run }); };

  // One daemon for the file (each CLI call and daemon start costs seconds under TCG); every
  // test removes its devices and files in afterEach.
  before(async function () {
    await requireKernelSnapshot();
    box = new Sandbox('snap');
  });
  after(async function () {
    if (box === undefined) return;
    if (oracle) await rm(box.dir, { recursive: true, force: true });
    else await box.cleanup();
  });

  beforeEach(function () {
    work = mkdtempSync(join(box.dir, 't-'));
    dm = oracle ? new KernelDm() : new OurDm(box);
    undo = [];
    // Registered first, so they run after every other undo step (mounts, writers, kernel devices).
    later('test files', () => rm(work, { recursive: true, force: true }));
    later('devices', () => dm.cleanup());
  });

  afterEach(async function () {
    const failures: string[] = [];
    for (const step of undo.reverse()) {
      try { await step.run(); } catch (err) { failures.push(`${step.label}: ${(err as Error).message}`); }
    }
    if (failures.length > 0) throw new Error(`cleanup failed:\n${failures.join('\n')}`);
  });

  /** Origin `base` as `linear ORIGIN 0`; returns its block device. */
  function createOrigin(origin: string, sectors: number): Promise<string> {
    return dm.create('base', `0 ${sectors} linear ${origin} 0`);
  }

  /** dmsetup's dance; `first`: the origin is still linear and is reloaded as snapshot-origin. */
  async function takeSnapshot(name: string, origin: string, cow: string, sectors: number, chunk: number, first: boolean): Promise<string> {
    await dm.suspend('base');
    try {
      if (first) await dm.reload('base', `0 ${sectors} snapshot-origin ${origin}`);
      return await dm.create(name, `0 ${sectors} snapshot ${origin} ${cow} P ${chunk}`);
    } finally {
      await dm.resume('base');
    }
  }

  it('a snapshot reads generation 1 everywhere after random QD16 generation-2 writes to the origin, which reads generation 2 where written', async function () {
    const size = 16 * MiB;
    const sectors = size / 512;
    const gen1 = new Image(size, 1);
    const originFile = await writeImageFile(work, 'origin.img', gen1);
    const origin = await dm.dev(originFile);
    const cow = await dm.dev(await makeBackingFile(work, 'cow.img', 8 * MiB, 'zero'));
    const base = await createOrigin(origin, sectors);
    const snap = await takeSnapshot('snap', origin, cow, sectors, 8, true);
    assert.equal(await dm.status('snap'), `0 ${sectors} snapshot 16/16384 16\n`, 'a new store: header + area 0');
    assert.equal(await dm.status('base'), `0 ${sectors} snapshot-origin \n`);

    // 768 blocks = 3 full metadata areas of 256 records (chunk 8): two area rollovers.
    await fioStamp(base, 2, 5 * MiB, 3 * MiB, { qd: 16 });
    const gen2 = gen1.clone();
    gen2.stamp(2, 5 * MiB, 3 * MiB);

    assertImage(await readDevice(work, snap), gen1, 'snapshot');
    assertImage(await readDevice(work, base), gen2, 'origin through base');
    assertImage(await readFile(originFile), gen2, 'origin backing file');
    assert.equal(persistentUsage(768, 8, 16384), '6184/16384 40'); // what 6.12 printed for these writes
    assert.equal(await dm.status('snap'), `0 ${sectors} snapshot 6184/16384 40\n`, 'one exception per 4 KiB chunk written');
  });

  it('four snapshots of one origin taken at generations 1-4 with chunk sizes 8, 16, 32 and 8 each read their own generation', async function () {
    const size = 8 * MiB;
    const sectors = size / 512;
    const image = new Image(size, 1);
    const origin = await dm.dev(await writeImageFile(work, 'origin.img', image));
    const base = await createOrigin(origin, sectors);
    // Overlapping generations, so chunks differ between snapshots; gen 5 comes after the last one.
    const writes: Array<{ gen: number; off: number; len: number }> = [
      { gen: 2, off: 1 * MiB, len: 1 * MiB },
      { gen: 3, off: 1.5 * MiB, len: 1.5 * MiB },
      { gen: 4, off: 2.5 * MiB, len: 1 * MiB },
      { gen: 5, off: 0, len: 2 * MiB },
    ];
    const snaps = [
      { name: 'snap8a', chunk: 8 },
      { name: 'snap16', chunk: 16 },
      { name: 'snap32', chunk: 32 },
      { name: 'snap8b', chunk: 8 },
    ];
    const expected: Image[] = [];
    const devs: string[] = [];
    for (let i = 0; i < snaps.length; i++) {
      const cow = await dm.dev(await makeBackingFile(work, `cow-${snaps[i]!.name}.img`, 8 * MiB, 'zero'));
      devs.push(await takeSnapshot(snaps[i]!.name, origin, cow, sectors, snaps[i]!.chunk, i === 0));
      expected.push(image.clone());
      const w = writes[i]!;
      await fioStamp(base, w.gen, w.off, w.len, { qd: 12 });
      image.stamp(w.gen, w.off, w.len);
    }
    for (let i = 0; i < snaps.length; i++) {
      assertImage(await readDevice(work, devs[i]!), expected[i]!, `${snaps[i]!.name} (generation ${i + 1})`);
      const touched = chunksTouched(writes.slice(i).map((w) => [w.off, w.len] as [number, number]), snaps[i]!.chunk);
      assert.equal(await dm.status(snaps[i]!.name), `0 ${sectors} snapshot ${persistentUsage(touched.size, snaps[i]!.chunk, 16384)}\n`,
        `${snaps[i]!.name}: one exception per chunk written after it was taken`);
    }
    assertImage(await readDevice(work, base), image, 'origin');
  });

  it('rewrites of chunks the snapshots hold (a reloaded origin\'s queue threads serve them) keep each snapshot\'s generation; one taken later still gets its copies', async function () {
    const size = 8 * MiB;
    const sectors = size / 512;
    const image = new Image(size, 1);
    const origin = await dm.dev(await writeImageFile(work, 'origin.img', image));
    const base = await createOrigin(origin, sectors);
    const cowA = await dm.dev(await makeBackingFile(work, 'cow-a.img', 8 * MiB, 'zero'));
    const snapA = await takeSnapshot('snapa', origin, cowA, sectors, 8, true);
    const genA = image.clone();
    // Generation 2 copies out; 3 rewrites half of it and copies out the rest.
    for (const [gen, off, len] of [[2, 1 * MiB, 1 * MiB], [3, 1.5 * MiB, 1 * MiB]] as const) {
      await fioStamp(base, gen, off, len, { qd: 16 });
      image.stamp(gen, off, len);
    }
    const cowB = await dm.dev(await makeBackingFile(work, 'cow-b.img', 8 * MiB, 'zero'));
    const snapB = await takeSnapshot('snapb', origin, cowB, sectors, 16, false);
    const genB = image.clone();
    // Chunks snapshot A holds: snapshot B must still get its copies; then rewrites of them all.
    for (const [gen, off, len] of [[4, 1 * MiB, 2 * MiB], [5, 1 * MiB, 2 * MiB], [6, 0.5 * MiB, 3 * MiB]] as const) {
      await fioStamp(base, gen, off, len, { qd: 16 });
      image.stamp(gen, off, len);
    }
    assertImage(await readDevice(work, snapA), genA, 'snapshot A');
    assertImage(await readDevice(work, snapB), genB, 'snapshot B');
    assertImage(await readDevice(work, base), image, 'origin');
    assert.equal(await dm.status('snapa'), `0 ${sectors} snapshot ${persistentUsage(chunksTouched([[0.5 * MiB, 3 * MiB]], 8).size, 8, 16384)}\n`);
    assert.equal(await dm.status('snapb'), `0 ${sectors} snapshot ${persistentUsage(chunksTouched([[0.5 * MiB, 3 * MiB]], 16).size, 16, 16384)}\n`);
  });

  it('a writable snapshot reads back its own full-chunk, partial-chunk and straddling writes; the origin never sees them', async function () {
    const size = 8 * MiB;
    const sectors = size / 512;
    const chunk = 16; // 8 KiB: 4 KiB, 2 KiB and 512 B writes are partial chunks
    const chunkBytes = chunk * 512;
    const gen1 = new Image(size, 1);
    const originFile = await writeImageFile(work, 'origin.img', gen1);
    const originSha = await sha256OfFile(originFile);
    const origin = await dm.dev(originFile);
    const cow = await dm.dev(await makeBackingFile(work, 'cow.img', 4 * MiB, 'zero'));
    const base = await createOrigin(origin, sectors);
    const snap = await takeSnapshot('snap', origin, cow, sectors, chunk, true);

    const want = gen1.clone();
    const ranges: Array<[number, number]> = [];
    const writes: Array<[string, number, number]> = [
      ['full chunk 10', 10 * chunkBytes, chunkBytes],
      ['second half of chunk 20', 20 * chunkBytes + 4 * KiB, 4 * KiB],
      ['512 B inside chunk 21', 21 * chunkBytes + 3 * 512, 512],
      ['12 KiB from the middle of chunk 30 to the end of chunk 31', 30 * chunkBytes + 4 * KiB, 12 * KiB],
      ['64 KiB over chunks 40-47', 40 * chunkBytes, 64 * KiB],
      ['512 B again into already-copied chunk 10', 10 * chunkBytes + 512, 512],
      ['1 KiB again into already-copied chunk 21', 21 * chunkBytes + 1024, 1024],
    ];
    for (const [label, off, len] of writes) {
      const data = Buffer.alloc(len, 0);
      for (let i = 0; i < len; i += 512) data.write(`S:${label}:${off + i}`, i, 'latin1');
      const r = await ddWrite(work, snap, off, data);
      assert.equal(r.code, 0, `snapshot write (${label}) failed: ${r.stderr}`);
      want.put(off, data);
      ranges.push([off, len]);
    }
    // Concurrent 2 KiB (quarter-chunk) writes: several to one chunk in flight at once.
    await fioStamp(snap, 7, 1 * MiB, 512 * KiB, { qd: 8, bs: 2 * KiB });
    want.stamp(7, 1 * MiB, 512 * KiB, 2 * KiB);
    ranges.push([1 * MiB, 512 * KiB]);

    assertImage(await readDevice(work, snap), want, 'snapshot');
    assertImage(await readDevice(work, base), gen1, 'origin through base');
    assert.equal(await sha256OfFile(originFile), originSha, 'origin backing file unchanged');
    assert.equal(await dm.status('snap'), `0 ${sectors} snapshot ${persistentUsage(chunksTouched(ranges, chunk).size, chunk, 8192)}\n`,
      'one exception per chunk written');
  });

  it('ext4: a snapshot of a frozen, mounted origin mounts ro,noload, fscks clean and keeps the pre-snapshot files while the origin takes writes', async function () {
    const size = 32 * MiB;
    const sectors = size / 512;
    const origin = await dm.dev(await makeBackingFile(work, 'origin.img', size, 'zero'));
    const cow = await dm.dev(await makeBackingFile(work, 'cow.img', 40 * MiB, 'zero')); // never fills
    const base = await createOrigin(origin, sectors);
    const mnt = join(work, 'mnt');
    const smnt = join(work, 'smnt');
    const stop = join(work, 'stop-writer');
    await must(`mkfs.ext4 -q -F ${base} && mkdir -p ${mnt} ${smnt} && mount ${base} ${mnt}`);
    later('umount origin', () => sh(`umount ${mnt}`));
    await must(`for i in $(seq 1 12); do head -c $((i * 23 * 1024)) /dev/urandom > ${mnt}/f$i; done; mkdir ${mnt}/d; cp ${mnt}/f5 ${mnt}/d/copy; sync`);
    const sums = await must(`cd ${mnt} && sha256sum f* d/copy`);

    // dmsetup freezes the filesystem around suspend; ublk-dm cannot, so the test does.
    await must(`fsfreeze -f ${mnt}`);
    let snapDev: string;
    try {
      snapDev = await takeSnapshot('snap', origin, cow, sectors, 8, true);
    } finally {
      await must(`fsfreeze -u ${mnt}`);
    }

    // The writer rewrites pre-snapshot files and adds new ones until told to stop.
    const writer: ChildProcess = spawn('bash', ['-c',
      `i=0; while [ ! -e ${stop} ]; do i=$((i+1)); for f in f1 f2 f3 d/copy w$((i % 6)); do head -c 96K /dev/urandom > ${mnt}/$f || exit 1; done; sync; done; echo $i`],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    let writerOut = '';
    writer.stdout!.on('data', (d) => { writerOut += d; });
    writer.stderr!.on('data', (d) => { writerOut += d; });
    const writerExit = new Promise<number>((r) => writer.on('exit', (code) => r(code ?? -1)));
    later('stop writer', async () => {
      await writeFile(stop, '');
      if (writer.exitCode === null) await Promise.race([writerExit, sleep(30_000)]);
      if (writer.exitCode === null && writer.pid) process.kill(writer.pid, 'SIGKILL');
    });

    await sleep(1000);
    await must(`mount -o ro,noload ${snapDev} ${smnt}`);
    later('umount snapshot', () => sh(`umount ${smnt}`));
    const fsck = await sh(`fsck.ext4 -fn ${snapDev}`, { timeoutMs: 300_000 });
    assert.equal(fsck.code, 0, `fsck of the snapshot while the origin is written:\n${fsck.stdout}${fsck.stderr}`);
    assert.equal(await must(`cd ${smnt} && sha256sum f* d/copy`), sums, 'the snapshot holds the pre-snapshot files');
    assert.deepEqual((await must(`ls ${smnt}`)).split('\n').filter((f) => f.startsWith('w')), [], 'no file written after the snapshot');

    await writeFile(stop, '');
    assert.equal(await writerExit, 0, `the origin writer failed: ${writerOut}`);
    assert.ok(Number(writerOut.trim()) >= 1, `the writer ran: ${writerOut}`);
    assert.notEqual(await must(`cd ${mnt} && sha256sum f* d/copy`), sums, 'the origin did change');
    const usage = (await dm.status('snap')).trim().split(' ');
    assert.equal(usage.length, 5, `status: ${usage.join(' ')}`);
    assert.match(usage[3]!, /^\d+\/81920$/, `status numbers: ${usage.join(' ')}`);
    assert.ok(Number(usage[3]!.split('/')[0]) > 16, `origin writes were copied out: ${usage.join(' ')}`);
    assert.equal(await must(`cd ${smnt} && sha256sum f* d/copy`), sums, 'the snapshot files are unchanged after the writes');
  });

  it('COW full on origin writes: snapshot Invalid, event 1, EIO on snapshot I/O, header valid=0, origin keeps working', async function () {
    const size = 4 * MiB;
    const sectors = size / 512;
    const gen1 = new Image(size, 1);
    const originFile = await writeImageFile(work, 'origin.img', gen1);
    const cowFile = await makeBackingFile(work, 'cow.img', 256 * KiB, 'zero'); // 64 chunks: 62 exceptions
    const origin = await dm.dev(originFile);
    const cow = await dm.dev(cowFile);
    const base = await createOrigin(origin, sectors);
    const snap = await takeSnapshot('snap', origin, cow, sectors, 8, true);
    assert.equal(await dm.status('snap'), `0 ${sectors} snapshot 16/512 16\n`);

    const gen2 = new Image(size, 2);
    const src = await writeImageFile(work, 'gen2.img', gen2);
    // 71 one-chunk writes (chunks 20..90), as in the kernel capture (spec §9.3): the 63rd finds no room.
    await must(`dd if=${src} of=${base} bs=4096 skip=20 seek=20 count=71 oflag=direct conv=notrunc status=none`);

    assert.equal(await dm.status('snap'), `0 ${sectors} snapshot Invalid\n`);
    assert.match(await dm.table('snap'), / P 8\n$/, 'the table line is unchanged');
    assert.equal(await dm.eventNumber('snap'), 1, 'invalidation raised one event');
    assert.equal(await dm.eventNumber('base'), 0, 'the origin raised none');
    for (const chunkNo of [5, 50]) {
      const r = await sh(`dd if=${snap} of=/dev/null bs=4096 skip=${chunkNo} count=1 iflag=direct`);
      assert.notEqual(r.code, 0, `read of snapshot chunk ${chunkNo} must fail`);
      assert.match(r.stderr, /Input\/output error/);
    }
    const w = await sh(`dd if=/dev/zero of=${snap} bs=4096 seek=12 count=1 oflag=direct conv=notrunc`);
    assert.notEqual(w.code, 0, 'write to the invalid snapshot must fail');
    assert.match(w.stderr, /Input\/output error/);

    const want = gen1.clone();
    want.put(20 * BLOCK, gen2.bytes.subarray(20 * BLOCK, 91 * BLOCK));
    assertImage(await readDevice(work, base), want, 'origin after the overflowing writes');
    await must(`dd if=${src} of=${base} bs=4096 skip=300 seek=300 count=4 oflag=direct conv=notrunc status=none`);
    want.put(300 * BLOCK, gen2.bytes.subarray(300 * BLOCK, 304 * BLOCK));
    assertImage(await readFile(originFile), want, 'origin backing file, later writes included');

    const header = (await readFile(cowFile)).subarray(0, 16).toString('hex');
    assert.equal(header, '536e4170' + '00000000' + '01000000' + '08000000', 'header: magic, valid=0, version 1, chunk 8');
  });

  it('kernel interop, ours -> kernel: the kernel loads our COW with the same status line and the same snapshot bytes', async function () {
    const size = 16 * MiB;
    const sectors = size / 512;
    const ours = dm; // the kernel itself in an oracle run
    const loopO = await losetup(await writeImageFile(work, 'origin.img', new Image(size, 1)));
    later('detach origin loop', () => sh(`losetup -d ${loopO}`));
    const loopC = await losetup(await makeBackingFile(work, 'cow.img', 8 * MiB, 'zero'));
    later('detach cow loop', () => sh(`losetup -d ${loopC}`));

    const base = await ours.create('base', `0 ${sectors} linear ${loopO} 0`);
    let snap: string;
    await ours.suspend('base');
    try {
      await ours.reload('base', `0 ${sectors} snapshot-origin ${loopO}`);
      snap = await ours.create('snap', `0 ${sectors} snapshot ${loopO} ${loopC} P 8`);
    } finally {
      await ours.resume('base');
    }
    await fioStamp(base, 2, 5 * MiB, 3 * MiB, { qd: 16 });
    // A full-chunk and a partial-chunk snapshot write: records the kernel must read back too.
    assert.equal((await ddWrite(work, snap, 1000 * BLOCK, Buffer.alloc(BLOCK, 0x53))).code, 0);
    assert.equal((await ddWrite(work, snap, 1001 * BLOCK + 512, Buffer.alloc(512, 0x73))).code, 0);
    const ourStatus = await ours.status('snap');
    const ourSha = await deviceSha(snap);
    await ours.remove('snap');
    await ours.remove('base');

    later('kernel snapshot', () => sh('dmsetup remove snapk-snap'));
    await must(`dmsetup create snapk-snap --table "0 ${sectors} snapshot ${loopO} ${loopC} P 8"`);
    assert.equal(await must('dmsetup status snapk-snap'), ourStatus, 'kernel status of our COW = our status before removal');
    assert.equal(await deviceSha('/dev/mapper/snapk-snap'), ourSha, 'kernel snapshot bytes = our snapshot bytes');
  });

  it('kernel interop, kernel -> ours: we load the kernel COW with the same status line and the same snapshot and origin bytes', async function () {
    const size = 16 * MiB;
    const sectors = size / 512;
    const ours = dm; // the kernel itself in an oracle run
    const loopO = await losetup(await writeImageFile(work, 'origin.img', new Image(size, 1)));
    later('detach origin loop', () => sh(`losetup -d ${loopO}`));
    const loopC = await losetup(await makeBackingFile(work, 'cow.img', 8 * MiB, 'zero'));
    later('detach cow loop', () => sh(`losetup -d ${loopC}`));

    // The kernel side, as dmsetup users do it.
    later('kernel devices', () => sh('dmsetup remove snapk-snap; dmsetup remove snapk-base'));
    await must(`dmsetup create snapk-base --table "0 ${sectors} snapshot-origin ${loopO}"`);
    await must('dmsetup suspend snapk-base');
    try {
      await must(`dmsetup create snapk-snap --table "0 ${sectors} snapshot ${loopO} ${loopC} P 8"`);
    } finally {
      await must('dmsetup resume snapk-base');
    }
    await fioStamp('/dev/mapper/snapk-base', 2, 5 * MiB, 3 * MiB, { qd: 16 });
    assert.equal((await ddWrite(work, '/dev/mapper/snapk-snap', 1000 * BLOCK, Buffer.alloc(BLOCK, 0x53))).code, 0);
    assert.equal((await ddWrite(work, '/dev/mapper/snapk-snap', 1001 * BLOCK + 512, Buffer.alloc(512, 0x73))).code, 0);
    const kStatus = await must('dmsetup status snapk-snap');
    assert.equal(kStatus, `0 ${sectors} snapshot ${persistentUsage(770, 8, 16384)}\n`, 'kernel oracle: 768 copy-outs + 2 snapshot writes');
    const kSnapSha = await deviceSha('/dev/mapper/snapk-snap');
    const kOriginSha = await deviceSha('/dev/mapper/snapk-base');
    await must('dmsetup remove snapk-snap && dmsetup remove snapk-base');

    const base = await ours.create('base', `0 ${sectors} snapshot-origin ${loopO}`);
    const snap = await ours.create('snap', `0 ${sectors} snapshot ${loopO} ${loopC} P 8`);
    assert.equal(await ours.status('snap'), kStatus, 'our status of the kernel COW = kernel status before removal');
    assert.equal(await deviceSha(snap), kSnapSha, 'our snapshot bytes = kernel snapshot bytes');
    assert.equal(await deviceSha(base), kOriginSha, 'our origin bytes = kernel origin bytes');
  });

  it('exception handover: LVM\'s merge by reload (snapshot and origin suspended, origin loaded as snapshot-merge over the COW) takes the live exceptions; the source turns Invalid with chunk 0, no events', async function () {
    const size = 8 * MiB;
    const sectors = size / 512;
    const gen1 = new Image(size, 1);
    const origin = await dm.dev(await writeImageFile(work, 'origin.img', gen1));
    const cowFile = await makeBackingFile(work, 'cow.img', 4 * MiB, 'zero');
    const cow = await dm.dev(cowFile);
    const base = await createOrigin(origin, sectors);
    const snap = await takeSnapshot('snap', origin, cow, sectors, 8, true);
    await fioStamp(base, 2, 1 * MiB, 1 * MiB, { qd: 8 });
    const snapImage = gen1.clone();
    const written = Buffer.alloc(BLOCK);
    stampInto(written, 0, 3, 3 * MiB, BLOCK);
    assert.equal((await ddWrite(work, snap, 3 * MiB, written)).code, 0);
    snapImage.put(3 * MiB, written);
    const statusBefore = await dm.status('snap');

    // A second table over the live COW cannot take over while its source runs.
    const refused = await dm.tryCreate('snapx', `0 ${sectors} snapshot ${origin} ${cow} P 8`);
    assert.notEqual(refused.code, 0, 'the handover needs the source suspended');
    assert.match(refused.text, /Unable to perform snapshot handover until source is suspended\./);
    if ((await dm.names()).includes('snapx')) await dm.remove('snapx'); // the kernel leaves the device, suspended
    assert.equal(await dm.status('snap'), statusBefore, 'the source is untouched by the refused handover');

    await dm.suspend('snap');
    await dm.suspend('base');
    await dm.reload('base', `0 ${sectors} snapshot-merge ${origin} ${cow} P 8`);
    await dm.resume('base');
    assert.equal(await dm.status('snap'), `0 ${sectors} snapshot Invalid\n`, 'the source is Invalid after the handover (§9.6)');
    assert.match(await dm.table('snap'), new RegExp(`^0 ${sectors} snapshot \\S+ \\S+ P 0\\n$`), 'and shows chunk size 0');
    assert.deepEqual([await dm.eventNumber('snap'), await dm.eventNumber('base')], [0, 0], 'a handover raises no event');

    let status = '';
    for (let i = 0; i < 600; i++) {
      status = await dm.status('base');
      const m = /snapshot-merge (\d+)\/\d+ (\d+)$/.exec(status.trim());
      if (m && m[1] === m[2]) break;
      await sleep(250);
    }
    assert.equal(status, `0 ${sectors} snapshot-merge 16/8192 16\n`, 'the merge finished');
    assert.equal(await dm.eventNumber('base'), 0, 'and raised no event');
    await dm.remove('snap');
    assertImage(await readDevice(work, base), snapImage, 'the origin after the merge holds the snapshot image');
    await dm.suspend('base');
    await dm.reload('base', `0 ${sectors} snapshot-origin ${origin}`);
    await dm.resume('base');
    assertImage(await readDevice(work, base), snapImage, 'and keeps it under snapshot-origin');
  });

  describe('bad snapshot tables: clear error, non-zero exit, no device, COW and origin untouched', function () {
    interface BadCase {
      what: string;
      table: (o: string, c: string) => string;
      prepareCow?: (path: string) => Promise<void>;
      cowSize?: number;
      error: RegExp;
      /** The kernel writes a new header before it finds area 0 beyond the end of the COW. */
      cowMayGetNewHeader?: boolean;
    }
    const cases: BadCase[] = [
      {
        what: 'a COW whose chunk 0 holds a foreign header (random bytes)',
        table: (o, c) => `0 8192 snapshot ${o} ${c} P 8`,
        prepareCow: async (c) => { await must(`( printf '\\xff'; head -c 4095 /dev/urandom ) | dd of=${c} conv=notrunc status=none`); },
        error: /Failed to read snapshot metadata/,
      },
      { what: 'store type PX', table: (o, c) => `0 8192 snapshot ${o} ${c} PX 8`, error: /Couldn't create exception store/ },
      { what: 'chunk size 12 (not a power of two)', table: (o, c) => `0 8192 snapshot ${o} ${c} P 12`, error: /Couldn't create exception store/ },
      {
        what: 'a COW smaller than one chunk (2 KiB, chunk 8)',
        table: (o, c) => `0 8192 snapshot ${o} ${c} P 8`, cowSize: 2 * KiB,
        error: /Failed to read snapshot metadata/,
      },
      {
        what: 'a COW with room for the header chunk but not area 0 (4 KiB, chunk 8)',
        table: (o, c) => `0 8192 snapshot ${o} ${c} P 8`, cowSize: 4 * KiB,
        error: /Failed to read snapshot metadata/, cowMayGetNewHeader: true,
      },
      { what: 'origin == COW', table: (o) => `0 8192 snapshot ${o} ${o} P 8`, error: /COW device cannot be the same as origin device/ },
      { what: 'three arguments', table: (o, c) => `0 8192 snapshot ${o} ${c} P`, error: /requires 4 or more arguments/ },
    ];
    for (const c of cases) {
      it(`refuses ${c.what}`, async function () {
        const originFile = await writeImageFile(work, 'origin.img', new Image(4 * MiB, 1));
        const cowFile = await makeBackingFile(work, 'cow.img', c.cowSize ?? 1 * MiB, 'zero');
        if (c.prepareCow) await c.prepareCow(cowFile);
        const originSha = await sha256OfFile(originFile);
        const cowBefore = await readFile(cowFile);
        const origin = await dm.dev(originFile);
        const cow = await dm.dev(cowFile);
        const nodesBefore = await ublkBlockNodes();

        const r = await dm.tryCreate('snapbad', c.table(origin, cow));
        assert.notEqual(r.code, 0, `create must fail: ${r.text}`);
        assert.match(r.text, c.error, `the error says why: ${r.text}`);
        assert.deepEqual(await dm.names(), [], 'no device was created');
        assert.deepEqual(await ublkBlockNodes(), nodesBefore, 'no block device was created');
        assert.equal(await sha256OfFile(originFile), originSha, 'origin unchanged');
        const cowAfter = await readFile(cowFile);
        if (c.cowMayGetNewHeader && !cowAfter.equals(cowBefore)) {
          // 6.12 leaves exactly a fresh header behind (zero_disk_area(0) failed, -EIO); nothing else may change.
          const withHeader = Buffer.alloc(cowBefore.length);
          Buffer.from('536e4170010000000100000008000000', 'hex').copy(withHeader);
          assert.ok(cowAfter.equals(withHeader), `COW changed beyond a new header: ${cowAfter.subarray(0, 32).toString('hex')}`);
        } else {
          assert.ok(cowAfter.equals(cowBefore), `COW unchanged (first bytes now ${cowAfter.subarray(0, 32).toString('hex')})`);
        }
      });
    }
  });
});
