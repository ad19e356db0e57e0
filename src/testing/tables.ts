import type { IoResult } from '../base/errno';
import type { Bio } from '../io/bio';
import { DeviceEvents } from '../dm/mapped-device';
import { DaemonScope } from '../dm/scope';
import { buildTable, parseTableText, type DeviceOpener, type Table } from '../dm/table';
import type { DeviceHandle, RebuiltTable, TargetType } from '../dm/target';
import { builtInTargetTypes } from '../targets';
import { memoryDeviceOpener, type MemoryDevice } from './memory-device';

/**
 * Tables over in-process devices, for host tests of a target: no native addon, no ublk.
 *
 *   const disk = new MemoryDevice(2048);
 *   const table = await loadMemoryTable('0 2048 mytarget disk 0', { disk }, { types: [myTargetType] });
 */

export interface MemoryTableOptions {
  /** Target types besides the built-in ones. */
  readonly types?: readonly TargetType[];
  /** Default: a fresh scope holding the built-in types and `types`. */
  readonly scope?: DaemonScope;
  /** Default: a device named "test". */
  readonly device?: DeviceHandle;
  /** Default: the `devices` by name. */
  readonly openDevice?: DeviceOpener;
  /** Build it as a new daemon rebuilds a saved table (TargetContext.rebuilt). Default: a new table. */
  readonly rebuilt?: RebuiltTable;
}

/** A scope with the built-in target types and `types`: what a daemon's scope would hold. */
export function testScope(types: readonly TargetType[] = []): DaemonScope {
  return new DaemonScope({ targetTypes: [...builtInTargetTypes, ...types] });
}

/** Parse and build `text`, opening devices by name from `devices`. */
export function loadMemoryTable(
  text: string,
  devices: Readonly<Record<string, MemoryDevice>>,
  options: MemoryTableOptions = {},
): Promise<Table> {
  return buildTable(parseTableText(text), {
    scope: options.scope ?? testScope(options.types),
    device: options.device ?? new DeviceEvents('test'),
    openDevice: options.openDevice ?? memoryDeviceOpener(devices),
    ...(options.rebuilt ? { rebuilt: options.rebuilt } : {}),
  });
}

/** The promise form of a callback-style submit (a Dispatcher's, a target's map): for tests. */
export function submitted<R = IoResult>(submit: (bio: Bio, done: (result: R) => void) => void, bio: Bio): Promise<R> {
  return new Promise((resolve) => submit(bio, resolve));
}
