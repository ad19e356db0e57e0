import type { BlockDevice } from '../io/block-device';
import { EIO, EOPNOTSUPP, type IoResult } from '../base/errno';
import { IoOp } from '../io/bio';
import { type StatusKind, type Target, type TargetContext, type TargetIo, type TargetType } from '../dm/target';
import { expectArgCount, openDeviceArea } from '../dm/table-args';

/**
 * linear <dev> <offset>: the target's sectors map one to one onto <dev> starting at <offset>.
 * Every operation passes straight through as one device call.
 */
export class LinearTarget implements Target {
  readonly type = 'linear';

  constructor(
    private readonly device: BlockDevice,
    private readonly deviceStartSector: number,
  ) {}

  map(io: TargetIo): Promise<IoResult> {
    const deviceSector = this.deviceStartSector + io.sector;
    switch (io.op) {
      case IoOp.Read:
        return this.device.read(io.data, deviceSector);
      case IoOp.Write:
        return this.device.write(io.data, deviceSector, io.fua);
      case IoOp.Flush:
        return this.device.flush();
      case IoOp.Discard:
        return this.device.discard(deviceSector, io.sectorCount);
      case IoOp.WriteZeroes:
        return this.device.writeZeroes(deviceSector, io.sectorCount, io.noUnmap);
      default:
        return Promise.resolve(-EOPNOTSUPP);
    }
  }

  /** Reads and writes skip the promise when the device offers callbacks (FileDevice does). */
  mapCb(io: TargetIo, done: (result: IoResult) => void): void {
    const deviceSector = this.deviceStartSector + io.sector;
    if (io.op === IoOp.Read && this.device.readCb !== undefined) {
      this.device.readCb(io.data, deviceSector, done);
    } else if (io.op === IoOp.Write && this.device.writeCb !== undefined) {
      this.device.writeCb(io.data, deviceSector, io.fua, done);
    } else {
      this.map(io).then(done, () => done(-EIO));
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
