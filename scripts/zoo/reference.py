"""The zoo's inputs and references: onnxruntime (CPU) on the original ONNX file, never our engine.

Inputs are real where it matters: the OCR members read skimage/data/page.png (a photographed book page,
from the pinned scikit-image wheel; the line recognizer and classifier its title line), resized with PIL and normalised exactly as RapidOCR's own
pre-processing does for that model (see each `preprocess` below). Other inputs are seeded
(numpy PCG64), so every build is byte-identical.
"""

from __future__ import annotations

import io

import numpy as np


def _image(png: bytes, h: int, w: int, crop=None) -> np.ndarray:
    """PNG -> RGB float64 HWC in [0, 255]: cropped to `crop` (left, top, right, bottom) if given,
    resized to (h, w) with PIL's bilinear filter."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if crop is not None:
        img = img.crop(tuple(crop))
    img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64)


def preprocess(kind: str, png: bytes, shape, crop=None) -> np.ndarray:
    """float32 NCHW input of `shape` from an image (or its `crop`), normalised for model kind `kind`."""
    n, c, h, w = shape
    img = _image(png, h, w, crop)
    if kind == "det":  # RapidOCR ch_ppocr_v3_det NormalizeImage: ImageNet mean/std on x/255
        x = (img / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    elif kind in ("cls", "rec"):  # RapidOCR cls/rec: (x/255 - 0.5) / 0.5
        x = (img / 255.0 - 0.5) / 0.5
    elif kind == "unit":  # YOLO exports (e.g. NudeNet's cv2.dnn.blobFromImage(img, 1/255, swapRB)): x/255
        x = img / 255.0
    else:
        raise ValueError(f"unknown preprocess {kind!r}")
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None].repeat(n, 0), dtype=np.float32)
    assert x.shape == tuple(shape), (x.shape, shape)
    return x


def seeded(shape, seed: int, scale: float = 1.0, dtype=np.float32) -> np.ndarray:
    """Standard-normal values times `scale` from PCG64(seed)."""
    return (np.random.Generator(np.random.PCG64(seed)).standard_normal(shape) * scale).astype(dtype)


def run_onnxruntime(onnx_bytes: bytes, inputs: dict) -> dict:
    """{output name: float32 array} from onnxruntime's CPU provider, single-threaded (repeatable)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, inputs)
    return {n: np.asarray(v) for n, v in zip(names, outs)}
