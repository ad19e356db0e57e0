import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { DeviceOptions } from '../wire/protocol';
import type { UblkIdentity } from '../dm/mapped-device';

/**
 * One of our own devices that a saved table names. Device numbers are handed out again at every
 * restore, so the spec as written (`/dev/ublkb2`, `/dev/ublk-dm/vol`, `259:2`) means nothing
 * then: the table is restored over the device with this name, and only if it is still the same
 * device (uuid) of the same size.
 */
export interface LowerDevice {
  /** The device argument as the table text spells it. */
  readonly spec: string;
  readonly name: string;
  readonly uuid: string;
  readonly sizeSectors: number;
}

/** What it takes to bring a device back after a daemon restart. */
export interface SavedDevice {
  readonly name: string;
  /** Given at create and kept for the device's life: what a table over it checks at restore. */
  readonly uuid: string;
  /** The live table as the user gave it (paths stay paths: major:minor can change across boots). */
  readonly table: string;
  readonly options: DeviceOptions;
  /** Our own devices the table names; empty when it names none. */
  readonly lowers: readonly LowerDevice[];
  /**
   * The kernel device serving it, when the kernel can keep it across a daemon crash (ublk user
   * recovery): the next daemon reattaches to it instead of making a new one.
   */
  readonly ublk?: UblkIdentity;
}

export interface StoreLoadResult {
  readonly devices: SavedDevice[];
  /** Files that could not be read back; they are left in place for a human to look at. */
  readonly failures: { readonly file: string; readonly error: Error }[];
}

const FILE_FORMAT = 1;
const SUFFIX = '.json';

/**
 * Saved device tables, one JSON file per device. Every write is atomic (temp file, fsync,
 * rename, fsync of the directory) so a crash leaves either the old or the new table, never half.
 */
export class DeviceStore {
  constructor(readonly dir: string) {}

  async save(device: SavedDevice): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const finalPath = this.fileFor(device.name);
    const tempPath = path.join(this.dir, `.${device.name}${SUFFIX}.${process.pid}.tmp`);
    const { ublk, ...rest } = device;
    const body = JSON.stringify({ format: FILE_FORMAT, ...rest, ...(ublk ? { ublk: encodeUblk(ublk) } : {}) }, null, 2) + '\n';
    const file = await fsp.open(tempPath, 'w', 0o600);
    try {
      await file.writeFile(body);
      await file.sync();
    } finally {
      await file.close();
    }
    try {
      await fsp.rename(tempPath, finalPath);
    } catch (err) {
      await fsp.rm(tempPath, { force: true });
      throw err;
    }
    await this.syncDir();
  }

  /** Forget a device; forgetting one that was never saved is not an error. */
  async delete(name: string): Promise<void> {
    await fsp.rm(this.fileFor(name), { force: true });
    await this.syncDir();
  }

  async loadAll(): Promise<StoreLoadResult> {
    let entries: string[];
    try {
      entries = await fsp.readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { devices: [], failures: [] };
      throw err;
    }
    const devices: SavedDevice[] = [];
    const failures: { file: string; error: Error }[] = [];
    for (const entry of entries.sort()) {
      if (entry.startsWith('.') || !entry.endsWith(SUFFIX)) continue;
      const file = path.join(this.dir, entry);
      try {
        devices.push(parseSaved(await fsp.readFile(file, 'utf8'), entry.slice(0, -SUFFIX.length)));
      } catch (err) {
        failures.push({ file, error: err as Error });
      }
    }
    return { devices, failures };
  }

  private fileFor(name: string): string {
    return path.join(this.dir, name + SUFFIX);
  }

  /** Make the rename/unlink itself durable. */
  private async syncDir(): Promise<void> {
    let dir: fsp.FileHandle | undefined;
    try {
      dir = await fsp.open(this.dir, 'r');
      await dir.sync();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    } finally {
      await dir?.close();
    }
  }
}

function parseSaved(text: string, expectedName: string): SavedDevice {
  const raw = JSON.parse(text) as Record<string, unknown>;
  if (raw.format !== FILE_FORMAT) throw new Error(`unknown saved-device format ${JSON.stringify(raw.format)}`);
  if (raw.name !== expectedName) throw new Error(`file holds device ${JSON.stringify(raw.name)}, not ${expectedName}`);
  if (typeof raw.table !== 'string') throw new Error('saved device has no table');
  const options = (raw.options ?? {}) as Record<string, unknown>;
  const positive = (v: unknown): number | undefined =>
    typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : undefined;
  const queues = positive(options.queues);
  const depth = positive(options.depth);
  return {
    name: expectedName,
    // Saved before devices had one (format 1 without uuid): a new one, kept from now on.
    uuid: typeof raw.uuid === 'string' && raw.uuid !== '' ? raw.uuid : randomUUID(),
    table: raw.table,
    lowers: parseLowers(raw.lowers),
    ...(raw.ublk !== undefined ? { ublk: parseUblk(raw.ublk) } : {}),
    options: {
      readOnly: options.readOnly === true,
      ...(queues !== undefined ? { queues } : {}),
      ...(depth !== undefined ? { depth } : {}),
    },
  };
}

function parseLowers(value: unknown): LowerDevice[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new Error('"lowers" must be a list');
  return value.map((entry: Record<string, unknown>) => {
    const { spec, name, uuid, sizeSectors } = entry ?? {};
    if (typeof spec !== 'string' || typeof name !== 'string' || typeof uuid !== 'string' || !Number.isSafeInteger(sizeSectors)) {
      throw new Error(`a lower device needs spec, name, uuid and sizeSectors: ${JSON.stringify(entry)}`);
    }
    return { spec, name, uuid, sizeSectors: sizeSectors as number };
  });
}

/** bigints as hex strings: JSON has no 64-bit integers. */
function encodeUblk(ublk: UblkIdentity): Record<string, unknown> {
  return { ...ublk, serverFlags: `0x${ublk.serverFlags.toString(16)}`, features: `0x${ublk.features.toString(16)}` };
}

function parseUblk(value: unknown): UblkIdentity {
  const entry = (value ?? {}) as Record<string, unknown>;
  const { id, serverFlags, queues, depth, maxIoBytes, features } = entry;
  const hex = (v: unknown): v is string => typeof v === 'string' && /^0x[0-9a-f]{1,16}$/.test(v);
  const count = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  if (!count(id) || !hex(serverFlags) || !count(queues) || !count(depth) || !count(maxIoBytes) || !hex(features)) {
    throw new Error(`"ublk" needs id, serverFlags, queues, depth, maxIoBytes and features: ${JSON.stringify(value)}`);
  }
  return { id, serverFlags: BigInt(serverFlags), queues, depth, maxIoBytes, features: BigInt(features) };
}
