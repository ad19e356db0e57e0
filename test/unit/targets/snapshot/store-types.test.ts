import assert from 'node:assert/strict';
import { StoreConfigError } from '../../../../src/targets/snapshot/exception-store';
import { persistentStoreType } from '../../../../src/targets/snapshot/persistent-store';
import { exceptionStoreTypes, parseStoreArg } from '../../../../src/targets/snapshot/store-types';
import { transientStoreType } from '../../../../src/targets/snapshot/transient-store';

describe('exception store types', () => {
  it('registers P as persistent and N as transient', () => {
    assert.equal(exceptionStoreTypes.P, persistentStoreType);
    assert.equal(exceptionStoreTypes.N, transientStoreType);
  });

  it('takes the first character of the store argument case-insensitively, the rest as options', () => {
    assert.deepEqual(parseStoreArg('PO'), { type: persistentStoreType, options: 'O' });
    assert.deepEqual(parseStoreArg('po'), { type: persistentStoreType, options: 'o' });
    assert.deepEqual(parseStoreArg('n'), { type: transientStoreType, options: '' });
    assert.deepEqual(parseStoreArg('Nxyz'), { type: transientStoreType, options: 'xyz' });
  });

  it('rejects any other store letter, and an empty argument', () => {
    for (const text of ['X', 'OP', '']) {
      assert.throws(() => parseStoreArg(text), (e: unknown) => e instanceof StoreConfigError && e.message === 'Exception store type is not P or N', text);
    }
  });
});
