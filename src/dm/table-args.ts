import type { BlockDevice } from '../io/block-device';
import { TargetError, type TargetContext } from './target';
import { SECTOR_BYTES } from '../base/units';

/**
 * Argument helpers shared by the targets' constructors, with the kernel's error strings so a
 * failed load reads the same as it would under dm.
 */

const DECIMAL = /^[0-9]+$/;

/** A decimal number of sectors that fits in a safe integer, or undefined. */
export function parseSectorNumber(text: string): number | undefined {
  if (!DECIMAL.test(text)) return undefined;
  const value = Number(text);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** Throws "Invalid argument count" unless `args` has one of the allowed lengths. */
export function expectArgCount(args: readonly string[], ...allowed: number[]): void {
  if (!allowed.includes(args.length)) throw new TargetError('Invalid argument count');
}

/** A device and the sector where the target's area starts on it. */
export interface DeviceArea {
  readonly device: BlockDevice;
  readonly deviceStartSector: number;
}

/**
 * Parse `<dev> <offset>`, open the device and check that the target's whole area lies on it,
 * in the kernel's order: the sector first ("Invalid device sector"), then the lookup ("Device
 * lookup failed"), then the area (dm-table's device_area_is_invalid). The device belongs to the
 * table (see TargetContext.openDevice), so a failure here leaves nothing for the target to close.
 */
export async function openDeviceArea(ctx: TargetContext, deviceSpec: string, offsetText: string): Promise<DeviceArea> {
  const deviceStartSector = parseSectorNumber(offsetText);
  if (deviceStartSector === undefined) throw new TargetError('Invalid device sector');

  const device = await lookupDevice(ctx, deviceSpec);
  checkDeviceArea(device, ctx, deviceStartSector);
  return { device, deviceStartSector };
}

/**
 * Open a table's device, failing with the target's message (the kernel's ti->error, default
 * "Device lookup failed") followed by why, since we have no dmesg to send the reason to.
 */
export async function lookupDevice(ctx: TargetContext, deviceSpec: string, error = 'Device lookup failed'): Promise<BlockDevice> {
  try {
    return await ctx.openDevice(deviceSpec);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    throw new TargetError(`${error}: ${reason}`, { cause });
  }
}

/**
 * The area must fit in the device and be aligned to its logical block size. It is as long as
 * the segment unless the target spreads the segment over several devices (striped).
 */
export function checkDeviceArea(device: BlockDevice, ctx: TargetContext, deviceStartSector: number, areaSectors = ctx.lengthSectors): void {
  const areaEndSector = deviceStartSector + areaSectors;
  if (areaEndSector > device.sizeSectors) {
    throw new TargetError(
      `Device too small for target: ${device.tableName} start=${deviceStartSector}, ` +
        `len=${areaSectors}, dev_size=${device.sizeSectors}`,
    );
  }
  const blockSectors = device.logicalBlockBytes / SECTOR_BYTES;
  const misaligned: Array<[string, number]> = [
    ['start', deviceStartSector],
    ['len', areaSectors],
    ['table start', ctx.startSector],
  ];
  for (const [what, sectors] of misaligned) {
    if (sectors % blockSectors !== 0) {
      throw new TargetError(
        `${what}=${sectors} not aligned to h/w logical block size ${device.logicalBlockBytes} of ${device.tableName}`,
      );
    }
  }
}
