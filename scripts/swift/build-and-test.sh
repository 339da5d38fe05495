#!/usr/bin/env bash
# Runs INSIDE the Swift chroot (see check.sh / in-chroot.sh): builds
# coreml-bridge in debug and release, checks that the release static library
# exports every C entry point of include/coreml_bridge.h as a global symbol,
# and runs the XCTest suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../coreml-bridge"

swift --version
echo "[swift] swift build (debug)" >&2
swift build
echo "[swift] swift build -c release" >&2
swift build -c release
lib="$(swift build -c release --show-bin-path)/libCoreMLBridge.a"
[ -f "$lib" ] || { echo "[swift] error: $lib missing" >&2; exit 1; }

# Every function declared at the start of a line in the header must be a
# global text symbol of the archive (SwiftPM may localise @_cdecl symbols).
symbols="$(nm -g --defined-only "$lib" 2>/dev/null | awk '$2 == "T" { print $3 }' | sort -u)"
functions="$(grep -oE '^(int32_t|void) \**coreml_[a-z_0-9]+\(' include/coreml_bridge.h \
             | grep -oE 'coreml_[a-z_0-9]+' | sort -u)"
[ -n "$functions" ] || { echo "[swift] error: no functions found in coreml_bridge.h" >&2; exit 1; }
missing="$(comm -23 <(printf '%s\n' "$functions") <(printf '%s\n' "$symbols"))"
if [ -n "$missing" ]; then
  echo "[swift] error: not exported as global symbols of $lib:" $missing >&2
  exit 1
fi
echo "[swift] $(printf '%s\n' "$functions" | wc -l) C entry points exported by $lib" >&2

# A plain C program linked against the archive, as the Rust crate links it on
# Linux (the link line documented in coreml-bridge/README.md).
swiftlib=/usr/libexec/swift/lib/swift/linux
smoke="$(mktemp -d)"
trap 'rm -rf "$smoke"' EXIT
mkdir -p "$smoke/add_one.mlmodelc"
cc -std=c11 -Wall -Werror -I include ../scripts/swift/link-smoke.c \
   "$swiftlib/x86_64/swiftrt.o" "$lib" \
   -L "$swiftlib" -lswiftCore -lswift_Concurrency -lswiftDispatch -ldispatch -lBlocksRuntime \
   -lFoundation -lFoundationEssentials -Wl,-rpath,"$swiftlib" -o "$smoke/link-smoke"
COREML_BRIDGE_TEST_RUNTIME=1 "$smoke/link-smoke" "$smoke"

echo "[swift] swift test" >&2
# XCTest only: the suite has no swift-testing tests, and its "0 tests" summary
# line would read as "ran no test".
swift test --disable-swift-testing
