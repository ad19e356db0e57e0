import { strict as assert } from 'node:assert';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { EOPNOTSUPP, type IoResult } from '../../../src/base/errno';
import { IoOp, type IoDone } from '../../../src/io/bio';
import type { IoCallback, IoRing } from '../../../src/io/ring';
import {
  IO_DESC_BYTES,
  UBLK_IO_F_FUA,
  UBLK_IO_OP_READ,
  UBLK_IO_OP_WRITE,
  UBLK_IO_OP_WRITE_SAME,
  UBLK_IO_RES_OK,
  UBLK_U_IO_COMMIT_AND_FETCH_REQ,
  descriptorMmapByteLength,
} from '../../../src/ublk/abi';
import { UblkQueue, type UblkRequest } from '../../../src/ublk/queue';

const DEPTH = 4;
const MAX_IO_BYTES = 64 * 1024;

interface Posted {
  readonly cmdOp: number;
  readonly tag: number;
  readonly result: IoResult;
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

  ublkIoCmdCb(_fd: number, cmdOp: number, _queueId: number, tag: number, result: IoResult, _bufAddress: number, done: IoCallback): number {
    this.posted.push({ cmdOp, tag, result, done });
    return this.posted.length;
  }

  /** The kernel answers the last command posted for `tag` with a request (its descriptor is in the mapping). */
  deliver(tag: number): void {
    const last = [...this.posted].reverse().find((command) => command.tag === tag);
    assert.ok(last, `nothing posted for tag ${tag}`);
    last.done(UBLK_IO_RES_OK);
  }
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
  let served: Array<{ request: UblkRequest; seen: Omit<UblkRequest, 'data'> & { dataByteLength: number }; done: IoDone }>;

  async function writeDescriptor(tag: number, opFlags: number, sectorCount: number, sector: number): Promise<void> {
    const entry = Buffer.alloc(IO_DESC_BYTES);
    entry.writeUInt32LE(opFlags, 0);
    entry.writeUInt32LE(sectorCount, 4);
    entry.writeBigUInt64LE(BigInt(sector), 8);
    await descriptors.write(entry, 0, IO_DESC_BYTES, tag * IO_DESC_BYTES);
  }

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
