import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runCli } from '../../../src/cli/cli';
import { encodeSuper } from '../../../src/targets/log-writes/log-format';

describe('cli: runCli (the CLI in the caller\'s process)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'runcli-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('answers a bad command line with exit code 2 and the message, as the binary does', async () => {
    const r = await runCli(['frobnicate']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^ublk-dm: /);
  });

  it('runs a command that needs no daemon and captures its output, JSON progress lines first', async () => {
    const log = path.join(dir, 'log');
    writeFileSync(log, encodeSuper(0, 512));
    const replay = path.join(dir, 'replay');
    writeFileSync(replay, Buffer.alloc(4096));
    const text = await runCli(['replay-log', '--log', log, '--replay', replay]);
    assert.deepEqual(text, { code: 0, stdout: 'replayed 0 of 0 entries\n', stderr: '' });
    const failed = await runCli(['replay-log', '--log', replay, '--replay', log]);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /not a dm-log-writes log/);
  });

  it('uses the environment it is given for the daemon paths', async () => {
    // A run directory under a regular file: the socket cannot be there, and the error names it.
    writeFileSync(path.join(dir, 'file'), '');
    const env = { ...process.env, UBLK_DM_RUN_DIR: path.join(dir, 'file', 'run') };
    const r = await runCli(['ls'], { env });
    assert.equal(r.code, 1);
    assert.equal(r.stderr, `ublk-dm: connect ENOTDIR ${path.join(dir, 'file', 'run', 'ublk-dm.sock')}\n`);
  });
});
