#!/usr/bin/env bash
# Install what ublk-dm needs on a Debian machine and build it; a no-op when all is in place.
# Apt packages (when missing), npm ci (when the lockfile changed), the native addon, tsc and the
# bundle bin/ loads.
set -euo pipefail
cd "$(dirname "$0")/.."

need=(liburing-dev fio e2fsprogs dmsetup util-linux xz-utils kmod)
if [[ ! -e /dev/ublk-control ]]; then
  # No ublk here: tests and the demo run in the guest.
  need+=(qemu-system-x86 busybox-static cpio gzip zstd)
fi
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${missing[*]}" >&2
  [[ $EUID -eq 0 ]] || { echo "setup: need root to apt-get install ${missing[*]}" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci when node_modules is absent or older than the lockfile; it also builds the addon.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
addon=build/Release/ublkdm_native.node
if [[ ! -f $addon || -n $(find native binding.gyp -newer "$addon" 2>/dev/null | head -1) ]]; then
  echo "setup: building the native addon" >&2
  npm run --silent install >/dev/null
fi
if [[ ! -f dist/.built || -n $(find src test tools tsconfig.json -name '*.ts' -newer dist/.built -o -name tsconfig.json -newer dist/.built -o -name bundle.sh -newer dist/.built 2>/dev/null | head -1) ]]; then
  echo "setup: compiling TypeScript" >&2
  # From scratch: a file moved or deleted in src/ must not leave its old .js to be loaded or tested.
  rm -rf dist
  npx --no-install tsc -p tsconfig.json
  bash tools/bundle.sh
  touch dist/.built
fi
