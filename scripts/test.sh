#!/usr/bin/env bash
# Every test the project has, in the order that fails fastest.
# Called by `make test` (after `make download-models`) and so by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets -- -D warnings

step "macOS type-check: cargo clippy for aarch64-apple-darwin, with and without --features coreml"
bash scripts/check_macos_target.sh

step "cargo test (unit, integration, doc tests)"
cargo test --all-targets
cargo test --doc

step "Fuzz (short, time-bounded): npy, weight.bin, spec, Manifest.json, mutated programs"
cargo run --example fuzz -- --secs 30 --seed "$(date +%s)"

step "Leak check (quick): valgrind over compile+load and inference loops, native Gate A memory growth"
bash scripts/leak_check.sh --quick

step "Swift bridge: swift build + swift test in the Debian trixie chroot"
bash scripts/swift/check.sh

step "Rust -> C ABI -> Swift bridge (test runtime) end to end, in the chroot, then under valgrind"
bash scripts/swift/rust-ffi-test.sh
