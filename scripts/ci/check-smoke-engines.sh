#!/usr/bin/env bash
# Checks which engine served each model in the output of core_ml_smoke_test.
#
#   scripts/ci/check-smoke-engines.sh SMOKE_OUTPUT [ENGINE]     (ENGINE: coreml, the default, or candle)
#
# Why: the smoke runs the engine chain ResilientEngine(CoreMlEngine, CandleEngine). When Core ML
# fails, Candle answers, parity still passes and the smoke exits 0, so a broken Core ML path would
# go unnoticed. The macOS workflow runs this check with ENGINE=coreml; on Linux the same output
# passes with ENGINE=candle. Models whose id ends in `_safetensors` are not Core ML packages: Candle
# serves them everywhere, so they are listed but never counted against ENGINE.
#
# Exit status: 0 every other model was served by ENGINE; 1 some model was served by another engine
# or failed; 2 usage error or no result table in the file. Bash 3.2 and BSD awk compatible (macOS).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 SMOKE_OUTPUT [ENGINE]" >&2
  exit 2
fi
file="$1"
want="${2:-coreml}"
if [[ ! -r "$file" ]]; then
  echo "check-smoke-engines: cannot read $file" >&2
  exit 2
fi

# The table: a header line starting with "model" and "engine", one row per model
# ("<id> <engine> ..." or "<id> FAILED: <error>"), then "<N> models, <M> iterations each, ...".
awk -v want="$want" '
  $1 == "model" && $2 == "engine" { in_table = 1; next }
  in_table && $2 == "models," && $4 == "iterations" { in_table = 0; done = 1; next }
  !in_table { next }
  /^\(engine chain:/ { chain = $0; next }
  NF < 2 { next }
  {
    rows++
    if ($2 == "FAILED:") { failed = failed "\n  " $0; bad++; next }
    if ($1 ~ /_safetensors$/) { other = other "\n  " $1 " (" $2 ", not a Core ML package)"; next }
    if ($2 != want) { wrong = wrong "\n  " $1 " served by " $2; bad++; next }
    ok++
  }
  END {
    if (!done || rows == 0) {
      print "check-smoke-engines: no smoke result table found" > "/dev/stderr"
      exit 2
    }
    printf "check-smoke-engines: %d of %d models served by %s\n", ok, rows, want
    if (other != "") print "not counted:" other
    if (wrong != "") print "served by another engine:" wrong
    if (failed != "") print "failed:" failed
    if (bad > 0 && chain != "") print "engine-chain note the smoke printed: " chain
    if (bad > 0 || ok == 0) exit 1
  }
' "$file"
