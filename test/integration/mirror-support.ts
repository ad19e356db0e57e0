/** What the mirror guest tests share: status parsing, background commands, stamps, the disk log's bytes. */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';

export interface SyncStatus {
  inSync: number;
  regions: number;
  legChars: string;
  line: string;
}

/** `<in_sync>/<regions> 1 <leg chars>` out of a mirror status line (ours or dmsetup's). */
export function parseMirrorStatus(line: string): SyncStatus {
  const m = / (\d+)\/(\d+) 1 ([A-Z]+) /.exec(line);
  if (!m) throw new Error(`not a mirror status line: ${JSON.stringify(line)}`);
  return { inSync: Number(m[1]), regions: Number(m[2]), legChars: m[3]!, line: line.trim() };
}

export function eventNumber(info: string): number {
  const m = /^Event number:\s+(\d+)$/m.exec(info);
  if (!m) throw new Error(`no "Event number:" in ${JSON.stringify(info)}`);
  return Number(m[1]);
}

/** A process in the background whose end can be awaited or polled. */
export interface Background {
  readonly pid: number;
  readonly exited: Promise<{ code: number; stderr: string; stdout: string }>;
  finished(): boolean;
  kill(): void;
}

export function background(command: string): Background {
  const child = spawn('bash', ['-c', command], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let stdout = '';
  let stderr = '';
  let done = false;
  child.stdout!.on('data', (d) => { stdout += d; });
  child.stderr!.on('data', (d) => { stderr += d; });
  const exited = new Promise<{ code: number; stderr: string; stdout: string }>((resolve) => {
    child.on('exit', (code, signal) => {
      done = true;
      resolve({ code: code ?? (signal ? 128 : -1), stderr, stdout });
    });
  });
  return {
    pid: child.pid!,
    exited,
    finished: () => done,
    kill: () => { if (!done) try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } },
  };
}

/** `<letter><block number, 7 digits>` padded with zeroes to 4 KiB: what `stampCommand` writes. */
export function stamp(letter: string, block: number): Buffer {
  const b = Buffer.alloc(4096);
  b.write(`${letter}${String(block).padStart(7, '0')}`, 'latin1');
  return b;
}

export function stampCommand(dev: string, letter: string, block: number): string {
  return `printf '${letter}%07d' ${block} | dd of=${dev} bs=4096 seek=${block} count=1 conv=sync,notrunc oflag=direct status=none`;
}

export async function blockOf(file: string, block: number): Promise<Buffer> {
  return (await readFile(file)).subarray(block * 4096, (block + 1) * 4096);
}

/** The disk log's first 16 bytes, hex: magic "rRiM", le32 version 2, le64 nr_regions (spec §9.1). */
export function headerHex(regions: number): string {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(0x4d695272, 0);
  b.writeUInt32LE(2, 4);
  b.writeBigUInt64LE(BigInt(regions), 8);
  return b.toString('hex');
}

/** Clean bits of a disk log: bit r of byte 1024 + r/8 (spec §9.2). */
export function cleanBits(log: Buffer, regions: number): boolean[] {
  return Array.from({ length: regions }, (_, r) => ((log[1024 + (r >> 3)]! >> (r & 7)) & 1) === 1);
}

