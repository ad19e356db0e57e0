import { promises as fsp } from 'node:fs';

/**
 * The I/O scheduler a device of ours starts with: none. Kernel dm's bio-based targets (linear,
 * striped, snapshot, mirror) have no scheduler at all, and loop asks for none
 * (BLK_MQ_F_NO_SCHED_BY_DEFAULT); the devices beneath ours schedule their own I/O. 6.12's ublk
 * asks for nothing, so blk-mq gives a 1-queue ublk device mq-deadline: each request is then
 * inserted into and dispatched from the elevator under its lock, in the submitter's context,
 * which under TCG cost fio about a microsecond per request (tools/profile-guest.sh --system).
 */
export const DEFAULT_IO_SCHEDULER = 'none';

/** /sys/block/ublkbN/queue/scheduler */
export function schedulerPath(devId: number): string {
  return `/sys/block/ublkb${devId}/queue/scheduler`;
}

/**
 * Set the block device's I/O scheduler. Resolves to undefined when done, or to why not: a
 * container's read-only /sys, say, which leaves the kernel's choice in place. A device works
 * with any scheduler, so this never fails its creation.
 */
export async function setIoScheduler(devId: number, scheduler: string): Promise<string | undefined> {
  const path = schedulerPath(devId);
  try {
    await fsp.writeFile(path, scheduler);
    return undefined;
  } catch (error) {
    return `could not set ${path} to ${scheduler}: ${(error as Error).message}`;
  }
}
