import type { BlockDevice, InPlaceAccess } from '../io/block-device';
import type { Bio } from '../io/bio';
import { passthroughCapabilities, type MapDone, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../dm/target';
import { expectArgCount, openDeviceArea } from '../dm/table-args';
import { remapToDevice } from './remap';

/**
 * linear <dev> <offset>: the target's sectors map one to one onto <dev> starting at <offset>.
 * Every operation passes straight through as one device call.
 */
export class LinearTarget implements Target {
  readonly type = 'linear';
  readonly threadModel = 'any-queue';
  readonly capabilities: TargetCapabilities;

  constructor(
    private readonly device: BlockDevice,
    private readonly deviceStartSector: number,
  ) {
    this.capabilities = passthroughCapabilities([device]);
  }

  map(bio: Bio, done: MapDone): void {
    remapToDevice(this.device, this.deviceStartSector + bio.sector, bio, done);
  }

  inPlaceAddress(sector: number, byteLength: number, access: InPlaceAccess): number {
    return this.device.inPlaceAddress?.(this.deviceStartSector + sector, byteLength, access) ?? 0;
  }

  status(kind: StatusKind): string {
    return kind === 'table' ? `${this.device.tableName} ${this.deviceStartSector}` : '';
  }

  devices(): BlockDevice[] {
    return [this.device];
  }

  async destroy(): Promise<void> {
    // The device belongs to the table, which closes it.
  }
}

export const linearTargetType: TargetType = {
  name: 'linear',
  version: [1, 4, 0],
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    expectArgCount(args, 2);
    const area = await openDeviceArea(ctx, args[0]!, args[1]!);
    return new LinearTarget(area.device, area.deviceStartSector);
  },
};
