import { promises as fsp } from 'node:fs';
import type { DaemonPaths } from '../daemon/paths';
import { processIsAlive } from '../ublk/processes';
import type { Results } from '../wire/protocol';
import { DaemonAbsentError, DaemonError, sendRequest, sendRequestStartingDaemon } from './client';

/**
 * `ublk-dm shutdown` and the first half of `ublk-dm daemon --restart`: ask the running daemon
 * to stop, then wait until its process is gone. Only then are its devices free for the next
 * daemon: the kernel quiesces a device, and lets a new server reattach, once the old server's
 * io_uring is torn down, which happens when its process exits (START_USER_RECOVERY answers
 * EBUSY before).
 */

// Stopping drains every device's I/O and lets the targets write their state out: a mirror's
// log, a merge's step under way. Generous, as under emulation.
const EXIT_WAIT_MS = 120_000;
const EXIT_POLL_MS = 50;

export type ShutdownResult = Results['shutdown'];

/**
 * Stop the daemon; undefined when none runs. `removeDevices` also removes the devices that a
 * stopped daemon left in the kernel: with saved tables and no daemon, one is started (it takes
 * the devices back) and then stopped removing them.
 */
export async function shutdownDaemon(
  paths: DaemonPaths,
  options: { readonly removeDevices: boolean; readonly cliScript: string; readonly env: NodeJS.ProcessEnv },
): Promise<ShutdownResult | undefined> {
  const request = { verb: 'shutdown' as const, removeDevices: options.removeDevices };
  let result: ShutdownResult;
  try {
    result = await sendRequest(paths.socketPath, request);
  } catch (err) {
    if (!(err instanceof DaemonAbsentError)) throw explainOldDaemon(err);
    if (!options.removeDevices || !(await hasSavedDevices(paths.stateDir))) return undefined;
    result = await sendRequestStartingDaemon(paths, options.cliScript, request, options.env);
  }
  await waitForExit(result.pid);
  return result;
}

/** `daemon --restart`: the running daemon (if any) leaves its devices to us and exits. */
export async function takeOverFromRunningDaemon(paths: DaemonPaths): Promise<ShutdownResult | undefined> {
  let result: ShutdownResult;
  try {
    result = await sendRequest(paths.socketPath, { verb: 'shutdown', removeDevices: false });
  } catch (err) {
    if (err instanceof DaemonAbsentError) return undefined;
    throw explainOldDaemon(err);
  }
  await waitForExit(result.pid);
  return result;
}

/** Polls /proc: the daemon need not be our child. A zombie counts as gone (it has let go of its rings). */
export async function waitForExit(pid: number, timeoutMs = EXIT_WAIT_MS, isAlive: (pid: number) => boolean = processIsAlive): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() >= deadline) throw new Error(`the daemon (pid ${pid}) is still running ${timeoutMs / 1000} s after it was asked to stop`);
    await new Promise((resolve) => setTimeout(resolve, EXIT_POLL_MS));
  }
}

/** One line per kind of outcome, leaving out the empty ones. */
export function formatShutdown(result: ShutdownResult | undefined): string {
  if (result === undefined) return 'no ublk-dm daemon is running\n';
  const lines = [`daemon ${result.pid} stopped`];
  if (result.handedOver.length) lines.push(`left for the next daemon (I/O waits until one starts): ${result.handedOver.join(' ')}`);
  if (result.removed.length) lines.push(`removed from the kernel: ${result.removed.join(' ')}`);
  for (const failure of result.failed) lines.push(`failed: ${failure.name}: ${failure.error}`);
  return lines.join('\n') + '\n';
}

/** A daemon from before `shutdown` existed refuses the verb: say what to do instead of "unknown verb". */
function explainOldDaemon(err: unknown): unknown {
  if (err instanceof DaemonError && err.code === 'EPROTO' && /unknown verb/.test(err.message)) {
    return new Error('the running daemon cannot hand its devices over (it is older than this CLI); SIGKILL hands them over as a crash does');
  }
  return err;
}

async function hasSavedDevices(stateDir: string): Promise<boolean> {
  const entries = await fsp.readdir(stateDir).catch(() => [] as string[]);
  return entries.some((entry) => !entry.startsWith('.') && entry.endsWith('.json'));
}
