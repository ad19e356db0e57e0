/**
 * Recovery latency: how long I/O stops when the daemon is SIGKILLed and the next one (started
 * at once, as systemd's Restart=always does) reattaches to the device.
 *
 * A QD 1 4 KiB random writer (fio, O_DIRECT) runs on a linear device over a tmpfs file; the
 * daemon is SIGKILLed in the middle, and a new `ublk-dm daemon` is spawned as soon as the old
 * process is gone. The write in flight across the kill waits in the kernel until the new daemon
 * serves it: its completion latency (fio's max clat) is the time from the kill to I/O flowing
 * again, give or take one ordinary write (well under a millisecond). Also timed: from the kill to
 * the new daemon logging the device as recovered. Several rounds; the median is reported.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, readFileSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { processHasExited } from '../src/ublk/processes';
import { run, sleep } from './bench-common';

export interface RecoveryBenchOptions {
  readonly dir: string;
  /** How to run our CLI: [node, bin/ublk-dm]. */
  readonly oursArgv: readonly string[];
  readonly env: NodeJS.ProcessEnv;
  readonly rounds: number;
  readonly log: (line: string) => void;
}

export interface RecoveryRound {
  /** fio's largest write completion latency across the kill: kill → I/O flowing again (upper bound, within one write). */
  readonly ioStallMs: number;
  /** Kill → the new daemon's log says the device is back. */
  readonly killToRecoveredLogMs: number;
  /** Of which: the new daemon's own work, from its "listening" line to its "recovered" line (the rest is starting node). */
  readonly listeningToRecoveredMs: number;
  readonly fioErrors: number;
}

export interface RecoveryReport {
  readonly rounds: RecoveryRound[];
  readonly medianIoStallMs: number;
  readonly medianKillToRecoveredLogMs: number;
  readonly medianListeningToRecoveredMs: number;
  readonly error?: string;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.floor((sorted.length - 1) / 2)]!;
}

export async function runRecoveryBench(o: RecoveryBenchOptions): Promise<RecoveryReport> {
  const [node, ...cliArgs] = o.oursArgv;
  const ours = (...args: string[]) => run(node!, [...cliArgs, ...args], o.env);
  const runDir = o.env.UBLK_DM_RUN_DIR!;
  const pidFile = join(runDir, 'ublk-dm.pid');
  const rounds: RecoveryRound[] = [];
  const img = join(o.dir, 'recovery.img');
  let error: string | undefined;
  try {
    await run('/bin/bash', ['-c', `truncate -s 64M ${img}`], o.env);
    const dev = (await ours('create', 'bench-recovery', '--table', `0 ${(64 << 20) / 512} linear ${img} 0`)).trim();
    try {
      for (let round = 0; round < o.rounds; round++) {
        const fio = run('fio', [
          '--name=stall', `--filename=${dev}`, '--allow_file_create=0', '--ioengine=psync', '--direct=1', '--rw=randwrite',
          '--bs=4k', '--iodepth=1', '--time_based', '--runtime=8', '--size=100%', '--output-format=json',
        ], o.env);
        await sleep(3000);
        const oldPid = Number(readFileSync(pidFile, 'utf8').trim());
        const daemonLog = join(runDir, `recovery-bench-${round}.log`);
        const killedAt = Date.now();
        process.kill(oldPid, 'SIGKILL');
        // Until its last thread is gone, not just its main one: the next daemon must find its socket closed.
        while (!processHasExited(oldPid)) await sleep(5);
        // What systemd's Restart=always does: the next daemon at once.
        const logFd = openSync(daemonLog, 'w');
        const daemon = spawn(node!, [...cliArgs, 'daemon'], { env: o.env, detached: true, stdio: ['ignore', 'ignore', logFd] });
        daemon.unref();
        closeSync(logFd);
        let recoveredAt = NaN;
        const deadline = Date.now() + 180_000;
        while (Number.isNaN(recoveredAt) && Date.now() < deadline) {
          if (existsSync(daemonLog) && /recovered bench-recovery/.test(readFileSync(daemonLog, 'utf8'))) recoveredAt = Date.now();
          else await sleep(5);
        }
        const out = await fio;
        const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
        const text = existsSync(daemonLog) ? readFileSync(daemonLog, 'utf8') : '';
        const stamp = (pattern: RegExp) => Date.parse(new RegExp(`^(\\S+) \\w+: ${pattern.source}`, 'm').exec(text)?.[1] ?? '');
        const r: RecoveryRound = {
          ioStallMs: Math.round(job.write.clat_ns.max / 1e5) / 10,
          killToRecoveredLogMs: recoveredAt - killedAt,
          listeningToRecoveredMs: stamp(/recovered bench-recovery/) - stamp(/ublk-dm \S+ listening/),
          fioErrors: job.error,
        };
        rounds.push(r);
        o.log(`  recovery round ${round + 1}: I/O stalled ${r.ioStallMs} ms, kill → "recovered" logged ${r.killToRecoveredLogMs} ms ` +
          `(daemon listening → recovered ${r.listeningToRecoveredMs} ms), fio errors ${r.fioErrors}`);
      }
    } finally {
      await ours('remove', 'bench-recovery');
    }
  } catch (e) {
    error = (e as Error).message;
    o.log(`  recovery bench FAILED: ${error.split('\n')[0]}`);
  }
  return {
    rounds,
    medianIoStallMs: median(rounds.map((r) => r.ioStallMs)),
    medianKillToRecoveredLogMs: median(rounds.map((r) => r.killToRecoveredLogMs)),
    medianListeningToRecoveredMs: median(rounds.map((r) => r.listeningToRecoveredMs)),
    ...(error !== undefined ? { error } : {}),
  };
}

export function formatRecoveryReport(report: RecoveryReport): string {
  const lines = ['', 'recovery: SIGKILL of the daemon under a QD 1 4k random writer, next daemon started at once'];
  if (report.error) lines.push(`  FAILED: ${report.error.split('\n')[0]}`);
  if (report.rounds.length > 0) {
    lines.push(`  SIGKILL → I/O flowing again: median ${report.medianIoStallMs} ms (rounds: ${report.rounds.map((r) => r.ioStallMs).join(', ')} ms)`);
    lines.push(`  SIGKILL → new daemon logs the device recovered: median ${report.medianKillToRecoveredLogMs} ms, ` +
      `of which the new daemon's own work (listening → recovered) ${report.medianListeningToRecoveredMs} ms; the rest is node starting`);
    lines.push(`  fio errors across the kills: ${report.rounds.reduce((n, r) => n + r.fioErrors, 0)}`);
  }
  return lines.join('\n');
}
