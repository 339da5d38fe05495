#!/usr/bin/env python3
"""Build the multifunction fixture: one package, two functions sharing weights, under
tests/fixtures/features/multifunction/ (run by tests/features.rs through CandleEngine).

Two single-function ML Programs (iOS18, fp32) use the same trunk, a linear layer W1 [8, 4] + b1 and
a relu, with different heads:

    scores  x [1, 4] -> softmax(relu(x W1ᵀ + b1) W2ᵀ + b2)      -> probs [1, 3]   (the default)
    embed   x [2, 4] -> tanh(relu(x W1ᵀ + b1) W3ᵀ + b3)         -> embedding [2, 2]

`ct.utils.MultiFunctionDescriptor` + `save_multifunction` join them into one package; its
`const_deduplication` pass makes both functions read the trunk's weights from the same blob in
weight.bin (checked here: one offset for W1 in both functions). The spec then has
`description.functions` (one `FunctionDescription` each) and `defaultFunctionName`, and no
top-level inputs or outputs.

A second package, multifunction_counter/, has two stateful functions with the same state
`count` [1] fp16 (Core ML states are fp16): `add_one` (count += 1, y = x · count) and `add_two`
(count += 2, y = x + count), for the rule that a state belongs to one function.

Layout:
    model.mlpackage
    inputs/<function>/x.npy            seeded inputs
    expected/<function>/<output>.npy   float64 numpy on the same weights
    case.json                          functions, default, shared blob offset

Deterministic: seeded weights and inputs; the package is re-saved with common.save_package.

    .venv/bin/python scripts/features/multifunction.py [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "models"))

import common  # noqa: E402

ct = common.import_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

TARGET = ct.target.iOS18
NAME = "multifunction"
DEFAULT = "scores"


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)
    f = lambda *s: rng.normal(0, 0.7, size=s).astype(np.float32)  # noqa: E731
    return {"w1": f(8, 4), "b1": f(8), "w2": f(3, 8), "b2": f(3), "w3": f(2, 8), "b3": f(2)}


def convert(prog):
    with common.quiet():
        return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=TARGET,
                          compute_precision=ct.precision.FLOAT32, skip_model_load=True)


def programs(W):
    def trunk(x):
        return mb.relu(x=mb.linear(x=x, weight=W["w1"], bias=W["b1"]))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4), dtype=types.fp32)], opset_version=TARGET)
    def scores(x):
        return mb.softmax(x=mb.linear(x=trunk(x), weight=W["w2"], bias=W["b2"]), axis=-1, name="probs")

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4), dtype=types.fp32)], opset_version=TARGET)
    def embed(x):
        return mb.tanh(x=mb.linear(x=trunk(x), weight=W["w3"], bias=W["b3"]), name="embedding")

    return {"scores": scores, "embed": embed}


def counter_programs():
    specs = [mb.TensorSpec(shape=(2,), dtype=types.fp32), mb.StateTensorSpec(shape=(1,), dtype=types.fp16)]

    def step(by, combine):
        @mb.program(input_specs=specs, opset_version=TARGET)
        def prog(x, count):
            c = mb.coreml_update_state(state=count, value=mb.add(x=mb.read_state(input=count), y=np.float16(by)))
            return combine(x, mb.cast(x=c, dtype="fp32"))

        return prog

    return {
        "add_one": step(1, lambda x, c: mb.mul(x=x, y=c, name="y")),
        "add_two": step(2, lambda x, c: mb.add(x=x, y=c, name="y")),
    }


def join(progs: dict, default: str, tmp: str, name: str):
    """Converts each program, joins them with save_multifunction; the joined MLModel and its spec."""
    paths = {}
    for fn, prog in progs.items():
        paths[fn] = str(Path(tmp) / f"{name}_{fn}.mlpackage")
        with common.quiet():
            convert(prog).save(paths[fn])
    desc = ct.utils.MultiFunctionDescriptor()
    for fn, p in paths.items():
        desc.add_function(p, src_function_name="main", target_function_name=fn)
    desc.default_function_name = default
    joined = str(Path(tmp) / f"{name}.mlpackage")
    with common.quiet():
        ct.utils.save_multifunction(desc, joined)
        mlmodel = ct.models.MLModel(joined, skip_model_load=True)
    spec = mlmodel.get_spec()
    names = [f.name for f in spec.description.functions]
    if sorted(names) != sorted(paths) or spec.description.defaultFunctionName != default:
        raise SystemExit(f"{name}: unexpected functions {names}, default {spec.description.defaultFunctionName}")
    return mlmodel, spec, names


def build_counter(out: Path) -> None:
    """Writes out/multifunction_counter/ (package and case.json: the expected runs)."""
    d = out / "multifunction_counter"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel, spec, names = join(counter_programs(), "add_one", tmp, "counter")
        if any(len(f.state) != 1 for f in spec.description.functions):
            raise SystemExit("multifunction_counter: each function must declare its state")
        common.save_package(mlmodel, d / "model.mlpackage", "features/multifunction_counter")
    x = [1.5, -2.0]
    runs = {fn: [] for fn in names}
    for fn, by in (("add_one", 1), ("add_two", 2)):
        count = 0
        for _ in range(3):
            count += by
            y = [v * count for v in x] if fn == "add_one" else [v + count for v in x]
            runs[fn].append({"count": count, "y": y})
    common.write_json(d / "case.json", {"functions": names, "default": "add_one", "x": x, "runs": runs})


def reference(W, fn: str, x: np.ndarray) -> dict[str, np.ndarray]:
    f = {k: v.astype(np.float64) for k, v in W.items()}
    h = np.maximum(x.astype(np.float64) @ f["w1"].T + f["b1"], 0.0)
    if fn == "scores":
        z = h @ f["w2"].T + f["b2"]
        p = np.exp(z - z.max(-1, keepdims=True))
        return {"probs": p / p.sum(-1, keepdims=True)}
    return {"embedding": np.tanh(h @ f["w3"].T + f["b3"])}


def w1_offsets(spec) -> dict[str, int]:
    """The weight.bin offset each function reads W1 (the [8, 4] const) from."""
    out = {}
    for fname, func in spec.mlProgram.functions.items():
        block = func.block_specializations[func.opset]
        for op in block.operations:
            if op.type != "const":
                continue
            v = op.attributes["val"]
            dims = [d.constant.size for d in v.type.tensorType.dimensions]
            if dims == [8, 4] and v.WhichOneof("value") == "blobFileValue":
                out[fname] = v.blobFileValue.offset
    return out


def build(out: Path) -> None:
    """Writes the fixture under out/multifunction/."""
    W = weights()
    d = out / NAME
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel, spec, names = join(programs(W), DEFAULT, tmp, NAME)
        offsets = w1_offsets(spec)
        if len(offsets) != 2 or len(set(offsets.values())) != 1:
            raise SystemExit(f"the trunk's weights are not shared: W1 offsets {offsets}")
        common.save_package(mlmodel, d / "model.mlpackage", f"features/{NAME}")

    rng = np.random.default_rng(13)
    shapes = {"scores": (1, 4), "embed": (2, 4)}
    for fn, shape in shapes.items():
        x = rng.normal(0, 1, size=shape).astype(np.float32)
        (d / "inputs" / fn).mkdir(parents=True)
        (d / "expected" / fn).mkdir(parents=True)
        common.write_npy(d / "inputs" / fn / "x.npy", x)
        for oname, v in reference(W, fn, x).items():
            common.write_npy(d / "expected" / fn / f"{oname}.npy", v)
    common.write_json(d / "case.json", {
        "functions": names,
        "default": DEFAULT,
        "outputs": {"scores": ["probs"], "embed": ["embedding"]},
        "shared_w1_offset": next(iter(offsets.values())),
    })
    build_counter(out)
    common.log(f"multifunction fixtures written to {d} and {out / 'multifunction_counter'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "features")
    build(ap.parse_args().out)


if __name__ == "__main__":
    main()
