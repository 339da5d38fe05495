#!/usr/bin/env python3
"""Compressed MiniLM-L6 variants for the memory benchmarks (issue #14): built from the fp32
package that download_models.py made, with coremltools' own compression passes.

    models/minilm_l6_int8/   ct.optimize.coreml.linear_quantize_weights (int8, symmetric, per channel)
                             -> constexpr_affine_dequantize
    models/minilm_l6_pal8/   ct.optimize.coreml.palettize_weights (8-bit uniform, per tensor)
                             -> constexpr_lut_to_dense

Expected outputs: bert.py's numpy forward pass (float64) with the weights this package holds,
decompressed by specread.py in plain numpy (and checked bit for bit against coremltools' loader):
the remaining error is arithmetic precision only. Runs in a few seconds; skipped when its stamp
(script hashes + the fp32 package's checksum) and its checksums match.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
from common import log  # noqa: E402

STAMP = ".stamp_compressed.json"
SUMS = "SHA256SUMS.compressed"
SCRIPT_FILES = ["compressed_minilm.py", "common.py", "specread.py", "bert.py", "npref.py"]
# Exact given the stored weights: fp32 arithmetic only (the fp32 variant's budget).
BUDGET = (1e-4, 1e-5)
VARIANTS = {
    "minilm_l6_int8": ("int8", "linear_quantize_weights",
                       dict(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=2048)),
    "minilm_l6_pal8": ("palettized8", "palettize_weights", dict(mode="uniform", nbits=8, weight_threshold=2048)),
}
SRC = "minilm_l6_fp32"


def wanted_stamp(out: Path) -> dict:
    return {
        "scripts": {f: common.sha256_file(HERE / f) for f in SCRIPT_FILES},
        "source_weights": common.sha256_file(out / SRC / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"),
        "source_spec": common.sha256_file(out / SRC / "model.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel"),
    }


def build(out: Path, model_id: str, quantization: str, fn: str, cfg: dict, ct) -> None:
    import bert
    import specread
    import coremltools.optimize.coreml as cto

    log(f"[models] {model_id}: {fn}({cfg}) on {SRC}")
    src = out / SRC
    op_cfg = cto.OpLinearQuantizerConfig(**cfg) if fn == "linear_quantize_weights" else cto.OpPalettizerConfig(**cfg)
    with common.quiet():
        mlm = ct.models.MLModel(str(src / "model.mlpackage"), skip_model_load=True)
        mlm = getattr(cto, fn)(mlm, cto.OptimizationConfig(global_config=op_cfg))
    pkg = common.start_model_dir(out, model_id, mlm)
    del mlm
    spec, consts = specread.read_consts(pkg)
    n_checked = specread.crosscheck_with_coremltools(pkg, consts)
    W = bert.weights_from_safetensors(bert.load_safetensors(out / "minilm_l6_safetensors" / "model.safetensors"))
    Wp = {}
    for name, w in W.items():
        # The passes rename a compressed const <name>_quantized / <name>_palettized.
        v = next((consts[k] for k in (name, f"{name}_quantized", f"{name}_palettized") if k in consts), None)
        if v is None:
            raise SystemExit(f"{model_id}: weight {name} {w.shape} not found in the package")
        assert v.shape == w.shape, (name, v.shape, w.shape)
        Wp[name] = v.astype(np.float32)
    C = bert.consts_from_package(specread.op_params(spec, consts))
    ids = np.load(src / "inputs" / "input_ids.npy")
    mask = np.load(src / "inputs" / "attention_mask.npy")
    ref = bert.forward(Wp, ids, mask, C)
    fp32 = np.load(src / "expected" / "embedding.npy")
    drift = common.diff_stats(ref, fp32)
    cos = float(np.sum(ref[0] * fp32[0]) / (np.linalg.norm(ref[0]) * np.linalg.norm(fp32[0])))
    log(f"[models] {model_id}: vs the fp32 reference l_inf {drift[0]:.2e} rmse {drift[1]:.2e} cosine {cos:.5f}")
    assert cos > 0.95, f"{model_id}: compression destroyed the embedding (cosine {cos})"
    fp32_man = json.loads((src / "manifest.json").read_text())
    man = dict(
        source=f"{SRC} package ({fp32_man['source']}) compressed with coremltools.optimize.coreml.{fn}({cfg})",
        precision="fp32",
        quantization=quantization,
        shapes=fp32_man["shapes"],
        accuracy_delta_l_inf=BUDGET[0],
        accuracy_delta_rmse=BUDGET[1],
        reference=("bert.py numpy forward pass (float64) with the weights this package holds, decompressed in numpy "
                   "by specread.py (checked bit-exact against coremltools' loader); remaining error is arithmetic "
                   "precision only"),
        tokenizer=fp32_man.get("tokenizer"),
        sentence=fp32_man.get("sentence"),
        compression={"function": f"coremltools.optimize.coreml.{fn}", "config": cfg,
                     "applied_to": f"the fp32 program of {SRC}; weights with fewer than 2048 elements stay fp32 consts"},
        reference_vs_fp32_reference={"l_inf": drift[0], "rmse": drift[1], "cosine": cos},
        consts_crosschecked=n_checked,
    )
    full = common.finish_model_dir(out, model_id, {"input_ids": ids, "attention_mask": mask},
                                   {"embedding": ref.astype(np.float32)}, man)
    log(f"[models] {model_id}: ops={full['ops']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(common.REPO_ROOT / "models"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    if not (out / SRC / "model.mlpackage").is_dir():
        raise SystemExit(f"{out / SRC} is missing: run download_models.py first")
    stamp = wanted_stamp(out)
    if not args.force and (out / STAMP).exists() and json.loads((out / STAMP).read_text()) == stamp and common.verify_sums(out, SUMS, VARIANTS)[0]:
        log(f"[models] compressed MiniLM variants up to date in {time.time() - t0:.1f}s")
        return
    for f in (STAMP, SUMS):
        (out / f).unlink(missing_ok=True)
    ct = common.import_coremltools()
    for mid, (q, fn, cfg) in VARIANTS.items():
        build(out, mid, q, fn, cfg, ct)
    (out / STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    common.write_sums(out, SUMS, VARIANTS)
    log(f"[models] compressed MiniLM variants built in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
