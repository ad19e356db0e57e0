/**
 * The striped part of `npm run bench` (issue 9): our striped target against the kernel's
 * dm-striped in the same boot, over 4 stripes of tmpfs files (the kernel's over loop devices over
 * files of the same size), chunk 64 KiB. fio 4k random read/write at QD 1 and 32, and 1 MiB
 * sequential read/write at QD 8. Never throws: a failure is recorded in `error` beside what was
 * measured, and every device is removed.
 */
import { join } from 'node:path';
import { sendRequestStartingDaemon } from '../src/cli/client';
import { cliEntryScript } from '../src/base/package-files';
import { daemonPaths } from '../src/daemon/paths';
import type { Request, Results } from '../src/wire/protocol';
import { fio as runFio, sh } from './bench-common';

export interface StripedBenchOptions {
  /** A scratch directory on tmpfs. */
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;
  readonly stripeMiB: number;
  readonly runtimeSeconds: number;
  readonly log: (line: string) => void;
}

type Workload = 'randread 4k' | 'randwrite 4k' | 'read 1M' | 'write 1M';

export interface StripedResult {
  side: 'ours' | 'kernel';
  workload: Workload;
  iodepth: number;
  iops: number;
  mibPerSecond: number;
}

export interface StripedReport {
  stripes: number;
  chunkSectors: number;
  stripeMiB: number;
  results: StripedResult[];
  ratios: Array<{ workload: Workload; iodepth: number; ratio: number }>;
  error?: string;
}

const STRIPES = 4;
const CHUNK_SECTORS = 128;
const CASES: Array<{ workload: Workload; rw: string; bs: string; iodepths: number[] }> = [
  { workload: 'randread 4k', rw: 'randread', bs: '4k', iodepths: [1, 32] },
  { workload: 'randwrite 4k', rw: 'randwrite', bs: '4k', iodepths: [1, 32] },
  { workload: 'read 1M', rw: 'read', bs: '1M', iodepths: [8] },
  { workload: 'write 1M', rw: 'write', bs: '1M', iodepths: [8] },
];

async function fio(path: string, rw: string, bs: string, iodepth: number, runtimeSeconds: number): Promise<{ iops: number; mibPerSecond: number }> {
  const m = await runFio({ path, rw: rw as 'randread' | 'randwrite' | 'read' | 'write', blockSize: bs, iodepth, runtimeSeconds });
  return { iops: m.iops, mibPerSecond: m.mibPerSecond };
}

export async function runStripedBench(o: StripedBenchOptions): Promise<StripedReport> {
  const report: StripedReport = { stripes: STRIPES, chunkSectors: CHUNK_SECTORS, stripeMiB: o.stripeMiB, results: [], ratios: [] };
  const paths = daemonPaths(o.env);
  const send = <R extends Request>(request: R): Promise<Results[R['verb']]> =>
    sendRequestStartingDaemon(paths, cliEntryScript(), request, o.env);
  const cleanups: Array<() => Promise<unknown>> = [];
  try {
    const lengthSectors = (STRIPES * o.stripeMiB * 1024 * 1024) / 512;
    const files: string[] = [];
    for (let i = 0; i < STRIPES; i++) {
      for (const side of ['ours', 'kernel']) {
        const file = join(o.dir, `stripe-${side}-${i}.img`);
        await sh(`dd if=/dev/urandom of=${file} bs=1M count=${o.stripeMiB} status=none`);
        if (side === 'ours') files.push(file);
        else {
          const loop = (await sh(`losetup -f --show ${file}`)).trim();
          cleanups.push(() => sh(`losetup -d ${loop}`));
          files.push(loop);
        }
      }
    }
    const ourFiles = files.filter((_, i) => i % 2 === 0);
    const loops = files.filter((_, i) => i % 2 === 1);
    const areas = (devices: string[]) => devices.map((d) => `${d} 0`).join(' ');
    await sh(`dmsetup create bench-striped --table '0 ${lengthSectors} striped ${STRIPES} ${CHUNK_SECTORS} ${areas(loops)}'`);
    cleanups.push(() => sh('dmsetup remove bench-striped'));
    const created = await send({ verb: 'create', name: 'bench-striped', table: `0 ${lengthSectors} striped ${STRIPES} ${CHUNK_SECTORS} ${areas(ourFiles)}`, options: { readOnly: false } });
    cleanups.push(() => send({ verb: 'remove', name: 'bench-striped' }));

    for (const c of CASES) {
      for (const iodepth of c.iodepths) {
        for (const [side, path] of [['kernel', '/dev/mapper/bench-striped'], ['ours', created.blockPath]] as const) {
          const measured = await fio(path, c.rw, c.bs, iodepth, o.runtimeSeconds);
          report.results.push({ side, workload: c.workload, iodepth, ...measured });
          o.log(`  striped ${side.padEnd(6)} ${c.workload.padEnd(12)} QD${String(iodepth).padEnd(3)} ${String(measured.iops).padStart(7)} IOPS ${String(measured.mibPerSecond).padStart(5)} MiB/s`);
        }
        const ours = report.results.find((r) => r.side === 'ours' && r.workload === c.workload && r.iodepth === iodepth)!;
        const kernel = report.results.find((r) => r.side === 'kernel' && r.workload === c.workload && r.iodepth === iodepth)!;
        report.ratios.push({ workload: c.workload, iodepth, ratio: ours.iops / kernel.iops });
      }
    }
  } catch (error) {
    report.error = (error as Error).message;
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((e) => o.log(`striped cleanup: ${(e as Error).message}`));
  }
  return report;
}

export function formatStripedReport(report: StripedReport): string {
  const lines = ['', `striped, ${report.stripes} stripes of ${report.stripeMiB} MiB, chunk ${report.chunkSectors} sectors (ours/dm-striped)`, 'workload      QD   dm-striped     ours  ratio'];
  for (const r of report.ratios) {
    const kernel = report.results.find((x) => x.side === 'kernel' && x.workload === r.workload && x.iodepth === r.iodepth)!;
    const ours = report.results.find((x) => x.side === 'ours' && x.workload === r.workload && x.iodepth === r.iodepth)!;
    lines.push(`${r.workload.padEnd(13)} ${String(r.iodepth).padStart(2)} ${String(kernel.iops).padStart(12)} ${String(ours.iops).padStart(8)} ${r.ratio.toFixed(2).padStart(6)}`);
  }
  if (report.error !== undefined) lines.push(`striped bench FAILED: ${report.error.split('\n')[0]}`);
  return lines.join('\n');
}
