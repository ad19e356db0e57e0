/**
 * Queue scaling (issue 11): our `linear` (over the bench's tmpfs file) and `null` with 1, 2 and 4
 * ublk queues of depth 128, fio 4k random read and write at QD 32 in total. blk-mq maps its
 * hardware queues to CPUs, so one submitter reaches one queue: fio runs one job per CPU (pinned,
 * cpus_allowed_policy=split), each at QD 32 ÷ CPUs, and the same load goes to every queue count.
 * With more queues than CPUs the extra queues stay idle, as in the kernel; and blk-mq groups
 * neighbouring CPUs, so with CPUs 0 and 1 of 4 possible online both map to queue 0 of a 2-queue
 * device: in our guest the part runs with CPUs 0 and 2 online instead (bench-cpus.ts). The report
 * says how many queues fio's CPUs reach at each count (sysfs's mq/N/cpu_list). Reported: IOPS, the
 * ratio to 1 queue (issue 11: 2 and 4 queues must not shrink), and daemon CPU time per I/O, each
 * the median of `rounds` (bench-rounds.ts), with the range of the rounds' ratios. With `ublksrv`
 * (the C server's `ublk`), its null and its loop over the same file run with the same queue counts
 * in the same rounds, and each of ours is set against its counterpart at each count: whether a
 * shrinking cell is ours or every ublk server's on this guest.
 * Never throws: a failure is recorded in `error` beside what was measured.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { basename, join } from 'node:path';
import { onlineCpus, parseCpuList, possibleCpuCount } from '../src/base/cpus';
import { fio, fioJobCpus, formatRatio, WARM_UP_SECONDS } from './bench-common';
import { withCpusSpreadInGuest } from './bench-cpus';
import { BenchDaemon, withCpuPerIo } from './bench-daemon';
import { queueLoopEnv, type DaemonPartOptions, type QueueLoop } from './bench-queue-loop';
import { DEFAULT_ROUNDS, formatSpread, median, roundOrder, roundRatios } from './bench-rounds';
import { UblksrvDevice } from './bench-ublksrv';

export interface QueueBenchOptions extends DaemonPartOptions {
  /** Times every cell is measured (default 3). */
  readonly rounds?: number;
  /** ublksrv's `ublk` program: its null and loop are measured beside ours when given. */
  readonly ublksrv?: string;
}

type Pattern = 'randread' | 'randwrite';
type Ours = 'linear' | 'null';
/** The C server's counterparts of ours: its loop over the same file, and its null. */
type CServer = 'ublksrv-loop' | 'ublksrv-null';
type Device = Ours | CServer;
const COUNTERPART: Record<Ours, CServer> = { linear: 'ublksrv-loop', null: 'ublksrv-null' };
/** ublksrv device ids of the queue part: far from our daemons' and from the core part's (90-92). */
const FIRST_UBLKSRV_ID = 93;

/** One fio run of the queue part: a device of some queue count, one pattern, one round. */
export interface QueueRun {
  readonly device: Device;
  /** Set on our devices. */
  readonly queueLoop?: QueueLoop;
  readonly queues: number;
  readonly pattern: Pattern;
  readonly iops: number;
  readonly cpuMicrosPerIo: number;
}

/** A device, queue count and pattern over all rounds: `iops` and `cpuMicrosPerIo` are the rounds' medians. */
export interface QueueCell extends QueueRun {
  /** Each round's IOPS, in round order. */
  readonly roundIops: readonly number[];
  /** IOPS ÷ the same device's with 1 queue (medians). */
  ratioToOneQueue: number;
  /** The same, round by round (the two ran in the same round). */
  roundRatiosToOneQueue: number[];
}

export interface QueueReport {
  /** CPUs online; fio runs a job on each. */
  readonly cpus: number;
  /** Which they were (in our guest, spread over the possible ones: bench-cpus.ts). */
  readonly onlineCpus?: readonly number[];
  /** CPUs possible: ublk grants that many queues (the test guest has 4, 2 of them online). */
  readonly possibleCpus?: number;
  readonly fioJobs: number;
  readonly iodepthPerJob: number;
  readonly depth: number;
  readonly rounds: number;
  /** Queue counts not measured: ublk_drv grants at most one queue per possible CPU (nr_cpu_ids). */
  readonly skippedQueueCounts: number[];
  /** Per queue count: how many of the device's queues fio's CPUs map to (absent where sysfs does not say). */
  readonly queuesReached: Record<number, number>;
  readonly results: QueueCell[];
  /** With the C server: each of our cells ÷ its counterpart's with as many queues. */
  readonly cServerRatios: QueueRatio[];
  error?: string;
}

/** One of our cells against the C server's counterpart with the same queue count and pattern. */
export interface QueueRatio {
  readonly device: Ours;
  readonly queueLoop: QueueLoop;
  readonly queues: number;
  readonly pattern: Pattern;
  /** Of the medians. */
  readonly ratio: number;
  /** Round by round (the two ran in the same round). */
  readonly roundRatios: number[];
}

export const QUEUE_COUNTS = [1, 2, 4] as const;
const TOTAL_IODEPTH = 32;
const DEPTH = 128;
const PATTERNS: readonly Pattern[] = ['randread', 'randwrite'];

export function runQueueBench(o: QueueBenchOptions): Promise<QueueReport> {
  return withCpusSpreadInGuest(o.log, () => measureQueues(o));
}

async function measureQueues(o: QueueBenchOptions): Promise<QueueReport> {
  const fioJobs = Math.max(1, Math.min(cpus().length, 4));
  const iodepthPerJob = Math.ceil(TOTAL_IODEPTH / fioJobs);
  const possibleCpus = possibleCpuCount();
  const queueCounts = QUEUE_COUNTS.filter((q) => q <= possibleCpus);
  const report: QueueReport = {
    cpus: cpus().length, onlineCpus: onlineCpus(), possibleCpus, fioJobs, iodepthPerJob, depth: DEPTH, rounds: o.rounds ?? DEFAULT_ROUNDS, skippedQueueCounts: QUEUE_COUNTS.filter((q) => q > possibleCpus), queuesReached: {}, results: [],
    cServerRatios: [],
  };
  const cleanups: Array<() => Promise<unknown>> = [];
  try {
    // Ours and the C server's side by side, so that neighbours in a round compare.
    const devices: Array<{ device: Device; mode?: QueueLoop; queues: number; server: { pid(): number }; path: string }> = [];
    const noteQueuesReached = (queues: number, path: string) => {
      const reached = queuesReached(join('/sys/block', basename(path), 'mq'), fioJobCpus(fioJobs));
      if (reached !== undefined) report.queuesReached[queues] = reached;
    };
    const daemons = o.queueLoops.map((mode) => ({ mode, daemon: new BenchDaemon(o.dir, `queues-${mode}`, queueLoopEnv(mode)) }));
    for (const { daemon } of daemons) cleanups.push(() => daemon.stop());
    let ublksrvId = FIRST_UBLKSRV_ID;
    for (const queues of queueCounts) {
      for (const [device, table] of [['linear', `0 ${o.backingSectors} linear ${o.backingPath} 0`], ['null', `0 ${o.backingSectors} null`]] as const) {
        for (const { mode, daemon } of daemons) {
          const name = `bench-q${queues}-${device}`;
          const path = await daemon.create(name, table, { queues, depth: DEPTH });
          cleanups.push(() => daemon.remove(name));
          noteQueuesReached(queues, path);
          devices.push({ device, mode, queues, server: daemon, path });
        }
        if (o.ublksrv !== undefined) {
          const target = device === 'linear' ? 'loop' : 'null';
          const server = await UblksrvDevice.add(o.ublksrv, ublksrvId++, target, { queues, depth: DEPTH, backingPath: o.backingPath });
          cleanups.push(() => server.remove());
          noteQueuesReached(queues, server.path);
          devices.push({ device: COUNTERPART[device], queues, server, path: server.path });
        }
      }
    }
    // Warm the queue threads' JIT code before any cell counts (warmUp says why): the
    // devices with the most queues reach every thread fio's CPUs reach.
    const mostQueues = Math.max(...devices.map((d) => d.queues));
    for (const d of devices.filter((x) => x.queues === mostQueues)) {
      for (const rw of PATTERNS) await fio({ path: d.path, rw, blockSize: '4k', iodepth: iodepthPerJob, jobs: fioJobs, runtimeSeconds: WARM_UP_SECONDS });
    }
    const runs: QueueRun[] = [];
    try {
      for (let round = 0; round < report.rounds; round++) {
        for (const pattern of PATTERNS) {
          for (const d of roundOrder(devices, round)) {
            const { result, cpuMicrosPerIo } = await withCpuPerIo(d.server, [d.path], () =>
              fio({ path: d.path, rw: pattern, blockSize: '4k', iodepth: iodepthPerJob, jobs: fioJobs, runtimeSeconds: o.runtimeSeconds }));
            runs.push({ device: d.device, ...(d.mode !== undefined ? { queueLoop: d.mode } : {}), queues: d.queues, pattern, iops: result.iops, cpuMicrosPerIo });
            o.log(`  queues ${d.device.padEnd(12)} ${(d.mode ?? '').padEnd(7)} ${d.queues}q r${round + 1} ${pattern.padEnd(9)} ${String(result.iops).padStart(8)} IOPS ${cpuMicrosPerIo} us CPU/IO`);
          }
        }
      }
    } finally {
      // What was measured stays in the report, even when a later round failed.
      report.results.push(...queueCells(runs));
      report.cServerRatios.push(...cServerQueueRatios(report.results));
    }
  } catch (error) {
    report.error = (error as Error).message;
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((e) => o.log(`queues cleanup: ${(e as Error).message}`));
  }
  return report;
}

/**
 * The runs (in the order they ran) merged into one cell per device, queue loop, queue count and
 * pattern: medians, each round's IOPS in round order, and the ratio to the same device with 1
 * queue, overall and round by round (NaN and none when 1 queue was not measured).
 */
export function queueCells(runs: readonly QueueRun[]): QueueCell[] {
  const cells: QueueCell[] = [];
  const sameCell = (a: QueueRun, b: QueueRun): boolean =>
    a.device === b.device && a.queueLoop === b.queueLoop && a.queues === b.queues && a.pattern === b.pattern;
  for (const run of runs) {
    if (cells.some((cell) => sameCell(cell, run))) continue;
    const cellRuns = runs.filter((r) => sameCell(r, run));
    cells.push({
      device: run.device, queueLoop: run.queueLoop, queues: run.queues, pattern: run.pattern,
      iops: Math.round(median(cellRuns.map((r) => r.iops))),
      cpuMicrosPerIo: Math.round(median(cellRuns.map((r) => r.cpuMicrosPerIo)) * 10) / 10,
      roundIops: cellRuns.map((r) => r.iops),
      ratioToOneQueue: NaN, roundRatiosToOneQueue: [],
    });
  }
  for (const cell of cells) {
    const one = cells.find((c) => sameCell(c, { ...cell, queues: 1 }));
    cell.ratioToOneQueue = one ? cell.iops / one.iops : NaN;
    cell.roundRatiosToOneQueue = one ? roundRatios(cell.roundIops, one.roundIops) : [];
  }
  return cells;
}

/** Each of our cells against the C server's counterpart with the same queue count and pattern, where both ran. */
export function cServerQueueRatios(cells: readonly QueueCell[]): QueueRatio[] {
  const ratios: QueueRatio[] = [];
  for (const ours of cells) {
    const device = ours.device;
    if ((device !== 'linear' && device !== 'null') || ours.queueLoop === undefined) continue;
    const theirs = cells.find((c) => c.device === COUNTERPART[device] && c.queues === ours.queues && c.pattern === ours.pattern);
    if (!theirs) continue;
    ratios.push({
      device, queueLoop: ours.queueLoop, queues: ours.queues, pattern: ours.pattern,
      ratio: ours.iops / theirs.iops, roundRatios: roundRatios(ours.roundIops, theirs.roundIops),
    });
  }
  return ratios;
}

/**
 * How many hardware queues of a device requests from `submitterCpus` reach: blk-mq sends each to
 * the queue its CPU maps to, which `mqDir` (/sys/block/DEV/mq) lists as N/cpu_list. Undefined
 * when the directory cannot be read.
 */
export function queuesReached(mqDir: string, submitterCpus: readonly number[]): number | undefined {
  try {
    let reached = 0;
    for (const queue of readdirSync(mqDir)) {
      const mapped = parseCpuList(readFileSync(join(mqDir, queue, 'cpu_list'), 'utf8'));
      if (mapped.some((cpu) => submitterCpus.includes(cpu))) reached++;
    }
    return reached;
  } catch {
    return undefined;
  }
}

export function formatQueueReport(report: QueueReport): string {
  const lines = [
    '',
    `queue scaling: 4k at QD ${report.fioJobs * report.iodepthPerJob} (${report.fioJobs} fio jobs x QD ${report.iodepthPerJob}, one per CPU of ${report.cpus} online${report.onlineCpus ? ` (${report.onlineCpus.join(',')})` : ''}, ` +
      `${report.possibleCpus ?? report.cpus} possible), depth ${report.depth}; medians of ${report.rounds} rounds: IOPS, ratio to 1 queue ` +
      `with the rounds' range, the server's us CPU/IO`,
    `device       loop    pattern   ${'1 queue'.padEnd(32)}${'2 queues'.padEnd(32)}4 queues`,
  ];
  const rows = report.results.filter((r, i) => report.results.findIndex((o) => o.device === r.device && o.queueLoop === r.queueLoop && o.pattern === r.pattern) === i);
  for (const { device, queueLoop: mode, pattern } of rows) {
    const row = QUEUE_COUNTS.map((queues) => {
      const c = report.results.find((r) => r.device === device && r.queueLoop === mode && r.pattern === pattern && r.queues === queues);
      if (!c) return '-'.padEnd(30);
      const spread = formatSpread(c.roundRatiosToOneQueue);
      const ratio = queues === 1 ? '' : ` x${formatRatio(c.ratioToOneQueue)}${c.ratioToOneQueue >= 1 ? '' : '!'}${spread ? ` ${spread}` : ''}`;
      return `${String(c.iops).padStart(7)}${ratio} ${c.cpuMicrosPerIo}us`.padEnd(30);
    });
    lines.push(`${device.padEnd(12)} ${(mode ?? '-').padEnd(7)} ${pattern.padEnd(9)} ${row.join('  ')}`);
  }
  if (report.cServerRatios.length > 0) {
    lines.push('ours / the C server\'s counterpart (linear / ublksrv-loop, null / ublksrv-null) with as many queues: IOPS of the medians, with the rounds\' range');
    const ratioRows = report.cServerRatios.filter((r, i) => report.cServerRatios.findIndex((o) => o.device === r.device && o.queueLoop === r.queueLoop && o.pattern === r.pattern) === i);
    for (const { device, queueLoop, pattern } of ratioRows) {
      const row = QUEUE_COUNTS.map((queues) => {
        const r = report.cServerRatios.find((x) => x.device === device && x.queueLoop === queueLoop && x.pattern === pattern && x.queues === queues);
        if (!r) return '-'.padEnd(30);
        const spread = formatSpread(r.roundRatios);
        return `${`x${formatRatio(r.ratio)}`.padStart(7)}${spread ? ` ${spread}` : ''}`.padEnd(30);
      });
      lines.push(`${device.padEnd(12)} ${queueLoop.padEnd(7)} ${pattern.padEnd(9)} ${row.join('  ')}`);
    }
  }
  const reached = QUEUE_COUNTS.filter((queues) => report.queuesReached[queues] !== undefined).map((queues) => `${report.queuesReached[queues]} of ${queues}`);
  if (reached.length > 0) {
    lines.push(`queues fio's ${report.fioJobs} CPUs reach (blk-mq maps neighbouring CPUs to one queue; /sys/block/DEV/mq/N/cpu_list): ${reached.join(', ')}`);
  }
  if (report.skippedQueueCounts.length > 0) {
    lines.push(`not measured: ${report.skippedQueueCounts.join(', ')} queues (ublk_drv grants at most one queue per possible CPU; UBLK_DM_GUEST_MAX_CPUS=4 for more)`);
  }
  if (report.error !== undefined) lines.push(`queue bench FAILED: ${report.error.split('\n')[0]}`);
  return lines.join('\n');
}
