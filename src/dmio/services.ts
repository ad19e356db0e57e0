import { dmIo, dmIoNotify, type DmIoDataOp, type DmIoNotifyFn } from './dmio';
import { bioVecMemory, flatMemory, pageListMemory, type BioVecSegment } from './memory';
import type { ErrorBits, IoRegion } from './region';

/**
 * The six services of the kernel's dm-io documentation (dm_io_sync, dm_io_async, ..._bvec,
 * ..._vm), one sync (promise) and one async (notify) form per memory kind, as thin wrappers over
 * dmIo/dmIoNotify. `rw` is 'read' (exactly one region) or 'write' (one or more).
 */

export function dmIoSync(regions: readonly IoRegion[], rw: DmIoDataOp, pages: readonly Uint8Array[], firstPageByteOffset: number): Promise<ErrorBits> {
  return dmIo({ op: rw, memory: pageListMemory(pages, firstPageByteOffset) }, regions);
}

export function dmIoAsync<C>(
  regions: readonly IoRegion[], rw: DmIoDataOp, pages: readonly Uint8Array[], firstPageByteOffset: number,
  notify: DmIoNotifyFn<C>, context: C,
): void {
  dmIoNotify({ op: rw, memory: pageListMemory(pages, firstPageByteOffset) }, regions, notify, context);
}

export function dmIoSyncBvec(regions: readonly IoRegion[], rw: DmIoDataOp, bvec: readonly BioVecSegment[]): Promise<ErrorBits> {
  return dmIo({ op: rw, memory: bioVecMemory(bvec) }, regions);
}

export function dmIoAsyncBvec<C>(
  regions: readonly IoRegion[], rw: DmIoDataOp, bvec: readonly BioVecSegment[], notify: DmIoNotifyFn<C>, context: C,
): void {
  dmIoNotify({ op: rw, memory: bioVecMemory(bvec) }, regions, notify, context);
}

export function dmIoSyncVm(regions: readonly IoRegion[], rw: DmIoDataOp, data: Uint8Array): Promise<ErrorBits> {
  return dmIo({ op: rw, memory: flatMemory(data) }, regions);
}

export function dmIoAsyncVm<C>(regions: readonly IoRegion[], rw: DmIoDataOp, data: Uint8Array, notify: DmIoNotifyFn<C>, context: C): void {
  dmIoNotify({ op: rw, memory: flatMemory(data) }, regions, notify, context);
}

/** Discard every region; bit i set where region i failed or its device cannot discard. */
export function dmIoDiscard(regions: readonly IoRegion[]): Promise<ErrorBits> {
  return dmIo({ op: 'discard' }, regions);
}

/** Make every region read as zeroes; bit i set where region i failed or is unsupported. */
export function dmIoWriteZeroes(regions: readonly IoRegion[], noUnmap = false): Promise<ErrorBits> {
  return dmIo({ op: 'writeZeroes', noUnmap }, regions);
}
