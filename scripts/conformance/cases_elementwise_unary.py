"""Cases for coremltools' elementwise_unary.py (iOS15, and the iOS17 re-versions of cast, clip,
inverse, log, rsqrt). References: float64 numpy on the stored input values, as each op's
`value_inference`."""

from __future__ import annotations

import math

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, bools, f64, ints, uniform

FAM = "elementwise_unary"
SHAPE = (2, 3, 4)

# op -> (input range, float64 reference)
FLOAT_OPS = {
    "abs": ((-3, 3), np.abs),
    "acos": ((-0.99, 0.99), np.arccos),
    "asin": ((-0.99, 0.99), np.arcsin),
    "atan": ((-5, 5), np.arctan),
    "atanh": ((-0.95, 0.95), np.arctanh),
    "ceil": ((-3, 3), np.ceil),
    "cos": ((-6, 6), np.cos),
    "cosh": ((-3, 3), np.cosh),
    "erf": ((-3, 3), np.vectorize(math.erf)),
    "exp": ((-5, 5), np.exp),
    "exp2": ((-5, 5), np.exp2),
    "floor": ((-3, 3), np.floor),
    "round": ((-3, 3), np.round),
    "sign": ((-3, 3), np.sign),
    "sin": ((-6, 6), np.sin),
    "sinh": ((-3, 3), np.sinh),
    "sqrt": ((0, 5), np.sqrt),
    "square": ((-3, 3), np.square),
    "tan": ((-1.4, 1.4), np.tan),
    "tanh": ((-4, 4), np.tanh),
}
INT_OPS = {"abs": np.abs, "sign": np.sign, "square": np.square, "exp2": np.exp2}
# Edge values placed in the first elements: integers and halves (round is half to even, as
# numpy), zero (sign), both signs.
EDGES = np.array([0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 2.0, -2.0, 1.0], dtype=np.float64)


def unary_input(op, lo, hi, dtype, shape=SHAPE):
    x = uniform(f"{FAM}/{op}/{np.dtype(dtype).name}", shape, lo, hi, dtype)
    if op in ("ceil", "floor", "round", "sign", "abs", "square"):
        flat = x.reshape(-1)
        flat[: len(EDGES)] = EDGES.astype(dtype)
    return x


def cases() -> list[Case]:
    out: list[Case] = []
    for op, ((lo, hi), ref) in FLOAT_OPS.items():
        fn = getattr(mb, op)
        x = unary_input(op, lo, hi, np.float32)
        out.append(Case(FAM, op, f"{op}_fp32", {"x": x}, lambda x, fn=fn: fn(x=x), {"y": ref(f64(x))}))
        x16 = unary_input(op, lo, hi, np.float16, (1, 3, 1, 4))
        out.append(Case(FAM, op, f"{op}_fp16", {"x": x16}, lambda x, fn=fn: fn(x=x), {"y": ref(f64(x16))},
                        opset="iOS16", precision="fp16", note="size-1 dims, fp16 inputs and compute"))
    for op, ref in INT_OPS.items():
        fn = getattr(mb, op)
        x = ints(f"{FAM}/{op}/int", SHAPE, 0 if op == "exp2" else -9, 10)
        out.append(Case(FAM, op, f"{op}_int32", {"x": x}, lambda x, fn=fn: fn(x=x),
                        {"y": ref(f64(x)).astype(np.int32)}, note="int32 input and output"))

    # Ops with an epsilon: y = f(x + epsilon); defaults 1e-4 (inverse), 1e-45 (log), 1e-12 (rsqrt).
    eps_ops = {
        "inverse": ((0.2, 3), 1e-4, lambda x, e: 1.0 / (x + e)),
        "log": ((0.1, 5), 1e-45, lambda x, e: np.log(x + e)),
        "rsqrt": ((0.1, 5), 1e-12, lambda x, e: 1.0 / np.sqrt(x + e)),
    }
    for op, ((lo, hi), dflt, ref) in eps_ops.items():
        fn = getattr(mb, op)
        x = uniform(f"{FAM}/{op}", SHAPE, lo, hi)
        if op == "inverse":
            x[0, 0, :2] = -x[0, 0, :2]
        d32 = float(np.float32(dflt))
        out.append(Case(FAM, op, f"{op}_default_eps", {"x": x}, lambda x, fn=fn: fn(x=x),
                        {"y": ref(f64(x), d32)}, note=f"default epsilon {dflt}"))
        out.append(Case(FAM, op, f"{op}_eps", {"x": x}, lambda x, fn=fn: fn(x=x, epsilon=np.float32(0.5)),
                        {"y": ref(f64(x), 0.5)}, note="epsilon 0.5"))
        out.append(Case(FAM, op, f"{op}_eps_ios17", {"x": x}, lambda x, fn=fn: fn(x=x, epsilon=np.float32(0.25)),
                        {"y": ref(f64(x), 0.25)}, opset="iOS17", note="iOS17 form"))
        x16 = x.astype(np.float16)
        out.append(Case(FAM, op, f"{op}_fp16_eps_fp32_ios17", {"x": x16},
                        lambda x, fn=fn: fn(x=x, epsilon=np.float32(0.25)),
                        {"y": ref(f64(x16), 0.25)}, opset="iOS17", precision="fp16",
                        note="iOS17: fp32 epsilon with an fp16 x"))
    x0 = np.array([[0.0, 1.0, 2.0]], dtype=np.float32)
    out.append(Case(FAM, "log", "log_zero_default_eps", {"x": x0}, lambda x: mb.log(x=x),
                    {"y": np.log(f64(x0) + float(np.float32(1e-45)))},
                    note="log(0) with the default epsilon 1e-45 (a float32 subnormal) is finite"))

    x = uniform(f"{FAM}/clip", SHAPE, -4, 4)
    ref = np.clip(f64(x), -1.5, 2.0)
    out.append(Case(FAM, "clip", "clip", {"x": x},
                    lambda x: mb.clip(x=x, alpha=np.float32(-1.5), beta=np.float32(2.0)), {"y": ref}))
    out.append(Case(FAM, "clip", "clip_ios17", {"x": x},
                    lambda x: mb.clip(x=x, alpha=np.float32(-1.5), beta=np.float32(2.0)), {"y": ref}, opset="iOS17"))
    x16 = x.astype(np.float16)
    out.append(Case(FAM, "clip", "clip_fp16", {"x": x16},
                    lambda x: mb.clip(x=x, alpha=np.float16(-1.5), beta=np.float16(2.0)),
                    {"y": np.clip(f64(x16), -1.5, 2.0)}, opset="iOS16", precision="fp16"))

    out.append(Case(FAM, "clip", "clip_fp16_ios17", {"x": x16},
                    lambda x: mb.clip(x=x, alpha=np.float16(-1.5), beta=np.float16(2.0)),
                    {"y": np.clip(f64(x16), -1.5, 2.0)}, opset="iOS17", precision="fp16",
                    note="iOS17 clip keeps alpha/beta in x's dtype"))

    x = uniform(f"{FAM}/threshold", SHAPE, -4, 4)
    out.append(Case(FAM, "threshold", "threshold", {"x": x}, lambda x: mb.threshold(x=x, alpha=np.float32(0.5)),
                    {"y": np.maximum(f64(x), 0.5)}, note="y = max(x, alpha)"))
    xi = ints(f"{FAM}/threshold/int", SHAPE)
    out.append(Case(FAM, "threshold", "threshold_int32", {"x": xi}, lambda x: mb.threshold(x=x, alpha=np.int32(2)),
                    {"y": np.maximum(xi, 2).astype(np.int32)}))
    x16 = x.astype(np.float16)
    out.append(Case(FAM, "threshold", "threshold_fp16", {"x": x16},
                    lambda x: mb.threshold(x=x, alpha=np.float16(0.5)),
                    {"y": np.maximum(f64(x16), 0.5)}, opset="iOS16", precision="fp16"))

    b = bools(f"{FAM}/logical_not", SHAPE)
    out.append(Case(FAM, "logical_not", "logical_not", {"x": b}, lambda x: mb.logical_not(x=x),
                    {"y": np.logical_not(b)}))

    # cast: float -> int truncates toward zero (numpy astype); any non-zero -> true.
    x = uniform(f"{FAM}/cast", SHAPE, -5, 5)
    x.reshape(-1)[:4] = [0.0, -0.5, 2.9, -2.9]
    for opset in ("iOS15", "iOS17"):
        sfx = "" if opset == "iOS15" else "_ios17"
        out.append(Case(FAM, "cast", f"cast_fp32_int32{sfx}", {"x": x}, lambda x: mb.cast(x=x, dtype="int32"),
                        {"y": x.astype(np.int32)}, opset=opset, note="truncation toward zero"))
        out.append(Case(FAM, "cast", f"cast_fp32_bool{sfx}", {"x": x},
                        lambda x: mb.cast(x=mb.cast(x=x, dtype="bool"), dtype="int32"),
                        {"y": (x != 0).astype(np.int32)}, opset=opset, note="bool, read back as int32"))
        xi = ints(f"{FAM}/cast/int", SHAPE)
        out.append(Case(FAM, "cast", f"cast_int32_fp32{sfx}", {"x": xi}, lambda x: mb.cast(x=x, dtype="fp32"),
                        {"y": f64(xi)}, opset=opset))
    out.append(Case(FAM, "cast", "cast_fp32_fp16", {"x": x}, lambda x: mb.cast(x=x, dtype="fp16"),
                    {"y": f64(x.astype(np.float16))}, opset="iOS16", note="fp16 output, rounded to nearest",
                    rtol=1e-6))
    bx = bools(f"{FAM}/cast/bool", SHAPE)
    out.append(Case(FAM, "cast", "cast_bool_fp32", {"x": bx}, lambda x: mb.cast(x=x, dtype="fp32"),
                    {"y": bx.astype(np.float64)}))
    out.append(Case(FAM, "cast", "cast_bool_int32", {"x": bx}, lambda x: mb.cast(x=x, dtype="int32"),
                    {"y": bx.astype(np.int32)}))
    # iOS17's small integer types, read back as int32 (values in range: out-of-range is unspecified).
    xs = uniform(f"{FAM}/cast/small", SHAPE, 0, 100)
    xs.reshape(-1)[:2] = [0.0, 99.9]
    for dt in ("int8", "uint8", "int16", "uint16"):
        out.append(Case(FAM, "cast", f"cast_fp32_{dt}_ios17", {"x": xs},
                        lambda x, dt=dt: mb.cast(x=mb.cast(x=x, dtype=dt), dtype="int32"),
                        {"y": xs.astype(np.int32)}, opset="iOS17", note=f"to {dt} (truncation), back to int32"))
    x16 = x.astype(np.float16)
    out.append(Case(FAM, "cast", "cast_fp16_fp32", {"x": x16}, lambda x: mb.cast(x=x, dtype="fp32"),
                    {"y": f64(x16)}, opset="iOS16"))
    return out
