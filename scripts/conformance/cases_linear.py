"""Cases for coremltools' linear.py: linear, matmul, einsum (iOS15, and the iOS17 re-versions whose
constant operand may have another dtype). References: float64 numpy (`x @ W.T + b`, `np.matmul`,
`np.einsum` on the stored inputs)."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, ints, uniform

FAM = "linear"


def cases() -> list[Case]:
    out: list[Case] = []
    w = uniform(f"{FAM}/lin/w", (5, 4), -1, 1)
    b = uniform(f"{FAM}/lin/b", (5,), -1, 1)
    for shape in ((4,), (3, 4), (2, 3, 4)):
        x = uniform(f"{FAM}/lin/{len(shape)}", shape)
        out.append(Case(FAM, "linear", f"linear_rank{len(shape)}", {"x": x},
                        lambda x: mb.linear(x=x, weight=w, bias=b),
                        {"y": f64(x) @ f64(w).T + f64(b)}))
    x = uniform(f"{FAM}/lin/nob", (3, 4))
    out.append(Case(FAM, "linear", "linear_no_bias", {"x": x}, lambda x: mb.linear(x=x, weight=w),
                    {"y": f64(x) @ f64(w).T}))
    x16 = x.astype(np.float16)
    w16, b16 = w.astype(np.float16), b.astype(np.float16)
    out.append(Case(FAM, "linear", "linear_fp16", {"x": x16}, lambda x: mb.linear(x=x, weight=w16, bias=b16),
                    {"y": f64(x16) @ f64(w16).T + f64(b16)}, opset="iOS16", precision="fp16"))
    out.append(Case(FAM, "linear", "linear_fp16_weights_fp32_ios17", {"x": x16},
                    lambda x: mb.linear(x=x, weight=w, bias=b),
                    {"y": f64(x16) @ f64(w).T + f64(b)}, opset="iOS17", precision="fp16",
                    note="iOS17: fp32 weight and bias on an fp16 input"))
    xi = ints(f"{FAM}/lin/int", (2, 4))
    wi = ints(f"{FAM}/lin/wi", (3, 4))
    bi = ints(f"{FAM}/lin/bi", (3,))
    out.append(Case(FAM, "linear", "linear_int32_ios17", {"x": xi}, lambda x: mb.linear(x=x, weight=wi, bias=bi),
                    {"y": xi.astype(np.int64) @ wi.astype(np.int64).T + bi}, opset="iOS17"))

    def mm(name, xs, ys, tx=False, ty=False, opset="iOS15", note=""):
        x = uniform(f"{FAM}/mm/{name}/x", xs)
        y = uniform(f"{FAM}/mm/{name}/y", ys)
        lx = f64(x) if not tx else np.swapaxes(f64(x), -1, -2)
        ly = f64(y) if not ty else np.swapaxes(f64(y), -1, -2)
        kw = {}
        if tx:
            kw["transpose_x"] = True
        if ty:
            kw["transpose_y"] = True
        return Case(FAM, "matmul", f"matmul_{name}", {"x": x, "y": y},
                    lambda x, y, kw=kw: mb.matmul(x=x, y=y, **kw), {"z": np.matmul(lx, ly)}, opset=opset, note=note)

    out.append(mm("2d", (3, 4), (4, 5)))
    out.append(mm("batched", (2, 3, 4), (2, 4, 5)))
    out.append(mm("broadcast_batch", (2, 1, 3, 4), (3, 4, 2)), )
    out.append(mm("broadcast_rank", (4, 3), (2, 1, 3, 2), note="rank-2 x against a rank-4 y"))
    out.append(mm("transpose_x", (2, 4, 3), (2, 4, 5), tx=True))
    out.append(mm("transpose_y", (3, 4), (5, 4), ty=True))
    out.append(mm("transpose_both", (1, 4, 3), (2, 5, 4), tx=True, ty=True))
    # Rank-1 x against a matrix only: coremltools' type inference needs y of rank >= 2, and for a
    # batched y it drops the batch dim instead of the row dim (numpy drops the row).
    out.append(mm("vec_mat", (4,), (4, 3), note="rank-1 x: a row, its dim dropped"))
    out.append(mm("vec_mat_transpose_y", (4,), (3, 4), ty=True))
    x = uniform(f"{FAM}/mm/c/x", (2, 3, 4))
    yc = uniform(f"{FAM}/mm/c/y", (4, 5))
    out.append(Case(FAM, "matmul", "matmul_const_y", {"x": x}, lambda x: mb.matmul(x=x, y=yc),
                    {"z": f64(x) @ f64(yc)}))
    x16 = x.astype(np.float16)
    y16 = uniform(f"{FAM}/mm/16/y", (2, 4, 3)).astype(np.float16)
    out.append(Case(FAM, "matmul", "matmul_fp16", {"x": x16, "y": y16}, lambda x, y: mb.matmul(x=x, y=y),
                    {"z": f64(x16) @ f64(y16)}, opset="iOS16", precision="fp16"))
    out.append(Case(FAM, "matmul", "matmul_fp16_const_fp32_ios17", {"x": x16}, lambda x: mb.matmul(x=x, y=yc),
                    {"z": f64(x16) @ f64(yc)}, opset="iOS17", precision="fp16",
                    note="iOS17: a constant fp32 y on an fp16 x; the result is fp16"))
    xc = uniform(f"{FAM}/mm/cx/x", (3, 4))
    out.append(Case(FAM, "matmul", "matmul_const_fp32_x_fp16_y_ios17", {"y": y16},
                    lambda y: mb.matmul(x=xc, y=y),
                    {"z": f64(xc) @ f64(y16)}, opset="iOS17", precision="fp16",
                    note="iOS17: a constant fp32 x on an fp16 y; the result is fp16"))
    xi, yi = ints(f"{FAM}/mm/i/x", (2, 3)), ints(f"{FAM}/mm/i/y", (3, 2))
    out.append(Case(FAM, "matmul", "matmul_int32", {"x": xi, "y": yi}, lambda x, y: mb.matmul(x=x, y=y),
                    {"z": xi.astype(np.int64) @ yi.astype(np.int64)}))

    for name, eq, xs, ys in (("rank4", "nchw,nwhu->nchu", (2, 3, 4, 5), (2, 5, 4, 2)),
                             ("rank4_renamed", "abcd,adce->abce", (1, 2, 3, 4), (1, 4, 3, 5)),
                             ("rank4_broadcast", "nchw,nwhu->nchu", (2, 3, 1, 5), (1, 5, 4, 2)),
                             ("rank3", "chw,whr->chr", (3, 4, 5), (5, 4, 2)),
                             ("rank3_broadcast_h", "chw,whr->chr", (3, 1, 5), (5, 4, 2))):
        x = uniform(f"{FAM}/einsum/{name}/x", xs)
        y = uniform(f"{FAM}/einsum/{name}/y", ys)
        # numpy's einsum does not broadcast size-1 named dims: expand them first.
        r = len(xs)
        shape = list(np.broadcast_shapes(xs[:r - 3] + (1, xs[r - 2], 1), ys[:r - 3] + (1, ys[r - 2], 1)))
        xe = np.broadcast_to(f64(x), tuple(shape[:r - 3]) + (xs[r - 3], shape[r - 2], xs[r - 1]))
        ye = np.broadcast_to(f64(y), tuple(shape[:r - 3]) + (ys[r - 3], shape[r - 2], ys[r - 1]))
        out.append(Case(FAM, "einsum", f"einsum_{name}", {"x": x, "y": y},
                        lambda x, y, eq=eq: mb.einsum(values=(x, y), equation=eq),
                        {"z": np.einsum(eq, xe, ye)}))
    x = uniform(f"{FAM}/einsum/16/x", (1, 2, 3, 4)).astype(np.float16)
    y = uniform(f"{FAM}/einsum/16/y", (1, 4, 3, 2)).astype(np.float16)
    out.append(Case(FAM, "einsum", "einsum_fp16", {"x": x, "y": y},
                    lambda x, y: mb.einsum(values=(x, y), equation="nchw,nwhu->nchu"),
                    {"z": np.einsum("nchw,nwhu->nchu", f64(x), f64(y))}, opset="iOS16", precision="fp16"))
    return out
