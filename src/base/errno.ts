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
export const EEXIST = errno.EEXIST;
export const ETIMEDOUT = errno.ETIMEDOUT;
export const EAGAIN = errno.EAGAIN;
export const ECANCELED = errno.ECANCELED;

const names = new Map<number, string>(Object.entries(errno).map(([k, v]) => [v, k]));

/** "EIO" for -5 or 5. */
export function errnoName(code: number): string {
  return names.get(Math.abs(code)) ?? `errno ${Math.abs(code)}`;
}

/** An error that carries a (positive) errno and a code name, like Node's system errors. */
export class ErrnoError extends Error {
  readonly errno: number;
  readonly code: string;
  constructor(message: string, errnoValue: number) {
    super(`${message}: ${errnoName(errnoValue)}`);
    this.errno = Math.abs(errnoValue);
    this.code = errnoName(errnoValue);
  }
}

/** Throws an ErrnoError for a negative I/O result, returns the result otherwise. */
export function check(result: IoResult, what: string): number {
  if (result < 0) throw new ErrnoError(what, -result);
  return result;
}
