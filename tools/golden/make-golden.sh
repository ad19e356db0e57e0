#!/usr/bin/env bash
# Makes the golden COW images in test/golden/ with the real kernel's dm-snapshot (6.12), so the
# persistent store is tested against bytes the kernel wrote, not against our reading of the spec.
# Run it in the guest:   tools/guest-run -- bash tools/golden/make-golden.sh
# It reproduces the captures of spec/snapshot.md §9.1, 9.2, 9.3, 9.5 (P 0), 9.6 (rollover and
# merge), 9.7 (two chunk sizes) and a merge stopped half way (§9.9's slow merge).
#
# Each image is saved gzipped (the data chunks are 8-byte tags repeated, so they shrink to almost
# nothing) as NAME.img.gz, beside NAME.json holding what the kernel printed and the exceptions
# the write sequence must have created. Origin 4 KiB block i holds "O%07d" repeated, new origin
# data "N%07d", snapshot writes "S%07d": every COW data chunk therefore names the chunk it came from.
set -euo pipefail
trap 'echo "make-golden: failed at line $LINENO" >&2' ERR
[[ ${UBLK_DM_IN_GUEST:-} == 1 ]] || { echo "make-golden: run me in the guest (tools/guest-run -- bash $0)" >&2; exit 2; }
out=$(cd "$(dirname "$0")/../.." && pwd)/test/golden
work=$(mktemp -d /tmp/golden.XXXXXX)
cd "$work"
kernel=$(uname -r)

# Pattern files: 1024 blocks of 4 KiB (= the 4 MiB origin).
node -e '
  const fs = require("fs");
  for (const letter of ["O", "N", "S", "W"]) {
    const file = Buffer.alloc(1024 * 4096);
    for (let block = 0; block < 1024; block++) {
      const tag = letter + String(block).padStart(7, "0");
      for (let o = 0; o < 4096; o += 8) file.write(tag, block * 4096 + o, "latin1");
    }
    fs.writeFileSync(letter + ".bin", file);
  }'

loops=()
new_loop() { # FILE -> prints /dev/loopN
  local dev; dev=$(losetup -f --show "$1"); loops+=("$dev"); echo "$dev"
}
devno() { local d; d=$(stat -L -c '%t:%T' "$1"); echo "$((16#${d%:*})):$((16#${d#*:}))"; }
zero_file() { rm -f "$1"; truncate -s "$2" "$1"; }
origin_write() { dd if=N.bin of=/dev/mapper/"$1" bs=4096 skip="$2" seek="$2" count=1 oflag=direct status=none; }
snap_write() { dd if=S.bin of=/dev/mapper/"$1" bs=4096 skip="$2" seek="$2" count=1 oflag=direct status=none; }
cleanup() {
  dmsetup remove_all >/dev/null 2>&1 || true
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  loops=()
}
trap cleanup EXIT

# The exceptions a sequence of single, synchronous writes creates (spec §6.4: new chunks from 2
# upwards, skipping every area chunk). Kept here in shell, apart from the TypeScript under test.
pairs=()
allocate_all() { # CHUNK_SECTORS OLD_CHUNK... -> fills pairs[] with "old,new"
  local per_area=$(( $1 * 32 )) next=2 old; shift
  pairs=()
  for old in "$@"; do
    pairs+=("[$old,$next]")
    next=$((next + 1))
    if (( next % (per_area + 1) == 1 )); then next=$((next + 1)); fi
  done
}

# save NAME COW_FILE STATUS TABLE VALID DESCRIPTION [EXTRA_JSON]: image + expectations.
save() {
  local name=$1 cow=$2 status=$3 table=$4 valid=$5 what=$6 extra=${7:-}
  sync
  gzip -9 -n -c "$cow" > "$out/$name.img.gz"
  local list; list=$(IFS=,; echo "${pairs[*]-}")
  cat > "$out/$name.json" <<JSON
{
  "description": "$what",
  "kernel": "$kernel",
  "cowBytes": $(stat -c %s "$cow"),
  "status": "$status",
  "table": "$table",
  "valid": $valid,
  "exceptions": [$list]$extra
}
JSON
  echo "saved $name: $status"
}

# --- §9.1 / 9.2 / 9.3: COW 256 KiB, chunk 8 ------------------------------------------------
cp O.bin origin.img; zero_file cow.img 256K
o=$(new_loop origin.img); c=$(new_loop cow.img)
dmsetup create base --table "0 8192 snapshot-origin $o"
dmsetup create snap --table "0 8192 snapshot $o $c P 8"
pairs=()
save p8-fresh cow.img "$(dmsetup status snap)" "$(dmsetup table snap)" true \
  "9.1: new store, COW 256 KiB, P 8, nothing written"
origin_write base 5; origin_write base 3; origin_write base 0
snap_write snap 10
dd if=S.bin of=/dev/mapper/snap bs=512 skip=89 seek=89 count=1 oflag=direct status=none
allocate_all 8 5 3 0 10 11
save p8-writes cow.img "$(dmsetup status snap)" "$(dmsetup table snap)" true \
  "9.2: origin writes to chunks 5, 3, 0; snapshot writes: all of chunk 10, 512 B at sector 89 (chunk 11)"
dd if=N.bin of=/dev/mapper/base bs=4096 skip=20 seek=20 count=71 oflag=direct status=none
pairs=()
save p8-invalid cow.img "$(dmsetup status snap)" "$(dmsetup table snap)" false \
  "9.3: then origin writes to chunks 20..90 overflow the 62-chunk COW: invalidated (header valid = 0)"
cleanup

# --- §9.5: P 0 takes the default chunk size, 32 ----------------------------------------------
cp O.bin origin.img; zero_file cow.img 256K
o=$(new_loop origin.img); c=$(new_loop cow.img)
dmsetup create base --table "0 8192 snapshot-origin $o"
dmsetup create snap --table "0 8192 snapshot $o $c P 0"
status=$(dmsetup status snap); table=$(dmsetup table snap)
dmsetup remove snap
dmsetup create snap --table "0 8192 snapshot $o $c P 16"
pairs=()
save p0-default cow.img "$status" "$table" true \
  "9.5: new store loaded with table chunk size 0 (default 32); reloading it as P 16 prints the header's 32" \
  ",
  \"reloadedAsP16\": { \"status\": \"$(dmsetup status snap)\", \"table\": \"$(dmsetup table snap)\" }"
cleanup

# --- §9.6: area rollover (COW 2 MiB, E = 256), then a merge by handover ----------------------
cp O.bin origin.img; zero_file cow.img 2M
o=$(new_loop origin.img); c=$(new_loop cow.img)
dmsetup create base --table "0 8192 snapshot-origin $o"
dmsetup create snap --table "0 8192 snapshot $o $c P 8"
olds=()
for i in $(seq 0 259); do origin_write base "$i"; olds+=("$i"); done
snap_write snap 600; olds+=(600)
allocate_all 8 "${olds[@]}"
save p8-rollover cow.img "$(dmsetup status snap)" "$(dmsetup table snap)" true \
  "9.6: COW 2 MiB, origin writes to chunks 0..259 then a snapshot write to chunk 600: area 0 full, area 1 holds 5"
dmsetup suspend snap; dmsetup suspend base
dmsetup load base --table "0 8192 snapshot-merge $o $c P 8"
dmsetup resume base
for _ in $(seq 600); do [[ $(dmsetup status base) == "0 8192 snapshot-merge 16/4096 16" ]] && break; sleep 0.1; done
merge_status=$(dmsetup status base)
dmsetup remove snap; dmsetup remove base
pairs=()
save p8-merged cow.img "$merge_status" "0 8192 snapshot-merge $(devno "$o") $(devno "$c") P 8" true \
  "9.6: the rollover store after a complete merge by handover: areas 0 and 1 all zero, header unchanged"
cleanup

# --- A merge stopped half way (§9.9's slow merge): origin writes delayed 300 ms --------------
cp O.bin origin.img; zero_file cow.img 1M
o=$(new_loop origin.img); c=$(new_loop cow.img)
dmsetup create dly --table "0 8192 delay $o 0 0 $o 0 300"
dly=$(devno /dev/mapper/dly)
dmsetup create base --table "0 8192 snapshot-origin $dly"
dmsetup create snap --table "0 8192 snapshot $dly $c P 8"
olds=()
for i in $(seq 0 2 38); do origin_write base "$i"; olds+=("$i"); done
snap_write snap 100; olds+=(100)
before=$(dmsetup status snap)
dmsetup suspend snap; dmsetup suspend base
dmsetup load base --table "0 8192 snapshot-merge $dly $c P 8"
dmsetup resume base
sleep 2
dmsetup suspend base   # presuspend stops the merge after the step in flight
dmsetup remove snap; dmsetup remove base
# Load what is left as a plain snapshot (reads metadata, writes nothing) for its status.
dmsetup create snap --table "0 8192 snapshot $dly $c P 8"
status=$(dmsetup status snap)
# Merging runs newest first, so what is left is the oldest records: new chunks below next_free.
used=${status##* snapshot }; used=${used%%/*}
next_free=$((used / 8))
allocate_all 8 "${olds[@]}"
kept=()
for p in "${pairs[@]}"; do n=${p#*,}; n=${n%]}; if (( n < next_free )); then kept+=("$p"); fi; done
pairs=("${kept[@]}")
save p8-half-merged cow.img "$status" "$(dmsetup table snap)" true \
  "9.9-style slow merge stopped by a suspend after 2 s: origin writes to chunks 0,2,..,38 and a snapshot write to chunk 100 ($before), the newest records merged and zeroed" \
  ",
  \"beforeMerge\": { \"status\": \"$before\", \"oldChunks\": [$(IFS=,; echo "${olds[*]}")] }"
cleanup

# --- §9.7: two snapshots of one origin, chunk 16 and chunk 8 ---------------------------------
cp O.bin origin.img; zero_file cow16.img 1M; zero_file cow8.img 1M
o=$(new_loop origin.img); c16=$(new_loop cow16.img); c8=$(new_loop cow8.img)
dmsetup create base --table "0 8192 snapshot-origin $o"
dmsetup create s16 --table "0 8192 snapshot $o $c16 P 16"
dmsetup create s8 --table "0 8192 snapshot $o $c8 P 8"
dmsetup suspend base; dmsetup resume base
origin_write base 33
allocate_all 16 16
save p16-one-write cow16.img "$(dmsetup status s16)" "$(dmsetup table s16)" true \
  "9.7: P 16 snapshot beside a P 8 one; one 4 KiB origin write at 4 KiB block 33 (chunk 16 of 8 KiB)"
allocate_all 8 33
save p8-one-write cow8.img "$(dmsetup status s8)" "$(dmsetup table s8)" true \
  "9.7: P 8 snapshot beside a P 16 one; one 4 KiB origin write at 4 KiB block 33"
cleanup
echo "golden images written to $out"
