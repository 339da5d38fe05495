#!/usr/bin/env bash
# The leak check this Linux machine can do (macOS: Instruments, see docs/CORE_ML_BRIDGE_GUIDE.md).
#
#   1. valgrind memcheck over the compile+load loop (core_ml_compile_load_test) and an inference
#      loop (core_ml_inference_soak) on the committed fixtures: 0 errors and 0 bytes definitely or
#      indirectly lost, or it fails. (Under valgrind RSS is valgrind's own, so the gates' memory
#      verdicts are not judged there; valgrind's leak summary is.)
#   2. Natively, the RSS checks: Gate A's memory growth over N compile+load cycles and Gate D's
#      memory slope (bytes per 100 inferences, least squares) over a soak, on the real models when
#      downloaded. Only the memory figures are judged here; latency and throughput are printed.
#
# Usage: scripts/leak_check.sh [--quick]
#   --quick   fixtures only, short loops, no native soak (what `make test` runs; ~1 min)
# Environment: LEAK_CYCLES (native compile+load cycles, default 1000), SOAK_SECS (native soak,
#   default 60), LEAK_MODEL (native model, default mobilenet_v2_int8 if downloaded, else cnn_fp32).
# Logs and verdicts go to target/leak-check/.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
out=target/leak-check
rm -rf "$out" && mkdir -p "$out"

source scripts/need_command.sh
need_command valgrind valgrind leak-check

# --quick reuses the dev build `cargo test --all-targets` already made (dependencies at opt-level 3);
# the full run uses release (with debug info, so valgrind's stacks have names).
if [[ $quick == 1 ]]; then profile=(); bin=target/debug/examples; else profile=(--release); bin=target/release/examples; fi
echo "leak-check: building the examples (${profile[*]:-dev})"
cargo build "${profile[@]}" --quiet --example core_ml_compile_load_test --example core_ml_inference_soak
failures=0

# valgrind NAME CMD...: runs CMD under memcheck; passes when the example ran to its verdict line
# and valgrind reported no errors and no definite or indirect leaks.
vg() {
  local name=$1; shift
  local log="$out/valgrind-$name.log" rc=0
  local t0=$SECONDS
  valgrind --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
    --error-exitcode=99 "$@" >"$log" 2>&1 || rc=$?
  local errors lost indirect
  errors=$(grep -oP 'ERROR SUMMARY: \K[0-9,]+' "$log" | tail -1 | tr -d ,)
  lost=$(grep -oP 'definitely lost: \K[0-9,]+' "$log" | tail -1 | tr -d ,)
  indirect=$(grep -oP 'indirectly lost: \K[0-9,]+' "$log" | tail -1 | tr -d ,)
  # "All heap blocks were freed" replaces the leak summary when nothing is left.
  if grep -q "All heap blocks were freed" "$log"; then lost=0 indirect=0; fi
  local heap
  heap=$(grep -oP 'in use at exit: \K.*' "$log" | tail -1 || true)
  if [[ $rc -eq 99 || "${errors:-x}" != 0 || "${lost:-x}" != 0 || "${indirect:-x}" != 0 ]] \
     || ! grep -q "^Gate [AD]:" "$log"; then
    echo "FAIL  valgrind $name: exit $rc, errors ${errors:-?}, definitely lost ${lost:-?} B, indirectly lost ${indirect:-?} B (log: $log)"
    grep -E "^core_ml_|FAILED" "$log" | head -5 || true
    failures=$((failures + 1))
  else
    echo "ok    valgrind $name: 0 errors, 0 B definitely / 0 B indirectly lost, in use at exit: ${heap:-0} ($((SECONDS - t0)) s)"
  fi
}

cycles=40; soak=12
[[ $quick == 1 ]] && cycles=20 && soak=6
echo "leak-check: valgrind memcheck, $cycles compile+load cycles and a ${soak} s inference loop per fixture"
for m in cnn_fp32 mlp_palettized cnn_int8; do
  COREML_LEAK_TEST=$cycles vg "compile-load-$m" "$bin/core_ml_compile_load_test" --model "$m" --warmup 2
  vg "inference-$m" "$bin/core_ml_inference_soak" --model "$m" --duration "$soak" --interval 1 \
    --timeout-ms 120000 --out "$out/valgrind-soak"
done

# The soak's files: a CSV with the documented header and one row per interval, an SVG with the
# three series panels, and `--plot` re-drawing the SVG from the CSV alone.
csv="$out/valgrind-soak/soak-cnn_fp32.csv"
svg="${csv%.csv}.svg"
rows=$(($(wc -l <"$csv") - 1))
header="elapsed_s,calls,throughput_per_s,p50_ms,p95_ms,p99_ms,rss_mb,errors,warmup"
if [[ "$(head -1 "$csv")" == "$header" && $rows -ge 3 ]] && grep -q "<svg" "$svg" \
   && [[ $(grep -c "<polyline" "$svg") -ge 5 ]] && rm "$svg" && "$bin/core_ml_inference_soak" --plot "$csv" >/dev/null \
   && [[ $(grep -c "<polyline" "$svg") -ge 5 ]]; then
  echo "ok    soak files: $csv ($rows intervals), $svg (re-drawn by --plot)"
else
  echo "FAIL  soak files: expected $csv with header and >= 3 rows and a plot in $svg"
  failures=$((failures + 1))
fi

# judge JSON KEY: prints the measurement and its threshold from a verdict, fails if it is not met.
judge() {
  python3 - "$@" <<'EOF'
import json, sys
path, key, label = sys.argv[1], sys.argv[2], sys.argv[3]
v = json.load(open(path))
value, th = v["measurements"].get(key), v["thresholds"].get(key)
if value is None or th is None:
    print(f"FAIL  {label}: no `{key}` in {path} (reasons: {v.get('reasons')})"); sys.exit(1)
(op, bound), = th.items()
ok = value <= bound if op in ("at_most", "AtMost") else value >= bound
print(f"{'ok  ' if ok else 'FAIL'}  {label}: {key} = {value:.0f} (threshold {op} {bound:.0f})")
sys.exit(0 if ok else 1)
EOF
}

if [[ -z "${LEAK_MODEL:-}" ]]; then
  if [[ -d "${APPLE_SILICON_MODELS:-models}/mobilenet_v2_int8" ]]; then LEAK_MODEL=mobilenet_v2_int8; else LEAK_MODEL=cnn_fp32; fi
fi
ncycles=${LEAK_CYCLES:-1000}
[[ $quick == 1 ]] && LEAK_MODEL=cnn_fp32 && ncycles=300
echo "leak-check: native RSS, $ncycles compile+load cycles of $LEAK_MODEL (Gate A growth)"
COREML_LEAK_TEST=$ncycles "$bin/core_ml_compile_load_test" --model "$LEAK_MODEL" \
  --json "$out/gate-a.json" --csv "$out/gate-a.csv" >"$out/gate-a.log" 2>&1 || true
grep -E "^(memory|cache):" "$out/gate-a.log" || tail -5 "$out/gate-a.log"
judge "$out/gate-a.json" memory_growth_bytes "native compile+load $LEAK_MODEL" || failures=$((failures + 1))

if [[ $quick == 0 ]]; then
  secs=${SOAK_SECS:-60}
  echo "leak-check: native RSS, ${secs} s inference soak of $LEAK_MODEL (Gate D memory slope)"
  "$bin/core_ml_inference_soak" --model "$LEAK_MODEL" --duration "$secs" --out "$out" >"$out/gate-d.log" 2>&1 || true
  grep -E " calls in |^wrote" "$out/gate-d.log" || tail -5 "$out/gate-d.log"
  judge "$out/soak-$LEAK_MODEL-verdict.json" memory_slope_bytes_per_100_calls "native soak $LEAK_MODEL" \
    || failures=$((failures + 1))
fi

if [[ $failures -gt 0 ]]; then
  echo "leak-check: $failures check(s) FAILED (logs in $out/)"
  exit 1
fi
echo "leak-check: all checks passed (logs in $out/)"
