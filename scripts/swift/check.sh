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

bash "$here/in-chroot.sh" bash scripts/swift/build-and-test.sh
log "swift-check passed in $(( $(date +%s) - start )) s"
