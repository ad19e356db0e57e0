import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { processHasExited, processIsAlive } from '../../../src/ublk/processes';

function stateOf(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

async function until(what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

// python3 is there wherever the addon builds (node-gyp needs it); its ctypes lets the main thread
// exit alone, as a killed process's main thread does before its other threads.
const ZOMBIE_LEADER_WITH_A_THREAD = [
  '-c',
  'import ctypes, threading, time\n' +
    'threading.Thread(target=time.sleep, args=(30,)).start()\n' +
    'ctypes.CDLL(None).pthread_exit(None)\n',
];

describe('processIsAlive and processHasExited', () => {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const child of children.splice(0)) child.kill('SIGKILL');
  });

  it('tell a running process from no process', () => {
    assert.equal(processIsAlive(process.pid), true);
    assert.equal(processHasExited(process.pid), false);
    for (const pid of [0, -1, 2 ** 22 + 1 /* above pid_max's ceiling */]) {
      assert.equal(processIsAlive(pid), false);
      assert.equal(processHasExited(pid), true);
    }
  });

  it('take a zombie with no thread left for exited', async () => {
    // A child that exits is a zombie until Node reaps it, which needs this event loop turn.
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    children.push(child);
    const pid = child.pid!;
    assert.equal(processIsAlive(pid), true);
    process.kill(pid, 'SIGKILL');
    const deadline = Date.now() + 10_000;
    let sawZombie = false;
    while (Date.now() < deadline) {
      let state: string;
      try {
        state = stateOf(pid);
      } catch {
        break; // reaped: no process
      }
      if (state === 'Z') {
        sawZombie = true;
        assert.equal(processIsAlive(pid), false);
        assert.equal(processHasExited(pid), true);
        break;
      }
    }
    assert.equal(processIsAlive(pid), false, sawZombie ? 'zombie' : 'reaped');
    assert.equal(processHasExited(pid), true, sawZombie ? 'zombie' : 'reaped');
  });

  it('take a zombie main thread with a thread still running for exiting, not yet exited', async () => {
    const child = spawn('python3', ZOMBIE_LEADER_WITH_A_THREAD, { stdio: 'ignore' });
    children.push(child);
    const pid = child.pid!;
    await until('the main thread is a zombie', () => stateOf(pid) === 'Z');
    assert.equal(readdirSync(`/proc/${pid}/task`).length, 2);
    assert.equal(processIsAlive(pid), false, 'it will not serve again');
    assert.equal(processHasExited(pid), false, 'its other thread still holds its files');
    process.kill(pid, 'SIGKILL');
    await until('it has exited', () => processHasExited(pid));
  });
});
