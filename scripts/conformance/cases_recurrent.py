"""Cases for coremltools' recurrent.py: rnn, gru, lstm (iOS15; the iOS17 forms add fp16; iOS18's gru
adds `reset_after` and `input_bias`). References: float64 numpy, a plain loop over batch rows and
time steps (one `np.dot` per gate), written from the definitions' equations.

Where the definitions are brief the references follow coremltools' own op tests
(`ops/tests/iOS14/test_recurrent.py`, checked against Core ML): a `reverse` layer's sequence output is
in processing order; a bidirectional lstm's backward half is aligned with the input (last-step output:
the state after `x[0]`); peepholes see `c[t-1]` for the i/f gates and `c[t]` for o; `clip` clamps the
cell state; activations take their standard parameters (`scaled_tanh` = tanh, `hard_sigmoid`
= clamp(0.2 v + 0.5, 0, 1), `linear` = identity). gru with `reset_after` is PyTorch's form, with
`input_bias` on the input side and `bias` on the hidden side."""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb

from caselib import Case, f64, uniform

FAM = "recurrent"


def act(name: str, v: np.ndarray) -> np.ndarray:
    name = name.lower()
    if name in ("tanh", "scaled_tanh"):
        return np.tanh(v)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-v))
    if name == "relu":
        return np.maximum(v, 0.0)
    if name in ("hard_sigmoid", "sigmoid_hard"):
        return np.clip(0.2 * v + 0.5, 0.0, 1.0)
    if name == "linear":
        return v
    raise ValueError(name)


def order(s: int, reverse: bool):
    return list(range(s - 1, -1, -1)) if reverse else list(range(s))


def rnn_ref(x, h0, wih, whh, b, reverse, seq_out, activation):
    s, batch, _ = x.shape
    hsz = whh.shape[1]
    b = np.zeros(hsz) if b is None else b
    ys = np.zeros((s, batch, hsz))
    hn = np.zeros((batch, hsz))
    for n in range(batch):
        h = h0[n].copy()
        for k, t in enumerate(order(s, reverse)):
            h = act(activation, np.dot(wih, x[t, n]) + np.dot(whh, h) + b)
            ys[k, n] = h
        hn[n] = h
    return (ys if seq_out else ys[-1:]), hn


def gru_ref(x, h0, wih, whh, b, ib, reverse, seq_out, rec, activation, reset_after):
    s, batch, _ = x.shape
    hsz = whh.shape[1]
    b = np.zeros(3 * hsz) if b is None else b
    ib = np.zeros(3 * hsz) if ib is None else ib
    w_r, w_o, w_z = np.split(wih, 3)
    r_r, r_o, r_z = np.split(whh, 3)
    b_r, b_o, b_z = np.split(b, 3)
    i_r, i_o, i_z = np.split(ib, 3)
    ys = np.zeros((s, batch, hsz))
    hn = np.zeros((batch, hsz))
    for n in range(batch):
        h = h0[n].copy()
        for k, t in enumerate(order(s, reverse)):
            xt = x[t, n]
            r = act(rec, np.dot(w_r, xt) + i_r + np.dot(r_r, h) + b_r)
            z = act(rec, np.dot(w_z, xt) + i_z + np.dot(r_z, h) + b_z)
            if reset_after:
                o = act(activation, np.dot(w_o, xt) + i_o + r * (np.dot(r_o, h) + b_o))
            else:
                o = act(activation, np.dot(w_o, xt) + i_o + np.dot(r_o, r * h) + b_o)
            h = (1 - z) * o + z * h
            ys[k, n] = h
        hn[n] = h
    return (ys if seq_out else ys[-1:]), hn


def lstm_dir(x, h0, c0, w, reverse, rec, cell, activation, clip):
    """One direction: per-step h (processing order) and the final h, c for each batch row."""
    wih, whh, b, p = w
    s, batch, _ = x.shape
    hsz = whh.shape[1]
    b = np.zeros(4 * hsz) if b is None else b
    p = np.zeros(3 * hsz) if p is None else p
    wi, wf, wo, wz = np.split(wih, 4)
    ri, rf, ro, rz = np.split(whh, 4)
    bi, bf, bo, bz = np.split(b, 4)
    pi, pf, po = np.split(p, 3)
    steps = np.zeros((s, batch, hsz))
    hn, cn = np.zeros((batch, hsz)), np.zeros((batch, hsz))
    for n in range(batch):
        h, c = h0[n].copy(), c0[n].copy()
        for k, t in enumerate(order(s, reverse)):
            xt = x[t, n]
            i = act(rec, np.dot(wi, xt) + np.dot(ri, h) + bi + c * pi)
            f = act(rec, np.dot(wf, xt) + np.dot(rf, h) + bf + c * pf)
            g = act(cell, np.dot(wz, xt) + np.dot(rz, h) + bz)
            c = f * c + i * g
            if clip is not None:
                c = np.clip(c, -clip, clip)
            o = act(rec, np.dot(wo, xt) + np.dot(ro, h) + bo + c * po)
            h = o * act(activation, c)
            steps[k, n] = h
        hn[n], cn[n] = h, c
    return steps, hn, cn


def lstm_ref(x, h0, c0, fwd, back, direction, seq_out, rec, cell, activation, clip):
    hsz = fwd[1].shape[1]
    if direction != "bidirectional":
        steps, hn, cn = lstm_dir(x, h0, c0, fwd, direction == "reverse", rec, cell, activation, clip)
        return (steps if seq_out else steps[-1:]), hn, cn
    sf, hf, cf = lstm_dir(x, h0[:, :hsz], c0[:, :hsz], fwd, False, rec, cell, activation, clip)
    sb, hb, cb = lstm_dir(x, h0[:, hsz:], c0[:, hsz:], back, True, rec, cell, activation, clip)
    if seq_out:
        y = np.concatenate([sf, sb[::-1]], axis=2)  # backward half aligned with the input
    else:
        y = np.concatenate([sf[-1:], sb[-1:]], axis=2)
    return y, np.concatenate([hf, hb], axis=1), np.concatenate([cf, cb], axis=1)


def cast(a, dt):
    return None if a is None else a.astype(dt)


def rnn_cases() -> list[Case]:
    out = []

    def case(name, s=4, batch=2, isz=3, hsz=5, bias=True, direction="forward", seq=False, activation=None,
             fp16=False, opset=None, note=""):
        dt = np.float16 if fp16 else np.float32
        tag = f"{FAM}/rnn/{name}"
        x = uniform(f"{tag}/x", (s, batch, isz), -1, 1, dt)
        h0 = uniform(f"{tag}/h0", (batch, hsz), -1, 1, dt)
        wih = uniform(f"{tag}/wih", (hsz, isz), -0.6, 0.6, dt)
        whh = uniform(f"{tag}/whh", (hsz, hsz), -0.6, 0.6, dt)
        b = uniform(f"{tag}/b", (hsz,), -0.5, 0.5, dt) if bias else None
        kw = {"direction": direction, "output_sequence": seq}
        if b is not None:
            kw["bias"] = b
        if activation is not None:
            kw["activation"] = activation
        y, hn = rnn_ref(f64(x), f64(h0), f64(wih), f64(whh), None if b is None else f64(b),
                        direction == "reverse", seq, activation or "tanh")
        out.append(Case(FAM, "rnn", f"rnn_{name}", {"x": x, "initial_h": h0},
                        lambda x, initial_h, kw=kw: mb.rnn(x=x, initial_h=initial_h, weight_ih=wih, weight_hh=whh,
                                                           **kw),
                        {"y": y, "h": hn}, opset=opset or ("iOS17" if fp16 else "iOS15"),
                        precision="fp16" if fp16 else "fp32", note=note))

    case("default", bias=False, note="defaults: forward, tanh, last step only, no bias")
    case("bias_seq", seq=True)
    case("reverse_seq", direction="reverse", seq=True, note="reverse: the sequence output in processing order")
    case("reverse_last", direction="reverse")
    for a in ("relu", "sigmoid", "sigmoid_hard", "scaled_tanh", "linear"):
        case(f"act_{a}", seq=True, activation=a)
    case("seq1_batch1_input1", s=1, batch=1, isz=1, hsz=3, seq=True, note="size-1 seq, batch and input")
    case("hidden7", s=3, batch=3, isz=4, hsz=7, seq=True, direction="reverse")
    case("fp16_seq", seq=True, fp16=True, note="iOS17: fp16")
    case("fp16_reverse_relu", direction="reverse", activation="relu", fp16=True, note="iOS17: fp16")
    case("ios18_fp16", seq=True, fp16=True, opset="iOS18", note="iOS18 programs use the iOS17 form")
    case("larger", s=10, batch=3, isz=16, hsz=24, seq=True)
    return out


def gru_cases() -> list[Case]:
    out = []

    def case(name, s=4, batch=2, isz=3, hsz=5, bias=True, direction="forward", seq=False, rec=None,
             activation=None, reset_after=None, input_bias=False, fp16=False, opset=None, note=""):
        dt = np.float16 if fp16 else np.float32
        tag = f"{FAM}/gru/{name}"
        x = uniform(f"{tag}/x", (s, batch, isz), -1, 1, dt)
        h0 = uniform(f"{tag}/h0", (batch, hsz), -1, 1, dt)
        wih = uniform(f"{tag}/wih", (3 * hsz, isz), -0.6, 0.6, dt)
        whh = uniform(f"{tag}/whh", (3 * hsz, hsz), -0.6, 0.6, dt)
        b = uniform(f"{tag}/b", (3 * hsz,), -0.5, 0.5, dt) if bias else None
        ib = uniform(f"{tag}/ib", (3 * hsz,), -0.5, 0.5, dt) if input_bias else None
        kw = {"direction": direction, "output_sequence": seq}
        for k, v in (("bias", b), ("input_bias", ib), ("recurrent_activation", rec), ("activation", activation),
                     ("reset_after", reset_after)):
            if v is not None:
                kw[k] = v
        y, hn = gru_ref(f64(x), f64(h0), f64(wih), f64(whh), None if b is None else f64(b),
                        None if ib is None else f64(ib), direction == "reverse", seq, rec or "sigmoid",
                        activation or "tanh", bool(reset_after))
        if opset is None:
            opset = "iOS18" if (reset_after is not None or input_bias) else ("iOS17" if fp16 else "iOS15")
        out.append(Case(FAM, "gru", f"gru_{name}", {"x": x, "initial_h": h0},
                        lambda x, initial_h, kw=kw: mb.gru(x=x, initial_h=initial_h, weight_ih=wih, weight_hh=whh,
                                                           **kw),
                        {"y": y, "h": hn}, opset=opset, precision="fp16" if fp16 else "fp32", note=note))

    case("default", bias=False, note="defaults: forward, sigmoid/tanh, last step only, no bias")
    case("bias_seq", seq=True)
    case("reverse_seq", direction="reverse", seq=True, note="reverse: the sequence output in processing order")
    case("reverse_last", direction="reverse")
    for r, a in (("tanh", "sigmoid"), ("hard_sigmoid", "tanh"), ("relu", "linear"), ("linear", "scaled_tanh"),
                 ("sigmoid", "relu"), ("scaled_tanh", "sigmoid_hard")):
        case(f"act_{r}_{a}", seq=True, rec=r, activation=a)
    case("seq1_batch1_input1", s=1, batch=1, isz=1, hsz=3, seq=True, note="size-1 seq, batch and input")
    case("hidden6", s=3, batch=3, isz=4, hsz=6, direction="reverse")
    case("fp16_seq", seq=True, fp16=True, note="iOS17: fp16")
    case("fp16_reverse", direction="reverse", fp16=True, note="iOS17: fp16")
    case("ios18_default", bias=False, opset="iOS18", note="iOS18 form, new parameters absent")
    case("ios18_reset_after", seq=True, reset_after=True, input_bias=True,
         note="iOS18: reset_after (r scales W_ho h + b_ho), input_bias on the input side")
    case("ios18_reset_after_no_input_bias", reset_after=True, direction="reverse", seq=True)
    case("ios18_reset_after_no_bias", reset_after=True, bias=False, input_bias=True)
    case("ios18_reset_before_input_bias", seq=True, reset_after=False, input_bias=True,
         note="iOS18: input_bias with reset_after false (both biases additive)")
    case("ios18_reset_after_odd", s=1, batch=1, isz=1, hsz=3, reset_after=True, input_bias=True, seq=True)
    case("larger", s=10, batch=4, isz=16, hsz=24, seq=True)
    case("ios18_larger_reset_after", s=10, batch=4, isz=16, hsz=24, seq=True, reset_after=True, input_bias=True)
    case("ios18_fp16_reset_after", seq=True, reset_after=True, input_bias=True, fp16=True, note="iOS18: fp16")
    return out


def lstm_cases() -> list[Case]:
    out = []

    def case(name, s=4, batch=2, isz=3, hsz=5, bias=True, peephole=False, direction="forward", seq=False,
             rec=None, cell=None, activation=None, clip=None, back_bias=True, back_peephole=None, fp16=False,
             const_state=False, opset=None, note=""):
        dt = np.float16 if fp16 else np.float32
        tag = f"{FAM}/lstm/{name}"
        nd = 2 if direction == "bidirectional" else 1
        x = uniform(f"{tag}/x", (s, batch, isz), -1, 1, dt)
        h0 = uniform(f"{tag}/h0", (batch, nd * hsz), -1, 1, dt)
        c0 = uniform(f"{tag}/c0", (batch, nd * hsz), -1, 1, dt)

        def weights(sfx, with_bias, with_peep):
            return (uniform(f"{tag}/wih{sfx}", (4 * hsz, isz), -0.6, 0.6, dt),
                    uniform(f"{tag}/whh{sfx}", (4 * hsz, hsz), -0.6, 0.6, dt),
                    uniform(f"{tag}/b{sfx}", (4 * hsz,), -0.5, 0.5, dt) if with_bias else None,
                    uniform(f"{tag}/p{sfx}", (3 * hsz,), -0.5, 0.5, dt) if with_peep else None)

        fwd = weights("", bias, peephole)
        back = None
        kw = {"weight_ih": fwd[0], "weight_hh": fwd[1], "direction": direction, "output_sequence": seq}
        if nd == 2:
            back = weights("_back", bias and back_bias, peephole if back_peephole is None else back_peephole)
            kw["weight_ih_back"], kw["weight_hh_back"] = back[0], back[1]
            for k, v in (("bias_back", back[2]), ("peephole_back", back[3])):
                if v is not None:
                    kw[k] = v
        for k, v in (("bias", fwd[2]), ("peephole", fwd[3]), ("recurrent_activation", rec),
                     ("cell_activation", cell), ("activation", activation)):
            if v is not None:
                kw[k] = v
        if clip is not None:
            kw["clip"] = dt(clip)

        def f64w(w):
            return None if w is None else tuple(None if a is None else f64(a) for a in w)

        y, hn, cn = lstm_ref(f64(x), f64(h0), f64(c0), f64w(fwd), f64w(back), direction, seq, rec or "sigmoid",
                             cell or "tanh", activation or "tanh", None if clip is None else float(dt(clip)))
        prec = "fp16" if fp16 else "fp32"
        opset = opset or ("iOS17" if fp16 else "iOS15")
        if const_state:
            out.append(Case(FAM, "lstm", f"lstm_{name}", {"x": x},
                            lambda x, kw=kw: mb.lstm(x=x, initial_h=h0, initial_c=c0, **kw),
                            {"y": y, "h": hn, "c": cn}, opset=opset, precision=prec, note=note))
        else:
            out.append(Case(FAM, "lstm", f"lstm_{name}", {"x": x, "initial_h": h0, "initial_c": c0},
                            lambda x, initial_h, initial_c, kw=kw: mb.lstm(x=x, initial_h=initial_h,
                                                                            initial_c=initial_c, **kw),
                            {"y": y, "h": hn, "c": cn}, opset=opset, precision=prec, note=note))

    case("default", bias=False, note="defaults: forward, sigmoid/tanh/tanh, last step only, no bias")
    case("bias_seq", seq=True)
    case("const_states", seq=True, const_state=True, note="initial states as constants")
    case("reverse_seq", direction="reverse", seq=True, note="reverse: the sequence output in processing order")
    case("reverse_last", direction="reverse", peephole=True)
    case("peephole_seq", seq=True, peephole=True, note="peepholes: c[t-1] into i and f, c[t] into o")
    case("clip", seq=True, clip=0.3, note="clip clamps the cell state")
    case("clip_peephole_reverse", direction="reverse", peephole=True, clip=0.15)
    case("bidir_seq", direction="bidirectional", seq=True, peephole=True,
         note="bidirectional: the backward half aligned with the input")
    case("bidir_last", direction="bidirectional", note="bidirectional, last step: [forward final, backward final]")
    case("bidir_no_back_bias", direction="bidirectional", seq=True, back_bias=False, peephole=True,
         back_peephole=False, note="bias and peephole given forward only: the backward ones are zeros")
    case("bidir_no_bias_clip", direction="bidirectional", bias=False, seq=True, clip=0.4)
    for r, cl, a in (("hard_sigmoid", "tanh", "tanh"), ("tanh", "relu", "linear"), ("linear", "sigmoid", "relu"),
                     ("relu", "scaled_tanh", "hard_sigmoid"), ("scaled_tanh", "linear", "sigmoid"),
                     ("sigmoid", "hard_sigmoid", "scaled_tanh")):
        case(f"act_{r}_{cl}_{a}", seq=True, rec=r, cell=cl, activation=a)
    case("seq1_batch1_input1", s=1, batch=1, isz=1, hsz=3, seq=True, peephole=True,
         note="size-1 seq, batch and input")
    case("hidden7_bidir_odd", s=3, batch=3, isz=1, hsz=7, direction="bidirectional", seq=True)
    case("seq1_bidir", s=1, batch=1, isz=2, hsz=3, direction="bidirectional", note="one step, both directions")
    case("act_uppercase", seq=True, rec="HARD_SIGMOID", cell="TANH", activation="Relu",
         note="coremltools checks lstm activation names case-insensitively")
    case("larger_bidir", s=12, batch=3, isz=16, hsz=20, direction="bidirectional", seq=True, peephole=True)
    case("fp16_seq", seq=True, peephole=True, fp16=True, note="iOS17: fp16")
    case("ios18_fp16_reverse", direction="reverse", seq=True, fp16=True, opset="iOS18",
         note="iOS18 programs use the iOS17 form")
    case("fp16_bidir", direction="bidirectional", seq=True, fp16=True, note="iOS17: fp16")
    case("fp16_reverse_clip", direction="reverse", clip=0.3, fp16=True, note="iOS17: fp16")
    return out


def cases() -> list[Case]:
    return rnn_cases() + gru_cases() + lstm_cases()
