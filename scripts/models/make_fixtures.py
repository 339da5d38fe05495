#!/usr/bin/env python3
"""Build the small committed fixture models under tests/fixtures/models/ (deterministic).

    .venv/bin/python scripts/models/make_fixtures.py [--out DIR]

Models (MIL Builder, seeded numpy weights, no torch), each in <out>/<id>/ with
model.mlpackage/, inputs/, expected/, manifest.json (see scripts/models/README.md):

    mlp_fp32 mlp_fp16 mlp_int8 mlp_palettized mlp_sparse
    cnn_fp32 cnn_fp16 cnn_int8 cnn_palettized

expected/ comes from npref.py (our own numpy forward pass, float64) using the weights the
package actually holds (read back with specread.py and cross-checked against coremltools).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import npref  # noqa: E402
import specread  # noqa: E402
from common import BUDGETS, log  # noqa: E402

ct = common.import_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402
import coremltools.optimize.coreml as cto  # noqa: E402

TARGET = ct.target.macOS13
FP16_SIM = lambda a: np.asarray(a, np.float16).astype(np.float64)  # noqa: E731
IDENT = lambda a: a  # noqa: E731

# Compression settings shared by the fixtures (applied to the fp16 program).
WEIGHT_THRESHOLD = 100  # every conv / linear weight in the fixtures is larger than this
COMPRESSIONS = {
    "int8": (
        "linear_quantize_weights",
        dict(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD),
    ),
    "palettized": ("palettize_weights", dict(mode="uniform", nbits=4, granularity="per_tensor", weight_threshold=WEIGHT_THRESHOLD)),
    "sparse": ("prune_weights", dict(target_sparsity=0.5, weight_threshold=WEIGHT_THRESHOLD)),
}


def convert(build, precision: str):
    prec = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}[precision]
    with common.quiet():
        return ct.convert(
            build(),  # fresh Program: ct.convert mutates the one it is given
            convert_to="mlprogram",
            minimum_deployment_target=TARGET,
            compute_precision=prec,
            skip_model_load=True,
        )


def compress(mlmodel, kind: str):
    fn, cfg = COMPRESSIONS[kind]
    config_cls = {"int8": cto.OpLinearQuantizerConfig, "palettized": cto.OpPalettizerConfig,
                  "sparse": cto.OpMagnitudePrunerConfig}[kind]
    with common.quiet():
        return getattr(cto, fn)(mlmodel, cto.OptimizationConfig(global_config=config_cls(**cfg)))


def compression_record(kind: str) -> dict:
    fn, cfg = COMPRESSIONS[kind]
    cls = {"int8": "OpLinearQuantizerConfig", "palettized": "OpPalettizerConfig", "sparse": "OpMagnitudePrunerConfig"}[kind]
    return {"function": f"coremltools.optimize.coreml.{fn}", "config_class": cls, "config": dict(cfg),
            "applied_to": "the fp16 program (compute_precision=FLOAT16)"}


# ----------------------------------------------------------------------------------------------
# MLP: x [1,64] -> linear 64->128 -> relu -> linear 128->64 -> gelu(EXACT) -> linear 64->10 -> logits


def mlp_weights():
    rng = np.random.default_rng(20240601)
    f = np.float32
    return {
        "fc1": (rng.normal(0, 1 / 8, (128, 64)).astype(f), rng.normal(0, 0.1, 128).astype(f)),
        "fc2": (rng.normal(0, 1 / np.sqrt(128), (64, 128)).astype(f), rng.normal(0, 0.1, 64).astype(f)),
        "fc3": (rng.normal(0, 1 / 8, (10, 64)).astype(f), rng.normal(0, 0.1, 10).astype(f)),
    }


def mlp_input():
    return np.random.default_rng(1001).standard_normal((1, 64)).astype(np.float32)


def mlp_program(W):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64), dtype=ct.converters.mil.mil.types.fp32)], opset_version=TARGET)
    def prog(x):
        h = mb.linear(x=x, weight=mb.const(val=W["fc1"][0], name="fc1_weight"), bias=mb.const(val=W["fc1"][1], name="fc1_bias"), name="fc1")
        h = mb.relu(x=h, name="relu1")
        h = mb.linear(x=h, weight=mb.const(val=W["fc2"][0], name="fc2_weight"), bias=mb.const(val=W["fc2"][1], name="fc2_bias"), name="fc2")
        h = mb.gelu(x=h, mode="EXACT", name="gelu2")
        return mb.linear(x=h, weight=mb.const(val=W["fc3"][0], name="fc3_weight"), bias=mb.const(val=W["fc3"][1], name="fc3_bias"), name="logits")

    return prog


def mlp_forward(P, x, act=IDENT):
    h = act(npref.relu(act(npref.linear(x, *P["fc1"]))))
    h = act(npref.gelu_exact(act(npref.linear(h, *P["fc2"]))))
    return act(npref.linear(h, *P["fc3"]))


def mlp_params_from_spec(spec, consts):
    lin = [p for t, _, p in specread.op_params(spec, consts) if t == "linear"]
    assert len(lin) == 3, len(lin)
    return {k: (p["weight"], p["bias"]) for k, p in zip(("fc1", "fc2", "fc3"), lin)}


# ----------------------------------------------------------------------------------------------
# CNN: image [1,3,32,32]
#   conv1 3->8 k3 s1 pad_type=same (+bias) -> batch_norm bn1 (folded into conv1 by coremltools)
#   -> relu -> max_pool k2 s2 -> conv2 8->16 k3 s2 pad=custom[1,1,1,1] groups=2 (no bias) -> relu
#   -> avg_pool k2 s2 -> batch_norm bn2 (after a pool: stays a batch_norm op)
#   -> reshape [1,256] -> linear 256->10 -> logits


def cnn_weights():
    rng = np.random.default_rng(20240602)
    f = np.float32

    def bn(c):
        return (
            rng.normal(0, 0.2, c).astype(f),  # mean
            rng.uniform(0.5, 1.5, c).astype(f),  # variance
            rng.uniform(0.7, 1.3, c).astype(f),  # gamma
            rng.normal(0, 0.1, c).astype(f),  # beta
        )

    return {
        "conv1": (rng.normal(0, 0.25, (8, 3, 3, 3)).astype(f), rng.normal(0, 0.1, 8).astype(f)),
        "bn1": bn(8),
        "conv2": (rng.normal(0, 1 / 6, (16, 4, 3, 3)).astype(f), None),
        "bn2": bn(16),
        "fc": (rng.normal(0, 1 / 16, (10, 256)).astype(f), rng.normal(0, 0.1, 10).astype(f)),
    }


BN_EPS = 1e-5


def cnn_input():
    return np.random.default_rng(1002).standard_normal((1, 3, 32, 32)).astype(np.float32)


def cnn_program(W):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 32, 32))], opset_version=TARGET)
    def prog(image):
        m, v, g, b = W["bn1"]
        x = mb.conv(
            x=image, weight=mb.const(val=W["conv1"][0], name="conv1_weight"), bias=mb.const(val=W["conv1"][1], name="conv1_bias"),
            strides=[1, 1], pad_type="same", name="conv1",
        )
        x = mb.batch_norm(x=x, mean=m, variance=v, gamma=g, beta=b, epsilon=BN_EPS, name="bn1")
        x = mb.relu(x=x, name="relu1")
        x = mb.max_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", name="pool1")
        x = mb.conv(
            x=x, weight=mb.const(val=W["conv2"][0], name="conv2_weight"), strides=[2, 2], pad_type="custom",
            pad=[1, 1, 1, 1], groups=2, name="conv2",
        )
        x = mb.relu(x=x, name="relu2")
        x = mb.avg_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", name="pool2")
        m, v, g, b = W["bn2"]
        x = mb.batch_norm(x=x, mean=m, variance=v, gamma=g, beta=b, epsilon=BN_EPS, name="bn2")
        x = mb.reshape(x=x, shape=[1, 256], name="flatten")
        return mb.linear(x=x, weight=mb.const(val=W["fc"][0], name="fc_weight"), bias=mb.const(val=W["fc"][1], name="fc_bias"), name="logits")

    return prog


def cnn_forward(P, image, act=IDENT):
    x = npref.conv2d(image, *P["conv1"], stride=(1, 1), pad=(1, 1, 1, 1))  # 'same', k3 s1
    if P["bn1"] is not None:
        x = npref.batch_norm(act(x), *P["bn1"][:4], P["bn1"][4])
    x = act(npref.relu(act(x)))
    x = act(npref.max_pool(x, (2, 2), (2, 2)))
    x = act(npref.conv2d(x, *P["conv2"], stride=(2, 2), pad=(1, 1, 1, 1), groups=2))
    x = act(npref.relu(x))
    x = act(npref.avg_pool(x, (2, 2), (2, 2)))
    x = act(npref.batch_norm(x, *P["bn2"][:4], P["bn2"][4]))
    x = x.reshape(1, 256)
    return act(npref.linear(x, *P["fc"]))


def cnn_params_original(W):
    return {
        "conv1": W["conv1"], "bn1": W["bn1"] + (BN_EPS,), "conv2": W["conv2"], "bn2": W["bn2"] + (BN_EPS,), "fc": W["fc"],
    }


def cnn_params_from_spec(spec, consts):
    ops = specread.op_params(spec, consts)
    convs = [p for t, _, p in ops if t == "conv"]
    bns = [p for t, _, p in ops if t == "batch_norm"]
    lins = [p for t, _, p in ops if t == "linear"]
    assert len(convs) == 2 and len(lins) == 1 and len(bns) in (1, 2), (len(convs), len(bns))
    assert int(convs[1]["groups"]) == 2 and list(convs[1]["strides"]) == [2, 2]

    def bnp(p):
        return (p["mean"], p["variance"], p["gamma"], p["beta"], float(p["epsilon"]))

    return {
        "conv1": (convs[0]["weight"], convs[0].get("bias")),
        "bn1": bnp(bns[0]) if len(bns) == 2 else None,  # None: folded into conv1 by coremltools
        "conv2": (convs[1]["weight"], convs[1].get("bias")),
        "bn2": bnp(bns[-1]),
        "fc": (lins[0]["weight"], lins[0]["bias"]),
    }


# ----------------------------------------------------------------------------------------------


def build_family(out: Path, family: str, variants: list[str]) -> list[str]:
    if family == "mlp":
        W, x = mlp_weights(), mlp_input()
        build = lambda: mlp_program(W)  # noqa: E731
        inputs = {"x": x}
        fwd = lambda P, act=IDENT: mlp_forward(P, x, act)  # noqa: E731
        P0 = W
        from_spec = mlp_params_from_spec
        shapes = {"batch": 1, "in_features": 64, "hidden": [128, 64], "classes": 10}
        source = "synthetic MLP (MIL Builder, numpy default_rng seed 20240601); input seed 1001"
    else:
        W, img = cnn_weights(), cnn_input()
        build = lambda: cnn_program(W)  # noqa: E731
        inputs = {"image": img}
        fwd = lambda P, act=IDENT: cnn_forward(P, img, act)  # noqa: E731
        P0 = cnn_params_original(W)
        from_spec = cnn_params_from_spec
        shapes = {"batch": 1, "channels": 3, "height": 32, "width": 32, "classes": 10}
        source = "synthetic CNN (MIL Builder, numpy default_rng seed 20240602); input seed 1002"

    ref32 = fwd(P0)  # float64, from the original float32 weights
    written = []
    for variant in variants:
        model_id = f"{family}_{variant}"
        log(f"[fixtures] {model_id}: build + convert")
        if variant == "fp32":
            mlm = convert(build, "fp32")
        else:
            mlm = convert(build, "fp16")
            if variant != "fp16":
                mlm = compress(mlm, variant)
        # Write the package first, then read the weights back from it for the reference.
        pkg = common.start_model_dir(out, model_id, mlm)
        spec, consts = specread.read_consts(pkg)
        n_checked = specread.crosscheck_with_coremltools(pkg, consts)

        if variant == "fp32":
            P = P0
            ref = ref32
            reference = ("npref.py numpy forward pass (float64) from the original float32 weights; "
                         "independent of the saved program's weights")
            # sanity: the fp32 package holds the original weights (folded BN aside)
            Ps = from_spec(spec, consts)
            drift = common.diff_stats(fwd(Ps), ref32)
            assert drift[0] < 1e-5, drift
        else:
            P = from_spec(spec, consts)
            ref = fwd(P)
            reference = ("npref.py numpy forward pass (float64) using the weights read back from this package "
                         "(fp16 consts / materialised constexpr ops, decoded by specread.py and checked bit-exact "
                         "against coremltools' milproto loader); remaining error is arithmetic precision only")
        expected = ref.astype(np.float32)
        budget_key = variant if variant in BUDGETS else "fp32"
        l_inf, rmse = BUDGETS[budget_key]
        extra = {
            "base_precision": "fp16" if variant != "fp32" else "fp32",
            "io_precision": "float32 inputs and outputs (fp16 programs cast at the boundaries)",
            "reference_vs_fp32_reference": dict(zip(("l_inf", "rmse"), common.diff_stats(ref, ref32))),
            "consts_crosschecked": n_checked,
        }
        if variant != "fp32":
            extra["fp16_activation_sim_delta"] = dict(zip(("l_inf", "rmse"), common.diff_stats(fwd(P, FP16_SIM), ref)))
            extra["fp16_activation_sim_note"] = (
                "deviation of the same forward pass with every activation rounded to fp16; what an engine that "
                "really computes in fp16 should roughly expect")
        if variant in COMPRESSIONS:
            extra["compression"] = compression_record(variant)
        extra["top1_class"] = int(np.argmax(expected))
        quant = {"fp32": "none", "fp16": "none", "int8": "int8", "palettized": "palettized4", "sparse": "sparse50"}[variant]
        man = dict(source=source, precision="fp32" if variant == "fp32" else "fp16", quantization=quant, shapes=shapes,
                   accuracy_delta_l_inf=l_inf, accuracy_delta_rmse=rmse, reference=reference, **extra)
        full = common.finish_model_dir(out, model_id, inputs, {"logits": expected}, man)
        log(f"[fixtures] {model_id}: ops={full['ops']} ref-vs-fp32 l_inf={extra['reference_vs_fp32_reference']['l_inf']:.3g}")
        written.append(model_id)
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(common.REPO_ROOT / "tests" / "fixtures" / "models"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = []
    ids += build_family(out, "mlp", ["fp32", "fp16", "int8", "palettized", "sparse"])
    ids += build_family(out, "cnn", ["fp32", "fp16", "int8", "palettized"])
    lines = []
    for mid in ids:
        for rel in common.tree_files(out / mid):
            lines.append(f"{common.sha256_file(out / mid / rel)}  {mid}/{rel}")
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    for mid in ids:
        size = sum((out / mid / r).stat().st_size for r in common.tree_files(out / mid))
        log(f"[fixtures] {mid}: {size} bytes")
    log(f"[fixtures] wrote {len(ids)} models to {out}")


if __name__ == "__main__":
    main()
