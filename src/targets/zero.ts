import type { BlockDevice } from '../io/block-device';
import { EOPNOTSUPP } from '../base/errno';
import { IoOp } from '../io/bio';
import type { Bio } from '../io/bio';
import { TargetError, type MapDone, type Target, type TargetCapabilities, type TargetType } from '../dm/target';

/**
 * zero: reads return zeroes, writes and discards are accepted and dropped. Write-zeroes fails
 * with EOPNOTSUPP as in the kernel, which makes the block layer fall back to writing zero pages.
 */
export class ZeroTarget implements Target {
  readonly type = 'zero';
  readonly threadModel = 'any-queue';
  /** Discards are taken and dropped; write-zeroes is refused (see above), so it is not advertised. */
  readonly capabilities: TargetCapabilities = { discard: true, writeZeroes: false, fua: true };

  map(bio: Bio, done: MapDone): void {
    switch (bio.op) {
      case IoOp.Read:
        bio.data.fill(0);
        done(bio.data.byteLength);
        return;
      case IoOp.Write:
        done(bio.data.byteLength);
        return;
      case IoOp.Flush:
      case IoOp.Discard:
        done(0);
        return;
      default:
        done(-EOPNOTSUPP);
    }
  }

  status(): string {
    return '';
  }

  devices(): BlockDevice[] {
    return [];
  }

  async destroy(): Promise<void> {}
}

export const zeroTargetType: TargetType = {
  name: 'zero',
  version: [1, 2, 0],
  async create(_ctx, args): Promise<Target> {
    if (args.length !== 0) throw new TargetError('No arguments required');
    return new ZeroTarget();
  },
};
