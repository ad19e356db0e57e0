import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { ANSWER_FIELDS, NO_BUFFER, REQUEST_FIELDS, RecordRing, SharedBufferPool, readRequest, writeAnswer, writeRequest } from '../../../src/daemon/forward-channel';
import { IoOp } from '../../../src/io/bio';

describe('queue threads: the forwarding channel in shared memory', () => {
  it('carries records in order across the end of the ring, and refuses one more than it holds', () => {
    const writer = RecordRing.create(4, ANSWER_FIELDS);
    const reader = new RecordRing(writer.share, ANSWER_FIELDS);
    const seen: number[] = [];
    for (let round = 0; round < 3; round++) {
      for (let k = 0; k < 4; k++) {
        const at = writer.slot();
        assert.ok(at >= 0, 'room for four');
        writeAnswer(writer.records, at, 7, round * 4 + k, 4096);
        writer.publish();
      }
      assert.equal(writer.slot(), -1, 'full');
      assert.equal(reader.drain((records, at) => seen.push(records[at + 1]!)), 4);
    }
    assert.deepEqual(seen, [...Array(12).keys()]);
  });

  it('refuses a ring that is not a power of two records, or records of no field', () => {
    assert.throws(() => RecordRing.create(3, 2), /power of 2/);
    assert.throws(() => RecordRing.create(4, 0), /at least one field/);
  });

  it('encodes a request exactly, sectors past 2^32 included', () => {
    const ring = RecordRing.create(2, REQUEST_FIELDS);
    const request = { devId: 3, id: 2 ** 31 + 5, op: IoOp.Write, sector: 2 ** 40 + 8, sectorCount: 2048, fua: true, noUnmap: false, bufferId: 12, byteOffset: 127 * 512 * 1024, inTagMemory: true };
    writeRequest(ring.records, ring.slot(), request);
    ring.publish();
    const flush = { ...request, op: IoOp.Flush, fua: false, noUnmap: true, bufferId: NO_BUFFER, byteOffset: 0, inTagMemory: false };
    writeRequest(ring.records, ring.slot(), flush);
    ring.publish();
    const back: unknown[] = [];
    ring.drain((records, at) => back.push(readRequest(records, at)));
    assert.deepEqual(back, [request, flush]);
  });

  it('a sleeping reader wakes when the writer rings, and not for records it already drained', async () => {
    const ring = RecordRing.create(8, ANSWER_FIELDS);
    const asleep = ring.sleep();
    assert.ok(asleep !== undefined, 'nothing written: it sleeps');
    writeAnswer(ring.records, ring.slot(), 1, 1, 0);
    ring.publish();
    ring.ring();
    assert.equal(await asleep, 'ok');
    assert.equal(ring.sleep(), undefined, 'a record is waiting: drain first');
    ring.drain(() => {});
    assert.ok(ring.sleep() !== undefined);
  });

  it('loses no record to another thread that writes while the reader drains and sleeps', async function () {
    this.timeout(20_000);
    const count = 20_000;
    const ring = RecordRing.create(64, ANSWER_FIELDS);
    const module = path.resolve(__dirname, '../../../src/daemon/forward-channel.js');
    const worker = new Worker(
      `const { RecordRing, ANSWER_FIELDS, writeAnswer } = require(${JSON.stringify(module)});
       const { workerData } = require('node:worker_threads');
       const ring = new RecordRing(workerData.share, ANSWER_FIELDS);
       for (let k = 0; k < workerData.count; ) {
         const at = ring.slot();
         if (at < 0) { ring.ring(); Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 0.05); continue; }
         writeAnswer(ring.records, at, 0, k++, 0);
         ring.publish();
         if (k % 7 === 0) ring.ring();
       }
       ring.ring();`,
      { eval: true, workerData: { share: ring.share, count } },
    );
    let next = 0;
    await new Promise<void>((resolve, reject) => {
      worker.once('error', reject);
      const onRing = (): void => {
        for (;;) {
          ring.drain((records, at) => {
            if (records[at + 1] !== next) reject(new Error(`record ${records[at + 1]} where ${next} was due`));
            next++;
          });
          if (next === count) return resolve();
          const rung = ring.sleep();
          if (rung !== undefined) return void rung.then(onRing);
        }
      };
      onRing();
    });
    await worker.terminate();
    assert.equal(next, count);
  });

  it('announces a shared buffer before it is first named, reuses it by size, and announces one dropped', () => {
    const events: Array<{ kind: string; id: number; shared: boolean }> = [];
    const pool = new SharedBufferPool((event) => events.push({ kind: event.kind, id: event.id, shared: event.share !== undefined }), { keptBytes: 8192, busyKeptBytes: 8192 });
    const a = pool.take(4096);
    assert.deepEqual(events, [{ kind: 'buffer', id: a.id, shared: true }]);
    assert.ok(a.bytes.buffer instanceof SharedArrayBuffer);
    pool.give(a);
    assert.equal(pool.take(4096).id, a.id, 'the same buffer again, not announced again');
    const b = pool.take(8192);
    const c = pool.take(4096);
    pool.give(b);
    pool.give(c);
    pool.give(a);
    assert.deepEqual(events.slice(1), [
      { kind: 'buffer', id: b.id, shared: true },
      { kind: 'buffer', id: c.id, shared: true },
      { kind: 'buffer', id: c.id, shared: false },
      { kind: 'buffer', id: a.id, shared: false },
    ], 'past 8 KiB idle the daemon thread is told to forget them');
    const abandoned = pool.take(4096);
    pool.discard(abandoned);
    assert.deepEqual(events.at(-1), { kind: 'buffer', id: abandoned.id, shared: false }, 'a discarded buffer is forgotten');
    assert.notEqual(pool.take(4096).id, abandoned.id, 'and never handed out again');
  });
});
