import { PAGE_BYTES, SECTOR_BYTES } from '../base/units';

/** Destinations per job (DM_KCOPYD_MAX_REGIONS). */
export const KCOPYD_MAX_REGIONS = 8;
/** Sub-jobs a large job is split into; at most this many pieces of one job are in flight. */
export const SPLIT_COUNT = 8;
/** Default sub-job size, 512 KiB (the kernel's since 5.3; module param dm_mod.kcopyd_subjob_size_kb). */
export const DEFAULT_SUB_JOB_SECTORS = 1024;
/**
 * Largest sub-job accepted. The kernel stops at 2048 sectors (1 MiB); we allow 16 MiB because a
 * userspace copy pays a per-I/O cost (a JS round trip) that large sequential copies amortise.
 */
export const MAX_SUB_JOB_SECTORS = 32768;
export const SECTORS_PER_PAGE = PAGE_BYTES / SECTOR_BYTES;

/** Go on past read and write errors (BIT(DM_KCOPYD_IGNORE_ERROR)). */
export const KCOPYD_IGNORE_ERROR = 1 << 1;
/** Write the pieces in ascending order (BIT(DM_KCOPYD_WRITE_SEQ)); clears IGNORE_ERROR. */
export const KCOPYD_WRITE_SEQ = 1 << 2;
