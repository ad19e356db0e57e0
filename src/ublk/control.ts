import { promises as fsp } from 'node:fs';

import { ETIMEDOUT, ErrnoError, type IoResult } from '../base/errno';
import { native } from '../io/native';
import { IoRing } from '../io/ring';
import {
  ANY_DEV_ID,
  CPU_SET_BYTES,
  DEV_INFO_BYTES,
  UBLK_U_CMD_ADD_DEV,
  UBLK_U_CMD_DEL_DEV,
  UBLK_U_CMD_END_USER_RECOVERY,
  UBLK_U_CMD_GET_DEV_INFO,
  UBLK_U_CMD_GET_FEATURES,
  UBLK_U_CMD_GET_PARAMS,
  UBLK_U_CMD_GET_QUEUE_AFFINITY,
  UBLK_U_CMD_SET_PARAMS,
  UBLK_U_CMD_START_DEV,
  UBLK_U_CMD_START_USER_RECOVERY,
  UBLK_U_CMD_STOP_DEV,
  decodeCpuSet,
  decodeDevInfo,
  decodeParams,
  encodeCtrlCmd,
  encodeDevInfo,
  encodeParams,
  paramsQueryBuffer,
  type BasicParams,
  type DevInfo,
  type DevInfoRequest,
  type DiscardParams,
  type Params,
} from './abi';

/**
 * UblkControl: the control commands on /dev/ublk-control, over a private SQE128 ring. Every
 * command has a deadline; past it the command is cancelled and the call rejects with
 * ETIMEDOUT. Failures are ErrnoErrors naming the command and the device.
 *
 * The commands of every UblkControl in the process go to the kernel one at a time (the control
 * lane), and a command's deadline runs from the moment it is submitted. The kernel runs each
 * control command on one of a handful of io-wq workers of the submitting task and several of
 * them take global locks (ADD_DEV and DEL_DEV the driver's control mutex; START_DEV adds a disk
 * and reads its partition table through us): ten devices created at once on a slow machine
 * used to queue behind each other inside the kernel while their timers ran, and time out.
 */

export const UBLK_CONTROL_PATH = '/dev/ublk-control';
/**
 * Commands that only take the device's own mutex (GET_*, SET_PARAMS, ADD_DEV, START_USER_RECOVERY)
 * finish in microseconds once submitted; the deadline is only a guard against a wedged kernel.
 */
const DEFAULT_TIMEOUT_MS = 30_000;
/**
 * Commands that wait for I/O we serve or for references to go: START_DEV and END_USER_RECOVERY
 * (all queues fetched, then the partition scan through the server), STOP_DEV (every in-flight
 * request answered, and a backing device may take the block layer's 30 s to fail one), DEL_DEV
 * (every reference to the char device gone).
 */
const WAITING_TIMEOUT_MS = 90_000;
/** After a timed-out command is cancelled, how long the lane waits for its completion before moving on. */
const CANCEL_GRACE_MS = 5_000;
const FEATURES_BYTES = 8;
const BUFFER_ALIGNMENT = 64;

/** @internal One control command at a time per process: a FIFO of commands waiting for the kernel. */
export class ControlLane {
  private tail: Promise<void> = Promise.resolve();

  /** Runs `submit` once every earlier command has completed; `submit` resolves when the lane may move on. */
  run<T>(submit: () => { result: Promise<T>; released: Promise<void> }): Promise<T> {
    let release!: () => void;
    const turn = this.tail;
    this.tail = new Promise<void>((resolve) => (release = resolve));
    return turn.then(() => {
      const { result, released } = submit();
      void released.then(release, release);
      return result;
    });
  }
}

const lane = new ControlLane();

export class UblkControl {
  private closed = false;

  static async open(controlPath: string = UBLK_CONTROL_PATH): Promise<UblkControl> {
    const handle = await fsp.open(controlPath, 'r+');
    try {
      return new UblkControl(handle, IoRing.create({ entries: 16, sqe128: true }));
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  private constructor(
    private readonly handle: fsp.FileHandle,
    private readonly ring: IoRing,
  ) {}

  /** The UBLK_F_* flags this kernel supports (GET_FEATURES, 6.5+). */
  async getFeatures(): Promise<bigint> {
    const buffer = commandBuffer(FEATURES_BYTES);
    await this.command('GET_FEATURES', UBLK_U_CMD_GET_FEATURES, ANY_DEV_ID, buffer);
    return new DataView(buffer.buffer).getBigUint64(0, true);
  }

  /** ADD_DEV; returns what the kernel granted (id, queues, buffer size, negotiated flags). */
  async addDevice(request: DevInfoRequest): Promise<DevInfo> {
    const buffer = encodeDevInfo(request, commandBuffer(DEV_INFO_BYTES));
    await this.command('ADD_DEV', UBLK_U_CMD_ADD_DEV, request.devId, buffer);
    return decodeDevInfo(buffer);
  }

  async setParams(devId: number, params: { basic: BasicParams; discard?: DiscardParams }): Promise<void> {
    const encoded = encodeParams(params);
    const buffer = commandBuffer(encoded.byteLength);
    buffer.set(encoded);
    await this.command('SET_PARAMS', UBLK_U_CMD_SET_PARAMS, devId, buffer);
  }

  /** GET_PARAMS, including devt (the block device's major:minor once started). */
  async getParams(devId: number): Promise<Params> {
    const query = paramsQueryBuffer();
    const buffer = commandBuffer(query.byteLength);
    buffer.set(query);
    await this.command('GET_PARAMS', UBLK_U_CMD_GET_PARAMS, devId, buffer);
    return decodeParams(buffer);
  }

  /**
   * GET_QUEUE_AFFINITY: the CPUs blk-mq sends to queue `queueId` (possible CPUs, online or not),
   * ascending. The device must have been added.
   */
  async getQueueCpus(devId: number, queueId: number): Promise<number[]> {
    const buffer = commandBuffer(CPU_SET_BYTES);
    await this.command('GET_QUEUE_AFFINITY', UBLK_U_CMD_GET_QUEUE_AFFINITY, devId, buffer, BigInt(queueId));
    return decodeCpuSet(buffer);
  }

  async getDeviceInfo(devId: number): Promise<DevInfo> {
    const buffer = commandBuffer(DEV_INFO_BYTES);
    await this.command('GET_DEV_INFO', UBLK_U_CMD_GET_DEV_INFO, devId, buffer);
    return decodeDevInfo(buffer);
  }

  /** START_DEV: resolves once the block device exists; the queues must be serving meanwhile. */
  async startDevice(devId: number, serverPid: number): Promise<void> {
    await this.command('START_DEV', UBLK_U_CMD_START_DEV, devId, undefined, BigInt(serverPid), WAITING_TIMEOUT_MS);
  }

  /** STOP_DEV: removes the block device; in-flight requests must still be served meanwhile. */
  async stopDevice(devId: number): Promise<void> {
    await this.command('STOP_DEV', UBLK_U_CMD_STOP_DEV, devId, undefined, 0n, WAITING_TIMEOUT_MS);
  }

  /** DEL_DEV: waits until every reference to the device (char fd, mmaps, commands) is gone. */
  async deleteDevice(devId: number): Promise<void> {
    await this.command('DEL_DEV', UBLK_U_CMD_DEL_DEV, devId, undefined, 0n, WAITING_TIMEOUT_MS);
  }

  /**
   * START_USER_RECOVERY: a QUIESCED device (its server died) forgets the old server's queues.
   * EBUSY while the dead server's char device is not yet released or the kernel has not yet
   * quiesced the device; EINVAL for a device without USER_RECOVERY or never started.
   */
  async startUserRecovery(devId: number): Promise<void> {
    await this.command('START_USER_RECOVERY', UBLK_U_CMD_START_USER_RECOVERY, devId, undefined);
  }

  /** END_USER_RECOVERY: waits for every queue's FETCHes, then the device is LIVE under `serverPid` and queued I/O flows. */
  async endUserRecovery(devId: number, serverPid: number): Promise<void> {
    await this.command('END_USER_RECOVERY', UBLK_U_CMD_END_USER_RECOVERY, devId, undefined, BigInt(serverPid), WAITING_TIMEOUT_MS);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.ring.close();
    await this.handle.close();
  }

  private async command(
    name: string,
    cmdOp: number,
    devId: number,
    buffer: Uint8Array | undefined,
    data0 = 0n,
    timeoutMs = DEFAULT_TIMEOUT_MS,
  ): Promise<void> {
    if (this.closed) throw new Error(`ublk ${name}: control device is closed`);
    const payload = encodeCtrlCmd({
      devId,
      bufAddress: buffer === undefined ? 0 : native().addressOf(buffer),
      bufByteLength: buffer?.byteLength ?? 0,
      data0,
    });
    const what = devId === ANY_DEV_ID ? `ublk ${name}` : `ublk ${name} (device ${devId})`;
    const result = await lane.run(() => {
      let completed!: () => void;
      const released = new Promise<void>((resolve) => (completed = resolve));
      const result = new Promise<IoResult>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        let token: number;
        try {
          token = this.ring.uringCmdCb(this.handle.fd, cmdOp, payload, buffer, (res) => {
            clearTimeout(timer);
            completed();
            resolve(res);
          });
        } catch (error) {
          completed(); // never submitted: nothing to wait for
          reject(error as Error);
          return;
        }
        timer = setTimeout(() => {
          // The command completes later with -ECANCELED (or -EINTR); the ring holds the buffer until then.
          this.ring.cancelCb(token, () => {});
          setTimeout(completed, CANCEL_GRACE_MS).unref();
          reject(new ErrnoError(`${what} timed out after ${timeoutMs} ms`, ETIMEDOUT));
        }, timeoutMs);
      });
      return { result, released };
    });
    if (result < 0) throw new ErrnoError(what, -result);
  }
}

/** A command buffer outside the V8 heap, so its address stays put while the kernel uses it. */
function commandBuffer(byteLength: number): Uint8Array {
  return new Uint8Array(native().allocAligned(byteLength, BUFFER_ALIGNMENT));
}
