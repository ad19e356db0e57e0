import { constants } from 'node:os';

/**
 * I/O results follow the kernel convention: a non-negative number is success (bytes moved, or 0),
 * a negative number is -errno. Completing a ublk request takes exactly such a number, so targets
 * and the I/O engines pass them through instead of throwing on the I/O path.
 */
export type IoResult = number;

const errno = constants.errno;
export const EIO = errno.EIO;
export const EINVAL = errno.EINVAL;
export const ENOSPC = errno.ENOSPC;
export const EOPNOTSUPP = errno.EOPNOTSUPP;
export const ENODEV = errno.ENODEV;
export const EBUSY = errno.EBUSY;
export const ENOENT = errno.ENOENT;
export const ENXIO = errno.ENXIO;
export const EEXIST = errno.EEXIST;
export const ETIMEDOUT = errno.ETIMEDOUT;
export const EAGAIN = errno.EAGAIN;
export const ECANCELED = errno.ECANCELED;

const names = new Map<number, string>(Object.entries(errno).map(([k, v]) => [v, k]));

/** "EIO" for -5 or 5. */
export function errnoName(code: number): string {
  return names.get(Math.abs(code)) ?? `errno ${Math.abs(code)}`;
}

/**
 * The one base of control-path errors (a bad table, an unknown device, a busy device, a failed
 * system call): `message` is what the user sees, `code` the errno name the CLI reports and the
 * wire carries. The data path never throws these; it returns -errno.
 */
export class DmError extends Error {
  constructor(
    message: string,
    readonly code: string = 'EINVAL',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A DmError from a system call or an I/O result: carries the (positive) errno too. */
export class ErrnoError extends DmError {
  readonly errno: number;
  constructor(message: string, errnoValue: number) {
    super(`${message}: ${errnoName(errnoValue)}`, errnoName(errnoValue));
    this.errno = Math.abs(errnoValue);
  }
}

/** Throws an ErrnoError for a negative I/O result, returns the result otherwise. */
export function check(result: IoResult, what: string): number {
  if (result < 0) throw new ErrnoError(what, -result);
  return result;
}
