"""Stateful programs (coremltools iOS18 `states.py` and the Core ML dialect's `coreml_update_state`):
`read_state`, `write_state`.

A state is a function input of state type (`mb.StateTensorSpec`); the case gives its value before
the run (`states`) and the reference after it (`expected_states`). Core ML states are fp16 only
(coremltools refuses to save another dtype), so every state here is fp16; the `_fp32` cases compute
in fp32 between a cast after `read_state` and a cast before the write, the `_fp16` ones in fp16.
`coreml_update_state(state, value)` is how a program writes: coremltools saves it as `write_state`
followed by `read_state` (or `write_state` alone when its result is unused), so the `write_state`
cases are built with it. References are numpy on the stored values, in the program's dtypes where
a value is stored into a state (a state holds the fp16 rounding of what the program computed).
"""

from __future__ import annotations

import numpy as np

from caselib import Case, f64, uniform
from coremltools.converters.mil import Builder as mb

FAMILY = "state"
F16 = np.float16


class Mode:
    """fp32 or fp16 compute around fp16 states: how a program reads and writes, and the numpy
    dtype its arithmetic is done in (for the values a state stores)."""

    def __init__(self, compute):
        self.dt = compute
        self.fp16 = compute == F16
        self.sfx = "_fp16" if self.fp16 else "_fp32"
        self.prec = "fp16" if self.fp16 else "fp32"

    def rd(self, s):
        r = mb.read_state(input=s)
        return r if self.fp16 else mb.cast(x=r, dtype="fp32")

    def wr(self, s, v):
        """Writes v (the compute dtype) into s; returns the value read back, in the compute dtype."""
        new = mb.coreml_update_state(state=s, value=v if self.fp16 else mb.cast(x=v, dtype="fp16"))
        return new if self.fp16 else mb.cast(x=new, dtype="fp32")

    def c(self, v):
        return self.dt(v)

    def stored(self, v):
        """What a state holds after a write of v (computed in the compute dtype)."""
        return np.asarray(v, dtype=self.dt).astype(F16)

    def inp(self, tag, shape):
        return uniform(tag, shape, dtype=self.dt)


def _case(m: Mode, op, name, inputs, states, build, expected, expected_states, note=""):
    return Case(family=FAMILY, op=op, name=f"{name}{m.sfx}", inputs=inputs, states=states, build=build,
                expected=expected, expected_states=expected_states, opset="iOS18", precision=m.prec, note=note)


def _read_cases(m: Mode) -> list[Case]:
    out = []
    s = uniform(f"read{m.sfx}.s", (2, 3), dtype=F16)
    x = m.inp(f"read{m.sfx}.x", (2, 3))
    out.append(_case(m, "read_state", "read_state", {"x": x}, {"s": s},
                     lambda x, s: mb.add(x=m.rd(s), y=x),
                     {"y": f64(s) + f64(x)}, {"s": f64(s)},
                     "read_state then add; the state is left as it was"))
    # The state returned as is: read_state is the program's output.
    s4 = uniform(f"read_out{m.sfx}.s", (1, 2, 3, 4), dtype=F16)
    x1 = m.inp(f"read_out{m.sfx}.x", (1,))
    out.append(_case(m, "read_state", "read_state_as_output_rank4", {"x": x1}, {"s": s4},
                     lambda x, s: (mb.read_state(input=s), mb.mul(x=x, y=m.c(2))),
                     {"r": f64(s4), "y": 2 * f64(x1)}, {"s": f64(s4)},
                     "read_state (fp16) as an output, rank 4"))
    # Two reads of the same state give the same value.
    s1 = uniform(f"read_twice{m.sfx}.s", (5,), dtype=F16)
    x5 = m.inp(f"read_twice{m.sfx}.x", (5,))
    out.append(_case(m, "read_state", "read_state_twice", {"x": x5}, {"s": s1},
                     lambda x, s: mb.mul(x=m.rd(s), y=mb.add(x=m.rd(s), y=x)),
                     {"y": f64(s1) * (f64(s1) + f64(x5))}, {"s": f64(s1)},
                     "two reads of one state, rank 1"))
    return out


def _write_cases(m: Mode) -> list[Case]:
    out = []
    s = uniform(f"acc{m.sfx}.s", (2, 3), dtype=F16)
    x = m.inp(f"acc{m.sfx}.x", (2, 3))
    acc = m.stored(s.astype(m.dt) + x)
    out.append(_case(m, "write_state", "update_accumulate", {"x": x}, {"s": s},
                     lambda x, s: mb.mul(x=m.wr(s, mb.add(x=m.rd(s), y=x)), y=m.c(2)),
                     {"y": 2 * f64(acc)}, {"s": f64(acc)},
                     "s += x via coreml_update_state (write_state + read_state); its result feeds an op"))

    sw = uniform(f"write_only{m.sfx}.s", (3, 1, 4), dtype=F16)
    xw = m.inp(f"write_only{m.sfx}.x", (3, 1, 4))

    def read_then_write(x, s):
        old = m.rd(s)
        v = mb.mul(x=x, y=m.c(3))
        mb.coreml_update_state(state=s, value=v if m.fp16 else mb.cast(x=v, dtype="fp16"))  # result unused
        return mb.add(x=old, y=m.c(0.5))

    out.append(_case(m, "write_state", "read_before_write", {"x": xw}, {"s": sw}, read_then_write,
                     {"y": f64(sw) + 0.5}, {"s": f64(m.stored(xw * m.c(3)))},
                     "a read before the write sees the old value; the write alone (no read back)"))

    sr = uniform(f"write_read{m.sfx}.s", (4,), dtype=F16)
    xr = m.inp(f"write_read{m.sfx}.x", (4,))

    def write_then_read(x, s):
        v = mb.sub(x=x, y=m.c(1))
        mb.coreml_update_state(state=s, value=v if m.fp16 else mb.cast(x=v, dtype="fp16"))
        return mb.mul(x=m.rd(s), y=x)

    new = m.stored(xr - m.c(1))
    out.append(_case(m, "write_state", "write_then_read", {"x": xr}, {"s": sr}, write_then_read,
                     {"y": f64(new) * f64(xr)}, {"s": f64(new)},
                     "a separate read_state after the write sees the new value"))

    st = uniform(f"twice{m.sfx}.s", (2, 2), dtype=F16)
    xt = m.inp(f"twice{m.sfx}.x", (2, 2))

    def write_twice(x, s):
        a = m.wr(s, mb.add(x=m.rd(s), y=x))
        b = m.wr(s, mb.mul(x=a, y=x))
        return mb.add(x=a, y=b)

    a = m.stored(st.astype(m.dt) + xt)
    b = m.stored(a.astype(m.dt) * xt)
    out.append(_case(m, "write_state", "write_twice", {"x": xt}, {"s": st}, write_twice,
                     {"y": f64(a) + f64(b)}, {"s": f64(b)},
                     "two writes in one run: the last one stays, the first is read in between"))
    return out


def _kv_cases(m: Mode) -> list[Case]:
    """A KV cache [B, H, S_max, D]: the new step's key and value written at position `pos` with
    slice_update into two states, read back (the outputs are a cache and a reduction over both)."""
    out = []
    B, H, S, D = 1, 2, 6, 4
    k0 = uniform(f"kv{m.sfx}.k", (B, H, S, D), dtype=F16)
    v0 = uniform(f"kv{m.sfx}.v", (B, H, S, D), dtype=F16)
    nk = m.inp(f"kv{m.sfx}.nk", (B, H, 1, D))
    nv = m.inp(f"kv{m.sfx}.nv", (B, H, 1, D))
    pos = np.array([3], dtype=np.int32)

    def kv(new_k, new_v, pos, k_cache, v_cache):
        zero = np.array([0], dtype=np.int32)
        begin = mb.concat(values=[zero, zero, pos, zero], axis=0)
        end = mb.concat(values=[np.array([B, H], np.int32), mb.add(x=pos, y=np.int32(1)),
                                np.array([D], np.int32)], axis=0)
        k = m.wr(k_cache, mb.slice_update(x=m.rd(k_cache), update=new_k, begin=begin, end=end))
        v = m.wr(v_cache, mb.slice_update(x=m.rd(v_cache), update=new_v, begin=begin, end=end))
        return mb.read_state(input=k_cache), mb.reduce_sum(x=mb.mul(x=k, y=v), axes=[-1])

    k1, v1 = k0.copy(), v0.copy()
    k1[:, :, 3:4, :] = nk.astype(F16)
    v1[:, :, 3:4, :] = nv.astype(F16)
    out.append(_case(m, "write_state", "kv_cache_slice_update_runtime_pos",
                     {"new_k": nk, "new_v": nv, "pos": pos}, {"k_cache": k0, "v_cache": v0}, kv,
                     {"k": f64(k1), "kv": (f64(k1) * f64(v1)).sum(-1)}, {"k_cache": f64(k1), "v_cache": f64(v1)},
                     "two caches, slice_update at a run-time position, read back"))

    # The last position with constant (negative) bounds.
    c0 = uniform(f"kv_last{m.sfx}.k", (B, H, S, D), dtype=F16)
    nc = m.inp(f"kv_last{m.sfx}.nk", (B, H, 1, D))

    def kv_last(new_k, k_cache):
        v = mb.slice_update(x=m.rd(k_cache), update=new_k, begin=[0, 0, -1, 0], end=[B, H, S, D])
        mb.coreml_update_state(state=k_cache, value=v if m.fp16 else mb.cast(x=v, dtype="fp16"))
        return mb.read_state(input=k_cache)

    c1 = c0.copy()
    c1[:, :, -1:, :] = nc.astype(F16)
    out.append(_case(m, "write_state", "kv_cache_last_position_const", {"new_k": nc}, {"k_cache": c0}, kv_last,
                     {"k": f64(c1)}, {"k_cache": f64(c1)},
                     "slice_update at constant negative begin -1, read back after the write"))
    return out


def _other_cases(m: Mode) -> list[Case]:
    out = []
    # A counter next to an untouched state and a scaled one: only the written ones change.
    c = np.array([2.0], F16)
    keep = uniform(f"multi{m.sfx}.keep", (3,), dtype=F16)
    n = uniform(f"multi{m.sfx}.n", (2, 2), dtype=F16)
    x = m.inp(f"multi{m.sfx}.x", (3,))

    def multi(x, count, keep, n):
        c1 = m.wr(count, mb.add(x=m.rd(count), y=m.c(1)))
        n1 = m.wr(n, mb.mul(x=m.rd(n), y=m.c(-2)))
        return mb.add(x=mb.mul(x=x, y=c1), y=m.rd(keep)), mb.identity(x=n1)

    out.append(_case(m, "write_state", "three_states", {"x": x}, {"count": c, "keep": keep, "n": n}, multi,
                     {"y": f64(x) * 3 + f64(keep), "m": f64(n) * -2},
                     {"count": np.array([3.0]), "keep": f64(keep), "n": f64(n) * -2},
                     "three states: a counter (+1), an untouched state, a scaled one (x-2, exact in fp16)"))

    # The counter the harness's two-run test drives: count += 1, y = x * count.
    x2 = m.inp(f"counter{m.sfx}.x", (2,))
    out.append(_case(m, "write_state", "counter", {"x": x2}, {"count": np.array([0.0], F16)},
                     lambda x, count: mb.mul(x=x, y=m.wr(count, mb.add(x=m.rd(count), y=m.c(1)))),
                     {"y": f64(x2)}, {"count": np.array([1.0])},
                     "count += 1 each run (tests/conformance.rs runs it twice with one state map)"))
    return out


def cases() -> list[Case]:
    out: list[Case] = []
    for m in (Mode(np.float32), Mode(F16)):
        out += _read_cases(m) + _write_cases(m) + _kv_cases(m) + _other_cases(m)
    return out
