import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import { socketAccepts } from '../cli/client';
import { DeviceLinks } from './links';
import { createLogger, type Logger } from '../base/log';
import { daemonPaths, type DaemonPaths } from './paths';
import {
  LineSplitter,
  PROTOCOL_VERSION,
  decodeRequest,
  encodeResponse,
  type Request,
  type Response,
  type Results,
  type WireError,
} from '../wire/protocol';
import { DeviceRegistry, type RegistryDeps } from './registry';
import { DeviceStore } from './store';
import { procUsageProbe, readAheadSectors } from './usage';
import { packageVersion } from '../base/package-files';
import { installationMark } from './ownership';
import * as path from 'node:path';
import { DmError } from '../base/errno';

/** A request about devices (`shutdown` is the server's own: see DaemonControl). */
export type DeviceRequest = Exclude<Request, { verb: 'shutdown' }>;

/** Carry out one request; the answer's shape is fixed per verb by `Results`. */
export async function serveRequest(registry: DeviceRegistry, request: DeviceRequest): Promise<Results[DeviceRequest['verb']]> {
  switch (request.verb) {
    case 'create':
      return registry.create(request.name, request.table, request.options);
    case 'reload':
      await registry.reload(request.name, request.table);
      return { name: request.name };
    case 'remove':
      await registry.remove(request.name);
      return { name: request.name };
    case 'suspend':
      await registry.suspend(request.name, { noflush: request.noflush });
      return { name: request.name };
    case 'wait':
      return { name: request.name, eventNr: await registry.waitEvent(request.name, request.eventNr) };
    case 'resume':
      await registry.resume(request.name);
      return { name: request.name };
    case 'message':
      return { name: request.name, reply: await registry.message(request.name, request.sector, request.words) };
    case 'ls':
      return registry.list(request.target);
    case 'table':
      return registry.tables(request.name, 'table', request.inactive);
    case 'status':
      return registry.tables(request.name, 'info');
    case 'info':
      return registry.info(request.name);
    case 'param':
      return registry.parameters(request.name, request.value);
    case 'version':
      return { version: packageVersion(), protocol: PROTOCOL_VERSION };
    case 'failures':
      return registry.failures();
  }
}

/** How the server stops its daemon when a client asks (`ublk-dm shutdown`). */
export interface DaemonControl {
  /** Stop serving and deal with the devices; what it did is the answer. */
  shutdown(removeDevices: boolean): Promise<Results['shutdown']>;
  /** The answer is written: the daemon can go. */
  exit(): void;
}

/** Errors cross the socket as {message, code}; anything without an errno name is EINVAL (bad table, bad args). */
export function toWireError(err: unknown): WireError {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return { message: err.message, code: typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : 'EINVAL' };
  }
  return { message: String(err), code: 'EINVAL' };
}

/**
 * The unix-socket server. It binds the socket before the devices are restored (binding is what
 * makes a second daemon back off) and holds requests until `ready` settles.
 */
export class DaemonServer {
  private readonly server: net.Server;
  private readonly connections = new Map<net.Socket, Promise<void>>();
  private ready: Promise<void> = Promise.resolve();
  /** Set once the daemon is stopping: requests are refused from then on. */
  private stopping = false;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly paths: DaemonPaths,
    private readonly log: Logger,
    private control?: DaemonControl,
  ) {
    this.server = net.createServer((socket) => this.accept(socket));
  }

  /** Who carries out a `shutdown` request (the daemon, which owns the process). */
  setControl(control: DaemonControl): void {
    this.control = control;
  }

  /** Take the socket: refuse if a live daemon answers on it, replace it if stale. */
  async listen(): Promise<void> {
    await fsp.mkdir(this.paths.runDir, { recursive: true, mode: 0o700 });
    await fsp.chmod(this.paths.runDir, 0o700);
    try {
      await this.bind();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      if (await socketAccepts(this.paths.socketPath)) {
        const pid = await fsp.readFile(this.paths.pidFilePath, 'utf8').then((t) => t.trim(), () => 'unknown');
        throw new Error(`another ublk-dm daemon (pid ${pid}) is serving ${this.paths.socketPath}`);
      }
      this.log.warn(`removing stale socket ${this.paths.socketPath}`);
      await fsp.rm(this.paths.socketPath, { force: true });
      await this.bind();
    }
    await fsp.chmod(this.paths.socketPath, 0o600);
    await fsp.writeFile(this.paths.pidFilePath, `${process.pid}\n`, { mode: 0o644 });
  }

  /** Requests that arrive before `until` settles wait for it (used while saved devices come back). */
  holdRequestsUntil(until: Promise<unknown>): void {
    this.ready = until.then(
      () => undefined,
      () => undefined,
    );
  }

  /**
   * No new connections, and requests on open ones are refused: the daemon is stopping. Those
   * already running go on (the registry's shutdown waits for them).
   */
  stopAccepting(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.server.close();
  }

  /** Stop accepting, let running requests answer, drop the connections, remove socket and pid file. */
  async close(): Promise<void> {
    this.stopping = true;
    const closed = new Promise<void>((resolve) => (this.server.listening ? this.server.close(() => resolve()) : resolve()));
    await Promise.allSettled([...this.connections.values()]);
    for (const socket of this.connections.keys()) socket.destroy();
    await closed;
    await fsp.rm(this.paths.socketPath, { force: true });
    await fsp.rm(this.paths.pidFilePath, { force: true });
  }

  private bind(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      // Owner-only from the first instant; the directory is 0700 as well.
      const previousUmask = process.umask(0o177);
      this.server.listen(this.paths.socketPath, () => {
        this.server.off('error', onError);
        resolve();
      });
      process.umask(previousUmask);
    });
  }

  private accept(socket: net.Socket): void {
    socket.setEncoding('utf8');
    const splitter = new LineSplitter();
    let chain: Promise<void> = Promise.resolve();
    this.connections.set(socket, chain);
    socket.on('data', (chunk: string) => {
      let lines: string[];
      try {
        lines = splitter.push(chunk);
      } catch (err) {
        socket.end(encodeResponse({ ok: false, error: toWireError(err) }));
        return;
      }
      for (const line of lines) {
        chain = chain.then(() => this.answer(socket, line));
        this.connections.set(socket, chain);
      }
    });
    socket.on('error', (err) => this.log.debug(`client connection: ${err.message}`));
    socket.on('close', () => this.connections.delete(socket));
  }

  private async answer(socket: net.Socket, line: string): Promise<void> {
    let response: Response;
    let request: Request | undefined;
    try {
      request = decodeRequest(line);
      await this.ready;
      this.log.debug(`request ${request.verb}`);
      response = { ok: true, result: await this.serve(request) };
    } catch (err) {
      response = { ok: false, error: toWireError(err) };
      this.log.info(`request failed: ${response.error.message}`);
    }
    if (!socket.destroyed) await new Promise<void>((resolve) => socket.write(encodeResponse(response), () => resolve()));
    if (request?.verb === 'shutdown' && response.ok) this.control!.exit();
  }

  private serve(request: Request): Promise<unknown> {
    if (this.stopping) throw new DmError('the daemon is shutting down', 'ESHUTDOWN');
    if (request.verb !== 'shutdown') return serveRequest(this.registry, request);
    if (!this.control) throw new DmError('this server cannot be shut down by a request', 'EOPNOTSUPP');
    return this.control.shutdown(request.removeDevices);
  }
}

/**
 * The daemon's collaborators, loaded only here so that the CLI and the tests never load the
 * native addon. The scope is built here, once per daemon: this is the composition root.
 */
async function kernelDeps(paths: DaemonPaths, log: Logger, options: DaemonOptions): Promise<RegistryDeps> {
  const [{ kernelCollaborators, kernelRecovery }, { DaemonScope }, { builtInTargetTypes }, { pollMicrosFromEnvironment }] = await Promise.all([
    import('./kernel'),
    import('../dm/scope'),
    import('../targets'),
    import('./queue-threads'),
  ]);
  const scope = new DaemonScope({ targetTypes: builtInTargetTypes, warn: (message) => log.warn(message) });
  // The daemon thread serves the queues of stateful tables (and every queue with
  // UBLK_DM_QUEUE_LOOP=main) from its event loop: it polls between a client's requests, as a
  // queue thread does, instead of sleeping in epoll and being woken for each.
  scope.ring.pollAfterWakeups(pollMicrosFromEnvironment());
  return {
    recovery: kernelRecovery(installationMark(path.resolve(paths.stateDir)), options.recovery),
    // One ring for the ublk queues and the backing I/O: one wakeup serves both.
    ...kernelCollaborators(scope),
    store: new DeviceStore(paths.stateDir),
    links: new DeviceLinks(paths.linkDir, paths.mapperDir),
    probeUsage: procUsageProbe(),
    readAheadSectors: (blockPath) => readAheadSectors(blockPath),
    log,
  };
}

/**
 * `ublk-dm daemon`: serve until SIGTERM/SIGINT or a `shutdown` request, then exit 0. Devices a
 * later daemon can reattach to (ublk user recovery) are left to it, suspended, their I/O waiting
 * in the kernel, so a restart never unmounts anything; `shutdown --remove-devices` (and devices
 * made without recovery) remove the kernel devices instead. Saved tables stay either way.
 */
export interface DaemonOptions {
  /** Make new devices recoverable after a daemon crash (ublk user recovery, where the kernel offers it). */
  readonly recovery: boolean;
  /** `--param NAME=VALUE`: set before the socket is bound and the saved devices come back. */
  readonly params?: ReadonlyArray<{ readonly name: string; readonly value: string }>;
}

export async function runDaemon(
  paths: DaemonPaths = daemonPaths(),
  log: Logger = createLogger(),
  options: DaemonOptions = { recovery: true },
): Promise<void> {
  const registry = new DeviceRegistry(await kernelDeps(paths, log, options));
  for (const { name, value } of options.params ?? []) registry.parameters(name, value);
  const server = new DaemonServer(registry, paths, log);
  // Held from before the socket is bound: a client may connect the instant it is, and must not
  // be answered from an empty registry while the saved devices are still coming back.
  let restoreSettled!: () => void;
  server.holdRequestsUntil(new Promise<void>((resolve) => (restoreSettled = resolve)));
  await server.listen();
  log.info(`ublk-dm ${packageVersion()} listening on ${paths.socketPath} (pid ${process.pid})`);

  const restored = registry.restoreSaved().then(
    ({ restored: names, recovered, failed, deletedKernelDevices }) => {
      log.info(
        `restored ${names.length} device(s)` +
          (recovered.length ? ` (${recovered.length} reattached)` : '') +
          (failed.length ? `, ${failed.length} failed` : '') +
          (deletedKernelDevices.length ? `; deleted dead ublk device(s) ${deletedKernelDevices.join(', ')}` : ''),
      );
    },
    // Keep serving: the devices that are not back can be created again by hand.
    (err: Error) => log.error(`cannot restore saved devices from ${paths.stateDir}: ${err.message}`),
  );
  void restored.then(restoreSettled);

  let stopping: Promise<Results['shutdown']> | undefined;
  const stop = (why: string, removeDevices: boolean): Promise<Results['shutdown']> => {
    if (stopping) {
      log.warn(`${why} while stopping; still stopping`);
      return stopping;
    }
    stopping = (async () => {
      log.info(`${why}: stopping; ${removeDevices ? 'removing the kernel devices' : 'leaving recoverable devices to the next daemon'}; saved tables are kept`);
      server.stopAccepting();
      await restored;
      const report = await registry.shutdown({ handOver: !removeDevices });
      log.info(
        `stopped: ${report.handedOver.length} device(s) left for the next daemon, ${report.removed.length} removed` +
          (report.failed.length ? `, ${report.failed.length} failed` : ''),
      );
      return { ...report, pid: process.pid };
    })();
    return stopping;
  };
  const exit = async (): Promise<void> => {
    await server.close();
    // The completions of the last requests served queued their COMMIT_AND_FETCH on the ring;
    // two turns of the event loop let its flush submit them, so the kernel gets every answer
    // before the ring goes with the process (none is re-issued to the next daemon).
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    process.exit(0);
  };
  const onSignal = (signal: string): void => void stop(signal, false).then(exit, (err: Error) => {
    log.error(`stopping failed: ${err.message}`);
    process.exit(1);
  });
  server.setControl({ shutdown: (removeDevices) => stop(`shutdown request${removeDevices ? ' (--remove-devices)' : ''}`, removeDevices), exit: () => void exit() });
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  await restored;
}
