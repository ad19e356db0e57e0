/**
 * The snapshot part of `npm run bench` (issue 7): our dm-snapshot family against the kernel's, in
 * the same boot, on the same kind of backing (tmpfs files; the kernel's over loop devices over
 * fresh copies of the same files). Called by bench.ts; every case builds its devices from scratch
 * and removes them (also on failure) before the next one.
 *
 *  0. ours warms up first on a rig of its own (1 snapshot, QD 32, short), unmeasured;
 *  1. fio 4k randwrite on the origin (O_DIRECT, io_uring) at QD 1 and 32 with 1 and 4 snapshots
 *     (chunk 4k = 8 sectors, P store), measured twice on the same devices:
 *       first-write: fio with its random map, not time-based, capped at --runtime: every write
 *                    hits a chunk never written before, so every write copies out the chunk to
 *                    every snapshot (the exception cost);
 *       rewrite:     after a dd of the first REWRITE MiB (all their chunks copied out), fio
 *                    time-based on that region only: every write finds its exceptions done.
 *  2. sequential overwrite of the whole origin (fio write bs=1M QD 8) with one snapshot: seconds.
 *  3. merge of that snapshot back into the origin: ours `ublk-dm snapshot merge SNAP --wait`,
 *     the kernel's the same steps by dmsetup (suspend origin, remove the snapshot, load
 *     snapshot-merge, resume, poll status every 250 ms like the CLI until allocated == metadata,
 *     put snapshot-origin back); then the origin is compared with the original image.
 */
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { join } from 'node:path';
import { DaemonError, sendRequestStartingDaemon } from '../src/cli/client';
import { createSnapshot, type Send } from '../src/cli/snapshot';
import { cliEntryScript } from '../src/base/package-files';
import { daemonPaths } from '../src/daemon/paths';
import type { Request } from '../src/wire/protocol';
import { run, sh, sleep, WARM_UP_SECONDS } from './bench-common';

export interface SnapshotBenchOptions {
  /** A scratch directory on tmpfs. */
  readonly dir: string;
  /** argv of our CLI, for the timed merge (set-up and teardown talk to the daemon directly). */
  readonly oursArgv: readonly string[];
  readonly env: NodeJS.ProcessEnv;
  readonly originMiB: number;
  readonly rewriteMiB: number;
  readonly runtimeSeconds: number;
  readonly log: (line: string) => void;
}

export interface OriginWriteResult {
  side: 'ours' | 'kernel';
  snapshots: number;
  iodepth: number;
  phase: 'first-write' | 'rewrite';
  iops: number;
  ios: number;
  meanLatencyUs: number;
  seconds: number;
}

export interface SeqMergeResult {
  side: 'ours' | 'kernel';
  overwriteSeconds: number;
  overwriteMiBps: number;
  /** The whole merge command: suspend … back to snapshot-origin. */
  mergeSeconds: number;
  /** From the first status after snapshot-merge resumed to the status that showed it done (250 ms polls). */
  mergeCopySeconds: number;
  /** Start of the command to that first status (suspend, remove the snapshot, load snapshot-merge, resume). */
  mergeSetupSeconds: number;
  /** The done status to the end of the command (back to snapshot-origin; ours: and the CLI's exit). */
  mergeFinishSeconds: number;
  /** The origin equals the original image after the merge. */
  verified: boolean;
}

export interface SnapshotReport {
  originMiB: number;
  chunkSectors: number;
  store: 'P';
  rewriteMiB: number;
  runtimeSeconds: number;
  originWrites: OriginWriteResult[];
  ratios: Array<{ snapshots: number; iodepth: number; phase: string; ratio: number }>;
  seqMerge: SeqMergeResult[];
  seqMergeRatios?: { overwriteSpeed: number; mergeSpeed: number; mergeCopySpeed: number };
  elapsedSeconds: number;
  /** Devices of the bench still present at the end (should be empty). */
  leftovers: string[];
  error?: string;
}

const CHUNK_SECTORS = 8;
const OURS_PREFIX = 'bsnap-';
const KERNEL_PREFIX = 'bsnapk-';

interface MergeTimes { total: number; setup: number; copy: number; finish: number }

interface FioJob { write: { iops: number; runtime: number; total_ios: number; io_bytes: number; lat_ns: { mean: number } } }

async function fio(path: string, extra: string[]): Promise<FioJob> {
  const out = await run('fio', [
    '--name=snapbench', `--filename=${path}`, '--allow_file_create=0', '--ioengine=io_uring', '--direct=1', '--numjobs=1',
    '--output-format=json', ...extra,
  ]);
  return JSON.parse(out.slice(out.indexOf('{'))).jobs[0] as FioJob;
}

/** One side's origin with N snapshots; `teardown` removes everything it made (also half-made). */
interface Rig {
  side: 'ours' | 'kernel';
  origin: string;
  snapshots: string[];
  teardown: () => Promise<void>;
}

class SnapshotBench {
  private readonly sectors: number;
  private readonly cowBytes: number;
  private readonly pristine: string;

  /**
   * To the daemon over its socket, as the CLI does (the snapshot set-up is the CLI's own
   * createSnapshot): a node start per step costs seconds under TCG and measures nothing here.
   */
  readonly send: Send;

  constructor(private readonly o: SnapshotBenchOptions) {
    const paths = daemonPaths(o.env);
    const cliScript = cliEntryScript();
    this.send = <R extends Request>(request: R) => sendRequestStartingDaemon(paths, cliScript, request, o.env);
    this.sectors = (o.originMiB * 1024 * 1024) / 512;
    // Every chunk copied out, plus the header and one 4 KiB metadata area per 256 exceptions, plus slack.
    const chunks = (o.originMiB * 1024 * 1024) / 4096;
    this.cowBytes = (chunks + 1 + Math.ceil(chunks / 256)) * 4096 + (1 << 20);
    this.pristine = join(o.dir, 'snap-pristine.img');
  }

  async prepare(): Promise<void> {
    await sh(`dd if=/dev/urandom of=${this.pristine} bs=1M count=${this.o.originMiB} status=none`);
  }

  /** Runs cleanup steps in reverse, logging (not throwing) failures. */
  private static async unwind(steps: Array<() => Promise<unknown>>, log: (l: string) => void): Promise<void> {
    for (const step of steps.reverse()) await step().catch((e: Error) => log(`  cleanup: ${e.message.split('\n')[0]}`));
  }

  async oursRig(snapshots: number): Promise<Rig> {
    const { dir, log } = this.o;
    const send = this.send;
    const file = join(dir, 'snap-ours-origin.img');
    const undo: Array<() => Promise<unknown>> = [];
    const teardown = () => SnapshotBench.unwind(undo, log);
    try {
      await sh(`cp ${this.pristine} ${file}`);
      undo.push(() => sh(`rm -f ${dir}/snap-ours-*`));
      const origin = (await send({ verb: 'create', name: `${OURS_PREFIX}origin`, table: `0 ${this.sectors} linear ${file} 0\n`, options: { readOnly: false } })).blockPath;
      const remove = (name: string) => async () => {
        for (let attempt = 1; ; attempt++) {
          try {
            await send({ verb: 'remove', name });
            return;
          } catch (e) {
            const code = e instanceof DaemonError ? e.code : undefined;
            if (!(await send({ verb: 'ls' })).some((d) => d.name === name)) return; // a merge removed it
            if (attempt >= 10) throw e;
            // Busy just after fio closed it, or left suspended by a failed step.
            if (code !== 'EBUSY') await send({ verb: 'resume', name }).catch(() => undefined);
            await sleep(200);
          }
        }
      };
      undo.push(remove(`${OURS_PREFIX}origin`));
      const snaps: string[] = [];
      for (let i = 0; i < snapshots; i++) {
        const name = `${OURS_PREFIX}s${i}`;
        // Pushed before: a create that fails half way leaves nothing, and removing nothing is only logged.
        undo.push(remove(name));
        snaps.push(await createSnapshot(send, {
          snapshot: name, origin: `${OURS_PREFIX}origin`, cowPath: join(dir, `snap-ours-cow${i}.img`), cowBytes: this.cowBytes, chunkSectors: CHUNK_SECTORS, store: 'P',
        }));
      }
      return { side: 'ours', origin, snapshots: snaps, teardown };
    } catch (e) {
      await teardown();
      throw e;
    }
  }

  async kernelRig(snapshots: number): Promise<Rig> {
    const { dir, log } = this.o;
    const file = join(dir, 'snap-k-origin.img');
    const undo: Array<() => Promise<unknown>> = [];
    const teardown = () => SnapshotBench.unwind(undo, log);
    const loop = async (path: string) => {
      const dev = (await sh(`losetup -f --show ${path}`)).trim();
      undo.push(() => sh(`losetup -d ${dev}`));
      return dev;
    };
    try {
      await sh(`cp ${this.pristine} ${file}`);
      undo.push(() => sh(`rm -f ${dir}/snap-k-*`));
      const loopO = await loop(file);
      const snaps: string[] = [];
      // The snapshots first, then the origin: its resume fixes the split size at their chunk size.
      for (let i = 0; i < snapshots; i++) {
        const cow = join(dir, `snap-k-cow${i}.img`);
        await sh(`truncate -s ${this.cowBytes} ${cow}`);
        const loopC = await loop(cow);
        const name = `${KERNEL_PREFIX}s${i}`;
        await sh(`dmsetup create ${name} --table '0 ${this.sectors} snapshot ${loopO} ${loopC} P ${CHUNK_SECTORS}'`);
        undo.push(() => sh(`if dmsetup info ${name} >/dev/null 2>&1; then dmsetup remove ${name}; fi`)); // a merge removes s0
        snaps.push(`/dev/mapper/${name}`);
      }
      await sh(`dmsetup create ${KERNEL_PREFIX}origin --table '0 ${this.sectors} snapshot-origin ${loopO}'`);
      undo.push(() => sh(`dmsetup remove --force ${KERNEL_PREFIX}origin`)); // --force: also when left suspended
      return { side: 'kernel', origin: `/dev/mapper/${KERNEL_PREFIX}origin`, snapshots: snaps, teardown };
    } catch (e) {
      await teardown();
      throw e;
    }
  }

  async originWrites(rig: Rig, snapshots: number, iodepth: number, runtimeSeconds = this.o.runtimeSeconds): Promise<OriginWriteResult[]> {
    const { rewriteMiB } = this.o;
    const common = ['--rw=randwrite', '--bs=4k', `--iodepth=${iodepth}`];
    const result = (phase: OriginWriteResult['phase'], job: FioJob): OriginWriteResult => ({
      side: rig.side, snapshots, iodepth, phase, iops: Math.round(job.write.iops), ios: job.write.total_ios,
      meanLatencyUs: Math.round(job.write.lat_ns.mean / 1000), seconds: job.write.runtime / 1000,
    });
    // Random map on, not time-based: each 4k block at most once, so each write is a first write.
    const first = result('first-write', await fio(rig.origin, [...common, '--size=100%', `--runtime=${runtimeSeconds}`]));
    await sh(`dd if=/dev/zero of=${rig.origin} bs=1M count=${rewriteMiB} oflag=direct status=none`);
    const again = result('rewrite', await fio(rig.origin, [...common, `--size=${rewriteMiB}M`, '--time_based', `--runtime=${runtimeSeconds}`, '--norandommap', '--randrepeat=0']));
    return [first, again];
  }

  async seqOverwrite(rig: Rig): Promise<{ seconds: number; mibps: number }> {
    const job = await fio(rig.origin, ['--rw=write', '--bs=1M', '--iodepth=8', '--size=100%']);
    const seconds = job.write.runtime / 1000;
    return { seconds, mibps: job.write.io_bytes / (1024 * 1024) / seconds };
  }

  /** `ublk-dm snapshot merge SNAP --wait --json`, timing the progress lines as they come. */
  async oursMerge(): Promise<MergeTimes> {
    const t0 = performance.now();
    const stamps: Array<{ t: number; done: boolean }> = [];
    await new Promise<void>((res, rej) => {
      const [file, ...argv] = this.o.oursArgv;
      const child = spawn(file!, [...argv, 'snapshot', 'merge', `${OURS_PREFIX}s0`, '--wait', '--json'], { env: this.o.env, stdio: ['ignore', 'pipe', 'pipe'] });
      let buffered = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => {
        buffered += d.toString();
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (line.trim()) stamps.push({ t: performance.now(), done: (JSON.parse(line) as { done: boolean }).done });
        }
      });
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', rej);
      child.on('close', (code) => (code === 0 ? res() : rej(new Error(`snapshot merge exited ${code}: ${stderr}`))));
    });
    const total = (performance.now() - t0) / 1000;
    const done = stamps.find((s) => s.done);
    if (!done) throw new Error('snapshot merge --wait ended without a done line');
    return { total, setup: (stamps[0]!.t - t0) / 1000, copy: (done.t - stamps[0]!.t) / 1000, finish: total - (done.t - t0) / 1000 };
  }

  async kernelMerge(): Promise<MergeTimes> {
    const origin = `${KERNEL_PREFIX}origin`;
    const table = (await sh(`dmsetup table ${KERNEL_PREFIX}s0`)).trim().split(' '); // 0 N snapshot loopO loopC P 8
    const [loopO, loopC] = [table[3]!, table[4]!];
    const t0 = performance.now();
    await sh(`dmsetup suspend ${origin} && dmsetup remove ${KERNEL_PREFIX}s0 && ` +
      `dmsetup reload ${origin} --table '0 ${this.sectors} snapshot-merge ${loopO} ${loopC} P ${CHUNK_SECTORS}' && dmsetup resume ${origin}`);
    let first: number | undefined;
    let done: number;
    for (;;) {
      const status = (await sh(`dmsetup status ${origin}`)).trim(); // 0 N snapshot-merge A/T M
      const now = performance.now();
      first ??= now;
      const m = /snapshot-merge (\d+)\/(\d+) (\d+)$/.exec(status);
      if (!m) throw new Error(`kernel merge: status ${status}`);
      if (m[1] === m[3]) { done = now; break; }
      await sleep(250);
    }
    await sh(`dmsetup suspend ${origin} && dmsetup reload ${origin} --table '0 ${this.sectors} snapshot-origin ${loopO}' && dmsetup resume ${origin}`);
    const end = performance.now();
    return { total: (end - t0) / 1000, setup: (first - t0) / 1000, copy: (done - first) / 1000, finish: (end - done) / 1000 };
  }

  async verify(device: string): Promise<boolean> {
    return sh(`cmp -s ${device} ${this.pristine}`).then(() => true, () => false);
  }

  async leftovers(): Promise<string[]> {
    const ourNames = (await this.send({ verb: 'ls' })).map((d) => d.name);
    const kernelNames = (await sh('dmsetup ls')).split('\n').map((l) => l.split(/\s/)[0]!);
    return [...ourNames, ...kernelNames].filter((n) => n.startsWith(OURS_PREFIX) || n.startsWith(KERNEL_PREFIX));
  }
}

async function withRig<T>(make: () => Promise<Rig>, body: (rig: Rig) => Promise<T>): Promise<T> {
  const rig = await make();
  try {
    return await body(rig);
  } finally {
    await rig.teardown();
  }
}

/** Never throws: a failure is recorded in `error` with what was measured before it. */
export async function runSnapshotBench(o: SnapshotBenchOptions): Promise<SnapshotReport> {
  const report: SnapshotReport = {
    originMiB: o.originMiB, chunkSectors: CHUNK_SECTORS, store: 'P', rewriteMiB: o.rewriteMiB, runtimeSeconds: o.runtimeSeconds,
    originWrites: [], ratios: [], seqMerge: [], leftovers: [], elapsedSeconds: 0,
  };
  const t0 = performance.now();
  const elapsed = () => `${Math.round((performance.now() - t0) / 1000)} s`;
  const bench = new SnapshotBench(o);
  try {
    await bench.prepare();
    // Our daemon's copy-on-write path warms up on a rig of its own, unmeasured (warmUp in
    // bench-common.ts says why): the first case measured was otherwise JIT start-up.
    await withRig(() => bench.oursRig(1), (rig) => bench.originWrites(rig, 1, 32, WARM_UP_SECONDS));
    for (const snapshots of [1, 4]) {
      for (const iodepth of [1, 32]) {
        for (const side of ['ours', 'kernel'] as const) {
          const rs = await withRig(() => (side === 'ours' ? bench.oursRig(snapshots) : bench.kernelRig(snapshots)), (rig) => bench.originWrites(rig, snapshots, iodepth));
          report.originWrites.push(...rs);
          for (const r of rs) o.log(`  ${side.padEnd(6)} origin randwrite ${snapshots} snap QD${String(iodepth).padEnd(3)} ${r.phase.padEnd(11)} ${String(r.iops).padStart(7)} IOPS  [${elapsed()}]`);
        }
      }
    }
    for (const side of ['ours', 'kernel'] as const) {
      const r = await withRig(() => (side === 'ours' ? bench.oursRig(1) : bench.kernelRig(1)), async (rig) => {
        const seq = await bench.seqOverwrite(rig);
        const merge = side === 'ours' ? await bench.oursMerge() : await bench.kernelMerge();
        const verified = await bench.verify(rig.origin);
        return {
          side, overwriteSeconds: seq.seconds, overwriteMiBps: Math.round(seq.mibps), mergeSeconds: merge.total, mergeCopySeconds: merge.copy,
          mergeSetupSeconds: merge.setup, mergeFinishSeconds: merge.finish, verified,
        };
      });
      report.seqMerge.push(r);
      o.log(`  ${side.padEnd(6)} seq overwrite ${r.overwriteSeconds.toFixed(2)} s, merge ${r.mergeSeconds.toFixed(2)} s (setup ${r.mergeSetupSeconds.toFixed(2)}, copy ${r.mergeCopySeconds.toFixed(2)}, finish ${r.mergeFinishSeconds.toFixed(2)}), verified ${r.verified}  [${elapsed()}]`);
    }
  } catch (e) {
    report.error = (e as Error).message;
    o.log(`  snapshot bench failed: ${report.error}`);
  }
  for (const r of report.originWrites.filter((x) => x.side === 'ours')) {
    const k = report.originWrites.find((x) => x.side === 'kernel' && x.snapshots === r.snapshots && x.iodepth === r.iodepth && x.phase === r.phase);
    if (k) report.ratios.push({ snapshots: r.snapshots, iodepth: r.iodepth, phase: r.phase, ratio: r.iops / k.iops });
  }
  const [so, sk] = [report.seqMerge.find((r) => r.side === 'ours'), report.seqMerge.find((r) => r.side === 'kernel')];
  if (so && sk) {
    report.seqMergeRatios = {
      overwriteSpeed: sk.overwriteSeconds / so.overwriteSeconds,
      mergeSpeed: sk.mergeSeconds / so.mergeSeconds,
      mergeCopySpeed: sk.mergeCopySeconds / so.mergeCopySeconds,
    };
  }
  report.leftovers = await bench.leftovers().catch((e: Error) => [`(could not list: ${e.message.split('\n')[0]})`]);
  await sh(`rm -f ${o.dir}/snap-*`).catch(() => undefined);
  report.elapsedSeconds = Math.round((performance.now() - t0) / 1000);
  return report;
}

export function formatSnapshotReport(r: SnapshotReport): string {
  const lines = ['', `snapshot: origin ${r.originMiB} MiB, chunk 4k, P store; fio 4k randwrite on the origin, IOPS (ours/kernel)`,
    'snaps  QD   first-write: ours  kernel  ratio  |  rewrite (first ' + r.rewriteMiB + ' MiB): ours  kernel  ratio'];
  const get = (side: string, s: number, qd: number, phase: string) => r.originWrites.find((x) => x.side === side && x.snapshots === s && x.iodepth === qd && x.phase === phase)?.iops ?? NaN;
  for (const s of [1, 4]) {
    for (const qd of [1, 32]) {
      const [fo, fk, ro, rk] = [get('ours', s, qd, 'first-write'), get('kernel', s, qd, 'first-write'), get('ours', s, qd, 'rewrite'), get('kernel', s, qd, 'rewrite')];
      lines.push(`${String(s).padStart(5)} ${String(qd).padStart(3)} ${String(fo).padStart(18)} ${String(fk).padStart(7)} ${(fo / fk).toFixed(2).padStart(6)}  | ${String(ro).padStart(29)} ${String(rk).padStart(7)} ${(ro / rk).toFixed(2).padStart(6)}`);
    }
  }
  const [so, sk] = [r.seqMerge.find((x) => x.side === 'ours'), r.seqMerge.find((x) => x.side === 'kernel')];
  if (so || sk) {
    const s = (x: number | undefined) => (x === undefined ? '-' : `${x.toFixed(2)} s`);
    lines.push(`1 snapshot, seconds (speed ratio = kernel s / ours s):`);
    lines.push(`  seq overwrite ${r.originMiB} MiB bs=1M QD8: ours ${s(so?.overwriteSeconds)}  kernel ${s(sk?.overwriteSeconds)}  ${r.seqMergeRatios?.overwriteSpeed.toFixed(2) ?? '-'}`);
    lines.push(`  merge (whole command):       ours ${s(so?.mergeSeconds)}  kernel ${s(sk?.mergeSeconds)}  ${r.seqMergeRatios?.mergeSpeed.toFixed(2) ?? '-'}`);
    lines.push(`  merge (copy, 250 ms polls):  ours ${s(so?.mergeCopySeconds)}  kernel ${s(sk?.mergeCopySeconds)}  ${r.seqMergeRatios?.mergeCopySpeed.toFixed(2) ?? '-'}`);
    lines.push(`  merge setup / finish:        ours ${s(so?.mergeSetupSeconds)} / ${s(so?.mergeFinishSeconds)}  kernel ${s(sk?.mergeSetupSeconds)} / ${s(sk?.mergeFinishSeconds)}`);
    lines.push(`  origin == original image after merge: ours ${so?.verified ?? '-'}, kernel ${sk?.verified ?? '-'}`);
  }
  lines.push(`(snapshot part took ${r.elapsedSeconds} s)`);
  if (r.error) lines.push(`snapshot bench FAILED (results above are partial): ${r.error.split('\n')[0]}`);
  if (r.leftovers.length) lines.push(`devices left behind: ${r.leftovers.join(' ')}`);
  return lines.join('\n');
}
