import { promises as fsp } from 'node:fs';

import { EBUSY, EINVAL, EIO, ENOENT, ErrnoError } from '../base/errno';
import type { IoRing } from '../io/ring';
import { PAGE_BYTES, SECTOR_BYTES } from '../base/units';
import {
  ANY_DEV_ID,
  UBLK_ATTR_FUA,
  UBLK_ATTR_READ_ONLY,
  UBLK_ATTR_VOLATILE_CACHE,
  UBLK_F_NEED_GET_DATA,
  UBLK_F_USER_RECOVERY,
  UBLK_F_USER_RECOVERY_REISSUE,
  UblkDevState,
  type BasicParams,
  type DevInfo,
  type DiscardParams,
} from './abi';
import { UblkControl } from './control';
import { processIsAlive } from './processes';
import { UnquiescedDeviceError } from './unquiesced';
import { DEFAULT_IO_SCHEDULER, setIoScheduler } from './io-scheduler';
import { ThreadQueues, type QueueServer, type UblkHandler } from './queue';

export type { UblkHandler, UblkRequest } from './queue';

/**
 * UblkDevice: the server side of one ublk device: its life through the control commands (ADD_DEV
 * ... START_DEV, user recovery, STOP_DEV, DEL_DEV). Its queues are served by a QueueServer:
 * given a handler, on the ring the caller gives it (ThreadQueues); or by queue threads. It
 * knows nothing about what the handler does.
 */

/** A handler (its queues served on options.ring) or whoever serves them. */
export type UblkServe = UblkHandler | QueueServer;

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
  /**
   * Ask for UBLK_F_USER_RECOVERY with REISSUE when the kernel offers both: if this process dies
   * the kernel keeps the block device and queues its I/O (the requests the dead server held are
   * issued again) until a new server calls UblkDevice.recover. Default false: the device dies
   * with this process. See `features` for what the kernel granted.
   */
  recovery?: boolean;
  /** Stored by the kernel with the device (ublksrv_flags) and checked by recover(): whose device it is. Default 0. */
  serverFlags?: bigint;
  /**
   * Ask for UBLK_F_NEED_GET_DATA when offered: ublk delivers a write without its data and copies
   * the data where the server then says, which lets a table served in place take it straight
   * into its device (Dispatcher.placeWrite). Default false: each write costs a command less.
   */
  placeWrites?: boolean;
  /**
   * The block device's I/O scheduler once started (io-scheduler.ts says why 'none', the
   * default); '' keeps the kernel's choice. A recovered device keeps whatever it had.
   */
  ioScheduler?: string;
  /** Told why a setting that does not stop the device could not be made (the scheduler). Default: dropped. */
  warn?: (message: string) => void;
}

/** What recover() needs to find the device again and know it is the one it means. */
export interface UblkRecoverOptions {
  ring: IoRing;
  devId: number;
  /** The serverFlags the device was created with: any other value means someone else's device. */
  serverFlags: bigint;
  /** The size the table being served has: the kernel's device must have it. */
  sizeSectors: number;
  /** How long to wait for the kernel to finish quiescing after the old server died. Default 15 s. */
  waitMs?: number;
}

export interface UblkDeviceIdentity {
  readonly id: number;
  readonly serverFlags: bigint;
  readonly queues: number;
  readonly depth: number;
  readonly maxIoBytes: number;
  readonly features: bigint;
}

/** Both recovery bits: queue I/O while no server, and re-issue what the dead server held. */
export const RECOVERY_FEATURES = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;

const DEFAULT_DEPTH = 128;
const DEFAULT_MAX_IO_BYTES = 512 * 1024;
const CHAR_DEVICE_WAIT_MS = 5_000;
const CHAR_DEVICE_POLL_MS = 10;
const ABORT_WAIT_MS = 10_000;
const RECOVERY_WAIT_MS = 15_000;
const RECOVERY_POLL_MS = 50;
const DISCARD_GRANULARITY_BYTES = 4096;
/** As libublksrv: UINT_MAX bytes' worth of sectors, so byte counts never overflow a u32. */
const MAX_DISCARD_SECTORS = 0xffffffff >>> 9;

type Devno = { major: number; minor: number };

export class UblkDevice {
  readonly blockPath: string;
  readonly charPath: string;
  private devnoValue: Devno = { major: 0, minor: 0 };

  private stopping: Promise<void> | undefined;

  /** Create, configure and start a device; on any failure nothing is left in the kernel. */
  static async create(options: UblkDeviceOptions, serve: UblkServe): Promise<UblkDevice> {
    const config = validate(options);
    const control = await UblkControl.open();
    let devId: number | undefined;
    let device: UblkDevice | undefined;
    try {
      // We rely on no optional feature (no USER_COPY) and take user recovery and NEED_GET_DATA
      // when asked and offered; the probe also tells us the kernel speaks the ioctl-encoded
      // protocol (6.5+).
      const offered = await control.getFeatures();
      const recovery = config.recovery && (offered & RECOVERY_FEATURES) === RECOVERY_FEATURES;
      const needGetData = config.placeWrites && (offered & UBLK_F_NEED_GET_DATA) !== 0n;
      const info = await control.addDevice({
        queues: config.queues,
        depth: config.depth,
        maxIoBufBytes: config.maxIoBytes,
        devId: config.devId,
        flags: (recovery ? RECOVERY_FEATURES : 0n) | (needGetData ? UBLK_F_NEED_GET_DATA : 0n),
        serverFlags: config.serverFlags,
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
        device = new UblkDevice(control, charHandle, devId, config, info.flags, queueServerOf(serve, config.ring));
      } catch (error) {
        await charHandle.close(); // DEL_DEV would wait for this reference forever
        throw error;
      }
      await device.startQueues();
      await control.startDevice(devId, process.pid);
      const devt = (await control.getParams(devId)).devt;
      if (devt) device.devnoValue = { major: devt.diskMajor, minor: devt.diskMinor };
      if (config.ioScheduler !== '') {
        const why = await setIoScheduler(devId, config.ioScheduler);
        if (why !== undefined) config.warn(`ublk device ${devId}: ${why}`);
      }
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

  /**
   * Reattach to a device whose server died (state QUIESCED, its I/O queued by the kernel):
   * START_USER_RECOVERY, open the char device, post every FETCH, END_USER_RECOVERY with our pid;
   * the queued requests then arrive at `handler`. The device keeps its id, /dev/ublkbN and
   * numbers. Refuses, touching nothing, a device that is not the one described (serverFlags,
   * size), that another live process serves, or that cannot be recovered (DEAD, no
   * USER_RECOVERY); a failure after START_USER_RECOVERY stops and deletes the device.
   *
   * Why delete, even under a mount: on 6.12 a half-recovered device cannot be left for the next
   * daemon. START_USER_RECOVERY zeroes the count of ready queues and forgets every queue's
   * server; a second START_USER_RECOVERY refuses (EINVAL) while no queue has posted all its
   * FETCHes, so the device's I/O would wait forever, and with only some queues ready it puts
   * the task of a queue that has none (a NULL dereference in the driver). Later kernels moved
   * that reset to the char device's release ("ublk: move device reset into ublk_ch_release()",
   * April 2025, backported to 6.14.y but not 6.12.y), after which leaving it would be safe.
   */
  static async recover(options: UblkRecoverOptions, serve: UblkServe): Promise<UblkDevice> {
    const control = await UblkControl.open();
    let device: UblkDevice | undefined;
    let started = false;
    try {
      const info = await waitUntilRecoverable(control, options);
      const params = await control.getParams(options.devId);
      const basic = params.basic;
      if (basic === undefined || basic.devSectors !== options.sizeSectors) {
        throw new ErrnoError(
          `ublk device ${options.devId} is ${basic?.devSectors ?? 'of unknown size in'} sectors, the table ${options.sizeSectors}`,
          EINVAL,
        );
      }
      await startRecoveryWhenReleased(control, options.devId, deadlineOf(options));
      started = true;
      const config = validate({
        ring: options.ring,
        sizeSectors: basic.devSectors,
        queues: info.queues,
        depth: info.depth,
        maxIoBytes: info.maxIoBufBytes,
        logicalBlockBytes: 2 ** basic.logicalBlockShift,
        readOnly: (basic.attrs & UBLK_ATTR_READ_ONLY) !== 0,
        devId: options.devId,
        discard: (params.discard?.maxDiscardSectors ?? 0) > 0,
        writeZeroes: (params.discard?.maxWriteZeroesSectors ?? 0) > 0,
        recovery: true,
        serverFlags: info.serverFlags,
      });
      const charHandle = await openWhenCreated(`/dev/ublkc${options.devId}`);
      try {
        device = new UblkDevice(control, charHandle, options.devId, config, info.flags, queueServerOf(serve, config.ring));
      } catch (error) {
        await charHandle.close();
        throw error;
      }
      await device.startQueues();
      await control.endUserRecovery(options.devId, process.pid);
      const devt = (await control.getParams(options.devId)).devt;
      if (devt) device.devnoValue = { major: devt.diskMajor, minor: devt.diskMinor };
      return device;
    } catch (error) {
      if (device) {
        await device.stop().catch(() => undefined);
      } else {
        if (started) await control.deleteDevice(options.devId).catch(() => undefined);
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
    private readonly queueServer: QueueServer,
  ) {
    this.charPath = `/dev/ublkc${id}`;
    this.blockPath = `/dev/ublkb${id}`;
  }

  /** Post every queue's FETCHes (START_DEV and END_USER_RECOVERY wait for them). */
  private async startQueues(): Promise<void> {
    const { queues, depth, maxIoBytes } = this.config;
    const submitterCpus: number[][] = [];
    for (let queueId = 0; queueId < queues; queueId++) {
      // Only a placement hint: a device is served as well without it.
      submitterCpus.push(await this.control.getQueueCpus(this.id, queueId).catch(() => []));
    }
    const needGetData = (this.features & UBLK_F_NEED_GET_DATA) !== 0n;
    await this.queueServer.start({ devId: this.id, charFd: this.charHandle.fd, queues, depth, maxIoBytes, needGetData }, submitterCpus);
  }

  get queues(): number {
    return this.config.queues;
  }

  /** Bytes per request buffer the kernel granted. */
  get maxIoBytes(): number {
    return this.config.maxIoBytes;
  }

  /** The mark stored with the device (UblkDeviceOptions.serverFlags). */
  get serverFlags(): bigint {
    return this.config.serverFlags;
  }

  /** What recover() needs, when a later process can reattach if this one dies (user recovery granted). */
  get identity(): UblkDeviceIdentity | undefined {
    if ((this.features & RECOVERY_FEATURES) !== RECOVERY_FEATURES) return undefined;
    const { queues, depth, maxIoBytes, serverFlags } = this.config;
    return { id: this.id, serverFlags, queues, depth, maxIoBytes, features: this.features };
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
    await this.queueServer.retired(ABORT_WAIT_MS).catch(remember);
    await this.queueServer.close().catch(remember);
    await this.charHandle.close().catch(remember);
    await this.control.deleteDevice(this.id).catch(remember);
    await this.control.close().catch(remember);
    if (firstError !== undefined) throw firstError;
  }

}

function queueServerOf(serve: UblkServe, ring: IoRing): QueueServer {
  return typeof serve === 'function' ? new ThreadQueues(ring, serve) : serve;
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
    recovery: options.recovery ?? false,
    serverFlags: options.serverFlags ?? 0n,
    placeWrites: options.placeWrites ?? false,
    ioScheduler: options.ioScheduler ?? DEFAULT_IO_SCHEDULER,
    warn: options.warn ?? (() => {}),
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

function deadlineOf(options: UblkRecoverOptions): number {
  return Date.now() + (options.waitMs ?? RECOVERY_WAIT_MS);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * GET_DEV_INFO until the device is QUIESCED: right after its server died it is still LIVE for
 * as long as the kernel takes to cancel the dead server's commands and requeue its requests.
 */
async function waitUntilRecoverable(control: UblkControl, options: UblkRecoverOptions): Promise<DevInfo> {
  const deadline = deadlineOf(options);
  for (;;) {
    const info = await control.getDeviceInfo(options.devId);
    const what = `ublk device ${options.devId}`;
    if (info.serverFlags !== options.serverFlags) {
      throw new ErrnoError(`${what} is not ours (mark ${info.serverFlags.toString(16)}, expected ${options.serverFlags.toString(16)})`, EINVAL);
    }
    if ((info.flags & RECOVERY_FEATURES) !== RECOVERY_FEATURES) throw new ErrnoError(`${what} was created without user recovery`, EINVAL);
    if (info.state === UblkDevState.Quiesced) return info;
    if (info.state !== UblkDevState.Live) throw new ErrnoError(`${what} is ${UblkDevState[info.state] ?? info.state}, not recoverable`, EINVAL);
    // Our own pid can only be a dead predecessor's that was reused: we serve no device we have not reattached.
    if (info.serverPid !== process.pid && processIsAlive(info.serverPid)) {
      throw new ErrnoError(`${what} is live, served by process ${info.serverPid}`, EBUSY);
    }
    // It takes the kernel well under a second; a device still LIVE by now is wedged.
    if (Date.now() >= deadline) throw new UnquiescedDeviceError(what, info.serverPid);
    await sleep(RECOVERY_POLL_MS);
  }
}

/** START_USER_RECOVERY answers EBUSY until the dead server's char device is released (its ring torn down). */
async function startRecoveryWhenReleased(control: UblkControl, devId: number, deadline: number): Promise<void> {
  for (;;) {
    try {
      await control.startUserRecovery(devId);
      return;
    } catch (error) {
      if ((error as ErrnoError).errno !== EBUSY || Date.now() >= deadline) throw error;
    }
    await sleep(RECOVERY_POLL_MS);
  }
}
