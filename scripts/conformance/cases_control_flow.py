"""Cases of coremltools' control_flow.py: `select`, `cond`, `while_loop` and the list ops
(`make_list`, `list_length`, `list_read`, `list_write`, `list_gather`, `list_scatter`).
References are numpy (float64) on the stored inputs: np.where for select, and for the ops with
nested blocks the same control flow written in Python.

Programs take no rank-0 inputs (Core ML refuses them), so scalars (predicates, trip counts) come
in as shape-(1,) inputs and are squeezed; rank-0 results go out through expand_dims."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, bools, f64, ints, uniform

FAM = "control_flow"


def select_cases() -> list[Case]:
    out: list[Case] = []
    for tag, (cs, a_s, b_s) in {"same": ((2, 3), (2, 3), (2, 3)), "bcast": ((2, 1), (1, 3), (2, 3)),
                                "cond_bcast": ((3,), (2, 3), (2, 1))}.items():
        c = bools(f"{FAM}/select/{tag}/c", cs)
        a = uniform(f"{FAM}/select/{tag}/a", a_s)
        b = uniform(f"{FAM}/select/{tag}/b", b_s)
        out.append(Case(FAM, "select", f"select_{tag}", {"cond": c, "a": a, "b": b},
                        lambda cond, a, b: mb.select(cond=cond, a=a, b=b), {"y": np.where(c, f64(a), f64(b))}))
    c = bools(f"{FAM}/select/int/c", (2, 3))
    a, b = ints(f"{FAM}/select/int/a", (2, 3)), ints(f"{FAM}/select/int/b", (2, 3))
    out.append(Case(FAM, "select", "select_int32", {"cond": c, "a": a, "b": b},
                    lambda cond, a, b: mb.select(cond=cond, a=a, b=b), {"y": np.where(c, a, b).astype(np.int32)}))
    ab, bb = bools(f"{FAM}/select/bool/a", (2, 3)), bools(f"{FAM}/select/bool/b", (2, 3))
    out.append(Case(FAM, "select", "select_bool", {"cond": c, "a": ab, "b": bb},
                    lambda cond, a, b: mb.select(cond=cond, a=a, b=b), {"y": np.where(c, ab, bb)}))
    a16, b16 = a.astype(np.float16), b.astype(np.float16) / np.float16(3)
    out.append(Case(FAM, "select", "select_fp16", {"cond": c, "a": a16, "b": b16},
                    lambda cond, a, b: mb.select(cond=cond, a=a, b=b), {"y": np.where(c, f64(a16), f64(b16))},
                    opset="iOS16", precision="fp16"))
    return out


def scalar(v):
    """A shape-(1,) program input's scalar."""
    return mb.squeeze(x=v)


def out1(v):
    """A rank-0 result as shape (1,)."""
    return mb.expand_dims(x=v, axes=[0])


def cond_cases() -> list[Case]:
    out: list[Case] = []
    x = uniform(f"{FAM}/cond/x", (2, 3))
    y = uniform(f"{FAM}/cond/y", (3,))

    def two_outputs(x, y, p):
        return mb.cond(pred=scalar(p),
                       _true_fn=lambda: (mb.mul(x=x, y=2.0), mb.add(x=x, y=y)),
                       _false_fn=lambda: (mb.sub(x=mb.mul(x=x, y=x), y=1.0), x))

    for val in (True, False):
        p = np.array([val])
        a = f64(x) * 2 if val else f64(x) ** 2 - 1
        b = f64(x) + f64(y) if val else f64(x)
        out.append(Case(FAM, "cond", f"cond_runtime_{str(val).lower()}", {"x": x, "y": y, "p": p}, two_outputs,
                        {"a": a, "b": b}, note="run-time predicate; two outputs; a branch returning a program "
                        "input as is"))
    # Data-dependent predicate, outputs of a different shape than the inputs.
    for tag, xs in (("pos", np.abs(x)), ("neg", -np.abs(x))):
        ref = f64(xs).sum(axis=0) if tag == "pos" else f64(xs).max(axis=0)
        out.append(Case(FAM, "cond", f"cond_data_pred_{tag}", {"x": xs},
                        lambda x: mb.cond(pred=mb.greater(x=mb.reduce_sum(x=x), y=0.0),
                                          _true_fn=lambda: mb.reduce_sum(x=x, axes=[0]),
                                          _false_fn=lambda: mb.reduce_max(x=x, axes=[0])),
                        {"y": ref}, note="predicate computed from the input; outputs of another shape than it"))
    # Constant predicates: the branch is chosen when the plan is built.
    for val in (True, False):
        out.append(Case(FAM, "cond", f"cond_const_{str(val).lower()}", {"x": x},
                        lambda x, val=val: mb.cond(pred=val, _true_fn=lambda: mb.relu(x=x),
                                                   _false_fn=lambda: mb.sigmoid(x=x)),
                        {"y": np.maximum(f64(x), 0) if val else 1 / (1 + np.exp(-f64(x)))},
                        note="constant predicate"))
    # A branch returning a constant; int32 outputs.
    k = ints(f"{FAM}/cond/k", (4,))
    for val in (True, False):
        out.append(Case(FAM, "cond", f"cond_int32_const_branch_{str(val).lower()}", {"k": k, "p": np.array([val])},
                        lambda k, p: mb.cond(pred=scalar(p), _true_fn=lambda: mb.add(x=k, y=np.int32(3)),
                                             _false_fn=lambda: mb.const(val=np.arange(4, dtype=np.int32))),
                        {"y": (k + 3).astype(np.int32) if val else np.arange(4, dtype=np.int32)},
                        note="int32; one branch is a constant"))
    # Nested cond.
    for a_, b_ in ((True, False), (False, True), (False, False)):
        ref = f64(x) + 1 if a_ else (f64(x) * 3 if b_ else -f64(x))
        out.append(Case(FAM, "cond", f"cond_nested_{int(a_)}{int(b_)}",
                        {"x": x, "p": np.array([a_]), "q": np.array([b_])},
                        lambda x, p, q: mb.cond(pred=scalar(p), _true_fn=lambda: mb.add(x=x, y=1.0),
                                                _false_fn=lambda: mb.cond(pred=scalar(q),
                                                                          _true_fn=lambda: mb.mul(x=x, y=3.0),
                                                                          _false_fn=lambda: mb.mul(x=x, y=-1.0))),
                        {"y": ref}, note="a cond inside a branch of a cond"))
    out.append(Case(FAM, "cond", "cond_runtime_true_ios18", {"x": x, "y": y, "p": np.array([True])}, two_outputs,
                    {"a": f64(x) * 2, "b": f64(x) + f64(y)}, opset="iOS18",
                    note="the iOS15 definition under a later deployment target"))
    # fp16.
    x16 = x.astype(np.float16)
    for val in (True, False):
        p = np.array([val])
        out.append(Case(FAM, "cond", f"cond_fp16_{str(val).lower()}", {"x": x16, "p": p},
                        lambda x, p: mb.cond(pred=scalar(p), _true_fn=lambda: mb.mul(x=x, y=np.float16(2)),
                                             _false_fn=lambda: mb.add(x=x, y=np.float16(1))),
                        {"y": f64(x16) * 2 if val else f64(x16) + 1}, opset="iOS16", precision="fp16"))
    return out


def while_cases() -> list[Case]:
    out: list[Case] = []
    x = uniform(f"{FAM}/while/x", (2, 3), -1.0, 1.0)

    def counted(x, n):
        # acc += x * (i + 1) for i in range(n)
        n = scalar(n)
        i, acc = mb.while_loop(
            _cond=lambda i, acc: mb.less(x=i, y=n),
            _body=lambda i, acc: (mb.add(x=i, y=1),
                                  mb.add(x=acc, y=mb.mul(x=x, y=mb.cast(x=mb.add(x=i, y=1), dtype="fp32")))),
            loop_vars=(np.int32(0), mb.mul(x=x, y=0.0)))
        return out1(i), acc

    for n in (0, 1, 5):
        acc = sum(f64(x) * (i + 1) for i in range(n)) if n else np.zeros((2, 3))
        out.append(Case(FAM, "while_loop", f"while_counted_{n}", {"x": x, "n": np.array([n], np.int32)}, counted,
                        {"i": np.array([n], np.int32), "acc": acc},
                        note="int32 counter against a run-time trip count; body reads an outer value"
                        + ("; zero trips: outputs are the initial values" if n == 0 else "")))

    def const_trips(x):
        return mb.while_loop(_cond=lambda i, v: mb.less(x=i, y=np.int32(4)),
                             _body=lambda i, v: (mb.add(x=i, y=1), mb.sub(x=mb.mul(x=v, y=0.5), y=1.0)),
                             loop_vars=(np.int32(0), x))[1]

    v = f64(x)
    for _ in range(4):
        v = v * 0.5 - 1
    out.append(Case(FAM, "while_loop", "while_const_trips", {"x": x}, const_trips, {"y": v},
                    note="constant trip count, a program input as a loop var"))

    def fib(n, a0, b0):
        n = scalar(n)
        _, a, b = mb.while_loop(_cond=lambda i, a, b: mb.less(x=i, y=n),
                                _body=lambda i, a, b: (mb.add(x=i, y=1), b, mb.add(x=a, y=b)),
                                loop_vars=(np.int32(0), scalar(a0), scalar(b0)))
        return out1(a), out1(b)

    a, b = 0, 1
    for _ in range(10):
        a, b = b, a + b
    out.append(Case(FAM, "while_loop", "while_fib_int32",
                    {"n": np.array([10], np.int32), "a0": np.array([0], np.int32), "b0": np.array([1], np.int32)}, fib,
                    {"a": np.array([a], np.int32), "b": np.array([b], np.int32)},
                    note="int32 loop vars; the body passes a loop var through to another position"))

    def passthrough(x, n):
        n = scalar(n)
        _, keep, s = mb.while_loop(_cond=lambda i, k, s: mb.less(x=i, y=n),
                                   _body=lambda i, k, s: (mb.add(x=i, y=1), k, mb.add(x=s, y=k)),
                                   loop_vars=(np.int32(0), x, mb.mul(x=x, y=0.0)))
        return keep, s

    out.append(Case(FAM, "while_loop", "while_passthrough", {"x": x, "n": np.array([3], np.int32)}, passthrough,
                    {"k": f64(x), "s": 3 * f64(x)}, note="a loop var returned unchanged by the body"))

    def data_cond(x):
        # Doubles x until its absolute sum passes 50.
        return mb.while_loop(_cond=lambda v: mb.less(x=mb.reduce_sum(x=mb.abs(x=v)), y=50.0),
                             _body=lambda v: mb.mul(x=v, y=2.0), loop_vars=(x,))

    v = f64(x)
    while np.abs(v).sum() < 50:
        v = v * 2
    out.append(Case(FAM, "while_loop", "while_data_cond", {"x": x}, data_cond, {"y": v},
                    note="one loop var; the condition is computed from the loop var"))

    def nested_cond(x, n):
        n = scalar(n)

        def body(i, v):
            even = mb.equal(x=mb.mod(x=i, y=2), y=0)
            v2 = mb.cond(pred=even, _true_fn=lambda: mb.add(x=v, y=x), _false_fn=lambda: mb.mul(x=v, y=-1.0))
            return mb.add(x=i, y=1), v2

        return mb.while_loop(_cond=lambda i, v: mb.less(x=i, y=n), _body=body, loop_vars=(np.int32(0), x))[1]

    v = f64(x)
    for i in range(5):
        v = v + f64(x) if i % 2 == 0 else -v
    out.append(Case(FAM, "while_loop", "while_nested_cond", {"x": x, "n": np.array([5], np.int32)}, nested_cond,
                    {"y": v}, note="a cond inside the body, its branches reading a loop var and an outer value"))

    def nested_while(n, z):
        n, z = scalar(n), scalar(z)

        def body(i, s):
            _, s2 = mb.while_loop(_cond=lambda j, t: mb.less(x=j, y=i),
                                  _body=lambda j, t: (mb.add(x=j, y=1), mb.add(x=t, y=j)), loop_vars=(z, s))
            return mb.add(x=i, y=1), s2

        return out1(mb.while_loop(_cond=lambda i, s: mb.less(x=i, y=n), _body=body,
                                  loop_vars=(z, z))[1])

    s = sum(j for i in range(6) for j in range(i))
    out.append(Case(FAM, "while_loop", "while_nested_while",
                    {"n": np.array([6], np.int32), "z": np.array([0], np.int32)}, nested_while,
                    {"s": np.array([s], np.int32)}, note="a while_loop in the body of another, inner trip count "
                    "read from the outer loop var (0 trips on the first pass); initial values come in as an input "
                    "(coremltools refuses constant initial values of a nested loop whose values change)"))

    # Later opsets: control_flow.py is defined once (iOS15) and carries over unchanged.
    for opset in ("iOS17", "iOS18"):
        out.append(Case(FAM, "while_loop", f"while_counted_{opset.lower()}", {"x": x, "n": np.array([3], np.int32)},
                        counted, {"i": np.array([3], np.int32), "acc": sum(f64(x) * (i + 1) for i in range(3))},
                        opset=opset, note="the iOS15 definition under a later deployment target"))

    x16 = x.astype(np.float16)

    def counted16(x, n):
        n = scalar(n)
        return mb.while_loop(_cond=lambda i, v: mb.less(x=i, y=n),
                             _body=lambda i, v: (mb.add(x=i, y=1), mb.add(x=mb.mul(x=v, y=np.float16(0.5)), y=x)),
                             loop_vars=(np.int32(0), x))[1]

    v = f64(x16)
    for _ in range(4):
        v = v * 0.5 + f64(x16)
    out.append(Case(FAM, "while_loop", "while_counted_fp16", {"x": x16, "n": np.array([4], np.int32)}, counted16,
                    {"y": v}, opset="iOS16", precision="fp16"))
    return out


def list_cases() -> list[Case]:
    out: list[Case] = []
    x = uniform(f"{FAM}/list/x", (2, 3), -1.0, 1.0)

    def rows(x, n, dynamic, init):
        # ls[i] = x * i for i in range(n), written inside a while_loop; then gathered.
        n_s = scalar(n)
        ls = mb.make_list(init_length=init, dynamic_length=dynamic, elem_shape=[2, 3], dtype="fp32")

        def body(i, ls):
            v = mb.mul(x=x, y=mb.cast(x=i, dtype="fp32"))
            return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=v)

        _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=n_s), _body=body, loop_vars=(np.int32(0), ls))
        return mb.list_gather(ls=ls, indices=[0, 2, 1]), out1(mb.list_length(ls=ls))

    ref = np.stack([f64(x) * i for i in (0, 2, 1)])
    out.append(Case(FAM, "list_write", "list_write_in_loop_fixed", {"x": x, "n": np.array([4], np.int32)},
                    lambda x, n: rows(x, n, False, 4), {"g": ref, "len": np.array([4], np.int32)},
                    note="fixed-length list (init_length 4) written in a while_loop body, then gathered"))
    out.append(Case(FAM, "list_gather", "list_gather_dynamic", {"x": x, "n": np.array([5], np.int32)},
                    lambda x, n: rows(x, n, True, 1), {"g": ref, "len": np.array([5], np.int32)},
                    note="dynamic list grown from length 1 by writes in a loop; gather in a different order"))
    out.append(Case(FAM, "list_length", "list_length_grown", {"x": x, "n": np.array([7], np.int32)},
                    lambda x, n: rows(x, n, True, 2), {"g": ref, "len": np.array([7], np.int32)},
                    note="length after a loop that grew the list"))

    def length_init(n):
        return out1(mb.list_length(ls=mb.make_list(init_length=scalar(n), elem_shape=[3], dtype="fp32")))

    out.append(Case(FAM, "make_list", "make_list_runtime_init_length", {"n": np.array([6], np.int32)},
                    length_init, {"len": np.array([6], np.int32)}, note="init_length computed at run time"))

    def read_prev(x, n):
        # Running sum kept in a list: ls[i] = ls[i-1] + x, read back inside the loop.
        n_s = scalar(n)
        ls = mb.make_list(init_length=1, elem_shape=[2, 3], dtype="fp32")
        ls = mb.list_write(ls=ls, index=0, value=x)

        def body(i, ls):
            prev = mb.list_read(ls=ls, index=mb.sub(x=i, y=1))
            return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=mb.add(x=prev, y=x))

        _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=n_s), _body=body, loop_vars=(np.int32(1), ls))
        return mb.list_read(ls=ls, index=mb.sub(x=n_s, y=1))

    out.append(Case(FAM, "list_read", "list_read_in_loop", {"x": x, "n": np.array([4], np.int32)}, read_prev,
                    {"y": 4 * f64(x)}, note="list_read of the previous element inside the loop body"))

    def scatter(v, idx):
        ls = mb.make_list(init_length=4, dynamic_length=False, elem_shape=[3], dtype="fp32")
        ls = mb.list_scatter(ls=ls, indices=idx, value=v)
        return mb.list_gather(ls=ls, indices=[1, 3]), mb.list_read(ls=ls, index=0)

    v = uniform(f"{FAM}/list/scatter", (2, 3))
    out.append(Case(FAM, "list_scatter", "list_scatter_gather", {"v": v, "idx": np.array([3, 1], np.int32)},
                    scatter, {"g": np.stack([f64(v)[1], f64(v)[0]]), "r": np.zeros(3)},
                    note="scatter to run-time indices; element 0 never written reads as zeros"))

    def scatter_grow(v):
        ls = mb.make_list(init_length=1, elem_shape=[3], dtype="fp32")
        ls = mb.list_scatter(ls=ls, indices=[4, 2], value=v)
        return mb.list_gather(ls=ls, indices=[2, 4]), out1(mb.list_length(ls=ls))

    out.append(Case(FAM, "list_scatter", "list_scatter_grows", {"v": v}, scatter_grow,
                    {"g": np.stack([f64(v)[1], f64(v)[0]]), "len": np.array([5], np.int32)},
                    note="scatter past the end of a dynamic list grows it"))

    def symbolic(x, n):
        n_s = scalar(n)
        ls = mb.make_list(init_length=1, elem_shape=["s0", "s1"], dtype="fp32")

        def body(i, ls):
            return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=mb.add(x=x, y=mb.cast(x=i, dtype="fp32")))

        _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=n_s), _body=body, loop_vars=(np.int32(0), ls))
        return mb.list_gather(ls=ls, indices=[2, 0])

    out.append(Case(FAM, "make_list", "make_list_symbolic_shape", {"x": x, "n": np.array([3], np.int32)}, symbolic,
                    {"g": np.stack([f64(x) + 2, f64(x)])}, note="elem_shape given as symbols: the first write "
                    "fixes it"))

    k = ints(f"{FAM}/list/k", (2,))

    def int_list(k, n):
        n_s = scalar(n)
        ls = mb.make_list(init_length=0, elem_shape=[2], dtype="int32")

        def body(i, ls):
            return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=mb.mul(x=k, y=i))

        _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=n_s), _body=body, loop_vars=(np.int32(0), ls))
        return mb.list_gather(ls=ls, indices=[0, 1, 2])

    out.append(Case(FAM, "list_gather", "list_gather_int32", {"k": k, "n": np.array([3], np.int32)}, int_list,
                    {"g": np.stack([k * i for i in range(3)]).astype(np.int32)},
                    note="int32 list starting empty (init_length 0)"))

    x16 = x.astype(np.float16)

    def fp16_list(x, n):
        n_s = scalar(n)
        ls = mb.make_list(init_length=3, dynamic_length=False, elem_shape=[2, 3], dtype="fp16")

        def body(i, ls):
            v = mb.mul(x=x, y=mb.cast(x=i, dtype="fp16"))
            return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=v)

        _, ls = mb.while_loop(_cond=lambda i, ls: mb.less(x=i, y=n_s), _body=body, loop_vars=(np.int32(0), ls))
        return mb.list_gather(ls=ls, indices=[2, 1])

    bx = bools(f"{FAM}/list/bool", (2, 3))

    def bool_list(b, n):
        n_s = scalar(n)
        ls = mb.make_list(init_length=1, elem_shape=[2, 3], dtype="bool")

        def body(i, ls, v):
            return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=v), mb.logical_not(x=v)

        _, ls, _ = mb.while_loop(_cond=lambda i, ls, v: mb.less(x=i, y=n_s), _body=body,
                                 loop_vars=(np.int32(0), ls, b))
        return mb.list_gather(ls=ls, indices=[0, 1, 2])

    out.append(Case(FAM, "list_write", "list_write_bool", {"b": bx, "n": np.array([3], np.int32)}, bool_list,
                    {"g": np.stack([bx, ~bx, bx])}, note="bool list; a bool loop var"))

    def list_through_cond(x, p):
        ls = mb.make_list(init_length=2, dynamic_length=False, elem_shape=[2, 3], dtype="fp32")
        ls = mb.list_write(ls=ls, index=0, value=x)
        ls = mb.cond(pred=scalar(p), _true_fn=lambda: mb.list_write(ls=ls, index=1, value=mb.mul(x=x, y=2.0)),
                     _false_fn=lambda: mb.list_write(ls=ls, index=1, value=mb.mul(x=x, y=-1.0)))
        return mb.list_read(ls=ls, index=1), mb.list_read(ls=ls, index=0)

    for val in (True, False):
        out.append(Case(FAM, "list_read", f"list_through_cond_{str(val).lower()}", {"x": x, "p": np.array([val])},
                        list_through_cond, {"r1": f64(x) * (2 if val else -1), "r0": f64(x)},
                        note="a list as a cond output: each branch writes its own element; the list "
                        "before the cond is still read afterwards (copy on write)"))

    out.append(Case(FAM, "list_write", "list_write_fp16", {"x": x16, "n": np.array([3], np.int32)}, fp16_list,
                    {"g": np.stack([f64(x16) * 2, f64(x16)])}, opset="iOS16", precision="fp16"))
    return out


def cases() -> list[Case]:
    return select_cases() + cond_cases() + while_cases() + list_cases()
