"""Helpers shared by the `cases_*.py` files: seeded inputs and float64 references."""

from __future__ import annotations

import zlib

import numpy as np

from case import Case  # noqa: F401  (re-exported for the case files)


def rng(tag: str) -> np.random.Generator:
    """A generator seeded by `tag` (crc32), so every case's inputs are the same on every build."""
    return np.random.default_rng(zlib.crc32(tag.encode()))


def uniform(tag: str, shape, lo=-3.0, hi=3.0, dtype=np.float32) -> np.ndarray:
    """Seeded uniform values in [lo, hi), stored in `dtype`."""
    return rng(tag).uniform(lo, hi, size=shape).astype(dtype)


def ints(tag: str, shape, lo=-9, hi=10) -> np.ndarray:
    """Seeded int32 values in [lo, hi)."""
    return rng(tag).integers(lo, hi, size=shape).astype(np.int32)


def bools(tag: str, shape) -> np.ndarray:
    """Seeded bools."""
    return rng(tag).integers(0, 2, size=shape).astype(bool)


def f64(a) -> np.ndarray:
    """The array as float64 (references are computed on the stored input values)."""
    return np.asarray(a).astype(np.float64)


def same_dtype(x: np.ndarray, v):
    """A constant parameter in `x`'s dtype (iOS15 ops type their parameters like `x`)."""
    return np.array(v, dtype=x.dtype) if np.ndim(v) else x.dtype.type(v)


def fp16_variants(cases: list[Case], ops: set[str], skip: set[str] = frozenset()) -> list[Case]:
    """fp16 forms of pure data-movement cases: every output element is a copy of an input element
    (or an fp16-exact fill), so the fp16 reference is the fp32 one rounded to fp16."""
    out = []
    for c in cases:
        floats = [a for a in c.inputs.values() if a.dtype == np.float32]
        if c.op not in ops or c.name in skip or c.precision != "fp32" or not floats:
            continue
        inputs = {k: a.astype(np.float16) if a.dtype == np.float32 else a for k, a in c.inputs.items()}
        expected = {k: e.astype(np.float16).astype(np.float64) if e.dtype.kind == "f" else e
                    for k, e in c.expected.items()}
        out.append(Case(family=c.family, op=c.op, name=f"{c.name}_fp16", inputs=inputs, build=c.build,
                        expected=expected, opset=c.opset, precision="fp16", note=c.note, tags=list(c.tags)))
    return out


def dtype_variants(cases: list[Case], ops: set[str], kind: str, skip: set[str] = frozenset()) -> list[Case]:
    """int32 / bool forms of pure data-movement fp32 cases. Every output element is a copy of an
    input element (or a 0 fill), so mapping inputs and the reference through the same elementwise
    function -- round(10 v) for int32, v > 0 for bool -- gives the reference of the new dtype."""
    f = (lambda a: np.round(np.asarray(a, np.float64) * 10).astype(np.int32)) if kind == "int32" else (
        lambda a: np.asarray(a) > 0)
    out = []
    for c in cases:
        if c.op not in ops or c.name in skip or c.precision != "fp32" or c.name.endswith(("_int32", "_bool")):
            continue
        if not any(a.dtype == np.float32 for a in c.inputs.values()):
            continue
        inputs = {k: f(a) if a.dtype == np.float32 else a for k, a in c.inputs.items()}
        expected = {k: f(e) if e.dtype.kind == "f" else e for k, e in c.expected.items()}
        out.append(Case(family=c.family, op=c.op, name=f"{c.name}_{kind}", inputs=inputs, build=c.build,
                        expected=expected, opset=c.opset, note=c.note, tags=list(c.tags)))
    return out
