# shellcheck shell=bash
# Shared helpers for scripts/swift/*.sh. Source it; do not execute it.
#
# Environment:
#   SWIFT_CHROOT   where the Debian trixie chroot lives (default: <repo>/.swift-chroot)
#   SWIFT_MIRROR   Debian mirror for debootstrap (default: http://deb.debian.org/debian)

SWIFT_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SWIFT_LIB_DIR/../.." && pwd)"
SWIFT_CHROOT="${SWIFT_CHROOT:-$REPO_ROOT/.swift-chroot}"
# Absolute, without a trailing slash: everything below compares path prefixes.
SWIFT_CHROOT="$(realpath -m "$SWIFT_CHROOT")"
SWIFT_MIRROR="${SWIFT_MIRROR:-http://deb.debian.org/debian}"
SWIFT_SUITE=trixie
# Bump the recipe version whenever the package list changes: a chroot whose
# stamp does not match is rebuilt from scratch.
SWIFT_PACKAGES="swiftlang gcc ca-certificates"
SWIFT_RECIPE="v1 suite=$SWIFT_SUITE variant=minbase packages=$SWIFT_PACKAGES"
SWIFT_STAMP="$SWIFT_CHROOT/.apple-silicon-provisioned"
SWIFT_LOCK="/var/lock/apple-silicon-swift-chroot.$(printf '%s' "$SWIFT_CHROOT" | md5sum | cut -c1-12).lock"

log() { printf '[swift] %s\n' "$*" >&2; }
die() { printf '[swift] error: %s\n' "$*" >&2; exit 1; }

require_root() {
  if [ "$(id -u)" != 0 ]; then
    die "$1 needs root (debootstrap, mount and chroot are privileged operations); run it as root, e.g. 'sudo bash $0'"
  fi
}

# Print the mount points (one per line, octal escapes decoded) at or below $1
# found in the mount table file $2 (default: this process's namespace).
mounts_under() {
  local dir="$1" table="${2:-/proc/self/mounts}"
  [ -r "$table" ] || return 0
  awk -v d="$dir" '{
      p = $2
      # /proc/mounts escapes space, tab, newline and backslash as \ooo.
      while (match(p, /\\[0-7][0-7][0-7]/)) {
        c = substr(p, RSTART + 1, 3)
        v = (substr(c,1,1) * 64) + (substr(c,2,1) * 8) + substr(c,3,1)
        p = substr(p, 1, RSTART - 1) sprintf("%c", v) substr(p, RSTART + 4)
      }
      if (p == d || index(p, d "/") == 1) print p
    }' "$table"
}

# Mount points under $1 in our namespace and in PID 1's (the one the host
# sees when we run inside a private mount namespace). Deepest first.
all_mounts_under() {
  { mounts_under "$1" /proc/self/mounts; mounts_under "$1" /proc/1/mounts; } \
    | sort -u | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}

# Delete a chroot directory, but only after proving that nothing is mounted
# below it (a bind mount of the repo or of ~/.cargo must never be followed).
safe_remove_chroot() {
  local dir="$1" m left
  [ -e "$dir" ] || return 0
  case "$dir" in
    /|/root|/home|/usr|/var|/etc|"$REPO_ROOT") die "refusing to delete '$dir'";;
  esac
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    log "unmounting leftover mount $m"
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(all_mounts_under "$dir")
  left="$(all_mounts_under "$dir")"
  if [ -n "$left" ]; then
    die "refusing to delete $dir: still mounted below it:
$left"
  fi
  # --one-file-system: even if a mount appeared after the check, rm does not cross it.
  rm -rf --one-file-system -- "$dir"
}

# Run the rest of the calling script inside a private mount namespace, so
# every mount it makes vanishes with it even if the script is killed hard.
# The scripts also unmount explicitly in an EXIT trap.
enter_private_mount_ns() {
  if [ -z "${APPLE_SILICON_SWIFT_NS:-}" ] && command -v unshare >/dev/null 2>&1; then
    if unshare --mount --propagation private true 2>/dev/null; then
      export APPLE_SILICON_SWIFT_NS=1
      exec unshare --mount --propagation private -- bash "$0" "$@"
    fi
    log "note: private mount namespaces unavailable; relying on the EXIT trap to unmount"
  fi
}

# Mount bookkeeping: every mount made through do_mount is undone (deepest
# first) by unmount_all, which the scripts call from their EXIT trap.
MOUNTED=()
do_mount() {
  # usage: do_mount <target> mount-args...
  local target="$1"; shift
  mount "$@" "$target" || return 1
  MOUNTED+=("$target")
}
unmount_all() {
  local i
  for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do
    umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" 2>/dev/null \
      || log "warning: could not unmount ${MOUNTED[$i]}"
  done
  MOUNTED=()
}
