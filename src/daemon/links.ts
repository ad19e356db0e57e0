import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/** `/dev/ublk-dm/<name>` → `/dev/ublkbN`, the stable name users mount and script against. */
export class DeviceLinks {
  constructor(readonly dir: string) {}

  pathFor(name: string): string {
    return path.join(this.dir, name);
  }

  /** Create or replace the link (a stale one survives a daemon crash); the swap is atomic. */
  async create(name: string, blockPath: string): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o755 });
    const linkPath = this.pathFor(name);
    const tempPath = path.join(this.dir, `.${name}.${process.pid}.tmp`);
    await fsp.rm(tempPath, { force: true });
    await fsp.symlink(blockPath, tempPath);
    try {
      await fsp.rename(tempPath, linkPath);
    } catch (err) {
      await fsp.rm(tempPath, { force: true });
      throw err;
    }
  }

  /** Removing a link that is already gone is not an error. */
  async remove(name: string): Promise<void> {
    await fsp.rm(this.pathFor(name), { force: true });
  }
}
