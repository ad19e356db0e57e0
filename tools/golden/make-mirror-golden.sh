#!/usr/bin/env bash
# Makes the golden disk dirty logs in test/golden/mirror/ with the real kernel's dm-mirror (6.12),
# so disk-log.ts is tested against bytes the kernel wrote, not against our reading of the spec.
# Run it in the guest:   tools/guest-run -- bash tools/golden/make-mirror-golden.sh
# It reproduces spec/mirror.md §11.1 (new log mid-resync, then synced), §11.2 (sync, nosync, a
# grown device), a region left dirty by a write in flight, and §9.3/§11.6 (versions 1 and 3).
#
# One 64 KiB log device carries on from case to case; each saved image is the whole log device
# (gzip) as NAME.img.gz beside NAME.json: the kernel's status/table/event number at the moment
# of the copy, the table's log arguments, which image the case started from (`from`, null = a
# zeroed device; `patchVersion` when the header's version was patched first) and the clean
# regions the kernel must have left. Those are computed here from the status, apart from the
# TypeScript under test: resync runs region by region upwards, so "N/R in sync" after a resync
# that started from a known bitmap means the first regions to need it were recovered.
# Images are copied while the mirror is suspended (postsuspend has just written the bitmap), except
# the in-flight case, which is copied while a write is held by a dm-delay leg.
set -euo pipefail
trap 'echo "make-mirror-golden: failed at line $LINENO" >&2' ERR
[[ ${UBLK_DM_IN_GUEST:-} == 1 ]] || { echo "make-mirror-golden: run me in the guest (tools/guest-run -- bash $0)" >&2; exit 2; }
out=$(cd "$(dirname "$0")/../.." && pwd)/test/golden/mirror
mkdir -p "$out"
work=$(mktemp -d /tmp/mirror-golden.XXXXXX)
cd "$work"
kernel=$(uname -r)
throttle=/sys/module/dm_mirror/parameters/raid1_resync_throttle
REGION_SECTORS=64

loops=()
new_loop() { local dev; dev=$(losetup -f --show "$1"); loops+=("$dev"); echo "$dev"; }
cleanup() {
  dmsetup remove_all >/dev/null 2>&1 || true
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  loops=()
  echo 100 > "$throttle" 2>/dev/null || true
}
trap cleanup EXIT

truncate -s 4M leg0.img leg1.img
truncate -s 64K log.img
leg0=$(new_loop leg0.img); leg1=$(new_loop leg1.img); log=$(new_loop log.img)
# Leg 1 can also be reached through a delay device (writes held 3 s) for the slow cases.
dmsetup create slow1 --table "0 8192 delay $leg1 0 0 $leg1 0 3000"

in_sync() { local s; s=$(dmsetup status m); s=${s#* mirror 2 * * }; echo "${s%%/*}"; }
wait_in_sync() { # REGIONS
  for _ in $(seq 600); do [[ $(in_sync) == "$1" ]] && return 0; sleep 0.1; done
  echo "mirror never reached $1 regions in sync: $(dmsetup status m)" >&2; return 1
}
events() { dmsetup info -c --noheadings -o events m | tr -d ' '; }
# Puts a saved image back on the log device (through the loop device, as the kernel reads it),
# optionally with the header's version (le32 at byte 4) patched to VERSION first.
restore_log() { # NAME [VERSION]
  zcat "$out/$1.img.gz" > restore.img
  [[ -z ${2:-} ]] || printf "\\x$(printf %02x "$2")" | dd of=restore.img bs=1 seek=4 conv=notrunc status=none
  dd if=restore.img of="$log" bs=64K oflag=direct status=none
}

# save NAME FROM PATCH TARGET_SECTORS LOG_ARGS CLEAN_RANGES DESCRIPTION
#   CLEAN_RANGES: JSON list of half-open [first, end) region ranges whose clean bit must be 1.
save() {
  local name=$1 from=$2 patch=$3 target=$4 logargs=$5 clean=$6 what=$7
  local status table ev
  status=$(dmsetup status m); table=$(dmsetup table m); ev=$(events)
  gzip -9 -n -c log.img > "$out/$name.img.gz"
  cat > "$out/$name.json" <<JSON
{
  "description": "$what",
  "kernel": "$kernel",
  "logBytes": $(stat -c %s log.img),
  "from": $from,
  "patchVersion": $patch,
  "targetSectors": $target,
  "regionSectors": $REGION_SECTORS,
  "logArgs": "$logargs",
  "status": "$status",
  "table": "$table",
  "eventNumber": $ev,
  "cleanRanges": $clean
}
JSON
  echo "saved $name: $status (events $ev)"
}

mirror_table() { # TARGET_SECTORS LOG_ARGS [LEG1]
  echo "0 $1 mirror disk $2 2 $leg0 0 ${3:-$leg1} 0"
}

# --- §11.1: a new log on a zeroed device, resync slowed, copied mid-resync ------------------
echo 1 > "$throttle"
dmsetup create m --table "$(mirror_table 8000 "2 $log $REGION_SECTORS")"
sleep 2
dmsetup suspend m
n=$(in_sync)
save disk-midsync null null 8000 "$log $REGION_SECTORS" "[[0,$n]]" \
  "11.1: new log on a zeroed device, throttle 1, suspended mid-resync"

# --- §11.1: then resumed at full speed until every region is in sync -------------------------
echo 100 > "$throttle"
dmsetup resume m
wait_in_sync 125
dmsetup suspend m
save disk-synced '"disk-midsync"' null 8000 "$log $REGION_SECTORS" "[[0,125]]" \
  "11.1: the same log resumed (default sync) and resynchronised completely"
dmsetup remove m

# --- §11.2: sync on a complete log: every region resynchronised again ------------------------
echo 1 > "$throttle"
dmsetup create m --table "$(mirror_table 8000 "3 $log $REGION_SECTORS sync")"
sleep 1
dmsetup suspend m
n=$(in_sync)
save disk-sync '"disk-synced"' null 8000 "$log $REGION_SECTORS sync" "[[0,$n]]" \
  "11.2: sync on the complete log, throttle 1, suspended mid-resync"
dmsetup remove m
echo 100 > "$throttle"

# --- §11.2: nosync on that half-synced log: everything clean ---------------------------------
dmsetup create m --table "$(mirror_table 8000 "3 $log $REGION_SECTORS nosync")"
dmsetup suspend m
save disk-nosync '"disk-sync"' null 8000 "$log $REGION_SECTORS nosync" "[[0,125]]" \
  "11.2: nosync on the half-synced log: a new log with every region clean"
dmsetup remove m

# --- §11.2: the device grows from 125 to 128 regions; leg 1 slow so the new regions lag ------
dmsetup create m --table "$(mirror_table 8192 "2 $log $REGION_SECTORS" /dev/mapper/slow1)"
sleep 0.5
dmsetup suspend m   # waits for the region copy in flight (about 3 s)
n=$(in_sync)
save disk-grown '"disk-nosync"' null 8192 "$log $REGION_SECTORS" "[[0,$n]]" \
  "11.2: the 125-region log under an 8192-sector mirror (128 regions), new regions resynchronising over a slow leg"
dmsetup remove m

# --- a region left dirty by a write in flight (leg 1 holds writes for 3 s) --------------------
restore_log disk-nosync
dmsetup create m --table "$(mirror_table 8000 "3 $log $REGION_SECTORS nosync" /dev/mapper/slow1)"
# 4 KiB block 9 = sectors 72..79 = region 1.
dd if=/dev/urandom of=/dev/mapper/m bs=4096 seek=9 count=1 oflag=direct status=none &
writer=$!
# The dirty mark reaches the log only after the first leg flush (delayed too): wait for byte
# 1024 (regions 0-7) to lose bit 1, then copy while the data write is still held.
for _ in $(seq 100); do [[ $(od -An -tx1 -j1024 -N1 log.img | tr -d ' ') == fd ]] && break; sleep 0.1; done
save disk-inflight '"disk-nosync"' null 8000 "$log $REGION_SECTORS nosync" "[[0,1],[2,125]]" \
  "a nosync log copied while a 4 KiB write to region 1 was held by a dm-delay leg: region 1 dirty"
wait "$writer"
dmsetup remove m

# --- §9.3: version 1 is read as version 2 (little-endian host) and written back as 2 ---------
restore_log disk-nosync 1
dmsetup create m --table "$(mirror_table 8000 "2 $log $REGION_SECTORS")"
dmsetup suspend m
save disk-v1 '"disk-nosync"' 1 8000 "$log $REGION_SECTORS" "[[0,125]]" \
  "9.3: the nosync image with its version patched to 1, loaded with the default sync: accepted, written back as 2"
dmsetup remove m

# --- §11.6: version 3 fails the load: log device D, every region resynchronised, 3 kept ------
restore_log disk-nosync 3
echo 1 > "$throttle"
dmsetup create m --table "$(mirror_table 8000 "2 $log $REGION_SECTORS")"
sleep 1
dmsetup suspend m
n=$(in_sync)
save disk-v3 '"disk-nosync"' 3 8000 "$log $REGION_SECTORS" "[[0,$n]]" \
  "11.6: the nosync image with its version patched to 3: load fails (D), every region resynchronised, version 3 written back"
dmsetup remove m
echo 100 > "$throttle"
echo "mirror golden images written to $out"
