import { randomInt } from 'node:crypto';
import { EIO } from '../base/errno';
import type { Clock } from '../base/clock';
import { IoOp, type Bio } from '../io/bio';
import type { BlockDevice, InPlaceAccess } from '../io/block-device';
import { checkDeviceArea, lookupDevice, parseSectorNumber } from '../dm/table-args';
import { passthroughCapabilities, requireQueueView, TargetError, type MapDone, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../dm/target';
import { remapToDevice } from './remap';

/** dm-flakey's PROBABILITY_BASE: random corruption probabilities are out of a billion. */
const PROBABILITY_BASE = 1_000_000_000;
const UINT32_MAX = 0xffffffff;

/**
 * The bits of the kernel's bi_opf that corrupt_bio_byte's <flags> are matched against, as the
 * 6.12 kernel numbers them. A ublk request tells us its direction and FUA and nothing more
 * (no SYNC, META, ...), so a mask with any other bit never matches: documented in the README.
 */
export const KERNEL_OPF = Object.freeze({ write: 1, fua: 1 << 17 });

/** corrupt_bio_byte <Nth_byte> <r|w> <value> <flags>. */
export interface FixedCorruption {
  /** 1-based byte of the piece's data to overwrite. */
  readonly byteNumber: number;
  readonly direction: 'r' | 'w';
  readonly value: number;
  /** Kernel REQ_* bits that must all be set on the request (0: every request). */
  readonly flags: number;
}

/** What flakey does while down. */
export interface FlakeyFeatures {
  readonly errorReads: boolean;
  /** Writes while down: dropped (succeed, not written), failed, or passed through (maybe corrupted). */
  readonly writes: 'drop' | 'error' | 'pass';
  readonly fixedCorruption?: FixedCorruption;
  /** Chance per billion that a read / write while down gets one random byte replaced. */
  readonly randomReadCorrupt: number;
  readonly randomWriteCorrupt: number;
}

export interface FlakeySchedule {
  readonly upSeconds: number;
  readonly downSeconds: number;
}

/**
 * flakey <dev> <offset> <up> <down> [<#features> <features>...]: linear for `up` seconds, then
 * unreliable for `down` seconds, over and over, counted in whole seconds from construction.
 * Used to simulate a device that loses power (drop_writes) or fails (error_*), or corrupts.
 */
export class FlakeyTarget implements Target {
  readonly type = 'flakey';
  /**
   * Its up/down schedule counts from one construction: one instance, whose start its queue-thread
   * views (FlakeyView) share, so that they go down and up with it and it gets no I/O of theirs.
   */
  readonly threadModel = 'owner-thread';
  readonly queueViewServesAll = true;
  readonly capabilities: TargetCapabilities;
  private readonly constructedMs: number;

  constructor(
    private readonly device: BlockDevice,
    private readonly deviceStartSector: number,
    private readonly schedule: FlakeySchedule,
    private readonly features: FlakeyFeatures,
    private readonly clock: Clock,
    /** Uniform integer in [0, bound): injectable so tests can pin the random corruptions. */
    private readonly random: (bound: number) => number = randomInt,
    /** When the schedule starts (clock.nowMs()); a view is given its owner's. */
    startMs: number = clock.nowMs(),
  ) {
    this.capabilities = passthroughCapabilities([device]);
    this.constructedMs = startMs;
  }

  /** The schedule's start as any thread can read it: a Float64 of Unix-epoch milliseconds. */
  queueViewShare(): SharedArrayBuffer {
    const share = new SharedArrayBuffer(Float64Array.BYTES_PER_ELEMENT);
    new Float64Array(share)[0] = this.clock.timeOriginMs + this.constructedMs;
    return share;
  }

  /** Down for the second `elapsed mod (up + down) >= up`, as flakey_map computes it. */
  get isDown(): boolean {
    const elapsedSeconds = Math.floor((this.clock.nowMs() - this.constructedMs) / 1000);
    return elapsedSeconds % (this.schedule.upSeconds + this.schedule.downSeconds) >= this.schedule.upSeconds;
  }

  map(bio: Bio, done: MapDone): void {
    const deviceSector = this.deviceStartSector + bio.sector;
    if (!this.isDown) {
      remapToDevice(this.device, deviceSector, bio, done);
      return;
    }
    const { features } = this;
    if (bio.op === IoOp.Read) {
      if (features.errorReads) {
        done(-EIO);
        return;
      }
      remapToDevice(this.device, deviceSector, bio, (result) => {
        if (result > 0) this.corruptRead(bio);
        done(result);
      });
      return;
    }
    // Everything else writes: data, flush, discard, write-zeroes.
    if (features.writes === 'drop') {
      done(bio.op === IoOp.Write ? bio.data.byteLength : 0);
      return;
    }
    if (features.writes === 'error') {
      done(-EIO);
      return;
    }
    if (bio.op === IoOp.Write) {
      const corrupted = this.corruptedWrite(bio);
      if (corrupted !== undefined) {
        remapToDevice(this.device, deviceSector, { ...bio, data: corrupted }, done);
        return;
      }
    }
    remapToDevice(this.device, deviceSector, bio, done);
  }

  /**
   * While up flakey is linear (its end_io corrupts only what was mapped while down), so a read
   * or write then can be served in place (a tmpfs file); while down, every request is mapped.
   * Only a queue thread's dispatcher asks (through a FlakeyView).
   */
  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    if (this.isDown) return 0;
    return this.device.inPlaceAddress?.(this.deviceStartSector + sector, byteLength, access) ?? 0;
  }

  status(kind: StatusKind): string {
    if (kind === 'info') return '';
    const { features } = this;
    const words: string[] = [];
    if (features.errorReads) words.push('error_reads');
    if (features.writes === 'drop') words.push('drop_writes');
    else if (features.writes === 'error') words.push('error_writes');
    const fixed = features.fixedCorruption;
    if (fixed !== undefined) words.push('corrupt_bio_byte', `${fixed.byteNumber}`, fixed.direction, `${fixed.value}`, `${fixed.flags}`);
    if (features.randomReadCorrupt > 0) words.push('random_read_corrupt', `${features.randomReadCorrupt}`);
    if (features.randomWriteCorrupt > 0) words.push('random_write_corrupt', `${features.randomWriteCorrupt}`);
    const head = `${this.device.tableName} ${this.deviceStartSector} ${this.schedule.upSeconds} ${this.schedule.downSeconds} ${words.length}`;
    return words.length === 0 ? head : `${head} ${words.join(' ')}`;
  }

  devices(): BlockDevice[] {
    return [this.device];
  }

  async destroy(): Promise<void> {
    // The device belongs to the table, which closes it.
  }

  /** flakey_end_io: corrupt a successful read in place, it is on its way to the caller. */
  private corruptRead(bio: Bio): void {
    const fixed = this.features.fixedCorruption;
    if (fixed?.direction === 'r' && flagsMatch(bio, fixed.flags)) overwriteByte(bio.data, fixed.byteNumber - 1, fixed.value);
    if (this.chance(this.features.randomReadCorrupt)) this.overwriteRandomByte(bio.data);
  }

  /** A copy of the write's data with the corruption applied, or undefined to write it as it is. */
  private corruptedWrite(bio: Bio): Uint8Array | undefined {
    const fixed = this.features.fixedCorruption;
    const corruptFixed = fixed?.direction === 'w' && flagsMatch(bio, fixed.flags);
    const corruptRandom = this.chance(this.features.randomWriteCorrupt);
    if (!corruptFixed && !corruptRandom) return undefined;
    // The kernel corrupts a clone: the caller's buffer stays as it was given.
    const copy = Uint8Array.from(bio.data);
    if (corruptFixed) overwriteByte(copy, fixed.byteNumber - 1, fixed.value);
    if (corruptRandom) this.overwriteRandomByte(copy);
    return copy;
  }

  private chance(perBillion: number): boolean {
    return perBillion > 0 && this.random(PROBABILITY_BASE) < perBillion;
  }

  private overwriteRandomByte(data: Uint8Array): void {
    if (data.byteLength === 0) return;
    overwriteByte(data, this.random(data.byteLength), this.random(256));
  }
}

/** The byte past the end of a short request is left alone, as the kernel does. */
function overwriteByte(data: Uint8Array, index: number, value: number): void {
  if (index < data.byteLength) data[index] = value;
}

/** all_corrupt_bio_flags_match, over the part of bi_opf a ublk request lets us know. */
function flagsMatch(bio: Bio, flags: number): boolean {
  const opf = (bio.op === IoOp.Write ? KERNEL_OPF.write : 0) | (bio.fua ? KERNEL_OPF.fua : 0);
  return ((opf & flags) >>> 0) === flags >>> 0;
}

/** dm_read_arg: an unsigned 32-bit decimal within [min, max], else `error`. */
function readArg(text: string | undefined, min: number, max: number, error: string): number {
  const value = text === undefined ? undefined : parseSectorNumber(text);
  if (value === undefined || value > UINT32_MAX || value < min || value > max) throw new TargetError(error);
  return value;
}

/** parse_features of dm-flakey.c, with its messages. `args` starts at <#features>. */
export function parseFlakeyFeatures(args: readonly string[]): FlakeyFeatures {
  const all: FlakeyFeatures = { errorReads: true, writes: 'error', randomReadCorrupt: 0, randomWriteCorrupt: 0 };
  if (args.length === 0) return all;
  const count = readArg(args[0], 0, 11, 'Invalid number of feature args');
  if (count > args.length - 1) throw new TargetError('Invalid number of feature args');
  if (count === 0) return all;

  let errorReads = false;
  let writes: FlakeyFeatures['writes'] = 'pass';
  let fixedCorruption: FixedCorruption | undefined;
  let randomReadCorrupt = 0;
  let randomWriteCorrupt = 0;
  const words = args.slice(1, 1 + count);
  let at = 0;
  const next = (): string | undefined => words[at++];
  while (at < words.length) {
    const name = next()!;
    switch (name.toLowerCase()) {
      case 'error_reads':
        if (errorReads) throw new TargetError('Feature error_reads duplicated');
        errorReads = true;
        break;
      case 'drop_writes':
        if (writes === 'drop') throw new TargetError('Feature drop_writes duplicated');
        if (writes === 'error') throw new TargetError('Feature drop_writes conflicts with feature error_writes');
        writes = 'drop';
        break;
      case 'error_writes':
        if (writes === 'error') throw new TargetError('Feature error_writes duplicated');
        if (writes === 'drop') throw new TargetError('Feature error_writes conflicts with feature drop_writes');
        writes = 'error';
        break;
      case 'corrupt_bio_byte': {
        if (fixedCorruption !== undefined) throw new TargetError('Feature corrupt_bio_byte duplicated');
        if (words.length - at < 4) throw new TargetError('Feature corrupt_bio_byte requires 4 parameters');
        const byteNumber = readArg(next(), 1, UINT32_MAX, 'Invalid corrupt bio byte');
        const direction = next()!.toLowerCase();
        if (direction !== 'r' && direction !== 'w') throw new TargetError('Invalid corrupt bio direction (r or w)');
        const value = readArg(next(), 0, 255, 'Invalid corrupt value to write into bio byte (0-255)');
        const flags = readArg(next(), 0, UINT32_MAX, 'Invalid corrupt bio flags mask');
        fixedCorruption = { byteNumber, direction, value, flags };
        break;
      }
      case 'random_read_corrupt':
        if (randomReadCorrupt > 0) throw new TargetError('Feature random_read_corrupt duplicated');
        if (at >= words.length) throw new TargetError('Feature random_read_corrupt requires a parameter');
        randomReadCorrupt = readArg(next(), 0, PROBABILITY_BASE, 'Invalid random corrupt argument');
        break;
      case 'random_write_corrupt':
        if (randomWriteCorrupt > 0) throw new TargetError('Feature random_write_corrupt duplicated');
        if (at >= words.length) throw new TargetError('Feature random_write_corrupt requires a parameter');
        randomWriteCorrupt = readArg(next(), 0, PROBABILITY_BASE, 'Invalid random corrupt argument');
        break;
      default:
        throw new TargetError('Unrecognised flakey feature requested');
    }
  }

  const corruptsWrites = fixedCorruption?.direction === 'w' || randomWriteCorrupt > 0;
  const corruptsReads = fixedCorruption?.direction === 'r' || randomReadCorrupt > 0;
  if (writes === 'drop' && corruptsWrites) {
    throw new TargetError('drop_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the WRITE flag set');
  }
  if (writes === 'error' && corruptsWrites) {
    throw new TargetError('error_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the WRITE flag set');
  }
  if (errorReads && corruptsReads) {
    throw new TargetError('error_reads is incompatible with random_read_corrupt or corrupt_bio_byte with the READ flag set');
  }
  const nothing = !errorReads && writes === 'pass' && fixedCorruption === undefined && randomReadCorrupt === 0 && randomWriteCorrupt === 0;
  if (nothing) return all;
  return { errorReads, writes, fixedCorruption, randomReadCorrupt, randomWriteCorrupt };
}

/**
 * A queue thread's flakey: the same target, up and down on its owner's schedule (the start the
 * owner shares), so the thread serves all of the device's I/O itself. Each thread draws its own
 * random corruptions, as each CPU would in the kernel.
 */
export class FlakeyView implements Target {
  readonly type = 'flakey';
  readonly threadModel = 'any-queue';

  constructor(private readonly flakey: FlakeyTarget) {}

  get capabilities(): TargetCapabilities {
    return this.flakey.capabilities;
  }

  get isDown(): boolean {
    return this.flakey.isDown;
  }

  map(bio: Bio, done: MapDone): void {
    this.flakey.map(bio, done);
  }

  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    return this.flakey.inPlaceAddress(sector, byteLength, access);
  }

  status(kind: StatusKind): string {
    return this.flakey.status(kind);
  }

  devices(): BlockDevice[] {
    return this.flakey.devices();
  }

  async destroy(): Promise<void> {
    // The device belongs to the table.
  }
}

/** flakey's constructor (flakey_ctr): its arguments checked, its device opened; started now or at `startMs`. */
async function constructFlakey(ctx: TargetContext, args: string[], startMs?: number): Promise<FlakeyTarget> {
  if (args.length < 4) throw new TargetError('Invalid argument count');
  const deviceStartSector = parseSectorNumber(args[1]!);
  if (deviceStartSector === undefined) throw new TargetError('Invalid device sector');
  const upSeconds = readArg(args[2], 0, UINT32_MAX, 'Invalid up interval');
  const downSeconds = readArg(args[3], 0, UINT32_MAX, 'Invalid down interval');
  if (upSeconds + downSeconds === 0) throw new TargetError('Total (up + down) interval is zero');
  if (upSeconds + downSeconds > UINT32_MAX) throw new TargetError('Interval overflow');
  const features = parseFlakeyFeatures(args.slice(4));

  const device = await lookupDevice(ctx, args[0]!);
  checkDeviceArea(device, ctx, deviceStartSector);
  const { clock } = ctx.scope;
  return new FlakeyTarget(device, deviceStartSector, { upSeconds, downSeconds }, features, clock, randomInt, startMs ?? clock.nowMs());
}

/** Built by a queue thread in place of flakey, only with the owner's QueueView (its start). */
export const flakeyViewType: TargetType = {
  name: 'flakey',
  version: [1, 5, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    // Without the owner's start the thread's schedule would drift from the owner's.
    const view = requireQueueView(ctx, 'flakey', Float64Array.BYTES_PER_ELEMENT, "its owner's start");
    const startEpochMs = new Float64Array(view.share)[0]!;
    return new FlakeyView(await constructFlakey(ctx, args, startEpochMs - ctx.scope.clock.timeOriginMs));
  },
};

export const flakeyTargetType: TargetType = {
  name: 'flakey',
  version: [1, 5, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    return constructFlakey(ctx, args);
  },
};
