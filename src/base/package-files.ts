import { readFileSync } from 'node:fs';
import * as path from 'node:path';

/**
 * Where this package's own files are, found from wherever the running code was loaded: the
 * compiled tree (dist/src/...) or the bundle (dist/bundle/*.js) sit at different depths, so
 * relative paths from __dirname would differ between them.
 */

interface PackageJson {
  readonly name?: string;
  readonly version?: string;
}

let root: { dir: string; manifest: PackageJson } | undefined;

function findRoot(): { dir: string; manifest: PackageJson } {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    try {
      const manifest = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
      if (manifest.name === 'ublk-dm') return { dir, manifest };
    } catch {
      // not here: one level up
    }
    if (path.dirname(dir) === dir) throw new Error(`cannot find the ublk-dm package above ${__dirname}`);
  }
}

/** The directory holding ublk-dm's package.json. */
export function packageRoot(): string {
  root ??= findRoot();
  return root.dir;
}

/** The package version from package.json, or 'unknown' when the package cannot be found. */
export function packageVersion(): string {
  try {
    root ??= findRoot();
  } catch {
    return 'unknown';
  }
  return typeof root.manifest.version === 'string' ? root.manifest.version : 'unknown';
}

/** The program the CLI runs as `node <it> daemon` to start a daemon: the installed entry point. */
export function cliEntryScript(): string {
  return path.join(packageRoot(), 'bin', 'ublk-dm');
}

/** The native addon node-gyp builds. */
export function nativeAddonPath(): string {
  return path.join(packageRoot(), 'build', 'Release', 'ublkdm_native.node');
}
