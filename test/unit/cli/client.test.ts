import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { DaemonAbsentError, DaemonGoneError, sendRequest, sendRequestStartingDaemon } from '../../../src/cli/client';
import { daemonPaths, type DaemonPaths } from '../../../src/daemon/paths';
import { LineSplitter, changesState, decodeRequest, encodeResponse, VERBS, type Request } from '../../../src/wire/protocol';

/**
 * A stand-in daemon on a unix socket: it drops the first `drops` connections without answering
 * (as a dying daemon's socket does), then answers every request with `[]`.
 */
class DroppingServer {
  readonly received: Request[] = [];
  private connections = 0;
  private readonly server: net.Server;

  constructor(
    private readonly drops: number,
    private readonly how: 'reset' | 'close',
  ) {
    // Paused: a request left unread when the socket closes is what makes the kernel reset the
    // client's end (as for a connection a dying daemon never accepted); closing after reading it
    // gives a plain end of stream.
    this.server = net.createServer({ pauseOnConnect: true }, (socket) => {
      if (++this.connections <= this.drops) {
        if (this.how === 'reset') setTimeout(() => socket.destroy(), 50);
        else socket.resume().once('data', () => socket.destroy());
        return;
      }
      socket.resume();
      const splitter = new LineSplitter();
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        for (const line of splitter.push(chunk)) {
          this.received.push(decodeRequest(line));
          socket.end(encodeResponse({ ok: true, result: [] }));
        }
      });
    });
  }

  listen(socketPath: string): Promise<void> {
    return new Promise((resolve) => this.server.listen(socketPath, resolve));
  }

  get connectionCount(): number {
    return this.connections;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

describe('the CLI client, when the daemon drops a request unanswered', () => {
  let dir: string;
  let paths: DaemonPaths;
  let server: DroppingServer | undefined;
  // The daemon is running (the stand-in), so the client never starts one: a script that is not
  // there would fail loudly if it tried.
  const noScript = '/nonexistent/ublk-dm.js';

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ublk-dm-client-'));
    paths = daemonPaths({ UBLK_DM_RUN_DIR: dir });
  });
  afterEach(async () => {
    await server?.close();
    server = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  for (const how of ['reset', 'close'] as const) {
    it(`says so, without a raw socket error (${how})`, async () => {
      server = new DroppingServer(1, how);
      await server.listen(paths.socketPath);
      await assert.rejects(sendRequest(paths.socketPath, { verb: 'ls' }), (err: Error) => {
        assert.ok(err instanceof DaemonGoneError, `${err.constructor.name}: ${err.message}`);
        assert.match(err.message, /closed the connection without answering/);
        return true;
      });
    });
  }

  it('sends a request that changes nothing again, until a daemon answers', async () => {
    server = new DroppingServer(3, 'reset');
    await server.listen(paths.socketPath);
    assert.deepEqual(await sendRequestStartingDaemon(paths, noScript, { verb: 'status', name: 'vol0' }), []);
    assert.equal(server.connectionCount, 4);
    assert.deepEqual(server.received, [{ verb: 'status', name: 'vol0' }]);
  });

  it('does not send a request that changes something again, and says it may have been carried out', async () => {
    server = new DroppingServer(1, 'reset');
    await server.listen(paths.socketPath);
    await assert.rejects(sendRequestStartingDaemon(paths, noScript, { verb: 'remove', name: 'vol0' }), (err: Error) => {
      assert.ok(err instanceof DaemonGoneError);
      assert.match(err.message, /`remove` may or may not have been carried out/);
      return true;
    });
    assert.equal(server.connectionCount, 1);
  });

  it('does not send `wait` again: its event number belongs to the daemon that dropped it', async () => {
    server = new DroppingServer(1, 'close');
    await server.listen(paths.socketPath);
    await assert.rejects(sendRequestStartingDaemon(paths, noScript, { verb: 'wait', name: 'vol0', eventNr: 3 }), DaemonGoneError);
    assert.equal(server.connectionCount, 1);
  });

  it('still tells no daemon from a dropped request', async () => {
    await assert.rejects(sendRequest(paths.socketPath, { verb: 'ls' }), DaemonAbsentError);
  });
});

describe('changesState', () => {
  it('is false for the verbs that only read, and for param without a value', () => {
    const readers = VERBS.filter((verb) => !changesState({ verb } as Request));
    assert.deepEqual(readers, ['wait', 'ls', 'table', 'status', 'info', 'param', 'version', 'failures']);
    assert.equal(changesState({ verb: 'param', name: 'raid1_resync_throttle', value: '20' }), true);
  });
});
