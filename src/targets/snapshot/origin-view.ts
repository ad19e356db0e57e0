import { requireQueueView, TargetError, type MapDone, type QueueView, type StatusKind, type Target, type TargetContext, type TargetType } from '../../dm/target';
import { SECTOR_BYTES } from '../../base/units';
import { IoOp, type Bio } from '../../io/bio';
import type { BlockDevice, InPlaceAccess } from '../../io/block-device';
import { LinearTarget } from '../linear';
import { OriginWriteMap } from './origin-write-map';

/**
 * A queue thread's view of snapshot-origin (origin.ts), for a device whose queues belong to
 * queue threads (one reloaded from a linear to snapshot-origin when its first snapshot is taken,
 * as LVM and our `snapshot create` do). What needs no snapshot it serves itself, as linear would:
 * reads, flushes, and writes to chunks every snapshot already holds (the owner's OriginWriteMap).
 * Everything else (a write that may need a copy-out, discards) goes to the owner thread, whose
 * snapshot-origin and snapshots do it as they would any request. Without the view, a queue thread
 * forwarded every request there and back.
 */
export class SnapshotOriginView implements Target {
  readonly type = 'snapshot-origin';
  /** One per queue thread: what it serves needs no state but the shared map, which it only reads. */
  readonly threadModel = 'any-queue';
  private readonly passthrough: LinearTarget;

  constructor(
    private readonly origin: BlockDevice,
    /** Device sectors map 1:1 onto the origin, as in snapshot-origin. */
    private readonly startSector: number,
    private readonly writeMap: OriginWriteMap,
    private readonly forward: QueueView['forward'],
  ) {
    this.passthrough = new LinearTarget(origin, startSector);
  }

  get capabilities() {
    return this.passthrough.capabilities;
  }

  map(bio: Bio, done: MapDone): void {
    if (bio.op === IoOp.Read || bio.op === IoOp.Flush || (bio.op === IoOp.Write && this.writeMap.covers(this.startSector + bio.sector, bio.sectorCount))) {
      this.passthrough.map(bio, done);
      return;
    }
    this.forward(bio, this.startSector + bio.sector, done);
  }

  /**
   * Served in place as linear's are (ublk copies straight between the request and a tmpfs file's
   * pages): reads, and writes the map covers. A placed write counts as mapped until its data has
   * landed, so the suspend before a snapshot is taken waits for it, as for any write in flight.
   */
  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    if (access === 'write' && !this.writeMap.covers(this.startSector + sector, byteLength / SECTOR_BYTES)) return 0;
    return this.passthrough.inPlaceAddress(sector, byteLength, access);
  }

  status(kind: StatusKind): string {
    return kind === 'table' ? this.origin.tableName : '';
  }

  devices(): BlockDevice[] {
    return this.passthrough.devices();
  }

  async destroy(): Promise<void> {
    // The device belongs to the table.
  }
}

/** Built by a queue thread in place of snapshot-origin, only with the owner's QueueView. */
export const snapshotOriginViewType: TargetType = {
  name: 'snapshot-origin',
  version: [1, 9, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    // Without the owner's map a write could skip a copy-out.
    const view = requireQueueView(ctx, 'snapshot-origin', 0, "its owner's write map");
    if (args.length !== 1) throw new TargetError('origin: incorrect number of arguments');
    const origin = await ctx.openDevice(args[0]!);
    return new SnapshotOriginView(origin, ctx.startSector, OriginWriteMap.over(view.share), view.forward);
  },
};
