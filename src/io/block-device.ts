import type { IoResult } from '../base/errno';

/**
 * Anything that can do block I/O: a regular file, a block device, or one of our own in-process
 * devices. Targets, dm-io and kcopyd all talk to this interface and nothing below it.
 *
 * Every method returns a promise of an IoResult: bytes moved (data ops) or 0, or -errno. I/O
 * methods never reject on an I/O error; they reject only on programming errors (closed device,
 * misaligned buffer length).
 */
/**
 * A device's identity, stable for as long as the device exists whatever path named it:
 * `blk:MAJ:MIN` for block devices, `file:DEV:INO` for regular files, `mem:N` for in-process
 * devices. Targets compare devices by key, never by object or path (a snapshot finds its origin
 * this way, however each table spelled the origin).
 */
export type DeviceKey = `blk:${number}:${number}` | `file:${string}:${string}` | `mem:${string}`;

/**
 * What a device can do beyond read, write and flush, declared once when it is opened (as the
 * kernel's queue limits are) rather than discovered by failing requests. The ublk device
 * advertises discard and write-zeroes only when every device under its table can take them.
 */
export interface DeviceCapabilities {
  /** A real discard reaches the device (punch-hole for files, BLKDISCARD for block devices). */
  readonly discard: boolean;
  /** Ranges can be zeroed without writing zero buffers (ZERO_RANGE/punch-hole, BLKZEROOUT). */
  readonly writeZeroes: boolean;
}

/** How a read may be served. A device without a page cache ignores it. */
export interface ReadOptions {
  /**
   * Read through the page cache rather than around it: the source of a long sequential copy
   * (kcopyd), where the kernel's readahead keeps the disk busy between our reads and a source
   * already cached costs no disk read at all. The data path reads around it (O_DIRECT) as the
   * kernel's dm does.
   */
  readonly throughPageCache?: boolean;
}

/** Which way ublk copies a request's data in place: out of the device (a read) or into it (a write). */
export type InPlaceAccess = 'read' | 'write';

export interface BlockDevice {
  /** Absolute path as opened (for files) or the device node. */
  readonly path: string;
  /** Stable identity (see DeviceKey). */
  readonly key: DeviceKey;
  readonly capabilities: DeviceCapabilities;
  /** How dm prints the device in `table` output: "major:minor" for block devices, the path for files. */
  readonly tableName: string;
  /** Size in 512-byte sectors (a file's size rounded down to whole sectors). */
  readonly sizeSectors: number;
  /** The device's logical block size in bytes (512 for regular files). */
  readonly logicalBlockBytes: number;
  /** major/minor for block devices, undefined for regular files and in-process devices. */
  readonly devno?: { major: number; minor: number };

  /** Read buf.byteLength bytes starting at `sector` into buf. */
  read(buf: Uint8Array, sector: number, options?: ReadOptions): Promise<IoResult>;
  /** Write buf at `sector`; with `fua` the data is on stable storage before the promise settles. */
  write(buf: Uint8Array, sector: number, fua: boolean): Promise<IoResult>;
  /** Optional promise-free read(): `done` gets the result; misuse throws synchronously. */
  readCb?(buf: Uint8Array, sector: number, done: (result: IoResult) => void): void;
  /** Optional promise-free write(): `done` gets the result; misuse throws synchronously. */
  writeCb?(buf: Uint8Array, sector: number, fua: boolean, done: (result: IoResult) => void): void;
  /** Scatter read: fills the buffers in order starting at `sector` (one readv). */
  readv(bufs: Uint8Array[], sector: number, options?: ReadOptions): Promise<IoResult>;
  /** Gather write: writes the buffers in order starting at `sector` (one writev). */
  writev(bufs: Uint8Array[], sector: number, fua: boolean): Promise<IoResult>;
  /** Everything written before is on stable storage when this settles with 0. */
  flush(): Promise<IoResult>;
  /** Deallocate a range; reads of it return zeroes afterwards (files: punch hole). */
  discard(sector: number, sectorCount: number): Promise<IoResult>;
  /** Make a range read as zeroes; with `noUnmap` the space stays allocated. */
  writeZeroes(sector: number, sectorCount: number, noUnmap: boolean): Promise<IoResult>;
  /**
   * Optional, for a device whose bytes are memory this process can map (a file on tmpfs): the
   * address, in a shared mapping of the device, of the bytes of [sector, sector + byteLength), or
   * 0 when they cannot be reached so now (not on a queue thread, out of range, a write to a
   * read-only device). ublk then copies the request's data straight between the request and
   * those bytes: one copy, where a read into the request's buffer makes two. Only for memory: a
   * write copied there is already where a flush would put it.
   */
  inPlaceAddress?(sector: number, byteLength: number, access: InPlaceAccess): number;
  /** Whether inPlaceAddress can answer on a queue thread (a device over it then asks ublk for NEED_GET_DATA). */
  readonly servesInPlace?: boolean;
  /** Release the device (closes the fd for file-backed devices). Idempotent. */
  close(): Promise<void>;
}
