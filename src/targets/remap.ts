import { EOPNOTSUPP, type IoResult } from '../base/errno';
import { IoOp, type Bio } from '../io/bio';
import type { BlockDevice } from '../io/block-device';

/**
 * Send one piece of I/O to `device` at `deviceSector`, unchanged otherwise: what the kernel's
 * remapping targets do when map() returns DM_MAPIO_REMAPPED (linear, striped, flakey, delay).
 * Uses the device's callback entry points where it has them, to spare a promise per request.
 */
export function remapToDevice(device: BlockDevice, deviceSector: number, bio: Bio, done: (result: IoResult) => void): void {
  switch (bio.op) {
    case IoOp.Read:
      if (device.readCb !== undefined) device.readCb(bio.data, deviceSector, done);
      else device.read(bio.data, deviceSector).then(done);
      return;
    case IoOp.Write:
      if (device.writeCb !== undefined) device.writeCb(bio.data, deviceSector, bio.fua, done);
      else device.write(bio.data, deviceSector, bio.fua).then(done);
      return;
    case IoOp.Flush:
      device.flush().then(done);
      return;
    case IoOp.Discard:
      device.discard(deviceSector, bio.sectorCount).then(done);
      return;
    case IoOp.WriteZeroes:
      device.writeZeroes(deviceSector, bio.sectorCount, bio.noUnmap).then(done);
      return;
    default:
      done(-EOPNOTSUPP);
  }
}
