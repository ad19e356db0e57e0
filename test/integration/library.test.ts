/**
 * The library API on real devices, served by the test process itself (no daemon). The first
 * test is the README's example, word for word: if it breaks, the README is wrong.
 */
import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { createDevice, expectArgCount, EIO, IoOp, type TargetType } from '../../src';
import { mustSh, requireRealUblk } from './harness';

// README example: begin
/** A read-only target whose every sector holds its own number: handy for checking offsets. */
const stampType: TargetType = {
  name: 'stamp',
  async create(ctx, args) {
    expectArgCount(args, 0);
    return {
      type: 'stamp',
      threadModel: 'any-queue',
      capabilities: { discard: false, writeZeroes: false, fua: true },
      map(bio, done) {
        if (bio.op === IoOp.Flush) return done(0);
        if (bio.op !== IoOp.Read) return done(-EIO);
        for (let i = 0; i < bio.sectorCount; i++) {
          bio.data.fill(0, i * 512, (i + 1) * 512);
          new DataView(bio.data.buffer, bio.data.byteOffset + i * 512).setBigUint64(0, BigInt(ctx.startSector + bio.sector + i), true);
        }
        done(bio.data.byteLength);
      },
      message: async (argv) => {
        if (argv[0] === 'poke') ctx.device.raiseEvent();
        return '';
      },
      status: () => '',
      devices: () => [],
      destroy: async () => {},
    };
  },
};

it('a TypeScript target in a table, read back through /dev/ublkbN', async () => {
  const dev = await createDevice({ name: 'stamped', table: '0 2048 zero\n2048 2048 stamp', targetTypes: [stampType] });
  try {
    const file = await fsp.open(dev.path, 'r');
    const { buffer } = await file.read(Buffer.alloc(512), 0, 512, 3000 * 512);
    await file.close();
    assert.equal(buffer.readBigUInt64LE(0), 3000n);
    assert.equal(dev.status(), '0 2048 zero \n2048 2048 stamp \n');
  } finally {
    await dev.remove();
  }
});
// README example: end

describe('library: createDevice', () => {
  before(requireRealUblk);

  it('reload + resume swaps the table under the device; table() shows the new one', async () => {
    const dir = await fsp.mkdtemp(join(tmpdir(), 'ublkdm-lib-'));
    const backing = join(dir, 'disk.img');
    await fsp.writeFile(backing, Buffer.alloc(1 << 20, 0xab));
    const dev = await createDevice({ name: 'swap', table: `0 2048 linear ${backing} 0` });
    try {
      assert.equal(await firstByteOfSector(dev.path, 7), 0xab);
      await dev.reload('0 2048 zero');
      await dev.resume();
      assert.equal(dev.table(), '0 2048 zero \n');
      assert.equal(await firstByteOfSector(dev.path, 7), 0);
    } finally {
      await dev.remove();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('a target raises an event through its context; wait() returns the new event number', async () => {
    const dev = await createDevice({ name: 'events', table: '0 2048 stamp', targetTypes: [stampType] });
    try {
      assert.equal((await dev.info()).eventNumber, 0);
      const waiting = dev.wait(0);
      await dev.message(0, 'poke');
      assert.equal(await waiting, 1);
      assert.equal((await dev.info()).eventNumber, 1);
    } finally {
      await dev.remove();
    }
  });

  it('a bad table is refused with the line named, and no device is left behind', async () => {
    const before = await fsp.readdir('/dev');
    await assert.rejects(createDevice({ name: 'bad', table: '0 2048 stamp extra', targetTypes: [stampType] }), /line 1: stamp: Invalid argument count/);
    const after = await fsp.readdir('/dev');
    assert.deepEqual(after.filter((n) => n.startsWith('ublkb')), before.filter((n) => n.startsWith('ublkb')));
  });
});

/**
 * The first byte of a sector, read with O_DIRECT by another process: never through this
 * thread (it serves the device) and never from the page cache (a table swap does not clear it,
 * in dm either).
 */
async function firstByteOfSector(path: string, sector: number): Promise<number> {
  const out = await mustSh(`dd if=${path} bs=512 skip=${sector} count=1 iflag=direct status=none | od -An -tu1 -N1`);
  return Number(out.trim());
}
