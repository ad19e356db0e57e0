import assert from 'node:assert/strict';
import { formatShutdown, waitForExit } from '../../../src/cli/shutdown';

describe('ublk-dm shutdown (CLI side)', () => {
  it('waits until the daemon process is gone', async () => {
    let polls = 0;
    await waitForExit(42, 5_000, () => ++polls < 3);
    assert.equal(polls, 3);
  });

  it('gives up with the pid named when the daemon does not exit', async () => {
    await assert.rejects(waitForExit(42, 120, () => true), /daemon \(pid 42\) is still running/);
  });

  it('says what was left, removed and failed, and when no daemon ran', () => {
    assert.equal(formatShutdown(undefined), 'no ublk-dm daemon is running\n');
    assert.equal(
      formatShutdown({ pid: 7, handedOver: ['a', 'b'], removed: ['c'], failed: [{ name: 'd', error: 'EBUSY' }] }),
      'daemon 7 stopped\nleft for the next daemon (I/O waits until one starts): a b\nremoved from the kernel: c\nfailed: d: EBUSY\n',
    );
    assert.equal(formatShutdown({ pid: 7, handedOver: [], removed: [], failed: [] }), 'daemon 7 stopped\n');
  });
});
