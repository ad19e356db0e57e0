import { spawn } from 'node:child_process';
import { open, type FileHandle } from 'node:fs/promises';
import { LogFlag, LogFormatError, decodeEntry, decodeSuper, entryLogBlocks, markNameOf, type LogEntry } from '../targets/log-writes/log-format';

/**
 * `ublk-dm replay-log`: apply a dm-log-writes log (ours or the kernel's) to a device or file, in
 * order, stopping at a mark or after a number of entries, and optionally run a check (fsck) at
 * each flush, FUA write or mark, the way crash-consistency tests walk every point a filesystem
 * could have been left at. Discards are replayed as zeroes.
 */

export type CheckPoint = 'flush' | 'fua' | 'mark';

export interface ReplayOptions {
  readonly logPath: string;
  readonly replayPath: string;
  /** Stop after the first mark of this name; its absence is an error. */
  readonly endMark?: string;
  /** Stop after this many entries. */
  readonly limit?: number;
  /** Command run by bash at each check point (after an fsync of the replay target); non-zero fails the replay. */
  readonly check?: { readonly command: string; readonly at: readonly CheckPoint[] };
  readonly onProgress?: (progress: ReplayProgress) => void;
}

export interface ReplayProgress {
  readonly done: number;
  readonly total: number;
}

export interface CheckResult {
  /** 1-based entry number the check ran after. */
  readonly entry: number;
  readonly point: CheckPoint;
  readonly mark?: string;
}

export interface ReplayResult {
  readonly entriesInLog: number;
  readonly entriesReplayed: number;
  readonly marks: string[];
  readonly checks: CheckResult[];
}

/** A check command that failed at a point of the log: the replay stops there. */
export class ReplayCheckError extends Error {
  constructor(
    readonly at: CheckResult,
    readonly output: string,
  ) {
    super(`check failed after entry ${at.entry} (${at.mark !== undefined ? `mark ${at.mark}` : at.point}):\n${output}`);
  }
}

const ZERO_CHUNK_BYTES = 1 << 20;

async function readExactly(handle: FileHandle, byteLength: number, position: number): Promise<Buffer> {
  const buffer = Buffer.alloc(byteLength);
  const { bytesRead } = await handle.read(buffer, 0, byteLength, position);
  if (bytesRead !== byteLength) throw new LogFormatError(`the log ends early: ${bytesRead} of ${byteLength} bytes at byte ${position}`);
  return buffer;
}

function runCheck(command: string, env: NodeJS.ProcessEnv): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = spawn('/bin/bash', ['-c', command], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    child.on('close', (code) => resolve({ code: code ?? 1, output }));
    child.on('error', (error) => resolve({ code: 1, output: error.message }));
  });
}

function pointsOf(entry: LogEntry): CheckPoint[] {
  const points: CheckPoint[] = [];
  if ((entry.flags & LogFlag.Flush) !== 0) points.push('flush');
  if ((entry.flags & LogFlag.Fua) !== 0) points.push('fua');
  if ((entry.flags & LogFlag.Mark) !== 0) points.push('mark');
  return points;
}

export async function replayLog(options: ReplayOptions): Promise<ReplayResult> {
  const log = await open(options.logPath, 'r');
  try {
    const head = await readExactly(log, 512, 0);
    const { entryCount, blockBytes } = decodeSuper(head);
    const replay = await open(options.replayPath, 'r+');
    try {
      const marks: string[] = [];
      const checks: CheckResult[] = [];
      let position = blockBytes;
      let replayed = 0;
      const total = options.limit !== undefined ? Math.min(options.limit, entryCount) : entryCount;
      let reachedEndMark = false;
      for (let index = 0; index < total && !reachedEndMark; index++) {
        const entryBlock = await readExactly(log, blockBytes, position);
        const entry = decodeEntry(entryBlock);
        const dataBytes = entry.blockCount * blockBytes;
        let mark: string | undefined;
        if ((entry.flags & LogFlag.Mark) !== 0) {
          mark = markNameOf(entry, entryBlock);
          marks.push(mark);
          reachedEndMark = mark === options.endMark;
        } else if ((entry.flags & LogFlag.Discard) !== 0) {
          for (let done = 0; done < dataBytes; done += ZERO_CHUNK_BYTES) {
            const length = Math.min(ZERO_CHUNK_BYTES, dataBytes - done);
            await replay.write(Buffer.alloc(length), 0, length, entry.block * blockBytes + done);
          }
        } else if (dataBytes > 0) {
          const data = await readExactly(log, dataBytes, position + blockBytes);
          await replay.write(data, 0, dataBytes, entry.block * blockBytes);
        }
        position += entryLogBlocks(entry) * blockBytes;
        replayed++;
        options.onProgress?.({ done: replayed, total });
        const due = options.check === undefined ? [] : pointsOf(entry).filter((point) => options.check!.at.includes(point));
        if (due.length > 0) {
          await replay.sync();
          const at: CheckResult = { entry: index + 1, point: due[0]!, ...(mark !== undefined ? { mark } : {}) };
          const outcome = await runCheck(options.check!.command, { ...process.env, REPLAY_ENTRY: String(at.entry), REPLAY_MARK: mark ?? '' });
          if (outcome.code !== 0) throw new ReplayCheckError(at, outcome.output);
          checks.push(at);
        }
      }
      await replay.sync();
      if (options.endMark !== undefined && !reachedEndMark) throw new Error(`mark ${options.endMark} is not in the log (marks: ${marks.join(', ') || 'none'})`);
      return { entriesInLog: entryCount, entriesReplayed: replayed, marks, checks };
    } finally {
      await replay.close();
    }
  } finally {
    await log.close();
  }
}
