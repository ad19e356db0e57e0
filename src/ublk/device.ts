import { promises as fsp } from 'node:fs';

import { EINVAL, EIO, ENODEV, ENOENT, EOPNOTSUPP, ETIMEDOUT, ErrnoError, type IoResult } from '../base/errno';
import { allocPageAligned, native } from '../io/native';
import type { IoRing } from '../io/ring';
import { IoOp, NO_DATA, carriesData, type Bio, type IoDone } from '../io/bio';
import { PAGE_BYTES, SECTOR_BYTES } from '../base/units';
import {
  ANY_DEV_ID,
  UBLK_ATTR_FUA,
  UBLK_ATTR_READ_ONLY,
  UBLK_ATTR_VOLATILE_CACHE,
  UBLK_IO_F_FUA,
  UBLK_IO_F_NOUNMAP,
  UBLK_IO_RES_OK,
  UBLK_U_IO_COMMIT_AND_FETCH_REQ,
  UBLK_U_IO_FETCH_REQ,
  decodeIoDesc,
  descriptorMmapByteLength,
  descriptorMmapByteOffset,
  type BasicParams,
  type DiscardParams,
} from './abi';
import { UblkControl } from './control';

/**
 * UblkDevice: the server side of one ublk device. It posts a FETCH for every tag of every queue
 * on the ring the caller gives it, turns each delivered descriptor into a UblkRequest for the handler,
 * and answers with COMMIT_AND_FETCH. It knows nothing about what the handler does.
 */

/** A request as the kernel delivered it: a Bio (device-relative) and where it came from. */
export interface UblkRequest extends Bio {
  readonly queueId: number;
  readonly tag: number;
}

/**
 * Serves one request: `done` takes bytes moved (Read/Write) or 0, or -errno; calls after the
 * first are ignored, and so are calls for a request already answered. A throw completes the
 * request with -EIO.
 */
export type UblkHandler = (req: UblkRequest, done: IoDone) => void;

export interface UblkDeviceOptions {
  /**
   * The ring to post the queues' commands on, owned by the caller (one per thread, never a
   * process singleton). ublk takes commands of a queue only from the task that fetched first,
   * so it must belong to the thread that serves this device.
   */
  ring: IoRing;
  sizeSectors: number;
  /** Default 1. */
  queues?: number;
  /** Tags per queue, default 128. */
  depth?: number;
  /** Largest request in bytes (a multiple of 4096), default 512 KiB. */
  maxIoBytes?: number;
  /** 512 … 4096, default 512. */
  logicalBlockBytes?: number;
  readOnly?: boolean;
  /** Wanted device id; default: any free id. */
  devId?: number;
  /**
   * Advertise discard (the backing can deallocate). Default false: the kernel then sends no
   * DISCARD and the block device reports discard_max_bytes 0, as loop does.
   */
  discard?: boolean;
  /** Advertise write-zeroes (the backing can zero a range without a data buffer). Default false. */
  writeZeroes?: boolean;
}

const DEFAULT_DEPTH = 128;
const DEFAULT_MAX_IO_BYTES = 512 * 1024;
const CHAR_DEVICE_WAIT_MS = 5_000;
const CHAR_DEVICE_POLL_MS = 10;
const ABORT_WAIT_MS = 10_000;
const DISCARD_GRANULARITY_BYTES = 4096;
/** As libublksrv: UINT_MAX bytes' worth of sectors, so byte counts never overflow a u32. */
const MAX_DISCARD_SECTORS = 0xffffffff >>> 9;

/** Where a tag is in its FETCH → handle → COMMIT_AND_FETCH cycle. */
const enum TagPhase {
  /** A FETCH or COMMIT_AND_FETCH is posted; the kernel owns the tag. */
  Posted,
  /** The handler owns the request. */
  Serving,
  /** The kernel completed the tag's command with ABORT (or an error): it is never re-posted. */
  Retired,
}

type Devno = { major: number; minor: number };

export class UblkDevice {
  readonly blockPath: string;
  readonly charPath: string;
  private devnoValue: Devno = { major: 0, minor: 0 };

  private readonly tags: TagSlot[] = [];
  private readonly descriptorMappings: ArrayBuffer[] = [];
  private readonly descriptorWords: Uint32Array[] = [];
  private readonly tagBuffers: Uint8Array[] = [];
  private retiredTags = 0;
  private firstCommandError: number | undefined;
  private onAllRetired: (() => void) | undefined;
  private stopping: Promise<void> | undefined;

  /** Create, configure and start a device; on any failure nothing is left in the kernel. */
  static async create(options: UblkDeviceOptions, handler: UblkHandler): Promise<UblkDevice> {
    const config = validate(options);
    const control = await UblkControl.open();
    let devId: number | undefined;
    let device: UblkDevice | undefined;
    try {
      // We rely on no optional feature (no USER_COPY, no recovery, no NEED_GET_DATA); the probe
      // only tells us the kernel speaks the ioctl-encoded protocol (6.5+).
      await control.getFeatures();
      const info = await control.addDevice({
        queues: config.queues,
        depth: config.depth,
        maxIoBufBytes: config.maxIoBytes,
        devId: config.devId,
        flags: 0n,
      });
      devId = info.devId;
      if (info.maxIoBufBytes < config.maxIoBytes || info.queues !== config.queues || info.depth !== config.depth) {
        throw new ErrnoError(
          `ublk device ${devId}: kernel granted ${info.queues} queues x ${info.depth} tags x ${info.maxIoBufBytes} bytes, ` +
            `asked ${config.queues} x ${config.depth} x ${config.maxIoBytes}`,
          EINVAL,
        );
      }
      await control.setParams(devId, deviceParams(config));
      const charPath = `/dev/ublkc${devId}`;
      const charHandle = await openWhenCreated(charPath);
      try {
        device = new UblkDevice(control, charHandle, devId, config, info.flags, handler);
      } catch (error) {
        await charHandle.close(); // DEL_DEV would wait for this reference forever
        throw error;
      }
      device.postFetches();
      await control.startDevice(devId, process.pid);
      const devt = (await control.getParams(devId)).devt;
      if (devt) device.devnoValue = { major: devt.diskMajor, minor: devt.diskMinor };
      return device;
    } catch (error) {
      if (device) {
        await device.stop().catch(() => undefined);
      } else {
        if (devId !== undefined) await control.deleteDevice(devId).catch(() => undefined);
        await control.close().catch(() => undefined);
      }
      throw error;
    }
  }

  private constructor(
    private readonly control: UblkControl,
    private readonly charHandle: fsp.FileHandle,
    readonly id: number,
    private readonly config: Required<UblkDeviceOptions>,
    /** Negotiated UBLK_F_* flags (ADD_DEV's answer). */
    readonly features: bigint,
    private readonly handler: UblkHandler,
  ) {
    this.charPath = `/dev/ublkc${id}`;
    this.blockPath = `/dev/ublkb${id}`;
    const addon = native();
    try {
      for (let queueId = 0; queueId < config.queues; queueId++) {
        const mapping = addon.mmapReadOnly(
          charHandle.fd,
          descriptorMmapByteOffset(queueId),
          descriptorMmapByteLength(config.depth),
        );
        this.descriptorMappings.push(mapping);
        this.descriptorWords.push(new Uint32Array(mapping));
        const queueBuffer = new Uint8Array(allocPageAligned(config.depth * config.maxIoBytes));
        this.tagBuffers.push(queueBuffer);
        const queueAddress = addon.addressOf(queueBuffer);
        for (let tag = 0; tag < config.depth; tag++) {
          const byteOffset = tag * config.maxIoBytes;
          this.tags.push(
            new TagSlot(
              this,
              queueId,
              tag,
              queueBuffer.subarray(byteOffset, byteOffset + config.maxIoBytes),
              queueAddress + byteOffset,
            ),
          );
        }
      }
    } catch (error) {
      this.unmapDescriptors();
      throw error;
    }
  }

  get queues(): number {
    return this.config.queues;
  }

  get depth(): number {
    return this.config.depth;
  }

  /** The block device's major:minor (known once started). */
  get devno(): Devno {
    return this.devnoValue;
  }

  /**
   * STOP_DEV (serving requests until it returns), wait for every tag to be aborted, then release
   * the mappings and the char device and DEL_DEV. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= this.stopAndDelete();
    return this.stopping;
  }

  private async stopAndDelete(): Promise<void> {
    let firstError: unknown;
    const remember = (error: unknown) => {
      firstError ??= error;
    };
    await this.control.stopDevice(this.id).catch(remember);
    await this.allTagsRetired(ABORT_WAIT_MS).catch(remember);
    this.unmapDescriptors();
    await this.charHandle.close().catch(remember);
    await this.control.deleteDevice(this.id).catch(remember);
    await this.control.close().catch(remember);
    if (firstError !== undefined) throw firstError;
  }

  private postFetches(): void {
    for (const slot of this.tags) slot.post(UBLK_U_IO_FETCH_REQ, 0);
  }

  /** @internal The ring every queue of this device posts its commands on (options.ring). */
  get ring(): IoRing {
    return this.config.ring;
  }

  /** @internal */
  get charFd(): number {
    return this.charHandle.fd;
  }

  /** @internal A FETCH/COMMIT completed with a request: hand it to the handler. */
  dispatch(slot: TagSlot): void {
    const desc = decodeIoDesc(this.descriptorWords[slot.queueId], slot.tag);
    const op = knownOp(desc.op);
    if (op === undefined) {
      slot.commit(-EOPNOTSUPP);
      return;
    }
    const withData = carriesData(op);
    const byteLength = desc.sectorCount * SECTOR_BYTES;
    if (withData && byteLength > slot.buffer.byteLength) {
      slot.commit(-EIO); // the kernel never sends more than max_sectors; refuse rather than overrun
      return;
    }
    const done = slot.begin(op, withData ? byteLength : 0);
    const request: UblkRequest = {
      queueId: slot.queueId,
      tag: slot.tag,
      op,
      fua: (desc.flags & UBLK_IO_F_FUA) !== 0,
      noUnmap: (desc.flags & UBLK_IO_F_NOUNMAP) !== 0,
      sector: desc.sector,
      sectorCount: desc.sectorCount,
      data: withData ? slot.buffer.subarray(0, byteLength) : NO_DATA,
    };
    try {
      this.handler(request, done);
    } catch {
      done(-EIO);
    }
  }

  /** @internal The tag's command completed without a request (ABORT, or a rejected command). */
  retire(result: IoResult): void {
    if (result !== -ENODEV) this.firstCommandError ??= result;
    this.retiredTags++;
    if (this.retiredTags === this.tags.length) this.onAllRetired?.();
  }

  private allTagsRetired(timeoutMs: number): Promise<void> {
    if (this.retiredTags === this.tags.length) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.onAllRetired = undefined;
        const detail = this.firstCommandError === undefined ? '' : ` (a command failed with ${this.firstCommandError})`;
        reject(
          new ErrnoError(
            `ublk device ${this.id}: ${this.tags.length - this.retiredTags} tags not aborted after stop${detail}`,
            ETIMEDOUT,
          ),
        );
      }, timeoutMs);
      this.onAllRetired = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private unmapDescriptors(): void {
    const addon = native();
    for (const mapping of this.descriptorMappings.splice(0)) addon.unmap(mapping);
  }
}

/** @internal What a TagSlot needs of its device; an interface so unit tests can stand in for it. */
export interface TagOwner {
  readonly ring: Pick<IoRing, 'ublkIoCmdCb' | 'isClosed'>;
  readonly charFd: number;
  dispatch(slot: TagSlot): void;
  retire(result: IoResult): void;
}

/** @internal One (queue, tag): its buffer and the callbacks of its cycle, bound once. */
export class TagSlot {
  private phase = TagPhase.Posted;
  private op = IoOp.Read;
  private dataByteLength = 0;
  /** Counts the requests delivered to this tag; names the one being served. */
  private generation = 0;

  constructor(
    private readonly device: TagOwner,
    readonly queueId: number,
    readonly tag: number,
    /** maxIoBytes of page-aligned memory the kernel copies request data to and from. */
    readonly buffer: Uint8Array,
    private readonly bufAddress: number,
  ) {}

  post(cmdOp: number, result: IoResult): void {
    this.phase = TagPhase.Posted;
    try {
      this.device.ring.ublkIoCmdCb(
        this.device.charFd,
        cmdOp,
        this.queueId,
        this.tag,
        result,
        this.bufAddress,
        this.onCommandDone,
      );
    } catch {
      // A full SQ the kernel would not take (EBUSY/EAGAIN) is passing: completions being reaped
      // meanwhile make room. Giving the tag up instead would leave the kernel's request
      // unanswered forever, and STOP_DEV waiting behind it; so keep the command and its result
      // and try again on the next turn. Only a closed ring is final.
      if (this.device.ring.isClosed) this.retire(-EIO);
      else setImmediate(() => this.post(cmdOp, result));
    }
  }

  /**
   * The kernel delivered a request: the handler owns the tag until the returned `done` is
   * called. Each delivery has its own generation, and `done` is bound to it, so a late or
   * repeated call for an earlier request cannot answer the one the tag serves now.
   */
  begin(op: IoOp, dataByteLength: number): IoDone {
    this.phase = TagPhase.Serving;
    this.op = op;
    this.dataByteLength = dataByteLength;
    const generation = ++this.generation;
    return (result) => this.handled(generation, result);
  }

  commit(result: IoResult): void {
    this.post(UBLK_U_IO_COMMIT_AND_FETCH_REQ, result);
  }

  readonly onCommandDone = (result: IoResult): void => {
    if (result === UBLK_IO_RES_OK) {
      this.device.dispatch(this);
    } else {
      this.retire(result);
    }
  };

  private handled(generation: number, result: IoResult): void {
    if (generation !== this.generation || this.phase !== TagPhase.Serving) return; // stale, or answered
    if (typeof result !== 'number' || !Number.isInteger(result)) {
      this.commit(-EIO);
    } else if (result < 0) {
      this.commit(result);
    } else if (carriesData(this.op)) {
      this.commit(Math.min(result, this.dataByteLength));
    } else {
      this.commit(0);
    }
  }

  private retire(result: IoResult): void {
    if (this.phase === TagPhase.Retired) return;
    this.phase = TagPhase.Retired;
    this.device.retire(result);
  }
}

function knownOp(op: number): IoOp | undefined {
  switch (op) {
    case IoOp.Read:
    case IoOp.Write:
    case IoOp.Flush:
    case IoOp.Discard:
    case IoOp.WriteZeroes:
      return op;
    default:
      return undefined;
  }
}

function validate(options: UblkDeviceOptions): Required<UblkDeviceOptions> {
  const config: Required<UblkDeviceOptions> = {
    ring: options.ring,
    sizeSectors: options.sizeSectors,
    queues: options.queues ?? 1,
    depth: options.depth ?? DEFAULT_DEPTH,
    maxIoBytes: options.maxIoBytes ?? DEFAULT_MAX_IO_BYTES,
    logicalBlockBytes: options.logicalBlockBytes ?? SECTOR_BYTES,
    readOnly: options.readOnly ?? false,
    devId: options.devId ?? ANY_DEV_ID,
    discard: options.discard ?? false,
    writeZeroes: options.writeZeroes ?? false,
  };
  const fail = (message: string): never => {
    throw new ErrnoError(`ublk device: ${message}`, EINVAL);
  };
  if (config.ring === undefined || config.ring.isClosed) fail('ring must be an open IoRing');
  if (!Number.isSafeInteger(config.sizeSectors) || config.sizeSectors <= 0) fail('sizeSectors must be a positive integer');
  if (!Number.isInteger(config.queues) || config.queues < 1 || config.queues > 4096) fail('queues must be 1..4096');
  if (!Number.isInteger(config.depth) || config.depth < 1 || config.depth > 4096) fail('depth must be 1..4096');
  if (!Number.isInteger(config.maxIoBytes) || config.maxIoBytes < PAGE_BYTES || config.maxIoBytes % PAGE_BYTES !== 0) {
    fail('maxIoBytes must be a positive multiple of 4096');
  }
  const lbs = config.logicalBlockBytes;
  if (lbs < SECTOR_BYTES || lbs > PAGE_BYTES || (lbs & (lbs - 1)) !== 0) fail('logicalBlockBytes must be a power of two in 512..4096');
  return config;
}

function deviceParams(config: Required<UblkDeviceOptions>): { basic: BasicParams; discard?: DiscardParams } {
  const logicalBlockShift = Math.log2(config.logicalBlockBytes);
  const basic: BasicParams = {
    // A volatile cache with FUA makes the kernel send us FLUSH and FUA writes, which the
    // targets must see to keep dm's durability semantics.
    attrs: UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA | (config.readOnly ? UBLK_ATTR_READ_ONLY : 0),
    logicalBlockShift,
    physicalBlockShift: logicalBlockShift,
    ioOptShift: Math.max(logicalBlockShift, 12),
    ioMinShift: logicalBlockShift,
    maxSectors: config.maxIoBytes / SECTOR_BYTES,
    chunkSectors: 0,
    devSectors: config.sizeSectors,
    virtBoundaryMask: 0n,
  };
  // Without the discard part the kernel sets both limits to 0: no DISCARD, no WRITE_ZEROES.
  if (!config.discard && !config.writeZeroes) return { basic };
  return {
    basic,
    discard: {
      discardAlignment: 0,
      // Must be non-zero even when only write-zeroes is advertised (spec: ublk_param_discard).
      discardGranularity: DISCARD_GRANULARITY_BYTES,
      maxDiscardSectors: config.discard ? MAX_DISCARD_SECTORS : 0,
      maxWriteZeroesSectors: config.writeZeroes ? MAX_DISCARD_SECTORS : 0,
      // Must be 1 when discard is advertised; the kernel ignores it otherwise.
      maxDiscardSegments: 1,
    },
  };
}

/** ADD_DEV creates /dev/ublkcN asynchronously (devtmpfs or udev): poll briefly for it. */
async function openWhenCreated(charPath: string): Promise<fsp.FileHandle> {
  const deadline = Date.now() + CHAR_DEVICE_WAIT_MS;
  for (;;) {
    try {
      return await fsp.open(charPath, 'r+');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' || Date.now() >= deadline) {
        throw new ErrnoError(`cannot open ${charPath}`, code === 'ENOENT' ? ENOENT : ((error as NodeJS.ErrnoException).errno ?? EIO));
      }
    }
    await new Promise((resolve) => setTimeout(resolve, CHAR_DEVICE_POLL_MS));
  }
}
