import { strict as assert } from 'node:assert';

import { isMultipleOfPowerOfTwo } from '../../../src/base/units';

describe('isMultipleOfPowerOfTwo', () => {
  it('answers as % would, for small values and for addresses and offsets past 2^32', () => {
    for (const value of [0, 512, 4096, 4095, 4097, 2 ** 31, 2 ** 31 + 512, 2 ** 40 + 4096, 2 ** 47 - 4096, 2 ** 52 + 2048, 0x7f0c03eba000, 0x7f0c03eba9d9]) {
      for (const alignment of [1, 512, 4096, 2 ** 20, 2 ** 30]) {
        assert.equal(isMultipleOfPowerOfTwo(value, alignment), value % alignment === 0, `${value} on ${alignment}`);
      }
    }
  });
});
