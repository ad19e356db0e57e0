import type { TargetType } from '../dm/target';
import { errorTargetType } from './error';
import { linearTargetType } from './linear';
import { nullTargetType } from './null';
import { zeroTargetType } from './zero';
import { mirrorTargetType } from './mirror/mirror';
import { snapshotMergeTargetType } from './snapshot/merge';
import { snapshotOriginTargetType } from './snapshot/origin';
import { snapshotTargetType } from './snapshot/snapshot';

/**
 * The target types every daemon starts with. The daemon (or a test, or a library user) puts
 * them in its DaemonScope's registry, beside any of its own: there is no process-wide registry.
 */
export const builtInTargetTypes: readonly TargetType[] = [
  linearTargetType,
  zeroTargetType,
  errorTargetType,
  nullTargetType,
  snapshotOriginTargetType,
  snapshotTargetType,
  snapshotMergeTargetType,
  mirrorTargetType,
];

export { errorTargetType, linearTargetType, mirrorTargetType, nullTargetType, snapshotMergeTargetType, snapshotOriginTargetType, snapshotTargetType, zeroTargetType };
