#!/usr/bin/env bash
# Checks that a built libCoreMLBridge.a exports every C function of coreml_bridge.h as a global,
# defined text symbol (some SwiftPM versions make @_cdecl symbols local in static products).
#
#   scripts/ci/check-bridge-symbols.sh ARCHIVE [HEADER]      (HEADER: coreml-bridge/include/coreml_bridge.h)
#
# Works with GNU nm (Linux, no prefix) and Apple's nm (Mach-O, a leading underscore), bash 3.2.
# scripts/swift/build-and-test.sh does the same check inside the Linux chroot.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
lib="${1:?usage: $0 ARCHIVE [HEADER]}"
header="${2:-$root/coreml-bridge/include/coreml_bridge.h}"
[ -f "$lib" ] || { echo "check-bridge-symbols: $lib does not exist" >&2; exit 2; }
[ -f "$header" ] || { echo "check-bridge-symbols: $header does not exist" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# -g: external symbols only; awk keeps defined text symbols ("T"); sed drops Mach-O's underscore.
nm -g "$lib" 2>/dev/null | awk '$2 == "T" { print $3 }' | sed 's/^_//' | sort -u > "$tmp/symbols"
grep -oE '^(int32_t|void) \**coreml_[a-z_0-9]+\(' "$header" | grep -oE 'coreml_[a-z_0-9]+' | sort -u \
  > "$tmp/functions"
[ -s "$tmp/functions" ] || { echo "check-bridge-symbols: no functions found in $header" >&2; exit 2; }
missing="$(comm -23 "$tmp/functions" "$tmp/symbols")"
if [ -n "$missing" ]; then
  echo "check-bridge-symbols: not exported as global text symbols of $lib:" >&2
  comm -23 "$tmp/functions" "$tmp/symbols" | sed 's/^/  /' >&2
  exit 1
fi
echo "check-bridge-symbols: all $(wc -l < "$tmp/functions" | tr -d ' ') C functions of $(basename "$header") are global symbols of $lib"
