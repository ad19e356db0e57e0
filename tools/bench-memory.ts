/**
 * Daemon memory (issue 11: at most 100 MiB with 4 devices of depth 128): a fresh daemon serves 4
 * linear devices (1 queue x 128 each) over quarters of the bench's tmpfs file; fio 4k random
 * writes at QD 128 run on each in turn, so every tag of every device has carried a request;
 * then VmRSS and VmHWM of the daemon. Also its RSS right after creating the devices, before any
 * I/O. Never throws: a failure is recorded in `error` beside what was measured.
 */
import { fio } from './bench-common';
import { BenchDaemon, type DaemonMemory } from './bench-daemon';
import { queueLoopEnv, type DaemonPartOptions, type QueueLoop } from './bench-queue-loop';

export type MemoryBenchOptions = DaemonPartOptions;

export interface MemoryResult {
  readonly queueLoop: QueueLoop;
  readonly afterCreate: DaemonMemory;
  readonly afterFio: DaemonMemory;
}

export interface MemoryReport {
  readonly devices: number;
  readonly depth: number;
  readonly goalMiB: number;
  readonly results: MemoryResult[];
  error?: string;
}

const DEVICES = 4;
const DEPTH = 128;
const GOAL_MIB = 100;

export async function runMemoryBench(o: MemoryBenchOptions): Promise<MemoryReport> {
  const report: MemoryReport = { devices: DEVICES, depth: DEPTH, goalMiB: GOAL_MIB, results: [] };
  for (const mode of o.queueLoops) {
    const daemon = new BenchDaemon(o.dir, `memory-${mode}`, queueLoopEnv(mode));
    const names: string[] = [];
    try {
      const quarterSectors = Math.floor(o.backingSectors / DEVICES);
      const paths: string[] = [];
      for (let i = 0; i < DEVICES; i++) {
        const name = `bench-mem-${i}`;
        paths.push(await daemon.create(name, `0 ${quarterSectors} linear ${o.backingPath} ${i * quarterSectors}`, { queues: 1, depth: DEPTH }));
        names.push(name);
      }
      const afterCreate = daemon.memory();
      for (const path of paths) await fio({ path, rw: 'randwrite', blockSize: '4k', iodepth: DEPTH, runtimeSeconds: o.runtimeSeconds });
      const afterFio = daemon.memory();
      report.results.push({ queueLoop: mode, afterCreate, afterFio });
      o.log(`  memory ${mode.padEnd(7)} after create RSS ${afterCreate.rssMiB} MiB; after fio own ${afterFio.ownMiB} MiB, RSS ${afterFio.rssMiB} MiB (backing mapped ${afterFio.mappedBackingMiB}), peak ${afterFio.peakMiB} MiB`);
    } catch (error) {
      report.error = (error as Error).message;
    } finally {
      for (const name of names.reverse()) await daemon.remove(name).catch((e) => o.log(`memory cleanup: ${(e as Error).message}`));
      await daemon.stop().catch((e) => o.log(`memory cleanup: ${(e as Error).message}`));
    }
  }
  return report;
}

export function formatMemoryReport(report: MemoryReport): string {
  const lines = ['', `daemon memory, ${report.devices} linear devices x 1 queue x ${report.depth}, after fio QD ${report.depth} on each (goal <= ${report.goalMiB} MiB)`];
  for (const r of report.results) {
    // Held to the goal: the daemon's own memory. The tmpfs backing's pages it maps to serve in
    // place are the files' memory (they count in VmRSS and VmHWM, which the kernel cannot split).
    const met = r.afterFio.ownMiB <= report.goalMiB ? 'ok' : `over ${report.goalMiB}`;
    lines.push(
      `  queue loop ${r.queueLoop.padEnd(7)} own ${r.afterFio.ownMiB} MiB (${met}); RSS ${r.afterFio.rssMiB} MiB (THP ${r.afterFio.anonHugePagesMiB}, ` +
        `backing mapped ${r.afterFio.mappedBackingMiB}), peak ${r.afterFio.peakMiB} MiB; ${r.afterCreate.rssMiB} MiB before any I/O`,
    );
  }
  if (report.error !== undefined) lines.push(`memory bench FAILED: ${report.error.split('\n')[0]}`);
  return lines.join('\n');
}
