#!/usr/bin/env bash
# Build the guest's initramfs: busybox-static, the modules needed to reach the host's root (9p over
# virtio, overlayfs), decompressed and listed in load order, and init.sh. Cached by content.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${UBLK_DM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ublk-dm}
kdir=$cache/kernel
version=$(cat "$kdir/version")
mdir=$kdir/root/lib/modules/$version
out=$cache/initramfs.cpio.gz
stamp=$(cat "$here/init.sh" "$here/build-initramfs.sh" "$kdir/version" | sha256sum | cut -c1-16)
if [[ -f $out && -f $out.stamp && $(cat "$out.stamp") == "$stamp" ]]; then
  exit 0
fi
busybox=$(command -v busybox || true)
[[ -n $busybox ]] || busybox=/bin/busybox
! ldd "$busybox" >/dev/null 2>&1 || { echo "build-initramfs: need busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,modules}
cp "$busybox" "$work/bin/busybox"
cp "$here/init.sh" "$work/init"
chmod 755 "$work/init"

# Resolve dependencies from modules.dep, deepest first, each module once.
declare -A seen=()
order=()
add() {
  local name=$1 line path dep
  line=$(grep -E "/$name\.ko(\.[a-z]+)?:" "$mdir/modules.dep" | head -1) || return 0
  path=${line%%:*}
  for dep in ${line#*:}; do
    dep=$(basename "$dep"); dep=${dep%%.ko*}
    add "$dep"
  done
  [[ -n ${seen[$name]:-} ]] && return 0
  seen[$name]=1
  order+=("$name")
  case $path in
    *.xz) xz -dc "$mdir/$path" > "$work/modules/$name.ko" ;;
    *.zst) zstd -qdc "$mdir/$path" > "$work/modules/$name.ko" ;;
    *) cp "$mdir/$path" "$work/modules/$name.ko" ;;
  esac
}
for m in netfs 9pnet 9pnet_virtio 9p overlay; do add "$m"; done
printf '%s\n' "${order[@]}" > "$work/modules/order"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
echo "$stamp" > "$out.stamp"
echo "build-initramfs: $out (${order[*]})" >&2
