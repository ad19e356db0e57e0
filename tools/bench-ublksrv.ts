/**
 * The C ublk server (ublksrv) as a column of the core bench, so issue 11's "ours against the C
 * server" ratios come from the same boot as ours. We do not ship or build it: `--ublksrv PATH`
 * names its `ublk` program (built from a ublksrv checkout, see the README's benchmark section),
 * whose `ublk.null` and `ublk.loop` sit beside it. Its devices take ids from 90 up, far from the
 * ones our daemons are given in the bench.
 */
import { accessSync, constants } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { schedulerPath } from '../src/ublk/io-scheduler';
import { run } from './bench-common';

export type UblksrvTarget = 'null' | 'loop';

export interface UblksrvShape {
  readonly depth: number;
  /** 1 unless given. */
  readonly queues?: number;
  /** The file or device a loop serves. */
  readonly backingPath?: string;
}

export class UblksrvDevice {
  private constructor(
    private readonly ublk: string,
    readonly id: number,
    readonly path: string,
    private readonly serverPid: number,
  ) {}

  /**
   * `ublk add -t TARGET -n ID -q QUEUES -d DEPTH` (with `-f BACKING` for loop, which opens it
   * with O_DIRECT as our linear does). The server forks into the background, a thread per queue;
   * add returns once the device is live.
   */
  static async add(ublk: string, id: number, target: UblksrvTarget, shape: UblksrvShape): Promise<UblksrvDevice> {
    const args = ['add', '-t', target, '-n', String(id), '-q', String(shape.queues ?? 1), '-d', String(shape.depth)];
    if (target === 'loop') {
      if (shape.backingPath === undefined) throw new Error('ublksrv loop needs a backing file');
      args.push('-f', shape.backingPath);
    }
    await run(ublk, args);
    try {
      const pid = serverPidOfListing(id, await run(ublk, ['list', '-n', String(id)]));
      // blk-mq gives a 1-queue ublk device mq-deadline; ours and the kernel's devices here run
      // without a scheduler (src/ublk/io-scheduler.ts), and so does this one, or the comparison
      // would be of schedulers as much as of servers.
      await writeFile(schedulerPath(id), 'none');
      return new UblksrvDevice(ublk, id, `/dev/ublkb${id}`, pid);
    } catch (error) {
      await run(ublk, ['del', '-n', String(id)]).catch(() => ''); // leave no device behind
      throw error;
    }
  }

  /** The server process of this device (one per device in ublksrv), for its CPU time. */
  pid(): number {
    return this.serverPid;
  }

  async remove(): Promise<void> {
    await run(this.ublk, ['del', '-n', String(this.id)]);
  }
}

/** The server's pid in what `ublk list -n ID` prints ("... daemon pid 1234 flags ..."). */
export function serverPidOfListing(id: number, listing: string): number {
  const pid = Number(/daemon pid (\d+)/.exec(listing)?.[1]);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`ublksrv device ${id}: no daemon pid in \`ublk list\`:\n${listing}`);
  return pid;
}

/** Checks `--ublksrv PATH` up front, so a wrong path fails before minutes of measuring. */
export function checkUblksrv(ublk: string): void {
  for (const program of [ublk, `${ublk}.null`, `${ublk}.loop`]) {
    try {
      accessSync(program, constants.X_OK);
    } catch {
      throw new Error(`--ublksrv: ${program} is not an executable (give the path of ublksrv's installed \`ublk\`)`);
    }
  }
}
