"""Cases for `select` of coremltools' control_flow.py (the ops with nested blocks are not in this
suite yet). Reference: numpy.where on the stored inputs."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, bools, f64, ints, uniform

FAM = "control_flow"


def cases() -> list[Case]:
    out: list[Case] = []
    for tag, (cs, a_s, b_s) in {"same": ((2, 3), (2, 3), (2, 3)), "bcast": ((2, 1), (1, 3), (2, 3)),
                                "cond_bcast": ((3,), (2, 3), (2, 1))}.items():
        c = bools(f"{FAM}/select/{tag}/c", cs)
        a = uniform(f"{FAM}/select/{tag}/a", a_s)
        b = uniform(f"{FAM}/select/{tag}/b", b_s)
        out.append(Case(FAM, "select", f"select_{tag}", {"cond": c, "a": a, "b": b},
                        lambda cond, a, b: mb.select(cond=cond, a=a, b=b), {"y": np.where(c, f64(a), f64(b))}))
    c = bools(f"{FAM}/select/int/c", (2, 3))
    a, b = ints(f"{FAM}/select/int/a", (2, 3)), ints(f"{FAM}/select/int/b", (2, 3))
    out.append(Case(FAM, "select", "select_int32", {"cond": c, "a": a, "b": b},
                    lambda cond, a, b: mb.select(cond=cond, a=a, b=b), {"y": np.where(c, a, b).astype(np.int32)}))
    ab, bb = bools(f"{FAM}/select/bool/a", (2, 3)), bools(f"{FAM}/select/bool/b", (2, 3))
    out.append(Case(FAM, "select", "select_bool", {"cond": c, "a": ab, "b": bb},
                    lambda cond, a, b: mb.select(cond=cond, a=a, b=b), {"y": np.where(c, ab, bb)}))
    a16, b16 = a.astype(np.float16), b.astype(np.float16) / np.float16(3)
    out.append(Case(FAM, "select", "select_fp16", {"cond": c, "a": a16, "b": b16},
                    lambda cond, a, b: mb.select(cond=cond, a=a, b=b), {"y": np.where(c, f64(a16), f64(b16))},
                    opset="iOS16", precision="fp16"))
    return out
