#!/usr/bin/env bash
# npm run bench [-- ARGS]: see tools/bench.ts. Runs in the guest when this machine has no ublk.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if [[ -e /dev/ublk-control && $EUID -eq 0 ]]; then
  exec node dist/tools/bench.js "$@"
fi
exec tools/guest-run --mem "${UBLK_DM_GUEST_MEM:-10240}" -- node dist/tools/bench.js "$@"
