import { randomBytes } from 'node:crypto';

/**
 * Which kernel ublk devices are ours. Every device the daemon makes carries a 64-bit mark that
 * the kernel keeps for it (ublksrv_flags): the high 32 bits name the installation (its state
 * directory: one daemon per directory), the low 32 bits the device. A later daemon reattaches
 * only to a device whose mark is the saved one, and deletes only dead devices with its
 * installation's mark: devices of other ublk servers, or of daemons over other state
 * directories, are never touched.
 */

/** FNV-1a of the state directory, never 0 (0 is what unmarked devices carry). */
export function installationMark(stateDir: string): number {
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(stateDir, 'utf8')) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash === 0 ? 1 : hash;
}

/** A fresh device mark under `installation`. */
export function newDeviceMark(installation: number): bigint {
  const device = randomBytes(4).readUInt32LE(0);
  return (BigInt(installation) << 32n) | BigInt(device);
}

export function isMarkedBy(serverFlags: bigint, installation: number): boolean {
  return serverFlags >> 32n === BigInt(installation);
}
