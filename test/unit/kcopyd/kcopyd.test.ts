import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../../../src/io/block-device';
import type { IoResult } from '../../../src/base/errno';
import { MemoryDevice } from '../../../src/testing/memory-device';
import { SECTOR_BYTES } from '../../../src/base/units';
import type { IoRegion } from '../../../src/dmio';
import {
  KCOPYD_IGNORE_ERROR, KCOPYD_WRITE_SEQ, KcopydClient, KcopydThrottle, SPLIT_COUNT, kcopydClientCreate,
  type ThrottleClock,
} from '../../../src/kcopyd';
import { FaultDevice } from '../../../src/testing/fault-device';

const MiB = 1024 * 1024;

/** Random contents; a device that declares no write-zeroes unless told otherwise. */
function filled(sizeSectors: number, writeZeroes = false): MemoryDevice {
  const device = new MemoryDevice(sizeSectors, { capabilities: { discard: false, writeZeroes } });
  device.contents.set(randomBytes(device.contents.length));
  return device;
}

function bytesOf(device: MemoryDevice, sector: number, count: number): Buffer {
  return device.contents.subarray(sector * SECTOR_BYTES, (sector + count) * SECTOR_BYTES);
}

function isZero(buffer: Uint8Array): boolean {
  return buffer.every((b) => b === 0);
}

const ticks = async (n = 5): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
};

/** Counts concurrent operations of the wrapped device (reads and writes). */
class ConcurrencyProbe extends FaultDevice {
  inFlight = 0;
  maxInFlight = 0;
  readCount = 0;
  override readv(bufs: Uint8Array[], sector: number): Promise<IoResult> {
    this.readCount++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    return super.readv(bufs, sector).finally(() => this.inFlight--);
  }
}

describe('kcopyd', () => {
  describe('copy', () => {
    const cases: Array<[number, number, number]> = [
      // [destinations, source sector, sector count]
      [1, 0, 1], [2, 3, 7], [3, 1001, 1023], [4, 17, 1024], [5, 5, 1025], [6, 99, 8 * 1024 + 3], [7, 1, 9 * 1024 - 1], [8, 513, 20001],
    ];
    for (const [destCount, sourceSector, count] of cases) {
      it(`copies ${count} sectors from sector ${sourceSector} to ${destCount} destination(s), byte for byte`, async () => {
        const source = filled(32768);
        const client = new KcopydClient();
        const dests = Array.from({ length: destCount }, () => new MemoryDevice(32768));
        const regions = dests.map((device, i): IoRegion => ({ device, sector: 11 * i + 2, count }));
        const result = await client.copyAndWait({ device: source, sector: sourceSector, count }, regions);
        assert.deepEqual(result, { readErr: false, writeErr: 0 });
        const expected = bytesOf(source, sourceSector, count);
        regions.forEach((r, i) => {
          assert.ok(bytesOf(dests[i], r.sector, count).equals(expected), `destination ${i}`);
          assert.ok(isZero(bytesOf(dests[i], r.sector + count, 1)), `nothing written past destination ${i}`);
          if (r.sector > 0) assert.ok(isZero(bytesOf(dests[i], r.sector - 1, 1)), `nothing written before destination ${i}`);
        });
        await client.destroy();
      });
    }

    it('calls notify exactly once, never from inside copy(), with the context', async () => {
      const client = new KcopydClient();
      const calls: unknown[] = [];
      const source = filled(64);
      client.copy({ device: source, sector: 0, count: 8 }, [{ device: new MemoryDevice(64), sector: 0, count: 8 }], 0,
        (readErr, writeErr, context) => calls.push([readErr, writeErr, context]), 'ctx');
      assert.equal(calls.length, 0);
      await client.destroy();
      assert.deepEqual(calls, [[false, 0, 'ctx']]);
    });

    it('completes a zero-length copy with no I/O', async () => {
      const client = new KcopydClient();
      const source = new MemoryDevice(8);
      const dest = new MemoryDevice(8);
      assert.deepEqual(await client.copyAndWait({ device: source, sector: 0, count: 0 }, [{ device: dest, sector: 0, count: 0 }]), { readErr: false, writeErr: 0 });
      assert.equal(source.calls.read + source.calls.readv + dest.calls.write + dest.calls.writev, 0);
    });

    it('refuses 0 or more than 8 destinations and destinations of another size', () => {
      const client = new KcopydClient();
      const source: IoRegion = { device: new MemoryDevice(8), sector: 0, count: 8 };
      const dest: IoRegion = { device: new MemoryDevice(8), sector: 0, count: 8 };
      assert.throws(() => client.copy(source, [], 0, () => undefined, null), RangeError);
      assert.throws(() => client.copy(source, new Array(9).fill(dest), 0, () => undefined, null), RangeError);
      assert.throws(() => client.copy(source, [{ ...dest, count: 4 }], 0, () => undefined, null), RangeError);
    });

    it('runs SPLIT_COUNT pieces of a large job in parallel, and no more', async () => {
      const source = new ConcurrencyProbe(filled(64 * 1024));
      const dest = new MemoryDevice(64 * 1024);
      const client = new KcopydClient();
      const count = 64 * 1024;
      await client.copyAndWait({ device: source, sector: 0, count }, [{ device: dest, sector: 0, count }]);
      assert.equal(source.maxInFlight, SPLIT_COUNT);
      assert.equal(source.readCount, count / client.subJobSectors);
      assert.ok(dest.contents.equals((source as unknown as { inner: MemoryDevice }).inner.contents));
    });
  });

  describe('errors', () => {
    it('a read error: readErr, and no write at all', async () => {
      const source = new FaultDevice(filled(4096)).failSectors('read', 100);
      const dest = new MemoryDevice(4096);
      const client = new KcopydClient();
      const result = await client.copyAndWait({ device: source, sector: 0, count: 1000 }, [{ device: dest, sector: 0, count: 1000 }]);
      assert.deepEqual(result, { readErr: true, writeErr: 0 });
      assert.equal(dest.calls.write + dest.calls.writev, 0);
      assert.ok(isZero(dest.contents));
    });

    it('a read error in a split job stops handing out pieces', async () => {
      const count = 100 * 1024;
      const source = new ConcurrencyProbe(filled(count)).failSectors('read', 0);
      const dest = new MemoryDevice(count);
      const client = new KcopydClient();
      const result = await client.copyAndWait({ device: source, sector: 0, count }, [{ device: dest, sector: 0, count }]);
      assert.equal(result.readErr, true);
      assert.ok(source.readCount <= 2 * SPLIT_COUNT, `only the pieces already started run (${source.readCount} reads of 100)`);
      assert.ok(isZero(bytesOf(dest, count - 1024, 1024)), 'the last piece was never copied');
      const progress = client.progress;
      assert.equal(progress.bytesCopied + progress.bytesFailed, progress.bytesQueued);
      assert.ok(progress.bytesFailed >= (count - 16 * 1024) * SECTOR_BYTES);
    });

    it('one failed destination sets its bit only; the others get every byte', async () => {
      const source = filled(8192);
      const good0 = new MemoryDevice(8192);
      const bad = new FaultDevice(new MemoryDevice(8192)).failSectors('write', 5000);
      const good2 = new MemoryDevice(8192);
      const client = new KcopydClient();
      const count = 8192;
      const result = await client.copyAndWait({ device: source, sector: 0, count },
        [good0, bad, good2].map((device) => ({ device, sector: 0, count })), KCOPYD_IGNORE_ERROR);
      assert.deepEqual(result, { readErr: false, writeErr: 0b010 });
      assert.ok(good0.contents.equals(source.contents));
      assert.ok(good2.contents.equals(source.contents));
    });

    it('IGNORE_ERROR copies past a read error, writing zeroes where the read failed', async () => {
      const inner = filled(4096);
      const source = new FaultDevice(inner).failSectors('read', 1500);
      const dest = new MemoryDevice(4096);
      const client = new KcopydClient({ subJobSectors: 512 });
      const result = await client.copyAndWait({ device: source, sector: 0, count: 4096 }, [{ device: dest, sector: 0, count: 4096 }], KCOPYD_IGNORE_ERROR);
      assert.deepEqual(result, { readErr: true, writeErr: 0 });
      assert.ok(isZero(bytesOf(dest, 1024, 512)), 'the failed piece is written as zeroes');
      assert.ok(bytesOf(dest, 0, 1024).equals(bytesOf(inner, 0, 1024)));
      assert.ok(bytesOf(dest, 1536, 4096 - 1536).equals(bytesOf(inner, 1536, 4096 - 1536)));
    });

    it('WRITE_SEQ clears IGNORE_ERROR and stops at the first failed piece', async () => {
      const source = new FaultDevice(filled(8192)).failSectors('read', 1024 * 3);
      const dest = new FaultDevice(new MemoryDevice(8192));
      const client = new KcopydClient();
      const result = await client.copyAndWait({ device: source, sector: 0, count: 8192 }, [{ device: dest, sector: 0, count: 8192 }],
        KCOPYD_WRITE_SEQ | KCOPYD_IGNORE_ERROR);
      assert.equal(result.readErr, true);
      const written = dest.log.filter((io) => io.op === 'write').map((io) => io.sector);
      assert.deepEqual(written, [0, 1024, 2048], 'only the pieces before the failed one, in order');
    });
  });

  describe('WRITE_SEQ', () => {
    /** Reads of later sectors finish sooner, so pieces complete their reads in reverse. */
    class ReversingDevice extends FaultDevice {
      override readv(bufs: Uint8Array[], sector: number): Promise<IoResult> {
        return new Promise((resolve) => setTimeout(() => resolve(super.readv(bufs, sector)), Math.max(0, 40 - sector / 256)));
      }
    }

    async function writeOrder(flags: number): Promise<number[]> {
      const count = 8 * 1024;
      const source = new ReversingDevice(filled(count));
      const dest = new FaultDevice(new MemoryDevice(count));
      const client = new KcopydClient();
      const result = await client.copyAndWait({ device: source, sector: 0, count }, [{ device: dest, sector: 0, count }], flags);
      assert.deepEqual(result, { readErr: false, writeErr: 0 });
      return dest.log.filter((io) => io.op === 'write').map((io) => io.sector);
    }

    it('without WRITE_SEQ writes follow read completion order (control)', async () => {
      const order = await writeOrder(0);
      assert.notDeepEqual(order, [...order].sort((a, b) => a - b));
    });

    it('with WRITE_SEQ writes reach the destination in ascending order', async () => {
      const order = await writeOrder(KCOPYD_WRITE_SEQ);
      assert.deepEqual(order, [0, 1024, 2048, 3072, 4096, 5120, 6144, 7168]);
    });
  });

  describe('page pool', () => {
    it('a pool of 1 page still finishes a 64 MiB copy', async function () {
      this.timeout(60_000);
      const count = (64 * MiB) / SECTOR_BYTES;
      const source = filled(count);
      const dest = new MemoryDevice(count);
      const client = kcopydClientCreate(1);
      assert.equal(client.poolPages, 1);
      const result = await client.copyAndWait({ device: source, sector: 0, count }, [{ device: dest, sector: 0, count }]);
      assert.deepEqual(result, { readErr: false, writeErr: 0 });
      assert.ok(dest.contents.equals(source.contents));
      assert.equal(client.subJobSectors, 8);
    });

    it('jobs wait for pages instead of allocating beyond the pool', async () => {
      const source = new ConcurrencyProbe(filled(4096));
      const dest = new MemoryDevice(4096);
      const client = new KcopydClient({ poolPages: 2 * 128 }); // room for two 1024-sector jobs
      const jobs = [0, 1, 2, 3].map((i) => client.copyAndWait({ device: source, sector: i * 1024, count: 1024 }, [{ device: dest, sector: i * 1024, count: 1024 }]));
      await Promise.all(jobs);
      assert.equal(source.maxInFlight, 2);
      assert.ok(dest.contents.equals((source as unknown as { inner: MemoryDevice }).inner.contents));
    });
  });

  describe('zero', () => {
    it('writes the shared zero page list to devices that cannot write zeroes', async () => {
      const dests = [filled(4096), filled(4096)];
      const client = new KcopydClient();
      const result = await client.zeroAndWait(dests.map((device) => ({ device, sector: 100, count: 3000 })));
      assert.deepEqual(result, { readErr: false, writeErr: 0 });
      for (const dest of dests) {
        assert.ok(isZero(bytesOf(dest, 100, 3000)));
        assert.ok(!isZero(bytesOf(dest, 99, 1)) && !isZero(bytesOf(dest, 3100, 1)));
        assert.equal(dest.calls.writeZeroes, 0);
      }
    });

    it('uses write-zeroes when every destination says it can', async () => {
      const dest = filled(4096, true);
      const client = new KcopydClient();
      await client.zeroAndWait([{ device: dest, sector: 0, count: 4096 }]);
      assert.ok(isZero(dest.contents));
      assert.equal(dest.calls.write + dest.calls.writev, 0);
      assert.equal(dest.calls.writeZeroes, 4);
    });
  });

  describe('prepared callbacks, flush and destroy', () => {
    it('doCallback delivers through the worker, later, with the given errors', async () => {
      const client = new KcopydClient();
      const calls: unknown[] = [];
      const handle = client.prepareCallback((readErr, writeErr, ctx) => calls.push([readErr, writeErr, ctx]), 7);
      assert.equal(client.jobsInFlight, 1);
      client.doCallback(handle, false, 0b1);
      assert.equal(calls.length, 0, 'not run inside doCallback');
      await client.flush();
      assert.deepEqual(calls, [[false, 1, 7]]);
      assert.throws(() => client.doCallback(handle, false, 0), /not a pending callback/);
    });

    it('destroy waits for a prepared callback to be fired and run', async () => {
      const client = new KcopydClient();
      let ran = false;
      const handle = client.prepareCallback(() => { ran = true; }, null);
      let destroyed = false;
      const destroying = client.destroy().then(() => { destroyed = true; });
      await ticks();
      assert.equal(destroyed, false);
      client.doCallback(handle, false, 0);
      await destroying;
      assert.equal(ran, true);
    });

    it('destroy with jobs in flight waits for them and their callbacks; refuses new jobs', async () => {
      const source = filled(4096);
      const dest = new MemoryDevice(4096);
      const gate = dest.hold(['write', 'writev']);
      const client = new KcopydClient();
      const done: number[] = [];
      for (let i = 0; i < 3; i++) {
        client.copy({ device: source, sector: i * 1024, count: 1024 }, [{ device: dest, sector: i * 1024, count: 1024 }], 0, () => done.push(i), null);
      }
      await gate.whenWaiting(3);
      let destroyed = false;
      const destroying = client.destroy().then(() => { destroyed = true; });
      assert.throws(() => client.copy({ device: source, sector: 0, count: 1 }, [{ device: dest, sector: 0, count: 1 }], 0, () => undefined, null));
      await ticks(10);
      assert.equal(destroyed, false, 'destroy must not finish while writes are held');
      gate.release();
      await destroying;
      assert.deepEqual(done.sort(), [0, 1, 2]);
      assert.ok(dest.contents.subarray(0, 3 * 1024 * SECTOR_BYTES).equals(source.contents.subarray(0, 3 * 1024 * SECTOR_BYTES)));
    });

    it('flush resolves after the worker ran the queued work', async () => {
      const client = new KcopydClient();
      await client.flush();
      const handle = client.prepareCallback(() => undefined, null);
      client.doCallback(handle, false, 0);
      await client.flush();
      assert.equal(client.jobsInFlight, 0);
    });
  });

  describe('progress', () => {
    it('counts bytes queued and copied', async () => {
      const source = filled(8192);
      const client = new KcopydClient();
      const first = client.copyAndWait({ device: source, sector: 0, count: 5000 }, [{ device: new MemoryDevice(8192), sector: 0, count: 5000 }]);
      assert.equal(client.progress.bytesQueued, 5000 * SECTOR_BYTES);
      assert.ok(client.progress.bytesCopied < 5000 * SECTOR_BYTES);
      await first;
      assert.deepEqual(client.progress, { bytesQueued: 5000 * SECTOR_BYTES, bytesCopied: 5000 * SECTOR_BYTES, bytesFailed: 0 });
    });
  });

  describe('throttle', () => {
    /**
     * Simulated time, as a discrete-event simulation: sleepers wake in order of their wake-up
     * time, one per event-loop turn, and the clock jumps to that time. Everything else here runs
     * in microtasks, so when a turn comes round, all that could happen before the next wake-up
     * has happened; nothing waits for the wall clock.
     */
    class SimulatedClock implements ThrottleClock {
      nowMs = 0;
      private readonly sleepers: Array<{ atMs: number; wake: () => void }> = [];
      private turnQueued = false;
      now(): number { return this.nowMs; }
      sleep(ms: number): Promise<void> {
        return new Promise((wake) => {
          this.sleepers.push({ atMs: this.nowMs + ms, wake });
          this.queueTurn();
        });
      }
      private queueTurn(): void {
        if (this.turnQueued) return;
        this.turnQueued = true;
        setImmediate(() => {
          this.turnQueued = false;
          let next = 0;
          for (let i = 1; i < this.sleepers.length; i++) if (this.sleepers[i]!.atMs < this.sleepers[next]!.atMs) next = i;
          const [sleeper] = this.sleepers.splice(next, 1);
          if (this.sleepers.length > 0) this.queueTurn();
          this.nowMs = Math.max(this.nowMs, sleeper!.atMs);
          sleeper!.wake();
        });
      }
    }

    /** Every data I/O takes `ioMs` of simulated time. */
    class TimedDevice extends MemoryDevice {
      constructor(sizeSectors: number, private readonly clock: SimulatedClock, private readonly ioMs: number) { super(sizeSectors); }
      override async readv(bufs: Uint8Array[], sector: number): Promise<IoResult> { await this.clock.sleep(this.ioMs); return super.readv(bufs, sector); }
      override async writev(bufs: Uint8Array[], sector: number, fua: boolean): Promise<IoResult> { await this.clock.sleep(this.ioMs); return super.writev(bufs, sector, fua); }
      override read(buf: Uint8Array, sector: number): Promise<IoResult> { return this.readv([buf], sector); }
      override write(buf: Uint8Array, sector: number, fua: boolean): Promise<IoResult> { return this.writev([buf], sector, fua); }
    }

    /** Bytes copied per simulated second, for a copy run under a throttle of `percent`. */
    async function copyRate(percent: number): Promise<{ bytesPerSecond: number; throttle: KcopydThrottle }> {
      const clock = new SimulatedClock();
      const throttle = new KcopydThrottle(percent, clock);
      const count = 128 * 1024; // 64 MiB in 128 pieces
      const source: BlockDevice = new TimedDevice(count, clock, 10);
      const dest: BlockDevice = new TimedDevice(count, clock, 10);
      const client = new KcopydClient({ throttle });
      const result = await client.copyAndWait({ device: source, sector: 0, count }, [{ device: dest, sector: 0, count }]);
      assert.deepEqual(result, { readErr: false, writeErr: 0 });
      return { bytesPerSecond: client.progress.bytesCopied / (clock.nowMs / 1000), throttle };
    }

    it('at 10 % copies measurably less per unit of (simulated) time than at 100 %', async function () {
      this.timeout(30_000);
      const unthrottled = await copyRate(100);
      const throttled = await copyRate(10);
      assert.ok(throttled.bytesPerSecond < 0.3 * unthrottled.bytesPerSecond,
        `10 %: ${throttled.bytesPerSecond.toFixed(0)} B/s vs 100 %: ${unthrottled.bytesPerSecond.toFixed(0)} B/s`);
      assert.ok(throttled.throttle.ioShare < 0.25, `I/O share ${throttled.throttle.ioShare}`);
    });

    it('at 100 % keeps no accounting and never sleeps', async () => {
      const clock = new SimulatedClock();
      const throttle = new KcopydThrottle(100, clock);
      for (let i = 0; i < 100; i++) assert.equal(throttle.admit(0), true);
      assert.equal(throttle.ioShare, 0);
    });

    it('issues anyway after THROTTLE_MAX_SLEEPS sleeps', () => {
      const clock = new SimulatedClock();
      const throttle = new KcopydThrottle(1, clock);
      assert.equal(throttle.admit(0), true);
      clock.nowMs += 500; // I/O outstanding for 500 ms
      throttle.finish();
      assert.equal(throttle.admit(0), false);
      assert.equal(throttle.admit(10), true);
    });
  });
});
