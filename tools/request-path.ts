/**
 * The JavaScript of the request path, timed on the host, where there is no ublk: a queue thread's
 * pieces (UblkQueue, Dispatcher, a target, FileDevice, IoRing) run on an io_uring whose native
 * half is replaced by one that completes every request at once, in JS. What is left is our own
 * code per request, without the kernel's and without TCG's noise: under TCG every instruction of
 * it costs 10-20x, and at QD 32 it is most of our daemon's user time.
 *
 *   node dist/tools/request-path.js [--target null|linear|linear-tmpfs|linear-inplace] [--depth N]
 *                                   [--op read|write] [--requests N] [--rounds N]
 *
 * Prints nanoseconds of wall and user time per request for each round. `linear` maps a file on
 * this disk through its O_DIRECT descriptor (the path of a guest's linear over a loop device);
 * `linear-tmpfs` a file in /dev/shm, read and written inline with pread/pwrite (real syscalls);
 * `linear-inplace` the same file served in place, as a queue thread serves a tmpfs linear: reads
 * answered with the file's address, writes delivered without their data (UBLK_F_NEED_GET_DATA)
 * and placed there, two ublk commands each.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import yargs from 'yargs';

import { IoOp } from '../src/io/bio';
import { openFileDevice, type FileDevice } from '../src/io/file-device';
import { STAGED_SQE_WORDS, StagedSqeKind, native, type NativeRing, type NativeRingHandle } from '../src/io/native';
import { WaitPolicies } from '../src/io/poll-policy';
import { IoRing, type WaitClock, type WaitOptions } from '../src/io/ring';
import { Dispatcher } from '../src/dm/dispatcher';
import { Table } from '../src/dm/table';
import type { Target } from '../src/dm/target';
import { LinearTarget } from '../src/targets/linear';
import { NullTarget } from '../src/targets/null';
import { IO_DESC_BYTES, UBLK_IO_RES_NEED_GET_DATA, UBLK_IO_RES_OK, UBLK_U_IO_NEED_GET_DATA, descriptorMmapByteLength } from '../src/ublk/abi';
import { UblkQueue } from '../src/ublk/queue';
import { DEFAULT_POLL_MICROS } from '../src/daemon/queue-threads';

const REQUEST_BYTES = 4096;
const REQUEST_SECTORS = REQUEST_BYTES / 512;
const BACKING_BYTES = 64 * 1024 * 1024;
/** ublk's largest queue depth. */
const MAX_DEPTH = 4096;

/**
 * A NativeRing that completes every request it is given on the next wait() or reap(): ublk
 * commands with UBLK_IO_RES_OK (a new request for the tag), reads and writes with their length.
 * Only the staged hot path is modelled; any other prep throws, so a harness that strays from the
 * path it claims to time says so.
 */
export class InstantNativeRing implements NativeRing {
  private records: Float64Array | undefined;
  /**
   * Completions staged but not yet handed out (more than one batch can be staged), from
   * `backlogStart` on: consumed by index, not spliced, so the harness's own bookkeeping stays out
   * of the profile of the path it times.
   */
  private readonly backlogTokens: number[] = [];
  private readonly backlogResults: number[] = [];
  private backlogStart = 0;
  /** What it was given, by kind: the harness's check that the path it times is the staged one. */
  readonly staged = { ublkCommands: 0, reads: 0, writes: 0 };
  waits = 0;
  /**
   * Every request is a write of a device with UBLK_F_NEED_GET_DATA: a FETCH or COMMIT_AND_FETCH
   * brings it without its data (NEED_GET_DATA), the server's NEED_GET_DATA command then with it.
   */
  writesNeedData = false;

  constructor(
    private readonly tokens: Int32Array,
    private readonly results: Int32Array,
  ) {}

  private ublkCommandResult(cmdOp: number): number {
    return this.writesNeedData && cmdOp !== UBLK_U_IO_NEED_GET_DATA ? UBLK_IO_RES_NEED_GET_DATA : UBLK_IO_RES_OK;
  }

  stageSqes(records: Float64Array): void {
    this.records = records;
  }

  /** Its waits take no time: the policy sees a client that always has the next request ready. */
  timeWaitsInto(times: Float64Array): void {
    times[0] = 0;
  }

  prepStaged(): void {
    const records = this.records;
    if (records === undefined) return;
    const count = records[0]!;
    for (let i = 0; i < count; i++) {
      const at = 1 + i * STAGED_SQE_WORDS;
      const kind = records[at] as StagedSqeKind;
      this.backlogTokens.push(records[at + 7]!);
      this.backlogResults.push(kind === StagedSqeKind.UblkIoCmd ? this.ublkCommandResult(records[at + 2]!) : records[at + 3]!);
      if (kind === StagedSqeKind.UblkIoCmd) this.staged.ublkCommands++;
      else if (kind === StagedSqeKind.Read) this.staged.reads++;
      else this.staged.writes++;
    }
    records[0] = 0;
  }

  submit(): number {
    this.prepStaged();
    return this.backlogTokens.length - this.backlogStart;
  }

  reap(): number {
    const start = this.backlogStart;
    const count = Math.min(this.backlogTokens.length - start, this.tokens.length);
    for (let i = 0; i < count; i++) {
      this.tokens[i] = this.backlogTokens[start + i]!;
      this.results[i] = this.backlogResults[start + i]!;
    }
    this.backlogStart += count;
    if (this.backlogStart === this.backlogTokens.length) {
      this.backlogTokens.length = 0;
      this.backlogResults.length = 0;
      this.backlogStart = 0;
    }
    return count;
  }

  wait(): number {
    this.waits++;
    this.prepStaged();
    return this.reap();
  }

  close(): void {}

  keepUntilExit(): void {}

  pollAfterWakeups(): void {}

  prepRead(): void {
    offPath('an unstaged read (a buffer not from allocPageAligned)');
  }
  prepWrite(): void {
    offPath('an unstaged write');
  }
  prepReadv = (): void => offPath('readv');
  prepWritev = (): void => offPath('writev');
  prepFsync = (): void => offPath('fsync');
  prepFallocate = (): void => offPath('fallocate');
  prepUringCmd = (): void => offPath('a control command');
  prepBlockDiscard = (): void => offPath('discard');
  prepCancel = (): void => offPath('cancel');
}

function offPath(what: string): never {
  throw new Error(`InstantNativeRing: ${what} is off the timed path`);
}

/** An IoRing (caller-driven, as a queue thread's) over an InstantNativeRing. */
export function instantRing(): { ring: IoRing; native: InstantNativeRing } {
  const addon = native();
  const realRing = addon.Ring;
  let made: InstantNativeRing | undefined;
  addon.Ring = class {
    constructor(_entries: number, _sqe128: boolean, tokens: Int32Array, results: Int32Array) {
      made = new InstantNativeRing(tokens, results);
    }
    boundMethods(): NativeRing {
      return made!;
    }
  } as unknown as typeof addon.Ring & (new (...args: never[]) => NativeRingHandle);
  try {
    const ring = IoRing.create({ entries: 512, drivenBy: 'caller' });
    return { ring, native: made! };
  } finally {
    addon.Ring = realRing;
  }
}

export type PathTarget = 'null' | 'linear' | 'linear-tmpfs' | 'linear-inplace';

export interface RequestPath {
  /** Serve `requests` requests (at least); returns how many completed. */
  serve(requests: number): number;
  readonly native: InstantNativeRing;
  /** What the queue hands requests to (and, in place, asks where a write goes). */
  readonly dispatcher: Dispatcher<Table>;
  close(): Promise<void>;
}

/**
 * One device queue of `depth` tags whose every request is `op` of 4 KiB at its own sector,
 * served by `target` as a queue thread serves it: its waits pick a poll policy and time
 * themselves as the thread's do.
 */
export async function openRequestPath(target: PathTarget, depth: number, op: IoOp.Read | IoOp.Write, dir: string): Promise<RequestPath> {
  if (!Number.isInteger(depth) || depth < 1 || depth > MAX_DEPTH) throw new RangeError(`depth must be 1 to ${MAX_DEPTH}, not ${depth}`);
  const { ring, native: instant } = instantRing();
  let descriptorFile: fsp.FileHandle | undefined;
  let device: FileDevice | undefined;
  let queue: UblkQueue;
  let dispatcher: Dispatcher<Table>;
  try {
    const descriptorPath = path.join(dir, 'descriptors');
    await fsp.writeFile(descriptorPath, descriptors(depth, op));
    descriptorFile = await fsp.open(descriptorPath, 'r');
    let mapped: Target;
    if (target === 'null') {
      mapped = new NullTarget();
    } else {
      device = await openBacking(target, dir, ring);
      mapped = new LinearTarget(device, 0);
    }
    // As a queue thread builds a device's queue (daemon/queue-thread.ts).
    const inPlace = target === 'linear-inplace';
    instant.writesNeedData = inPlace && op === IoOp.Write;
    dispatcher = new Dispatcher<Table>(new Table([{ startSector: 0, lengthSectors: BACKING_BYTES / 512, target: mapped }], []), { inPlace });
    queue = new UblkQueue(
      ring,
      { devId: 0, charFd: descriptorFile.fd, queues: 1, depth, maxIoBytes: 128 * 1024, needGetData: inPlace },
      0,
      (request, done) => dispatcher.submit(request, done),
      inPlace ? dispatcher : undefined,
    );
  } catch (error) {
    ring.close();
    await descriptorFile?.close();
    await device?.close();
    throw error;
  }
  const policies = new WaitPolicies(DEFAULT_POLL_MICROS);
  const clock: WaitClock = { waitMicros: 0 };
  const sleep: WaitOptions = { queued: 'hold' };
  const poll: WaitOptions = { queued: 'hold', pollMicros: DEFAULT_POLL_MICROS };
  let answered = 0;
  const countAnswers = queue.requestAnswered.bind(queue);
  queue.requestAnswered = () => {
    answered++;
    countAnswers();
  };
  queue.postFetches();
  return {
    native: instant,
    dispatcher,
    serve(requests: number): number {
      const until = answered + requests;
      const start = answered;
      while (answered < until) {
        // What the queue thread's RingTurns and waitOptions do around each wait.
        const policy = policies.pick(queue.requestsInService);
        const ran = ring.waitAndDispatch(1000, policy.pollsNext ? poll : sleep, clock);
        policy.waited(clock.waitMicros, ran);
      }
      return answered - start;
    },
    async close(): Promise<void> {
      ring.close();
      queue.unmap();
      await descriptorFile?.close();
      await device?.close();
    },
  };
}

/**
 * The linear target's backing file, 64 MiB: on `dir` through its O_DIRECT descriptor, or on
 * /dev/shm, unlinked once open, copied inline or served in place (written through first: a
 * hole is never served in place). Refuses a filesystem that would time another path.
 */
async function openBacking(target: 'linear' | 'linear-tmpfs' | 'linear-inplace', dir: string, ring: IoRing): Promise<FileDevice> {
  const tmpfs = target !== 'linear';
  const backingPath = tmpfs ? path.join('/dev/shm', `request-path-${process.pid}`) : path.join(dir, 'backing');
  try {
    const backing = await fsp.open(backingPath, 'w');
    if (target === 'linear-inplace') await backing.write(new Uint8Array(BACKING_BYTES), 0, BACKING_BYTES, 0);
    else await backing.truncate(BACKING_BYTES);
    await backing.close();
    const device = await openFileDevice(backingPath, { ring });
    const refusal = tmpfs
      ? device.inlineIo ? undefined : `${backingPath} is not on tmpfs`
      : device.usesDirectIo && !device.inlineIo ? undefined : `${backingPath}: not read through O_DIRECT and the ring (tmpfs, or no O_DIRECT); put --dir on a disk`;
    if (refusal !== undefined) {
      await device.close();
      throw new Error(refusal);
    }
    return device;
  } finally {
    if (tmpfs) await fsp.rm(backingPath, { force: true });
  }
}

/** A queue's descriptor array: tag t asks for `op` of 4 KiB at sector t * 8. */
function descriptors(depth: number, op: IoOp): Uint8Array {
  const bytes = new Uint8Array(descriptorMmapByteLength(depth));
  const view = new DataView(bytes.buffer);
  for (let tag = 0; tag < depth; tag++) {
    const at = tag * IO_DESC_BYTES;
    view.setUint32(at, op, true);
    view.setUint32(at + 4, REQUEST_SECTORS, true);
    view.setBigUint64(at + 8, BigInt(tag * REQUEST_SECTORS), true);
  }
  return bytes;
}

async function main(): Promise<void> {
  const args = await yargs(process.argv.slice(2))
    .option('target', { choices: ['null', 'linear', 'linear-tmpfs', 'linear-inplace'] as const, default: 'linear' as const })
    .option('depth', { type: 'number', default: 32 })
    .option('op', { choices: ['read', 'write'] as const, default: 'read' as const })
    .option('requests', { type: 'number', default: 200_000 })
    .option('rounds', { type: 'number', default: 5 })
    .option('dir', { type: 'string', default: process.cwd(), describe: 'where the descriptor and backing files go (not tmpfs for linear)' })
    .strict()
    .parse();
  const dir = await fsp.mkdtemp(path.join(args.dir, '.request-path-'));
  try {
    const requestPath = await openRequestPath(args.target, args.depth, args.op === 'read' ? IoOp.Read : IoOp.Write, dir);
    requestPath.serve(args.requests); // warm up: let V8 optimize what it will
    for (let round = 0; round < args.rounds; round++) {
      const staged = { ...requestPath.native.staged };
      const cpuBefore = process.cpuUsage();
      const wallBefore = process.hrtime.bigint();
      const served = requestPath.serve(args.requests);
      const wallNs = Number(process.hrtime.bigint() - wallBefore);
      const cpu = process.cpuUsage(cpuBefore);
      const perRequest = (count: number): string => (count / served).toFixed(2);
      const { ublkCommands, reads, writes } = requestPath.native.staged;
      console.log(
        `${args.target} ${args.op} depth ${args.depth}: ${(wallNs / served).toFixed(0)} ns wall, ${((cpu.user * 1000) / served).toFixed(0)} ns user, ${((cpu.system * 1000) / served).toFixed(0)} ns system per request;` +
          ` ublk commands ${perRequest(ublkCommands - staged.ublkCommands)}, ring reads ${perRequest(reads - staged.reads)}, ring writes ${perRequest(writes - staged.writes)} per request`,
      );
    }
    await requestPath.close();
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : String(error));
    process.exit(1);
  });
}
