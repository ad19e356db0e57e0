/**
 * kcopyd against dd, in one run, on the same filesystem: copy a random source file to one and
 * to two destination files with kcopyd (FileDevice over io_uring), and with `dd bs=1M` (twice for
 * two destinations). Both sides end with the data on stable storage: dd with conv=fsync, kcopyd
 * with a flush (fdatasync) of every destination after the copy; the time includes it.
 *
 *   node dist/tools/bench-kcopyd.js [--size-mib 1024] [--dir DIR] [--json PATH]
 *                                   [--sub-job-sectors 1024] [--repeat 1]
 *
 * Prints MiB/s (source bytes per second; two destinations move twice the bytes in that time) and
 * the kcopyd/dd ratio for each case. Each case is run `--repeat` times, the best time is kept.
 */
import { execFile } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync, writeFileSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openFileDevice } from '../src/io/file-device';
import { IoRing } from '../src/io/ring';
import { KcopydClient, DEFAULT_SUB_JOB_SECTORS } from '../src/kcopyd';
import type { IoRegion } from '../src/dmio';
import { SECTOR_BYTES } from '../src/base/units';

const MiB = 1024 * 1024;

interface Args { sizeMiB: number; dir: string; json: string | null; subJobSectors: number; repeat: number }

function parseArgs(argv: string[]): Args {
  const args: Args = { sizeMiB: 1024, dir: tmpdir(), json: null, subJobSectors: DEFAULT_SUB_JOB_SECTORS, repeat: 1 };
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--size-mib') args.sizeMiB = Number(value);
    else if (flag === '--dir') args.dir = value;
    else if (flag === '--json') args.json = value;
    else if (flag === '--sub-job-sectors') args.subJobSectors = Number(value);
    else if (flag === '--repeat') args.repeat = Number(value);
    else throw new Error(`unknown argument ${flag}`);
    i++;
  }
  if (!(args.sizeMiB > 0) || !Number.isInteger(args.sizeMiB)) throw new Error('--size-mib takes a positive whole number');
  return args;
}

function createRandomFile(path: string, byteLength: number): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(MiB);
  for (let written = 0; written < byteLength; written += chunk.length) {
    randomFillSync(chunk);
    writeSync(fd, chunk, 0, Math.min(chunk.length, byteLength - written));
  }
  closeSync(fd);
}

function createEmptyFile(path: string, byteLength: number): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, byteLength);
  closeSync(fd);
}

function dd(source: string, dest: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('dd', [`if=${source}`, `of=${dest}`, 'bs=1M', 'conv=fsync', 'status=none'], (error) => (error ? reject(error) : resolve()));
  });
}

async function timeDd(source: string, dests: string[]): Promise<number> {
  for (const dest of dests) rmSync(dest, { force: true });
  const start = process.hrtime.bigint();
  for (const dest of dests) await dd(source, dest);
  return Number(process.hrtime.bigint() - start) / 1e9;
}

async function timeKcopyd(source: string, dests: string[], byteLength: number, subJobSectors: number): Promise<number> {
  for (const dest of dests) {
    rmSync(dest, { force: true });
    createEmptyFile(dest, byteLength);
  }
  const ring = IoRing.create();
  const sourceDevice = await openFileDevice(source, { ring, readOnly: true });
  const destDevices = await Promise.all(dests.map((dest) => openFileDevice(dest, { ring })));
  const count = byteLength / SECTOR_BYTES;
  const client = new KcopydClient({ subJobSectors });
  const start = process.hrtime.bigint();
  const result = await client.copyAndWait(
    { device: sourceDevice, sector: 0, count },
    destDevices.map((device): IoRegion => ({ device, sector: 0, count })),
  );
  const flushes = await Promise.all(destDevices.map((device) => device.flush()));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await client.destroy();
  await Promise.all([sourceDevice, ...destDevices].map((device) => device.close()));
  ring.close();
  if (result.readErr || result.writeErr !== 0 || flushes.some((r) => r < 0)) {
    throw new Error(`kcopyd failed: readErr ${result.readErr}, writeErr ${result.writeErr}, flush ${flushes.join(',')}`);
  }
  return seconds;
}

async function best(repeat: number, run: () => Promise<number>): Promise<number> {
  let bestSeconds = Infinity;
  for (let i = 0; i < repeat; i++) bestSeconds = Math.min(bestSeconds, await run());
  return bestSeconds;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const byteLength = args.sizeMiB * MiB;
  const work = mkdtempSync(join(args.dir, 'bench-kcopyd-'));
  try {
    const source = join(work, 'source');
    createRandomFile(source, byteLength);
    const dests = [join(work, 'dest0'), join(work, 'dest1')];
    const cases = [];
    for (const destCount of [1, 2]) {
      const targets = dests.slice(0, destCount);
      const ddSeconds = await best(args.repeat, () => timeDd(source, targets));
      const kcopydSeconds = await best(args.repeat, () => timeKcopyd(source, targets, byteLength, args.subJobSectors));
      cases.push({
        destinations: destCount,
        ddMiBps: args.sizeMiB / ddSeconds,
        kcopydMiBps: args.sizeMiB / kcopydSeconds,
        ratio: ddSeconds / kcopydSeconds,
      });
    }
    const lines = [
      `kcopyd vs dd: ${args.sizeMiB} MiB, sub-job ${args.subJobSectors} sectors, fsync at the end on both sides, best of ${args.repeat}`,
      'dests   dd MiB/s   kcopyd MiB/s   kcopyd/dd',
      ...cases.map((c) => `${String(c.destinations).padStart(5)} ${c.ddMiBps.toFixed(0).padStart(10)} ${c.kcopydMiBps.toFixed(0).padStart(14)} ${c.ratio.toFixed(2).padStart(11)}`),
    ];
    console.log(lines.join('\n'));
    if (args.json) {
      writeFileSync(args.json, JSON.stringify({
        sizeMiB: args.sizeMiB, subJobSectors: args.subJobSectors, repeat: args.repeat, durability: 'fsync at end (dd conv=fsync; kcopyd flush of each destination)', cases,
      }, null, 2));
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  process.exit(0);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
