#!/usr/bin/env bash
# The Swift bridge check (Makefile target `swift-check`, also run by CI):
# provision Swift 6.0.3 in a Debian trixie chroot if needed, then inside it
#   swift --version; swift build; swift build -c release; swift test
# for coreml-bridge/. Exits non-zero on any failure. Non-interactive.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
. "$here/lib.sh"
require_root check.sh

start=$(date +%s)
bash "$here/provision.sh"
log "provisioned in $(( $(date +%s) - start )) s"

# -j: the machines have 2 cores, shared; SwiftPM defaults to all of them anyway.
bash "$here/in-chroot.sh" bash -euo pipefail -c '
  cd coreml-bridge
  swift --version
  echo "[swift] swift build (debug)" >&2
  swift build
  echo "[swift] swift build -c release" >&2
  swift build -c release
  lib="$(swift build -c release --show-bin-path)/libCoreMLBridge.a"
  test -f "$lib" || { echo "[swift] error: $lib missing" >&2; exit 1; }
  # Every C entry point of coreml_bridge.h must be a global symbol of the archive.
  missing=0
  for f in $(sed -n "s/^\(int32_t\|void\) \**\(coreml_[a-z_0-9]*\)(.*/\2/p" include/coreml_bridge.h | sort -u); do
    nm -g --defined-only "$lib" 2>/dev/null | grep -qE " T $f\$" || { echo "[swift] error: $f is not a global symbol of $lib" >&2; missing=1; }
  done
  [ "$missing" = 0 ]
  echo "[swift] static library: $lib" >&2
  echo "[swift] swift test" >&2
  swift test --disable-swift-testing
'
log "swift-check passed in $(( $(date +%s) - start )) s"
