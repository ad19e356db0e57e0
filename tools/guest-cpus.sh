# Sourced by the guest tools (profile-guest.sh, ab-guest.sh): bring a list of the guest's
# possible CPUs online and the others offline, as the bench's queue part does (bench-cpus.ts), so
# that blk-mq maps CPUs of fio's to different queues of a multi-queue device.
#
#   guest_online_cpus TOOL LIST     # LIST like 0,2; TOOL names the caller in errors
guest_online_cpus() {
  local tool=$1 cpus=$2 c f
  # The guest is thrown away after the run; a host's CPUs are not ours to take offline.
  [[ -n ${UBLK_DM_IN_GUEST:-} ]] || { echo "$tool: --cpus only in the test guest" >&2; exit 2; }
  # Online first, then offline: CPU 0 cannot go offline, and some CPU must stay online.
  for c in ${cpus//,/ }; do
    # CPU 0 has no online switch (it cannot go offline); any other CPU the guest lacks is a mistake.
    [[ $c == 0 ]] && continue
    [[ -e /sys/devices/system/cpu/cpu$c/online ]] || { echo "$tool: --cpus: the guest has no CPU $c (possible: $(cat /sys/devices/system/cpu/possible))" >&2; exit 2; }
    echo 1 > /sys/devices/system/cpu/cpu$c/online
  done
  for f in /sys/devices/system/cpu/cpu[0-9]*/online; do
    c=${f#/sys/devices/system/cpu/cpu}; c=${c%/online}
    [[ ",$cpus," == *",$c,"* ]] || echo 0 > "$f"
  done
  echo "$tool: CPUs $(cat /sys/devices/system/cpu/online) online" >&2
}
