import * as path from 'node:path';
import type { DeviceInfo, DeviceListEntry, FailedDevice, TableReport, TargetLine } from '../wire/protocol';

/**
 * dmsetup's text output, byte for byte (lvm2 libdm/dm-tools/dmsetup.c): the CLI renders the
 * daemon's structured answers with these, so `--json` and text show the same facts.
 */

export const NO_DEVICES = 'No devices found\n';

/** `<start> <len> <type> <text>`: dmsetup always prints a space after the type, even for empty text. */
export function formatTargetLine(line: TargetLine): string {
  return `${line.startSector} ${line.lengthSectors} ${line.type} ${line.text}\n`;
}

/**
 * `table` / `status` output. When dmsetup walks all devices (no name given) every line is
 * prefixed by `<name>: `, even if there is only one device.
 */
export function formatTableReports(reports: readonly TableReport[], allDevices: boolean): string {
  if (allDevices && reports.length === 0) return NO_DEVICES;
  let out = '';
  for (const report of reports) {
    const prefix = allDevices ? `${report.name}: ` : '';
    for (const line of report.targets) out += prefix + formatTargetLine(line);
  }
  return out;
}

/**
 * `ls`: `<name>\t(<major>:<minor>)` per device; then, ours only, each saved device that did not
 * come back, with why in place of the numbers it does not have.
 */
export function formatDeviceList(entries: readonly DeviceListEntry[], failed: readonly FailedDevice[] = []): string {
  if (entries.length === 0 && failed.length === 0) return NO_DEVICES;
  return entries.map((e) => `${e.name}\t(${e.major}:${e.minor})\n`).join('') + failed.map((f) => `${f.name}\t(not restored: ${f.reason})\n`).join('');
}

/**
 * `info` long form, one block per device, each followed by a blank line; a saved device that
 * did not come back gets a block of its own saying why (`stateDir`: where its table is saved).
 */
export function formatInfo(infos: readonly DeviceInfo[], allDevices: boolean, failed: readonly FailedDevice[] = [], stateDir?: string): string {
  if (allDevices && infos.length === 0 && failed.length === 0) return NO_DEVICES;
  return infos.map(formatInfoBlock).join('') + failed.map((f) => formatFailedBlock(f, stateDir)).join('');
}

function formatFailedBlock(failed: FailedDevice, stateDir: string | undefined): string {
  const lines = [`Name:              ${failed.name}`, 'State:             NOT RESTORED', `Reason:            ${failed.reason}`];
  if (stateDir !== undefined) lines.push(`Saved table:       ${path.join(stateDir, `${failed.name}.json`)}`);
  return lines.join('\n') + '\n\n';
}

function formatInfoBlock(info: DeviceInfo): string {
  const lines = [
    `Name:              ${info.name}`,
    `State:             ${info.suspended ? 'SUSPENDED' : 'ACTIVE'}${info.readOnly ? ' (READ-ONLY)' : ''}`,
  ];
  if (info.readAheadSectors !== undefined) lines.push(`Read Ahead:        ${info.readAheadSectors}`);
  lines.push(`Tables present:    ${tablesPresent(info)}`);
  lines.push(`Open count:        ${info.openCount}`);
  lines.push(`Event number:      ${info.eventNumber}`);
  lines.push(`Major, minor:      ${info.major}, ${info.minor}`);
  lines.push(`Number of targets: ${info.targetCount}`);
  return lines.join('\n') + '\n\n';
}

function tablesPresent(info: DeviceInfo): string {
  if (!info.liveTable && !info.inactiveTable) return 'None';
  return [info.liveTable ? 'LIVE' : '', info.inactiveTable ? 'INACTIVE' : ''].filter(Boolean).join(' & ');
}
