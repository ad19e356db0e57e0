#!/usr/bin/env bash
# npm run bench [-- ARGS]: see tools/bench.ts. Runs in the guest when this machine has no ublk.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# Usage needs no ublk: never boot a guest to print it.
for arg in "$@"; do [[ $arg == --help || $arg == -h ]] && exec node dist/tools/bench.js --help; done
UBLK_DM_BENCH_CHECK_ARGS=1 node dist/tools/bench.js "$@"
if [[ -e /dev/ublk-control && $EUID -eq 0 ]]; then
  exec node dist/tools/bench.js "$@"
fi
# 4 possible CPUs, 2 online: the queue part measures 4 queues on the 2-CPU guest.
UBLK_DM_GUEST_MAX_CPUS=${UBLK_DM_GUEST_MAX_CPUS:-4} exec tools/guest-run --mem "${UBLK_DM_GUEST_MEM:-10240}" -- node dist/tools/bench.js "$@"
