/**
 * Which CPUs are online while the queue part runs. The test guest boots 2 of its 4 possible CPUs
 * (0 and 1: kernel maxcpus=2, so that 4-queue devices exist), and blk-mq maps neighbouring CPUs to
 * one queue: a 2-queue device puts CPUs 0-1 on queue 0 and 2-3 on queue 1, so with 0 and 1 online
 * its second queue idles and "2 queues" measure one. In our guest only (UBLK_DM_IN_GUEST), the
 * queue part runs with the online CPUs spread over the possible ones (0 and 2: one per queue of a
 * 2-queue device, two queues of a 4-queue one) and puts them back afterwards. A machine that is not
 * our guest keeps its CPUs as they are: hotplugging a user's CPUs is no bench's business.
 */
import { promises as fsp } from 'node:fs';
import { onlineCpus, possibleCpuCount } from '../src/base/cpus';

/**
 * The online set to measure queues with, `online.length` CPUs spaced evenly over `possible`
 * (CPU 0 first, which Linux will not take offline); undefined when `online` is that already or
 * the count does not divide evenly.
 */
export function spreadCpuSet(online: readonly number[], possible: number): number[] | undefined {
  const count = online.length;
  if (count === 0 || possible <= count || possible % count !== 0) return undefined;
  const stride = possible / count;
  const spread = Array.from({ length: count }, (_, i) => i * stride);
  return spread.every((cpu, i) => online[i] === cpu) ? undefined : spread;
}

/** Bring `wanted` online and every other CPU offline (but CPU 0), new ones first so the count never drops. */
async function setOnlineCpus(wanted: readonly number[], current: readonly number[]): Promise<void> {
  for (const cpu of wanted) if (!current.includes(cpu)) await fsp.writeFile(`/sys/devices/system/cpu/cpu${cpu}/online`, '1');
  for (const cpu of current) if (cpu !== 0 && !wanted.includes(cpu)) await fsp.writeFile(`/sys/devices/system/cpu/cpu${cpu}/online`, '0');
}

/**
 * Run `measure` with the online CPUs spread (spreadCpuSet) when this is our guest, then put the
 * previous set back. Says what it did through `log`.
 */
export async function withCpusSpreadInGuest<T>(log: (line: string) => void, measure: () => Promise<T>): Promise<T> {
  const before = onlineCpus();
  const spread = process.env.UBLK_DM_IN_GUEST === '1' ? spreadCpuSet(before, possibleCpuCount()) : undefined;
  if (spread === undefined) return measure();
  try {
    await setOnlineCpus(spread, before);
  } catch (error) {
    log(`queues: could not bring CPUs ${spread.join(',')} online in place of ${before.join(',')} (${(error as Error).message}); measuring on ${onlineCpus().join(',')}`);
    await setOnlineCpus(before, onlineCpus()).catch(() => undefined);
    return measure();
  }
  log(`queues: CPUs ${spread.join(',')} online in place of ${before.join(',')}, one per queue of a 2-queue device`);
  try {
    return await measure();
  } finally {
    await setOnlineCpus(before, onlineCpus()).catch((error: Error) => log(`queues: could not put CPUs ${before.join(',')} back online: ${error.message}`));
  }
}
