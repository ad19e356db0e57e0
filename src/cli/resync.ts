import type { Send } from './snapshot';

/** Where a mirror's resync is: regions in sync out of all its mirror segments' regions. */
export interface ResyncProgress {
  readonly name: string;
  readonly done: number;
  readonly total: number;
  /** Per-leg health characters of each mirror segment (status's `AA`, `AD`...). */
  readonly legs: string[];
  readonly finished: boolean;
}

const POLL_MS = 250;

/** Follow `name`'s mirror resync until every region is in sync (`ublk-dm wait NAME --progress`). */
export async function waitForResync(send: Send, name: string, report: (progress: ResyncProgress) => void): Promise<void> {
  for (;;) {
    const [status] = await send({ verb: 'status', name });
    const mirrors = status!.targets.filter((line) => line.type === 'mirror');
    if (mirrors.length === 0) throw new Error(`${name} has no mirror target: nothing resyncs`);
    let done = 0;
    let total = 0;
    const legs: string[] = [];
    for (const line of mirrors) {
      // <#legs> <dev>... <in_sync>/<total> 1 <chars> <log status>
      const words = line.text.split(' ');
      const legCount = Number(words[0]);
      const [inSync, regions] = words[legCount + 1]!.split('/').map(Number) as [number, number];
      done += inSync;
      total += regions;
      legs.push(words[legCount + 3]!);
    }
    const finished = done === total;
    report({ name, done, total, legs, finished });
    if (finished) return;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}
