#!/usr/bin/env bash
# Create (or refresh) the project-local Python environment .venv/ at the repo root and install
# the pinned packages of scripts/models/requirements.txt. Idempotent: when .venv already holds
# exactly these requirements (recorded hash) and a working interpreter, it does nothing.
# Needs only python3 (3.11) with the venv module and pip; no torch, no system packages. Runs with
# bash 3.2 and BSD tools too (macOS).
#
#   bash scripts/setup_python.sh           # scripts/models (coremltools, numpy, tokenizers, pillow)
#   bash scripts/setup_python.sh --bench   # the above, plus scripts/bench/requirements.txt (onnx,
#                                          # onnxruntime) for make bench-peers; not needed by make test
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQ="$ROOT/scripts/models/requirements.txt"
BENCH_REQ="$ROOT/scripts/bench/requirements.txt"
PY="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"
BENCH_STAMP="$VENV/.bench-requirements.sha256"

bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    *) echo "setup_python: unexpected argument '$arg' (expected nothing or --bench)" >&2; exit 2 ;;
  esac
done

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# A stamp: sha256 over the given requirements files and the interpreter's (major, minor), computed
# by the interpreter itself: macOS has no sha256sum by default. (No heredoc inside $(...): bash 3.2,
# macOS's /bin/bash, mis-parses some of those.)
STAMP_PY='import hashlib, sys
reqs = " ".join(hashlib.sha256(open(f, "rb").read()).hexdigest() for f in sys.argv[1:])
print(hashlib.sha256(("%s %s" % (reqs, sys.version_info[:2])).encode()).hexdigest())'
want="$("$PY" -c "$STAMP_PY" "$REQ")"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
   && "$VENV/bin/python" -c 'import coremltools, numpy, tokenizers, PIL' >/dev/null 2>&1; then
  echo "setup_python: .venv up to date ($("$VENV/bin/python" --version))"
else
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup_python: creating $VENV with $("$PY" --version 2>&1)"
    "$PY" -m venv "$VENV"
  fi
  echo "setup_python: installing pinned requirements from scripts/models/requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --only-binary=:all: -r "$REQ"
  "$VENV/bin/python" -m pip check
  "$VENV/bin/python" -c 'import coremltools, numpy, tokenizers, PIL; print("setup_python: coremltools", coremltools.__version__, "numpy", numpy.__version__)' 2>&1 | grep -v "libcoremlpython"
  echo "$want" > "$STAMP"
fi

[[ "$bench" == 1 ]] || exit 0

# The bench stamp covers both files: reinstalling the base pins may move a shared package.
want_bench="$("$PY" -c "$STAMP_PY" "$REQ" "$BENCH_REQ")"
if [[ -f "$BENCH_STAMP" && "$(cat "$BENCH_STAMP")" == "$want_bench" ]] \
   && "$VENV/bin/python" -c 'import onnx, onnxruntime' >/dev/null 2>&1; then
  echo "setup_python: bench packages up to date"
  exit 0
fi
echo "setup_python: installing pinned bench requirements from scripts/bench/requirements.txt"
"$VENV/bin/python" -m pip install --quiet --only-binary=:all: -r "$BENCH_REQ"
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c 'import onnx, onnxruntime; print("setup_python: onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)'
echo "$want_bench" > "$BENCH_STAMP"
