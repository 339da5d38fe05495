"""Small helpers shared by scripts/bench: paths, /proc figures, percentiles."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_SCRIPTS = REPO_ROOT / "scripts" / "models"
ONNX_DIR = REPO_ROOT / "target" / "onnx"

# The Core ML packages we export to ONNX (fp32: the same float32 weights ONNX Runtime runs).
EXPORTS = ("mobilenet_v2_fp32", "minilm_l6_fp32")
# Zoo members (models/zoo/<member>) benched on their original ONNX files (scripts/bench/zoo_onnx.py).
ZOO_IDS = ("zoo/pplcnet_orientation", "zoo/ppocr_v4_det", "zoo/yolov8n_nudenet")


def models_dir() -> Path:
    """Where make download-models put the models: $APPLE_SILICON_MODELS or <repo>/models (as
    apple_silicon::golden::models_dir does)."""
    env = os.environ.get("APPLE_SILICON_MODELS")
    return Path(env) if env else REPO_ROOT / "models"


def model_dir(model_id: str) -> Path:
    d = models_dir() / model_id
    if not (d / "manifest.json").is_file():
        raise SystemExit(f"expected a downloaded model at {d} (manifest.json), found none: run `make download-models` "
                         "or set APPLE_SILICON_MODELS")
    return d


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS:, VmHWM:). Linux only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise SystemExit(f"expected a '{field} <n> kB' line in /proc/self/status, found none")


def pct(values, q: float) -> float:
    """Nearest-rank percentile, the same rule as candle_bench: sorted[round((n-1) q)] with
    halves rounded away from zero (Rust's f64::round, not Python's banker's round)."""
    v = sorted(values)
    if not v:
        raise ValueError("percentile of an empty sample")
    return v[int(math.floor((len(v) - 1) * q + 0.5))]


def median(values) -> float:
    return pct(values, 0.5)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def feeds(mdir: Path) -> dict:
    """A model's golden inputs by name: <mdir>/inputs/<name>.npy (the names in manifest.json's
    io_schema when it has one, else every file there)."""
    import json

    import numpy as np

    schema = json.loads((mdir / "manifest.json").read_text()).get("io_schema")
    names = [f["name"] for f in schema["inputs"]] if schema else sorted(p.stem for p in (mdir / "inputs").glob("*.npy"))
    return {n: np.load(mdir / "inputs" / f"{n}.npy") for n in names}


def onnx_feeds(sess, feeds: dict) -> dict:
    """`feeds` keyed by the session's input names: a one-input model whose input name the zoo
    sanitised (x.1 -> x_1) takes its one input whatever its name."""
    names = [i.name for i in sess.get_inputs()]
    if set(names) == set(feeds) or len(names) != 1 or len(feeds) != 1:
        return feeds
    return {names[0]: next(iter(feeds.values()))}
