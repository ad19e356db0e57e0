import assert from 'node:assert/strict';
import { diagnose, formatDoctorReport, type DoctorFacts } from '../../../src/cli/doctor';
import { installationMark } from '../../../src/daemon/ownership';
import type { KernelUblkDevice } from '../../../src/daemon/registry';

const INSTALLATION = installationMark('/var/lib/ublk-dm');
const OTHER = installationMark('/elsewhere');
const mark = (installation: number, device: number): bigint => (BigInt(installation) << 32n) | BigInt(device);

function facts(overrides: Partial<DoctorFacts> = {}): DoctorFacts {
  return {
    installation: INSTALLATION,
    kernelDevices: [],
    daemon: { devices: [], failures: [] },
    links: [],
    unreadableSaved: [],
    processIsAlive: (pid) => pid === 777,
    ...overrides,
  };
}

const served = { name: 'vol', major: 259, minor: 0, blockPath: '/dev/ublkb0' };

describe('ublk-dm doctor', () => {
  it('finds nothing wrong with a served device, its link, and another server\'s live device', () => {
    const report = diagnose(
      facts({
        kernelDevices: [
          { id: 0, state: 'live', serverPid: 777, serverFlags: mark(INSTALLATION, 1) },
          { id: 1, state: 'live', serverPid: 777, serverFlags: 0n },
        ],
        daemon: { devices: [served], failures: [] },
        links: [{ path: '/dev/ublk-dm/vol', name: 'vol', target: '/dev/ublkb0', targetExists: true }],
      }),
    );
    assert.deepEqual(report.problems, []);
    assert.equal(formatDoctorReport(report), 'no problems found\n');
  });

  it('lists dead ublk devices, ours and others, saying whose and why', () => {
    const kernelDevices: KernelUblkDevice[] = [
      { id: 2, state: 'dead', serverPid: -1, serverFlags: mark(INSTALLATION, 2) },
      { id: 3, state: 'quiesced', serverPid: 99, serverFlags: mark(INSTALLATION, 3) },
      { id: 4, state: 'live', serverPid: 99, serverFlags: mark(OTHER, 4) },
      { id: 5, state: 'live', serverPid: 777, serverFlags: mark(INSTALLATION, 5) },
    ];
    const problems = diagnose(facts({ kernelDevices })).problems;
    assert.deepEqual(
      problems.map((p) => (p.kind === 'dead-ublk-device' ? [p.id, p.owner, p.detail] : p.kind)),
      [
        [2, 'this installation', 'stopped but never deleted'],
        [3, 'this installation', 'quiesced, and the running daemon does not serve it (a daemon deletes such devices when it starts)'],
        [4, 'other', "its server 99 is gone but the kernel has not quiesced it: if that lasts more than a few seconds, the kernel lost one of its requests and only a reboot frees it (its I/O waits; STOP_DEV or DEL_DEV would hang)"],
        [5, 'this installation', 'served by process 777, which is not this installation\'s daemon'],
      ],
    );
    assert.match(formatDoctorReport({ problems }), /^dead ublk device 4 \(\/dev\/ublkb4\), not this installation's \(mark 0x[0-9a-f]+: another ublk server or ublk-dm installation\): its server 99 is gone but /m);
  });

  it('with no daemon running, a quiesced device of ours waits for the next daemon', () => {
    const problems = diagnose(facts({ daemon: undefined, kernelDevices: [{ id: 0, state: 'quiesced', serverPid: 99, serverFlags: mark(INSTALLATION, 1) }] })).problems;
    assert.equal(problems.length, 1);
    assert.match(formatDoctorReport({ problems }), /dead ublk device 0 .*this installation's: quiesced, waiting for the next daemon/);
  });

  it('a device of ours still LIVE with its server gone may be wedged in the kernel: said so, with or without a daemon', () => {
    const kernelDevices: KernelUblkDevice[] = [{ id: 6, state: 'live', serverPid: 99, serverFlags: mark(INSTALLATION, 6) }];
    for (const daemon of [undefined, { devices: [], failures: [] }]) {
      const problems = diagnose(facts({ daemon, kernelDevices })).problems;
      assert.equal(problems.length, 1);
      assert.match(formatDoctorReport({ problems }), /dead ublk device 6 .*this installation's: its server 99 is gone but the kernel has not quiesced it: if that lasts more than a few seconds, the kernel lost one of its requests and only a reboot frees it/);
    }
  });

  it('lists stale links: to a missing node, to a device the daemon does not have, to the wrong device; none it cannot judge without a daemon', () => {
    const links = [
      { path: '/dev/ublk-dm/gone', name: 'gone', target: '/dev/ublkb9', targetExists: false },
      { path: '/dev/ublk-dm/old', name: 'old', target: '/dev/ublkb1', targetExists: true },
      { path: '/dev/mapper/vol', name: 'vol', target: '/dev/ublkb1', targetExists: true },
    ];
    const withDaemon = diagnose(facts({ links, daemon: { devices: [served], failures: [] } }));
    assert.equal(
      formatDoctorReport(withDaemon),
      'stale link /dev/ublk-dm/gone -> /dev/ublkb9: /dev/ublkb9 does not exist\n' +
        'stale link /dev/ublk-dm/old -> /dev/ublkb1: the daemon has no device old\n' +
        'stale link /dev/mapper/vol -> /dev/ublkb1: vol is /dev/ublkb0\n',
    );
    assert.deepEqual(diagnose(facts({ links, daemon: undefined })).problems.map((p) => p.kind === 'stale-link' && p.path), ['/dev/ublk-dm/gone']);
  });

  it('lists unreadable saved tables and saved devices the daemon could not restore, each once', () => {
    const report = diagnose(
      facts({
        unreadableSaved: [{ file: '/var/lib/ublk-dm/torn.json', error: 'Unexpected end of JSON input' }],
        daemon: {
          devices: [],
          failures: [
            { name: 'torn', state: 'failed', reason: 'its saved table /var/lib/ublk-dm/torn.json cannot be read: Unexpected end of JSON input' },
            { name: 'upper', state: 'failed', reason: 'its lower device lower (/dev/ublkb0 when it was created) is not there' },
          ],
        },
      }),
    );
    assert.equal(
      formatDoctorReport(report),
      'unreadable saved table /var/lib/ublk-dm/torn.json: Unexpected end of JSON input\n' +
        'saved device upper was not restored: its lower device lower (/dev/ublkb0 when it was created) is not there\n',
    );
  });

  it('a kernel it cannot ask is a problem too, not a clean bill', () => {
    const report = diagnose(facts({ kernelDevices: { error: 'cannot open /dev/ublk-control: EACCES' } }));
    assert.equal(formatDoctorReport(report), "cannot check the kernel's ublk devices: cannot open /dev/ublk-control: EACCES\n");
  });
});
