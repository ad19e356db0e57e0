import assert from 'node:assert/strict';
import { MemoryDevice } from '../../../../src/testing/memory-device';
import { loadMemoryTable } from '../../../../src/testing/tables';

/**
 * mirror_ctr's refusals (spec mirror.md §1), through the table loader as `ublk-dm create` does:
 * each bad table gets the kernel's words (and our detail), and nothing is written to any leg or
 * log device — not even the log header, which only a resume writes.
 */

const SECTORS = 2048;

function devices(): Record<string, MemoryDevice> {
  const made: Record<string, MemoryDevice> = {
    leg0: new MemoryDevice(SECTORS),
    leg1: new MemoryDevice(SECTORS),
    leg2: new MemoryDevice(SECTORS),
    short: new MemoryDevice(SECTORS / 2),
    big: new MemoryDevice(SECTORS * 2),
    log: new MemoryDevice(64),
    tinylog: new MemoryDevice(2),
  };
  for (const [name, device] of Object.entries(made)) device.contents.fill(name.length);
  return made;
}

function writesTo(devs: Record<string, MemoryDevice>): number {
  return Object.values(devs).reduce((sum, d) => sum + d.calls.write + d.calls.writev + d.calls.writeZeroes + d.calls.discard + d.calls.flush, 0);
}

const legs = 'leg0 0 leg1 0';
const refusals: Array<[string, string, RegExp]> = [
  ['a log device too small for header and bitmap', `mirror disk 2 tinylog 8 2 ${legs}`, /Error creating mirror dirty log: log device \S+ too small: need 1536 bytes/],
  ['an unknown log type', `mirror journal 1 8 2 ${legs}`, /Error creating mirror dirty log/],
  ['an unknown log argument (block_on_error is not upstream)', `mirror core 2 8 block_on_error 2 ${legs}`, /Error creating mirror dirty log: .*unrecognised sync argument to dirty region log: block_on_error/],
  ['a region size that is not a power of two', `mirror core 1 48 2 ${legs}`, /Error creating mirror dirty log: .*invalid region size 48/],
  ['one leg', 'mirror core 1 8 1 leg0 0', /Invalid number of mirrors/],
  ['ten legs', `mirror core 1 8 10 ${Array(10).fill('leg0 0').join(' ')}`, /Invalid number of mirrors/],
  ['fewer leg words than legs', 'mirror core 1 8 3 leg0 0 leg1 0', /Too few mirror arguments/],
  ['an offset that is not a number', 'mirror core 1 8 2 leg0 0 leg1 x', /Invalid offset/],
  ['a leg that does not exist', 'mirror core 1 8 2 leg0 0 nope 0', /Device lookup failure/],
  ['a leg shorter than the target', 'mirror core 1 8 2 leg0 0 short 0', /Device too small for target/],
  ['a leg offset that runs past its end', 'mirror core 1 8 2 big 0 leg1 8', /Device too small for target/],
  ['an unknown feature', `mirror core 1 8 2 ${legs} 1 frobnicate`, /Unrecognised feature requested/],
  ['a feature count that is not a number', `mirror core 1 8 2 ${legs} x handle_errors`, /Invalid number of features/],
  ['a feature count larger than the words', `mirror core 1 8 2 ${legs} 2 handle_errors`, /Not enough arguments to support feature count/],
  ['words after the features', `mirror core 1 8 2 ${legs} 1 handle_errors extra`, /Too many mirror arguments/],
  ['keep_log without handle_errors', `mirror core 1 8 2 ${legs} 1 keep_log`, /keep_log feature requires the handle_errors feature/],
];

describe('mirror: bad tables', () => {
  for (const [what, line, message] of refusals) {
    it(`refuses ${what}, writing nothing`, async () => {
      const devs = devices();
      const before = Object.fromEntries(Object.entries(devs).map(([name, d]) => [name, Buffer.from(d.contents)]));
      await assert.rejects(loadMemoryTable(`0 ${SECTORS} ${line}`, devs), message);
      assert.equal(writesTo(devs), 0, 'no write, flush or discard reached any device');
      for (const [name, d] of Object.entries(devs)) assert.ok(d.contents.equals(before[name]!), `${name} unchanged`);
    });
  }

  it('accepts legs of different sizes when each holds the target from its offset (as the kernel)', async () => {
    const devs = devices();
    const table = await loadMemoryTable(`0 ${SECTORS} mirror core 2 8 nosync 2 leg0 0 big ${SECTORS}`, devs);
    assert.match(table.segments[0]!.target.status('table'), /^core 2 8 nosync 2 \S+ 0 \S+ 2048$/);
    assert.equal(writesTo(devs), 0, 'construction writes nothing; only resume does');
    await table.destroy();
  });
});
