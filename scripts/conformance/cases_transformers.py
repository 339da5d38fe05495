"""Cases for coremltools' iOS18 transformers.py: scaled_dot_product_attention, without a mask, with
a bool mask (false positions excluded) and with a float mask (added to the scores), broadcast
over batch and heads. Reference: float64 numpy, softmax(Q K^T / sqrt(E) + mask) V, as the op's
definition (and its `value_inference`) states it."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, bools, f64, uniform

FAM = "transformers"


def sdpa(q, k, v, mask=None):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        if mask.dtype == bool:
            s = s + np.where(mask, 0.0, -np.inf)
        else:
            s = s + mask
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return (e / e.sum(axis=-1, keepdims=True)) @ v


def cases() -> list[Case]:
    out: list[Case] = []
    op = "scaled_dot_product_attention"
    q = uniform(f"{FAM}/q", (2, 3, 4, 5))
    k = uniform(f"{FAM}/k", (2, 3, 6, 5))
    v = uniform(f"{FAM}/v", (2, 3, 6, 7))
    out.append(Case(FAM, op, "sdpa_no_mask", {"q": q, "k": k, "v": v},
                    lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v),
                    {"y": sdpa(f64(q), f64(k), f64(v))}, opset="iOS18"))
    q3, k3, v3 = q[0], k[0], v[0]
    out.append(Case(FAM, op, "sdpa_rank3", {"q": q3, "k": k3, "v": v3},
                    lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v),
                    {"y": sdpa(f64(q3), f64(k3), f64(v3))}, opset="iOS18"))
    bm = bools(f"{FAM}/bm", (4, 6))
    bm[:, 0] = True  # every row keeps a position (a fully masked row is NaN)
    out.append(Case(FAM, op, "sdpa_bool_mask", {"q": q, "k": k, "v": v},
                    lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=bm),
                    {"y": sdpa(f64(q), f64(k), f64(v), bm)}, opset="iOS18", note="mask [L, S] broadcast"))
    bmi = bools(f"{FAM}/bmi", (2, 1, 4, 6))
    bmi[..., 0] = True
    out.append(Case(FAM, op, "sdpa_bool_mask_input", {"q": q, "k": k, "v": v, "m": bmi},
                    lambda q, k, v, m: mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=m),
                    {"y": sdpa(f64(q), f64(k), f64(v), bmi)}, opset="iOS18",
                    note="a run-time bool mask, broadcast over heads"))
    m1 = np.array([True, True, False, True, False, True])
    out.append(Case(FAM, op, "sdpa_bool_mask_rank1", {"q": q, "k": k, "v": v},
                    lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=m1),
                    {"y": sdpa(f64(q), f64(k), f64(v), m1)}, opset="iOS18", note="mask [S]: one key mask for all"))
    causal = np.triu(np.full((4, 6), -1e4, np.float32), k=3)
    out.append(Case(FAM, op, "sdpa_float_mask", {"q": q, "k": k, "v": v},
                    lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=causal),
                    {"y": sdpa(f64(q), f64(k), f64(v), f64(causal))}, opset="iOS18"))
    fm = uniform(f"{FAM}/fm", (1, 3, 4, 6), -2, 2)
    out.append(Case(FAM, op, "sdpa_float_mask_input", {"q": q, "k": k, "v": v, "m": fm},
                    lambda q, k, v, m: mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=m),
                    {"y": sdpa(f64(q), f64(k), f64(v), f64(fm))}, opset="iOS18"))
    q16, k16, v16 = q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)
    out.append(Case(FAM, op, "sdpa_fp16_bool_mask", {"q": q16, "k": k16, "v": v16},
                    lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=bm),
                    {"y": sdpa(f64(q16), f64(k16), f64(v16), bm)}, opset="iOS18", precision="fp16"))
    return out
