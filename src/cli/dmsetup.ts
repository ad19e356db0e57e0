import { promises as fsp } from 'node:fs';
import path from 'node:path';
import yargs from 'yargs';
import { DaemonAbsentError, removeDevice, sendRequest, sendRequestStartingDaemon } from './client';
import { formatDeviceList, formatInfo, formatTableReports, NO_DEVICES } from './format';
import { daemonPaths } from '../daemon/paths';
import { cliEntryScript, packageVersion } from '../base/package-files';
import { builtInTargetTypes } from '../targets';
import type { DeviceInfo, Request, Results, TableReport } from '../wire/protocol';

/**
 * `ublk-dmsetup` (and `ublk-dm dmsetup ...`): dmsetup's own command line over our daemon, so
 * that scripts written for dmsetup (xfstests' `$DMSETUP_PROG`, LVM's test helpers) run unchanged.
 * Options may come anywhere, as getopt allows; output and exit codes are dmsetup's (lvm2
 * libdm/dm-tools/dmsetup.c). What we cannot do fails with a message saying so, never silently.
 */

/** A command line dmsetup would refuse, or one asking for something we do not do: exit 1. */
export class DmsetupUsageError extends Error {}

export type DmsetupCommand =
  | { readonly verb: 'create'; readonly name: string; readonly table: TableGiven; readonly readOnly: boolean }
  | { readonly verb: 'load'; readonly name: string; readonly table: TableGiven }
  | { readonly verb: 'suspend'; readonly names: string[]; readonly noflush: boolean }
  | { readonly verb: 'resume'; readonly names: string[] }
  | { readonly verb: 'remove'; readonly names: string[]; readonly retry: boolean; readonly force: boolean }
  | { readonly verb: 'remove_all'; readonly force: boolean }
  | { readonly verb: 'table' | 'status'; readonly name?: string; readonly target?: string; readonly inactive: boolean; readonly verbose: boolean }
  | { readonly verb: 'info'; readonly name?: string; readonly columns?: InfoColumns }
  | { readonly verb: 'ls'; readonly target?: string }
  | { readonly verb: 'message'; readonly name: string; readonly sector: number; readonly words: string[] }
  | { readonly verb: 'wait'; readonly name: string; readonly eventNr: number }
  | { readonly verb: 'mknodes'; readonly name?: string }
  | { readonly verb: 'targets' | 'version' | 'udevcomplete_all' | 'help' };

export type TableGiven = { readonly from: 'inline'; readonly text: string } | { readonly from: 'file'; readonly path: string } | { readonly from: 'stdin' };

/** `info -c`: which fields, with or without the heading line, joined by what. */
export interface InfoColumns {
  readonly fields: InfoField[];
  readonly headings: boolean;
  readonly separator: string;
}

/** dmsetup's info report fields we can fill, with their headings and alignment. */
const INFO_FIELDS = {
  name: { heading: 'Name', numeric: false, value: (i: DeviceInfo) => i.name },
  major: { heading: 'Maj', numeric: true, value: (i: DeviceInfo) => `${i.major}` },
  minor: { heading: 'Min', numeric: true, value: (i: DeviceInfo) => `${i.minor}` },
  attr: { heading: 'Stat', numeric: false, value: infoAttr },
  open: { heading: 'Open', numeric: true, value: (i: DeviceInfo) => `${i.openCount}` },
  segments: { heading: 'Targ', numeric: true, value: (i: DeviceInfo) => `${i.targetCount}` },
  events: { heading: 'Event', numeric: true, value: (i: DeviceInfo) => `${i.eventNumber}` },
  uuid: { heading: 'UUID', numeric: false, value: () => '' },
  suspended: { heading: 'Suspended', numeric: false, value: (i: DeviceInfo) => (i.suspended ? 'Suspended' : 'Active') },
  readonly: { heading: 'ReadOnly', numeric: false, value: (i: DeviceInfo) => (i.readOnly ? 'Read-only' : 'Writeable') },
  live_table: { heading: 'LiveTable', numeric: false, value: (i: DeviceInfo) => (i.liveTable ? 'Live' : '') },
  inactive_table: { heading: 'InactiveTable', numeric: false, value: (i: DeviceInfo) => (i.inactiveTable ? 'Inactive' : '') },
  blkdevname: { heading: 'BlkDevName', numeric: false, value: (i: DeviceInfo) => path.basename(i.blockPath) },
} as const;
export type InfoField = keyof typeof INFO_FIELDS;
const DEFAULT_INFO_FIELDS: InfoField[] = ['name', 'major', 'minor', 'attr', 'open', 'segments', 'events', 'uuid'];

/** The Stat column: Live table, Inactive table, suspended, read-only or writeable ("L--w"). */
function infoAttr(info: DeviceInfo): string {
  return `${info.liveTable ? 'L' : '-'}${info.inactiveTable ? 'I' : '-'}${info.suspended ? 's' : '-'}${info.readOnly ? 'r' : 'w'}`;
}

/** Options that ask for what this daemon cannot do; refused by name rather than ignored. */
const UNSUPPORTED_OPTIONS: Record<string, string> = {
  uuid: '-u/--uuid (device UUIDs) is not supported',
  notable: '--notable is not supported: a ublk device needs a table to know its size',
  deferred: '--deferred removal is not supported',
  tree: 'ls --tree is not supported',
};

const UNSUPPORTED_VERBS: Record<string, string> = {
  clear: 'clear is not supported: reload a table instead',
  rename: 'rename is not supported',
  deps: 'deps is not supported',
  splitname: 'splitname is not supported',
  setgeometry: 'setgeometry is not supported',
  wipe_table: 'wipe_table is not supported',
  measure: 'measure is not supported',
  stats: 'stats is not supported',
};

/** Parse dmsetup's command line. Throws DmsetupUsageError for what dmsetup or we refuse. */
export function parseDmsetup(args: readonly string[]): DmsetupCommand {
  const argv = yargs()
    .version(false)
    .help(false)
    .options({
      table: { type: 'string' },
      readonly: { type: 'boolean', alias: 'r' },
      uuid: { type: 'string', alias: 'u' },
      notable: { type: 'boolean', alias: 'n' },
      addnodeoncreate: { type: 'boolean' },
      addnodeonresume: { type: 'boolean' },
      noflush: { type: 'boolean' },
      nolockfs: { type: 'boolean' },
      noudevsync: { type: 'boolean' },
      noudevrules: { type: 'boolean' },
      verifyudev: { type: 'boolean' },
      retry: { type: 'boolean' },
      force: { type: 'boolean', alias: 'f' },
      deferred: { type: 'boolean' },
      target: { type: 'string' },
      showkeys: { type: 'boolean' },
      inactive: { type: 'boolean' },
      tree: { type: 'boolean' },
      columns: { type: 'boolean', alias: ['c', 'C'] },
      options: { type: 'string', alias: 'o' },
      noheadings: { type: 'boolean' },
      separator: { type: 'string' },
      verbose: { type: 'count', alias: 'v' },
      yes: { type: 'boolean', alias: 'y' },
      help: { type: 'boolean', alias: 'h' },
      version: { type: 'boolean' },
    })
    .parserConfiguration({ 'camel-case-expansion': false, 'duplicate-arguments-array': false })
    .strictOptions()
    .exitProcess(false)
    .fail((message) => {
      throw new DmsetupUsageError(message);
    })
    .parseSync([...args]) as Record<string, unknown> & { _: (string | number)[] };

  for (const [option, reason] of Object.entries(UNSUPPORTED_OPTIONS)) if (argv[option] !== undefined && argv[option] !== false) throw new DmsetupUsageError(reason);
  const words = argv._.map(String);
  if (argv.help === true) return { verb: 'help' };
  if (argv.version === true && words.length === 0) return { verb: 'version' };
  const verb = words.shift();
  if (verb === undefined) throw new DmsetupUsageError('Missing command');
  if (UNSUPPORTED_VERBS[verb] !== undefined) throw new DmsetupUsageError(UNSUPPORTED_VERBS[verb]!);
  const flag = (name: string) => argv[name] === true;
  const onlyName = (): string | undefined => {
    if (words.length > 1) throw new DmsetupUsageError(`${verb}: too many arguments`);
    return words[0];
  };
  const needName = (): string => {
    const name = words[0];
    if (name === undefined) throw new DmsetupUsageError(`${verb}: Please specify device`);
    return name;
  };
  const target = typeof argv.target === 'string' ? argv.target : undefined;

  switch (verb) {
    case 'create':
      return { verb, name: needName(), table: tableGiven(argv, words.slice(1)), readOnly: flag('readonly') };
    case 'load':
    case 'reload':
      return { verb: 'load', name: needName(), table: tableGiven(argv, words.slice(1)) };
    case 'suspend':
      needName();
      return { verb, names: words, noflush: flag('noflush') };
    case 'resume':
      needName();
      return { verb, names: words };
    case 'remove':
      needName();
      return { verb, names: words, retry: flag('retry'), force: flag('force') };
    case 'remove_all':
      return { verb, force: flag('force') };
    case 'table':
    case 'status': {
      const name = onlyName();
      return { verb, ...(name !== undefined ? { name } : {}), ...(target !== undefined ? { target } : {}), inactive: flag('inactive'), verbose: Number(argv.verbose ?? 0) > 0 };
    }
    case 'info': {
      const name = onlyName();
      if (!flag('columns')) return { verb, ...(name !== undefined ? { name } : {}) };
      return { verb, ...(name !== undefined ? { name } : {}), columns: infoColumns(argv) };
    }
    case 'ls':
      onlyName();
      return { verb, ...(target !== undefined ? { target } : {}) };
    case 'message': {
      const [name, sectorText, ...messageWords] = words;
      if (name === undefined || sectorText === undefined || messageWords.length === 0) throw new DmsetupUsageError('message: Please specify device, sector and message');
      if (!/^\d+$/.test(sectorText) || !Number.isSafeInteger(Number(sectorText))) throw new DmsetupUsageError(`message: Invalid sector ${sectorText}`);
      return { verb, name, sector: Number(sectorText), words: messageWords };
    }
    case 'wait': {
      const name = needName();
      const eventText = words[1] ?? '0';
      if (!/^\d+$/.test(eventText) || Number(eventText) > 0xffffffff) throw new DmsetupUsageError(`wait: Invalid event number ${eventText}`);
      return { verb, name, eventNr: Number(eventText) };
    }
    case 'mknodes': {
      const name = onlyName();
      return { verb, ...(name !== undefined ? { name } : {}) };
    }
    case 'targets':
    case 'version':
    case 'udevcomplete_all':
    case 'help':
      return { verb };
    default:
      throw new DmsetupUsageError(`Unknown command: ${verb}`);
  }
}

function tableGiven(argv: Record<string, unknown>, rest: string[]): TableGiven {
  const text = argv.table as string | undefined;
  if (rest.length > 1) throw new DmsetupUsageError('Too many arguments');
  if (text !== undefined) {
    if (rest.length > 0) throw new DmsetupUsageError('--table and a table file given');
    return { from: 'inline', text };
  }
  return rest[0] !== undefined && rest[0] !== '-' ? { from: 'file', path: rest[0] } : { from: 'stdin' };
}

function infoColumns(argv: Record<string, unknown>): InfoColumns {
  const optionText = typeof argv.options === 'string' ? argv.options : '';
  let fields = DEFAULT_INFO_FIELDS;
  if (optionText !== '') {
    // "+field" appends to the default list, as libdm's report does.
    const appended = optionText.startsWith('+');
    const named = (appended ? optionText.slice(1) : optionText).split(',').map((f) => f.trim()).filter((f) => f !== '');
    for (const field of named) if (!(field in INFO_FIELDS)) throw new DmsetupUsageError(`Unrecognised field: ${field}`);
    fields = appended ? [...DEFAULT_INFO_FIELDS, ...(named as InfoField[])] : (named as InfoField[]);
  }
  return { fields, headings: argv.noheadings !== true, separator: typeof argv.separator === 'string' ? argv.separator : ' ' };
}

/** `info -c`: libdm's aligned report; numbers right-aligned, text left-aligned, no trailing blanks. */
export function formatInfoColumns(infos: readonly DeviceInfo[], columns: InfoColumns): string {
  const rows = infos.map((info) => columns.fields.map((field) => INFO_FIELDS[field].value(info)));
  const headings = columns.fields.map((field) => INFO_FIELDS[field].heading);
  const aligned = columns.separator === ' ';
  const widths = columns.fields.map((_, c) => Math.max(columns.headings ? headings[c]!.length : 0, ...rows.map((row) => row[c]!.length)));
  const render = (cells: string[], heading: boolean): string =>
    cells
      .map((cell, c) => {
        if (!aligned) return cell;
        const numeric = INFO_FIELDS[columns.fields[c]!].numeric && !heading;
        return numeric ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!);
      })
      .join(columns.separator)
      .trimEnd() + '\n';
  return (columns.headings ? render(headings, true) : '') + rows.map((row) => render(row, false)).join('');
}

/** `targets`: each type and its version as the 6.12 kernel reports them. */
export function formatTargets(): string {
  return builtInTargetTypes.map((type) => `${type.name.padEnd(16)} v${(type.version ?? [1, 0, 0]).join('.')}\n`).join('');
}

/** Keep only the lines of `target` type, and devices that have any (dmsetup's --target). */
function onlyTarget(reports: TableReport[], target: string | undefined): TableReport[] {
  if (target === undefined) return reports;
  return reports.map((report) => ({ ...report, targets: report.targets.filter((line) => line.type === target) })).filter((report) => report.targets.length > 0);
}

type Send = <R extends Request>(request: R) => Promise<Results[R['verb']]>;

/** What `remove --force` loads first (as dmsetup does), so that holders of the device fail fast instead of waiting. */
function errorTable(sizeSectors: number): string {
  return `0 ${sizeSectors} error`;
}

async function readTable(table: TableGiven): Promise<string> {
  switch (table.from) {
    case 'inline':
      return table.text;
    case 'file':
      return fsp.readFile(table.path, 'utf8');
    case 'stdin': {
      const chunks: Buffer[] = [];
      for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    }
  }
}

async function removeOne(send: Send, name: string, retry: boolean, force: boolean): Promise<void> {
  if (force) {
    const [info] = await send({ verb: 'info', name });
    await send({ verb: 'reload', name, table: errorTable(info!.sizeSectors) });
    await send({ verb: 'resume', name });
  }
  await removeDevice(send, name, retry);
}

/** Carry out one command; returns stdout text. Throws for a failed command (exit 1). */
export async function executeDmsetup(command: DmsetupCommand, send: Send): Promise<string> {
  switch (command.verb) {
    case 'create':
      await send({ verb: 'create', name: command.name, table: await readTable(command.table), options: { readOnly: command.readOnly } });
      return '';
    case 'load':
      await send({ verb: 'reload', name: command.name, table: await readTable(command.table) });
      return '';
    case 'suspend':
      for (const name of command.names) await send({ verb: 'suspend', name, noflush: command.noflush });
      return '';
    case 'resume':
      for (const name of command.names) await send({ verb: 'resume', name });
      return '';
    case 'remove':
      for (const name of command.names) await removeOne(send, name, command.retry, command.force);
      return '';
    case 'remove_all': {
      // Upper devices hold lower ones open: keep removing what can go until nothing moves.
      let left = (await send({ verb: 'ls' })).map((device) => device.name);
      while (left.length > 0) {
        const failed: string[] = [];
        let lastError: unknown;
        for (const name of left) {
          try {
            await removeOne(send, name, false, command.force);
          } catch (err) {
            failed.push(name);
            lastError = err;
          }
        }
        if (failed.length === left.length) throw lastError;
        left = failed;
      }
      return '';
    }
    case 'table':
    case 'status': {
      const request =
        command.verb === 'table'
          ? { verb: 'table' as const, ...(command.name !== undefined ? { name: command.name } : {}), inactive: command.inactive }
          : { verb: 'status' as const, ...(command.name !== undefined ? { name: command.name } : {}) };
      const reports = onlyTarget(await send(request), command.target);
      let out = '';
      if (command.verbose && command.name !== undefined) out += formatInfo(await send({ verb: 'info', name: command.name }), false);
      if (command.name === undefined && reports.length === 0) return NO_DEVICES;
      return out + formatTableReports(reports, command.name === undefined);
    }
    case 'info': {
      const infos = await send(command.name !== undefined ? { verb: 'info', name: command.name } : { verb: 'info' });
      if (command.columns !== undefined) return infos.length === 0 ? NO_DEVICES : formatInfoColumns(infos, command.columns);
      return formatInfo(infos, command.name === undefined);
    }
    case 'ls':
      return formatDeviceList(await send(command.target === undefined ? { verb: 'ls' } : { verb: 'ls', target: command.target }));
    case 'message': {
      const { reply } = await send({ verb: 'message', name: command.name, sector: command.sector, words: command.words });
      return reply === '' ? '' : reply.endsWith('\n') ? reply : `${reply}\n`;
    }
    case 'wait':
      await send({ verb: 'wait', name: command.name, eventNr: command.eventNr });
      return '';
    case 'mknodes':
      // The daemon makes /dev/ublk-dm/NAME (and /dev/mapper/NAME) links itself; this only checks the device exists.
      if (command.name !== undefined) await send({ verb: 'info', name: command.name });
      return '';
    case 'udevcomplete_all':
      return ''; // there is no udev cookie to complete: devices are ready when create returns
    case 'targets':
      return formatTargets();
    case 'version':
    case 'help':
      return '';
  }
}

const USAGE = `Usage: ublk-dmsetup [--noflush] [--nolockfs] [--readonly] [--table T] [-c [-o F] [--noheadings]] [-v] COMMAND ARGS
Commands: create NAME [--table T | FILE | stdin], load|reload NAME [TABLE], suspend NAME..., resume NAME...,
  remove [--force] [--retry] NAME..., remove_all [--force], table [--target T] [NAME], status [--target T] [-v] [NAME],
  info [-c [-o FIELDS] [--noheadings] [--separator S]] [NAME], ls [--target T], message NAME SECTOR MSG...,
  wait NAME [EVENT_NR], mknodes [NAME], targets, version, udevcomplete_all
Served by the ublk-dm daemon (devices are /dev/ublkbN, linked as /dev/ublk-dm/NAME and /dev/mapper/NAME).
`;

/** Run dmsetup's command line; resolves to the exit code. */
export async function dmsetupMain(args: readonly string[]): Promise<number> {
  let command: DmsetupCommand;
  try {
    command = parseDmsetup(args);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}`);
    return 1;
  }
  const paths = daemonPaths();
  const send: Send = (request) => sendRequestStartingDaemon(paths, cliEntryScript(), request);
  try {
    if (command.verb === 'help') {
      process.stdout.write(USAGE);
      return 0;
    }
    if (command.verb === 'version') {
      let daemon = 'not running';
      try {
        daemon = (await sendRequest(paths.socketPath, { verb: 'version' })).version;
      } catch (err) {
        if (!(err instanceof DaemonAbsentError)) throw err;
      }
      process.stdout.write(`Library version:   ublk-dm ${packageVersion()}\nDriver version:    ublk-dm daemon ${daemon}\n`);
      return 0;
    }
    process.stdout.write(await executeDmsetup(command, send));
    return 0;
  } catch (err) {
    process.stderr.write(`device-mapper: ${command.verb} failed: ${(err as Error).message}\nCommand failed.\n`);
    return 1;
  }
}

export function runDmsetup(): void {
  dmsetupMain(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`ublk-dmsetup: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
