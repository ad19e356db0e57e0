import { strict as assert } from 'node:assert';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { native } from '../../../src/io/native';

const EBADF = os.constants.errno.EBADF;

/** The addon's pread/pwrite and preadv/pwritev: the inline I/O of a FileDevice on a tmpfs file. */
describe('native pread / pwrite / preadv / pwritev', () => {
  let dir: string;
  let handle: fsp.FileHandle;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublkdm-fileio-'));
    handle = await fsp.open(path.join(dir, 'data'), 'w+');
  });

  afterEach(async () => {
    await handle.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('moves the bytes of a view (its offset honoured) at a file offset, and returns the count', async () => {
    const backing = new Uint8Array(8192).fill(5);
    backing.fill(9, 4096);
    assert.equal(native().pwrite(handle.fd, backing.subarray(4096), 512), 4096);
    const readBack = new Uint8Array(4096 + 512);
    assert.equal(native().pread(handle.fd, readBack.subarray(512), 512), 4096);
    assert.ok(readBack.subarray(512).every((byte) => byte === 9));
    assert.ok(readBack.subarray(0, 512).every((byte) => byte === 0), 'nothing before the view was touched');
    assert.equal(native().pread(handle.fd, new Uint8Array(4096), 4096), 512, 'a short read at the end of the file');
  });

  it('returns -errno rather than throwing for an I/O error', () => {
    assert.equal(native().pread(-1, new Uint8Array(512), 0), -EBADF);
    assert.equal(native().pwrite(-1, new Uint8Array(512), 0), -EBADF);
  });

  it('preadv / pwritev move a list of views in order, in one call', () => {
    const pages = [new Uint8Array(4096).fill(1), new Uint8Array(512).fill(2), new Uint8Array(4096).fill(3)];
    assert.equal(native().pwritev(handle.fd, pages, 1024), 4096 + 512 + 4096);
    const back = [new Uint8Array(4096), new Uint8Array(4608)];
    assert.equal(native().preadv(handle.fd, back, 1024), 8704);
    assert.ok(back[0]!.every((byte) => byte === 1));
    assert.ok(back[1]!.subarray(0, 512).every((byte) => byte === 2) && back[1]!.subarray(512).every((byte) => byte === 3));
    assert.equal(native().preadv(-1, back, 0), -EBADF);
    assert.throws(() => native().preadv(handle.fd, [], 0), /preadv\(fd, views \(1 to IOV_MAX\), fileByteOffset\)/);
    assert.throws(() => native().pwritev(handle.fd, new Array(1025).fill(new Uint8Array(512)), 0), /pwritev/);
    assert.throws(() => native().pwritev(handle.fd, [new Uint8Array(512), 'x' as unknown as Uint8Array], 0), /pwritev/);
  });

  it('throws for arguments that are not an fd, a view and a non-negative offset', () => {
    assert.throws(() => native().pread(handle.fd, [] as unknown as Uint8Array, 0), /pread\(fd, view, fileByteOffset\)/);
    assert.throws(() => native().pwrite(handle.fd, new Uint8Array(512), -1), /pwrite\(fd, view, fileByteOffset\)/);
  });
});
