import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/**
 * `/dev/ublk-dm/<name>` → `/dev/ublkbN`, the stable name users mount and script against; and,
 * where a mapper directory is given, `/dev/mapper/<name>` too, so scripts written for dmsetup
 * find our devices where they look. The mapper directory belongs to kernel dm first: an entry
 * there is replaced or removed only when it is one of our links (a symlink to a /dev/ublkb*).
 */
export class DeviceLinks {
  constructor(
    readonly dir: string,
    readonly mapperDir?: string,
  ) {}

  pathFor(name: string): string {
    return path.join(this.dir, name);
  }

  async create(name: string, blockPath: string): Promise<void> {
    await replaceLink(this.dir, name, blockPath);
    if (this.mapperDir !== undefined && (await isOursOrAbsent(path.join(this.mapperDir, name)))) {
      await replaceLink(this.mapperDir, name, blockPath);
    }
  }

  /** Removing a link that is already gone is not an error. */
  async remove(name: string): Promise<void> {
    await fsp.rm(this.pathFor(name), { force: true });
    if (this.mapperDir === undefined) return;
    const mapperPath = path.join(this.mapperDir, name);
    if (await isOursOrAbsent(mapperPath)) await fsp.rm(mapperPath, { force: true });
  }
}

/** Create or replace the link (a stale one survives a daemon crash); the swap is atomic. */
async function replaceLink(dir: string, name: string, blockPath: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
  const linkPath = path.join(dir, name);
  const tempPath = path.join(dir, `.${name}.${process.pid}.tmp`);
  await fsp.rm(tempPath, { force: true });
  await fsp.symlink(blockPath, tempPath);
  try {
    await fsp.rename(tempPath, linkPath);
  } catch (err) {
    await fsp.rm(tempPath, { force: true });
    throw err;
  }
}

async function isOursOrAbsent(entryPath: string): Promise<boolean> {
  try {
    return /^\/dev\/ublkb\d+$/.test(await fsp.readlink(entryPath));
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}
