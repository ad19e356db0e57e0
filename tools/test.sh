#!/usr/bin/env bash
# The whole test suite: host unit tests, then integration tests against real /dev/ublkbN devices
# (natively when this machine has ublk and we are root, otherwise inside the guest runner).
# A pending (skipped) test fails the run: a suite that did not run must not look green.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || exit 1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
mocha_opts=(--forbid-pending --forbid-only --reporter spec)

echo "== unit tests (host)"
node_modules/.bin/mocha "${mocha_opts[@]}" 'dist/test/unit/**/*.test.js' 2>&1 | tee -a "$log"
unit_rc=${PIPESTATUS[0]}

echo "== integration tests (real ublk devices)"
# --exit: a child stuck in the kernel (a writer on a device that never came back) must not keep
# the run alive after its failure is reported.
integ=(node_modules/.bin/mocha "${mocha_opts[@]}" --exit --timeout 300000 'dist/test/integration/**/*.test.js')
if [[ -e /dev/ublk-control && $EUID -eq 0 ]]; then
  "${integ[@]}" 2>&1 | tee -a "$log"
else
  echo "(no /dev/ublk-control here: running them in the guest)"
  # CI allows 90 min; a slow host has taken the guest past its default 50. 4 possible CPUs (2
  # online), so 4-queue devices exist, as in the bench: queue-threads.test.ts verifies one with fio
  # (issue 11 asks for fio verify on 2 and 4 queues).
  UBLK_DM_GUEST_TIMEOUT=${UBLK_DM_GUEST_TIMEOUT:-4500} UBLK_DM_GUEST_MAX_CPUS=${UBLK_DM_GUEST_MAX_CPUS:-4} \
    tools/guest-run -- "${integ[@]}" 2>&1 | tee -a "$log"
fi
integ_rc=${PIPESTATUS[0]}

# mocha colours its summary lines when the guest console is a terminal: strip that first.
plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
passed=$(grep -oE '^ *[0-9]+ passing' <<<"$plain" | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '^ *[0-9]+ failing' <<<"$plain" | awk '{s+=$1} END {print s+0}')
if [[ $unit_rc -ne 0 || $integ_rc -ne 0 ]] && [[ $failed -eq 0 ]]; then
  failed=1  # a runner that died before reporting still fails the run
fi
echo "tests: $passed passed, $failed failed"
[[ $unit_rc -eq 0 && $integ_rc -eq 0 ]]
