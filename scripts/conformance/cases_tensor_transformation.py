"""Cases for coremltools' tensor_transformation.py (iOS15, and the iOS16/17/18 forms: reshape_like,
pixel_unshuffle, reshape's right-aligned 0, slice_update). References: float64 numpy on the stored
inputs -- numpy indexing, reshapes and transposes written from each op's definition (the block
reorderings as reshape/transpose recipes, TensorFlow's order for depth_to_space / space_to_batch,
PyTorch's for pixel_shuffle), plus the two published vectors of coremltools' own op tests for
space_to_batch / batch_to_space."""

from __future__ import annotations

import zlib

import numpy as np
from coremltools.converters.mil import Builder as mb

from case import Case
from caselib import dtype_variants, fp16_variants

FAM = "tensor_transformation"


def _rng(tag: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{FAM}/{tag}".encode()))


def fx(tag: str, shape, dtype=np.float32) -> np.ndarray:
    """Seeded float input (distinct values, so any misplaced element shows)."""
    return _rng(tag).uniform(-3, 3, size=shape).astype(dtype)


def ix(tag: str, shape) -> np.ndarray:
    return _rng(tag).integers(-50, 50, size=shape).astype(np.int32)


def bx(tag: str, shape) -> np.ndarray:
    return _rng(tag).integers(0, 2, size=shape).astype(bool)


def i32(v) -> np.ndarray:
    return np.array(v, dtype=np.int32)


def ref(a) -> np.ndarray:
    """The reference in the suite's form: float64 for floats, ints and bools as they are."""
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def C(op, name, inputs, build, y, **kw) -> Case:
    return Case(family=FAM, op=op, name=name, inputs=inputs, build=build, expected={"y": ref(y)}, **kw)


# --- references for the block reorderings, from the definitions ------------------------------


def depth_to_space(x, b):
    n, c, h, w = x.shape
    # TensorFlow (DCR): input channel (i * b + j) * C_out + c lands at (h * b + i, w * b + j).
    return x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(x, b):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


def pixel_shuffle(x, f):
    n, c, h, w = x.shape
    # PyTorch (CRD): input channel c * f^2 + i * f + j lands at (h * f + i, w * f + j).
    return x.reshape(n, c // (f * f), f, f, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (f * f), h * f, w * f)


def pixel_unshuffle(x, f):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * f * f, h // f, w // f)


def space_to_batch(x, block, pads):
    (bh, bw), n, c = block, x.shape[0], x.shape[1]
    p = np.pad(x, [(0, 0), (0, 0), tuple(pads[0]), tuple(pads[1])])
    H, W = p.shape[2] // bh, p.shape[3] // bw
    # TensorFlow: output batch (i * bw + j) * N + n holds the block offset (i, j) of image n.
    return p.reshape(n, c, H, bh, W, bw).transpose(3, 5, 0, 1, 2, 4).reshape(bh * bw * n, c, H, W)


def batch_to_space(x, block, crops):
    (bh, bw), (B, c, h, w) = block, x.shape
    n = B // (bh * bw)
    y = x.reshape(bh, bw, n, c, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(n, c, h * bh, w * bw)
    return y[:, :, crops[0][0]: h * bh - crops[0][1], crops[1][0]: w * bw - crops[1][1]]


def sliding_windows(x, axis, size, stride):
    v = np.lib.stride_tricks.sliding_window_view(x, size, axis=axis)
    ax = axis % x.ndim
    v = np.take(v, np.arange(0, v.shape[ax], stride), axis=ax)
    return np.moveaxis(v, -1, ax + 1)


def reverse_sequence(x, lengths, seq_axis, batch_axis):
    y = x.copy()
    for b, n in enumerate(lengths):
        src = [slice(None)] * x.ndim
        src[batch_axis] = b
        src[seq_axis] = slice(0, n)
        dst = list(src)
        y[tuple(dst)] = np.flip(x[tuple(src)], axis=seq_axis - (1 if batch_axis < seq_axis else 0))
    return y


def np_slice(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """numpy's x[b:e:s, ...] with the masks as the definition states them."""
    sl = []
    for d in range(x.ndim):
        b = None if begin_mask and begin_mask[d] else begin[d]
        e = None if end_mask and end_mask[d] else end[d]
        s = stride[d] if stride else 1
        if squeeze_mask and squeeze_mask[d]:
            sl.append(b if b is not None else 0)
        else:
            sl.append(slice(b, e, s))
    return x[tuple(sl)]


# --- the cases ---------------------------------------------------------------------------------


def reshape_cases() -> list[Case]:
    out = []
    x = fx("reshape", (2, 3, 4))
    out.append(C("reshape", "reshape_basic", {"x": x}, lambda x: mb.reshape(x=x, shape=[4, 6]), x.reshape(4, 6)))
    out.append(C("reshape", "reshape_infer", {"x": x}, lambda x: mb.reshape(x=x, shape=[-1, 2]), x.reshape(-1, 2),
                 note="-1 inferred"))
    out.append(C("reshape", "reshape_zero_copy", {"x": x}, lambda x: mb.reshape(x=x, shape=[0, -1, 2]),
                 x.reshape(2, 6, 2), note="0 copies the same-position dim (len(shape) == rank)"))
    out.append(C("reshape", "reshape_to_rank1", {"x": x}, lambda x: mb.reshape(x=x, shape=[24]), x.reshape(24)))
    y = fx("reshape_ios17", (2, 5))
    out.append(C("reshape", "reshape_zero_right_aligned_ios17", {"x": y},
                 lambda x: mb.reshape(x=x, shape=[1, 0, -1, 0]), y.reshape(1, 1, 2, 5), opset="iOS17",
                 note="iOS17: 0 matched from the right, 1 where it has no counterpart (the definition's example)"))
    s = i32([3, 8])
    out.append(C("reshape", "reshape_runtime_shape", {"x": x, "shape": s},
                 lambda x, shape: mb.reshape(x=x, shape=shape), x.reshape(3, 8), note="shape computed at run time"))
    xi = ix("reshape_int", (2, 6))
    out.append(C("reshape", "reshape_int32", {"x": xi}, lambda x: mb.reshape(x=x, shape=[3, 4]), xi.reshape(3, 4)))
    xb = bx("reshape_bool", (2, 6))
    out.append(C("reshape", "reshape_bool", {"x": xb}, lambda x: mb.reshape(x=x, shape=[4, 3]), xb.reshape(4, 3)))
    xh = fx("reshape_fp16", (2, 3, 4), np.float16)
    out.append(C("reshape", "reshape_fp16", {"x": xh}, lambda x: mb.reshape(x=x, shape=[6, -1]), xh.reshape(6, 4),
                 precision="fp16"))
    a, b = fx("rl_a", (2, 3, 5)), fx("rl_b", (1, 4))
    xr = fx("reshape_like", (6, 4))
    out.append(C("reshape_like", "reshape_like_basic", {"x": xr, "a": a, "b": b},
                 lambda x, a, b: mb.reshape_like(x=x, ref_tensors=(a, b), begins=(0, 1), ends=(2, 0),
                                                 end_masks=(False, True)),
                 xr.reshape(2, 3, 4), opset="iOS16", note="shape from ref dims a[0:2] + b[1:]"))
    return out


def transpose_cases() -> list[Case]:
    x = fx("transpose", (2, 3, 4))
    xi = ix("transpose_int", (2, 3, 4))
    xh = fx("transpose_fp16", (2, 3, 4, 2), np.float16)
    return [
        C("transpose", "transpose_3d", {"x": x}, lambda x: mb.transpose(x=x, perm=[2, 0, 1]), x.transpose(2, 0, 1)),
        C("transpose", "transpose_negative_perm", {"x": x}, lambda x: mb.transpose(x=x, perm=[-1, -3, -2]),
          x.transpose(2, 0, 1), note="negative perm entries"),
        C("transpose", "transpose_identity", {"x": x}, lambda x: mb.transpose(x=x, perm=[0, 1, 2]), x),
        C("transpose", "transpose_int32", {"x": xi}, lambda x: mb.transpose(x=x, perm=[1, 2, 0]),
          xi.transpose(1, 2, 0)),
        C("transpose", "transpose_4d_fp16", {"x": xh}, lambda x: mb.transpose(x=x, perm=[0, 3, 1, 2]),
          xh.transpose(0, 3, 1, 2), precision="fp16"),
        C("transpose", "transpose_ios17", {"x": x}, lambda x: mb.transpose(x=x, perm=[1, 0, 2]),
          x.transpose(1, 0, 2), opset="iOS17"),
    ]


def expand_squeeze_cases() -> list[Case]:
    x = fx("expand", (2, 3))
    s = fx("squeeze", (1, 3, 1, 2))
    si = ix("squeeze_int", (3, 1))
    return [
        C("expand_dims", "expand_dims_front", {"x": x}, lambda x: mb.expand_dims(x=x, axes=[0]), x[None]),
        C("expand_dims", "expand_dims_negative", {"x": x}, lambda x: mb.expand_dims(x=x, axes=[-1]), x[..., None]),
        C("expand_dims", "expand_dims_several", {"x": x}, lambda x: mb.expand_dims(x=x, axes=[0, 2, -1]),
          x.reshape(1, 2, 1, 3, 1), note="axes are positions in the output"),
        C("expand_dims", "expand_dims_ios17_int32", {"x": ix("expand_int", (4,))},
          lambda x: mb.expand_dims(x=x, axes=[1]), ix("expand_int", (4,))[:, None], opset="iOS17"),
        C("squeeze", "squeeze_all", {"x": s}, lambda x: mb.squeeze(x=x), s.reshape(3, 2)),
        C("squeeze", "squeeze_axes", {"x": s}, lambda x: mb.squeeze(x=x, axes=[0]), s.reshape(3, 1, 2)),
        C("squeeze", "squeeze_negative_axis", {"x": s}, lambda x: mb.squeeze(x=x, axes=[-2]), s.reshape(1, 3, 2)),
        C("squeeze", "squeeze_int32", {"x": si}, lambda x: mb.squeeze(x=x, axes=[1]), si.reshape(3)),
        C("squeeze", "squeeze_ios17", {"x": s}, lambda x: mb.squeeze(x=x, axes=[0, 2]), s.reshape(3, 2),
          opset="iOS17"),
    ]


def slice_cases() -> list[Case]:
    out = []
    x = fx("slice", (4, 5, 6))

    def sbi(name, note="", opset="iOS15", x=x, precision="fp32", **kw):
        args = {k: v for k, v in kw.items()}
        expected = np_slice(x, kw["begin"], kw["end"], kw.get("stride"), kw.get("begin_mask"), kw.get("end_mask"),
                            kw.get("squeeze_mask"))
        out.append(C("slice_by_index", f"slice_by_index_{name}", {"x": x},
                     lambda x: mb.slice_by_index(x=x, **args), expected, note=note, opset=opset,
                     precision=precision))

    sbi("basic", begin=[1, 0, 2], end=[3, 5, 5])
    sbi("stride2_after_slice", begin=[1, 1, 0], end=[3, 5, 6], stride=[1, 2, 2],
        note="a stride of 2 after a slice on an earlier axis (issue #11's failing case)")
    sbi("negative_stride", begin=[3, 4, 5], end=[0, 0, 0], stride=[-1, -2, -3], note="numpy x[3:0:-1, 4:0:-2, 5:0:-3]")
    sbi("negative_bounds", begin=[-3, -4, -1], end=[-1, -1, -6], stride=[1, 1, -1])
    sbi("masks", begin=[2, 9, 1], end=[0, 2, 9], begin_mask=[True, False, False], end_mask=[False, True, True],
        note="begin_mask / end_mask override begin / end")
    sbi("reverse_all_masked", begin=[0, 0, 0], end=[0, 0, 0], stride=[-1, 1, -2],
        begin_mask=[True, True, True], end_mask=[True, True, True], note="x[::-1, :, ::-2]")
    sbi("squeeze_mask", begin=[2, 0, -1], end=[3, 5, 6], squeeze_mask=[True, False, True],
        note="pure index at begin on the squeezed axes (negative included)")
    sbi("out_of_range_bounds_clamp", begin=[-10, 1, 0], end=[10, 100, 6], note="bounds clamp like numpy")
    sbi("empty", begin=[2, 0, 0], end=[2, 5, 6], note="an empty slice")
    sbi("size1_axis", x=x[:, :1], begin=[0, 0, 1], end=[4, 1, 6], stride=[3, 1, 2], note="a size-1 axis kept")
    x0 = x[0]
    out.append(C("slice_by_index", "slice_by_index_all_squeezed", {"x": x0},
                 lambda x: mb.expand_dims(
                     x=mb.slice_by_index(x=x, begin=[4, -1], end=[5, 6], squeeze_mask=[True, True]), axes=[0]),
                 x0[4, -1:], note="every axis squeezed: a scalar (expanded to (1,): a model output has rank >= 1)"))
    xi = ix("slice_int", (3, 8))
    sbi("int32", x=xi, begin=[0, 1], end=[3, 8], stride=[2, 3])
    xb = bx("slice_bool", (3, 8))
    sbi("bool", x=xb, begin=[1, 0], end=[3, 8], stride=[1, 2])
    xh = fx("slice_fp16", (4, 6), np.float16)
    sbi("fp16", x=xh, begin=[0, 5], end=[4, 0], stride=[2, -1], precision="fp16")
    sbi("ios17", begin=[0, 1, 1], end=[4, 5, 6], stride=[3, 1, 2], opset="iOS17")
    b, e = i32([1, 1, 0]), i32([4, 4, 6])
    out.append(C("slice_by_index", "slice_by_index_runtime_bounds", {"x": x, "b": b, "e": e},
                 lambda x, b, e: mb.slice_by_index(x=x, begin=b, end=e, stride=[1, 2, 3]), x[1:4, 1:4:2, 0:6:3],
                 note="begin / end computed at run time"))

    y = fx("slice_size", (4, 5, 6))
    out.append(C("slice_by_size", "slice_by_size_basic", {"x": y},
                 lambda x: mb.slice_by_size(x=x, begin=[1, 0, 2], size=[2, 5, 3]), y[1:3, 0:5, 2:5]))
    out.append(C("slice_by_size", "slice_by_size_rest", {"x": y},
                 lambda x: mb.slice_by_size(x=x, begin=[1, 2, 0], size=[-1, 2, -1]), y[1:, 2:4, :],
                 note="size -1 takes the rest"))
    out.append(C("slice_by_size", "slice_by_size_negative_begin", {"x": y},
                 lambda x: mb.slice_by_size(x=x, begin=[-2, 0, -3], size=[2, 1, 3]), y[2:4, 0:1, 3:6]))
    out.append(C("slice_by_size", "slice_by_size_runtime", {"x": y, "b": i32([0, 1, 2]), "s": i32([3, 3, -1])},
                 lambda x, b, s: mb.slice_by_size(x=x, begin=b, size=s), y[0:3, 1:4, 2:],
                 note="begin / size computed at run time"))
    yi = ix("slice_size_int", (3, 4))
    out.append(C("slice_by_size", "slice_by_size_int32_ios17", {"x": yi},
                 lambda x: mb.slice_by_size(x=x, begin=[1, 1], size=[2, 2]), yi[1:3, 1:3], opset="iOS17"))

    u = fx("slice_update_x", (4, 6))
    v = fx("slice_update_v", (2, 3))
    r = u.copy()
    r[1:4:2, 0:6:2] = v
    out.append(C("slice_update", "slice_update_strided", {"x": u, "v": v},
                 lambda x, v: mb.slice_update(x=x, update=v, begin=[1, 0], end=[4, 6], stride=[2, 2]), r,
                 opset="iOS18", note="x[1:4:2, 0:6:2] = update"))
    r3 = u.copy()
    r3[1:3, 0:3] = v
    out.append(C("slice_update", "slice_update_runtime_bounds", {"x": u, "v": v, "b": i32([1, 0]), "e": i32([3, 3])},
                 lambda x, v, b, e: mb.slice_update(x=x, update=v, begin=b, end=e), r3, opset="iOS18",
                 note="begin / end computed at run time"))
    v2 = fx("slice_update_v2", (6,))
    r2 = u.copy()
    r2[2, ::-1] = v2
    out.append(C("slice_update", "slice_update_squeeze_reverse", {"x": u, "v": v2},
                 lambda x, v: mb.slice_update(x=x, update=v, begin=[2, 0], end=[3, 0], stride=[1, -1],
                                              squeeze_mask=[True, False], begin_mask=[False, True],
                                              end_mask=[False, True]), r2,
                 opset="iOS18", note="x[2, ::-1] = update"))
    return out


def reverse_cases() -> list[Case]:
    x = fx("reverse", (2, 3, 4))
    xi = ix("reverse_int", (3, 4))
    out = [
        C("reverse", "reverse_axes", {"x": x}, lambda x: mb.reverse(x=x, axes=[0, 2]), x[::-1, :, ::-1]),
        C("reverse", "reverse_all", {"x": x}, lambda x: mb.reverse(x=x), x[::-1, ::-1, ::-1],
          note="no axes: every axis"),
        C("reverse", "reverse_negative_axis", {"x": x}, lambda x: mb.reverse(x=x, axes=[-2]), x[:, ::-1]),
        C("reverse", "reverse_int32_ios17", {"x": xi}, lambda x: mb.reverse(x=x, axes=[1]), xi[:, ::-1],
          opset="iOS17"),
    ]
    s = fx("reverse_sequence", (3, 5, 2))
    lens = i32([5, 2, 0])
    out.append(C("reverse_sequence", "reverse_sequence_seq1_batch0", {"x": s, "lengths": lens},
                 lambda x, lengths: mb.reverse_sequence(x=x, lengths=lengths, seq_axis=1, batch_axis=0),
                 reverse_sequence(s, lens, 1, 0), note="lengths 5 (all), 2, 0 (none)"))
    t = fx("reverse_sequence_t", (4, 2, 3))
    lens2 = i32([3, 1])
    out.append(C("reverse_sequence", "reverse_sequence_seq0_batch1", {"x": t, "lengths": lens2},
                 lambda x, lengths: mb.reverse_sequence(x=x, lengths=lengths, seq_axis=0, batch_axis=1),
                 reverse_sequence(t, lens2, 0, 1), note="batch axis after the sequence axis"))
    out.append(C("reverse_sequence", "reverse_sequence_ios17", {"x": s, "lengths": i32([1, 3, 4])},
                 lambda x, lengths: mb.reverse_sequence(x=x, lengths=lengths, seq_axis=-2, batch_axis=0),
                 reverse_sequence(s, [1, 3, 4], 1, 0), opset="iOS17", note="negative seq_axis"))
    return out


def block_cases() -> list[Case]:
    out = []
    x = fx("d2s", (2, 8, 2, 3))
    out.append(C("depth_to_space", "depth_to_space_b2", {"x": x}, lambda x: mb.depth_to_space(x=x, block_size=2),
                 depth_to_space(x, 2), note="TensorFlow channel order (DCR)"))
    x3 = fx("d2s3", (1, 18, 2, 2), np.float16)
    out.append(C("depth_to_space", "depth_to_space_b3_fp16", {"x": x3},
                 lambda x: mb.depth_to_space(x=x, block_size=3), depth_to_space(x3, 3), precision="fp16"))
    y = fx("s2d", (2, 3, 4, 6))
    out.append(C("space_to_depth", "space_to_depth_b2", {"x": y}, lambda x: mb.space_to_depth(x=x, block_size=2),
                 space_to_depth(y, 2)))
    y3 = fx("s2d3", (1, 2, 3, 6), np.float16)
    out.append(C("space_to_depth", "space_to_depth_b3_fp16", {"x": y3},
                 lambda x: mb.space_to_depth(x=x, block_size=3), space_to_depth(y3, 3), precision="fp16"))
    p = fx("ps", (2, 8, 2, 3))
    out.append(C("pixel_shuffle", "pixel_shuffle_f2", {"x": p}, lambda x: mb.pixel_shuffle(x=x, upscale_factor=2),
                 pixel_shuffle(p, 2), note="PyTorch channel order (CRD)"))
    p3 = fx("ps3", (1, 18, 2, 1), np.float16)
    out.append(C("pixel_shuffle", "pixel_shuffle_f3_fp16", {"x": p3},
                 lambda x: mb.pixel_shuffle(x=x, upscale_factor=3), pixel_shuffle(p3, 3), precision="fp16"))
    q = fx("pu", (2, 3, 4, 6))
    out.append(C("pixel_unshuffle", "pixel_unshuffle_f2", {"x": q},
                 lambda x: mb.pixel_unshuffle(x=x, downscale_factor=np.uint32(2)), pixel_unshuffle(q, 2),
                 opset="iOS16"))
    # coremltools' own op test vectors (tests/iOS14/test_tensor_transformation.py), published values.
    v = np.array([[[[1, 2, 3, 4], [5, 6, 7, 8]]], [[[9, 10, 11, 12], [13, 14, 15, 16]]]], dtype=np.float32)
    w = np.array([[[[0, 1, 3]]], [[[0, 9, 11]]], [[[0, 2, 4]]], [[[0, 10, 12]]], [[[0, 5, 7]]], [[[0, 13, 15]]],
                  [[[0, 6, 8]]], [[[0, 14, 16]]]], dtype=np.float32)
    assert np.array_equal(space_to_batch(v, (2, 2), [[0, 0], [2, 0]]), w)
    assert np.array_equal(batch_to_space(w, (2, 2), [[0, 0], [2, 0]]), v)
    out.append(C("space_to_batch", "space_to_batch_published", {"x": v},
                 lambda x: mb.space_to_batch(x=x, block_shape=[2, 2], paddings=[[0, 0], [2, 0]]), w,
                 note="coremltools' op-test vector"))
    out.append(C("batch_to_space", "batch_to_space_published", {"x": w},
                 lambda x: mb.batch_to_space(x=x, block_shape=[2, 2], crops=[[0, 0], [2, 0]]), v,
                 note="coremltools' op-test vector"))
    s = fx("s2b", (2, 3, 3, 4))
    out.append(C("space_to_batch", "space_to_batch_uneven_block_pad", {"x": s},
                 lambda x: mb.space_to_batch(x=x, block_shape=[3, 2], paddings=[[1, 2], [0, 2]]),
                 space_to_batch(s, (3, 2), [[1, 2], [0, 2]]), note="block 3x2, padding on both sides"))
    b = fx("b2s", (12, 2, 2, 3))
    out.append(C("batch_to_space", "batch_to_space_uneven_block_crop", {"x": b},
                 lambda x: mb.batch_to_space(x=x, block_shape=[3, 2], crops=[[1, 2], [1, 0]]),
                 batch_to_space(b, (3, 2), [[1, 2], [1, 0]]), note="block 3x2, crops on both sides"))
    bh = fx("b2s16", (4, 1, 2, 2), np.float16)
    out.append(C("batch_to_space", "batch_to_space_fp16", {"x": bh},
                 lambda x: mb.batch_to_space(x=x, block_shape=[2, 2], crops=[[0, 0], [0, 0]]),
                 batch_to_space(bh, (2, 2), [[0, 0], [0, 0]]), precision="fp16"))
    sw = fx("sliding", (2, 7, 3))
    out.append(C("sliding_windows", "sliding_windows_axis1", {"x": sw},
                 lambda x: mb.sliding_windows(x=x, axis=1, size=3), sliding_windows(sw, 1, 3, 1)))
    out.append(C("sliding_windows", "sliding_windows_stride2", {"x": sw},
                 lambda x: mb.sliding_windows(x=x, axis=1, size=2, stride=2), sliding_windows(sw, 1, 2, 2),
                 note="odd length: the last element is left out"))
    out.append(C("sliding_windows", "sliding_windows_negative_axis", {"x": sw},
                 lambda x: mb.sliding_windows(x=x, axis=-1, size=2, stride=1), sliding_windows(sw, -1, 2, 1)))
    swi = ix("sliding_int", (9,))
    out.append(C("sliding_windows", "sliding_windows_int32_ios17", {"x": swi},
                 lambda x: mb.sliding_windows(x=x, axis=0, size=4, stride=3), sliding_windows(swi, 0, 4, 3),
                 opset="iOS17"))
    return out



# Ops whose fp32 cases get an fp16 twin (the others have hand-written fp16 cases).
FP16_OPS = {"reshape_like", "expand_dims", "squeeze", "slice_by_size", "slice_update", "reverse", "reverse_sequence",
            "space_to_batch", "batch_to_space", "pixel_unshuffle", "sliding_windows"}

# Ops whose fp32 cases get int32 / bool twins (the definitions' T includes them; sliding_windows
# takes bool from iOS17 on, and its fp32 cases are iOS15).
INT_OPS = {"reshape_like", "transpose", "expand_dims", "squeeze", "slice_by_size", "slice_update", "reverse",
           "reverse_sequence", "sliding_windows"}
BOOL_OPS = INT_OPS - {"sliding_windows"}


def cases() -> list[Case]:
    base = (reshape_cases() + transpose_cases() + expand_squeeze_cases() + slice_cases() + reverse_cases()
            + block_cases())
    return (base + fp16_variants(base, FP16_OPS) + dtype_variants(base, INT_OPS, "int32")
            + dtype_variants(base, BOOL_OPS, "bool"))
