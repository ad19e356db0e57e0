import type { TargetType } from '../dm/target';
import { errorTargetType } from './error';
import { linearTargetType } from './linear';
import { nullTargetType } from './null';
import { zeroTargetType } from './zero';

/**
 * The registry of target types by table name. New targets (striped, flakey, delay, snapshot,
 * mirror) add a file in this folder and a line in `builtInTargetTypes`, or call
 * registerTargetType at startup.
 */

const builtInTargetTypes: readonly TargetType[] = [linearTargetType, zeroTargetType, errorTargetType, nullTargetType];

const registry = new Map<string, TargetType>();

export const targetTypes: ReadonlyMap<string, TargetType> = registry;

/** Add a target type; a second type with the same name is a programming error. */
export function registerTargetType(type: TargetType): void {
  if (registry.has(type.name)) throw new Error(`target type "${type.name}" is already registered`);
  registry.set(type.name, type);
}

for (const type of builtInTargetTypes) registerTargetType(type);
