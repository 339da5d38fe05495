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
