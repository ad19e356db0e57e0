import {
  DeviceError,
  DeviceEvents,
  MappedDevice,
  type DeviceTable,
  type DispatcherFactory,
  type UblkFactory,
} from '../dm/mapped-device';
import type { DaemonScope } from '../dm/scope';
import type { DeviceKey } from '../io/block-device';
import type { DeviceHandle, SuspendOptions } from '../dm/target';
import type { DeviceLinks } from './links';
import type { Logger } from '../base/log';
import type { CreatedDevice, DeviceInfo, DeviceListEntry, DeviceOptions, ParameterSetting, TableReport } from '../wire/protocol';
import type { DeviceStore, LowerDevice, SavedDevice } from './store';
import { parseTableText } from '../dm/table';
import { randomUUID } from 'node:crypto';
import type { StatusKind } from '../dm/target';
import { busyReason, openCount, type UsageProbe } from './usage';

/** Everything the registry needs from the outside world; tests pass fakes for the kernel parts. */
export interface RegistryDeps {
  /** Parse and construct a table for `device` (dm/table.ts); throws with the offending line named. */
  readonly buildTable: (text: string, device: DeviceHandle) => Promise<DeviceTable>;
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

  constructor(private readonly deps: RegistryDeps) {}

  /**
   * Build the table first (a bad table creates nothing), then the ublk device, the link and the
   * saved copy, undoing in reverse if a later step fails.
   */
  async create(name: string, tableText: string, options: DeviceOptions): Promise<CreatedDevice> {
    validateDeviceName(name);
    return this.serialized(name, async () => {
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
  async restoreSaved(): Promise<{ restored: string[]; failed: string[] }> {
    const { devices, failures } = await this.deps.store.loadAll();
    for (const failure of failures) this.deps.log.error(`cannot read saved device ${failure.file}: ${failure.error.message}`);
    const restored: string[] = [];
    const failed = failures.map((f) => f.file);
    for (const saved of lowersFirst(devices)) {
      try {
        validateDeviceName(saved.name);
        await this.serialized(saved.name, () => this.startDevice(saved));
        restored.push(saved.name);
        this.deps.log.info(`restored ${saved.name} as ${this.get(saved.name).blockPath}`);
      } catch (err) {
        failed.push(saved.name);
        this.deps.log.error(`cannot restore ${saved.name}: ${(err as Error).message}`);
      }
    }
    return { restored, failed };
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

  /** Refused while anything uses the device; otherwise gone from the kernel, /dev and the store. */
  remove(name: string): Promise<void> {
    return this.serialized(name, async () => {
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

  /** The device called `name`, or ENOENT. */
  get(name: string): MappedDevice {
    const device = this.devices.get(name);
    if (!device) throw new DeviceError(`device ${name} does not exist`, 'ENOENT');
    return device;
  }

  /**
   * Daemon shutdown: every kernel device goes away, the saved tables stay so the next start
   * brings them back. Waits for operations already running.
   */
  async shutdown(): Promise<void> {
    await Promise.allSettled([...this.locks.values()]);
    const results = await Promise.allSettled(this.sorted().map((device) => this.discard(device)));
    for (const result of results) {
      if (result.status === 'rejected') this.deps.log.error(`stopping a device failed: ${(result.reason as Error).message}`);
    }
  }

  /**
   * Build the table and start the device. `lowers` undefined: a new table, whose own devices
   * are found now; given: a restore, over exactly those devices.
   */
  private async startDevice(saved: Omit<SavedDevice, 'lowers'> & { readonly lowers: readonly LowerDevice[] | undefined }): Promise<void> {
    const { name } = saved;
    if (this.devices.has(name)) throw new DeviceError(`device ${name} already exists`, 'EEXIST');
    const events = new DeviceEvents(name);
    const buildText = saved.lowers === undefined ? saved.table : this.overCurrentLowers(saved.table, saved.lowers);
    const table = await this.deps.buildTable(buildText, events);
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
    // The device keeps the text as the user gave it: that is what is saved, with its lowers.
    const device = await MappedDevice.start(events, table, saved.table, saved.options, this.deps.createUblk, this.deps.createDispatcher);
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
    return { name, uuid: identity.uuid, table: device.liveTableText, options: device.options, lowers: identity.lowers };
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
