import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/**
 * Who is using a block device, as far as /proc and /sys tell (best effort: the kernel's own open
 * count is not visible from userspace). Everything here is asynchronous and never opens the
 * device: the daemon serves that device, so a blocking call on it from the JS thread could wait
 * on itself.
 */
export interface DeviceUsage {
  /** File descriptors, in any process, open on the block node. */
  readonly openFds: number;
  /** Mount points of the device (from /proc/self/mountinfo, by major:minor). */
  readonly mounts: number;
  /** Devices stacked on it (/sys/block/<dev>/holders). */
  readonly holders: readonly string[];
}

export type UsageProbe = (blockPath: string, devno: { major: number; minor: number }) => Promise<DeviceUsage>;

export const UNUSED: DeviceUsage = { openFds: 0, mounts: 0, holders: [] };

/** What `info` reports as the open count. */
export function openCount(usage: DeviceUsage): number {
  return usage.openFds + usage.mounts + usage.holders.length;
}

/** Why a device cannot be removed, or undefined if nothing uses it. */
export function busyReason(usage: DeviceUsage): string | undefined {
  const reasons: string[] = [];
  if (usage.mounts > 0) reasons.push(`mounted (${usage.mounts} mount${usage.mounts === 1 ? '' : 's'})`);
  if (usage.openFds > 0) reasons.push(`open (${usage.openFds} file descriptor${usage.openFds === 1 ? '' : 's'})`);
  if (usage.holders.length > 0) reasons.push(`held by ${usage.holders.join(', ')}`);
  return reasons.length > 0 ? reasons.join(', ') : undefined;
}

export function procUsageProbe(procRoot = '/proc', sysRoot = '/sys'): UsageProbe {
  return async (blockPath, devno) => {
    const [openFds, mounts, holders] = await Promise.all([
      countOpenFds(procRoot, blockPath),
      countMounts(procRoot, devno),
      listHolders(sysRoot, path.basename(blockPath)),
    ]);
    return { openFds, mounts, holders };
  };
}

/** Read-ahead in sectors, as `info` prints it, or undefined when sysfs does not say. */
export async function readAheadSectors(blockPath: string, sysRoot = '/sys'): Promise<number | undefined> {
  try {
    const text = await fsp.readFile(path.join(sysRoot, 'block', path.basename(blockPath), 'queue', 'read_ahead_kb'), 'utf8');
    const kib = Number.parseInt(text, 10);
    return Number.isSafeInteger(kib) ? kib * 2 : undefined;
  } catch {
    return undefined;
  }
}

async function countOpenFds(procRoot: string, blockPath: string): Promise<number> {
  const pids = (await readdirOrEmpty(procRoot)).filter((entry) => /^\d+$/.test(entry));
  const perProcess = await Promise.all(
    pids.map(async (pid) => {
      const fdDir = path.join(procRoot, pid, 'fd');
      const fds = await readdirOrEmpty(fdDir);
      const targets = await Promise.all(fds.map((fd) => fsp.readlink(path.join(fdDir, fd)).catch(() => '')));
      return targets.filter((target) => target === blockPath).length;
    }),
  );
  return perProcess.reduce((sum, n) => sum + n, 0);
}

async function countMounts(procRoot: string, devno: { major: number; minor: number }): Promise<number> {
  let text: string;
  try {
    text = await fsp.readFile(path.join(procRoot, 'self', 'mountinfo'), 'utf8');
  } catch {
    return 0;
  }
  const wanted = `${devno.major}:${devno.minor}`;
  // mountinfo: "<id> <parent> <major:minor> <root> <mount point> ..."
  return text.split('\n').filter((line) => line.split(' ')[2] === wanted).length;
}

async function listHolders(sysRoot: string, blockName: string): Promise<string[]> {
  return readdirOrEmpty(path.join(sysRoot, 'block', blockName, 'holders'));
}

/** Processes come and go and some are not ours to look at: a directory we cannot read is empty. */
async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch {
    return [];
  }
}
