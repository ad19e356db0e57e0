#!/usr/bin/env bash
# Fetch Debian trixie's generic amd64 kernel (it ships ublk_drv, dm-mod, dm-snapshot, dm-mirror as
# modules) into the cache, unpack it and index its modules. Uses the mirror this machine's apt
# sources already name, through a private apt configuration: the host's apt state is not touched.
# Idempotent: does nothing when the kernel is already unpacked.
set -euo pipefail

cache=${UBLK_DM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ublk-dm}
suite=${UBLK_DM_GUEST_SUITE:-trixie}
kdir=$cache/kernel
if [[ -f $kdir/ready ]]; then
  exit 0
fi

mirror_from_sources() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822 stanzas: take the first URIs line of a stanza whose Suites name a Debian release.
    uri=$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 ~ /(bookworm|trixie|sid|stable|testing)( |$)/ && u != "" && u !~ /security/) {print u; exit} }' "$f")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    uri=$(awk '$1=="deb" && $0 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit} }' "$f")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  return 1
}

mirror=$(mirror_from_sources) || { echo "fetch-kernel: no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
apt_root=$cache/apt
mkdir -p "$apt_root"/{lists/partial,archives/partial,etc} "$kdir"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror $suite main" > "$apt_root/etc/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_root/etc/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$apt_root/lists" -o "Dir::Cache=$apt_root" -o "Dir::Cache::archives=$apt_root/archives"
  -o "Dir::State::status=/dev/null" -o "APT::Architecture=amd64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")

echo "fetch-kernel: $suite kernel from $mirror" >&2
apt-get "${apt_opts[@]}" -qq update
# linux-image-amd64 is a metapackage; its first dependency is the versioned image.
image=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[[ -n $image ]] || { echo "fetch-kernel: cannot resolve linux-image-amd64 in $suite" >&2; exit 1; }
(cd "$apt_root/archives" && apt-get "${apt_opts[@]}" -qq download "$image")
deb=$(ls "$apt_root"/archives/"${image}"_*.deb | head -1)
rm -rf "$kdir/root" && mkdir -p "$kdir/root"
dpkg-deb -x "$deb" "$kdir/root"
# trixie is merged-/usr: modules live in /usr/lib/modules; depmod -b wants <root>/lib/modules.
[[ -e $kdir/root/lib ]] || ln -s usr/lib "$kdir/root/lib"
version=$(ls "$kdir/root/lib/modules" | head -1)
cp "$kdir/root/boot/vmlinuz-$version" "$kdir/vmlinuz"
# Debian's postinst runs depmod; we run it on the unpacked tree so modprobe can resolve deps.
depmod -b "$kdir/root" "$version"
echo "$version" > "$kdir/version"
touch "$kdir/ready"
echo "fetch-kernel: $image ($version) ready in $kdir" >&2
