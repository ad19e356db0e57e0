/**
 * CPU counts as ublk sees them. ublk_drv grants a device at most one hardware queue per *possible*
 * CPU (nr_cpu_ids), which can exceed the CPUs online (os.cpus()): a VM with hotpluggable CPUs, or
 * the test guest, which has 4 possible and 2 online. blk-mq maps every possible CPU to a queue,
 * so the queues of offline CPUs exist but stay idle.
 */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/** How many CPUs a kernel CPU list such as "0-3", "0" or "0-1,4-5" names. */
export function countCpuList(list: string): number {
  let count = 0;
  for (const range of list.trim().split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(range);
    if (match === null) throw new Error(`not a CPU list: ${JSON.stringify(list)}`);
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    if (last < first) throw new Error(`not a CPU list: ${JSON.stringify(list)}`);
    count += last - first + 1;
  }
  return count;
}

/** Possible CPUs (/sys/devices/system/cpu/possible); the online count where sysfs lacks it. */
export function possibleCpuCount(): number {
  try {
    return countCpuList(readFileSync('/sys/devices/system/cpu/possible', 'utf8'));
  } catch {
    return cpus().length;
  }
}
