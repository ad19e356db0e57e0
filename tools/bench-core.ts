/**
 * The core table of `npm run bench` (issue 11): fio 4k randread / randwrite at QD 1 and QD 32 on
 * our `null` beside null_blk, and our `linear` over a tmpfs file beside a loop device over that
 * file (direct I/O, as `losetup --direct-io=on`) and dm-linear over that loop device; and our
 * `linear` over that loop device too beside dm-linear (ublk copies the tmpfs one's data in place; this one's
 * backing I/O goes through io_uring, as over a disk). Our devices have 1 queue of depth 128, as null_blk here. The cells are interleaved (every device for one
 * cell, then the next cell) so a drift of the guest's speed hits every column alike, and the
 * whole table is measured `rounds` times (each round's devices in the other order from the last):
 * a cell's figure is the median of its rounds, a ratio's spread the range of the rounds' ratios.
 *
 * With several queue-loop modes, each mode gets its own daemon (UBLK_DM_QUEUE_LOOP=mode), all
 * alive together, and each cell is measured on every mode; the kernel's devices once.
 * Also measured: the daemon's CPU time per I/O in every cell, and its memory after the runs.
 * With `ublksrv` (the path of the C server's `ublk`), its null, its loop over the tmpfs file and
 * its loop over the loop device stand beside ours in the same cells, with their CPU time per I/O
 * too (tools/bench-ublksrv.ts).
 * Never throws: a failure is recorded in `error` beside what was measured.
 */
import { fio, formatRatio, ioSchedulerOf, sh, warmUp } from './bench-common';
import { BenchDaemon, withCpuPerIo, type DaemonMemory } from './bench-daemon';
import { queueLoopEnv, type DaemonPartOptions, type QueueLoop } from './bench-queue-loop';
import { DEFAULT_ROUNDS, median, roundOrder, roundRatios, formatSpread } from './bench-rounds';
import { UblksrvDevice } from './bench-ublksrv';

export interface CoreBenchOptions extends DaemonPartOptions {
  /** ublksrv's `ublk` program: its null and loop are measured beside ours when given. */
  readonly ublksrv?: string;
  /** Times every cell is measured (default 3). */
  readonly rounds?: number;
}

type Pattern = 'randread' | 'randwrite';
type Kernel = 'null_blk' | 'loop' | 'dm-linear';
/** 'linear-loop': our linear over the loop device, whose backing I/O goes through io_uring as over a disk. */
type Ours = 'null' | 'linear' | 'linear-loop';
/**
 * The C server's devices: each the counterpart of one of ours. 'ublksrv-loop-dev' is its loop
 * over the loop device, beside our linear-loop: whether our gap to dm-linear there is ours or
 * every ublk server's under TCG.
 */
type CServer = 'ublksrv-null' | 'ublksrv-loop' | 'ublksrv-loop-dev';

export interface CoreCell {
  readonly device: Kernel | Ours | CServer;
  /** Set on our devices. */
  readonly queueLoop?: QueueLoop;
  readonly pattern: Pattern;
  readonly iodepth: number;
  /** The median over the rounds (as every figure here). */
  readonly iops: number;
  /** Each round's IOPS, in round order. */
  readonly roundIops: readonly number[];
  readonly meanLatencyUs: number;
  /** Ours and the C server's: the server's utime+stime over the run ÷ I/Os the device completed. */
  readonly cpuMicrosPerIo?: number;
  readonly userMicrosPerIo?: number;
  readonly systemMicrosPerIo?: number;
  /** Voluntary context switches of the daemon's threads per I/O (see CpuPerIo). */
  readonly sleepsPerIo?: number;
}

export interface CoreRatio {
  readonly ours: Ours;
  readonly queueLoop: QueueLoop;
  readonly kernel: Kernel;
  readonly pattern: Pattern;
  readonly iodepth: number;
  /** Of the two cells' medians. */
  readonly ratio: number;
  /** Round by round (the two devices ran next to each other in each). */
  readonly roundRatios: readonly number[];
  /** Issue 11's goal for this ratio, where it sets one. */
  readonly goal?: number;
}

/** Ours against the C server, or the C server against the kernel, in one cell. */
export interface CServerRatio {
  /** 'ours' is our device (in `queueLoop`) over the C server's; 'ublksrv' is the C server's over the kernel's. */
  readonly of: 'ours' | 'ublksrv';
  readonly queueLoop?: QueueLoop;
  readonly over: CServer | Kernel;
  readonly target: 'null' | 'linear' | 'linear-loop';
  readonly pattern: Pattern;
  readonly iodepth: number;
  readonly ratio: number;
  readonly roundRatios: readonly number[];
}

export interface CoreReport {
  readonly backingMiB: number;
  readonly runtimeSeconds: number;
  readonly rounds: number;
  readonly queues: 1;
  readonly depth: 128;
  /** Whether the loop device really used direct I/O (/sys/block/loopN/loop/dio). */
  loopDirectIo: boolean | null;
  readonly results: CoreCell[];
  readonly ratios: CoreRatio[];
  /** The `ublk` program measured beside ours, if any. */
  readonly ublksrv: string | null;
  readonly cServerRatios: CServerRatio[];
  /** Per queue loop: the daemon's memory after every run (3 devices). */
  readonly daemonMemory: Partial<Record<QueueLoop, DaemonMemory>>;
  /**
   * Per queue loop: the daemon's CPU use with its 3 devices idle, over the seconds right after the
   * last cell (a loop that went on polling after a burst shows here). Not right after the devices
   * are made: V8 then still compiles and collects start-up's garbage on its own threads (a probe
   * saw 13 % in one second of six there, and 0 % in every second after I/O).
   */
  readonly idleCpuPercent: Partial<Record<QueueLoop, number>>;
  /** Each device's I/O scheduler as measured (ours: 'none' unless told otherwise). */
  readonly schedulers: Record<string, string>;
  error?: string;
}

const PATTERNS: readonly Pattern[] = ['randread', 'randwrite'];
const IODEPTHS = [1, 32] as const;
const DEPTH = 128;
const IDLE_SECONDS = 3;

/** Issue 11: our device's IOPS ÷ the kernel's, at least. */
export const CORE_GOALS: ReadonlyArray<{ ours: Ours; kernel: Kernel; iodepth: number; goal: number }> = [
  { ours: 'null', kernel: 'null_blk', iodepth: 1, goal: 0.12 },
  { ours: 'null', kernel: 'null_blk', iodepth: 32, goal: 0.75 },
  { ours: 'linear', kernel: 'loop', iodepth: 1, goal: 0.65 },
  { ours: 'linear', kernel: 'loop', iodepth: 32, goal: 0.9 },
];

export async function runCoreBench(o: CoreBenchOptions): Promise<CoreReport> {
  const backingMiB = (o.backingSectors * 512) / (1024 * 1024);
  const rounds = o.rounds ?? DEFAULT_ROUNDS;
  const report: CoreReport = {
    backingMiB, runtimeSeconds: o.runtimeSeconds, rounds, queues: 1, depth: DEPTH, loopDirectIo: null,
    results: [], ratios: [], ublksrv: o.ublksrv ?? null, cServerRatios: [], daemonMemory: {}, idleCpuPercent: {}, schedulers: {},
  };
  const cleanups: Array<() => Promise<unknown>> = [];
  const daemons = o.queueLoops.map((mode) => ({ mode, daemon: new BenchDaemon(o.dir, `core-${mode}`, queueLoopEnv(mode)) }));
  try {
    const sizeSectors = o.backingSectors;
    await sh(`modprobe null_blk nr_devices=1 queue_mode=2 irqmode=0 gb=${Math.ceil(backingMiB / 1024)} bs=512 hw_queue_depth=${DEPTH} submit_queues=1`);
    cleanups.push(() => sh('rmmod null_blk'));
    const img = o.backingPath;
    const loop = (await sh(`losetup --direct-io=on -f --show ${img}`)).trim();
    cleanups.push(() => sh(`losetup -d ${loop}`));
    report.loopDirectIo = (await sh(`cat /sys/block/${loop.replace('/dev/', '')}/loop/dio`)).trim() === '1';
    if (!report.loopDirectIo) o.log(`  core: WARNING ${loop} did not take direct I/O: loop figures are buffered`);
    await sh(`dmsetup create bench-core-linear --table '0 ${sizeSectors} linear ${loop} 0'`);
    cleanups.push(() => sh('dmsetup remove bench-core-linear'));

    const kernelDevices: Array<[Kernel, string]> = [['null_blk', '/dev/nullb0'], ['loop', loop], ['dm-linear', '/dev/mapper/bench-core-linear']];
    const ourDevices: Array<{ device: Ours; mode: QueueLoop; daemon: BenchDaemon; path: string }> = [];
    for (const { mode, daemon } of daemons) {
      cleanups.push(() => daemon.stop());
      const tables = [['null', `0 ${sizeSectors} null`], ['linear', `0 ${sizeSectors} linear ${img} 0`], ['linear-loop', `0 ${sizeSectors} linear ${loop} 0`]] as const;
      for (const [device, table] of tables) {
        const name = `bench-core-${device}`;
        const path = await daemon.create(name, table, { queues: 1, depth: DEPTH });
        cleanups.push(() => daemon.remove(name));
        ourDevices.push({ device, mode, daemon, path });
      }
    }

    const cServerDevices = new Map<Kernel, { device: CServer; server: UblksrvDevice }>();
    if (o.ublksrv !== undefined) {
      const nullDevice = await UblksrvDevice.add(o.ublksrv, 90, 'null', { depth: DEPTH });
      cleanups.push(() => nullDevice.remove());
      cServerDevices.set('null_blk', { device: 'ublksrv-null', server: nullDevice });
      const loopDevice = await UblksrvDevice.add(o.ublksrv, 91, 'loop', { depth: DEPTH, backingPath: img });
      cleanups.push(() => loopDevice.remove());
      cServerDevices.set('loop', { device: 'ublksrv-loop', server: loopDevice });
      const loopDevDevice = await UblksrvDevice.add(o.ublksrv, 92, 'loop', { depth: DEPTH, backingPath: loop });
      cleanups.push(() => loopDevDevice.remove());
      cServerDevices.set('dm-linear', { device: 'ublksrv-loop-dev', server: loopDevDevice });
    }

    for (const [device, path] of kernelDevices) report.schedulers[device] = await ioSchedulerOf(path);
    for (const { device, mode, path } of ourDevices) report.schedulers[`ours-${device}-${mode}`] = await ioSchedulerOf(path);
    for (const { device, server } of cServerDevices.values()) report.schedulers[device] = await ioSchedulerOf(server.path);
    // Userspace servers warm up before any cell counts (warmUp says why): the first cell of a
    // fresh device was measured cold (in one boot, 3571 IOPS at randread QD 1 against 5664 in the
    // run after it; linear 1697 against 4023). The C server gets the same passes.
    for (const path of [...ourDevices.map((d) => d.path), ...[...cServerDevices.values()].map((c) => c.server.path)]) await warmUp(path);
    const runs: CoreRun[] = [];
    try {
      for (let round = 0; round < rounds; round++) {
        for (const pattern of PATTERNS) {
          for (const iodepth of IODEPTHS) {
            const spec = { rw: pattern, blockSize: '4k', iodepth, runtimeSeconds: o.runtimeSeconds } as const;
            const tag = `${`r${round + 1}`.padEnd(3)} ${pattern.padEnd(9)} QD${String(iodepth).padEnd(3)}`;
            // null_blk, ublksrv null, ours null ×modes, loop, ublksrv loop, dm-linear, ublksrv loop
            // over the loop device, ours linear and linear-loop ×modes: neighbours compare.
            const steps: Array<() => Promise<void>> = [];
            for (const [device, path] of kernelDevices) {
              steps.push(async () => {
                const m = await fio({ ...spec, path });
                runs.push({ round, device, pattern, iodepth, iops: m.iops, meanLatencyUs: m.meanLatencyUs });
                o.log(`  ${device.padEnd(18)} ${tag} ${String(m.iops).padStart(8)} IOPS`);
              });
              const c = cServerDevices.get(device);
              if (c) {
                steps.push(async () => {
                  const { result: m, ...use } = await withCpuPerIo(c.server, [c.server.path], () => fio({ ...spec, path: c.server.path }));
                  runs.push({ round, device: c.device, pattern, iodepth, iops: m.iops, meanLatencyUs: m.meanLatencyUs, ...use });
                  o.log(
                    `  ${c.device.padEnd(18)} ${tag} ${String(m.iops).padStart(8)} IOPS ` +
                      `${use.cpuMicrosPerIo} us CPU/IO (user ${use.userMicrosPerIo}, system ${use.systemMicrosPerIo}), ${use.sleepsPerIo} sleeps/IO`,
                  );
                });
              }
              const ours: readonly Ours[] = device === 'null_blk' ? ['null'] : device === 'dm-linear' ? ['linear', 'linear-loop'] : [];
              for (const d of ourDevices.filter((x) => ours.includes(x.device))) {
                steps.push(async () => {
                  const { result: m, ...use } = await withCpuPerIo(d.daemon, [d.path], () => fio({ ...spec, path: d.path }));
                  runs.push({ round, device: d.device, queueLoop: d.mode, pattern, iodepth, iops: m.iops, meanLatencyUs: m.meanLatencyUs, ...use });
                  o.log(
                    `  ours ${d.device.padEnd(11)} ${d.mode.padEnd(7)}    ${tag} ${String(m.iops).padStart(8)} IOPS ` +
                      `${use.cpuMicrosPerIo} us CPU/IO (user ${use.userMicrosPerIo}, system ${use.systemMicrosPerIo}), ${use.sleepsPerIo} sleeps/IO`,
                  );
                });
              }
            }
            for (const step of roundOrder(steps, round)) await step();
          }
        }
      }
    } finally {
      // What was measured stays in the report, even when a later round failed.
      report.results.push(...mergeRounds(runs));
    }
    for (const { mode, daemon } of daemons) report.idleCpuPercent[mode] = await daemon.idleCpuPercent(IDLE_SECONDS);
    for (const { mode, daemon } of daemons) report.daemonMemory[mode] = daemon.memory();
    report.ratios.push(...coreRatios(report.results, o.queueLoops));
    if (o.ublksrv !== undefined) report.cServerRatios.push(...cServerRatios(report.results, o.queueLoops));
  } catch (error) {
    report.error = (error as Error).message;
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((e) => o.log(`core cleanup: ${(e as Error).message}`));
  }
  return report;
}

/** One fio run of one cell in one round. */
export type CoreRun = Omit<CoreCell, 'roundIops'> & { readonly round: number };

/** The runs of each cell (device, queue loop, pattern, depth) as one cell: medians, and every round's IOPS. */
export function mergeRounds(runs: readonly CoreRun[]): CoreCell[] {
  const byCell = new Map<string, CoreRun[]>();
  for (const run of runs) {
    const key = `${run.device}/${run.queueLoop ?? ''}/${run.pattern}/${run.iodepth}`;
    const cell = byCell.get(key);
    if (cell) cell.push(run);
    else byCell.set(key, [run]);
  }
  return [...byCell.values()].map((cellRuns) => {
    const inOrder = [...cellRuns].sort((a, b) => a.round - b.round);
    const { device, queueLoop, pattern, iodepth } = inOrder[0];
    const middle = (figure: (r: CoreRun) => number | undefined) => median(inOrder.map((r) => figure(r) ?? NaN));
    const cpu = inOrder[0].cpuMicrosPerIo !== undefined
      ? {
          cpuMicrosPerIo: Math.round(middle((r) => r.cpuMicrosPerIo) * 10) / 10,
          userMicrosPerIo: Math.round(middle((r) => r.userMicrosPerIo) * 10) / 10,
          systemMicrosPerIo: Math.round(middle((r) => r.systemMicrosPerIo) * 10) / 10,
          sleepsPerIo: Math.round(middle((r) => r.sleepsPerIo) * 100) / 100,
        }
      : {};
    return {
      device, ...(queueLoop !== undefined ? { queueLoop } : {}), pattern, iodepth,
      iops: Math.round(middle((r) => r.iops)),
      roundIops: inOrder.map((r) => r.iops),
      meanLatencyUs: Math.round(middle((r) => r.meanLatencyUs)),
      ...cpu,
    };
  });
}

/** `results`' cell of `device` (ours in queue loop `mode`), if measured. */
function findCell(results: readonly CoreCell[], device: string, pattern: Pattern, iodepth: number, mode?: QueueLoop): CoreCell | undefined {
  return results.find((r) => r.device === device && r.pattern === pattern && r.iodepth === iodepth && r.queueLoop === mode);
}

/** Median over median, and round by round; NaN (printed '-') where either cell is missing. */
function ratioOfCells(ours: CoreCell | undefined, other: CoreCell | undefined): { ratio: number; roundRatios: number[] } {
  if (!ours || !other) return { ratio: NaN, roundRatios: [] };
  return { ratio: ours.iops / other.iops, roundRatios: roundRatios(ours.roundIops, other.roundIops) };
}

export function coreRatios(results: readonly CoreCell[], modes: readonly QueueLoop[]): CoreRatio[] {
  const ratios: CoreRatio[] = [];
  for (const queueLoop of modes) {
    for (const pattern of PATTERNS) {
      for (const iodepth of IODEPTHS) {
        for (const [ours, kernel] of [['null', 'null_blk'], ['linear', 'loop'], ['linear', 'dm-linear'], ['linear-loop', 'dm-linear']] as const) {
          const goal = CORE_GOALS.find((g) => g.ours === ours && g.kernel === kernel && g.iodepth === iodepth)?.goal;
          const of = ratioOfCells(findCell(results, ours, pattern, iodepth, queueLoop), findCell(results, kernel, pattern, iodepth));
          ratios.push({ ours, queueLoop, kernel, pattern, iodepth, ...of, ...(goal !== undefined ? { goal } : {}) });
        }
      }
    }
  }
  return ratios;
}

export function cServerRatios(results: readonly CoreCell[], modes: readonly QueueLoop[]): CServerRatio[] {
  const cell = (device: string, pattern: Pattern, iodepth: number, mode?: QueueLoop) => findCell(results, device, pattern, iodepth, mode);
  const ratios: CServerRatio[] = [];
  const pairs = [['null', 'ublksrv-null', 'null_blk'], ['linear', 'ublksrv-loop', 'loop'], ['linear-loop', 'ublksrv-loop-dev', 'dm-linear']] as const;
  for (const pattern of PATTERNS) {
    for (const iodepth of IODEPTHS) {
      for (const [target, server, kernel] of pairs) {
        for (const queueLoop of modes) {
          ratios.push({ of: 'ours', queueLoop, over: server, target, pattern, iodepth, ...ratioOfCells(cell(target, pattern, iodepth, queueLoop), cell(server, pattern, iodepth)) });
        }
        ratios.push({ of: 'ublksrv', over: kernel, target, pattern, iodepth, ...ratioOfCells(cell(server, pattern, iodepth), cell(kernel, pattern, iodepth)) });
      }
    }
  }
  return ratios;
}

/**
 * A ratio, its goal and its rounds' range: "0.52 <0.75 0.44-0.60" (short of the goal) or
 * "0.91 ok    0.85-0.97" (met).
 */
function againstGoal(ratio: CoreRatio | undefined): string {
  if (!ratio) return '-';
  const spread = formatSpread(ratio.roundRatios);
  if (ratio.goal === undefined) return `${formatRatio(ratio.ratio)} ${spread}`.trimEnd();
  return `${formatRatio(ratio.ratio)} ${ratio.ratio >= ratio.goal ? 'ok   ' : `<${ratio.goal.toFixed(2)}`} ${spread}`.trimEnd();
}

/** A ratio with its rounds' range: "0.55 0.48-0.61". */
function withSpread(ratio: { ratio: number; roundRatios: readonly number[] } | undefined): string {
  return ratio ? `${formatRatio(ratio.ratio)} ${formatSpread(ratio.roundRatios)}`.trimEnd() : '-';
}

export function formatCoreReport(report: CoreReport): string {
  const lines: string[] = [];
  const cell = (device: string, pattern: Pattern, iodepth: number, mode?: QueueLoop) => findCell(report.results, device, pattern, iodepth, mode);
  const modes = Object.keys(report.daemonMemory).length > 0 ? (Object.keys(report.daemonMemory) as QueueLoop[]) : [...new Set(report.results.flatMap((r) => (r.queueLoop ? [r.queueLoop] : [])))];
  for (const mode of modes) {
    const ratio = (ours: Ours, kernel: Kernel, pattern: Pattern, iodepth: number) =>
      report.ratios.find((r) => r.ours === ours && r.kernel === kernel && r.pattern === pattern && r.iodepth === iodepth && r.queueLoop === mode);
    lines.push(
      '', `fio 4k on ${report.backingMiB} MiB, 1 queue x ${report.depth}, ${report.runtimeSeconds} s runs: median IOPS of ${report.rounds} rounds, and ours/kernel ` +
        `against issue 11's goal with the rounds' range (queue loop: ${mode}; loop direct I/O: ${report.loopDirectIo})`,
    );
    lines.push(`pattern    QD  null_blk ours-null  ${'/null_blk'.padEnd(22)} |   loop  dm-linear ours-linear  ${'/loop'.padEnd(22)}  ${'/dm-linear'.padEnd(16)} | daemon us CPU/IO null linear`);
    for (const pattern of PATTERNS) {
      for (const iodepth of IODEPTHS) {
        const nb = cell('null_blk', pattern, iodepth), on = cell('null', pattern, iodepth, mode);
        const lp = cell('loop', pattern, iodepth), dl = cell('dm-linear', pattern, iodepth), ol = cell('linear', pattern, iodepth, mode);
        const n = (c: CoreCell | undefined, width: number) => String(c?.iops ?? '-').padStart(width);
        lines.push(
          `${pattern.padEnd(10)} ${String(iodepth).padStart(2)} ${n(nb, 9)} ${n(on, 9)}  ${againstGoal(ratio('null', 'null_blk', pattern, iodepth)).padEnd(22)} | ${n(lp, 6)} ${n(dl, 10)} ${n(ol, 11)}  ` +
            `${againstGoal(ratio('linear', 'loop', pattern, iodepth)).padEnd(22)}  ${againstGoal(ratio('linear', 'dm-linear', pattern, iodepth)).padEnd(16)} | ` +
            `${String(on?.cpuMicrosPerIo ?? '-').padStart(20)} ${String(ol?.cpuMicrosPerIo ?? '-').padStart(6)}`,
        );
      }
    }
    lines.push('', `ours linear over the loop device (backing I/O through io_uring, as over a disk) beside dm-linear over it (queue loop: ${mode})`);
    lines.push(`pattern    QD  dm-linear ours-linear-loop  ${'/dm-linear'.padEnd(16)} | daemon us CPU/IO, sleeps/IO`);
    for (const pattern of PATTERNS) {
      for (const iodepth of IODEPTHS) {
        const dl = cell('dm-linear', pattern, iodepth), ours = cell('linear-loop', pattern, iodepth, mode);
        lines.push(
          `${pattern.padEnd(10)} ${String(iodepth).padStart(2)} ${String(dl?.iops ?? '-').padStart(10)} ${String(ours?.iops ?? '-').padStart(16)}  ` +
            `${againstGoal(ratio('linear-loop', 'dm-linear', pattern, iodepth)).padEnd(16)} | ${ours?.cpuMicrosPerIo ?? '-'}, ${ours?.sleepsPerIo ?? '-'}`,
        );
      }
    }
    const memory = report.daemonMemory[mode];
    if (memory) lines.push(`daemon memory after these runs (3 devices): own ${memory.ownMiB} MiB, RSS ${memory.rssMiB} MiB (THP ${memory.anonHugePagesMiB}, backing mapped ${memory.mappedBackingMiB}), peak ${memory.peakMiB} MiB; CPU while idle after them ${report.idleCpuPercent[mode]} %`);
  }
  if (report.ublksrv !== null) lines.push(...formatCServerTable(report, modes));
  const schedulers = Object.entries(report.schedulers ?? {});
  if (schedulers.length > 0) lines.push('', `I/O schedulers: ${schedulers.map(([device, scheduler]) => `${device} ${scheduler}`).join(', ')}`);
  if (report.error !== undefined) lines.push(`core bench FAILED: ${report.error.split('\n')[0]}`);
  return lines.join('\n');
}

/** Issue 11's table: ours over the C server, and the C server over the kernel, in this boot. */
function formatCServerTable(report: CoreReport, modes: readonly QueueLoop[]): string[] {
  const cell = (device: string, pattern: Pattern, iodepth: number) => findCell(report.results, device, pattern, iodepth);
  const ratio = (of: 'ours' | 'ublksrv', over: string, pattern: Pattern, iodepth: number, mode?: QueueLoop) =>
    withSpread(report.cServerRatios.find((r) => r.of === of && r.over === over && r.pattern === pattern && r.iodepth === iodepth && r.queueLoop === mode));
  const columns = PATTERNS.flatMap((pattern) => IODEPTHS.map((iodepth) => ({ pattern, iodepth })));
  const lines = ['', `the C server (${report.ublksrv}), 1 queue x ${report.depth}, in the same cells: IOPS ratios of the medians, with the rounds' range`];
  lines.push(`${''.padEnd(48)}${columns.map((c) => `${c.pattern} QD${c.iodepth}`.padStart(17)).join('')}`);
  const row = (label: string, values: string[]) => lines.push(`${label.padEnd(48)}${values.map((v) => v.padStart(17)).join('')}`);
  for (const mode of modes) {
    row(`ours null (${mode}) / ublksrv null`, columns.map((c) => ratio('ours', 'ublksrv-null', c.pattern, c.iodepth, mode)));
    row(`ours linear (${mode}) / ublksrv loop`, columns.map((c) => ratio('ours', 'ublksrv-loop', c.pattern, c.iodepth, mode)));
    row(`ours linear-loop (${mode}) / ublksrv loop-dev`, columns.map((c) => ratio('ours', 'ublksrv-loop-dev', c.pattern, c.iodepth, mode)));
  }
  row('ublksrv null / null_blk', columns.map((c) => ratio('ublksrv', 'null_blk', c.pattern, c.iodepth)));
  row('ublksrv loop / loop (dio)', columns.map((c) => ratio('ublksrv', 'loop', c.pattern, c.iodepth)));
  row('ublksrv loop-dev / dm-linear', columns.map((c) => ratio('ublksrv', 'dm-linear', c.pattern, c.iodepth)));
  const servers = [['null', 'ublksrv-null'], ['loop', 'ublksrv-loop'], ['loop-dev', 'ublksrv-loop-dev']] as const;
  const figures = [['IOPS', (c: CoreCell) => c.iops], ['us CPU/IO', (c: CoreCell) => c.cpuMicrosPerIo]] as const;
  for (const [figure, of] of figures) {
    for (const [label, device] of servers) {
      row(`ublksrv ${label} ${figure}`, columns.map((c) => {
        const measured = cell(device, c.pattern, c.iodepth);
        return String((measured === undefined ? undefined : of(measured)) ?? '-');
      }));
    }
  }
  lines.push('(loop-dev: ublksrv\'s loop over the loop device, the counterpart of our linear-loop)');
  return lines;
}
