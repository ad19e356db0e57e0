#!/usr/bin/env bash
# What the demo does, step by step, on a machine with ublk. Each step prints the command it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/ublk-dm-demo.XXXXXX)
export UBLK_DM_RUN_DIR=$work/run UBLK_DM_STATE_DIR=$work/state
ublk_dm() { node bin/ublk-dm "$@"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
cleanup() {
  umount "$work/mnt" 2>/dev/null || true
  for n in demo-linear demo-mixed demo-error; do ublk_dm remove "$n" >/dev/null 2>&1 || true; done
  # Removing: a plain SIGTERM would leave the devices in the kernel for a next daemon.
  ublk_dm shutdown --remove-devices >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a 64 MiB file becomes a block device through a linear table"
truncate -s 64M "$work/disk.img"
dev=$(ublk_dm create demo-linear --table "0 131072 linear $work/disk.img 0")
echo "created $dev  (link: $(readlink /dev/ublk-dm/demo-linear))"
step node bin/ublk-dm ls
step node bin/ublk-dm table demo-linear
step node bin/ublk-dm info demo-linear

echo; echo "== mkfs, mount, files, umount, fsck"
step mkfs.ext4 -q -F "$dev"
mkdir -p "$work/mnt"
step mount "$dev" "$work/mnt"
for i in 1 2 3; do head -c $((i * 1000000)) /dev/urandom > "$work/mnt/file$i"; done
step ls -l "$work/mnt"
(cd "$work/mnt" && sha256sum file*) > "$work/sums"
step umount "$work/mnt"
step fsck.ext4 -fn "$dev"
step mount -o ro "$dev" "$work/mnt"
(cd "$work/mnt" && sha256sum -c "$work/sums")
umount "$work/mnt"
step cmp "$dev" "$work/disk.img" && echo "the device's bytes are the backing file's bytes"
step node bin/ublk-dm remove demo-linear

echo; echo "== linear + zero + linear in one table"
head -c 1M /dev/urandom > "$work/a.img"
ublk_dm create demo-mixed --table "0 2048 linear $work/a.img 0
2048 2048 zero
4096 2048 linear $work/a.img 0" >/dev/null
step node bin/ublk-dm table demo-mixed
echo "sector 2048..4095 reads as zeroes:"
step bash -c "dd if=/dev/ublk-dm/demo-mixed bs=512 skip=2048 count=2048 status=none | od -An -tx1 | sort -u"
echo "the two linear segments read the same bytes:"
step bash -c "cmp <(dd if=/dev/ublk-dm/demo-mixed bs=512 count=2048 status=none) <(dd if=/dev/ublk-dm/demo-mixed bs=512 skip=4096 count=2048 status=none) && echo identical"
step node bin/ublk-dm remove demo-mixed

echo; echo "== the error target fails every I/O"
ublk_dm create demo-error --table "0 2048 error" >/dev/null
step bash -c "dd if=/dev/ublk-dm/demo-error of=/dev/null bs=4k count=1 iflag=direct || echo '(dd failed, as it should)'"
step node bin/ublk-dm remove demo-error

echo; echo "== bad input is refused with a clear error"
step bash -c "node bin/ublk-dm create demo-bad --table '0 4096 linear $work/a.img 0' || echo '(refused; nothing created)'"
step node bin/ublk-dm ls
echo; echo "demo done"
