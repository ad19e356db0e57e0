import { promises as fsp } from 'node:fs';

import { EBUSY, EEXIST, ENODEV, ErrnoError } from '../base/errno';
import { UblkDevState, type DevInfo } from './abi';
import { UblkControl } from './control';

/**
 * The ublk devices the kernel holds, whoever made them: ids from sysfs (every device has a
 * char device, /sys/class/ublk-char/ublkcN, from ADD_DEV to DEL_DEV), and what GET_DEV_INFO
 * says of each. What to do with them is the caller's business.
 */

const SYSFS_CLASS = '/sys/class/ublk-char';
const DEV_DIR = '/dev';
const CHAR_NAME = /^ublkc(\d+)$/;

/** Ids of the ublk devices that exist now, ascending. */
export async function ublkDeviceIds(): Promise<number[]> {
  const names = await fsp.readdir(SYSFS_CLASS).catch(async () => fsp.readdir(DEV_DIR));
  return names
    .map((name) => CHAR_NAME.exec(name)?.[1])
    .filter((id): id is string => id !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
}

/** GET_DEV_INFO of every device; one deleted meanwhile is left out. */
export async function listUblkDevices(): Promise<DevInfo[]> {
  const control = await UblkControl.open();
  try {
    const infos: DevInfo[] = [];
    for (const id of await ublkDeviceIds()) {
      try {
        infos.push(await control.getDeviceInfo(id));
      } catch (error) {
        if ((error as ErrnoError).errno !== ENODEV) throw error;
      }
    }
    return infos;
  } finally {
    await control.close();
  }
}

/**
 * STOP_DEV then DEL_DEV of a device nobody serves (a dead server's leftover): with no server,
 * STOP_DEV fails whatever I/O the kernel queued for it. Gone already is not an error. The
 * device is looked at first and left alone unless it still carries `serverFlags`: ids are
 * reused, and the one listed a moment ago may since have been deleted and its id handed to a
 * new device of someone else.
 */
export async function deleteUblkDevice(devId: number, serverFlags: bigint): Promise<void> {
  const control = await UblkControl.open();
  try {
    const info = await control.getDeviceInfo(devId);
    if (info.serverFlags !== serverFlags) {
      throw new ErrnoError(`ublk device ${devId} now carries mark ${info.serverFlags.toString(16)}, not ${serverFlags.toString(16)}: another device took its id; left alone`, EEXIST);
    }
    if (info.state === UblkDevState.Live && !(await quiescesSoon(control, devId))) {
      // STOP_DEV of a LIVE device quiesces it first and waits, holding the device's mutex, until
      // no request is in flight: on a device whose requests the kernel never took back from
      // its dead server, that is forever (6.12), and every later command on it waits too.
      throw new ErrnoError(`ublk device ${devId}: its server ${info.serverPid} is gone but the kernel has not quiesced it; STOP_DEV would block until it does: left alone`, EBUSY);
    }
    await control.stopDevice(devId);
    await control.deleteDevice(devId);
  } catch (error) {
    if ((error as ErrnoError).errno !== ENODEV) throw error;
  } finally {
    await control.close();
  }
}

/** A dead server's device is LIVE only until the kernel cancels its commands: give that a moment. */
const QUIESCE_GRACE_MS = 3_000;
const QUIESCE_POLL_MS = 50;

async function quiescesSoon(control: UblkControl, devId: number): Promise<boolean> {
  const deadline = Date.now() + QUIESCE_GRACE_MS;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, QUIESCE_POLL_MS));
    if ((await control.getDeviceInfo(devId)).state !== UblkDevState.Live) return true;
  }
  return false;
}
