import { constants as fsConstants, promises as fsp } from 'node:fs';
import * as path from 'node:path';

import type { BlockDevice, DeviceCapabilities, DeviceKey, InPlaceAccess, ReadOptions } from './block-device';
import { EINVAL, EIO, ENOENT, ENXIO, EOPNOTSUPP, ErrnoError, type IoResult } from '../base/errno';
import { NO_DATA } from './bio';
import { isDirectIoAligned, native } from './native';
import { PageBitmap } from './page-bitmap';
import { countPunch, punchCount } from './punch-count';
import { RWF_DSYNC, type IoCallback, type IoRing } from './ring';
import { SECTOR_BYTES, SECTOR_SHIFT, isMultipleOfPowerOfTwo } from '../base/units';

/**
 * FileDevice: a regular file or a block device used as a BlockDevice, with all I/O going
 * through the io_uring it was opened with (the opening thread's: design.md, one ring per
 * thread, passed in).
 *
 * Data moves through an O_DIRECT descriptor when the buffer, offset and length allow it, as
 * ublksrv's loop target and `losetup --direct-io` do: it skips a copy through the page cache,
 * and on filesystems that cannot take non-blocking buffered I/O (tmpfs in 6.12 refuses
 * RWF_NOWAIT, so io_uring hands every buffered request to a worker thread) it is much cheaper
 * per request. Unaligned I/O, and filesystems that refuse O_DIRECT, use the buffered
 * descriptor; Linux keeps the two coherent (direct I/O writes back and invalidates the page
 * cache range it touches).
 *
 * A file on tmpfs is read and written by the thread that owns the ring instead: the data is
 * already in memory, so the I/O is a copy, while io_uring would hand each request to one of its
 * workers (tmpfs in 6.12 has no FMODE_NOWAIT), a wakeup there and back for every request, and a
 * snapshot's copy-out is four such requests in a row. Where the file is known to hold data the
 * copy goes through a shared mapping of it (copyThroughMapping), elsewhere by pread/pwrite
 * (preadv/pwritev). Its flush is a no-op, as tmpfs's fsync is. The results still arrive as ring
 * completions do (IoRing.completeInline), never from inside the call. Only a queue thread (a
 * caller-driven ring) also serves requests in place (inPlaceAddress).
 */

/** statfs f_type of tmpfs (and of /dev/shm). */
export const TMPFS_MAGIC = 0x01021994;

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
/** Offsets, lengths and buffers aligned to this go through the O_DIRECT descriptor. */
const DIRECT_IO_ALIGNMENT_BYTES = 4096;

export interface OpenFileDeviceOptions {
  /** The ring every request of the device goes through: the calling thread's. */
  ring: IoRing;
  readOnly?: boolean;
  /**
   * Open an O_DIRECT descriptor too (default true). False keeps all I/O in the page cache, for
   * callers that measure the two against each other (the kcopyd bench).
   */
  directIo?: boolean;
}

interface Devno {
  major: number;
  minor: number;
}

/** What openFileDevice learns about a device before it exists. */
interface DeviceDescription {
  path: string;
  sizeSectors: number;
  logicalBlockBytes: number;
  /** Set for block devices only. */
  devno: Devno | undefined;
  key: DeviceKey;
  capabilities: DeviceCapabilities;
  /** A regular file whose data lives in memory (tmpfs): copying is all its I/O costs. */
  memoryBacked: boolean;
}

/** The data requests a FileDevice sends through the ring. */
const enum DataOp {
  Read,
  Write,
  Readv,
  Writev,
}

const NO_BUFFERS: Uint8Array[] = [];

function ignoreResult(): void {}

/**
 * A data request on the O_DIRECT descriptor, kept until it completes: what it takes to send it
 * again through the buffered descriptor if the filesystem refuses it (EINVAL). A device keeps the
 * idle ones, each with its completion bound once, so the request path makes no closure per
 * request: a closure made per request also goes through V8's CompileLazy on its first call, and
 * under TCG the two showed in a profile of linear over a loop device.
 */
class DirectRequest {
  op = DataOp.Read;
  /** Read and Write's buffer. */
  buf: Uint8Array = NO_DATA;
  /** Readv and Writev's buffers. */
  bufs: Uint8Array[] = NO_BUFFERS;
  byteOffset = 0;
  rwFlags = 0;
  done: IoCallback = ignoreResult;

  constructor(private readonly device: FileDevice) {}

  readonly completed = (result: IoResult): void => this.device.directCompleted(this, result);
}

export class FileDevice implements BlockDevice {
  readonly path: string;
  readonly sizeSectors: number;
  readonly logicalBlockBytes: number;
  readonly devno: Devno | undefined;
  readonly key: DeviceKey;
  readonly capabilities: DeviceCapabilities;
  private closed = false;
  /** Requests issued on the O_DIRECT descriptor (current or retired) and not yet completed. */
  private directInFlight = 0;
  /**
   * The O_DIRECT descriptor after direct I/O was given up, until the requests still in flight on
   * it complete. It must stay open until then: a request can sit prepared in the ring but not yet
   * submitted, and if its fd number were closed and reused by another open, it would read or
   * write that other file.
   */
  private retiredDirectHandle: fsp.FileHandle | undefined;
  /** The close of the retired descriptor, for close() to wait on. */
  private retiredDirectClosing: Promise<void> | undefined;
  /** Reads and writes are done synchronously by this thread (see the class comment). */
  readonly inlineIo: boolean;
  readonly servesInPlace: boolean;
  /** In place on this device's ring: only a queue thread's, which checks the file's size once a wait (inPlaceAddress). */
  private readonly inPlaceAllowed: boolean;
  /** The whole file mapped shared, made on the first in-place request or mapped copy. */
  private fileMapping: ArrayBuffer | undefined;
  /** fileMapping's address, for ublk; 0 until it is made. */
  private fileMappingBase = 0;
  /** The mapping could not be made, or met a page it could not touch: pread and pwrite only, from then on. */
  private mappingRefused = false;
  /**
   * Where the file has data, and where holes, as far as this device has learned (learnExtents):
   * reads and writes are in place only where it has data. Hints: this device's writes turn
   * holes into data and its punches forget data; a punch by another thread of this process (a
   * queue thread's copy of the device, say) makes it forget all it learned (punch-count.ts), once
   * per wait; another process's is not noticed. So a request can still be served by pread or
   * pwrite where the file has data since, or (rarely: between the check and ublk's copy, or
   * another process's punch) meet a punched page.
   */
  private readonly dataPages = new PageBitmap();
  private readonly holePages = new PageBitmap();
  /** Every extent before this byte was learned once (learnExtents). */
  private learnedThroughByte = 0;
  /** The process's punch count (punch-count.ts) that dataPages and holePages were learned at. */
  private learnedAtPunchCount = punchCount();
  /** The ring wait (IoRing.waitCount) whose requests the file's size was last found whole for; -1: none yet. */
  private sizeCheckedInWait = -1;
  /** Date.now() when the file's size was last looked at on an event-loop ring (sizeLookDue). */
  private sizeLookedAtMs = -1;
  /** DirectRequests not in flight, for the next direct request to reuse. */
  private readonly idleDirectRequests: DirectRequest[] = [];

  /** Use openFileDevice(). */
  constructor(
    private readonly ring: IoRing,
    private readonly handle: fsp.FileHandle,
    /** The same file opened with O_DIRECT; undefined when the filesystem refuses it. */
    private directHandle: fsp.FileHandle | undefined,
    readonly readOnly: boolean,
    description: DeviceDescription,
  ) {
    this.path = description.path;
    this.sizeSectors = description.sizeSectors;
    this.logicalBlockBytes = description.logicalBlockBytes;
    this.devno = description.devno;
    this.key = description.key;
    this.capabilities = description.capabilities;
    this.inlineIo = description.memoryBacked;
    this.servesInPlace = description.memoryBacked;
    this.inPlaceAllowed = description.memoryBacked && ring.isCallerDriven;
  }

  /**
   * BlockDevice.inPlaceAddress: a memory-backed file served by a queue thread answers from a
   * shared mapping of the whole file, made on first use.
   *
   * ublk copies through the mapping as a process touching it would, so an address must never
   * name a page whose copy would fault where a read or write of the file would not:
   * - Not past the file's end. Someone may shrink the file under the device, and ublk does not
   *   fail a copy that faults there: it requeues the read (delivers the write again), and in the
   *   6.12 guest a queue that met such a read stopped serving. So the size is looked at (an
   *   fstat) once for the requests of each of the ring's waits, before the first is answered:
   *   a request ublk requeues comes back in a later wait, which looks again. Once the file is
   *   smaller than the device nothing is served in place any more: a read past the end then
   *   fails, a write there extends the file, as with pread and pwrite. (An fstat per request
   *   was 3.9 % of a queue thread's CPU at randwrite QD 32, where a wait brings several; 1.0 %
   *   once per wait.)
   * - Not a hole. A read's copy would fault a page into the file, taking memory that loop's and
   *   pread's reads of a sparse file never take; with the tmpfs full that fault fails, and ublk
   *   failed the read with EIO where the file reads as zeroes. A write's copy into a hole of a
   *   full tmpfs fails the same way, and ublk requeues the write, which blk-mq may hand to
   *   another tag. So both are in place only where the file is known to have data (learned from
   *   lseek, learnExtents); a write into a hole goes to pwrite, which fills it or fails with
   *   ENOSPC, and what it filled is data from then on.
   * Someone truncating or punching the file between the check and ublk's copy can still meet
   * the fault; a later wait looks again.
   */
  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    if (!this.inPlaceAllowed) return 0;
    const startByte = sector * SECTOR_BYTES;
    return this.mappingOver(startByte, byteLength, access === 'write') === undefined ? 0 : this.fileMappingBase + startByte;
  }

  /**
   * Whether the file is still as long as the device, looked at (one fstat) once per wait of the
   * ring (inPlaceAddress says why); once it is not, the mapping is given up for good. A mapped
   * copy needs it too: a file cut short of a page boundary keeps the rest of that page mapped,
   * and a write copied there would land past the file's end, where pwrite extends the file.
   * Also forgets what was learned of the file once another thread punched a hole.
   */
  private mappingStillWhole(): boolean {
    const wait = this.ring.waitCount;
    if (wait === this.sizeCheckedInWait) return true;
    if (this.sizeLookDue() && native().fileSize(this.handle.fd) < this.sizeSectors * SECTOR_BYTES) {
      this.mappingRefused = true; // shrunk under the device: reads and writes from now on, as any file
      return false;
    }
    this.sizeCheckedInWait = wait;
    const punched = punchCount();
    if (punched !== this.learnedAtPunchCount) this.forgetExtents(punched);
    return true;
  }

  /**
   * On a queue thread's ring, at every wait. On a ring the event loop drives (the daemon
   * thread's: its targets' copies, never ublk's in place) a "wait" is a flush, and a request to a
   * mirror or a snapshot takes several, each looking at every file it touches: four fstats for a
   * 4 KiB mirror write (strace), some 150 us of its 1.1 ms under TCG at stop 39's 35-42 us an
   * fstat. There the size is looked at once in each millisecond of the wall clock (any change
   * of Date.now(), so a jump of the clock only looks early): a truncate can meet a copy within
   * that millisecond, as it can meet one between the look and the copy on a queue thread.
   */
  private sizeLookDue(): boolean {
    if (this.ring.isCallerDriven) return true;
    const now = Date.now();
    if (now === this.sizeLookedAtMs) return false;
    this.sizeLookedAtMs = now;
    return true;
  }

  /**
   * Ask the file (lseek) what [startByte, endByte) is, remembering whole extents, and say
   * whether it is all data. Asking per request would scan to the extent's end every time (the
   * whole file, for one written through); remembered, each extent costs one scan. Beyond what
   * was learned, learning goes on from where it stopped, so the file is learned front to back
   * once however the requests jump about (a file written through: at the first request);
   * before that, only pages this device changed since are unknown, and are asked about alone.
   */
  private learnExtents(startByte: number, endByte: number): boolean {
    if (startByte >= this.learnedThroughByte) {
      this.learnedThroughByte = Math.max(this.learnedThroughByte, this.learnFrom(this.learnedThroughByte, endByte));
    } else {
      this.learnFrom(startByte, endByte);
    }
    return this.dataPages.covers(startByte, endByte);
  }

  /**
   * Another thread punched a hole somewhere: learn the file again as it is asked. Where learning
   * had reached stays: below it learnExtents asks about a request's own range alone, where
   * starting over from byte 0 would scan every extent before the next request after each punch.
   */
  private forgetExtents(punchCountNow: number): void {
    this.dataPages.clear();
    this.holePages.clear();
    this.learnedAtPunchCount = punchCountNow;
  }

  /** Mark the extents from `atByte` on until one reaches `untilByte`; returns where it stopped. */
  private learnFrom(atByte: number, untilByte: number): number {
    const fd = this.handle.fd;
    const fileEnd = this.sizeSectors * SECTOR_BYTES;
    let at = atByte;
    while (at < untilByte) {
      const data = native().nextData(fd, at);
      if (data === -ENXIO) {
        this.holePages.mark(at, fileEnd); // no data after: a hole to the end
        return fileEnd;
      }
      if (data < 0) return at; // another error teaches nothing
      if (data > at) {
        this.holePages.mark(at, data);
        at = data;
        continue;
      }
      const hole = native().nextHole(fd, at);
      if (hole <= at) return at;
      this.dataPages.mark(at, hole);
      at = hole;
    }
    return at;
  }

  /**
   * A memory-backed file's read or write as a copy through the file's shared mapping, where
   * pread or pwrite would be a system call making the same copy: faster per request (on the
   * host: 0.2 against 0.7 us for 4 KiB, 41 against 65 us for 1 MiB), and under qemu's TCG much
   * faster, as the kernel's copy to and from user memory there runs a byte at a time (a tmpfs
   * pread moved 350 MB/s in the 6.12 guest, this copy 2.6 GB/s; ublk's and loop's own copies
   * do not take that path, so every backing copy we made cost several of theirs).
   *
   * Only where the file is known to hold data, as for serving in place (inPlaceAddress): a
   * read's copy from a hole would fault a page into it, memory pread never takes, and a write
   * into a hole of a full tmpfs could not fault one in; pread and pwrite answer those with
   * zeroes and ENOSPC. A page that still cannot be touched (the file shrank, or another thread
   * or process punched it as tmpfs filled) fails the copy without harm (copyFromMapping), and
   * the device leaves the mapping for good.
   *
   * Returns the bytes moved, or -1: go by pread or pwrite (which may do again what was copied:
   * the same bytes to the same place).
   */
  private copyThroughMapping(view: Uint8Array, byteOffset: number, toFile: boolean): number {
    const mapping = this.mappingOver(byteOffset, view.length, toFile);
    return mapping === undefined || !this.copyMapped(mapping, view, byteOffset, toFile) ? -1 : view.length;
  }

  /** copyThroughMapping for a list of views, one after the other in the file. */
  private copyVectorThroughMapping(views: readonly Uint8Array[], byteOffset: number, toFile: boolean): number {
    const byteLength = totalBytes(views);
    const mapping = this.mappingOver(byteOffset, byteLength, toFile);
    if (mapping === undefined) return -1;
    let at = byteOffset;
    for (const view of views) {
      if (!this.copyMapped(mapping, view, at, toFile)) return -1;
      at += view.length;
    }
    return byteLength;
  }

  /**
   * The file's mapping, when [byteOffset, +byteLength) may be copied through it, by us
   * (copyThroughMapping) or by ublk (inPlaceAddress): a memory-backed file, still whole, where it
   * is known to hold data.
   */
  private mappingOver(byteOffset: number, byteLength: number, toFile: boolean): ArrayBuffer | undefined {
    if (!this.inlineIo || this.closed || this.mappingRefused || (toFile && this.readOnly)) return undefined;
    const endByte = byteOffset + byteLength;
    if (endByte > this.sizeSectors * SECTOR_BYTES) return undefined;
    if (this.fileMappingBase === 0 && !this.mapFile()) return undefined;
    if (!this.mappingStillWhole()) return undefined;
    if (!this.dataPages.covers(byteOffset, endByte) && (this.holePages.touchesAny(byteOffset, endByte) || !this.learnExtents(byteOffset, endByte))) return undefined;
    return this.fileMapping;
  }

  private copyMapped(mapping: ArrayBuffer, view: Uint8Array, byteOffset: number, toFile: boolean): boolean {
    const moved = toFile ? native().copyToMapping(mapping, byteOffset, view) : native().copyFromMapping(mapping, byteOffset, view);
    if (moved >= 0) return true;
    this.mappingRefused = true; // a page it could not touch: pread and pwrite from now on, as any file
    return false;
  }

  private mapFile(): boolean {
    try {
      const byteLength = this.sizeSectors * SECTOR_BYTES;
      if (byteLength === 0) throw new RangeError('an empty file');
      this.fileMapping = this.readOnly ? native().mmapReadOnly(this.handle.fd, 0, byteLength) : native().mmapShared(this.handle.fd, 0, byteLength);
      this.fileMappingBase = native().addressOf(new Uint8Array(this.fileMapping));
      return true;
    } catch {
      this.mappingRefused = true; // served by reads and writes, as any file
      return false;
    }
  }

  get tableName(): string {
    return this.devno === undefined ? this.path : `${this.devno.major}:${this.devno.minor}`;
  }

  /** Whether aligned I/O currently goes through the O_DIRECT descriptor. */
  get usesDirectIo(): boolean {
    return this.directHandle !== undefined;
  }

  /** The open (buffered) file descriptor (valid until close()). */
  get fd(): number {
    return this.handle.fd;
  }

  read(buf: Uint8Array, sector: number, options?: ReadOptions): Promise<IoResult> {
    const misuse = this.misuse(buf.length);
    if (misuse) return Promise.reject(misuse);
    return new Promise((resolve) => this.startRead(buf, sector, resolve, options?.throughPageCache === true));
  }

  write(buf: Uint8Array, sector: number, fua: boolean): Promise<IoResult> {
    const misuse = this.misuse(buf.length);
    if (misuse) return Promise.reject(misuse);
    return new Promise((resolve) => this.startWrite(buf, sector, fua, resolve));
  }

  /** read() without a promise: `done` gets the result. Throws (synchronously) on misuse. */
  readCb(buf: Uint8Array, sector: number, done: IoCallback): void {
    const misuse = this.misuse(buf.length);
    if (misuse) throw misuse;
    this.startRead(buf, sector, done);
  }

  /** write() without a promise: `done` gets the result. Throws (synchronously) on misuse. */
  writeCb(buf: Uint8Array, sector: number, fua: boolean, done: IoCallback): void {
    const misuse = this.misuse(buf.length);
    if (misuse) throw misuse;
    this.startWrite(buf, sector, fua, done);
  }

  readv(bufs: Uint8Array[], sector: number, options?: ReadOptions): Promise<IoResult> {
    const misuse = this.misuse(totalBytes(bufs));
    if (misuse) return Promise.reject(misuse);
    const byteOffset = sector * SECTOR_BYTES;
    if (this.inlineIo) {
      const copied = this.copyVectorThroughMapping(bufs, byteOffset, false);
      return new Promise((resolve) => this.ring.completeInline(resolve, copied >= 0 ? copied : native().preadv(this.handle.fd, bufs, byteOffset)));
    }
    const direct = options?.throughPageCache !== true && this.allAlignedForDirect(bufs, byteOffset);
    return new Promise((resolve) => this.issue(direct, DataOp.Readv, NO_DATA, bufs, byteOffset, 0, resolve));
  }

  writev(bufs: Uint8Array[], sector: number, fua: boolean): Promise<IoResult> {
    const misuse = this.misuse(totalBytes(bufs));
    if (misuse) return Promise.reject(misuse);
    if (this.beyondEnd(sector, totalBytes(bufs))) return Promise.resolve(-EIO);
    const byteOffset = sector * SECTOR_BYTES;
    const byteLength = totalBytes(bufs);
    if (this.inlineIo) {
      // Through the mapping before the holes it fills are forgotten (startWrite says why).
      const copied = this.copyVectorThroughMapping(bufs, byteOffset, true);
      this.holePages.unmark(byteOffset, byteOffset + byteLength);
      const written = copied >= 0 ? copied : native().pwritev(this.handle.fd, bufs, byteOffset);
      if (written === byteLength) this.dataPages.mark(byteOffset, byteOffset + written);
      return new Promise((resolve) => this.ring.completeInline(resolve, written));
    }
    this.holePages.unmark(byteOffset, byteOffset + byteLength);
    const rwFlags = fua ? RWF_DSYNC : 0;
    return new Promise((resolve) => this.issue(this.allAlignedForDirect(bufs, byteOffset), DataOp.Writev, NO_DATA, bufs, byteOffset, rwFlags, resolve));
  }

  flush(): Promise<IoResult> {
    const misuse = this.misuse(0);
    if (misuse) return Promise.reject(misuse);
    // tmpfs has no stable storage to reach: its fsync does nothing, and through io_uring that
    // nothing would still cost a worker thread's wakeup.
    if (this.inlineIo) return new Promise((resolve) => this.ring.completeInline(resolve, 0));
    return this.ring.fsync(this.handle.fd, true);
  }

  /**
   * Files: a punched hole. Block devices: a real discard through the ring; fallocate(PUNCH_HOLE)
   * on a block device is blkdev_issue_zeroout, a write-zeroes, which fails on devices without
   * write-zeroes and writes the whole range on many others. A device that cannot discard answers
   * -EOPNOTSUPP without being touched.
   */
  discard(sector: number, sectorCount: number): Promise<IoResult> {
    if (!this.capabilities.discard) return this.unsupported();
    if (this.devno === undefined) return this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, sector, sectorCount);
    const misuse = this.misuse(0);
    if (misuse) return Promise.reject(misuse);
    return this.ring.blockDiscard(this.handle.fd, sector * SECTOR_BYTES, sectorCount * SECTOR_BYTES);
  }

  /**
   * A block device without write-zeroes answers -EOPNOTSUPP, as the kernel does for a
   * REQ_OP_WRITE_ZEROES bio sent to such a queue, instead of letting fallocate fall back to
   * writing zero pages: the device does not declare the capability, so dm never advertises
   * write-zeroes above it, and a request that arrives anyway must not turn into a full write.
   */
  writeZeroes(sector: number, sectorCount: number, noUnmap: boolean): Promise<IoResult> {
    if (!this.capabilities.writeZeroes) return this.unsupported();
    // On a block device both modes are blkdev_issue_zeroout: PUNCH_HOLE may unmap, ZERO_RANGE
    // passes BLKDEV_ZERO_NOUNMAP.
    if (!noUnmap) return this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, sector, sectorCount);
    return this.zeroKeepingAllocation(sector, sectorCount);
  }

  /**
   * REQ_NOUNMAP: the range must read as zeroes and stay provisioned. ZERO_RANGE does both; where
   * a filesystem lacks it (tmpfs), punching the hole and allocating the range again does too.
   */
  private async zeroKeepingAllocation(sector: number, sectorCount: number): Promise<IoResult> {
    const zeroed = await this.fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, sector, sectorCount);
    // Only filesystems lack ZERO_RANGE; a block device has no allocate-again to fall back on.
    if (zeroed !== -EOPNOTSUPP || this.devno !== undefined) return zeroed;
    const punched = await this.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, sector, sectorCount);
    if (punched < 0) return punched;
    return this.fallocate(FALLOC_FL_KEEP_SIZE, sector, sectorCount);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // No commit can still name the mapping: a device closes after its table was drained, and
    // a queue thread submits the commits it staged (where ublk copies a read's data) before
    // any control step runs (RingTurns). Unmapped now rather than at GC, the file's space goes
    // with its last link.
    if (this.fileMapping !== undefined) native().unmap(this.fileMapping);
    this.fileMapping = undefined;
    this.fileMappingBase = 0;
    const directHandle = this.directHandle ?? this.retiredDirectHandle;
    this.directHandle = undefined;
    this.retiredDirectHandle = undefined;
    await directHandle?.close();
    await this.retiredDirectClosing;
    await this.handle.close();
  }

  private startRead(buf: Uint8Array, sector: number, done: IoCallback, throughPageCache = false): void {
    const byteOffset = sector * SECTOR_BYTES;
    if (this.inlineIo) {
      const copied = this.copyThroughMapping(buf, byteOffset, false);
      this.ring.completeInline(done, copied >= 0 ? copied : native().pread(this.handle.fd, buf, byteOffset));
      return;
    }
    const direct = !throughPageCache && this.alignedForDirect(buf, byteOffset);
    this.issue(direct, DataOp.Read, buf, NO_BUFFERS, byteOffset, 0, done);
  }

  private startWrite(buf: Uint8Array, sector: number, fua: boolean, done: IoCallback): void {
    // A device never grows: a write past its end fails as the block layer's does ("attempt to
    // access beyond end of device"), instead of silently extending a backing file.
    if (this.beyondEnd(sector, buf.length)) return done(-EIO);
    const byteOffset = sector * SECTOR_BYTES;
    if (this.inlineIo) {
      // FUA asks for nothing more here: tmpfs has no stable storage for the write to reach.
      // Through the mapping before the holes this write fills are forgotten: a write into a hole
      // known as one then goes to pwrite at once, where forgotten first it would send the
      // device to the file (lseek) to learn the hole again, and mark it to the file's end, at
      // every write (a snapshot's COW or a resyncing mirror leg filled front to back ran 3 to
      // 8 times slower so).
      const copied = this.copyThroughMapping(buf, byteOffset, true);
      this.holePages.unmark(byteOffset, byteOffset + buf.length);
      const written = copied >= 0 ? copied : native().pwrite(this.handle.fd, buf, byteOffset);
      if (written === buf.length) this.dataPages.mark(byteOffset, byteOffset + written); // a hole filled: in place from now on
      this.ring.completeInline(done, written);
      return;
    }
    const rwFlags = fua ? RWF_DSYNC : 0;
    this.issue(this.alignedForDirect(buf, byteOffset), DataOp.Write, buf, NO_BUFFERS, byteOffset, rwFlags, done);
  }

  /**
   * Issue a data request through the O_DIRECT descriptor when it is `aligned` and direct I/O is
   * still in use, else through the buffered one. A direct request refused with EINVAL (the
   * filesystem's direct I/O granule is larger than ours) gives up direct I/O for the device and
   * goes again, buffered.
   */
  private issue(aligned: boolean, op: DataOp, buf: Uint8Array, bufs: Uint8Array[], byteOffset: number, rwFlags: number, done: IoCallback): void {
    if (!aligned || this.directHandle === undefined) {
      this.issueOn(this.handle.fd, op, buf, bufs, byteOffset, rwFlags, done);
      return;
    }
    const request = this.idleDirectRequests.pop() ?? new DirectRequest(this);
    request.op = op;
    request.buf = buf;
    request.bufs = bufs;
    request.byteOffset = byteOffset;
    request.rwFlags = rwFlags;
    request.done = done;
    this.directInFlight++;
    try {
      this.issueOn(this.directHandle.fd, op, buf, bufs, byteOffset, rwFlags, request.completed);
    } catch (error) {
      this.directInFlight--;
      this.idle(request);
      throw error;
    }
  }

  private issueOn(fd: number, op: DataOp, buf: Uint8Array, bufs: Uint8Array[], byteOffset: number, rwFlags: number, done: IoCallback): void {
    switch (op) {
      case DataOp.Read:
        this.ring.readCb(fd, buf, byteOffset, done);
        return;
      case DataOp.Write:
        this.ring.writeCb(fd, buf, byteOffset, rwFlags, done);
        return;
      case DataOp.Readv:
        this.ring.readvCb(fd, bufs, byteOffset, done);
        return;
      case DataOp.Writev:
        this.ring.writevCb(fd, bufs, byteOffset, rwFlags, done);
        return;
    }
  }

  /** @internal A DirectRequest's completion. */
  directCompleted(request: DirectRequest, result: IoResult): void {
    const { op, buf, bufs, byteOffset, rwFlags, done } = request;
    this.idle(request);
    this.directInFlight--;
    if (result === -EINVAL) this.retireDirectHandle();
    this.closeRetiredDirectHandleWhenIdle();
    if (result !== -EINVAL) {
      done(result);
      return;
    }
    try {
      this.issueOn(this.handle.fd, op, buf, bufs, byteOffset, rwFlags, done);
    } catch {
      done(-EIO); // the ring is gone: we are inside a completion, there is nobody to throw to
    }
  }

  /** Back to the idle list, holding nothing of the request it served. */
  private idle(request: DirectRequest): void {
    request.buf = NO_DATA;
    request.bufs = NO_BUFFERS;
    request.done = ignoreResult;
    this.idleDirectRequests.push(request);
  }

  /** Stop issuing direct requests; the descriptor is closed once those in flight complete. */
  private retireDirectHandle(): void {
    if (this.directHandle === undefined) return; // an earlier EINVAL (or close()) got here first
    this.retiredDirectHandle = this.directHandle;
    this.directHandle = undefined;
  }

  private closeRetiredDirectHandleWhenIdle(): void {
    const handle = this.retiredDirectHandle;
    if (handle === undefined || this.directInFlight > 0) return;
    this.retiredDirectHandle = undefined;
    // close(2) writes nothing back (flush() is what does, through the buffered descriptor), so a
    // failing close here loses no data; and there is no caller to report it to.
    this.retiredDirectClosing = handle.close().catch(() => undefined);
  }

  private alignedForDirect(buf: Uint8Array, byteOffset: number): boolean {
    return isMultipleOfPowerOfTwo(byteOffset, DIRECT_IO_ALIGNMENT_BYTES) && isDirectIoAligned(buf, buf.length, DIRECT_IO_ALIGNMENT_BYTES);
  }

  private allAlignedForDirect(bufs: Uint8Array[], byteOffset: number): boolean {
    if (!isMultipleOfPowerOfTwo(byteOffset, DIRECT_IO_ALIGNMENT_BYTES)) return false;
    for (const buf of bufs) if (!isDirectIoAligned(buf, buf.length, DIRECT_IO_ALIGNMENT_BYTES)) return false;
    return true;
  }

  private unsupported(): Promise<IoResult> {
    const misuse = this.misuse(0);
    return misuse ? Promise.reject(misuse) : Promise.resolve(-EOPNOTSUPP);
  }

  private fallocate(mode: number, sector: number, sectorCount: number): Promise<IoResult> {
    const misuse = this.misuse(0);
    if (misuse) return Promise.reject(misuse);
    // Before the punch, so no read named in place after it finds the range allocated: here, and
    // in the other threads' devices, which forget what they learned at their next wait. This one
    // knows what it punched, so its own count alone does not make it forget.
    if ((mode & FALLOC_FL_PUNCH_HOLE) !== 0) {
      this.dataPages.unmark(sector * SECTOR_BYTES, (sector + sectorCount) * SECTOR_BYTES);
      const before = countPunch();
      if (before === this.learnedAtPunchCount) this.learnedAtPunchCount = (before + 1) | 0; // Atomics.add wraps as int32
    }
    return this.ring.fallocate(this.handle.fd, mode, sector * SECTOR_BYTES, sectorCount * SECTOR_BYTES);
  }

  /** The programming error in a call, if any (I/O errors come back as results instead). */
  private beyondEnd(sector: number, byteLength: number): boolean {
    return sector * SECTOR_BYTES + byteLength > this.sizeSectors * SECTOR_BYTES;
  }

  private misuse(byteLength: number): Error | undefined {
    if (this.closed) return new Error(`${this.path}: device is closed`);
    // Checked before the I/O: on tmpfs the copy is done in the call (inlineIo), and a write done
    // whose completion the ring cannot deliver any more would change the file yet report failure.
    if (this.ring.isClosed) return new Error(`${this.path}: its ring is closed`);
    if (byteLength % SECTOR_BYTES !== 0) {
      return new RangeError(`${this.path}: ${byteLength} bytes is not a whole number of sectors`);
    }
    return undefined;
  }
}

/**
 * Open a backing device named by a path (regular file or block device) or "major:minor".
 * Throws an ErrnoError naming the path when it does not exist or is neither kind of file.
 */
export async function openFileDevice(spec: string, options: OpenFileDeviceOptions): Promise<FileDevice> {
  // Untyped callers (a require() cast) get a named error, not a TypeError from halfway through.
  if (options?.ring === undefined) throw new TypeError(`openFileDevice(${spec}): options.ring is required`);
  const devicePath = path.resolve(await resolveSpec(spec));
  const stats = await statOrExplain(devicePath);
  if (!stats.isBlockDevice() && !stats.isFile()) {
    throw new ErrnoError(`${devicePath} is neither a regular file nor a block device`, EINVAL);
  }
  const readOnly = options.readOnly ?? false;
  const accessFlags = readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR;
  const handle = await fsp.open(devicePath, accessFlags);
  const directHandle = options.directIo === false
    ? undefined
    : await fsp.open(devicePath, accessFlags | fsConstants.O_DIRECT).catch(() => undefined);
  try {
    const description = stats.isBlockDevice()
      ? await describeBlockDevice(devicePath, stats.rdev, handle.fd)
      : describeRegularFile(devicePath, stats, await onTmpfs(devicePath));
    return new FileDevice(options.ring, handle, directHandle, readOnly, description);
  } catch (error) {
    await directHandle?.close();
    await handle.close();
    throw error;
  }
}

async function onTmpfs(devicePath: string): Promise<boolean> {
  try {
    return (await fsp.statfs(devicePath)).type === TMPFS_MAGIC;
  } catch {
    return false; // no statfs (an old Node): take the general path
  }
}

function describeRegularFile(devicePath: string, stats: { size: bigint; dev: bigint; ino: bigint }, memoryBacked: boolean): DeviceDescription {
  return {
    memoryBacked,
    path: devicePath,
    sizeSectors: Number(stats.size >> BigInt(SECTOR_SHIFT)),
    logicalBlockBytes: SECTOR_BYTES,
    devno: undefined,
    key: `file:${stats.dev}:${stats.ino}`,
    // Discard is a punched hole, write-zeroes ZERO_RANGE or a punched hole (allocated again
    // for NOUNMAP); a filesystem without hole punching answers -EOPNOTSUPP per request.
    capabilities: { discard: true, writeZeroes: true },
  };
}

async function describeBlockDevice(devicePath: string, rdev: bigint, fd: number): Promise<DeviceDescription> {
  const devno = splitDevno(rdev);
  const addon = native();
  return {
    memoryBacked: false,
    path: devicePath,
    sizeSectors: Math.floor(addon.blockDeviceBytes(fd) / SECTOR_BYTES),
    logicalBlockBytes: addon.logicalBlockBytes(fd),
    devno,
    key: `blk:${devno.major}:${devno.minor}`,
    capabilities: await blockDeviceCapabilities(devno),
  };
}

/**
 * A block device's capabilities are its queue limits, as loop and dm derive theirs from the
 * device underneath: a limit of 0 bytes means the queue refuses that operation.
 */
async function blockDeviceCapabilities(devno: Devno): Promise<DeviceCapabilities> {
  return {
    discard: (await queueLimitBytes(devno, 'discard_max_bytes')) > 0,
    writeZeroes: (await queueLimitBytes(devno, 'write_zeroes_max_bytes')) > 0,
  };
}

/**
 * One number from the device's queue directory in sysfs. A partition has none of its own: its
 * sysfs directory sits inside its disk's, whose queue it uses.
 */
async function queueLimitBytes(devno: Devno, limit: string): Promise<number> {
  const deviceDir = `/sys/dev/block/${devno.major}:${devno.minor}`;
  for (const queueDir of [`${deviceDir}/queue`, `${deviceDir}/../queue`]) {
    const text = await fsp.readFile(`${queueDir}/${limit}`, 'utf8').catch(() => undefined);
    if (text !== undefined) return Number(text.trim());
  }
  throw new ErrnoError(`no ${limit} for block device ${devno.major}:${devno.minor} in ${deviceDir}`, ENOENT);
}

const DEVNO_SPEC = /^(\d+):(\d+)$/;

/** A path as given, or the /dev node of a "major:minor" (as named by sysfs). */
async function resolveSpec(spec: string): Promise<string> {
  const devno = DEVNO_SPEC.exec(spec);
  if (devno === null) return spec;
  const ueventPath = `/sys/dev/block/${devno[1]}:${devno[2]}/uevent`;
  let uevent: string;
  try {
    uevent = await fsp.readFile(ueventPath, 'utf8');
  } catch {
    throw new ErrnoError(`no block device ${spec}`, ENOENT);
  }
  const devName = /^DEVNAME=(.+)$/m.exec(uevent);
  if (devName === null) throw new ErrnoError(`no device name for block device ${spec} in ${ueventPath}`, ENOENT);
  return `/dev/${devName[1]}`;
}

async function statOrExplain(devicePath: string) {
  try {
    return await fsp.stat(devicePath, { bigint: true });
  } catch (error) {
    const errnoValue = (error as NodeJS.ErrnoException).errno;
    throw new ErrnoError(`cannot open ${devicePath}`, errnoValue === undefined ? ENOENT : -errnoValue);
  }
}

/** glibc's gnu_dev_major/gnu_dev_minor. */
function splitDevno(rdev: bigint): Devno {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return { major, minor };
}

function totalBytes(bufs: readonly Uint8Array[]): number {
  let byteLength = 0;
  for (const buf of bufs) byteLength += buf.byteLength;
  return byteLength;
}
