import assert from 'node:assert/strict';
import { TargetError } from '../../../../src/dm/target';
import { coreLogType } from '../../../../src/targets/mirror/core-log';
import { DirtyLogError } from '../../../../src/targets/mirror/dirty-log';
import { diskLogType } from '../../../../src/targets/mirror/disk-log';
import { dirtyLogTypes, parseLogPart } from '../../../../src/targets/mirror/log-types';

function assertTargetError(words: string[], message: string): void {
  assert.throws(() => parseLogPart(words), (e: unknown) => e instanceof TargetError && e.message === message, words.join(' '));
}

describe('dirty log types', () => {
  it('registers core and disk by name', () => {
    assert.equal(dirtyLogTypes.core, coreLogType);
    assert.equal(dirtyLogTypes.disk, diskLogType);
  });

  it('splits the log part off the front of the table: type, its args, the words taken', () => {
    const part = parseLogPart(['disk', '3', '7:2', '64', 'nosync', '2', 'a', '0', 'b', '0']);
    assert.equal(part.type, diskLogType);
    assert.deepEqual(part.args, ['7:2', '64', 'nosync']);
    assert.equal(part.wordCount, 5);
  });

  it('takes a count of 0 as no arguments', () => {
    assert.deepEqual(parseLogPart(['core', '0', '2']).args, []);
  });

  it('needs at least the type and the count: "Insufficient mirror log arguments"', () => {
    assertTargetError([], 'Insufficient mirror log arguments');
    assertTargetError(['core'], 'Insufficient mirror log arguments');
  });

  it('rejects a count that is not decimal digits: "Invalid mirror log argument count"', () => {
    for (const count of ['x', '-1', '1x', '']) assertTargetError(['core', count, '64'], 'Invalid mirror log argument count');
  });

  it('rejects a count larger than the words left: "Insufficient mirror log arguments"', () => {
    assertTargetError(['core', '2', '64'], 'Insufficient mirror log arguments');
  });

  it('checks the count before looking the type up', () => {
    assertTargetError(['nonesuch', 'x'], 'Invalid mirror log argument count');
  });

  it('names an unknown type as the kernel does, case-sensitively, prototype names included', () => {
    for (const name of ['userspace', 'Core', 'constructor']) {
      assert.throws(
        () => parseLogPart([name, '1', '64']),
        (e: unknown) => e instanceof DirtyLogError && e.message === `Module for logging type "${name}" not found.`,
        name,
      );
    }
  });
});
