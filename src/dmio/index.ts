// dm-io: region I/O with one error bit per region (see dmio.ts for the sync/async mapping).
export { DM_IO_MAX_REGIONS, regionBit, type ErrorBits, type IoRegion } from './region';
export {
  IOV_MAX, MAX_IO_BYTES, bioVecMemory, cutIntoPieces, flatMemory, memoryByteLength, pageListMemory,
  type BioVecSegment, type IoMemory, type IoPiece,
} from './memory';
export { dmIo, dmIoNotify, type DmIoDataOp, type DmIoNotifyFn, type DmIoRequest } from './dmio';
export {
  dmIoAsync, dmIoAsyncBvec, dmIoAsyncVm, dmIoDiscard, dmIoSync, dmIoSyncBvec, dmIoSyncVm, dmIoWriteZeroes,
} from './services';
export { allocatePages } from './pages';
