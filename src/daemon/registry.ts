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
import type { CreatedDevice, DeviceInfo, DeviceListEntry, DeviceOptions, TableReport } from '../wire/protocol';
import type { DeviceStore } from './store';
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
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(private readonly deps: RegistryDeps) {}

  /**
   * Build the table first (a bad table creates nothing), then the ublk device, the link and the
   * saved copy, undoing in reverse if a later step fails.
   */
  async create(name: string, tableText: string, options: DeviceOptions): Promise<CreatedDevice> {
    validateDeviceName(name);
    return this.serialized(name, async () => {
      await this.startDevice(name, tableText, options);
      const device = this.get(name);
      try {
        await this.deps.store.save({ name, table: tableText, options });
      } catch (err) {
        await this.discard(device);
        throw err;
      }
      this.deps.log.info(`created ${name} as ${device.blockPath}`);
      return { name, blockPath: device.blockPath, major: device.devno.major, minor: device.devno.minor };
    });
  }

  /** Bring back every saved device; one that fails is logged and its file kept. */
  async restoreSaved(): Promise<{ restored: string[]; failed: string[] }> {
    const { devices, failures } = await this.deps.store.loadAll();
    for (const failure of failures) this.deps.log.error(`cannot read saved device ${failure.file}: ${failure.error.message}`);
    const restored: string[] = [];
    const failed = failures.map((f) => f.file);
    for (const saved of devices) {
      try {
        validateDeviceName(saved.name);
        await this.serialized(saved.name, () => this.startDevice(saved.name, saved.table, saved.options));
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
      await device.loadInactive(table, tableText);
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
          await this.deps.store.save({ name, table: device.liveTableText, options: device.options });
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

  private async startDevice(name: string, tableText: string, options: DeviceOptions): Promise<void> {
    if (this.devices.has(name)) throw new DeviceError(`device ${name} already exists`, 'EEXIST');
    const events = new DeviceEvents(name);
    const table = await this.deps.buildTable(tableText, events);
    const device = await MappedDevice.start(events, table, tableText, options, this.deps.createUblk, this.deps.createDispatcher);
    try {
      await this.deps.links.create(name, device.blockPath);
    } catch (err) {
      await device.stop();
      throw err;
    }
    this.devices.set(name, device);
    this.deps.scope.addDevice(blockKey(device), device);
  }

  /** Stop the kernel device, release the tables, drop the link; the saved table is not touched. */
  private async discard(device: MappedDevice): Promise<void> {
    this.deps.scope.removeDevice(blockKey(device), device);
    await device.stop();
    this.devices.delete(device.name);
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

function blockKey(device: MappedDevice): DeviceKey {
  return `blk:${device.devno.major}:${device.devno.minor}`;
}
