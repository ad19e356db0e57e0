#!/usr/bin/env bash
# Two builds of ublk-dm side by side in one guest boot (issue 11): which is faster, with the
# boot-to-boot swing of TCG taken out. Both daemons run at once, each with a null, a linear and
# a blk device (depth 128, 1 queue unless --queues says otherwise; linear over its own 1 GiB file
# in the guest's /dev/shm, whose data ublk copies in place; blk, linear over a loop device of
# another such file, so its I/O goes through io_uring as on a real disk); fio runs short passes
# that alternate between the two builds' devices (ABBA), so drift hits both alike.
#
#   tools/ab-guest.sh [--pairs N] [--seconds S] [--queues N] [--cpus LIST] [--cells "null:randread:1 blk:randwrite:32 ..."] DIR_A DIR_B
#
# --queues N serves every device with N queues; --cpus LIST (say 0,2) brings those of the guest's
# possible CPUs online and the others offline first, as the bench's queue part does, so that
# blk-mq maps the CPUs of a cell's fio jobs to different queues of a 2-queue device.
#
# A cell is KIND:RW:QD, or KIND:RW:QD:JOBS for JOBS fio jobs at QD each, one pinned to each
# online CPU in turn (the bench's queue part loads a device so: the guest's CPUs all busy, where
# the daemon's CPU per I/O sets the IOPS), or KIND:RW:QD:JOBS:BS for a block size other than 4k.
#
# DIR_A and DIR_B are checkouts set up with tools/setup.sh (a `git worktree add` of the commit to
# compare, say). The builds run twice, the second time each in the other's daemon slot, N pairs
# of passes each time (default 6). Prints every pass, then per cell the median IOPS of each, B/A
# as the geometric mean of the two halves' (which cancels the slots' own bias; each half's is
# shown too), the range of the pairs' B/A and in how many pairs B was ahead. The same follows for
# the daemon's CPU time per I/O (all its threads, from schedstat): whether a change saves the
# daemon work, which at QD 32 (the guest's two CPUs shared by fio, the daemon and a loop device's
# worker) is what IOPS come from. Its passes swing about as much as IOPS under TCG; at QD 1 a
# polling thread spends CPU on purpose, so there it says how much, not which build is faster.
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=6 seconds=2 cells='null:randread:1 null:randread:32 linear:randwrite:1 linear:randwrite:32' in_guest=0 queues=1 cpus=''
while [[ $# -gt 0 ]]; do
  case $1 in
    --pairs) pairs=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --cells) cells=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --in-guest) in_guest=1; shift ;;
    -*) sed -n '2,28p' "$0" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -eq 2 ]] || { sed -n '2,28p' "$0" >&2; exit 2; }
dirs=( "$(realpath "$1")" "$(realpath "$2")" )

if [[ $in_guest -eq 0 ]]; then
  for dir in "${dirs[@]}"; do
    [[ -f $dir/dist/.built && -f $dir/build/Release/ublkdm_native.node ]] || { echo "ab-guest: $dir is not built (tools/setup.sh there)" >&2; exit 1; }
  done
  # 10 GiB, as the bench: up to four 1 GiB written files on the guest's /dev/shm (half its memory).
  exec env UBLK_DM_GUEST_MAX_CPUS="${UBLK_DM_GUEST_MAX_CPUS:-4}" tools/guest-run --mem "${UBLK_DM_GUEST_MEM:-10240}" -- \
    bash tools/ab-guest.sh --in-guest --pairs "$pairs" --seconds "$seconds" --queues "$queues" --cpus "$cpus" --cells "$cells" "${dirs[@]}"
fi

if [[ -n $cpus ]]; then
  source tools/guest-cpus.sh
  guest_online_cpus ab-guest "$cpus"
fi

# Two halves, each `pairs` pairs: in the first, slot 1 runs DIR_A's build and slot 2 DIR_B's; in
# the second they swap. What differs between the slots (which daemon started first, its devices'
# numbers, where the scheduler put its queue thread) is a bias of its own (an untouched control
# has read 0.85 on one side), and the geometric mean of the two halves' B/A cancels it.
declare -A null_dev linear_dev blk_dev daemon_pid loop_dev slot_dir
slot_env() { # slot
  export UBLK_DM_RUN_DIR=/tmp/ab$1/run UBLK_DM_STATE_DIR=/tmp/ab$1/state UBLK_DM_LINK_DIR=/tmp/ab$1/links
}
for slot in 1 2; do
  mkdir -p "/tmp/ab$slot"
  # Written through, not sparse: a read of a tmpfs hole copies the shared zero page.
  dd if=/dev/zero of="/dev/shm/ab-backing-$slot" bs=1M count=1024 status=none
  if [[ $cells == *blk:* ]]; then
    dd if=/dev/zero of="/dev/shm/ab-loop-$slot" bs=1M count=1024 status=none
    loop_dev[$slot]=$(losetup --direct-io=on -f --show "/dev/shm/ab-loop-$slot")
  fi
done
start_slot() { # slot dir
  local slot=$1 dir=$2
  slot_env "$slot"
  slot_dir[$slot]=$dir
  ( cd "$dir" && exec node bin/ublk-dm daemon >> "/tmp/ab$slot/daemon.log" 2>&1 ) &
  daemon_pid[$slot]=$!
  for _ in $(seq 60); do [[ -S $UBLK_DM_RUN_DIR/ublk-dm.sock ]] && break; sleep 0.5; done
  null_dev[$slot]=$(cd "$dir" && node bin/ublk-dm create "abnull$slot" --table "0 2097152 null" --queues "$queues" --depth 128)
  linear_dev[$slot]=$(cd "$dir" && node bin/ublk-dm create "ablinear$slot" --table "0 2097152 linear /dev/shm/ab-backing-$slot 0" --queues "$queues" --depth 128)
  if [[ $cells == *blk:* ]]; then
    blk_dev[$slot]=$(cd "$dir" && node bin/ublk-dm create "abblk$slot" --table "0 2097152 linear ${loop_dev[$slot]} 0" --queues "$queues" --depth 128)
  fi
}
stop_slot() { # slot
  slot_env "$1"
  (cd "${slot_dir[$1]}" && node bin/ublk-dm shutdown --remove-devices > /dev/null)
  wait "${daemon_pid[$1]}" || true
  # The next daemon in this slot starts afresh: shutdown keeps saved tables, which it would restore.
  rm -rf "/tmp/ab$1/run" "/tmp/ab$1/state" "/tmp/ab$1/links"
}

cpu_ns() { # pid: nanoseconds on CPU of all its threads so far
  local total=0 ns rest f
  for f in /proc/"$1"/task/*/schedstat; do read -r ns rest < "$f" 2>/dev/null && total=$((total + ns)); done
  echo "$total"
}
pass() { # device rw qd pid jobs bs: IOPS and the daemon's CPU microseconds per I/O
  local before after jobs=()
  [[ ${5:-1} -gt 1 ]] && jobs=(--numjobs="$5" --group_reporting --cpus_allowed="$(cat /sys/devices/system/cpu/online)" --cpus_allowed_policy=split)
  before=$(cpu_ns "$4")
  fio --name=ab --filename="$1" --allow_file_create=0 --ioengine=io_uring --direct=1 --rw="$2" --bs="${6:-4k}" \
    --iodepth="$3" "${jobs[@]}" --time_based --runtime="$seconds" --size=100% --randrepeat=0 --norandommap --output-format=json > /tmp/ab-fio.json
  after=$(cpu_ns "$4")
  node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).jobs[0];
    const ios = j.read.total_ios + j.write.total_ios;
    console.log(Math.round(j.read.iops + j.write.iops), (Number(process.argv[2]) / 1000 / Math.max(ios, 1)).toFixed(1))' /tmp/ab-fio.json $((after - before))
}
results=$(mktemp)
for half in 1 2; do
  # The slot each build runs in this half.
  declare -A slot_of=([A]=$half [B]=$((3 - half)))
  start_slot "${slot_of[A]}" "${dirs[0]}"
  start_slot "${slot_of[B]}" "${dirs[1]}"
  for pair in $(seq "$pairs"); do
    order='A B'; (( pair % 2 == 0 )) && order='B A'
    for v in $order; do
      slot=${slot_of[$v]}
      for cell in $cells; do
        IFS=: read -r kind rw qd njobs bs <<< "$cell"
        case $kind in
          null) dev=${null_dev[$slot]} ;;
          blk) dev=${blk_dev[$slot]} ;;
          *) dev=${linear_dev[$slot]} ;;
        esac
        echo "$half $pair $v $cell $(pass "$dev" "$rw" "$qd" "${daemon_pid[$slot]}" "${njobs:-1}" "${bs:-4k}")" | tee -a "$results"
      done
    done
  done
  stop_slot 1
  stop_slot 2
done
node -e '
  const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => l.split(" "));
  const { formatSpread, median, roundRatios } = require("./dist/tools/bench-rounds");
  for (const cell of [...new Set(rows.map((r) => r[3]))]) {
    const of = (half, v, column) =>
      rows.filter((r) => r[0] === half && r[3] === cell && r[2] === v).map((r) => Number(r[column]));
    const report = (label, column, better) => {
      // In pair order: the two passes of a pair ran next to each other, so their ratio is the one
      // drift hit least; the range of those ratios is the noise a B/A is read against.
      const halves = ["1", "2"].map((half) => {
        const a = of(half, "A", column), b = of(half, "B", column);
        return { a, b, ratio: median(b) / median(a), pairRatios: roundRatios(b, a) };
      });
      const pairRatios = halves.flatMap((h) => h.pairRatios);
      const ahead = pairRatios.filter((ratio) => better(ratio)).length;
      const a = median(halves.flatMap((h) => h.a)), b = median(halves.flatMap((h) => h.b));
      const shown = (value) => (Number.isInteger(value) ? String(value) : value.toFixed(1)).padStart(7);
      console.log(`${label.padEnd(30)} A ${shown(a)}  B ${shown(b)}  B/A ${Math.sqrt(halves[0].ratio * halves[1].ratio).toFixed(2)}` +
        ` (halves ${halves[0].ratio.toFixed(2)}, ${halves[1].ratio.toFixed(2)})  pairs ${formatSpread(pairRatios)}, B ahead in ${ahead} of ${pairRatios.length}`);
    };
    report(cell, 4, (ratio) => ratio > 1);
    report(`${cell} cpu us/IO`, 5, (ratio) => ratio < 1);
  }' "$results"
