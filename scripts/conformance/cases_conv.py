"""Cases for coremltools' conv.py: conv and conv_transpose (iOS15, and the iOS17 re-versions whose
weight and bias may have another dtype than x). References: float64 numpy, written here from the
op definitions -- conv as a sliding window over the zero-padded input, conv_transpose as the
scatter of every input element through the kernel (the adjoint of conv), cropped by the pads."""

from __future__ import annotations

import itertools

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, uniform

FAM = "conv"


def same_pads(inp, k, s, d, lower):
    out = []
    for i, kk, ss, dd in zip(inp, k, s, d):
        eff = (kk - 1) * dd + 1
        o = -(-i // ss)
        total = max((o - 1) * ss + eff - i, 0)
        small = total // 2
        out.append((total - small, small) if lower else (small, total - small))
    return out


def pads_of(pad_type, pad, inp, k, s, d):
    n = len(inp)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    return same_pads(inp, k, s, d, pad_type == "same_lower")


def conv_ref(x, w, b, strides, dil, pads, groups):
    n = w.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    k = w.shape[2:]
    eff = [(kk - 1) * dd + 1 for kk, dd in zip(k, dil)]
    osp = [(xp.shape[2 + i] - eff[i]) // strides[i] + 1 for i in range(n)]
    cout, cin_g = w.shape[:2]
    cout_g = cout // groups
    y = np.zeros((x.shape[0], cout, *osp))
    for o in itertools.product(*(range(v) for v in osp)):
        sl = tuple(slice(o[i] * strides[i], o[i] * strides[i] + eff[i], dil[i]) for i in range(n))
        for g in range(groups):
            win = xp[(slice(None), slice(g * cin_g, (g + 1) * cin_g)) + sl]  # [N, cin_g, *k]
            wg = w[g * cout_g:(g + 1) * cout_g]  # [cout_g, cin_g, *k]
            y[(slice(None), slice(g * cout_g, (g + 1) * cout_g)) + o] = np.tensordot(
                win, wg, axes=(list(range(1, n + 2)), list(range(1, n + 2))))
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n)
    return y


def conv_t_ref(x, w, b, strides, dil, pad_type, pad, groups, output_shape=None):
    n = w.ndim - 2
    cin, cout_g = w.shape[:2]
    cin_g = cin // groups
    cout = cout_g * groups
    k = w.shape[2:]
    inp = x.shape[2:]
    full = [(inp[i] - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 for i in range(n)]
    y = np.zeros((x.shape[0], cout, *full))
    for i in itertools.product(*(range(v) for v in inp)):
        for kk in itertools.product(*(range(v) for v in k)):
            o = tuple(i[d] * strides[d] + kk[d] * dil[d] for d in range(n))
            for g in range(groups):
                xv = x[(slice(None), slice(g * cin_g, (g + 1) * cin_g)) + i]  # [N, cin_g]
                wv = w[(slice(g * cin_g, (g + 1) * cin_g), slice(None)) + kk]  # [cin_g, cout_g]
                y[(slice(None), slice(g * cout_g, (g + 1) * cout_g)) + o] += xv @ wv
    want = None if output_shape is None else list(output_shape)[-n:]
    begins, sizes = [], []
    for d in range(n):
        if pad_type == "same":
            size = want[d] if want else inp[d] * strides[d]
            begins.append(max(full[d] - size, 0) // 2)
        elif pad_type == "custom":
            size = want[d] if want else full[d] - pad[2 * d] - pad[2 * d + 1]
            begins.append(pad[2 * d])
        else:
            size = want[d] if want else full[d]
            begins.append(0)
        sizes.append(size)
    # Crop (or extend with zeros past the end) to the output size.
    ext = np.pad(y, [(0, 0), (0, 0)] + [(0, max(0, begins[d] + sizes[d] - full[d])) for d in range(n)])
    y = ext[(slice(None), slice(None)) + tuple(slice(begins[d], begins[d] + sizes[d]) for d in range(n))]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * n)
    return y


def conv_case(name, xshape, wshape, *, strides=None, dil=None, pad_type="valid", pad=None, groups=1,
              bias=True, opset="iOS15", fp16=False, wdtype=None, note=""):
    n = len(wshape) - 2
    tag = f"{FAM}/{name}"
    x = uniform(tag + "/x", xshape)
    w = uniform(tag + "/w", wshape, -1, 1)
    b = uniform(tag + "/b", (wshape[0],), -1, 1) if bias else None
    if fp16:
        x = x.astype(np.float16)
        w = w.astype(wdtype or np.float16)
        b = b.astype(wdtype or np.float16) if b is not None else None
    s = strides or [1] * n
    d = dil or [1] * n
    kw = {"pad_type": pad_type}
    if strides:
        kw["strides"] = np.array(strides, np.int32)
    if dil:
        kw["dilations"] = np.array(dil, np.int32)
    if pad is not None:
        kw["pad"] = np.array(pad, np.int32)
    if groups != 1:
        kw["groups"] = np.int32(groups)
    pads = pads_of(pad_type, pad, xshape[2:], wshape[2:], s, d)
    ref = conv_ref(f64(x), f64(w), None if b is None else f64(b), s, d, pads, groups)

    def build(x, w=w, b=b, kw=kw):
        if b is not None:
            return mb.conv(x=x, weight=w, bias=b, **kw)
        return mb.conv(x=x, weight=w, **kw)

    return Case(FAM, "conv", name, {"x": x}, build, {"y": ref}, opset=opset,
                precision="fp16" if fp16 else "fp32", note=note)


def conv_t_case(name, xshape, wshape, *, strides=None, dil=None, pad_type="valid", pad=None, groups=1,
                bias=True, output_shape=None, opset="iOS15", fp16=False, wdtype=None, note=""):
    n = len(wshape) - 2
    tag = f"{FAM}/{name}"
    x = uniform(tag + "/x", xshape)
    w = uniform(tag + "/w", wshape, -1, 1)
    b = uniform(tag + "/b", (wshape[1] * groups,), -1, 1) if bias else None
    if fp16:
        x, w = x.astype(np.float16), w.astype(wdtype or np.float16)
        b = b.astype(wdtype or np.float16) if b is not None else None
    s = strides or [1] * n
    d = dil or [1] * n
    kw = {"pad_type": pad_type}
    if strides:
        kw["strides"] = np.array(strides, np.int32)
    if dil:
        kw["dilations"] = np.array(dil, np.int32)
    if pad is not None:
        kw["pad"] = np.array(pad, np.int32)
    if groups != 1:
        kw["groups"] = np.int32(groups)
    if output_shape is not None:
        kw["output_shape"] = np.array(output_shape, np.int32)
    ref = conv_t_ref(f64(x), f64(w), None if b is None else f64(b), s, d, pad_type, pad, groups, output_shape)

    def build(x, w=w, b=b, kw=kw):
        if b is not None:
            return mb.conv_transpose(x=x, weight=w, bias=b, **kw)
        return mb.conv_transpose(x=x, weight=w, **kw)

    return Case(FAM, "conv_transpose", name, {"x": x}, build, {"y": ref}, opset=opset,
                precision="fp16" if fp16 else "fp32", note=note)


def cases() -> list[Case]:
    out: list[Case] = []
    # 1-D
    out.append(conv_case("conv1d_valid", (2, 3, 7), (4, 3, 3)))
    out.append(conv_case("conv1d_stride2_dil2_same", (1, 2, 9), (3, 2, 3), strides=[2], dil=[2], pad_type="same"))
    out.append(conv_case("conv1d_custom_groups", (1, 4, 6), (6, 2, 2), pad_type="custom", pad=[2, 1], groups=2,
                         bias=False))
    out.append(conv_case("conv1d_same_lower_ios16", (1, 2, 6), (2, 2, 4), pad_type="same_lower", opset="iOS16",
                         note="even kernel: the extra pad goes first"))
    # 2-D
    out.append(conv_case("conv2d_valid", (2, 3, 5, 6), (4, 3, 3, 2)))
    out.append(conv_case("conv2d_same_odd", (1, 2, 5, 7), (3, 2, 3, 3), pad_type="same"))
    out.append(conv_case("conv2d_same_even_kernel", (1, 2, 6, 5), (2, 2, 4, 2), pad_type="same",
                         note="even kernel: the extra pad goes last"))
    out.append(conv_case("conv2d_same_lower_ios16", (1, 2, 6, 5), (2, 2, 4, 2), pad_type="same_lower", opset="iOS16"))
    out.append(conv_case("conv2d_same_stride2", (1, 2, 7, 8), (3, 2, 3, 3), strides=[2, 2], pad_type="same"))
    out.append(conv_case("conv2d_unequal_strides", (1, 2, 7, 8), (3, 2, 3, 2), strides=[2, 3]))
    out.append(conv_case("conv2d_unequal_dilations", (1, 2, 8, 7), (2, 2, 3, 2), dil=[2, 3], pad_type="same"))
    out.append(conv_case("conv2d_dilation2", (1, 2, 7, 7), (2, 2, 3, 3), dil=[2, 2]))
    out.append(conv_case("conv2d_custom_asym", (1, 2, 4, 5), (3, 2, 3, 3), pad_type="custom", pad=[0, 2, 1, 0]))
    out.append(conv_case("conv2d_custom_strides_dil", (2, 2, 6, 7), (2, 2, 2, 3), strides=[3, 2], dil=[1, 2],
                         pad_type="custom", pad=[1, 2, 3, 0]))
    out.append(conv_case("conv2d_groups2", (1, 4, 5, 5), (6, 2, 3, 3), groups=2, pad_type="same"))
    out.append(conv_case("conv2d_depthwise", (1, 3, 6, 6), (3, 1, 3, 3), groups=3, pad_type="same"))
    out.append(conv_case("conv2d_depthwise_stride2", (1, 3, 7, 6), (3, 1, 3, 3), groups=3, strides=[2, 2],
                         pad_type="custom", pad=[1, 1, 1, 1]))
    out.append(conv_case("conv2d_depthwise_unequal_strides", (1, 3, 7, 8), (3, 1, 3, 3), groups=3, strides=[1, 3],
                         pad_type="same"))
    out.append(conv_case("conv2d_groups_unequal_strides_dil2", (1, 4, 9, 8), (2, 2, 2, 3), groups=2, strides=[3, 2],
                         dil=[2, 2], pad_type="custom", pad=[0, 1, 2, 2]))
    out.append(conv_case("conv2d_depthwise_multiplier2", (1, 2, 5, 5), (4, 1, 3, 3), groups=2,
                         note="groups = C_in, two filters per input channel"))
    out.append(conv_case("conv2d_pointwise", (2, 3, 4, 5), (4, 3, 1, 1)))
    out.append(conv_case("conv2d_no_bias", (1, 2, 4, 4), (2, 2, 2, 2), bias=False, strides=[2, 2]))
    out.append(conv_case("conv2d_size1_spatial", (1, 3, 1, 1), (2, 3, 1, 1), note="1x1 spatial input"))
    out.append(conv_case("conv2d_fp16", (1, 2, 5, 5), (3, 2, 3, 3), pad_type="same", opset="iOS16", fp16=True))
    out.append(conv_case("conv2d_fp16_unequal", (1, 2, 6, 7), (2, 2, 3, 3), strides=[1, 2], dil=[2, 1],
                         opset="iOS16", fp16=True))
    out.append(conv_case("conv2d_fp16_weights_fp32_ios17", (1, 2, 5, 5), (3, 2, 3, 3), pad_type="same",
                         opset="iOS17", fp16=True, wdtype=np.float32,
                         note="iOS17: fp32 weight and bias on an fp16 input"))
    # 3-D
    out.append(conv_case("conv3d_valid", (1, 2, 4, 4, 5), (3, 2, 2, 3, 2)))
    out.append(conv_case("conv3d_same_strides", (1, 2, 5, 4, 6), (2, 2, 3, 3, 3), strides=[2, 1, 2],
                         pad_type="same"))
    out.append(conv_case("conv3d_groups_dil", (1, 4, 5, 5, 5), (4, 2, 2, 2, 2), groups=2, dil=[2, 1, 2],
                         pad_type="custom", pad=[1, 0, 0, 1, 1, 1]))

    # conv_transpose
    out.append(conv_t_case("conv_transpose1d_valid", (1, 3, 5), (3, 2, 3)))
    out.append(conv_t_case("conv_transpose1d_stride2_dil2", (2, 2, 4), (2, 3, 3), strides=[2], dil=[2]))
    out.append(conv_t_case("conv_transpose2d_valid", (1, 2, 3, 4), (2, 3, 3, 2)))
    out.append(conv_t_case("conv_transpose2d_stride2", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2]))
    out.append(conv_t_case("conv_transpose2d_unequal_strides", (1, 2, 3, 4), (2, 2, 2, 3), strides=[3, 2]))
    out.append(conv_t_case("conv_transpose2d_same", (1, 2, 3, 4), (2, 2, 3, 3), strides=[2, 2], pad_type="same"))
    out.append(conv_t_case("conv_transpose2d_custom", (1, 2, 4, 3), (2, 3, 3, 3), strides=[2, 1],
                           pad_type="custom", pad=[1, 1, 0, 2]))
    out.append(conv_t_case("conv_transpose2d_dilations", (1, 2, 3, 3), (2, 2, 2, 3), dil=[2, 1], bias=False))
    out.append(conv_t_case("conv_transpose2d_stride2_dil2_custom", (2, 3, 3, 4), (3, 2, 3, 2), strides=[2, 2],
                           dil=[2, 2], pad_type="custom", pad=[2, 1, 0, 3]))
    out.append(conv_t_case("conv_transpose2d_groups2", (1, 4, 3, 3), (4, 3, 2, 2), groups=2, strides=[2, 2],
                           note="weight [C_in, C_out/groups, *K]: 6 output channels"))
    out.append(conv_t_case("conv_transpose2d_output_shape", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2],
                           pad_type="custom", pad=[1, 1, 1, 1], output_shape=[1, 2, 6, 6],
                           note="output_shape one past the computed 5x5 (PyTorch's output_padding)"))
    out.append(conv_t_case("conv_transpose2d_same_output_shape", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2],
                           pad_type="same", output_shape=[1, 2, 5, 5]))
    out.append(conv_t_case("conv_transpose2d_fp16", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2], opset="iOS16",
                           fp16=True))
    # A weight computed at run time (a program input).
    for name, xs, ws, kw, groups, s_, pt in (("2d", (1, 2, 5, 6), (3, 2, 3, 2), {"strides": [2, 1]}, 1, [2, 1], "same"),
                                             ("1d_groups", (2, 4, 7), (4, 2, 3), {"groups": 2}, 2, [1], "valid")):
        x = uniform(f"{FAM}/dyn/{name}/x", xs)
        w = uniform(f"{FAM}/dyn/{name}/w", ws, -1, 1)
        mkw = {"pad_type": pt}
        if "strides" in kw:
            mkw["strides"] = np.array(kw["strides"], np.int32)
        if groups != 1:
            mkw["groups"] = np.int32(groups)
        n = len(ws) - 2
        ref = conv_ref(f64(x), f64(w), None, s_, [1] * n, pads_of(pt, None, xs[2:], ws[2:], s_, [1] * n), groups)
        out.append(Case(FAM, "conv", f"conv_dynamic_weight_{name}", {"x": x, "w": w},
                        lambda x, w, mkw=mkw: mb.conv(x=x, weight=w, **mkw), {"y": ref},
                        note="weight is a run-time input"))
    # conv_quantized (iOS15, experimental): uint8 weight, W = Wq * quant_scale + quant_bias.
    for name, nsc in (("per_tensor", 1), ("per_channel", 3)):
        x = uniform(f"{FAM}/cq/{name}/x", (1, 2, 5, 5))
        wq = np.random.default_rng(7 + nsc).integers(0, 256, size=(3, 2, 3, 3)).astype(np.uint8)
        sc = uniform(f"{FAM}/cq/{name}/s", (nsc,), 0.001, 0.01)
        bi = uniform(f"{FAM}/cq/{name}/b", (nsc,), -1, 0)
        wf = f64(wq) * f64(sc).reshape(-1, 1, 1, 1) + f64(bi).reshape(-1, 1, 1, 1)
        out.append(Case(FAM, "conv_quantized", f"conv_quantized_linear_{name}", {"x": x},
                        lambda x, wq=wq, sc=sc, bi=bi: mb.conv_quantized(
                            x=x, weight=wq, quantization_type="linear", nbits=8, quant_scale=sc, quant_bias=bi,
                            strides=np.array([2, 1], np.int32), pad_type="same"),
                        {"y": conv_ref(f64(x), wf, None, [2, 1], [1, 1],
                                       pads_of("same", None, (5, 5), (3, 3), [2, 1], [1, 1]), 1)}))
    out.append(conv_t_case("conv_transpose2d_fp16_weights_fp32_ios17", (1, 2, 3, 3), (2, 3, 2, 2), strides=[2, 2],
                           opset="iOS17", fp16=True, wdtype=np.float32,
                           note="iOS17: fp32 weight and bias on an fp16 input"))
    out.append(conv_t_case("conv_transpose3d", (1, 2, 2, 3, 2), (2, 2, 2, 2, 3), strides=[2, 1, 2]))
    return out
