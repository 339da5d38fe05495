"""Shared helpers for make_fixtures.py and download_models.py.

Everything here is about writing model directories deterministically:

    <root>/<id>/model.mlpackage/   ML Program (coremltools 9.0), made byte-stable
    <root>/<id>/inputs/<name>.npy  golden inputs (np.save, format v1.0)
    <root>/<id>/expected/<name>.npy expected outputs (float32)
    <root>/<id>/manifest.json

and about reading a saved package back (see specread.py) so that references for fp16 /
quantized variants use exactly the weights the package holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]

# Accuracy budgets (plan section 9), per precision / quantization.
BUDGETS = {
    "fp32": (1e-4, 1e-5),
    "fp16": (1e-2, 1e-3),
    "int8": (5e-2, 5e-3),
    "palettized": (5e-2, 5e-3),
    "sparse": (1e-2, 1e-3),  # pruning is exact given the stored weights: fp16 arithmetic only
}

MANIFEST_NAMESPACE = uuid.UUID("5f1c2a8e-3f0e-5b7c-9d43-6170706c6573")  # fixed, arbitrary


def log(msg: str) -> None:
    print(msg, flush=True)


def import_coremltools():
    """Import coremltools quietly (it logs missing native runtime on Linux) and disable tqdm."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        import coremltools as ct  # noqa: F401
        from coremltools.converters.mil import Builder  # noqa: F401
    if ct.__version__ != "9.0":
        raise SystemExit(f"coremltools 9.0 required, found {ct.__version__} (run scripts/setup_python.sh)")
    return ct


@contextlib.contextmanager
def quiet():
    """Silence coremltools' progress bars / prints during conversion."""
    buf_out, buf_err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            yield
    except Exception:
        sys.stderr.write(buf_err.getvalue()[-4000:])
        raise


# ----------------------------------------------------------------------------------------------
# Deterministic package writing


VOLATILE_METADATA = ("com.github.apple.coremltools.conversion_date",)


def save_package(mlmodel, pkg_dir: Path, model_id: str) -> None:
    """Save an MLModel as <pkg_dir> (an .mlpackage) with byte-stable contents.

    coremltools writes a fresh random UUID pair into Manifest.json and today's date into the
    spec metadata; protobuf map ordering is not guaranteed either. We save to a temp dir, then
    drop volatile metadata, re-serialise deterministically and replace the UUIDs with uuid5's
    derived from the model id, keeping Manifest.json's structure and formatting.
    """
    from coremltools.proto import Model_pb2

    pkg_dir = Path(pkg_dir)
    with tempfile.TemporaryDirectory(dir=pkg_dir.parent) as tmp:
        tmp_pkg = Path(tmp) / "model.mlpackage"
        with quiet():
            mlmodel.save(str(tmp_pkg))
        spec_path = tmp_pkg / "Data" / "com.apple.CoreML" / "model.mlmodel"
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_path.read_bytes())
        for key in VOLATILE_METADATA:
            if key in spec.description.metadata.userDefined:
                del spec.description.metadata.userDefined[key]
        spec_path.write_bytes(spec.SerializeToString(deterministic=True))

        man_path = tmp_pkg / "Manifest.json"
        text = man_path.read_text()
        manifest = json.loads(text)
        old_root = manifest["rootModelIdentifier"]
        entries = {}
        id_map = {}
        for old_id, entry in manifest["itemInfoEntries"].items():
            new_id = str(uuid.uuid5(MANIFEST_NAMESPACE, f"{model_id}/{entry['path']}"))
            id_map[old_id] = new_id
            entries[new_id] = entry
        manifest["itemInfoEntries"] = entries
        manifest["rootModelIdentifier"] = id_map[old_root]
        # coremltools (nlohmann::json) writes sorted keys, 4-space indent, trailing newline.
        new_text = json.dumps(manifest, indent=4, sort_keys=True) + "\n"
        # Sanity: our formatter reproduces coremltools' bytes for the original manifest.
        assert json.dumps(json.loads(text), indent=4, sort_keys=True) + "\n" == text, "Manifest.json format changed"
        man_path.write_text(new_text)

        if pkg_dir.exists():
            shutil.rmtree(pkg_dir)
        shutil.move(str(tmp_pkg), str(pkg_dir))


def write_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(arr)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=(1, 0), allow_pickle=False)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path):
    """All files under root, sorted, as relative posix paths."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------
# Spec inspection


MIL_DTYPE_NAMES = {1: "bool", 2: "string", 10: "fp16", 11: "fp32", 12: "fp64", 21: "int8", 22: "int16", 23: "int32",
                   24: "int64", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64"}
DTYPE_NAMES = {65568: "float32", 65600: "float64", 65552: "float16", 131104: "int32", 131080: "int8"}


def io_schema(spec) -> dict:
    def feat(f):
        ma = f.type.multiArrayType
        return {"name": f.name, "dtype": DTYPE_NAMES[ma.dataType], "shape": [int(d) for d in ma.shape]}

    return {
        "inputs": [feat(f) for f in spec.description.input],
        "outputs": [feat(f) for f in spec.description.output],
    }


def iter_ops(block):
    for op in block.operations:
        yield op
        for b in op.blocks:
            yield from iter_ops(b)


def main_block(spec):
    fn = spec.mlProgram.functions["main"]
    return fn.block_specializations[fn.opset]


def op_summary(spec) -> tuple[list[str], dict[str, int], dict, dict]:
    """(sorted op types, count per type, per-constexpr-type attribute/input details,
    per-op-type sorted input parameter names as they appear in the spec)."""
    counts: dict[str, int] = {}
    constexpr: dict[str, dict] = {}
    params: dict[str, set] = {}
    for op in iter_ops(main_block(spec)):
        counts[op.type] = counts.get(op.type, 0) + 1
        params.setdefault(op.type, set()).update(op.inputs.keys())
        if op.type.startswith("constexpr_"):
            rec = constexpr.setdefault(op.type, {"inputs": sorted(op.inputs.keys()), "attributes": {}})
            for k, v in op.attributes.items():
                if k == "name":
                    continue
                tt = v.type.tensorType
                a = rec["attributes"].setdefault(k, {"dtype": set(), "rank": set(), "storage": set()})
                a["dtype"].add(MIL_DTYPE_NAMES.get(tt.dataType, str(tt.dataType)))
                a["rank"].add(int(tt.rank))
                a["storage"].add(v.WhichOneof("value"))
    for rec in constexpr.values():
        rec["attributes"] = {
            k: {kk: sorted(vv) for kk, vv in a.items()} for k, a in sorted(rec["attributes"].items())
        }
    op_inputs = {t: sorted(v) for t, v in sorted(params.items()) if t != "const" and not t.startswith("constexpr_")}
    return sorted(counts), dict(sorted(counts.items())), dict(sorted(constexpr.items())), op_inputs


def diff_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(np.max(np.abs(d))), float(np.sqrt(np.mean(d * d)))


# ----------------------------------------------------------------------------------------------
# Model directory


def start_model_dir(root: Path, model_id: str, mlmodel) -> Path:
    """Replace <root>/<model_id>/ by a directory holding only model.mlpackage; return its path."""
    out = Path(root) / model_id
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pkg = out / "model.mlpackage"
    save_package(mlmodel, pkg, model_id)
    return pkg


def finish_model_dir(
    root: Path,
    model_id: str,
    inputs: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    manifest: dict,
) -> dict:
    """Write inputs/, expected/ and manifest.json next to model.mlpackage; return the manifest."""
    from coremltools.proto import Model_pb2

    out = Path(root) / model_id
    pkg = out / "model.mlpackage"

    spec = Model_pb2.Model()
    spec.ParseFromString((pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    schema = io_schema(spec)
    for f in schema["inputs"]:
        arr = inputs[f["name"]]
        assert str(arr.dtype) == f["dtype"] and list(arr.shape) == f["shape"], (f, arr.dtype, arr.shape)
        write_npy(out / "inputs" / f"{f['name']}.npy", arr)
    for f in schema["outputs"]:
        arr = expected[f["name"]]
        assert arr.dtype == np.float32 and list(arr.shape) == f["shape"], (f, arr.dtype, arr.shape)
        write_npy(out / "expected" / f"{f['name']}.npy", arr)

    ops, counts, constexpr, op_inputs = op_summary(spec)
    full = {
        "model": model_id,
        "source": manifest.pop("source"),
        "backend": "mlprogram",
        "precision": manifest.pop("precision"),
        "quantization": manifest.pop("quantization"),
        "compute_units": "all",
        "ane_op_coverage_pct": None,
        "expected_speedup_m1": None,
        "expected_speedup_m2": None,
        "expected_speedup_m3": None,
        "io_schema": schema,
        "shapes": manifest.pop("shapes"),
        "accuracy_delta_l_inf": manifest.pop("accuracy_delta_l_inf"),
        "accuracy_delta_rmse": manifest.pop("accuracy_delta_rmse"),
        "reference": manifest.pop("reference"),
        "ops": ops,
        "op_counts": counts,
        "constexpr_ops": constexpr,
        "op_inputs": op_inputs,
        "spec_version": int(spec.specificationVersion),
        "opset": spec.mlProgram.functions["main"].opset,
        "minimum_deployment_target": manifest.pop("minimum_deployment_target", "macOS13"),
        "coremltools_version": "9.0",
    }
    full.update(manifest)  # model-specific keys
    write_json(out / "manifest.json", full)
    return full


def write_sums(root: Path, sums: str, model_ids, extra=()) -> None:
    """Writes `root/sums`: a sha256 line for every file of each model directory in `model_ids`
    and for each file named in `extra` (paths relative to `root`)."""
    lines = [f"{sha256_file(root / mid / rel)}  {mid}/{rel}" for mid in model_ids for rel in tree_files(root / mid)]
    lines += [f"{sha256_file(root / rel)}  {rel}" for rel in extra]
    (root / sums).write_text("\n".join(lines) + "\n")


def verify_sums(root: Path, sums: str, model_ids) -> tuple[bool, str]:
    """Whether every file listed in `root/sums` exists with its digest and every file of each model
    directory in `model_ids` is listed; (ok, what was found or what is wrong)."""
    path = root / sums
    if not path.exists():
        return False, f"no {sums}"
    listed = set()
    for line in path.read_text().splitlines():
        digest, rel = line.split("  ", 1)
        listed.add(rel)
        p = root / rel
        if not p.is_file():
            return False, f"missing {rel}"
        if sha256_file(p) != digest:
            return False, f"checksum mismatch {rel}"
    for mid in model_ids:
        if not (root / mid).is_dir():
            return False, f"missing {mid}/"
        for rel in tree_files(root / mid):
            if f"{mid}/{rel}" not in listed:
                return False, f"unlisted file {mid}/{rel}"
    return True, f"{len(listed)} files verified"
