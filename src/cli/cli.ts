import { promises as fsp } from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { DaemonAbsentError, DaemonError, removeDevice, sendRequest, sendRequestStartingDaemon } from './client';
import { formatDeviceList, formatInfo, formatTableReports } from './format';
import { daemonPaths } from '../daemon/paths';
import type { DeviceOptions, FailedDevice, Request } from '../wire/protocol';
import { PROTOCOL_VERSION } from '../wire/protocol';
import { cliEntryScript, packageVersion } from '../base/package-files';
import { createSnapshot, formatSnapshotList, listSnapshots, mergeSnapshot, parseByteSize, parseChunkSize, type MergeProgress } from './snapshot';
import { progressReporter } from './progress';
import { waitForResync, type ResyncProgress } from './resync';
import { replayLog, type CheckPoint, type ReplayProgress, type ReplayResult } from './replay-log';
import { formatShutdown, shutdownDaemon, takeOverFromRunningDaemon } from './shutdown';
import { DoctorFoundProblems, formatDoctorReport, runDoctor } from './doctor';

/**
 * `ublk-dm`: dmsetup's verbs against the daemon. The CLI holds no device state: it parses,
 * reads the table text, sends one request and prints the answer in dmsetup's format (or JSON).
 */

/** Bad command line: exit code 2, as for yargs' own usage errors. */
export class UsageError extends Error {}

export type TableSource = { readonly from: 'inline'; readonly text: string } | { readonly from: 'file'; readonly path: string } | { readonly from: 'stdin' };

export type CliCommand =
  | { readonly verb: 'create'; readonly name: string; readonly source: TableSource; readonly options: DeviceOptions }
  | { readonly verb: 'reload'; readonly name: string; readonly source: TableSource }
  | { readonly verb: 'remove'; readonly name: string; readonly retry: boolean }
  | { readonly verb: 'suspend'; readonly name: string; readonly noflush: boolean }
  | { readonly verb: 'resume'; readonly name: string }
  | { readonly verb: 'wait'; readonly name: string; readonly eventNr: number; readonly json: boolean; readonly progress: boolean }
  | { readonly verb: 'ls'; readonly target?: string; readonly json: boolean }
  | { readonly verb: 'table'; readonly name?: string; readonly inactive: boolean; readonly json: boolean }
  | { readonly verb: 'status' | 'info'; readonly name?: string; readonly json: boolean }
  | { readonly verb: 'message'; readonly name: string; readonly sector: number; readonly words: string[] }
  | {
      readonly verb: 'snapshot-create';
      readonly name: string;
      readonly origin: string;
      readonly cow: string;
      readonly cowBytes?: number;
      readonly chunkSectors: number;
      readonly store: string;
    }
  | { readonly verb: 'snapshot-merge'; readonly name: string; readonly wait: boolean; readonly json: boolean }
  | { readonly verb: 'snapshot-ls'; readonly json: boolean }
  | {
      readonly verb: 'replay-log';
      readonly logPath: string;
      readonly replayPath: string;
      readonly endMark?: string;
      readonly limit?: number;
      readonly fsck?: string;
      readonly checkAt: CheckPoint[];
      readonly json: boolean;
    }
  | { readonly verb: 'param'; readonly name?: string; readonly value?: string; readonly json: boolean }
  | {
      readonly verb: 'daemon';
      readonly params: ReadonlyArray<{ readonly name: string; readonly value: string }>;
      readonly recovery?: false;
      /** Take the devices over from the running daemon (it leaves them and exits) instead of refusing to start. */
      readonly restart?: true;
    }
  | { readonly verb: 'shutdown'; readonly removeDevices: boolean; readonly json: boolean }
  | { readonly verb: 'doctor'; readonly json: boolean }
  | { readonly verb: 'version' }
  | { readonly verb: 'help' };

const jsonOption = { json: { type: 'boolean', default: false, describe: 'print structured JSON' } } as const;
const tableOptions = {
  table: { type: 'string', describe: 'the table text (instead of TABLE_FILE or stdin)' },
} as const;

/** The yargs parser, without handlers: parsing never executes anything (tests rely on it). */
export function buildParser(): Argv {
  return yargs()
    .scriptName('ublk-dm')
    .usage('$0 <verb> [args]\n\nA userspace device-mapper serving /dev/ublkbN devices; verbs and output as dmsetup.')
    .command('create <name> [file]', 'create a device from a table (--table, TABLE_FILE, or stdin); prints /dev/ublkbN', (y) =>
      y
        .positional('name', { type: 'string', describe: 'device name; /dev/ublk-dm/NAME links to it' })
        .positional('file', { type: 'string', describe: 'table file ("-" for stdin)' })
        .options(tableOptions)
        .options({
          queues: { type: 'number', describe: 'ublk hardware queues' },
          depth: { type: 'number', describe: 'requests per queue' },
          readonly: { type: 'boolean', default: false, describe: 'create the device read-only' },
        }),
    )
    .command('reload <name> [file]', 'load a table into the inactive slot (live on resume)', (y) =>
      y.positional('name', { type: 'string' }).positional('file', { type: 'string' }).options(tableOptions),
    )
    .command('remove <name>', 'remove a device (refused while it is open or mounted)', (y) =>
      y.positional('name', { type: 'string' }).option('retry', {
        type: 'boolean',
        default: false,
        describe: 'retry for a few seconds while the device is busy',
      }),
    )
    .command('ls', 'list devices', (y) =>
      y.option('target', { type: 'string', describe: 'only devices using this target type' }).options(jsonOption),
    )
    .command('table [name]', 'print the table', (y) =>
      y
        .positional('name', { type: 'string' })
        .option('inactive', { type: 'boolean', default: false, describe: 'the inactive (reloaded) table' })
        .options(jsonOption),
    )
    .command('status [name]', "print the targets' status", (y) => y.positional('name', { type: 'string' }).options(jsonOption))
    .command('info [name]', 'print device information', (y) => y.positional('name', { type: 'string' }).options(jsonOption))
    .command('suspend <name>', 'drain in-flight I/O and hold new I/O until resume', (y) =>
      y.positional('name', { type: 'string' }).option('noflush', {
        type: 'boolean',
        default: false,
        describe: 'I/O the targets push back waits for resume instead of failing',
      }),
    )
    .command('wait <name> [event_nr]', "sleep until the device's event number differs from EVENT_NR (default 0)", (y) =>
      y
        .positional('name', { type: 'string' })
        .positional('event_nr', { type: 'string' })
        .option('progress', { type: 'boolean', default: false, describe: 'instead: follow a mirror resync to the end (a bar on a terminal)' })
        .options(jsonOption),
    )
    .command('resume <name>', 'make a reloaded table live and release held I/O', (y) => y.positional('name', { type: 'string' }))
    .command('message <name> <sector> <words..>', 'send a message to the target at SECTOR', (y) =>
      y
        .positional('name', { type: 'string' })
        .positional('sector', { type: 'string' })
        .positional('words', { type: 'string', array: true }),
    )
    .command('snapshot', 'copy-on-write snapshots the LVM way (create | merge | ls)', (y) =>
      y
        .command('create <name>', 'snapshot a device: suspend it, make it snapshot-origin, create NAME, resume', (c) =>
          c
            .positional('name', { type: 'string', describe: 'the new snapshot device' })
            .options({
              origin: { type: 'string', demandOption: true, describe: 'the device to snapshot (linear <dev> 0, or snapshot-origin)' },
              cow: { type: 'string', demandOption: true, describe: 'COW file or block device' },
              size: { type: 'string', describe: 'create the COW file with this size (64m, 1g)' },
              chunk: { type: 'string', default: '4k', describe: 'chunk size (4k, 64k, or sectors: 8s)' },
              store: { type: 'string', default: 'P', choices: ['P', 'PO', 'N'], describe: 'persistent, persistent with overflow, transient' },
            }),
        )
        .command('merge <name>', 'merge a snapshot back into its origin (the origin shows it at once)', (c) =>
          c
            .positional('name', { type: 'string' })
            .option('wait', { type: 'boolean', default: false, describe: 'follow the merge to its end (a progress bar on a terminal)' })
            .options(jsonOption),
        )
        .command('ls', 'list snapshots with their origin and COW usage', (c) => c.options(jsonOption))
        .demandCommand(1, 'snapshot create | merge | ls'),
    )
    .command('replay-log', 'replay a log-writes log onto a device, checking at each flush or mark', (y) =>
      y.options({
        log: { type: 'string', demandOption: true, describe: 'the log device or file' },
        replay: { type: 'string', demandOption: true, describe: 'the device or file to replay onto' },
        'end-mark': { type: 'string', describe: 'stop after this mark' },
        limit: { type: 'number', describe: 'stop after this many entries' },
        fsck: { type: 'string', describe: 'command run (by bash) at each check point; non-zero stops the replay' },
        check: { type: 'string', default: 'flush,mark', describe: 'check points: any of flush, fua, mark' },
        ...jsonOption,
      }),
    )
    .command('dmsetup', "dmsetup's own command line (also installed as ublk-dmsetup), for scripts written for dmsetup")
    .command('param [name] [value]', "show the daemon's target parameters, or one, or set one (like a kernel module's parameters)", (y) =>
      y
        .positional('name', { type: 'string', describe: 'e.g. raid1_resync_throttle' })
        .positional('value', { type: 'string', describe: 'the new value' })
        .options(jsonOption),
    )
    .command('daemon', 'run the daemon in the foreground (for systemd)', (y) =>
      y.options({
        param: { type: 'string', array: true, default: [], describe: 'NAME=VALUE: set a target parameter before the saved devices come back' },
        recovery: {
          type: 'boolean',
          describe:
            'make devices that survive a daemon crash (ublk user recovery; default on, also off with UBLK_DM_RECOVERY=off); --no-recovery: they die with the daemon',
        },
        restart: {
          type: 'boolean',
          default: false,
          describe: 'replace the running daemon without removing its devices: it leaves them to this one and exits (an upgrade never unmounts anything)',
        },
      }),
    )
    .command('shutdown', 'stop the daemon; devices stay (their I/O waits) for the next daemon to take back', (y) =>
      y
        .option('remove-devices', { type: 'boolean', default: false, describe: 'remove the kernel devices instead (their saved tables stay)' })
        .options(jsonOption),
    )
    .command('doctor', 'look for dead ublk devices, stale links and saved tables that cannot be read or restored; exit 1 if any', (y) => y.options(jsonOption))
    .command('version', 'print the CLI and daemon versions')
    .demandCommand(1, 'a verb is needed; see --help')
    .strict()
    .version(false)
    .help()
    .exitProcess(false)
    .fail((message, error) => {
      throw new UsageError(message ?? error?.message ?? 'invalid command line');
    });
}

/** Parse a command line into what to do; throws UsageError on a bad one. */
export function parseCommand(args: readonly string[], parser: Argv = buildParser()): CliCommand {
  const argv = parser.parseSync([...args]) as Record<string, unknown> & { _: (string | number)[] };
  if (argv.help === true) return { verb: 'help' };
  const verb = String(argv._[0]);
  const name = argv.name as string | undefined;
  const json = argv.json === true;
  switch (verb) {
    case 'create':
      return {
        verb,
        name: name!,
        source: tableSource(argv),
        options: {
          readOnly: argv.readonly === true,
          ...positiveOption(argv, 'queues'),
          ...positiveOption(argv, 'depth'),
        },
      };
    case 'reload':
      return { verb, name: name!, source: tableSource(argv) };
    case 'remove':
      return { verb, name: name!, retry: argv.retry === true };
    case 'suspend':
      return { verb, name: name!, noflush: argv.noflush === true };
    case 'resume':
      return { verb, name: name! };
    case 'wait': {
      const eventText = argv.event_nr === undefined ? '0' : String(argv.event_nr);
      // dm's event number is a u32: a larger one could never be reached.
      if (!/^\d+$/.test(eventText) || Number(eventText) > 0xffffffff) throw new UsageError(`invalid event number ${JSON.stringify(eventText)}`);
      return { verb, name: name!, eventNr: Number(eventText), json, progress: argv.progress === true };
    }
    case 'ls':
      return argv.target === undefined ? { verb, json } : { verb, target: String(argv.target), json };
    case 'table':
      return { verb, ...(name !== undefined ? { name } : {}), inactive: argv.inactive === true, json };
    case 'status':
    case 'info':
      return { verb, ...(name !== undefined ? { name } : {}), json };
    case 'message': {
      const sectorText = String(argv.sector);
      if (!/^\d+$/.test(sectorText) || !Number.isSafeInteger(Number(sectorText))) {
        throw new UsageError(`invalid sector ${JSON.stringify(sectorText)}`);
      }
      return { verb, name: name!, sector: Number(sectorText), words: (argv.words as unknown[]).map(String) };
    }
    case 'snapshot': {
      const action = String(argv._[1]);
      if (action === 'create') {
        return {
          verb: 'snapshot-create',
          name: name!,
          origin: String(argv.origin),
          cow: String(argv.cow),
          ...(argv.size !== undefined ? { cowBytes: asUsage(() => parseByteSize(String(argv.size))) } : {}),
          chunkSectors: asUsage(() => parseChunkSize(String(argv.chunk))),
          store: String(argv.store),
        };
      }
      if (action === 'merge') return { verb: 'snapshot-merge', name: name!, wait: argv.wait === true, json };
      if (action === 'ls') return { verb: 'snapshot-ls', json };
      throw new UsageError(`unknown snapshot action ${action}`);
    }
    case 'replay-log': {
      const checkAt = String(argv.check).split(',').filter((p) => p !== '');
      for (const point of checkAt) if (!['flush', 'fua', 'mark'].includes(point)) throw new UsageError(`--check takes flush, fua or mark, not ${point}`);
      if (argv.limit !== undefined && !(Number.isSafeInteger(argv.limit) && (argv.limit as number) > 0)) throw new UsageError('--limit must be a positive integer');
      if (argv['end-mark'] !== undefined && argv.limit !== undefined) throw new UsageError('give --end-mark or --limit, not both');
      return {
        verb,
        logPath: String(argv.log),
        replayPath: String(argv.replay),
        ...(argv['end-mark'] !== undefined ? { endMark: String(argv['end-mark']) } : {}),
        ...(argv.limit !== undefined ? { limit: argv.limit as number } : {}),
        ...(argv.fsck !== undefined ? { fsck: String(argv.fsck) } : {}),
        checkAt: checkAt as CheckPoint[],
        json,
      };
    }
    case 'param':
      return { verb, ...(name !== undefined ? { name } : {}), ...(argv.value !== undefined ? { value: String(argv.value) } : {}), json };
    case 'daemon':
      return {
        verb,
        params: (argv.param as unknown[]).map((text) => parseParamSetting(String(text))),
        ...(argv.recovery === false ? { recovery: false as const } : {}),
        ...(argv.restart === true ? { restart: true as const } : {}),
      };
    case 'shutdown':
      return { verb, removeDevices: argv['remove-devices'] === true, json };
    case 'doctor':
      return { verb, json };
    case 'version':
      return { verb };
    default:
      throw new UsageError(`unknown verb ${verb}`);
  }
}

/** `NAME=VALUE` of `daemon --param`. */
function parseParamSetting(text: string): { name: string; value: string } {
  const match = /^([A-Za-z0-9_]+)=(.*)$/.exec(text);
  if (!match) throw new UsageError(`--param wants NAME=VALUE, got ${JSON.stringify(text)}`);
  return { name: match[1]!, value: match[2]! };
}

/** A value parser's complaint is a usage error (exit 2). */
function asUsage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

function tableSource(argv: Record<string, unknown>): TableSource {
  const text = argv.table as string | undefined;
  const file = argv.file as string | undefined;
  if (text !== undefined && file !== undefined) throw new UsageError('give the table with --table or as TABLE_FILE, not both');
  if (text !== undefined) return { from: 'inline', text };
  // yargs hands a lone "-" positional over as "".
  if (file !== undefined && file !== '-' && file !== '') return { from: 'file', path: file };
  return { from: 'stdin' };
}

function positiveOption(argv: Record<string, unknown>, key: 'queues' | 'depth'): { queues?: number; depth?: number } {
  const value = argv[key];
  if (value === undefined) return {};
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new UsageError(`--${key} must be a positive integer`);
  }
  return { [key]: value };
}

async function readTable(source: TableSource, io: CliIo): Promise<string> {
  switch (source.from) {
    case 'inline':
      return source.text;
    case 'file':
      try {
        return await fsp.readFile(source.path, 'utf8');
      } catch (err) {
        throw new Error(`cannot read table file ${source.path}: ${(err as Error).message}`);
      }
    case 'stdin':
      return io.readStdin();
  }
}

/**
 * Where a CLI run gets its environment and input and puts its streamed output: the process's own
 * for `ublk-dm`, captured ones for runCli (tests run the CLI in their own process that way: a node
 * start per call costs seconds in the TCG guest).
 */
export interface CliIo {
  readonly env: NodeJS.ProcessEnv;
  readStdin(): Promise<string>;
  /** Output written while the command runs (progress as JSON lines), before its final text. */
  writeOut(text: string): void;
  /** Where a live progress bar may go: only a terminal gets one. */
  readonly progressStream?: NodeJS.WriteStream;
}

const processIo: CliIo = {
  env: process.env,
  async readStdin() {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  },
  writeOut: (text) => void process.stdout.write(text),
  progressStream: process.stderr,
};


/**
 * The saved devices the daemon could not bring back. A daemon older than this CLI (upgraded but
 * not yet restarted) does not know the verb: it then has none to tell of, and `ls` still works.
 */
async function notRestored(send: (request: { verb: 'failures' }) => Promise<FailedDevice[]>): Promise<FailedDevice[]> {
  try {
    return await send({ verb: 'failures' });
  } catch (err) {
    if (err instanceof DaemonError && err.code === 'EPROTO' && /unknown verb/.test(err.message)) return [];
    throw err;
  }
}

/** Carry out a parsed command; returns the text for stdout. */
async function execute(command: Exclude<CliCommand, { verb: 'daemon' | 'help' }>, io: CliIo): Promise<string> {
  const paths = daemonPaths(io.env);
  const send = <R extends Request>(request: R) => sendRequestStartingDaemon(paths, cliEntryScript(), request, io.env);
  const reporter = <P extends { readonly done: number; readonly total: number }>(json: boolean, format: string) =>
    progressReporter<P>(json, format, io.progressStream, io.writeOut);
  const asJson = (value: unknown): string => JSON.stringify(value, null, 2) + '\n';
  switch (command.verb) {
    case 'create': {
      const table = await readTable(command.source, io);
      const created = await send({ verb: 'create', name: command.name, table, options: command.options });
      return `${created.blockPath}\n`;
    }
    case 'reload':
      await send({ verb: 'reload', name: command.name, table: await readTable(command.source, io) });
      return '';
    case 'remove':
      await removeDevice(send, command.name, command.retry);
      return '';
    case 'suspend':
      await send({ verb: 'suspend', name: command.name, noflush: command.noflush });
      return '';
    case 'resume':
      await send({ verb: 'resume', name: command.name });
      return '';
    case 'wait': {
      if (command.progress) {
        const progress = reporter<ResyncProgress>(command.json, 'resync of {name} [{bar}] {percentage}% | {value}/{total} regions');
        try {
          await waitForResync(send, command.name, progress.report);
        } finally {
          progress.stop();
        }
        return '';
      }
      // Like dmsetup, silent unless asked: the exit status says the event came.
      const waited = await send({ verb: 'wait', name: command.name, eventNr: command.eventNr });
      return command.json ? asJson(waited) : '';
    }
    case 'message': {
      const { reply } = await send({ verb: 'message', name: command.name, sector: command.sector, words: command.words });
      return reply === '' ? '' : reply.endsWith('\n') ? reply : `${reply}\n`;
    }
    case 'ls': {
      const devices = await send(command.target === undefined ? { verb: 'ls' } : { verb: 'ls', target: command.target });
      // A device that did not come back has no table, so no target type to match.
      const failed = command.target === undefined ? await notRestored(send) : [];
      return command.json ? asJson([...devices, ...failed]) : formatDeviceList(devices, failed);
    }
    case 'table':
    case 'status': {
      const request =
        command.verb === 'table'
          ? { verb: 'table' as const, ...(command.name !== undefined ? { name: command.name } : {}), inactive: command.inactive }
          : { verb: 'status' as const, ...(command.name !== undefined ? { name: command.name } : {}) };
      const reports = await send(request);
      if (command.json) return asJson(command.name !== undefined ? reports[0] : reports);
      return formatTableReports(reports, command.name === undefined);
    }
    case 'info': {
      const failed = (await notRestored(send)).filter((f) => command.name === undefined || f.name === command.name);
      const infos = command.name !== undefined && failed.length > 0 ? [] : await send(command.name !== undefined ? { verb: 'info', name: command.name } : { verb: 'info' });
      if (command.json) return asJson(command.name !== undefined ? (infos[0] ?? failed[0]) : [...infos, ...failed]);
      return formatInfo(infos, command.name === undefined, failed, paths.stateDir);
    }
    case 'shutdown': {
      const result = await shutdownDaemon(paths, { removeDevices: command.removeDevices, cliScript: cliEntryScript(), env: io.env });
      if (result !== undefined && result.failed.length > 0) {
        throw new Error(`the daemon stopped, but: ${result.failed.map((f) => `${f.name}: ${f.error}`).join('; ')}`);
      }
      return command.json ? asJson(result ?? null) : formatShutdown(result);
    }
    case 'doctor': {
      const report = await runDoctor(paths);
      io.writeOut(command.json ? asJson(report) : formatDoctorReport(report));
      if (report.problems.length > 0) throw new DoctorFoundProblems();
      return '';
    }
    case 'param': {
      const settings = await send({ verb: 'param', ...(command.name !== undefined ? { name: command.name } : {}), ...(command.value !== undefined ? { value: command.value } : {}) });
      if (command.json) return asJson(command.name !== undefined ? settings[0] : settings);
      if (command.value !== undefined) return '';
      // One parameter: its value alone, as reading it from /sys/module/*/parameters/ gives.
      if (command.name !== undefined) return `${settings[0]!.value}\n`;
      return settings.map((setting) => `${setting.name} ${setting.value}\n`).join('');
    }
    case 'snapshot-create':
      return `${await createSnapshot(send, {
        snapshot: command.name,
        origin: command.origin,
        cowPath: command.cow,
        ...(command.cowBytes !== undefined ? { cowBytes: command.cowBytes } : {}),
        chunkSectors: command.chunkSectors,
        store: command.store,
      })}\n`;
    case 'snapshot-merge': {
      const progress = reporter<MergeProgress>(command.json, 'merging {snapshot} into {origin} [{bar}] {percentage}% | {value}/{total} sectors');
      try {
        await mergeSnapshot(send, command.name, command.wait, progress.report);
      } finally {
        progress.stop();
      }
      return '';
    }
    case 'snapshot-ls': {
      const listings = await listSnapshots(send);
      return command.json ? asJson(listings) : formatSnapshotList(listings);
    }
    case 'replay-log': {
      const progress = reporter<ReplayProgress>(command.json, 'replaying [{bar}] {percentage}% | {value}/{total} entries');
      let result: ReplayResult;
      try {
        result = await replayLog({
          logPath: command.logPath,
          replayPath: command.replayPath,
          ...(command.endMark !== undefined ? { endMark: command.endMark } : {}),
          ...(command.limit !== undefined ? { limit: command.limit } : {}),
          ...(command.fsck !== undefined ? { check: { command: command.fsck, at: command.checkAt } } : {}),
          onProgress: progress.report,
        });
      } finally {
        progress.stop();
      }
      if (command.json) return asJson(result);
      const checks = result.checks.map((c) => `checked after entry ${c.entry} (${c.mark !== undefined ? `mark ${c.mark}` : c.point}): ok\n`).join('');
      return `${checks}replayed ${result.entriesReplayed} of ${result.entriesInLog} entries\n`;
    }
    case 'version': {
      let daemon: string;
      try {
        const remote = await sendRequest(paths.socketPath, { verb: 'version' });
        daemon = `${remote.version} (protocol ${remote.protocol})`;
      } catch (err) {
        if (!(err instanceof DaemonAbsentError)) throw err;
        daemon = 'not running';
      }
      return `CLI version:       ${packageVersion()} (protocol ${PROTOCOL_VERSION})\nDaemon version:    ${daemon}\n`;
    }
  }
}

/** Run the CLI on `args`; resolves to the exit code (the daemon verb resolves only once serving ends). */
export async function main(args: readonly string[]): Promise<number> {
  // dmsetup's own command line, passed through untouched (its options are not ours).
  if (args[0] === 'dmsetup') return (await import('./dmsetup')).dmsetupMain(args.slice(1));
  if (args[0] === 'daemon') {
    let command: CliCommand;
    try {
      command = parseCommand(args);
    } catch (err) {
      process.stderr.write(`ublk-dm: ${(err as Error).message}\n`);
      return 2;
    }
    if (command.verb !== 'daemon') return 0;
    try {
      if (command.restart) {
        const previous = await takeOverFromRunningDaemon(daemonPaths());
        if (previous !== undefined) process.stderr.write(`ublk-dm: took over from daemon ${previous.pid}: ${previous.handedOver.length} device(s) to reattach\n`);
      }
      // Queue thread 0 loads its modules while this thread loads the daemon's (seconds each on a
      // slow CPU, and devices a restart recovers wait for both).
      (await import('../daemon/queue-threads')).startQueueThreadEarly();
      const { runDaemon } = await import('../daemon/server');
      await runDaemon(undefined, undefined, { recovery: command.recovery ?? process.env.UBLK_DM_RECOVERY !== 'off', params: command.params });
      return 0;
    } catch (err) {
      process.stderr.write(`ublk-dm: ${(err as Error).message}\n`);
      return 1;
    }
  }
  const result = await runCommand(args, processIo);
  process.stdout.write(result.stdout);
  process.stderr.write(result.stderr);
  return result.code;
}

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * One CLI command other than `daemon`, with its output captured: what `ublk-dm ARGS` would print
 * and exit with. Tests call it in their own process with their sandbox's environment.
 */
export async function runCli(args: readonly string[], options: { env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<CliResult> {
  let streamed = '';
  const io: CliIo = {
    env: options.env ?? process.env,
    readStdin: async () => options.input ?? '',
    writeOut: (text) => void (streamed += text),
  };
  const result = await runCommand(args, io);
  return { ...result, stdout: streamed + result.stdout };
}

async function runCommand(args: readonly string[], io: CliIo): Promise<CliResult> {
  let command: CliCommand;
  try {
    command = parseCommand(args);
  } catch (err) {
    return { code: 2, stdout: '', stderr: `ublk-dm: ${(err as Error).message}\n` };
  }
  if (command.verb === 'help') return { code: 0, stdout: '', stderr: '' };
  if (command.verb === 'daemon') return { code: 2, stdout: '', stderr: 'ublk-dm: the daemon verb runs only as its own process\n' };
  try {
    return { code: 0, stdout: await execute(command, io), stderr: '' };
  } catch (err) {
    // The doctor's report is already out; its exit status says there were problems.
    if (err instanceof DoctorFoundProblems) return { code: 1, stdout: '', stderr: '' };
    return { code: 1, stdout: '', stderr: `ublk-dm: ${(err as Error).message}\n` };
  }
}

/** Entry point for bin/ublk-dm (the CLI starts the daemon as `node bin/ublk-dm daemon`). */
export function run(): void {
  main(process.argv.slice(2)).then(
    (code) => {
      // Only the exit code is set: the daemon's listening socket keeps its process alive.
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`ublk-dm: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}

if (require.main === module) run();
