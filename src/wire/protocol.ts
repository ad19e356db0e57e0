import { DmError } from '../base/errno';
/**
 * The CLI ↔ daemon protocol: newline-delimited JSON over a unix socket, one request line answered
 * by one response line. Everything here is pure (no sockets), so framing, encoding and validation
 * are unit-tested on their own. A message carrying another protocol version is refused rather
 * than guessed at.
 */
export const PROTOCOL_VERSION = 1;

/** Longest line either side accepts; a table is text, so this is generous. */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

/** Options fixed when a device is created (the ublk device's shape). */
export interface DeviceOptions {
  readonly queues?: number;
  readonly depth?: number;
  readonly readOnly: boolean;
}

export type Request =
  | { readonly verb: 'create'; readonly name: string; readonly table: string; readonly options: DeviceOptions }
  | { readonly verb: 'reload'; readonly name: string; readonly table: string }
  | { readonly verb: 'remove'; readonly name: string }
  | { readonly verb: 'suspend'; readonly name: string; readonly noflush: boolean }
  | { readonly verb: 'wait'; readonly name: string; readonly eventNr: number }
  | { readonly verb: 'resume'; readonly name: string }
  | { readonly verb: 'ls'; readonly target?: string }
  | { readonly verb: 'table'; readonly name?: string; readonly inactive: boolean }
  | { readonly verb: 'status'; readonly name?: string }
  | { readonly verb: 'info'; readonly name?: string }
  | { readonly verb: 'message'; readonly name: string; readonly sector: number; readonly words: string[] }
  /** Target type parameters: all, one (`name`), or set one (`name` and `value`). */
  | { readonly verb: 'param'; readonly name?: string; readonly value?: string }
  | { readonly verb: 'version' }
  /** Saved devices the daemon could not bring back at its start. */
  | { readonly verb: 'failures' }
  /**
   * Stop the daemon. Devices a later daemon can reattach to are left to it (their I/O waits)
   * unless `removeDevices`; the answer comes once that is done, and then the daemon exits.
   */
  | { readonly verb: 'shutdown'; readonly removeDevices: boolean };

export type Verb = Request['verb'];
export const VERBS: readonly Verb[] = [
  'create', 'reload', 'remove', 'suspend', 'wait', 'resume', 'ls', 'table', 'status', 'info', 'message', 'param', 'version',
  'failures', 'shutdown',
];

/** True if answering `request` changes something in the daemon or its devices. */
export function changesState(request: Request): boolean {
  switch (request.verb) {
    case 'wait':
    case 'ls':
    case 'table':
    case 'status':
    case 'info':
    case 'version':
    case 'failures':
      return false;
    case 'param':
      return request.value !== undefined;
    case 'create':
    case 'reload':
    case 'remove':
    case 'suspend':
    case 'resume':
    case 'message':
    case 'shutdown':
      return true;
  }
}

export interface CreatedDevice {
  readonly name: string;
  readonly blockPath: string;
  readonly major: number;
  readonly minor: number;
}

export interface DeviceListEntry {
  readonly name: string;
  readonly major: number;
  readonly minor: number;
  readonly blockPath: string;
}

/** One table line as dmsetup prints it: `<start> <len> <type> <text>`. */
export interface TargetLine {
  readonly startSector: number;
  readonly lengthSectors: number;
  readonly type: string;
  readonly text: string;
}

/** `table` / `status` of one device. */
export interface TableReport {
  readonly name: string;
  readonly targets: TargetLine[];
}

/** Everything `dmsetup info` shows, plus where the device lives. */
export interface DeviceInfo {
  readonly name: string;
  readonly suspended: boolean;
  readonly readOnly: boolean;
  /** Undefined when sysfs could not tell. */
  readonly readAheadSectors?: number;
  readonly liveTable: boolean;
  readonly inactiveTable: boolean;
  readonly openCount: number;
  readonly eventNumber: number;
  readonly major: number;
  readonly minor: number;
  readonly targetCount: number;
  readonly sizeSectors: number;
  readonly blockPath: string;
  readonly queues: number;
  readonly depth: number;
  /** Requests its queue threads sent to the daemon thread (ForwardedCounts); absent when that thread serves its queues. */
  readonly forwarded?: { readonly requests: number; readonly copied: number };
}

/** A saved device the daemon could not bring back when it started; `remove NAME` forgets it. */
export interface FailedDevice {
  readonly name: string;
  readonly state: 'failed';
  /** Why: the error its restore met, or why its saved file could not be read. */
  readonly reason: string;
}

/** What a daemon shutdown did with each device. */
export interface ShutdownReport {
  /** Left in the kernel for the next daemon to reattach to; their I/O waits meanwhile. */
  readonly handedOver: string[];
  /** Removed from the kernel (their saved tables stay). */
  readonly removed: string[];
  readonly failed: ReadonlyArray<{ readonly name: string; readonly error: string }>;
}

/** A target type parameter and its value in the daemon (`ublk-dm param`). */
export interface ParameterSetting {
  readonly name: string;
  readonly value: string;
  readonly description: string;
}

export interface VersionInfo {
  readonly version: string;
  readonly protocol: number;
}

/** What each verb answers with. Read verbs without a name answer for every device. */
export interface Results {
  create: CreatedDevice;
  reload: { name: string };
  remove: { name: string };
  suspend: { name: string };
  wait: { name: string; eventNr: number };
  resume: { name: string };
  ls: DeviceListEntry[];
  table: TableReport[];
  status: TableReport[];
  info: DeviceInfo[];
  message: { name: string; reply: string };
  param: ParameterSetting[];
  version: VersionInfo;
  failures: FailedDevice[];
  /** With the pid of the daemon, which exits after answering. */
  shutdown: ShutdownReport & { pid: number };
}

export interface WireError {
  readonly message: string;
  /** An errno name ("EBUSY", "ENOENT", "EINVAL", ...) or "EPROTO" for protocol violations. */
  readonly code: string;
}

export type Response<R = unknown> = { readonly ok: true; readonly result: R } | { readonly ok: false; readonly error: WireError };

/** A malformed message: the peer speaks something else, or a different version of us. */
export class ProtocolError extends DmError {
  constructor(message: string) {
    super(message, 'EPROTO');
  }
}

export function encodeRequest(request: Request): string {
  return JSON.stringify({ v: PROTOCOL_VERSION, ...request }) + '\n';
}

export function encodeResponse(response: Response): string {
  return JSON.stringify({ v: PROTOCOL_VERSION, ...response }) + '\n';
}

/** Parse and validate one request line; throws ProtocolError naming what is wrong. */
export function decodeRequest(line: string): Request {
  const msg = parseVersioned(line);
  const verb = msg.verb;
  switch (verb) {
    case 'create':
      return {
        verb,
        name: str(msg, 'name'),
        table: str(msg, 'table', true),
        options: decodeOptions(msg.options),
      };
    case 'reload':
      return { verb, name: str(msg, 'name'), table: str(msg, 'table', true) };
    case 'remove':
    case 'resume':
      return { verb, name: str(msg, 'name') };
    case 'suspend':
      return { verb, name: str(msg, 'name'), noflush: bool(msg, 'noflush') };
    case 'wait':
      return { verb, name: str(msg, 'name'), eventNr: count(msg, 'eventNr') };
    case 'ls':
      return optional(msg, 'target') === undefined ? { verb } : { verb, target: str(msg, 'target') };
    case 'table':
      return { verb, ...optionalName(msg), inactive: bool(msg, 'inactive') };
    case 'status':
    case 'info':
      return { verb, ...optionalName(msg) };
    case 'message': {
      const words = msg.words;
      if (!Array.isArray(words) || words.length === 0 || !words.every((w) => typeof w === 'string')) {
        throw new ProtocolError('"words" must be a non-empty array of strings');
      }
      return { verb, name: str(msg, 'name'), sector: count(msg, 'sector'), words: words as string[] };
    }
    case 'param': {
      const value = optional(msg, 'value');
      if (value !== undefined && optional(msg, 'name') === undefined) throw new ProtocolError('"value" needs a "name"');
      return { verb, ...optionalName(msg), ...(value === undefined ? {} : { value: str(msg, 'value') }) };
    }
    case 'version':
    case 'failures':
      return { verb };
    case 'shutdown':
      return { verb, removeDevices: bool(msg, 'removeDevices') };
    default:
      throw new ProtocolError(`unknown verb ${JSON.stringify(verb)}`);
  }
}

/** Parse one response line. The result's shape is the daemon's word; only the envelope is checked. */
export function decodeResponse(line: string): Response {
  const msg = parseVersioned(line);
  if (msg.ok === true) {
    if (!('result' in msg)) throw new ProtocolError('response without "result"');
    return { ok: true, result: msg.result };
  }
  if (msg.ok === false) {
    const error = msg.error;
    if (!isObject(error) || typeof error.message !== 'string' || typeof error.code !== 'string') {
      throw new ProtocolError('error response without {message, code}');
    }
    return { ok: false, error: { message: error.message, code: error.code } };
  }
  throw new ProtocolError('response without boolean "ok"');
}

/**
 * Splits a byte stream into lines. A line longer than MAX_LINE_BYTES is a protocol error (it
 * bounds what a confused or hostile peer can make us buffer).
 */
export class LineSplitter {
  private pending = '';
  constructor(private readonly maxLineBytes: number = MAX_LINE_BYTES) {}

  push(chunk: string): string[] {
    this.pending += chunk;
    const lines = this.pending.split('\n');
    this.pending = lines.pop() ?? '';
    if (Buffer.byteLength(this.pending) > this.maxLineBytes) {
      throw new ProtocolError(`message longer than ${this.maxLineBytes} bytes`);
    }
    return lines.filter((line) => line.length > 0);
  }
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseVersioned(line: string): Json {
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch {
    throw new ProtocolError('message is not JSON');
  }
  if (!isObject(msg)) throw new ProtocolError('message is not a JSON object');
  if (msg.v !== PROTOCOL_VERSION) {
    throw new ProtocolError(`protocol version ${JSON.stringify(msg.v)} is not ${PROTOCOL_VERSION} (CLI and daemon differ?)`);
  }
  return msg;
}

function optional(msg: Json, key: string): unknown {
  return msg[key] === undefined || msg[key] === null ? undefined : msg[key];
}

function str(msg: Json, key: string, allowEmpty = false): string {
  const value = msg[key];
  if (typeof value !== 'string' || (!allowEmpty && value.length === 0)) {
    throw new ProtocolError(`"${key}" must be a ${allowEmpty ? '' : 'non-empty '}string`);
  }
  return value;
}

function bool(msg: Json, key: string): boolean {
  const value = msg[key];
  if (typeof value !== 'boolean') throw new ProtocolError(`"${key}" must be a boolean`);
  return value;
}

function count(msg: Json, key: string): number {
  const value = msg[key];
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new ProtocolError(`"${key}" must be a non-negative integer`);
  }
  return value;
}

function optionalName(msg: Json): { name?: string } {
  return optional(msg, 'name') === undefined ? {} : { name: str(msg, 'name') };
}

function decodeOptions(value: unknown): DeviceOptions {
  if (!isObject(value)) throw new ProtocolError('"options" must be an object');
  const options: { queues?: number; depth?: number; readOnly: boolean } = { readOnly: bool(value, 'readOnly') };
  for (const key of ['queues', 'depth'] as const) {
    if (optional(value, key) === undefined) continue;
    const n = count(value, key);
    if (n === 0) throw new ProtocolError(`"${key}" must be at least 1`);
    options[key] = n;
  }
  return options;
}
