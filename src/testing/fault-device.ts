import type { BlockDevice, DeviceCapabilities, DeviceKey, ReadOptions } from '../io/block-device';
import { EIO, type IoResult } from '../base/errno';
import { SECTOR_BYTES } from '../base/units';

/**
 * A BlockDevice wrapper that fails chosen sectors: any read (or write) touching a bad sector
 * completes with -EIO without moving data, the way a disk fails a whole bio. A failed read first
 * scribbles over its buffers, so a test can tell that dm-io zero-filled them afterwards. Every
 * data I/O that reaches the device is logged in arrival order.
 */

export type FaultOp = 'read' | 'write';

export interface LoggedIo {
  readonly op: FaultOp;
  readonly sector: number;
  readonly sectorCount: number;
  readonly failed: boolean;
}

const SCRIBBLE = 0xee;

export class FaultDevice implements BlockDevice {
  readonly log: LoggedIo[] = [];
  private readonly badSectors: Record<FaultOp, Set<number>> = { read: new Set(), write: new Set() };

  constructor(private readonly inner: BlockDevice) {}

  get path(): string { return this.inner.path; }
  get tableName(): string { return this.inner.tableName; }
  get key(): DeviceKey { return this.inner.key; }
  get capabilities(): DeviceCapabilities { return this.inner.capabilities; }
  get sizeSectors(): number { return this.inner.sizeSectors; }
  get logicalBlockBytes(): number { return this.inner.logicalBlockBytes; }

  /** Fail every later `op` that touches any of `sectorCount` sectors from `sector`. */
  failSectors(op: FaultOp, sector: number, sectorCount = 1): this {
    for (let s = sector; s < sector + sectorCount; s++) this.badSectors[op].add(s);
    return this;
  }

  /** Fail `op` everywhere. */
  failAll(op: FaultOp): this {
    return this.failSectors(op, 0, this.inner.sizeSectors);
  }

  healAll(): void {
    this.badSectors.read.clear();
    this.badSectors.write.clear();
  }

  read(buf: Uint8Array, sector: number, options?: ReadOptions): Promise<IoResult> {
    return this.readv([buf], sector, options);
  }

  readv(bufs: Uint8Array[], sector: number, options?: ReadOptions): Promise<IoResult> {
    const sectorCount = sectorsIn(bufs);
    if (this.touchesBad('read', sector, sectorCount)) {
      for (const buf of bufs) buf.fill(SCRIBBLE);
      return Promise.resolve(-EIO);
    }
    return bufs.length === 1 ? this.inner.read(bufs[0], sector, options) : this.inner.readv(bufs, sector, options);
  }

  write(buf: Uint8Array, sector: number, fua: boolean): Promise<IoResult> {
    return this.writev([buf], sector, fua);
  }

  writev(bufs: Uint8Array[], sector: number, fua: boolean): Promise<IoResult> {
    if (this.touchesBad('write', sector, sectorsIn(bufs))) return Promise.resolve(-EIO);
    return bufs.length === 1 ? this.inner.write(bufs[0], sector, fua) : this.inner.writev(bufs, sector, fua);
  }

  flush(): Promise<IoResult> { return this.inner.flush(); }
  discard(sector: number, sectorCount: number): Promise<IoResult> { return this.inner.discard(sector, sectorCount); }
  writeZeroes(sector: number, sectorCount: number, noUnmap: boolean): Promise<IoResult> {
    if (this.touchesBad('write', sector, sectorCount)) return Promise.resolve(-EIO);
    return this.inner.writeZeroes(sector, sectorCount, noUnmap);
  }
  close(): Promise<void> { return this.inner.close(); }

  private touchesBad(op: FaultOp, sector: number, sectorCount: number): boolean {
    const bad = this.badSectors[op];
    let failed = false;
    if (bad.size > 0) {
      for (let s = sector; s < sector + sectorCount && !failed; s++) failed = bad.has(s);
    }
    this.log.push({ op, sector, sectorCount, failed });
    return failed;
  }
}

function sectorsIn(bufs: readonly Uint8Array[]): number {
  let byteLength = 0;
  for (const buf of bufs) byteLength += buf.byteLength;
  return byteLength / SECTOR_BYTES;
}
