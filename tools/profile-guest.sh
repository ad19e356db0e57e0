#!/usr/bin/env bash
# Where a ublk server's CPU goes per I/O (issue 11): perf samples of our daemon (and, with
# --ublksrv, of the C server serving the same: its loop target over the same backing for a table
# of one linear segment from offset 0, its null for any other) while fio runs on its device, in
# the guest; read on the host.
#
#   tools/profile-guest.sh [--table TABLE] [--rw randread|randwrite|read|write] [--bs SIZE] [--qd N] [--jobs N] [--queues N]
#                          [--cpus LIST] [--seconds S] [--warmup S] [--ublksrv PATH/sbin/ublk] [--system]
#                          [--builtins] [--out DIR]
#
# Prints, per server, the CPU time per I/O the samples add up to, the split by DSO (kernel, ublk_drv,
# V8's JIT code, node, the addon, liburing) and the top symbols. JIT frames are named through
# node's --perf-basic-prof map; V8's builtins are not in it (node copies them next to the JIT
# code, where they show as bare addresses) unless --builtins runs the daemon with
# --no-short-builtin-calls, which leaves them in node's binary under their names (calls into them
# cost a little more). --system samples every CPU of the guest instead of the server
# alone and adds the split by command (fio, the server, kernel workers, idle as swapper): whether
# a cell is bound by the guest's CPUs or by waiting. Samples are cpu-clock (TCG has no PMU): inside
# the kernel they land where interrupts are enabled again, so kernel symbols are approximate, the
# DSO split is not. --jobs N runs N fio jobs, each at the --qd depth, one pinned to each online CPU in turn
# (the bench's queue part loads a device so; default 1, unpinned). --queues N serves both servers'
# devices with N queues (default 1); --cpus LIST (say 0,2) brings those of the guest's possible CPUs
# online and the others offline first, as the bench's queue part does, so that blk-mq maps fio's
# CPUs to different queues of a 2-queue device.
# Default table: our null over 1 GiB (a file the table names under /dev/shm is created, 1 GiB of written zeros; the
# word LOOP becomes a direct-I/O loop device over another); DIR (default .cache/profile) keeps perf.data, the JIT map and
# the guest's kallsyms for `perf report -i DIR/ours.data --kallsyms DIR/kallsyms`. Before the profiled
# run, fio runs --warmup seconds (default 3) unprofiled on each server: under TCG V8's optimizing
# compiler takes most of a second on a fresh daemon, which is start-up, not the cost of an I/O.
set -euo pipefail
cd "$(dirname "$0")/.."
table='0 2097152 null' rw=randread bs=4k qd=1 jobs=1 queues=1 cpus='' seconds=10 warmup=3 ublksrv='' out=.cache/profile in_guest=0 system=0 builtins=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --table) table=$2; shift 2 ;;
    --rw) rw=$2; shift 2 ;;
    --bs) bs=$2; shift 2 ;;
    --qd) qd=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --ublksrv) ublksrv=$(realpath "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --system) system=1; shift ;;
    --builtins) builtins=1; shift ;;
    --in-guest) in_guest=1; shift ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
  esac
done
mkdir -p "$out" && out=$(realpath "$out")

# The guest runs the host's perf binary (its / is the host's), so the host needs perf installed.
perf_ok() { command -v perf >/dev/null && perf version >/dev/null 2>&1; }

fio_job() { # device seconds: the profile's fio command line, into the array `job`
  job=(fio --name=profile --filename="$1" --allow_file_create=0 --ioengine=io_uring --direct=1 --rw="$rw" --bs="$bs"
    --iodepth="$qd" --time_based --runtime="$2" --size=100% --randrepeat=0 --norandommap --output-format=json)
  if [[ $jobs -gt 1 ]]; then
    job+=(--numjobs="$jobs" --group_reporting --cpus_allowed="$(cat /sys/devices/system/cpu/online)" --cpus_allowed_policy=split)
  fi
}

fio_under_perf() { # pid device label: warm up, then perf samples pid for as long as fio runs on device
  if [[ $warmup -gt 0 ]]; then fio_job "$2" "$warmup"; "${job[@]}" > /dev/null 2>&1; fi
  fio_job "$2" "$seconds"
  local who=(-p "$1")
  [[ $system -eq 1 ]] && who=(-a)
  perf record -q -e cpu-clock -F 999 "${who[@]}" -o "$out/$3.data" -- "${job[@]}" > "$out/$3.fio.json" 2>/dev/null
}

if [[ $in_guest -eq 1 ]]; then
  if [[ -n $cpus ]]; then
    source tools/guest-cpus.sh
    guest_online_cpus profile-guest "$cpus"
  fi
  export UBLK_DM_RUN_DIR=/tmp/profile/run UBLK_DM_STATE_DIR=/tmp/profile/state UBLK_DM_LINK_DIR=/tmp/profile/links
  rm -f "$out"/*.data "$out"/*.fio.json "$out"/perf-*.map
  # Started here rather than by the CLI, so node gets --perf-basic-prof (not allowed in NODE_OPTIONS).
  node_flags=(--perf-basic-prof)
  [[ $builtins -eq 1 ]] && node_flags+=(--no-short-builtin-calls)
  node "${node_flags[@]}" bin/ublk-dm daemon > /tmp/profile-daemon.log 2>&1 &
  daemon=$!
  trap 'node bin/ublk-dm shutdown --remove-devices >/dev/null 2>&1 || kill $daemon' EXIT
  for _ in $(seq 60); do [[ -S $UBLK_DM_RUN_DIR/ublk-dm.sock ]] && break; sleep 0.5; done
  # A backing file the table names under /dev/shm (the guest's own tmpfs) is made here, 1 GiB,
  # written through: a read of a hole in tmpfs copies the shared zero page, not a page of the file.
  for word in $table; do
    [[ $word == /dev/shm/* && ! -e $word ]] && dd if=/dev/zero of="$word" bs=1M count=1024 status=none
  done
  # The word LOOP names a loop device (direct I/O) over another such file: backing I/O through
  # io_uring, as over a disk.
  if [[ " $table " == *" LOOP "* ]]; then
    dd if=/dev/zero of=/dev/shm/profile-loop bs=1M count=1024 status=none
    loop=$(losetup --direct-io=on -f --show /dev/shm/profile-loop)
    table=${table//LOOP/$loop}
  fi
  dev=$(node bin/ublk-dm create profile --table "$table" --queues "$queues" --depth 128)
  fio_under_perf "$daemon" "$dev" ours
  cp "/tmp/perf-$daemon.map" "$out/"
  if [[ -n $ublksrv ]]; then
    read -r _ _ target backing offset rest <<< "$table"
    if [[ $target == linear && $offset == 0 && -z $rest ]]; then served=(-t loop -f "$backing"); else served=(-t null); fi
    "$ublksrv" add "${served[@]}" -n 90 -q "$queues" -d 128 >/dev/null
    for _ in $(seq 20); do [[ -b /dev/ublkb90 ]] && break; sleep 0.5; done
    fio_under_perf "$("$ublksrv" list -n 90 | sed -n 's/.*daemon pid \([0-9]*\).*/\1/p')" /dev/ublkb90 ublksrv
    "$ublksrv" del -n 90 >/dev/null
  fi
  cat /proc/kallsyms > "$out/kallsyms"
  exit 0
fi

bash tools/setup.sh
if ! perf_ok; then
  [[ $EUID -eq 0 ]] || { echo "profile-guest: need root to apt-get install linux-perf" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi
args=(--in-guest --table "$table" --rw "$rw" --bs "$bs" --qd "$qd" --jobs "$jobs" --queues "$queues" --seconds "$seconds" --warmup "$warmup" --out "$out")
[[ -n $ublksrv ]] && args+=(--ublksrv "$ublksrv")
[[ $system -eq 1 ]] && args+=(--system)
[[ $builtins -eq 1 ]] && args+=(--builtins)
[[ -n $cpus ]] && args+=(--cpus "$cpus")
if [[ -e /dev/ublk-control && $EUID -eq 0 ]]; then bash "$0" "${args[@]}"
else UBLK_DM_GUEST_MAX_CPUS=${UBLK_DM_GUEST_MAX_CPUS:-4} tools/guest-run --mem "${UBLK_DM_GUEST_MEM:-10240}" -- bash "$0" "${args[@]}"; fi

# The reports are cut with head: perf dying of SIGPIPE is not an error.
set +o pipefail
# perf looks JIT symbols up in /tmp/perf-PID.map on the machine that reads the samples.
cp "$out"/perf-*.map /tmp/ 2>/dev/null || true
for label in ours ublksrv; do
  [[ -f $out/$label.data ]] || continue
  ios=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(j["read"]["total_ios"]+j["write"]["total_ios"])' "$out/$label.fio.json")
  count=$(perf script -i "$out/$label.data" --kallsyms "$out/kallsyms" -F ip 2>/dev/null | wc -l)
  per_io=$(python3 -c "print(round($count / 999 * 1e6 / max($ios, 1), 1))")
  if [[ $system -eq 1 ]]; then what="us of the guest's CPU time per I/O, idle included"; else what="us CPU per I/O"; fi
  echo "== $label: $rw QD$qd x $jobs job(s), $queues queue(s), $ios I/Os in ${seconds}s, $count samples at 999 Hz: $per_io $what"
  if [[ $system -eq 1 ]]; then
    # Every CPU, idle included (swapper): the split by command, as microseconds per I/O.
    perf report -i "$out/$label.data" --kallsyms "$out/kallsyms" --stdio --sort comm 2>/dev/null | grep -E '^ +[0-9]' |
      awk -v total="$count" -v ios="$ios" '{ share = $1; sub("%", "", share); comm = $0; sub(/^ *[0-9.]+% +/, "", comm); sub(/ +$/, "", comm)
        printf "    %6.1f us  %5.1f%%  %s\n", share / 100 * total / 999 * 1e6 / ios, share, comm }' | head -12
  fi
  perf report -i "$out/$label.data" --kallsyms "$out/kallsyms" --stdio --sort dso 2>/dev/null | grep -E '^ +[0-9]' | head -8
  perf report -i "$out/$label.data" --kallsyms "$out/kallsyms" --stdio --sort sym 2>/dev/null | grep -E '^ +[0-9]' > "$out/$label.symbols"
  # V8 compiling (TurboFan, on its own threads) is start-up unless it goes on after the warm-up.
  awk '/v8::internal::compiler::/ { sum += $1 } END { if (sum > 0) printf "    %.2f%%  V8 optimizing compiler\n", sum }' "$out/$label.symbols"
  head -25 "$out/$label.symbols"
done
