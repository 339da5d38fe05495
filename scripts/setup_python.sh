#!/usr/bin/env bash
# Create (or refresh) the project-local Python environment .venv/ at the repo root and install
# the pinned packages of scripts/models/requirements.txt. Idempotent: when .venv already holds
# exactly these requirements (recorded hash) and a working interpreter, it does nothing.
# Needs only python3 (3.11) with the venv module and pip; no torch, no system packages. Runs with
# bash 3.2 and BSD tools too (macOS).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQ="$ROOT/scripts/models/requirements.txt"
PY="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"

# The stamp: sha256 of the requirements file and of the interpreter's (major, minor), computed by
# the interpreter itself: macOS has no sha256sum by default. (No heredoc inside $(...): bash 3.2,
# macOS's /bin/bash, mis-parses some of those.)
STAMP_PY='import hashlib, sys
req = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
print(hashlib.sha256(("%s %s" % (req, sys.version_info[:2])).encode()).hexdigest())'
want="$("$PY" -c "$STAMP_PY" "$REQ")"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
   && "$VENV/bin/python" -c 'import coremltools, numpy, tokenizers, PIL' >/dev/null 2>&1; then
  echo "setup_python: .venv up to date ($("$VENV/bin/python" --version))"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup_python: creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
echo "setup_python: installing pinned requirements from scripts/models/requirements.txt"
"$VENV/bin/python" -m pip install --quiet --only-binary=:all: -r "$REQ"
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c 'import coremltools, numpy, tokenizers, PIL; print("setup_python: coremltools", coremltools.__version__, "numpy", numpy.__version__)' 2>&1 | grep -v "libcoremlpython"
echo "$want" > "$STAMP"
