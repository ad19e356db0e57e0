import assert from 'node:assert/strict';
import { NO_DEVICES, formatDeviceList, formatInfo, formatTableReports, formatTargetLine } from '../../../src/cli/format';
import type { DeviceInfo } from '../../../src/wire/protocol';

const info: DeviceInfo = {
  name: 'vol0',
  suspended: false,
  readOnly: false,
  readAheadSectors: 256,
  liveTable: true,
  inactiveTable: false,
  openCount: 0,
  eventNumber: 0,
  major: 259,
  minor: 3,
  targetCount: 1,
  sizeSectors: 2048,
  blockPath: '/dev/ublkb0',
  queues: 1,
  depth: 128,
};

describe('format (dmsetup output)', () => {
  it('keeps the space after the target type when the status text is empty', () => {
    assert.equal(formatTargetLine({ startSector: 0, lengthSectors: 2097152, type: 'linear', text: '' }), '0 2097152 linear \n');
  });

  it('prints a table line as "<start> <len> <type> <text>"', () => {
    assert.equal(
      formatTargetLine({ startSector: 2048, lengthSectors: 1024, type: 'linear', text: '7:0 384' }),
      '2048 1024 linear 7:0 384\n',
    );
  });

  it('prints a named device table without name prefixes', () => {
    const out = formatTableReports(
      [{ name: 'vol0', targets: [
        { startSector: 0, lengthSectors: 8, type: 'zero', text: '' },
        { startSector: 8, lengthSectors: 8, type: 'error', text: '' },
      ] }],
      false,
    );
    assert.equal(out, '0 8 zero \n8 8 error \n');
  });

  it('prefixes every line with "<name>: " when listing all devices', () => {
    const out = formatTableReports(
      [
        { name: 'a', targets: [{ startSector: 0, lengthSectors: 8, type: 'zero', text: '' }] },
        { name: 'b', targets: [{ startSector: 0, lengthSectors: 16, type: 'linear', text: '7:0 0' }] },
      ],
      true,
    );
    assert.equal(out, 'a: 0 8 zero \nb: 0 16 linear 7:0 0\n');
  });

  it('says "No devices found" for an empty all-devices listing, and nothing for an empty table', () => {
    assert.equal(formatTableReports([], true), 'No devices found\n');
    assert.equal(formatTableReports([{ name: 'a', targets: [] }], false), '');
  });

  it('lists devices as "<name>\\t(<major>:<minor>)"', () => {
    assert.equal(
      formatDeviceList([
        { name: 'a', major: 259, minor: 0, blockPath: '/dev/ublkb0' },
        { name: 'bb', major: 259, minor: 12, blockPath: '/dev/ublkb12' },
      ]),
      'a\t(259:0)\nbb\t(259:12)\n',
    );
    assert.equal(formatDeviceList([]), NO_DEVICES);
  });

  it('lists a saved device that was not restored after the live ones, with why in place of its numbers', () => {
    const failed = [{ name: 'gone', state: 'failed' as const, reason: 'cannot open /img/gone.img: ENOENT' }];
    assert.equal(
      formatDeviceList([{ name: 'a', major: 259, minor: 0, blockPath: '/dev/ublkb0' }], failed),
      'a\t(259:0)\ngone\t(not restored: cannot open /img/gone.img: ENOENT)\n',
    );
    assert.equal(formatDeviceList([], failed), 'gone\t(not restored: cannot open /img/gone.img: ENOENT)\n', 'not "No devices found"');
    assert.equal(
      formatInfo([], true, failed, '/var/lib/ublk-dm'),
      'Name:              gone\n' +
        'State:             NOT RESTORED\n' +
        'Reason:            cannot open /img/gone.img: ENOENT\n' +
        'Saved table:       /var/lib/ublk-dm/gone.json\n' +
        '\n',
    );
  });

  it('prints the info long form with dmsetup field names and alignment', () => {
    assert.equal(
      formatInfo([info], false),
      'Name:              vol0\n' +
        'State:             ACTIVE\n' +
        'Read Ahead:        256\n' +
        'Tables present:    LIVE\n' +
        'Open count:        0\n' +
        'Event number:      0\n' +
        'Major, minor:      259, 3\n' +
        'Number of targets: 1\n' +
        '\n',
    );
  });

  it('shows SUSPENDED, READ-ONLY and LIVE & INACTIVE, and leaves out an unknown read-ahead', () => {
    const { readAheadSectors: _unknown, ...rest } = info;
    const out = formatInfo([{ ...rest, suspended: true, readOnly: true, inactiveTable: true, openCount: 2, eventNumber: 7 }], false);
    assert.equal(
      out,
      'Name:              vol0\n' +
        'State:             SUSPENDED (READ-ONLY)\n' +
        'Tables present:    LIVE & INACTIVE\n' +
        'Open count:        2\n' +
        'Event number:      7\n' +
        'Major, minor:      259, 3\n' +
        'Number of targets: 1\n' +
        '\n',
    );
  });

  it('prints one blank-line-terminated block per device, or "No devices found"', () => {
    const out = formatInfo([info, { ...info, name: 'vol1', minor: 4 }], true);
    assert.equal(out.split('\n\n').length, 3);
    assert.match(out, /^Name: {14}vol0\n/);
    assert.match(out, /\n\nName: {14}vol1\n/);
    assert.equal(formatInfo([], true), NO_DEVICES);
  });
});
