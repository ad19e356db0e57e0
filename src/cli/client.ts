import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import type { DaemonPaths } from '../daemon/paths';
import { LineSplitter, changesState, decodeResponse, encodeRequest, type Request, type Results } from '../wire/protocol';

/** The daemon answered with an error: its message and errno name. */
export class DaemonError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** Nothing listens on the socket (no daemon, or a stale socket file). */
export class DaemonAbsentError extends Error {}

/**
 * The daemon took the connection and dropped it without answering: it is exiting or was killed.
 * A killed daemon's socket takes connections until its last thread has exited, so this is what a
 * command sent in that instant meets.
 */
export class DaemonGoneError extends Error {}

// Generous: a daemon that dies is noticed at once (its exit ends the wait); this bounds only a
// live daemon that is slow to load, as under emulation with cold caches.
const DAEMON_START_TIMEOUT_MS = 60_000;
const DAEMON_POLL_MS = 100;

/** Send one request on a fresh connection and wait for its answer. */
export function sendRequest<R extends Request>(socketPath: string, request: R): Promise<Results[R['verb']]> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    const splitter = new LineSplitter();
    let settled = false;
    const finish = (action: () => void): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      action();
    };
    socket.setEncoding('utf8');
    socket.once('connect', () => socket.write(encodeRequest(request)));
    socket.on('data', (chunk: string) => {
      try {
        const [line] = splitter.push(chunk);
        if (line === undefined) return;
        const response = decodeResponse(line);
        if (response.ok) finish(() => resolve(response.result as Results[R['verb']]));
        else finish(() => reject(new DaemonError(response.error.message, response.error.code)));
      } catch (err) {
        finish(() => reject(err));
      }
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      const absent = err.code === 'ENOENT' || err.code === 'ECONNREFUSED';
      const gone = err.code === 'ECONNRESET' || err.code === 'EPIPE';
      finish(() => reject(absent ? new DaemonAbsentError(`no ublk-dm daemon on ${socketPath}`) : gone ? goneError(request) : err));
    });
    socket.once('close', () => finish(() => reject(goneError(request))));
  });
}

function goneError(request: Request): DaemonGoneError {
  const what = 'the daemon closed the connection without answering (it is exiting, or was killed)';
  if (!changesState(request)) return new DaemonGoneError(what);
  return new DaemonGoneError(`${what}; \`${request.verb}\` may or may not have been carried out (\`ublk-dm ls\` and \`ublk-dm table\` show which, starting a new daemon if need be)`);
}

// A killed daemon's socket is gone once its last thread has exited: well under a second, unless
// its threads are stuck in the kernel. Past this, the error is the user's to see.
const GONE_RETRY_FOR_MS = 10_000;
const GONE_RETRY_MS = 100;

/**
 * Send a request, starting the daemon first if none is running: `node <cliScript> daemon`,
 * detached, its output in <run>/daemon.log. A request that changes nothing is sent again when a
 * dying daemon drops it (to the next daemon, started here if need be); one that changes something
 * is not, since the dying daemon may have carried it out: its error says so.
 */
export async function sendRequestStartingDaemon<R extends Request>(
  paths: DaemonPaths,
  cliScript: string,
  request: R,
  /** The environment the daemon is started with: the one `paths` were read from. */
  env: NodeJS.ProcessEnv = process.env,
): Promise<Results[R['verb']]> {
  const deadline = Date.now() + GONE_RETRY_FOR_MS;
  for (;;) {
    try {
      return await sendRequestToRunningOrNewDaemon(paths, cliScript, request, env);
    } catch (err) {
      const retry = err instanceof DaemonGoneError && resendable(request) && Date.now() < deadline;
      if (!retry) throw err;
      await new Promise((resolve) => setTimeout(resolve, GONE_RETRY_MS));
    }
  }
}

// `wait` changes nothing, but its event number counts the dying daemon's events, not the next one's.
function resendable(request: Request): boolean {
  return !changesState(request) && request.verb !== 'wait';
}

async function sendRequestToRunningOrNewDaemon<R extends Request>(
  paths: DaemonPaths,
  cliScript: string,
  request: R,
  env: NodeJS.ProcessEnv,
): Promise<Results[R['verb']]> {
  try {
    return await sendRequest(paths.socketPath, request);
  } catch (err) {
    if (!(err instanceof DaemonAbsentError)) throw err;
  }
  await startDaemon(paths, cliScript, env);
  return sendRequest(paths.socketPath, request);
}

async function startDaemon(paths: DaemonPaths, cliScript: string, env: NodeJS.ProcessEnv): Promise<void> {
  try {
    await fsp.mkdir(paths.runDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new Error(`cannot create ${paths.runDir} to start the daemon (are you root?): ${(err as Error).message}`);
  }
  const log = await fsp.open(paths.daemonLogPath, 'a', 0o600);
  let exited: string | undefined;
  try {
    const child = spawn(process.execPath, [cliScript, 'daemon'], {
      env,
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
    });
    child.once('exit', (code, signal) => {
      exited = signal ? `signal ${signal}` : `exit code ${code}`;
    });
    child.once('error', (err) => {
      exited = err.message;
    });
    child.unref();
  } finally {
    await log.close();
  }
  const deadline = Date.now() + DAEMON_START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (await socketAccepts(paths.socketPath)) return;
    if (exited !== undefined) break;
    await new Promise((resolve) => setTimeout(resolve, DAEMON_POLL_MS));
  }
  const why = exited !== undefined ? `it exited (${exited})` : `no socket after ${DAEMON_START_TIMEOUT_MS / 1000} s`;
  throw new Error(`could not start the daemon: ${why}; see ${paths.daemonLogPath}`);
}

const REMOVE_RETRIES = 25;
const REMOVE_RETRY_MS = 200;

/**
 * Remove a device; with `retry`, keep trying for 5 s while it is busy (a last close racing the
 * removal, as dmsetup's --retry allows for udev).
 */
export async function removeDevice(send: (request: { verb: 'remove'; name: string }) => Promise<unknown>, name: string, retry: boolean): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await send({ verb: 'remove', name });
      return;
    } catch (err) {
      const busy = err instanceof DaemonError && err.code === 'EBUSY';
      if (!busy || !retry || attempt >= REMOVE_RETRIES) throw err;
      await new Promise((resolve) => setTimeout(resolve, REMOVE_RETRY_MS));
    }
  }
}

/** True if something accepts connections on the socket. */
export function socketAccepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}
