"""Cases for coremltools' activation.py (iOS15, and the iOS17 re-versions whose alpha/beta may
have another dtype than x). References: float64 numpy on the stored inputs, as each op's
`value_inference` (softplus in its overflow-free form)."""

from __future__ import annotations

import math

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, uniform

FAM = "activation"
SHAPE = (2, 3, 4)
C = SHAPE[1]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def per_channel(v, rank):
    """A [C] parameter broadcast along dim 1 of a rank-`rank` tensor."""
    return np.reshape(v, (1, -1) + (1,) * (rank - 2))


SIMPLE = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.minimum(np.maximum(x, 0), 6),
    "sigmoid": sigmoid,
    "silu": lambda x: x * sigmoid(x),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "softplus": softplus,
}

# op -> (alpha, beta or None, reference(x, alpha, beta))
WITH_PARAMS = {
    "elu": (0.7, None, lambda x, a, b: np.where(x > 0, x, a * (np.exp(x) - 1))),
    "leaky_relu": (0.2, None, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholded_relu": (0.5, None, lambda x, a, b: np.where(x >= a, x, 0.0)),
    "clamped_relu": (0.3, 2.0, lambda x, a, b: np.minimum(np.maximum(x, 0), b) + np.minimum(np.minimum(x, 0) * a, b)),
    "linear_activation": (1.5, -0.5, lambda x, a, b: a * x + b),
    "scaled_tanh": (1.7, 0.6, lambda x, a, b: a * np.tanh(x * b)),
    "sigmoid_hard": (0.2, 0.5, lambda x, a, b: np.minimum(np.maximum(a * x + b, 0), 1)),
}
IOS17 = {"clamped_relu", "elu", "leaky_relu", "linear_activation", "prelu", "scaled_tanh", "sigmoid_hard",
         "softplus_parametric", "thresholded_relu"}


def cases() -> list[Case]:
    out: list[Case] = []
    for op, ref in SIMPLE.items():
        fn = getattr(mb, op)
        x = uniform(f"{FAM}/{op}", SHAPE, -8, 8)
        out.append(Case(FAM, op, f"{op}_fp32", {"x": x}, lambda x, fn=fn: fn(x=x), {"y": ref(f64(x))}))
        x16 = uniform(f"{FAM}/{op}/16", (1, 3, 1, 4), -8, 8, np.float16)
        out.append(Case(FAM, op, f"{op}_fp16", {"x": x16}, lambda x, fn=fn: fn(x=x), {"y": ref(f64(x16))},
                        opset="iOS16", precision="fp16"))
        out.append(Case(FAM, op, f"{op}_fp16_ios15", {"x": x16}, lambda x, fn=fn: fn(x=x), {"y": ref(f64(x16))},
                        precision="fp16", note="iOS15: fp32 I/O cast to and from fp16 around the op"))
    big = np.array([[-100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 88.0, 100.0]], dtype=np.float32)
    out.append(Case(FAM, "softplus", "softplus_large", {"x": big}, lambda x: mb.softplus(x=x),
                    {"y": softplus(f64(big))}, note="no overflow: softplus(100) = 100"))
    out.append(Case(FAM, "sigmoid", "sigmoid_large", {"x": big}, lambda x: mb.sigmoid(x=x),
                    {"y": sigmoid(f64(big))}))

    for op, (a, b, ref) in WITH_PARAMS.items():
        fn = getattr(mb, op)
        x = uniform(f"{FAM}/{op}", SHAPE, -4, 4)

        def build(x, fn=fn, a=a, b=b, dt=np.float32):
            kw = {"alpha": dt(a)} if b is None else {"alpha": dt(a), "beta": dt(b)}
            return fn(x=x, **kw)

        out.append(Case(FAM, op, f"{op}_fp32", {"x": x}, build, {"y": ref(f64(x), a, b)}))
        x16 = x.astype(np.float16)
        a16, b16 = float(np.float16(a)), None if b is None else float(np.float16(b))
        out.append(Case(FAM, op, f"{op}_fp16", {"x": x16}, lambda x, build=build: build(x, dt=np.float16),
                        {"y": ref(f64(x16), a16, b16)}, opset="iOS16", precision="fp16"))
        if op in IOS17:
            out.append(Case(FAM, op, f"{op}_fp16_params_fp32_ios17", {"x": x16}, build,
                            {"y": ref(f64(x16), a, b)}, opset="iOS17", precision="fp16",
                            note="iOS17: fp32 alpha/beta with an fp16 x"))

    # prelu and softplus_parametric: per-channel (dim 1) alpha/beta, rank >= 3.
    for shape in (SHAPE, (1, 3, 2, 2)):
        rank = len(shape)
        x = uniform(f"{FAM}/prelu/{rank}", shape, -4, 4)
        # coremltools takes distinct alphas only at rank 4.
        alpha = np.array([0.1, 0.5, 2.0] if rank == 4 else [0.3] * 3, dtype=np.float32)
        out.append(Case(FAM, "prelu", f"prelu_rank{rank}", {"x": x}, lambda x, al=alpha: mb.prelu(x=x, alpha=al),
                        {"y": np.maximum(f64(x), 0) + np.minimum(f64(x), 0) * per_channel(f64(alpha), rank)}))
        beta = np.array([1.0, 0.5, 3.0], dtype=np.float32)
        ref = per_channel(f64(alpha), rank) * softplus(f64(x) * per_channel(f64(beta), rank))
        out.append(Case(FAM, "softplus_parametric", f"softplus_parametric_rank{rank}", {"x": x},
                        lambda x, al=alpha, be=beta: mb.softplus_parametric(x=x, alpha=al, beta=be), {"y": ref}))
    x16 = uniform(f"{FAM}/prelu/16", (1, 3, 2, 2), -4, 4, np.float16)
    alpha = np.array([0.1, 0.5, 2.0], dtype=np.float32)
    beta = np.array([1.0, 0.5, 3.0], dtype=np.float32)
    out.append(Case(FAM, "prelu", "prelu_fp16_alpha_fp32_ios17", {"x": x16}, lambda x: mb.prelu(x=x, alpha=alpha),
                    {"y": np.maximum(f64(x16), 0) + np.minimum(f64(x16), 0) * per_channel(f64(alpha), 4)},
                    opset="iOS17", precision="fp16"))
    out.append(Case(FAM, "softplus_parametric", "softplus_parametric_fp16_ios17", {"x": x16},
                    lambda x: mb.softplus_parametric(x=x, alpha=alpha, beta=beta),
                    {"y": per_channel(f64(alpha), 4) * softplus(f64(x16) * per_channel(f64(beta), 4))},
                    opset="iOS17", precision="fp16"))

    # gelu, each mode.
    erf = np.vectorize(math.erf)
    modes = {
        "EXACT": lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))),
        "TANH_APPROXIMATION": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
        "SIGMOID_APPROXIMATION": lambda x: x * sigmoid(1.702 * x),
    }
    x = uniform(f"{FAM}/gelu", SHAPE, -5, 5)
    out.append(Case(FAM, "gelu", "gelu_default", {"x": x}, lambda x: mb.gelu(x=x), {"y": modes["EXACT"](f64(x))},
                    note="default mode EXACT"))
    for mode, ref in modes.items():
        out.append(Case(FAM, "gelu", f"gelu_{mode.lower()}", {"x": x}, lambda x, m=mode: mb.gelu(x=x, mode=m),
                        {"y": ref(f64(x))}))
        x16 = x.astype(np.float16)
        out.append(Case(FAM, "gelu", f"gelu_{mode.lower()}_fp16", {"x": x16}, lambda x, m=mode: mb.gelu(x=x, mode=m),
                        {"y": ref(f64(x16))}, opset="iOS16", precision="fp16"))

    # softmax along each axis, negative axes, large values.
    def softmax(x, axis):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    x = uniform(f"{FAM}/softmax", SHAPE, -5, 5)
    out.append(Case(FAM, "softmax", "softmax_default", {"x": x}, lambda x: mb.softmax(x=x),
                    {"y": softmax(f64(x), -1)}, note="default axis -1"))
    for axis in (0, 1, 2, -2, -3):
        out.append(Case(FAM, "softmax", f"softmax_axis{axis}".replace("-", "m"), {"x": x},
                        lambda x, a=axis: mb.softmax(x=x, axis=a), {"y": softmax(f64(x), axis)}))
    xb = (x * 100).astype(np.float32)
    out.append(Case(FAM, "softmax", "softmax_large", {"x": xb}, lambda x: mb.softmax(x=x, axis=1),
                    {"y": softmax(f64(xb), 1)}, note="inputs up to 500: needs the max shift"))
    xb16 = xb.astype(np.float16)
    out.append(Case(FAM, "softmax", "softmax_large_fp16", {"x": xb16}, lambda x: mb.softmax(x=x, axis=-1),
                    {"y": softmax(f64(xb16), -1)}, opset="iOS16", precision="fp16", note="exp(500) overflows fp16"))
    x16 = x.astype(np.float16)
    out.append(Case(FAM, "softmax", "softmax_fp16", {"x": x16}, lambda x: mb.softmax(x=x, axis=1),
                    {"y": softmax(f64(x16), 1)}, opset="iOS16", precision="fp16"))
    return out
