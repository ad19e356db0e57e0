import { silentLogger, type Logger } from '../base/log';
import { DaemonScope } from '../dm/scope';
import type { SuspendOptions, TargetType } from '../dm/target';
import { builtInTargetTypes } from '../targets';
import type { DeviceInfo } from '../wire/protocol';
import { kernelCollaborators } from './kernel';
import { DeviceRegistry } from './registry';
import type { SavedDevice, StoreLoadResult } from './store';
import { procUsageProbe, readAheadSectors } from './usage';

/**
 * The library API for tests and tools that want a real /dev/ublkbN in a few lines, served by
 * this process (no daemon, no socket, nothing saved under /var/lib): the form that lets a test
 * register its own TypeScript target type and use it in a table.
 *
 *   const dev = await createDevice({ name: 'scratch', table: '0 2048 zero' });
 *   // ... dev.path is a real block device: mkfs it, fio it, dd it ...
 *   await dev.remove();
 *
 * Needs root and the kernel's ublk_drv, like the daemon. The device lives as long as this
 * process serves it: remove it (or let `InProcessDm.close` do it) before the process exits.
 */

export interface CreateDeviceOptions {
  readonly name: string;
  /** dm table text, as `dmsetup create --table` takes it. */
  readonly table: string;
  readonly readOnly?: boolean;
  readonly queues?: number;
  readonly depth?: number;
}

export interface InProcessDmOptions {
  /** Target types besides the built-in ones (linear, zero, error, null). */
  readonly targetTypes?: readonly TargetType[];
  readonly log?: Logger;
}

/** One device served by this process, with dmsetup's verbs as methods. */
export class InProcessDevice {
  constructor(
    private readonly registry: DeviceRegistry,
    readonly name: string,
    /** /dev/ublkbN */
    readonly path: string,
    readonly devno: { readonly major: number; readonly minor: number },
    /** Runs once the device is gone (createDevice's own InProcessDm is closed then). */
    private readonly afterRemove: () => Promise<void> = async () => {},
  ) {}

  /** `dmsetup status` text for this device: `<start> <len> <type> <status>` lines. */
  status(): string {
    return this.lines('info');
  }

  /** `dmsetup table` text for this device. */
  table(): string {
    return this.lines('table');
  }

  async info(): Promise<DeviceInfo> {
    return (await this.registry.info(this.name))[0]!;
  }

  suspend(options: SuspendOptions = { noflush: false }): Promise<void> {
    return this.registry.suspend(this.name, options);
  }

  /** Load `table` into the inactive slot; `resume()` makes it live. */
  reload(table: string): Promise<void> {
    return this.registry.reload(this.name, table);
  }

  resume(): Promise<void> {
    return this.registry.resume(this.name);
  }

  message(sector: number, ...words: string[]): Promise<string> {
    return this.registry.message(this.name, sector, words);
  }

  /** `dmsetup wait`: the event number once it differs from `eventNr`. */
  wait(eventNr: number): Promise<number> {
    return this.registry.waitEvent(this.name, eventNr);
  }

  /** Refused (EBUSY) while the device is open or mounted, as `dmsetup remove`. */
  async remove(): Promise<void> {
    await this.registry.remove(this.name);
    await this.afterRemove();
  }

  private lines(kind: 'info' | 'table'): string {
    const [report] = this.registry.tables(this.name, kind);
    return report!.targets.map((line) => `${line.startSector} ${line.lengthSectors} ${line.type} ${line.text}\n`).join('');
  }
}

/** Devices served by this process, sharing one scope (one ring, one set of target types). */
export class InProcessDm {
  private readonly registry: DeviceRegistry;
  private readonly scope: DaemonScope;

  constructor(options: InProcessDmOptions = {}) {
    this.scope = new DaemonScope({ targetTypes: [...builtInTargetTypes, ...(options.targetTypes ?? [])] });
    this.registry = new DeviceRegistry({
      ...kernelCollaborators(this.scope),
      store: NOTHING_SAVED,
      links: NO_LINKS,
      probeUsage: procUsageProbe(),
      readAheadSectors: (blockPath) => readAheadSectors(blockPath),
      log: options.log ?? silentLogger(),
    });
  }

  createDevice(options: CreateDeviceOptions): Promise<InProcessDevice> {
    return this.start(options, async () => {});
  }

  /** @internal createDevice with what the device's remove() does last. */
  async start(options: CreateDeviceOptions, afterRemove: () => Promise<void>): Promise<InProcessDevice> {
    const created = await this.registry.create(options.name, options.table, {
      readOnly: options.readOnly ?? false,
      ...(options.queues !== undefined ? { queues: options.queues } : {}),
      ...(options.depth !== undefined ? { depth: options.depth } : {}),
    });
    return new InProcessDevice(this.registry, created.name, created.blockPath, { major: created.major, minor: created.minor }, afterRemove);
  }

  /** Remove every device (whether open or not) and release the ring. */
  async close(): Promise<void> {
    await this.registry.shutdown();
    this.scope.close();
  }
}

/**
 * One device in its own InProcessDm: the shortest way to a real device. Its `remove()` also
 * releases what the InProcessDm holds.
 */
export async function createDevice(options: CreateDeviceOptions & InProcessDmOptions): Promise<InProcessDevice> {
  const dm = new InProcessDm(options);
  try {
    return await dm.start(options, () => dm.close());
  } catch (error) {
    await dm.close();
    throw error;
  }
}

/** In-process devices are not brought back by a later process: nothing is saved. */
const NOTHING_SAVED = {
  save: async (_device: SavedDevice): Promise<void> => {},
  delete: async (_name: string): Promise<void> => {},
  loadAll: async (): Promise<StoreLoadResult> => ({ devices: [], failures: [] }),
};

/** No /dev/ublk-dm/NAME links: those belong to the daemon's namespace. */
const NO_LINKS = {
  create: async (_name: string, _blockPath: string): Promise<void> => {},
  remove: async (_name: string): Promise<void> => {},
};
