"""all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads, FFN 1536) sentence embedding as a MIL
program + a numpy reference.

sentence-transformers pipeline (modules.json): Transformer -> Pooling(mean over the attention
mask) -> Normalize (L2). Fixed sequence length 128; token_type_ids are all zero (baked in).

    emb  = word_emb[input_ids] + (pos_emb[0:128] + type_emb[0])        # second term one const
    h    = LayerNorm(emb)                                               # eps 1e-12
    per layer: q,k,v = linear(h); scores = (q k^T) * 1/sqrt(32) + (1 - mask) * -10000
               ctx = softmax(scores) v; h = LN(h + linear(ctx)); h = LN(h + linear(gelu(linear(h))))
    mean = sum_t(h * mask) / max(sum_t(mask), 1e-9)
    embedding = mean / max(||mean||_2, 1e-12)
The additive mask -10000 (the classic BERT value) keeps fp16 finite; exp(-10000) underflows to 0
in fp32/fp64, so padded positions get exactly zero attention as with the unpadded input.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

import npref

SEQ = 128
HIDDEN = 384
HEADS = 12
HEAD_DIM = 32
LAYERS = 6
LN_EPS = 1e-12
MASK_NEG = -10000.0

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """8-byte LE header length, JSON header {name: {dtype, shape, data_offsets}}, raw data."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(raw, dtype=SAFETENSORS_DTYPES[info["dtype"]], count=(end - start) // np.dtype(SAFETENSORS_DTYPES[info["dtype"]]).itemsize, offset=base + start)
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def weights_from_safetensors(st: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat dict of the float32 arrays the program uses (names are ours)."""
    W = {
        "word_emb": st["embeddings.word_embeddings.weight"],
        "pos_type": (st["embeddings.position_embeddings.weight"][:SEQ] + st["embeddings.token_type_embeddings.weight"][0])[None].astype(np.float32),
        "emb_ln_g": st["embeddings.LayerNorm.weight"],
        "emb_ln_b": st["embeddings.LayerNorm.bias"],
    }
    for l in range(LAYERS):
        p = f"encoder.layer.{l}."
        for ours, theirs in [
            ("q", "attention.self.query"), ("k", "attention.self.key"), ("v", "attention.self.value"),
            ("ao", "attention.output.dense"), ("fi", "intermediate.dense"), ("fo", "output.dense"),
        ]:
            W[f"l{l}_{ours}_w"] = st[p + theirs + ".weight"]
            W[f"l{l}_{ours}_b"] = st[p + theirs + ".bias"]
        W[f"l{l}_ln1_g"] = st[p + "attention.output.LayerNorm.weight"]
        W[f"l{l}_ln1_b"] = st[p + "attention.output.LayerNorm.bias"]
        W[f"l{l}_ln2_g"] = st[p + "output.LayerNorm.weight"]
        W[f"l{l}_ln2_b"] = st[p + "output.LayerNorm.bias"]
    for k, v in W.items():
        assert v.dtype == np.float32, k
    return W


DEFAULT_CONSTS = {
    "ln_eps": LN_EPS,
    "scale": 1.0 / math.sqrt(HEAD_DIM),
    "mask_one": 1.0,
    "mask_neg": MASK_NEG,
    "count_eps": 1e-9,
    "norm_eps": 1e-12,
}


def forward(W, input_ids, attention_mask, C=None, act=lambda a: a):
    """float64 reference. input_ids/attention_mask int32 [B, SEQ]; returns [B, 384].
    C: the scalar constants (DEFAULT_CONSTS, or the fp16-rounded ones an fp16 package holds);
    act: applied after every op (identity, or fp16 rounding to simulate fp16 arithmetic)."""
    C = DEFAULT_CONSTS if C is None else C
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(np.float64)
    b = ids.shape[0]
    eps = C["ln_eps"]
    h = act(npref.f64(W["word_emb"])[ids] + npref.f64(W["pos_type"]))
    h = act(npref.layer_norm(h, W["emb_ln_g"], W["emb_ln_b"], eps))
    bias = act(act(C["mask_one"] - mask) * C["mask_neg"])[:, None, None, :]
    for l in range(LAYERS):
        def lin(x, n):
            return act(npref.linear(x, W[f"l{l}_{n}_w"], W[f"l{l}_{n}_b"]))

        def heads(x):
            return x.reshape(b, SEQ, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)

        q, k, v = heads(lin(h, "q")), heads(lin(h, "k")), heads(lin(h, "v"))
        s = act(act(q @ k.transpose(0, 1, 3, 2)) * C["scale"])
        p = act(npref.softmax(act(s + bias), axis=-1))
        ctx = act(p @ v).transpose(0, 2, 1, 3).reshape(b, SEQ, HIDDEN)
        h = act(npref.layer_norm(act(lin(ctx, "ao") + h), W[f"l{l}_ln1_g"], W[f"l{l}_ln1_b"], eps))
        f = act(npref.gelu_exact(lin(h, "fi")))
        h = act(npref.layer_norm(act(lin(f, "fo") + h), W[f"l{l}_ln2_g"], W[f"l{l}_ln2_b"], eps))
    summed = act(np.sum(act(h * mask[:, :, None]), axis=1))
    cnt = act(np.maximum(np.sum(mask, axis=1, keepdims=True), C["count_eps"]))
    mean = act(summed / cnt)
    norm = act(np.maximum(act(np.sqrt(act(np.sum(act(mean * mean), axis=1, keepdims=True)))), C["norm_eps"]))
    return act(mean / norm)


def consts_from_package(op_list) -> dict:
    """The scalar constants as the saved program holds them (op names as build_program sets them;
    fp16 programs append _cast_fp16 to op output names)."""
    ops = {name.replace("_cast_fp16", ""): (t, p) for t, name, p in op_list}
    eps = {float(p["epsilon"]) for t, p in ops.values() if t == "layer_norm"}
    scales = {float(ops[f"l{l}_scaled"][1]["y"]) for l in range(LAYERS)}
    assert len(eps) == 1 and len(scales) == 1, (eps, scales)
    return {
        "ln_eps": eps.pop(),
        "scale": scales.pop(),
        "mask_one": float(ops["mask_inv"][1]["x"]),
        "mask_neg": float(ops["mask_bias"][1]["y"]),
        "count_eps": float(ops["pool_count_clamped"][1]["y"]),
        "norm_eps": float(ops["norm_clamped"][1]["y"]),
    }


def build_program(W, mb, types, target):
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, SEQ), dtype=types.int32), mb.TensorSpec(shape=(1, SEQ), dtype=types.int32)],
        opset_version=target,
    )
    def prog(input_ids, attention_mask):
        def c(name):
            return mb.const(val=W[name], name=name)

        x = mb.gather(x=c("word_emb"), indices=input_ids, axis=0, name="word_embeddings")
        x = mb.add(x=x, y=c("pos_type"), name="embeddings_sum")
        h = mb.layer_norm(x=x, axes=[-1], gamma=c("emb_ln_g"), beta=c("emb_ln_b"), epsilon=LN_EPS, name="embeddings_ln")

        mask_f = mb.cast(x=attention_mask, dtype="fp32", name="mask_f")
        inv = mb.sub(x=np.float32(1.0), y=mask_f, name="mask_inv")
        bias = mb.mul(x=inv, y=np.float32(MASK_NEG), name="mask_bias")
        bias = mb.reshape(x=bias, shape=[1, 1, 1, SEQ], name="mask_bias_4d")

        for l in range(LAYERS):
            def lin(x, n):
                return mb.linear(x=x, weight=c(f"l{l}_{n}_w"), bias=c(f"l{l}_{n}_b"), name=f"l{l}_{n}")

            def heads(x, n):
                x = mb.reshape(x=x, shape=[1, SEQ, HEADS, HEAD_DIM], name=f"l{l}_{n}_split")
                return mb.transpose(x=x, perm=[0, 2, 1, 3], name=f"l{l}_{n}_heads")

            q, k, v = heads(lin(h, "q"), "q"), heads(lin(h, "k"), "k"), heads(lin(h, "v"), "v")
            s = mb.matmul(x=q, y=k, transpose_x=False, transpose_y=True, name=f"l{l}_scores")
            s = mb.mul(x=s, y=np.float32(1.0 / math.sqrt(HEAD_DIM)), name=f"l{l}_scaled")
            s = mb.add(x=s, y=bias, name=f"l{l}_masked")
            p = mb.softmax(x=s, axis=-1, name=f"l{l}_probs")
            ctx = mb.matmul(x=p, y=v, name=f"l{l}_ctx")
            ctx = mb.transpose(x=ctx, perm=[0, 2, 1, 3], name=f"l{l}_ctx_t")
            ctx = mb.reshape(x=ctx, shape=[1, SEQ, HIDDEN], name=f"l{l}_ctx_merge")
            a = mb.add(x=lin(ctx, "ao"), y=h, name=f"l{l}_res1")
            h = mb.layer_norm(x=a, axes=[-1], gamma=c(f"l{l}_ln1_g"), beta=c(f"l{l}_ln1_b"), epsilon=LN_EPS, name=f"l{l}_ln1")
            f = mb.gelu(x=lin(h, "fi"), mode="EXACT", name=f"l{l}_gelu")
            a = mb.add(x=lin(f, "fo"), y=h, name=f"l{l}_res2")
            h = mb.layer_norm(x=a, axes=[-1], gamma=c(f"l{l}_ln2_g"), beta=c(f"l{l}_ln2_b"), epsilon=LN_EPS, name=f"l{l}_ln2")

        m3 = mb.reshape(x=mask_f, shape=[1, SEQ, 1], name="mask_3d")
        hm = mb.mul(x=h, y=m3, name="masked_hidden")
        summed = mb.reduce_sum(x=hm, axes=[1], keep_dims=False, name="pool_sum")
        cnt = mb.reduce_sum(x=mask_f, axes=[1], keep_dims=True, name="pool_count")
        cnt = mb.maximum(x=cnt, y=np.float32(1e-9), name="pool_count_clamped")
        mean = mb.real_div(x=summed, y=cnt, name="pool_mean")
        sq = mb.mul(x=mean, y=mean, name="norm_sq")
        ss = mb.reduce_sum(x=sq, axes=[1], keep_dims=True, name="norm_sumsq")
        n = mb.sqrt(x=ss, name="norm")
        n = mb.maximum(x=n, y=np.float32(1e-12), name="norm_clamped")
        return mb.real_div(x=mean, y=n, name="embedding")

    return prog
