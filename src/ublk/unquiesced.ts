import { ETIMEDOUT, ErrnoError } from '../base/errno';

/**
 * A recoverable device whose server is gone and that the kernel has still not quiesced: in
 * Linux 6.12 it lost a request when its server's rings went (IoRing.keepUntilExit), its quiesce
 * waits for that request for good, and no later daemon can take it over; a reboot frees it.
 * Its own class, so that nothing tells the user that restarting the daemon would help.
 */
export class UnquiescedDeviceError extends ErrnoError {
  constructor(what: string, serverPid: number) {
    super(`${what}: its server ${serverPid} is gone but the kernel has not quiesced it: the kernel most likely lost one of its requests, and then only a reboot frees it`, ETIMEDOUT);
  }
}
