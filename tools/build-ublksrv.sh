#!/usr/bin/env bash
# Build the C ublk server (ublksrv) from a checkout, for the bench's same-boot column
# (`npm run bench -- --ublksrv PREFIX/sbin/ublk`). We neither ship nor fetch it: bring the sources.
#
#   tools/build-ublksrv.sh UBLKSRV_SRC PREFIX [LIBURING_SRC]
#
# ublksrv needs liburing 2.4 or later (io_uring_setup_buf_ring); Debian 12 has 2.3, so give a
# liburing checkout there: it is built into PREFIX and ublksrv linked against it (rpath, so the
# guest finds it too: PREFIX must be outside the project and under the host's /, which the guest
# mounts). Both are built out of their checkouts' git trees, in PREFIX/build.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,11p' "$0" >&2; exit 2; }
src=$(cd "$1" && pwd)
prefix=$(mkdir -p "$2" && cd "$2" && pwd)
liburing_src=${3:+$(cd "$3" && pwd)}

need=()
for tool in autoreconf libtoolize automake make g++ pkg-config; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [[ ${#need[@]} -gt 0 ]]; then
  apt-get install -y -qq autoconf automake libtool make g++ pkg-config >/dev/null
fi

build=$prefix/build
rm -rf "$build" && mkdir -p "$build"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
if [[ -n $liburing_src ]]; then
  git clone -q "$liburing_src" "$build/liburing"
  (cd "$build/liburing" && ./configure --prefix="$prefix" >/dev/null && make -s -j"$(nproc)" -C src >/dev/null && make -s install >/dev/null)
fi
git clone -q "$src" "$build/ublksrv"
cd "$build/ublksrv"
autoreconf -i >/dev/null 2>&1
./configure -q --prefix="$prefix" LDFLAGS="-Wl,-rpath,$prefix/lib" 2>&1 | grep -v Doxygen || true
make -s -j"$(nproc)" >/dev/null
make -s install >/dev/null
# ublksrv's install hook runs `ldconfig PREFIX/lib`, which puts PREFIX/lib in the dynamic linker's
# cache; our addon would then load this newer liburing instead of the system's it was built
# against, and the bench would measure a build no user runs. ublk finds its own through the
# rpath, so rebuild the cache without PREFIX.
if command -v ldconfig >/dev/null && [[ $EUID -eq 0 ]]; then ldconfig; fi
echo "$prefix/sbin/ublk"
