/**
 * CPU counts as ublk sees them. ublk_drv grants a device at most one hardware queue per *possible*
 * CPU (nr_cpu_ids), which can exceed the CPUs online (os.cpus()): a VM with hotpluggable CPUs, or
 * the test guest, which has 4 possible and 2 online. blk-mq maps every possible CPU to a queue,
 * so the queues of offline CPUs exist but stay idle; and it groups neighbouring CPUs, so on that
 * guest a 2-queue device maps both online CPUs (0 and 1) to queue 0 and only 4 queues put them
 * on two (/sys/block/DEV/mq/N/cpu_list tells).
 */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/**
 * The CPUs a kernel CPU list names: "0-3", "0", "0-1,4-5" (sysfs's cpu masks), or "0, 1" (blk-mq's
 * mq/N/cpu_list).
 */
export function parseCpuList(list: string): number[] {
  const numbers: number[] = [];
  for (const range of list.trim().split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(range.trim());
    if (match === null) throw new Error(`not a CPU list: ${JSON.stringify(list)}`);
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    if (last < first) throw new Error(`not a CPU list: ${JSON.stringify(list)}`);
    for (let cpu = first; cpu <= last; cpu++) numbers.push(cpu);
  }
  return numbers;
}

/** How many CPUs a kernel CPU list names (parseCpuList). */
export function countCpuList(list: string): number {
  return parseCpuList(list).length;
}

/** Possible CPUs (/sys/devices/system/cpu/possible); the online count where sysfs lacks it. */
export function possibleCpuCount(): number {
  try {
    return countCpuList(readFileSync('/sys/devices/system/cpu/possible', 'utf8'));
  } catch {
    return cpus().length;
  }
}

/** The CPUs online (/sys/devices/system/cpu/online); 0 to os.cpus() - 1 where sysfs lacks it. */
export function onlineCpus(): number[] {
  try {
    return parseCpuList(readFileSync('/sys/devices/system/cpu/online', 'utf8'));
  } catch {
    return Array.from({ length: cpus().length }, (_, cpu) => cpu);
  }
}
