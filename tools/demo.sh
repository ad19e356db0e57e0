#!/usr/bin/env bash
# The demo: real block devices served by ublk-dm. Runs natively where this machine has ublk and we
# are root, otherwise inside the guest runner (tools/guest-run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if [[ -e /dev/ublk-control && $EUID -eq 0 ]]; then
  exec bash tools/demo-steps.sh
fi
echo "(no /dev/ublk-control on this machine: running the demo in a throwaway guest with ublk_drv)"
exec tools/guest-run -- bash tools/demo-steps.sh
