import { readFileSync } from 'node:fs';

/**
 * Whether `pid` names a process that still runs. A zombie does not: it has released its files
 * and rings, which is what the ublk driver waits for. Read from /proc because kill(pid, 0)
 * succeeds on zombies.
 */
export function processIsAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return false;
  }
  // "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X' && state !== 'x';
}
