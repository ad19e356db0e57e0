import { strict as assert } from 'node:assert';

import { EIO, ENODEV, type IoResult } from '../../../src/base/errno';
import { IoOp, type IoDone } from '../../../src/io/bio';
import type { IoCallback } from '../../../src/io/ring';
import { UBLK_IO_RES_NEED_GET_DATA, UBLK_IO_RES_OK, UBLK_U_IO_COMMIT_AND_FETCH_REQ, UBLK_U_IO_FETCH_REQ } from '../../../src/ublk/abi';
import { TagSlot, type TagOwner } from '../../../src/ublk/queue';

interface PostedCommand {
  cmdOp: number;
  result: IoResult;
  done: IoCallback;
}

/** A ring that records ublk commands, refusing the next `failures` preps as a full SQ would. */
class FakeRing {
  readonly posted: PostedCommand[] = [];
  failures = 0;
  isClosed = false;

  ublkIoCmdCb(_fd: number, cmdOp: number, _queueId: number, _tag: number, result: IoResult, _bufAddress: number, done: IoCallback): number {
    if (this.failures > 0) {
      this.failures--;
      throw new Error('io_uring_get_sqe: Device or resource busy');
    }
    this.posted.push({ cmdOp, result, done });
    return this.posted.length;
  }

  /** The kernel answers the last command posted. */
  completeLast(result: IoResult): void {
    this.posted[this.posted.length - 1].done(result);
  }
}

/** Plays the device: every delivered request is a 4 KiB read. */
class FakeOwner implements TagOwner {
  readonly ring = new FakeRing();
  readonly charFd = 99;
  readonly retired: IoResult[] = [];
  /** The `done` of every request delivered, in order. */
  readonly dones: IoDone[] = [];

  dispatch(slot: TagSlot): void {
    this.dones.push(slot.begin(IoOp.Read, 4096));
  }

  retire(result: IoResult): void {
    this.retired.push(result);
  }

  readonly placed: TagSlot[] = [];
  placeData(slot: TagSlot): void {
    this.placed.push(slot);
  }
  abandoned = 0;
  abandonPlacedWrite(): void {
    this.abandoned++;
  }

  inService = 0;
  requestBegan(): void {
    this.inService++;
  }
  requestAnswered(): void {
    this.inService--;
  }
}

function nextTurns(count: number): Promise<void> {
  let chain = Promise.resolve();
  for (let i = 0; i < count; i++) chain = chain.then(() => new Promise<void>((resolve) => setImmediate(resolve)));
  return chain;
}

describe('TagSlot', () => {
  let owner: FakeOwner;
  let slot: TagSlot;

  beforeEach(() => {
    owner = new FakeOwner();
    slot = new TagSlot(owner, 0, 3, new Uint8Array(8192), 0x10000);
  });

  it("hands requests of one length the same view of the tag's buffer, and a new one when the length changes", () => {
    const first = slot.dataView(4096);
    assert.equal(first.byteLength, 4096);
    assert.equal(slot.dataView(4096), first, 'no view made per request at a steady size');
    const longer = slot.dataView(8192);
    assert.equal(longer.byteLength, 8192);
    longer[4096] = 0xab;
    assert.equal(slot.buffer[4096], 0xab, 'the view is of the tag buffer itself');
    assert.equal(slot.dataView(512).byteLength, 512);
  });

  it('makes its buffer resident page by page as reads reach further, keeping its bytes, never past its end', () => {
    const buffer = new Uint8Array(16384).map((_, i) => i % 251);
    const wide = new TagSlot(owner, 0, 4, buffer, 0x20000);
    const before = Uint8Array.from(buffer);
    assert.equal(wide.residentByteLength, 0, 'nothing written when the tag is made');
    wide.makeResident(512);
    assert.equal(wide.residentByteLength, 4096, 'a read of a sector makes its whole page resident');
    wide.makeResident(4096);
    assert.equal(wide.residentByteLength, 4096);
    wide.makeResident(4097);
    assert.equal(wide.residentByteLength, 8192);
    wide.makeResident(1024);
    assert.equal(wide.residentByteLength, 8192, 'a shorter read does not shrink it');
    wide.makeResident(1 << 20);
    assert.equal(wide.residentByteLength, 16384, 'clipped to the buffer');
    assert.deepEqual(buffer, before, 'each page written with its own bytes: a read left alone answers what was there');
  });

  it('retries a post the ring refused, keeping the command and its result, and never retires the tag', async () => {
    owner.ring.failures = 2;
    slot.post(UBLK_U_IO_FETCH_REQ, 0);
    await nextTurns(3);
    assert.deepEqual(owner.ring.posted.map((c) => c.cmdOp), [UBLK_U_IO_FETCH_REQ]);

    owner.ring.completeLast(UBLK_IO_RES_OK);
    assert.equal(owner.dones.length, 1);
    owner.ring.failures = 3;
    owner.dones[0](4096);
    assert.equal(owner.ring.posted.length, 1, 'the commit was refused');
    await nextTurns(4);
    assert.equal(owner.ring.posted.length, 2);
    assert.equal(owner.ring.posted[1].cmdOp, UBLK_U_IO_COMMIT_AND_FETCH_REQ);
    assert.equal(owner.ring.posted[1].result, 4096, 'the handler result reached the kernel');
    assert.deepEqual(owner.retired, []);
  });

  it('counts a request in service from delivery to its first valid done, never twice', () => {
    slot.post(UBLK_U_IO_FETCH_REQ, 0);
    owner.ring.completeLast(UBLK_IO_RES_OK);
    assert.equal(owner.inService, 1);
    owner.dones[0](4096);
    owner.dones[0](4096);
    assert.equal(owner.inService, 0, 'a repeated done is not a second answer');
    owner.ring.completeLast(UBLK_IO_RES_OK);
    assert.equal(owner.inService, 1, 'the next request the commit fetched');
    owner.dones[0](512);
    assert.equal(owner.inService, 1, 'a stale done answers nothing');
    owner.dones[1](512);
    assert.equal(owner.inService, 0);
  });

  it('a late done while the commit waits for a retry posts nothing twice', async () => {
    slot.post(UBLK_U_IO_FETCH_REQ, 0);
    owner.ring.completeLast(UBLK_IO_RES_OK);
    owner.ring.failures = 1;
    owner.dones[0](512);
    owner.dones[0](1024);
    await nextTurns(2);
    assert.deepEqual(owner.ring.posted.map((c) => c.result), [0, 512]);
  });

  it('a done from an earlier request cannot answer the request the tag serves now', () => {
    slot.post(UBLK_U_IO_FETCH_REQ, 0);
    owner.ring.completeLast(UBLK_IO_RES_OK);
    owner.dones[0](512);
    owner.ring.completeLast(UBLK_IO_RES_OK); // COMMIT_AND_FETCH brings the next request
    assert.equal(owner.dones.length, 2);
    owner.dones[0](999); // late: the first request was answered already
    assert.equal(owner.ring.posted.length, 2, 'the stale done posted nothing');
    owner.dones[1](4096);
    assert.deepEqual(owner.ring.posted.map((c) => c.result), [0, 512, 4096]);
  });

  it('a handler result that is not an integer completes the request with -EIO', () => {
    slot.post(UBLK_U_IO_FETCH_REQ, 0);
    owner.ring.completeLast(UBLK_IO_RES_OK);
    owner.dones[0](Number.NaN);
    assert.deepEqual(owner.ring.posted.map((c) => c.result), [0, -EIO]);
  });

  it('gives the tag up only when the ring is closed', () => {
    owner.ring.isClosed = true;
    owner.ring.failures = 1;
    slot.post(UBLK_U_IO_FETCH_REQ, 0);
    assert.equal(owner.retired.length, 1);
  });

  it('gives a placed write up when its data is never asked for, or its command fails', () => {
    slot.post(UBLK_U_IO_FETCH_REQ, 0);
    owner.ring.completeLast(UBLK_IO_RES_NEED_GET_DATA);
    assert.deepEqual(owner.placed, [slot], 'the owner is asked where the data goes');
    slot.placedWrite = true;
    owner.ring.isClosed = true;
    owner.ring.failures = 1;
    slot.getData(0x7f0000000000);
    assert.equal(owner.abandoned, 1, 'a NEED_GET_DATA that cannot be sent');
    assert.equal(slot.placedWrite, false);

    const other = new TagSlot(owner, 0, 5, new Uint8Array(8192), 0x30000);
    owner.ring.isClosed = false;
    other.post(UBLK_U_IO_FETCH_REQ, 0);
    other.placedWrite = true;
    owner.ring.completeLast(-ENODEV);
    assert.equal(owner.abandoned, 2, 'a command ended by the queue going away');
  });
});
