/**
 * The ublk kernel ABI (include/uapi/linux/ublk_cmd.h; /work/shared/spec/ublk.md): command
 * numbers, flags, and pure encoders/decoders for every structure we exchange. All structures
 * are little-endian native C structs; offsets are the spec's.
 */
import { PAGE_BYTES } from '../base/units';

// ---- ioctl-style command encoding (§3) -------------------------------------------------------

const IOC_WRITE = 1;
const IOC_READ = 2;
const UBLK_IOC_TYPE = 0x75; // 'u'

function ioc(direction: number, nr: number, structBytes: number): number {
  // >>> 0 keeps the result an unsigned 32-bit number (direction bits reach bit 31).
  return ((direction << 30) | (structBytes << 16) | (UBLK_IOC_TYPE << 8) | nr) >>> 0;
}

export const CTRL_CMD_BYTES = 32;
export const IO_CMD_BYTES = 16;

const ior = (nr: number): number => ioc(IOC_READ, nr, CTRL_CMD_BYTES);
const iowr = (nr: number): number => ioc(IOC_READ | IOC_WRITE, nr, CTRL_CMD_BYTES);

/** Control commands (sent to /dev/ublk-control on an SQE128 ring). */
export const UBLK_U_CMD_GET_QUEUE_AFFINITY = ior(0x01);
export const UBLK_U_CMD_GET_DEV_INFO = ior(0x02);
export const UBLK_U_CMD_ADD_DEV = iowr(0x04);
export const UBLK_U_CMD_DEL_DEV = iowr(0x05);
export const UBLK_U_CMD_START_DEV = iowr(0x06);
export const UBLK_U_CMD_STOP_DEV = iowr(0x07);
export const UBLK_U_CMD_SET_PARAMS = iowr(0x08);
export const UBLK_U_CMD_GET_PARAMS = ior(0x09);
export const UBLK_U_CMD_START_USER_RECOVERY = iowr(0x10);
export const UBLK_U_CMD_END_USER_RECOVERY = iowr(0x11);
export const UBLK_U_CMD_GET_FEATURES = ior(0x13);

/** I/O commands (sent to /dev/ublkcN). */
export const UBLK_U_IO_FETCH_REQ = ioc(IOC_READ | IOC_WRITE, 0x20, IO_CMD_BYTES);
export const UBLK_U_IO_COMMIT_AND_FETCH_REQ = ioc(IOC_READ | IOC_WRITE, 0x21, IO_CMD_BYTES);
export const UBLK_U_IO_NEED_GET_DATA = ioc(IOC_READ | IOC_WRITE, 0x22, IO_CMD_BYTES);

/** I/O command CQE results (§7.3). */
export const UBLK_IO_RES_OK = 0;
export const UBLK_IO_RES_NEED_GET_DATA = 1;
// UBLK_IO_RES_ABORT is -ENODEV.

// ---- feature flags (§9) -----------------------------------------------------------------------

export const UBLK_F_SUPPORT_ZERO_COPY = 1n << 0n;
export const UBLK_F_URING_CMD_COMP_IN_TASK = 1n << 1n;
export const UBLK_F_NEED_GET_DATA = 1n << 2n;
export const UBLK_F_USER_RECOVERY = 1n << 3n;
export const UBLK_F_USER_RECOVERY_REISSUE = 1n << 4n;
export const UBLK_F_UNPRIVILEGED_DEV = 1n << 5n;
export const UBLK_F_CMD_IOCTL_ENCODE = 1n << 6n;
export const UBLK_F_USER_COPY = 1n << 7n;
export const UBLK_F_ZONED = 1n << 8n;

// ---- device states (§1) -----------------------------------------------------------------------

export enum UblkDevState {
  Dead = 0,
  Live = 1,
  Quiesced = 2,
  FailIo = 3,
}

// ---- ublksrv_ctrl_cmd (§4.1, 32 bytes) --------------------------------------------------------

export const ANY_DEV_ID = 0xffffffff;
export const NO_QUEUE_ID = 0xffff;

export interface CtrlCmd {
  devId: number;
  /** NO_QUEUE_ID unless a command says otherwise (ADD_DEV requires it). */
  queueId?: number;
  /** Address and length of the in/out buffer, if the command has one. */
  bufAddress?: number;
  bufByteLength?: number;
  /** data[0]: the pid for START_DEV. */
  data0?: bigint;
}

export function encodeCtrlCmd(cmd: CtrlCmd): Uint8Array {
  const bytes = new Uint8Array(CTRL_CMD_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, cmd.devId, true);
  view.setUint16(4, cmd.queueId ?? NO_QUEUE_ID, true);
  view.setUint16(6, cmd.bufByteLength ?? 0, true);
  view.setBigUint64(8, BigInt(cmd.bufAddress ?? 0), true);
  view.setBigUint64(16, cmd.data0 ?? 0n, true);
  // dev_path_len @24, pad @26, reserved @28: zero (privileged devices only).
  return bytes;
}

// ---- ublksrv_ctrl_dev_info (§4.2, 64 bytes) ---------------------------------------------------

export const DEV_INFO_BYTES = 64;

export interface DevInfoRequest {
  queues: number;
  depth: number;
  maxIoBufBytes: number;
  devId: number;
  flags: bigint;
  /** Opaque to the kernel, stored and returned by GET_DEV_INFO: the server's own mark. Default 0. */
  serverFlags?: bigint;
}

export interface DevInfo {
  queues: number;
  depth: number;
  state: UblkDevState;
  maxIoBufBytes: number;
  devId: number;
  serverPid: number;
  flags: bigint;
  /** ublksrv_flags: what the creating server stored (DevInfoRequest.serverFlags). */
  serverFlags: bigint;
  ownerUid: number;
  ownerGid: number;
}

export function encodeDevInfo(request: DevInfoRequest, into: Uint8Array = new Uint8Array(DEV_INFO_BYTES)): Uint8Array {
  into.fill(0, 0, DEV_INFO_BYTES);
  const view = dataView(into);
  view.setUint16(0, request.queues, true);
  view.setUint16(2, request.depth, true);
  view.setUint32(8, request.maxIoBufBytes, true);
  view.setUint32(12, request.devId, true);
  view.setBigUint64(24, request.flags, true);
  view.setBigUint64(32, request.serverFlags ?? 0n, true);
  return into;
}

/**
 * GET_QUEUE_AFFINITY's buffer: a CPU bitmap of native longs (little-endian here). 128 bytes is
 * glibc's cpu_set_t, 1024 CPUs; the kernel wants at least nr_cpu_ids bits, in multiples of 8 bytes.
 */
export const CPU_SET_BYTES = 128;

/** The CPUs set in a GET_QUEUE_AFFINITY bitmap, ascending. */
export function decodeCpuSet(bitmap: Uint8Array): number[] {
  const cpus: number[] = [];
  for (let byte = 0; byte < bitmap.length; byte++) {
    const bits = bitmap[byte]!;
    for (let bit = 0; bit < 8; bit++) if ((bits >> bit) & 1) cpus.push(byte * 8 + bit);
  }
  return cpus;
}

export function decodeDevInfo(bytes: Uint8Array): DevInfo {
  const view = dataView(bytes);
  return {
    queues: view.getUint16(0, true),
    depth: view.getUint16(2, true),
    state: view.getUint16(4, true),
    maxIoBufBytes: view.getUint32(8, true),
    devId: view.getUint32(12, true),
    serverPid: view.getInt32(16, true),
    flags: view.getBigUint64(24, true),
    serverFlags: view.getBigUint64(32, true),
    ownerUid: view.getUint32(40, true),
    ownerGid: view.getUint32(44, true),
  };
}

// ---- ublk_params (§4.3) -----------------------------------------------------------------------

export const UBLK_PARAM_TYPE_BASIC = 1 << 0;
export const UBLK_PARAM_TYPE_DISCARD = 1 << 1;
export const UBLK_PARAM_TYPE_DEVT = 1 << 2;

export const UBLK_ATTR_READ_ONLY = 1 << 0;
export const UBLK_ATTR_ROTATIONAL = 1 << 1;
export const UBLK_ATTR_VOLATILE_CACHE = 1 << 2;
export const UBLK_ATTR_FUA = 1 << 3;

const BASIC_OFFSET = 8;
const DISCARD_OFFSET = 40;
const DEVT_OFFSET = 60;
/** header + basic + discard, padded to 8. */
export const PARAMS_BASIC_DISCARD_BYTES = 64;
/** header + basic + discard + devt (what GET_PARAMS needs to return devt). */
export const PARAMS_THROUGH_DEVT_BYTES = 80;

export interface BasicParams {
  attrs: number;
  logicalBlockShift: number;
  physicalBlockShift: number;
  ioOptShift: number;
  ioMinShift: number;
  maxSectors: number;
  chunkSectors: number;
  devSectors: number;
  virtBoundaryMask: bigint;
}

export interface DiscardParams {
  discardAlignment: number;
  discardGranularity: number;
  maxDiscardSectors: number;
  maxWriteZeroesSectors: number;
  maxDiscardSegments: number;
}

export interface DevtParams {
  charMajor: number;
  charMinor: number;
  diskMajor: number;
  diskMinor: number;
}

export interface Params {
  basic?: BasicParams;
  discard?: DiscardParams;
  devt?: DevtParams;
}

/** SET_PARAMS buffer with basic (required) and optional discard parts. */
export function encodeParams(params: { basic: BasicParams; discard?: DiscardParams }): Uint8Array {
  const bytes = new Uint8Array(PARAMS_BASIC_DISCARD_BYTES);
  const view = dataView(bytes);
  let types = UBLK_PARAM_TYPE_BASIC;
  view.setUint32(0, PARAMS_BASIC_DISCARD_BYTES, true);
  const basic = params.basic;
  view.setUint32(BASIC_OFFSET + 0, basic.attrs, true);
  view.setUint8(BASIC_OFFSET + 4, basic.logicalBlockShift);
  view.setUint8(BASIC_OFFSET + 5, basic.physicalBlockShift);
  view.setUint8(BASIC_OFFSET + 6, basic.ioOptShift);
  view.setUint8(BASIC_OFFSET + 7, basic.ioMinShift);
  view.setUint32(BASIC_OFFSET + 8, basic.maxSectors, true);
  view.setUint32(BASIC_OFFSET + 12, basic.chunkSectors, true);
  view.setBigUint64(BASIC_OFFSET + 16, BigInt(basic.devSectors), true);
  view.setBigUint64(BASIC_OFFSET + 24, basic.virtBoundaryMask, true);
  if (params.discard) {
    types |= UBLK_PARAM_TYPE_DISCARD;
    const discard = params.discard;
    view.setUint32(DISCARD_OFFSET + 0, discard.discardAlignment, true);
    view.setUint32(DISCARD_OFFSET + 4, discard.discardGranularity, true);
    view.setUint32(DISCARD_OFFSET + 8, discard.maxDiscardSectors, true);
    view.setUint32(DISCARD_OFFSET + 12, discard.maxWriteZeroesSectors, true);
    view.setUint16(DISCARD_OFFSET + 16, discard.maxDiscardSegments, true);
  }
  view.setUint32(4, types, true);
  return bytes;
}

/** An empty GET_PARAMS buffer: only the header's len is set, asking for everything through devt. */
export function paramsQueryBuffer(): Uint8Array {
  const bytes = new Uint8Array(PARAMS_THROUGH_DEVT_BYTES);
  dataView(bytes).setUint32(0, PARAMS_THROUGH_DEVT_BYTES, true);
  return bytes;
}

/** The parts present in a GET_PARAMS answer (by its `types` bits). */
export function decodeParams(bytes: Uint8Array): Params {
  const view = dataView(bytes);
  const types = view.getUint32(4, true);
  const params: Params = {};
  if (types & UBLK_PARAM_TYPE_BASIC) {
    params.basic = {
      attrs: view.getUint32(BASIC_OFFSET + 0, true),
      logicalBlockShift: view.getUint8(BASIC_OFFSET + 4),
      physicalBlockShift: view.getUint8(BASIC_OFFSET + 5),
      ioOptShift: view.getUint8(BASIC_OFFSET + 6),
      ioMinShift: view.getUint8(BASIC_OFFSET + 7),
      maxSectors: view.getUint32(BASIC_OFFSET + 8, true),
      chunkSectors: view.getUint32(BASIC_OFFSET + 12, true),
      devSectors: Number(view.getBigUint64(BASIC_OFFSET + 16, true)),
      virtBoundaryMask: view.getBigUint64(BASIC_OFFSET + 24, true),
    };
  }
  if (types & UBLK_PARAM_TYPE_DISCARD) {
    params.discard = {
      discardAlignment: view.getUint32(DISCARD_OFFSET + 0, true),
      discardGranularity: view.getUint32(DISCARD_OFFSET + 4, true),
      maxDiscardSectors: view.getUint32(DISCARD_OFFSET + 8, true),
      maxWriteZeroesSectors: view.getUint32(DISCARD_OFFSET + 12, true),
      maxDiscardSegments: view.getUint16(DISCARD_OFFSET + 16, true),
    };
  }
  if (types & UBLK_PARAM_TYPE_DEVT && bytes.byteLength >= PARAMS_THROUGH_DEVT_BYTES) {
    params.devt = {
      charMajor: view.getUint32(DEVT_OFFSET + 0, true),
      charMinor: view.getUint32(DEVT_OFFSET + 4, true),
      diskMajor: view.getUint32(DEVT_OFFSET + 8, true),
      diskMinor: view.getUint32(DEVT_OFFSET + 12, true),
    };
  }
  return params;
}

// ---- ublksrv_io_desc (§4.4, 24 bytes each, in the per-queue mmap) ----------------------------

export const IO_DESC_BYTES = 24;
const IO_DESC_WORDS = IO_DESC_BYTES / 4;
const MAX_QUEUE_DEPTH = 4096;

export const UBLK_IO_OP_READ = 0;
export const UBLK_IO_OP_WRITE = 1;
export const UBLK_IO_OP_FLUSH = 2;
export const UBLK_IO_OP_DISCARD = 3;
export const UBLK_IO_OP_WRITE_SAME = 4;
export const UBLK_IO_OP_WRITE_ZEROES = 5;

export const UBLK_IO_F_FUA = 1 << 13;
export const UBLK_IO_F_NOUNMAP = 1 << 15;

export interface IoDesc {
  /** UBLK_IO_OP_* (bits 0–7 of op_flags). */
  op: number;
  /** UBLK_IO_F_* (op_flags with the op byte cleared). */
  flags: number;
  sectorCount: number;
  sector: number;
  bufAddress: number;
}

/**
 * Decode descriptor `tag` from a queue's mapping seen as 32-bit words (the hot path reads the
 * mapping through one Uint32Array; sectors stay exact as doubles up to 2^53).
 */
export function decodeIoDesc(words: Uint32Array, tag: number): IoDesc {
  return decodeIoDescInto(words, tag, { op: 0, flags: 0, sectorCount: 0, sector: 0, bufAddress: 0 });
}

/** decodeIoDesc into an object the caller keeps: the request path decodes one per request and allocates none. */
export function decodeIoDescInto(words: Uint32Array, tag: number, into: IoDesc): IoDesc {
  const base = tag * IO_DESC_WORDS;
  const opFlags = words[base];
  into.op = opFlags & 0xff;
  into.flags = opFlags & ~0xff;
  into.sectorCount = words[base + 1];
  into.sector = words[base + 2] + words[base + 3] * 2 ** 32;
  into.bufAddress = words[base + 4] + words[base + 5] * 2 ** 32;
  return into;
}

/** mmap offset of queue `queueId`'s descriptor array (§6.1). */
export function descriptorMmapByteOffset(queueId: number): number {
  return queueId * roundUpToPage(MAX_QUEUE_DEPTH * IO_DESC_BYTES);
}

/** mmap length of one queue's descriptor array: exactly this or the kernel says EINVAL. */
export function descriptorMmapByteLength(depth: number): number {
  return roundUpToPage(depth * IO_DESC_BYTES);
}

function roundUpToPage(byteLength: number): number {
  return Math.ceil(byteLength / PAGE_BYTES) * PAGE_BYTES;
}

function dataView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
