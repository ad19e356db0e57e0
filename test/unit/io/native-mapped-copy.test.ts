import { strict as assert } from 'node:assert';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';

import { copyBytes, native } from '../../../src/io/native';

const EFAULT = os.constants.errno.EFAULT;

/** The addon's copies through a file mapping: a FileDevice's inline I/O where its file holds data. */
describe('native copyFromMapping / copyToMapping', () => {
  let dir: string;
  let handle: fsp.FileHandle;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-mapcopy-'));
    handle = await fsp.open(path.join(dir, 'data'), 'w+');
    await handle.write(Buffer.alloc(64 * 1024, 3), 0, 64 * 1024, 0);
  });

  afterEach(async () => {
    await handle.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('moves the bytes of a view (its offset honoured) at a mapping offset, both ways, through to the file', async () => {
    const mapping = native().mmapShared(handle.fd, 0, 64 * 1024);
    try {
      // Lengths that are not a multiple of the 64-byte step, and unaligned on both sides.
      const source = new Uint8Array(5000 + 3).map((_, index) => index % 251);
      assert.equal(native().copyToMapping(mapping, 4097, source.subarray(3)), 5000);
      const onFile = Buffer.alloc(5002);
      await handle.read(onFile, 0, 5002, 4096);
      assert.equal(onFile[0], 3, 'the byte before is untouched');
      assert.deepEqual(onFile.subarray(1, 5001), Buffer.from(source.subarray(3)));
      assert.equal(onFile[5001], 3, 'the byte after is untouched');
      const target = new Uint8Array(5000 + 7);
      assert.equal(native().copyFromMapping(mapping, 4097, target.subarray(7)), 5000);
      assert.deepEqual(target.subarray(7), source.subarray(3));
      assert.ok(target.subarray(0, 7).every((byte) => byte === 0), 'nothing before the view was touched');
    } finally {
      native().unmap(mapping);
    }
  });

  it('answers -EFAULT, not SIGBUS, for pages the file no longer has, and still copies those it has', async () => {
    const mapping = native().mmapShared(handle.fd, 0, 64 * 1024);
    try {
      await handle.truncate(8192);
      const view = new Uint8Array(16 * 1024);
      assert.equal(native().copyFromMapping(mapping, 4096, view), -EFAULT);
      assert.equal(native().copyToMapping(mapping, 32 * 1024, view), -EFAULT);
      assert.equal(native().copyToMapping(mapping, 4096, view.subarray(0, 4096)), 4096, 'within the file');
      assert.equal(native().copyFromMapping(mapping, 0, view.subarray(0, 8192)), 8192);
      // The guard is left each time: a fault after a caught one is caught again.
      assert.equal(native().copyFromMapping(mapping, 60 * 1024, view.subarray(0, 4096)), -EFAULT);
      assert.equal((await handle.stat()).size, 8192, 'a failed copy never grows the file');
    } finally {
      native().unmap(mapping);
    }
  });

  it('guards each thread on its own: a worker thread (a queue thread) meets the fault as -EFAULT too', async () => {
    await handle.truncate(4096);
    const addonPath = require.resolve('../../../src/io/native');
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const { native } = require(workerData.addonPath);
       const mapping = native().mmapShared(workerData.fd, 0, 65536);
       parentPort.postMessage([native().copyFromMapping(mapping, 32768, new Uint8Array(4096)), native().copyFromMapping(mapping, 0, new Uint8Array(4096))]);`,
      { eval: true, workerData: { addonPath, fd: handle.fd } },
    );
    try {
      const [pastEnd, inFile] = (await new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject))) as number[];
      assert.equal(pastEnd, -EFAULT);
      assert.equal(inFile, 4096);
    } finally {
      await worker.terminate();
    }
  });

  it('leaves a SIGBUS outside a guarded copy to its default: a process sent one dies of it, as without the guard', () => {
    const addonPath = require.resolve('../../../src/io/native');
    const child = spawnSync(
      process.execPath,
      ['-e', `const { native } = require(${JSON.stringify(addonPath)});
        native().copyFromMapping(new ArrayBuffer(8), 0, new Uint8Array(8)); // installs the guard's handler
        process.kill(process.pid, 'SIGBUS');
        setTimeout(() => process.exit(0), 2000);`],
      { timeout: 20_000 },
    );
    assert.equal(child.signal, 'SIGBUS', `the child lived on: ${child.stderr}`);
  });

  it('refuses a range outside the mapping, and what is not a mapping and a view', () => {
    const mapping = native().mmapShared(handle.fd, 0, 8192);
    try {
      assert.throws(() => native().copyFromMapping(mapping, 8192 - 511, new Uint8Array(512)), RangeError);
      assert.throws(() => native().copyToMapping(mapping, -1, new Uint8Array(512)), /copyToMapping/);
      assert.throws(() => native().copyFromMapping(new Uint8Array(8) as unknown as ArrayBuffer, 0, new Uint8Array(8)), TypeError);
      assert.equal(native().copyFromMapping(mapping, 8192, new Uint8Array(0)), 0, 'nothing at the very end');
    } finally {
      native().unmap(mapping);
    }
  });
});

/** copyBytes: forwarded requests' bytes between a tag's buffer and a shared one (queue-thread.ts). */
describe('copyBytes (native vector copies between buffers)', () => {
  const patterned = (byteLength: number, seed: number): Uint8Array => Uint8Array.from({ length: byteLength }, (_, i) => (i * 31 + seed) & 0xff);

  it('copies every length and offset exactly, into shared memory and out, touching nothing past the source', () => {
    for (const byteLength of [0, 1, 15, 63, 64, 65, 1023, 1024, 1025, 4096, 4096 + 17, 512 * 1024]) {
      const source = patterned(byteLength + 3, byteLength).subarray(3);
      const shared = new Uint8Array(new SharedArrayBuffer(byteLength + 8)).fill(0xee);
      copyBytes(shared.subarray(5), source);
      assert.deepEqual(Buffer.from(shared.subarray(5, 5 + byteLength)), Buffer.from(source), `${byteLength} bytes in`);
      assert.ok(shared.subarray(0, 5).every((byte) => byte === 0xee) && shared.subarray(5 + byteLength).every((byte) => byte === 0xee), `${byteLength}: nothing else written`);
      const back = new Uint8Array(byteLength + 1).fill(0xdd);
      copyBytes(back, shared.subarray(5, 5 + byteLength));
      assert.deepEqual(Buffer.from(back.subarray(0, byteLength)), Buffer.from(source), `${byteLength} bytes out`);
      assert.equal(back[byteLength], 0xdd);
    }
  });

  it('refuses a target shorter than the source, and what is not a view', () => {
    assert.throws(() => native().copyBytes(new Uint8Array(4095), new Uint8Array(4096)), RangeError);
    assert.throws(() => native().copyBytes({} as Uint8Array, new Uint8Array(4)), TypeError);
  });
});
