import type { BlockDevice } from '../../io/block-device';
import {
  StoreConfigError,
  type ExceptionStore,
  type ExceptionStoreArgs,
  type ExceptionStoreType,
  type ExceptionStoreUsage,
} from './exception-store';
import { checkTableChunkSize } from './store-common';

/**
 * The transient exception store ("N", the kernel's dm-snap-transient.c, spec §7): exceptions live
 * only in the snapshot's in-memory table, so there is no metadata on the COW device at all and
 * the first exception's data goes to COW chunk 0. Nothing to load, nothing to make durable, no
 * merge.
 */
export class TransientStore implements ExceptionStore {
  readonly tableText = 'N';
  /** Kept for a handover; the transient store always prints N. */
  overflowSupported = false;
  readonly mergeSupported = false;

  /** A sector counter, as the kernel keeps it: the next exception starts here. */
  private nextFreeSector = 0;

  constructor(
    private cow: BlockDevice,
    readonly chunkSectors: number,
  ) {}

  async readMetadata(_add: (oldChunk: number, newChunk: number) => void): Promise<boolean> {
    return true;
  }

  prepareException(): number | undefined {
    if (this.cow.sizeSectors < this.nextFreeSector + this.chunkSectors) return undefined;
    const newChunk = this.nextFreeSector / this.chunkSectors;
    this.nextFreeSector += this.chunkSectors;
    return newChunk;
  }

  /** Nothing to write: the record is "durable" as soon as the copy is done. */
  commitException(_oldChunk: number, _newChunk: number, copyValid: boolean, done: (valid: boolean) => void): void {
    done(copyValid);
  }

  useCow(cow: BlockDevice): void {
    if (cow.key !== this.cow.key) throw new Error(`a store of ${this.cow.tableName} cannot move to ${cow.tableName}`);
    this.cow = cow;
  }

  /** Invalidation is the snapshot's in-memory state only; there is no header to mark. */
  async dropSnapshot(): Promise<void> {}

  usage(): ExceptionStoreUsage {
    return { allocatedSectors: this.nextFreeSector, totalSectors: this.cow.sizeSectors, metadataSectors: 0 };
  }
}

export const transientStoreType: ExceptionStoreType = {
  name: 'N',
  create(args: ExceptionStoreArgs): ExceptionStore {
    // Options are ignored ("Nxyz" loads and prints "N"). With no header to read it from, the
    // chunk size must come from the table.
    if (args.chunkSectors === 0 && !args.awaitingHandover) throw new StoreConfigError('Chunk size not set');
    checkTableChunkSize(args);
    return new TransientStore(args.cow, args.chunkSectors);
  },
};
