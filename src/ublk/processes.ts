import { readdirSync, readFileSync } from 'node:fs';

/**
 * Whether `pid` names a process that may still serve: one that is not exiting. Read from /proc
 * because kill(pid, 0) succeeds on zombies. A zombie main thread means the process is on its way
 * out, but its other threads may still be exiting and holding its files (its rings among them):
 * the ublk driver answers START_USER_RECOVERY with EBUSY until they have, and recovery waits for
 * that. processHasExited tells when they have.
 */
export function processIsAlive(pid: number): boolean {
  const state = processState(pid);
  return state !== undefined && !isZombie(state);
}

/**
 * Whether `pid` is gone, or a zombie with no thread left: either way it has let go of its files
 * (rings, char devices, its socket). A killed process's main thread turns zombie while its other
 * threads may still be exiting, and the files they share go only with the last of them.
 */
export function processHasExited(pid: number): boolean {
  const state = processState(pid);
  if (state === undefined) return true;
  if (!isZombie(state)) return false;
  try {
    return readdirSync(`/proc/${pid}/task`).length <= 1;
  } catch {
    return true;
  }
}

/** The state letter of /proc/PID/stat, or undefined when there is no such process. */
function processState(pid: number): string | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

function isZombie(state: string): boolean {
  return state === 'Z' || state === 'X' || state === 'x';
}
