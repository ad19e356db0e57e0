#!/usr/bin/env bash
# Bundle the compiled CLI, dmsetup front end and queue-thread worker into one file each under
# dist/bundle, the files bin/ublk-dm and bin/ublk-dmsetup load and the daemon's queue threads run.
#
# Why: node resolves, reads and wraps each of the ~300 modules those entry points pull in (yargs,
# winston and their dependencies, all our targets) one by one, and at process start that was most
# of a daemon's start-up: 10-15 s against 5.5-7 s bundled in the TCG guest, where every daemon
# (re)start of a test or a crash recovery waits for it. The bundle is made from tsc's output in
# dist/, so it runs exactly the code the unit tests ran; the library entry (dist/src/index.js) is
# not bundled. The native addon stays a file of its own, found from the package root.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist/bundle
node_modules/.bin/esbuild dist/src/cli/cli.js dist/src/cli/dmsetup.js dist/src/daemon/queue-thread.js \
  --bundle --platform=node --target=node20 --format=cjs --external:'*.node' \
  --entry-names='[name]' --outdir=dist/bundle --log-level=warning
