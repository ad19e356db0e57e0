import assert from 'node:assert/strict';
import { Dispatcher, splitRequest, type BlockRequest, type SplittableSegment } from '../../../src/dm/dispatcher';
import { EINVAL, EIO, EOPNOTSUPP, type IoResult } from '../../../src/base/errno';
import { MemoryDevice, memoryDeviceOpener } from '../../../src/testing/memory-device';
import { IoOp } from '../../../src/io/bio';
import { type Target, type TargetIo } from '../../../src/dm/target';
import { Table, loadTable } from '../../../src/dm/table';
import { sectorsToBytes } from '../../../src/base/units';

const NO_DATA = new Uint8Array(0);

function request(op: IoOp, sector: number, sectorCount: number, extra: Partial<BlockRequest> = {}): BlockRequest {
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
  readonly ios: TargetIo[] = [];
  answer: (io: TargetIo) => IoResult | Promise<IoResult> = (io) =>
    io.op === IoOp.Read || io.op === IoOp.Write ? io.data.byteLength : 0;
  hookFailure: Partial<Record<'presuspend' | 'postsuspend' | 'preresume' | 'resume', Error>> = {};

  constructor(
    readonly name: string,
    readonly log: string[],
    readonly maxIoSectors?: number,
  ) {}

  async map(io: TargetIo): Promise<IoResult> {
    this.ios.push(io);
    return this.answer(io);
  }
  status(): string {
    return '';
  }
  devices() {
    return [];
  }
  async destroy(): Promise<void> {}
  async presuspend(): Promise<void> {
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
    const table = await loadTable('0 8 linear a 4\n8 4 zero\n12 8 linear b 16', memoryDeviceOpener({ a, b }));
    const dispatcher = new Dispatcher(table);

    const read = request(IoOp.Read, 0, 20);
    read.data.fill(0xee);
    assert.equal(await dispatcher.handle(read), sectorsToBytes(20));
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
    const table = await loadTable('0 8 linear a 4\n8 4 zero\n12 8 linear b 16', memoryDeviceOpener({ a, b }));
    const dispatcher = new Dispatcher(table);
    const data = pattern(sectorsToBytes(10), 9);
    assert.equal(await dispatcher.handle(request(IoOp.Write, 6, 10, { data })), sectorsToBytes(10));
    assert.deepEqual(a.contents.subarray(sectorsToBytes(10), sectorsToBytes(12)), data.subarray(0, sectorsToBytes(2)));
    assert.deepEqual(b.contents.subarray(sectorsToBytes(16), sectorsToBytes(20)), data.subarray(sectorsToBytes(6)));
    await table.destroy();
  });

  it('a request spanning three segments reaches each target once and completes once with the total', async () => {
    const { table, targets } = recordingTable([4, 4, 4]);
    const dispatcher = new Dispatcher(table);
    const read = request(IoOp.Read, 2, 8);
    const result = await dispatcher.handle(read);
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
    await new Dispatcher(table).handle(read);
    assert.equal(targets[1]!.ios[0]!.data, read.data);
    assert.equal(targets[1]!.ios[0]!.sector, 1);
  });

  it('splits at the target\'s maxIoSectors boundaries counted from the target start', async () => {
    const { table, targets } = recordingTable([3, 10], [], 4);
    await new Dispatcher(table).handle(request(IoOp.Write, 2, 11));
    assert.deepEqual(targets[0]!.ios.map((io) => [io.sector, io.sectorCount]), [[2, 1]]);
    assert.deepEqual(targets[1]!.ios.map((io) => [io.sector, io.sectorCount]), [[0, 4], [4, 4], [8, 2]]);
  });

  it('a failure in one piece fails the whole request with that errno', async () => {
    const a = new MemoryDevice(64);
    const b = new MemoryDevice(64);
    b.failOp('read', EIO);
    const table = await loadTable('0 8 linear a 0\n8 8 linear b 0', memoryDeviceOpener({ a, b }));
    const dispatcher = new Dispatcher(table);
    assert.equal(await dispatcher.handle(request(IoOp.Read, 4, 8)), -EIO);
    assert.equal(a.calls.read, 1, 'the other piece still ran');
    assert.equal(await dispatcher.handle(request(IoOp.Read, 0, 8)), sectorsToBytes(8), 'a request on a only succeeds');
    await table.destroy();
  });

  it('the first failing piece in request order gives the errno', async () => {
    const { table, targets } = recordingTable([4, 4]);
    targets[0]!.answer = () => -EOPNOTSUPP;
    targets[1]!.answer = () => -EIO;
    assert.equal(await new Dispatcher(table).handle(request(IoOp.Discard, 0, 8)), -EOPNOTSUPP);
  });

  it('an error segment fails reads and writes with EIO', async () => {
    const table = await loadTable('0 8 zero\n8 8 error', memoryDeviceOpener({}));
    const dispatcher = new Dispatcher(table);
    assert.equal(await dispatcher.handle(request(IoOp.Read, 8, 1)), -EIO);
    assert.equal(await dispatcher.handle(request(IoOp.Write, 6, 4)), -EIO);
    assert.equal(await dispatcher.handle(request(IoOp.Read, 0, 8)), sectorsToBytes(8));
  });

  it('zero target through the dispatcher: write-zeroes is EOPNOTSUPP, discard succeeds', async () => {
    const table = await loadTable('0 8 zero', memoryDeviceOpener({}));
    const dispatcher = new Dispatcher(table);
    assert.equal(await dispatcher.handle(request(IoOp.WriteZeroes, 0, 8)), -EOPNOTSUPP);
    assert.equal(await dispatcher.handle(request(IoOp.Discard, 0, 8)), 0);
  });

  it('requests beyond the device end fail with EIO without reaching a target', async () => {
    const { table, targets } = recordingTable([4, 4]);
    const dispatcher = new Dispatcher(table);
    assert.equal(await dispatcher.handle(request(IoOp.Read, 6, 3)), -EIO);
    assert.equal(await dispatcher.handle(request(IoOp.Write, 8, 1)), -EIO);
    assert.equal(await dispatcher.handle(request(IoOp.Discard, 100, 1)), -EIO);
    assert.equal(targets[0]!.ios.length + targets[1]!.ios.length, 0);
  });

  it('discard and write-zeroes pass noUnmap and complete with 0, not a byte count', async () => {
    const { table, targets } = recordingTable([4, 4]);
    targets[0]!.answer = () => 0;
    targets[1]!.answer = () => 0;
    const dispatcher = new Dispatcher(table);
    assert.equal(await dispatcher.handle(request(IoOp.WriteZeroes, 2, 4, { noUnmap: true })), 0);
    assert.deepEqual(targets.map((t) => t.ios.map((io) => io.noUnmap)), [[true], [true]]);
    assert.ok(targets.every((t) => t.ios[0]!.data.byteLength === 0));
  });

  it('rejects a Read whose buffer does not match its sector count', async () => {
    const { table } = recordingTable([8]);
    await assert.rejects(new Dispatcher(table).handle(request(IoOp.Read, 0, 2, { data: Buffer.alloc(512) })), RangeError);
  });

  it('flush reaches every segment\'s target exactly once; the result is the first error', async () => {
    const { table, targets } = recordingTable([4, 4, 4]);
    const dispatcher = new Dispatcher(table);
    assert.equal(await dispatcher.handle(request(IoOp.Flush, 0, 0)), 0);
    assert.deepEqual(targets.map((t) => t.ios.map((io) => io.op)), [[IoOp.Flush], [IoOp.Flush], [IoOp.Flush]]);
    targets[2]!.answer = () => -EIO;
    assert.equal(await dispatcher.handle(request(IoOp.Flush, 0, 0)), -EIO);
  });

  it('flush makes earlier writes durable on the backing devices', async () => {
    const a = new MemoryDevice(16);
    const b = new MemoryDevice(16);
    const table = await loadTable('0 8 linear a 0\n8 8 linear b 0', memoryDeviceOpener({ a, b }));
    const dispatcher = new Dispatcher(table);
    await dispatcher.handle(request(IoOp.Write, 6, 4));
    assert.equal(a.isFlushed || b.isFlushed, false);
    await dispatcher.handle(request(IoOp.Flush, 0, 0));
    assert.ok(a.isFlushed && b.isFlushed);
    await table.destroy();
  });

  it('a FUA write goes to every piece\'s device with FUA', async () => {
    const a = new MemoryDevice(16);
    const b = new MemoryDevice(16);
    const table = await loadTable('0 8 linear a 0\n8 8 linear b 0', memoryDeviceOpener({ a, b }));
    await new Dispatcher(table).handle(request(IoOp.Write, 6, 4, { fua: true }));
    assert.deepEqual([a.fuaWriteCount, b.fuaWriteCount], [1, 1]);
    assert.ok(a.isFlushed && b.isFlushed, 'no non-FUA write was left unflushed');
    await table.destroy();
  });

  it('a target whose map rejects makes handle reject only after every piece settled', async () => {
    const { table, targets } = recordingTable([4, 4]);
    let releaseSlow!: () => void;
    targets[0]!.answer = () => Promise.reject(new Error('target bug'));
    targets[1]!.answer = () => new Promise((resolve) => (releaseSlow = () => resolve(2048)));
    const dispatcher = new Dispatcher(table);
    let settled = false;
    const handled = dispatcher.handle(request(IoOp.Read, 0, 8)).finally(() => (settled = true));
    await settle();
    assert.equal(settled, false, 'waits for the slow piece');
    assert.equal(dispatcher.inFlight, 1);
    releaseSlow();
    await assert.rejects(handled, /target bug/);
    assert.equal(dispatcher.inFlight, 0);
  });
});

describe('dispatch: suspend and resume', () => {
  it('holds new I/O until resume and waits for in-flight I/O to drain', async () => {
    const disk = new MemoryDevice(16);
    disk.contents.set(pattern(sectorsToBytes(16), 4));
    const table = await loadTable('0 16 linear disk 0', memoryDeviceOpener({ disk }));
    const dispatcher = new Dispatcher(table);

    const gate = disk.hold(['read']);
    const inFlightRead = dispatcher.handle(request(IoOp.Read, 0, 1));
    await gate.whenWaiting(1);
    assert.equal(dispatcher.inFlight, 1);

    let suspended = false;
    const suspending = dispatcher.suspend().then(() => (suspended = true));
    await settle();
    assert.equal(suspended, false, 'suspend waits for the in-flight read');

    let lateDone = false;
    const lateRead = request(IoOp.Read, 2, 1);
    const late = dispatcher.handle(lateRead).then((r) => ((lateDone = true), r));
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
    const pending = [5, 1, 9, 3].map((sector) => dispatcher.handle(request(IoOp.Write, sector, 1)));
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
    const io = dispatcher.handle(request(IoOp.Read, 0, 1));
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
    assert.equal(await dispatcher.handle(request(IoOp.Read, 0, 1)), 512, 'I/O still flows');
  });

  it('a failing preresume leaves it suspended with the I/O still queued; a later resume works', async () => {
    const log: string[] = [];
    const { table, targets } = recordingTable([8], log);
    const dispatcher = new Dispatcher(table);
    await dispatcher.suspend();
    let done = false;
    const queued = dispatcher.handle(request(IoOp.Read, 0, 1)).then(() => (done = true));
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
    const opener = memoryDeviceOpener({ disk });
    const linear = await loadTable('0 8 linear disk 0', opener);
    const zero = await loadTable('0 8 zero', opener);
    const dispatcher = new Dispatcher(linear);

    const before = request(IoOp.Read, 0, 1);
    await dispatcher.handle(before);
    assert.equal(before.data[0], 0x77);

    await dispatcher.suspend();
    const queued = request(IoOp.Read, 0, 1);
    const queuedResult = dispatcher.handle(queued);
    const old = dispatcher.swapTable(zero);
    assert.equal(old, linear);
    assert.equal(dispatcher.table, zero);
    await old.destroy();
    await dispatcher.resume();

    assert.equal(await queuedResult, 512);
    assert.equal(queued.data[0], 0, 'the queued read was served by the new table');
    const after = request(IoOp.Read, 0, 1);
    after.data.fill(1);
    await dispatcher.handle(after);
    assert.equal(after.data[0], 0);
    await zero.destroy();
    assert.equal(disk.openHandleCount, 0);
  });

  it('a queued request is checked against the table live at resume (smaller table → EIO)', async () => {
    const big = recordingTable([16]);
    const small = recordingTable([4]);
    const dispatcher = new Dispatcher(big.table);
    await dispatcher.suspend();
    const queued = dispatcher.handle(request(IoOp.Read, 8, 1));
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

/** A target with mapCb that records which form was used; answers after `respond` is called. */
class CallbackTarget extends RecordingTarget {
  readonly callbackIos: TargetIo[] = [];
  pendingDone: Array<(result: IoResult) => void> = [];
  throwInMapCb = false;

  mapCb(io: TargetIo, done: (result: IoResult) => void): void {
    if (this.throwInMapCb) throw new Error('target bug');
    this.callbackIos.push(io);
    this.pendingDone.push(done);
  }
}

function callbackTable(lengths: number[]): { table: Table; targets: CallbackTarget[] } {
  const targets = lengths.map((_, i) => new CallbackTarget(`c${i}`, []));
  return { table: contiguousTable(targets, lengths), targets };
}

describe('dispatch: handleCb fast path', () => {
  it('a read inside one segment goes to mapCb at the target sector, counted in flight until done', () => {
    const { table, targets } = callbackTable([8, 8]);
    const dispatcher = new Dispatcher(table);
    const results: IoResult[] = [];
    const req = request(IoOp.Read, 10, 2);
    dispatcher.handleCb(req, (result) => results.push(result));
    assert.equal(targets[1]!.callbackIos.length, 1);
    assert.equal(targets[1]!.ios.length, 0, 'map() was not used');
    assert.equal(targets[1]!.callbackIos[0]!.sector, 2);
    assert.equal(targets[1]!.callbackIos[0]!.data, req.data);
    assert.equal(dispatcher.inFlight, 1);
    targets[1]!.pendingDone[0]!(1024);
    targets[1]!.pendingDone[0]!(7); // a second call is ignored
    assert.deepEqual(results, [1024]);
    assert.equal(dispatcher.inFlight, 0);
  });

  it('requests spanning segments, flushes and requests while suspended take the promise path', async () => {
    const { table, targets } = callbackTable([8, 8]);
    const dispatcher = new Dispatcher(table);
    const results: IoResult[] = [];
    dispatcher.handleCb(request(IoOp.Write, 6, 4), (result) => results.push(result));
    dispatcher.handleCb(request(IoOp.Flush, 0, 0), (result) => results.push(result));
    await settle();
    assert.deepEqual(results, [2048, 0]);
    assert.equal(targets[0]!.callbackIos.length + targets[1]!.callbackIos.length, 0);

    await dispatcher.suspend();
    dispatcher.handleCb(request(IoOp.Read, 0, 1), (result) => results.push(result));
    await settle();
    assert.equal(dispatcher.deferredCount, 1);
    assert.equal(results.length, 2, 'held while suspended');
    await dispatcher.resume();
    await settle();
    assert.deepEqual(results, [2048, 0, 512]);
  });

  it('a mapCb that throws completes the request with EIO and leaves nothing in flight', () => {
    const { table, targets } = callbackTable([8]);
    targets[0]!.throwInMapCb = true;
    const dispatcher = new Dispatcher(table);
    const results: IoResult[] = [];
    dispatcher.handleCb(request(IoOp.Read, 0, 1), (result) => results.push(result));
    assert.deepEqual(results, [-EIO]);
    assert.equal(dispatcher.inFlight, 0);
  });

  it('suspend waits for a request in flight on the fast path', async () => {
    const { table, targets } = callbackTable([8]);
    const dispatcher = new Dispatcher(table);
    dispatcher.handleCb(request(IoOp.Read, 0, 1), () => {});
    let suspended = false;
    const suspending = dispatcher.suspend().then(() => (suspended = true));
    await settle();
    assert.equal(suspended, false);
    targets[0]!.pendingDone[0]!(512);
    await suspending;
    assert.equal(dispatcher.inFlight, 0);
  });
});
