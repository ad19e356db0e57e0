import { EINVAL, ErrnoError } from '../base/errno';

/**
 * Where a queue thread runs, relative to the CPUs that submit to the queues it serves (blk-mq maps
 * each CPU to one queue of a device; GET_QUEUE_AFFINITY tells which).
 *
 * - 'apart' (the default): off those CPUs, when the thread may run anywhere else. A client and the
 *   queue thread serving it on one CPU take turns: the client submits a batch and sleeps, the
 *   thread serves it and sleeps, two context switches per batch and no overlap. On different
 *   CPUs they overlap. Under TCG, 2 queues with a fio job on each of the guest's 2 CPUs served
 *   1.6-1.8x the IOPS with each thread on the other job's CPU than on its own or left to the
 *   scheduler (which puts a woken thread beside its waker), at two thirds the CPU per I/O.
 * - 'with': on those CPUs, as ublksrv places its queue threads.
 * - 'any': wherever the scheduler likes.
 *
 * A 1-queue device's queue takes every CPU's requests: no placement applies, and its thread stays
 * where it was.
 */
export type QueuePlacement = 'apart' | 'with' | 'any';

export const DEFAULT_QUEUE_PLACEMENT: QueuePlacement = 'apart';

/** UBLK_DM_QUEUE_CPUS=apart|with|any; 'apart' unless told otherwise. */
export function queuePlacementFromEnvironment(env: NodeJS.ProcessEnv = process.env): QueuePlacement {
  const value = env.UBLK_DM_QUEUE_CPUS;
  if (value === undefined || value === '') return DEFAULT_QUEUE_PLACEMENT;
  if (value === 'apart' || value === 'with' || value === 'any') return value;
  throw new ErrnoError(`UBLK_DM_QUEUE_CPUS must be "apart", "with" or "any", not ${JSON.stringify(value)}`, EINVAL);
}

/**
 * The CPUs a queue thread should be allowed, in ascending order.
 *
 * `allowed`: the CPUs the thread was allowed when it started (the daemon's own affinity: a
 * `taskset` of the daemon is kept). `submitters`: for each queue the thread serves, the CPUs
 * whose requests go to it. When the placement leaves none of `allowed`, the thread keeps
 * `allowed`: a placement is a preference, never a reason to refuse a CPU.
 */
export function queueThreadCpus(placement: QueuePlacement, allowed: readonly number[], submitters: Iterable<readonly number[]>): number[] {
  const allowedSorted = [...new Set(allowed)].sort((a, b) => a - b);
  if (placement === 'any') return allowedSorted;
  const submitting = new Set<number>();
  for (const cpus of submitters) for (const cpu of cpus) submitting.add(cpu);
  const placed = allowedSorted.filter((cpu) => submitting.has(cpu) === (placement === 'with'));
  return placed.length > 0 ? placed : allowedSorted;
}

/** Whether two ascending CPU lists are the same. */
export function sameCpus(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((cpu, index) => cpu === b[index]);
}
