"""A float64 numpy evaluator for the MIL ops our converted programs use: a check of onnx2mil's
output that does not depend on our Rust engine (used where the engine lacks an op, e.g. lstm and
cond today). It runs coremltools' in-memory program after ct.convert's passes, op by op, with the
semantics coremltools' op definitions document; an op it does not know raises NotImplementedError.

    from npmil import run
    outs = run(mlmodel._mil_program, {"input": x, ...})   # {output name: float64/int array}
"""

from __future__ import annotations

import itertools

import numpy as np


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _conv(x, w, b, strides, pad, dilations, groups):
    r = w.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [(pad[2 * i], pad[2 * i + 1]) for i in range(r)])
    n, c = x.shape[:2]
    co, cig = w.shape[:2]
    k = w.shape[2:]
    out_sp = [(x.shape[2 + i] - dilations[i] * (k[i] - 1) - 1) // strides[i] + 1 for i in range(r)]
    out = np.zeros((n, co, *out_sp))
    cog = co // groups
    for g in range(groups):
        xg = x[:, g * cig:(g + 1) * cig]
        wg = w[g * cog:(g + 1) * cog]
        for pos in itertools.product(*[range(kk) for kk in k]):
            sl = tuple(slice(pos[i] * dilations[i], pos[i] * dilations[i] + strides[i] * (out_sp[i] - 1) + 1, strides[i])
                       for i in range(r))
            patch = xg[(slice(None), slice(None)) + sl]  # [n, cig, *out]
            out[:, g * cog:(g + 1) * cog] += np.einsum("nc...,oc->no...", patch, wg[(slice(None), slice(None)) + pos])
    if b is not None:
        out += b.reshape((1, co) + (1,) * r)
    return out


def _conv_pad(x_shape, w_shape, pad_type, pad, strides, dilations):
    r = len(w_shape) - 2
    if pad_type == "custom":
        return list(pad)
    if pad_type == "valid":
        return [0] * (2 * r)
    if pad_type == "same":
        out = []
        for i in range(r):
            size, k = x_shape[2 + i], (w_shape[2 + i] - 1) * dilations[i] + 1
            total = max((-(-size // strides[i]) - 1) * strides[i] + k - size, 0)
            out += [total // 2, total - total // 2]
        return out
    raise NotImplementedError(f"conv pad_type {pad_type}")


def _lstm(a):
    x, h, c = a["x"], a["initial_h"], a["initial_c"]
    wih, whh = a["weight_ih"], a["weight_hh"]
    b = a.get("bias")
    b = np.zeros(wih.shape[0]) if b is None else b
    if a.get("direction", "forward") != "forward" or a.get("peephole") is not None:
        raise NotImplementedError("lstm: only forward without peepholes")
    acts = (a.get("recurrent_activation", "sigmoid"), a.get("cell_activation", "tanh"), a.get("activation", "tanh"))
    if acts != ("sigmoid", "tanh", "tanh") or a.get("clip") is not None:
        raise NotImplementedError(f"lstm activations {acts} / clip")
    hs = {}
    for t in range(x.shape[0]):
        z = x[t] @ wih.T + h @ whh.T + b
        i, f, o, g = np.split(z, 4, axis=-1)  # MIL gate order: input, forget, output, cell
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        hs[t] = h
    y = np.stack([hs[t] for t in range(x.shape[0])]) if a.get("output_sequence", False) else h[None]
    return y, h, c


def _slice(a):
    x = a["x"]
    r = x.ndim
    begin, end = list(a["begin"]), list(a["end"])
    stride = list(a.get("stride") if a.get("stride") is not None else [1] * r)
    bm = a.get("begin_mask") if a.get("begin_mask") is not None else [False] * r
    em = a.get("end_mask") if a.get("end_mask") is not None else [False] * r
    sq = a.get("squeeze_mask") if a.get("squeeze_mask") is not None else [False] * r
    sl = []
    for i in range(r):
        b0 = None if bm[i] else int(begin[i])
        e0 = None if em[i] else int(end[i])
        sl.append(slice(b0, e0, int(stride[i])))
    out = x[tuple(sl)]
    axes = tuple(i for i in range(r) if sq[i])
    return np.squeeze(out, axis=axes) if axes else out


def _grid(n_in: int, n_out: int, mode: str, scale: float | None = None) -> np.ndarray:
    """Source coordinates of a bilinear resize along one axis, as coremltools' image_resizing.py
    defines them (resize_bilinear's sampling modes; upsample_bilinear's align_corners by `scale`)."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        g = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    elif mode == "DEFAULT":
        g = i * ((n_in - n_in / n_out) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    elif mode == "UNALIGN_CORNERS":
        sp = n_in / n_out
        g = i * sp + 0.5 * sp - 0.5
    elif mode == "UPSAMPLE_HALF_PIXEL":  # upsample_bilinear, align_corners=False: by the given scale
        g = (i + 0.5) / scale - 0.5
    else:
        raise NotImplementedError(f"bilinear sampling mode {mode}")
    return np.clip(g, 0, n_in - 1)


def _bilinear(x, out_h, out_w, mode_h, mode_w=None, scales=(None, None)):
    """Bilinear interpolation of the last two axes at the grids of _grid."""
    for axis, n_out, mode, sc in ((-2, out_h, mode_h, scales[0]), (-1, out_w, mode_w or mode_h, scales[1])):
        g = _grid(x.shape[axis], n_out, mode, sc)
        lo = np.floor(g).astype(np.int64)
        hi = np.minimum(lo + 1, x.shape[axis] - 1)
        w = g - lo
        shape = [1] * x.ndim
        shape[axis] = n_out
        w = w.reshape(shape)
        x = np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w
    return x


def _op(op, a):
    t = op.op_type
    if t == "resize_bilinear":
        return _bilinear(a["x"], int(a["target_size_height"]), int(a["target_size_width"]),
                         a.get("sampling_mode", "DEFAULT"))
    if t == "upsample_bilinear":
        sh, sw = float(a.get("scale_factor_height", 1)), float(a.get("scale_factor_width", 1))
        oh, ow = int(np.floor(a["x"].shape[-2] * sh)), int(np.floor(a["x"].shape[-1] * sw))
        if a.get("align_corners", True):
            return _bilinear(a["x"], oh, ow, "ALIGN_CORNERS")
        return _bilinear(a["x"], oh, ow, "UPSAMPLE_HALF_PIXEL", scales=(sh, sw))
    if t in ("add", "sub", "mul", "real_div", "pow", "maximum", "minimum", "equal", "less", "greater"):
        f = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "pow": np.power,
             "maximum": np.maximum, "minimum": np.minimum, "equal": np.equal, "less": np.less, "greater": np.greater}[t]
        return f(a["x"], a["y"])
    if t in ("relu", "sigmoid", "sqrt", "tanh", "exp", "identity", "logical_not"):
        return {"relu": lambda v: np.maximum(v, 0), "sigmoid": _sigmoid, "sqrt": np.sqrt, "tanh": np.tanh,
                "exp": np.exp, "identity": lambda v: v, "logical_not": np.logical_not}[t](a["x"])
    if t == "cast":
        return a["x"].astype({"fp32": np.float64, "fp16": np.float64, "int32": np.int64, "bool": np.bool_}[a["dtype"]])
    if t == "clip":
        return np.clip(a["x"], a["alpha"], a["beta"])
    if t == "sigmoid_hard":
        return np.clip(a["alpha"] * a["x"] + a["beta"], 0, 1)
    if t == "conv":
        strides = list(a.get("strides") if a.get("strides") is not None else [1] * (a["weight"].ndim - 2))
        dil = list(a.get("dilations") if a.get("dilations") is not None else [1] * (a["weight"].ndim - 2))
        pad = _conv_pad(a["x"].shape, a["weight"].shape, a.get("pad_type", "valid"), a.get("pad"), strides, dil)
        return _conv(a["x"], a["weight"], a.get("bias"), strides, pad, dil, int(a.get("groups") or 1))
    if t == "pad":
        p = list(a["pad"])
        n = len(p) // 2
        widths = [(0, 0)] * (a["x"].ndim - n) + [(p[2 * i], p[2 * i + 1]) for i in range(n)]
        mode = a.get("mode", "constant")
        if mode == "constant":
            return np.pad(a["x"], widths, constant_values=a.get("constant_val", 0.0))
        return np.pad(a["x"], widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])
    if t == "lstm":
        return _lstm(a)
    if t == "slice_by_index":
        return _slice(a)
    if t == "gather":
        if a.get("batch_dims", 0):
            raise NotImplementedError("gather batch_dims")
        return np.take(a["x"], a["indices"], axis=int(a.get("axis", 0)))
    if t in ("reduce_mean", "reduce_sum", "reduce_max"):
        f = {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max}[t]
        axes = a.get("axes")
        return f(a["x"], axis=None if axes is None else tuple(int(v) for v in axes), keepdims=bool(a.get("keep_dims")))
    if t == "squeeze":
        axes = a.get("axes")
        return np.squeeze(a["x"], axis=None if axes is None else tuple(int(v) for v in axes))
    if t == "expand_dims":
        x = a["x"]
        for ax in sorted(int(v) % (x.ndim + len(a["axes"])) for v in a["axes"]):
            x = np.expand_dims(x, ax)
        return x
    if t == "concat":
        if a.get("interleave"):
            raise NotImplementedError("concat interleave")
        return np.concatenate(a["values"], axis=int(a["axis"]))
    if t == "reshape":
        return a["x"].reshape([int(v) for v in a["shape"]])
    if t == "transpose":
        return np.transpose(a["x"], [int(v) for v in a["perm"]])
    if t == "matmul":
        x, y = a["x"], a["y"]
        if a.get("transpose_x"):
            x = np.swapaxes(x, -1, -2)
        if a.get("transpose_y"):
            y = np.swapaxes(y, -1, -2)
        return x @ y
    if t == "linear":
        out = a["x"] @ a["weight"].T
        return out + a["bias"] if a.get("bias") is not None else out
    if t == "softmax":
        x = a["x"] - a["x"].max(axis=int(a["axis"]), keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=int(a["axis"]), keepdims=True)
    raise NotImplementedError(f"npmil: op {t}")


def _val(v, env):
    if isinstance(v, (list, tuple)):
        return [_val(x, env) for x in v]
    if v.name in env:
        return env[v.name]
    if v.val is not None:
        val = v.val
        return np.asarray(val, np.float64) if isinstance(val, np.ndarray) and val.dtype.kind == "f" else val
    raise KeyError(f"npmil: value {v.name} not computed")


def _run_block(block, env):
    for op in block.operations:
        if op.op_type == "const":
            continue
        if op.op_type == "cond":
            b = op.blocks[0] if bool(np.asarray(_val(op.inputs["pred"], env))) else op.blocks[1]
            _run_block(b, env)
            res = [env[o.name] if o.name in env else _val(o, env) for o in b.outputs]
        else:
            a = {k: _val(v, env) for k, v in op.inputs.items()}
            a = {k: (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 and k not in ("x", "y", "pred") else v)
                 for k, v in a.items()}
            res = _op(op, a)
        res = res if isinstance(res, (tuple, list)) else [res]
        for o, v in zip(op.outputs, res):
            env[o.name] = np.asarray(v)


def run(prog, inputs: dict) -> dict:
    """{output name: array} of the program's main function on `inputs` (program input names)."""
    f = prog.functions["main"]
    env = {k: np.asarray(v, np.float64 if np.asarray(v).dtype.kind == "f" else np.int64) for k, v in inputs.items()}
    _run_block(f, env)
    return {o.name: env[o.name] for o in f.outputs}
