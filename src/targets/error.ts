import type { BlockDevice } from '../io/block-device';
import { EIO } from '../base/errno';
import { IoOp, type Bio } from '../io/bio';
import { ALL_CAPABILITIES, type MapDone, type Target, type TargetType } from '../dm/target';
import { openDeviceArea } from '../dm/table-args';

/**
 * error: every data operation fails with EIO, discards included (the kernel enables discards on
 * purpose so they fail with EIO rather than "not supported"). Flush succeeds, because dm core
 * completes empty flushes itself for targets that ask for none.
 *
 * The optional `<dev> <offset>` (kernels from 2024 on) only ties the device to the table; I/O
 * still fails. As in dm-target.c, other argument counts are accepted and ignored.
 */
export class ErrorTarget implements Target {
  readonly type = 'error';
  readonly threadModel = 'any-queue';
  /** Everything is accepted so that everything can fail with EIO. */
  readonly capabilities = ALL_CAPABILITIES;

  constructor(private readonly device: BlockDevice | undefined) {}

  map(bio: Bio, done: MapDone): void {
    done(bio.op === IoOp.Flush ? 0 : -EIO);
  }

  /** The kernel's error target has no status function: both forms are empty, even with a device. */
  status(): string {
    return '';
  }

  devices(): BlockDevice[] {
    return this.device === undefined ? [] : [this.device];
  }

  async destroy(): Promise<void> {
    // A device, if any, belongs to the table, which closes it.
  }
}

export const errorTargetType: TargetType = {
  name: 'error',
  version: [1, 7, 0],
  async create(ctx, args): Promise<Target> {
    if (args.length !== 2) return new ErrorTarget(undefined);
    const area = await openDeviceArea(ctx, args[0]!, args[1]!);
    return new ErrorTarget(area.device);
  },
};
