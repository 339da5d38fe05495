"""Read a saved .mlpackage back: the spec, its weights (weight.bin, MILBlob v2) and the
materialised values of const / constexpr_* ops, in plain numpy.

This is independent of coremltools' own loader on purpose; `crosscheck_with_coremltools`
compares every materialised value with coremltools' milproto loader + the op definitions'
`materialized_val_inference` (bit-exact), which both validates this reader and documents the
constexpr semantics the Rust interpreter has to reproduce:

    constexpr_affine_dequantize (iOS16): attributes quantized_data (int8|uint8 [..]),
        zero_point (same dtype, scalar or [C]), scale (fp16|fp32, scalar or [C]), axis (int32).
        out = ((float32(q) - float32(zp)) * scale) cast to scale dtype, zp/scale broadcast
        along `axis`.
    constexpr_lut_to_dense (iOS16): attributes lut (T [2^nbits]), indices (uint8 [M], packed
        LSB-first, nbits = log2(len(lut))), shape (uint32 [K]). out = lut[idx].reshape(shape).
    constexpr_sparse_to_dense (iOS16): attributes nonzero_data (T [D]), mask (uint8 [M], one
        bit per element, LSB-first, row-major), shape (uint32 [K]).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# MIL DataType enum -> numpy dtype
MIL_DTYPES = {
    1: np.bool_,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    21: np.int8,
    22: np.int16,
    23: np.int32,
    24: np.int64,
    31: np.uint8,
    32: np.uint16,
    33: np.uint32,
    34: np.uint64,
}
# MILBlob storage dtype codes -> numpy dtype (sub-byte types are not used by iOS16 ops)
BLOB_DTYPES = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8, 6: np.int16, 7: np.uint16, 14: np.int32, 15: np.uint32}
BLOB_SENTINEL = 0xDEADBEEF


def load_spec(pkg_dir: Path):
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((Path(pkg_dir) / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    return spec


class WeightFile:
    """MILBlob storage v2: 64-byte header (u32 count, u32 version=2), then per blob a 64-byte
    metadata record (u32 0xDEADBEEF, u32 dtype, u64 size, u64 data offset, ...) followed by data."""

    def __init__(self, path: Path):
        self.data = Path(path).read_bytes()
        count, version = struct.unpack_from("<II", self.data, 0)
        if version != 2:
            raise ValueError(f"{path}: MILBlob storage version {version}, expected 2")
        self.count = count

    def read(self, offset: int, np_dtype, shape) -> np.ndarray:
        sentinel, dtype_code, size, data_off = struct.unpack_from("<IIQQ", self.data, offset)
        if sentinel != BLOB_SENTINEL:
            raise ValueError(f"bad blob sentinel at {offset}: {sentinel:#x}")
        blob_dtype = BLOB_DTYPES[dtype_code]
        raw = np.frombuffer(self.data, dtype=blob_dtype, count=size // np.dtype(blob_dtype).itemsize, offset=data_off)
        if np.dtype(blob_dtype) != np.dtype(np_dtype):
            # int8/uint8 share storage codes loosely; reinterpret the bytes as the declared type.
            if np.dtype(blob_dtype).itemsize != np.dtype(np_dtype).itemsize:
                raise ValueError(f"blob dtype {blob_dtype} vs declared {np_dtype}")
            raw = raw.view(np_dtype)
        n = int(np.prod(shape)) if len(shape) else 1
        if raw.size != n:
            raise ValueError(f"blob at {offset}: {raw.size} elements, type says {n}")
        return raw.reshape(shape).copy()


def _tensor_type(value_type):
    tt = value_type.tensorType
    dtype = MIL_DTYPES[tt.dataType] if tt.dataType != 2 else object
    shape = tuple(int(d.constant.size) for d in tt.dimensions)
    return dtype, shape


def decode_value(value, weights: WeightFile | None) -> np.ndarray:
    """A MIL Value (immediate or blob file) -> numpy array of its declared dtype/shape."""
    dtype, shape = _tensor_type(value.type)
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        assert value.blobFileValue.fileName == "@model_path/weights/weight.bin", value.blobFileValue.fileName
        return weights.read(int(value.blobFileValue.offset), dtype, shape)
    tv = value.immediateValue.tensor
    which = tv.WhichOneof("value")
    if which == "bytes":
        arr = np.frombuffer(tv.bytes.values, dtype=dtype)
    elif which == "strings":
        arr = np.array(list(tv.strings.values), dtype=object)
    else:
        arr = np.array(list(getattr(tv, which).values)).astype(dtype)
    return arr.reshape(shape)


def dequant_affine(q, zp, scale, axis):
    rank = q.ndim
    axis = axis % rank

    def promote(p):
        if p.ndim == rank:
            return p
        if p.ndim == 0:
            return p.reshape((1,) * rank)
        shape = [1] * rank
        shape[axis] = p.shape[0]
        return p.reshape(shape)

    out = q.astype(np.float32) - promote(zp).astype(np.float32)
    out = out * promote(scale).astype(np.float32)
    return out.astype(scale.dtype)


def unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    bits = np.unpackbits(packed.astype(np.uint8), bitorder="little")[: count * nbits]
    bits = bits.reshape(count, nbits).astype(np.uint32)
    return (bits << np.arange(nbits, dtype=np.uint32)).sum(axis=1)


def lut_to_dense(lut, indices, shape):
    nbits = int(np.log2(lut.size))
    idx = unpack_bits(indices, nbits, int(np.prod(shape)))
    return lut[idx].reshape(tuple(int(s) for s in shape))


def sparse_to_dense(nonzero, mask, shape):
    n = int(np.prod(shape))
    bits = np.unpackbits(mask.astype(np.uint8), bitorder="little")[:n].astype(bool)
    out = np.zeros(n, dtype=nonzero.dtype)
    assert bits.sum() == nonzero.size
    out[bits] = nonzero
    return out.reshape(tuple(int(s) for s in shape))


def _param(op, name, consts, weights):
    if name in op.attributes:
        return decode_value(op.attributes[name], weights)
    args = op.inputs[name].arguments
    assert len(args) == 1
    a = args[0]
    if a.WhichOneof("binding") == "value":
        return decode_value(a.value, weights)
    return consts[a.name]


def read_consts(pkg_dir: Path):
    """Return (spec, {var name: np.ndarray}) for every const and constexpr_* output."""
    from common import iter_ops, main_block

    pkg_dir = Path(pkg_dir)
    spec = load_spec(pkg_dir)
    wpath = pkg_dir / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    weights = WeightFile(wpath) if wpath.exists() else None
    consts: dict[str, np.ndarray] = {}
    for op in iter_ops(main_block(spec)):
        out = op.outputs[0].name if op.outputs else None
        if op.type == "const":
            consts[out] = decode_value(op.attributes["val"], weights)
        elif op.type == "constexpr_affine_dequantize":
            consts[out] = dequant_affine(
                _param(op, "quantized_data", consts, weights),
                _param(op, "zero_point", consts, weights),
                _param(op, "scale", consts, weights),
                int(_param(op, "axis", consts, weights)),
            )
        elif op.type == "constexpr_lut_to_dense":
            consts[out] = lut_to_dense(
                _param(op, "lut", consts, weights),
                _param(op, "indices", consts, weights),
                _param(op, "shape", consts, weights),
            )
        elif op.type == "constexpr_sparse_to_dense":
            consts[out] = sparse_to_dense(
                _param(op, "nonzero_data", consts, weights),
                _param(op, "mask", consts, weights),
                _param(op, "shape", consts, weights),
            )
        elif op.type.startswith("constexpr_"):
            raise NotImplementedError(op.type)
    return spec, consts


def op_params(spec, consts):
    """Ordered list of (op type, output name, {param: np value or var name}) for non-const ops."""
    from common import iter_ops, main_block

    res = []
    for op in iter_ops(main_block(spec)):
        if op.type == "const" or op.type.startswith("constexpr_"):
            continue
        params = {}
        for k, arg in op.inputs.items():
            names = [a.name for a in arg.arguments]
            if len(names) == 1 and names[0] in consts:
                params[k] = consts[names[0]]
            else:
                params[k] = names[0] if len(names) == 1 else names
        res.append((op.type, op.outputs[0].name, params))
    return res


def crosscheck_with_coremltools(pkg_dir: Path, consts) -> int:
    """Every const/constexpr value we decoded equals coremltools' own (bit for bit)."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    pkg_dir = Path(pkg_dir)
    spec = load_spec(pkg_dir)
    prog = milproto_load(spec, spec.specificationVersion, str(pkg_dir / "Data" / "com.apple.CoreML" / "weights"))
    n = 0
    for op in prog.functions["main"].operations:
        if op.op_type == "const":
            ref = op.outputs[0].val
        elif op.op_type.startswith("constexpr_"):
            ref = op.materialized_val_inference()
        else:
            continue
        name = op.outputs[0].name
        if name not in consts:
            # the loader turns constexpr attributes into extra consts (<op>_<attr>_0); those are
            # covered by comparing the constexpr op's materialised output
            assert all(c.op_type.startswith("constexpr_") for c in op.outputs[0].child_ops), name
            continue
        mine = consts[name]
        ref = np.asarray(ref)
        if ref.dtype.kind in "fiub" and mine.dtype != object:
            if ref.dtype != mine.dtype or ref.shape != mine.shape or ref.tobytes() != mine.tobytes():
                raise AssertionError(f"{pkg_dir}: {name}: ours {mine.dtype}{mine.shape} != coremltools {ref.dtype}{ref.shape}")
        else:
            assert [str(x) for x in np.ravel(ref)] == [str(x) for x in np.ravel(mine)], name
        n += 1
    return n
