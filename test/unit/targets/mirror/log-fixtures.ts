import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { SECTOR_BYTES } from '../../../../src/base/units';
import type { BlockDevice } from '../../../../src/io/block-device';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { testRegionBit } from '../../../../src/targets/mirror/core-log';
import type { DirtyLog, DirtyLogArgs, DirtyLogType } from '../../../../src/targets/mirror/dirty-log';
import { BITMAP_BYTE_OFFSET } from '../../../../src/targets/mirror/disk-log';
import { LoggingDevice } from '../snapshot/store-fixtures';

/** Shared by the dirty log tests: a log over a recording device, the mirror's callbacks counted. */

/** 125 regions of 64 sectors, as in the spec's captures. */
export const TARGET_SECTORS = 8000;
export const REGION_SECTORS = 64;
export const REGION_COUNT = 125;

/** What the mirror would hand a log, with every callback recorded. */
export class MirrorSide {
  events = 0;
  readonly warnings: string[] = [];
  /** Log device operations seen when each leg flush was requested (orders the two devices). */
  readonly legFlushAtStep: number[] = [];
  /** What flushLegs resolves to (0 or -errno). */
  legFlushResult = 0;
  /** Runs inside each leg flush, before it resolves: what the mirror does meanwhile. */
  duringLegFlush: (() => void) | undefined;

  constructor(readonly device: LoggingDevice | undefined = undefined) {}

  args(words: readonly string[], targetSectors = TARGET_SECTORS): DirtyLogArgs {
    return {
      args: words,
      targetSectors,
      openDevice: async (spec: string): Promise<BlockDevice> => {
        if (this.device === undefined || spec !== 'log') throw new Error(`no device ${spec}`);
        return this.device;
      },
      flushLegs: async () => {
        this.legFlushAtStep.push(this.device?.log.length ?? 0);
        this.duringLegFlush?.();
        return this.legFlushResult;
      },
      raiseEvent: () => {
        this.events++;
      },
      warn: (message: string) => {
        this.warnings.push(message);
      },
    };
  }
}

/** A log device of `sectors` (zeroed unless `image` is given), wrapped to record its I/O. */
export function logDevice(sectors = 128, image?: Uint8Array, tableName = '7:2'): LoggingDevice {
  const memory = new MemoryDevice(sectors, { tableName });
  if (image !== undefined) memory.contents.set(image);
  return new LoggingDevice(memory);
}

/** Creates a log of `type` as the mirror would; `words` name the log device "log". */
export async function createLog(type: DirtyLogType, side: MirrorSide, words: readonly string[], targetSectors = TARGET_SECTORS): Promise<DirtyLog> {
  return type.create(side.args(words, targetSectors));
}

/** Regions whose bit is set among the first `regionCount` of a bitmap. */
export function setRegions(bits: Uint8Array, regionCount: number): number[] {
  const regions: number[] = [];
  for (let region = 0; region < regionCount; region++) if (testRegionBit(bits, region)) regions.push(region);
  return regions;
}

/** The clean bitmap as the log device holds it. */
export function diskBitmap(device: LoggingDevice, byteLength = 16): Buffer {
  return device.inner.contents.subarray(BITMAP_BYTE_OFFSET, BITMAP_BYTE_OFFSET + byteLength);
}

/** [first, end) ranges to the list of regions they cover. */
export function regionsOf(ranges: ReadonlyArray<readonly [number, number]>): number[] {
  return ranges.flatMap(([first, end]) => Array.from({ length: end - first }, (_, i) => first + i));
}

/**
 * Recovers regions as the region hash does until `syncCount` regions are in sync: the next
 * resync work, its copy succeeded (clear_region, then set_region_sync), then a flush.
 */
export async function recoverUntil(log: DirtyLog, syncCount: number): Promise<void> {
  while (log.syncCount() < syncCount) {
    const region = log.getResyncWork();
    if (region === undefined) throw new Error(`no resync work left at ${log.syncCount()} regions in sync`);
    log.clearRegion(region);
    log.setRegionSync(region, true);
    await log.flush();
  }
}

// ---- Golden logs (test/golden/mirror, written by the real kernel: see its README). ----------

export interface GoldenLog {
  readonly name: string;
  readonly description: string;
  readonly logBytes: number;
  /** The image the case started from (null: a zeroed device). */
  readonly from: string | null;
  /** The header version the starting image was patched to first. */
  readonly patchVersion: number | null;
  readonly targetSectors: number;
  readonly regionSectors: number;
  /** The table's log arguments, the log device first. */
  readonly logArgs: string;
  /** dmsetup status when the image was copied, e.g. "0 8000 mirror 2 7:0 7:1 48/125 1 AA 3 disk 7:2 A". */
  readonly status: string;
  readonly table: string;
  readonly eventNumber: number;
  /** Half-open region ranges whose clean bit the kernel left set. */
  readonly cleanRanges: Array<[number, number]>;
}

export const GOLDEN_MIRROR_DIR = path.resolve(__dirname, '../../../../../test/golden/mirror');

export function goldenLog(name: string): GoldenLog {
  const json = JSON.parse(readFileSync(path.join(GOLDEN_MIRROR_DIR, `${name}.json`), 'utf8')) as Omit<GoldenLog, 'name'>;
  return { name, ...json };
}

export function goldenImage(name: string): Buffer {
  return gunzipSync(readFileSync(path.join(GOLDEN_MIRROR_DIR, `${name}.img.gz`)));
}

/** The image a case started from: zeroes, or the earlier image, its version patched if asked. */
export function startingImage(golden: GoldenLog): Buffer {
  const image = golden.from === null ? Buffer.alloc(golden.logBytes) : goldenImage(golden.from);
  if (golden.patchVersion !== null) image.writeUInt32LE(golden.patchVersion, 4);
  return image;
}

/** The log words with the kernel's device path replaced by our "log" (`/dev/loop2 64 sync` → `log 64 sync`). */
export function goldenLogWords(golden: GoldenLog): string[] {
  return ['log', ...golden.logArgs.split(' ').slice(1)];
}

/** The status line's sync count and the log part: "48/125" and "3 disk 7:2 A". */
export function goldenStatusParts(golden: GoldenLog): { syncCount: number; regionCount: number; logInfo: string } {
  const match = /(\d+)\/(\d+) 1 [A-Z]+ (.*)$/.exec(golden.status);
  if (match === null) throw new Error(`${golden.name}: unexpected status ${golden.status}`);
  return { syncCount: Number(match[1]), regionCount: Number(match[2]), logInfo: match[3] };
}

/** The log device name the kernel printed (the `7:2` in "3 disk 7:2 A"). */
export function goldenLogDeviceName(golden: GoldenLog): string {
  return goldenStatusParts(golden).logInfo.split(' ')[2];
}

export function goldenLogDevice(golden: GoldenLog, image: Uint8Array): LoggingDevice {
  return logDevice(golden.logBytes / SECTOR_BYTES, image, goldenLogDeviceName(golden));
}
