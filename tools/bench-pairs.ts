/**
 * The target parts of `npm run bench` that compare one table of ours with the kernel's same table,
 * in the same boot, over the same kind of backing: tmpfs files for ours, loop devices over files of
 * the same size for the kernel's. Each side's device is built, fio runs the same workloads on both
 * (4k random read/write at QD 1 and 32, 1 MiB sequential read/write at QD 8) after ours is
 * warmed up the same ways, and the part reports ours/kernel ratios of IOPS. Never throws: a failure is recorded in `error` beside what
 * was measured, and every device and loop is removed.
 */
import { join } from 'node:path';
import { sendRequestStartingDaemon } from '../src/cli/client';
import { cliEntryScript } from '../src/base/package-files';
import { daemonPaths } from '../src/daemon/paths';
import type { Send } from '../src/cli/snapshot';
import { fio, sh, sleep, warmUp } from './bench-common';

export type Workload = 'randread 4k' | 'randwrite 4k' | 'read 1M' | 'write 1M';

const CASES: ReadonlyArray<{ workload: Workload; rw: 'randread' | 'randwrite' | 'read' | 'write'; bs: string; iodepths: number[] }> = [
  { workload: 'randread 4k', rw: 'randread', bs: '4k', iodepths: [1, 32] },
  { workload: 'randwrite 4k', rw: 'randwrite', bs: '4k', iodepths: [1, 32] },
  { workload: 'read 1M', rw: 'read', bs: '1M', iodepths: [8] },
  { workload: 'write 1M', rw: 'write', bs: '1M', iodepths: [8] },
];

/** A backing file of each side: random bytes (data a read must find) or zeros (a new leg, a new log). */
export interface BackingFile {
  readonly mib: number;
  readonly content: 'random' | 'zeros';
}

/** What a pair's builders get: the side's backing (files for ours, loop devices for the kernel's), and where to put undo steps. */
export interface SideContext {
  readonly backing: readonly string[];
  /** Runs at the end, last deferred first (a device before the loops under it). */
  defer(undo: () => Promise<unknown>): void;
}

export interface DevicePair {
  /** The part's name in the report and the device name on both sides. */
  readonly name: string;
  /** One line saying what is compared, printed above the table. */
  readonly title: string;
  /** The kernel target's name in the table heading, e.g. 'dm-striped'. */
  readonly kernelName: string;
  readonly files: readonly BackingFile[];
  /** Builds the kernel's device over `ctx.backing` (loop devices); resolves to its block path. */
  kernel(ctx: SideContext): Promise<string>;
  /** Builds ours over `ctx.backing` (the files); resolves to its block path. */
  ours(ctx: SideContext, send: Send): Promise<string>;
}

export interface PairResult {
  side: 'ours' | 'kernel';
  workload: Workload;
  iodepth: number;
  iops: number;
  mibPerSecond: number;
}

export interface PairReport {
  title: string;
  kernelName: string;
  results: PairResult[];
  ratios: Array<{ workload: Workload; iodepth: number; ratio: number }>;
  error?: string;
}

export interface PairBenchOptions {
  /** A scratch directory on tmpfs. */
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;
  readonly runtimeSeconds: number;
  readonly log: (line: string) => void;
}

export async function runPairBench(pair: DevicePair, o: PairBenchOptions): Promise<PairReport> {
  const report: PairReport = { title: pair.title, kernelName: pair.kernelName, results: [], ratios: [] };
  const paths = daemonPaths(o.env);
  const send: Send = (request) => sendRequestStartingDaemon(paths, cliEntryScript(), request, o.env);
  const undos: Array<() => Promise<unknown>> = [];
  const defer = (undo: () => Promise<unknown>) => undos.push(undo);
  try {
    const backing = { ours: [] as string[], kernel: [] as string[] };
    for (const [i, file] of pair.files.entries()) {
      for (const side of ['ours', 'kernel'] as const) {
        const path = join(o.dir, `${pair.name}-${side}-${i}.img`);
        const source = file.content === 'random' ? '/dev/urandom' : '/dev/zero';
        await sh(`dd if=${source} of=${path} bs=1M count=${file.mib} status=none`);
        defer(() => sh(`rm -f ${path}`));
        if (side === 'ours') backing.ours.push(path);
        else {
          const loop = (await sh(`losetup -f --show ${path}`)).trim();
          defer(() => sh(`losetup -d ${loop}`));
          backing.kernel.push(loop);
        }
      }
    }
    const kernelPath = await pair.kernel({ backing: backing.kernel, defer });
    const oursPath = await pair.ours({ backing: backing.ours, defer }, send);
    await warmUp(oursPath, true);

    for (const c of CASES) {
      for (const iodepth of c.iodepths) {
        const measured: Record<'ours' | 'kernel', number> = { ours: 0, kernel: 0 };
        for (const [side, path] of [['kernel', kernelPath], ['ours', oursPath]] as const) {
          const m = await fio({ path, rw: c.rw, blockSize: c.bs, iodepth, runtimeSeconds: o.runtimeSeconds });
          report.results.push({ side, workload: c.workload, iodepth, iops: m.iops, mibPerSecond: m.mibPerSecond });
          measured[side] = m.iops;
          o.log(`  ${pair.name} ${side.padEnd(6)} ${c.workload.padEnd(12)} QD${String(iodepth).padEnd(3)} ${String(m.iops).padStart(7)} IOPS ${String(m.mibPerSecond).padStart(5)} MiB/s`);
        }
        report.ratios.push({ workload: c.workload, iodepth, ratio: measured.ours / measured.kernel });
      }
    }
  } catch (error) {
    report.error = (error as Error).message;
  } finally {
    for (const undo of undos.reverse()) await undo().catch((e) => o.log(`${pair.name} cleanup: ${(e as Error).message.split('\n')[0]}`));
  }
  return report;
}

export function formatPairReport(report: PairReport): string {
  const lines = ['', report.title, `workload      QD ${report.kernelName.padStart(12)}     ours  ratio`];
  const iops = (side: 'ours' | 'kernel', r: { workload: Workload; iodepth: number }) =>
    report.results.find((x) => x.side === side && x.workload === r.workload && x.iodepth === r.iodepth)?.iops ?? NaN;
  for (const r of report.ratios) {
    lines.push(`${r.workload.padEnd(13)} ${String(r.iodepth).padStart(2)} ${String(iops('kernel', r)).padStart(12)} ${String(iops('ours', r)).padStart(8)} ${r.ratio.toFixed(2).padStart(6)}`);
  }
  if (report.error !== undefined) lines.push(`${report.title.split(',')[0]} bench FAILED: ${report.error.split('\n')[0]}`);
  return lines.join('\n');
}

/** Polls a status line until `done` says so; throws with the last line after `timeoutSeconds`. */
export async function pollStatus(read: () => Promise<string>, done: (status: string) => boolean, timeoutSeconds: number): Promise<void> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  for (;;) {
    const status = await read();
    if (done(status)) return;
    if (Date.now() > deadline) throw new Error(`gave up after ${timeoutSeconds} s waiting on status: ${status.trim()}`);
    await sleep(200);
  }
}
