import assert from 'node:assert/strict';
import { Dispatcher, servesInPlace } from '../../../src/dm/dispatcher';
import { splitRequest, type SplittableSegment } from '../../../src/dm/split';
import type { Bio } from '../../../src/io/bio';
import { loadMemoryTable, submitted } from '../../../src/testing/tables';
import { EINVAL, EIO, ENOSPC, EOPNOTSUPP, type IoResult } from '../../../src/base/errno';
import { MemoryDevice } from '../../../src/testing/memory-device';
import { IoOp } from '../../../src/io/bio';
import { ALL_CAPABILITIES, REQUEUE, type MapDone, type MapOutcome, type Target } from '../../../src/dm/target';
import { Table } from '../../../src/dm/table';
import { sectorsToBytes } from '../../../src/base/units';

const NO_DATA = new Uint8Array(0);

function request(op: IoOp, sector: number, sectorCount: number, extra: Partial<Bio> = {}): Bio {
  const data = op === IoOp.Read || op === IoOp.Write ? Buffer.alloc(sectorsToBytes(sectorCount)) : NO_DATA;
  return { op, sector, sectorCount, data, fua: false, noUnmap: false, ...extra };
}

function pattern(byteLength: number, seed: number): Buffer {
  const buf = Buffer.alloc(byteLength);
  for (let i = 0; i < byteLength; i++) buf[i] = (i * 13 + seed) & 0xff;
  return buf;
}

/** A target that records what it is given and what hooks ran, answering with `answer`. */
class RecordingTarget implements Target {
  readonly type = 'recording';
  readonly threadModel = 'any-queue';
  readonly capabilities = ALL_CAPABILITIES;
  readonly ios: Bio[] = [];
  answer: (io: Bio) => MapOutcome | Promise<MapOutcome> = (io) =>
    io.op === IoOp.Read || io.op === IoOp.Write ? io.data.byteLength : 0;
  hookFailure: Partial<Record<'presuspend' | 'postsuspend' | 'preresume' | 'resume', Error>> = {};

  constructor(
    readonly name: string,
    readonly log: string[],
    readonly maxIoSectors?: number,
  ) {}

  /** Answers on a later microtask, as a target waiting on a device would. */
  map(io: Bio, done: MapDone): void {
    this.ios.push(io);
    Promise.resolve()
      .then(() => this.answer(io))
      .then(done, () => done(-EIO));
  }
  status(): string {
    return '';
  }
  devices() {
    return [];
  }
  async destroy(): Promise<void> {}
  async presuspend(_options?: { noflush: boolean }): Promise<void> {
    this.hook('presuspend');
  }
  async postsuspend(): Promise<void> {
    this.hook('postsuspend');
  }
  async preresume(): Promise<void> {
    this.hook('preresume');
  }
  async resume(): Promise<void> {
    this.hook('resume');
  }
  private hook(name: 'presuspend' | 'postsuspend' | 'preresume' | 'resume'): void {
    this.log.push(`${this.name}.${name}`);
    const failure = this.hookFailure[name];
    if (failure) throw failure;
  }
}

/** A table laying the targets end to end, with the given lengths. */
function contiguousTable(targets: Target[], lengths: number[]): Table {
  let startSector = 0;
  const segments = lengths.map((lengthSectors, i) => {
    const segment = { startSector, lengthSectors, target: targets[i]! };
    startSector += lengthSectors;
    return segment;
  });
  return new Table(segments, []);
}

/** A table of recording targets with the given lengths. */
function recordingTable(lengths: number[], log: string[] = [], maxIoSectors?: number): { table: Table; targets: RecordingTarget[] } {
  const targets = lengths.map((_, i) => new RecordingTarget(`t${i}`, log, maxIoSectors));
  return { table: contiguousTable(targets, lengths), targets };
}

/** The dispatcher's answer to `bio`, as a promise. */
function handle(dispatcher: Dispatcher, bio: Bio): Promise<IoResult> {
  return submitted((b, done) => dispatcher.submit(b, done), bio);
}

/** Resolves after pending promise callbacks and immediates have run. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

describe('dispatch: splitRequest', () => {
  function layout(lengths: number[], maxIo: (number | undefined)[]): SplittableSegment[] {
    let startSector = 0;
    return lengths.map((lengthSectors, i) => {
      const segment = { startSector, lengthSectors, target: { maxIoSectors: maxIo[i] } };
      startSector += lengthSectors;
      return segment;
    });
  }

  const layouts: Array<[string, SplittableSegment[]]> = [
    ['one segment, no limit', layout([20], [undefined])],
    ['three segments, no limit', layout([5, 1, 9], [undefined, undefined, undefined])],
    ['mixed limits', layout([7, 12, 3, 10], [undefined, 4, 1, 3])],
    ['limit larger than the segment', layout([5, 6], [8, 16])],
  ];

  for (const [name, segments] of layouts) {
    it(`tiles every request exactly and respects every boundary: ${name}`, () => {
      const last = segments[segments.length - 1]!;
      const deviceSectors = last.startSector + last.lengthSectors;
      for (let sector = 0; sector < deviceSectors; sector++) {
        for (let sectorCount = 1; sector + sectorCount <= deviceSectors; sectorCount++) {
          const pieces = splitRequest(segments, sector, sectorCount);
          let nextSector = sector;
          for (const piece of pieces) {
            const segment = segments[piece.segmentIndex]!;
            const absolute = segment.startSector + piece.targetSector;
            assert.equal(absolute, nextSector, 'pieces are contiguous and in order');
            assert.equal(piece.byteOffset, sectorsToBytes(nextSector - sector), 'byte offset matches');
            assert.ok(piece.sectorCount > 0, 'no empty pieces');
            assert.ok(piece.targetSector >= 0 && piece.targetSector + piece.sectorCount <= segment.lengthSectors, 'inside its segment');
            const max = segment.target.maxIoSectors;
            if (max !== undefined) {
              assert.ok(piece.sectorCount <= max, 'no longer than maxIoSectors');
              assert.equal(
                Math.floor(piece.targetSector / max),
                Math.floor((piece.targetSector + piece.sectorCount - 1) / max),
                'does not cross a maxIoSectors boundary',
              );
            }
            nextSector += piece.sectorCount;
          }
          assert.equal(nextSector, sector + sectorCount, 'pieces cover the request');
          // Maximal pieces: two neighbours in one segment only split at a maxIo boundary.
          for (let i = 1; i < pieces.length; i++) {
            const prev = pieces[i - 1]!;
            const cur = pieces[i]!;
            if (prev.segmentIndex === cur.segmentIndex) {
              const max = segments[cur.segmentIndex]!.target.maxIoSectors;
              assert.ok(max !== undefined && cur.targetSector % max === 0, 'split only where required');
            }
          }
        }
      }
    });
  }

  it('returns one piece for a request inside one segment and one chunk', () => {
    assert.deepEqual(splitRequest(layout([8, 8], [undefined, 4]), 9, 2), [
      { segmentIndex: 1, targetSector: 1, sectorCount: 2, byteOffset: 0 },
    ]);
  });

  it('throws for ranges outside the segments or empty', () => {
    const segments = layout([8], [undefined]);
    assert.throws(() => splitRequest(segments, 7, 2), RangeError);
    assert.throws(() => splitRequest(segments, 8, 1), RangeError);
    assert.throws(() => splitRequest(segments, 0, 0), RangeError);
  });
});

describe('dispatch: routing', () => {
  it('reads a linear + zero + linear table back as the expected bytes', async () => {
    const a = new MemoryDevice(64);
    const b = new MemoryDevice(64);
    a.contents.set(pattern(sectorsToBytes(64), 1));
    b.contents.set(pattern(sectorsToBytes(64), 2));
    const table = await loadMemoryTable('0 8 linear a 4\n8 4 zero\n12 8 linear b 16', { a, b });
    const dispatcher = new Dispatcher(table);

    const read = request(IoOp.Read, 0, 20);
    read.data.fill(0xee);
    assert.equal(await handle(dispatcher, read), sectorsToBytes(20));
    const expected = Buffer.concat([
      a.contents.subarray(sectorsToBytes(4), sectorsToBytes(12)),
      Buffer.alloc(sectorsToBytes(4)),
      b.contents.subarray(sectorsToBytes(16), sectorsToBytes(24)),
    ]);
    assert.deepEqual(Buffer.from(read.data), expected);
    assert.equal(dispatcher.inFlight, 0);
    await table.destroy();
  });

  it('writes spanning segments land at each target\'s device offset; zero drops its part', async () => {
    const a = new MemoryDevice(64);
    const b = new MemoryDevice(64);
    const table = await loadMemoryTable('0 8 linear a 4\n8 4 zero\n12 8 linear b 16', { a, b });
    const dispatcher = new Dispatcher(table);
    const data = pattern(sectorsToBytes(10), 9);
    assert.equal(await handle(dispatcher, request(IoOp.Write, 6, 10, { data })), sectorsToBytes(10));
    assert.deepEqual(a.contents.subarray(sectorsToBytes(10), sectorsToBytes(12)), data.subarray(0, sectorsToBytes(2)));
    assert.deepEqual(b.contents.subarray(sectorsToBytes(16), sectorsToBytes(20)), data.subarray(sectorsToBytes(6)));
    await table.destroy();
  });

  it('a request spanning three segments reaches each target once and completes once with the total', async () => {
    const { table, targets } = recordingTable([4, 4, 4]);
    const dispatcher = new Dispatcher(table);
    const read = request(IoOp.Read, 2, 8);
    const result = await handle(dispatcher, read);
    assert.equal(result, sectorsToBytes(8));
    assert.deepEqual(
      targets.map((t) => t.ios.map((io) => [io.sector, io.sectorCount, io.data.byteLength])),
      [[[2, 2, 1024]], [[0, 4, 2048]], [[0, 2, 1024]]],
    );
    // Each piece's buffer is a view of the request's buffer at the right place.
    assert.equal(targets[1]!.ios[0]!.data.buffer, read.data.buffer);
    assert.equal(targets[1]!.ios[0]!.data.byteOffset, read.data.byteOffset + 1024);
  });

  it('a request inside one segment is passed with the request\'s own buffer', async () => {
    const { table, targets } = recordingTable([4, 4]);
    const read = request(IoOp.Read, 5, 2);
    await handle(new Dispatcher(table), read);
    assert.equal(targets[1]!.ios[0]!.data, read.data);
    assert.equal(targets[1]!.ios[0]!.sector, 1);
  });

  it('splits at the target\'s maxIoSectors boundaries counted from the target start', async () => {
    const { table, targets } = recordingTable([3, 10], [], 4);
    await handle(new Dispatcher(table), request(IoOp.Write, 2, 11));
    assert.deepEqual(targets[0]!.ios.map((io) => [io.sector, io.sectorCount]), [[2, 1]]);
    assert.deepEqual(targets[1]!.ios.map((io) => [io.sector, io.sectorCount]), [[0, 4], [4, 4], [8, 2]]);
  });

  it('a failure in a later piece: the request reports the prefix before it, not success', async () => {
    const a = new MemoryDevice(64);
    const b = new MemoryDevice(64);
    b.failOp('read', EIO);
    const table = await loadMemoryTable('0 8 linear a 0\n8 8 linear b 0', { a, b });
    const dispatcher = new Dispatcher(table);
    assert.equal(await handle(dispatcher, request(IoOp.Read, 4, 8)), sectorsToBytes(4));
    assert.equal(await handle(dispatcher, request(IoOp.Read, 8, 4)), -EIO, 'the re-issued tail fails on its own');
    assert.equal(a.calls.read, 1, 'the other piece still ran');
    assert.equal(await handle(dispatcher, request(IoOp.Read, 0, 8)), sectorsToBytes(8), 'a request on a only succeeds');
    await table.destroy();
  });

  it('the first failing piece in request order gives the errno', async () => {
    const { table, targets } = recordingTable([4, 4]);
    targets[0]!.answer = () => -EOPNOTSUPP;
    targets[1]!.answer = () => -EIO;
    assert.equal(await handle(new Dispatcher(table), request(IoOp.Discard, 0, 8)), -EOPNOTSUPP);
  });

  it('an error segment fails reads and writes with EIO', async () => {
    const table = await loadMemoryTable('0 8 zero\n8 8 error', {});
    const dispatcher = new Dispatcher(table);
    assert.equal(await handle(dispatcher, request(IoOp.Read, 8, 1)), -EIO);
    assert.equal(await handle(dispatcher, request(IoOp.Write, 6, 4)), sectorsToBytes(2), 'the zero part moved, the error part did not');
    assert.equal(await handle(dispatcher, request(IoOp.Write, 8, 2)), -EIO);
    assert.equal(await handle(dispatcher, request(IoOp.Read, 0, 8)), sectorsToBytes(8));
  });

  it('zero target through the dispatcher: write-zeroes is EOPNOTSUPP, discard succeeds', async () => {
    const table = await loadMemoryTable('0 8 zero', {});
    const dispatcher = new Dispatcher(table);
    assert.equal(await handle(dispatcher, request(IoOp.WriteZeroes, 0, 8)), -EOPNOTSUPP);
    assert.equal(await handle(dispatcher, request(IoOp.Discard, 0, 8)), 0);
  });

  it('requests beyond the device end fail with EIO without reaching a target', async () => {
    const { table, targets } = recordingTable([4, 4]);
    const dispatcher = new Dispatcher(table);
    assert.equal(await handle(dispatcher, request(IoOp.Read, 6, 3)), -EIO);
    assert.equal(await handle(dispatcher, request(IoOp.Write, 8, 1)), -EIO);
    assert.equal(await handle(dispatcher, request(IoOp.Discard, 100, 1)), -EIO);
    assert.equal(targets[0]!.ios.length + targets[1]!.ios.length, 0);
  });

  it('discard and write-zeroes pass noUnmap and complete with 0, not a byte count', async () => {
    const { table, targets } = recordingTable([4, 4]);
    targets[0]!.answer = () => 0;
    targets[1]!.answer = () => 0;
    const dispatcher = new Dispatcher(table);
    assert.equal(await handle(dispatcher, request(IoOp.WriteZeroes, 2, 4, { noUnmap: true })), 0);
    assert.deepEqual(targets.map((t) => t.ios.map((io) => io.noUnmap)), [[true], [true]]);
    assert.ok(targets.every((t) => t.ios[0]!.data.byteLength === 0));
  });

  it('fails a Read whose buffer does not match its sector count with EIO, without reaching the target', async () => {
    const { table, targets } = recordingTable([8]);
    assert.equal(await handle(new Dispatcher(table), request(IoOp.Read, 0, 2, { data: Buffer.alloc(512) })), -EIO);
    assert.equal(targets[0]!.ios.length, 0);
  });

  it('flush reaches every segment\'s target exactly once; the result is the first error', async () => {
    const { table, targets } = recordingTable([4, 4, 4]);
    const dispatcher = new Dispatcher(table);
    assert.equal(await handle(dispatcher, request(IoOp.Flush, 0, 0)), 0);
    assert.deepEqual(targets.map((t) => t.ios.map((io) => io.op)), [[IoOp.Flush], [IoOp.Flush], [IoOp.Flush]]);
    targets[2]!.answer = () => -EIO;
    assert.equal(await handle(dispatcher, request(IoOp.Flush, 0, 0)), -EIO);
  });

  it('flush makes earlier writes durable on the backing devices', async () => {
    const a = new MemoryDevice(16);
    const b = new MemoryDevice(16);
    const table = await loadMemoryTable('0 8 linear a 0\n8 8 linear b 0', { a, b });
    const dispatcher = new Dispatcher(table);
    await handle(dispatcher, request(IoOp.Write, 6, 4));
    assert.equal(a.isFlushed || b.isFlushed, false);
    await handle(dispatcher, request(IoOp.Flush, 0, 0));
    assert.ok(a.isFlushed && b.isFlushed);
    await table.destroy();
  });

  it('a FUA write goes to every piece\'s device with FUA', async () => {
    const a = new MemoryDevice(16);
    const b = new MemoryDevice(16);
    const table = await loadMemoryTable('0 8 linear a 0\n8 8 linear b 0', { a, b });
    await handle(new Dispatcher(table), request(IoOp.Write, 6, 4, { fua: true }));
    assert.deepEqual([a.fuaWriteCount, b.fuaWriteCount], [1, 1]);
    assert.ok(a.isFlushed && b.isFlushed, 'no non-FUA write was left unflushed');
    await table.destroy();
  });

  it('a target bug in one piece fails the request with EIO only after every piece settled', async () => {
    const { table, targets } = recordingTable([4, 4]);
    let releaseSlow!: () => void;
    targets[0]!.answer = () => Promise.reject(new Error('target bug'));
    targets[1]!.answer = () => new Promise((resolve) => (releaseSlow = () => resolve(2048)));
    const dispatcher = new Dispatcher(table);
    let settled = false;
    const handled = handle(dispatcher, request(IoOp.Read, 0, 8)).finally(() => (settled = true));
    await settle();
    assert.equal(settled, false, 'waits for the slow piece');
    assert.equal(dispatcher.inFlight, 1);
    releaseSlow();
    assert.equal(await handled, -EIO);
    assert.equal(dispatcher.inFlight, 0);
  });
});

describe('dispatch: suspend and resume', () => {
  it('holds new I/O until resume and waits for in-flight I/O to drain', async () => {
    const disk = new MemoryDevice(16);
    disk.contents.set(pattern(sectorsToBytes(16), 4));
    const table = await loadMemoryTable('0 16 linear disk 0', { disk });
    const dispatcher = new Dispatcher(table);

    const gate = disk.hold(['read']);
    const inFlightRead = handle(dispatcher, request(IoOp.Read, 0, 1));
    await gate.whenWaiting(1);
    assert.equal(dispatcher.inFlight, 1);

    let suspended = false;
    const suspending = dispatcher.suspend().then(() => (suspended = true));
    await settle();
    assert.equal(suspended, false, 'suspend waits for the in-flight read');

    let lateDone = false;
    const lateRead = request(IoOp.Read, 2, 1);
    const late = handle(dispatcher, lateRead).then((r) => ((lateDone = true), r));
    await settle();
    assert.equal(disk.calls.read, 1, 'the request that arrived during suspend did not reach the device');
    assert.equal(dispatcher.deferredCount, 1);

    gate.release();
    assert.equal(await inFlightRead, 512);
    await suspending;
    assert.equal(dispatcher.suspended, true);
    assert.equal(dispatcher.inFlight, 0);
    await settle();
    assert.equal(lateDone, false, 'queued I/O waits while suspended');
    assert.equal(disk.calls.read, 1);

    await dispatcher.resume();
    assert.equal(await late, 512);
    assert.deepEqual(Buffer.from(lateRead.data), disk.contents.subarray(1024, 1536));
    assert.equal(dispatcher.suspended, false);
    await table.destroy();
  });

  it('re-submits deferred requests in arrival order', async () => {
    const { table, targets } = recordingTable([16]);
    const dispatcher = new Dispatcher(table);
    await dispatcher.suspend();
    const pending = [5, 1, 9, 3].map((sector) => handle(dispatcher, request(IoOp.Write, sector, 1)));
    await dispatcher.resume();
    await Promise.all(pending);
    assert.deepEqual(targets[0]!.ios.map((io) => io.sector), [5, 1, 9, 3]);
  });

  it('runs hooks in the kernel order across targets', async () => {
    const log: string[] = [];
    const { table } = recordingTable([4, 4], log);
    const dispatcher = new Dispatcher(table);
    await dispatcher.suspend();
    log.push('suspended');
    await dispatcher.resume();
    assert.deepEqual(log, [
      't0.presuspend', 't1.presuspend', 't0.postsuspend', 't1.postsuspend', 'suspended',
      't0.preresume', 't1.preresume', 't0.resume', 't1.resume',
    ]);
  });

  it('presuspend hooks run before I/O is blocked; postsuspend after it drained', async () => {
    const log: string[] = [];
    const { table, targets } = recordingTable([8], log);
    const dispatcher = new Dispatcher(table);
    let release!: () => void;
    targets[0]!.answer = () => new Promise((resolve) => (release = () => (log.push('io done'), resolve(512))));
    const io = handle(dispatcher, request(IoOp.Read, 0, 1));
    const suspending = dispatcher.suspend();
    await settle();
    assert.deepEqual(log, ['t0.presuspend']);
    release();
    await io;
    await suspending;
    assert.deepEqual(log, ['t0.presuspend', 'io done', 't0.postsuspend']);
  });

  it('suspending a suspended dispatcher throws EINVAL', async () => {
    const { table } = recordingTable([8]);
    const dispatcher = new Dispatcher(table);
    await dispatcher.suspend();
    await assert.rejects(dispatcher.suspend(), (error: NodeJS.ErrnoException) => error.errno === EINVAL);
  });

  it('suspending while a suspend is under way throws EBUSY', async () => {
    const { table } = recordingTable([8]);
    const dispatcher = new Dispatcher(table);
    const first = dispatcher.suspend();
    await assert.rejects(dispatcher.suspend(), /busy/);
    await first;
  });

  it('a failing presuspend leaves the dispatcher active and gives earlier targets their resume', async () => {
    const log: string[] = [];
    const { table, targets } = recordingTable([4, 4], log);
    targets[1]!.hookFailure.presuspend = new Error('cannot stop');
    const dispatcher = new Dispatcher(table);
    await assert.rejects(dispatcher.suspend(), /cannot stop/);
    assert.deepEqual(log, ['t0.presuspend', 't1.presuspend', 't0.resume']);
    assert.equal(dispatcher.suspended, false);
    assert.equal(await handle(dispatcher, request(IoOp.Read, 0, 1)), 512, 'I/O still flows');
  });

  it('a failing preresume leaves it suspended with the I/O still queued; a later resume works', async () => {
    const log: string[] = [];
    const { table, targets } = recordingTable([8], log);
    const dispatcher = new Dispatcher(table);
    await dispatcher.suspend();
    let done = false;
    const queued = handle(dispatcher, request(IoOp.Read, 0, 1)).then(() => (done = true));
    targets[0]!.hookFailure.preresume = new Error('not valid');
    await assert.rejects(dispatcher.resume(), /not valid/);
    assert.equal(dispatcher.suspended, true);
    assert.ok(!log.includes('t0.resume'), 'resume hooks did not run');
    await settle();
    assert.equal(done, false);
    assert.equal(targets[0]!.ios.length, 0);

    delete targets[0]!.hookFailure.preresume;
    await dispatcher.resume();
    await queued;
    assert.equal(done, true);
  });

  it('swapTable under suspend changes what reads return; the old table is handed back', async () => {
    const disk = new MemoryDevice(16);
    disk.contents.fill(0x77);
    const linear = await loadMemoryTable('0 8 linear disk 0', { disk });
    const zero = await loadMemoryTable('0 8 zero', { disk });
    const dispatcher = new Dispatcher(linear);

    const before = request(IoOp.Read, 0, 1);
    await handle(dispatcher, before);
    assert.equal(before.data[0], 0x77);

    await dispatcher.suspend();
    const queued = request(IoOp.Read, 0, 1);
    const queuedResult = handle(dispatcher, queued);
    const old = dispatcher.swapTable(zero);
    assert.equal(old, linear);
    assert.equal(dispatcher.table, zero);
    await old.destroy();
    await dispatcher.resume();

    assert.equal(await queuedResult, 512);
    assert.equal(queued.data[0], 0, 'the queued read was served by the new table');
    const after = request(IoOp.Read, 0, 1);
    after.data.fill(1);
    await handle(dispatcher, after);
    assert.equal(after.data[0], 0);
    await zero.destroy();
    assert.equal(disk.openHandleCount, 0);
  });

  it('a queued request is checked against the table live at resume (smaller table → EIO)', async () => {
    const big = recordingTable([16]);
    const small = recordingTable([4]);
    const dispatcher = new Dispatcher(big.table);
    await dispatcher.suspend();
    const queued = handle(dispatcher, request(IoOp.Read, 8, 1));
    dispatcher.swapTable(small.table);
    await dispatcher.resume();
    assert.equal(await queued, -EIO);
    assert.equal(big.targets[0]!.ios.length + small.targets[0]!.ios.length, 0);
  });

  it('swapTable refuses when not suspended', async () => {
    const { table } = recordingTable([8]);
    const dispatcher = new Dispatcher(table);
    assert.throws(() => dispatcher.swapTable(recordingTable([8]).table), /only be swapped while suspended/);
  });

  it('resume of an active dispatcher does nothing', async () => {
    const log: string[] = [];
    const { table } = recordingTable([8], log);
    await new Dispatcher(table).resume();
    assert.deepEqual(log, []);
  });
});

/** A target that keeps each `done` for the test to call. */
class CallbackTarget extends RecordingTarget {
  pendingDone: MapDone[] = [];
  throwInMap = false;

  override map(io: Bio, done: MapDone): void {
    if (this.throwInMap) throw new Error('target bug');
    this.ios.push(io);
    this.pendingDone.push(done);
  }
}

function callbackTable(lengths: number[]): { table: Table; targets: CallbackTarget[] } {
  const targets = lengths.map((_, i) => new CallbackTarget(`c${i}`, []));
  return { table: contiguousTable(targets, lengths), targets };
}

describe('dispatch: completion', () => {
  it('a read inside one segment goes to the target at the target sector with the request\'s buffer, in flight until done', () => {
    const { table, targets } = callbackTable([8, 8]);
    const dispatcher = new Dispatcher(table);
    const results: IoResult[] = [];
    const req = request(IoOp.Read, 10, 2);
    dispatcher.submit(req, (result) => results.push(result));
    assert.equal(targets[1]!.ios.length, 1);
    assert.equal(targets[1]!.ios[0]!.sector, 2);
    assert.equal(targets[1]!.ios[0]!.data, req.data);
    assert.equal(dispatcher.inFlight, 1);
    targets[1]!.pendingDone[0]!(1024);
    targets[1]!.pendingDone[0]!(7); // a second call is ignored
    assert.deepEqual(results, [1024]);
    assert.equal(dispatcher.inFlight, 0);
  });

  it('a map that throws completes the request with EIO and leaves nothing in flight', () => {
    const { table, targets } = callbackTable([8]);
    targets[0]!.throwInMap = true;
    const dispatcher = new Dispatcher(table);
    const results: IoResult[] = [];
    dispatcher.submit(request(IoOp.Read, 0, 1), (result) => results.push(result));
    assert.deepEqual(results, [-EIO]);
    assert.equal(dispatcher.inFlight, 0);
  });

  it('a split request answers once, after its slowest piece', () => {
    const { table, targets } = callbackTable([4, 4]);
    const dispatcher = new Dispatcher(table);
    const results: IoResult[] = [];
    dispatcher.submit(request(IoOp.Write, 2, 4), (result) => results.push(result));
    targets[1]!.pendingDone[0]!(1024);
    assert.deepEqual(results, [], 'the first piece is still out');
    targets[0]!.pendingDone[0]!(1024);
    assert.deepEqual(results, [2048]);
  });

  it('suspend waits for a request in flight', async () => {
    const { table, targets } = callbackTable([8]);
    const dispatcher = new Dispatcher(table);
    dispatcher.submit(request(IoOp.Read, 0, 1), () => {});
    let suspended = false;
    const suspending = dispatcher.suspend().then(() => (suspended = true));
    await settle();
    assert.equal(suspended, false);
    targets[0]!.pendingDone[0]!(512);
    await suspending;
    assert.equal(dispatcher.inFlight, 0);
  });
});

describe('dispatch: a split request reports only the bytes that moved', () => {
  async function splitResult(answers: Array<(io: Bio) => IoResult>, op = IoOp.Write): Promise<IoResult> {
    const { table, targets } = recordingTable(answers.map(() => 8));
    answers.forEach((answer, i) => (targets[i]!.answer = answer));
    return handle(new Dispatcher(table), request(op, 4, 4 + 8 * (answers.length - 2) + 4));
  }
  const full = (io: Bio): IoResult => io.data.byteLength;
  const short = (io: Bio): IoResult => io.data.byteLength - 512;

  it('a short first piece: its bytes, not the sum of all pieces', async () => {
    assert.equal(await splitResult([short, full]), 1536);
  });

  it('a failed middle piece: the prefix before it (ublk re-issues the tail, which fails on its own)', async () => {
    assert.equal(await splitResult([full, () => -ENOSPC, full]), 2048);
  });

  it('a failed first piece: its errno, whatever the later pieces did', async () => {
    assert.equal(await splitResult([() => -ENOSPC, full]), -ENOSPC);
  });

  it('a short read in the middle never counts the bytes after it', async () => {
    assert.equal(await splitResult([full, short, full], IoOp.Read), 2048 + 3584);
  });

  it('a first piece that moved nothing without an error is EIO (a zero-byte write would be re-issued for ever)', async () => {
    assert.equal(await splitResult([() => 0, full]), -EIO);
  });
});

describe('dispatch: REQUEUE', () => {
  it('while active, the request is mapped again and answered by the second try', async () => {
    const { table, targets } = recordingTable([8]);
    let tries = 0;
    targets[0]!.answer = (io) => (++tries === 1 ? REQUEUE : io.data.byteLength);
    assert.equal(await handle(new Dispatcher(table), request(IoOp.Read, 0, 2)), 1024);
    assert.equal(tries, 2);
  });

  it('one requeued piece sends the whole split request again', async () => {
    const { table, targets } = recordingTable([4, 4]);
    let tries = 0;
    targets[1]!.answer = (io) => (++tries === 1 ? REQUEUE : io.data.byteLength);
    assert.equal(await handle(new Dispatcher(table), request(IoOp.Write, 2, 4)), 2048);
    assert.deepEqual(targets[0]!.ios.map((io) => io.sector), [2, 2], 'the piece that had completed went again too');
  });

  it('during a --noflush suspend the request is held and mapped after resume', async () => {
    const { table, targets } = recordingTable([8]);
    const dispatcher = new Dispatcher(table);
    let release!: () => void;
    targets[0]!.answer = () => new Promise<MapOutcome>((resolve) => (release = () => resolve(REQUEUE)));
    let result: IoResult | undefined;
    void handle(dispatcher, request(IoOp.Read, 0, 1)).then((r) => (result = r));
    await settle();
    const suspending = dispatcher.suspend({ noflush: true });
    await settle();
    targets[0]!.answer = (io) => io.data.byteLength;
    release();
    await suspending;
    assert.equal(result, undefined, 'held, not failed');
    assert.equal(dispatcher.deferredCount, 1);
    await dispatcher.resume();
    await settle();
    assert.equal(result, 512);
  });

  it('during a suspend that flushes, a requeued request fails with EIO rather than stay behind', async () => {
    const { table, targets } = recordingTable([8]);
    const dispatcher = new Dispatcher(table);
    let release!: () => void;
    targets[0]!.answer = () => new Promise<MapOutcome>((resolve) => (release = () => resolve(REQUEUE)));
    const answered = handle(dispatcher, request(IoOp.Read, 0, 1));
    await settle();
    const suspending = dispatcher.suspend();
    await settle();
    release();
    await suspending;
    assert.equal(await answered, -EIO);
    assert.equal(dispatcher.deferredCount, 0);
  });

  it('presuspend hooks are told whether the suspend is --noflush', async () => {
    const { table, targets } = recordingTable([8]);
    const seen: boolean[] = [];
    targets[0]!.presuspend = async (options) => void seen.push(options!.noflush);
    const dispatcher = new Dispatcher(table);
    await dispatcher.suspend({ noflush: true });
    await dispatcher.resume();
    await dispatcher.suspend();
    assert.deepEqual(seen, [true, false]);
  });
});

/** A recording target whose device serves in place: its bytes are at PLACE_BASE + byte offset, up to `reach` sectors. */
class InPlaceTarget extends RecordingTarget {
  static readonly PLACE_BASE = 0x7f0000000000;
  readonly asked: Array<{ sector: number; byteLength: number; access: string }> = [];
  constructor(
    name: string,
    log: string[],
    readonly reach = Infinity,
  ) {
    super(name, log);
  }
  inPlaceAddress(sector: number, byteLength: number, access: 'read' | 'write'): number {
    this.asked.push({ sector, byteLength, access });
    return sector + byteLength / 512 <= this.reach ? InPlaceTarget.PLACE_BASE + sector * 512 : 0;
  }
  override devices(): never[] {
    return [{ servesInPlace: true } as never];
  }
}

function inPlaceRequest(op: IoOp, sector: number, sectorCount: number): Bio & { inPlaceAddress: number } {
  return { ...request(op, sector, sectorCount), inPlaceAddress: 0 };
}

describe('dispatch: serving in place', () => {
  it('answers a read with its address in the target, without map(), only when serving in place', async () => {
    const log: string[] = [];
    const target = new InPlaceTarget('p', log);
    const table = contiguousTable([new RecordingTarget('r', log), target], [8, 64]);
    const serving = new Dispatcher(table, { inPlace: true });
    const read = inPlaceRequest(IoOp.Read, 16, 8);
    assert.equal(await handle(serving, read), 4096);
    assert.equal(read.inPlaceAddress, InPlaceTarget.PLACE_BASE + 8 * 512, 'target-relative');
    assert.equal(target.ios.length, 0, 'map() not called');

    const beyond = new Dispatcher(contiguousTable([new InPlaceTarget('q', log, 4)], [64]), { inPlace: true });
    const far = inPlaceRequest(IoOp.Read, 8, 8);
    assert.equal(await handle(beyond, far), 4096);
    assert.equal(far.inPlaceAddress, 0, 'a target that cannot reach the bytes: map() serves it');

    const plain = new Dispatcher(table);
    const other = inPlaceRequest(IoOp.Read, 16, 8);
    assert.equal(await handle(plain, other), 4096);
    assert.equal(other.inPlaceAddress, 0);
    assert.equal(target.ios.length, 1, 'without inPlace, map() serves the read');

    const split = inPlaceRequest(IoOp.Read, 4, 8);
    assert.equal(await handle(serving, split), 4096);
    assert.equal(split.inPlaceAddress, 0, 'a read across two segments is mapped piece by piece');
  });

  it('places a write that fits one target serving in place, and counts it as mapped until it lands: a suspend waits for it', async () => {
    const log: string[] = [];
    const target = new InPlaceTarget('p', log);
    const dispatcher = new Dispatcher(contiguousTable([new RecordingTarget('r', log), target], [8, 64]), { inPlace: true });
    const write = request(IoOp.Write, 24, 8);
    assert.equal(dispatcher.placeWrite(write), InPlaceTarget.PLACE_BASE + 16 * 512);
    assert.equal(dispatcher.inFlight, 1);
    let suspended = false;
    const suspending = dispatcher.suspend().then(() => {
      suspended = true;
    });
    await settle();
    assert.equal(suspended, false, 'the suspend went ahead of a write ublk is still copying');
    assert.equal(dispatcher.placeWrite(request(IoOp.Write, 24, 8)), 0, 'nothing placed while suspending');
    const results: IoResult[] = [];
    dispatcher.landed(request(IoOp.Write, 24, 4), (result) => results.push(result));
    assert.deepEqual(results, [2048], 'answered with what ublk copied');
    await suspending;
    assert.equal(dispatcher.inFlight, 0);
    assert.equal(target.ios.length, 0, 'map() never saw it');
  });

  it('abandoned() releases a placed write', async () => {
    const dispatcher = new Dispatcher(contiguousTable([new InPlaceTarget('p', [])], [64]), { inPlace: true });
    assert.notEqual(dispatcher.placeWrite(request(IoOp.Write, 0, 8)), 0);
    dispatcher.abandoned();
    assert.equal(dispatcher.inFlight, 0);
    await dispatcher.suspend();
  });

  it('places nothing when not serving in place, for a read, across targets, past the end, or to a target without the hook', () => {
    const log: string[] = [];
    const table = contiguousTable([new RecordingTarget('r', log), new InPlaceTarget('p', log)], [8, 64]);
    assert.equal(new Dispatcher(table).placeWrite(request(IoOp.Write, 16, 8)), 0);
    const dispatcher = new Dispatcher(table, { inPlace: true });
    assert.equal(dispatcher.placeWrite(request(IoOp.Read, 16, 8)), 0);
    assert.equal(dispatcher.placeWrite(request(IoOp.Write, 4, 8)), 0, 'across two segments');
    assert.equal(dispatcher.placeWrite(request(IoOp.Write, 0, 8)), 0, 'a target without inPlaceAddress');
    assert.equal(dispatcher.placeWrite(request(IoOp.Write, 68, 8)), 0, 'past the end');
    assert.equal(dispatcher.inFlight, 0);
    assert.equal(new Dispatcher(table, { inPlace: true, suspended: true }).placeWrite(request(IoOp.Write, 16, 8)), 0, 'suspended');
  });

  it('servesInPlace: a table with a target that has the hook over a device that serves in place', () => {
    const log: string[] = [];
    assert.equal(servesInPlace(contiguousTable([new RecordingTarget('r', log), new InPlaceTarget('p', log)], [8, 8])), true);
    assert.equal(servesInPlace(contiguousTable([new RecordingTarget('r', log)], [8])), false);
  });
});
