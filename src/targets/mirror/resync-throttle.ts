import type { ScopeKey } from '../../dm/scope';
import { TargetError, type TargetParameter } from '../../dm/target';
import { KcopydThrottle } from '../../kcopyd';

/**
 * dm-raid1's resync throttle: one KcopydThrottle for every mirror of a daemon, as the kernel's
 * `dm_mirror.raid1_resync_throttle` module parameter is one for every mirror of the machine
 * (spec mirror.md §6). The value is the percentage of time resync copies may have I/O
 * outstanding; 100 (the kernel's default) or more means unthrottled. It applies to copies that
 * start after it is set, so lowering it slows a resync under way.
 */

export const RESYNC_THROTTLE_DEFAULT_PERCENT = 100;

export const RESYNC_THROTTLE: ScopeKey<KcopydThrottle> = {
  name: 'raid1_resync_throttle',
  create: () => new KcopydThrottle(RESYNC_THROTTLE_DEFAULT_PERCENT),
};

/** The kernel's parameter is an unsigned int; so is ours. */
const MAX_PERCENT = 0xffffffff;

export const resyncThrottleParameter: TargetParameter = {
  name: 'raid1_resync_throttle',
  description: 'percentage of time mirror resync copies may have I/O outstanding (100 = unthrottled), shared by every mirror',
  get: (scope) => String(scope.get(RESYNC_THROTTLE).percent),
  set(scope, value) {
    if (!/^\d+$/.test(value) || Number(value) > MAX_PERCENT) {
      throw new TargetError(`raid1_resync_throttle: ${JSON.stringify(value)} is not a percentage (an unsigned integer; 100 = unthrottled)`);
    }
    scope.get(RESYNC_THROTTLE).percent = Number(value);
  },
};
