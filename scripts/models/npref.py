"""Numpy reference implementations of the layers our models use (float64 arithmetic).

Semantics follow coremltools 9.0's op definitions
(coremltools/converters/mil/mil/ops/defs/iOS15/*.py): conv weight layout [C_out, C_in/groups,
kH, kW], pad = [top, bottom, left, right]; linear weight [out, in] (y = x W^T + b);
batch_norm / layer_norm with epsilon inside the square root; gelu EXACT = 0.5 x (1 + erf(x/sqrt 2)).

These are *our own* forward passes written from the architecture, not an interpretation of the
saved program; they only borrow the (possibly fp16-rounded / dequantised) weight values.
"""

from __future__ import annotations

import math

import numpy as np

F = np.float64
_erf = np.frompyfunc(math.erf, 1, 1)


def f64(a):
    return np.asarray(a, dtype=F)


def linear(x, w, b=None):
    y = f64(x) @ f64(w).T
    return y + f64(b) if b is not None else y


def relu(x):
    return np.maximum(x, 0.0)


def relu6(x):
    return np.minimum(np.maximum(x, 0.0), 6.0)


def gelu_exact(x):
    x = f64(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(F))


def softmax(x, axis=-1):
    x = f64(x)
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def layer_norm(x, gamma, beta, eps, axis=-1):
    x = f64(x)
    mu = np.mean(x, axis=axis, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=axis, keepdims=True)
    return (x - mu) / np.sqrt(var + F(eps)) * f64(gamma) + f64(beta)


def batch_norm(x, mean, var, gamma, beta, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = 1.0 / np.sqrt(f64(var) + F(eps))
    return (f64(x) - f64(mean).reshape(shape)) * (inv * f64(gamma)).reshape(shape) + f64(beta).reshape(shape)


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """x [N, C, H, W]; w [O, C/groups, kh, kw]; pad (top, bottom, left, right)."""
    x, w = f64(x), f64(w)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    assert c == cg * groups and o % groups == 0
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    sh, sw = stride
    dh, dw = dilation
    ho = (h + pad[0] + pad[1] - ((kh - 1) * dh + 1)) // sh + 1
    wo = (wd + pad[2] + pad[3] - ((kw - 1) * dw + 1)) // sw + 1
    og = o // groups
    wg = w.reshape(groups, og, cg, kh, kw)
    out = np.zeros((n, groups, og, ho, wo), dtype=F)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
            patch = patch.reshape(n, groups, cg, ho, wo)
            if cg == 1 and og == 1:  # depthwise: plain broadcast multiply
                out += patch * wg[:, :, 0, i, j][None, :, :, None, None]
            else:
                out += np.einsum("ngchw,goc->ngohw", patch, wg[:, :, :, i, j], optimize=True)
    out = out.reshape(n, o, ho, wo)
    if b is not None:
        out += f64(b).reshape(1, -1, 1, 1)
    return out


def _pool(x, k, s, reduce):
    x = f64(x)
    n, c, h, w = x.shape
    ho = (h - k[0]) // s[0] + 1
    wo = (w - k[1]) // s[1] + 1
    acc = None
    for i in range(k[0]):
        for j in range(k[1]):
            p = x[:, :, i : i + s[0] * (ho - 1) + 1 : s[0], j : j + s[1] * (wo - 1) + 1 : s[1]]
            acc = p.copy() if acc is None else reduce(acc, p)
    return acc, k[0] * k[1]


def max_pool(x, kernel, stride):
    """valid padding"""
    return _pool(x, kernel, stride, np.maximum)[0]


def avg_pool(x, kernel, stride):
    """valid padding"""
    acc, cnt = _pool(x, kernel, stride, np.add)
    return acc / cnt


def fold_bn_into_conv(w, b, mean, var, gamma, beta, eps):
    """What a conv followed by batch_norm computes, as one conv (float64)."""
    scale = f64(gamma) / np.sqrt(f64(var) + F(eps))
    w2 = f64(w) * scale.reshape(-1, 1, 1, 1)
    b0 = f64(b) if b is not None else 0.0
    return w2, (b0 - f64(mean)) * scale + f64(beta)
