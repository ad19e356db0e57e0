import * as path from 'node:path';

/**
 * Where the daemon keeps its runtime files, saved tables and device links. Each has an
 * environment override so tests (and unprivileged experiments) can run in a scratch directory.
 */
export interface DaemonPaths {
  /** Socket, pid file and the auto-started daemon's log; root only (0700). */
  readonly runDir: string;
  /** One saved table per device, read back when the daemon starts. */
  readonly stateDir: string;
  /** `<linkDir>/<name>` is a symlink to the device's /dev/ublkbN. */
  readonly linkDir: string;
  /**
   * `<mapperDir>/<name>` too, for dmsetup scripts: /dev/mapper with the default link directory,
   * none with another (tests), unless UBLK_DM_MAPPER_DIR says (empty: none).
   */
  readonly mapperDir: string | undefined;
  readonly socketPath: string;
  readonly pidFilePath: string;
  readonly daemonLogPath: string;
}

export const DEFAULT_RUN_DIR = '/run/ublk-dm';
export const DEFAULT_STATE_DIR = '/var/lib/ublk-dm';
export const DEFAULT_LINK_DIR = '/dev/ublk-dm';
export const DEFAULT_MAPPER_DIR = '/dev/mapper';

export function daemonPaths(env: NodeJS.ProcessEnv = process.env): DaemonPaths {
  const runDir = env.UBLK_DM_RUN_DIR || DEFAULT_RUN_DIR;
  const linkDir = env.UBLK_DM_LINK_DIR || DEFAULT_LINK_DIR;
  const mapperDir = env.UBLK_DM_MAPPER_DIR ?? (linkDir === DEFAULT_LINK_DIR ? DEFAULT_MAPPER_DIR : '');
  return {
    runDir,
    stateDir: env.UBLK_DM_STATE_DIR || DEFAULT_STATE_DIR,
    linkDir,
    mapperDir: mapperDir === '' ? undefined : mapperDir,
    socketPath: path.join(runDir, 'ublk-dm.sock'),
    pidFilePath: path.join(runDir, 'ublk-dm.pid'),
    daemonLogPath: path.join(runDir, 'daemon.log'),
  };
}
