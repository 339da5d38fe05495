"""Cases for coremltools' image_resizing.py: upsample_nearest_neighbor, resize_nearest_neighbor,
upsample_bilinear (iOS15 align_corners, iOS16 half_pixel_centers), resize_bilinear (every
sampling mode), resize (iOS17), crop. References: float64 numpy, written from the op definitions:
grid points per sampling mode as resize_bilinear's docstring lists them (clamped to the input),
bilinear as the weighted sum of the four neighbours; nearest neighbour as TF's default,
floor(i * in / out). Scale-factor ops size the output floor(in * scale) and sample at
scale out / in (the docstring's `recompute_scale_factor=True`)."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, ints, uniform

FAM = "image_resizing"


def grid(mode, n_in, n_out):
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            g = np.array([(n_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0])
        else:
            g = i * (n_in - 1) / (n_out - 1)
    elif mode == "DEFAULT":
        g = i * n_in / n_out
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        g = (i + 0.5) * n_in / n_out - 0.5
    else:
        raise ValueError(mode)
    return np.clip(g, 0, n_in - 1)


def bilinear(x, h, w, mode_h, mode_w=None):
    mode_w = mode_w or mode_h
    gh, gw = grid(mode_h, x.shape[-2], h), grid(mode_w, x.shape[-1], w)
    y = np.zeros(x.shape[:-2] + (h, w))
    for a, yy in enumerate(gh):
        y0 = int(np.floor(yy))
        y1 = min(y0 + 1, x.shape[-2] - 1)
        fy = yy - y0
        for b, xx in enumerate(gw):
            x0 = int(np.floor(xx))
            x1 = min(x0 + 1, x.shape[-1] - 1)
            fx = xx - x0
            y[..., a, b] = ((1 - fy) * ((1 - fx) * x[..., y0, x0] + fx * x[..., y0, x1])
                            + fy * ((1 - fx) * x[..., y1, x0] + fx * x[..., y1, x1]))
    return y


def nearest(x, h, w):
    hi = [min(i * x.shape[-2] // h, x.shape[-2] - 1) for i in range(h)]
    wi = [min(j * x.shape[-1] // w, x.shape[-1] - 1) for j in range(w)]
    return x[..., hi, :][..., wi]


def cases() -> list[Case]:
    out: list[Case] = []
    x = uniform(f"{FAM}/x", (1, 2, 3, 4))
    x3 = uniform(f"{FAM}/x3", (2, 3, 5))

    for name, xin, sh, sw in (("int2", x, 2, 3), ("frac", x, 1.5, 2.5), ("rank3", x3, 2, 1),
                              ("down_frac", x, 0.7, 0.5)):
        h, w = int(np.floor(xin.shape[-2] * sh)), int(np.floor(xin.shape[-1] * sw))
        kw = {"scale_factor_height": sh if isinstance(sh, int) else np.float32(sh),
              "scale_factor_width": sw if isinstance(sw, int) else np.float32(sw)}
        out.append(Case(FAM, "upsample_nearest_neighbor", f"upsample_nearest_neighbor_{name}", {"x": xin},
                        lambda x, kw=kw: mb.upsample_nearest_neighbor(x=x, **kw), {"y": nearest(f64(xin), h, w)}))
    x16 = x.astype(np.float16)
    out.append(Case(FAM, "upsample_nearest_neighbor", "upsample_nearest_neighbor_fp16", {"x": x16},
                    lambda x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=2, scale_factor_width=2),
                    {"y": nearest(f64(x16), 6, 8)}, opset="iOS16", precision="fp16"))

    for name, xin, h, w in (("up", x, 5, 7), ("down", x, 2, 3), ("rank3", x3, 4, 2)):
        out.append(Case(FAM, "resize_nearest_neighbor", f"resize_nearest_neighbor_{name}", {"x": xin},
                        lambda x, h=h, w=w: mb.resize_nearest_neighbor(x=x, target_size_height=h, target_size_width=w),
                        {"y": nearest(f64(xin), h, w)}))

    for name, sh, sw, align in (("align_int", 2, 2, True), ("unalign_int", 2, 3, False),
                                ("align_frac", 1.5, 2.5, True), ("unalign_frac", 1.5, 0.5, False)):
        h, w = int(np.floor(3 * sh)), int(np.floor(4 * sw))
        mode = "STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS"
        kw = {"scale_factor_height": sh if isinstance(sh, int) else np.float32(sh),
              "scale_factor_width": sw if isinstance(sw, int) else np.float32(sw), "align_corners": align}
        out.append(Case(FAM, "upsample_bilinear", f"upsample_bilinear_{name}", {"x": x},
                        lambda x, kw=kw: mb.upsample_bilinear(x=x, **kw), {"y": bilinear(f64(x), h, w, mode)}))
    out.append(Case(FAM, "upsample_bilinear", "upsample_bilinear_default_align", {"x": x},
                    lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=2),
                    {"y": bilinear(f64(x), 6, 8, "STRICT_ALIGN_CORNERS")}, note="align_corners defaults to True"))
    for name, align, half, mode in (("half_pixel_ios16", False, True, "UNALIGN_CORNERS"),
                                    ("no_half_pixel_ios16", False, False, "DEFAULT"),
                                    ("align_ios16", True, False, "STRICT_ALIGN_CORNERS")):
        out.append(Case(FAM, "upsample_bilinear", f"upsample_bilinear_{name}", {"x": x},
                        lambda x, a=align, hp=half: mb.upsample_bilinear(
                            x=x, scale_factor_height=np.float32(2), scale_factor_width=np.float32(1.5), align_corners=a,
                            half_pixel_centers=hp),
                        {"y": bilinear(f64(x), 6, 6, mode)}, opset="iOS16"))
    out.append(Case(FAM, "upsample_bilinear", "upsample_bilinear_rank3", {"x": x3},
                    lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=2, align_corners=False),
                    {"y": bilinear(f64(x3), 6, 10, "UNALIGN_CORNERS")}))
    out.append(Case(FAM, "upsample_bilinear", "upsample_bilinear_fp16", {"x": x16},
                    lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=2, align_corners=False),
                    {"y": bilinear(f64(x16), 6, 8, "UNALIGN_CORNERS")}, opset="iOS16", precision="fp16"))

    modes = ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS")
    for mode in modes:
        for name, h, w in (("up", 5, 6), ("down", 2, 3), ("to1", 1, 1)):
            out.append(Case(FAM, "resize_bilinear", f"resize_bilinear_{mode.lower()}_{name}", {"x": x},
                            lambda x, h=h, w=w, m=mode: mb.resize_bilinear(
                                x=x, target_size_height=h, target_size_width=w, sampling_mode=m),
                            {"y": bilinear(f64(x), h, w, mode)}))
    out.append(Case(FAM, "resize_bilinear", "resize_bilinear_default_mode_rank3", {"x": x3},
                    lambda x: mb.resize_bilinear(x=x, target_size_height=4, target_size_width=7),
                    {"y": bilinear(f64(x3), 4, 7, "DEFAULT")}, note="sampling_mode defaults to DEFAULT"))
    out.append(Case(FAM, "resize_bilinear", "resize_bilinear_fp16", {"x": x16},
                    lambda x: mb.resize_bilinear(x=x, target_size_height=5, target_size_width=6,
                                                 sampling_mode="ALIGN_CORNERS"),
                    {"y": bilinear(f64(x16), 5, 6, "ALIGN_CORNERS")}, opset="iOS16", precision="fp16"))

    # iOS17 resize: the last `resized_dims` dims from the end of `shape` (0 keeps the input's size).
    for name, shp, k, interp, mode, want in (
            ("linear_2d", [1, 5, 6], 2, "LINEAR", "DEFAULT", lambda v: bilinear(v, 5, 6, "DEFAULT")),
            ("linear_align", [5, 7], 2, "LINEAR", "ALIGN_CORNERS", lambda v: bilinear(v, 5, 7, "ALIGN_CORNERS")),
            ("linear_keep_height", [0, 6], 2, "LINEAR", "UNALIGN_CORNERS",
             lambda v: bilinear(v, 3, 6, "UNALIGN_CORNERS")),
            ("linear_1d", [9], 1, "LINEAR", "STRICT_ALIGN_CORNERS",
             lambda v: bilinear(v, 3, 9, "STRICT_ALIGN_CORNERS")),
            ("nearest", [6, 5], 2, "NEAREST_NEIGHBOR", "DEFAULT", lambda v: nearest(v, 6, 5))):
        s = np.array(shp, np.int32)
        out.append(Case(FAM, "resize", f"resize_{name}", {"x": x},
                        lambda x, s=s, k=k, i=interp, m=mode: mb.resize(
                            x=x, shape=s, resized_dims=np.uint32(k), interpolation_mode=i, sampling_mode=m),
                        {"y": want(f64(x))}, opset="iOS17"))
    xi = ints(f"{FAM}/resize/int", (1, 2, 3, 4))
    out.append(Case(FAM, "resize", "resize_nearest_int32", {"x": xi},
                    lambda x: mb.resize(x=x, shape=np.array([5, 3], np.int32), resized_dims=np.uint32(2),
                                        interpolation_mode="NEAREST_NEIGHBOR"),
                    {"y": nearest(xi, 5, 3)}, opset="iOS17", note="int32 input, exact"))
    out.append(Case(FAM, "resize", "resize_linear_fp16", {"x": x16},
                    lambda x: mb.resize(x=x, shape=np.array([5, 6], np.int32), resized_dims=np.uint32(2),
                                        sampling_mode="UNALIGN_CORNERS"),
                    {"y": bilinear(f64(x16), 5, 6, "UNALIGN_CORNERS")}, opset="iOS17", precision="fp16"))
    shp_in = np.array([4, 7], np.int32)
    out.append(Case(FAM, "resize", "resize_runtime_shape", {"x": x, "shape": shp_in},
                    lambda x, shape: mb.resize(x=x, shape=shape, resized_dims=np.uint32(2)),
                    {"y": bilinear(f64(x), 4, 7, "DEFAULT")}, opset="iOS17", note="the target shape is an input"))

    for name, xin, chh, cw in (("both", x, [1, 0], [1, 2]), ("none", x, [0, 0], [0, 0]), ("rank3", x3, [1, 1], [0, 3])):
        xv = f64(xin)
        ref = xv[..., chh[0]:xin.shape[-2] - chh[1], cw[0]:xin.shape[-1] - cw[1]]
        out.append(Case(FAM, "crop", f"crop_{name}", {"x": xin},
                        lambda x, a=chh, b=cw: mb.crop(x=x, crop_height=np.array(a, np.int32),
                                                       crop_width=np.array(b, np.int32)),
                        {"y": ref}))
    out.append(Case(FAM, "crop", "crop_fp16", {"x": x16},
                    lambda x: mb.crop(x=x, crop_height=np.array([1, 1], np.int32), crop_width=np.array([0, 1], np.int32)),
                    {"y": f64(x16)[..., 1:2, 0:3]}, opset="iOS16", precision="fp16"))
    return out + resample_cases() + crop_resize_cases()


# resample / affine: the image padded with numpy's own modes (constant, edge, reflect, symmetric are the
# definition's constant, border, reflection, symmetric), then read bilinearly or at the nearest pixel.
PAD = 8
NP_MODE = {"constant": "constant", "border": "edge", "reflection": "reflect", "symmetric": "symmetric"}


def to_pixel(c, n, mode, align):
    if mode == "unnormalized":
        return c
    if mode == "normalized_minus_one_to_one":
        return (c + 1) / 2 * (n - 1) if align else ((c + 1) * n - 1) / 2
    return c * (n - 1) if align else c * n - 0.5


def resample_ref(x, coords, sampling, padding, value, cmode, align):
    b, ch, h, w = x.shape
    kw = {"constant_values": value} if padding == "constant" else {}
    xp = np.pad(x, [(0, 0), (0, 0), (PAD, PAD), (PAD, PAD)], mode=NP_MODE[padding], **kw)
    _, oh, ow, _ = coords.shape
    y = np.zeros((b, ch, oh, ow))
    for n in range(b):
        for i in range(oh):
            for j in range(ow):
                px = to_pixel(coords[n, i, j, 0], w, cmode, align) + PAD
                py = to_pixel(coords[n, i, j, 1], h, cmode, align) + PAD
                if sampling == "nearest":
                    y[n, :, i, j] = xp[n, :, int(np.floor(py + 0.5)), int(np.floor(px + 0.5))]
                    continue
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                fx, fy = px - x0, py - y0
                y[n, :, i, j] = ((1 - fy) * ((1 - fx) * xp[n, :, y0, x0] + fx * xp[n, :, y0, x0 + 1])
                                 + fy * ((1 - fx) * xp[n, :, y0 + 1, x0] + fx * xp[n, :, y0 + 1, x0 + 1]))
    return y


def resample_cases() -> list[Case]:
    out: list[Case] = []
    x = uniform(f"{FAM}/rs/x", (2, 2, 3, 4))
    lo_hi = {"unnormalized": (-2.5, 5.5), "normalized_minus_one_to_one": (-1.8, 1.8),
             "normalized_zero_to_one": (-0.4, 1.4)}
    combos = [("bilinear", "constant", "unnormalized", False), ("bilinear", "border", "normalized_minus_one_to_one", True),
              ("bilinear", "reflection", "normalized_minus_one_to_one", False),
              ("bilinear", "symmetric", "normalized_zero_to_one", True),
              ("nearest", "constant", "normalized_zero_to_one", False), ("nearest", "border", "unnormalized", False),
              ("nearest", "reflection", "unnormalized", False), ("nearest", "symmetric", "normalized_minus_one_to_one", True)]
    for sampling, padding, cmode, align in combos:
        lo, hi = lo_hi[cmode]
        co = uniform(f"{FAM}/rs/{sampling}/{padding}/{cmode}", (2, 3, 5, 2), lo, hi)
        value = 0.75 if padding == "constant" else 0.0
        name = f"resample_{sampling}_{padding}_{cmode.replace('normalized_', 'n_')}" + ("_align" if align else "")
        out.append(Case(FAM, "resample", name, {"x": x, "coords": co},
                        lambda x, coords, s=sampling, p=padding, v=value, m=cmode, a=align: mb.resample(
                            x=x, coordinates=coords, sampling_mode=s, padding_mode=p, padding_value=np.float32(v),
                            coordinates_mode=m, align_corners=a),
                        {"y": resample_ref(f64(x), f64(co), sampling, padding, value, cmode, align)}))
    x16 = x.astype(np.float16)
    co16 = uniform(f"{FAM}/rs/16", (2, 2, 3, 2), -1.2, 1.2).astype(np.float16)
    out.append(Case(FAM, "resample", "resample_fp16_ios16", {"x": x16, "coords": co16},
                    lambda x, coords: mb.resample(x=x, coordinates=coords, sampling_mode="bilinear",
                                                  padding_mode="border", padding_value=np.float16(0),
                                                  coordinates_mode="normalized_minus_one_to_one", align_corners=False),
                    {"y": resample_ref(f64(x16), f64(co16), "bilinear", "border", 0.0,
                                       "normalized_minus_one_to_one", False)}, opset="iOS16", precision="fp16"))

    # affine: output pixel (w, h) at normalised (u, v) in [-1, 1] (align_corners: the corner pixel
    # centres), read at (a0 u + a1 v + a2, b0 u + b1 v + b2), bilinear, zero padding.
    def affine_ref(x, m, oh, ow):
        b = x.shape[0]
        u = np.linspace(-1, 1, ow) if ow > 1 else np.zeros(1)
        v = np.linspace(-1, 1, oh) if oh > 1 else np.zeros(1)
        coords = np.zeros((b, oh, ow, 2))
        for n in range(b):
            t = m[0] if m.shape[0] == 1 else m[n]
            for i in range(oh):
                for j in range(ow):
                    coords[n, i, j] = (t[0] * u[j] + t[1] * v[i] + t[2], t[3] * u[j] + t[4] * v[i] + t[5])
        return resample_ref(x, coords, "bilinear", "constant", 0.0, "normalized_minus_one_to_one", True)

    for name, m, oh, ow in (("rotate_shared", np.array([[0.8, -0.6, 0.1, 0.6, 0.8, -0.2]], np.float32), 4, 5),
                            ("per_batch", np.array([[1.2, 0.0, 0.3, 0.0, 0.9, 0.0],
                                                    [0.5, 0.2, -0.4, -0.1, 1.5, 0.2]], np.float32), 3, 3)):
        out.append(Case(FAM, "affine", f"affine_{name}", {"x": x, "m": m},
                        lambda x, m, oh=oh, ow=ow: mb.affine(
                            x=x, transform_matrix=m, output_height=oh, output_width=ow, sampling_mode="bilinear",
                            padding_mode="constant", padding_value=np.float32(0),
                            coordinates_mode="normalized_minus_one_to_one", align_corners=True),
                        {"y": affine_ref(f64(x), f64(m), oh, ow)}))
    return out


# crop_resize: TF's crop_and_resize (coremltools' TF frontend maps it to ALIGN_CORNERS), box edges in
# pixels (normalised: times in - 1; then times spatial_scale); a point outside the image reads pad_value.
def crop_one(img, box, th, tw, strict, pad_value):
    h0, w0, h1, w1 = box
    c, h, w = img.shape

    def pts(a, b, n):
        if n == 1:
            return [a if strict else (a + b) / 2]
        return [a + i * (b - a) / (n - 1) for i in range(n)]

    y = np.full((c, th, tw), pad_value, dtype=np.float64)
    for i, py in enumerate(pts(h0, h1, th)):
        for j, px in enumerate(pts(w0, w1, tw)):
            if not (0 <= py <= h - 1 and 0 <= px <= w - 1):
                continue
            top, left = int(np.floor(py)), int(np.floor(px))
            bottom, right = int(np.ceil(py)), int(np.ceil(px))
            fy, fx = py - top, px - left
            t = img[:, top, left] + (img[:, top, right] - img[:, top, left]) * fx
            b = img[:, bottom, left] + (img[:, bottom, right] - img[:, bottom, left]) * fx
            y[:, i, j] = t + (b - t) * fy
    return y


def to_corners(b, mode):
    if mode == "CORNERS_HEIGHT_FIRST":
        return b
    if mode == "CORNERS_WIDTH_FIRST":
        return [b[1], b[0], b[3], b[2]]
    if mode == "CENTER_SIZE_HEIGHT_FIRST":
        return [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]
    return [b[1] - b[3] / 2, b[0] - b[2] / 2, b[1] + b[3] / 2, b[0] + b[2] / 2]


def crop_resize_cases() -> list[Case]:
    out: list[Case] = []
    x = uniform(f"{FAM}/cr/x", (2, 2, 5, 6))
    xv = f64(x)
    H, W = 5, 6

    def px(box, mode, normalized, scale):
        b = to_corners([float(v) for v in box], mode)
        if normalized:
            b = [b[0] * (H - 1), b[1] * (W - 1), b[2] * (H - 1), b[3] * (W - 1)]
        return [v * scale for v in b]

    boxes = np.array([[0.5, 1.0, 3.5, 4.0], [0.0, 0.0, 4.0, 5.0], [1.2, 2.5, 2.0, 5.0]], np.float32)
    # iOS15: roi [N, 1, 4, 1, 1] applies every box to every image: [N, B, C, h, w].
    roi4 = boxes.reshape(3, 1, 4, 1, 1)
    ref = np.stack([np.stack([crop_one(xv[b], px(bx, "CORNERS_HEIGHT_FIRST", False, 1.0), 3, 4, False, 0.0)
                              for b in range(2)]) for bx in f64(boxes)])
    out.append(Case(FAM, "crop_resize", "crop_resize_roi4_all_images", {"x": x},
                    lambda x: mb.crop_resize(x=x, roi=roi4, target_height=3, target_width=4,
                                             sampling_mode="ALIGN_CORNERS"), {"y": ref}))
    # roi [N, 1, 5, 1, 1]: a batch index first, [N, 1, C, h, w].
    idx = np.array([1, 0, 1], np.float32)
    roi5 = np.concatenate([idx[:, None], boxes], axis=1).reshape(3, 1, 5, 1, 1)
    ref = np.stack([crop_one(xv[int(i)], px(bx, "CORNERS_HEIGHT_FIRST", False, 1.0), 4, 3, False, 0.0)[None]
                    for i, bx in zip(idx, f64(boxes))])
    out.append(Case(FAM, "crop_resize", "crop_resize_roi5_indexed", {"x": x},
                    lambda x: mb.crop_resize(x=x, roi=roi5, target_height=4, target_width=3,
                                             sampling_mode="ALIGN_CORNERS"), {"y": ref}))
    nboxes = np.array([[0.1, 0.2, 0.9, 0.7], [0.25, 0.0, 0.75, 1.0]], np.float32)
    roi = np.concatenate([np.array([[0], [1]], np.float32), nboxes], axis=1).reshape(2, 1, 5, 1, 1)
    ref = np.stack([crop_one(xv[i], px(bx, "CORNERS_HEIGHT_FIRST", True, 1.0), 3, 3, False, 0.0)[None]
                    for i, bx in enumerate(f64(nboxes))])
    out.append(Case(FAM, "crop_resize", "crop_resize_normalized", {"x": x},
                    lambda x: mb.crop_resize(x=x, roi=roi, target_height=3, target_width=3, normalized_coordinates=True,
                                             sampling_mode="ALIGN_CORNERS"), {"y": ref},
                    note="normalised coordinates times (H-1, W-1)"))
    for mode, box in (("CORNERS_WIDTH_FIRST", [1.0, 0.5, 5.0, 3.0]), ("CENTER_SIZE_HEIGHT_FIRST", [2.0, 3.0, 2.0, 3.0]),
                      ("CENTER_SIZE_WIDTH_FIRST", [3.0, 2.0, 4.0, 2.5])):
        r = np.array([[0] + box], np.float32).reshape(1, 1, 5, 1, 1)
        ref = crop_one(xv[0], px(box, mode, False, 2.0), 3, 4, False, 0.0)[None, None]
        out.append(Case(FAM, "crop_resize", f"crop_resize_{mode.lower()}_scale2", {"x": x},
                        lambda x, r=r, m=mode: mb.crop_resize(x=x, roi=r, target_height=3, target_width=4,
                                                              box_coordinate_mode=m, spatial_scale=np.float32(2.0),
                                                              sampling_mode="ALIGN_CORNERS"), {"y": ref}))
    r1 = np.array([[1, 1.0, 1.0, 3.0, 4.0]], np.float32).reshape(1, 1, 5, 1, 1)
    for mode, strict in (("ALIGN_CORNERS", False), ("STRICT_ALIGN_CORNERS", True)):
        ref = crop_one(xv[1], [1.0, 1.0, 3.0, 4.0], 1, 1, strict, 0.0)[None, None]
        out.append(Case(FAM, "crop_resize", f"crop_resize_to1_{mode.lower()}", {"x": x},
                        lambda x, m=mode: mb.crop_resize(x=x, roi=r1, target_height=1, target_width=1, sampling_mode=m),
                        {"y": ref}, note="one output: the box centre (ALIGN) or its start (STRICT)"))
    rout = np.array([[0, -1.0, 2.0, 6.0, 7.5]], np.float32).reshape(1, 1, 5, 1, 1)
    ref = crop_one(xv[0], [-1.0, 2.0, 6.0, 7.5], 4, 4, False, -2.5)[None, None]
    out.append(Case(FAM, "crop_resize", "crop_resize_pad_value_ios16", {"x": x},
                    lambda x: mb.crop_resize(x=x, roi=rout, target_height=4, target_width=4,
                                             sampling_mode="ALIGN_CORNERS", pad_value=np.float32(-2.5)),
                    {"y": ref}, opset="iOS16", note="points outside the image read pad_value"))
    # iOS17: boxes [N, 4] and box_indices, output [N, C, h, w].
    bi = np.array([1, 1, 0], np.int32)
    ref = np.stack([crop_one(xv[i], px(bx, "CORNERS_HEIGHT_FIRST", False, 1.0), 3, 2, False, 0.0)
                    for i, bx in zip(bi, f64(boxes))])
    out.append(Case(FAM, "crop_resize", "crop_resize_boxes_ios17", {"x": x, "b": boxes},
                    lambda x, b: mb.crop_resize(x=x, boxes=b, box_indices=bi, target_height=3, target_width=2,
                                                sampling_mode="ALIGN_CORNERS"), {"y": ref}, opset="iOS17",
                    note="boxes a run-time input"))
    ref = np.stack([crop_one(xv[i], px(bx, "CORNERS_HEIGHT_FIRST", True, 1.0), 2, 3, False, 0.0)
                    for i, bx in enumerate(f64(nboxes))])
    out.append(Case(FAM, "crop_resize", "crop_resize_default_indices_ios17", {"x": x},
                    lambda x: mb.crop_resize(x=x, boxes=nboxes, target_height=2, target_width=3,
                                             normalized_coordinates=True, sampling_mode="ALIGN_CORNERS"),
                    {"y": ref}, opset="iOS17", note="box_indices default to arange(N)"))
    x16 = x.astype(np.float16)
    ref = np.stack([crop_one(f64(x16)[i], px(bx, "CORNERS_HEIGHT_FIRST", True, 1.0), 2, 3, False, 0.0)
                    for i, bx in enumerate(f64(nboxes))])
    out.append(Case(FAM, "crop_resize", "crop_resize_fp16_ios17", {"x": x16},
                    lambda x: mb.crop_resize(x=x, boxes=nboxes, target_height=2, target_width=3,
                                             normalized_coordinates=True, sampling_mode="ALIGN_CORNERS"),
                    {"y": ref}, opset="iOS17", precision="fp16"))
    # DEFAULT sampling inside a box: the reference below is only a guess (resize_bilinear's DEFAULT grid over
    # the box); the interpreter refuses the mode and KNOWN.json lists the case.
    ref = np.stack([crop_one(xv[i], px(bx, "CORNERS_HEIGHT_FIRST", True, 1.0), 2, 3, True, 0.0)
                    for i, bx in enumerate(f64(nboxes))])
    out.append(Case(FAM, "crop_resize", "crop_resize_default_sampling_ios17", {"x": x},
                    lambda x: mb.crop_resize(x=x, boxes=nboxes, target_height=2, target_width=3,
                                             normalized_coordinates=True),
                    {"y": ref}, opset="iOS17", note="sampling_mode DEFAULT: refused (placement in a box undefined)"))
    return out
