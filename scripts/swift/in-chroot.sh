#!/usr/bin/env bash
# Run a command inside the Swift chroot with the repo mounted at the same
# absolute path it has on the host, so paths printed or baked in by tools
# (SwiftPM, cargo) mean the same thing inside and outside.
#
#   scripts/swift/in-chroot.sh <cmd> [args...]
#
# - Provisions the chroot first (instant when it is already there).
# - Bind mounts: the repo (read-write), the host's rustup home (read-only) and
#   cargo home (read-write, for the registry cache), /dev; mounts /proc.
#   Everything is mounted in a private mount namespace AND unmounted by an
#   EXIT trap, so nothing is left behind even on failure or Ctrl-C.
# - The command runs in the same directory relative to the repo as the
#   caller's (or the repo root if the caller is outside the repo), with
#   PATH=<cargo home>/bin:/usr/bin:/bin..., HOME and the rest of the caller's
#   environment (CI, COREML_BRIDGE_TEST_RUNTIME, CARGO_*, RUST*...) preserved.
# - Exit status: the command's.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$#" -ge 1 ] || die "usage: $0 <command> [args...]"
require_root in-chroot.sh

[ -n "${APPLE_SILICON_SWIFT_NS:-}" ] || bash "$SWIFT_LIB_DIR/provision.sh"

enter_private_mount_ns "$@"
trap unmount_all EXIT
trap 'exit 130' INT TERM

# Hold the lock shared: provisioning (exclusive) cannot delete the chroot
# under a running command, while several commands may run side by side.
exec 9>"$SWIFT_LOCK"
flock -s 9
[ -f "$SWIFT_STAMP" ] || die "chroot at $SWIFT_CHROOT is not provisioned"

RUSTUP_DIR="${RUSTUP_HOME:-$HOME/.rustup}"
CARGO_DIR="${CARGO_HOME:-$HOME/.cargo}"

bind() {
  # usage: bind <host-dir> [ro]
  local src="$1" mode="${2:-rw}" dst="$SWIFT_CHROOT$1"
  [ -d "$src" ] || return 0
  mkdir -p "$dst"
  do_mount "$dst" --bind "$src"
  if [ "$mode" = ro ]; then
    mount -o remount,bind,ro "$dst"
  fi
}

cp -L /etc/resolv.conf "$SWIFT_CHROOT/etc/resolv.conf" 2>/dev/null || true
do_mount "$SWIFT_CHROOT/proc" -t proc proc
bind /dev
bind "$REPO_ROOT"
case "$RUSTUP_DIR" in "$REPO_ROOT"/*) ;; *) bind "$RUSTUP_DIR" ro;; esac
case "$CARGO_DIR" in "$REPO_ROOT"/*) ;; *) bind "$CARGO_DIR";; esac

case "$PWD/" in
  "$REPO_ROOT"/*) workdir="$PWD";;
  *) workdir="$REPO_ROOT";;
esac

set +e
PATH="$CARGO_DIR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  chroot "$SWIFT_CHROOT" /bin/sh -c 'cd "$1" && shift && exec "$@"' in-chroot "$workdir" "$@"
rc=$?
set -e
exit "$rc"
