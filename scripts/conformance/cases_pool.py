"""Cases for coremltools' pool.py: max_pool, avg_pool, l2_pool (1-D to 3-D, every pad type,
ceil_mode, exclude_padding_from_average). References: float64 numpy over explicit windows.
Output sizes follow coremltools' `spatial_dimensions_out_shape` (ceil mode drops a last window
that would start in the end padding); an average divides by the window's cells inside input and
padding (PyTorch's count_include_pad; ceil-mode overhang past the padding never counts), or by its
cells inside the input with exclude_padding_from_average."""

from __future__ import annotations

import itertools

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, uniform

FAM = "pool"


def pads_of(pad_type, pad, inp, k, s):
    n = len(inp)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    out = []
    for i, kk, ss in zip(inp, k, s):
        o = -(-i // ss)
        total = max((o - 1) * ss + kk - i, 0)
        small = total // 2
        out.append((total - small, small) if pad_type == "same_lower" else (small, total - small))
    return out


def out_size(i, p, k, s, ceil):
    span = i + p[0] + p[1]
    if not ceil:
        return (span - k) // s + 1
    o = -(-(span - k) // s) + 1
    if sum(p) > 0 and (o - 1) * s >= i + p[0]:
        o -= 1
    return o


def pool_ref(x, kind, k, s, pads, ceil=False, exclude=False):
    n = len(k)
    inp = x.shape[2:]
    osp = [out_size(inp[d], pads[d], k[d], s[d], ceil) for d in range(n)]
    y = np.zeros(x.shape[:2] + tuple(osp))
    for o in itertools.product(*(range(v) for v in osp)):
        lo, hi, span = [], [], 1
        for d in range(n):
            start = o[d] * s[d] - pads[d][0]
            end = min(start + k[d], inp[d] + pads[d][1])
            span *= end - start
            lo.append(max(start, 0))
            hi.append(min(end, inp[d]))
        win = x[(slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(lo, hi))]
        win = win.reshape(x.shape[0], x.shape[1], -1)
        if kind == "max":
            v = win.max(axis=2)
        elif kind == "l2":
            v = np.sqrt((win * win).sum(axis=2))
        else:
            v = win.sum(axis=2) / (win.shape[2] if exclude else span)
        y[(slice(None), slice(None)) + o] = v
    return y


def pool_case(kind, name, shape, k, *, strides=None, pad_type="valid", pad=None, ceil=False, exclude=None,
              opset="iOS15", fp16=False, note=""):
    op = f"{kind}_pool"
    x = uniform(f"{FAM}/{op}/{name}", shape)
    if fp16:
        x = x.astype(np.float16)
    n = len(k)
    s = strides or [1] * n
    kw = {"kernel_sizes": np.array(k, np.int32), "pad_type": pad_type}
    if strides:
        kw["strides"] = np.array(strides, np.int32)
    if pad is not None:
        kw["pad"] = np.array(pad, np.int32)
    if ceil:
        kw["ceil_mode"] = True
    if exclude is not None:
        kw["exclude_padding_from_average"] = exclude
    pads = pads_of(pad_type, pad, shape[2:], k, s)
    ref = pool_ref(f64(x), kind, k, s, pads, ceil, bool(exclude))
    fn = getattr(mb, op)
    return Case(FAM, op, f"{op}_{name}", {"x": x}, lambda x, kw=kw: fn(x=x, **kw), {"y": ref}, opset=opset,
                precision="fp16" if fp16 else "fp32", note=note)


def cases() -> list[Case]:
    out: list[Case] = []
    for kind in ("max", "avg", "l2"):
        out.append(pool_case(kind, "1d_valid", (2, 3, 7), [3], strides=[2]))
        out.append(pool_case(kind, "1d_same", (1, 2, 6), [4], pad_type="same"))
        out.append(pool_case(kind, "2d_valid", (1, 2, 6, 7), [2, 3], strides=[2, 2]))
        out.append(pool_case(kind, "2d_unequal_strides", (1, 2, 7, 7), [3, 2], strides=[2, 3]))
        out.append(pool_case(kind, "2d_same", (1, 2, 5, 6), [3, 3], strides=[2, 2], pad_type="same"))
        out.append(pool_case(kind, "2d_same_lower_ios16", (1, 2, 5, 6), [2, 4], strides=[1, 2],
                             pad_type="same_lower", opset="iOS16"))
        out.append(pool_case(kind, "2d_custom", (1, 2, 5, 5), [3, 3], strides=[2, 1], pad_type="custom",
                             pad=[1, 2, 0, 1]))
        out.append(pool_case(kind, "2d_ceil", (1, 2, 6, 7), [3, 3], strides=[2, 2], ceil=True,
                             note="ceil_mode: a partial last window"))
        out.append(pool_case(kind, "2d_ceil_custom", (1, 2, 6, 5), [3, 2], strides=[2, 2], pad_type="custom",
                             pad=[1, 1, 1, 1], ceil=True, note="ceil_mode with symmetric padding"))
        out.append(pool_case(kind, "1d_ceil_drop", (1, 1, 5), [2], strides=[2], pad_type="custom", pad=[1, 1],
                             ceil=True, note="the ceil window starting in the end padding is dropped"))
        out.append(pool_case(kind, "2d_global", (2, 3, 4, 5), [4, 5]))
        out.append(pool_case(kind, "2d_fp16", (1, 2, 5, 6), [3, 3], strides=[2, 2], pad_type="same",
                             opset="iOS16", fp16=True))
        if kind != "l2":  # l2_pool is 1-D and 2-D only
            out.append(pool_case(kind, "3d_valid", (1, 2, 4, 5, 4), [2, 3, 2], strides=[2, 1, 2]))
            out.append(pool_case(kind, "3d_same", (1, 2, 3, 4, 5), [2, 2, 3], strides=[1, 2, 2], pad_type="same"))
    for name, kw in (("same", {"pad_type": "same", "strides": [2, 2]}),
                     ("custom", {"pad_type": "custom", "pad": [1, 0, 2, 1]}),
                     ("ceil_custom", {"pad_type": "custom", "pad": [1, 1, 1, 1], "strides": [2, 2], "ceil": True})):
        for excl in (True, False):
            out.append(pool_case("avg", f"2d_{name}_exclude_{str(excl).lower()}", (1, 2, 5, 6), [3, 3],
                                 exclude=excl, **kw))
    out.append(pool_case("avg", "3d_custom_exclude", (1, 1, 3, 4, 4), [2, 3, 2], pad_type="custom",
                         pad=[1, 0, 1, 1, 0, 1], exclude=True))
    out.append(pool_case("max", "2d_same_k3", (1, 1, 3, 3), [3, 3], pad_type="same",
                         note="every window reaches into the padding"))
    return out
