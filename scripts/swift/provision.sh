#!/usr/bin/env bash
# Provision a Debian trixie chroot with Swift 6.0.3 (Debian package `swiftlang`)
# at $SWIFT_CHROOT (default <repo>/.swift-chroot). Idempotent: a completed
# chroot carries a stamp and a second run returns at once; a chroot without
# the stamp (half-finished, or from an older recipe) is deleted and rebuilt.
#
# Needs root. Every mount it makes (proc) is undone on exit, even on failure.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root provision.sh

provisioned() { [ -f "$SWIFT_STAMP" ] && [ "$(cat "$SWIFT_STAMP")" = "$SWIFT_RECIPE" ]; }

# Fast path without taking the lock.
if provisioned; then
  log "chroot ready at $SWIFT_CHROOT"
  exit 0
fi

enter_private_mount_ns "$@"
trap unmount_all EXIT
trap 'exit 130' INT TERM

# One provisioner at a time (a concurrent check.sh waits here).
exec 9>"$SWIFT_LOCK"
flock 9
if provisioned; then
  log "chroot ready at $SWIFT_CHROOT (provisioned by a concurrent run)"
  exit 0
fi

start=$(date +%s)
if [ -e "$SWIFT_CHROOT" ]; then
  log "removing incomplete chroot at $SWIFT_CHROOT"
  safe_remove_chroot "$SWIFT_CHROOT"
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap on the host"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq debootstrap >/dev/null
fi

log "debootstrap $SWIFT_SUITE (minbase) into $SWIFT_CHROOT"
mkdir -p "$SWIFT_CHROOT"
dblog="$(mktemp /tmp/swift-debootstrap.XXXXXX.log)"
if ! debootstrap --variant=minbase "$SWIFT_SUITE" "$SWIFT_CHROOT" "$SWIFT_MIRROR" \
     >"$dblog" 2>&1; then
  tail -n 30 "$dblog" >&2 || true
  die "debootstrap failed (full log: $dblog)"
fi
rm -f "$dblog"
log "debootstrap done after $(( $(date +%s) - start )) s"

cp -L /etc/resolv.conf "$SWIFT_CHROOT/etc/resolv.conf" 2>/dev/null || true
do_mount "$SWIFT_CHROOT/proc" -t proc proc
log "installing $SWIFT_PACKAGES in the chroot"
chroot "$SWIFT_CHROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive HOME=/root \
  bash -c "apt-get update -qq && apt-get install -y -qq -o Dpkg::Use-Pty=0 $SWIFT_PACKAGES >/dev/null && apt-get clean"
chroot "$SWIFT_CHROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root swift --version >&2
unmount_all

printf '%s' "$SWIFT_RECIPE" >"$SWIFT_STAMP"
log "chroot provisioned at $SWIFT_CHROOT in $(( $(date +%s) - start )) s"
