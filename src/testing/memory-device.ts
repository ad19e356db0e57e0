import type { BlockDevice, DeviceCapabilities, DeviceKey } from '../io/block-device';
import { EIO, ENOENT, ErrnoError, type IoResult } from '../base/errno';
import { SECTOR_BYTES, sectorsToBytes } from '../base/units';

/**
 * An in-process block device backed by a Buffer. It exists for tests (targets, dispatcher,
 * dm-io, kcopyd): it counts calls per operation, records whether a flush followed the last
 * write, can hold operations at a gate so a test controls when they complete, and can fail
 * chosen operations with an errno.
 */

export type MemoryDeviceOp = 'read' | 'write' | 'readv' | 'writev' | 'flush' | 'discard' | 'writeZeroes';

const ALL_OPS: readonly MemoryDeviceOp[] = ['read', 'write', 'readv', 'writev', 'flush', 'discard', 'writeZeroes'];

export interface MemoryDeviceOptions {
  /** Name printed in tables; default "mem<N>". */
  readonly tableName?: string;
  readonly logicalBlockBytes?: number;
  readonly devno?: { major: number; minor: number };
  /** Default: discard and write-zeroes both. */
  readonly capabilities?: DeviceCapabilities;
}

/**
 * Operations parked until `release()`. A test holds a device, starts I/O, waits until the I/O
 * has reached the device (`whenWaiting`), checks what it wants, then releases.
 */
export class IoGate {
  private parked: Array<() => void> = [];
  private arrivalWatchers: Array<{ count: number; notify: () => void }> = [];
  private released = false;

  constructor(readonly ops: ReadonlySet<MemoryDeviceOp>) {}

  /** Operations currently parked. */
  get waitingCount(): number {
    return this.parked.length;
  }

  /** Resolves once at least `count` operations are parked here. */
  whenWaiting(count: number): Promise<void> {
    if (this.parked.length >= count) return Promise.resolve();
    return new Promise((notify) => this.arrivalWatchers.push({ count, notify }));
  }

  /** Lets every parked operation (and every later one) through. */
  release(): void {
    this.released = true;
    const parked = this.parked;
    this.parked = [];
    for (const proceed of parked) proceed();
  }

  /** @internal Called by the device before touching data. */
  pass(): Promise<void> | undefined {
    if (this.released) return undefined;
    return new Promise((proceed) => {
      this.parked.push(proceed);
      const satisfied = this.arrivalWatchers.filter((w) => this.parked.length >= w.count);
      this.arrivalWatchers = this.arrivalWatchers.filter((w) => this.parked.length < w.count);
      for (const watcher of satisfied) watcher.notify();
    });
  }
}

let nextDeviceNumber = 0;

export class MemoryDevice implements BlockDevice {
  readonly path: string;
  readonly tableName: string;
  readonly sizeSectors: number;
  readonly logicalBlockBytes: number;
  readonly devno?: { major: number; minor: number };
  readonly key: DeviceKey;
  readonly capabilities: DeviceCapabilities;
  /** The device's contents; tests may read and write it directly. */
  readonly contents: Buffer;
  /** Calls per operation, counted on entry (before any gate or injected failure). */
  readonly calls: Record<MemoryDeviceOp, number> = {
    read: 0, write: 0, readv: 0, writev: 0, flush: 0, discard: 0, writeZeroes: 0,
  };
  /** Writes without FUA that have completed (write, writev, discard and writeZeroes count). */
  writeGeneration = 0;
  /** `writeGeneration` as of the last completed flush: equal means everything written is durable. */
  flushedGeneration = 0;
  /** Writes that arrived with FUA set. */
  fuaWriteCount = 0;
  closed = false;
  /** Handles from open() not yet closed. */
  openHandleCount = 0;

  private gate: IoGate | undefined;
  private readonly injectedErrors = new Map<MemoryDeviceOp, number>();

  constructor(sizeSectors: number, options: MemoryDeviceOptions = {}) {
    const number = nextDeviceNumber++;
    this.sizeSectors = sizeSectors;
    this.contents = Buffer.alloc(sectorsToBytes(sizeSectors));
    this.tableName = options.tableName ?? `mem${number}`;
    // Two handles on one device share a key, as two opens of one file do.
    this.key = options.devno ? `blk:${options.devno.major}:${options.devno.minor}` : `mem:${number}`;
    this.path = `memory:${this.tableName}`;
    this.logicalBlockBytes = options.logicalBlockBytes ?? SECTOR_BYTES;
    this.capabilities = options.capabilities ?? { discard: true, writeZeroes: true };
    if (options.devno) this.devno = options.devno;
  }

  /** True when no write completed since the last flush. */
  get isFlushed(): boolean {
    return this.flushedGeneration === this.writeGeneration;
  }

  /**
   * A separate handle on the same contents, closed on its own, like a second file descriptor:
   * what a table gets from its device opener, so destroying one table does not close the
   * device under another.
   */
  open(): BlockDevice {
    if (this.closed) throw new Error(`${this.path}: open of a closed device`);
    this.openHandleCount++;
    return new MemoryDeviceHandle(this);
  }

  /** Park the given operations (default: all) until the returned gate is released. */
  hold(ops: readonly MemoryDeviceOp[] = ALL_OPS): IoGate {
    this.gate = new IoGate(new Set(ops));
    return this.gate;
  }

  /** Make every later `op` complete with -errno (positive errno given), or stop failing (null). */
  failOp(op: MemoryDeviceOp, errno: number | null): void {
    if (errno === null) this.injectedErrors.delete(op);
    else this.injectedErrors.set(op, Math.abs(errno));
  }

  async read(buf: Uint8Array, sector: number): Promise<IoResult> {
    const early = await this.begin('read', sector, byteLengthInSectors(buf.byteLength));
    if (early !== undefined) return early;
    this.contents.copy(buf, 0, sectorsToBytes(sector), sectorsToBytes(sector) + buf.byteLength);
    return buf.byteLength;
  }

  async write(buf: Uint8Array, sector: number, fua: boolean): Promise<IoResult> {
    const early = await this.begin('write', sector, byteLengthInSectors(buf.byteLength));
    if (early !== undefined) return early;
    this.contents.set(buf, sectorsToBytes(sector));
    this.noteWrite(fua);
    return buf.byteLength;
  }

  async readv(bufs: Uint8Array[], sector: number): Promise<IoResult> {
    const byteLength = totalByteLength(bufs);
    const early = await this.begin('readv', sector, byteLengthInSectors(byteLength));
    if (early !== undefined) return early;
    let byteOffset = sectorsToBytes(sector);
    for (const buf of bufs) {
      this.contents.copy(buf, 0, byteOffset, byteOffset + buf.byteLength);
      byteOffset += buf.byteLength;
    }
    return byteLength;
  }

  async writev(bufs: Uint8Array[], sector: number, fua: boolean): Promise<IoResult> {
    const byteLength = totalByteLength(bufs);
    const early = await this.begin('writev', sector, byteLengthInSectors(byteLength));
    if (early !== undefined) return early;
    let byteOffset = sectorsToBytes(sector);
    for (const buf of bufs) {
      this.contents.set(buf, byteOffset);
      byteOffset += buf.byteLength;
    }
    this.noteWrite(fua);
    return byteLength;
  }

  async flush(): Promise<IoResult> {
    const early = await this.begin('flush', 0, 0);
    if (early !== undefined) return early;
    this.flushedGeneration = this.writeGeneration;
    return 0;
  }

  async discard(sector: number, sectorCount: number): Promise<IoResult> {
    return this.zeroRange('discard', sector, sectorCount);
  }

  async writeZeroes(sector: number, sectorCount: number, _noUnmap: boolean): Promise<IoResult> {
    return this.zeroRange('writeZeroes', sector, sectorCount);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private async zeroRange(op: MemoryDeviceOp, sector: number, sectorCount: number): Promise<IoResult> {
    const early = await this.begin(op, sector, sectorCount);
    if (early !== undefined) return early;
    this.contents.fill(0, sectorsToBytes(sector), sectorsToBytes(sector + sectorCount));
    this.noteWrite(false);
    return 0;
  }

  /**
   * Common entry: count, check, wait at the gate, apply injected failures. Returns a result
   * when the operation must not touch data, undefined when it may proceed.
   */
  private async begin(op: MemoryDeviceOp, sector: number, sectorCount: number): Promise<IoResult | undefined> {
    this.calls[op]++;
    if (this.closed) throw new Error(`${this.path}: ${op} on a closed device`);
    const gate = this.gate;
    if (gate !== undefined && gate.ops.has(op)) await gate.pass();
    const injected = this.injectedErrors.get(op);
    if (injected !== undefined) return -injected;
    if (sector < 0 || sector + sectorCount > this.sizeSectors) return -EIO;
    return undefined;
  }

  private noteWrite(fua: boolean): void {
    if (fua) this.fuaWriteCount++;
    else this.writeGeneration++;
  }
}

function byteLengthInSectors(byteLength: number): number {
  if (byteLength % SECTOR_BYTES !== 0) {
    throw new RangeError(`I/O of ${byteLength} bytes is not a whole number of sectors`);
  }
  return byteLength / SECTOR_BYTES;
}

function totalByteLength(bufs: readonly Uint8Array[]): number {
  let byteLength = 0;
  for (const buf of bufs) byteLength += buf.byteLength;
  return byteLength;
}

/** One open of a MemoryDevice; see MemoryDevice.open. */
class MemoryDeviceHandle implements BlockDevice {
  private closed = false;

  constructor(private readonly device: MemoryDevice) {}

  get path(): string {
    return this.device.path;
  }
  get tableName(): string {
    return this.device.tableName;
  }
  get sizeSectors(): number {
    return this.device.sizeSectors;
  }
  get logicalBlockBytes(): number {
    return this.device.logicalBlockBytes;
  }
  get devno(): { major: number; minor: number } | undefined {
    return this.device.devno;
  }
  get key(): DeviceKey {
    return this.device.key;
  }
  get capabilities(): DeviceCapabilities {
    return this.device.capabilities;
  }

  async read(buf: Uint8Array, sector: number): Promise<IoResult> {
    return this.open().read(buf, sector);
  }
  async write(buf: Uint8Array, sector: number, fua: boolean): Promise<IoResult> {
    return this.open().write(buf, sector, fua);
  }
  async readv(bufs: Uint8Array[], sector: number): Promise<IoResult> {
    return this.open().readv(bufs, sector);
  }
  async writev(bufs: Uint8Array[], sector: number, fua: boolean): Promise<IoResult> {
    return this.open().writev(bufs, sector, fua);
  }
  async flush(): Promise<IoResult> {
    return this.open().flush();
  }
  async discard(sector: number, sectorCount: number): Promise<IoResult> {
    return this.open().discard(sector, sectorCount);
  }
  async writeZeroes(sector: number, sectorCount: number, noUnmap: boolean): Promise<IoResult> {
    return this.open().writeZeroes(sector, sectorCount, noUnmap);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.device.openHandleCount--;
  }

  private open(): MemoryDevice {
    // Callers are async, so this surfaces as a rejection, as BlockDevice promises.
    if (this.closed) throw new Error(`${this.device.path}: I/O on a closed handle`);
    return this.device;
  }
}

/**
 * A device opener over named MemoryDevices, for building tables in tests: each open is a new
 * handle; an unknown name fails with ENOENT as a missing path would.
 */
export function memoryDeviceOpener(devices: Readonly<Record<string, MemoryDevice>>): (spec: string) => Promise<BlockDevice> {
  return async (spec) => {
    const device = Object.hasOwn(devices, spec) ? devices[spec] : undefined;
    if (device === undefined) throw new ErrnoError(`open ${spec}`, ENOENT);
    return device.open();
  };
}
