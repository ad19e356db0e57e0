import type { IoResult } from '../base/errno';
import type { Clock } from '../base/clock';
import { IoOp, type Bio } from '../io/bio';
import type { BlockDevice } from '../io/block-device';
import { checkDeviceArea, lookupDevice, parseSectorNumber } from '../dm/table-args';
import { TargetError, type MapDone, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../dm/target';
import { remapToDevice } from './remap';

const UINT32_MAX = 0xffffffff;

/** dm-delay's three classes: each has its own device, offset and delay. */
export type DelayClassName = 'read' | 'write' | 'flush';

export interface DelayClass {
  readonly device: BlockDevice;
  readonly deviceStartSector: number;
  readonly delayMs: number;
}

/** A piece of I/O waiting out its delay. */
interface HeldBio {
  readonly bio: Bio;
  readonly className: DelayClassName;
  readonly dueMs: number;
  readonly done: MapDone;
}

/**
 * delay <dev> <offset> <ms> [<wdev> <woffset> <wms> [<fdev> <foffset> <fms>]]: each piece of
 * I/O goes to its class's device after that class's delay, counted from arrival. Reads are one
 * class; writes, discards and write-zeroes another; flushes the third. Held pieces wait on one
 * timer for the earliest deadline, never blocking the event loop, and leave in arrival order
 * among those due. A suspend releases everything held at once and stops delaying until resume.
 */
export class DelayTarget implements Target {
  readonly type = 'delay';
  /** It holds I/O on one timer, counts what it holds for status, and releases all of it at presuspend: one instance. */
  readonly threadModel = 'owner-thread';
  readonly capabilities: TargetCapabilities;
  /** Arrival order: released in this order among the pieces that are due. */
  private held: HeldBio[] = [];
  private readonly heldCounts: Record<DelayClassName, number> = { read: 0, write: 0, flush: 0 };
  private delaying = true;
  private cancelTimer: (() => void) | undefined;
  private timerDueMs = Infinity;

  constructor(
    private readonly classes: Readonly<Record<DelayClassName, DelayClass>>,
    /** How many triples the table gave (3, 6 or 9 arguments): the TABLE status prints those. */
    private readonly givenTriples: 1 | 2 | 3,
    private readonly clock: Clock,
  ) {
    const devices = this.devices();
    this.capabilities = {
      discard: devices.every((device) => device.capabilities.discard),
      writeZeroes: devices.every((device) => device.capabilities.writeZeroes),
      fua: true,
    };
  }

  map(bio: Bio, done: MapDone): void {
    const className = classOf(bio);
    const delayClass = this.classes[className];
    if (delayClass.delayMs === 0 || !this.delaying) {
      this.submit(className, bio, done);
      return;
    }
    const dueMs = this.clock.nowMs() + delayClass.delayMs;
    this.held.push({ bio, className, dueMs, done });
    this.heldCounts[className]++;
    if (dueMs < this.timerDueMs) this.armTimer(dueMs);
  }

  status(kind: StatusKind): string {
    if (kind === 'info') return `${this.heldCounts.read} ${this.heldCounts.write} ${this.heldCounts.flush}`;
    const order: DelayClassName[] = ['read', 'write', 'flush'];
    return order
      .slice(0, this.givenTriples)
      .map((name) => {
        const c = this.classes[name];
        return `${c.device.tableName} ${c.deviceStartSector} ${c.delayMs}`;
      })
      .join(' ');
  }

  /** Suspend must not wait out the delays: send everything now, and the rest straight through. */
  async presuspend(): Promise<void> {
    this.delaying = false;
    this.release(Infinity);
  }

  async resume(): Promise<void> {
    this.delaying = true;
  }

  devices(): BlockDevice[] {
    const devices = [this.classes.read.device, this.classes.write.device, this.classes.flush.device];
    return devices.filter((device, index) => devices.findIndex((other) => other.key === device.key) === index);
  }

  async destroy(): Promise<void> {
    this.release(Infinity);
  }

  private armTimer(dueMs: number): void {
    this.cancelTimer?.();
    this.timerDueMs = dueMs;
    this.cancelTimer = this.clock.setTimer(dueMs - this.clock.nowMs(), () => {
      this.cancelTimer = undefined;
      this.timerDueMs = Infinity;
      this.release(this.clock.nowMs());
    });
  }

  /** Submit, in arrival order, every held piece due by `nowMs`; re-arm for the earliest left. */
  private release(nowMs: number): void {
    const due = this.held.filter((held) => held.dueMs <= nowMs);
    if (due.length > 0) this.held = this.held.filter((held) => held.dueMs > nowMs);
    for (const held of due) {
      this.heldCounts[held.className]--;
      this.submit(held.className, held.bio, held.done);
    }
    if (this.held.length === 0) {
      this.cancelTimer?.();
      this.cancelTimer = undefined;
      this.timerDueMs = Infinity;
      return;
    }
    const earliest = Math.min(...this.held.map((held) => held.dueMs));
    if (earliest !== this.timerDueMs) this.armTimer(earliest);
  }

  private submit(className: DelayClassName, bio: Bio, done: (result: IoResult) => void): void {
    const delayClass = this.classes[className];
    remapToDevice(delayClass.device, delayClass.deviceStartSector + bio.sector, bio, done);
  }
}

/** delay_map's choice: flushes (PREFLUSH writes), then every other write-direction op, then reads. */
function classOf(bio: Bio): DelayClassName {
  if (bio.op === IoOp.Flush) return 'flush';
  return bio.op === IoOp.Read ? 'read' : 'write';
}

/** delay_class_ctr: `<dev> <offset> <delay_ms>`, checked in the kernel's order. */
async function openDelayClass(ctx: TargetContext, triple: readonly string[]): Promise<DelayClass> {
  const deviceStartSector = parseSectorNumber(triple[1]!);
  if (deviceStartSector === undefined) throw new TargetError('Invalid device sector');
  const delayMs = parseSectorNumber(triple[2]!);
  if (delayMs === undefined || delayMs > UINT32_MAX) throw new TargetError('Invalid delay');
  const device = await lookupDevice(ctx, triple[0]!);
  checkDeviceArea(device, ctx, deviceStartSector);
  return { device, deviceStartSector, delayMs };
}

export const delayTargetType: TargetType = {
  name: 'delay',
  version: [1, 4, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    if (args.length !== 3 && args.length !== 6 && args.length !== 9) throw new TargetError('Requires exactly 3, 6 or 9 arguments');
    const read = await openDelayClass(ctx, args.slice(0, 3));
    const write = args.length >= 6 ? await openDelayClass(ctx, args.slice(3, 6)) : read;
    const flush = args.length === 9 ? await openDelayClass(ctx, args.slice(6, 9)) : write;
    return new DelayTarget({ read, write, flush }, (args.length / 3) as 1 | 2 | 3, ctx.scope.clock);
  },
};
