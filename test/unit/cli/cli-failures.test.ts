import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runCli } from '../../../src/cli/cli';
import { LineSplitter, encodeResponse, type Response } from '../../../src/wire/protocol';

/** A daemon stand-in answering each verb with a canned response (an old daemon: unknown verbs refused as ours are). */
function cannedDaemon(socketPath: string, answers: Record<string, Response>): Promise<net.Server> {
  const server = net.createServer((socket) => {
    const splitter = new LineSplitter();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      for (const line of splitter.push(chunk)) {
        const verb = (JSON.parse(line) as { verb: string }).verb;
        socket.write(encodeResponse(answers[verb] ?? { ok: false, error: { message: `unknown verb ${JSON.stringify(verb)}`, code: 'EPROTO' } }));
      }
    });
  });
  return new Promise((resolve) => server.listen(socketPath, () => resolve(server)));
}

describe('cli: saved devices that were not restored, in ls and info', () => {
  let dir: string;
  let server: net.Server | undefined;
  let env: NodeJS.ProcessEnv;
  const live = { name: 'a', major: 259, minor: 0, blockPath: '/dev/ublkb0' };
  const failed = { name: 'gone', state: 'failed', reason: 'cannot open /img/gone.img: ENOENT' };

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'cli-failures-'));
    env = { ...process.env, UBLK_DM_RUN_DIR: dir, UBLK_DM_STATE_DIR: path.join(dir, 'state') };
  });
  afterEach(async () => {
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
    server = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('ls and ls --json show them after the live devices; info NAME shows the reason', async () => {
    server = await cannedDaemon(path.join(dir, 'ublk-dm.sock'), {
      ls: { ok: true, result: [live] },
      failures: { ok: true, result: [failed] },
    });
    assert.deepEqual(await runCli(['ls'], { env }), { code: 0, stdout: 'a\t(259:0)\ngone\t(not restored: cannot open /img/gone.img: ENOENT)\n', stderr: '' });
    assert.deepEqual(JSON.parse((await runCli(['ls', '--json'], { env })).stdout), [live, failed]);
    const info = await runCli(['info', 'gone'], { env });
    assert.equal(info.code, 0);
    assert.equal(info.stdout, `Name:              gone\nState:             NOT RESTORED\nReason:            cannot open /img/gone.img: ENOENT\nSaved table:       ${path.join(dir, 'state', 'gone.json')}\n\n`);
    assert.deepEqual(JSON.parse((await runCli(['info', 'gone', '--json'], { env })).stdout), failed);
  });

  it('a daemon older than the CLI (no failures verb) still gets its ls answered', async () => {
    server = await cannedDaemon(path.join(dir, 'ublk-dm.sock'), { ls: { ok: true, result: [live] } });
    assert.deepEqual(await runCli(['ls'], { env }), { code: 0, stdout: 'a\t(259:0)\n', stderr: '' });
  });

  it('shutdown with no daemon running says so and starts none', async () => {
    assert.deepEqual(await runCli(['shutdown'], { env }), { code: 0, stdout: 'no ublk-dm daemon is running\n', stderr: '' });
    assert.deepEqual(await runCli(['shutdown', '--remove-devices'], { env }), { code: 0, stdout: 'no ublk-dm daemon is running\n', stderr: '' }, 'no saved tables: nothing to remove');
  });
});
