"""Cases for the constexpr (compressed-weight) ops: coremltools' iOS16/constexpr_ops.py
(constexpr_affine_dequantize, constexpr_cast, constexpr_lut_to_dense, constexpr_sparse_to_dense)
and their iOS18 family in iOS18/compression.py (constexpr_blockwise_shift_scale, the iOS18
constexpr_lut_to_dense with per-group and vector palettes, constexpr_lut_to_sparse,
constexpr_sparse_to_dense, constexpr_sparse_blockwise_shift_scale, constexpr_cast).

A constexpr op takes constants only, so each program adds its output to an input `x` (or, for
the sparse-to-sparse ops, densifies it first): `y = x + decompressed`. References: float64
numpy decompressions written here from the ops' definitions (bit packing LSB first, blocks of
`data.shape / scale.shape`, vectors laid out along `vector_axis`), on the stored values."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from caselib import Case, f64, rng, uniform

FAM = "constexpr_ops"

SUB = {1: types.np_uint1_dtype, 2: types.np_uint2_dtype, 3: types.np_uint3_dtype,
       4: types.np_uint4_dtype, 6: types.np_uint6_dtype, 8: np.dtype(np.uint8)}


def pack_bits(values, nbits: int) -> np.ndarray:
    """`values` as `nbits`-wide fields packed LSB first into bytes (the iOS16 layout)."""
    bits = []
    for v in np.asarray(values).reshape(-1):
        bits.extend((int(v) >> b) & 1 for b in range(nbits))
    bits.extend([0] * (-len(bits) % 8))
    return np.array([sum(bits[i + b] << b for b in range(8)) for i in range(0, len(bits), 8)], np.uint8)


def repeat_blocks(p: np.ndarray, shape) -> np.ndarray:
    """A per-block parameter repeated to `shape` (block = shape / p.shape along each dim)."""
    for ax, (s, n) in enumerate(zip(shape, p.shape)):
        p = np.repeat(p, s // n, axis=ax)
    return p


def lut_dense(indices: np.ndarray, lut: np.ndarray, vector_axis=None) -> np.ndarray:
    """iOS18 palettization: each index looks up its group's table; vectors laid along vector_axis."""
    k = indices.ndim
    pal, vs = lut.shape[-2], lut.shape[-1]
    out_shape = list(indices.shape)
    if vs > 1:
        vector_axis %= k
        out_shape[vector_axis] *= vs
    out = np.zeros(out_shape, np.float64)
    for pos in np.ndindex(*indices.shape):
        g = tuple(p // (s // n) for p, s, n in zip(pos, indices.shape, lut.shape[:k]))
        vec = f64(lut[g + (int(indices[pos]),)])
        for v in range(vs):
            o = list(pos)
            if vs > 1:
                o[vector_axis] = pos[vector_axis] * vs + v
            out[tuple(o)] = vec[v]
    assert pal == lut.shape[-2]
    return out


def add_case(out, op, name, shape, build_const, dense, opset, precision="fp32", note=""):
    x = uniform(f"{FAM}/{name}/x", shape, -1, 1, np.float16 if precision == "fp16" else np.float32)
    out.append(Case(FAM, op, name, {"x": x}, lambda x: mb.add(x=x, y=build_const()),
                    {"y": f64(x) + dense}, opset=opset, precision=precision, note=note))


def cases() -> list[Case]:
    out: list[Case] = []
    r = rng(f"{FAM}/data")

    # --- iOS16 constexpr_affine_dequantize: scale * (q - zero_point) along `axis`.
    q = r.integers(0, 256, (2, 3)).astype(np.uint8)
    add_case(out, "constexpr_affine_dequantize", "affine_dequantize_uint8_scalar", (2, 3),
             lambda: mb.constexpr_affine_dequantize(quantized_data=q, zero_point=np.uint8(128),
                                                    scale=np.float32(0.02), axis=0),
             f64(np.float32(0.02)) * (f64(q) - 128), "iOS16")
    qi = r.integers(-128, 128, (2, 3, 2)).astype(np.int8)
    zp, sca = np.array([1, -2, 3], np.int8), np.array([0.1, 0.5, 0.02], np.float32)
    add_case(out, "constexpr_affine_dequantize", "affine_dequantize_int8_axis1", (2, 3, 2),
             lambda: mb.constexpr_affine_dequantize(quantized_data=qi, zero_point=zp, scale=sca, axis=1),
             f64(sca).reshape(1, 3, 1) * (f64(qi) - f64(zp).reshape(1, 3, 1)), "iOS16")
    zf = np.array([0.5, 1.5], np.float32)
    sc2 = np.array([0.25, 0.125], np.float32)
    add_case(out, "constexpr_affine_dequantize", "affine_dequantize_fp32_zp_axis_neg1", (2, 3, 2),
             lambda: mb.constexpr_affine_dequantize(quantized_data=qi, zero_point=zf, scale=sc2, axis=-1),
             f64(sc2) * (f64(qi) - f64(zf)), "iOS16", note="fp32 zero point, negative axis")

    # --- constexpr_cast: fp16 -> fp32 (iOS16 attributes, iOS18 inputs).
    s16 = uniform(f"{FAM}/cast", (2, 3), -4, 4, np.float16)
    for opset in ("iOS16", "iOS18"):
        add_case(out, "constexpr_cast", f"cast_fp16_fp32_{opset.lower()}", (2, 3),
                 lambda: mb.constexpr_cast(source_val=s16, output_dtype="fp32"), f64(s16), opset)

    # --- iOS16 constexpr_lut_to_dense: a vector of 2^n entries, indices packed n bits each.
    for nbits, shape in ((1, (3, 3)), (2, (2, 5)), (4, (3, 2)), (6, (2, 3)), (8, (5,))):
        lut = uniform(f"{FAM}/lut16/{nbits}", (2 ** nbits,), -2, 2)
        idx = r.integers(0, 2 ** nbits, shape)
        packed = pack_bits(idx, nbits)
        add_case(out, "constexpr_lut_to_dense", f"lut_to_dense_ios16_{nbits}bit", shape,
                 lambda lut=lut, packed=packed, shape=shape: mb.constexpr_lut_to_dense(
                     indices=packed, lut=lut, shape=np.array(shape, np.uint32)),
                 f64(lut)[idx], "iOS16", note="odd element counts: the last byte is partly padding")
    lut16 = uniform(f"{FAM}/lut16/fp16", (4,), -2, 2, np.float16)
    idx16a = r.integers(0, 4, (2, 3))
    add_case(out, "constexpr_lut_to_dense", "lut_to_dense_ios16_fp16", (2, 3),
             lambda: mb.constexpr_lut_to_dense(indices=pack_bits(idx16a, 2), lut=lut16,
                                               shape=np.array((2, 3), np.uint32)),
             f64(lut16)[idx16a], "iOS16", precision="fp16")

    # --- iOS16 constexpr_sparse_to_dense: bit mask over the flat output, nonzero values in order.
    mask = r.integers(0, 2, (3, 3)).astype(np.uint8)
    nz = uniform(f"{FAM}/sparse16", (int(mask.sum()),), 1, 2)
    dense = np.zeros((3, 3))
    dense[mask != 0] = f64(nz)
    add_case(out, "constexpr_sparse_to_dense", "sparse_to_dense_ios16", (3, 3),
             lambda: mb.constexpr_sparse_to_dense(nonzero_data=nz, mask=pack_bits(mask, 1),
                                                  shape=np.array((3, 3), np.uint32)), dense, "iOS16")

    # --- iOS18 constexpr_blockwise_shift_scale: scale * (data - offset) per block.
    d8 = r.integers(-128, 128, (4, 6)).astype(np.int8)
    sc = uniform(f"{FAM}/bss/scale", (2, 3), 0.01, 0.1)
    off = r.integers(-5, 5, (2, 3)).astype(np.int8)
    add_case(out, "constexpr_blockwise_shift_scale", "blockwise_shift_scale_int8_blocks2x2", (4, 6),
             lambda: mb.constexpr_blockwise_shift_scale(data=d8, scale=sc, offset=off),
             repeat_blocks(f64(sc), (4, 6)) * (f64(d8) - repeat_blocks(f64(off), (4, 6))), "iOS18")
    d4 = r.integers(-8, 8, (2, 8)).astype(types.np_int4_dtype)
    sc4 = uniform(f"{FAM}/bss/scale4", (2, 2), 0.01, 0.1)
    off4 = r.integers(-8, 8, (2, 2)).astype(types.np_int4_dtype)
    add_case(out, "constexpr_blockwise_shift_scale", "blockwise_shift_scale_int4_block4", (2, 8),
             lambda: mb.constexpr_blockwise_shift_scale(data=d4, scale=sc4, offset=off4),
             repeat_blocks(f64(sc4), (2, 8)) * (f64(d4.astype(np.int8)) - repeat_blocks(f64(off4.astype(np.int8)), (2, 8))),
             "iOS18", note="int4, the block-wise int4 of iOS18 weight compression")
    du4 = r.integers(0, 16, (3, 4)).astype(types.np_uint4_dtype)
    scc = uniform(f"{FAM}/bss/scalec", (3, 1), 0.01, 0.1)
    add_case(out, "constexpr_blockwise_shift_scale", "blockwise_shift_scale_uint4_per_channel_no_offset", (3, 4),
             lambda: mb.constexpr_blockwise_shift_scale(data=du4, scale=scc),
             repeat_blocks(f64(scc), (3, 4)) * f64(du4.astype(np.uint8)), "iOS18")
    du8 = r.integers(0, 256, (2, 3)).astype(np.uint8)
    scu = uniform(f"{FAM}/bss/scaleu", (1, 3), 0.01, 0.1)
    offf = uniform(f"{FAM}/bss/offf", (1, 3), 100, 150)
    add_case(out, "constexpr_blockwise_shift_scale", "blockwise_shift_scale_uint8_fp32_offset", (2, 3),
             lambda: mb.constexpr_blockwise_shift_scale(data=du8, scale=scu, offset=offf),
             repeat_blocks(f64(scu), (2, 3)) * (f64(du8) - repeat_blocks(f64(offf), (2, 3))), "iOS18",
             note="float offset with integer data")
    d16 = uniform(f"{FAM}/bss/d16", (2, 4), -4, 4, np.float16)
    s16b = uniform(f"{FAM}/bss/s16", (1, 2), 0.5, 1.5, np.float16)
    add_case(out, "constexpr_blockwise_shift_scale", "blockwise_shift_scale_fp16", (2, 4),
             lambda: mb.constexpr_blockwise_shift_scale(data=d16, scale=s16b),
             repeat_blocks(f64(s16b), (2, 4)) * f64(d16), "iOS18", precision="fp16")

    # --- iOS18 constexpr_lut_to_dense: per-group tables and vector palettes.
    idx2 = np.array([2, 3, 3, 0, 1, 0, 3, 0, 2, 1, 0, 3]).reshape(6, 2)
    lutg = np.array([1.0, 5.0, 9.0, 13.0, 2.0, 10.0, 18.0, 26.0], np.float32).reshape(2, 1, 4, 1)
    add_case(out, "constexpr_lut_to_dense", "lut_to_dense_ios18_grouped_2bit", (6, 2),
             lambda: mb.constexpr_lut_to_dense(indices=idx2.astype(types.np_uint2_dtype), lut=lutg),
             lut_dense(idx2, lutg), "iOS18", note="the definition's example: two tables over axis 0")
    for nbits, ishape, gshape in ((4, (4, 6), (2, 3)), (3, (2, 4), (1, 1)), (6, (2, 2), (1, 2)), (8, (3, 2), (3, 1))):
        lut = uniform(f"{FAM}/lut18/{nbits}", gshape + (2 ** nbits, 1), -2, 2)
        idx = r.integers(0, 2 ** nbits, ishape)
        add_case(out, "constexpr_lut_to_dense", f"lut_to_dense_ios18_{nbits}bit_groups{'x'.join(map(str, gshape))}",
                 ishape, lambda idx=idx, lut=lut, nbits=nbits: mb.constexpr_lut_to_dense(
                     indices=idx.astype(SUB[nbits]), lut=lut), lut_dense(idx, lut), "iOS18")
    idx1 = np.array([[[0, 0], [1, 0]], [[1, 1], [0, 0]]])
    lutv = uniform(f"{FAM}/lut18/vec", (1, 1, 1, 2, 3), -2, 2)
    for va in (1, 2, -3):
        shape = list(idx1.shape)
        shape[va % 3] *= 3
        add_case(out, "constexpr_lut_to_dense", f"lut_to_dense_ios18_vector_axis{va}".replace("-", "neg"), tuple(shape),
                 lambda va=va: mb.constexpr_lut_to_dense(indices=idx1.astype(types.np_uint1_dtype), lut=lutv,
                                                         vector_axis=np.int32(va)),
                 lut_dense(idx1, lutv, va), "iOS18", note="vector palettization, 3-wide vectors")
    lutgv = uniform(f"{FAM}/lut18/gvec", (2, 1, 4, 2), -2, 2)
    idxgv = r.integers(0, 4, (4, 3))
    add_case(out, "constexpr_lut_to_dense", "lut_to_dense_ios18_grouped_vector", (8, 3),
             lambda: mb.constexpr_lut_to_dense(indices=idxgv.astype(types.np_uint2_dtype), lut=lutgv,
                                               vector_axis=np.int32(0)),
             lut_dense(idxgv, lutgv, 0), "iOS18", note="two tables of 2-vectors, vectors along the grouped axis")
    lut16g = uniform(f"{FAM}/lut18/fp16", (1, 2, 4, 1), -2, 2, np.float16)
    idx16 = r.integers(0, 4, (2, 4))
    add_case(out, "constexpr_lut_to_dense", "lut_to_dense_ios18_fp16", (2, 4),
             lambda: mb.constexpr_lut_to_dense(indices=idx16.astype(types.np_uint2_dtype), lut=lut16g),
             lut_dense(idx16, lut16g), "iOS18", precision="fp16")

    # --- iOS18 constexpr_sparse_to_dense: uint1 mask of the output's shape.
    m18 = r.integers(0, 2, (3, 4)).astype(np.uint8)
    nz18 = uniform(f"{FAM}/sparse18", (int(m18.sum()),), 1, 2)
    dense = np.zeros((3, 4))
    dense[m18 != 0] = f64(nz18)
    add_case(out, "constexpr_sparse_to_dense", "sparse_to_dense_ios18", (3, 4),
             lambda: mb.constexpr_sparse_to_dense(nonzero_data=nz18, mask=m18.astype(types.np_uint1_dtype)),
             dense, "iOS18")

    # --- iOS18 constexpr_lut_to_sparse, densified by constexpr_sparse_to_dense.
    ml = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 1], [0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]], np.uint8)
    nzi = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1])
    luts = np.array([2.0, 3.0], np.float32).reshape(1, 1, 2, 1)
    dense_idx = np.zeros(ml.shape, np.int64)
    dense_idx[ml != 0] = nzi
    dense = np.where(ml != 0, lut_dense(dense_idx, luts), 0.0)

    def lut_sparse(lut=luts, va=None):
        kw = {} if va is None else {"vector_axis": np.int32(va)}
        m, v = mb.constexpr_lut_to_sparse(indices_mask=ml.astype(types.np_uint1_dtype),
                                          indices_nonzero_data=nzi.astype(types.np_uint1_dtype), lut=lut, **kw)
        return mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m)
    add_case(out, "constexpr_lut_to_sparse", "lut_to_sparse_scalar", ml.shape, lut_sparse, dense, "iOS18",
             note="the definition's example")
    lutsv = uniform(f"{FAM}/lut18/sparsevec", (1, 1, 2, 2), -2, 2)
    mv = np.repeat(ml, 2, axis=0)
    dense_v = np.where(mv != 0, lut_dense(dense_idx, lutsv, 0), 0.0)
    add_case(out, "constexpr_lut_to_sparse", "lut_to_sparse_vector_axis0", mv.shape,
             lambda: lut_sparse(lutsv, 0), dense_v, "iOS18", note="vector palettes: the mask expands along axis 0")

    # --- iOS18 constexpr_sparse_blockwise_shift_scale, densified.
    mq = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]], np.uint8)
    nzq = np.array([10, 11, 3, 4, 5, 6, 7, 8, 9], np.int8)
    scq = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    offq = np.array([[1, 2, 3, 4]], np.int8)
    dq = np.zeros(mq.shape)
    dq[mq != 0] = f64(nzq)
    dense = np.where(mq != 0, repeat_blocks(f64(scq), mq.shape) * (dq - repeat_blocks(f64(offq), mq.shape)), 0.0)

    def sparse_bss():
        m, v = mb.constexpr_sparse_blockwise_shift_scale(data_mask=mq.astype(types.np_uint1_dtype),
                                                         nonzero_data=nzq, scale=scq, offset=offq)
        return mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m)
    add_case(out, "constexpr_sparse_blockwise_shift_scale", "sparse_blockwise_shift_scale_per_column", mq.shape,
             sparse_bss, dense, "iOS18", note="the definition's example")

    # --- fp16 forms of the sparse ops.
    nz16 = nz.astype(np.float16)
    d16s = np.zeros((3, 3))
    d16s[mask != 0] = f64(nz16)
    add_case(out, "constexpr_sparse_to_dense", "sparse_to_dense_ios16_fp16", (3, 3),
             lambda: mb.constexpr_sparse_to_dense(nonzero_data=nz16, mask=pack_bits(mask, 1),
                                                  shape=np.array((3, 3), np.uint32)), d16s, "iOS16", precision="fp16")
    nz18h = nz18.astype(np.float16)
    d18h = np.zeros((3, 4))
    d18h[m18 != 0] = f64(nz18h)
    add_case(out, "constexpr_sparse_to_dense", "sparse_to_dense_ios18_fp16", (3, 4),
             lambda: mb.constexpr_sparse_to_dense(nonzero_data=nz18h, mask=m18.astype(types.np_uint1_dtype)),
             d18h, "iOS18", precision="fp16")
    luts16 = luts.astype(np.float16)
    add_case(out, "constexpr_lut_to_sparse", "lut_to_sparse_fp16", ml.shape, lambda: lut_sparse(luts16),
             np.where(ml != 0, lut_dense(dense_idx, luts16), 0.0), "iOS18", precision="fp16")
    scq16 = scq.astype(np.float16)

    def sparse_bss16():
        m, v = mb.constexpr_sparse_blockwise_shift_scale(data_mask=mq.astype(types.np_uint1_dtype),
                                                         nonzero_data=nzq, scale=scq16, offset=offq)
        return mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m)
    add_case(out, "constexpr_sparse_blockwise_shift_scale", "sparse_blockwise_shift_scale_fp16", mq.shape,
             sparse_bss16, np.where(mq != 0, repeat_blocks(f64(scq16), mq.shape)
                                    * (dq - repeat_blocks(f64(offq), mq.shape)), 0.0), "iOS18", precision="fp16")

    # --- Integer look-up tables and sparse data, read back through cast (add takes floats).
    luti = np.array([-7, 3, 100, -128], np.int8)
    idxi = r.integers(0, 4, (2, 3))
    xi = uniform(f"{FAM}/int/x", (2, 3), -1, 1)
    out.append(Case(FAM, "constexpr_lut_to_dense", "lut_to_dense_ios16_int8_lut", {"x": xi},
                    lambda x: mb.add(x=x, y=mb.cast(x=mb.constexpr_lut_to_dense(
                        indices=pack_bits(idxi, 2), lut=luti, shape=np.array((2, 3), np.uint32)), dtype="fp32")),
                    {"y": f64(xi) + f64(luti)[idxi]}, opset="iOS17",
                    note="the iOS16 form at iOS17, whose cast takes int8"))
    lutu = r.integers(0, 256, (1, 3, 2, 1)).astype(np.uint8)
    idxu = r.integers(0, 2, (2, 3))
    out.append(Case(FAM, "constexpr_lut_to_dense", "lut_to_dense_ios18_uint8_lut", {"x": xi},
                    lambda x: mb.add(x=x, y=mb.cast(x=mb.constexpr_lut_to_dense(
                        indices=idxu.astype(types.np_uint1_dtype), lut=lutu), dtype="fp32")),
                    {"y": f64(xi) + lut_dense(idxu, lutu)}, opset="iOS18"))
    mi = np.array([[1, 0, 1], [0, 1, 1]], np.uint8)
    nzi8 = np.array([-5, 7, -128, 127], np.int8)
    di = np.zeros((2, 3))
    di[mi != 0] = f64(nzi8)
    out.append(Case(FAM, "constexpr_sparse_to_dense", "sparse_to_dense_ios18_int8", {"x": xi},
                    lambda x: mb.add(x=x, y=mb.cast(x=mb.constexpr_sparse_to_dense(
                        nonzero_data=nzi8, mask=mi.astype(types.np_uint1_dtype)), dtype="fp32")),
                    {"y": f64(xi) + di}, opset="iOS18"))

    # --- fp16 affine dequantize (the output takes scale's dtype).
    s16a = np.array([0.5, 0.25, 0.125], np.float16)
    add_case(out, "constexpr_affine_dequantize", "affine_dequantize_fp16", (2, 3, 2),
             lambda: mb.constexpr_affine_dequantize(quantized_data=qi, zero_point=np.int8(2), scale=s16a, axis=1),
             f64(s16a).reshape(1, 3, 1) * (f64(qi) - 2), "iOS16", precision="fp16")

    # --- Compressed weights of a real op, larger than the plan's host copy of a constant (4096
    # elements): the sparse chain's mask and values are read back from their tensors.
    shp = (80, 64)
    mw = (r.random(shp) < 0.9).astype(np.uint8)
    nzw = r.integers(-128, 128, int(mw.sum())).astype(np.int8)
    scw = uniform(f"{FAM}/big/scale", (80, 4), 0.001, 0.01)
    offw = r.integers(-3, 3, (80, 4)).astype(np.int8)
    dw = np.zeros(shp)
    dw[mw != 0] = f64(nzw)
    w = np.where(mw != 0, repeat_blocks(f64(scw), shp) * (dw - repeat_blocks(f64(offw), shp)), 0.0)
    xm = uniform(f"{FAM}/big/x", (2, 80), -1, 1)

    def big_weight(x):
        m, v = mb.constexpr_sparse_blockwise_shift_scale(data_mask=mw.astype(types.np_uint1_dtype),
                                                         nonzero_data=nzw, scale=scw, offset=offw)
        return mb.matmul(x=x, y=mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m))
    out.append(Case(FAM, "constexpr_sparse_blockwise_shift_scale", "sparse_blockwise_shift_scale_matmul_weight_5120",
                    {"x": xm}, big_weight, {"y": f64(xm) @ w}, opset="iOS18",
                    note="int8 sparse weights in blocks of 16 columns feeding matmul; 5120 elements"))
    lutb = uniform(f"{FAM}/big/lut", (1, 4, 16, 1), -1, 1)
    idxb = r.integers(0, 16, shp)

    def big_lut(x):
        return mb.matmul(x=x, y=mb.constexpr_lut_to_dense(indices=idxb.astype(types.np_uint4_dtype), lut=lutb))
    out.append(Case(FAM, "constexpr_lut_to_dense", "lut_to_dense_ios18_matmul_weight_5120", {"x": xm}, big_lut,
                    {"y": f64(xm) @ lut_dense(idxb, lutb)}, opset="iOS18",
                    note="4-bit palettes per group of 16 columns feeding matmul"))
    return out
