import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Request, Results, TableReport, TargetLine } from '../wire/protocol';

/**
 * `ublk-dm snapshot create | merge | ls`: LVM's convenience over dmsetup's verbs. Taking a
 * snapshot by hand is a five-step dance (suspend the origin, load snapshot-origin, create the
 * snapshot, resume); these commands do exactly those steps through the daemon, undoing what they
 * did when a step fails, so every step stays doable by hand too.
 */

export type Send = <R extends Request>(request: R) => Promise<Results[R['verb']]>;

export interface SnapshotCreateOptions {
  readonly snapshot: string;
  readonly origin: string;
  readonly cowPath: string;
  /** Make the COW file this many bytes (it must not exist); absent: use the existing COW. */
  readonly cowBytes?: number;
  readonly chunkSectors: number;
  /** "P", "PO" or "N". */
  readonly store: string;
}

/** Where an origin device's table puts its data: the single segment's device, and whether it is a snapshot-origin already. */
export interface OriginTable {
  readonly lengthSectors: number;
  /** As tables print it (major:minor, or a file path). */
  readonly device: string;
  readonly type: 'linear' | 'snapshot-origin' | 'snapshot-merge';
}

/** The origin's live table, which must be one segment: linear <dev> 0, snapshot-origin <dev> or snapshot-merge. */
export function originTable(report: TableReport): OriginTable {
  const only = report.targets.length === 1 ? report.targets[0]! : undefined;
  const words = only?.text.split(' ') ?? [];
  if (only?.type === 'linear' && words.length === 2 && words[1] === '0') return { lengthSectors: only.lengthSectors, device: words[0]!, type: 'linear' };
  if (only?.type === 'snapshot-origin' && words.length === 1) return { lengthSectors: only.lengthSectors, device: words[0]!, type: 'snapshot-origin' };
  if (only?.type === 'snapshot-merge') return { lengthSectors: only.lengthSectors, device: words[0]!, type: 'snapshot-merge' };
  throw new Error(
    `${report.name} must have a one-line table "linear <dev> 0" or "snapshot-origin <dev>" to take snapshots of it ` +
      `(it has ${report.targets.map((t) => t.type).join(' + ') || 'no table'})`,
  );
}

/** A snapshot's table line: `<origin> <cow> <store> <chunk> [features]`. */
export interface SnapshotLine {
  readonly lengthSectors: number;
  readonly origin: string;
  readonly cow: string;
  readonly store: string;
  readonly chunkSectors: number;
}

export function snapshotLine(line: TargetLine): SnapshotLine | undefined {
  if (line.type !== 'snapshot') return undefined;
  const [origin, cow, store, chunk] = line.text.split(' ');
  return { lengthSectors: line.lengthSectors, origin: origin!, cow: cow!, store: store!, chunkSectors: Number(chunk) };
}

/** `<allocated>/<total> <metadata>` (sectors), or the state word. */
export type SnapshotUsage =
  | { readonly state: 'ok'; readonly allocatedSectors: number; readonly totalSectors: number; readonly metadataSectors: number }
  | { readonly state: 'Invalid' | 'Overflow' | 'Merge failed' | 'Unknown' };

export function parseUsage(statusText: string): SnapshotUsage {
  const match = /^(\d+)\/(\d+) (\d+)$/.exec(statusText);
  if (match === null) {
    const state = statusText === 'Invalid' || statusText === 'Overflow' || statusText === 'Merge failed' ? statusText : 'Unknown';
    return { state };
  }
  return { state: 'ok', allocatedSectors: Number(match[1]), totalSectors: Number(match[2]), metadataSectors: Number(match[3]) };
}

/** "4k" (KiB), "1m" (MiB), "16s" or "16" (sectors) → sectors. */
export function parseChunkSize(text: string): number {
  const match = /^(\d+)([kKmMsS]?)$/.exec(text);
  if (match === null) throw new Error(`invalid chunk size ${JSON.stringify(text)}: use e.g. 4k, 64k or 8s`);
  const value = Number(match[1]);
  const unit = match[2]!.toLowerCase();
  return unit === 'k' ? value * 2 : unit === 'm' ? value * 2048 : value;
}

/** "1g", "512m", "4096" (bytes) → bytes. */
export function parseByteSize(text: string): number {
  const match = /^(\d+)([kKmMgG]?)$/.exec(text);
  if (match === null) throw new Error(`invalid size ${JSON.stringify(text)}: use e.g. 64m or 1g`);
  const shift = { '': 0, k: 10, m: 20, g: 30 }[match[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(match[1]) * 2 ** shift;
}

/** The dance, undone in reverse when a step fails. Returns the snapshot's /dev/ublkbN. */
export async function createSnapshot(send: Send, options: SnapshotCreateOptions): Promise<string> {
  const [report] = await send({ verb: 'table', name: options.origin, inactive: false });
  const origin = originTable(report!);
  if (origin.type === 'snapshot-merge') throw new Error(`${options.origin} is merging a snapshot: wait for the merge to finish`);
  const cowPath = path.resolve(options.cowPath);
  let createdCow = false;
  if (options.cowBytes !== undefined) {
    const file = await fsp.open(cowPath, 'wx').catch((error: NodeJS.ErrnoException) => {
      throw new Error(`cannot create COW file ${cowPath}: ${error.code === 'EEXIST' ? 'it exists (drop --size to use it)' : error.message}`);
    });
    createdCow = true;
    try {
      await file.truncate(options.cowBytes); // sparse and zero: a blank COW, which the store initialises
    } finally {
      await file.close();
    }
  }
  const undo: Array<() => Promise<unknown>> = [];
  try {
    const [info] = await send({ verb: 'info', name: options.origin });
    if (!info!.suspended) {
      await send({ verb: 'suspend', name: options.origin, noflush: false });
      undo.push(() => send({ verb: 'resume', name: options.origin }));
    }
    if (origin.type === 'linear') {
      await send({ verb: 'reload', name: options.origin, table: `0 ${origin.lengthSectors} snapshot-origin ${origin.device}\n` });
      undo.unshift(() => send({ verb: 'reload', name: options.origin, table: `0 ${origin.lengthSectors} linear ${origin.device} 0\n` }));
    }
    const created = await send({
      verb: 'create',
      name: options.snapshot,
      table: `0 ${origin.lengthSectors} snapshot ${origin.device} ${cowPath} ${options.store} ${options.chunkSectors}\n`,
      options: { readOnly: false },
    });
    await send({ verb: 'resume', name: options.origin });
    return created.blockPath;
  } catch (error) {
    for (const step of undo) await step().catch(() => undefined);
    if (createdCow) await fsp.rm(cowPath, { force: true });
    throw error;
  }
}

export interface MergeProgress {
  readonly snapshot: string;
  readonly origin: string;
  /** Sectors of exceptions merged so far and in all (the exceptions there were when the wait began). */
  readonly done: number;
  readonly total: number;
  readonly finished: boolean;
}

/**
 * lvconvert --merge, as LVM does it: with the snapshot and the origin suspended, the origin's
 * table becomes snapshot-merge over the same COW; its resume takes the live snapshot's exceptions
 * over (exception handover, spec §5.3), so nothing is re-read from the COW and records not yet on
 * disk are kept; the snapshot device, Invalid from then on, is removed. The origin shows the
 * snapshot's contents at once. With `wait`, follows the merge to its end, then puts
 * snapshot-origin back.
 */
export async function mergeSnapshot(send: Send, snapshot: string, wait: boolean, report: (progress: MergeProgress) => void): Promise<void> {
  const [snapReport] = await send({ verb: 'table', name: snapshot, inactive: false });
  const line = snapReport!.targets.length === 1 ? snapshotLine(snapReport!.targets[0]!) : undefined;
  if (line === undefined) throw new Error(`${snapshot} is not a snapshot device (one snapshot line)`);
  const originName = await findOriginDevice(send, line.origin);
  // The snapshot device goes away once the merge has begun: refuse before anything changes.
  const [snapInfo] = await send({ verb: 'info', name: snapshot });
  if (snapInfo!.openCount > 0) throw new Error(`${snapshot} is open: close it before merging it`);
  const [originInfo] = await send({ verb: 'info', name: originName });

  const undo: Array<() => Promise<unknown>> = [];
  try {
    if (!snapInfo!.suspended) {
      await send({ verb: 'suspend', name: snapshot, noflush: false });
      undo.unshift(() => send({ verb: 'resume', name: snapshot }));
    }
    if (!originInfo!.suspended) {
      await send({ verb: 'suspend', name: originName, noflush: false });
      undo.unshift(() => send({ verb: 'resume', name: originName }));
    }
    await send({ verb: 'reload', name: originName, table: `0 ${line.lengthSectors} snapshot-merge ${line.origin} ${line.cow} ${line.store} ${line.chunkSectors}\n` });
    // A failed resume leaves the merge table live and the origin suspended: put snapshot-origin back first.
    undo.unshift(() => send({ verb: 'reload', name: originName, table: `0 ${line.lengthSectors} snapshot-origin ${line.origin}\n` }));
    await send({ verb: 'resume', name: originName });
  } catch (error) {
    for (const step of undo) await step().catch(() => undefined);
    throw error;
  }
  // The Invalid snapshot goes while the merge runs (removing a device takes a while: the kernel
  // tears its disk down); its failure is reported once the rest is done.
  const removal = send({ verb: 'remove', name: snapshot }).then(
    () => undefined,
    (error: unknown) => new Error(`the merge of ${snapshot} into ${originName} has begun, but ${snapshot} (now Invalid) could not be removed: ${error instanceof Error ? error.message : String(error)}`),
  );
  const removed = async (): Promise<void> => {
    const failure = await removal;
    if (failure !== undefined) throw failure;
  };
  if (!wait) return removed();

  let total: number | undefined;
  for (;;) {
    const [status] = await send({ verb: 'status', name: originName });
    const usage = parseUsage(status!.targets[0]!.text);
    if (usage.state !== 'ok') throw new Error(`merge of ${snapshot} into ${originName}: ${usage.state}`);
    const remainingSectors = usage.allocatedSectors - usage.metadataSectors;
    total ??= remainingSectors;
    const finished = remainingSectors === 0;
    report({ snapshot, origin: originName, done: total - remainingSectors, total, finished });
    if (finished) break;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  await removed();
  await send({ verb: 'suspend', name: originName, noflush: false });
  await send({ verb: 'reload', name: originName, table: `0 ${line.lengthSectors} snapshot-origin ${line.origin}\n` });
  await send({ verb: 'resume', name: originName });
}

/** The device whose table is snapshot-origin (or -merge) over `originDevice`. */
async function findOriginDevice(send: Send, originDevice: string): Promise<string> {
  const reports = await send({ verb: 'table', inactive: false });
  const found = reports.find((report) => {
    const only = report.targets.length === 1 ? report.targets[0]! : undefined;
    return (only?.type === 'snapshot-origin' || only?.type === 'snapshot-merge') && only.text.split(' ')[0] === originDevice;
  });
  if (found === undefined) throw new Error(`no device has a snapshot-origin table over ${originDevice}`);
  return found.name;
}

export interface SnapshotListing {
  readonly snapshot: string;
  readonly origin: string | null;
  readonly cow: string;
  readonly store: string;
  readonly chunkSectors: number;
  readonly status: string;
  /** Data sectors used out of the COW's, in percent (null when Invalid/Overflow). */
  readonly usedPercent: number | null;
}

export async function listSnapshots(send: Send): Promise<SnapshotListing[]> {
  const [tables, statuses] = await Promise.all([send({ verb: 'table', inactive: false }), send({ verb: 'status' })]);
  const originByDevice = new Map<string, string>();
  for (const report of tables) {
    const only = report.targets.length === 1 ? report.targets[0]! : undefined;
    if (only?.type === 'snapshot-origin' || only?.type === 'snapshot-merge') originByDevice.set(only.text.split(' ')[0]!, report.name);
  }
  const listings: SnapshotListing[] = [];
  for (const report of tables) {
    const line = report.targets.length === 1 ? snapshotLine(report.targets[0]!) : undefined;
    if (line === undefined) continue;
    const status = statuses.find((s) => s.name === report.name)?.targets[0]?.text ?? '';
    const usage = parseUsage(status);
    listings.push({
      snapshot: report.name,
      origin: originByDevice.get(line.origin) ?? null,
      cow: line.cow,
      store: line.store,
      chunkSectors: line.chunkSectors,
      status,
      usedPercent: usage.state === 'ok' ? Math.round((1000 * usage.allocatedSectors) / usage.totalSectors) / 10 : null,
    });
  }
  return listings;
}

export function formatSnapshotList(listings: readonly SnapshotListing[]): string {
  const rows = [['SNAPSHOT', 'ORIGIN', 'COW', 'STORE', 'CHUNK', 'USE%'], ...listings.map((l) => [
    l.snapshot, l.origin ?? '-', l.cow, l.store, String(l.chunkSectors), l.usedPercent === null ? l.status : l.usedPercent.toFixed(1),
  ])];
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return rows.map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ')).join('\n') + '\n';
}
