import { EOPNOTSUPP, type IoResult } from '../base/errno';
import { IoOp, type Bio } from '../io/bio';
import type { BlockDevice, InPlaceAccess } from '../io/block-device';
import { SECTOR_BYTES } from '../base/units';
import { checkDeviceArea, lookupDevice, parseSectorNumber } from '../dm/table-args';
import {
  passthroughCapabilities,
  TargetError,
  type DeviceHandle,
  type MapDone,
  type StatusKind,
  type Target,
  type TargetCapabilities,
  type TargetContext,
  type TargetType,
} from '../dm/target';
import { remapToDevice } from './remap';

/** dm-stripe's DM_IO_ERROR_THRESHOLD: a stripe raises an event for each of its first 14 errors. */
const EVENTS_PER_STRIPE = 14;

/** One stripe: a device and where the stripe's area starts on it. */
export interface Stripe {
  readonly device: BlockDevice;
  readonly deviceStartSector: number;
}

/** Where a target-relative sector lives: which stripe, and the sector within that stripe's area. */
interface StripeSector {
  readonly stripeIndex: number;
  readonly areaSector: number;
}

/**
 * Where striped's chunks lie and the stripe calls a request makes: chunk-sized pieces dealt round
 * robin to the stripes. Shared by the target (which counts errors) and a queue thread's view of
 * it (which sends failed I/O to the target instead). The core splits reads and writes at chunk
 * boundaries (maxIoSectors), so each goes to one stripe; a flush goes to every stripe, and a
 * discard or write-zeroes range is cut into the part that falls on each stripe, as dm-stripe's
 * stripe_map_range does.
 */
export class StripeLayout {
  constructor(
    readonly stripes: readonly Stripe[],
    readonly chunkSectors: number,
  ) {}

  /** Do `bio` (target-relative) on the stripes; `onStripeError` hears of each stripe call that failed. */
  map(bio: Bio, done: MapDone, onStripeError?: (device: BlockDevice) => void): void {
    switch (bio.op) {
      case IoOp.Read:
      case IoOp.Write: {
        const { stripeIndex, areaSector } = this.locate(bio.sector);
        this.submit(stripeIndex, areaSector, bio, done, onStripeError);
        return;
      }
      case IoOp.Flush:
        this.everyStripe((stripeIndex, finish) => this.submit(stripeIndex, 0, bio, finish, onStripeError), done);
        return;
      case IoOp.Discard:
      case IoOp.WriteZeroes:
        this.everyStripe((stripeIndex, finish) => this.submitRange(stripeIndex, bio, finish, onStripeError), done);
        return;
      default:
        done(-EOPNOTSUPP);
    }
  }

  /** The table text after `striped`: `<#stripes> <chunk_size> <dev> <offset>...`, as the target was loaded with. */
  tableText(): string {
    const areas = this.stripes.map((stripe) => ` ${stripe.device.tableName} ${stripe.deviceStartSector}`).join('');
    return `${this.stripes.length} ${this.chunkSectors}${areas}`;
  }

  /** Where the stripe device has these bytes in place, when they lie in one chunk and it can say; else 0. */
  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    const { stripeIndex, areaSector } = this.locate(sector);
    if ((areaSector % this.chunkSectors) + byteLength / SECTOR_BYTES > this.chunkSectors) return 0;
    const stripe = this.stripes[stripeIndex]!;
    return stripe.device.inPlaceAddress?.(stripe.deviceStartSector + areaSector, byteLength, access) ?? 0;
  }

  private locate(targetSector: number): StripeSector {
    const chunk = Math.floor(targetSector / this.chunkSectors);
    const offsetInChunk = targetSector - chunk * this.chunkSectors;
    const stripeIndex = chunk % this.stripes.length;
    const chunkOnStripe = Math.floor(chunk / this.stripes.length);
    return { stripeIndex, areaSector: chunkOnStripe * this.chunkSectors + offsetInChunk };
  }

  /**
   * The first sector of stripe `stripeIndex`'s area at or after target sector `targetSector`
   * (stripe_map_range_sector): the sector itself when it lies on that stripe, else the start of
   * that stripe's chunk in the same row, or of the next row for a stripe before it.
   */
  private areaSectorFrom(targetSector: number, stripeIndex: number): number {
    const at = this.locate(targetSector);
    if (at.stripeIndex === stripeIndex) return at.areaSector;
    const rowStart = at.areaSector - (at.areaSector % this.chunkSectors);
    return stripeIndex < at.stripeIndex ? rowStart + this.chunkSectors : rowStart;
  }

  private submitRange(stripeIndex: number, bio: Bio, finish: (result: IoResult) => void, onStripeError?: (device: BlockDevice) => void): void {
    const begin = this.areaSectorFrom(bio.sector, stripeIndex);
    const end = this.areaSectorFrom(bio.sector + bio.sectorCount, stripeIndex);
    if (begin >= end) {
      finish(0); // none of the range falls on this stripe
      return;
    }
    this.submit(stripeIndex, begin, { ...bio, sectorCount: end - begin }, finish, onStripeError);
  }

  private submit(stripeIndex: number, areaSector: number, bio: Bio, finish: (result: IoResult) => void, onStripeError?: (device: BlockDevice) => void): void {
    const stripe = this.stripes[stripeIndex]!;
    if (onStripeError === undefined) {
      remapToDevice(stripe.device, stripe.deviceStartSector + areaSector, bio, finish);
      return;
    }
    remapToDevice(stripe.device, stripe.deviceStartSector + areaSector, bio, (result) => {
      if (result < 0 && result !== -EOPNOTSUPP) onStripeError(stripe.device);
      finish(result);
    });
  }

  /** Run `each` for every stripe at once; answer the first error in stripe order, else 0. */
  private everyStripe(each: (stripeIndex: number, finish: (result: IoResult) => void) => void, done: MapDone): void {
    const results: IoResult[] = new Array(this.stripes.length);
    let outstanding = this.stripes.length;
    for (let index = 0; index < this.stripes.length; index++) {
      each(index, (result) => {
        results[index] = result;
        if (--outstanding === 0) done(results.find((r) => r < 0) ?? 0);
      });
    }
  }
}

/** What a striped table takes besides read, write and flush: what every stripe device takes. */
export function stripedCapabilities(layout: StripeLayout): TargetCapabilities {
  return passthroughCapabilities(layout.stripes.map((stripe) => stripe.device));
}

/**
 * striped <#stripes> <chunk_size> <dev> <offset>...: I/O laid out by a StripeLayout, with the
 * errors each stripe met (status `D`, events). Queue threads serve its I/O through a view
 * (striped-view.ts) and send here only what failed there.
 */
export class StripedTarget implements Target {
  readonly type = 'striped';
  /** Its per-stripe error counts (status `D`, events) must see every error: one instance. */
  readonly threadModel = 'owner-thread';
  readonly capabilities: TargetCapabilities;
  readonly maxIoSectors: number;
  /** Errors seen per stripe; a stripe with any shows D in status. */
  private readonly errorCounts: number[];

  constructor(
    private readonly layout: StripeLayout,
    private readonly deviceHandle: DeviceHandle,
  ) {
    this.maxIoSectors = layout.chunkSectors;
    this.capabilities = stripedCapabilities(layout);
    this.errorCounts = layout.stripes.map(() => 0);
  }

  private get stripes(): readonly Stripe[] {
    return this.layout.stripes;
  }

  map(bio: Bio, done: MapDone): void {
    this.layout.map(bio, done, this.noteError);
  }

  /**
   * A read or write within one chunk, on a stripe that serves in place (a tmpfs file). Only a
   * queue thread's dispatcher asks (its view's answer is this one); here it also tells the
   * device's creation that its writes may be placed (UBLK_F_NEED_GET_DATA).
   */
  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    return this.layout.inPlaceAddress(sector, byteLength, access);
  }

  /**
   * The view reads nothing of this target's: it needs only somewhere to send what failed, so
   * that the errors are counted (and events raised) here, once.
   */
  queueViewShare(): SharedArrayBuffer {
    return new SharedArrayBuffer(0);
  }

  readonly queueViewServesAll = true;

  status(kind: StatusKind): string {
    if (kind === 'table') return this.layout.tableText();
    const names = this.stripes.map((stripe) => `${stripe.device.tableName} `).join('');
    const health = this.errorCounts.map((count) => (count > 0 ? 'D' : 'A')).join('');
    return `${this.stripes.length} ${names}1 ${health}`;
  }

  devices(): BlockDevice[] {
    return this.stripes.map((stripe) => stripe.device);
  }

  async destroy(): Promise<void> {
    // The devices belong to the table, which closes them.
  }

  /** stripe_end_io: the error counts against every stripe on the failing device. */
  private readonly noteError = (device: BlockDevice): void => {
    this.stripes.forEach((stripe, index) => {
      if (stripe.device.key !== device.key) return;
      this.errorCounts[index]!++;
      if (this.errorCounts[index]! <= EVENTS_PER_STRIPE) this.deviceHandle.raiseEvent();
    });
  };
}

const UINT32_MAX = 0xffffffff;

/** kstrtouint: a decimal unsigned 32-bit number, or undefined. */
function parseUint32(text: string): number | undefined {
  const value = parseSectorNumber(text);
  return value !== undefined && value <= UINT32_MAX ? value : undefined;
}

/** Checks striped's arguments against the target's length and opens its stripes, as dm-stripe's constructor does. */
export async function openStripes(ctx: TargetContext, args: string[]): Promise<StripeLayout> {
  if (args.length < 2) throw new TargetError('Not enough arguments');
  const stripeCount = parseUint32(args[0]!);
  if (stripeCount === undefined || stripeCount === 0) throw new TargetError('Invalid stripe count');
  const chunkSectors = parseUint32(args[1]!);
  if (chunkSectors === undefined || chunkSectors === 0) throw new TargetError('Invalid chunk_size');
  if (ctx.lengthSectors % stripeCount !== 0) throw new TargetError('Target length not divisible by number of stripes');
  const stripeWidthSectors = ctx.lengthSectors / stripeCount;
  if (stripeWidthSectors % chunkSectors !== 0) throw new TargetError('Target length not divisible by chunk size');
  if (args.length !== 2 + 2 * stripeCount) throw new TargetError('Not enough destinations specified');

  const stripes: Stripe[] = [];
  for (let index = 0; index < stripeCount; index++) {
    const deviceSpec = args[2 + 2 * index]!;
    const deviceStartSector = parseSectorNumber(args[3 + 2 * index]!);
    if (deviceStartSector === undefined) throw new TargetError("Couldn't parse stripe destination");
    const device = await lookupDevice(ctx, deviceSpec, "Couldn't parse stripe destination");
    checkDeviceArea(device, ctx, deviceStartSector, stripeWidthSectors);
    stripes.push({ device, deviceStartSector });
  }
  return new StripeLayout(stripes, chunkSectors);
}

export const stripedTargetType: TargetType = {
  name: 'striped',
  version: [1, 6, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    const layout = await openStripes(ctx, args);
    return new StripedTarget(layout, ctx.device);
  },
};
