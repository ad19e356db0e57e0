import type { BlockDevice } from '../io/block-device';
import type { IoResult } from '../base/errno';
import { IoOp } from '../io/bio';
import { TargetError, type Target, type TargetIo, type TargetType } from '../dm/target';

/**
 * null: NOT a kernel dm target; ours, for measuring the cost of the dispatch path. Every
 * operation succeeds at once without touching data: a read reports its byte count but leaves
 * the buffer as it was, a write is dropped.
 */
export class NullTarget implements Target {
  readonly type = 'null';

  async map(io: TargetIo): Promise<IoResult> {
    return io.op === IoOp.Read || io.op === IoOp.Write ? io.data.byteLength : 0;
  }

  mapCb(io: TargetIo, done: (result: IoResult) => void): void {
    done(io.op === IoOp.Read || io.op === IoOp.Write ? io.data.byteLength : 0);
  }

  status(): string {
    return '';
  }

  devices(): BlockDevice[] {
    return [];
  }

  async destroy(): Promise<void> {}
}

export const nullTargetType: TargetType = {
  name: 'null',
  async create(_ctx, args): Promise<Target> {
    if (args.length !== 0) throw new TargetError('No arguments required');
    return new NullTarget();
  },
};
