import { strict as assert } from 'node:assert';
import { promises as fsp, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { EINVAL, EIO, ErrnoError } from '../../../src/base/errno';
import { FileDevice, openFileDevice } from '../../../src/io/file-device';
import { allocPageAligned, native } from '../../../src/io/native';
import { IoRing, type IoCallback } from '../../../src/io/ring';

let ring: IoRing;
before(() => {
  ring = IoRing.create({ entries: 32 });
});
after(() => ring.close());

describe('FileDevice over a regular file', () => {
  let dir: string;
  let file: string;
  let device: FileDevice;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-filedev-'));
    file = path.join(dir, 'backing');
    await fsp.writeFile(file, Buffer.alloc(64 * 1024 + 100));
    device = await openFileDevice(file, { ring });
  });

  afterEach(async () => {
    await device.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('reports the size rounded down to sectors, 512-byte blocks and the path as table name', () => {
    assert.equal(device.sizeSectors, 128);
    assert.equal(device.logicalBlockBytes, 512);
    assert.equal(device.tableName, file);
    assert.equal(device.devno, undefined);
  });

  it('is keyed by st_dev and st_ino, and declares discard and write-zeroes', async () => {
    const stats = await fsp.stat(file, { bigint: true });
    assert.equal(device.key, `file:${stats.dev}:${stats.ino}`);
    assert.deepEqual(device.capabilities, { discard: true, writeZeroes: true });
  });

  it('reads back what it wrote, at sector offsets, with and without FUA', async () => {
    assert.equal(await device.write(Buffer.alloc(1024, 0x11), 4, false), 1024);
    assert.equal(await device.write(Buffer.alloc(512, 0x22), 6, true), 512);
    const readBack = Buffer.alloc(1536);
    assert.equal(await device.read(readBack, 4), 1536);
    assert.ok(readBack.subarray(0, 1024).every((b) => b === 0x11));
    assert.ok(readBack.subarray(1024).every((b) => b === 0x22));
    const onDisk = await fsp.readFile(file);
    assert.equal(onDisk[4 * 512], 0x11);
    assert.equal(onDisk[6 * 512], 0x22);
  });

  it('aligned I/O from page-aligned memory goes through O_DIRECT and stays coherent with buffered I/O', async () => {
    assert.equal(device.usesDirectIo, true, 'the host tmpdir takes O_DIRECT');
    const page = new Uint8Array(allocPageAligned(8192));
    page.fill(0x5a);
    assert.equal(await device.write(page, 8, false), 8192); // sector 8 = 4 KiB: direct
    const unaligned = Buffer.alloc(1024);
    assert.equal(await device.read(unaligned, 9), 1024); // buffered, inside what was written directly
    assert.ok(unaligned.every((b) => b === 0x5a));
    assert.equal(await device.write(Buffer.alloc(512, 0x33), 10, false), 512); // buffered write
    const back = new Uint8Array(allocPageAligned(8192));
    assert.equal(await device.read(back, 8), 8192); // direct read sees the buffered write
    assert.equal(back[2 * 512], 0x33);
    assert.equal(back[2 * 512 - 1], 0x5a);
    assert.equal(back[3 * 512], 0x5a);
    const onDisk = await fsp.readFile(file);
    assert.equal(onDisk[10 * 512], 0x33);
    assert.equal(onDisk[12 * 512], 0x5a);
    assert.equal(device.usesDirectIo, true);
  });

  it('a read asked throughPageCache goes through the buffered descriptor even when aligned, and sees direct writes', async () => {
    const page = new Uint8Array(allocPageAligned(8192));
    page.fill(0x4c);
    assert.equal(await device.write(page, 8, false), 8192);
    const fds: number[] = [];
    const { readCb, readvCb } = ring;
    ring.readCb = (fd, ...rest) => { fds.push(fd); return readCb.call(ring, fd, ...rest); };
    ring.readvCb = (fd, ...rest) => { fds.push(fd); return readvCb.call(ring, fd, ...rest); };
    try {
      const one = new Uint8Array(allocPageAligned(8192));
      assert.equal(await device.read(one, 8, { throughPageCache: true }), 8192);
      assert.ok(one.every((b) => b === 0x4c));
      const two = [new Uint8Array(allocPageAligned(4096)), new Uint8Array(allocPageAligned(4096))];
      assert.equal(await device.readv(two, 8, { throughPageCache: true }), 8192);
      assert.ok(two.every((view) => view.every((b) => b === 0x4c)));
      assert.equal(await device.read(new Uint8Array(allocPageAligned(4096)), 8), 4096);
    } finally {
      Object.assign(ring, { readCb, readvCb });
    }
    assert.deepEqual(fds.slice(0, 2), [device.fd, device.fd], 'both asked reads on the buffered descriptor');
    assert.notEqual(fds[2], device.fd, 'an aligned read not asked so goes O_DIRECT');
  });

  it('with directIo: false opens no O_DIRECT descriptor and moves aligned I/O through the page cache', async () => {
    const buffered = await openFileDevice(file, { ring, directIo: false });
    try {
      assert.equal(buffered.usesDirectIo, false);
      assert.equal(await descriptorsOn(file), 3, 'the shared device: buffered and direct; this one: buffered only');
      const page = new Uint8Array(allocPageAligned(4096));
      page.fill(0x6b);
      assert.equal(await buffered.write(page, 8, false), 4096);
      const back = new Uint8Array(allocPageAligned(4096));
      assert.equal(await device.read(back, 8), 4096); // read back direct, through the other device
      assert.ok(back.every((b) => b === 0x6b));
    } finally {
      await buffered.close();
    }
  });

  it('readCb and writeCb move data without a promise, direct or buffered, and throw on misuse', async () => {
    const page = new Uint8Array(allocPageAligned(4096));
    page.fill(0x6b);
    const written = await new Promise<number>((resolve) => device.writeCb(page, 16, true, resolve));
    assert.equal(written, 4096);
    const unaligned = Buffer.alloc(512);
    const read = await new Promise<number>((resolve) => device.readCb(unaligned, 17, resolve));
    assert.equal(read, 512);
    assert.ok(unaligned.every((b) => b === 0x6b));
    assert.throws(() => device.readCb(Buffer.alloc(100), 0, () => {}), /whole number of sectors/);
  });

  it('writev and readv move buffers in order', async () => {
    assert.equal(await device.writev([Buffer.alloc(512, 1), Buffer.alloc(512, 2)], 10, false), 1024);
    const parts = [Buffer.alloc(512), Buffer.alloc(512)];
    assert.equal(await device.readv(parts, 10), 1024);
    assert.equal(parts[0][0], 1);
    assert.equal(parts[1][511], 2);
  });

  it('flush, discard and both kinds of writeZeroes zero the range', async () => {
    await device.write(Buffer.alloc(16 * 512, 0xee), 0, false);
    assert.equal(await device.flush(), 0);
    assert.equal(await device.discard(0, 8), 0);
    assert.equal(await device.writeZeroes(8, 4, true), 0);
    assert.equal(await device.writeZeroes(12, 2, false), 0);
    const readBack = Buffer.alloc(16 * 512);
    await device.read(readBack, 0);
    assert.ok(readBack.subarray(0, 14 * 512).every((b) => b === 0));
    assert.ok(readBack.subarray(14 * 512).every((b) => b === 0xee));
    assert.equal((await fsp.stat(file)).size, 64 * 1024 + 100);
  });

  it('writeZeroes with noUnmap keeps the range allocated where the filesystem has no ZERO_RANGE (tmpfs)', async function () {
    const shm = '/dev/shm';
    const shmFile = path.join(shm, `ublkdm-zero-${process.pid}`);
    await fsp.writeFile(shmFile, Buffer.alloc(64 * 1024, 0xee));
    const onTmpfs = await openFileDevice(shmFile, { ring });
    try {
      const blocksBefore = (await fsp.stat(shmFile)).blocks;
      assert.equal(await onTmpfs.writeZeroes(16, 32, true), 0);
      const back = await fsp.readFile(shmFile);
      assert.ok(back.subarray(16 * 512, 48 * 512).every((b) => b === 0), 'the range reads as zeroes');
      assert.ok(back.subarray(0, 16 * 512).every((b) => b === 0xee) && back.subarray(48 * 512).every((b) => b === 0xee));
      assert.equal((await fsp.stat(shmFile)).blocks, blocksBefore, 'and stays allocated');
    } finally {
      await onTmpfs.close();
      await fsp.rm(shmFile, { force: true });
    }
  });

  it('returns a short count for a read that crosses the end of the file', async () => {
    assert.equal(await device.read(Buffer.alloc(1024), 128), 100);
  });

  it('a write past the end fails with EIO and never grows the file (a device does not grow)', async () => {
    const before = statSync(file).size;
    const lastSector = device.sizeSectors - 1;
    assert.equal(await device.write(Buffer.alloc(1024, 1), lastSector, false), -EIO);
    assert.equal(await device.writev([Buffer.alloc(512), Buffer.alloc(512)], lastSector, false), -EIO);
    assert.equal(statSync(file).size, before);
  });

  it('rejects buffers that are not whole sectors, and any I/O after close', async () => {
    await assert.rejects(device.read(Buffer.alloc(100), 0), RangeError);
    await device.close();
    await assert.rejects(device.write(Buffer.alloc(512), 0, false), /closed/);
  });

  it('a read-only device returns -EBADF for writes', async () => {
    const readOnly = await openFileDevice(file, { ring, readOnly: true });
    try {
      assert.equal(await readOnly.write(Buffer.alloc(512), 0, false), -os.constants.errno.EBADF);
      assert.equal(await readOnly.read(Buffer.alloc(512), 0), 512);
    } finally {
      await readOnly.close();
    }
  });
});

/** How many of this process's descriptors are open on `file`. */
async function descriptorsOn(file: string): Promise<number> {
  let count = 0;
  for (const fd of await fsp.readdir('/proc/self/fd')) {
    if ((await fsp.readlink(`/proc/self/fd/${fd}`).catch(() => '')) === file) count++;
  }
  return count;
}

/** descriptorsOn(), given up to a second to reach `expected` (FileHandle.close() runs on the thread pool). */
async function settledDescriptorsOn(file: string, expected: number): Promise<number> {
  let count = await descriptorsOn(file);
  for (let attempt = 0; attempt < 100 && count !== expected; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    count = await descriptorsOn(file);
  }
  return count;
}

/** On the daemon thread's ring a file's size is looked at once a millisecond (FileDevice.sizeLookDue): let one pass. */
async function nextMillisecond(): Promise<void> {
  const start = Date.now();
  while (Date.now() === start) await new Promise((resolve) => setTimeout(resolve, 1));
}

describe('FileDevice on tmpfs: reads and writes copied through a mapping of the file', () => {
  let shm: string;
  let file: string;
  let device: FileDevice;
  const PAGE = 4096;

  beforeEach(async function () {
    const made = await fsp.mkdtemp('/dev/shm/ublkdm-mapped-').catch(() => undefined);
    if (made === undefined) this.skip(); // a host without /dev/shm: --forbid-pending makes that a failure
    shm = made!;
    file = path.join(shm, 'backing');
    // Data in the first 16 pages, a hole in the next 16.
    const handle = await fsp.open(file, 'w');
    await handle.write(Buffer.alloc(16 * PAGE, 1), 0, 16 * PAGE, 0);
    await handle.truncate(32 * PAGE);
    await handle.close();
    device = await openFileDevice(file, { ring });
  });

  afterEach(async () => {
    await device?.close();
    if (shm !== undefined) await fsp.rm(shm, { recursive: true, force: true });
  });

  const mapsFile = async (): Promise<boolean> => (await fsp.readFile('/proc/self/maps', 'utf8')).split('\n').some((line) => line.endsWith(` ${file}`));
  const allocatedPages = async (): Promise<number> => ((await fsp.stat(file)).blocks * 512) / PAGE;

  it('copies where the file has data, and the file and other readers see the bytes', async () => {
    assert.equal(device.inlineIo, true);
    assert.equal(await device.write(Buffer.alloc(2 * PAGE, 7), 8, false), 2 * PAGE);
    assert.equal(await mapsFile(), true, 'the write went through a mapping of the file');
    const onFile = await fsp.readFile(file);
    assert.ok(onFile.subarray(PAGE, 3 * PAGE).every((byte) => byte === 7) && onFile[0] === 1 && onFile[3 * PAGE] === 1);
    const readBack = Buffer.alloc(4 * PAGE);
    assert.equal(await device.read(readBack, 0), 4 * PAGE);
    assert.deepEqual(readBack, onFile.subarray(0, 4 * PAGE));
    const pages = [Buffer.alloc(PAGE, 4), Buffer.alloc(512, 5)];
    assert.equal(await device.writev(pages, 80, false), PAGE + 512);
    const readPages = [Buffer.alloc(PAGE), Buffer.alloc(512)];
    assert.equal(await device.readv(readPages, 80), PAGE + 512);
    assert.deepEqual(readPages, pages);
  });

  it('reads a hole as zeroes without filling it, and writes into a hole fill only what they write', async () => {
    const before = await allocatedPages();
    const hole = Buffer.alloc(8 * PAGE, 9);
    assert.equal(await device.read(hole, 16 * 8), 8 * PAGE);
    assert.ok(hole.every((byte) => byte === 0));
    const straddling = Buffer.alloc(4 * PAGE, 9);
    assert.equal(await device.read(straddling, 14 * 8), 4 * PAGE, 'two pages of data, two of hole');
    assert.ok(straddling.subarray(0, 2 * PAGE).every((byte) => byte === 1) && straddling.subarray(2 * PAGE).every((byte) => byte === 0));
    assert.equal(await allocatedPages(), before, 'no read took memory');
    assert.equal(await device.write(Buffer.alloc(PAGE, 6), 20 * 8, false), PAGE);
    assert.equal(await allocatedPages(), before + 1);
    const readBack = Buffer.alloc(PAGE);
    assert.equal(await device.read(readBack, 20 * 8), PAGE);
    assert.ok(readBack.every((byte) => byte === 6), 'the filled page reads back (through the mapping now)');
  });

  it('fills a hole front to back without asking the file (lseek) again at each write', async () => {
    const addon = native() as { nextData: (fd: number, byteOffset: number) => number };
    const nextData = addon.nextData;
    let asked = 0;
    addon.nextData = (fd, byteOffset) => {
      asked++;
      return nextData(fd, byteOffset);
    };
    try {
      assert.equal(await device.read(Buffer.alloc(PAGE), 16 * 8), PAGE, 'the hole learned');
      const askedToLearn = asked;
      assert.ok(askedToLearn > 0);
      // As a snapshot's COW or a resyncing mirror leg fills: each write lands in the known hole.
      for (let page = 16; page < 24; page++) assert.equal(await device.write(Buffer.alloc(PAGE, page), page * 8, false), PAGE);
      assert.equal(asked, askedToLearn, 'no write asked the file where its hole is');
      const readBack = Buffer.alloc(8 * PAGE);
      assert.equal(await device.read(readBack, 16 * 8), 8 * PAGE);
      for (let page = 0; page < 8; page++) assert.ok(readBack.subarray(page * PAGE, (page + 1) * PAGE).every((byte) => byte === 16 + page));
      assert.equal(asked, askedToLearn, 'what they wrote is known as data');
    } finally {
      addon.nextData = nextData;
    }
  });

  it('on a ring the event loop drives, looks at the file\'s size once a millisecond, however many flushes', async () => {
    const addon = native() as { fileSize: (fd: number) => number };
    const fileSize = addon.fileSize;
    const dateNow = Date.now;
    let looks = 0;
    let nowMs = dateNow();
    addon.fileSize = (fd) => {
      looks++;
      return fileSize(fd);
    };
    Date.now = () => nowMs;
    try {
      for (let page = 0; page < 8; page++) assert.equal(await device.write(Buffer.alloc(PAGE, page), page * 8, false), PAGE);
      assert.equal(looks, 1, 'eight writes, eight flushes, one millisecond');
      nowMs += 1;
      assert.equal(await device.read(Buffer.alloc(PAGE), 0), PAGE);
      assert.equal(looks, 2, 'the next millisecond looks again');
    } finally {
      addon.fileSize = fileSize;
      Date.now = dateNow;
    }
  });

  it('a file cut short within a page: a write past its new end extends it, as pwrite does, not into the mapped rest of the page', async () => {
    assert.equal(await device.read(Buffer.alloc(PAGE), 0), PAGE, 'the file mapped and learned');
    await fsp.truncate(file, 3 * PAGE + 512);
    await nextMillisecond();
    assert.equal(await device.write(Buffer.alloc(512, 8), 3 * 8 + 2, false), 512);
    const onFile = await fsp.readFile(file);
    assert.equal(onFile.length, 3 * PAGE + 3 * 512, 'the write extended the file');
    assert.ok(onFile.subarray(3 * PAGE + 1024).every((byte) => byte === 8));
    assert.equal(await device.read(Buffer.alloc(PAGE), 3 * 8), 3 * 512, 'a read stops at the end, as pread does');
  });

  it('a file shrunk under it: reads and writes answer as pread and pwrite do, and the process lives', async () => {
    assert.equal(await device.read(Buffer.alloc(PAGE), 0), PAGE, 'the file mapped and learned');
    await fsp.truncate(file, 2 * PAGE);
    await nextMillisecond();
    assert.equal(await device.read(Buffer.alloc(4 * PAGE), 0), 2 * PAGE, 'a short read, as pread gives');
    assert.equal(await device.read(Buffer.alloc(PAGE), 8 * 8), 0, 'past the end');
    assert.equal(await device.write(Buffer.alloc(PAGE, 2), 4 * 8, false), PAGE, 'pwrite extends the file');
    assert.equal((await fsp.stat(file)).size, 5 * PAGE);
    const readBack = Buffer.alloc(PAGE);
    assert.equal(await device.read(readBack, 4 * 8), PAGE);
    assert.ok(readBack.every((byte) => byte === 2));
  });
});

describe('FileDevice when the filesystem refuses its direct I/O (EINVAL)', () => {
  let dir: string;
  let file: string;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-einval-'));
    file = path.join(dir, 'backing');
    await fsp.writeFile(file, Buffer.alloc(64 * 1024, 0x7e));
  });
  afterEach(() => fsp.rm(dir, { recursive: true, force: true }));

  /** Reads on any descriptor but `bufferedFd()` are held, not issued, until the test says so. */
  function holdingDirectReads(bufferedFd: () => number) {
    const held: Array<{ fd: number; buf: Uint8Array; byteOffset: number; done: IoCallback }> = [];
    const readCb = (fd: number, buf: Uint8Array, byteOffset: number, done: IoCallback) => {
      if (fd === bufferedFd()) return ring.readCb(fd, buf, byteOffset, done);
      held.push({ fd, buf, byteOffset, done });
      return 0;
    };
    const heldRing = new Proxy(ring, {
      get: (target, name) => (name === 'readCb' ? readCb : (Reflect.get(target, name) as unknown)),
    });
    return { heldRing, held };
  }

  it('goes buffered, and closes the O_DIRECT descriptor only after the requests in flight on it complete', async () => {
    let device: FileDevice | undefined;
    const { heldRing, held } = holdingDirectReads(() => device!.fd);
    device = await openFileDevice(file, { ring: heldRing });
    try {
      assert.equal(await descriptorsOn(file), 2, 'buffered and direct descriptors');
      const first = new Uint8Array(allocPageAligned(4096));
      const second = new Uint8Array(allocPageAligned(4096));
      const firstRead = device.read(first, 0);
      const secondRead = device.read(second, 8);
      assert.equal(held.length, 2, 'both aligned reads went to the direct descriptor');

      held[0].done(-EINVAL);
      assert.equal(await firstRead, 4096, 'the refused read went again, buffered');
      assert.ok(first.every((b) => b === 0x7e));
      assert.equal(device.usesDirectIo, false);
      assert.equal(await descriptorsOn(file), 2, 'the direct descriptor stays open while a read is in flight on it');

      // The held read reaches the kernel only now, on the descriptor it was issued on.
      ring.readCb(held[1].fd, held[1].buf, held[1].byteOffset, held[1].done);
      assert.equal(await secondRead, 4096);
      assert.ok(second.every((b) => b === 0x7e));
      assert.equal(await settledDescriptorsOn(file, 1), 1, 'then it is closed');

      assert.equal(await device.read(new Uint8Array(allocPageAligned(4096)), 16), 4096);
      assert.equal(held.length, 2, 'aligned reads no longer go direct');
    } finally {
      await device.close();
    }
    assert.equal(await descriptorsOn(file), 0, 'close() leaves nothing open');
  });

  it('close() closes a retired descriptor that still has a request in flight; the late completion is harmless', async () => {
    let device: FileDevice | undefined;
    const { heldRing, held } = holdingDirectReads(() => device!.fd);
    device = await openFileDevice(file, { ring: heldRing });
    const refused = device.read(new Uint8Array(allocPageAligned(4096)), 0);
    const late = new Promise<number>((resolve) => device!.readCb(new Uint8Array(allocPageAligned(4096)), 8, resolve));
    held[0].done(-EINVAL);
    await refused;
    await device.close();
    assert.equal(await descriptorsOn(file), 0);
    held[1].done(-EINVAL); // completes after close: must not close anything again
    assert.ok((await late) < 0, 'the retry after close fails instead of reaching some other file');
    assert.equal(await descriptorsOn(file), 0);
  });
});

describe('openFileDevice errors and specs', () => {
  it('names the missing path in an ENOENT ErrnoError', async () => {
    const missing = path.join(os.tmpdir(), 'ublkdm-definitely-missing', 'nothing');
    await assert.rejects(openFileDevice(missing, { ring }), (error: unknown) => {
      assert.ok(error instanceof ErrnoError);
      assert.equal(error.code, 'ENOENT');
      assert.match(error.message, new RegExp(missing));
      return true;
    });
  });

  it('refuses a directory', async () => {
    await assert.rejects(openFileDevice(os.tmpdir(), { ring }), /neither a regular file nor a block device/);
  });

  it('refuses an unknown major:minor', async () => {
    await assert.rejects(openFileDevice('4095:1048575', { ring }), /no block device 4095:1048575/);
  });

  it('opens a block device named by major:minor, with its devno as table name', async function () {
    const loop0 = '/sys/dev/block/7:0';
    if (!(await fsp.stat(loop0).catch(() => undefined))) this.skip();
    const device = await openFileDevice('7:0', { ring, readOnly: true });
    try {
      assert.equal(device.path, '/dev/loop0');
      assert.equal(device.tableName, '7:0');
      assert.deepEqual(device.devno, { major: 7, minor: 0 });
      assert.equal(device.logicalBlockBytes, 512);
      assert.equal(typeof device.sizeSectors, 'number');
      assert.equal(device.key, 'blk:7:0');
      const queueLimit = async (name: string) => Number(await fsp.readFile(`/sys/dev/block/7:0/queue/${name}`, 'utf8'));
      assert.deepEqual(device.capabilities, {
        discard: (await queueLimit('discard_max_bytes')) > 0,
        writeZeroes: (await queueLimit('write_zeroes_max_bytes')) > 0,
      });
    } finally {
      await device.close();
    }
  });

  it('resolves a relative path to an absolute one', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-rel-'));
    const file = path.join(dir, 'f');
    await fsp.writeFile(file, Buffer.alloc(4096));
    const device = await openFileDevice(path.relative(process.cwd(), file), { ring });
    try {
      assert.equal(device.path, file);
    } finally {
      await device.close();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
