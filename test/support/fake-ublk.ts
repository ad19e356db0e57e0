import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { UblkCreateOptions, UblkFactory, UblkHandle, UblkIdentity } from '../../src/dm/mapped-device';
import type { Bio, IoDone } from '../../src/io/bio';
import { Dispatcher } from '../../src/dm/dispatcher';
import type { IoResult } from '../../src/base/errno';
import { DeviceLinks } from '../../src/daemon/links';
import { silentLogger } from '../../src/base/log';
import { MemoryDevice } from '../../src/testing/memory-device';
import type { KernelUblkDevice, RecoveryDeps, RegistryDeps } from '../../src/daemon/registry';
import { DeviceStore } from '../../src/daemon/store';
import { Table } from '../../src/dm/table';
import { loadMemoryTable, testScope } from '../../src/testing/tables';
import { UNUSED, type DeviceUsage } from '../../src/daemon/usage';

/** A ublk device that exists only in the test: requests are injected through `submit`. */
export class FakeUblkDevice implements UblkHandle {
  readonly blockPath: string;
  readonly devno: { major: number; minor: number };
  stopped = false;
  /** Runs inside stop(), while the kernel would still be sending I/O. */
  duringStop: (() => Promise<void>) | undefined;

  constructor(
    readonly id: number,
    readonly options: UblkCreateOptions,
    private readonly handler: (bio: Bio, done: IoDone) => void,
  ) {
    this.blockPath = `/dev/ublkb${id}`;
    this.devno = { major: 259, minor: id };
  }

  get queues(): number {
    return this.options.queues ?? 1;
  }

  get depth(): number {
    return this.options.depth ?? 128;
  }

  /** As the kernel grants it: recoverable when asked for, with the mark it was given. */
  get identity(): UblkIdentity | undefined {
    if (this.options.recoverFrom) return this.options.recoverFrom;
    if (!this.options.recovery || this.options.serverFlags === undefined) return undefined;
    return { id: this.id, serverFlags: this.options.serverFlags, queues: this.queues, depth: this.depth, maxIoBytes: 524288, features: 0x18n };
  }

  /** What the kernel would get back for `request`. */
  submit(request: Omit<Bio, 'fua' | 'noUnmap'> & { fua?: boolean }): Promise<IoResult> {
    if (this.stopped) throw new Error('I/O submitted to a stopped device');
    return new Promise((resolve) => this.handler({ fua: false, noUnmap: false, ...request }, resolve));
  }

  async stop(): Promise<void> {
    await this.duringStop?.();
    this.stopped = true;
  }
}

/** Creates FakeUblkDevices with increasing ids; can be told to fail the next create. */
export class FakeUblk {
  readonly devices: FakeUblkDevice[] = [];
  failNext: Error | undefined;
  /** Fail every reattach (UblkDevice.recover) with this. */
  failRecover: Error | undefined;
  nextId = 0;

  readonly factory: UblkFactory = async (options, handler) => {
    if (this.failNext) {
      const err = this.failNext;
      this.failNext = undefined;
      throw err;
    }
    if (options.recoverFrom && this.failRecover) throw this.failRecover;
    const id = options.recoverFrom ? options.recoverFrom.id : this.nextId++;
    const device = new FakeUblkDevice(id, options, handler);
    this.devices.push(device);
    return device;
  };

  get live(): FakeUblkDevice[] {
    return this.devices.filter((d) => !d.stopped);
  }
}

/** The kernel's list of ublk devices as a test sets it, and what the registry deleted from it. */
export class FakeKernel implements RecoveryDeps {
  devices: KernelUblkDevice[] = [];
  readonly deleted: number[] = [];
  /** Pids that count as running. */
  readonly alivePids = new Set<number>();
  enabled = true;

  constructor(readonly installation: number) {}

  async listKernelDevices(): Promise<KernelUblkDevice[]> {
    return this.devices.map((d) => ({ ...d }));
  }

  async deleteKernelDevice(id: number, serverFlags: bigint): Promise<void> {
    const device = this.devices.find((d) => d.id === id);
    if (device && device.serverFlags !== serverFlags) throw new Error(`ublk device ${id} now carries another mark`);
    this.deleted.push(id);
    this.devices = this.devices.filter((d) => d.id !== id);
  }

  processIsAlive(pid: number): boolean {
    return this.alivePids.has(pid);
  }

  /** Usage by kernel device id; unused unless a test says otherwise. */
  readonly usage = new Map<number, DeviceUsage>();

  async usageOf(id: number): Promise<DeviceUsage> {
    return this.usage.get(id) ?? UNUSED;
  }
}

/** Registry dependencies over a scratch directory, real tables and dispatchers, and a fake ublk. */
export class TestBed {
  readonly ublk = new FakeUblk();
  readonly memory: Record<string, MemoryDevice> = { mem: new MemoryDevice(64) };
  /** Usage reported for a block path; everything is unused unless a test says otherwise. */
  readonly usage = new Map<string, DeviceUsage>();
  readonly builtTables: Table[] = [];
  readonly store: DeviceStore;
  readonly links: DeviceLinks;

  private constructor(readonly dir: string) {
    this.store = new DeviceStore(path.join(dir, 'state'));
    this.links = new DeviceLinks(path.join(dir, 'links'));
  }

  static async create(): Promise<TestBed> {
    return new TestBed(await fsp.mkdtemp(path.join(os.tmpdir(), 'ublk-dm-registry-')));
  }

  readonly scope = testScope();

  deps(): RegistryDeps {
    return {
      scope: this.scope,
      buildTable: async (text, device) => {
        const table = await loadMemoryTable(text, this.memory, { scope: this.scope, device });
        this.builtTables.push(table);
        return table;
      },
      createDispatcher: (table) => new Dispatcher(table, { suspended: true }),
      createUblk: this.ublk.factory,
      store: this.store,
      links: this.links,
      probeUsage: async (blockPath) => this.usage.get(blockPath) ?? UNUSED,
      readAheadSectors: async () => 256,
      log: silentLogger(),
    };
  }

  async linkTarget(name: string): Promise<string | undefined> {
    return fsp.readlink(this.links.pathFor(name)).catch(() => undefined);
  }

  cleanup(): Promise<void> {
    return fsp.rm(this.dir, { recursive: true, force: true });
  }
}
