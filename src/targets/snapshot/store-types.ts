import type { ExceptionStoreType } from './exception-store';

/** The exception store types by letter (placeholder until the P and N stores land). */
export const exceptionStoreTypes: ReadonlyMap<string, ExceptionStoreType> = new Map();

/** `P`, `PO`, `N`...: the type by its first letter (any case) and the option characters after it. */
export function parseStoreArg(text: string): { type: ExceptionStoreType; options: string } | undefined {
  const type = exceptionStoreTypes.get(text.charAt(0).toUpperCase());
  return type === undefined ? undefined : { type, options: text.slice(1) };
}
