import { chunkSizeProblem } from './chunk';
import { StoreConfigError, type ExceptionStoreArgs } from './exception-store';

/**
 * What both store types check at construction, as the kernel's dm_exception_store_create does
 * before calling the type's constructor: a non-zero table chunk size must suit both the COW and
 * the origin device. 0 ("unspecified") passes here; each type decides what 0 means.
 */
export function checkTableChunkSize(args: ExceptionStoreArgs): void {
  if (args.chunkSectors === 0) return;
  const problem = chunkSizeProblem(args.chunkSectors, [args.cow.logicalBlockBytes, args.originLogicalBlockBytes]);
  if (problem !== undefined) throw new StoreConfigError(problem);
}
