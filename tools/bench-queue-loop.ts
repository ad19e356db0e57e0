/**
 * Which queue loop the bench's daemons run: UBLK_DM_QUEUE_LOOP=main (every queue on the daemon's
 * main thread) or threads (a worker thread per queue), read by the daemon. `default` sets
 * nothing, so the daemon runs whatever it runs by default.
 */
export type QueueLoop = 'default' | 'main' | 'threads';

/** `--queue-loop default|main|threads|both`. */
export function parseQueueLoops(value: string): QueueLoop[] {
  if (value === 'both') return ['main', 'threads'];
  if (value === 'default' || value === 'main' || value === 'threads') return [value];
  throw new Error(`--queue-loop takes default, main, threads or both, not ${value}`);
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
