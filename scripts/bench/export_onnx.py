"""Export MobileNetV2 and MiniLM-L6 to ONNX with the very weights our fp32 Core ML packages hold.

The graphs are written by hand with onnx.helper (no torch), following the architectures of
scripts/models/mobilenet.py and scripts/models/bert.py. Every weight and scalar constant is read
out of models/<id>/model.mlpackage (scripts/models/specread.py: the spec, weight.bin and the
const ops), so ONNX Runtime runs the same numbers as CandleEngine:

    mobilenet_v2_fp32  conv weights/biases with the batch norms already folded in by coremltools
                       (mobilenet.params_from_spec); strides, pads and groups checked against the
                       spec's conv ops
    minilm_l6_fp32     every BERT weight by its const name (word_emb, pos_type, l<i>_q_w, ...),
                       the scalar constants (LayerNorm epsilon, 1/sqrt(32), -10000, clamps) from
                       the spec's ops (bert.consts_from_package)

Input and output names, dtypes and shapes are the Core ML model's (manifest.json io_schema).
Each export is checked: onnx.checker (full), op counts against the spec, then ONNX Runtime on
models/<id>/inputs/*.npy against models/<id>/expected/*.npy, failing if L-inf or RMSE exceeds
the manifest's budget. Output: target/onnx/<id>.onnx (+ <id>.json: provenance and the measured
error). Skips a model whose .json records the same package, script and onnx versions.

    .venv/bin/python scripts/bench/export_onnx.py [--model ID ...] [--force]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import benchlib

sys.path.insert(0, str(benchlib.MODELS_SCRIPTS))
import common  # noqa: E402  (scripts/models)

OPSET = 17  # LayerNormalization is opset 17; ONNX Runtime 1.31 runs it natively
# onnx 1.23 writes IR version 14 by default, newer than ONNX Runtime 1.31 reads (13); IR 8 is the
# version that goes with opset 17.
IR_VERSION = 8


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Graph:
    """A tiny builder over onnx.helper: initializers + nodes, each node named by its output."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits = [], []
        self.names = set()

    def const(self, name: str, value) -> str:
        arr = np.ascontiguousarray(value)
        assert name not in self.names, name
        self.names.add(name)
        self.inits.append(self.numpy_helper.from_array(arr, name))
        return name

    def scalar(self, name: str, value: float) -> str:
        return self.const(name, np.array(value, dtype=np.float32))

    def ints(self, name: str, values) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def op(self, op_type: str, inputs, out: str, **attrs) -> str:
        assert out not in self.names, out
        self.names.add(out)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def model(self, graph_name: str, io_schema: dict, doc: str):
        from onnx import TensorProto, helper

        types = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32}

        def vi(f):
            return helper.make_tensor_value_info(f["name"], types[f["dtype"]], f["shape"])

        g = helper.make_graph(self.nodes, graph_name, [vi(f) for f in io_schema["inputs"]],
                              [vi(f) for f in io_schema["outputs"]], initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="apple-silicon export_onnx.py",
                              doc_string=doc, ir_version=IR_VERSION)
        return m


# ----------------------------------------------------------------------------------------------
# MobileNetV2


def export_mobilenet(spec, consts, io_schema):
    import mobilenet
    import specread

    op_list = specread.op_params(spec, consts)
    P = mobilenet.params_from_spec(op_list)  # asserts shapes, groups, no batch_norm left
    convs, blocks = mobilenet.layers()
    spec_convs = [p for t, _, p in op_list if t == "conv"]
    for i, (sc, L) in enumerate(zip(spec_convs, convs)):
        got = (list(sc["strides"]), list(sc["pad"]), str(sc["pad_type"]), list(sc["dilations"]))
        want = ([L["stride"]] * 2, [L["pad"]] * 4, "custom", [1, 1])
        if got != want:
            raise SystemExit(f"conv {i} ({L['conv']}): expected strides/pad/pad_type/dilations {want}, the spec has {got}")

    g = Graph()
    (x,) = [f["name"] for f in io_schema["inputs"]]
    (out,) = [f["name"] for f in io_schema["outputs"]]
    zero, six = g.scalar("relu6_min", 0.0), g.scalar("relu6_max", 6.0)
    block_of_first = {b["first"]: b for b in blocks}
    block_in = None
    for i, L in enumerate(convs):
        if i in block_of_first:
            block_in = x
        w, b, _ = P["convs"][i]
        assert w.dtype == np.float32 and b.dtype == np.float32, (L["conv"], w.dtype, b.dtype)
        name = L["conv"].replace(".", "_")
        # MIL pad is [top, bottom, left, right]; ONNX [top, left, bottom, right]: all equal here.
        x = g.op("Conv", [x, g.const(f"{name}_weight", w), g.const(f"{name}_bias", b)], name,
                 kernel_shape=[L["k"], L["k"]], strides=[L["stride"]] * 2, pads=[L["pad"]] * 4, group=L["groups"],
                 dilations=[1, 1])
        if L["act"]:
            x = g.op("Clip", [x, zero, six], f"{name}_relu6")
        for blk in blocks:
            if blk["last"] == i and blk["residual"]:
                x = g.op("Add", [x, block_in], f"features_{blk['index']}_add")
    x = g.op("GlobalAveragePool", [x], "avgpool")
    x = g.op("Flatten", [x], "flatten", axis=1)
    w, b = P["fc"]
    g.op("Gemm", [x, g.const("classifier_1_weight", w), g.const("classifier_1_bias", b)], out, transB=1)
    # The spec's op types, one for one.
    mapping = {"conv": "Conv", "relu6": "Clip", "add": "Add", "reduce_mean": "GlobalAveragePool",
               "reshape": "Flatten", "linear": "Gemm"}
    return g, {mapping[t]: n for t, n in collections.Counter(t for t, _, _ in op_list).items()}


# ----------------------------------------------------------------------------------------------
# MiniLM-L6


def minilm_weight_names():
    import bert

    names = ["word_emb", "pos_type", "emb_ln_g", "emb_ln_b"]
    for layer in range(bert.LAYERS):
        for n in ("q", "k", "v", "ao", "fi", "fo"):
            names += [f"l{layer}_{n}_w", f"l{layer}_{n}_b"]
        names += [f"l{layer}_ln1_g", f"l{layer}_ln1_b", f"l{layer}_ln2_g", f"l{layer}_ln2_b"]
    return names


def export_minilm(spec, consts, io_schema):
    import bert
    import specread

    op_list = specread.op_params(spec, consts)
    C = bert.consts_from_package(op_list)
    W = {}
    for n in minilm_weight_names():
        if n not in consts:
            raise SystemExit(f"expected a const named {n} in the MiniLM package, found none (consts: {len(consts)})")
        if consts[n].dtype != np.float32:
            raise SystemExit(f"expected {n} to be float32 in the fp32 package, found {consts[n].dtype}")
        W[n] = consts[n]
    assert W["word_emb"].shape == (30522, bert.HIDDEN) and W["pos_type"].shape == (1, bert.SEQ, bert.HIDDEN)

    g = Graph()
    ids, mask = "input_ids", "attention_mask"
    assert [f["name"] for f in io_schema["inputs"]] == [ids, mask], io_schema
    (out,) = [f["name"] for f in io_schema["outputs"]]
    S, H, NH, HD = bert.SEQ, bert.HIDDEN, bert.HEADS, bert.HEAD_DIM

    def c(name):
        return g.const(name, W[name])

    def layer_norm(x, gamma, beta, name):
        return g.op("LayerNormalization", [x, c(gamma), c(beta)], name, axis=-1, epsilon=C["ln_eps"])

    def linear(x, prefix, name):
        # MIL linear: x @ W^T + b with W [out, in]; ONNX MatMul wants [in, out]: same values, transposed.
        y = g.op("MatMul", [x, g.const(f"{prefix}_w_t", np.ascontiguousarray(W[f"{prefix}_w"].T))], f"{name}_mm")
        return g.op("Add", [y, c(f"{prefix}_b")], name)

    h = g.op("Gather", [c("word_emb"), ids], "word_embeddings", axis=0)
    h = g.op("Add", [h, c("pos_type")], "embeddings_sum")
    h = layer_norm(h, "emb_ln_g", "emb_ln_b", "embeddings_ln")

    mask_f = g.op("Cast", [mask], "mask_f", to=1)  # FLOAT
    inv = g.op("Sub", [g.scalar("mask_one", C["mask_one"]), mask_f], "mask_inv")
    bias = g.op("Mul", [inv, g.scalar("mask_neg", C["mask_neg"])], "mask_bias")
    bias = g.op("Reshape", [bias, g.ints("mask_bias_4d_shape", [1, 1, 1, S])], "mask_bias_4d")

    split = g.ints("heads_split_shape", [1, S, NH, HD])
    merge = g.ints("heads_merge_shape", [1, S, H])
    scale = g.scalar("attention_scale", C["scale"])
    sqrt2 = g.scalar("gelu_sqrt2", np.sqrt(2.0))
    one, half = g.scalar("gelu_one", 1.0), g.scalar("gelu_half", 0.5)
    for layer in range(bert.LAYERS):
        p = f"l{layer}"

        def heads(n, perm):
            x = g.op("Reshape", [linear(h, f"{p}_{n}", f"{p}_{n}"), split], f"{p}_{n}_split")
            return g.op("Transpose", [x], f"{p}_{n}_heads", perm=perm)

        q = heads("q", [0, 2, 1, 3])
        kt = heads("k", [0, 2, 3, 1])  # k already transposed for q @ k^T
        v = heads("v", [0, 2, 1, 3])
        s = g.op("MatMul", [q, kt], f"{p}_scores")
        s = g.op("Mul", [s, scale], f"{p}_scaled")
        s = g.op("Add", [s, bias], f"{p}_masked")
        pr = g.op("Softmax", [s], f"{p}_probs", axis=-1)
        ctx = g.op("MatMul", [pr, v], f"{p}_ctx")
        ctx = g.op("Transpose", [ctx], f"{p}_ctx_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge], f"{p}_ctx_merge")
        a = g.op("Add", [linear(ctx, f"{p}_ao", f"{p}_ao"), h], f"{p}_res1")
        h = layer_norm(a, f"{p}_ln1_g", f"{p}_ln1_b", f"{p}_ln1")
        f = linear(h, f"{p}_fi", f"{p}_fi")
        # exact GELU: x * 0.5 * (1 + erf(x / sqrt 2))
        e = g.op("Erf", [g.op("Div", [f, sqrt2], f"{p}_gelu_div")], f"{p}_gelu_erf")
        e = g.op("Add", [e, one], f"{p}_gelu_add")
        f = g.op("Mul", [g.op("Mul", [f, e], f"{p}_gelu_mul"), half], f"{p}_gelu")
        a = g.op("Add", [linear(f, f"{p}_fo", f"{p}_fo"), h], f"{p}_res2")
        h = layer_norm(a, f"{p}_ln2_g", f"{p}_ln2_b", f"{p}_ln2")

    m3 = g.op("Reshape", [mask_f, g.ints("mask_3d_shape", [1, S, 1])], "mask_3d")
    hm = g.op("Mul", [h, m3], "masked_hidden")
    axis1 = g.ints("axis_1", [1])
    summed = g.op("ReduceSum", [hm, axis1], "pool_sum", keepdims=0)
    cnt = g.op("ReduceSum", [mask_f, axis1], "pool_count", keepdims=1)
    cnt = g.op("Max", [cnt, g.scalar("count_eps", C["count_eps"])], "pool_count_clamped")
    mean = g.op("Div", [summed, cnt], "pool_mean")
    ss = g.op("ReduceSum", [g.op("Mul", [mean, mean], "norm_sq"), axis1], "norm_sumsq", keepdims=1)
    n = g.op("Max", [g.op("Sqrt", [ss], "norm"), g.scalar("norm_eps", C["norm_eps"])], "norm_clamped")
    g.op("Div", [mean, n], out)
    # The spec's ops, one for one (linear = MatMul + Add, gelu = 5 nodes, split/merge reshapes).
    counts = collections.Counter(t for t, _, _ in op_list)
    want = {"linear": counts["linear"], "layer_norm": counts["layer_norm"], "softmax": counts["softmax"],
            "matmul": counts["matmul"], "gelu": counts["gelu"], "gather": counts["gather"]}
    have = {"linear": sum(1 for nd in g.nodes if nd.op_type == "MatMul" and nd.name.endswith("_mm")),
            "layer_norm": sum(1 for nd in g.nodes if nd.op_type == "LayerNormalization"),
            "softmax": sum(1 for nd in g.nodes if nd.op_type == "Softmax"),
            "matmul": sum(1 for nd in g.nodes if nd.op_type == "MatMul" and not nd.name.endswith("_mm")),
            "gelu": sum(1 for nd in g.nodes if nd.op_type == "Erf"),
            "gather": sum(1 for nd in g.nodes if nd.op_type == "Gather")}
    if have != want:
        raise SystemExit(f"MiniLM export: expected the spec's op counts {want}, built {have}")
    return g, None


# ----------------------------------------------------------------------------------------------


EXPORTERS = {"mobilenet_v2_fp32": export_mobilenet, "minilm_l6_fp32": export_minilm}


def verify(onnx_path: Path, mdir: Path, manifest: dict) -> dict:
    """ONNX Runtime on the golden inputs vs the expected outputs; fail outside the budget."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    schema = manifest["io_schema"]
    got_in = [(i.name, i.type, list(i.shape)) for i in sess.get_inputs()]
    want_in = [(f["name"], f"tensor({'float' if f['dtype'] == 'float32' else 'int32'})", f["shape"]) for f in schema["inputs"]]
    if got_in != want_in:
        raise SystemExit(f"{onnx_path.name}: expected inputs {want_in}, the session has {got_in}")
    feeds = {f["name"]: np.load(mdir / "inputs" / f"{f['name']}.npy") for f in schema["inputs"]}
    names = [f["name"] for f in schema["outputs"]]
    outs = sess.run(names, feeds)
    res = {}
    for name, got in zip(names, outs):
        want = np.load(mdir / "expected" / f"{name}.npy")
        if got.shape != want.shape or got.dtype != want.dtype:
            raise SystemExit(f"{onnx_path.name}: output {name}: expected {want.dtype}{list(want.shape)}, "
                             f"got {got.dtype}{list(got.shape)}")
        l_inf, rmse = common.diff_stats(got, want)
        res[name] = {"l_inf": l_inf, "rmse": rmse}
        budget = (manifest["accuracy_delta_l_inf"], manifest["accuracy_delta_rmse"])
        if l_inf > budget[0] or rmse > budget[1]:
            raise SystemExit(f"{onnx_path.name}: output {name} L-inf {l_inf:.3e} / RMSE {rmse:.3e} against "
                             f"{mdir / 'expected'}: expected at most {budget[0]:g} / {budget[1]:g}")
    return res


def export(model_id: str, out_dir: Path, force: bool) -> dict:
    import onnx
    import onnxruntime

    mdir = benchlib.model_dir(model_id)
    pkg = mdir / "model.mlpackage"
    spec_file = pkg / "Data" / "com.apple.CoreML" / "model.mlmodel"
    weight_file = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    provenance = {
        "model": model_id,
        "package_spec_sha256": sha256(spec_file),
        "package_weights_sha256": sha256(weight_file),
        "export_script_sha256": sha256(Path(__file__)),
        "onnx": onnx.__version__,
        "opset": OPSET,
        "ir_version": IR_VERSION,
    }
    onnx_path, meta_path = out_dir / f"{model_id}.onnx", out_dir / f"{model_id}.json"
    if not force and onnx_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("provenance") == provenance and meta.get("onnx_sha256") == sha256(onnx_path):
            benchlib.log(f"[export] {model_id}: up to date ({onnx_path}; L-inf {meta['verify']})")
            return meta

    import specread

    common.import_coremltools()  # specread parses the spec with coremltools' protobuf classes (quietly)
    manifest = json.loads((mdir / "manifest.json").read_text())
    benchlib.log(f"[export] {model_id}: reading weights from {pkg}")
    spec, consts = specread.read_consts(pkg)
    graph, spec_counts = EXPORTERS[model_id](spec, consts, manifest["io_schema"])
    model = graph.model(model_id, manifest["io_schema"],
                        f"{model_id}: weights read from the fp32 Core ML package (spec sha256 {provenance['package_spec_sha256']})")
    if spec_counts is not None:
        built = dict(collections.Counter(n.op_type for n in graph.nodes))
        if built != spec_counts:
            raise SystemExit(f"{model_id}: expected the spec's op counts {spec_counts}, built {built}")
    onnx.checker.check_model(model, full_check=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_suffix(".onnx.tmp")
    onnx.save_model(model, str(tmp))
    try:
        res = verify(tmp, mdir, manifest)
    except BaseException:
        tmp.unlink()  # a graph that fails the goldens is never left behind
        raise
    tmp.replace(onnx_path)
    meta = {
        "provenance": provenance,
        "onnx_sha256": sha256(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "nodes": len(graph.nodes),
        "initializers": len(graph.inits),
        "verify": res,
        "verified_with": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, ORT_ENABLE_ALL",
        "budget": {"l_inf": manifest["accuracy_delta_l_inf"], "rmse": manifest["accuracy_delta_rmse"]},
    }
    common.write_json(meta_path, meta)
    benchlib.log(f"[export] {model_id}: {onnx_path} ({meta['onnx_bytes'] / 1e6:.1f} MB, {meta['nodes']} nodes); "
                 f"ONNX Runtime vs expected/: {res} (budget L-inf {manifest['accuracy_delta_l_inf']:g})")
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=sorted(EXPORTERS),
                    help="model id to export (repeatable; default: all)")
    ap.add_argument("--out", default=str(benchlib.ONNX_DIR), help="output directory (default target/onnx)")
    ap.add_argument("--force", action="store_true", help="export even if an up-to-date export exists")
    args = ap.parse_args()
    for model_id in args.model or benchlib.EXPORTS:
        export(model_id, Path(args.out), args.force)


if __name__ == "__main__":
    main()
