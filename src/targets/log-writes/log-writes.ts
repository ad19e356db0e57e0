import { DmError, type IoResult } from '../../base/errno';
import { IoOp, type Bio } from '../../io/bio';
import type { BlockDevice } from '../../io/block-device';
import { SECTOR_BYTES } from '../../base/units';
import { TargetError, type MapDone, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../../dm/target';
import { remapToDevice } from '../remap';
import { lookupDevice } from '../../dm/table-args';
import { LOG_ENTRY_BYTES, LogFlag, encodeEntry, encodeSuper } from './log-format';

/**
 * log-writes <dev> <log_dev>: I/O passes through to <dev>, and every write is recorded on
 * <log_dev> in dm-log-writes' format, in the order it became durable: a plain write is logged
 * only when a flush after it completes (with the flush), a FUA write as soon as it completes, a
 * discard like a plain write. `message 0 mark NAME` adds a named point to replay to.
 * `ublk-dm replay-log` (or xfstests' replay-log) replays the log onto another device.
 */

/** A write waiting to be logged. Data is a copy: the request's buffer is reused once it completes. */
interface PendingBlock {
  readonly flags: number;
  /** In blocks of the logged device's logical block size. */
  readonly block: number;
  readonly blockCount: number;
  /** Written data; 'zeroes' for write-zeroes (logged as zero data so a replay writes zeroes). */
  readonly data?: Uint8Array | 'zeroes';
  readonly markName?: Buffer;
  /** For a mark: resolves once it is on the log. */
  readonly logged?: () => void;
}

const END_MARK = 'dm-log-writes-end';

export class LogWritesTarget implements Target {
  readonly type = 'log-writes';
  // Its logging order is its state: one owner orders the writes it records.
  readonly threadModel = 'owner-thread';
  readonly capabilities: TargetCapabilities;
  private readonly blockBytes: number;
  private readonly sectorsPerBlock: number;
  private loggedEntries = 0;
  /** Next free 512-byte sector of the log; sector 0 holds the super. */
  private nextSector: number;
  private loggingEnabled = true;
  /** Completed plain writes and discards, logged with the next flush. */
  private unflushed: PendingBlock[] = [];
  /** What the log writer takes next, in order. */
  private readonly toLog: PendingBlock[] = [];
  private draining = false;

  constructor(
    private readonly device: BlockDevice,
    private readonly logDevice: BlockDevice,
    /** The segment's start: like the kernel's target, this one maps device sectors unchanged. */
    private readonly startSector: number,
  ) {
    this.blockBytes = device.logicalBlockBytes;
    this.sectorsPerBlock = this.blockBytes / SECTOR_BYTES;
    this.nextSector = this.sectorsPerBlock;
    // Discards are taken even when <dev> has none: they are logged and completed (as the kernel does).
    this.capabilities = { discard: true, writeZeroes: device.capabilities.writeZeroes, fua: true };
  }

  map(bio: Bio, done: MapDone): void {
    const deviceSector = this.startSector + bio.sector;
    if (!this.loggingEnabled || bio.op === IoOp.Read) {
      remapToDevice(this.device, deviceSector, bio, done);
      return;
    }
    const block = deviceSector / this.sectorsPerBlock;
    const blockCount = bio.sectorCount / this.sectorsPerBlock;
    switch (bio.op) {
      case IoOp.Write: {
        const pending: PendingBlock = { flags: bio.fua ? LogFlag.Fua : 0, block, blockCount, data: Uint8Array.from(bio.data) };
        remapToDevice(this.device, deviceSector, bio, (result) => this.completed(pending, result, done));
        return;
      }
      case IoOp.WriteZeroes: {
        const pending: PendingBlock = { flags: 0, block, blockCount, data: 'zeroes' };
        remapToDevice(this.device, deviceSector, bio, (result) => this.completed(pending, result, done));
        return;
      }
      case IoOp.Discard: {
        const pending: PendingBlock = { flags: LogFlag.Discard, block, blockCount };
        if (this.device.capabilities.discard) remapToDevice(this.device, deviceSector, bio, (result) => this.completed(pending, result, done));
        else this.completed(pending, 0, done);
        return;
      }
      case IoOp.Flush: {
        // The writes completed before this flush are durable once it completes: they go to
        // the log just before it, as the kernel splices its unflushed list onto the flush.
        const before = this.unflushed;
        this.unflushed = [];
        remapToDevice(this.device, deviceSector, bio, (result) => {
          if (result >= 0) this.queue(...before, { flags: LogFlag.Flush, block: 0, blockCount: 0 });
          else this.unflushed.unshift(...before);
          done(result);
        });
        return;
      }
      default:
        remapToDevice(this.device, deviceSector, bio, done);
    }
  }

  /**
   * `mark <name>`: a named point in the log. Answers once the mark is on the log device (the
   * kernel answers at once and writes it later), so a replay started after the message finds it.
   */
  async message(argv: string[]): Promise<string> {
    if (argv.length !== 2) throw new DmError(`Invalid log-writes message arguments, expect 2 arguments, got ${argv.length}`, 'EINVAL');
    if (argv[0]!.toLowerCase() !== 'mark') throw new DmError(`Unrecognised log writes target message received: ${argv[0]}`, 'EINVAL');
    await this.mark(argv[1]!);
    return '';
  }

  status(kind: StatusKind): string {
    if (kind === 'table') return `${this.device.tableName} ${this.logDevice.tableName}`;
    return `${this.loggedEntries} ${this.nextSector - 1}${this.loggingEnabled ? '' : ' logging_disabled'}`;
  }

  devices(): BlockDevice[] {
    return [this.device, this.logDevice];
  }

  /** What the kernel's dtr does: log the writes still unflushed, then an end mark that rewrites the super. */
  async destroy(): Promise<void> {
    this.queue(...this.unflushed);
    this.unflushed = [];
    await this.mark(END_MARK);
  }

  private mark(name: string): Promise<void> {
    // The name fits in the entry's block with a terminating zero, as kstrndup(maxsize - 1) keeps it.
    const markName = Buffer.from(name, 'latin1').subarray(0, this.blockBytes - LOG_ENTRY_BYTES - 1);
    return new Promise((resolve) => this.queue({ flags: LogFlag.Mark, block: 0, blockCount: 0, markName, logged: resolve }));
  }

  /**
   * Only writes that succeeded are logged (the kernel logs failed ones too, which a replay would
   * then apply although they never reached the device).
   */
  private completed(pending: PendingBlock, result: IoResult, done: MapDone): void {
    if (result >= 0) {
      if ((pending.flags & LogFlag.Fua) !== 0) this.queue(pending);
      else this.unflushed.push(pending);
    }
    done(result);
  }

  private queue(...blocks: PendingBlock[]): void {
    this.toLog.push(...blocks);
    if (!this.draining) void this.drain();
  }

  /** The log writer: one entry at a time, in order, so the log's order is the order of durability. */
  private async drain(): Promise<void> {
    // Set and cleared without an await in between the last shift and the clear: a block queued
    // at any moment either finds the loop running or starts it.
    this.draining = true;
    for (let pending = this.toLog.shift(); pending !== undefined; pending = this.toLog.shift()) {
      try {
        if (this.loggingEnabled) await this.logOne(pending);
      } catch {
        this.loggingEnabled = false; // the kernel's log_end_io on an error: stop logging, keep serving
      } finally {
        pending.logged?.();
      }
    }
    this.draining = false;
  }

  private async logOne(pending: PendingBlock): Promise<void> {
    const entrySector = this.nextSector;
    const isDiscard = (pending.flags & LogFlag.Discard) !== 0;
    const dataSectors = isDiscard ? 0 : pending.blockCount * this.sectorsPerBlock;
    this.nextSector += dataSectors + this.sectorsPerBlock;
    if (this.nextSector >= this.logDevice.sizeSectors) {
      this.loggingEnabled = false; // "Ran out of space on the logdev": status says logging_disabled
      return;
    }
    this.loggedEntries++;
    // data_len is the length of the entry's own data (a mark's name); written data follows the entry.
    const dataLength = pending.markName?.byteLength ?? 0;
    const entry = encodeEntry({ block: pending.block, blockCount: pending.blockCount, flags: pending.flags, dataLength }, this.blockBytes, pending.markName);
    await this.writeLog(entry, entrySector);
    if (dataSectors > 0) {
      const data = pending.data === 'zeroes' || pending.data === undefined ? new Uint8Array(dataSectors * SECTOR_BYTES) : pending.data;
      await this.writeLog(data, entrySector + this.sectorsPerBlock);
    }
    if ((pending.flags & (LogFlag.Fua | LogFlag.Mark)) !== 0) await this.writeLog(encodeSuper(this.loggedEntries, this.blockBytes), 0);
  }

  private async writeLog(data: Uint8Array, sector: number): Promise<void> {
    const result = await this.logDevice.write(data, sector, false);
    if (result !== data.byteLength) throw new Error(`log write at sector ${sector} returned ${result}`);
  }
}

export const logWritesTargetType: TargetType = {
  name: 'log-writes',
  version: [1, 1, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    if (args.length < 2) throw new TargetError('Invalid argument count');
    const device = await lookupDevice(ctx, args[0]!);
    const logDevice = await lookupDevice(ctx, args[1]!, 'Log device lookup failed');
    if (ctx.startSector + ctx.lengthSectors > device.sizeSectors) {
      throw new TargetError(`Device too small for target: ${device.tableName} start=${ctx.startSector}, len=${ctx.lengthSectors}, dev_size=${device.sizeSectors}`);
    }
    return new LogWritesTarget(device, logDevice, ctx.startSector);
  },
};
