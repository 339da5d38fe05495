"""Cases for coremltools' iOS17/quantization_ops.py: quantize (`clip(round(x / scale) +
zero_point)` to int8 / uint8, rounding half to even as numpy's `around`) and dequantize
(`scale * (q - zero_point)`), scalar or per-axis parameters.

Core ML has no int8 program inputs or outputs, so quantized values reach the program's output
through `cast` to int32 (exact), or back through `dequantize`; dequantize of a constant is added
to an input. References: float64 numpy on the stored values."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, rng, uniform

FAM = "quantization_ops"
RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def quant(x, scale, zp, dtype, axis=None):
    s, z = f64(scale), f64(zp) if zp is not None else 0.0
    if axis is not None and np.ndim(scale):
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if zp is not None else 0.0
    lo, hi = RANGE[dtype]
    return np.clip(np.round(f64(x) / s) + z, lo, hi)


def dequant(q, scale, zp, axis=None):
    s, z = f64(scale), f64(zp) if zp is not None else 0.0
    if axis is not None and np.ndim(scale):
        shape = [1] * np.ndim(q)
        shape[axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if zp is not None else 0.0
    return s * (f64(q) - z)


def cases() -> list[Case]:
    out: list[Case] = []
    x = uniform(f"{FAM}/x", (2, 3, 4), -3, 3)
    # Ties (half a step) round to even; out-of-range values clip.
    x.reshape(-1)[:6] = [0.125, 0.375, -0.125, 100.0, -100.0, 0.0]
    variants = [
        ("int8_scalar", "int8", np.float32(0.25), np.int8(3), None),
        ("int8_no_zero_point", "int8", np.float32(0.0625), None, None),
        ("uint8_axis1", "uint8", np.array([0.25, 0.5, 0.125], np.float32), np.array([128, 100, 0], np.uint8), 1),
        ("int8_axis_neg1", "int8", np.array([0.25, 0.5, 0.125, 0.03], np.float32),
         np.array([0, -3, 5, 1], np.int8), -1),
    ]
    for tag, dt, scale, zp, axis in variants:
        kw = {"scale": scale, "output_dtype": dt}
        if zp is not None:
            kw["zero_point"] = zp
        if axis is not None:
            kw["axis"] = np.int32(axis)
        dkw = {k: v for k, v in kw.items() if k != "output_dtype"}
        q = quant(x, scale, zp, dt, axis)
        out.append(Case(FAM, "quantize", f"quantize_{tag}", {"x": x},
                        lambda x, kw=kw: mb.cast(x=mb.quantize(input=x, **kw), dtype="int32"),
                        {"y": q.astype(np.int32)}, opset="iOS17", note="read back through cast to int32"))
        out.append(Case(FAM, "dequantize", f"dequantize_roundtrip_{tag}", {"x": x},
                        lambda x, kw=kw, dkw=dkw: mb.dequantize(input=mb.quantize(input=x, **kw), **dkw),
                        {"y": dequant(q, scale, zp, axis)}, opset="iOS17"))
    x16 = x.astype(np.float16)
    q16 = quant(x16, np.float16(0.25), np.int8(-2), "int8")
    out.append(Case(FAM, "quantize", "quantize_fp16_roundtrip", {"x": x16},
                    lambda x: mb.dequantize(input=mb.quantize(input=x, scale=np.float16(0.25), zero_point=np.int8(-2),
                                                              output_dtype="int8"),
                                            scale=np.float16(0.25), zero_point=np.int8(-2)),
                    {"y": dequant(q16, np.float16(0.25), np.int8(-2))}, opset="iOS17", precision="fp16"))
    qc = rng(f"{FAM}/qc").integers(-128, 128, (2, 3)).astype(np.int8)
    sc = np.array([0.5, 0.25], np.float32)
    zc = np.array([4, -4], np.int8)
    xa = uniform(f"{FAM}/xa", (2, 3), -1, 1)
    out.append(Case(FAM, "dequantize", "dequantize_const_axis0", {"x": xa},
                    lambda x: mb.add(x=x, y=mb.dequantize(input=qc, scale=sc, zero_point=zc, axis=np.int32(0))),
                    {"y": f64(xa) + dequant(qc, sc, zc, 0)}, opset="iOS17",
                    note="a constant input: folded at plan build through the same kernel"))
    qu = rng(f"{FAM}/qu").integers(0, 256, (2, 3)).astype(np.uint8)
    out.append(Case(FAM, "dequantize", "dequantize_const_uint8_no_zero_point", {"x": xa},
                    lambda x: mb.add(x=x, y=mb.dequantize(input=qu, scale=np.float32(0.01))),
                    {"y": f64(xa) + dequant(qu, np.float32(0.01), None)}, opset="iOS17"))
    return out
