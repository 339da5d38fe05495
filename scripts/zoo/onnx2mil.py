"""ONNX -> ML Program converter of our own (coremltools 9 has no ONNX frontend; no torch here).

    from onnx2mil import convert
    mlmodel, io = convert("model.onnx", {"x": (1, 3, 64, 256)}, target="iOS15")

Walks the ONNX graph with the `onnx` package and emits coremltools `mb` ops. Input shapes are fixed
at conversion time, so every tensor has a static shape and whatever the ONNX graph computes about
shapes (Shape -> Gather/Slice -> Concat -> Reshape chains) is folded to constants here with numpy:
a value is either a numpy constant (known at conversion) or an `mb` Var. An op whose inputs are all
constants is evaluated in numpy and never reaches the program.

Refuses what it does not know: an unknown ONNX op, or a known op with an attribute value it does
not implement, raises `Unsupported` naming the node, its op type and the offending attribute.
Nothing is approximated silently.

Conventions: ONNX int64 becomes MIL int32 (shape arithmetic is folded anyway); float tensors are
fp32 in the program (compute precision is ct.convert's business). Output names are sanitised to
MIL identifiers; `io` maps ONNX names to program names.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["Unsupported", "convert", "build_program"]


class Unsupported(Exception):
    """An ONNX node this converter cannot express faithfully."""


def _san(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else "v_" + s


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


class _Ctx:
    def __init__(self, mb, types, opset: int, int4_block: int | None = None):
        self.mb, self.types, self.opset = mb, types, opset
        self.vals: dict[str, object] = {}
        self.names: set[str] = set()
        self.int4_block = int4_block
        self.dequantized: dict[str, np.ndarray] = {}  # initializer name -> the weight the program holds

    def conv_weight(self, node, onnx_name: str, w: np.ndarray):
        """A conv weight: the fp32 constant, or with int4 compression on (iOS18) a
        constexpr_blockwise_shift_scale over symmetric int4 blocks along the input channels (the
        whole axis when its size is not a multiple of the block), one scale per (output channel,
        block). The dequantized weight is recorded so the reference runs on exactly it."""
        w = np.asarray(w, np.float32)
        if self.int4_block is None:
            return w
        if onnx_name in self.dequantized:
            self.fail(node, f"weight {onnx_name} is used twice under int4 compression")
        cout, cin = w.shape[:2]
        b = self.int4_block if cin % self.int4_block == 0 else cin
        blocks = w.reshape(cout, cin // b, b, *w.shape[2:])
        amax = np.abs(blocks).max(axis=tuple(range(2, blocks.ndim)), keepdims=True)
        scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
        q = np.clip(np.round(blocks / scale), -8, 7).astype(np.int8)
        self.dequantized[onnx_name] = (q.astype(np.float32) * scale).reshape(w.shape)
        scale_shape = (cout, cin // b) + (1,) * (w.ndim - 2)
        return self.mb.constexpr_blockwise_shift_scale(
            data=q.reshape(w.shape).astype(self.types.np_int4_dtype), scale=scale.reshape(scale_shape),
            name=self.name(onnx_name + "_int4"))

    def fail(self, node, what: str):
        raise Unsupported(f"ONNX node '{node.name or node.output[0]}' ({node.op_type}): {what}")

    def name(self, raw: str) -> str:
        base = _san(raw)
        n, i = base, 1
        while n in self.names:
            n, i = f"{base}_{i}", i + 1
        self.names.add(n)
        return n

    def get(self, name: str):
        if name == "":
            return None
        if name not in self.vals:
            raise Unsupported(f"tensor '{name}' is used before it is defined")
        return self.vals[name]

    @staticmethod
    def is_const(v) -> bool:
        return isinstance(v, np.ndarray)

    def shape(self, v) -> tuple:
        if self.is_const(v):
            return tuple(v.shape)
        shp = tuple(v.shape)
        if any(not isinstance(d, (int, np.integer)) for d in shp):
            raise Unsupported(f"{v.name} has a symbolic shape {shp}: fix the input shapes")
        return tuple(int(d) for d in shp)

    def var(self, v):
        """A constant as something an mb op accepts (float64 -> fp32, int64 -> int32)."""
        if self.is_const(v):
            if v.dtype in (np.float64, np.float16):
                return v.astype(np.float32)
            if v.dtype == np.int64:
                return v.astype(np.int32)
            return v
        return v


def _ints(v) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


# ---------------------------------------------------------------------------------------------
# numpy evaluation of nodes whose inputs are all constants (shape subgraphs)


def _np_slice(x, starts, ends, axes, steps):
    axes = list(range(len(starts))) if axes is None else [a % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    sl = [slice(None)] * x.ndim
    for a, b, e, s in zip(axes, starts, ends, steps):
        sl[a] = slice(int(max(min(b, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)), int(s))
    return x[tuple(sl)]


def _reshape_target(in_shape, target, allowzero=0):
    t = list(_ints(target))
    for i, d in enumerate(t):
        if d == 0 and not allowzero:
            t[i] = in_shape[i]
    if -1 in t:
        known = int(np.prod([d for d in t if d != -1]))
        t[t.index(-1)] = int(np.prod(in_shape)) // known
    return t


_ONNX_NP = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}
_MIL_DT = {1: "fp32", 6: "int32", 7: "int32", 9: "bool", 10: "fp16"}


def _fold(node, ins, a):
    op = node.op_type
    x = ins[0] if ins else None
    if op == "Shape":
        return np.array(x.shape, np.int64)
    if op == "Cast":
        return x.astype(_ONNX_NP[a["to"]])
    if op in ("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "Max", "Min"):
        f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power, "Equal": np.equal,
             "Less": np.less, "Greater": np.greater, "Max": np.maximum, "Min": np.minimum}.get(op)
        if op == "Div":
            return (x // ins[1]) if np.issubdtype(x.dtype, np.integer) else (x / ins[1]).astype(x.dtype)
        return f(x, ins[1]).astype(x.dtype if op not in ("Equal", "Less", "Greater") else np.bool_)
    if op == "Slice":
        if len(ins) == 1:  # opset < 10: attributes
            return _np_slice(x, a["starts"], a["ends"], a.get("axes"), None)
        return _np_slice(x, _ints(ins[1]), _ints(ins[2]), _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None,
                         _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None)
    if op == "Concat":
        return np.concatenate(ins, axis=a["axis"])
    if op == "Gather":
        return np.take(x, ins[1], axis=a.get("axis", 0))
    if op == "Unsqueeze":
        axes = a["axes"] if "axes" in a else _ints(ins[1])
        for ax in sorted(ax % (x.ndim + len(axes)) for ax in axes):
            x = np.expand_dims(x, ax)
        return x
    if op == "Squeeze":
        axes = a.get("axes") if "axes" in a else (_ints(ins[1]) if len(ins) > 1 else None)
        return np.squeeze(x, axis=tuple(axes) if axes is not None else None)
    if op == "Reshape":
        return x.reshape(_reshape_target(x.shape, ins[1], a.get("allowzero", 0)))
    if op == "Identity":
        return x
    if op == "Size":
        return np.array(x.size, np.int64)
    if op == "Not":
        return np.logical_not(x)
    if op == "ConstantOfShape":
        v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
        return np.full(_ints(x), v.reshape(-1)[0], v.dtype)
    if op == "Range":
        return np.arange(x, ins[1], ins[2]).astype(x.dtype)
    if op == "Expand":
        return x * np.ones(_ints(ins[1]), x.dtype)  # ONNX Expand broadcasts both ways
    if op == "Transpose":
        return np.transpose(x, a.get("perm"))
    if op == "Sqrt":
        return np.sqrt(x)
    if op == "Neg":
        return -x
    return None


# ---------------------------------------------------------------------------------------------
# node -> mb ops


def _conv_pads(node, a, ctx, rank):
    if _s(a.get("auto_pad", "NOTSET")) not in ("NOTSET", ""):
        ctx.fail(node, f"auto_pad={_s(a['auto_pad'])!r} is not supported (only explicit pads)")
    p = list(a.get("pads", [0] * (2 * rank)))
    # ONNX: [x1_begin, x2_begin, ..., x1_end, x2_end]; MIL: [x1_begin, x1_end, x2_begin, x2_end].
    return [v for i in range(rank) for v in (p[i], p[i + rank])]


def _emit(ctx: _Ctx, node):
    mb = ctx.mb
    a = _attrs(node)
    op = node.op_type
    ins = [ctx.get(n) for n in node.input]
    out = node.output[0]
    nm = ctx.name(out)

    if op == "Constant":
        if "value" not in a:
            ctx.fail(node, f"only the 'value' attribute is supported, got {sorted(a)}")
        return numpy_helper.to_array(a["value"])

    if ins and all(v is None or ctx.is_const(v) for v in ins):
        folded = _fold(node, [v for v in ins], a)
        if folded is not None:
            return np.asarray(folded)

    x = ins[0] if ins else None
    V = ctx.var

    if op == "Identity":
        return x
    if op == "Shape":  # static shapes: the shape is known here
        return np.array(ctx.shape(x), np.int64)
    if op == "Size":
        return np.array(int(np.prod(ctx.shape(x))), np.int64)
    if op in ("Equal", "Less", "Greater"):
        f = {"Equal": mb.equal, "Less": mb.less, "Greater": mb.greater}[op]
        return f(x=V(x), y=V(ins[1]), name=nm)
    if op == "Not":
        return mb.logical_not(x=x, name=nm)
    if op == "If":
        return _if(ctx, node, a, x, nm)
    if op in ("Add", "Sub", "Mul", "Div", "Pow"):
        f = {"Add": mb.add, "Sub": mb.sub, "Mul": mb.mul, "Div": mb.real_div, "Pow": mb.pow}[op]
        return f(x=V(x), y=V(ins[1]), name=nm)
    if op == "Relu":
        return mb.relu(x=x, name=nm)
    if op == "Sigmoid":
        return mb.sigmoid(x=x, name=nm)
    if op == "Tanh":
        return mb.tanh(x=x, name=nm)
    if op == "Sqrt":
        return mb.sqrt(x=x, name=nm)
    if op == "Exp":
        return mb.exp(x=x, name=nm)
    if op == "Erf":
        return mb.erf(x=x, name=nm)
    if op == "Neg":
        return mb.mul(x=x, y=np.float32(-1), name=nm)
    if op == "HardSigmoid":
        return mb.sigmoid_hard(x=x, alpha=np.float32(a.get("alpha", 0.2)), beta=np.float32(a.get("beta", 0.5)), name=nm)
    if op == "HardSwish":
        # x * hardsigmoid(x; 1/6, 1/2): MIL has no hard-swish op (coremltools' own frontends decompose it too).
        hs = mb.sigmoid_hard(x=x, alpha=np.float32(1.0 / 6.0), beta=np.float32(0.5), name=ctx.name(nm + "_hsig"))
        return mb.mul(x=x, y=hs, name=nm)
    if op == "LeakyRelu":
        return mb.leaky_relu(x=x, alpha=np.float32(a.get("alpha", 0.01)), name=nm)
    if op == "Clip":
        lo = a.get("min") if ctx.opset < 11 else (ins[1] if len(ins) > 1 else None)
        hi = a.get("max") if ctx.opset < 11 else (ins[2] if len(ins) > 2 else None)
        if lo is not None and not ctx.is_const(lo) or hi is not None and not ctx.is_const(hi):
            ctx.fail(node, "min/max must be constants")
        lo = np.float32(-3.4e38 if lo is None else np.asarray(lo).reshape(()))
        hi = np.float32(3.4e38 if hi is None else np.asarray(hi).reshape(()))
        if lo == 0 and hi >= 3.4e38:
            return mb.relu(x=x, name=nm)
        return mb.clip(x=x, alpha=lo, beta=hi, name=nm)
    if op == "Softmax":
        rank = len(ctx.shape(x))
        axis = a.get("axis", 1 if ctx.opset < 13 else -1) % rank
        # Before opset 13 Softmax flattens to 2-D at `axis`: the same as MIL's softmax only on the last axis.
        if ctx.opset < 13 and axis != rank - 1:
            ctx.fail(node, f"axis={axis} of a rank-{rank} input under opset {ctx.opset} (2-D coercion) is not supported")
        return mb.softmax(x=x, axis=axis, name=nm)

    if op == "Conv":
        w, b = ins[1], ins[2] if len(ins) > 2 else None
        if not ctx.is_const(w) or (b is not None and not ctx.is_const(b)):
            ctx.fail(node, "weight and bias must be constants")
        rank = w.ndim - 2
        return mb.conv(x=x, weight=ctx.conv_weight(node, node.input[1], w), bias=None if b is None else V(b), strides=a.get("strides", [1] * rank),
                       pad_type="custom", pad=_conv_pads(node, a, ctx, rank), dilations=a.get("dilations", [1] * rank),
                       groups=a.get("group", 1), name=nm)
    if op == "ConvTranspose":
        w, b = ins[1], ins[2] if len(ins) > 2 else None
        if not ctx.is_const(w) or (b is not None and not ctx.is_const(b)):
            ctx.fail(node, "weight and bias must be constants")
        if "output_shape" in a:
            ctx.fail(node, "output_shape is not supported")
        if any(_ints(a.get("output_padding", [0]))):
            ctx.fail(node, f"output_padding={a['output_padding']} is not supported")
        rank = w.ndim - 2
        return mb.conv_transpose(x=x, weight=V(w), bias=None if b is None else V(b),
                                 strides=a.get("strides", [1] * rank), pad_type="custom",
                                 pad=_conv_pads(node, a, ctx, rank), dilations=a.get("dilations", [1] * rank),
                                 groups=a.get("group", 1), name=nm)
    if op == "BatchNormalization":
        if len(node.output) > 1 and any(node.output[1:]):
            ctx.fail(node, "training-mode outputs are not supported")
        return mb.batch_norm(x=x, gamma=V(ins[1]), beta=V(ins[2]), mean=V(ins[3]), variance=V(ins[4]),
                             epsilon=np.float32(a.get("epsilon", 1e-5)), name=nm)
    if op == "GlobalAveragePool":
        rank = len(ctx.shape(x))
        return mb.reduce_mean(x=x, axes=list(range(2, rank)), keep_dims=True, name=nm)
    if op in ("AveragePool", "MaxPool"):
        if len(node.output) > 1 and any(node.output[1:]):
            ctx.fail(node, "the Indices output is not supported")
        if any(d != 1 for d in a.get("dilations", [1])):
            ctx.fail(node, f"dilations={a['dilations']} is not supported")
        if a.get("storage_order", 0):
            ctx.fail(node, "storage_order=1 is not supported")
        k = list(a["kernel_shape"])
        kw = dict(x=x, kernel_sizes=k, strides=a.get("strides", [1] * len(k)), pad_type="custom",
                  pad=_conv_pads(node, a, ctx, len(k)), ceil_mode=bool(a.get("ceil_mode", 0)), name=nm)
        if op == "MaxPool":
            return mb.max_pool(**kw)
        return mb.avg_pool(exclude_padding_from_average=not a.get("count_include_pad", 0), **kw)
    if op == "Resize":
        mode = _s(a.get("mode", "nearest"))
        ctm = _s(a.get("coordinate_transformation_mode", "half_pixel"))
        shp = ctx.shape(x)
        scales = ins[2] if len(ins) > 2 else None
        sizes = ins[3] if len(ins) > 3 else None
        if scales is not None and scales.size:
            sc = [float(s) for s in scales]
        elif sizes is not None and sizes.size:
            sc = [o / i for o, i in zip(_ints(sizes), shp)]
        else:
            ctx.fail(node, "needs constant scales or sizes")
        if len(shp) != 4 or sc[0] != 1 or sc[1] != 1:
            ctx.fail(node, f"only spatial resizing of rank-4 inputs is supported (scales {sc})")
        if mode == "nearest":
            nmode = _s(a.get("nearest_mode", "round_prefer_floor"))
            if ctm != "asymmetric" or nmode != "floor" or any(s != int(s) for s in sc[2:]):
                ctx.fail(node, f"nearest resize with coordinate_transformation_mode={ctm!r}, nearest_mode={nmode!r}, "
                               f"scales {sc[2:]}: only asymmetric/floor with integer scales is supported")
            return mb.upsample_nearest_neighbor(x=x, scale_factor_height=int(sc[2]), scale_factor_width=int(sc[3]),
                                                name=nm)
        if mode == "linear":
            # Exact output sizes (ONNX: floor(in * scale), or the sizes given) with resize_bilinear's
            # sampling modes: half_pixel (and pytorch_half_pixel, the same unless an output is 1)
            # is UNALIGN_CORNERS, align_corners is STRICT_ALIGN_CORNERS, asymmetric is DEFAULT
            # (coremltools' grid i * in / out). Half-pixel and asymmetric grids use ONNX's scale, so
            # an explicit scale must be out / in exactly.
            if a.get("antialias", 0) or _s(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
                ctx.fail(node, "linear resize with antialias or keep_aspect_ratio_policy is not supported")
            modes = {"half_pixel": "UNALIGN_CORNERS", "pytorch_half_pixel": "UNALIGN_CORNERS",
                     "align_corners": "STRICT_ALIGN_CORNERS", "asymmetric": "DEFAULT"}
            if ctm not in modes:
                ctx.fail(node, f"linear resize with coordinate_transformation_mode={ctm!r} is not supported")
            if sizes is not None and sizes.size:
                out = _ints(sizes)[2:]
            else:
                out = [int(np.floor(i * s + 1e-9)) for i, s in zip(shp[2:], sc[2:])]
            if min(out) < 1 or (min(out) == 1 and ctm in ("align_corners", "pytorch_half_pixel")):
                ctx.fail(node, f"linear resize to {out} with coordinate_transformation_mode={ctm!r} is not supported")
            if ctm != "align_corners" and any(abs(o / i - s) > 1e-6 * s for o, i, s in zip(out, shp[2:], sc[2:])):
                ctx.fail(node, f"linear resize with coordinate_transformation_mode={ctm!r} and scales {sc[2:]} "
                               f"that are not output/input sizes ({out} from {shp[2:]}) is not supported")
            return mb.resize_bilinear(x=x, target_size_height=out[0], target_size_width=out[1],
                                      sampling_mode=modes[ctm], name=nm)
        ctx.fail(node, f"mode={mode!r} is not supported")

    if op == "Concat":
        vals = [V(v) for v in ins]
        return mb.concat(values=vals, axis=a["axis"], name=nm)
    if op == "Cast":
        to = a["to"]
        if to not in _MIL_DT:
            ctx.fail(node, f"to={to} is not supported")
        return mb.cast(x=x, dtype=_MIL_DT[to], name=nm)
    if op == "Reshape":
        if not ctx.is_const(ins[1]):
            ctx.fail(node, "the target shape must fold to a constant")
        return mb.reshape(x=x, shape=_reshape_target(ctx.shape(x), ins[1], a.get("allowzero", 0)), name=nm)
    if op == "Flatten":
        shp = ctx.shape(x)
        ax = a.get("axis", 1) % (len(shp) + 1) if shp else 0
        return mb.reshape(x=x, shape=[int(np.prod(shp[:ax])), int(np.prod(shp[ax:]))], name=nm)
    if op == "Transpose":
        perm = a.get("perm", list(reversed(range(len(ctx.shape(x))))))
        return mb.transpose(x=x, perm=list(perm), name=nm)
    if op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes") if "axes" in a else (_ints(ins[1]) if len(ins) > 1 else None)
        if op == "Squeeze":
            return mb.squeeze(x=x, axes=axes, name=nm) if axes is not None else mb.squeeze(x=x, name=nm)
        return mb.expand_dims(x=x, axes=list(axes), name=nm)
    if op == "Slice":
        shp = ctx.shape(x)
        if ctx.opset < 10:
            starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
        else:
            for v in ins[1:]:
                if v is not None and not ctx.is_const(v):
                    ctx.fail(node, "starts/ends/axes/steps must fold to constants")
            starts, ends = _ints(ins[1]), _ints(ins[2])
            axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
            steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
        axes = list(range(len(starts))) if axes is None else [ax % len(shp) for ax in axes]
        steps = steps or [1] * len(starts)
        begin, end, stride = [0] * len(shp), list(shp), [1] * len(shp)
        for ax, b0, e0, s0 in zip(axes, starts, ends, steps):
            # Python slice semantics (what ONNX specifies) resolved against the static dim.
            b1, e1, s1 = slice(b0, e0, s0).indices(shp[ax])
            if s1 < 0:
                ctx.fail(node, f"negative step {s1} is not supported")
            begin[ax], end[ax], stride[ax] = b1, max(e1, b1), s1
        return mb.slice_by_index(x=x, begin=begin, end=end, stride=stride, name=nm)
    if op == "Gather":
        idx = ins[1]
        if not ctx.is_const(idx):
            ctx.fail(node, "indices must be constants")
        return mb.gather(x=V(x), indices=idx.astype(np.int32), axis=a.get("axis", 0), name=nm)
    if op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
        f = {"ReduceMean": mb.reduce_mean, "ReduceSum": mb.reduce_sum, "ReduceMax": mb.reduce_max,
             "ReduceMin": mb.reduce_min}[op]
        axes = a.get("axes") if "axes" in a else (_ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None)
        if axes is None:
            axes = list(range(len(ctx.shape(x))))
        return f(x=x, axes=list(axes), keep_dims=bool(a.get("keepdims", 1)), name=nm)
    if op == "MatMul":
        return mb.matmul(x=V(x), y=V(ins[1]), name=nm)
    if op == "Gemm":
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
            ctx.fail(node, f"alpha/beta/transA {a} are not supported")
        w = ins[1] if a.get("transB", 0) else ins[1].T
        return mb.linear(x=x, weight=V(np.ascontiguousarray(w)), bias=None if len(ins) < 3 else V(ins[2]), name=nm)
    if op == "Pad":
        mode = _s(a.get("mode", "constant"))
        if mode == "edge":
            mode = "replicate"
        if mode not in ("constant", "reflect", "replicate"):
            ctx.fail(node, f"mode={mode!r} is not supported")
        pads = np.asarray(a.get("pads")) if ctx.opset < 11 else ins[1]
        if not ctx.is_const(pads) or (len(ins) > 3 and ins[3] is not None):
            ctx.fail(node, "pads must fold to a constant and axes is not supported")
        p = _ints(pads)
        rank = len(p) // 2
        if any(v < 0 for v in p):
            ctx.fail(node, f"negative pads {p} are not supported")
        # ONNX: [x1_begin, x2_begin, ..., x1_end, ...]; MIL: (begin, end) per dim of the last N.
        pairs = [(p[i], p[i + rank]) for i in range(rank)]
        while len(pairs) > 1 and pairs[0] == (0, 0):
            pairs.pop(0)  # MIL pads the last N dims: drop untouched leading ones
        cv = 0.0
        if mode == "constant":
            v = a.get("value", 0.0) if ctx.opset < 11 else (ins[2] if len(ins) > 2 and ins[2] is not None else 0.0)
            cv = float(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else 0.0
        return mb.pad(x=x, pad=np.array([v for pr in pairs for v in pr], np.int32), mode=mode,
                      constant_val=np.float32(cv), name=nm)
    if op == "LSTM":
        return _lstm(ctx, node, a, ins, nm)
    if op == "Expand":
        if not ctx.is_const(ins[1]):
            ctx.fail(node, "the target shape must fold to a constant")
        shp = ctx.shape(x)
        out = np.broadcast_shapes(shp, tuple(_ints(ins[1])))
        if out == shp:
            return x
        reps = [o // i if i == 1 else 1 for o, i in zip(out, (1,) * (len(out) - len(shp)) + shp)]
        if len(out) > len(shp):
            x = mb.reshape(x=x, shape=[1] * (len(out) - len(shp)) + list(shp), name=ctx.name(nm + "_rank"))
        return mb.tile(x=x, reps=reps, name=nm)
    if op == "Split":
        axis = a.get("axis", 0)
        sizes = a.get("split") if "split" in a else (ins[1] if len(ins) > 1 else None)
        if sizes is not None and not ctx.is_const(np.asarray(sizes) if isinstance(sizes, list) else sizes):
            ctx.fail(node, "split sizes must fold to constants")
        n_out = len(node.output)
        if sizes is None:
            dim = ctx.shape(x)[axis]
            if dim % n_out:
                ctx.fail(node, f"uneven split of {dim} into {n_out} without sizes")
            res = mb.split(x=x, num_splits=n_out, axis=axis, name=nm)
        else:
            res = mb.split(x=x, split_sizes=np.array(_ints(sizes), np.int32), axis=axis, name=nm)
        return tuple(res)
    ctx.fail(node, "unknown ONNX op")


def _run_graph(ctx: _Ctx, graph) -> tuple:
    """Emit a subgraph's nodes into the current block (outer values stay visible); its outputs."""
    for t in graph.initializer:
        ctx.vals[t.name] = numpy_helper.to_array(t)
    for n in graph.node:
        _bind(ctx, n, _emit(ctx, n))
    return tuple(ctx.get(o.name) for o in graph.output)


def _if(ctx: _Ctx, node, a, cond, nm):
    """ONNX If: a condition that folds (shape checks) inlines the branch it picks; a runtime
    condition becomes mb.cond with both branches as blocks."""
    if ctx.is_const(cond):
        return _run_graph(ctx, a["then_branch"] if bool(np.asarray(cond).reshape(-1)[0]) else a["else_branch"])
    mb = ctx.mb
    if int(np.prod(ctx.shape(cond))) != 1:
        ctx.fail(node, f"condition of shape {ctx.shape(cond)} is not a single value")

    def branch(g):
        def fn():
            outs = _run_graph(ctx, g)
            return tuple(mb.identity(x=ctx.var(v), name=ctx.name(f"{nm}_{g.name}_{i}")) for i, v in enumerate(outs))
        return fn

    pred = mb.squeeze(x=cond, name=ctx.name(nm + "_pred")) if ctx.shape(cond) != () else cond
    res = mb.cond(pred=pred, _true_fn=branch(a["then_branch"]), _false_fn=branch(a["else_branch"]), name=nm)
    return tuple(res) if isinstance(res, (tuple, list)) else (res,)


def _bind(ctx: _Ctx, node, res) -> None:
    """Record a node's result: one value, or a tuple with one value per ONNX output."""
    if isinstance(res, tuple):
        if len(res) < len([o for o in node.output if o]):
            ctx.fail(node, f"{len(res)} values for outputs {list(node.output)}")
        for name, v in zip(node.output, res):
            if name:
                ctx.vals[name] = v
        return
    if len(node.output) > 1 and any(node.output[1:]) and node.op_type not in ("BatchNormalization",):
        ctx.fail(node, "more than one output is not supported")
    ctx.vals[node.output[0]] = res


def _lstm(ctx: _Ctx, node, a, ins, nm):
    """ONNX LSTM (forward, default activations) -> mb.lstm; returns (Y, Y_h, Y_c)."""
    mb = ctx.mb
    if a.get("layout", 0) != 0:
        ctx.fail(node, f"layout={a['layout']} is not supported")
    direction = _s(a.get("direction", "forward"))
    if direction != "forward":
        # MIL's definition does not say in which order a reverse lstm lays out its output
        # sequence, and nothing here can check it: refuse rather than guess.
        ctx.fail(node, f"direction={direction!r} is not supported (forward only)")
    acts = [_s(v) for v in a.get("activations", [b"Sigmoid", b"Tanh", b"Tanh"])]
    if [v.lower() for v in acts] != ["sigmoid", "tanh", "tanh"] or "clip" in a or a.get("input_forget", 0):
        ctx.fail(node, f"activations={acts}, clip or input_forget are not supported")
    x, w, r = ins[0], ins[1], ins[2]
    b = ins[3] if len(ins) > 3 else None
    if len(ins) > 4 and ins[4] is not None:
        ctx.fail(node, "sequence_lens is not supported")
    if len(ins) > 7 and ins[7] is not None:
        ctx.fail(node, "peepholes (P) are not supported")
    if not all(ctx.is_const(v) for v in (w, r)) or (b is not None and not ctx.is_const(b)):
        ctx.fail(node, "W, R and B must be constants")
    H = int(a["hidden_size"])
    if len(ctx.shape(x)) != 3:
        ctx.fail(node, f"X of shape {ctx.shape(x)}: expected [seq, batch, input]")
    s_len, batch, _ = ctx.shape(x)

    def reorder(m):  # ONNX gates i, o, f, c -> MIL i, f, o, c
        i, o, f, c = np.split(np.asarray(m, np.float32), 4, axis=0)
        return np.concatenate([i, f, o, c], axis=0)

    bias = np.zeros(4 * H, np.float32) if b is None else reorder(b[0][: 4 * H] + b[0][4 * H:])

    def state(v, tag):
        if v is None:
            return np.zeros((batch, H), np.float32)
        if ctx.is_const(v):
            return np.asarray(v, np.float32).reshape(batch, H)
        return mb.squeeze(x=v, axes=[0], name=ctx.name(f"{nm}_{tag}0"))

    h0 = state(ins[5] if len(ins) > 5 else None, "h")
    c0 = state(ins[6] if len(ins) > 6 else None, "c")
    y, h, c = mb.lstm(x=x, initial_h=h0, initial_c=c0, weight_ih=reorder(w[0]), weight_hh=reorder(r[0]), bias=bias,
                      direction=direction, output_sequence=True, recurrent_activation="sigmoid",
                      cell_activation="tanh", activation="tanh", name=nm)
    outs = node.output
    return (mb.expand_dims(x=y, axes=[1], name=ctx.name(outs[0] + "_y")),
            mb.expand_dims(x=h, axes=[0], name=ctx.name(outs[1] if len(outs) > 1 and outs[1] else nm + "_h")),
            mb.expand_dims(x=c, axes=[0], name=ctx.name(outs[2] if len(outs) > 2 and outs[2] else nm + "_c")))


def build_program(model: onnx.ModelProto, input_shapes: dict, target: str = "iOS15", int4_block: int | None = None):
    """(mb program, {onnx output name: program output name}, {initializer: dequantized weight})
    for fixed input shapes. With `int4_block` (iOS18 only) Conv weights are stored as blockwise
    int4 (`_Ctx.conv_weight`); the third item then holds the weights the program computes with,
    for a reference run on the same weights (`with_weights`)."""
    if int4_block is not None and target != "iOS18":
        raise Unsupported(f"int4 compression needs target iOS18, not {target}")
    from coremltools import target as ct_target
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    opsets = {o.domain: o.version for o in model.opset_import}
    g = model.graph
    # Exporters list custom domains they may not use (Paddle2ONNX adds "Paddle"): refuse only nodes in them.
    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            raise Unsupported(f"ONNX node '{n.name or n.output[0]}' ({n.op_type}): operator set '{n.domain}' is not supported")
    inits = {t.name for t in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in inits]
    missing = {i.name for i in graph_inputs} - set(input_shapes)
    if missing:
        raise Unsupported(f"no shape given for inputs {sorted(missing)}")
    specs = []
    for i in graph_inputs:
        et = i.type.tensor_type.elem_type
        if et not in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            raise Unsupported(f"input '{i.name}': element type {et} is not supported")
        # int64 inputs become int32 (Core ML has no int64 features); a scalar becomes shape [1].
        shape = tuple(input_shapes[i.name]) or (1,)
        specs.append(mb.TensorSpec(shape=shape, dtype=types.fp32 if et == onnx.TensorProto.FLOAT else types.int32))
    out_names = {o.name: _san(o.name) for o in g.output}
    dequantized: list[dict] = []

    def body(*args):
        ctx = _Ctx(mb, types, opsets.get("", opsets.get("ai.onnx")), int4_block)
        dequantized.append(ctx.dequantized)
        ctx.names.update(out_names.values())  # reserved for the final identity ops
        for t in g.initializer:
            ctx.vals[t.name] = numpy_helper.to_array(t)
        for i, v in zip(graph_inputs, args):
            ctx.vals[i.name] = v
            ctx.names.add(v.name)
        for node in g.node:
            _bind(ctx, node, _emit(ctx, node))
        outs = []
        for o in g.output:
            v = ctx.vals[o.name]
            v = ctx.var(v) if ctx.is_const(v) else v
            outs.append(mb.identity(x=v, name=out_names[o.name]))
        return tuple(outs)

    # mb.program names the program's inputs after the function's parameters: give it one per input.
    params = [_san(i.name) for i in graph_inputs]
    ns = {"body": body}
    exec(f"def main({', '.join(params)}):\n    return body({', '.join(params)})\n", ns)  # noqa: S102
    prog = mb.program(input_specs=specs, opset_version=getattr(ct_target, target))(ns["main"])
    return prog, out_names, dequantized[0]


def with_weights(model: onnx.ModelProto, weights: dict) -> onnx.ModelProto:
    """A copy of `model` whose initializers or Constant nodes named in `weights` hold those arrays."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    done = set()
    for t in m.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(numpy_helper.to_array(t).dtype), t.name))
            done.add(t.name)
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output[0] in weights:
            for a in n.attribute:
                if a.name == "value":
                    old = numpy_helper.to_array(a.t)
                    a.t.CopyFrom(numpy_helper.from_array(weights[n.output[0]].astype(old.dtype), a.t.name))
                    done.add(n.output[0])
    if set(weights) - done:
        raise Unsupported(f"weights {sorted(set(weights) - done)[:3]}... are neither initializers nor Constant values")
    return m


def convert(onnx_path, input_shapes: dict, target: str = "iOS15", precision: str = "fp32"):
    """(MLModel, {onnx output name: program output name}); see the module doc."""
    import coremltools as ct

    model = onnx.load(str(onnx_path))
    prog, out_names, _ = build_program(model, input_shapes, target)
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                         compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                         skip_model_load=True)
    return mlmodel, out_names
