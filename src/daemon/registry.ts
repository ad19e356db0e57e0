import {
  DeviceError,
  DeviceEvents,
  MappedDevice,
  type DeviceTable,
  type DispatcherFactory,
  type UblkCreateOptions,
  type UblkFactory,
} from '../dm/mapped-device';
import { isMarkedBy, newDeviceMark } from './ownership';
import type { DaemonScope } from '../dm/scope';
import type { DeviceKey } from '../io/block-device';
import type { DeviceHandle, RebuiltTable, SuspendOptions } from '../dm/target';
import type { DeviceLinks } from './links';
import type { Logger } from '../base/log';
import type { CreatedDevice, DeviceInfo, DeviceListEntry, DeviceOptions, FailedDevice, ParameterSetting, ShutdownReport, TableReport } from '../wire/protocol';
import type { DeviceStore, LowerDevice, SavedDevice } from './store';
import { parseTableText } from '../dm/table';
import { randomUUID } from 'node:crypto';
import * as path from 'node:path';
import type { StatusKind } from '../dm/target';
import { UNUSED, busyReason, openCount, type DeviceUsage, type UsageProbe } from './usage';
import { UnquiescedDeviceError } from '../ublk/unquiesced';

/** Everything the registry needs from the outside world; tests pass fakes for the kernel parts. */
export interface RegistryDeps {
  /** Parse and construct a table for `device` (dm/table.ts); throws with the offending line named. */
  readonly buildTable: (text: string, device: DeviceHandle, rebuilt?: RebuiltTable) => Promise<DeviceTable>;
  /** Where running devices are made findable by key, for targets that drive other devices. */
  readonly scope: DaemonScope;
  readonly createDispatcher: DispatcherFactory;
  readonly createUblk: UblkFactory;
  readonly store: Pick<DeviceStore, 'save' | 'delete' | 'loadAll'>;
  readonly links: Pick<DeviceLinks, 'create' | 'remove'>;
  readonly probeUsage: UsageProbe;
  /** Read-ahead for `info`; undefined leaves the line out, as dmsetup does when unknown. */
  readonly readAheadSectors?: (blockPath: string) => Promise<number | undefined>;
  readonly log: Logger;
  /**
   * Devices that outlive the daemon (ublk user recovery) and the sweep of dead kernel devices
   * at start. Absent (the in-process library): devices die with the process.
   */
  readonly recovery?: RecoveryDeps;
}

/** A ublk device as the kernel reports it (GET_DEV_INFO), whoever made it. */
export interface KernelUblkDevice {
  readonly id: number;
  readonly state: 'dead' | 'live' | 'quiesced' | 'fail-io';
  /** The pid that started or recovered it; -1 once stopped. */
  readonly serverPid: number;
  /** The mark its maker stored (ublksrv_flags): see ownership.ts. */
  readonly serverFlags: bigint;
}

export interface RecoveryDeps {
  /** This installation's mark (ownership.ts): which kernel devices are ours. */
  readonly installation: number;
  /** Make new devices recoverable (default on; `ublk-dm daemon --no-recovery` turns it off). */
  readonly enabled: boolean;
  listKernelDevices(): Promise<KernelUblkDevice[]>;
  /**
   * STOP_DEV + DEL_DEV of a device nobody serves; I/O queued on it fails. Refused (left alone)
   * if the device with that id no longer carries `serverFlags`: the id went to another device.
   */
  deleteKernelDevice(id: number, serverFlags: bigint): Promise<void>;
  processIsAlive(pid: number): boolean;
  /** Who uses the kernel device's /dev/ublkbN (mounts, holders, open descriptors), without opening it. */
  usageOf(id: number): Promise<DeviceUsage>;
}

/** What a daemon start did with the saved devices and the kernel's. */
export interface RestoreReport {
  readonly restored: string[];
  /** Of `restored`: reattached to the kernel device they had, I/O queued meanwhile going on. */
  readonly recovered: string[];
  readonly failed: string[];
  /** Dead kernel devices of ours that no saved device could take back, deleted. */
  readonly deletedKernelDevices: number[];
}

const NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.+:@-]{0,126}$/;

/**
 * Device names become file names (saved tables, /dev/ublk-dm links), so they are held to a
 * portable set: up to 127 characters (dm's limit) of letters, digits and `_ . + : @ -`, not
 * starting with `.` or `-`.
 */
export function validateDeviceName(name: string): void {
  if (!NAME_PATTERN.test(name)) {
    throw new DeviceError(
      `invalid device name ${JSON.stringify(name)}: use up to 127 of A-Z a-z 0-9 _ . + : @ -, not starting with . or -`,
      'EINVAL',
    );
  }
}

/**
 * The daemon's set of devices, by name. Operations on one name run one at a time (a `resume`
 * racing a `remove` would otherwise see a half-torn-down device); different names proceed
 * independently. Reads (`ls`, `table`, `info`) take no lock: they look at a consistent moment.
 */
export class DeviceRegistry {
  private readonly devices = new Map<string, MappedDevice>();
  /** Per running device: what its saved record says about identity and the devices under it. */
  private readonly identities = new Map<string, DeviceIdentity>();
  private readonly locks = new Map<string, Promise<unknown>>();
  /**
   * Saved devices this daemon could not bring back, by name, with why: shown by `ls`/`info`
   * until `remove` forgets them, and never overwritten by a `create` of the same name.
   */
  private readonly notRestored = new Map<string, string>();

  constructor(private readonly deps: RegistryDeps) {}

  /**
   * Build the table first (a bad table creates nothing), then the ublk device, the link and the
   * saved copy, undoing in reverse if a later step fails.
   */
  async create(name: string, tableText: string, options: DeviceOptions): Promise<CreatedDevice> {
    validateDeviceName(name);
    return this.serialized(name, async () => {
      const failure = this.notRestored.get(name);
      if (failure !== undefined) {
        throw new DeviceError(`a saved device ${name} could not be restored (${failure}); \`remove ${name}\` forgets it`, 'EEXIST');
      }
      await this.startDevice({ name, uuid: randomUUID(), table: tableText, options, lowers: undefined });
      const device = this.get(name);
      try {
        await this.deps.store.save(this.record(name));
      } catch (err) {
        await this.discard(device);
        throw err;
      }
      this.deps.log.info(`created ${name} as ${device.blockPath}`);
      return { name, blockPath: device.blockPath, major: device.devno.major, minor: device.devno.minor };
    });
  }

  /**
   * Bring back every saved device, lower devices before the tables over them. A table that
   * names one of our own devices is restored only over that same device (by name, uuid and
   * size): device numbers are handed out anew, and the number it was written with may now be
   * another device's. One that fails is logged and its file kept.
   */
  async restoreSaved(): Promise<RestoreReport> {
    const { devices, failures } = await this.deps.store.loadAll();
    for (const failure of failures) {
      this.deps.log.error(`cannot read saved device ${failure.file}: ${failure.error.message}`);
      this.notRestored.set(path.basename(failure.file, '.json'), `its saved table ${failure.file} cannot be read: ${failure.error.message}`);
    }
    const kernelDevices = await this.kernelDevices();
    const restored: string[] = [];
    const recovered: string[] = [];
    const failed = failures.map((f) => f.file);
    for (const saved of lowersFirst(devices)) {
      try {
        validateDeviceName(saved.name);
        const candidate = saved.ublk && kernelDevices.find((k) => k.id === saved.ublk!.id && k.serverFlags === saved.ublk!.serverFlags);
        const how = await this.serialized(saved.name, async () => {
          const started = await this.startDevice(saved, candidate);
          // The kernel device may be a new one: what the next daemon needs to find it.
          await this.deps.store.save(this.record(saved.name));
          return started;
        });
        restored.push(saved.name);
        if (how === 'recovered') {
          recovered.push(saved.name);
          this.deps.log.info(`recovered ${saved.name} on ${this.get(saved.name).blockPath}: the I/O it queued while no daemon ran goes on`);
        } else {
          this.deps.log.info(`restored ${saved.name} as ${this.get(saved.name).blockPath}`);
        }
      } catch (err) {
        failed.push(saved.name);
        this.notRestored.set(saved.name, (err as Error).message);
        this.deps.log.error(`cannot restore ${saved.name}: ${(err as Error).message}`);
      }
    }
    const deletedKernelDevices = await this.deleteDeadKernelDevices();
    return { restored, recovered, failed, deletedKernelDevices };
  }

  /** The kernel's ublk devices, when this registry deals with them; a failure to list is logged, not fatal. */
  private async kernelDevices(): Promise<KernelUblkDevice[]> {
    if (!this.deps.recovery) return [];
    try {
      return await this.deps.recovery.listKernelDevices();
    } catch (err) {
      this.deps.log.error(`cannot list the kernel's ublk devices: ${(err as Error).message}`);
      return [];
    }
  }

  /**
   * Delete the kernel devices of this installation that no running device uses and no live
   * process serves: what a crashed daemon left (a device made but not yet saved, one whose
   * saved table could not be restored, one that was not recoverable). Their queued I/O fails.
   */
  private async deleteDeadKernelDevices(): Promise<number[]> {
    const recovery = this.deps.recovery;
    if (!recovery) return [];
    const ours = new Set([...this.devices.values()].map((device) => device.ublkId));
    const deleted: number[] = [];
    for (const kernel of await this.kernelDevices()) {
      if (!isMarkedBy(kernel.serverFlags, recovery.installation) || ours.has(kernel.id)) continue;
      // Our own pid on a device we do not serve is a dead predecessor's, reused.
      if (kernel.state === 'live' && kernel.serverPid !== process.pid && recovery.processIsAlive(kernel.serverPid)) {
        this.deps.log.warn(`ublk device ${kernel.id} carries this daemon's mark but process ${kernel.serverPid} serves it: left alone`);
        continue;
      }
      // In use (a mount, an upper device): deleting it would fail the I/O its users queued, and
      // DEL_DEV would wait for them to let go. A saved device that could not reattach to it now
      // may on the next start; doctor reports it meanwhile.
      const busy = busyReason(await recovery.usageOf(kernel.id).catch(() => UNUSED));
      if (busy !== undefined) {
        this.deps.log.warn(`ublk device ${kernel.id} (${kernel.state}) has no daemon but is ${busy}: left in the kernel, not deleted`);
        continue;
      }
      try {
        await recovery.deleteKernelDevice(kernel.id, kernel.serverFlags);
        deleted.push(kernel.id);
        this.deps.log.warn(`deleted dead ublk device ${kernel.id} (${kernel.state}) left by an earlier daemon: no saved device could take it back`);
      } catch (err) {
        this.deps.log.error(`cannot delete dead ublk device ${kernel.id}: ${(err as Error).message}`);
      }
    }
    return deleted;
  }

  /** `reload`: a table that fails to build leaves both slots as they were. */
  reload(name: string, tableText: string): Promise<void> {
    return this.serialized(name, async () => {
      const device = this.get(name);
      const table = await this.deps.buildTable(tableText, device.events);
      let lowers: LowerDevice[];
      try {
        lowers = this.lowersOf(name, table);
      } catch (err) {
        await table.destroy();
        throw err;
      }
      await device.loadInactive(table, tableText);
      this.identities.get(name)!.inactiveLowers = lowers;
    });
  }

  suspend(name: string, options: SuspendOptions = { noflush: false }): Promise<void> {
    return this.serialized(name, () => this.get(name).suspend(options));
  }

  /**
   * dmsetup's `wait`: the device's event number once it differs from `eventNr`. Takes no lock:
   * a waiter must not hold up the operations (a resume, a message) that raise the event.
   */
  waitEvent(name: string, eventNr: number): Promise<number> {
    return this.get(name).events.wait(eventNr);
  }

  /** `resume`; when a reloaded table goes live, it becomes the saved one. */
  resume(name: string): Promise<void> {
    return this.serialized(name, async () => {
      const device = this.get(name);
      const savedText = device.liveTableText;
      try {
        await device.resume();
      } finally {
        if (device.liveTableText !== savedText) {
          const identity = this.identities.get(name)!;
          identity.lowers = identity.inactiveLowers ?? [];
          identity.inactiveLowers = undefined;
          await this.deps.store.save(this.record(name));
        }
      }
    });
  }

  /**
   * Refused while anything uses the device; otherwise gone from the kernel, /dev and the store.
   * A saved device that could not be restored is forgotten: its saved table is deleted.
   */
  remove(name: string): Promise<void> {
    return this.serialized(name, async () => {
      if (!this.devices.has(name) && this.notRestored.has(name)) {
        await this.deps.store.delete(name);
        this.notRestored.delete(name);
        this.deps.log.info(`forgot ${name}, which could not be restored: its saved table is deleted`);
        return;
      }
      const device = this.get(name);
      const reason = busyReason(await this.deps.probeUsage(device.blockPath, device.devno));
      if (reason) throw new DeviceError(`device ${name} is busy: ${reason}`, 'EBUSY');
      await this.discard(device);
      await this.deps.store.delete(name);
      this.deps.log.info(`removed ${name}`);
    });
  }

  message(name: string, sector: number, words: string[]): Promise<string> {
    return this.serialized(name, () => this.get(name).message(sector, words));
  }

  /** Target type parameters of this daemon: all, one, or one set to `value` (then its new value). */
  parameters(name?: string, value?: string): ParameterSetting[] {
    if (value === undefined) return this.deps.scope.parameterSettings(name);
    if (name === undefined) throw new DeviceError('a parameter value needs a parameter name', 'EINVAL');
    const setting = this.deps.scope.setParameter(name, value);
    this.deps.log.info(`parameter ${name} = ${setting.value}`);
    return [setting];
  }

  list(targetType?: string): DeviceListEntry[] {
    return this.sorted()
      .filter((device) => targetType === undefined || device.hasTargetType(targetType))
      .map((device) => ({ name: device.name, major: device.devno.major, minor: device.devno.minor, blockPath: device.blockPath }));
  }

  /** `table` (kind 'table') or `status` (kind 'info'), for one device or all. */
  tables(name: string | undefined, kind: StatusKind, inactive = false): TableReport[] {
    return this.selected(name).map((device) => ({ name: device.name, targets: device.targetLines(kind, inactive) }));
  }

  async info(name?: string): Promise<DeviceInfo[]> {
    return Promise.all(this.selected(name).map((device) => this.infoOf(device)));
  }

  /** Saved devices this daemon could not bring back, with why. */
  failures(): FailedDevice[] {
    return [...this.notRestored].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([name, reason]) => ({ name, state: 'failed' as const, reason }));
  }

  /** The device called `name`, or ENOENT (saying why, when it is a saved device that did not come back). */
  get(name: string): MappedDevice {
    const device = this.devices.get(name);
    if (device) return device;
    const failure = this.notRestored.get(name);
    throw new DeviceError(`device ${name} does not exist${failure === undefined ? '' : `: it could not be restored (${failure})`}`, 'ENOENT');
  }

  /**
   * Daemon shutdown; waits for operations already running. The saved tables stay either way.
   * `handOver`: every device a later daemon can reattach to (user recovery granted) is left
   * to it: suspended (its in-flight I/O completes, its targets write their state out), its
   * tables released, its ublk device and link kept; the kernel quiesces it when this process
   * exits. Other devices, and all of them without `handOver`, are removed from the kernel.
   */
  async shutdown(options: { readonly handOver: boolean } = { handOver: false }): Promise<ShutdownReport> {
    await Promise.allSettled([...this.locks.values()]);
    const kept = new Set(options.handOver ? this.sorted().filter((device) => device.ublkIdentity !== undefined) : []);
    const report: { handedOver: string[]; removed: string[]; failed: { name: string; error: string }[] } = { handedOver: [], removed: [], failed: [] };
    const fail = (device: MappedDevice, err: unknown, what: string): void => {
      report.failed.push({ name: device.name, error: (err as Error).message });
      this.deps.log.error(`${what} ${device.name} failed: ${(err as Error).message}`);
    };
    // Nothing is detached until every kept device is suspended: a snapshot's table released
    // while its origin still takes writes would miss their copy-outs.
    await this.upperFirst(async (device) => {
      if (!kept.has(device)) {
        await this.discard(device).then(() => report.removed.push(device.name), (err) => fail(device, err, 'stopping'));
      } else if (device.hasInactiveTable) {
        this.deps.log.warn(`${device.name}: its inactive table is not saved; the next daemon serves its live table`);
      }
      if (kept.has(device) && !device.suspended) {
        // noflush: I/O a target pushes back (a mirror's held writes) waits for the next daemon instead of failing.
        await device.suspend({ noflush: true }).catch((err) => {
          kept.delete(device);
          fail(device, err, 'suspending');
          this.deps.log.warn(`${device.name} is left as a crash leaves it: the next daemon re-issues its unanswered I/O`);
        });
      }
    });
    for (const device of kept) {
      this.deps.scope.removeDevice(blockKey(device), device);
      this.devices.delete(device.name);
      this.identities.delete(device.name);
      try {
        await device.detach();
        report.handedOver.push(device.name);
        this.deps.log.info(`left ${device.name} on ${device.blockPath} for the next daemon`);
      } catch (err) {
        fail(device, err, 'detaching');
      }
    }
    return report;
  }

  /**
   * Run `step` on every device, upper devices before the devices they are built on, one level
   * at a time: a lower device stopped or suspended while an upper one still sends it I/O would
   * wait on that I/O (and control commands go to the kernel one at a time, so the upper's stop
   * would queue behind it).
   */
  private async upperFirst(step: (device: MappedDevice) => Promise<void>): Promise<void> {
    let left = this.sorted();
    while (left.length > 0) {
      const held = new Set(left.flatMap((device) => (this.identities.get(device.name)?.lowers ?? []).map((lower) => lower.name)));
      let wave = left.filter((device) => !held.has(device.name));
      if (wave.length === 0) wave = left; // a cycle cannot be saved, but never loop on one
      await Promise.all(wave.map(step));
      left = left.filter((device) => !wave.includes(device));
    }
  }

  /**
   * Build the table and start the device. `lowers` undefined: a new table, whose own devices
   * are found now; given: a restore, over exactly those devices.
   */
  private async startDevice(saved: StartRequest, candidate?: KernelUblkDevice): Promise<'recovered' | 'created'> {
    const { name } = saved;
    if (this.devices.has(name)) throw new DeviceError(`device ${name} already exists`, 'EEXIST');
    const events = new DeviceEvents(name);
    let built = await this.buildChecked(saved, events);
    if (candidate && this.deps.recovery) {
      const recovery = this.deps.recovery;
      const what = `${name}'s ublk device ${candidate.id}`;
      const serverGone = candidate.serverPid === process.pid || !recovery.processIsAlive(candidate.serverPid);
      if (candidate.state === 'quiesced' || (candidate.state === 'live' && serverGone)) {
        try {
          await this.startOn(saved, events, built, { recoverFrom: saved.ublk! });
          return 'recovered';
        } catch (err) {
          const reason = (err as Error).message;
          // Deleting it would fail every write its filesystem or upper device has queued, and
          // DEL_DEV would wait for the unmount: leave it for another try instead.
          const busy = busyReason(await recovery.usageOf(candidate.id).catch(() => UNUSED));
          if (busy !== undefined) {
            throw new DeviceError(
              `cannot reattach to ${what}: ${reason}; it is ${busy}, so it is left in the kernel as it is (its I/O waits) instead of being deleted` +
                (err instanceof UnquiescedDeviceError ? '' : ': restart the daemon to try again'),
              'EBUSY',
            );
          }
          this.deps.log.warn(`cannot reattach to ${what}: ${reason}; deleting it (I/O queued on it fails) and making a new device`);
        }
        built = await this.buildChecked(saved, events);
      } else if (candidate.state === 'live') {
        await built.table.destroy();
        throw new DeviceError(`${what} is live, served by process ${candidate.serverPid}`, 'EBUSY');
      } else {
        this.deps.log.warn(`${what} is ${candidate.state}, not recoverable: deleting it and making a new device`);
      }
      await recovery.deleteKernelDevice(candidate.id, candidate.serverFlags).catch((err: Error) => this.deps.log.error(`cannot delete ${what}: ${err.message}`));
    }
    await this.startOn(saved, events, built, this.newUblkOptions());
    return 'created';
  }

  /**
   * How a new kernel device is asked for: marked as ours (so a later daemon can find it, or
   * delete it if it died), and recoverable unless recovery is turned off.
   */
  private newUblkOptions(): Pick<UblkCreateOptions, 'serverFlags' | 'recovery'> {
    const recovery = this.deps.recovery;
    return recovery ? { serverFlags: newDeviceMark(recovery.installation), recovery: recovery.enabled } : {};
  }

  /** Build the table and check the devices of ours it names (see startDevice). */
  private async buildChecked(saved: StartRequest, events: DeviceEvents): Promise<{ table: DeviceTable; lowers: readonly LowerDevice[] }> {
    const { name } = saved;
    const restoring = saved.lowers !== undefined;
    const buildText = restoring ? this.overCurrentLowers(saved.table, saved.lowers!) : saved.table;
    const rebuilt: RebuiltTable | undefined = restoring ? { warn: (message) => this.deps.log.warn(`${name}: ${message}`) } : undefined;
    const table = await this.deps.buildTable(buildText, events, rebuilt);
    let lowers: readonly LowerDevice[];
    try {
      const found = this.lowersOf(name, table);
      lowers = saved.lowers ?? found;
      const unexpected = found.find((lower) => !lowers.some((known) => known.uuid === lower.uuid));
      if (unexpected) {
        throw new DeviceError(
          `its table names ${unexpected.spec}, which is now device ${unexpected.name}, not a device it was created over`,
          'ENXIO',
        );
      }
    } catch (err) {
      await table.destroy();
      throw err;
    }
    return { table, lowers };
  }

  /** Serve a built table on a ublk device (new or reattached), link and register it; the table is the device's from here on. */
  private async startOn(
    saved: StartRequest,
    events: DeviceEvents,
    { table, lowers }: { table: DeviceTable; lowers: readonly LowerDevice[] },
    ublkOptions: Pick<UblkCreateOptions, 'serverFlags' | 'recovery' | 'recoverFrom'>,
  ): Promise<void> {
    const { name } = saved;
    // The device keeps the text as the user gave it: that is what is saved, with its lowers.
    const device = await MappedDevice.start(events, table, saved.table, saved.options, this.deps.createUblk, this.deps.createDispatcher, ublkOptions);
    try {
      await this.deps.links.create(name, device.blockPath);
    } catch (err) {
      await device.stop();
      throw err;
    }
    this.devices.set(name, device);
    this.identities.set(name, { uuid: saved.uuid, lowers: [...lowers], inactiveLowers: undefined });
    this.deps.scope.addDevice(blockKey(device), device);
  }

  /** Which of `table`'s devices are ours: what its saved record must remember. */
  private lowersOf(name: string, table: DeviceTable): LowerDevice[] {
    const lowers: LowerDevice[] = [];
    for (const [spec, opened] of table.deviceSpecs ?? []) {
      const lower = this.deps.scope.findDevice(opened.key);
      if (lower === undefined) continue;
      if (lower.name === name) throw new DeviceError(`device ${name} cannot be built over itself (${spec})`, 'EINVAL');
      const identity = this.identities.get(lower.name)!;
      lowers.push({ spec, name: lower.name, uuid: identity.uuid, sizeSectors: this.get(lower.name).sizeSectors });
    }
    return lowers;
  }

  /**
   * The saved table with each spec of a lower device replaced by that device's current
   * major:minor, after checking that the device of that name is the one the table was built
   * over (uuid) and still has the size it had.
   */
  private overCurrentLowers(text: string, lowers: readonly LowerDevice[]): string {
    if (lowers.length === 0) return text;
    const current = new Map<string, string>();
    for (const lower of lowers) {
      const device = this.devices.get(lower.name);
      const identity = this.identities.get(lower.name);
      if (device === undefined || identity === undefined) {
        throw new DeviceError(`its lower device ${lower.name} (${lower.spec} when it was created) is not there`, 'ENXIO');
      }
      if (identity.uuid !== lower.uuid) {
        throw new DeviceError(`device ${lower.name} is not the device it was created over (uuid ${identity.uuid}, expected ${lower.uuid})`, 'ENXIO');
      }
      if (device.sizeSectors !== lower.sizeSectors) {
        throw new DeviceError(`its lower device ${lower.name} is ${device.sizeSectors} sectors, not ${lower.sizeSectors}`, 'ENXIO');
      }
      current.set(lower.spec, `${device.devno.major}:${device.devno.minor}`);
    }
    return parseTableText(text)
      .map((line) => [line.startSector, line.lengthSectors, line.type, ...line.args.map((arg) => current.get(arg) ?? arg)].join(' '))
      .join('\n');
  }

  /** What the store keeps for a running device. */
  private record(name: string): SavedDevice {
    const device = this.get(name);
    const identity = this.identities.get(name)!;
    const ublk = device.ublkIdentity;
    return { name, uuid: identity.uuid, table: device.liveTableText, options: device.options, lowers: identity.lowers, ...(ublk ? { ublk } : {}) };
  }

  /** Stop the kernel device, release the tables, drop the link; the saved table is not touched. */
  private async discard(device: MappedDevice): Promise<void> {
    this.deps.scope.removeDevice(blockKey(device), device);
    await device.stop();
    this.devices.delete(device.name);
    this.identities.delete(device.name);
    await this.deps.links.remove(device.name);
  }

  private async infoOf(device: MappedDevice): Promise<DeviceInfo> {
    const [usage, readAheadSectors] = await Promise.all([
      this.deps.probeUsage(device.blockPath, device.devno),
      this.deps.readAheadSectors?.(device.blockPath),
    ]);
    return {
      name: device.name,
      suspended: device.suspended,
      readOnly: device.options.readOnly,
      ...(readAheadSectors !== undefined ? { readAheadSectors } : {}),
      liveTable: true,
      inactiveTable: device.hasInactiveTable,
      openCount: openCount(usage),
      eventNumber: device.eventNumber,
      major: device.devno.major,
      minor: device.devno.minor,
      targetCount: device.liveTargetCount,
      sizeSectors: device.sizeSectors,
      blockPath: device.blockPath,
      queues: device.queues,
      depth: device.depth,
      ...(device.forwarded !== undefined ? { forwarded: { ...device.forwarded } } : {}),
    };
  }

  private selected(name: string | undefined): MappedDevice[] {
    return name === undefined ? this.sorted() : [this.get(name)];
  }

  private sorted(): MappedDevice[] {
    return [...this.devices.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Run `operation` after every earlier operation on the same name has settled. */
  private serialized<T>(name: string, operation: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(name) ?? Promise.resolve();
    const result = previous.then(operation, operation);
    const settled = result.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(name, settled);
    void settled.then(() => {
      if (this.locks.get(name) === settled) this.locks.delete(name);
    });
    return result;
  }
}

/** A device to start: a saved one (lowers known), or a new one (lowers undefined: found from its table). */
type StartRequest = Omit<SavedDevice, 'lowers'> & { readonly lowers: readonly LowerDevice[] | undefined };

interface DeviceIdentity {
  readonly uuid: string;
  lowers: LowerDevice[];
  /** The lowers of a reloaded table, until resume makes it live. */
  inactiveLowers: LowerDevice[] | undefined;
}

/**
 * Saved devices ordered so that every device comes after the devices its table is built over,
 * and tables with a `snapshot` target before the others: a snapshot must be listening before its
 * origin's snapshot-origin table takes writes, or the first writes would not be copied out to it.
 *
 * Except a snapshot over the COW of a saved snapshot-merge table: the daemon died after the merge
 * took its exceptions over and before the snapshot was removed. It comes last, after the merge
 * has loaded the COW itself; it then waits to take the COW back from the running merge, which the
 * kernel's rule refuses ("Unable to perform snapshot handover until source is suspended."), so it
 * is not restored, as the merge command was about to remove it.
 */
function lowersFirst(saved: readonly SavedDevice[]): SavedDevice[] {
  const byName = new Map(saved.map((device) => [device.name, device]));
  const ordered: SavedDevice[] = [];
  const visited = new Set<string>();
  const visit = (device: SavedDevice): void => {
    if (visited.has(device.name)) return; // also what stops a (corrupt) cycle
    visited.add(device.name);
    for (const lower of device.lowers) {
      const next = byName.get(lower.name);
      if (next !== undefined) visit(next);
    }
    ordered.push(device);
  };
  const isSnapshot = (device: SavedDevice): boolean => /^\s*\d+\s+\d+\s+snapshot\s/m.test(device.table);
  /** `<start> <len> snapshot[-merge] <origin> <cow> ...`: the COW as the table names it. */
  const cowOf = (device: SavedDevice): string | undefined => device.table.trim().split(/\s+/)[4];
  const mergedCows = new Set(saved.filter((device) => /^\s*\d+\s+\d+\s+snapshot-merge\s/m.test(device.table)).map(cowOf));
  const handedOver = (device: SavedDevice): boolean => isSnapshot(device) && mergedCows.has(cowOf(device));
  for (const device of saved.filter((d) => isSnapshot(d) && !handedOver(d))) visit(device);
  for (const device of saved.filter((d) => !handedOver(d))) visit(device);
  for (const device of saved) visit(device);
  return ordered;
}

function blockKey(device: MappedDevice): DeviceKey {
  return `blk:${device.devno.major}:${device.devno.minor}`;
}
