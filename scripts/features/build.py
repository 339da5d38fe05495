#!/usr/bin/env python3
"""Build the feature-type fixtures: ML Programs with `ImageType` inputs and a classifier, under
tests/fixtures/features/<case>/ (run by tests/features.rs through CandleEngine).

Each case is a small MIL program converted by coremltools with `inputs=[ct.ImageType(...)]`
(coremltools writes the image's scale and bias as `mul` / `add` ops at the top of `main`, and an
`ImageFeatureType` with width, height and color space in the description) and, for the
classifier, `ct.ClassifierConfig` (a `classify` op, a string label output and a dictionary).

Layout of a case directory:
    model.mlpackage
    pixels.npy        uint8 [H, W, 3] (RGB order) or [H, W] (gray): the image the test feeds
    expected/<out>.npy float64 references computed here with numpy from the pixels
    case.json         input name, color layout, and for a classifier the label and probabilities

Deterministic: seeded pixels and weights; packages saved with common.save_package.

    .venv/bin/python scripts/features/build.py [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "models"))

import common  # noqa: E402

ct = common.import_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

sys.path.insert(0, str(HERE))
import multifunction  # noqa: E402

TARGET = ct.target.iOS16


def convert(prog, image_type, classifier=None):
    with common.quiet():
        return ct.convert(
            prog,
            convert_to="mlprogram",
            inputs=[image_type],
            minimum_deployment_target=TARGET,
            compute_precision=ct.precision.FLOAT32,
            skip_model_load=True,
            **({"classifier_config": ct.ClassifierConfig(classifier)} if classifier else {}),
        )


def ops_of(mlmodel) -> list[str]:
    return [op.type for op in common.main_block(mlmodel.get_spec()).operations]


def image_case(out: Path, name: str, layout, h: int, w: int, scale: float, bias, seed: int) -> None:
    """y = preprocess(image) * k[c] + 0.5: a per-channel weight makes the channel order visible."""
    rng = np.random.default_rng(seed)
    gray = layout == ct.colorlayout.GRAYSCALE
    c = 1 if gray else 3
    pixels = rng.integers(0, 256, size=(h, w) if gray else (h, w, 3), dtype=np.uint8)
    k = np.arange(1, c + 1, dtype=np.float32).reshape(1, c, 1, 1) * np.float32(1.5)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, c, h, w), dtype=types.fp32)], opset_version=TARGET)
    def prog(image):
        return mb.add(x=mb.mul(x=image, y=k, name="weighted"), y=np.float32(0.5), name="y")

    it = ct.ImageType(name="image", shape=(1, c, h, w), color_layout=layout, scale=scale, bias=bias)
    mlmodel = convert(prog, it)
    ops = ops_of(mlmodel)
    if ops.count("mul") < 2 and scale != 1:
        raise SystemExit(f"{name}: expected the image's scale as a `mul` op, got {ops}")

    # Core ML's tensor: raw pixel values, channels in the model's color layout.
    if gray:
        x = pixels.astype(np.float64)[None, None]
    else:
        chw = pixels.astype(np.float64).transpose(2, 0, 1)  # R, G, B
        x = (chw if layout == ct.colorlayout.RGB else chw[::-1])[None]
    b = np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    y = (x * scale + b) * k.astype(np.float64) + 0.5

    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    common.save_package(mlmodel, d / "model.mlpackage", f"features/{name}")
    common.write_npy(d / "pixels.npy", pixels)
    common.write_npy(d / "expected" / "y.npy", y)
    common.write_json(d / "case.json", {"input": "image", "layout": str(layout.name), "ops": ops})


def flexible_case(out: Path, name: str, shape, sizes: list[tuple[int, int]], seed: int) -> None:
    """y = image * 0.5 + 1 over an image of several allowed sizes (`EnumeratedShapes` or
    `RangeDim`s): one pixels / expected pair per size in `sizes` ((width, height))."""
    from coremltools.converters.mil.mil import get_new_symbol

    rng = np.random.default_rng(seed)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, get_new_symbol(), get_new_symbol()), dtype=types.fp32)],
                opset_version=TARGET)
    def prog(image):
        return mb.add(x=image, y=np.float32(1.0), name="y")

    mlmodel = convert(prog, ct.ImageType(name="image", shape=shape, color_layout=ct.colorlayout.RGB, scale=0.5))
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    common.save_package(mlmodel, d / "model.mlpackage", f"features/{name}")
    for w, h in sizes:
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        common.write_npy(d / f"pixels_{w}x{h}.npy", pixels)
        common.write_npy(d / "expected" / f"y_{w}x{h}.npy",
                         pixels.astype(np.float64).transpose(2, 0, 1)[None] * 0.5 + 1.0)
    common.write_json(d / "case.json", {"input": "image", "layout": "RGB", "ops": ops_of(mlmodel),
                                        "sizes": [list(s) for s in sizes]})


def gray_f16_case(out: Path) -> None:
    """GRAYSCALE_FLOAT16 (iOS16+): half-float pixels into an fp16 program, y = image * 0.5 + 1."""
    name = "image_gray_f16"
    rng = np.random.default_rng(8)
    h, w = 3, 4
    pixels = rng.uniform(-4, 4, size=(h, w)).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, h, w), dtype=types.fp16)], opset_version=TARGET)
    def prog(image):
        return mb.add(x=image, y=np.float16(1.0), name="y")

    with common.quiet():
        mlmodel = ct.convert(
            prog,
            convert_to="mlprogram",
            inputs=[ct.ImageType(name="image", shape=(1, 1, h, w), color_layout=ct.colorlayout.GRAYSCALE_FLOAT16,
                                 scale=0.5)],
            outputs=[ct.TensorType(name="y", dtype=np.float16)],
            minimum_deployment_target=TARGET,
            compute_precision=ct.precision.FLOAT16,
            skip_model_load=True,
        )
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    common.save_package(mlmodel, d / "model.mlpackage", f"features/{name}")
    common.write_npy(d / "pixels.npy", pixels)
    common.write_npy(d / "expected" / "y.npy", pixels.astype(np.float64)[None, None] * 0.5 + 1.0)
    common.write_json(d / "case.json", {"input": "image", "layout": "GRAYSCALE_FLOAT16", "ops": ops_of(mlmodel)})


def classifier_case(out: Path) -> None:
    """Image → per-channel mean → linear → softmax → classify with string labels."""
    name = "image_classifier"
    rng = np.random.default_rng(7)
    h = w = 6
    labels = ["cat", "dog", "bird", "fish"]
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    wt = rng.normal(0, 2, size=(4, 3)).astype(np.float32)
    bs = rng.normal(0, 0.5, size=(4,)).astype(np.float32)
    scale, bias = 1 / 255.0, [-0.485, -0.456, -0.406]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, h, w), dtype=types.fp32)], opset_version=TARGET)
    def prog(image):
        m = mb.reduce_mean(x=image, axes=[2, 3], keep_dims=False)
        return mb.softmax(x=mb.linear(x=m, weight=wt, bias=bs), axis=-1, name="probabilities")

    it = ct.ImageType(name="image", shape=(1, 3, h, w), color_layout=ct.colorlayout.RGB, scale=scale, bias=bias)
    mlmodel = convert(prog, it, classifier=labels)
    ops = ops_of(mlmodel)
    if "classify" not in ops:
        raise SystemExit(f"{name}: no classify op in {ops}")

    x = pixels.astype(np.float64).transpose(2, 0, 1)[None] * scale + np.asarray(bias).reshape(1, 3, 1, 1)
    z = x.mean(axis=(2, 3)) @ wt.astype(np.float64).T + bs.astype(np.float64)
    p = np.exp(z - z.max())
    p = (p / p.sum()).reshape(-1)
    label = labels[int(np.argmax(p))]

    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    common.save_package(mlmodel, d / "model.mlpackage", f"features/{name}")
    common.write_npy(d / "pixels.npy", pixels)
    common.write_json(
        d / "case.json",
        {
            "input": "image",
            "layout": "RGB",
            "ops": ops,
            "labels": labels,
            "label": label,
            "probabilities": [float(v) for v in p],
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "features")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    image_case(args.out, "image_rgb", ct.colorlayout.RGB, 4, 5, 1 / 255.0, [-0.5, 0.25, 1.0], seed=1)
    image_case(args.out, "image_bgr", ct.colorlayout.BGR, 3, 4, 2 / 255.0, [-1.0, 0.0, 0.5], seed=2)
    image_case(args.out, "image_gray", ct.colorlayout.GRAYSCALE, 5, 3, 1 / 127.5, -1.0, seed=3)
    image_case(args.out, "image_rgb_unscaled", ct.colorlayout.RGB, 2, 3, 1.0, [0.0, 0.0, 0.0], seed=4)
    classifier_case(args.out)
    gray_f16_case(args.out)
    flexible_case(args.out, "image_sizes_enumerated",
                  ct.EnumeratedShapes(shapes=[(1, 3, 4, 5), (1, 3, 8, 10)], default=(1, 3, 4, 5)),
                  [(5, 4), (10, 8)], seed=5)
    flexible_case(args.out, "image_sizes_range",
                  ct.Shape(shape=(1, 3, ct.RangeDim(2, 16, default=4), ct.RangeDim(3, 12, default=5))),
                  [(5, 4), (12, 2), (3, 16)], seed=6)
    multifunction.build(args.out)
    common.log(f"feature fixtures written to {args.out}")


if __name__ == "__main__":
    main()
