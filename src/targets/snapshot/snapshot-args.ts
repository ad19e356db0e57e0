import { TargetError, type TargetContext } from '../../dm/target';
import { parseSectorNumber } from '../../dm/table-args';
import type { BlockDevice } from '../../io/block-device';
import { StoreConfigError, StoreLoadError, type ExceptionStore } from './exception-store';
import { parseStoreArg } from './store-types';
import { HeldExceptions, validateHandover } from './handover';
import { ORIGINS } from './origin-registry';

/**
 * `<origin_dev> <COW_dev> <P|PO|N> <chunk_size> [<#features> <feature>...]`, shared by snapshot
 * and snapshot-merge: checked in snapshot_ctr's order and words (spec snapshot.md §1.2), the
 * devices opened, the store made and its metadata loaded.
 */

export interface SnapshotFeatures {
  readonly discardZeroesCow: boolean;
  readonly discardPassdownOrigin: boolean;
}

export const NO_FEATURES: SnapshotFeatures = { discardZeroesCow: false, discardPassdownOrigin: false };

export interface SnapshotArgs {
  readonly origin: BlockDevice;
  readonly cow: BlockDevice;
  /** The store and what it loaded, or an unloaded store awaiting a handover at resume (§5.3). */
  readonly held: HeldExceptions;
  readonly features: SnapshotFeatures;
}

export async function loadSnapshotArgs(ctx: TargetContext, args: readonly string[], options: { forMerge?: boolean } = {}): Promise<SnapshotArgs> {
  if (args.length < 4) throw new TargetError('requires 4 or more arguments');
  const [originSpec, cowSpec, storeText, chunkText] = args as [string, string, string, string];
  const features = parseFeatures(args.slice(4));

  const origin = await openOrExplain(ctx, originSpec, 'Cannot get origin device');
  const cow = await openOrExplain(ctx, cowSpec, 'Cannot get COW device');
  if (cow.key === origin.key) throw new TargetError('COW device cannot be the same as origin device');
  // A COW in use by an active snapshot of this origin: its exceptions are handed over at resume,
  // and the COW, whose last records may not even be on disk yet, is not read (§5.3).
  const forMerge = options.forMerge ?? false;
  const awaitingHandover = validateHandover(ctx.scope.get(ORIGINS), origin.key, cow.key, forMerge);
  const store = createStore(storeText, chunkText, cow, origin, awaitingHandover);
  // The kernel checks this only on the handover path and oopses on the other (spec §1.3).
  if (forMerge && !store.mergeSupported && !awaitingHandover) throw new TargetError('Snapshot exception store does not support snapshot-merge.');
  if (awaitingHandover) return { origin, cow, held: HeldExceptions.awaitingHandover(store), features };
  const records: Array<[number, number]> = [];
  let valid: boolean;
  try {
    valid = await store.readMetadata((oldChunk, newChunk) => records.push([oldChunk, newChunk]));
  } catch (cause) {
    if (cause instanceof StoreLoadError) throw new TargetError('Failed to read snapshot metadata', { cause });
    throw cause;
  }
  return { origin, cow, held: HeldExceptions.loaded(store, valid, records), features };
}

/** `[<#features> <feature>...]`, parsed before any device is opened, as the kernel does. */
function parseFeatures(rest: readonly string[]): SnapshotFeatures {
  if (rest.length === 0) return NO_FEATURES;
  const count = parseSectorNumber(rest[0]!);
  if (count === undefined || count > 2 || count > rest.length - 1) throw new TargetError('Invalid number of feature arguments');
  let discardZeroesCow = false;
  let discardPassdownOrigin = false;
  for (const name of rest.slice(1, 1 + count)) {
    const feature = name.toLowerCase();
    if (feature === 'discard_zeroes_cow') discardZeroesCow = true;
    else if (feature === 'discard_passdown_origin') discardPassdownOrigin = true;
    else throw new TargetError('Unrecognised feature requested');
  }
  if (discardPassdownOrigin && !discardZeroesCow) throw new TargetError('discard_passdown_origin feature depends on discard_zeroes_cow');
  return { discardZeroesCow, discardPassdownOrigin };
}

async function openOrExplain(ctx: TargetContext, spec: string, message: string): Promise<BlockDevice> {
  try {
    return await ctx.openDevice(spec);
  } catch (cause) {
    throw new TargetError(`${message}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/**
 * Every store failure reads "Couldn't create exception store" as in the kernel, which overwrites
 * the store layer's reason; ours keeps it after a colon, since nobody else will log it.
 */
function createStore(storeText: string, chunkText: string, cow: BlockDevice, origin: BlockDevice, awaitingHandover: boolean): ExceptionStore {
  try {
    const { type, options } = parseStoreArg(storeText);
    const chunkSectors = parseSectorNumber(chunkText);
    if (chunkSectors === undefined || chunkSectors > 0xffffffff) throw new StoreConfigError('Invalid chunk size');
    return type.create({ cow, originLogicalBlockBytes: origin.logicalBlockBytes, chunkSectors, options, awaitingHandover });
  } catch (error) {
    if (error instanceof StoreConfigError) throw new TargetError(`Couldn't create exception store: ${error.message}`);
    throw error;
  }
}
