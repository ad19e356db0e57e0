/**
 * The mirror part of `npm run bench` (issue 8): our dm-raid1 against the kernel's, in the same
 * boot, on the same kind of backing (tmpfs files; the kernel's through loop devices over them).
 * For each side, from scratch:
 *   1. resync: a 2-leg mirror with a new (zeroed) disk log over leg 0 = random bytes and leg 1 =
 *      an empty file, timed from the create to the "in sync" event (dm's `wait`: the event comes
 *      when the last region is copied), then leg 1 compared with leg 0;
 *   2. fio 4k randwrite at QD 1 and QD 32 on that mirror, now in sync (every write marks its
 *      region in the disk log before it goes to both legs); ours is warmed up first (warmUp).
 * Leg 0 is one file both sides read (resync only reads it); leg 1 and the logs are fresh per side.
 */
import { performance } from 'node:perf_hooks';
import { join } from 'node:path';
import { sendRequestStartingDaemon } from '../src/cli/client';
import type { Send } from '../src/cli/snapshot';
import { cliEntryScript } from '../src/base/package-files';
import { daemonPaths } from '../src/daemon/paths';
import type { Request } from '../src/wire/protocol';
import { fio, run, sh, warmUp } from './bench-common';

/**
 * Whether a 2-leg mirror's status line (ours or the kernel's) says every region is in sync with
 * both legs alive: `... N/N 1 AA ...`.
 */
export function mirrorInSync(status: string): boolean {
  const m = / (\d+)\/(\d+) 1 AA /.exec(status);
  return m !== null && m[1] === m[2];
}

export interface MirrorBenchOptions {
  /** A scratch directory on tmpfs. */
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;
  readonly legMiB: number;
  readonly regionSectors: number;
  readonly runtimeSeconds: number;
  readonly log: (line: string) => void;
}

export interface MirrorSideResult {
  side: 'ours' | 'kernel';
  /** Create to the in-sync event. */
  resyncSeconds: number;
  resyncMiBps: number;
  /** Leg 1 equals leg 0 after the resync. */
  verified: boolean;
  randwrite: Array<{ iodepth: number; iops: number; meanLatencyUs: number }>;
}

export interface MirrorReport {
  legMiB: number;
  regionSectors: number;
  runtimeSeconds: number;
  sides: MirrorSideResult[];
  /** ours/kernel: > 1 means ours is faster (resync: kernel seconds / our seconds). */
  ratios?: { resyncSpeed: number; randwriteQd1: number; randwriteQd32: number };
  elapsedSeconds: number;
  leftovers: string[];
  error?: string;
}

const OURS_NAME = 'bmirror';
const KERNEL_NAME = 'bmirrork';

async function fioRandwrite(path: string, iodepth: number, runtimeSeconds: number): Promise<{ iodepth: number; iops: number; meanLatencyUs: number }> {
  const m = await fio({ path, rw: 'randwrite', blockSize: '4k', iodepth, runtimeSeconds });
  return { iodepth, iops: m.iops, meanLatencyUs: m.meanLatencyUs };
}

class MirrorBench {
  readonly send: Send;
  private readonly cliScript: string;
  private readonly sectors: number;
  private readonly leg0: string;

  constructor(private readonly o: MirrorBenchOptions) {
    this.cliScript = cliEntryScript();
    const paths = daemonPaths(o.env);
    this.send = <R extends Request>(request: R) => sendRequestStartingDaemon(paths, this.cliScript, request);
    this.sectors = (o.legMiB * 1024 * 1024) / 512;
    this.leg0 = join(o.dir, 'mirror-leg0.img');
  }

  async prepare(): Promise<void> {
    // Our daemon up before anything is timed, started by the CLI so that it gets the bench's
    // run and state directories (a daemon started from here would inherit this process's env).
    await run(process.execPath, [this.cliScript, 'ls'], this.o.env);
    await sh(`dd if=/dev/urandom of=${this.leg0} bs=1M count=${this.o.legMiB} status=none`);
  }

  /** Fresh leg 1 and log files for one side. */
  private async freshFiles(side: string): Promise<{ leg1: string; log: string }> {
    const leg1 = join(this.o.dir, `mirror-${side}-leg1.img`);
    const log = join(this.o.dir, `mirror-${side}-log.img`);
    await sh(`rm -f ${leg1} ${log} && truncate -s ${this.o.legMiB}M ${leg1} && truncate -s 1M ${log}`);
    return { leg1, log };
  }

  async ours(): Promise<MirrorSideResult> {
    const { leg1, log } = await this.freshFiles('ours');
    const table = `0 ${this.sectors} mirror disk 2 ${log} ${this.o.regionSectors} 2 ${this.leg0} 0 ${leg1} 0\n`;
    const t0 = performance.now();
    const created = await this.send({ verb: 'create', name: OURS_NAME, table, options: { readOnly: false } });
    try {
      await this.send({ verb: 'wait', name: OURS_NAME, eventNr: 0 });
      const resyncSeconds = (performance.now() - t0) / 1000;
      await this.expectInSync((await this.send({ verb: 'status', name: OURS_NAME }))[0]!.targets[0]!.text);
      const verified = await this.same(leg1);
      await warmUp(created.blockPath);
      const randwrite = [];
      for (const qd of [1, 32]) randwrite.push(await fioRandwrite(created.blockPath, qd, this.o.runtimeSeconds));
      return { side: 'ours', resyncSeconds, resyncMiBps: this.o.legMiB / resyncSeconds, verified, randwrite };
    } finally {
      await this.send({ verb: 'remove', name: OURS_NAME });
      await sh(`rm -f ${leg1} ${log}`);
    }
  }

  async kernel(): Promise<MirrorSideResult> {
    const { leg1, log } = await this.freshFiles('kernel');
    const undo: string[] = [];
    try {
      const loop = async (path: string) => {
        const dev = (await sh(`losetup -f --show ${path}`)).trim();
        undo.push(`losetup -d ${dev}`);
        return dev;
      };
      const [l0, l1, lg] = [await loop(this.leg0), await loop(leg1), await loop(log)];
      const t0 = performance.now();
      await sh(`dmsetup create ${KERNEL_NAME} --table '0 ${this.sectors} mirror disk 2 ${lg} ${this.o.regionSectors} 2 ${l0} 0 ${l1} 0'`);
      undo.push(`dmsetup remove --retry ${KERNEL_NAME}`);
      // dm's wait: returns once the event number is past 0, i.e. at the in-sync event.
      await sh(`dmsetup wait ${KERNEL_NAME} 0`);
      const resyncSeconds = (performance.now() - t0) / 1000;
      await this.expectInSync(await sh(`dmsetup status ${KERNEL_NAME}`));
      const verified = await this.same(leg1);
      const randwrite = [];
      for (const qd of [1, 32]) randwrite.push(await fioRandwrite(`/dev/mapper/${KERNEL_NAME}`, qd, this.o.runtimeSeconds));
      return { side: 'kernel', resyncSeconds, resyncMiBps: this.o.legMiB / resyncSeconds, verified, randwrite };
    } finally {
      for (const step of undo.reverse()) await sh(step).catch((e: Error) => this.o.log(`  cleanup: ${e.message.split('\n')[0]}`));
      await sh(`rm -f ${leg1} ${log}`);
    }
  }

  private async expectInSync(status: string): Promise<void> {
    if (!mirrorInSync(status)) throw new Error(`the event came but the mirror is not in sync: ${status.trim()}`);
  }

  /** Leg 1 equals leg 0 (read before fio writes to the mirror). */
  private same(leg1: string): Promise<boolean> {
    return sh(`cmp -s ${this.leg0} ${leg1}`).then(() => true, () => false);
  }

  async leftovers(): Promise<string[]> {
    const ourNames = (await this.send({ verb: 'ls' })).map((d) => d.name);
    const kernelNames = (await sh('dmsetup ls')).split('\n').map((l) => l.split(/\s/)[0]!);
    return [...ourNames, ...kernelNames].filter((n) => n === OURS_NAME || n === KERNEL_NAME);
  }
}

/** Never throws: a failure is recorded in `error` with what was measured before it. */
export async function runMirrorBench(o: MirrorBenchOptions): Promise<MirrorReport> {
  const report: MirrorReport = { legMiB: o.legMiB, regionSectors: o.regionSectors, runtimeSeconds: o.runtimeSeconds, sides: [], elapsedSeconds: 0, leftovers: [] };
  const t0 = performance.now();
  const bench = new MirrorBench(o);
  try {
    await bench.prepare();
    for (const side of ['kernel', 'ours'] as const) {
      const r = side === 'ours' ? await bench.ours() : await bench.kernel();
      report.sides.push(r);
      o.log(`  ${side.padEnd(6)} mirror resync ${o.legMiB} MiB ${r.resyncSeconds.toFixed(2)} s (${r.resyncMiBps.toFixed(0)} MiB/s, verified ${r.verified}); ` +
        `randwrite ${r.randwrite.map((w) => `QD${w.iodepth} ${w.iops} IOPS`).join(', ')}  [${Math.round((performance.now() - t0) / 1000)} s]`);
    }
  } catch (e) {
    report.error = (e as Error).message;
    o.log(`  mirror bench failed: ${report.error}`);
  }
  const [ours, kernel] = [report.sides.find((s) => s.side === 'ours'), report.sides.find((s) => s.side === 'kernel')];
  if (ours && kernel) {
    const qd = (s: MirrorSideResult, depth: number) => s.randwrite.find((w) => w.iodepth === depth)?.iops ?? NaN;
    report.ratios = {
      resyncSpeed: kernel.resyncSeconds / ours.resyncSeconds,
      randwriteQd1: qd(ours, 1) / qd(kernel, 1),
      randwriteQd32: qd(ours, 32) / qd(kernel, 32),
    };
  }
  report.leftovers = await bench.leftovers().catch((e: Error) => [`(could not list: ${e.message.split('\n')[0]})`]);
  await sh(`rm -f ${o.dir}/mirror-*`).catch(() => undefined);
  report.elapsedSeconds = Math.round((performance.now() - t0) / 1000);
  return report;
}

export function formatMirrorReport(r: MirrorReport): string {
  const [ours, kernel] = [r.sides.find((s) => s.side === 'ours'), r.sides.find((s) => s.side === 'kernel')];
  const secs = (s: MirrorSideResult | undefined) => (s ? `${s.resyncSeconds.toFixed(2)} s` : '-');
  const iops = (s: MirrorSideResult | undefined, qd: number) => String(s?.randwrite.find((w) => w.iodepth === qd)?.iops ?? '-');
  const lines = [
    '',
    `mirror: 2 legs on tmpfs files (kernel: loop devices over them), disk log, region ${r.regionSectors} sectors (ours/kernel)`,
    `  resync ${r.legMiB} MiB, create to in-sync event: ours ${secs(ours)}  kernel ${secs(kernel)}  speed ratio ${r.ratios?.resyncSpeed.toFixed(2) ?? '-'}` +
      `  (leg 1 == leg 0: ours ${ours?.verified ?? '-'}, kernel ${kernel?.verified ?? '-'})`,
    `  fio 4k randwrite QD1:  ours ${iops(ours, 1)}  kernel ${iops(kernel, 1)} IOPS  ratio ${r.ratios?.randwriteQd1.toFixed(2) ?? '-'}`,
    `  fio 4k randwrite QD32: ours ${iops(ours, 32)}  kernel ${iops(kernel, 32)} IOPS  ratio ${r.ratios?.randwriteQd32.toFixed(2) ?? '-'}`,
    `(mirror part took ${r.elapsedSeconds} s)`,
  ];
  if (r.error) lines.push(`mirror bench FAILED (results above are partial): ${r.error.split('\n')[0]}`);
  if (r.leftovers.length) lines.push(`devices left behind: ${r.leftovers.join(' ')}`);
  return lines.join('\n');
}
