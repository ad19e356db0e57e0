import { SingleBar } from 'cli-progress';

/**
 * Live progress of a long job (a merge, a resync): a bar on a terminal, one JSON object a line
 * with --json (for scripts), nothing when stderr is not a terminal.
 */
export interface ProgressReporter<P extends { readonly done: number; readonly total: number }> {
  report(progress: P): void;
  stop(): void;
}

/** `format` is cli-progress's, with the report's fields as {names}. */
export function progressReporter<P extends { readonly done: number; readonly total: number }>(
  json: boolean,
  format: string,
  stream: NodeJS.WriteStream | undefined = process.stderr,
  writeJson: (line: string) => void = (line) => void process.stdout.write(line),
): ProgressReporter<P> {
  if (json) return { report: (p) => writeJson(`${JSON.stringify(p)}\n`), stop: () => {} };
  if (stream === undefined || !stream.isTTY) return { report: () => {}, stop: () => {} };
  const bar = new SingleBar({ format, stream }, undefined);
  let started = false;
  return {
    report: (p) => {
      if (!started) bar.start(Math.max(p.total, 1), p.done, p);
      else bar.update(p.done, p);
      started = true;
    },
    stop: () => {
      if (started) bar.stop();
    },
  };
}
