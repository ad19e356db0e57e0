import { TargetError, type MapDone, type StatusKind, type Target, type TargetContext, type TargetType } from '../../dm/target';
import { IoOp, type Bio } from '../../io/bio';
import type { BlockDevice } from '../../io/block-device';
import { LinearTarget } from '../linear';
import { ORIGINS, type OriginRegistry } from './origin-registry';
import type { OriginWriteMap } from './origin-write-map';

/**
 * snapshot-origin <origin_dev>: the live origin (spec snapshot.md §1.1, §3.1). Reads and flushes
 * pass straight through and are never held; anything that changes data (write, discard,
 * write-zeroes) first waits until every active snapshot of the origin holds the old contents of
 * the chunks it touches, committed.
 */
export class SnapshotOriginTarget implements Target {
  readonly type = 'snapshot-origin';
  /** Copy-outs of every snapshot of the origin go through the thread that owns them. */
  readonly threadModel = 'owner-thread';
  private readonly passthrough: LinearTarget;
  /** Where writes copy nothing out, kept by the registry: a queue thread's view serves those itself. */
  private readonly writeMap: OriginWriteMap;

  constructor(
    private readonly origin: BlockDevice,
    /** Device sectors map 1:1 onto the origin, as in the kernel (no offset argument). */
    private readonly startSector: number,
    private readonly registry: OriginRegistry,
  ) {
    this.passthrough = new LinearTarget(origin, startSector);
    this.writeMap = registry.acquireWriteMap(origin.key, origin.sizeSectors);
  }

  get capabilities() {
    return this.passthrough.capabilities;
  }

  /**
   * Writes are split at the smallest chunk size of the origin's snapshots, looked up at every
   * request: no order of table operations can leave a write straddling a chunk that needed a copy.
   */
  get maxIoSectors(): number | undefined {
    return this.registry.minChunkSectors(this.origin.key);
  }

  map(bio: Bio, done: MapDone): void {
    if (bio.op === IoOp.Read || bio.op === IoOp.Flush) {
      this.passthrough.map(bio, done);
      return;
    }
    this.registry.beforeOriginWrite(this.origin.key, this.startSector + bio.sector, bio.sectorCount, () => this.passthrough.map(bio, done));
  }

  /** Reads, flushes and writes that copy nothing out need no snapshot: origin-view.ts serves them. */
  queueViewShare(): SharedArrayBuffer {
    return this.writeMap.share;
  }

  status(kind: StatusKind): string {
    return kind === 'table' ? this.origin.tableName : '';
  }

  devices(): BlockDevice[] {
    return [this.origin];
  }

  async destroy(): Promise<void> {
    // The device belongs to the table.
    this.registry.releaseWriteMap(this.origin.key);
  }
}

export const snapshotOriginTargetType: TargetType = {
  name: 'snapshot-origin',
  version: [1, 9, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    if (args.length !== 1) throw new TargetError('origin: incorrect number of arguments');
    let origin: BlockDevice;
    try {
      origin = await ctx.openDevice(args[0]!);
    } catch (cause) {
      throw new TargetError(`Cannot get target device: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    }
    return new SnapshotOriginTarget(origin, ctx.startSector, ctx.scope.get(ORIGINS));
  },
};
