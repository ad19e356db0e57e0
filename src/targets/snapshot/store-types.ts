import { StoreConfigError, type ExceptionStoreType } from './exception-store';
import { persistentStoreType } from './persistent-store';
import { transientStoreType } from './transient-store';

/**
 * The exception store types by name, as the kernel's dm_exception_store_type registry: the
 * snapshot target looks its store up here and never sees a COW layout.
 */
export const exceptionStoreTypes: Readonly<Record<string, ExceptionStoreType>> = {
  P: persistentStoreType,
  N: transientStoreType,
};

/**
 * The table's `<store>` argument: its first character, case-insensitively, names the type; the
 * rest are that type's options ("PO" → P with "O"; "n" → N). Throws StoreConfigError for any
 * other letter, in the store layer's words.
 */
export function parseStoreArg(text: string): { type: ExceptionStoreType; options: string } {
  const type = text.length > 0 ? exceptionStoreTypes[text[0].toUpperCase()] : undefined;
  if (type === undefined) throw new StoreConfigError('Exception store type is not P or N');
  return { type, options: text.slice(1) };
}
