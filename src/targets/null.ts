import type { BlockDevice } from '../io/block-device';
import { carriesData, type Bio } from '../io/bio';
import { ALL_CAPABILITIES, TargetError, type MapDone, type Target, type TargetType } from '../dm/target';

/**
 * null: NOT a kernel dm target; ours, for measuring the cost of the dispatch path. Every
 * operation succeeds at once without touching data: a read reports its byte count but leaves
 * the buffer as it was, a write is dropped.
 */
export class NullTarget implements Target {
  readonly type = 'null';
  readonly threadModel = 'any-queue';
  readonly capabilities = ALL_CAPABILITIES;

  map(bio: Bio, done: MapDone): void {
    done(carriesData(bio.op) ? bio.data.length : 0);
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
  version: [1, 0, 0],
  async create(_ctx, args): Promise<Target> {
    if (args.length !== 0) throw new TargetError('No arguments required');
    return new NullTarget();
  },
};
