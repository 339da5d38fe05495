#!/usr/bin/env python3
"""Build the opset conformance suite: every case of every `cases_*.py` next to this file, written to
tests/fixtures/conformance/<family>/<name>/ (layout in case.py).

Each case becomes a one-function MIL program at the case's opset (input specs from its input arrays),
converted with a minimal pass pipeline (output dtypes, fp16 casts for fp16 cases, dead code) so
that the op under test reaches the package as written -- the default pipeline would fuse or fold
some of them. The op must appear in the converted program, or the build fails.

Deterministic: inputs come from the cases (seeded), packages are saved with common.save_package.

    .venv/bin/python scripts/conformance/build.py [--only GLOB] [--family F] [--out DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "scripts" / "models"))

import common  # noqa: E402
from case import OPSETS, Case  # noqa: E402

ct = common.import_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import Function, Program, types  # noqa: E402

# Only what a single-op program needs: no fusion or folding may replace the op under test.
PASSES = [
    "common::update_output_dtypes",
    "common::sanitize_input_output_names",
    "common::add_fp16_cast",
    "common::add_int16_cast",
    "common::update_output_dtypes",
    "common::dead_code_elimination",
    "common::dedup_op_and_var_names",
]

DTYPES = {
    np.dtype(np.float32): types.fp32,
    np.dtype(np.float16): types.fp16,
    np.dtype(np.int32): types.int32,
    np.dtype(np.bool_): types.bool,
}

FP16 = 10  # MIL DataType FLOAT16

# Core ML multi-array dtypes in the converted spec -> numpy.
IO_DTYPES = {65568: np.float32, 65552: np.float16, 131104: np.int32, 65600: np.float64}


def load_cases() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(HERE.glob("cases_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cases.extend(mod.cases())
    seen = set()
    for c in cases:
        key = (c.family, c.name)
        if key in seen:
            raise SystemExit(f"duplicate case {c.family}/{c.name}")
        seen.add(key)
        if c.opset not in OPSETS:
            raise SystemExit(f"{c.family}/{c.name}: opset {c.opset} not in {OPSETS}")
        if c.precision not in ("fp32", "fp16"):
            raise SystemExit(f"{c.family}/{c.name}: precision {c.precision}")
        if set(c.states) != set(c.expected_states):
            raise SystemExit(f"{c.family}/{c.name}: states {sorted(c.states)} but expected_states "
                             f"{sorted(c.expected_states)}")
    return cases


def program_of(case: Case):
    target = getattr(ct.target, case.opset)
    specs = {}
    for name, arr in case.inputs.items():
        if arr.dtype not in DTYPES:
            raise SystemExit(f"{case.family}/{case.name}: input {name} has dtype {arr.dtype}")
        specs[name] = mb.TensorSpec(shape=arr.shape, dtype=DTYPES[arr.dtype])
    for name, arr in case.states.items():
        if arr.dtype not in DTYPES or name in specs:
            raise SystemExit(f"{case.family}/{case.name}: state {name} ({arr.dtype}) is not a new name of a known dtype")
        specs[name] = mb.StateTensorSpec(shape=arr.shape, dtype=DTYPES[arr.dtype])
    with Function(specs, target) as fn:
        outs = case.build(**{n: fn.inputs[n] for n in [*case.inputs, *case.states]})
        if not isinstance(outs, (tuple, list)):
            outs = [outs]
        outs = list(outs)
        names = case.stats if case.check == "distribution" else case.expected
        if case.classifier is not None:
            names = ["probabilities"]  # converted as a classifier: classify's outputs replace it
        if len(outs) != len(names):
            raise SystemExit(f"{case.family}/{case.name}: {len(outs)} outputs, {len(names)} expected")
        named = []
        for var, key in zip(outs, names):
            if var.op is None:  # a program input returned as is
                var = mb.identity(x=var)
            var.set_name(key)
            named.append(var)
        fn.set_outputs(named)
    prog = Program()
    prog.add_function("main", fn)
    return prog, target


def main_ops(spec) -> list[str]:
    """Op types of the main block and of every block nested in it (cond / while_loop bodies)."""
    out: list[str] = []

    def walk(block):
        for op in block.operations:
            out.append(op.type)
            for b in op.blocks:
                walk(b)

    walk(common.main_block(spec))
    return out


def build_case(case: Case, out_root: Path) -> None:
    prog, target = program_of(case)
    prec = ct.precision.FLOAT16 if case.precision == "fp16" else ct.precision.FLOAT32
    with common.quiet():
        mlmodel = ct.convert(
            prog,
            convert_to="mlprogram",
            minimum_deployment_target=target,
            compute_precision=prec,
            skip_model_load=True,
            pass_pipeline=ct.PassPipeline(PASSES, "conformance"),
            **({"classifier_config": ct.ClassifierConfig(case.classifier)} if case.classifier is not None else {}),
        )
    spec = mlmodel.get_spec()
    ops = main_ops(spec)
    if case.op not in ops:
        raise SystemExit(f"{case.family}/{case.name}: op {case.op} is not in the converted program ({ops})")
    if case.precision == "fp32" and not any(a.dtype == np.float16 for a in case.inputs.values()):
        fp16 = [op.type for op in common.main_block(spec).operations
                if any(o.type.tensorType.dataType == FP16 for o in op.outputs)]
        if case.states:
            # States are fp16 only: reading one, and the casts to and from it, are fp16 by design.
            fp16 = [t for t in fp16 if t not in ("read_state", "cast")]
        if fp16 and case.op != "cast":
            raise SystemExit(f"{case.family}/{case.name}: fp32 program computes in fp16: {fp16}")

    d = out_root / case.family / case.name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    common.save_package(mlmodel, d / "model.mlpackage", f"conformance/{case.family}/{case.name}")
    io_in = {f.name: IO_DTYPES[f.type.multiArrayType.dataType] for f in spec.description.input}
    for name, arr in case.inputs.items():
        # Written in the model's interface dtype (bool and iOS15 fp16 inputs are fp32 there).
        common.write_npy(d / "inputs" / f"{name}.npy", np.asarray(arr).astype(io_in[name]))
    io_state = {f.name: IO_DTYPES[f.type.stateType.arrayType.dataType] for f in spec.description.state}
    if set(io_state) != set(case.states):
        raise SystemExit(f"{case.family}/{case.name}: the model's states {sorted(io_state)}, the case's "
                         f"{sorted(case.states)}")
    for name, arr in case.states.items():
        common.write_npy(d / "states" / f"{name}.npy", np.asarray(arr).astype(io_state[name]))
    for folder, refs in (("expected", case.expected), ("expected_states", case.expected_states)):
        for name, arr in refs.items():
            arr = np.asarray(arr)
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float64)
            elif arr.dtype.kind in "iu":
                arr = arr.astype(np.int32)
            elif arr.dtype == np.bool_:
                # Stored as uint8 0/1: the crate's .npy reader takes `|u1`, not `|b1`.
                arr = arr.astype(np.uint8)
            if arr.ndim == 0:
                # A scalar output (e.g. classify's label) stays rank 0: write_npy's
                # ascontiguousarray would make it [1].
                (d / folder).mkdir(parents=True, exist_ok=True)
                with open(d / folder / f"{name}.npy", "wb") as f:
                    np.lib.format.write_array(f, arr, version=(1, 0), allow_pickle=False)
                continue
            common.write_npy(d / folder / f"{name}.npy", arr)
    common.write_json(
        d / "case.json",
        {
            "op": case.op,
            "family": case.family,
            "name": case.name,
            "opset": case.opset,
            "precision": case.precision,
            "rtol": case.rtol,
            "note": case.note,
            **({"check": case.check, "stats": case.stats} if case.check != "values" else {}),
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="glob over <family>/<name> or <name>")
    ap.add_argument("--family", help="only this family")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "conformance")
    args = ap.parse_args()
    cases = load_cases()
    if args.family:
        cases = [c for c in cases if c.family == args.family]
    if args.only:
        cases = [c for c in cases
                 if fnmatch.fnmatch(f"{c.family}/{c.name}", args.only) or fnmatch.fnmatch(c.name, args.only)]
    if not cases:
        raise SystemExit("no case selected")
    full = not args.only and not args.family
    if full:
        # A full build owns the family folders it writes: stale cases go.
        for fam in sorted({c.family for c in cases}):
            names = {c.name for c in cases if c.family == fam}
            fam_dir = args.out / fam
            if fam_dir.is_dir():
                for sub in fam_dir.iterdir():
                    if sub.is_dir() and sub.name not in names:
                        shutil.rmtree(sub)
    for c in cases:
        build_case(c, args.out)
    common.log(f"[conformance] built {len(cases)} cases under {args.out}")


if __name__ == "__main__":
    main()
