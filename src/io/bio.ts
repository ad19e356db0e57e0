import type { IoResult } from '../base/errno';

/**
 * The one request shape of the data path, from the ublk descriptor to the target and the
 * backing device: what the kernel calls a bio, cut down to what ublk can carry. The ublk layer
 * makes them, the dispatcher splits them (a piece is a Bio too, its `data` a view of the
 * request's buffer), targets map them.
 */

/** Request operations, numbered as ublk numbers them (UBLK_IO_OP_*). */
export enum IoOp {
  Read = 0,
  Write = 1,
  Flush = 2,
  Discard = 3,
  WriteZeroes = 5,
}

export interface Bio {
  readonly op: IoOp;
  /** First sector: device-relative on the way in, target-relative once the dispatcher mapped it. */
  readonly sector: number;
  /** Length in 512-byte sectors (0 for Flush). */
  readonly sectorCount: number;
  /**
   * Read (to fill) and Write (to send): exactly sectorCount * 512 bytes, a view of the request's
   * buffer, never a copy. Empty for Flush, Discard and WriteZeroes.
   *
   * The request path reads its size as `data.length`: on a Uint8Array that is the byte length,
   * and Node 20's optimizing compiler inlines it, while `byteLength` (and `byteOffset`, and
   * `buffer`) stay calls into V8's builtins, several times dearer and more so under TCG.
   */
  readonly data: Uint8Array;
  /** Write with Forced Unit Access: stable on the backing device before completion. */
  readonly fua: boolean;
  /** WriteZeroes must not deallocate (REQ_NOUNMAP). */
  readonly noUnmap: boolean;
}

/**
 * A request that may be answered in place (the ublk layer's): a dispatcher serving in place sets
 * `inPlaceAddress` when it answers a read from a device's own bytes (Target.inPlaceAddress), and
 * ublk then copies the data from that address instead of from `data`. 0: from `data`.
 */
export interface InPlaceBio extends Bio {
  inPlaceAddress: number;
}

/** Completes one request: bytes moved (Read/Write) or 0, or -errno. Called exactly once. */
export type IoDone = (result: IoResult) => void;

export const NO_DATA: Uint8Array = new Uint8Array(0);

export function carriesData(op: IoOp): boolean {
  return op === IoOp.Read || op === IoOp.Write;
}
