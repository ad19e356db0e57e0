import { EOPNOTSUPP } from '../../base/errno';
import { IoOp, type Bio } from '../../io/bio';
import type { BlockDevice, InPlaceAccess } from '../../io/block-device';
import { passthroughCapabilities, requireQueueView, type MapDone, type QueueView, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../../dm/target';
import { dmIoNotify, flatMemory, type IoRegion } from '../../dmio';
import { remapToDevice } from '../remap';
import { parseLogPart } from './log-types';
import { openLegs, VIEW_SHARE_HOLDS_OFFSET, type MirrorLeg } from './mirror';
import { RegionHolds } from './region-holds';

/**
 * A queue thread's view of a mirror (mirror.ts), for a device whose queues belong to queue
 * threads (one reloaded from a linear to a mirror, as `lvconvert -m1` does). Reads need none of
 * the mirror's state but which leg to read: the owner shares its default leg while that leg has
 * no errors, and every write reaches the default leg, so it holds the truth in every region, in
 * sync or not. The view reads it itself (in place over a tmpfs file); a read that fails there,
 * every read while the owner shares no leg, and everything else go to the owner.
 *
 * Writes go through the owner's region hash and dirty log, except a write within one region the
 * owner holds for views (region-holds.ts: marked dirty in the log, durably, legs and log
 * healthy): the view writes it to every leg itself, counted in the region's hold so the mark
 * stays until it has landed. A write that fails on any leg goes to the owner and is done again
 * there, where a second failure is counted and handled; the hold keeps counting it until the
 * owner answers. (The kernel counts the first; a failure that does not repeat is not seen.)
 * Without the view a queue thread forwarded every read, and without the holds every write.
 */
export class MirrorView implements Target {
  readonly type = 'mirror';
  /** One per queue thread: it reads the shared leg and keeps nothing. */
  readonly threadModel = 'any-queue';
  readonly capabilities: TargetCapabilities;

  constructor(
    private readonly legs: readonly MirrorLeg[],
    /** The owner's read leg (MirrorTarget.queueViewShare): an index into `legs`, or -1. */
    private readonly readLeg: Int32Array,
    /** Where the segment starts on the device (forwarded I/O is addressed in device sectors). */
    private readonly startSector: number,
    private readonly forward: QueueView['forward'],
    /** The owner's table text, which this copy was built from. */
    private readonly tableText: string,
    private readonly holds: RegionHolds,
  ) {
    this.capabilities = passthroughCapabilities(legs.map((leg) => leg.device));
  }

  map(bio: Bio, done: MapDone): void {
    if (bio.op === IoOp.Write && this.writeHeld(bio, done)) return;
    const leg = bio.op === IoOp.Read ? this.sharedLeg() : undefined;
    if (leg === undefined) {
      this.forward(bio, this.startSector + bio.sector, done);
      return;
    }
    remapToDevice(leg.device, leg.offsetSectors + bio.sector, bio, (result) => {
      // The owner fails the leg over (or answers the error) as for any read of its own.
      if (result < 0 && result !== -EOPNOTSUPP) this.forward(bio, this.startSector + bio.sector, done);
      else done(result);
    });
  }

  /** A write to one held region, to every leg; false when it must go to the owner. */
  private writeHeld(bio: Bio, done: MapDone): boolean {
    const region = this.holds.regionOf(bio.sector, bio.sectorCount);
    if (region < 0 || !this.holds.enter(region)) return false;
    const regions: IoRegion[] = this.legs.map((leg) => ({ device: leg.device, sector: leg.offsetSectors + bio.sector, count: bio.sectorCount }));
    const landed = (errors: number): void => {
      if (errors === 0) {
        this.holds.leave(region);
        done(bio.data.byteLength);
        return;
      }
      this.forward(bio, this.startSector + bio.sector, (result) => {
        this.holds.leave(region);
        done(result);
      });
    };
    try {
      dmIoNotify({ op: 'write', memory: flatMemory(bio.data), fua: bio.fua }, regions, landed, undefined);
    } catch {
      landed(1);
    }
    return true;
  }

  /** Reads only, from the shared leg when it serves in place; a write goes to every leg, never in place. */
  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    if (access !== 'read') return 0;
    const leg = this.sharedLeg();
    return leg?.device.inPlaceAddress?.(leg.offsetSectors + sector, byteLength, 'read') ?? 0;
  }

  status(kind: StatusKind): string {
    // A queue thread's copy answers no status: the owner's target does.
    return kind === 'table' ? this.tableText : '';
  }

  devices(): BlockDevice[] {
    return this.legs.map((leg) => leg.device);
  }

  async destroy(): Promise<void> {
    // The devices belong to the table.
  }

  private sharedLeg(): MirrorLeg | undefined {
    const index = Atomics.load(this.readLeg, 0);
    return index >= 0 ? this.legs[index] : undefined;
  }
}

/** Built by a queue thread in place of mirror, only with the owner's QueueView. It opens the legs, never the log. */
export const mirrorViewType: TargetType = {
  name: 'mirror',
  version: [1, 14, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    // Without the owner's read leg it could read a leg that is behind.
    const view = requireQueueView(ctx, 'mirror', VIEW_SHARE_HOLDS_OFFSET + RegionHolds.byteLength(0), "its owner's read leg and region holds");
    const { legs } = await openLegs(ctx, args.slice(parseLogPart(args).wordCount));
    const readLeg = new Int32Array(view.share, 0, 1);
    return new MirrorView(legs, readLeg, ctx.startSector, view.forward, args.join(' '), RegionHolds.over(view.share, VIEW_SHARE_HOLDS_OFFSET));
  },
};
