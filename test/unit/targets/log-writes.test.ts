import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { EIO } from '../../../src/base/errno';
import { IoOp, NO_DATA, type Bio } from '../../../src/io/bio';
import { TableError } from '../../../src/dm/table';
import type { MapOutcome, Target } from '../../../src/dm/target';
import { LogFlag, decodeEntry, decodeSuper, encodeSuper, entryLogBlocks, markNameOf, type LogEntry } from '../../../src/targets/log-writes/log-format';
import { ReplayCheckError, replayLog } from '../../../src/cli/replay-log';
import { MemoryDevice } from '../../../src/testing/memory-device';
import { loadMemoryTable, submitted } from '../../../src/testing/tables';

function bio(op: IoOp, sector: number, sectorCount: number, data: Uint8Array = NO_DATA, fua = false): Bio {
  return { op, sector, sectorCount, data, fua, noUnmap: false };
}
const mapped = (target: Target, b: Bio) => submitted<MapOutcome>((x, done) => target.map(x, done), b);

/** The entries of a log held in memory, with mark names and the data that follows each. */
function readLog(log: Buffer): { entryCount: number; entries: Array<LogEntry & { mark?: string; data?: Buffer }> } {
  const { entryCount, blockBytes } = decodeSuper(log);
  const entries: Array<LogEntry & { mark?: string; data?: Buffer }> = [];
  let at = blockBytes;
  for (let i = 0; i < entryCount; i++) {
    const block = log.subarray(at, at + blockBytes);
    const entry = decodeEntry(block);
    const extra = (entry.flags & LogFlag.Mark) !== 0 ? { mark: markNameOf(entry, block) } : entry.blockCount > 0 && (entry.flags & LogFlag.Discard) === 0 ? { data: log.subarray(at + blockBytes, at + blockBytes + entry.blockCount * blockBytes) } : {};
    entries.push({ ...entry, ...extra });
    at += entryLogBlocks(entry) * blockBytes;
  }
  return { entryCount, entries };
}

async function logWrites(devSectors = 64, logSectors = 256) {
  const dev = new MemoryDevice(devSectors, { tableName: '7:1' });
  const log = new MemoryDevice(logSectors, { tableName: '7:2' });
  const table = await loadMemoryTable(`0 ${devSectors} log-writes dev log`, { dev, log });
  return { dev, log, table, target: table.segments[0]!.target };
}

describe('targets: log-writes', () => {
  it('logs a FUA write when it completes and plain writes with the flush after them, in the kernel format', async () => {
    const { log, target } = await logWrites();
    await mapped(target, bio(IoOp.Write, 2, 1, Buffer.alloc(512, 0xa1)));
    await mapped(target, bio(IoOp.Write, 4, 2, Buffer.alloc(1024, 0xb2), true));
    await mapped(target, bio(IoOp.Flush, 0, 0));
    await target.message!(['mark', 'one']);
    const { entryCount, entries } = readLog(log.contents);
    assert.equal(entryCount, 4, 'the super counts every entry once the mark is written');
    assert.deepEqual(entries.map((e) => [e.block, e.blockCount, e.flags, e.dataLength, e.mark]), [
      [4, 2, LogFlag.Fua, 0, undefined],
      [2, 1, 0, 0, undefined],
      [0, 0, LogFlag.Flush, 0, undefined],
      [0, 0, LogFlag.Mark, 3, 'one'],
    ]);
    assert.ok(entries[0]!.data!.every((b) => b === 0xb2));
    assert.ok(entries[1]!.data!.every((b) => b === 0xa1));
    assert.equal(target.status('info'), '4 7'); // after the super, 4 entry sectors and 3 data sectors: 1..7 used
    assert.equal(target.status('table'), '7:1 7:2');
  });

  it('a write not followed by a flush is not logged until the table goes (the end mark)', async () => {
    const { log, target } = await logWrites();
    await mapped(target, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 1)));
    await target.message!(['mark', 'before-flush']);
    assert.deepEqual(readLog(log.contents).entries.map((e) => e.mark ?? e.flags), ['before-flush']);
    await target.destroy();
    assert.deepEqual(readLog(log.contents).entries.map((e) => e.mark ?? e.block), ['before-flush', 0, 'dm-log-writes-end']);
  });

  it('logs discards without data and write-zeroes as zero data', async () => {
    const { log, target } = await logWrites();
    await mapped(target, bio(IoOp.Discard, 8, 4));
    await mapped(target, bio(IoOp.WriteZeroes, 16, 2));
    await mapped(target, bio(IoOp.Flush, 0, 0));
    await target.message!(['mark', 'z']);
    const { entries } = readLog(log.contents);
    assert.deepEqual(entries.map((e) => [e.block, e.blockCount, e.flags]), [[8, 4, LogFlag.Discard], [16, 2, 0], [0, 0, LogFlag.Flush], [0, 0, LogFlag.Mark]]);
    assert.ok(entries[1]!.data!.every((b) => b === 0));
  });

  it('a failed flush leaves its writes unflushed; a failed write is not logged', async () => {
    const { dev, log, target } = await logWrites();
    await mapped(target, bio(IoOp.Write, 0, 1, Buffer.alloc(512, 1)));
    dev.failOp('flush', EIO);
    assert.equal(await mapped(target, bio(IoOp.Flush, 0, 0)), -EIO);
    dev.failOp('flush', null);
    dev.failOp('write', EIO);
    assert.equal(await mapped(target, bio(IoOp.Write, 1, 1, Buffer.alloc(512, 2))), -EIO);
    dev.failOp('write', null);
    await mapped(target, bio(IoOp.Flush, 0, 0));
    await target.message!(['mark', 'm']);
    assert.deepEqual(readLog(log.contents).entries.map((e) => [e.block, e.flags]), [[0, 0], [0, LogFlag.Flush], [0, LogFlag.Mark]]);
  });

  it('stops logging when the log device is full and says so in status, while I/O goes on', async () => {
    const { dev, target } = await logWrites(64, 8);
    for (let i = 0; i < 4; i++) await mapped(target, bio(IoOp.Write, i * 2, 2, Buffer.alloc(1024, 9), true));
    await target.message!(['mark', 'm']);
    assert.match(target.status('info'), / logging_disabled$/);
    assert.equal(await mapped(target, bio(IoOp.Write, 20, 1, Buffer.alloc(512, 7))), 512);
    assert.equal(dev.contents[20 * 512], 7);
  });

  it('refuses bad messages with the kernel\'s words', async () => {
    const { target } = await logWrites();
    await assert.rejects(target.message!(['mark']), /expect 2 arguments, got 1/);
    await assert.rejects(target.message!(['frob', 'x']), /Unrecognised log writes target message received: frob/);
  });

  const errors: Array<[string, RegExp]> = [
    ['0 64 log-writes dev', /log-writes: Invalid argument count$/],
    ['0 64 log-writes nope log', /log-writes: Device lookup failed: open nope: ENOENT$/],
    ['0 64 log-writes dev nope', /log-writes: Log device lookup failed: open nope: ENOENT$/],
    ['0 128 log-writes dev log', /Device too small for target/],
  ];
  for (const [text, message] of errors) {
    it(`"${text}" fails: ${message.source}`, async () => {
      await assert.rejects(loadMemoryTable(text, { dev: new MemoryDevice(64), log: new MemoryDevice(64) }), (e: unknown) => e instanceof TableError && message.test(e.message));
    });
  }
});

describe('replay-log', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'replay-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Record two generations of writes with a mark after each; returns the device image at each mark. */
  async function recorded(): Promise<{ logFile: string; atMark: Record<string, Buffer> }> {
    const { dev, log, target } = await logWrites();
    dev.contents.fill(0);
    const atMark: Record<string, Buffer> = {};
    for (const [generation, name] of [[1, 'first'], [2, 'second']] as const) {
      for (let block = 0; block < 8; block += 1 + generation) await mapped(target, bio(IoOp.Write, block, 1, Buffer.alloc(512, generation * 16 + block)));
      await mapped(target, bio(IoOp.Discard, 40, 4));
      await mapped(target, bio(IoOp.Flush, 0, 0));
      await target.message!(['mark', name]);
      atMark[name] = Buffer.from(dev.contents);
    }
    const logFile = path.join(dir, 'log');
    writeFileSync(logFile, log.contents);
    return { logFile, atMark };
  }

  it('replays to each mark and gives the device as it was at that mark', async () => {
    const { logFile, atMark } = await recorded();
    for (const mark of ['first', 'second']) {
      const replayFile = path.join(dir, `replay-${mark}`);
      writeFileSync(replayFile, Buffer.alloc(64 * 512, 0xee));
      const result = await replayLog({ logPath: logFile, replayPath: replayFile, endMark: mark });
      assert.equal(result.marks.at(-1), mark);
      const replayed = readFileSync(replayFile);
      // Sectors never written keep what the replay target had; compare the ones the log wrote.
      for (let sector = 0; sector < 8; sector++) {
        const expected = atMark[mark]!.subarray(sector * 512, (sector + 1) * 512);
        const got = replayed.subarray(sector * 512, (sector + 1) * 512);
        if (expected.some((b) => b !== 0)) assert.deepEqual(got, expected, `sector ${sector} at mark ${mark}`);
      }
      assert.ok(replayed.subarray(40 * 512, 44 * 512).every((b) => b === 0), 'the discard replays as zeroes');
    }
  });

  it('runs the check at every flush and mark, and stops at the first that fails', async () => {
    const { logFile } = await recorded();
    const replayFile = path.join(dir, 'replay');
    writeFileSync(replayFile, Buffer.alloc(64 * 512));
    const all = await replayLog({ logPath: logFile, replayPath: replayFile, check: { command: 'true', at: ['flush', 'mark'] } });
    assert.deepEqual(all.checks.map((c) => c.mark ?? c.point), ['flush', 'first', 'flush', 'second']);
    await assert.rejects(
      replayLog({ logPath: logFile, replayPath: replayFile, check: { command: 'test "$REPLAY_MARK" != second', at: ['mark'] } }),
      (e: unknown) => e instanceof ReplayCheckError && e.at.mark === 'second',
    );
  });

  it('--limit stops after N entries; a missing end mark and a foreign log are errors', async () => {
    const { logFile } = await recorded();
    const replayFile = path.join(dir, 'replay');
    writeFileSync(replayFile, Buffer.alloc(64 * 512));
    assert.equal((await replayLog({ logPath: logFile, replayPath: replayFile, limit: 3 })).entriesReplayed, 3);
    await assert.rejects(replayLog({ logPath: logFile, replayPath: replayFile, endMark: 'nope' }), /mark nope is not in the log/);
    const foreign = path.join(dir, 'foreign');
    writeFileSync(foreign, Buffer.alloc(4096, 0x41));
    await assert.rejects(replayLog({ logPath: foreign, replayPath: replayFile }), /not a dm-log-writes log/);
    const before = readFileSync(replayFile);
    const newer = Buffer.from(encodeSuper(1, 512));
    newer.writeBigUInt64LE(2n, 8);
    writeFileSync(foreign, newer);
    await assert.rejects(replayLog({ logPath: foreign, replayPath: replayFile }), /unsupported log version 2/);
    assert.deepEqual(readFileSync(replayFile), before, 'a refused log writes nothing');
  });
});

describe('log-writes against a log the 6.12 kernel wrote (test/golden/log-writes)', () => {
  const golden = path.join(__dirname, '..', '..', '..', '..', 'test', 'golden', 'log-writes');
  const gunzip = (name: string): Buffer => zlib.gunzipSync(readFileSync(path.join(golden, name)));
  /** The K pattern of tools/golden/make-log-writes-golden.sh: 4 KiB block b holds "K%07d" repeated. */
  const kBlock = (block: number): Buffer => Buffer.alloc(4096, `K${String(block).padStart(7, '0')}`, 'latin1');

  it('our target, given the golden maker\'s sequence, writes the same log bytes as the kernel', async () => {
    const kernelLog = gunzip('kernel.log.gz');
    const { log, target } = await logWrites(2048, kernelLog.byteLength / 512);
    await mapped(target, bio(IoOp.Write, 24, 8, kBlock(3)));
    await mapped(target, bio(IoOp.Write, 32, 8, kBlock(4)));
    await mapped(target, bio(IoOp.Flush, 0, 0));
    await target.message!(['mark', 'one']);
    await mapped(target, bio(IoOp.Write, 128, 8, kBlock(16)));
    await mapped(target, bio(IoOp.Discard, 256, 128));
    await mapped(target, bio(IoOp.Flush, 0, 0));
    await target.message!(['mark', 'two']);
    await mapped(target, bio(IoOp.Write, 64, 8, kBlock(8)));
    await target.destroy();
    const ours = readLog(log.contents);
    const kernel = readLog(kernelLog);
    assert.deepEqual(ours.entries.map((e) => [e.block, e.blockCount, e.flags, e.mark]), kernel.entries.map((e) => [e.block, e.blockCount, e.flags, e.mark]));
    assert.ok(log.contents.equals(kernelLog), 'the logs are byte for byte the same');
  });

  it('replay-log replays the kernel\'s log to each mark: the device as the kernel left it', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'replay-golden-'));
    try {
      const logFile = path.join(dir, 'kernel.log');
      writeFileSync(logFile, gunzip('kernel.log.gz'));
      const replayFile = path.join(dir, 'replay');
      writeFileSync(replayFile, Buffer.alloc(1 << 20));
      const result = await replayLog({ logPath: logFile, replayPath: replayFile });
      assert.deepEqual(result.marks, ['one', 'two', 'dm-log-writes-end']);
      const device = gunzip('kernel-dev.img.gz');
      const replayed = readFileSync(replayFile);
      for (const block of [3, 4, 8, 16]) assert.ok(replayed.subarray(block * 4096, (block + 1) * 4096).equals(device.subarray(block * 4096, (block + 1) * 4096)), `4 KiB block ${block}`);
      assert.ok(replayed.equals(device), 'the whole replayed device equals the kernel\'s');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
