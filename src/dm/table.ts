import { DmError } from '../base/errno';
import type { BlockDevice } from '../io/block-device';
import { openFileDevice } from '../io/file-device';
import type { DaemonScope } from './scope';
import { TargetError, type DeviceHandle, type QueueView, type StatusKind, type Target, type TargetCapabilities, type TargetContext } from './target';
import { parseSectorNumber } from './table-args';

/**
 * dm tables: the text form (`<start> <len> <type> <args...>` per line), its validation with the
 * kernel's rules and messages (targets.md §1), construction of the targets, and the
 * `dmsetup table` / `dmsetup status` output.
 */

/** A load failure. The message names the line and gives the reason in the kernel's words. */
export class TableError extends DmError {
  constructor(
    /** 1-based line in the table text; undefined for whole-table errors ("empty table"). */
    readonly lineNumber: number | undefined,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(lineNumber === undefined ? reason : `line ${lineNumber}: ${reason}`, 'EINVAL', options);
  }
}

/** One table line after syntax and layout checks; its target is not constructed yet. */
export interface TableLine {
  readonly lineNumber: number;
  readonly startSector: number;
  readonly lengthSectors: number;
  readonly type: string;
  readonly args: readonly string[];
}

/**
 * Syntax and layout: fields, decimal numbers, non-zero lengths, and segments that tile the
 * device from sector 0. Blank lines and lines starting with `#` are skipped, as dmsetup does;
 * line numbers count every line of the text. All of this is checked before any target is
 * constructed, so a malformed table never opens a device.
 */
export function parseTableText(text: string): TableLine[] {
  const lines: TableLine[] = [];
  let expectedStartSector = 0;
  const textLines = text.split('\n');
  for (let index = 0; index < textLines.length; index++) {
    const lineNumber = index + 1;
    const content = textLines[index]!.trim();
    if (content === '' || content.startsWith('#')) continue;

    const [startText, lengthText, type, ...args] = content.split(/\s+/);
    if (type === undefined) {
      throw new TableError(lineNumber, 'Invalid format: expected <start> <length> <target_type> [args...]');
    }
    const startSector = parseSectorNumber(startText!);
    if (startSector === undefined) throw new TableError(lineNumber, `Invalid start sector "${startText}"`);
    const lengthSectors = parseSectorNumber(lengthText!);
    if (lengthSectors === undefined) throw new TableError(lineNumber, `Invalid length "${lengthText}"`);
    if (lengthSectors === 0) throw new TableError(lineNumber, 'zero-length target');
    if (!Number.isSafeInteger(startSector + lengthSectors)) throw new TableError(lineNumber, 'too large device');
    if (startSector !== expectedStartSector) {
      throw new TableError(
        lineNumber,
        `Gap in table: segment starts at ${startSector}, expected ${expectedStartSector}`,
      );
    }
    expectedStartSector = startSector + lengthSectors;
    lines.push({ lineNumber, startSector, lengthSectors, type, args });
  }
  if (lines.length === 0) throw new TableError(undefined, 'empty table');
  return lines;
}

/** One segment of a live table: the sectors [startSector, startSector + lengthSectors). */
export interface Segment {
  readonly startSector: number;
  readonly lengthSectors: number;
  readonly target: Target;
}

/** Anything laid out in sectors, for the searches below (segments, or test fixtures). */
export interface SectorRange {
  readonly startSector: number;
  readonly lengthSectors: number;
}

/**
 * Index of the range containing `sector` in ranges that tile [0, end) in order (binary search
 * on the starts), or -1 when the sector lies outside them.
 */
export function findSegmentIndex(ranges: readonly SectorRange[], sector: number): number {
  let low = 0;
  let high = ranges.length - 1;
  while (low <= high) {
    const middle = (low + high) >>> 1;
    const range = ranges[middle]!;
    if (sector < range.startSector) high = middle - 1;
    else if (sector >= range.startSector + range.lengthSectors) low = middle + 1;
    else return middle;
  }
  return -1;
}

/** A constructed table: its segments in order and the devices it opened for them. */
export class Table {
  readonly sizeSectors: number;
  /** What every segment can take: what the device may advertise. */
  readonly capabilities: TargetCapabilities;
  private destroyed = false;

  constructor(
    readonly segments: readonly Segment[],
    private readonly openedDevices: readonly BlockDevice[],
    /** How the table text named each device it opened (for a daemon that must restore it onto the same devices). */
    readonly deviceSpecs: ReadonlyMap<string, BlockDevice> = new Map(),
  ) {
    let expectedStartSector = 0;
    for (const segment of segments) {
      if (segment.startSector !== expectedStartSector || segment.lengthSectors <= 0) {
        throw new RangeError('table segments must tile the device from sector 0');
      }
      expectedStartSector += segment.lengthSectors;
    }
    if (segments.length === 0) throw new RangeError('a table needs at least one segment');
    this.sizeSectors = expectedStartSector;
    const targets = segments.map((segment) => segment.target);
    this.capabilities = {
      discard: targets.every((target) => target.capabilities.discard),
      writeZeroes: targets.every((target) => target.capabilities.writeZeroes),
      fua: targets.every((target) => target.capabilities.fua),
    };
  }

  /** The segment containing `sector`, or undefined past the end. */
  segmentAt(sector: number): Segment | undefined {
    return this.segments[findSegmentIndex(this.segments, sector)];
  }

  /** The devices this table opened (each once, whatever number of segments use it). */
  devices(): readonly BlockDevice[] {
    return this.openedDevices;
  }

  /** Destroy every target, then close the devices. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await releaseAll(this.segments.map((segment) => segment.target), this.openedDevices);
  }
}

/** Opens a backing device named by a path or "major:minor". */
export type DeviceOpener = (spec: string) => Promise<BlockDevice>;

/** What a table is built within. */
export interface TableBuildContext {
  readonly scope: DaemonScope;
  /** The device the table is for. */
  readonly device: DeviceHandle;
  /** Default: real files and block devices through the scope's ring. */
  readonly openDevice?: DeviceOpener;
  /** A saved table rebuilt by a new daemon (TargetContext.rebuilt). */
  readonly rebuilt?: import('./target').RebuiltTable;
  /** A queue thread's copy: the segments it views rather than copies (TargetContext.queueView). */
  readonly queueViews?: QueueViews;
}

/** The owner-thread segments a queue thread's copy of a table views, and where their other I/O goes. */
export interface QueueViews {
  /** Each viewed segment's shared memory (Target.queueViewShare), by the segment's start sector. */
  readonly shares: ReadonlyMap<number, SharedArrayBuffer>;
  forward: QueueView['forward'];
}

/**
 * Construct every line's target in order, sharing one open per device spec. The first
 * failure destroys what was built, closes every device opened, and throws a TableError
 * naming the line: `line 2: linear: Invalid argument count`.
 */
export async function buildTable(lines: readonly TableLine[], context: TableBuildContext): Promise<Table> {
  const { scope } = context;
  for (const line of lines) {
    if (scope.targetTypes.get(line.type) === undefined) throw new TableError(line.lineNumber, `${line.type}: unknown target type`);
  }

  const devices = new SharedDeviceOpener(context.openDevice ?? ((spec) => openFileDevice(spec, { ring: scope.ring })));
  const segments: Segment[] = [];
  try {
    for (const line of lines) {
      const targetContext: TargetContext = {
        startSector: line.startSector,
        lengthSectors: line.lengthSectors,
        scope,
        device: context.device,
        openDevice: (spec) => devices.open(spec),
        ...(context.rebuilt ? { rebuilt: context.rebuilt } : {}),
        ...queueViewAt(context.queueViews, line.startSector),
      };
      const target = await constructTarget(scope.targetTypes.get(line.type)!, targetContext, line);
      segments.push({ startSector: line.startSector, lengthSectors: line.lengthSectors, target });
    }
    return new Table(segments, await devices.settledOpened(), await devices.openedBySpec());
  } catch (error) {
    const targets = segments.map((segment) => segment.target);
    // The load error is what the user needs to see; a failure while undoing it must not hide it.
    await releaseAll(targets, await devices.settledOpened()).catch(() => undefined);
    throw error;
  }
}

function queueViewAt(views: QueueViews | undefined, startSector: number): { queueView?: QueueView } {
  const share = views?.shares.get(startSector);
  return share === undefined ? {} : { queueView: { share, forward: views!.forward } };
}

/** parseTableText then buildTable. */
export async function loadTable(text: string, context: TableBuildContext): Promise<Table> {
  return buildTable(parseTableText(text), context);
}

async function constructTarget(type: import('./target').TargetType, context: TargetContext, line: TableLine): Promise<Target> {
  try {
    return await type.create(context, [...line.args]);
  } catch (error) {
    const reason = error instanceof TargetError ? error.message : `constructor failed: ${String(error)}`;
    throw new TableError(line.lineNumber, `${line.type}: ${reason}`, { cause: error });
  }
}

/**
 * `dmsetup table` (kind 'table') or `dmsetup status` (kind 'info') text: one line per segment,
 * `<start> <len> <type> <status>\n`. dmsetup always prints the space after the type, so a target
 * with an empty status ends its line with a space.
 */
export function formatTable(table: Table, kind: StatusKind): string {
  let text = '';
  for (const segment of table.segments) {
    text += `${segment.startSector} ${segment.lengthSectors} ${segment.target.type} ${segment.target.status(kind)}\n`;
  }
  return text;
}

/**
 * Opens each spec once per table; later opens of the same spec share the first. Remembers the
 * opens in flight too, so a failed build can close devices whose open was still pending.
 */
class SharedDeviceOpener {
  private readonly bySpec = new Map<string, Promise<BlockDevice>>();

  constructor(private readonly openDevice: DeviceOpener) {}

  open(spec: string): Promise<BlockDevice> {
    let device = this.bySpec.get(spec);
    if (device === undefined) {
      device = this.openDevice(spec);
      this.bySpec.set(spec, device);
    }
    return device;
  }

  /** Each spec whose open succeeded, with its device. */
  async openedBySpec(): Promise<Map<string, BlockDevice>> {
    const opened = new Map<string, BlockDevice>();
    for (const [spec, device] of this.bySpec) opened.set(spec, await device);
    return opened;
  }

  /** The devices whose open succeeded, waiting for opens still in flight. */
  async settledOpened(): Promise<BlockDevice[]> {
    const outcomes = await Promise.allSettled(this.bySpec.values());
    return outcomes.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []));
  }
}

/** Destroy targets, then close devices; keep going past failures so nothing stays open. */
async function releaseAll(targets: readonly Target[], devices: readonly BlockDevice[]): Promise<void> {
  const failures: unknown[] = [];
  for (const target of targets) {
    try {
      await target.destroy();
    } catch (error) {
      failures.push(error);
    }
  }
  const closes = await Promise.allSettled(devices.map((device) => device.close()));
  for (const outcome of closes) if (outcome.status === 'rejected') failures.push(outcome.reason);
  if (failures.length === 1) throw failures[0];
  if (failures.length > 1) throw new AggregateError(failures, 'releasing a table failed');
}
