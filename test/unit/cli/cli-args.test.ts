import assert from 'node:assert/strict';
import { UsageError, parseCommand } from '../../../src/cli/cli';

function usageError(args: string[], pattern: RegExp): void {
  assert.throws(() => parseCommand(args), (err: unknown) => err instanceof UsageError && pattern.test(err.message));
}

describe('CLI arguments', () => {
  it('create takes the table from --table', () => {
    assert.deepEqual(parseCommand(['create', 'vol0', '--table', '0 8 zero']), {
      verb: 'create',
      name: 'vol0',
      source: { from: 'inline', text: '0 8 zero' },
      options: { readOnly: false },
    });
  });

  it('create takes a table file and the ublk options', () => {
    assert.deepEqual(parseCommand(['create', 'vol0', 'vol0.table', '--queues', '4', '--depth', '64', '--readonly']), {
      verb: 'create',
      name: 'vol0',
      source: { from: 'file', path: 'vol0.table' },
      options: { readOnly: true, queues: 4, depth: 64 },
    });
  });

  it('create and reload read stdin with neither --table nor a file, or with "-"', () => {
    assert.deepEqual(parseCommand(['create', 'vol0']), {
      verb: 'create', name: 'vol0', source: { from: 'stdin' }, options: { readOnly: false },
    });
    assert.deepEqual(parseCommand(['reload', 'vol0', '-']), { verb: 'reload', name: 'vol0', source: { from: 'stdin' } });
  });

  it('refuses both --table and a table file', () => {
    usageError(['create', 'vol0', 'f', '--table', '0 8 zero'], /not both/);
  });

  it('refuses non-positive or fractional --queues/--depth', () => {
    usageError(['create', 'vol0', '--queues', '0'], /--queues/);
    usageError(['create', 'vol0', '--depth', '1.5'], /--depth/);
  });

  it('parses wait with and without an event number, and refuses one past 32 bits', () => {
    assert.deepEqual(parseCommand(['wait', 'vol0']), { verb: 'wait', name: 'vol0', eventNr: 0, json: false, progress: false });
    assert.deepEqual(parseCommand(['wait', 'vol0', '7']), { verb: 'wait', name: 'vol0', eventNr: 7, json: false, progress: false });
    assert.throws(() => parseCommand(['wait', 'vol0', '4294967296']), /invalid event number/);
    assert.throws(() => parseCommand(['wait', 'vol0', '-1']), UsageError);
  });

  it('parses remove with --retry, suspend and resume', () => {
    assert.deepEqual(parseCommand(['remove', 'vol0']), { verb: 'remove', name: 'vol0', retry: false });
    assert.deepEqual(parseCommand(['remove', '--retry', 'vol0']), { verb: 'remove', name: 'vol0', retry: true });
    assert.deepEqual(parseCommand(['suspend', 'vol0']), { verb: 'suspend', name: 'vol0', noflush: false });
    assert.deepEqual(parseCommand(['suspend', '--noflush', 'vol0']), { verb: 'suspend', name: 'vol0', noflush: true });
    assert.deepEqual(parseCommand(['resume', 'vol0']), { verb: 'resume', name: 'vol0' });
  });

  it('parses the read verbs with --json, an optional name, ls --target and table --inactive', () => {
    assert.deepEqual(parseCommand(['ls']), { verb: 'ls', json: false });
    assert.deepEqual(parseCommand(['ls', '--target', 'linear', '--json']), { verb: 'ls', target: 'linear', json: true });
    assert.deepEqual(parseCommand(['table', 'vol0', '--inactive']), { verb: 'table', name: 'vol0', inactive: true, json: false });
    assert.deepEqual(parseCommand(['table']), { verb: 'table', inactive: false, json: false });
    assert.deepEqual(parseCommand(['status', 'vol0', '--json']), { verb: 'status', name: 'vol0', json: true });
    assert.deepEqual(parseCommand(['info']), { verb: 'info', json: false });
  });

  it('parses message NAME SECTOR WORDS...', () => {
    assert.deepEqual(parseCommand(['message', 'vol0', '0', 'set', 'drop_writes']), {
      verb: 'message', name: 'vol0', sector: 0, words: ['set', 'drop_writes'],
    });
    usageError(['message', 'vol0', 'x', 'hello'], /invalid sector/);
    usageError(['message', 'vol0', '0'], /Not enough/);
  });

  it('parses daemon and version', () => {
    assert.deepEqual(parseCommand(['daemon']), { verb: 'daemon', params: [] });
    assert.deepEqual(parseCommand(['daemon', '--param', 'raid1_resync_throttle=30', '--param', 'x_y=']), {
      verb: 'daemon', params: [{ name: 'raid1_resync_throttle', value: '30' }, { name: 'x_y', value: '' }],
    });
    usageError(['daemon', '--param', 'raid1_resync_throttle'], /--param wants NAME=VALUE/);
    assert.deepEqual(parseCommand(['daemon', '--no-recovery']), { verb: 'daemon', params: [], recovery: false }, 'devices that die with the daemon');
    assert.deepEqual(parseCommand(['daemon', '--recovery']), { verb: 'daemon', params: [] });
    assert.deepEqual(parseCommand(['daemon', '--restart']), { verb: 'daemon', params: [], restart: true }, 'take the devices over from the running daemon');
  });

  it('parses shutdown and doctor', () => {
    assert.deepEqual(parseCommand(['shutdown']), { verb: 'shutdown', removeDevices: false, json: false }, 'by default the devices stay for the next daemon');
    assert.deepEqual(parseCommand(['shutdown', '--remove-devices', '--json']), { verb: 'shutdown', removeDevices: true, json: true });
    assert.deepEqual(parseCommand(['doctor', '--json']), { verb: 'doctor', json: true });
    usageError(['shutdown', 'extra'], /Unknown argument|extra/);
    assert.deepEqual(parseCommand(['version']), { verb: 'version' });
  });

  it('parses param [NAME [VALUE]]', () => {
    assert.deepEqual(parseCommand(['param']), { verb: 'param', json: false });
    assert.deepEqual(parseCommand(['param', 'raid1_resync_throttle', '--json']), { verb: 'param', name: 'raid1_resync_throttle', json: true });
    assert.deepEqual(parseCommand(['param', 'raid1_resync_throttle', '50']), { verb: 'param', name: 'raid1_resync_throttle', value: '50', json: false });
  });

  it('rejects unknown verbs, unknown options and missing names as usage errors', () => {
    usageError([], /verb is needed/);
    usageError(['frobnicate'], /Unknown argument/);
    usageError(['ls', '--bogus'], /Unknown argument/);
    usageError(['remove'], /Not enough/);
  });
});
