#!/usr/bin/env bash
# Rust -> C ABI -> Linux build of coreml-bridge (test runtime) -> back, inside
# the Swift chroot:
#
#   bash scripts/swift/rust-ffi-test.sh        # as root; non-interactive; CI=true is fine
#
# 1. Provisions the chroot if needed (scripts/swift/provision.sh; SWIFT_CHROOT
#    selects it, default <repo>/.swift-chroot).
# 2. Inside it:
#    - installs valgrind with apt if it is missing (once; idempotent),
#    - builds the bridge archive: swift build -c release --product CoreMLBridge,
#    - runs   cargo test --features coreml --test core_ml_ffi --test backend_switch --test pool_ffi --test alloc_ffi
#      with   CARGO_TARGET_DIR=target/chroot   (binaries built inside the chroot
#             need its glibc: they must not mix with the host's target/)
#             COREML_BRIDGE_LIB_DIR=<the archive's directory>   (build.rs links it)
#             COREML_BRIDGE_TEST_RUNTIME=1                     (the bridge's fake runtime)
#    - runs the same test binary once more under valgrind (memcheck, full leak
#      check; definite and indirect leaks and every memory error fail the run;
#      scripts/swift/valgrind-swift.supp suppresses one benign Swift-runtime
#      report) and prints its ERROR SUMMARY and LEAK SUMMARY.
# 3. Prints the cargo test result lines. Exits non-zero on any failure.
#
# The dev profile is used (the same as the host's `cargo test`: dependencies
# optimised, the crate at opt-level 1).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"

if [ "${1:-}" != "--inside" ]; then
  require_root rust-ffi-test.sh
  export CI="${CI:-true}"
  start=$(date +%s)
  bash "$here/provision.sh"
  bash "$here/in-chroot.sh" bash scripts/swift/rust-ffi-test.sh --inside </dev/null
  log "rust-ffi-test passed in $(( $(date +%s) - start )) s"
  exit 0
fi

# ---- inside the chroot -------------------------------------------------------
cd "$REPO_ROOT"
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)
stamp() { log "$1 ($(( $(date +%s) - t0 )) s)"; }

if ! command -v valgrind >/dev/null 2>&1; then
  log "installing valgrind in the chroot (apt)"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends valgrind >/dev/null
  apt-get clean
fi
valgrind --version >&2

log "swift build -c release --product CoreMLBridge"
swift build -c release --package-path coreml-bridge --product CoreMLBridge 2>&1 | tail -n 3 >&2
lib_dir="$(swift build -c release --package-path coreml-bridge --show-bin-path)"
[ -f "$lib_dir/libCoreMLBridge.a" ] || die "$lib_dir/libCoreMLBridge.a missing after swift build"
stamp "bridge archive: $lib_dir/libCoreMLBridge.a"

export CARGO_TARGET_DIR="$REPO_ROOT/target/chroot"
export COREML_BRIDGE_LIB_DIR="$lib_dir"
export COREML_BRIDGE_TEST_RUNTIME=1
export CARGO_TERM_COLOR=never
# backend_switch: the `coreml` side of the plan's inference_backend switch (the host runs the other).
cargo_args=(--features coreml --test core_ml_ffi --test backend_switch --test pool_ffi --test alloc_ffi)

logs="$CARGO_TARGET_DIR/rust-ffi-test"
mkdir -p "$logs"
log "cargo test ${cargo_args[*]} (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
set +e
cargo test "${cargo_args[@]}" 2>&1 | tee "$logs/cargo-test.log"
rc=${PIPESTATUS[0]}
set -e
stamp "cargo test exited with $rc"
[ "$rc" = 0 ] || die "cargo test ${cargo_args[*]} failed (log: $logs/cargo-test.log)"

exe="$(cargo test "${cargo_args[@]}" --no-run --message-format=json 2>/dev/null \
        | grep -o '"executable":"[^"]*core_ml_ffi[^"]*"' | tail -n 1 | cut -d'"' -f4)"
[ -x "$exe" ] || die "could not find the core_ml_ffi test binary"

log "valgrind (memcheck) $exe"
vg_log="$logs/valgrind.log"
set +e
# Timing margins of the tests scale by 10 under valgrind; two test threads.
CORE_ML_FFI_TIME_SCALE=10 valgrind --tool=memcheck --leak-check=full \
  --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
  --suppressions="$here/valgrind-swift.supp" \
  --error-exitcode=97 --num-callers=40 --log-file="$vg_log" \
  "$exe" --test-threads=2 >"$logs/valgrind-tests.log" 2>&1
vg_rc=$?
set -e
stamp "valgrind run exited with $vg_rc"

echo
echo "==> cargo test ${cargo_args[*]}"
grep -E '^test result:|^running [0-9]+ tests' "$logs/cargo-test.log" || true
echo "==> the same binary under valgrind"
grep -E '^test result:' "$logs/valgrind-tests.log" || true
grep -E 'ERROR SUMMARY' "$vg_log" | tail -n 1 || true
grep -E 'All heap blocks were freed' "$vg_log" || sed -n '/LEAK SUMMARY/,/suppressed:/p' "$vg_log" | tail -n 7
if [ "$vg_rc" != 0 ]; then
  tail -n 60 "$logs/valgrind-tests.log" >&2 || true
  die "valgrind run failed with $vg_rc (memcheck log: $vg_log; test output: $logs/valgrind-tests.log)"
fi
stamp "rust-ffi-test (inside the chroot) done"
