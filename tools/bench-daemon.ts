/**
 * A daemon of our own for one part of the bench: its own run, state and link directories (so no
 * saved table of another part comes back in it, and its pid file names only it), started by the
 * first `create` as a user's would be. Knows its pid, so the bench can read the process's CPU
 * time and memory from /proc.
 */
import { mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { completedIos, run, sh, sleep } from './bench-common';

const cli = join(resolve(__dirname, '..', '..'), 'bin', 'ublk-dm');

export interface DaemonMemory {
  /** VmRSS: resident now. */
  readonly rssMiB: number;
  /** VmHWM: the most it was ever resident. */
  readonly peakMiB: number;
  /** Of the resident memory, anonymous transparent huge pages (smaps_rollup AnonHugePages). */
  readonly anonHugePagesMiB: number;
  /**
   * Of the resident memory, the pages of tmpfs backing files that queue threads map to serve
   * them in place (RssShmem): the files' memory, which the daemon maps but does not add to.
   */
  readonly mappedBackingMiB: number;
  /** VmRSS without mappedBackingMiB: the daemon's own memory (RssAnon + RssFile). */
  readonly ownMiB: number;
}

export interface DeviceShape {
  readonly queues?: number;
  readonly depth?: number;
}

let clockTicksPerSecond: number | undefined;

async function clockTicks(): Promise<number> {
  clockTicksPerSecond ??= Number((await sh('getconf CLK_TCK')).trim()) || 100;
  return clockTicksPerSecond;
}

export class BenchDaemon {
  readonly env: NodeJS.ProcessEnv;
  private readonly pidFile: string;

  /** `label` names the directory; `extraEnv` reaches the daemon (e.g. UBLK_DM_QUEUE_LOOP). */
  constructor(work: string, readonly label: string, extraEnv: NodeJS.ProcessEnv = {}) {
    const dir = join(work, `daemon-${label}`);
    mkdirSync(dir, { recursive: true });
    this.env = {
      ...process.env, ...extraEnv,
      UBLK_DM_RUN_DIR: join(dir, 'run'), UBLK_DM_STATE_DIR: join(dir, 'state'), UBLK_DM_LINK_DIR: join(dir, 'links'),
    };
    this.pidFile = join(dir, 'run', 'ublk-dm.pid');
  }

  /** Our CLI against this daemon (started by the first request that needs it). */
  cli(...args: string[]): Promise<string> {
    return run(process.execPath, [cli, ...args], this.env);
  }

  /** Creates a device and resolves to its /dev/ublkbN. */
  async create(name: string, table: string, shape: DeviceShape = {}): Promise<string> {
    const options: string[] = [];
    if (shape.queues !== undefined) options.push('--queues', String(shape.queues));
    if (shape.depth !== undefined) options.push('--depth', String(shape.depth));
    return (await this.cli('create', name, '--table', table, ...options)).trim();
  }

  remove(name: string): Promise<string> {
    return this.cli('remove', name, '--retry');
  }

  pid(): number {
    return Number(readFileSync(this.pidFile, 'utf8').trim());
  }

  /** User plus system CPU time the daemon has used so far (utime + stime of /proc/PID/stat). */
  async cpuSeconds(): Promise<number> {
    return cpuTicksOfStat(readFileSync(`/proc/${this.pid()}/stat`, 'latin1')) / (await clockTicks());
  }

  memory(): DaemonMemory {
    const status = readFileSync(`/proc/${this.pid()}/status`, 'latin1');
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    // A 4k request faults in a whole 2 MiB page of a buffer when THP backs it: worth seeing.
    const rollup = readFileSync(`/proc/${this.pid()}/smaps_rollup`, 'latin1');
    const hugeKib = Number(/^AnonHugePages:\s+(\d+) kB/m.exec(rollup)?.[1] ?? NaN);
    return {
      rssMiB: Math.round(kib('VmRSS') / 1024),
      peakMiB: Math.round(kib('VmHWM') / 1024),
      anonHugePagesMiB: Math.round(hugeKib / 1024),
      mappedBackingMiB: Math.round(kib('RssShmem') / 1024),
      ownMiB: Math.round((kib('RssAnon') + kib('RssFile')) / 1024),
    };
  }

  /** Share of one CPU the daemon uses over `seconds` in which the bench sends it nothing. */
  async idleCpuPercent(seconds: number): Promise<number> {
    const before = await this.cpuSeconds();
    await sleep(seconds * 1000);
    return Math.round(((await this.cpuSeconds()) - before) / seconds * 1000) / 10;
  }

  /**
   * `shutdown --remove-devices` (a plain SIGTERM would leave recoverable devices in the kernel
   * for a next daemon), then SIGTERM if it is still there, and wait (up to 30 s) for the process
   * to be gone; nothing if it never started.
   */
  async stop(): Promise<void> {
    let pid: number;
    try {
      pid = this.pid();
    } catch {
      return;
    }
    await this.cli('shutdown', '--remove-devices').catch(() => '');
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      return;
    }
    for (let waitedMs = 0; waitedMs < 30_000; waitedMs += 50) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await sleep(50);
    }
    throw new Error(`bench daemon ${this.label} (pid ${pid}) still running 30 s after SIGTERM`);
  }
}

/** utime + stime, in clock ticks, from the text of /proc/PID/stat. */
export function cpuTicksOfStat(stat: string): number {
  const { userTicks, systemTicks } = cpuSplitOfStat(stat);
  return userTicks + systemTicks;
}

/** utime and stime of a /proc/PID/stat line, in clock ticks. */
export function cpuSplitOfStat(stat: string): { userTicks: number; systemTicks: number } {
  // Fields after the command name, which may hold spaces and parentheses: the last ')' ends it.
  // State is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { userTicks: Number(fields[11]), systemTicks: Number(fields[12]) };
}

/** voluntary_ctxt_switches of a /proc/PID/task/TID/status: how often the thread went to sleep. */
export function sleepsOfStatus(status: string): number {
  return Number(/^voluntary_ctxt_switches:\s+(\d+)$/m.exec(status)?.[1] ?? 0);
}

/** What a daemon has used so far: CPU split by mode, and sleeps summed over its threads. */
interface DaemonUse {
  readonly userSeconds: number;
  readonly systemSeconds: number;
  readonly sleeps: number;
}

async function daemonUse(pid: number): Promise<DaemonUse> {
  const ticks = await clockTicks();
  const { userTicks, systemTicks } = cpuSplitOfStat(readFileSync(`/proc/${pid}/stat`, 'latin1'));
  let sleeps = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      sleeps += sleepsOfStatus(readFileSync(`/proc/${pid}/task/${tid}/status`, 'latin1'));
    } catch {
      // a thread that ended meanwhile (an io_uring worker) takes its count with it
    }
  }
  return { userSeconds: userTicks / ticks, systemSeconds: systemTicks / ticks, sleeps };
}

/** Per I/O: the daemon's CPU (user + system, and each), and how often one of its threads slept. */
export interface CpuPerIo {
  readonly cpuMicrosPerIo: number;
  readonly userMicrosPerIo: number;
  readonly systemMicrosPerIo: number;
  /**
   * Voluntary context switches of all its threads (io_uring workers included). At QD 1 a
   * request costs at least one (the queue waits for the next); more means hops between threads.
   */
  readonly sleepsPerIo: number;
}

/**
 * Runs `work` (fio on `blockPath`) and measures the daemon's (or any server process's) CPU time per I/O the device completed
 * meanwhile: the I/O count is the block layer's, over the same window as the CPU time, so fio's
 * ramp-up counts on both sides.
 */
export async function withCpuPerIo<T>(daemon: { pid(): number }, blockPaths: readonly string[], work: () => Promise<T>): Promise<{ result: T } & CpuPerIo> {
  const countAll = async () => (await Promise.all(blockPaths.map(completedIos))).reduce((a, b) => a + b, 0);
  const iosBefore = await countAll();
  const before = await daemonUse(daemon.pid());
  const result = await work();
  const after = await daemonUse(daemon.pid());
  const ios = (await countAll()) - iosBefore;
  const perIo = (amount: number, scale: number) => (ios > 0 ? Math.round((amount * scale) / ios * 10) / 10 : NaN);
  const user = after.userSeconds - before.userSeconds;
  const system = after.systemSeconds - before.systemSeconds;
  return {
    result,
    cpuMicrosPerIo: perIo(user + system, 1e6),
    userMicrosPerIo: perIo(user, 1e6),
    systemMicrosPerIo: perIo(system, 1e6),
    sleepsPerIo: ios > 0 ? Math.round(((after.sleeps - before.sleeps) / ios) * 100) / 100 : NaN,
  };
}
