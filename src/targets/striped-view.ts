import { EOPNOTSUPP } from '../base/errno';
import type { Bio } from '../io/bio';
import type { BlockDevice, InPlaceAccess } from '../io/block-device';
import { requireQueueView, type MapDone, type MapOutcome, type QueueView, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../dm/target';
import { openStripes, stripedCapabilities, stripedTargetType, type StripeLayout } from './striped';

/**
 * A queue thread's view of striped (striped.ts), for a device whose queues belong to queue
 * threads. It does the stripe I/O itself, so a read or write goes from the request to its stripe
 * on the thread that fetched it (in place where the stripe is a tmpfs file), not through the
 * owner thread and a shared buffer. The error counts behind status `D` and the events live with
 * the owner: I/O that fails here is sent to it and done again there, where a second failure is
 * counted and answered. (The kernel counts the first; a failure that does not repeat is not seen
 * in status, and the request succeeds.)
 */
export class StripedView implements Target {
  readonly type = 'striped';
  /** One per queue thread: it keeps no state of its own. */
  readonly threadModel = 'any-queue';
  readonly capabilities: TargetCapabilities;
  readonly maxIoSectors: number;

  constructor(
    private readonly layout: StripeLayout,
    /** Where the segment starts on the device (forwarded I/O is addressed in device sectors). */
    private readonly startSector: number,
    private readonly forward: QueueView['forward'],
  ) {
    this.capabilities = stripedCapabilities(layout);
    this.maxIoSectors = layout.chunkSectors;
  }

  map(bio: Bio, done: MapDone): void {
    this.layout.map(bio, (outcome: MapOutcome) => {
      if (typeof outcome === 'number' && outcome < 0 && outcome !== -EOPNOTSUPP) this.forward(bio, this.startSector + bio.sector, done);
      else done(outcome);
    });
  }

  /** A read or write within one chunk of a stripe that serves in place (a tmpfs file), as linear's are. */
  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    return this.layout.inPlaceAddress(sector, byteLength, access);
  }

  status(kind: StatusKind): string {
    // A queue thread's copy answers no status: the owner's target does (with its error counts).
    return kind === 'table' ? this.layout.tableText() : '';
  }

  devices(): BlockDevice[] {
    return this.layout.stripes.map((stripe) => stripe.device);
  }

  async destroy(): Promise<void> {
    // The devices belong to the table.
  }
}

/** Built by a queue thread in place of striped, only with the owner's QueueView. */
export const stripedViewType: TargetType = {
  name: stripedTargetType.name,
  version: stripedTargetType.version,
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    // Without somewhere to send failed I/O its errors would go uncounted.
    const view = requireQueueView(ctx, 'striped', 0, 'its owner to send failed I/O to');
    const layout = await openStripes(ctx, args);
    return new StripedView(layout, ctx.startSector, view.forward);
  },
};
