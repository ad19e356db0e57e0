import { Dispatcher } from '../dm/dispatcher';
import type { DispatcherFactory, UblkFactory } from '../dm/mapped-device';
import type { DaemonScope } from '../dm/scope';
import { loadTable } from '../dm/table';
import type { DeviceHandle } from '../dm/target';
import { UblkDevice } from '../ublk/device';
import type { RegistryDeps } from './registry';

/**
 * The collaborators that touch the kernel (real tables over real files, the dispatcher, real
 * ublk devices), wired to one scope. The daemon and the in-process library both use them; unit
 * tests replace them with fakes.
 */
export function kernelCollaborators(scope: DaemonScope): Pick<RegistryDeps, 'scope' | 'buildTable' | 'createDispatcher' | 'createUblk'> {
  const createDispatcher: DispatcherFactory = (table) => new Dispatcher(table, { suspended: true });
  // A ublk request is a Bio: the dispatcher takes it as it comes, no copy, no promise.
  const createUblk: UblkFactory = (options, handler) => UblkDevice.create({ ...options, ring: scope.ring }, handler);
  return {
    scope,
    buildTable: (text: string, device: DeviceHandle) => loadTable(text, { scope, device }),
    createDispatcher,
    createUblk,
  };
}
