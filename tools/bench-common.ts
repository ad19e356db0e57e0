/**
 * What every part of `npm run bench` runs the same way: a command (stdout, or an error carrying
 * its stderr), and fio with the options every part shares (4k-style random I/O on an existing
 * block device, O_DIRECT through io_uring, time-based, one JSON summary for all its jobs).
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { basename } from 'node:path';
import { onlineCpus } from '../src/base/cpus';

/** Runs `file` and resolves to its stdout; rejects with the command and its stderr. */
export function run(file: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, [...args], { env, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

export const sh = (command: string, env?: NodeJS.ProcessEnv): Promise<string> => run('/bin/bash', ['-c', command], env);

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export type FioPattern = 'randread' | 'randwrite' | 'read' | 'write';

export interface FioSpec {
  readonly path: string;
  readonly rw: FioPattern;
  /** fio's bs, e.g. '4k' or '1M'. */
  readonly blockSize: string;
  /** Per job: with `jobs` > 1 the device sees jobs × iodepth. */
  readonly iodepth: number;
  readonly runtimeSeconds: number;
  /** Parallel fio jobs; with more than one, each is pinned to its own CPU (cpus_allowed_policy=split). */
  readonly jobs?: number;
  readonly rampSeconds?: number;
}

export interface FioMeasurement {
  readonly iops: number;
  readonly mibPerSecond: number;
  readonly meanLatencyUs: number;
  readonly maxLatencyUs: number;
}

/**
 * One fio run; figures are the sum (IOPS, bandwidth) or mean (latency) over its jobs. The device
 * must exist: fio may not create a file in its place (in the guest, a missing /dev node would
 * otherwise become a regular file on the tmpfs root and be measured instead).
 */
export async function fio(spec: FioSpec): Promise<FioMeasurement> {
  const jobs = spec.jobs ?? 1;
  const args = [
    '--name=bench', `--filename=${spec.path}`, '--allow_file_create=0', '--ioengine=io_uring', '--direct=1',
    `--rw=${spec.rw}`, `--bs=${spec.blockSize}`, `--iodepth=${spec.iodepth}`, `--numjobs=${jobs}`, '--group_reporting',
    '--time_based', `--runtime=${spec.runtimeSeconds}`, `--ramp_time=${spec.rampSeconds ?? 1}`, '--size=100%',
    '--randrepeat=0', '--norandommap', '--output-format=json',
  ];
  if (jobs > 1) args.push(`--cpus_allowed=${fioJobCpus(jobs).join(',')}`, '--cpus_allowed_policy=split');
  const out = await run('fio', args);
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  const side = spec.rw.endsWith('read') ? job.read : job.write;
  return {
    iops: Math.round(side.iops),
    mibPerSecond: Math.round(side.bw_bytes / (1 << 20)),
    meanLatencyUs: Math.round(side.lat_ns.mean / 1000),
    maxLatencyUs: Math.round(side.lat_ns.max / 1000),
  };
}

/**
 * Seconds of fio each way, after fio's own 1 s ramp, that warm a userspace device before any cell
 * counts: our daemon's request path is JIT code that V8 optimizes only after thousands of requests,
 * slower under TCG, and a fresh device's first cells measured that (bench-core.ts has figures; a
 * mirror's 4k randwrite at QD 1 ran at 215, 619 and 791 IOPS in three 4 s runs one after another).
 */
export const WARM_UP_SECONDS = 2;

/** Runs fio 4k random reads and writes at QD 32 on `path`, unmeasured (WARM_UP_SECONDS each), then 1 MiB ones when `largeToo`. */
export async function warmUp(path: string, largeToo = false): Promise<void> {
  for (const rw of ['randread', 'randwrite'] as const) await fio({ path, rw, blockSize: '4k', iodepth: 32, runtimeSeconds: WARM_UP_SECONDS });
  if (!largeToo) return;
  for (const rw of ['read', 'write'] as const) await fio({ path, rw, blockSize: '1M', iodepth: 8, runtimeSeconds: WARM_UP_SECONDS });
}

/** The CPUs fio() pins `jobs` parallel jobs to, one each, the first online ones (a single job is not pinned). */
export function fioJobCpus(jobs: number): number[] {
  return onlineCpus().slice(0, jobs);
}

/** Reads and writes the block layer completed on a device so far (/sys/block/NAME/stat). */
export async function completedIos(blockPath: string): Promise<number> {
  const name = blockPath.replace(/^\/dev\//, '');
  const fields = (await sh(`cat /sys/block/${name}/stat`)).trim().split(/\s+/).map(Number);
  return fields[0] + fields[4]; // reads completed, writes completed
}

/**
 * The I/O scheduler of the block device at `path` (/sys/block/NAME/queue/scheduler, the bracketed
 * one); 'none (bio-based)' for a device without an elevator at all (kernel dm's linear).
 */
export async function ioSchedulerOf(path: string): Promise<string> {
  const name = basename(await fsp.realpath(path));
  try {
    const line = await fsp.readFile(`/sys/block/${name}/queue/scheduler`, 'utf8');
    return /\[([^\]]+)\]/.exec(line)?.[1] ?? line.trim();
  } catch {
    return 'none (bio-based)';
  }
}

export function formatRatio(ratio: number): string {
  return Number.isFinite(ratio) ? ratio.toFixed(2) : '-';
}
