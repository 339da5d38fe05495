"""Cases for coremltools' tensor_operation.py (iOS15, and the iOS16/17 forms: fill_like, topk's
`sort` / `return_indices`). iOS17 topk's k = -1 has no case: coremltools 9.0 cannot write it (its
type inference makes a dim of -1). References: float64 numpy on the stored inputs, written
from each op's definition (np.concatenate / np.split / np.stack / np.pad / np.tile / np.full /
np.arange / np.cumsum / np.nonzero, stable argsorts for the sorting ops, an explicit band mask)."""

from __future__ import annotations

import zlib

import numpy as np
from coremltools.converters.mil import Builder as mb

from case import Case
from caselib import dtype_variants, fp16_variants

FAM = "tensor_operation"


def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{FAM}/{tag}".encode()))


def fx(tag: str, shape, dtype=np.float32, lo=-3.0, hi=3.0) -> np.ndarray:
    return _rng(tag).uniform(lo, hi, size=shape).astype(dtype)


def ix(tag: str, shape, lo=-50, hi=50) -> np.ndarray:
    return _rng(tag).integers(lo, hi, size=shape).astype(np.int32)


def bx(tag: str, shape) -> np.ndarray:
    return _rng(tag).integers(0, 2, size=shape).astype(bool)


def i32(v) -> np.ndarray:
    return np.array(v, dtype=np.int32)


def ref(a) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def C(op, name, inputs, build, y, **kw) -> Case:
    ys = y if isinstance(y, dict) else {"y": y}
    return Case(family=FAM, op=op, name=name, inputs=inputs, build=build,
                expected={k: ref(v) for k, v in ys.items()}, **kw)


def sort_idx(x, axis, ascending):
    """Stable order along `axis`: descending unless ascending (ties keep their order)."""
    return np.argsort(x if ascending else -x, axis=axis, kind="stable")


def concat_cases() -> list[Case]:
    a, b, c = fx("cat_a", (2, 3)), fx("cat_b", (2, 1)), fx("cat_c", (2, 2))
    p, q = fx("cat_p", (3, 2)), fx("cat_q", (3, 2))
    ia, ib = ix("cat_ia", (2, 2)), ix("cat_ib", (1, 2))
    ba, bb = bx("cat_ba", (2, 2)), bx("cat_bb", (2, 3))
    ha, hb = fx("cat_ha", (2, 3), np.float16), fx("cat_hb", (2, 3), np.float16)
    ta, tb, tc = fx("cat_ta", (2, 2, 2)), fx("cat_tb", (2, 2, 2)), fx("cat_tc", (2, 2, 2))

    def inter(xs, axis):
        s = np.stack(xs, axis=axis % xs[0].ndim + 1)
        shape = list(xs[0].shape)
        shape[axis] *= len(xs)
        return s.reshape(shape)

    return [
        C("concat", "concat_axis1_three", {"a": a, "b": b, "c": c},
          lambda a, b, c: mb.concat(values=[a, b, c], axis=1), np.concatenate([a, b, c], 1)),
        C("concat", "concat_negative_axis", {"a": a, "b": b}, lambda a, b: mb.concat(values=[a, b], axis=-1),
          np.concatenate([a, b], -1)),
        C("concat", "concat_int32", {"a": ia, "b": ib}, lambda a, b: mb.concat(values=[a, b], axis=0),
          np.concatenate([ia, ib], 0)),
        C("concat", "concat_bool", {"a": ba, "b": bb}, lambda a, b: mb.concat(values=[a, b], axis=1),
          np.concatenate([ba, bb], 1)),
        C("concat", "concat_fp16", {"a": ha, "b": hb}, lambda a, b: mb.concat(values=[a, b], axis=0),
          np.concatenate([ha, hb], 0), precision="fp16"),
        C("concat", "concat_interleave_axis0", {"p": p, "q": q},
          lambda p, q: mb.concat(values=[p, q], axis=0, interleave=True), inter([p, q], 0),
          note="the definition's example: out[0::2] = in1, out[1::2] = in2"),
        C("concat", "concat_interleave_three_axis1", {"a": ta, "b": tb, "c": tc},
          lambda a, b, c: mb.concat(values=[a, b, c], axis=1, interleave=True), inter([ta, tb, tc], 1)),
        C("concat", "concat_interleave_last_axis", {"p": p, "q": q},
          lambda p, q: mb.concat(values=[p, q], axis=-1, interleave=True), inter([p, q], -1)),
    ]


def split_stack_cases() -> list[Case]:
    x = fx("split", (2, 6, 3))
    xi = ix("split_int", (4, 2))
    a, b = fx("stack_a", (2, 3)), fx("stack_b", (2, 3))
    ia, ib = ix("stack_ia", (3,)), ix("stack_ib", (3,))
    s1 = np.split(x, 3, axis=1)
    s2 = np.split(x, [1, 4], axis=1)
    s3 = np.split(x, 3, axis=-1)
    s4 = np.split(xi, 2, axis=0)
    return [
        C("split", "split_num_splits", {"x": x}, lambda x: mb.split(x=x, num_splits=3, axis=1),
          {"y0": s1[0], "y1": s1[1], "y2": s1[2]}),
        C("split", "split_sizes_uneven", {"x": x}, lambda x: mb.split(x=x, split_sizes=[1, 3, 2], axis=1),
          {"y0": s2[0], "y1": s2[1], "y2": s2[2]}),
        C("split", "split_negative_axis", {"x": x}, lambda x: mb.split(x=x, num_splits=3, axis=-1),
          {"y0": s3[0], "y1": s3[1], "y2": s3[2]}),
        C("split", "split_int32", {"x": xi}, lambda x: mb.split(x=x, num_splits=2, axis=0),
          {"y0": s4[0], "y1": s4[1]}),
        C("stack", "stack_axis0", {"a": a, "b": b}, lambda a, b: mb.stack(values=[a, b], axis=0),
          np.stack([a, b], 0)),
        C("stack", "stack_last_axis", {"a": a, "b": b}, lambda a, b: mb.stack(values=[a, b], axis=2),
          np.stack([a, b], 2), note="axis == rank: a new last axis"),
        C("stack", "stack_negative_axis", {"a": a, "b": b}, lambda a, b: mb.stack(values=[a, b], axis=-1),
          np.stack([a, b], -1)),
        C("stack", "stack_int32", {"a": ia, "b": ib}, lambda a, b: mb.stack(values=[a, b], axis=1),
          np.stack([ia, ib], 1)),
    ]


def shape_identity_cases() -> list[Case]:
    x = fx("shape", (2, 3, 4))
    xi = ix("shape_int", (5, 1))
    return [
        C("shape", "shape_fp32", {"x": x}, lambda x: mb.shape(x=x), np.array(x.shape, np.int32)),
        C("shape", "shape_int32", {"x": xi}, lambda x: mb.shape(x=x), np.array(xi.shape, np.int32)),
        C("identity", "identity_fp16", {"x": x.astype(np.float16)},
          lambda x: mb.identity(x=mb.add(x=x, y=np.float16(1.0))), x.astype(np.float16).astype(np.float64) + 1,
          precision="fp16"),
        C("identity", "identity_fp32", {"x": x}, lambda x: mb.identity(x=mb.add(x=x, y=1.0)), x.astype(np.float64) + 1,
          note="identity after an add (an identity of an input is the harness's own renaming)"),
    ]


def pad_cases() -> list[Case]:
    x = fx("pad", (2, 3, 4))
    xh = fx("pad_fp16", (1, 3, 3), np.float16)
    out = []
    for mode, npmode in (("constant", "constant"), ("reflect", "reflect"), ("replicate", "edge")):
        pads = [1, 2, 2, 3]
        kw = {"constant_val": np.float32(1.5)} if mode == "constant" else {}
        npkw = {"constant_values": 1.5} if mode == "constant" else {}
        out.append(C("pad", f"pad_{mode}_last2", {"x": x},
                     lambda x, mode=mode, pads=pads, kw=kw: mb.pad(x=x, pad=pads, mode=mode, **kw),
                     np.pad(x, [(0, 0), (1, 2), (2, 3)], npmode, **npkw),
                     note="pad on the trailing 2 dims only" + (", constant 1.5" if kw else "")))
        out.append(C("pad", f"pad_{mode}_all_dims", {"x": x},
                     lambda x, mode=mode: mb.pad(x=x, pad=[1, 0, 0, 2, 3, 1], mode=mode),
                     np.pad(x, [(1, 0), (0, 2), (3, 1)], npmode)))
        out.append(C("pad", f"pad_{mode}_fp16", {"x": xh},
                     lambda x, mode=mode: mb.pad(x=x, pad=[2, 1], mode=mode),
                     np.pad(xh, [(0, 0), (0, 0), (2, 1)], npmode), precision="fp16"))
    out.append(C("pad", "pad_zero_amounts", {"x": x}, lambda x: mb.pad(x=x, pad=[0, 0, 0, 0], mode="reflect"), x,
                 note="nothing to pad"))
    out.append(C("pad", "pad_replicate_size1_axis", {"x": x[:, :1]},
                 lambda x: mb.pad(x=x, pad=[2, 1, 0, 0], mode="replicate"),
                 np.pad(x[:, :1], [(0, 0), (2, 1), (0, 0)], "edge"), note="replicating a size-1 axis"))
    out.append(C("pad", "pad_reflect_max", {"x": x}, lambda x: mb.pad(x=x, pad=[3, 3], mode="reflect"),
                 np.pad(x, [(0, 0), (0, 0), (3, 3)], "reflect"), note="reflect by size - 1, the most allowed"))
    out.append(C("pad", "pad_runtime", {"x": x, "p": i32([0, 1, 1, 0, 2, 2])},
                 lambda x, p: mb.pad(x=x, pad=p), np.pad(x, [(0, 1), (1, 0), (2, 2)]),
                 note="pad amounts computed at run time (all dims)"))
    return out


def tile_fill_range_cases() -> list[Case]:
    x = fx("tile", (2, 3))
    xi = ix("tile_int", (2, 2))
    xb = bx("tile_bool", (1, 3))
    out = [
        C("tile", "tile_basic", {"x": x}, lambda x: mb.tile(x=x, reps=[2, 3]), np.tile(x, (2, 3))),
        C("tile", "tile_size1_dims", {"x": x[:1, :1]}, lambda x: mb.tile(x=x, reps=[3, 2]), np.tile(x[:1, :1], (3, 2))),
        C("tile", "tile_ones", {"x": x}, lambda x: mb.tile(x=x, reps=[1, 1]), x),
        C("tile", "tile_int32", {"x": xi}, lambda x: mb.tile(x=x, reps=[3, 1]), np.tile(xi, (3, 1))),
        C("tile", "tile_bool", {"x": xb}, lambda x: mb.tile(x=x, reps=[2, 2]), np.tile(xb, (2, 2))),
        C("tile", "tile_runtime_reps", {"x": x, "r": i32([2, 2])}, lambda x, r: mb.tile(x=x, reps=r),
          np.tile(x, (2, 2)), note="reps computed at run time"),
        C("fill", "fill_fp32", {"x": x}, lambda x: mb.add(x=mb.fill(shape=[2, 3], value=2.5), y=x),
          x.astype(np.float64) + 2.5, note="added to an input so the program has one"),
        C("fill", "fill_runtime_shape", {"s": i32([2, 4])}, lambda s: mb.fill(shape=s, value=-1.25),
          np.full((2, 4), -1.25), note="shape computed at run time"),
        C("fill", "fill_int32", {"s": i32([3])}, lambda s: mb.fill(shape=s, value=np.int32(7)),
          np.full((3,), 7, np.int32)),
        C("fill", "fill_bool", {"s": i32([2, 2])}, lambda s: mb.fill(shape=s, value=True),
          np.full((2, 2), True)),
        C("fill_like", "fill_like_fp32", {"x": x}, lambda x: mb.fill_like(ref_tensor=x, value=3.0),
          np.full(x.shape, 3.0), opset="iOS16"),
        C("fill_like", "fill_like_int_value", {"x": x}, lambda x: mb.fill_like(ref_tensor=x, value=np.int32(4)),
          np.full(x.shape, 4, np.int32), opset="iOS16", note="value of another dtype than ref_tensor"),
    ]

    def scalar(v):
        return mb.squeeze(x=v)

    out += [
        C("range_1d", "range_1d_runtime_fp32", {"s": np.array([0.5], np.float32), "e": np.array([4.0], np.float32),
                                                "d": np.array([0.75], np.float32)},
          lambda s, e, d: mb.range_1d(start=scalar(s), end=scalar(e), step=scalar(d)),
          np.arange(0.5, 4.0, 0.75), note="bounds computed at run time"),
        C("range_1d", "range_1d_runtime_int32", {"s": i32([10]), "e": i32([-3]), "d": i32([-4])},
          lambda s, e, d: mb.range_1d(start=scalar(s), end=scalar(e), step=scalar(d)),
          np.arange(10, -3, -4).astype(np.int32), note="negative step"),
        C("range_1d", "range_1d_runtime_end", {"e": i32([5])},
          lambda e: mb.range_1d(start=np.int32(0), end=scalar(e), step=np.int32(1)),
          np.arange(0, 5).astype(np.int32)),
        C("range_1d", "range_1d_runtime_fp16", {"s": np.array([0.5], np.float16), "e": np.array([4.0], np.float16),
                                                "d": np.array([0.75], np.float16)},
          lambda s, e, d: mb.range_1d(start=scalar(s), end=scalar(e), step=scalar(d)),
          np.arange(0.5, 4.0, 0.75), precision="fp16"),
        C("fill", "fill_fp16", {"s": i32([2, 3])}, lambda s: mb.fill(shape=s, value=np.float16(2.5)),
          np.full((2, 3), 2.5), precision="fp16"),
        C("fill_like", "fill_like_fp16", {"x": x.astype(np.float16)},
          lambda x: mb.fill_like(ref_tensor=x, value=np.float16(-0.5)), np.full(x.shape, -0.5), opset="iOS16",
          precision="fp16"),
        C("range_1d", "range_1d_empty", {"e": i32([0])},
          lambda e: mb.range_1d(start=np.int32(3), end=scalar(e), step=np.int32(1)),
          np.arange(3, 0).astype(np.int32), note="end before start: an empty range"),
    ]
    return out


def one_hot_band_cases() -> list[Case]:
    idx = i32([[0, 3], [2, 1], [3, 3]])
    eye = np.eye(4)
    band = fx("band", (2, 4, 5))
    bi = ix("band_int", (3, 3))

    def band_ref(x, lower, upper):
        m, n = np.indices(x.shape[-2:])
        keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
        return np.where(keep, x, 0)

    out = [
        C("one_hot", "one_hot_last_axis", {"i": idx}, lambda i: mb.one_hot(indices=i, one_hot_vector_size=4),
          eye[idx].astype(np.int32), note="default on 1 / off 0 (int32)"),
        C("one_hot", "one_hot_axis0_values", {"i": idx},
          lambda i: mb.one_hot(indices=i, one_hot_vector_size=4, axis=0, on_value=2.5, off_value=-1.0),
          np.moveaxis(np.where(eye[idx] == 1, 2.5, -1.0), -1, 0)),
        C("one_hot", "one_hot_axis1", {"i": idx},
          lambda i: mb.one_hot(indices=i, one_hot_vector_size=4, axis=1, on_value=1.0, off_value=0.0),
          np.moveaxis(eye[idx], -1, 1)),
        C("one_hot", "one_hot_runtime_size", {"i": i32([1, 0, 4]), "n": i32([5])},
          lambda i, n: mb.one_hot(indices=i, one_hot_vector_size=mb.squeeze(x=n), on_value=1.0, off_value=0.0),
          np.eye(5)[[1, 0, 4]], note="one_hot_vector_size computed at run time"),
        C("one_hot", "one_hot_fp16", {"i": idx},
          lambda i: mb.one_hot(indices=i, one_hot_vector_size=4, on_value=np.float16(2.5),
                               off_value=np.float16(-1.0)),
          np.where(eye[idx] == 1, 2.5, -1.0), precision="fp16"),
    ]
    for lo, up in ((-1, -1), (0, -1), (-1, 0), (0, 0), (1, 2)):
        out.append(C("band_part", f"band_part_lower{lo}_upper{up}".replace("-", "m"), {"x": band},
                     lambda x, lo=lo, up=up: mb.band_part(x=x, lower=lo, upper=up), band_ref(band, lo, up)))
    out.append(C("band_part", "band_part_int32", {"x": bi}, lambda x: mb.band_part(x=x, lower=1, upper=0),
                 band_ref(bi, 1, 0)))
    return out


def cumsum_nonzero_cases() -> list[Case]:
    x = fx("cumsum", (3, 4))
    xi = ix("cumsum_int", (5,))
    xh = fx("cumsum_fp16", (2, 6), np.float16)

    def cs(x, axis, exclusive, reverse):
        x = np.asarray(x).astype(np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x)
        y = np.flip(x, axis) if reverse else x
        c = np.cumsum(y, axis=axis)
        if exclusive:
            c = c - y
        return np.flip(c, axis) if reverse else c

    out = []
    for ex in (False, True):
        for rev in (False, True):
            out.append(C("cumsum", f"cumsum_axis1_ex{int(ex)}_rev{int(rev)}", {"x": x},
                         lambda x, ex=ex, rev=rev: mb.cumsum(x=x, axis=1, exclusive=ex, reverse=rev),
                         cs(x, 1, ex, rev)))
    out += [
        C("cumsum", "cumsum_default_axis0", {"x": x}, lambda x: mb.cumsum(x=x), cs(x, 0, False, False)),
        C("cumsum", "cumsum_negative_axis", {"x": x}, lambda x: mb.cumsum(x=x, axis=-1, reverse=True),
          cs(x, 1, False, True)),
        C("cumsum", "cumsum_size1_axis", {"x": x[:1]}, lambda x: mb.cumsum(x=x, axis=0, exclusive=True),
          cs(x[:1], 0, True, False), note="a size-1 axis: exclusive gives zeros"),
        C("cumsum", "cumsum_int32", {"x": xi}, lambda x: mb.cumsum(x=x, exclusive=True), cs(xi, 0, True, False)),
        C("cumsum", "cumsum_fp16", {"x": xh}, lambda x: mb.cumsum(x=x, axis=1), cs(xh, 1, False, False),
          precision="fp16"),
    ]
    z = fx("nonzero", (3, 4))
    z[z < 0.5] = 0
    zi = i32([[0, 3, 0], [-1, 0, 2]])
    zb = bx("nonzero_bool", (2, 3, 2))
    out += [
        C("non_zero", "non_zero_fp32", {"x": z}, lambda x: mb.non_zero(x=x), np.transpose(np.nonzero(z))),
        C("non_zero", "non_zero_int32", {"x": zi}, lambda x: mb.non_zero(x=x), np.transpose(np.nonzero(zi))),
        C("non_zero", "non_zero_all_zero", {"x": np.zeros((2, 3), np.float32)}, lambda x: mb.non_zero(x=x),
          np.zeros((0, 2), np.int32), note="no non-zero element: an empty (0, rank) result"),
        C("non_zero", "non_zero_bool_rank3", {"x": zb}, lambda x: mb.non_zero(x=x), np.transpose(np.nonzero(zb))),
    ]
    return out


def sort_cases() -> list[Case]:
    x = fx("sort", (3, 5))
    xi = i32([[3, 1, 3, 0, 1], [2, 2, 9, -4, 2]])
    xh = fx("sort_fp16", (2, 6), np.float16)
    out = [
        C("argsort", "argsort_descending", {"x": x}, lambda x: mb.argsort(x=x), sort_idx(x, -1, False)),
        C("argsort", "argsort_ascending", {"x": x}, lambda x: mb.argsort(x=x, ascending=True), sort_idx(x, -1, True)),
        C("argsort", "argsort_axis0", {"x": x}, lambda x: mb.argsort(x=x, axis=0), sort_idx(x, 0, False)),
        C("argsort", "argsort_int32_ties", {"x": xi}, lambda x: mb.argsort(x=x, ascending=True),
          sort_idx(xi, -1, True), note="ties keep their order (stable)"),
        C("argsort", "argsort_fp16", {"x": xh}, lambda x: mb.argsort(x=x), sort_idx(xh, -1, False),
          precision="fp16"),
    ]

    def topk_ref(x, k, axis, ascending):
        i = np.take(sort_idx(x, axis, ascending), np.arange(k), axis=axis)
        return {"values": np.take_along_axis(x, i, axis=axis), "indices": i.astype(np.int32)}

    out += [
        C("topk", "topk_default", {"x": x}, lambda x: mb.topk(x=x), topk_ref(x, 1, -1, False),
          note="k = 1, last axis, descending"),
        C("topk", "topk_k3", {"x": x}, lambda x: mb.topk(x=x, k=3), topk_ref(x, 3, -1, False)),
        C("topk", "topk_ascending_axis0", {"x": x}, lambda x: mb.topk(x=x, k=2, axis=0, ascending=True),
          topk_ref(x, 2, 0, True)),
        C("topk", "topk_k_is_axis_size", {"x": x}, lambda x: mb.topk(x=x, k=3, axis=0), topk_ref(x, 3, 0, False),
          note="k equal to the axis size: a full sort"),
        C("topk", "topk_int32", {"x": xi}, lambda x: mb.topk(x=x, k=2), topk_ref(xi, 2, -1, False)),
        C("topk", "topk_fp16", {"x": xh}, lambda x: mb.topk(x=x, k=4), topk_ref(xh, 4, -1, False), precision="fp16"),
        C("topk", "topk_values_only_ios16", {"x": x}, lambda x: mb.topk(x=x, k=2, return_indices=False),
          {"values": topk_ref(x, 2, -1, False)["values"]}, opset="iOS16"),
        C("topk", "topk_uint16_indices_ios17", {"x": x},
          lambda x: mb.topk(x=x, k=2, output_indices_dtype="uint16"), topk_ref(x, 2, -1, False), opset="iOS17",
          note="indices output declared uint16"),
        C("topk", "topk_unsorted_ios16", {"x": x}, lambda x: mb.topk(x=x, k=3, sort=False),
          topk_ref(x, 3, -1, False), opset="iOS16",
          note="sort=False allows any order; the interpreter returns sorted order, the reference is sorted"),
    ]
    return out


def flatten_cases() -> list[Case]:
    x = fx("flatten", (2, 3, 4))
    xi = ix("flatten_int", (3,))
    return [
        C("flatten2d", "flatten2d_default", {"x": x}, lambda x: mb.flatten2d(x=x), x.reshape(2, 12)),
        C("flatten2d", "flatten2d_negative_axis", {"x": x}, lambda x: mb.flatten2d(x=x, axis=-1), x.reshape(6, 4)),
        C("flatten2d", "flatten2d_axis0", {"x": x}, lambda x: mb.flatten2d(x=x, axis=0), x.reshape(1, 24)),
        C("flatten2d", "flatten2d_rank1_int32", {"x": xi}, lambda x: mb.flatten2d(x=x, axis=-1), xi.reshape(1, 3),
          note="the definition's example 1: (3,), axis -1 -> (1, 3)"),
    ]


def _iou(a, b):
    """IoU of center-size boxes (x, y, w, h)."""
    ix = max(0.0, min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2))
    iy = max(0.0, min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def nms_ref(boxes, scores, iou_t, score_t, m, per_class):
    """Greedy NMS per the definition, one batch: boxes (B, 4), scores (B, K). Returns the kept box
    indices in score order. With a score threshold (iOS15), when nothing survives the best box is
    kept, as coremltools' reference of Core ML's op (tests/iOS14/test_tensor_operation.py) does."""
    boxes, scores = boxes.astype(np.float64), scores.astype(np.float64)
    best, cls = scores.max(-1), scores.argmax(-1)
    kept = []
    for i in np.argsort(-best, kind="stable"):
        if len(kept) == m:
            break
        if score_t is not None and best[i] <= score_t:
            continue
        if all(per_class and cls[j] != cls[i] or _iou(boxes[i], boxes[j]) <= iou_t for j in kept):
            kept.append(int(i))
    if score_t is not None and not kept:
        kept = [int(np.argmax(best))]
    return kept


def nms_outputs(boxes, scores, iou_t, score_t, m, per_class):
    """iOS15 layout: boxes (n, B, 4), scores (n, B, K); padding zeros and index -1."""
    n, _, k = scores.shape
    ob, os_, oi, on = np.zeros((n, m, 4)), np.zeros((n, m, k)), -np.ones((n, m), np.int32), np.zeros(n, np.int32)
    for b in range(n):
        kept = nms_ref(boxes[b], scores[b], iou_t, score_t, m, per_class)
        on[b] = len(kept)
        for s, i in enumerate(kept):
            ob[b, s], os_[b, s], oi[b, s] = boxes[b, i], scores[b, i], i
    return {"out_boxes": ob, "out_scores": os_, "out_indices": oi, "out_count": on}


def nms_cases() -> list[Case]:
    out = []
    # coremltools' op-test vector (published values).
    pb = np.array([[[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]]], dtype=np.float32)
    ps = np.array([[[-3.5], [9.4], [2.3], [0.7]]], dtype=np.float32)
    want = {"out_boxes": np.array([[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]]),
            "out_scores": np.array([[[9.4], [2.3]]], np.float32), "out_indices": i32([[1, 2]]),
            "out_count": i32([2])}
    got = nms_outputs(pb, ps, 0.2, 0.4, 2, True)
    assert all(np.allclose(got[k], want[k]) for k in want)
    nms = mb.non_maximum_suppression
    out.append(C("non_maximum_suppression", "nms_published_ios15", {"boxes": pb, "scores": ps},
                 lambda boxes, scores: nms(boxes=boxes, scores=scores, iou_threshold=0.2, score_threshold=0.4,
                                           max_boxes=2, per_class_suppression=True),
                 want, note="coremltools' op-test vector"))
    r = _rng("nms")
    n, nb, k = 2, 10, 3
    boxes = np.concatenate([r.uniform(0, 2, (n, nb, 2)), r.uniform(0.8, 2.0, (n, nb, 2))], -1).astype(np.float32)
    scores = r.uniform(0, 1, (n, nb, k)).astype(np.float32)
    for name, iou_t, score_t, m, pc in (("global", 0.3, 0.2, 8, False), ("per_class", 0.3, 0.2, 8, True),
                                         ("nothing_survives", 0.3, 0.99, 3, False)):
        out.append(C("non_maximum_suppression", f"nms_{name}_ios15", {"boxes": boxes, "scores": scores},
                     lambda boxes, scores, iou_t=iou_t, score_t=score_t, m=m, pc=pc: nms(
                         boxes=boxes, scores=scores, iou_threshold=iou_t, score_threshold=score_t, max_boxes=m,
                         per_class_suppression=pc),
                     nms_outputs(boxes, scores, iou_t, score_t, m, pc),
                     note="padding: zeros and index -1" if name != "nothing_survives"
                     else "no score above the threshold: the best box is kept"))
    bh, sh = boxes.astype(np.float16), scores.astype(np.float16)
    out.append(C("non_maximum_suppression", "nms_per_class_fp16_ios15", {"boxes": bh, "scores": sh},
                 lambda boxes, scores: nms(boxes=boxes, scores=scores, iou_threshold=np.float16(0.3),
                                           score_threshold=np.float16(0.2), max_boxes=8,
                                           per_class_suppression=True),
                 nms_outputs(bh, sh, np.float16(0.3), np.float16(0.2), 8, True), precision="fp16",
                 note="thresholds as fp16 constants; the reference reads them so"))
    for name, pc in (("global", False), ("per_class", True)):
        ref15 = nms_outputs(boxes, scores, 0.3, None, 7, pc)
        out.append(C("non_maximum_suppression", f"nms_{name}_ios17",
                     {"boxes": boxes.transpose(0, 2, 1).copy(), "scores": scores.transpose(0, 2, 1).copy()},
                     lambda boxes, scores, pc=pc: nms(boxes=boxes, scores=scores, iou_threshold=0.3, max_boxes=7,
                                                      per_class_suppression=pc),
                     {"out_boxes": ref15["out_boxes"].transpose(0, 2, 1),
                      "out_scores": ref15["out_scores"].transpose(0, 2, 1), "out_indices": ref15["out_indices"]},
                     opset="iOS17",
                     note="iOS17 layout (boxes last), no score threshold; padding as iOS15 (no published vector)"))
    return out



# Pure data-movement ops whose fp32 cases get an fp16 twin.
FP16_OPS = {"split", "stack", "tile", "flatten2d", "band_part", "non_zero", "shape"}

# Pure data-movement ops whose fp32 cases get int32 / bool twins (the definitions' T includes them).
INT_OPS = {"split", "stack", "band_part", "flatten2d"}
BOOL_OPS = INT_OPS | {"concat", "shape"}


def cases() -> list[Case]:
    base = (concat_cases() + split_stack_cases() + shape_identity_cases() + pad_cases() + tile_fill_range_cases()
            + one_hot_band_cases() + cumsum_nonzero_cases() + sort_cases() + flatten_cases() + nms_cases())
    return (base + fp16_variants(base, FP16_OPS) + dtype_variants(base, INT_OPS, "int32")
            + dtype_variants(base, BOOL_OPS, "bool"))
