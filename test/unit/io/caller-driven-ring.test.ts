import { strict as assert } from 'node:assert';
import { promises as fsp, writeSync, closeSync, openSync, readSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { native } from '../../../src/io/native';
import { TMPFS_MAGIC, openFileDevice } from '../../../src/io/file-device';
import { IoRing } from '../../../src/io/ring';
import { UBLK_U_IO_FETCH_REQ } from '../../../src/ublk/abi';
import { EOPNOTSUPP } from '../../../src/base/errno';

/** A ring a queue thread drives itself: it submits and waits in waitAndDispatch, never through libuv. */
describe('IoRing driven by its caller (real io_uring)', () => {
  let dir: string;
  let handle: fsp.FileHandle;
  let ring: IoRing;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-cring-'));
    handle = await fsp.open(path.join(dir, 'data'), 'w+');
    ring = IoRing.create({ entries: 16, drivenBy: 'caller' });
  });

  afterEach(async () => {
    ring.close();
    await handle.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('submits nothing until waitAndDispatch, then runs the callbacks it waited for', async () => {
    const results: number[] = [];
    ring.writeCb(handle.fd, Buffer.alloc(4096, 7), 0, 0, (result) => results.push(result));
    // Turns of the event loop do not move a caller-driven ring.
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(results.length, 0);
    assert.equal((await handle.stat()).size, 0);

    let ran = 0;
    while (results.length === 0) ran += ring.waitAndDispatch(1000);
    assert.equal(ran, 1);
    assert.deepEqual(results, [4096]);
    const readBack = Buffer.alloc(4096);
    ring.readCb(handle.fd, readBack, 0, (result) => results.push(result));
    while (results.length === 1) ring.waitAndDispatch(1000);
    assert.deepEqual(results, [4096, 4096]);
    assert.ok(readBack.every((byte) => byte === 7));
  });

  it("routes completions by slot after the slot's generations wrap (a slot reused over 1024 times), its tokens int32s", () => {
    // A token is generation << 21 | slot, with 1024 generations: one request at a time takes the
    // same slot each time, so 2100 of them wrap it twice, and each completion must still reach
    // its own callback.
    const buf = Buffer.alloc(512);
    const tokens = new Set<number>();
    let completed = 0;
    for (let request = 0; request < 2100; request++) {
      const token = ring.readCb(handle.fd, buf, 0, (result) => {
        assert.equal(result, 0, 'a read of the empty file');
        completed++;
      });
      assert.ok(token >= 0 && token === (token | 0), `token ${token} is a non-negative int32`);
      tokens.add(token);
      // A completion routed to no callback is dropped: the read would never count.
      for (let wait = 0; wait < 100 && completed === request; wait++) ring.waitAndDispatch(100);
      assert.equal(completed, request + 1, `request ${request} (token ${token}) completed`);
    }
    assert.equal(tokens.size, 1024, "one slot's every generation, each token reused only after the wrap");
  });

  it('times its wait in the kernel for a clock, without the callbacks it ran after', () => {
    // A poll policy judges the gap between requests by this: a slow callback (a target's own
    // copy) must not read as a slow client.
    const clock = { waitMicros: -1 };
    let callbackMs = 0;
    ring.writeCb(handle.fd, Buffer.alloc(512, 3), 0, 0, () => {
      const started = process.hrtime.bigint();
      while (Number(process.hrtime.bigint() - started) / 1e6 < 50);
      callbackMs = Number(process.hrtime.bigint() - started) / 1e6;
    });
    const started = process.hrtime.bigint();
    let ran = 0;
    while (ran === 0) ran = ring.waitAndDispatch(1000, { queued: 'submit' }, clock);
    const totalMs = Number(process.hrtime.bigint() - started) / 1e6;
    assert.ok(callbackMs >= 50 && totalMs >= 50, `the callback ran 50 ms (${callbackMs}) inside the call (${totalMs})`);
    assert.ok(clock.waitMicros >= 0 && clock.waitMicros < 40_000, `the wait took ${clock.waitMicros} us, not the callback's 50 ms`);
  });

  it('times a wait that sleeps out its timeout, and one that polls out its budget first', () => {
    // Nothing is in flight: both waits find nothing, and their length is all the clock can see.
    const clock = { waitMicros: -1 };
    assert.equal(ring.waitAndDispatch(30, { queued: 'submit' }, clock), 0);
    assert.ok(clock.waitMicros >= 25_000 && clock.waitMicros < 1_000_000, `a 30 ms sleep took ${clock.waitMicros} us`);
    assert.equal(ring.waitAndDispatch(0, { queued: 'submit', pollMicros: 5000 }, clock), 0);
    assert.ok(clock.waitMicros >= 4_500 && clock.waitMicros < 1_000_000, `a 5 ms poll took ${clock.waitMicros} us`);
  });

  it('submits what its callbacks queued before it returns, not at the next call', async () => {
    // A write its callback queues lands in the file with no further waitAndDispatch: a queue
    // thread's COMMIT_AND_FETCH must not wait for the thread's next turn of its event loop.
    const results: number[] = [];
    ring.writeCb(handle.fd, Buffer.alloc(512, 1), 0, 0, (first) => {
      results.push(first);
      ring.writeCb(handle.fd, Buffer.alloc(512, 2), 512, 0, (second) => results.push(second));
    });
    while (results.length === 0) ring.waitAndDispatch(1000);
    assert.deepEqual(results, [512], 'the second write has not been reaped');
    const deadline = Date.now() + 5000;
    while ((await handle.stat()).size < 1024 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal((await handle.stat()).size, 1024, 'the write queued by the callback reached the file');
    while (results.length < 2) ring.waitAndDispatch(1000);
    assert.deepEqual(results, [512, 512]);
  });

  it("with 'hold', leaves what its callbacks queued for the next wait or submitQueued()", async () => {
    const results: number[] = [];
    const queueSecond = (first: number): void => {
      results.push(first);
      ring.writeCb(handle.fd, Buffer.alloc(512, 2), 512, 0, (second) => results.push(second));
    };
    ring.writeCb(handle.fd, Buffer.alloc(512, 1), 0, 0, queueSecond);
    while (results.length === 0) ring.waitAndDispatch(1000, { queued: 'hold' });
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal((await handle.stat()).size, 512, 'the second write is still queued');
    ring.submitQueued();
    const deadline = Date.now() + 5000;
    while ((await handle.stat()).size < 1024 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal((await handle.stat()).size, 1024, 'submitQueued() handed it to the kernel');
    while (results.length < 2) ring.waitAndDispatch(1000, { queued: 'hold' });
    assert.deepEqual(results, [512, 512]);

    // And the next wait submits a held request itself, in the same io_uring_enter it waits in.
    ring.writeCb(handle.fd, Buffer.alloc(512, 3), 1024, 0, queueSecond);
    while (results.length < 4) ring.waitAndDispatch(1000, { queued: 'hold' });
    assert.deepEqual(results, [512, 512, 512, 512]);
  });

  it('with pollMicros, returns as soon as a completion is polled, and still times out when none comes', () => {
    const results: number[] = [];
    ring.writeCb(handle.fd, Buffer.alloc(512, 4), 0, 0, (result) => results.push(result));
    let started = process.hrtime.bigint();
    while (results.length === 0) ring.waitAndDispatch(5000, { queued: 'submit', pollMicros: 2_000_000 });
    let elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    assert.deepEqual(results, [512]);
    assert.ok(elapsedMs < 1000, `a completion polled for ${elapsedMs} ms`);

    started = process.hrtime.bigint();
    assert.equal(ring.waitAndDispatch(20, { queued: 'submit', pollMicros: 10_000 }), 0);
    elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    assert.ok(elapsedMs >= 25, `polled 10 ms, then slept 20 ms: returned after ${elapsedMs} ms`);
  });

  it('sends the ublk commands staged before a wait in that wait, and those its callbacks stage in the next', () => {
    // A regular file answers a uring_cmd with -EOPNOTSUPP: enough to see each went out.
    const cmdOp = UBLK_U_IO_FETCH_REQ;
    const results: number[] = [];
    ring.ublkIoCmdCb(handle.fd, cmdOp, 0, 0, 0, 0, (first) => {
      results.push(first);
      ring.ublkIoCmdCb(handle.fd, cmdOp, 0, 1, 0, 0, (second) => results.push(second));
    });
    while (results.length === 0) ring.waitAndDispatch(1000, { queued: 'hold' });
    assert.deepEqual(results, [-EOPNOTSUPP]);
    assert.equal(ring.inFlight, 1, 'the second command is staged, held for the next wait');
    while (results.length === 1) ring.waitAndDispatch(1000, { queued: 'hold' });
    assert.deepEqual(results, [-EOPNOTSUPP, -EOPNOTSUPP]);
    assert.equal(ring.inFlight, 0);
  });

  it('returns 0 when nothing completes within the timeout', () => {
    const started = process.hrtime.bigint();
    assert.equal(ring.waitAndDispatch(20), 0);
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    assert.ok(elapsedMs >= 15, `returned after ${elapsedMs} ms`);
  });

  it('wakes on a doorbell: an eventfd read in the ring completes when another party writes it', () => {
    const doorbell = native().createEventFd();
    try {
      const bell = new Uint8Array(8);
      const rung: number[] = [];
      ring.readCb(doorbell, bell, 0, (result) => rung.push(result));
      assert.equal(ring.waitAndDispatch(10), 0, 'nobody rang yet');
      writeSync(doorbell, new Uint8Array(new BigUint64Array([3n]).buffer));
      while (rung.length === 0) ring.waitAndDispatch(1000);
      assert.deepEqual(rung, [8]);
      assert.equal(new BigUint64Array(bell.buffer)[0], 3n);
    } finally {
      closeSync(doorbell);
    }
  });

  it('while polling, finds a completion another thread causes meanwhile, long before the poll budget ends', async () => {
    // With DEFER_TASKRUN a completion caused from elsewhere waits as task work until this thread
    // enters the kernel for events: each look of the poll must do that, or the poll runs out its
    // budget with the answer sitting there.
    const doorbell = native().createEventFd();
    const started = new Int32Array(new SharedArrayBuffer(4));
    const ringer = new Worker(
      `const { workerData } = require('node:worker_threads');
       const { writeSync } = require('node:fs');
       Atomics.store(workerData.started, 0, 1);
       Atomics.notify(workerData.started, 0);
       Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300);
       writeSync(workerData.doorbell, new Uint8Array(new BigUint64Array([5n]).buffer));`,
      { eval: true, workerData: { doorbell, started } },
    );
    try {
      const rung: number[] = [];
      ring.readCb(doorbell, new Uint8Array(8), 0, (result) => rung.push(result));
      assert.equal(Atomics.wait(started, 0, 0, 10_000) === 'timed-out', false, 'the ringing thread started');
      const pollStarted = process.hrtime.bigint();
      while (rung.length === 0) ring.waitAndDispatch(10_000, { queued: 'submit', pollMicros: 5_000_000 });
      const elapsedMs = Number(process.hrtime.bigint() - pollStarted) / 1e6;
      assert.deepEqual(rung, [8]);
      assert.ok(elapsedMs >= 100, `the bell rang ${elapsedMs} ms into the poll, before it was due`);
      assert.ok(elapsedMs < 2500, `a poll of 5 s ended ${elapsedMs} ms in: it saw the completion only at its end`);
    } finally {
      await ringer.terminate();
      closeSync(doorbell);
    }
  });

  it('while polling with nothing due, looks at memory rather than entering the kernel on every look', () => {
    // The kernel flags queued task work in the SQ ring's flags (IORING_SETUP_TASKRUN_FLAG): a poll
    // enters only when flagged, or once each time it yields the CPU (every 50 us), so most of a
    // fruitless poll's time is spent in user space. Entering on every look spent nearly all of
    // it in system calls, each tens of microseconds under TCG.
    const doorbell = native().createEventFd();
    try {
      ring.readCb(doorbell, new Uint8Array(8), 0, () => {});
      const before = process.cpuUsage();
      const started = process.hrtime.bigint();
      ring.waitAndDispatch(0, { queued: 'submit', pollMicros: 200_000 });
      const wallUs = Number(process.hrtime.bigint() - started) / 1e3;
      const used = process.cpuUsage(before);
      assert.ok(wallUs >= 190_000, `the poll ran its budget (${wallUs} us)`);
      assert.ok(used.system < 0.5 * (used.user + used.system), `system ${used.system} us of ${used.user + used.system} us of CPU`);
    } finally {
      closeSync(doorbell); // the read completes with an error when the ring closes
    }
  });

  it('runs an inline completion from the next waitAndDispatch without blocking, never from the call that queued it', () => {
    const results: number[] = [];
    ring.completeInline((result) => results.push(result), 512);
    assert.equal(results.length, 0);
    const started = process.hrtime.bigint();
    assert.equal(ring.waitAndDispatch(5000), 1);
    assert.ok(Number(process.hrtime.bigint() - started) / 1e6 < 1000, 'it did not wait out the timeout');
    assert.deepEqual(results, [512]);
  });

  it('runs inline completions that inline callbacks queue after the ones before them, once each, even past a throw', () => {
    const order: string[] = [];
    ring.completeInline(() => {
      order.push('first');
      ring.completeInline(() => order.push('queued by first'), 0);
    }, 0);
    ring.completeInline(() => {
      order.push('second');
      throw new Error('a callback that throws');
    }, 0);
    ring.completeInline(() => order.push('third'), 0);
    assert.throws(() => ring.waitAndDispatch(0), /a callback that throws/);
    assert.deepEqual(order, ['first', 'second', 'third']);
    assert.equal(ring.waitAndDispatch(0), 1);
    assert.deepEqual(order, ['first', 'second', 'third', 'queued by first']);
    assert.equal(ring.waitAndDispatch(0), 0, 'nothing is run twice');
  });

  it('a FileDevice on tmpfs reads and writes inline on either kind of ring, answering as a completion would', async function () {
    const shm = await fsp.mkdtemp('/dev/shm/ublkdm-inline-').catch(() => undefined);
    if (shm === undefined) this.skip(); // a host without /dev/shm: --forbid-pending makes that a failure
    const file = path.join(shm!, 'backing');
    await fsp.writeFile(file, Buffer.alloc(64 * 1024));
    const loopRing = IoRing.create({ entries: 4 });
    const onDisk = await openFileDevice(path.join(dir, 'data'), { ring });
    const device = await openFileDevice(file, { ring });
    const elsewhere = await openFileDevice(file, { ring: loopRing });
    try {
      assert.equal(device.inlineIo, true, 'tmpfs on a caller-driven ring');
      assert.equal(elsewhere.inlineIo, true, 'tmpfs on an event-loop ring');
      assert.equal(onDisk.inlineIo, (await fsp.statfs(dir)).type === TMPFS_MAGIC, 'only tmpfs');
      const results: number[] = [];
      device.writeCb(Buffer.alloc(4096, 9), 8, true, (result) => results.push(result));
      assert.equal(results.length, 0, 'no completion from inside writeCb');
      ring.waitAndDispatch(1000);
      const readBack = Buffer.alloc(4096);
      device.readCb(readBack, 8, (result) => results.push(result));
      ring.waitAndDispatch(1000);
      assert.deepEqual(results, [4096, 4096]);
      assert.ok(readBack.every((byte) => byte === 9));
      assert.ok((await fsp.readFile(file)).subarray(4096, 8192).every((byte) => byte === 9), 'the bytes are in the file');
      // On the event-loop ring: every result after the call that asked for it, in order, the
      // vectored forms and flush too, and nothing left in flight on the ring.
      const order: string[] = [];
      const pages = [Buffer.alloc(4096, 5), Buffer.alloc(4096, 6)];
      const written = elsewhere.writev(pages, 16, false).then((result) => order.push(`writev ${result}`));
      const readBackPages = [Buffer.alloc(4096), Buffer.alloc(4096)];
      const read = elsewhere.readv(readBackPages, 16).then((result) => order.push(`readv ${result}`));
      const flushed = elsewhere.flush().then((result) => order.push(`flush ${result}`));
      order.push('issued');
      await Promise.all([written, read, flushed]);
      assert.deepEqual(order, ['issued', 'writev 8192', 'readv 8192', 'flush 0']);
      assert.ok(readBackPages[0]!.every((byte) => byte === 5) && readBackPages[1]!.every((byte) => byte === 6));
      const cbResults: number[] = [];
      elsewhere.readCb(Buffer.alloc(4096), 8, (result) => cbResults.push(result));
      assert.deepEqual(cbResults, [], 'no completion from inside readCb');
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(cbResults, [4096]);
      assert.equal(loopRing.inFlight, 0);
      // Once its ring is closed, a device on tmpfs refuses I/O before doing any: the file keeps its bytes.
      loopRing.close();
      await assert.rejects(elsewhere.write(Buffer.alloc(4096, 7), 16, false), /its ring is closed/);
      await assert.rejects(elsewhere.writev([Buffer.alloc(4096, 7)], 16, false), /its ring is closed/);
      assert.throws(() => elsewhere.writeCb(Buffer.alloc(4096, 7), 16, false, () => {}), /its ring is closed/);
      assert.ok((await fsp.readFile(file)).subarray(8192, 12288).every((byte) => byte === 5), 'nothing was written');
    } finally {
      await onDisk.close();
      await device.close();
      await elsewhere.close();
      loopRing.close();
      await fsp.rm(shm!, { recursive: true, force: true });
    }
  });

  it('a FileDevice on tmpfs on a caller-driven ring names where its bytes are, in a shared mapping of the file, and nowhere else', async function () {
    const shm = await fsp.mkdtemp('/dev/shm/ublkdm-inplace-').catch(() => undefined);
    if (shm === undefined) this.skip(); // a host without /dev/shm: --forbid-pending makes that a failure
    const file = path.join(shm!, 'backing');
    await fsp.writeFile(file, Buffer.alloc(64 * 1024, 1));
    const loopRing = IoRing.create({ entries: 4 });
    const device = await openFileDevice(file, { ring });
    const readOnly = await openFileDevice(file, { ring, readOnly: true });
    const elsewhere = await openFileDevice(file, { ring: loopRing });
    const onDisk = await openFileDevice(path.join(dir, 'data'), { ring });
    /** What this process's memory holds at `address` (through /proc/self/mem, as the kernel's copy would see it). */
    const memoryAt = (address: number, byteLength: number): Buffer => {
      const mem = openSync('/proc/self/mem', 'r');
      try {
        const bytes = Buffer.alloc(byteLength);
        assert.equal(readSync(mem, bytes, 0, byteLength, address), byteLength);
        return bytes;
      } finally {
        closeSync(mem);
      }
    };
    const mapsFile = async (): Promise<boolean> => (await fsp.readFile('/proc/self/maps', 'utf8')).split('\n').some((line) => line.endsWith(` ${file}`));
    try {
      assert.equal(device.servesInPlace, true);
      assert.equal(onDisk.servesInPlace, (await fsp.statfs(dir)).type === TMPFS_MAGIC, 'only a memory-backed file');
      assert.equal(await mapsFile(), false, 'nothing mapped before the first request');
      const addon = native() as unknown as Record<'nextData' | 'nextHole', (fd: number, at: number) => number>;
      const originals = { nextData: addon.nextData, nextHole: addon.nextHole };
      const asked = { nextData: 0, nextHole: 0 };
      addon.nextData = (fd, at) => (asked.nextData++, originals.nextData(fd, at));
      addon.nextHole = (fd, at) => (asked.nextHole++, originals.nextHole(fd, at));
      let at8: number;
      try {
        at8 = device.inPlaceAddress(8, 4096, 'write');
        assert.notEqual(at8, 0);
        assert.equal(device.inPlaceAddress(0, 4096, 'read'), at8 - 4096, 'one mapping of the whole file');
        assert.notEqual(device.inPlaceAddress(120, 4096, 'read'), 0);
        assert.deepEqual(asked, { nextData: 1, nextHole: 1 }, 'a file written through is learned front to back at the first request, once');
      } finally {
        Object.assign(addon, originals);
      }
      assert.ok(await mapsFile());
      const handle = await fsp.open(file, 'r+');
      await handle.write(Buffer.alloc(4096, 7), 0, 4096, 4096);
      await handle.close();
      assert.ok(memoryAt(at8, 4096).every((byte) => byte === 7), 'the address holds the file as it is now');
      assert.equal(device.inPlaceAddress(121, 4096, 'read'), 0, 'past the end of the device');
      assert.notEqual(device.inPlaceAddress(120, 4096, 'read'), 0, 'up to its end');
      assert.equal(readOnly.inPlaceAddress(8, 4096, 'write'), 0, 'a write to a read-only device');
      assert.notEqual(readOnly.inPlaceAddress(8, 4096, 'read'), 0);
      assert.equal(elsewhere.inPlaceAddress(8, 4096, 'read'), 0, 'an event-loop ring: not a queue thread');
      assert.equal(onDisk.inPlaceAddress(0, 512, 'read'), 0);

      // A hole is read from the file (as zeroes, taking no memory), not faulted in through the mapping.
      const sparseFile = path.join(shm!, 'sparse');
      await fsp.writeFile(sparseFile, Buffer.alloc(4096, 3));
      await fsp.truncate(sparseFile, 64 * 1024);
      const sparse = await openFileDevice(sparseFile, { ring });
      try {
        assert.notEqual(sparse.inPlaceAddress(0, 4096, 'read'), 0, 'the page written');
        assert.equal(sparse.inPlaceAddress(8, 4096, 'read'), 0, 'a hole');
        assert.equal(sparse.inPlaceAddress(0, 8192, 'read'), 0, 'a read reaching into a hole');
        // Each extent is asked about once: a file asked per read would be scanned per read.
        asked.nextData = asked.nextHole = 0;
        addon.nextData = (fd, at) => (asked.nextData++, originals.nextData(fd, at));
        addon.nextHole = (fd, at) => (asked.nextHole++, originals.nextHole(fd, at));
        try {
          for (const sector of [8, 16, 64, 120, 0, 4]) sparse.inPlaceAddress(sector, 4096, 'read');
          assert.deepEqual(asked, { nextData: 0, nextHole: 0 }, 'the page written and the hole after it, both learned above');
        } finally {
          Object.assign(addon, originals);
        }
        assert.equal(sparse.inPlaceAddress(8, 4096, 'write'), 0, 'nor a write: ublk\'s copy into a hole of a full tmpfs would fail');
        assert.equal((await fsp.stat(sparseFile)).blocks, 8, 'looking allocated nothing');
        // The device's own write fills the hole (pwrite), and from then on it is data.
        let wrote: number | undefined;
        sparse.writeCb(Buffer.alloc(8192, 4), 16, false, (result) => (wrote = result));
        for (let wait = 0; wait < 100 && wrote === undefined; wait++) ring.waitAndDispatch(100);
        assert.equal(wrote, 8192);
        assert.notEqual(sparse.inPlaceAddress(16, 8192, 'read'), 0, 'written since');
        assert.notEqual(sparse.inPlaceAddress(16, 8192, 'write'), 0);
        assert.equal(sparse.inPlaceAddress(16, 12288, 'read'), 0, 'and the hole after it is still one');
        // A discard punches the range: no read in place there until it holds data again.
        let discarded: number | undefined;
        void sparse.discard(16, 8).then((result) => (discarded = result));
        for (let wait = 0; wait < 100 && discarded === undefined; wait++) {
          ring.waitAndDispatch(100);
          await new Promise((resolve) => setImmediate(resolve));
        }
        assert.equal(discarded, 0);
        assert.equal(sparse.inPlaceAddress(16, 4096, 'read'), 0, 'punched');
        assert.notEqual(sparse.inPlaceAddress(24, 4096, 'read'), 0, 'the page after it was not');
      } finally {
        await sparse.close();
      }
      // The size is looked at once for the requests of one wait of the ring, and again in the next.
      const sizeAddon = native() as unknown as Record<'fileSize', (fd: number) => number>;
      const originalFileSize = sizeAddon.fileSize;
      let sized = 0;
      sizeAddon.fileSize = (fd) => (sized++, originalFileSize(fd));
      try {
        ring.waitAndDispatch(0);
        for (const sector of [8, 16, 64]) assert.notEqual(device.inPlaceAddress(sector, 4096, 'read'), 0);
        assert.equal(sized, 1, 'one fstat for the requests of one wait');
        ring.waitAndDispatch(0);
        assert.notEqual(device.inPlaceAddress(8, 4096, 'write'), 0);
        assert.equal(sized, 2, 'and one in the next');
      } finally {
        sizeAddon.fileSize = originalFileSize;
      }
      // Shrunk under the device: noticed from the next wait on, then nothing in place.
      await fsp.truncate(file, 32 * 1024);
      ring.waitAndDispatch(0);
      assert.equal(device.inPlaceAddress(96, 4096, 'read'), 0, 'past the new end');
      assert.equal(device.inPlaceAddress(8, 4096, 'read'), 0, 'nothing in place once the file was seen shrunk');
      assert.equal(device.inPlaceAddress(8, 4096, 'write'), 0, 'no write either');
      await fsp.truncate(file, 64 * 1024);
      assert.equal(device.inPlaceAddress(8, 4096, 'read'), 0, 'nor after it grew back');
      await device.close();
      assert.equal(device.inPlaceAddress(8, 4096, 'read'), 0, 'a closed device');
      await readOnly.close();
      assert.equal(await mapsFile(), false, 'close unmaps the file');
    } finally {
      await device.close();
      await readOnly.close();
      await elsewhere.close();
      await onDisk.close();
      loopRing.close();
      await fsp.rm(shm!, { recursive: true, force: true });
    }
  });

  it("a FileDevice forgets the data it learned once another thread's device punched a hole, at its next wait; its own punch does not", async function () {
    const shm = await fsp.mkdtemp('/dev/shm/ublkdm-punch-').catch(() => undefined);
    if (shm === undefined) this.skip(); // a host without /dev/shm: --forbid-pending makes that a failure
    const file = path.join(shm!, 'backing');
    await fsp.writeFile(file, Buffer.alloc(64 * 1024, 1));
    // Two queue threads' copies of one device: each on its own ring, sharing the process's punch count.
    const otherRing = IoRing.create({ entries: 16, drivenBy: 'caller' });
    const mine = await openFileDevice(file, { ring });
    const theirs = await openFileDevice(file, { ring: otherRing });
    const addon = native() as unknown as Record<'nextData' | 'nextHole', (fd: number, at: number) => number>;
    const originals = { nextData: addon.nextData, nextHole: addon.nextHole };
    let asked = 0;
    addon.nextData = (fd, at) => (asked++, originals.nextData(fd, at));
    addon.nextHole = (fd, at) => (asked++, originals.nextHole(fd, at));
    const punch = async (device: typeof mine, deviceRing: IoRing, sector: number): Promise<void> => {
      let discarded: number | undefined;
      void device.discard(sector, 8).then((result) => (discarded = result));
      for (let wait = 0; wait < 100 && discarded === undefined; wait++) {
        deviceRing.waitAndDispatch(100);
        await new Promise((resolve) => setImmediate(resolve));
      }
      assert.equal(discarded, 0);
    };
    try {
      assert.notEqual(mine.inPlaceAddress(16, 4096, 'read'), 0, 'learned as data');
      assert.notEqual(theirs.inPlaceAddress(16, 4096, 'read'), 0);
      assert.equal(asked, 4, 'each device learned the file once');
      await punch(theirs, otherRing, 16);
      // This ring's wait under way looked already; from the next one on, the punch is seen.
      ring.waitAndDispatch(0);
      asked = 0;
      assert.equal(mine.inPlaceAddress(16, 4096, 'read'), 0, 'the page the other device punched');
      assert.equal(asked, 1, 'relearning asks about the range asked for, not the file from its start again');
      assert.notEqual(mine.inPlaceAddress(24, 4096, 'read'), 0, 'learned again: the page after it is data');
      assert.equal((await fsp.stat(file)).blocks, 15 * 8, 'and looking faulted nothing into the hole');
      // The punching device knows what it punched: it keeps the rest of what it learned.
      otherRing.waitAndDispatch(0);
      assert.equal(theirs.inPlaceAddress(16, 4096, 'read'), 0);
      asked = 0;
      assert.notEqual(theirs.inPlaceAddress(40, 4096, 'read'), 0);
      assert.equal(asked, 0, 'its own punch made it ask the file nothing about the rest');
      // And a punch of its own leaves this device's learning alone too, but not the other's.
      await punch(mine, ring, 64);
      ring.waitAndDispatch(0);
      otherRing.waitAndDispatch(0);
      assert.equal(mine.inPlaceAddress(64, 4096, 'read'), 0);
      asked = 0;
      assert.notEqual(mine.inPlaceAddress(40, 4096, 'read'), 0);
      assert.equal(asked, 0, 'nor this one');
      assert.equal(theirs.inPlaceAddress(64, 4096, 'read'), 0, 'the other device sees this one\'s punch');
    } finally {
      Object.assign(addon, originals);
      await mine.close();
      await theirs.close();
      otherRing.close();
      await fsp.rm(shm!, { recursive: true, force: true });
    }
  });

  it('is refused for a ring the event loop drives', () => {
    const loopRing = IoRing.create({ entries: 4 });
    try {
      assert.throws(() => loopRing.waitAndDispatch(0), /driven by the event loop/);
    } finally {
      loopRing.close();
    }
  });
});
