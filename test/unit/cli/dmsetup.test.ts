import assert from 'node:assert/strict';
import { DmsetupUsageError, type DmsetupCommand, executeDmsetup, formatInfoColumns, formatTargets, parseDmsetup } from '../../../src/cli/dmsetup';
import { DaemonError } from '../../../src/cli/client';
import type { DeviceInfo, Request, Results } from '../../../src/wire/protocol';

const info = (name: string, extra: Partial<DeviceInfo> = {}): DeviceInfo => ({
  name,
  suspended: false,
  readOnly: false,
  liveTable: true,
  inactiveTable: false,
  openCount: 0,
  eventNumber: 0,
  major: 259,
  minor: 3,
  targetCount: 1,
  sizeSectors: 2048,
  blockPath: '/dev/ublkb3',
  queues: 1,
  depth: 128,
  ...extra,
});

/** A daemon stand-in: records requests, answers from `answer`. */
function fakeDaemon(answer: (request: Request) => unknown) {
  const sent: Request[] = [];
  const send = async <R extends Request>(request: R): Promise<Results[R['verb']]> => {
    sent.push(request);
    return answer(request) as Results[R['verb']];
  };
  return { sent, send };
}

describe('ublk-dmsetup: command line', () => {
  it('takes options before or after the verb, as getopt does', () => {
    const table = '0 8 zero';
    assert.deepEqual(parseDmsetup(['create', 'z', '--table', table]), { verb: 'create', name: 'z', table: { from: 'inline', text: table }, readOnly: false });
    assert.deepEqual(parseDmsetup(['--table', table, '-r', 'create', 'z']), { verb: 'create', name: 'z', table: { from: 'inline', text: table }, readOnly: true });
  });

  it('reads the table from a file, from stdin, or from "-"', () => {
    assert.deepEqual((parseDmsetup(['create', 'z', 't.txt']) as { table: unknown }).table, { from: 'file', path: 't.txt' });
    assert.deepEqual((parseDmsetup(['load', 'z']) as { table: unknown }).table, { from: 'stdin' });
    assert.deepEqual((parseDmsetup(['reload', 'z', '-']) as { table: unknown }).table, { from: 'stdin' });
  });

  it('accepts what scripts pass and we need not act on: --noudevsync, --nolockfs, --addnodeoncreate, -y, udevcomplete_all', () => {
    assert.deepEqual(parseDmsetup(['--noudevsync', 'suspend', '--nolockfs', '--noflush', 'a', 'b']), { verb: 'suspend', names: ['a', 'b'], noflush: true });
    assert.equal(parseDmsetup(['create', 'z', '--addnodeoncreate', '--table', '0 8 zero']).verb, 'create');
    assert.deepEqual(parseDmsetup(['-y', 'udevcomplete_all']), { verb: 'udevcomplete_all' });
  });

  it('parses remove flags, info columns, status filters, message and wait', () => {
    assert.deepEqual(parseDmsetup(['remove', '--retry', '-f', 'a']), { verb: 'remove', names: ['a'], retry: true, force: true });
    assert.deepEqual(parseDmsetup(['info', '-c', '--noheadings', '-o', 'name,attr', 'a']), { verb: 'info', name: 'a', columns: { fields: ['name', 'attr'], headings: false, separator: ' ' } });
    assert.deepEqual(parseDmsetup(['status', '--target', 'mirror']), { verb: 'status', target: 'mirror', inactive: false, verbose: false });
    assert.deepEqual(parseDmsetup(['message', 'm', '0', 'mark', 'x']), { verb: 'message', name: 'm', sector: 0, words: ['mark', 'x'] });
    assert.deepEqual(parseDmsetup(['wait', 'm', '3']), { verb: 'wait', name: 'm', eventNr: 3 });
  });

  const refused: Array<[string[], RegExp]> = [
    [[], /Missing command/],
    [['frobnicate'], /Unknown command: frobnicate/],
    [['create'], /Please specify device/],
    [['create', 'z', '-u', 'LVM-x', '--table', '0 8 zero'], /--uuid.*not supported/],
    [['create', 'z', '--notable'], /--notable is not supported/],
    [['remove', '--deferred', 'z'], /--deferred removal is not supported/],
    [['ls', '--tree'], /--tree is not supported/],
    [['clear', 'z'], /clear is not supported/],
    [['rename', 'a', 'b'], /rename is not supported/],
    [['info', '-c', '-o', 'name,bogus'], /Unrecognised field: bogus/],
    [['create', 'z', '--bogus'], /Unknown argument/],
    [['message', 'm', 'x', 'hello'], /Invalid sector x/],
  ];
  for (const [args, message] of refused) {
    it(`refuses ${JSON.stringify(args)}`, () => {
      assert.throws(() => parseDmsetup(args), (error: unknown) => error instanceof DmsetupUsageError && message.test(error.message));
    });
  }
});

describe('ublk-dmsetup: output', () => {
  it('info -c prints the default columns aligned, numbers to the right, with no trailing blanks', () => {
    const { columns } = parseDmsetup(['info', '-c']) as Extract<DmsetupCommand, { verb: 'info' }>;
    const out = formatInfoColumns([info('vol0'), info('a-much-longer-name', { minor: 12, openCount: 1, suspended: true })], columns!);
    assert.equal(
      out,
      'Name               Maj Min Stat Open Targ Event UUID\n' +
        'vol0               259   3 L--w    0    1     0\n' +
        'a-much-longer-name 259  12 L-sw    1    1     0\n',
    );
  });

  it('info -c --noheadings -o attr prints just the attributes', () => {
    assert.equal(formatInfoColumns([info('a', { inactiveTable: true, readOnly: true })], { fields: ['attr'], headings: false, separator: ' ' }), 'LI-r\n');
  });

  it('targets lists every built-in type with the 6.12 kernel version it follows', () => {
    const lines = formatTargets().split('\n');
    assert.ok(lines.includes('striped          v1.6.0'));
    assert.ok(lines.includes('mirror           v1.14.0'));
    assert.ok(lines.includes('snapshot-origin  v1.9.0'));
  });

  it('status --target keeps only that type\'s lines and the devices that have them', async () => {
    const { send } = fakeDaemon(() => [
      { name: 'a', targets: [{ startSector: 0, lengthSectors: 8, type: 'linear', text: '' }] },
      { name: 'm', targets: [{ startSector: 0, lengthSectors: 8, type: 'mirror', text: '2 7:1 7:2 1/1 1 AA 1 core' }] },
    ]);
    assert.equal(await executeDmsetup(parseDmsetup(['status', '--target', 'mirror']), send), 'm: 0 8 mirror 2 7:1 7:2 1/1 1 AA 1 core\n');
  });

  it('remove --force loads an error table over the whole device and resumes it before removing', async () => {
    const { sent, send } = fakeDaemon((r) => (r.verb === 'info' ? [info('z', { sizeSectors: 4096 })] : { name: 'z' }));
    await executeDmsetup(parseDmsetup(['remove', '--force', 'z']), send);
    assert.deepEqual(sent.map((r) => r.verb), ['info', 'reload', 'resume', 'remove']);
    assert.deepEqual(sent[1], { verb: 'reload', name: 'z', table: '0 4096 error' });
  });

  it('remove_all removes upper devices before the lower ones they hold open', async () => {
    const removed: string[] = [];
    const { send } = fakeDaemon((r) => {
      if (r.verb === 'ls') return ['lower', 'upper'].map((name) => ({ name, major: 259, minor: 0, blockPath: '/dev/ublkb0' }));
      if (r.verb === 'remove') {
        if (r.name === 'lower' && !removed.includes('upper')) throw new DaemonError('lower is open', 'EBUSY');
        removed.push(r.name);
      }
      return { name: 'x' };
    });
    await executeDmsetup(parseDmsetup(['remove_all']), send);
    assert.deepEqual(removed, ['upper', 'lower']);
  });

  it('remove_all fails when a device can never be removed', async () => {
    const { send } = fakeDaemon((r) => {
      if (r.verb === 'ls') return [{ name: 'stuck', major: 259, minor: 0, blockPath: '/dev/ublkb0' }];
      throw new DaemonError('stuck is open', 'EBUSY');
    });
    await assert.rejects(executeDmsetup(parseDmsetup(['remove_all']), send), /stuck is open/);
  });
});
