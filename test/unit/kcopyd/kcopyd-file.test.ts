import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openFileDevice, type FileDevice } from '../../../src/io/file-device';
import { IoRing } from '../../../src/io/ring';
import { dmIoSync, dmIoSyncBvec } from '../../../src/dmio';
import { KcopydClient } from '../../../src/kcopyd';
import { PAGE_BYTES, SECTOR_BYTES } from '../../../src/base/units';

/** dm-io and kcopyd over real files and a real io_uring. */
describe('dm-io and kcopyd on files (io_uring)', () => {
  let dir: string;
  let ring: IoRing;
  before(() => (ring = IoRing.create()));
  after(() => ring.close());
  const opened: FileDevice[] = [];
  const open = async (name: string, byteLength: number, contents?: Buffer): Promise<FileDevice> => {
    writeFileSync(join(dir, name), contents ?? Buffer.alloc(byteLength));
    const device = await openFileDevice(join(dir, name), { ring });
    opened.push(device);
    return device;
  };

  beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'kcopyd-file-')); });
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((device) => device.close()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('dm-io writes a page list at an unaligned offset to two files and reads it back through a bio vector', async () => {
    const a = await open('a', 1 << 20);
    const b = await open('b', 1 << 20);
    const pages = [0, 1, 2].map(() => new Uint8Array(randomBytes(PAGE_BYTES)));
    const count = 15;
    assert.equal(await dmIoSync([{ device: a, sector: 3, count }, { device: b, sector: 100, count }], 'write', pages, 300), 0);
    const expected = Buffer.concat(pages).subarray(300, 300 + count * SECTOR_BYTES);
    assert.ok(readFileSync(join(dir, 'a')).subarray(3 * SECTOR_BYTES, (3 + count) * SECTOR_BYTES).equals(expected));
    assert.ok(readFileSync(join(dir, 'b')).subarray(100 * SECTOR_BYTES, (100 + count) * SECTOR_BYTES).equals(expected));
    const target = new Uint8Array(count * SECTOR_BYTES + 10);
    const bits = await dmIoSyncBvec([{ device: b, sector: 100, count }], 'read', [
      { buffer: target, byteOffset: 1, byteLength: 1000 }, { buffer: target, byteOffset: 1005, byteLength: count * SECTOR_BYTES - 1000 },
    ]);
    assert.equal(bits, 0);
    assert.ok(Buffer.from(target.subarray(1, 1001)).equals(expected.subarray(0, 1000)));
    assert.ok(Buffer.from(target.subarray(1005, 1005 + count * SECTOR_BYTES - 1000)).equals(expected.subarray(1000)));
  });

  it('kcopyd copies 20 MiB + 3 sectors between files to two destinations', async function () {
    // 60 MiB of file I/O: mocha's 2 s is a guess that a busy 2-core CI machine can miss; this test is about bytes, not speed.
    this.timeout(30_000);
    const count = 40 * 1024 + 3;
    const sourceBytes = randomBytes((count + 10) * SECTOR_BYTES);
    const source = await open('source', 0, sourceBytes);
    const d0 = await open('d0', (count + 10) * SECTOR_BYTES);
    const d1 = await open('d1', (count + 10) * SECTOR_BYTES);
    const client = new KcopydClient();
    const result = await client.copyAndWait({ device: source, sector: 7, count }, [
      { device: d0, sector: 0, count }, { device: d1, sector: 5, count },
    ]);
    assert.deepEqual(result, { readErr: false, writeErr: 0 });
    const expected = sourceBytes.subarray(7 * SECTOR_BYTES, (7 + count) * SECTOR_BYTES);
    assert.ok(readFileSync(join(dir, 'd0')).subarray(0, count * SECTOR_BYTES).equals(expected));
    assert.ok(readFileSync(join(dir, 'd1')).subarray(5 * SECTOR_BYTES, (5 + count) * SECTOR_BYTES).equals(expected));
    await client.destroy();
  });

  it('kcopyd reports a read past the end of the source file as a read error', async () => {
    const source = await open('short', 8 * SECTOR_BYTES);
    const dest = await open('dest', 64 * SECTOR_BYTES);
    const client = new KcopydClient();
    const result = await client.copyAndWait({ device: source, sector: 0, count: 16 }, [{ device: dest, sector: 0, count: 16 }]);
    assert.equal(result.readErr, true);
  });

  describe('where the source is read from', () => {
    /** The descriptor of every data request the ring is given, by kind. */
    function watchDescriptors(): { reads: number[]; writes: number[]; restore: () => void } {
      const seen = { reads: [] as number[], writes: [] as number[] };
      const originals = { readCb: ring.readCb, readvCb: ring.readvCb, writeCb: ring.writeCb, writevCb: ring.writevCb };
      const spy = <K extends keyof typeof originals>(name: K, into: number[]): void => {
        const original = originals[name] as (fd: number, ...rest: unknown[]) => unknown;
        (ring as unknown as Record<string, unknown>)[name] = (fd: number, ...rest: unknown[]) => {
          into.push(fd);
          return original.call(ring, fd, ...rest);
        };
      };
      spy('readCb', seen.reads);
      spy('readvCb', seen.reads);
      spy('writeCb', seen.writes);
      spy('writevCb', seen.writes);
      return { ...seen, restore: () => Object.assign(ring, originals) };
    }

    for (const throughPageCache of [true, false]) {
      it(`readSourceThroughPageCache ${throughPageCache}: the source is read ${throughPageCache ? 'through the page cache' : 'O_DIRECT'}, the destination written O_DIRECT, byte for byte`, async () => {
        const count = 3 * 1024; // three 512-sector sub-jobs
        const sourceBytes = randomBytes(count * SECTOR_BYTES);
        const source = await open('source', 0, sourceBytes);
        const dest = await open('dest', count * SECTOR_BYTES);
        assert.ok(source.usesDirectIo && dest.usesDirectIo, 'the host tmpdir takes O_DIRECT');
        const client = new KcopydClient({ readSourceThroughPageCache: throughPageCache });
        const watched = watchDescriptors();
        try {
          assert.deepEqual(await client.copyAndWait({ device: source, sector: 0, count }, [{ device: dest, sector: 0, count }]), { readErr: false, writeErr: 0 });
        } finally {
          watched.restore();
          await client.destroy();
        }
        assert.ok(watched.reads.length >= 3 && watched.writes.length >= 3, `${watched.reads.length} reads, ${watched.writes.length} writes`);
        const bufferedSourceReads = watched.reads.filter((fd) => fd === source.fd).length;
        assert.equal(bufferedSourceReads, throughPageCache ? watched.reads.length : 0, 'source reads on the buffered descriptor');
        assert.ok(watched.writes.every((fd) => fd !== dest.fd), 'every destination write on the O_DIRECT descriptor');
        assert.ok(readFileSync(join(dir, 'dest')).equals(sourceBytes));
      });
    }
  });
});
