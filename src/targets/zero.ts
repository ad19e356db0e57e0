import type { BlockDevice } from '../io/block-device';
import { EOPNOTSUPP, type IoResult } from '../base/errno';
import { IoOp } from '../io/bio';
import { TargetError, type Target, type TargetIo, type TargetType } from '../dm/target';

/**
 * zero: reads return zeroes, writes and discards are accepted and dropped. Write-zeroes fails
 * with EOPNOTSUPP as in the kernel, which makes the block layer fall back to writing zero pages.
 */
export class ZeroTarget implements Target {
  readonly type = 'zero';

  async map(io: TargetIo): Promise<IoResult> {
    switch (io.op) {
      case IoOp.Read:
        io.data.fill(0);
        return io.data.byteLength;
      case IoOp.Write:
        return io.data.byteLength;
      case IoOp.Flush:
      case IoOp.Discard:
        return 0;
      default:
        return -EOPNOTSUPP;
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
  async create(_ctx, args): Promise<Target> {
    if (args.length !== 0) throw new TargetError('No arguments required');
    return new ZeroTarget();
  },
};
