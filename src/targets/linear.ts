import type { BlockDevice } from '../io/block-device';
import { EOPNOTSUPP } from '../base/errno';
import { IoOp, type Bio } from '../io/bio';
import { passthroughCapabilities, type MapDone, type StatusKind, type Target, type TargetCapabilities, type TargetContext, type TargetType } from '../dm/target';
import { expectArgCount, openDeviceArea } from '../dm/table-args';

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
    const deviceSector = this.deviceStartSector + bio.sector;
    switch (bio.op) {
      case IoOp.Read:
        if (this.device.readCb !== undefined) this.device.readCb(bio.data, deviceSector, done);
        else this.device.read(bio.data, deviceSector).then(done);
        return;
      case IoOp.Write:
        if (this.device.writeCb !== undefined) this.device.writeCb(bio.data, deviceSector, bio.fua, done);
        else this.device.write(bio.data, deviceSector, bio.fua).then(done);
        return;
      case IoOp.Flush:
        this.device.flush().then(done);
        return;
      case IoOp.Discard:
        this.device.discard(deviceSector, bio.sectorCount).then(done);
        return;
      case IoOp.WriteZeroes:
        this.device.writeZeroes(deviceSector, bio.sectorCount, bio.noUnmap).then(done);
        return;
      default:
        done(-EOPNOTSUPP);
    }
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
  async create(ctx: TargetContext, args: string[]): Promise<Target> {
    expectArgCount(args, 2);
    const area = await openDeviceArea(ctx, args[0]!, args[1]!);
    return new LinearTarget(area.device, area.deviceStartSector);
  },
};
