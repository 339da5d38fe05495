"""Cases for coremltools' scatter_gather.py (iOS15, and the iOS16 `batch_dims` of gather /
gather_nd, the iOS17 `validate_indices`). References: float64 numpy on the stored inputs, written
from each op's definition -- np.take / np.take_along_axis for the gathers, explicit loops over
`updates` in row-major order for the scatters and gather_nd."""

from __future__ import annotations

import zlib

import numpy as np
from coremltools.converters.mil import Builder as mb

from case import Case
from caselib import dtype_variants, fp16_variants

FAM = "scatter_gather"
MODES = ("update", "add", "sub", "mul", "div", "max", "min")


def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{FAM}/{tag}".encode()))


def fx(tag: str, shape, dtype=np.float32, lo=-3.0, hi=3.0) -> np.ndarray:
    return _rng(tag).uniform(lo, hi, size=shape).astype(dtype)


def ix(tag: str, shape, lo=-50, hi=50) -> np.ndarray:
    return _rng(tag).integers(lo, hi, size=shape).astype(np.int32)


def i32(v) -> np.ndarray:
    return np.array(v, dtype=np.int32)


def ref(a) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def C(op, name, inputs, build, y, **kw) -> Case:
    return Case(family=FAM, op=op, name=name, inputs=inputs, build=build, expected={"y": ref(y)}, **kw)


def apply(mode, d, u):
    return {"update": u, "add": d + u, "sub": d - u, "mul": d * u, "div": d / u, "max": max(d, u),
            "min": min(d, u)}[mode]


def f64(a):
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64)


# --- references --------------------------------------------------------------------------------


def gather_ref(x, idx, axis, batch_dims=0):
    """output[b..., p..., i..., q...] = x[b..., p..., idx[b..., i...], q...]."""
    x, idx = np.asarray(x), np.asarray(idx)
    axis %= x.ndim
    if batch_dims == 0:
        return np.take(x, idx, axis=axis)
    bshape = x.shape[:batch_dims]
    rows = [np.take(x[b], idx[b], axis=axis - batch_dims) for b in np.ndindex(*bshape)]
    return np.stack(rows).reshape(bshape + rows[0].shape)


def gather_nd_ref(x, idx, batch_dims=0):
    x, idx = np.asarray(x), np.asarray(idx)
    depth = idx.shape[-1]
    lead = idx.shape[:-1]
    out = np.empty(lead + x.shape[batch_dims + depth:], dtype=x.dtype)
    for p in np.ndindex(*lead):
        out[p] = x[tuple(p[:batch_dims]) + tuple(idx[p])]
    return out


def scatter_ref(data, idx, upd, axis, mode):
    out = f64(data).copy()
    upd = f64(upd)
    axis %= data.ndim
    ni = np.asarray(idx).ndim
    for u in np.ndindex(*upd.shape):
        j = int(np.asarray(idx)[u[axis: axis + ni]])
        t = u[:axis] + (j,) + u[axis + ni:]
        out[t] = apply(mode, out[t], upd[u])
    return out


def scatter_along_ref(data, idx, upd, axis, mode):
    out = f64(data).copy()
    upd = f64(upd)
    axis %= data.ndim
    for u in np.ndindex(*upd.shape):
        t = list(u)
        t[axis] = int(idx[u])
        out[tuple(t)] = apply(mode, out[tuple(t)], upd[u])
    return out


def scatter_nd_ref(data, idx, upd, mode):
    out = f64(data).copy()
    upd = f64(upd)
    lead = idx.shape[:-1]
    for p in np.ndindex(*lead):
        t = tuple(int(v) for v in idx[p])
        out[t] = apply(mode, out[t], upd[p]) if upd[p].ndim == 0 else np.vectorize(
            lambda d, u: apply(mode, d, u))(out[t], upd[p])
    return out


# --- cases -------------------------------------------------------------------------------------


def gather_cases() -> list[Case]:
    x = fx("gather", (4, 5, 3))
    xi = ix("gather_int", (5, 2))
    xh = fx("gather_fp16", (4, 3), np.float16)
    i1 = i32([3, 0, 3, 1])
    i2 = i32([[4, 0], [-1, 2], [1, -5]])
    out = [
        C("gather", "gather_axis0", {"x": x, "i": i1}, lambda x, i: mb.gather(x=x, indices=i), gather_ref(x, i1, 0),
          note="repeated index"),
        C("gather", "gather_axis1_2d_negative", {"x": x, "i": i2}, lambda x, i: mb.gather(x=x, indices=i, axis=1),
          gather_ref(x, np.where(i2 < 0, i2 + 5, i2), 1), note="rank-2 indices, negative indices"),
        C("gather", "gather_negative_axis", {"x": x}, lambda x: mb.gather(x=x, indices=i32([2, 0]), axis=-1),
          gather_ref(x, [2, 0], -1), note="constant indices"),
        C("gather", "gather_scalar_index", {"x": x}, lambda x: mb.gather(x=x, indices=np.int32(2), axis=1),
          x[:, 2, :], note="a rank-0 index drops the axis"),
        C("gather", "gather_int32", {"x": xi, "i": i32([1, 4])}, lambda x, i: mb.gather(x=x, indices=i),
          gather_ref(xi, [1, 4], 0)),
        C("gather", "gather_fp16", {"x": xh, "i": i32([2, 2, 0])}, lambda x, i: mb.gather(x=x, indices=i, axis=0),
          gather_ref(xh, [2, 2, 0], 0), precision="fp16"),
    ]
    xb = fx("gather_batch", (2, 4, 3))
    ib = i32([[3, 1], [0, 0]])
    out.append(C("gather", "gather_batch_dims1_ios16", {"x": xb, "i": ib},
                 lambda x, i: mb.gather(x=x, indices=i, axis=1, batch_dims=1), gather_ref(xb, ib, 1, 1),
                 opset="iOS16", note="batch_dims = 1: batch b gathers from x[b] with indices[b]"))
    ib2 = i32([[[2, 0]], [[1, 1]]])
    out.append(C("gather", "gather_batch_dims1_axis2_ios16", {"x": xb, "i": ib2},
                 lambda x, i: mb.gather(x=x, indices=i, axis=2, batch_dims=1), gather_ref(xb, ib2, 2, 1),
                 opset="iOS16"))
    out.append(C("gather", "gather_validate_indices_ios17", {"x": x, "i": i1},
                 lambda x, i: mb.gather(x=x, indices=i, axis=0, validate_indices=True), gather_ref(x, i1, 0),
                 opset="iOS17"))

    ga = fx("gaa", (3, 4))
    gi = i32([[0, 2, 1, 0], [2, 2, 0, 1]])
    gj = i32([[3, 0], [1, 1], [0, 2]])
    out += [
        C("gather_along_axis", "gather_along_axis_axis0", {"x": ga, "i": gi},
          lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=0), np.take_along_axis(ga, gi, 0)),
        C("gather_along_axis", "gather_along_axis_last", {"x": ga, "i": gj},
          lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=-1), np.take_along_axis(ga, gj, -1)),
        C("gather_along_axis", "gather_along_axis_int32_ios16", {"x": ix("gaa_int", (2, 3)), "i": i32([[2], [0]])},
          lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=1),
          np.take_along_axis(ix("gaa_int", (2, 3)), i32([[2], [0]]), 1), opset="iOS16"),
        C("gather_along_axis", "gather_along_axis_fp16_ios17", {"x": ga.astype(np.float16), "i": gj},
          lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=1, validate_indices=True),
          np.take_along_axis(ga.astype(np.float16), gj, 1), opset="iOS17", precision="fp16"),
    ]

    nx = fx("gnd", (3, 4, 2))
    n1 = i32([[2], [0]])
    n2 = i32([[[0, 3], [2, 1]], [[1, 1], [0, 0]]])
    n3 = i32([[1, 3, 0], [2, 0, 1]])
    out += [
        C("gather_nd", "gather_nd_depth1", {"x": nx, "i": n1}, lambda x, i: mb.gather_nd(x=x, indices=i),
          gather_nd_ref(nx, n1), note="slices of rank 2"),
        C("gather_nd", "gather_nd_depth2", {"x": nx, "i": n2}, lambda x, i: mb.gather_nd(x=x, indices=i),
          gather_nd_ref(nx, n2), note="rank-3 indices"),
        C("gather_nd", "gather_nd_full_depth", {"x": nx, "i": n3}, lambda x, i: mb.gather_nd(x=x, indices=i),
          gather_nd_ref(nx, n3), note="scalars"),
        C("gather_nd", "gather_nd_batch_dims1_ios16", {"x": nx, "i": i32([[[3], [1]], [[0], [0]], [[2], [3]]])},
          lambda x, i: mb.gather_nd(x=x, indices=i, batch_dims=1),
          gather_nd_ref(nx, i32([[[3], [1]], [[0], [0]], [[2], [3]]]), 1), opset="iOS16"),
        C("gather_nd", "gather_nd_int32_ios17", {"x": ix("gnd_int", (3, 3)), "i": n1},
          lambda x, i: mb.gather_nd(x=x, indices=i, validate_indices=True),
          gather_nd_ref(ix("gnd_int", (3, 3)), n1), opset="iOS17"),
    ]
    return out


def scatter_cases() -> list[Case]:
    out = []
    d = fx("scatter_d", (4, 3))
    # Updates away from 0 so div is well conditioned.
    u = fx("scatter_u", (2, 3), lo=0.5, hi=2.0)
    idx = i32([3, 1])
    for mode in MODES:
        out.append(C("scatter", f"scatter_{mode}", {"d": d, "i": idx, "u": u},
                     lambda d, i, u, mode=mode: mb.scatter(data=d, indices=i, updates=u, mode=mode),
                     scatter_ref(d, idx, u, 0, mode)))
    out.append(C("scatter", "scatter_default_mode_add", {"d": d, "i": idx, "u": u},
                 lambda d, i, u: mb.scatter(data=d, indices=i, updates=u), scatter_ref(d, idx, u, 0, "add"),
                 note="mode defaults to add"))
    dup = i32([2, 2, 0])
    u3 = fx("scatter_u3", (3, 3))
    out.append(C("scatter", "scatter_add_repeated_index", {"d": d, "i": dup, "u": u3},
                 lambda d, i, u: mb.scatter(data=d, indices=i, updates=u, mode="add"),
                 scatter_ref(d, dup, u3, 0, "add"), note="repeated indices accumulate"))
    ua = fx("scatter_ua", (4, 2))
    out.append(C("scatter", "scatter_axis1_negative_index", {"d": d, "i": i32([-1, 0]), "u": ua},
                 lambda d, i, u: mb.scatter(data=d, indices=i, updates=u, axis=1, mode="update"),
                 scatter_ref(d, [2, 0], ua, 1, "update"), note="axis 1, index -1 is the last"))
    di, ui = ix("scatter_di", (3, 2)), ix("scatter_ui", (1, 2))
    out.append(C("scatter", "scatter_int32_mul", {"d": di, "i": i32([1]), "u": ui},
                 lambda d, i, u: mb.scatter(data=d, indices=i, updates=u, mode="mul"),
                 scatter_ref(di, [1], ui, 0, "mul").astype(np.int32)))
    out.append(C("scatter", "scatter_fp16_sub", {"d": d.astype(np.float16), "i": idx, "u": u.astype(np.float16)},
                 lambda d, i, u: mb.scatter(data=d, indices=i, updates=u, mode="sub"),
                 scatter_ref(d.astype(np.float16), idx, u.astype(np.float16), 0, "sub"), precision="fp16"))
    out.append(C("scatter", "scatter_ios17_validate", {"d": d, "i": idx, "u": u},
                 lambda d, i, u: mb.scatter(data=d, indices=i, updates=u, mode="max", validate_indices=True),
                 scatter_ref(d, idx, u, 0, "max"), opset="iOS17"))

    sd = fx("saa_d", (3, 4))
    si = i32([[1, 3], [0, 0], [2, 1]])
    su = fx("saa_u", (3, 2), lo=0.5, hi=2.0)
    for mode in MODES:
        out.append(C("scatter_along_axis", f"scatter_along_axis_{mode}", {"d": sd, "i": si, "u": su},
                     lambda d, i, u, mode=mode: mb.scatter_along_axis(data=d, indices=i, updates=u, axis=1,
                                                                      mode=mode),
                     scatter_along_ref(sd, si, su, 1, mode)))
    s0 = i32([[2, 0, 1, 1]])
    u0 = fx("saa_u0", (1, 4))
    out.append(C("scatter_along_axis", "scatter_along_axis_axis0_default", {"d": sd, "i": s0, "u": u0},
                 lambda d, i, u: mb.scatter_along_axis(data=d, indices=i, updates=u),
                 scatter_along_ref(sd, s0, u0, 0, "add"), note="axis 0, mode add by default"))
    out.append(C("scatter_along_axis", "scatter_along_axis_ios17", {"d": sd, "i": si, "u": su},
                 lambda d, i, u: mb.scatter_along_axis(data=d, indices=i, updates=u, axis=-1, mode="update",
                                                       validate_indices=True),
                 scatter_along_ref(sd, si, su, 1, "update"), opset="iOS17"))

    nd = fx("snd_d", (3, 4, 2))
    ni = i32([[2, 1], [0, 3]])
    nu = fx("snd_u", (2, 2), lo=0.5, hi=2.0)
    for mode in MODES:
        out.append(C("scatter_nd", f"scatter_nd_{mode}", {"d": nd, "i": ni, "u": nu},
                     lambda d, i, u, mode=mode: mb.scatter_nd(data=d, indices=i, updates=u, mode=mode),
                     scatter_nd_ref(nd, ni, nu, mode), note="depth 2 of rank 3: updates are rows"))
    n1 = i32([[1]])
    u1 = fx("snd_u1", (1, 4, 2))
    out.append(C("scatter_nd", "scatter_nd_depth1_default", {"d": nd, "i": n1, "u": u1},
                 lambda d, i, u: mb.scatter_nd(data=d, indices=i, updates=u),
                 scatter_nd_ref(nd, n1, u1, "add"), note="depth 1: a whole slab; mode add by default"))
    n3 = i32([[0, 0, 1], [2, 3, 0], [0, 0, 1]])
    u3 = fx("snd_u3", (3,))
    out.append(C("scatter_nd", "scatter_nd_full_depth_repeated", {"d": nd, "i": n3, "u": u3},
                 lambda d, i, u: mb.scatter_nd(data=d, indices=i, updates=u, mode="add"),
                 scatter_nd_ref(nd, n3, u3, "add"), note="scalar updates, a repeated index accumulates"))
    out.append(C("scatter_nd", "scatter_nd_ios17", {"d": nd, "i": ni, "u": nu},
                 lambda d, i, u: mb.scatter_nd(data=d, indices=i, updates=u, mode="min", validate_indices=True),
                 scatter_nd_ref(nd, ni, nu, "min"), opset="iOS17"))
    return out



# Ops whose fp32 cases get an fp16 twin; for the scatters only the `update` mode is pure movement.
FP16_OPS = {"gather_nd", "gather_along_axis", "scatter_along_axis", "scatter_nd", "scatter"}
ARITHMETIC = {f"{op}_{m}" for op in ("scatter", "scatter_along_axis", "scatter_nd") for m in MODES if m != "update"} | {
    "scatter_default_mode_add", "scatter_add_repeated_index", "scatter_int32_mul", "scatter_fp16_sub",
    "scatter_ios17_validate", "scatter_along_axis_axis0_default", "scatter_nd_depth1_default",
    "scatter_nd_full_depth_repeated", "scatter_nd_ios17"}


def cases() -> list[Case]:
    base = gather_cases() + scatter_cases()
    return base + fp16_variants(base, FP16_OPS, ARITHMETIC) + dtype_variants(base, FP16_OPS, "int32", ARITHMETIC)

