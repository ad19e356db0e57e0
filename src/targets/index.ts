import type { TargetType } from '../dm/target';
import { delayTargetType } from './delay';
import { errorTargetType } from './error';
import { flakeyTargetType } from './flakey';
import { linearTargetType } from './linear';
import { logWritesTargetType } from './log-writes/log-writes';
import { nullTargetType } from './null';
import { stripedTargetType } from './striped';
import { zeroTargetType } from './zero';
import { mirrorTargetType } from './mirror/mirror';
import { snapshotMergeTargetType } from './snapshot/merge';
import { snapshotOriginTargetType } from './snapshot/origin';
import { snapshotOriginViewType } from './snapshot/origin-view';
import { snapshotTargetType } from './snapshot/snapshot';

/**
 * The target types every daemon starts with. The daemon (or a test, or a library user) puts
 * them in its DaemonScope's registry, beside any of its own: there is no process-wide registry.
 */
export const builtInTargetTypes: readonly TargetType[] = [
  linearTargetType,
  stripedTargetType,
  zeroTargetType,
  errorTargetType,
  nullTargetType,
  snapshotOriginTargetType,
  snapshotTargetType,
  snapshotMergeTargetType,
  mirrorTargetType,
  flakeyTargetType,
  delayTargetType,
  logWritesTargetType,
];

/**
 * The target types a queue thread builds its copies of tables with: the built-in ones, with a
 * view (Target.queueViewShare) in place of each owner-thread type that offers one.
 */
export const queueThreadTargetTypes: readonly TargetType[] = builtInTargetTypes.map((type) =>
  type === snapshotOriginTargetType ? snapshotOriginViewType : type,
);

export { delayTargetType, errorTargetType, flakeyTargetType, linearTargetType, logWritesTargetType, stripedTargetType, mirrorTargetType, nullTargetType, snapshotMergeTargetType, snapshotOriginTargetType, snapshotTargetType, zeroTargetType };
