/**
 * `npm run bench`: ours against the kernel's equivalent on the same backing, in one run (one guest
 * boot when the host has no ublk, so the ratios compare like with like). USAGE (printed by
 * `--help`) lists the parts and options.
 */
import { mkdtempSync, mkdirSync, writeFileSync, existsSync, readFileSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { TMPFS_MAGIC } from '../src/io/file-device';
import { run, sh } from './bench-common';
import { BenchDaemon } from './bench-daemon';
import { parseQueueLoops, type QueueLoop } from './bench-queue-loop';
import { runCoreBench, formatCoreReport, type CoreReport } from './bench-core';
import { runQueueBench, formatQueueReport, type QueueReport } from './bench-queues';
import { runMemoryBench, formatMemoryReport, type MemoryReport } from './bench-memory';
import { runSnapshotBench, formatSnapshotReport, type SnapshotReport } from './bench-snapshot';
import { runPairBench, formatPairReport, type PairReport } from './bench-pairs';
import { stripedPair, flakeyPair, reloadedMirrorPair } from './bench-pair-targets';
import { runMirrorBench, formatMirrorReport, type MirrorReport } from './bench-mirror';
import { runRecoveryBench, formatRecoveryReport, type RecoveryReport } from './bench-recovery';
import { DEFAULT_ROUNDS } from './bench-rounds';
import { checkUblksrv } from './bench-ublksrv';

const USAGE = `usage: npm run bench [-- OPTIONS]   (node dist/tools/bench.js where this machine has ublk)

Parts, in this order:
  core      fio 4k randread / randwrite at QD 1 and 32: our null beside null_blk, our linear over a
            tmpfs file beside loop (direct I/O) over that file and dm-linear over the loop device,
            and our linear over that loop device; daemon CPU time per I/O; issue 11's goals
  queues    our linear and null with 1, 2 and 4 queues at QD 32
  memory    daemon RSS with 4 devices of depth 128 after fio on each
  snapshot  the snapshot family against dm-snapshot
  striped   striped over 4 files against dm-striped
  flakey    flakey, always up, against dm-flakey
  mirror    the mirror against dm-mirror
  reloaded-mirror
            a linear reloaded as a mirror and resynced, against dm-mirror the same way
  recovery  SIGKILL of the daemon under a writer, time until I/O flows again
  kcopyd    kcopyd against dd to each destination in turn

Options:
  --only PART,PART     run these parts only
  --no-PART            leave one out (--no-basic: core, queues and memory)
  --queue-loop main|threads|both|default
                       the daemon's queue loop (UBLK_DM_QUEUE_LOOP) for core, queues and memory
  --ublksrv PATH       the C server's installed ublk: its null and loop (over the tmpfs file and
                       over the loop device) join core's cells, and its null and loop over the
                       tmpfs file join queues' cells with 1, 2 and 4 queues
  --rounds N           times core's and queues' tables are measured (default ${DEFAULT_ROUNDS}): medians, with ranges
  --runtime S          seconds per fio run (default 5)
  --out PATH           the JSON (default bench-results/latest.json)
  --file-mib, --kcopyd-mib, --memory-runtime, --mirror-mib, --mirror-region, --recovery-rounds,
  --snapshot-mib, --snapshot-rewrite-mib, --snapshot-runtime
                       sizes and lengths of single parts`;

const projectRoot = resolve(__dirname, '..', '..');
const cli = join(projectRoot, 'bin', 'ublk-dm');

const PARTS = ['core', 'queues', 'memory', 'snapshot', 'striped', 'flakey', 'mirror', 'reloaded-mirror', 'recovery', 'kcopyd'] as const;
type Part = (typeof PARTS)[number];

interface Args {
  out: string; runtimeSeconds: number; fileMiB: number; kcopydMiB: number; parts: Set<Part>; queueLoops: QueueLoop[];
  snapshotMiB: number; snapshotRewriteMiB: number; snapshotRuntimeSeconds: number;
  mirrorMiB: number; mirrorRegionSectors: number; recoveryRounds: number; memoryRuntimeSeconds: number;
  /** Times core and queues measure every cell (their figures are the medians). */
  coreRounds: number;
  ublksrv?: string;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { out: join(projectRoot, 'bench-results', 'latest.json'), runtimeSeconds: 5, fileMiB: 1024, kcopydMiB: 1024,
    parts: new Set(PARTS), queueLoops: ['default'], snapshotMiB: 128, snapshotRewriteMiB: 8, snapshotRuntimeSeconds: 3,
    mirrorMiB: 1024, mirrorRegionSectors: 1024, recoveryRounds: 3, memoryRuntimeSeconds: 3, coreRounds: DEFAULT_ROUNDS };
  const drop = (...parts: Part[]) => parts.forEach((p) => args.parts.delete(p));
  for (let i = 0; i < argv.length; i++) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (k === '--help' || k === '-h') { console.log(USAGE); process.exit(0); }
    else if (k === '--out') { args.out = resolve(v); i++; }
    else if (k === '--only') { args.parts = new Set(v.split(',').map(toPart)); i++; }
    else if (k === '--queue-loop') { args.queueLoops = parseQueueLoops(v); i++; }
    else if (k === '--ublksrv') { args.ublksrv = resolve(v); i++; }
    else if (k === '--runtime') { args.runtimeSeconds = Number(v); i++; }
    else if (k === '--rounds') { args.coreRounds = wholeNumberFrom1(k, v); i++; }
    else if (k === '--file-mib') { args.fileMiB = Number(v); i++; }
    else if (k === '--kcopyd-mib') { args.kcopydMiB = Number(v); i++; }
    else if (k === '--memory-runtime') { args.memoryRuntimeSeconds = Number(v); i++; }
    else if (k === '--no-basic') drop('core', 'queues', 'memory'); // only the target parts
    else if (k === '--no-recovery-bench') drop('recovery');
    else if (k.startsWith('--no-') && (PARTS as readonly string[]).includes(k.slice(5))) drop(k.slice(5) as Part);
    else if (k === '--mirror-mib') { args.mirrorMiB = Number(v); i++; }
    else if (k === '--mirror-region') { args.mirrorRegionSectors = Number(v); i++; }
    else if (k === '--recovery-rounds') { args.recoveryRounds = Number(v); i++; }
    else if (k === '--snapshot-mib') { args.snapshotMiB = Number(v); i++; }
    else if (k === '--snapshot-rewrite-mib') { args.snapshotRewriteMiB = Number(v); i++; }
    else if (k === '--snapshot-runtime') { args.snapshotRuntimeSeconds = Number(v); i++; } // 16 fio runs: kept short
    else throw new Error(`unknown argument ${k} (--help lists them)`);
  }
  return args;
}

function wholeNumberFrom1(option: string, value: string | undefined): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${option} takes a whole number from 1, not ${value}`);
  return n;
}

function toPart(name: string): Part {
  if ((PARTS as readonly string[]).includes(name)) return name as Part;
  throw new Error(`--only: no part ${name} (parts: ${PARTS.join(', ')})`);
}



/** /dev/shm when it is tmpfs with room for `mib` and a quarter more; else undefined. */
function tmpfsDirWithRoom(mib: number): string | undefined {
  try {
    const fs = statfsSync('/dev/shm');
    return fs.type === TMPFS_MAGIC && fs.bavail * fs.bsize >= mib * 1.25 * 2 ** 20 ? '/dev/shm' : undefined;
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.ublksrv !== undefined) checkUblksrv(args.ublksrv);
  // bench.sh asks this on the host before it boots a guest: a mistyped option costs no boot.
  if (process.env.UBLK_DM_BENCH_CHECK_ARGS === '1') return;
  if (!existsSync('/dev/ublk-control')) throw new Error('no /dev/ublk-control: run through `npm run bench` (it uses the guest runner)');
  const work = mkdtempSync(join(tmpdir(), 'ublkdm-bench-'));
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const has = (part: Part) => args.parts.has(part);
  let core: CoreReport | null = null;
  let queues: QueueReport | null = null;
  let memory: MemoryReport | null = null;
  let snapshot: SnapshotReport | null = null;
  let striped: PairReport | null = null;
  let flakey: PairReport | null = null;
  let mirror: MirrorReport | null = null;
  let reloadedMirror: PairReport | null = null;
  let recovery: RecoveryReport | null = null;
  let kcopyd: unknown = null;

  if (has('core') || has('queues') || has('memory')) {
    // One backing file of random data for core, queues and memory (never sparse: holes read
    // faster), on tmpfs as issue 11 measures it: /dev/shm when it has room (the guest's /tmp is
    // an overlay, whose files loop and we reach through one more filesystem).
    const backingPath = join(tmpfsDirWithRoom(args.fileMiB) ?? work, `ublkdm-bench-${process.pid}.img`);
    log(`backing file: ${backingPath}`);
    await sh(`dd if=/dev/urandom of=${backingPath} bs=1M count=${args.fileMiB} status=none`);
    const backingSectors = (args.fileMiB * 1024 * 1024) / 512;
    const common = { dir: work, backingPath, queueLoops: args.queueLoops, log };
    try {
      if (has('core')) core = await runCoreBench({ ...common, backingSectors, runtimeSeconds: args.runtimeSeconds, ublksrv: args.ublksrv, rounds: args.coreRounds });
      if (has('queues')) queues = await runQueueBench({ ...common, backingSectors, runtimeSeconds: args.runtimeSeconds, rounds: args.coreRounds, ublksrv: args.ublksrv });
      if (has('memory')) memory = await runMemoryBench({ ...common, backingSectors, runtimeSeconds: args.memoryRuntimeSeconds });
    } finally {
      await sh(`rm -f ${backingPath}`);
    }
  }

  // The target parts share one daemon (recovery kills it and starts the next one itself).
  const targets = new BenchDaemon(work, 'targets');
  const env = targets.env;
  if (has('snapshot')) {
    // Never throws: a failure is recorded in snapshot.error beside what was measured.
    snapshot = await runSnapshotBench({
      dir: work, oursArgv: [process.execPath, cli], env, originMiB: args.snapshotMiB, rewriteMiB: args.snapshotRewriteMiB,
      runtimeSeconds: args.snapshotRuntimeSeconds, log,
    });
  }
  const pairOptions = { dir: work, env, runtimeSeconds: args.runtimeSeconds, log };
  if (has('striped')) striped = await runPairBench(stripedPair(), pairOptions);
  if (has('flakey')) flakey = await runPairBench(flakeyPair(), pairOptions);
  if (has('mirror')) {
    mirror = await runMirrorBench({ dir: work, env, legMiB: args.mirrorMiB, regionSectors: args.mirrorRegionSectors, runtimeSeconds: args.runtimeSeconds, log });
  }
  if (has('reloaded-mirror')) reloadedMirror = await runPairBench(reloadedMirrorPair(args.mirrorRegionSectors), pairOptions);
  if (has('recovery')) {
    // Never throws either; it SIGKILLs the daemon and starts the next one itself.
    recovery = await runRecoveryBench({ dir: work, oursArgv: [process.execPath, cli], env, rounds: args.recoveryRounds, log });
  }
  await targets.stop().catch((e) => log(`targets daemon: ${(e as Error).message}`));

  if (core) console.log(formatCoreReport(core));
  if (queues) console.log(formatQueueReport(queues));
  if (memory) console.log(formatMemoryReport(memory));
  if (snapshot) console.log(formatSnapshotReport(snapshot));
  if (striped) console.log(formatPairReport(striped));
  if (flakey) console.log(formatPairReport(flakey));
  if (mirror) console.log(formatMirrorReport(mirror));
  if (reloadedMirror) console.log(formatPairReport(reloadedMirror));
  if (recovery) console.log(formatRecoveryReport(recovery));

  if (has('kcopyd')) {
    const kjson = join(work, 'kcopyd.json');
    const script = join(projectRoot, 'dist', 'tools', 'bench-kcopyd.js');
    try {
      const out = await run(process.execPath, [script, '--size-mib', String(args.kcopydMiB), '--dir', work, '--json', kjson]);
      console.log(`\n${out}`);
      kcopyd = JSON.parse(readFileSync(kjson, 'utf8'));
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
    cpus: Number((await sh('nproc')).trim()),
    parts: [...args.parts],
    queueLoops: args.queueLoops,
    core,
    queues,
    memory,
    snapshot,
    striped,
    flakey,
    mirror,
    reloadedMirror,
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
