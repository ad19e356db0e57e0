/**
 * The tables the pair parts of `npm run bench` build on both sides (bench-pairs.ts): striped over
 * 4 stripes (issue 9), flakey always up (as xfstests runs it between its drops), and a linear
 * reloaded as a 2-leg mirror and resynced (as `lvconvert -m1` makes one), the three that queue
 * threads serve through views.
 */
import type { DevicePair, SideContext } from './bench-pairs';
import { pollStatus } from './bench-pairs';
import { sh } from './bench-common';
import { mirrorInSync } from './bench-mirror';
import type { Send } from '../src/cli/snapshot';

const STRIPES = 4;
const STRIPE_MIB = 64;
const CHUNK_SECTORS = 128;
const DEVICE_MIB = 256;
const sectorsOfMiB = (mib: number) => (mib * 1024 * 1024) / 512;

/** Creates ours from a table and undoes it at the end; resolves to its block path. */
async function createOurs(ctx: SideContext, send: Send, name: string, table: string): Promise<string> {
  const created = await send({ verb: 'create', name, table, options: { readOnly: false } });
  ctx.defer(() => send({ verb: 'remove', name }));
  return created.blockPath;
}

async function createKernel(ctx: SideContext, name: string, table: string): Promise<string> {
  await sh(`dmsetup create ${name} --table '${table}'`);
  ctx.defer(() => sh(`dmsetup remove --retry ${name}`));
  return `/dev/mapper/${name}`;
}

export function stripedPair(): DevicePair {
  const table = (areas: readonly string[]) =>
    `0 ${sectorsOfMiB(STRIPES * STRIPE_MIB)} striped ${STRIPES} ${CHUNK_SECTORS} ${areas.map((a) => `${a} 0`).join(' ')}`;
  return {
    name: 'bench-striped',
    title: `striped, ${STRIPES} stripes of ${STRIPE_MIB} MiB, chunk ${CHUNK_SECTORS} sectors (ours/dm-striped)`,
    kernelName: 'dm-striped',
    files: Array.from({ length: STRIPES }, () => ({ mib: STRIPE_MIB, content: 'random' as const })),
    kernel: (ctx) => createKernel(ctx, 'bench-striped', table(ctx.backing)),
    ours: (ctx, send) => createOurs(ctx, send, 'bench-striped', table(ctx.backing)),
  };
}

export function flakeyPair(): DevicePair {
  // up 3600 s, down 0: never down, the flakey device xfstests writes through between its drops.
  const table = (dev: string) => `0 ${sectorsOfMiB(DEVICE_MIB)} flakey ${dev} 0 3600 0`;
  return {
    name: 'bench-flakey',
    title: `flakey, always up, over one ${DEVICE_MIB} MiB file (ours/dm-flakey)`,
    kernelName: 'dm-flakey',
    files: [{ mib: DEVICE_MIB, content: 'random' }],
    kernel: (ctx) => createKernel(ctx, 'bench-flakey', table(ctx.backing[0]!)),
    ours: (ctx, send) => createOurs(ctx, send, 'bench-flakey', table(ctx.backing[0]!)),
  };
}

/**
 * A linear over leg A reloaded as a mirror of A and an empty leg B with a disk log, then resynced
 * before fio: reads go to the default leg A, writes to both legs through the log.
 */
export function reloadedMirrorPair(regionSectors: number): DevicePair {
  const sectors = sectorsOfMiB(DEVICE_MIB);
  const linear = (legA: string) => `0 ${sectors} linear ${legA} 0`;
  const mirror = ([legA, legB, log]: readonly string[]) => `0 ${sectors} mirror disk 2 ${log} ${regionSectors} 2 ${legA} 0 ${legB} 0`;
  const name = 'bench-rmirror';
  return {
    name,
    title: `mirror reloaded from a linear (lvconvert -m1), 2 legs of ${DEVICE_MIB} MiB, disk log, region ${regionSectors} sectors, in sync (ours/dm-mirror)`,
    kernelName: 'dm-mirror',
    files: [{ mib: DEVICE_MIB, content: 'random' }, { mib: DEVICE_MIB, content: 'zeros' }, { mib: 1, content: 'zeros' }],
    kernel: async (ctx) => {
      const path = await createKernel(ctx, name, linear(ctx.backing[0]!));
      await sh(`dmsetup reload ${name} --table '${mirror(ctx.backing)}' && dmsetup resume ${name}`);
      await pollStatus(() => sh(`dmsetup status ${name}`), mirrorInSync, 600);
      return path;
    },
    ours: async (ctx, send) => {
      const path = await createOurs(ctx, send, name, linear(ctx.backing[0]!));
      await send({ verb: 'reload', name, table: mirror(ctx.backing) });
      await send({ verb: 'resume', name });
      await pollStatus(async () => (await send({ verb: 'status', name }))[0]!.targets[0]!.text, mirrorInSync, 600);
      return path;
    },
  };
}
