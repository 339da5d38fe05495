"""Cases for coremltools' elementwise_binary.py. References: numpy on the stored inputs (float64
for floats; integer ops in int64 then int32, as `value_inference`'s python operators)."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, bools, f64, ints, uniform

FAM = "elementwise_binary"

ARITH = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "pow": np.power,
}
COMPARE = {
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
}
LOGIC = {"logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor}

# (x shape, y shape): same shape, broadcast both ways, size-1 dims, lower rank.
SHAPES = {"same": ((2, 3, 4), (2, 3, 4)), "bcast": ((2, 1, 4), (3, 1)), "rank": ((1, 3, 1), (2, 1, 4))}


def operands(op, xs, ys, dtype, tag):
    if dtype == np.int32:
        x = ints(f"{FAM}/{op}/{tag}/x", xs)
        y = ints(f"{FAM}/{op}/{tag}/y", ys)
        if op in ("floor_div", "mod", "real_div"):
            y[y == 0] = 3
        if op == "pow":
            x, y = ints(f"{FAM}/pow/{tag}/x", xs, -3, 4), ints(f"{FAM}/pow/{tag}/y", ys, 0, 4)
        return x, y
    lo, hi = (0.1, 3.0) if op == "pow" else (-4.0, 4.0)
    x = uniform(f"{FAM}/{op}/{tag}/x", xs, lo, hi, dtype)
    y = uniform(f"{FAM}/{op}/{tag}/y", ys, -4 if op != "pow" else -2, 4 if op != "pow" else 2, dtype)
    if op in ("real_div", "floor_div", "mod"):
        y = np.where(np.abs(y) < 0.25, np.asarray(0.5, dtype=dtype), y).astype(dtype)
    if op in COMPARE:
        # Ties: copy some of y into x where shapes allow.
        x = x.copy()
        x.reshape(-1)[::3] = np.broadcast_to(y, np.broadcast_shapes(xs, ys)).reshape(-1)[: x.size][::3]
    return x, y


def cases() -> list[Case]:
    out: list[Case] = []
    for op, ref in {**ARITH, **COMPARE}.items():
        fn = getattr(mb, op)
        for tag, (xs, ys) in SHAPES.items():
            x, y = operands(op, xs, ys, np.float32, tag)
            r = ref(f64(x), f64(y))
            out.append(Case(FAM, op, f"{op}_{tag}", {"x": x, "y": y}, lambda x, y, fn=fn: fn(x=x, y=y), {"z": r}))
        x, y = operands(op, (2, 3, 4), (4,), np.float16, "fp16")
        out.append(Case(FAM, op, f"{op}_fp16", {"x": x, "y": y}, lambda x, y, fn=fn: fn(x=x, y=y),
                        {"z": ref(f64(x), f64(y))}, opset="iOS16", precision="fp16"))
        if op == "real_div":
            continue  # int32 real_div's result type is int32 but its value a true division: unspecified
        x, y = operands(op, (2, 3, 4), (3, 1), np.int32, "int")
        r = ref(x.astype(np.int64), y.astype(np.int64))
        r = r if r.dtype == np.bool_ else r.astype(np.int32)
        out.append(Case(FAM, op, f"{op}_int32", {"x": x, "y": y}, lambda x, y, fn=fn: fn(x=x, y=y), {"z": r},
                        note="int32, negative operands (floor_div and mod round toward -inf, as numpy)"))
    # x op const: the constant operand path.
    x = uniform(f"{FAM}/add/const", (2, 3), -2, 2)
    out.append(Case(FAM, "add", "add_const", {"x": x}, lambda x: mb.add(x=x, y=np.float32(1.5)), {"z": f64(x) + 1.5}))
    xp = (np.abs(x) + np.float32(0.1)).astype(np.float32)
    out.append(Case(FAM, "pow", "pow_const_exponent", {"x": xp}, lambda x: mb.pow(x=x, y=np.float32(3.0)),
                    {"z": f64(xp) ** 3}))
    # Negative bases to integral powers, and 0^0: real in numpy (x**2 of a centred tensor is how
    # exported LayerNorms compute the variance).
    xn = np.concatenate([x.reshape(-1), np.float32([0.0, -0.0, -1.5])]).astype(np.float32)
    yn = np.float32([2, 3, 2, -1, 0, 2, 0, 0, 3])
    out.append(Case(FAM, "pow", "pow_negative_base_integral_exponent", {"x": xn, "y": yn},
                    lambda x, y: mb.pow(x=x, y=y), {"z": np.power(f64(xn), f64(yn))}))
    for op, ref in LOGIC.items():
        fn = getattr(mb, op)
        for tag, (xs, ys) in SHAPES.items():
            x, y = bools(f"{FAM}/{op}/{tag}/x", xs), bools(f"{FAM}/{op}/{tag}/y", ys)
            out.append(Case(FAM, op, f"{op}_{tag}", {"x": x, "y": y}, lambda x, y, fn=fn: fn(x=x, y=y),
                            {"z": ref(x, y)}))
    return out
