#!/usr/bin/env bash
# Type-checks the crate for macOS on Linux: `cargo clippy --all-targets -D warnings` for
# aarch64-apple-darwin, without and with the `coreml` feature, so code behind
# `cfg(target_os = "macos")` (memory probes, the bridge's link path, the Core ML engine) compiles
# and lints even though nothing here can run or link it. Installs what it needs: the Rust standard
# library for that target (rustup) and clang (for the few dependencies that assemble C or asm for
# the target). The `coreml` build is pointed at an empty stand-in libCoreMLBridge.a: a check never
# links. Then the docs as docs.rs builds them. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-apple-darwin

if ! rustup target list --installed | grep -qx "$TARGET"; then
  echo "check_macos_target: rustup target add $TARGET"
  rustup target add "$TARGET"
fi
source scripts/need_command.sh
need_command clang clang check_macos_target

stand_in=target/macos-check/bridge
mkdir -p "$stand_in" && : >"$stand_in/libCoreMLBridge.a"
export CC_aarch64_apple_darwin=clang MACOSX_DEPLOYMENT_TARGET=13.0
echo "check_macos_target: cargo clippy --all-targets --target $TARGET (default features)"
cargo clippy --quiet --all-targets --target "$TARGET" -- -D warnings
echo "check_macos_target: cargo clippy --all-targets --target $TARGET --features coreml"
COREML_BRIDGE_LIB_DIR="$PWD/$stand_in" cargo clippy --quiet --all-targets --target "$TARGET" --features coreml -- -D warnings
# What docs.rs builds (Cargo.toml's package.metadata.docs.rs): the coreml feature for the Mac
# target, with DOCS_RS set (build.rs then builds and links nothing); broken links fail.
echo "check_macos_target: DOCS_RS=1 cargo doc --no-deps --target $TARGET --features coreml"
DOCS_RS=1 RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --target "$TARGET" --features coreml
echo "check_macos_target: macOS code type-checks, is clippy-clean and documents (not run: no Mac here)"
