import { strict as assert } from 'node:assert';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { ENODEV, EIO, EOPNOTSUPP, type IoResult } from '../../../src/base/errno';
import { IoOp, type IoDone } from '../../../src/io/bio';
import type { IoCallback, IoRing } from '../../../src/io/ring';
import {
  IO_DESC_BYTES,
  UBLK_IO_F_FUA,
  UBLK_IO_OP_READ,
  UBLK_IO_OP_WRITE,
  UBLK_IO_OP_WRITE_SAME,
  UBLK_IO_RES_NEED_GET_DATA,
  UBLK_IO_RES_OK,
  UBLK_U_IO_COMMIT_AND_FETCH_REQ,
  UBLK_U_IO_NEED_GET_DATA,
  descriptorMmapByteLength,
} from '../../../src/ublk/abi';
import { UblkQueue, type UblkRequest, type WritePlacer } from '../../../src/ublk/queue';

const DEPTH = 4;
const MAX_IO_BYTES = 64 * 1024;

interface Posted {
  readonly cmdOp: number;
  readonly tag: number;
  readonly result: IoResult;
  /** The buffer address the command names. */
  readonly address: number;
  readonly done: IoCallback;
}

/** Records the ublk commands a queue posts; the test answers them as the kernel would. */
class RecordingRing {
  readonly posted: Posted[] = [];
  readonly isClosed = false;
  kept = false;

  keepUntilExit(): void {
    this.kept = true;
  }

  ublkIoCmdCb(_fd: number, cmdOp: number, _queueId: number, tag: number, result: IoResult, address: number, done: IoCallback): number {
    this.posted.push({ cmdOp, tag, result, address, done });
    return this.posted.length;
  }

  /** The last command posted for `tag`. */
  lastFor(tag: number): Posted {
    const last = [...this.posted].reverse().find((command) => command.tag === tag);
    assert.ok(last, `nothing posted for tag ${tag}`);
    return last;
  }

  /** The kernel answers the last command posted for `tag` with a request (its descriptor is in the mapping). */
  deliver(tag: number): void {
    this.answer(tag, UBLK_IO_RES_OK);
  }

  /** The kernel completes the last command posted for `tag` with `result`. */
  answer(tag: number, result: IoResult): void {
    this.lastFor(tag).done(result);
  }
}

/** What the kernel would write for `tag` in the descriptor array (here a regular file the queue maps). */
async function writeDescriptorInto(descriptors: fsp.FileHandle, tag: number, opFlags: number, sectorCount: number, sector: number): Promise<void> {
  const entry = Buffer.alloc(IO_DESC_BYTES);
  entry.writeUInt32LE(opFlags, 0);
  entry.writeUInt32LE(sectorCount, 4);
  entry.writeBigUInt64LE(BigInt(sector), 8);
  await descriptors.write(entry, 0, IO_DESC_BYTES, tag * IO_DESC_BYTES);
}

/**
 * UblkQueue.dispatch against a descriptor array that is a regular file: the mapping is MAP_SHARED,
 * so what the test writes to the file is what the queue decodes, as it would be the kernel's.
 */
describe('UblkQueue dispatch', () => {
  let dir: string;
  let descriptors: fsp.FileHandle;
  let ring: RecordingRing;
  let queue: UblkQueue;
  let served: Array<{ request: UblkRequest; seen: Omit<UblkRequest, 'data' | 'inPlaceAddress'> & { dataByteLength: number }; done: IoDone }>;

  const writeDescriptor = (tag: number, opFlags: number, sectorCount: number, sector: number): Promise<void> =>
    writeDescriptorInto(descriptors, tag, opFlags, sectorCount, sector);

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-queue-'));
    descriptors = await fsp.open(path.join(dir, 'descriptors'), 'w+');
    await descriptors.truncate(descriptorMmapByteLength(DEPTH));
    ring = new RecordingRing();
    served = [];
    const geometry = { devId: 7, charFd: descriptors.fd, queues: 1, depth: DEPTH, maxIoBytes: MAX_IO_BYTES };
    queue = new UblkQueue(ring as unknown as IoRing, geometry, 0, (request, done) => {
      const { queueId, tag, op, sector, sectorCount, fua, noUnmap } = request;
      served.push({ request, seen: { queueId, tag, op, sector, sectorCount, fua, noUnmap, dataByteLength: request.data.byteLength }, done });
    });
    queue.postFetches();
  });

  afterEach(async () => {
    queue.unmap();
    await descriptors.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('posting the FETCHes keeps the ring until the process exits (a live thread must not release it)', () => {
    assert.ok(ring.kept);
  });

  it("hands the handler the descriptor's request, in the tag's one request object, refilled for the next", async () => {
    await writeDescriptor(2, UBLK_IO_OP_WRITE | UBLK_IO_F_FUA, 16, 2 ** 40 + 8);
    ring.deliver(2);
    assert.equal(served.length, 1);
    assert.deepEqual(served[0]!.seen, { queueId: 0, tag: 2, op: IoOp.Write, sector: 2 ** 40 + 8, sectorCount: 16, fua: true, noUnmap: false, dataByteLength: 8192 });

    served[0]!.done(8192);
    const commit = ring.posted[ring.posted.length - 1]!;
    assert.deepEqual([commit.cmdOp, commit.tag, commit.result], [UBLK_U_IO_COMMIT_AND_FETCH_REQ, 2, 8192]);

    await writeDescriptor(2, UBLK_IO_OP_READ, 8, 24);
    ring.deliver(2);
    assert.equal(served.length, 2);
    assert.deepEqual(served[1]!.seen, { queueId: 0, tag: 2, op: IoOp.Read, sector: 24, sectorCount: 8, fua: false, noUnmap: false, dataByteLength: 4096 });
    assert.equal(served[1]!.request, served[0]!.request, 'the same object, refilled: none made per request');

    await writeDescriptor(3, UBLK_IO_OP_READ, 1, 0);
    ring.deliver(3);
    assert.notEqual(served[2]!.request, served[1]!.request, 'each tag has its own');
    assert.equal(served[2]!.request.tag, 3);
  });

  it("makes a tag's buffer resident as far as a read reaches, and not for a write (the kernel fills that itself)", async () => {
    const residentByteLength = (tag: number): number =>
      (queue as unknown as { tags: Array<{ residentByteLength: number }> }).tags[tag]!.residentByteLength;
    await writeDescriptor(1, UBLK_IO_OP_WRITE, 16, 0);
    ring.deliver(1);
    assert.equal(residentByteLength(1), 0, 'a write leaves the pages to the kernel');
    served[0]!.done(8192);
    await writeDescriptor(1, UBLK_IO_OP_READ, 24, 0);
    ring.deliver(1);
    assert.equal(residentByteLength(1), 12288, 'a 12 KiB read: three pages');
    assert.equal(residentByteLength(0), 0, "another tag's buffer untouched");
  });

  it('answers an operation it does not know with -EOPNOTSUPP, without the handler', async () => {
    await writeDescriptor(1, UBLK_IO_OP_WRITE_SAME, 8, 0);
    ring.deliver(1);
    assert.equal(served.length, 0);
    const commit = ring.posted[ring.posted.length - 1]!;
    assert.deepEqual([commit.cmdOp, commit.tag, commit.result], [UBLK_U_IO_COMMIT_AND_FETCH_REQ, 1, -EOPNOTSUPP]);
  });
});

/** Places every write at PLACE_BASE + its byte offset, unless told to decline; records the calls. */
class RecordingPlacer implements WritePlacer {
  static readonly PLACE_BASE = 0x7f0000000000;
  declines = false;
  readonly placed: Array<{ sector: number; sectorCount: number }> = [];
  readonly landings: Array<{ sector: number; sectorCount: number; done: IoDone }> = [];
  abandonedCount = 0;

  placeWrite(request: UblkRequest): number {
    if (this.declines) return 0;
    this.placed.push({ sector: request.sector, sectorCount: request.sectorCount });
    return RecordingPlacer.PLACE_BASE + request.sector * 512;
  }
  landed(request: UblkRequest, done: IoDone): void {
    this.landings.push({ sector: request.sector, sectorCount: request.sectorCount, done });
  }
  abandoned(): void {
    this.abandonedCount++;
  }
}

describe('UblkQueue on a device whose writes come without their data (UBLK_F_NEED_GET_DATA)', () => {
  let dir: string;
  let descriptors: fsp.FileHandle;
  let ring: RecordingRing;
  let placer: RecordingPlacer;
  let queue: UblkQueue;
  let served: Array<{ request: UblkRequest; done: IoDone }>;
  /** Each tag's own buffer address, as its FETCH named it. */
  let bufferOf: (tag: number) => number;

  const writeDescriptor = (tag: number, opFlags: number, sectorCount: number, sector: number): Promise<void> =>
    writeDescriptorInto(descriptors, tag, opFlags, sectorCount, sector);

  function start(withPlacer: boolean): void {
    const geometry = { devId: 7, charFd: descriptors.fd, queues: 1, depth: DEPTH, maxIoBytes: MAX_IO_BYTES, needGetData: true };
    queue = new UblkQueue(ring as unknown as IoRing, geometry, 0, (request, done) => served.push({ request, done }), withPlacer ? placer : undefined);
    queue.postFetches();
    const fetches = [...ring.posted];
    bufferOf = (tag) => fetches.find((command) => command.tag === tag)!.address;
  }

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-getdata-'));
    descriptors = await fsp.open(path.join(dir, 'descriptors'), 'w+');
    await descriptors.truncate(descriptorMmapByteLength(DEPTH));
    ring = new RecordingRing();
    placer = new RecordingPlacer();
    served = [];
  });

  afterEach(async () => {
    queue.unmap();
    await descriptors.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it("names the placer's address for a write's data, then hands the landed write to the placer with what ublk copied, not to the handler", async () => {
    start(true);
    await writeDescriptor(1, UBLK_IO_OP_WRITE, 8, 64);
    ring.answer(1, UBLK_IO_RES_NEED_GET_DATA);
    assert.deepEqual(placer.placed, [{ sector: 64, sectorCount: 8 }]);
    const getData = ring.lastFor(1);
    assert.deepEqual([getData.cmdOp, getData.result, getData.address], [UBLK_U_IO_NEED_GET_DATA, 0, RecordingPlacer.PLACE_BASE + 64 * 512]);

    await writeDescriptor(1, UBLK_IO_OP_WRITE, 4, 64); // ublk could copy only a prefix, and says so
    ring.deliver(1);
    assert.equal(served.length, 0, 'the handler is not asked to write it again');
    assert.deepEqual(placer.landings.map(({ sector, sectorCount }) => ({ sector, sectorCount })), [{ sector: 64, sectorCount: 4 }]);
    placer.landings[0]!.done(2048);
    const commit = ring.lastFor(1);
    assert.deepEqual([commit.cmdOp, commit.result, commit.address], [UBLK_U_IO_COMMIT_AND_FETCH_REQ, 2048, bufferOf(1)]);

    await writeDescriptor(1, UBLK_IO_OP_READ, 8, 0);
    ring.deliver(1);
    assert.equal(served.length, 1, 'the next request on the tag goes to the handler');
    assert.equal(placer.abandonedCount, 0);
  });

  it("takes a write the placer declines into the tag's buffer and hands it to the handler", async () => {
    start(true);
    placer.declines = true;
    await writeDescriptor(2, UBLK_IO_OP_WRITE, 8, 64);
    ring.answer(2, UBLK_IO_RES_NEED_GET_DATA);
    assert.deepEqual([ring.lastFor(2).cmdOp, ring.lastFor(2).address], [UBLK_U_IO_NEED_GET_DATA, bufferOf(2)]);
    ring.deliver(2);
    assert.equal(served.length, 1);
    assert.equal(served[0]!.request.op, IoOp.Write);
    assert.equal(placer.landings.length, 0);
  });

  it('without a placer (the daemon thread serving it), every write goes to the tag buffer and the handler', async () => {
    start(false);
    await writeDescriptor(0, UBLK_IO_OP_WRITE, 8, 64);
    ring.answer(0, UBLK_IO_RES_NEED_GET_DATA);
    assert.deepEqual([ring.lastFor(0).cmdOp, ring.lastFor(0).address], [UBLK_U_IO_NEED_GET_DATA, bufferOf(0)]);
    ring.deliver(0);
    assert.equal(served.length, 1);
  });

  it("asked again for a placed write's data (ublk could not copy there), gives the place up and names the tag's buffer", async () => {
    start(true);
    await writeDescriptor(3, UBLK_IO_OP_WRITE, 8, 64);
    ring.answer(3, UBLK_IO_RES_NEED_GET_DATA);
    ring.answer(3, UBLK_IO_RES_NEED_GET_DATA);
    assert.equal(placer.abandonedCount, 1);
    assert.equal(placer.placed.length, 1, 'not placed a second time');
    assert.deepEqual([ring.lastFor(3).cmdOp, ring.lastFor(3).address], [UBLK_U_IO_NEED_GET_DATA, bufferOf(3)]);
    ring.deliver(3);
    assert.equal(served.length, 1, 'then served as any write');
    assert.equal(placer.landings.length, 0);
  });

  it('a placed write whose tag then brings another request (ublk requeued the write, blk-mq gave it elsewhere): the place is given up and the request served', async () => {
    start(true);
    await writeDescriptor(2, UBLK_IO_OP_WRITE, 8, 64);
    ring.answer(2, UBLK_IO_RES_NEED_GET_DATA);
    await writeDescriptor(2, UBLK_IO_OP_READ, 8, 0);
    ring.deliver(2);
    assert.equal(placer.abandonedCount, 1, 'the placement no longer holds a suspend');
    assert.equal(placer.landings.length, 0);
    assert.equal(served.length, 1, 'the read goes to the handler');
    assert.deepEqual([served[0]!.request.op, served[0]!.request.sector], [IoOp.Read, 0]);
    served[0]!.done(4096);
    assert.deepEqual([ring.lastFor(2).cmdOp, ring.lastFor(2).result], [UBLK_U_IO_COMMIT_AND_FETCH_REQ, 4096]);
  });

  it('gives a placed write up when its command fails (the queue is torn down)', async () => {
    start(true);
    await writeDescriptor(1, UBLK_IO_OP_WRITE, 8, 64);
    ring.answer(1, UBLK_IO_RES_NEED_GET_DATA);
    ring.answer(1, -ENODEV);
    assert.equal(placer.abandonedCount, 1);
  });

  it("commits a read answered in place with the address it names, and the next with the tag's buffer", async () => {
    start(true);
    await writeDescriptor(2, UBLK_IO_OP_READ, 8, 16);
    ring.deliver(2);
    served[0]!.request.inPlaceAddress = 0x7f0000123000;
    served[0]!.done(4096);
    assert.deepEqual([ring.lastFor(2).cmdOp, ring.lastFor(2).result, ring.lastFor(2).address], [UBLK_U_IO_COMMIT_AND_FETCH_REQ, 4096, 0x7f0000123000]);

    ring.deliver(2);
    assert.equal(served[1]!.request.inPlaceAddress, 0, 'reset for each request');
    served[1]!.done(4096);
    assert.equal(ring.lastFor(2).address, bufferOf(2));

    ring.deliver(2);
    served[2]!.request.inPlaceAddress = 0x7f0000123000;
    served[2]!.done(-EIO);
    assert.deepEqual([ring.lastFor(2).result, ring.lastFor(2).address], [-EIO, bufferOf(2)], 'a failed read names no data');
  });
});
