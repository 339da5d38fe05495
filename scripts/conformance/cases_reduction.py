"""Cases for coremltools' reduction.py (iOS15, and the iOS17 re-versions of reduce_argmax /
reduce_argmin with an `output_dtype`). References: float64 numpy on the stored inputs, as each
op's `value_inference`."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, ints, rng, uniform

FAM = "reduction"
SHAPE = (2, 3, 4)


def log_sum_exp(x, axis=None, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return s if keepdims else np.squeeze(s, axis=axis)


REDUCE = {
    "reduce_sum": (np.sum, (-3, 3)),
    "reduce_mean": (np.mean, (-3, 3)),
    "reduce_max": (np.max, (-3, 3)),
    "reduce_min": (np.min, (-3, 3)),
    "reduce_prod": (np.prod, (0.5, 1.5)),
    "reduce_l1_norm": (lambda x, axis=None, keepdims=False: np.sum(np.abs(x), axis=axis, keepdims=keepdims), (-3, 3)),
    "reduce_l2_norm": (lambda x, axis=None, keepdims=False: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
                       (-3, 3)),
    "reduce_log_sum": (lambda x, axis=None, keepdims=False: np.log(np.sum(x, axis=axis, keepdims=keepdims)), (0.1, 3)),
    "reduce_log_sum_exp": (log_sum_exp, (-3, 3)),
    "reduce_sum_square": (lambda x, axis=None, keepdims=False: np.sum(x * x, axis=axis, keepdims=keepdims), (-3, 3)),
}
# Every reduction takes int32; the float-valued ones (mean, norms, logs) truncate toward zero as
# value_inference's astype(int32).
INT_OK = set(REDUCE)

# name -> (axes or None, keep_dims or None): default (all axes), one, several, negative, keep_dims.
AXES = {
    "all": (None, None),
    "axis1": ([1], None),
    "axes02_keep": ([0, 2], True),
    "neg": ([-1], False),
    "neg_keep": ([-2, -1], True),
}


def cases() -> list[Case]:
    out: list[Case] = []
    for op, (ref, (lo, hi)) in REDUCE.items():
        fn = getattr(mb, op)
        x = uniform(f"{FAM}/{op}", SHAPE, lo, hi)
        for tag, (axes, keep) in AXES.items():
            kw = {}
            if axes is not None:
                kw["axes"] = np.array(axes, dtype=np.int32)
            if keep is not None:
                kw["keep_dims"] = keep
            ax = None if axes is None else tuple(axes)
            r = np.asarray(ref(f64(x), axis=ax, keepdims=bool(keep)))
            if r.ndim == 0:
                continue  # a rank-0 output is not a valid Core ML model output
            out.append(Case(FAM, op, f"{op}_{tag}", {"x": x}, lambda x, fn=fn, kw=kw: fn(x=x, **kw), {"y": r}))
        all_keep = np.asarray(ref(f64(x), axis=None, keepdims=True))
        out.append(Case(FAM, op, f"{op}_all_keep", {"x": x}, lambda x, fn=fn: fn(x=x, keep_dims=True), {"y": all_keep},
                        note="no axes (all), keep_dims"))
        x16 = x.astype(np.float16)
        out.append(Case(FAM, op, f"{op}_fp16", {"x": x16}, lambda x, fn=fn: fn(x=x, axes=np.array([1], np.int32)),
                        {"y": ref(f64(x16), axis=(1,))}, opset="iOS16", precision="fp16"))
        if op in INT_OK:
            xi = ints(f"{FAM}/{op}/int", SHAPE, *((1, 4) if op == "reduce_log_sum" else (-3, 4)))
            r = np.trunc(ref(xi.astype(np.float64), axis=(1,))).astype(np.int32)
            out.append(Case(FAM, op, f"{op}_int32", {"x": xi}, lambda x, fn=fn: fn(x=x, axes=np.array([1], np.int32)),
                            {"y": r}))
    x = uniform(f"{FAM}/empty", SHAPE)
    for op in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_prod"):
        out.append(Case(FAM, op, f"{op}_empty_axes", {"x": x},
                        lambda x, op=op: getattr(mb, op)(x=x, axes=np.array([], np.int32)), {"y": f64(x)},
                        note="axes = []: nothing reduced (numpy axis=())"))
    # No case with duplicate axes: coremltools 9.0's type inference drops a dim per duplicate.
    x = uniform(f"{FAM}/dup", SHAPE)
    out.append(Case(FAM, "reduce_sum", "reduce_sum_size1", {"x": x[:, :1, :]},
                    lambda x: mb.reduce_sum(x=x, axes=np.array([1], np.int32)), {"y": f64(x[:, 0, :])},
                    note="reducing a size-1 dim"))

    # argmax / argmin: `axis` (default -1), keep_dims; iOS17 adds output_dtype.
    x = uniform(f"{FAM}/arg", SHAPE)
    assert len(np.unique(x.astype(np.float16))) == x.size, "ties in the argmax input"
    for op, ref in (("reduce_argmax", np.argmax), ("reduce_argmin", np.argmin)):
        fn = getattr(mb, op)
        for axis in (None, 0, 1, -1, -2):
            for keep in (False, True):
                kw = {} if axis is None else {"axis": axis}
                if keep:
                    kw["keep_dims"] = True
                a = -1 if axis is None else axis
                r = ref(x, axis=a)
                if keep:
                    r = np.expand_dims(r, a)
                tag = ("default" if axis is None else f"axis{axis}".replace("-", "m")) + ("_keep" if keep else "")
                out.append(Case(FAM, op, f"{op}_{tag}", {"x": x}, lambda x, fn=fn, kw=kw: fn(x=x, **kw),
                                {"y": r.astype(np.int32)}))
        out.append(Case(FAM, op, f"{op}_ios17_int32", {"x": x},
                        lambda x, fn=fn: fn(x=x, axis=1, output_dtype="int32"),
                        {"y": ref(x, axis=1).astype(np.int32)}, opset="iOS17"))
        out.append(Case(FAM, op, f"{op}_ios17_uint16", {"x": x},
                        lambda x, fn=fn: mb.cast(x=fn(x=x, axis=0, keep_dims=True, output_dtype="uint16"), dtype="int32"),
                        {"y": np.expand_dims(ref(x, axis=0), 0).astype(np.int32)}, opset="iOS17",
                        note="uint16 indices, read back as int32"))
        x16 = x.astype(np.float16)
        out.append(Case(FAM, op, f"{op}_fp16", {"x": x16}, lambda x, fn=fn: fn(x=x, axis=1),
                        {"y": ref(x16, axis=1).astype(np.int32)}, opset="iOS16", precision="fp16"))
        # Distinct values: with ties the index is unspecified.
        xi = (rng(f"{FAM}/{op}/int").permutation(24) - 12).astype(np.int32).reshape(SHAPE)
        out.append(Case(FAM, op, f"{op}_int32", {"x": xi}, lambda x, fn=fn: fn(x=x, axis=2),
                        {"y": ref(xi, axis=2).astype(np.int32)}))
    return out
