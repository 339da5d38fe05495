"""Load a PyTorch state_dict checkpoint (.pth) with numpy + pickle only (no torch).

Two on-disk formats exist:

* legacy (torch < 1.6, `_legacy_save`): a sequence of pickles in one stream
      magic number (0x1950a86a20f9469cfc6c), protocol version (1001), sys_info dict,
      the object (tensors reference storages through persistent ids
      ('storage', <StorageType>, key, location, numel[, view_metadata])),
      the list of storage keys in the order their data follows,
  then for each key: int64 little-endian element count + raw little-endian data.
* zip (torch >= 1.6): a zip archive with <prefix>/data.pkl (persistent ids
  ('storage', <StorageType>, key, location, numel)) and raw storages at <prefix>/data/<key>.

Tensors are rebuilt from (storage, offset, size, stride) with numpy stride tricks and copied
into contiguous arrays. Only the classes a state_dict needs are allowed in the unpickler.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if len(self.size) == 0:
            return np.array(data[self.offset])
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        kind, stype, key, _location, numel = pid[:5]
        assert kind == "storage", pid
        if len(pid) > 5 and pid[5] is not None:
            raise NotImplementedError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(key, stype.dtype, numel)
        return self.storages[key]


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_legacy(f) -> tuple[dict, str]:
    magic = pickle.load(f)
    if magic != LEGACY_MAGIC:
        raise ValueError("not a legacy torch file (bad magic)")
    protocol = pickle.load(f)
    if protocol != 1001:
        raise ValueError(f"unsupported legacy protocol {protocol}")
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian checkpoint")
    storages: dict = {}
    obj = _Unpickler(f, storages).load()
    keys = pickle.load(f)
    for key in keys:
        st = storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        itemsize = np.dtype(st.dtype).itemsize
        raw = f.read(numel * itemsize)
        if len(raw) != numel * itemsize:
            raise ValueError(f"truncated storage {key}")
        st.data = np.frombuffer(raw, dtype=st.dtype)
    return _materialize(obj), f"legacy (protocol 1001, sys_info {sys_info})"


def _load_zip(f) -> tuple[dict, str]:
    with zipfile.ZipFile(f) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
        prefix = pkl[: -len("data.pkl")]
        storages: dict = {}
        obj = _Unpickler(io.BytesIO(z.read(pkl)), storages).load()
        for key, st in storages.items():
            st.data = np.frombuffer(z.read(f"{prefix}data/{key}"), dtype=st.dtype)
    return _materialize(obj), "zip"


def load_state_dict(src: Path | bytes) -> tuple[dict, str]:
    """Checkpoint path or bytes -> ({name: np.ndarray}, format description)."""
    data = src if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
    f = io.BytesIO(data)
    if zipfile.is_zipfile(f):
        f.seek(0)
        return _load_zip(f)
    f.seek(0)
    return _load_legacy(f)
