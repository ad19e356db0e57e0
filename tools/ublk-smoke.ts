/**
 * ublk smoke test, for a guest with ublk_drv (tools/guest-run -- node dist/tools/ublk-smoke.js):
 * serve a RAM buffer through a UblkDevice, read and write it with dd, check the bytes, stop.
 * Commands run with async child_process: a synchronous spawn would stop this thread from
 * serving the very I/O it waits for.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

import { EOPNOTSUPP } from '../src/errno';
import { IoOp } from '../src/target';
import { UblkDevice, type UblkRequest } from '../src/ublk/device';
import { SECTOR_BYTES } from '../src/units';

const run = promisify(execFile);
const SIZE_SECTORS = 8192; // 4 MiB

async function main(): Promise<void> {
  const memory = Buffer.alloc(SIZE_SECTORS * SECTOR_BYTES);
  for (let i = 0; i < memory.length; i += 4) memory.writeUInt32LE(i, i);
  const ops = new Map<IoOp, number>();

  const serve = async (req: UblkRequest): Promise<number> => {
    ops.set(req.op, (ops.get(req.op) ?? 0) + 1);
    const byteOffset = req.sector * SECTOR_BYTES;
    const byteLength = req.sectorCount * SECTOR_BYTES;
    switch (req.op) {
      case IoOp.Read:
        memory.copy(req.buffer, 0, byteOffset, byteOffset + byteLength);
        return byteLength;
      case IoOp.Write:
        memory.set(req.buffer, byteOffset);
        return byteLength;
      case IoOp.Flush:
        return 0;
      case IoOp.Discard:
      case IoOp.WriteZeroes:
        memory.fill(0, byteOffset, byteOffset + byteLength);
        return 0;
      default:
        return -EOPNOTSUPP;
    }
  };

  const started = Date.now();
  const device = await UblkDevice.create({ sizeSectors: SIZE_SECTORS, queues: 1, depth: 32 }, serve);
  console.log(`created ${device.blockPath} (${device.devno.major}:${device.devno.minor}) features=0x${device.features.toString(16)} in ${Date.now() - started} ms`);
  let failures = 0;
  const check = (ok: boolean, what: string) => {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
    if (!ok) failures++;
  };
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'ublk-smoke-'));
  try {
    const readBack = path.join(work, 'read');
    await run('dd', [`if=${device.blockPath}`, `of=${readBack}`, 'bs=64K', 'count=16', 'iflag=direct', 'status=none']);
    check((await fsp.readFile(readBack)).equals(memory.subarray(0, 1 << 20)), 'dd read of the first MiB matches the buffer');

    const pattern = Buffer.alloc(16384, 0x5a);
    const patternFile = path.join(work, 'pattern');
    await fsp.writeFile(patternFile, pattern);
    await run('dd', [`if=${patternFile}`, `of=${device.blockPath}`, 'bs=4096', 'seek=100', 'count=4', 'oflag=direct,dsync', 'conv=fsync', 'status=none']);
    check(memory.subarray(100 * 4096, 104 * 4096).equals(pattern), 'dd write landed in the buffer at 400 KiB');
    check(memory.readUInt32LE(99 * 4096) === 99 * 4096, 'the block before the write is untouched');

    await run('dd', [`if=${device.blockPath}`, `of=${readBack}`, 'bs=4096', 'skip=100', 'count=4', 'iflag=direct', 'status=none']);
    check((await fsp.readFile(readBack)).equals(pattern), 'reading the written range back through the device');

    await run('blkdiscard', ['-o', '0', '-l', '65536', device.blockPath]).then(
      () => check(memory.subarray(0, 65536).every((b) => b === 0), 'blkdiscard zeroed the first 64 KiB'),
      (error: Error) => console.log(`skip blkdiscard: ${error.message.split('\n')[0]}`),
    );
    check((ops.get(IoOp.Flush) ?? 0) > 0, `FLUSH reached the handler (${ops.get(IoOp.Flush) ?? 0} times)`);
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
    const stopping = Date.now();
    await device.stop();
    console.log(`stopped in ${Date.now() - stopping} ms`);
  }
  const exists = await fsp.stat(device.blockPath).then(() => true, () => false);
  check(!exists, `${device.blockPath} is gone after stop`);
  console.log(`ops: ${[...ops].map(([op, n]) => `${IoOp[op]}=${n}`).join(' ')}`);
  console.log(`${failures === 0 ? 'PASS' : 'FAIL'}: ${failures} failed checks`);
  process.exitCode = failures === 0 ? 0 : 1;
}

main().catch((error) => {
  console.error('ublk-smoke:', error);
  process.exitCode = 1;
});
