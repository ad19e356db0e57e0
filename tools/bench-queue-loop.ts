/**
 * Which queue loop the bench's daemons run (issue 11: a worker-thread loop may become selectable
 * by UBLK_DM_QUEUE_LOOP=main|worker, read by the daemon). `default` sets nothing, so the daemon
 * runs whatever it runs by default; a daemon that does not know the variable ignores it, and both
 * named modes then measure the same loop.
 */
export type QueueLoop = 'default' | 'main' | 'worker';

/** `--queue-loop default|main|worker|both`. */
export function parseQueueLoops(value: string): QueueLoop[] {
  if (value === 'both') return ['main', 'worker'];
  if (value === 'default' || value === 'main' || value === 'worker') return [value];
  throw new Error(`--queue-loop takes default, main, worker or both, not ${value}`);
}

export function queueLoopEnv(mode: QueueLoop): NodeJS.ProcessEnv {
  return mode === 'default' ? {} : { UBLK_DM_QUEUE_LOOP: mode };
}

/** What the parts measuring our daemon against a backing file share (core, queues, memory). */
export interface DaemonPartOptions {
  /** A scratch directory on tmpfs. */
  readonly dir: string;
  /** A file of random data on tmpfs, `backingSectors` long, that our linear (and loop) map. */
  readonly backingPath: string;
  readonly backingSectors: number;
  readonly runtimeSeconds: number;
  /** Each part runs once per queue loop, each on its own daemon. */
  readonly queueLoops: readonly QueueLoop[];
  readonly log: (line: string) => void;
}
