"""Cases for coremltools' normalization.py (iOS15, and the iOS17 re-versions whose parameters
may have another dtype than x). References: float64 numpy on the stored inputs, as each op's
`value_inference` (local_response_norm has none: the cross-channel window of Caffe/ONNX, odd
sizes only, where all definitions agree)."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, uniform

FAM = "normalization"


def chan(v, rank):
    return np.reshape(v, (1, -1) + (1,) * (rank - 2))


def batch_norm(x, mean, var, gamma, beta, eps):
    r = x.ndim
    y = (x - chan(mean, r)) / np.sqrt(chan(var, r) + eps)
    if gamma is not None:
        y = y * chan(gamma, r)
    if beta is not None:
        y = y + chan(beta, r)
    return y


def instance_norm(x, gamma, beta, eps):
    ax = tuple(range(2, x.ndim))
    m = x.mean(axis=ax, keepdims=True)
    v = ((x - m) ** 2).mean(axis=ax, keepdims=True)
    y = (x - m) / np.sqrt(v + eps)
    if gamma is not None:
        y = y * chan(gamma, x.ndim)
    if beta is not None:
        y = y + chan(beta, x.ndim)
    return y


def layer_norm(x, axes, gamma, beta, eps):
    axes = tuple(a % x.ndim for a in axes)
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    y = (x - m) / np.sqrt(v + eps)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if gamma is not None:
        y = y * np.reshape(gamma, shape)
    if beta is not None:
        y = y + np.reshape(beta, shape)
    return y


def l2_norm(x, eps):
    b = x.ndim - 3
    flat = x.reshape(int(np.prod(x.shape[:b])), -1)
    return (flat / np.sqrt((flat * flat).sum(axis=1, keepdims=True) + eps)).reshape(x.shape)


def lrn(x, size, alpha, beta, k):
    c = x.shape[1]
    sq = x * x
    out = np.empty_like(x)
    lo_off, hi_off = (size - 1) // 2, size // 2
    for i in range(c):
        lo, hi = max(0, i - lo_off), min(c - 1, i + hi_off)
        s = sq[:, lo:hi + 1].sum(axis=1)
        out[:, i] = x[:, i] / (k + alpha / size * s) ** beta
    return out


def cases() -> list[Case]:
    out: list[Case] = []
    C = 3
    mean = np.array([0.5, -1.0, 0.0], np.float32)
    var = np.array([1.5, 0.25, 4.0], np.float32)
    gamma = np.array([2.0, 0.5, -1.0], np.float32)
    beta = np.array([0.1, -0.2, 0.3], np.float32)
    for shape in ((2, C, 4), (1, C, 2, 3), (1, C, 2, 2, 2)):
        r = len(shape)
        x = uniform(f"{FAM}/bn/{r}", shape)
        out.append(Case(FAM, "batch_norm", f"batch_norm_rank{r}", {"x": x},
                        lambda x: mb.batch_norm(x=x, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=1e-3),
                        {"y": batch_norm(f64(x), f64(mean), f64(var), f64(gamma), f64(beta), f64(np.float32(1e-3)))}))
    x = uniform(f"{FAM}/bn", (2, C, 4))
    out.append(Case(FAM, "batch_norm", "batch_norm_defaults", {"x": x},
                    lambda x: mb.batch_norm(x=x, mean=mean, variance=var),
                    {"y": batch_norm(f64(x), f64(mean), f64(var), None, None, f64(np.float32(1e-5)))},
                    note="no gamma/beta, default epsilon 1e-5"))
    x16 = x.astype(np.float16)
    out.append(Case(FAM, "batch_norm", "batch_norm_fp16_params_fp32_ios17", {"x": x16},
                    lambda x: mb.batch_norm(x=x, mean=mean, variance=var, gamma=gamma, beta=beta),
                    {"y": batch_norm(f64(x16), f64(mean), f64(var), f64(gamma), f64(beta), 1e-5)},
                    opset="iOS17", precision="fp16"))

    for shape in ((2, C, 5), (1, C, 2, 3)):
        r = len(shape)
        x = uniform(f"{FAM}/in/{r}", shape)
        out.append(Case(FAM, "instance_norm", f"instance_norm_rank{r}", {"x": x},
                        lambda x: mb.instance_norm(x=x, gamma=gamma, beta=beta, epsilon=np.float32(1e-3)),
                        {"y": instance_norm(f64(x), f64(gamma), f64(beta), f64(np.float32(1e-3)))}))
    x = uniform(f"{FAM}/in", (2, C, 2, 2))
    out.append(Case(FAM, "instance_norm", "instance_norm_defaults", {"x": x}, lambda x: mb.instance_norm(x=x),
                    {"y": instance_norm(f64(x), None, None, f64(np.float32(1e-5)))}))
    x16 = x.astype(np.float16)
    out.append(Case(FAM, "instance_norm", "instance_norm_fp16_params_fp32_ios17", {"x": x16},
                    lambda x: mb.instance_norm(x=x, gamma=gamma, beta=beta),
                    {"y": instance_norm(f64(x16), f64(gamma), f64(beta), 1e-5)}, opset="iOS17", precision="fp16"))

    x = uniform(f"{FAM}/ln", (2, 3, 4), -3, 3)
    for tag, axes in (("last", [-1]), ("last2", [1, 2]), ("first", [0]), ("mid", [1]), ("all", [0, 1, 2])):
        nshape = tuple(x.shape[a % 3] for a in sorted(a % 3 for a in axes))
        g = uniform(f"{FAM}/ln/g/{tag}", nshape, 0.5, 1.5)
        b = uniform(f"{FAM}/ln/b/{tag}", nshape, -0.5, 0.5)
        ax = np.array(axes, np.int32)
        out.append(Case(FAM, "layer_norm", f"layer_norm_{tag}", {"x": x},
                        lambda x, ax=ax, g=g, b=b: mb.layer_norm(x=x, axes=ax, gamma=g, beta=b, epsilon=np.float32(1e-4)),
                        {"y": layer_norm(f64(x), axes, f64(g), f64(b), f64(np.float32(1e-4)))}))
    out.append(Case(FAM, "layer_norm", "layer_norm_no_affine", {"x": x},
                    lambda x: mb.layer_norm(x=x, axes=np.array([-1], np.int32)),
                    {"y": layer_norm(f64(x), [-1], None, None, f64(np.float32(1e-5)))}))
    # No case without `axes`: coremltools 9.0 cannot build one (its default, a range, is no const).
    x16 = x.astype(np.float16)
    g = np.linspace(0.5, 1.5, 4).astype(np.float32)
    out.append(Case(FAM, "layer_norm", "layer_norm_fp16_params_fp32_ios17", {"x": x16},
                    lambda x: mb.layer_norm(x=x, axes=np.array([-1], np.int32), gamma=g),
                    {"y": layer_norm(f64(x16), [-1], f64(g), None, 1e-5)}, opset="iOS17", precision="fp16"))
    g16 = g.astype(np.float16)
    out.append(Case(FAM, "layer_norm", "layer_norm_fp16", {"x": x16},
                    lambda x: mb.layer_norm(x=x, axes=np.array([-1], np.int32), gamma=g16),
                    {"y": layer_norm(f64(x16), [-1], f64(g16), None, f64(np.float16(1e-5)))},
                    opset="iOS16", precision="fp16"))

    for shape in ((1, 2, 3), (2, 1, 2, 3), (2, 2, 1, 2, 2)):
        x = uniform(f"{FAM}/l2/{len(shape)}", shape)
        out.append(Case(FAM, "l2_norm", f"l2_norm_rank{len(shape)}", {"x": x}, lambda x: mb.l2_norm(x=x),
                        {"y": l2_norm(f64(x), f64(np.float32(1e-6)))}, note="last three dims; earlier dims are batch"))
    x = uniform(f"{FAM}/l2/eps", (2, 2, 2, 2), -0.01, 0.01)
    out.append(Case(FAM, "l2_norm", "l2_norm_eps", {"x": x}, lambda x: mb.l2_norm(x=x, epsilon=np.float32(1e-3)),
                    {"y": l2_norm(f64(x), f64(np.float32(1e-3)))}, note="epsilon inside the square root"))
    x16 = x.astype(np.float16) * np.float16(100)
    out.append(Case(FAM, "l2_norm", "l2_norm_fp16_ios17", {"x": x16}, lambda x: mb.l2_norm(x=x, epsilon=np.float32(1e-3)),
                    {"y": l2_norm(f64(x16), 1e-3)}, opset="iOS17", precision="fp16"))

    for shape, size, kw in (((1, 5, 2, 2), 3, {}), ((2, 6, 3), 5, {"alpha": 0.5, "beta": 0.6, "k": 2.0}),
                            ((1, 4, 2, 2), 1, {"alpha": 1.0, "beta": 1.0, "k": 1.0})):
        x = uniform(f"{FAM}/lrn/{size}", shape)
        p = {"alpha": 1e-4, "beta": 0.75, "k": 1.0, **kw}
        ref = lrn(f64(x), size, *(f64(np.float32(p[k])) for k in ("alpha", "beta", "k")))
        args = {k: np.float32(v) for k, v in kw.items()}
        out.append(Case(FAM, "local_response_norm", f"local_response_norm_size{size}", {"x": x},
                        lambda x, s=size, a=args: mb.local_response_norm(x=x, size=s, **a), {"y": ref},
                        note="defaults alpha 1e-4, beta 0.75, k 1" if not kw else ""))
    x = uniform(f"{FAM}/lrn/16", (1, 5, 2, 2), -3, 3, np.float16)
    out.append(Case(FAM, "local_response_norm", "local_response_norm_fp16_ios17", {"x": x},
                    lambda x: mb.local_response_norm(x=x, size=3, alpha=np.float32(0.5), beta=np.float32(0.75)),
                    {"y": lrn(f64(x), 3, 0.5, 0.75, 1.0)}, opset="iOS17", precision="fp16"))
    return out
