/**
 * `npm run bench`: ours against the kernel's equivalent on the same backing, in one run (one guest
 * boot when the host has no ublk, so the ratios compare like with like).
 *
 *   fio 4k randread / randwrite at QD 1 and QD 32 on: our `null` beside null_blk, and our `linear`
 *   over a tmpfs file beside a loop device over that file and dm-linear over that loop device;
 *   then the snapshot family against the kernel's dm-snapshot (tools/bench-snapshot.ts: origin
 *   random writes with 1 and 4 snapshots, sequential overwrite, merge; --no-snapshot skips it);
 *   then striped over 4 files against dm-striped over loop devices (tools/bench-striped.ts: 4k
 *   random and 1 MiB sequential; --no-striped skips it);
 *   then the mirror against the kernel's dm-mirror (tools/bench-mirror.ts: resync of 1 GiB, 4k
 *   random writes at QD 1 and 32 on the mirror in sync; --no-mirror skips it);
 *   then the recovery latency (tools/bench-recovery.ts: SIGKILL of the daemon under a writer, time
 *   until I/O flows again; --no-recovery-bench skips it); then kcopyd against dd
 *   (dist/tools/bench-kcopyd.js).
 *
 * Prints a table of IOPS and ours/kernel ratios and writes everything as JSON (--out).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { runSnapshotBench, formatSnapshotReport, type SnapshotReport } from './bench-snapshot';
import { runStripedBench, formatStripedReport, type StripedReport } from './bench-striped';
import { runMirrorBench, formatMirrorReport, type MirrorReport } from './bench-mirror';
import { runRecoveryBench, formatRecoveryReport, type RecoveryReport } from './bench-recovery';

const projectRoot = resolve(__dirname, '..', '..');
const cli = join(projectRoot, 'bin', 'ublk-dm');

interface Args {
  out: string; runtimeSeconds: number; fileMiB: number; kcopydMiB: number; skipKcopyd: boolean;
  skipSnapshot: boolean; skipStriped: boolean; snapshotMiB: number; snapshotRewriteMiB: number; snapshotRuntimeSeconds: number;
  skipMirror: boolean; mirrorMiB: number; mirrorRegionSectors: number; skipBasic: boolean;
  skipRecovery: boolean; recoveryRounds: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { out: join(projectRoot, 'bench-results', 'latest.json'), runtimeSeconds: 5, fileMiB: 512, kcopydMiB: 1024, skipKcopyd: false,
    skipSnapshot: false, skipStriped: false, snapshotMiB: 128, snapshotRewriteMiB: 8, snapshotRuntimeSeconds: 3,
    skipMirror: false, mirrorMiB: 1024, mirrorRegionSectors: 1024, skipBasic: false, skipRecovery: false, recoveryRounds: 3 };
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (k === '--out') { args.out = resolve(v); i++; }
    else if (k === '--runtime') { args.runtimeSeconds = Number(v); i++; }
    else if (k === '--file-mib') { args.fileMiB = Number(v); i++; }
    else if (k === '--kcopyd-mib') { args.kcopydMiB = Number(v); i++; }
    else if (k === '--no-kcopyd') args.skipKcopyd = true;
    else if (k === '--no-snapshot') args.skipSnapshot = true;
    else if (k === '--no-striped') args.skipStriped = true;
    else if (k === '--no-mirror') args.skipMirror = true;
    else if (k === '--mirror-mib') { args.mirrorMiB = Number(v); i++; }
    else if (k === '--mirror-region') { args.mirrorRegionSectors = Number(v); i++; }
    else if (k === '--no-basic') args.skipBasic = true; // only the target parts (snapshot, mirror, kcopyd)
    else if (k === '--no-recovery-bench') args.skipRecovery = true;
    else if (k === '--recovery-rounds') { args.recoveryRounds = Number(v); i++; }
    else if (k === '--snapshot-mib') { args.snapshotMiB = Number(v); i++; }
    else if (k === '--snapshot-rewrite-mib') { args.snapshotRewriteMiB = Number(v); i++; }
    else if (k === '--snapshot-runtime') { args.snapshotRuntimeSeconds = Number(v); i++; } // 16 fio runs: kept short
    else throw new Error(`unknown argument ${k}`);
  }
  return args;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((res, rej) => {
    execFile(file, args, { env, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) rej(new Error(`${file} ${args.join(' ')}: ${err.message}\n${stderr}`));
      else res(stdout);
    });
  });
}
const sh = (cmd: string, env?: NodeJS.ProcessEnv) => run('/bin/bash', ['-c', cmd], env);

type Pattern = 'randread' | 'randwrite';
interface FioResult { device: string; path: string; pattern: Pattern; iodepth: number; iops: number; meanLatencyUs: number }

async function fio(device: string, path: string, pattern: Pattern, iodepth: number, runtimeSeconds: number): Promise<FioResult> {
  const out = await run('fio', [
    '--name=bench', `--filename=${path}`, '--allow_file_create=0', '--ioengine=io_uring', '--direct=1',
    `--rw=${pattern}`, '--bs=4k', `--iodepth=${iodepth}`, '--numjobs=1', '--time_based', `--runtime=${runtimeSeconds}`,
    '--ramp_time=1', '--size=100%', '--randrepeat=0', '--norandommap', '--output-format=json',
  ]);
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  const side = pattern === 'randread' ? job.read : job.write;
  return { device, path, pattern, iodepth, iops: Math.round(side.iops), meanLatencyUs: Math.round(side.lat_ns.mean / 1000) };
}

interface DaemonMemory { rssMiB: number; peakMiB: number }

/** The daemon's resident and peak resident memory (VmRSS, VmHWM). */
async function readDaemonMemory(pidFile: string): Promise<DaemonMemory> {
  const pid = (await sh(`cat ${pidFile}`)).trim();
  const status = await sh(`cat /proc/${pid}/status`);
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMiB: Math.round(kib('VmRSS') / 1024), peakMiB: Math.round(kib('VmHWM') / 1024) };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (!existsSync('/dev/ublk-control')) throw new Error('no /dev/ublk-control: run through `npm run bench` (it uses the guest runner)');
  const work = mkdtempSync(join(tmpdir(), 'ublkdm-bench-'));
  const env = { ...process.env, UBLK_DM_RUN_DIR: join(work, 'run'), UBLK_DM_STATE_DIR: join(work, 'state'), UBLK_DM_LINK_DIR: join(work, 'links') };
  const ours = (...a: string[]) => run(process.execPath, [cli, ...a], env);
  const cleanups: Array<() => Promise<unknown>> = [];
  const results: FioResult[] = [];
  let daemonMemory: DaemonMemory | undefined;
  let snapshot: SnapshotReport | null = null;
  let striped: StripedReport | null = null;
  let mirror: MirrorReport | null = null;
  let recovery: RecoveryReport | null = null;
  // Removing: a plain SIGTERM would leave the devices in the kernel for a next daemon.
  const killDaemon = () => ours('shutdown', '--remove-devices').catch(() => '');
  if (!args.skipBasic) try {
    const sizeSectors = (args.fileMiB * 1024 * 1024) / 512;
    await sh(`modprobe null_blk nr_devices=1 queue_mode=2 irqmode=0 gb=${Math.ceil(args.fileMiB / 1024)} bs=512 hw_queue_depth=128 submit_queues=1`);
    cleanups.push(() => sh('rmmod null_blk'));
    const img = join(work, 'backing.img');
    await sh(`dd if=/dev/urandom of=${img} bs=1M count=${args.fileMiB} status=none`);
    const loop = (await sh(`losetup -f --show ${img}`)).trim();
    cleanups.push(() => sh(`losetup -d ${loop}`));
    await sh(`dmsetup create bench-linear --table '0 ${sizeSectors} linear ${loop} 0'`);
    cleanups.push(() => sh('dmsetup remove bench-linear'));
    const ourNull = (await ours('create', 'bench-null', '--table', `0 ${sizeSectors} null`)).trim();
    cleanups.push(() => ours('remove', 'bench-null'));
    const ourLinear = (await ours('create', 'bench-linear', '--table', `0 ${sizeSectors} linear ${img} 0`)).trim();
    cleanups.push(() => ours('remove', 'bench-linear'));

    const devices: Array<[string, string]> = [
      ['null_blk', '/dev/nullb0'], ['ours null', ourNull],
      ['loop', loop], ['dm-linear/loop', '/dev/mapper/bench-linear'], ['ours linear', ourLinear],
    ];
    for (const pattern of ['randread', 'randwrite'] as const) {
      for (const iodepth of [1, 32]) {
        for (const [name, path] of devices) {
          const r = await fio(name, path, pattern, iodepth, args.runtimeSeconds);
          results.push(r);
          process.stderr.write(`  ${name.padEnd(16)} ${pattern.padEnd(9)} QD${String(iodepth).padEnd(3)} ${String(r.iops).padStart(8)} IOPS\n`);
        }
      }
    }
    daemonMemory = await readDaemonMemory(join(work, 'run', 'ublk-dm.pid'));
  } catch (e) {
    await killDaemon();
    throw e;
  } finally {
    for (const c of cleanups.reverse()) await c().catch((e) => process.stderr.write(`cleanup: ${e.message}\n`));
  }
  if (!args.skipSnapshot) {
    // Never throws: a failure is recorded in snapshot.error beside what was measured.
    snapshot = await runSnapshotBench({
      dir: work, oursArgv: [process.execPath, cli], env, originMiB: args.snapshotMiB, rewriteMiB: args.snapshotRewriteMiB,
      runtimeSeconds: args.snapshotRuntimeSeconds, log: (line) => process.stderr.write(`${line}\n`),
    });
  }
  if (!args.skipStriped) {
    striped = await runStripedBench({ dir: work, env, stripeMiB: 64, runtimeSeconds: args.runtimeSeconds, log: (line) => process.stderr.write(`${line}\n`) });
  }
  if (!args.skipMirror) {
    mirror = await runMirrorBench({
      dir: work, env, legMiB: args.mirrorMiB, regionSectors: args.mirrorRegionSectors, runtimeSeconds: args.runtimeSeconds,
      log: (line) => process.stderr.write(`${line}\n`),
    });
  }
  if (!args.skipRecovery) {
    // Never throws either; it SIGKILLs the daemon and starts the next one itself.
    recovery = await runRecoveryBench({
      dir: work, oursArgv: [process.execPath, cli], env, rounds: args.recoveryRounds, log: (line) => process.stderr.write(`${line}\n`),
    });
  }
  await killDaemon();

  const iops = (device: string, pattern: Pattern, qd: number) => results.find((r) => r.device === device && r.pattern === pattern && r.iodepth === qd)?.iops ?? NaN;
  const ratios: Array<{ ours: string; kernel: string; pattern: Pattern; iodepth: number; ratio: number }> = [];
  const lines = ['', 'fio 4k, IOPS (ours/kernel)', 'pattern    QD  null_blk  ours-null  ratio  |  loop  dm-linear  ours-linear  /loop  /dm-linear'];
  for (const pattern of ['randread', 'randwrite'] as const) {
    for (const qd of [1, 32]) {
      const nb = iops('null_blk', pattern, qd), on = iops('ours null', pattern, qd);
      const lp = iops('loop', pattern, qd), dl = iops('dm-linear/loop', pattern, qd), ol = iops('ours linear', pattern, qd);
      ratios.push({ ours: 'null', kernel: 'null_blk', pattern, iodepth: qd, ratio: on / nb });
      ratios.push({ ours: 'linear', kernel: 'loop', pattern, iodepth: qd, ratio: ol / lp });
      ratios.push({ ours: 'linear', kernel: 'dm-linear', pattern, iodepth: qd, ratio: ol / dl });
      lines.push(`${pattern.padEnd(10)} ${String(qd).padStart(2)} ${String(nb).padStart(9)} ${String(on).padStart(10)} ${(on / nb).toFixed(2).padStart(6)}  | ${String(lp).padStart(5)} ${String(dl).padStart(10)} ${String(ol).padStart(12)} ${(ol / lp).toFixed(2).padStart(6)} ${(ol / dl).toFixed(2).padStart(10)}`);
    }
  }
  console.log(lines.join('\n'));
  if (daemonMemory) {
    console.log(`\ndaemon memory after the fio runs (2 devices, 1 queue x 128 tags each): RSS ${daemonMemory.rssMiB} MiB, peak ${daemonMemory.peakMiB} MiB`);
  }
  if (snapshot) console.log(formatSnapshotReport(snapshot));
  if (striped) console.log(formatStripedReport(striped));
  if (mirror) console.log(formatMirrorReport(mirror));
  if (recovery) console.log(formatRecoveryReport(recovery));

  let kcopyd: unknown = null;
  if (!args.skipKcopyd) {
    const kjson = join(work, 'kcopyd.json');
    const script = join(projectRoot, 'dist', 'tools', 'bench-kcopyd.js');
    try {
      const out = await run(process.execPath, [script, '--size-mib', String(args.kcopydMiB), '--dir', work, '--json', kjson]);
      console.log(`\n${out}`);
      kcopyd = JSON.parse(await sh(`cat ${kjson}`));
    } catch (e) {
      // Keep what was measured before it in the report.
      kcopyd = { error: (e as Error).message };
      console.log(`\nkcopyd bench FAILED: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const report = {
    date: new Date().toISOString(),
    kernel: (await sh('uname -r')).trim(),
    inGuest: process.env.UBLK_DM_IN_GUEST === '1',
    fio: { runtimeSeconds: args.runtimeSeconds, backingMiB: args.fileMiB, results, ratios },
    daemonMemory,
    snapshot,
    striped,
    mirror,
    recovery,
    kcopyd,
  };
  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(args.out, JSON.stringify(report, null, 2) + '\n');
  console.log(`\nwritten ${args.out}`);
  await sh(`rm -rf ${work}`);
}

main().catch((err) => {
  console.error(`bench: ${err.message}`);
  process.exit(1);
});
