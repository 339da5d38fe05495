# Sourced by the scripts that need a Debian package's command on the host.
#
#   need_command CMD PACKAGE WHO
#
# Returns at once when CMD is on PATH; otherwise installs PACKAGE with apt-get (root only; one
# `apt-get update` retry for a stale index) or exits 1 saying what to install. WHO prefixes messages.
need_command() {
  local cmd=$1 pkg=$2 who=$3
  command -v "$cmd" >/dev/null && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "$who: installing $pkg (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; }
    command -v "$cmd" >/dev/null && return 0
  fi
  echo "$who: \`$cmd\` is needed and could not be installed here (Debian: apt-get install $pkg)" >&2
  exit 1
}
