/**
 * What the integration tests share: running the real CLI and real tools against real
 * /dev/ublkbN devices, each suite with its own daemon state, run and link directories.
 * These tests need ublk and root: without them they fail (tools/test.sh runs them in the guest
 * when this machine has no ublk), they never skip.
 */
import { execFile, spawn, ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile, stat, writeFile, truncate } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { runCli } from '../../src/cli/cli';
import { processHasExited } from '../../src/ublk/processes';

export const projectRoot = resolve(__dirname, '..', '..', '..');
export const cliPath = join(projectRoot, 'bin', 'ublk-dm');

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Fails (never skips) when real devices cannot be made here. */
export function requireRealUblk(): void {
  if (!existsSync('/dev/ublk-control')) {
    throw new Error('/dev/ublk-control is missing: run integration tests through `npm test` (it uses the guest runner)');
  }
  if (process.getuid && process.getuid() !== 0) throw new Error('integration tests need root');
}

/** Runs a program to completion without blocking the event loop. */
export function run(file: string, args: string[], opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolvePromise) => {
    const child = execFile(file, args, { env: opts.env ?? process.env, maxBuffer: 64 << 20, timeout: opts.timeoutMs ?? 120_000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : (child.exitCode ?? 1)) : 0;
        resolvePromise({ code, stdout, stderr });
      });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

export function sh(command: string, opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return run('/bin/bash', ['-c', command], opts);
}

/** Runs a shell command and throws with its output if it fails. */
export async function mustSh(command: string, opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<string> {
  const r = await sh(command, opts);
  if (r.code !== 0) throw new Error(`\`${command}\` exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** One isolated ublk-dm installation: its own run, state and link directories. */
export class Sandbox {
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;

  constructor(label: string) {
    this.dir = mkdtempSync(join(tmpdir(), `ublkdm-${label}-`));
    this.env = {
      ...process.env,
      UBLK_DM_RUN_DIR: join(this.dir, 'run'),
      UBLK_DM_STATE_DIR: join(this.dir, 'state'),
      UBLK_DM_LINK_DIR: join(this.dir, 'links'),
    };
  }

  get stateDir(): string { return this.env.UBLK_DM_STATE_DIR!; }
  get linkDir(): string { return this.env.UBLK_DM_LINK_DIR!; }

  /**
   * `ublk-dm ARGS` against this sandbox, run in the test's own process (runCli: the same parsing,
   * requests and output as the binary, without a node start per call, which costs seconds in the
   * TCG guest). The daemon it starts is still its own process.
   */
  cli(args: string[], input?: string): Promise<RunResult> {
    return runCli(args, { env: this.env, ...(input !== undefined ? { input } : {}) });
  }

  /** `ublk-dm ARGS` as its own process, for what only a real process shows (exit codes, signals). */
  cliProcess(args: string[], input?: string): Promise<RunResult> {
    return run(process.execPath, [cliPath, ...args], { env: this.env, input });
  }

  /** The CLI must succeed; returns stdout. */
  async ok(args: string[], input?: string): Promise<string> {
    const r = await this.cli(args, input);
    if (r.code !== 0) throw new Error(`ublk-dm ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** Creates a device and returns its /dev/ublkbN path. */
  async create(name: string, table: string, extra: string[] = []): Promise<string> {
    const out = (await this.ok(['create', name, '--table', table, ...extra])).trim();
    if (!/^\/dev\/ublkb\d+$/.test(out)) throw new Error(`create printed ${JSON.stringify(out)}, not a /dev/ublkbN path`);
    return out;
  }

  /** Starts `ublk-dm daemon` in the foreground (as systemd would) and waits for its socket. */
  async startDaemon(): Promise<ChildProcess> {
    const child = spawn(process.execPath, [cliPath, 'daemon'], { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => { stderr += d; });
    const sock = join(this.env.UBLK_DM_RUN_DIR!, 'ublk-dm.sock');
    for (let i = 0; i < 1200; i++) {
      if (existsSync(sock)) return child;
      if (child.exitCode !== null) break;
      await sleep(50);
    }
    throw new Error(`daemon did not come up: ${stderr}`);
  }

  /**
   * Stop the daemon (whoever started it) removing its kernel devices, and wait for it to exit:
   * `ublk-dm shutdown --remove-devices`. (A plain SIGTERM or `shutdown` leaves recoverable
   * devices in the kernel for the next daemon, which would carry them into the next test.)
   * The saved tables stay, so the next start brings the devices back.
   */
  async stopDaemon(): Promise<void> {
    const r = await this.cli(['shutdown', '--remove-devices']);
    if (r.code !== 0) throw new Error(`ublk-dm shutdown --remove-devices exited ${r.code}: ${r.stderr}${r.stdout}`);
  }

  /** Removes every device left behind, stops the daemon and deletes the directories. */
  async cleanup(): Promise<void> {
    // A test that failed midway may leave a filesystem mounted here. Removing its device would
    // wait in the kernel until the unmount (DEL_DEV), and the suites after this one would
    // inherit the mount: unmount it first, lazily if something still holds it.
    const mounts = (await readFile('/proc/self/mounts', 'utf8'))
      .split('\n')
      .map((line) => line.split(' ')[1] ?? '')
      .filter((point) => point.startsWith(`${this.dir}/`))
      .reverse();
    for (const point of mounts) await sh(`umount ${point} || umount -l ${point}`);
    const ls = await this.cli(['ls', '--json']);
    if (ls.code === 0) {
      try {
        const devices = JSON.parse(ls.stdout) as Array<{ name: string }>;
        for (const d of devices) await this.cli(['remove', d.name]);
      } catch { /* fall through to stopping the daemon */ }
    }
    await this.stopDaemon();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The pid in the sandbox's pid file: the daemon serving it now. */
export async function daemonPid(box: Sandbox): Promise<number> {
  return Number((await readFile(join(box.env.UBLK_DM_RUN_DIR!, 'ublk-dm.pid'), 'utf8')).trim());
}

/** Gone, or a zombie with no thread left: it has let go of its socket, rings and char devices. */
export function processExited(pid: number): boolean {
  return processHasExited(pid);
}

/** Runs a command in the background; resolves with its exit code and output. */
export function background(command: string): { child: ChildProcess; done: Promise<{ code: number; output: string }> } {
  const child = spawn('bash', ['-c', command], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const done = new Promise<{ code: number; output: string }>((resolve) => child.on('exit', (code) => resolve({ code: code ?? -1, output })));
  return { child, done };
}

/** How many lines the kernel log has now: where newDmesgErrors starts reading. */
export async function dmesgLineCount(): Promise<number> {
  return Number((await mustSh('dmesg | wc -l')).trim());
}

/** Kernel log lines since `since` that report an I/O, ext4 or JBD2 error on `device`. */
export async function newDmesgErrors(since: number, device: string): Promise<string[]> {
  const lines = (await mustSh('dmesg')).split('\n').slice(since);
  const name = device.replace('/dev/', '');
  return lines.filter((line) => line.includes(name) && /error|EXT4-fs.*(abort|shut)|JBD2/i.test(line));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A file of `byteLength` random bytes (or zeroes) in the guest's tmpfs. */
export async function makeBackingFile(dir: string, name: string, byteLength: number, fill: 'random' | 'zero' = 'random'): Promise<string> {
  const path = join(dir, name);
  if (fill === 'zero') {
    await writeFile(path, Buffer.alloc(0));
    await truncate(path, byteLength);
  } else {
    await mustSh(`head -c ${byteLength} /dev/urandom > ${path}`);
  }
  return path;
}

export async function sha256OfFile(path: string, byteLength?: number): Promise<string> {
  const cmd = byteLength === undefined ? `sha256sum ${path}` : `head -c ${byteLength} ${path} | sha256sum`;
  return (await mustSh(cmd)).split(' ')[0];
}

export async function fileBlocks(path: string): Promise<number> {
  return (await stat(path)).blocks;
}

export function randomName(prefix: string): string {
  return `${prefix}${randomBytes(3).toString('hex')}`;
}

/** The /dev/ublkb* nodes that exist now. */
export async function ublkBlockNodes(): Promise<string[]> {
  const out = await sh('ls /dev/ublkb* 2>/dev/null');
  return out.stdout.split('\n').filter(Boolean).sort();
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}
