import assert from 'node:assert/strict';
import type { BlockDevice } from '../../../src/io/block-device';
import { MemoryDevice, memoryDeviceOpener } from '../../../src/testing/memory-device';
import { ALL_CAPABILITIES, TargetError, type Target, type TargetType } from '../../../src/dm/target';
import {
  buildTable,
  findSegmentIndex,
  formatTable,
  parseTableText,
  Table,
  TableError,
  type DeviceOpener,
} from '../../../src/dm/table';
import { loadMemoryTable, testScope } from '../../../src/testing/tables';
import { DeviceEvents } from '../../../src/dm/mapped-device';

/** Asserts that `promise` rejects with a TableError whose message is exactly `message`. */
async function rejectsWithTableError(promise: Promise<unknown>, message: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof TableError, `expected a TableError, got ${String(error)}`);
    assert.equal(error.message, message);
    return true;
  });
}

function throwsTableError(text: string, message: string): void {
  assert.throws(
    () => parseTableText(text),
    (error: unknown) => error instanceof TableError && error.message === message,
    `expected TableError "${message}"`,
  );
}

describe('table: parseTableText', () => {
  it('parses lines, skipping blank lines and # comments, numbering every text line', () => {
    const lines = parseTableText('# header\n\n0 8 zero\n  \n8 16 linear /dev/x 100\n');
    assert.deepEqual(lines, [
      { lineNumber: 3, startSector: 0, lengthSectors: 8, type: 'zero', args: [] },
      { lineNumber: 5, startSector: 8, lengthSectors: 16, type: 'linear', args: ['/dev/x', '100'] },
    ]);
  });

  it('splits on any run of whitespace, tabs included', () => {
    const [line] = parseTableText('0\t8   linear\t/dev/x  0');
    assert.deepEqual(line?.args, ['/dev/x', '0']);
  });

  it('rejects a line with fewer than three fields', () => {
    throwsTableError('0 8', 'line 1: Invalid format: expected <start> <length> <target_type> [args...]');
  });

  it('rejects a non-numeric start', () => {
    throwsTableError('abc 8 zero', 'line 1: Invalid start sector "abc"');
  });

  it('rejects a negative start', () => {
    throwsTableError('-1 8 zero', 'line 1: Invalid start sector "-1"');
  });

  it('rejects a hexadecimal length (decimal only)', () => {
    throwsTableError('0 0x10 zero', 'line 1: Invalid length "0x10"');
  });

  it('rejects a length that overflows', () => {
    throwsTableError('0 99999999999999999999 zero', 'line 1: Invalid length "99999999999999999999"');
  });

  it('rejects a start + length beyond the largest device', () => {
    throwsTableError(
      `0 ${Number.MAX_SAFE_INTEGER} zero\n${Number.MAX_SAFE_INTEGER} 1 zero`,
      'line 2: too large device',
    );
  });

  it('rejects a zero-length target', () => {
    throwsTableError('0 8 zero\n8 0 zero', 'line 2: zero-length target');
  });

  it('rejects a first segment that does not start at 0', () => {
    throwsTableError('8 8 zero', 'line 1: Gap in table: segment starts at 8, expected 0');
  });

  it('rejects a gap between segments', () => {
    throwsTableError('0 8 zero\n9 8 zero', 'line 2: Gap in table: segment starts at 9, expected 8');
  });

  it('rejects overlapping segments', () => {
    throwsTableError('0 8 zero\n4 8 zero', 'line 2: Gap in table: segment starts at 4, expected 8');
  });

  it('rejects an empty table (only comments and blank lines)', () => {
    throwsTableError('# nothing\n\n', 'empty table');
  });
});

describe('table: findSegmentIndex', () => {
  const ranges = [
    { startSector: 0, lengthSectors: 8 },
    { startSector: 8, lengthSectors: 1 },
    { startSector: 9, lengthSectors: 100 },
  ];
  it('finds the segment containing each sector, and -1 outside', () => {
    const expected = (sector: number): number => (sector < 8 ? 0 : sector < 9 ? 1 : sector < 109 ? 2 : -1);
    for (let sector = 0; sector < 120; sector++) assert.equal(findSegmentIndex(ranges, sector), expected(sector), `sector ${sector}`);
    assert.equal(findSegmentIndex(ranges, -1), -1);
  });
});

describe('table: buildTable', () => {
  it('builds segments in order with the total size', async () => {
    const disk = new MemoryDevice(100, { tableName: '7:1' });
    const table = await loadMemoryTable('0 10 linear disk 5\n10 20 zero\n30 1 error', { disk });
    assert.deepEqual(
      table.segments.map((s) => [s.startSector, s.lengthSectors, s.target.type]),
      [
        [0, 10, 'linear'],
        [10, 20, 'zero'],
        [30, 1, 'error'],
      ],
    );
    assert.equal(table.sizeSectors, 31);
    assert.equal(table.segmentAt(12)?.target.type, 'zero');
    assert.equal(table.segmentAt(31), undefined);
    await table.destroy();
  });

  it('opens each device spec once per table and closes it once on destroy', async () => {
    const disk = new MemoryDevice(100);
    const opens: string[] = [];
    const opener: DeviceOpener = (spec) => {
      opens.push(spec);
      return memoryDeviceOpener({ disk })(spec);
    };
    const table = await loadMemoryTable('0 10 linear disk 0\n10 10 linear disk 50', {}, { openDevice: opener });
    assert.deepEqual(opens, ['disk']);
    assert.equal(table.devices().length, 1);
    assert.equal(disk.openHandleCount, 1);
    await table.destroy();
    assert.equal(disk.openHandleCount, 0);
    await table.destroy(); // idempotent
    assert.equal(disk.openHandleCount, 0);
  });

  it('rejects an unknown target type before opening any device', async () => {
    const disk = new MemoryDevice(100);
    await rejectsWithTableError(
      loadMemoryTable('0 10 linear disk 0\n10 10 frobnicate', { disk }),
      'line 2: frobnicate: unknown target type',
    );
    assert.equal(disk.calls.read + disk.openHandleCount, 0);
  });

  it('reports a constructor error with its line and target type', async () => {
    await rejectsWithTableError(loadMemoryTable('0 10 zero\n10 10 linear disk', {}), 'line 2: linear: Invalid argument count');
  });

  it('closes devices already opened and destroys targets already built when a later line fails', async () => {
    const a = new MemoryDevice(100);
    const b = new MemoryDevice(100);
    const destroyed: string[] = [];
    const tracking: TargetType = {
      name: 'tracking',
      async create(ctx) {
        const device = await ctx.openDevice('b');
        const target: Target = {
          type: 'tracking',
          capabilities: ALL_CAPABILITIES,
          threadModel: 'any-queue',
          map: (_bio, done) => done(0),
          status: () => '',
          devices: () => [device],
          destroy: async () => {
            destroyed.push('tracking');
          },
        };
        return target;
      },
    };
    await rejectsWithTableError(
      loadMemoryTable('0 10 linear a 0\n10 10 tracking\n20 10 linear a 999', { a, b }, { types: [tracking] }),
      'line 3: linear: Device too small for target: ' + a.tableName + ' start=999, len=10, dev_size=100',
    );
    assert.deepEqual(destroyed, ['tracking']);
    assert.equal(a.openHandleCount, 0, 'device a left open');
    assert.equal(b.openHandleCount, 0, 'device b left open');
    assert.equal(a.writeGeneration + b.writeGeneration + a.calls.write + b.calls.write, 0, 'something was written');
  });

  it('closes a device whose target failed after opening it', async () => {
    const small = new MemoryDevice(4);
    await rejectsWithTableError(
      loadMemoryTable('0 10 linear small 0', { small }),
      `line 1: linear: Device too small for target: ${small.tableName} start=0, len=10, dev_size=4`,
    );
    assert.equal(small.openHandleCount, 0);
  });

  it('wraps a non-TargetError constructor failure as a TableError with the cause', async () => {
    const buggy: TargetType = {
      name: 'buggy',
      create: async () => {
        throw new TypeError('oops');
      },
    };
    await assert.rejects(loadMemoryTable('0 1 buggy', {}, { types: [buggy] }), (error: unknown) => {
      assert.ok(error instanceof TableError);
      assert.equal(error.message, 'line 1: buggy: constructor failed: TypeError: oops');
      assert.ok(error.cause instanceof TypeError);
      return true;
    });
  });

  it('a TargetError thrown by a custom type keeps its message', async () => {
    const picky: TargetType = {
      name: 'picky',
      create: async () => {
        throw new TargetError('Invalid chunk_size');
      },
    };
    await rejectsWithTableError(loadMemoryTable('0 1 picky', {}, { types: [picky] }), 'line 1: picky: Invalid chunk_size');
  });
});

describe('table: formatTable', () => {
  it('prints dmsetup table lines byte for byte, with the space after an empty status', async () => {
    const disk = new MemoryDevice(4096, { tableName: '8:16' });
    const table = await loadMemoryTable('0 2048 linear disk 1024\n2048 100 zero\n2148 8 error', { disk });
    assert.equal(formatTable(table, 'table'), '0 2048 linear 8:16 1024\n2048 100 zero \n2148 8 error \n');
    assert.equal(formatTable(table, 'info'), '0 2048 linear \n2048 100 zero \n2148 8 error \n');
    await table.destroy();
  });

  it('round-trips: formatted table text loads back to the same text', async () => {
    const devices: Record<string, MemoryDevice> = { '8:16': new MemoryDevice(4096, { tableName: '8:16' }) };
    const first = await loadMemoryTable('0 100 linear 8:16 7\n100 50 zero', devices);
    const text = formatTable(first, 'table');
    const second = await loadMemoryTable(text, devices);
    assert.equal(formatTable(second, 'table'), text);
    await first.destroy();
    await second.destroy();
  });
});

describe('table: Table invariants', () => {
  it('refuses segments that do not tile from sector 0', () => {
    const target = { type: 'x' } as unknown as Target;
    assert.throws(() => new Table([{ startSector: 1, lengthSectors: 1, target }], []), RangeError);
    assert.throws(() => new Table([], [] as BlockDevice[]), RangeError);
  });
});

describe('table: buildTable with pre-parsed lines', () => {
  it('builds from parseTableText output without touching devices for device-less targets', async () => {
    let opened = 0;
    const table = await buildTable(parseTableText('0 8 zero\n8 8 null'), {
      scope: testScope(),
      device: new DeviceEvents('test'),
      openDevice: async () => {
        opened++;
        throw new Error('no devices here');
      },
    });
    assert.equal(opened, 0);
    assert.equal(table.sizeSectors, 16);
    await table.destroy();
  });
});
