import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { DaemonAbsentError, DaemonError, sendRequest } from '../../../src/cli/client';
import { DaemonServer } from '../../../src/daemon/server';
import { formatInfo, formatTableReports } from '../../../src/cli/format';
import { silentLogger } from '../../../src/base/log';
import { daemonPaths, type DaemonPaths } from '../../../src/daemon/paths';
import { PROTOCOL_VERSION } from '../../../src/wire/protocol';
import { DeviceRegistry } from '../../../src/daemon/registry';
import { TestBed } from '../../support/fake-ublk';

/** One raw line exchange, for what the client would never send. */
function exchange(socketPath: string, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath, () => socket.write(line));
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      received += chunk;
      if (received.includes('\n')) {
        socket.destroy();
        resolve(received);
      }
    });
    socket.on('error', reject);
  });
}

describe('DaemonServer over a unix socket', () => {
  let bed: TestBed;
  let paths: DaemonPaths;
  let registry: DeviceRegistry;
  let server: DaemonServer;

  beforeEach(async () => {
    bed = await TestBed.create();
    paths = daemonPaths({ UBLK_DM_RUN_DIR: path.join(bed.dir, 'run'), UBLK_DM_STATE_DIR: bed.store.dir, UBLK_DM_LINK_DIR: bed.links.dir });
    registry = new DeviceRegistry(bed.deps());
    server = new DaemonServer(registry, paths, silentLogger());
    await server.listen();
  });
  afterEach(async () => {
    await server.close();
    await bed.cleanup();
  });

  it('owns a 0600 socket in a 0700 run directory, with a pid file', async () => {
    assert.equal((await fsp.stat(paths.runDir)).mode & 0o777, 0o700);
    assert.equal((await fsp.stat(paths.socketPath)).mode & 0o777, 0o600);
    assert.equal((await fsp.readFile(paths.pidFilePath, 'utf8')).trim(), String(process.pid));
  });

  it('serves param: every target parameter, one, and a new value; a bad value or name changes nothing', async () => {
    const all = await sendRequest(paths.socketPath, { verb: 'param' });
    assert.deepEqual(all.map((p) => [p.name, p.value]), [['raid1_resync_throttle', '100']]);
    assert.match(all[0]!.description, /resync/);
    assert.deepEqual((await sendRequest(paths.socketPath, { verb: 'param', name: 'raid1_resync_throttle', value: '20' })).map((p) => p.value), ['20']);
    await assert.rejects(
      sendRequest(paths.socketPath, { verb: 'param', name: 'raid1_resync_throttle', value: 'lots' }),
      (err) => err instanceof DaemonError && err.code === 'EINVAL' && /not a percentage/.test(err.message),
    );
    await assert.rejects(
      sendRequest(paths.socketPath, { verb: 'param', name: 'nope', value: '1' }),
      (err) => err instanceof DaemonError && err.code === 'ENOENT',
    );
    assert.deepEqual((await sendRequest(paths.socketPath, { verb: 'param', name: 'raid1_resync_throttle' })).map((p) => p.value), ['20']);
  });

  it('serves create, table, info, ls and remove', async () => {
    const created = await sendRequest(paths.socketPath, { verb: 'create', name: 'vol0', table: '0 8 zero\n', options: { readOnly: false } });
    assert.equal(created.blockPath, '/dev/ublkb0');
    const tables = await sendRequest(paths.socketPath, { verb: 'table', name: 'vol0', inactive: false });
    assert.equal(formatTableReports(tables, false), '0 8 zero \n');
    const infos = await sendRequest(paths.socketPath, { verb: 'info', name: 'vol0' });
    assert.match(formatInfo(infos, false), /^Name: {14}vol0\nState: {13}ACTIVE\n/);
    assert.deepEqual(await sendRequest(paths.socketPath, { verb: 'ls' }), [{ name: 'vol0', major: 259, minor: 0, blockPath: '/dev/ublkb0' }]);
    await sendRequest(paths.socketPath, { verb: 'remove', name: 'vol0' });
    assert.deepEqual(await sendRequest(paths.socketPath, { verb: 'ls' }), []);
  });

  it('answers failures with the message and errno name', async () => {
    await assert.rejects(
      sendRequest(paths.socketPath, { verb: 'remove', name: 'nope' }),
      (err) => err instanceof DaemonError && err.code === 'ENOENT' && /nope does not exist/.test(err.message),
    );
    await assert.rejects(
      sendRequest(paths.socketPath, { verb: 'create', name: 'v', table: '0 8 bogus\n', options: { readOnly: false } }),
      (err) => err instanceof DaemonError && err.code === 'EINVAL' && /line 1: bogus: unknown target type/.test(err.message),
    );
  });

  it('answers a malformed request with EPROTO', async () => {
    const reply = JSON.parse(await exchange(paths.socketPath, '{"v":99,"verb":"ls"}\n'));
    assert.equal(reply.ok, false);
    assert.equal(reply.error.code, 'EPROTO');
    const reply2 = JSON.parse(await exchange(paths.socketPath, `{"v":${PROTOCOL_VERSION},"verb":"remove"}\n`));
    assert.equal(reply2.error.code, 'EPROTO');
  });

  it('holds requests until the saved devices are back', async () => {
    let release!: () => void;
    server.holdRequestsUntil(new Promise<void>((resolve) => (release = resolve)));
    let answered = false;
    const listing = sendRequest(paths.socketPath, { verb: 'ls' }).then((r) => ((answered = true), r));
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(answered, false);
    release();
    assert.deepEqual(await listing, []);
  });

  it('refuses to start a second daemon on a live socket', async () => {
    const second = new DaemonServer(registry, paths, silentLogger());
    await assert.rejects(second.listen(), new RegExp(`another ublk-dm daemon \\(pid ${process.pid}\\)`));
  });

  it('replaces a stale socket left by a dead daemon', async () => {
    await server.close();
    // A daemon killed with SIGKILL leaves its socket file behind with nobody listening.
    const script = `require('net').createServer().listen(${JSON.stringify(paths.socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`;
    spawnSync(process.execPath, ['-e', script]);
    await fsp.stat(paths.socketPath);
    await assert.rejects(sendRequest(paths.socketPath, { verb: 'ls' }), DaemonAbsentError);
    server = new DaemonServer(registry, paths, silentLogger());
    await server.listen();
    assert.deepEqual(await sendRequest(paths.socketPath, { verb: 'ls' }), []);
  });

  it('a shutdown request: the daemon stops serving, answers with what it did, and only then exits', async () => {
    const events: string[] = [];
    server.setControl({
      shutdown: async (removeDevices) => {
        events.push(`shutdown removeDevices=${removeDevices}`);
        server.stopAccepting();
        return { pid: 4242, handedOver: ['a'], removed: [], failed: [] };
      },
      exit: () => events.push('exit'),
    });
    const answer = await sendRequest(paths.socketPath, { verb: 'shutdown', removeDevices: false });
    assert.deepEqual(answer, { pid: 4242, handedOver: ['a'], removed: [], failed: [] });
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(events, ['shutdown removeDevices=false', 'exit']);
  });

  it('refuses requests once stopping, and a shutdown it has nobody to carry out', async () => {
    await assert.rejects(sendRequest(paths.socketPath, { verb: 'shutdown', removeDevices: true }), (err: DaemonError) => err.code === 'EOPNOTSUPP');
    const socket = net.connect(paths.socketPath);
    await new Promise((resolve) => socket.once('connect', resolve));
    server.stopAccepting();
    const answer = await new Promise<string>((resolve) => {
      let received = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        received += chunk;
        if (received.includes('\n')) resolve(received);
      });
      socket.write(JSON.stringify({ v: PROTOCOL_VERSION, verb: 'ls' }) + '\n');
    });
    socket.destroy();
    assert.match(answer, /"code":"ESHUTDOWN"/);
    await assert.rejects(sendRequest(paths.socketPath, { verb: 'ls' }), DaemonAbsentError, 'no new connections');
  });

  it('serves failures: the saved devices that did not come back', async () => {
    assert.deepEqual(await sendRequest(paths.socketPath, { verb: 'failures' }), []);
  });
});
