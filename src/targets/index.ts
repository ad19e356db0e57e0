import type { TargetType } from '../dm/target';
import { delayTargetType } from './delay';
import { errorTargetType } from './error';
import { flakeyTargetType, flakeyViewType } from './flakey';
import { linearTargetType } from './linear';
import { logWritesTargetType } from './log-writes/log-writes';
import { nullTargetType } from './null';
import { stripedTargetType } from './striped';
import { stripedViewType } from './striped-view';
import { zeroTargetType } from './zero';
import { mirrorTargetType } from './mirror/mirror';
import { mirrorViewType } from './mirror/view';
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

/** The owner-thread types that offer queue threads a view (Target.queueViewShare), and the view's type. */
const QUEUE_THREAD_VIEWS = new Map<TargetType, TargetType>([
  [snapshotOriginTargetType, snapshotOriginViewType],
  [stripedTargetType, stripedViewType],
  [flakeyTargetType, flakeyViewType],
  [mirrorTargetType, mirrorViewType],
]);

/**
 * The target types a queue thread builds its copies of tables with: the built-in ones, with a
 * view (Target.queueViewShare) in place of each owner-thread type that offers one.
 */
export const queueThreadTargetTypes: readonly TargetType[] = builtInTargetTypes.map((type) => QUEUE_THREAD_VIEWS.get(type) ?? type);

export { delayTargetType, errorTargetType, flakeyTargetType, linearTargetType, logWritesTargetType, stripedTargetType, mirrorTargetType, nullTargetType, snapshotMergeTargetType, snapshotOriginTargetType, snapshotTargetType, zeroTargetType };
