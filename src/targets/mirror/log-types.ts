import { TargetError } from '../../dm/target';
import { coreLogType, parseKernelUnsigned } from './core-log';
import { DirtyLogError, type DirtyLogType } from './dirty-log';
import { diskLogType } from './disk-log';

/**
 * The dirty log types by name, as the kernel's dm_dirty_log_type registry: the mirror looks its
 * log up here and never sees a bitmap. Names match case-sensitively (strcmp).
 */
export const dirtyLogTypes: Readonly<Record<string, DirtyLogType>> = {
  core: coreLogType,
  disk: diskLogType,
};

/** The table's log part, split off the mirror's words. */
export interface LogPart {
  readonly type: DirtyLogType;
  /** The `<#log_args>` words after the count, for the type's create(). */
  readonly args: readonly string[];
  /** Words the log part took from the front of the table: type, count and args. */
  readonly wordCount: number;
}

/**
 * `<log_type> <#log_args> <args...>` at the front of `words`, checked in the kernel's order
 * (dm-raid1's create_dirty_log, then the type lookup of dm_dirty_log_create). Throws TargetError
 * for the mirror's own messages and DirtyLogError for an unknown type (which the mirror reports
 * as "Error creating mirror dirty log", as for any other log failure).
 */
export function parseLogPart(words: readonly string[]): LogPart {
  if (words.length < 2) throw new TargetError('Insufficient mirror log arguments');
  const argCount = parseKernelUnsigned(words[1]);
  if (argCount === undefined) throw new TargetError('Invalid mirror log argument count');
  // The kernel adds 2 in unsigned int arithmetic, so a count of 2^32-2 or more wraps round and
  // reaches the type's own "wrong number of arguments"; here it is simply insufficient.
  const wordCount = 2 + argCount;
  if (words.length < wordCount) throw new TargetError('Insufficient mirror log arguments');

  const typeName = words[0];
  const type = Object.hasOwn(dirtyLogTypes, typeName) ? dirtyLogTypes[typeName] : undefined;
  if (type === undefined) throw new DirtyLogError(`Module for logging type "${typeName}" not found.`);
  return { type, args: words.slice(2, wordCount), wordCount };
}
