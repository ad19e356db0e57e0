import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { IoResult } from '../../../../src/base/errno';
import { SECTOR_BYTES } from '../../../../src/base/units';
import type { BlockDevice, DeviceCapabilities, DeviceKey } from '../../../../src/io/block-device';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { PersistentStore, persistentStoreType } from '../../../../src/targets/snapshot/persistent-store';

/** Shared by the store tests: a store over a device, commits as promises, an I/O log. */

export function persistentStore(cow: BlockDevice, chunkSectors = 8, options = ''): PersistentStore {
  return persistentStoreType.create({ cow, originLogicalBlockBytes: SECTOR_BYTES, chunkSectors, options }) as PersistentStore;
}

/** Loads a store; resolves to its validity and the exceptions it reported, in order. */
export async function load(store: PersistentStore): Promise<{ valid: boolean; exceptions: Array<[number, number]> }> {
  const exceptions: Array<[number, number]> = [];
  const valid = await store.readMetadata((oldChunk, newChunk) => exceptions.push([oldChunk, newChunk]));
  return { valid, exceptions };
}

/** commitException as a promise of the validity its callback reports. */
export function commit(store: PersistentStore, oldChunk: number, newChunk: number, copyValid = true): Promise<boolean> {
  return new Promise((resolve) => store.commitException(oldChunk, newChunk, copyValid, resolve));
}

/** One exception at a time, as a synchronous writer makes them: prepare, commit, wait. */
export async function addExceptions(store: PersistentStore, oldChunks: readonly number[]): Promise<number[]> {
  const newChunks: number[] = [];
  for (const oldChunk of oldChunks) {
    const newChunk = store.prepareException();
    if (newChunk === undefined) throw new Error(`store full at old chunk ${oldChunk}`);
    if (!(await commit(store, oldChunk, newChunk))) throw new Error(`commit of ${oldChunk} invalidated the store`);
    newChunks.push(newChunk);
  }
  return newChunks;
}

/** As dmsetup prints a valid store's usage. */
export function usageText(store: { usage(): { allocatedSectors: number; totalSectors: number; metadataSectors: number } }): string {
  const u = store.usage();
  return `${u.allocatedSectors}/${u.totalSectors} ${u.metadataSectors}`;
}

export function chunkBytesOf(device: MemoryDevice, chunk: number, chunkSectors: number): Buffer {
  const chunkBytes = chunkSectors * SECTOR_BYTES;
  return device.contents.subarray(chunk * chunkBytes, (chunk + 1) * chunkBytes);
}

/** Lets queued area writes (MemoryDevice completes on later ticks) run to the end. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export interface LoggedOp {
  readonly op: 'read' | 'write' | 'flush';
  readonly sector: number;
  readonly fua: boolean;
  /** For writes: whether every byte written was zero. */
  readonly zeroes: boolean;
}

/** A device that logs reads, writes and flushes in arrival order (the ordering rule's witness). */
export class LoggingDevice implements BlockDevice {
  readonly log: LoggedOp[] = [];

  constructor(readonly inner: MemoryDevice) {}

  get path(): string { return this.inner.path; }
  get tableName(): string { return this.inner.tableName; }
  get key(): DeviceKey { return this.inner.key; }
  get capabilities(): DeviceCapabilities { return this.inner.capabilities; }
  get sizeSectors(): number { return this.inner.sizeSectors; }
  get logicalBlockBytes(): number { return this.inner.logicalBlockBytes; }

  /** The log as "write@8+fua"-style words, easy to compare whole. */
  get steps(): string[] {
    return this.log.map((e) => (e.op === 'flush' ? 'flush' : `${e.op}@${e.sector}${e.fua ? '+fua' : ''}${e.op === 'write' && e.zeroes ? '(zeroes)' : ''}`));
  }

  read(buf: Uint8Array, sector: number): Promise<IoResult> {
    this.log.push({ op: 'read', sector, fua: false, zeroes: false });
    return this.inner.read(buf, sector);
  }
  write(buf: Uint8Array, sector: number, fua: boolean): Promise<IoResult> {
    this.log.push({ op: 'write', sector, fua, zeroes: buf.every((b) => b === 0) });
    return this.inner.write(buf, sector, fua);
  }
  readv(bufs: Uint8Array[], sector: number): Promise<IoResult> {
    return this.inner.readv(bufs, sector);
  }
  writev(bufs: Uint8Array[], sector: number, fua: boolean): Promise<IoResult> {
    return this.inner.writev(bufs, sector, fua);
  }
  flush(): Promise<IoResult> {
    this.log.push({ op: 'flush', sector: 0, fua: false, zeroes: false });
    return this.inner.flush();
  }
  discard(sector: number, sectorCount: number): Promise<IoResult> {
    return this.inner.discard(sector, sectorCount);
  }
  writeZeroes(sector: number, sectorCount: number, noUnmap: boolean): Promise<IoResult> {
    return this.inner.writeZeroes(sector, sectorCount, noUnmap);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

// ---- Golden images (test/golden, written by the real kernel: see its README). ---------------

export interface GoldenCase {
  readonly name: string;
  readonly description: string;
  readonly cowBytes: number;
  /** dmsetup status, e.g. "0 8192 snapshot 56/512 16". */
  readonly status: string;
  /** dmsetup table, e.g. "0 8192 snapshot 7:0 7:1 P 8". */
  readonly table: string;
  readonly valid: boolean;
  readonly exceptions: Array<[number, number]>;
  readonly reloadedAsP16?: { status: string; table: string };
  readonly beforeMerge?: { status: string; oldChunks: number[] };
}

export const GOLDEN_DIR = path.resolve(__dirname, '../../../../../test/golden');

export function goldenCase(name: string): GoldenCase {
  const json = JSON.parse(readFileSync(path.join(GOLDEN_DIR, `${name}.json`), 'utf8')) as Omit<GoldenCase, 'name'>;
  return { name, ...json };
}

/** A MemoryDevice holding the kernel-written COW image. */
export function goldenDevice(golden: GoldenCase): MemoryDevice {
  const image = gunzipSync(readFileSync(path.join(GOLDEN_DIR, `${golden.name}.img.gz`)));
  if (image.byteLength !== golden.cowBytes) throw new Error(`${golden.name}: image is ${image.byteLength} bytes, JSON says ${golden.cowBytes}`);
  const device = new MemoryDevice(image.byteLength / SECTOR_BYTES);
  image.copy(device.contents);
  return device;
}

/** The table's store letter(s) and chunk size: the last two words of its table line. */
export function goldenTableStore(golden: GoldenCase): { store: string; chunkSectors: number } {
  const words = golden.table.split(' ');
  return { store: words[words.length - 2], chunkSectors: Number(words[words.length - 1]) };
}

/** The status line's INFO part: "56/512 16", "Invalid", ... */
export function goldenStatusInfo(status: string): string {
  return status.replace(/^\d+ \d+ snapshot(-merge)? /, '');
}
