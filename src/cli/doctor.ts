import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { KernelUblkDevice } from '../daemon/registry';
import { installationMark, isMarkedBy } from '../daemon/ownership';
import type { DaemonPaths } from '../daemon/paths';
import { DeviceStore } from '../daemon/store';
import { processIsAlive } from '../ublk/processes';
import type { DeviceListEntry, FailedDevice } from '../wire/protocol';
import { DaemonAbsentError, sendRequest } from './client';

/**
 * `ublk-dm doctor`: what is wrong around the daemon, found by looking, never by changing
 * anything. `diagnose` judges facts gathered by `gatherFacts`, so the judging is unit-tested
 * without a kernel.
 */

export type Problem =
  | {
      readonly kind: 'dead-ublk-device';
      readonly id: number;
      readonly state: KernelUblkDevice['state'];
      readonly serverPid: number;
      /** Whose: this installation (its state directory), or someone else (another ublk server or ublk-dm installation). */
      readonly owner: 'this installation' | 'other';
      readonly mark: string;
      readonly detail: string;
    }
  | { readonly kind: 'stale-link'; readonly path: string; readonly target: string; readonly detail: string }
  | { readonly kind: 'unreadable-saved-table'; readonly file: string; readonly error: string }
  | { readonly kind: 'not-restored'; readonly name: string; readonly reason: string }
  | { readonly kind: 'cannot-check'; readonly what: string; readonly error: string };

export interface DoctorReport {
  readonly problems: Problem[];
}

/** One symlink in the link or mapper directory. */
export interface LinkEntry {
  readonly path: string;
  /** The device name it stands for (the link's file name). */
  readonly name: string;
  readonly target: string;
  readonly targetExists: boolean;
}

export interface DoctorFacts {
  /** This installation's mark (ownership.ts), from its state directory. */
  readonly installation: number;
  /** The kernel's ublk devices, or why they could not be listed. */
  readonly kernelDevices: readonly KernelUblkDevice[] | { readonly error: string };
  /** What the running daemon serves and could not restore; undefined when none runs. */
  readonly daemon: { readonly devices: readonly DeviceListEntry[]; readonly failures: readonly FailedDevice[] } | undefined;
  readonly links: readonly LinkEntry[];
  readonly unreadableSaved: ReadonlyArray<{ readonly file: string; readonly error: string }>;
  processIsAlive(pid: number): boolean;
}

export function diagnose(facts: DoctorFacts): DoctorReport {
  const problems: Problem[] = [];
  if ('error' in facts.kernelDevices) {
    problems.push({ kind: 'cannot-check', what: "the kernel's ublk devices", error: facts.kernelDevices.error });
  } else {
    for (const device of facts.kernelDevices) {
      const problem = deadDevice(device, facts);
      if (problem) problems.push(problem);
    }
  }
  for (const link of facts.links) {
    const detail = staleLink(link, facts);
    if (detail !== undefined) problems.push({ kind: 'stale-link', path: link.path, target: link.target, detail });
  }
  for (const { file, error } of facts.unreadableSaved) problems.push({ kind: 'unreadable-saved-table', file, error });
  const unreadableNames = new Set(facts.unreadableSaved.map(({ file }) => path.basename(file, '.json')));
  for (const failure of facts.daemon?.failures ?? []) {
    if (!unreadableNames.has(failure.name)) problems.push({ kind: 'not-restored', name: failure.name, reason: failure.reason });
  }
  return { problems };
}

/** A device no live process serves, or that nobody will take back; undefined for a healthy one. */
function deadDevice(device: KernelUblkDevice, facts: DoctorFacts): Problem | undefined {
  const ours = isMarkedBy(device.serverFlags, facts.installation);
  const served = facts.daemon?.devices.some((entry) => entry.blockPath === `/dev/ublkb${device.id}`) ?? false;
  if (ours && served) return undefined;
  let detail: string;
  if (device.state === 'dead') {
    detail = 'stopped but never deleted';
  } else if (device.state === 'live' && facts.processIsAlive(device.serverPid)) {
    if (!ours) return undefined; // someone else's, served
    detail = `served by process ${device.serverPid}, which is not this installation's daemon`;
  } else if (device.state === 'live') {
    // The kernel quiesces a recoverable device within a moment of its server's death. One that
    // stays LIVE lost a request when its server's rings went (IoRing.keepUntilExit): its
    // quiesce waits for it for good, holding the device's lock that every control command takes.
    detail =
      `its server ${device.serverPid} is gone but the kernel has not quiesced it: if that lasts more than a few seconds, ` +
      'the kernel lost one of its requests and only a reboot frees it (its I/O waits; STOP_DEV or DEL_DEV would hang)';
  } else if (!ours) {
    detail = `its server ${device.serverPid} is gone; ${device.state}, its I/O waits for a new server`;
  } else if (facts.daemon === undefined) {
    detail = `${device.state}, waiting for the next daemon (its I/O waits; any ublk-dm command starts one)`;
  } else {
    detail = `${device.state}, and the running daemon does not serve it (a daemon deletes such devices when it starts)`;
  }
  const mark = `0x${device.serverFlags.toString(16)}`;
  return { kind: 'dead-ublk-device', id: device.id, state: device.state, serverPid: device.serverPid, owner: ours ? 'this installation' : 'other', mark, detail };
}

/** Why a link is stale, or undefined when it is not (or cannot be told without a daemon). */
function staleLink(link: LinkEntry, facts: DoctorFacts): string | undefined {
  if (!link.targetExists) return `${link.target} does not exist`;
  if (facts.daemon === undefined) return undefined; // the device may be waiting for the next daemon
  const served = facts.daemon.devices.find((device) => device.name === link.name);
  if (served === undefined) return `the daemon has no device ${link.name}`;
  if (served.blockPath !== link.target) return `${link.name} is ${served.blockPath}`;
  return undefined;
}

export function formatDoctorReport(report: DoctorReport): string {
  if (report.problems.length === 0) return 'no problems found\n';
  return report.problems.map((problem) => `${describe(problem)}\n`).join('');
}

function describe(problem: Problem): string {
  switch (problem.kind) {
    case 'dead-ublk-device': {
      const whose = problem.owner === 'this installation' ? "this installation's" : `not this installation's (mark ${problem.mark}: another ublk server or ublk-dm installation)`;
      return `dead ublk device ${problem.id} (/dev/ublkb${problem.id}), ${whose}: ${problem.detail}`;
    }
    case 'stale-link':
      return `stale link ${problem.path} -> ${problem.target}: ${problem.detail}`;
    case 'unreadable-saved-table':
      return `unreadable saved table ${problem.file}: ${problem.error}`;
    case 'not-restored':
      return `saved device ${problem.name} was not restored: ${problem.reason}`;
    case 'cannot-check':
      return `cannot check ${problem.what}: ${problem.error}`;
  }
}

/** Thrown after the report is printed, for the exit status alone. */
export class DoctorFoundProblems extends Error {
  constructor() {
    super('the doctor found problems');
  }
}

export async function runDoctor(paths: DaemonPaths): Promise<DoctorReport> {
  return diagnose(await gatherFacts(paths));
}

async function gatherFacts(paths: DaemonPaths): Promise<DoctorFacts> {
  const installation = installationMark(path.resolve(paths.stateDir));
  const [kernelDevices, daemon, links, unreadableSaved] = await Promise.all([
    listKernelDevices(installation),
    askDaemon(paths),
    readLinks(paths),
    new DeviceStore(paths.stateDir).loadAll().then(
      ({ failures }) => failures.map(({ file, error }) => ({ file, error: error.message })),
      (err: Error) => [{ file: paths.stateDir, error: err.message }],
    ),
  ]);
  return { installation, kernelDevices, daemon, links, unreadableSaved, processIsAlive };
}

/** Loaded only here: the rest of the CLI never loads the native addon. */
async function listKernelDevices(installation: number): Promise<KernelUblkDevice[] | { error: string }> {
  try {
    const { kernelRecovery } = await import('../daemon/kernel');
    return await kernelRecovery(installation, true).listKernelDevices();
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/** The running daemon's view, without starting one (the doctor changes nothing). */
async function askDaemon(paths: DaemonPaths): Promise<DoctorFacts['daemon']> {
  try {
    const [devices, failures] = await Promise.all([sendRequest(paths.socketPath, { verb: 'ls' }), sendRequest(paths.socketPath, { verb: 'failures' })]);
    return { devices, failures };
  } catch (err) {
    if (err instanceof DaemonAbsentError) return undefined;
    throw err;
  }
}

/** Every symlink in the link directory, and ours (to a /dev/ublkb*) in the mapper directory. */
async function readLinks(paths: DaemonPaths): Promise<LinkEntry[]> {
  const entries: LinkEntry[] = [];
  for (const [dir, onlyOurs] of [[paths.linkDir, false], ...(paths.mapperDir !== undefined ? [[paths.mapperDir, true] as const] : [])] as const) {
    const names = await fsp.readdir(dir).catch(() => [] as string[]);
    for (const name of names.sort()) {
      if (name.startsWith('.')) continue;
      const linkPath = path.join(dir, name);
      const target = await fsp.readlink(linkPath).catch(() => undefined);
      if (target === undefined || (onlyOurs && !/^\/dev\/ublkb\d+$/.test(target))) continue;
      const targetExists = await fsp.stat(linkPath).then(() => true, () => false);
      entries.push({ path: linkPath, name, target, targetExists });
    }
  }
  return entries;
}
