import { strict as assert } from 'node:assert';
import { closeSync, promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { execFile } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { allocPageAligned, allocSharedPageAligned, isDirectIoAligned, native, stableAddressOf } from '../../../src/io/native';
import { ECANCELED, EOPNOTSUPP } from '../../../src/base/errno';
import { IoRing } from '../../../src/io/ring';
import { UBLK_U_IO_FETCH_REQ } from '../../../src/ublk/abi';

const EBADF_FOR_TEST = os.constants.errno.EBADF;

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

describe('IoRing (real io_uring)', () => {
  let dir: string;
  let handle: fsp.FileHandle;
  let ring: IoRing;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-ring-'));
    handle = await fsp.open(path.join(dir, 'data'), 'w+');
    ring = IoRing.create({ entries: 32 });
  });

  afterEach(async () => {
    ring.close();
    await handle.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('writes then reads back the same bytes', async () => {
    const written = Buffer.alloc(8192, 0xa5);
    assert.equal(await ring.write(handle.fd, written, 4096), 8192);
    const readBack = Buffer.alloc(8192);
    assert.equal(await ring.read(handle.fd, readBack, 4096), 8192);
    assert.deepEqual(readBack, written);
  });

  it('writev gathers and readv scatters in order', async () => {
    const parts = [Buffer.alloc(512, 1), Buffer.alloc(1024, 2), Buffer.alloc(512, 3)];
    assert.equal(await ring.writev(handle.fd, parts, 0), 2048);
    const whole = Buffer.alloc(2048);
    assert.equal(await ring.read(handle.fd, whole, 0), 2048);
    assert.deepEqual(whole, Buffer.concat(parts));
    const scattered = [Buffer.alloc(1536), Buffer.alloc(512)];
    assert.equal(await ring.readv(handle.fd, scattered, 0), 2048);
    assert.deepEqual(Buffer.concat(scattered), whole);
  });

  it('fsync and fdatasync succeed on a file', async () => {
    await ring.write(handle.fd, Buffer.alloc(512, 7), 0);
    assert.equal(await ring.fsync(handle.fd, false), 0);
    assert.equal(await ring.fsync(handle.fd, true), 0);
  });

  it('fallocate punch-hole makes a range read as zeroes and keeps the size', async () => {
    await ring.write(handle.fd, Buffer.alloc(16384, 0xff), 0);
    assert.equal(await ring.fallocate(handle.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192), 0);
    const readBack = Buffer.alloc(16384);
    await ring.read(handle.fd, readBack, 0);
    assert.ok(readBack.subarray(0, 4096).every((b) => b === 0xff));
    assert.ok(readBack.subarray(4096, 12288).every((b) => b === 0));
    assert.ok(readBack.subarray(12288).every((b) => b === 0xff));
    assert.equal((await handle.stat()).size, 16384);
  });

  it('returns I/O errors as negative results instead of rejecting', async () => {
    assert.equal(await ring.read(-1, Buffer.alloc(512), 0), -EBADF_FOR_TEST);
    const closedHandle = await fsp.open(path.join(dir, 'closed'), 'w+');
    const closedFd = closedHandle.fd;
    await closedHandle.close();
    assert.equal(await ring.read(closedFd, Buffer.alloc(512), 0), -EBADF_FOR_TEST);
    assert.equal(await ring.fallocate(handle.fd, 0x7fff0000, 0, 4096), -EOPNOTSUPP);
  });

  it('reads past end of file return a short count', async () => {
    await ring.write(handle.fd, Buffer.alloc(1000, 1), 0);
    assert.equal(await ring.read(handle.fd, Buffer.alloc(4096), 0), 1000);
  });

  it('completes many more concurrent requests than the ring has entries', async () => {
    const count = 500;
    const writes: Promise<number>[] = [];
    for (let i = 0; i < count; i++) writes.push(ring.write(handle.fd, Buffer.alloc(512, i & 0xff), i * 512));
    assert.ok((await Promise.all(writes)).every((r) => r === 512));
    const buffers = Array.from({ length: count }, () => Buffer.alloc(512));
    const results = await Promise.all(buffers.map((b, i) => ring.read(handle.fd, b, i * 512)));
    assert.ok(results.every((r) => r === 512));
    buffers.forEach((b, i) => assert.ok(b.every((x) => x === (i & 0xff)), `block ${i}`));
    assert.equal(ring.inFlight, 0);
  });

  it('submits everything prepared in one turn with one submit call', async () => {
    const nativeRing = (ring as unknown as { ring: { submit(): number } }).ring;
    const submitted: number[] = [];
    const realSubmit = nativeRing.submit.bind(nativeRing);
    // The native method is read-only on the prototype; shadow it on the instance.
    Object.defineProperty(nativeRing, 'submit', {
      value: () => {
        const n = realSubmit();
        submitted.push(n);
        return n;
      },
    });
    await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => ring.write(handle.fd, Buffer.alloc(512), i * 512)));
    assert.deepEqual(submitted, [8]);
  });

  it('delivers callback-form completions and returns distinct tokens', (done) => {
    const seen: number[] = [];
    const tokens = new Set<number>();
    for (let i = 0; i < 4; i++) {
      tokens.add(
        ring.writeCb(handle.fd, Buffer.alloc(512), i * 512, 0, (result) => {
          seen.push(result);
          if (seen.length === 4) {
            assert.deepEqual(seen, [512, 512, 512, 512]);
            done();
          }
        }),
      );
    }
    assert.equal(tokens.size, 4);
  });

  it('completeInline(): the result arrives after the call, in order with the rest, also past a throwing callback', async () => {
    const order: string[] = [];
    ring.completeInline((result) => order.push(`first ${result}`), 512);
    ring.completeInline(() => {
      order.push('second');
      ring.completeInline((result) => order.push(`queued by second ${result}`), 7);
      throw new Error('a callback that throws');
    }, 0);
    ring.completeInline(() => order.push('third'), 0);
    order.push('issued');
    const uncaught = new Promise<Error>((resolve) => {
      const listeners = process.listeners('uncaughtException');
      process.removeAllListeners('uncaughtException');
      process.once('uncaughtException', (error) => {
        for (const listener of listeners) process.on('uncaughtException', listener);
        resolve(error);
      });
    });
    assert.match((await uncaught).message, /a callback that throws/);
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(order, ['issued', 'first 512', 'second', 'third', 'queued by second 7']);
    assert.equal(ring.inFlight, 0);
  });

  it('close() fails pending requests with -ECANCELED', async () => {
    const pipe = await openPipeReadEnd(dir);
    const pending = ring.read(pipe.fd, Buffer.alloc(16), 0);
    await new Promise((resolve) => setTimeout(resolve, 20));
    ring.close();
    assert.equal(await pending, -ECANCELED);
    await pipe.close();
    assert.throws(() => ring.readCb(handle.fd, Buffer.alloc(512), 0, () => {}), /closed/);
    assert.throws(() => ring.completeInline(() => {}, 0), /closed/);
    await assert.rejects(ring.read(handle.fd, Buffer.alloc(512), 0), /closed/);
  });

  /**
   * Two doorbell reads, the second started by the first's callback; another thread rings the
   * first bell, then the second 150 ms later. Resolves with whether a 10 ms timer set by the
   * first callback had run by the time the second callback ran.
   */
  async function timerRanBeforeSecondBell(pollMicros: number): Promise<{ timerRan: boolean; gapMs: number }> {
    ring.pollAfterWakeups(pollMicros);
    const doorbell = native().createEventFd();
    const ringer = new Worker(
      `const { workerData } = require('node:worker_threads');
       const { writeSync } = require('node:fs');
       const nap = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
       const ring = () => writeSync(workerData.doorbell, new Uint8Array(new BigUint64Array([1n]).buffer));
       nap(50); ring(); nap(150); ring();`,
      { eval: true, workerData: { doorbell } },
    );
    try {
      return await new Promise((resolve) => {
        let timerRan = false;
        let firstAt = 0n;
        ring.readCb(doorbell, new Uint8Array(8), 0, () => {
          firstAt = process.hrtime.bigint();
          setTimeout(() => (timerRan = true), 10);
          ring.readCb(doorbell, new Uint8Array(8), 0, () => resolve({ timerRan, gapMs: Number(process.hrtime.bigint() - firstAt) / 1e6 }));
        });
      });
    } finally {
      await ringer.terminate();
      closeSync(doorbell);
    }
  }

  it('pollAfterWakeups(): after a wakeup, polls for the next completion instead of going back to the event loop', async function () {
    this.timeout(10_000);
    // Long enough to span the bells' gap; the poll after the second bell, which finds nothing, blocks the loop as long.
    const polled = await timerRanBeforeSecondBell(600_000);
    assert.ok(polled.gapMs >= 100, `the second bell came ${polled.gapMs} ms after the first`);
    assert.equal(polled.timerRan, false, 'the loop ran a timer: the thread slept in the event loop between the bells');
    // The same without the poll: the thread goes back to the loop, whose timer runs first.
    const slept = await timerRanBeforeSecondBell(0);
    assert.equal(slept.timerRan, true, 'the timer did not run before the second bell');
  });

  it('pollAfterWakeups() takes whole microseconds, and only on an event-loop ring', () => {
    assert.throws(() => ring.pollAfterWakeups(-1), RangeError);
    assert.throws(() => ring.pollAfterWakeups(1.5), RangeError);
    const callerDriven = IoRing.create({ entries: 4, drivenBy: 'caller' });
    try {
      assert.throws(() => callerDriven.pollAfterWakeups(100), /driven by its caller/);
    } finally {
      callerDriven.close();
    }
  });

  it('keepUntilExit(): the kernel ring outlives close() on one close-on-exec descriptor of its own', async () => {
    const ioUringFds = async (): Promise<string[]> => {
      const fds = await fsp.readdir('/proc/self/fd');
      const links = await Promise.all(fds.map((fd) => fsp.readlink(`/proc/self/fd/${fd}`).catch(() => '')));
      return fds.filter((_, i) => links[i] === 'anon_inode:[io_uring]');
    };
    const before = await ioUringFds();
    const kept = IoRing.create({ entries: 8, drivenBy: 'caller' });
    kept.keepUntilExit();
    kept.keepUntilExit(); // once is enough: no second descriptor
    assert.equal((await ioUringFds()).length, before.length + 2);
    kept.close();
    const left = (await ioUringFds()).filter((fd) => !before.includes(fd));
    assert.equal(left.length, 1, 'the kept descriptor stays after close()');
    const flags = /^flags:\s*([0-7]+)$/m.exec(await fsp.readFile(`/proc/self/fdinfo/${left[0]}`, 'utf8'))?.[1];
    assert.ok(flags !== undefined && (parseInt(flags, 8) & 0o2000000) !== 0, `close-on-exec (flags ${flags})`);
    assert.throws(() => kept.keepUntilExit(), /closed/);
  });

  it('cancel() ends a request that would never complete', async () => {
    const pipe = await openPipeReadEnd(dir);
    let token = -1;
    const pending = new Promise<number>((resolve) => {
      token = ring.readCb(pipe.fd, Buffer.alloc(16), 0, resolve);
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(await ring.cancel(token), 0);
    assert.equal(await pending, -ECANCELED);
    await pipe.close();
  });

  it('blockDiscard refuses byte ranges the native side would mangle, before queueing anything', () => {
    for (const [byteOffset, byteLength] of [[-512, 512], [0, -1], [0.5, 512], [0, 2 ** 53], [NaN, 512]]) {
      assert.throws(() => ring.blockDiscardCb(handle.fd, byteOffset, byteLength, () => assert.fail('completed')), RangeError);
    }
    assert.equal(ring.inFlight, 0);
  });

  it('blockDiscard goes to the kernel as a uring_cmd (a regular file has none: -EOPNOTSUPP)', async () => {
    // The host has no block device we may discard; this shows the SQE is a URING_CMD the kernel
    // routes to the file's uring_cmd handler (a read or an ioctl-like op would answer otherwise).
    assert.equal(await ring.blockDiscard(handle.fd, 0, 4096), -EOPNOTSUPP);
    assert.equal(ring.inFlight, 0);
  });

  it('ublk commands, staged in shared memory rather than prepared by a call each, reach the kernel as uring_cmds', async () => {
    // More than the staging array holds (256) and than the SQ has entries (32): the array is
    // prepared early when full, and a full SQ is submitted to make room. A regular file has no
    // uring_cmd handler, so each command answers -EOPNOTSUPP, which shows it went out as one.
    const cmdOp = UBLK_U_IO_FETCH_REQ;
    const results = await Promise.all(
      Array.from({ length: 600 }, (_, tag) => ring.ublkIoCmd(handle.fd, cmdOp, 0, tag % 4096, 0, 0)),
    );
    assert.equal(results.length, 600);
    assert.ok(results.every((result) => result === -EOPNOTSUPP), `results: ${[...new Set(results)].join(', ')}`);
    assert.equal(ring.inFlight, 0);
  });

  it('reads and writes of page-aligned memory, staged rather than prepared by a call each, move the right bytes', async () => {
    // 600 blocks, each written from and read into its own slice of one page-aligned buffer (the
    // slice's offset in the buffer is what the staged record's address adds), more than the
    // staging array holds and than the SQ has entries. The file and a plain Buffer, which goes
    // through a call, are the witnesses.
    const blockBytes = 512;
    const blocks = 600;
    const source = new Uint8Array(allocPageAligned(blocks * blockBytes));
    for (let block = 0; block < blocks; block++) source.fill(block % 251, block * blockBytes, (block + 1) * blockBytes);
    const slice = (memory: Uint8Array, block: number): Uint8Array => memory.subarray(block * blockBytes, (block + 1) * blockBytes);
    // Written in reverse: block b of the file gets slice b, wherever it sits in the staging order.
    const written = await Promise.all(
      Array.from({ length: blocks }, (_, i) => blocks - 1 - i).map((block) => ring.write(handle.fd, slice(source, block), block * blockBytes)),
    );
    assert.ok(written.every((result) => result === blockBytes), `write results: ${[...new Set(written)].join(', ')}`);
    const throughCall = Buffer.alloc(blocks * blockBytes);
    assert.equal(await ring.read(handle.fd, throughCall, 0), blocks * blockBytes);
    assert.deepEqual(new Uint8Array(throughCall), source);

    const target = new Uint8Array(allocPageAligned(blocks * blockBytes));
    const read = await Promise.all(Array.from({ length: blocks }, (_, block) => ring.read(handle.fd, slice(target, block), block * blockBytes)));
    assert.ok(read.every((result) => result === blockBytes), `read results: ${[...new Set(read)].join(', ')}`);
    assert.deepEqual(target, source);
    assert.equal(ring.inFlight, 0);
  });

  it('a staged write keeps its rwFlags (RWF_DSYNC is accepted; an unknown flag is refused)', async () => {
    const memory = new Uint8Array(allocPageAligned(4096));
    assert.equal(await ring.write(handle.fd, memory, 0, 2 /* RWF_DSYNC */), 4096);
    // Were the flags dropped, the kernel would take this write; with them, it refuses the bit.
    assert.equal(await ring.write(handle.fd, memory, 0, 1 << 30), -os.constants.errno.EOPNOTSUPP);
  });

  it('close() cancels staged ublk commands that never reached the kernel', async () => {
    const staged = ring.ublkIoCmd(handle.fd, UBLK_U_IO_FETCH_REQ, 0, 0, 0, 0);
    ring.close();
    assert.equal(await staged, -ECANCELED);
  });

  it('delivers every completion of a flood that overflows the CQ, with no later event to help', async () => {
    // A 4-entry SQ has a 16-entry CQ. The flood is queued from a completion callback, i.e. inside
    // a flush, so every CQE is posted while the flush reaps (the eventfd counts nothing from
    // before) and most of them wait on the kernel's overflow list. Nothing else happens on this
    // ring afterwards: only the ring's own bookkeeping can deliver the tail of the flood.
    const small = IoRing.create({ entries: 4 });
    try {
      const floodCount = 400;
      await small.write(handle.fd, Buffer.alloc(4096, 9), 0);
      const delivered = await new Promise<number[]>((resolve) => {
        const results: number[] = [];
        small.readCb(handle.fd, Buffer.alloc(512), 0, () => {
          for (let i = 0; i < floodCount; i++) {
            small.readCb(handle.fd, Buffer.alloc(512), (i % 8) * 512, (result) => {
              results.push(result);
              if (results.length === floodCount) resolve(results);
            });
          }
        });
      });
      assert.ok(delivered.every((r) => r === 512));
      assert.equal(small.inFlight, 0);
    } finally {
      small.close();
    }
  });

  it('delivers io-wq completions (fsync, fallocate), which arrive from another thread at any time', async () => {
    // fsync and fallocate always run on io-wq workers: their CQEs are posted whenever a worker
    // finishes, during a flush, between flushes, onto a full CQ. Chains of them keep the workers
    // busy while this thread reaps; each chain stops after a fixed number of links, and a link
    // is only issued once the previous one was delivered.
    const small = IoRing.create({ entries: 4 });
    try {
      const chainCount = 64;
      const linksPerChain = 20;
      const chain = (link: number, finished: () => void): void => {
        const next = (result: number) => {
          assert.equal(result, 0);
          if (link + 1 === linksPerChain) finished();
          else chain(link + 1, finished);
        };
        if (link % 2 === 0) small.fsyncCb(handle.fd, true, next);
        else small.fallocateCb(handle.fd, FALLOC_FL_KEEP_SIZE, 0, 4096, next);
      };
      await Promise.all(Array.from({ length: chainCount }, () => new Promise<void>((resolve) => chain(0, resolve))));
      assert.equal(small.inFlight, 0);
    } finally {
      small.close();
    }
  });

  it('an idle ring does not keep the process alive', async () => {
    const ringModule = path.resolve(__dirname, '../../../src/io/ring.js');
    const script = `const r = require(${JSON.stringify(ringModule)}).IoRing.create();
      r.fsync(0, true).then((res) => console.log('done', typeof res));`;
    const output = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['-e', script], { timeout: 5000 }, (error, stdout) =>
        error ? reject(error) : resolve(stdout),
      );
    });
    assert.equal(output.trim(), 'done number');
  });
});

describe('native memory helpers', () => {
  it('allocAligned gives zeroed memory at the requested alignment', () => {
    const buffer = new Uint8Array(native().allocAligned(65536, 4096));
    assert.equal(buffer.byteLength, 65536);
    assert.equal(native().addressOf(buffer) % 4096, 0);
    assert.ok(buffer.every((b) => b === 0));
  });

  it('addressOf accounts for a view offset', () => {
    const buffer = new Uint8Array(native().allocAligned(8192, 4096));
    assert.equal(native().addressOf(buffer.subarray(100)) - native().addressOf(buffer), 100);
  });

  it('mmapReadOnly maps file contents and unmap detaches the buffer', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-mmap-'));
    const file = path.join(dir, 'm');
    await fsp.writeFile(file, Buffer.alloc(8192, 0x3c));
    const handle = await fsp.open(file, 'r');
    try {
      const mapping = native().mmapReadOnly(handle.fd, 4096, 4096);
      assert.ok(new Uint8Array(mapping).every((b) => b === 0x3c));
      native().unmap(mapping);
      assert.equal(mapping.byteLength, 0);
      assert.throws(() => native().unmap(mapping));
    } finally {
      await handle.close();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('ring setup errors carry errno text', () => {
    const Ring = native().Ring;
    assert.throws(() => new Ring(1 << 30, false, new Int32Array(4), new Int32Array(4), () => {}), /io_uring/);
  });
});

/** The read end of a FIFO with a writer attached, so reads block until cancelled. */
async function openPipeReadEnd(dir: string): Promise<fsp.FileHandle> {
  const { execFileSync } = await import('node:child_process');
  const fifo = path.join(dir, `fifo-${Math.random().toString(36).slice(2)}`);
  execFileSync('mkfifo', [fifo]);
  // O_RDWR on a FIFO opens without waiting for a peer and keeps reads blocking.
  return fsp.open(fifo, 'r+');
}

describe('stableAddressOf', () => {
  it('gives the address of a view into page-aligned memory, the same the addon finds, and none for heap memory', () => {
    const memory = new Uint8Array(allocPageAligned(3 * 4096));
    for (const byteOffset of [0, 512, 4096, 8192 + 7]) {
      const view = memory.subarray(byteOffset, byteOffset + 100);
      assert.equal(stableAddressOf(view), native().addressOf(view), `at byte ${byteOffset}`);
    }
    // Asked first through a view that does not start at byte 0: the buffer's own address is right.
    const other = new Uint8Array(allocPageAligned(8192));
    assert.equal(stableAddressOf(other.subarray(4096)), native().addressOf(other) + 4096);
    assert.equal(stableAddressOf(other), native().addressOf(other));
    assert.equal(stableAddressOf(Buffer.alloc(4096)), undefined);
    assert.equal(stableAddressOf(new Uint8Array(4096)), undefined);
  });

  it('answers again for a view it has seen, and for views of other types over the same memory', () => {
    const memory = new Uint8Array(allocPageAligned(2 * 4096));
    const view = memory.subarray(4096);
    assert.equal(stableAddressOf(view), native().addressOf(view));
    assert.equal(stableAddressOf(view), native().addressOf(view), 'asked a second time');
    assert.equal(stableAddressOf(new DataView(memory.buffer, 512)), native().addressOf(memory) + 512);
  });
});

describe('allocSharedPageAligned: tag memory a queue thread shares with the daemon thread', () => {
  it('is zeroed, page-aligned memory in a SharedArrayBuffer, whose views have stable addresses', () => {
    const memory = allocSharedPageAligned(5 * 4096);
    assert.ok(memory.buffer instanceof SharedArrayBuffer);
    assert.equal(memory.byteLength, 5 * 4096);
    assert.equal(native().addressOf(memory) % 4096, 0);
    assert.ok(memory.every((byte) => byte === 0));
    const tag = memory.subarray(4096, 3 * 4096);
    assert.equal(stableAddressOf(tag), native().addressOf(tag));
    assert.equal(isDirectIoAligned(tag, tag.byteLength, 4096), true);
  });

  it('is the same memory at the same address on the thread that adopts it', async () => {
    const memory = allocSharedPageAligned(2 * 4096);
    const addonPath = require.resolve('../../../src/io/native');
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const { adoptSharedMemory, native, stableAddressOf } = require(workerData.addonPath);
       const { share, byteOffset } = workerData;
       adoptSharedMemory(share);
       const tag = new Uint8Array(share, byteOffset + 4096, 4096);
       tag.fill(0x5a);
       parentPort.postMessage([stableAddressOf(tag), native().addressOf(tag)]);`,
      { eval: true, workerData: { addonPath, share: memory.buffer, byteOffset: memory.byteOffset } },
    );
    try {
      const [stable, found] = (await new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject))) as number[];
      assert.equal(stable, found);
      assert.equal(found, native().addressOf(memory) + 4096);
      assert.ok(memory.subarray(4096).every((byte) => byte === 0x5a) && memory.subarray(0, 4096).every((byte) => byte === 0));
    } finally {
      await worker.terminate();
    }
  });
});

describe('isDirectIoAligned', () => {
  it('takes page-aligned memory whose start and length are both on the alignment', () => {
    const memory = new Uint8Array(allocPageAligned(4 * 4096));
    assert.equal(isDirectIoAligned(memory.subarray(4096, 8192), 4096, 4096), true);
    assert.equal(isDirectIoAligned(memory.subarray(512, 4608), 4096, 4096), false, 'start off the alignment');
    assert.equal(isDirectIoAligned(memory.subarray(512, 4608), 4096, 512), true, 'on a smaller one');
    assert.equal(isDirectIoAligned(memory.subarray(0, 2048), 2048, 4096), false, 'length off the alignment');
    assert.equal(isDirectIoAligned(new Uint8Array(4096), 4096, 4096), false, 'heap memory, wherever it lies');
  });
});
