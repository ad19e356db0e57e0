import { promises as fsp } from 'node:fs';

import { Dispatcher, servesInPlace } from '../dm/dispatcher';
import type { DispatcherFactory, UblkFactory } from '../dm/mapped-device';
import type { DaemonScope } from '../dm/scope';
import { loadTable } from '../dm/table';
import type { DeviceHandle, RebuiltTable } from '../dm/target';
import { UblkDevice } from '../ublk/device';
import type { KernelUblkDevice, RecoveryDeps, RegistryDeps } from './registry';
import { UblkDevState } from '../ublk/abi';
import { deleteUblkDevice, listUblkDevices } from '../ublk/inventory';
import { processIsAlive } from '../ublk/processes';
import { UNUSED, procUsageProbe } from './usage';
import { QUEUE_THREADS, ThreadedDispatcher, isServedByQueueThreads, queueLoopFromEnvironment, type QueueLoop } from './queue-threads';

/**
 * The collaborators that touch the kernel (real tables over real files, the dispatcher, real
 * ublk devices), wired to one scope. The daemon and the in-process library both use them; unit
 * tests replace them with fakes.
 */
export function kernelCollaborators(
  scope: DaemonScope,
  queueLoop: QueueLoop = queueLoopFromEnvironment(),
): Pick<RegistryDeps, 'scope' | 'buildTable' | 'createDispatcher' | 'createUblk'> {
  // A table that keeps one instance of its state (snapshot, mirror, delay...) is served where
  // that state lives, the daemon thread, from the start: queue threads would forward each of its
  // requests there and back, which cost 7 times the IOPS at QD 32 (a flakey and a striped over
  // tmpfs files in the guest: 2.1-2.8k forwarded, 16-19k served here). striped's and flakey's
  // views serve all but failed I/O on the queue threads, so their tables go there. A device that is
  // reloaded from such a table to a stateless one stays here; one reloaded the other way, from
  // queue threads, forwards what their copies cannot serve (its queues stay with the threads
  // that fetched them); a snapshot-origin's copy there serves reads and the writes that copy
  // nothing out (origin-view.ts).
  const createDispatcher: DispatcherFactory = (table) =>
    queueLoop === 'threads' && isServedByQueueThreads(table)
      ? new ThreadedDispatcher(table, scope.get(QUEUE_THREADS))
      : new Dispatcher(table, { suspended: true });
  const createUblk: UblkFactory = ({ recoverFrom, ...options }, handler, dispatcher) => {
    // A ublk request is a Bio: the dispatcher takes it as it comes, no copy, no promise; or the
    // queue threads serve it, with the dispatcher here for what they forward.
    const serve = dispatcher instanceof ThreadedDispatcher ? dispatcher.queueServer(options.sizeSectors) : handler;
    // Writes come without their data where queue threads can place them in the device (a
    // linear, striped or flakey over tmpfs files); elsewhere the extra command per write would buy nothing.
    const placeWrites = dispatcher instanceof ThreadedDispatcher && isServedByQueueThreads(dispatcher.main.table) && servesInPlace(dispatcher.main.table);
    return recoverFrom !== undefined
      ? UblkDevice.recover(
          { ring: scope.ring, devId: recoverFrom.id, serverFlags: recoverFrom.serverFlags, sizeSectors: options.sizeSectors },
          serve,
        )
      : UblkDevice.create({ ...options, ring: scope.ring, placeWrites, warn: scope.warn }, serve);
  };
  return {
    scope,
    buildTable: (text: string, device: DeviceHandle, rebuilt?: RebuiltTable) =>
      loadTable(text, { scope, device, ...(rebuilt ? { rebuilt } : {}) }),
    createDispatcher,
    createUblk,
  };
}

const STATE_NAMES: Record<UblkDevState, KernelUblkDevice['state']> = {
  [UblkDevState.Dead]: 'dead',
  [UblkDevState.Live]: 'live',
  [UblkDevState.Quiesced]: 'quiesced',
  [UblkDevState.FailIo]: 'fail-io',
};

/** The kernel side of recovery: the ublk devices that exist, and deleting a dead one. */
export function kernelRecovery(installation: number, enabled: boolean): RecoveryDeps {
  return {
    installation,
    enabled,
    listKernelDevices: async () =>
      (await listUblkDevices()).map((info) => ({
        id: info.devId,
        state: STATE_NAMES[info.state as UblkDevState] ?? 'dead',
        serverPid: info.serverPid,
        serverFlags: info.serverFlags,
      })),
    deleteKernelDevice: deleteUblkDevice,
    processIsAlive,
    usageOf: async (id) => {
      const blockPath = `/dev/ublkb${id}`;
      const devno = await blockDevno(id);
      return devno === undefined ? UNUSED : probeUsage(blockPath, devno);
    },
  };
}

const probeUsage = procUsageProbe();

/** major:minor of /dev/ublkbN from sysfs (no open), or undefined when it has no block device. */
async function blockDevno(id: number): Promise<{ major: number; minor: number } | undefined> {
  try {
    const [major, minor] = (await fsp.readFile(`/sys/block/ublkb${id}/dev`, 'utf8')).trim().split(':').map(Number);
    return Number.isInteger(major) && Number.isInteger(minor) ? { major: major!, minor: minor! } : undefined;
  } catch {
    return undefined;
  }
}
