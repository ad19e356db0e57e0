import type { DirtyLog, DirtyLogArgs } from './dirty-log';
import { DirtyLogError } from './dirty-log';

/** Placeholder until the core and disk logs land. */
export async function createDirtyLog(args: readonly string[], _context: Omit<DirtyLogArgs, 'args'>): Promise<{ log: DirtyLog; consumed: number }> {
  throw new DirtyLogError(`Module for logging type "${args[0]}" not found.`);
}
