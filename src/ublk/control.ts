import { promises as fsp } from 'node:fs';

import { ETIMEDOUT, ErrnoError, type IoResult } from '../base/errno';
import { native } from '../io/native';
import { IoRing } from '../io/ring';
import {
  ANY_DEV_ID,
  DEV_INFO_BYTES,
  UBLK_U_CMD_ADD_DEV,
  UBLK_U_CMD_DEL_DEV,
  UBLK_U_CMD_GET_DEV_INFO,
  UBLK_U_CMD_GET_FEATURES,
  UBLK_U_CMD_GET_PARAMS,
  UBLK_U_CMD_SET_PARAMS,
  UBLK_U_CMD_START_DEV,
  UBLK_U_CMD_STOP_DEV,
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
 */

export const UBLK_CONTROL_PATH = '/dev/ublk-control';
const DEFAULT_TIMEOUT_MS = 10_000;
/** START_DEV waits for the queues and reads the partition table through the server. */
const START_TIMEOUT_MS = 30_000;
const FEATURES_BYTES = 8;
const BUFFER_ALIGNMENT = 64;

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

  async getDeviceInfo(devId: number): Promise<DevInfo> {
    const buffer = commandBuffer(DEV_INFO_BYTES);
    await this.command('GET_DEV_INFO', UBLK_U_CMD_GET_DEV_INFO, devId, buffer);
    return decodeDevInfo(buffer);
  }

  /** START_DEV: resolves once the block device exists; the queues must be serving meanwhile. */
  async startDevice(devId: number, serverPid: number): Promise<void> {
    await this.command('START_DEV', UBLK_U_CMD_START_DEV, devId, undefined, BigInt(serverPid), START_TIMEOUT_MS);
  }

  /** STOP_DEV: removes the block device; in-flight requests must still be served meanwhile. */
  async stopDevice(devId: number): Promise<void> {
    await this.command('STOP_DEV', UBLK_U_CMD_STOP_DEV, devId, undefined);
  }

  /** DEL_DEV: waits until every reference to the device (char fd, mmaps, commands) is gone. */
  async deleteDevice(devId: number): Promise<void> {
    await this.command('DEL_DEV', UBLK_U_CMD_DEL_DEV, devId, undefined);
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
    const result = await new Promise<IoResult>((resolve, reject) => {
      const token = this.ring.uringCmdCb(this.handle.fd, cmdOp, payload, buffer, (res) => {
        clearTimeout(timer);
        resolve(res);
      });
      const timer = setTimeout(() => {
        // The command completes later with -ECANCELED (or -EINTR); the ring holds the buffer until then.
        this.ring.cancelCb(token, () => {});
        reject(new ErrnoError(`${what} timed out after ${timeoutMs} ms`, ETIMEDOUT));
      }, timeoutMs);
    });
    if (result < 0) throw new ErrnoError(what, -result);
  }
}

/** A command buffer outside the V8 heap, so its address stays put while the kernel uses it. */
function commandBuffer(byteLength: number): Uint8Array {
  return new Uint8Array(native().allocAligned(byteLength, BUFFER_ALIGNMENT));
}
