#!/usr/bin/env bash
# Makes test/golden/log-writes/kernel.log.gz with the real kernel's dm-log-writes (6.12), so our
# log-writes target and replay-log are tested against bytes the kernel wrote.
# Run it in the guest:   tools/guest-run -- bash tools/golden/make-log-writes-golden.sh
#
# The sequence (512-byte logical blocks; data "K%07d" per 4 KiB block, the block's number):
#   8 KiB write at byte 12 KiB (O_DIRECT), flush, mark "one",
#   4 KiB write at byte 64 KiB, discard of 64 KiB at byte 128 KiB, flush, mark "two",
#   4 KiB FUA-less write at byte 32 KiB left unflushed, remove (the end mark logs it).
# kernel.json holds the kernel's status line before the removal; kernel-dev.img.gz the device after it.
set -euo pipefail
trap 'echo "make-log-writes-golden: failed at line $LINENO" >&2' ERR
[[ ${UBLK_DM_IN_GUEST:-} == 1 ]] || { echo "run me in the guest (tools/guest-run -- bash $0)" >&2; exit 2; }
out=$(cd "$(dirname "$0")/../.." && pwd)/test/golden/log-writes
mkdir -p "$out"
work=$(mktemp -d /tmp/lwgolden.XXXXXX)
cd "$work"
export DM_DISABLE_UDEV=1
node -e '
  const file = Buffer.alloc(64 * 4096);
  for (let block = 0; block < 64; block++) {
    const tag = "K" + String(block).padStart(7, "0");
    for (let o = 0; o < 4096; o += 8) file.write(tag, block * 4096 + o, "latin1");
  }
  require("fs").writeFileSync("K.bin", file);'
truncate -s 1M dev.img
truncate -s 1M log.img
dev=$(losetup -f --show dev.img)
log=$(losetup -f --show log.img)
dmsetup create lwg --table "0 2048 log-writes $dev $log"
lw=/dev/mapper/lwg
# An empty flush reaches the target only through fsync (BLKFLSBUF writes back the page cache but
# sends no flush): dd's conv=fsync on the device does it.
flush() { dd if=/dev/null of=$lw conv=notrunc,fsync status=none; }
dd if=K.bin of=$lw bs=4k skip=3 seek=3 count=2 oflag=direct status=none
flush
dmsetup message lwg 0 mark one
dd if=K.bin of=$lw bs=4k skip=16 seek=16 count=1 oflag=direct status=none
blkdiscard -o 131072 -l 65536 $lw
flush
dmsetup message lwg 0 mark two
dd if=K.bin of=$lw bs=4k skip=8 seek=8 count=1 oflag=direct status=none
sleep 1
status=$(dmsetup status lwg)
dmsetup remove lwg
losetup -d "$dev" "$log"
# The whole 1 MiB log (mostly zeroes, a few KiB gzipped) and the device it describes.
gzip -9 < log.img > "$out/kernel.log.gz"
gzip -9 < dev.img > "$out/kernel-dev.img.gz"
cat > "$out/kernel.json" <<JSON
{ "kernel": "$(uname -r)", "statusBeforeRemove": "$status" }
JSON
echo "wrote $out/kernel.log.gz ($status)"
