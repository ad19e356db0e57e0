import assert from 'node:assert/strict';
import { DeviceEvents } from '../../../../src/dm/mapped-device';
import type { DaemonScope } from '../../../../src/dm/scope';
import type { Table } from '../../../../src/dm/table';
import type { MapOutcome, Target } from '../../../../src/dm/target';
import { IoOp, type Bio } from '../../../../src/io/bio';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { loadMemoryTable, submitted, testScope } from '../../../../src/testing/tables';

/**
 * Exception handover (spec snapshot.md §5.3): a second table over the COW of an active snapshot
 * takes its exceptions over at resume, without reading or writing the COW.
 */

const CHUNK = 8;
const CHUNK_BYTES = CHUNK * 512;
const SECTORS = 64 * CHUNK;

function stamp(byte: number): Buffer {
  return Buffer.alloc(CHUNK_BYTES, byte);
}

function io(target: Target, op: IoOp, sector: number, data: Uint8Array): Promise<MapOutcome> {
  const bio: Bio = { op, sector, sectorCount: data.byteLength / 512, data, fua: false, noUnmap: false };
  return submitted<MapOutcome>((b, done) => target.map(b, done), bio);
}

async function readChunk(target: Target, chunk: number): Promise<number> {
  const back = Buffer.alloc(CHUNK_BYTES);
  const result = await io(target, IoOp.Read, chunk * CHUNK, back);
  assert.equal(result, CHUNK_BYTES);
  assert.ok(back.every((b) => b === back[0]), 'one byte value per chunk');
  return back[0]!;
}

/** What dm does to a table's targets around a suspend and a resume. */
async function suspend(target: Target): Promise<void> {
  await target.presuspend?.({ noflush: false });
  await target.postsuspend?.();
}

async function resume(target: Target): Promise<void> {
  await target.preresume?.();
  await target.resume?.();
}

interface Rig {
  scope: DaemonScope;
  devices: Record<string, MemoryDevice>;
  origin: Target;
  source: Target;
  sourceEvents: DeviceEvents;
  load(text: string, events?: DeviceEvents): Promise<Target>;
  /** Destroys the table `target` belongs to: its targets, then its device handles. */
  removeTable(target: Target): Promise<void>;
}

/**
 * Origin chunks hold 0x10 + chunk; snapshot-origin and a persistent snapshot (P 8) live, with
 * chunks 1 and 2 written through the origin (0xa1, 0xa2) and chunk 5 through the snapshot (0xb5).
 */
async function rig(store = 'P'): Promise<Rig> {
  const devices = { origin: new MemoryDevice(SECTORS), cow: new MemoryDevice(SECTORS), cow2: new MemoryDevice(SECTORS) };
  for (let chunk = 0; chunk < SECTORS / CHUNK; chunk++) devices.origin.contents.fill(0x10 + chunk, chunk * CHUNK_BYTES, (chunk + 1) * CHUNK_BYTES);
  const scope = testScope();
  const tables = new Map<Target, Table>();
  const load = async (text: string, events = new DeviceEvents('t')) => {
    const table = await loadMemoryTable(text, devices, { scope, device: events });
    tables.set(table.segments[0]!.target, table);
    return table.segments[0]!.target;
  };
  const removeTable = (target: Target) => tables.get(target)!.destroy();
  const sourceEvents = new DeviceEvents('snap');
  const source = await load(`0 ${SECTORS} snapshot origin cow ${store} ${CHUNK}`, sourceEvents);
  await resume(source);
  const origin = await load(`0 ${SECTORS} snapshot-origin origin`);
  await resume(origin);
  assert.equal(await io(origin, IoOp.Write, 1 * CHUNK, stamp(0xa1)), CHUNK_BYTES);
  assert.equal(await io(origin, IoOp.Write, 2 * CHUNK, stamp(0xa2)), CHUNK_BYTES);
  assert.equal(await io(source, IoOp.Write, 5 * CHUNK, stamp(0xb5)), CHUNK_BYTES);
  return { scope, devices, origin, source, sourceEvents, load, removeTable };
}

describe('snapshot: exception handover (spec §5.3)', () => {
  it('a reloaded snapshot table takes the live one\'s exceptions at resume; the old one turns Invalid silently', async () => {
    const r = await rig();
    const statusBefore = r.source.status('info');
    const cowBefore = Buffer.from(r.devices.cow.contents);
    const cowReads = r.devices.cow.calls.read;

    const dest = await r.load(`0 ${SECTORS} snapshot origin cow P ${CHUNK}`);
    assert.equal(r.devices.cow.calls.read, cowReads, 'a handover destination does not read the COW');
    assert.match(dest.status('table'), / P 0$/, 'chunk size 0 until the handover');

    await suspend(r.source);
    await resume(dest);
    assert.equal(dest.status('info'), statusBefore, 'the usage moved with the store');
    assert.match(dest.status('table'), / P 8$/);
    assert.equal(r.source.status('info'), 'Invalid');
    assert.match(r.source.status('table'), / P 0$/, 'the source shows chunk size 0 (verified, §9.6)');
    assert.equal(r.sourceEvents.eventNumber, 0, 'no event for a handover');
    assert.ok(r.devices.cow.contents.equals(cowBefore), 'nothing written to the COW');

    assert.deepEqual([await readChunk(dest, 1), await readChunk(dest, 2), await readChunk(dest, 3), await readChunk(dest, 5)], [0x11, 0x12, 0x13, 0xb5]);
    assert.equal(await io(r.source, IoOp.Read, 0, Buffer.alloc(512)), -5, 'the source fails its I/O (EIO)');

    // The old table goes (closing its handles on the COW and the origin); origin writes now
    // copy out to the destination through its own handles, and not again for chunks it holds.
    await r.removeTable(r.source);
    assert.notEqual(dest.status('info'), 'Invalid', 'removing the source after the handover leaves the destination alone');
    assert.equal(await io(r.origin, IoOp.Write, 3 * CHUNK, stamp(0xa3)), CHUNK_BYTES);
    assert.equal(await readChunk(dest, 3), 0x13);
    assert.equal(await io(r.origin, IoOp.Write, 1 * CHUNK, stamp(0xc1)), CHUNK_BYTES);
    assert.equal(await readChunk(dest, 1), 0x11);
    assert.match(dest.status('info'), /^\d+\/512 16$/, 'valid: its commits reached the COW');
  });

  it('the destination cannot take over until the source is suspended, and the source cannot resume meanwhile', async () => {
    const r = await rig();
    const dest = await r.load(`0 ${SECTORS} snapshot origin cow P ${CHUNK}`);
    await assert.rejects(resume(dest), { message: 'Unable to perform snapshot handover until source is suspended.', code: 'EINVAL' });
    await suspend(r.source);
    await assert.rejects(resume(r.source), { message: 'Unable to resume snapshot source until handover completes.', code: 'EINVAL' });
    await resume(dest);
    assert.equal(await readChunk(dest, 2), 0x12);
  });

  it('a third table over the COW while a handover is pending is refused', async () => {
    const r = await rig();
    await r.load(`0 ${SECTORS} snapshot origin cow P ${CHUNK}`);
    await assert.rejects(r.load(`0 ${SECTORS} snapshot origin cow P ${CHUNK}`), /Snapshot cow pairing for exception table handover failed/);
  });

  it('removing the source before the destination resumed cancels the handover: the destination is Invalid', async () => {
    const r = await rig();
    const dest = await r.load(`0 ${SECTORS} snapshot origin cow P ${CHUNK}`);
    await suspend(r.source);
    await r.source.destroy();
    await resume(dest);
    assert.equal(dest.status('info'), 'Invalid');
  });

  it('the handover waits for a copy-out under way in the source, and the destination gets that exception too', async () => {
    const r = await rig();
    const dest = await r.load(`0 ${SECTORS} snapshot origin cow P ${CHUNK}`);
    const gate = r.devices.cow.hold(['write']);
    const write = io(r.origin, IoOp.Write, 7 * CHUNK, stamp(0xa7));
    await gate.whenWaiting(1);
    await suspend(r.source);
    let tookOver = false;
    const resumed = resume(dest).then(() => (tookOver = true));
    for (let i = 0; i < 5; i++) await new Promise((done) => setImmediate(done));
    assert.equal(tookOver, false, 'not while the copy is in flight');
    gate.release();
    await resumed;
    assert.equal(await write, CHUNK_BYTES);
    assert.equal(await readChunk(dest, 7), 0x17);
  });

  it('snapshot-merge over the COW of a live snapshot (LVM\'s merge) takes its exceptions and merges them into the origin', async () => {
    const r = await rig();
    await suspend(r.source);
    await suspend(r.origin);
    const merge = await r.load(`0 ${SECTORS} snapshot-merge origin cow P ${CHUNK}`);
    await r.removeTable(r.origin); // the origin device's old table, replaced by the merge table
    await resume(merge);
    assert.equal(r.source.status('info'), 'Invalid');
    await r.removeTable(r.source); // as `snapshot merge` does while the merge runs
    for (let i = 0; i < 200 && !/^(\d+)\/\d+ \1$/.test(merge.status('info')); i++) await new Promise((done) => setTimeout(done, 1));
    assert.match(merge.status('info'), /^16\/512 16$/, 'merged: allocated back to the metadata');
    const origin = r.devices.origin.contents;
    assert.deepEqual([1, 2, 3, 5].map((chunk) => origin[chunk * CHUNK_BYTES]), [0x11, 0x12, 0x13, 0xb5], 'the origin holds the snapshot image');
    await merge.destroy();
  });

  it('snapshot-merge by handover refuses a transient source and a second merge of the origin, in the kernel\'s words', async () => {
    const transient = await rig('N');
    await assert.rejects(transient.load(`0 ${SECTORS} snapshot-merge origin cow P ${CHUNK}`), /Snapshot exception store does not support snapshot-merge\./);

    const r = await rig();
    const second = await r.load(`0 ${SECTORS} snapshot origin cow2 P ${CHUNK}`);
    await resume(second);
    await suspend(r.source);
    const merge = await r.load(`0 ${SECTORS} snapshot-merge origin cow P ${CHUNK}`);
    await resume(merge);
    await assert.rejects(r.load(`0 ${SECTORS} snapshot-merge origin cow2 P ${CHUNK}`), /A snapshot is already merging\./);
    await merge.destroy();
  });

  it('a COW in use by a snapshot of another origin is refused (the kernel does not look, and would corrupt it)', async () => {
    const r = await rig();
    r.devices.other = new MemoryDevice(SECTORS);
    await assert.rejects(r.load(`0 ${SECTORS} snapshot other cow P ${CHUNK}`), /COW device is in use by a snapshot of another origin/);
  });
});
