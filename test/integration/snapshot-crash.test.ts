/**
 * A snapshot survives the daemon being killed in the middle of origin writes: after a restart the
 * snapshot reads exactly its point-in-time image (every copy-out the origin write waited for was
 * committed first; any other was never let through to the origin).
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox, mustSh, requireRealUblk, sleep } from './harness';

const BLOCKS = 4096; // 16 MiB of 4 KiB blocks

/** A node one-liner that checks every 4 KiB block of a device starts with `<letter><block number>`, and prints the mismatches. */
function checkScript(device: string, letters: string): string {
  return `node -e 'const fs=require("fs");const fd=fs.openSync("${device}","r");const b=Buffer.alloc(4096);let bad=[];` +
    `for(let i=0;i<${BLOCKS};i++){fs.readSync(fd,b,0,4096,i*4096);const s=b.toString("latin1",0,8);const n=String(i).padStart(7,"0");` +
    `if(!"${letters}".split("").some((l)=>s===l+n))bad.push(i+":"+JSON.stringify(s));}console.log(bad.slice(0,10).join(" ")+" ("+bad.length+" bad)")'`;
}

describe('integration: a snapshot across a daemon crash', function () {
  let box: Sandbox;

  before(function () {
    requireRealUblk();
    box = new Sandbox('snapcrash');
  });
  after(async function () {
    await box?.cleanup();
  });

  it('SIGKILL during origin writes: after restart the snapshot reads its point-in-time image, the origin old or new per block', async function () {
    const originFile = join(box.dir, 'origin.img');
    await mustSh(`node -e 'const fs=require("fs");const fd=fs.openSync("${originFile}","w");const b=Buffer.alloc(4096);for(let i=0;i<${BLOCKS};i++){b.fill(0);b.write("O"+String(i).padStart(7,"0"));fs.writeSync(fd,b,0,4096,i*4096)}'`);
    await box.create('base', `0 ${BLOCKS * 8} linear ${originFile} 0`);
    await box.ok(['snapshot', 'create', 'snap', '--origin', 'base', '--cow', join(box.dir, 'cow.img'), '--size', '24m', '--chunk', '4k']);
    const base = JSON.parse(await box.ok(['ls', '--json'])).find((d: { name: string }) => d.name === 'base').blockPath as string;

    // Four writers stamping N<block> over random blocks with O_DIRECT. The kill does not fail
    // their writes: the kernel holds them (ublk user recovery) until the next daemon serves them,
    // and the writers' SIGKILL takes effect once the write they wait on completes.
    const writer = spawn('bash', ['-c', `for w in 1 2 3 4; do (while true; do i=$((RANDOM % ${BLOCKS})); printf 'N%07d' $i | dd of=${base} bs=4096 seek=$i count=1 conv=sync oflag=direct status=none 2>/dev/null || exit 0; done) & done; wait`], { stdio: 'ignore', detached: true });
    await sleep(4000);
    const pid = Number((await readFile(join(box.env.UBLK_DM_RUN_DIR!, 'ublk-dm.pid'), 'utf8')).trim());
    process.kill(pid, 'SIGKILL');
    await sleep(500);
    process.kill(-writer.pid!, 'SIGKILL');

    // The next CLI call starts a daemon, which reattaches to both devices and rebuilds their
    // tables from what is saved (the snapshot's exceptions from its COW).
    const listed = JSON.parse(await box.ok(['ls', '--json'])) as Array<{ name: string; blockPath: string }>;
    assert.deepEqual(listed.map((d) => d.name), ['base', 'snap']);
    assert.equal(listed.find((d) => d.name === 'base')!.blockPath, base, 'the origin is the same device');
    const status = (await box.ok(['status', 'snap'])).trim();
    assert.match(status, /^0 32768 snapshot \d+\/49152 \d+$/, 'valid, with exceptions');
    const snap = listed.find((d) => d.name === 'snap')!.blockPath;
    assert.equal((await mustSh(checkScript(snap, 'O'))).trim(), '(0 bad)', 'the snapshot holds only the original blocks');
    assert.equal((await mustSh(checkScript(listed.find((d) => d.name === 'base')!.blockPath, 'ON'))).trim(), '(0 bad)', 'the origin holds old or new blocks, nothing torn');
    assert.notEqual(status.split(' ')[3], '16/49152', 'the writer got copy-outs committed before the kill');
  });
});
