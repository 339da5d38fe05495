"""A second recurrent member: g2p_en's trained GRU encoder-decoder (English grapheme-to-phoneme).

The `g2p_en` wheel ships its network as numpy weights (`checkpoint20.npz`: grapheme and phoneme
embeddings, a 256-unit GRU encoder, a 256-unit GRU decoder, a linear layer over 74 phonemes); its
own code runs them with numpy in PyTorch's GRU form. There is no ONNX file, so the program is
written with coremltools' `mb` builder (iOS18, fp32):

    inputs   graphemes [T_enc, 1] int32 (the word's letters + "</s>"), decoder_in [T_dec, 1] int32
    outputs  logits [T_dec, 1, 74]

two `gru` ops (iOS18, `reset_after=True`: PyTorch's form, gates reordered from PyTorch's r|z|n to
MIL's r|o|z, b_ih as `input_bias`, b_hh as `bias`; see docs/OPSET.md for that reading of the op),
the encoder's last state starting the decoder, teacher-forced with the reference's own greedy
output. coremltools' PyTorch frontend does not use `mb.gru` for torch GRUs (it unrolls a
while_loop, because the iOS15 gru differs from torch's), so this member checks the iOS18 form.

Reference: float64 numpy written from PyTorch's GRU equations, greedy decoding as g2p_en does
(start at "<s>", stop at "</s>"); the expected logits are its logits at the greedy inputs.
"""

from __future__ import annotations

import io

import numpy as np

GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
START, END = 2, 3  # "<s>" and "</s>" in g2p_en's phoneme list
MAX_STEPS = 20  # g2p_en's decoding limit


def load(npz_bytes: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as z:
        W = {k: z[k].astype(np.float32) for k in z.files}
    h = W["enc_w_hh"].shape[1]
    for k in ("enc_w_ih", "enc_w_hh", "dec_w_ih", "dec_w_hh"):
        if W[k].shape[0] != 3 * h:
            raise ValueError(f"{k}: shape {W[k].shape}, expected [3 * {h}, ...]")
    return W


def encode(word: str) -> np.ndarray:
    ids = [GRAPHEMES.index(c) if c in GRAPHEMES else 1 for c in word.lower()] + [2]
    return np.array(ids, np.int32)


def _cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's GRU cell in float64 (gates r, z, n in that order)."""
    gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
    H = h.shape[0]
    r = 1 / (1 + np.exp(-(gi[:H] + gh[:H])))
    z = 1 / (1 + np.exp(-(gi[H:2 * H] + gh[H:2 * H])))
    n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
    return (1 - z) * n + z * h


def reference(W: dict, graphemes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(decoder inputs [T_dec], logits [T_dec, 74]) by greedy decoding, float64."""
    f = {k: v.astype(np.float64) for k, v in W.items()}
    h = np.zeros(f["enc_w_hh"].shape[1])
    for g in graphemes:
        h = _cell(f["enc_emb"][g], h, f["enc_w_ih"], f["enc_w_hh"], f["enc_b_ih"], f["enc_b_hh"])
    ins, logits, tok = [], [], START
    for _ in range(MAX_STEPS):
        ins.append(tok)
        h = _cell(f["dec_emb"][tok], h, f["dec_w_ih"], f["dec_w_hh"], f["dec_b_ih"], f["dec_b_hh"])
        lg = f["fc_w"] @ h + f["fc_b"]
        logits.append(lg)
        tok = int(np.argmax(lg))
        if tok == END:
            break
    return np.array(ins, np.int32), np.array(logits)


def _mil_order(a: np.ndarray) -> np.ndarray:
    """PyTorch's gate blocks r|z|n -> MIL's r|o|z (o is torch's n)."""
    r, z, n = np.split(a, 3)
    return np.ascontiguousarray(np.concatenate([r, n, z]))


def build_program(W: dict, t_enc: int, t_dec: int):
    from coremltools import target as ct_target
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    H = W["enc_w_hh"].shape[1]
    specs = [mb.TensorSpec(shape=(t_enc, 1), dtype=types.int32), mb.TensorSpec(shape=(t_dec, 1), dtype=types.int32)]

    def gru(x, h0, p, seq):
        return mb.gru(x=x, initial_h=h0, weight_ih=_mil_order(W[f"{p}_w_ih"]), weight_hh=_mil_order(W[f"{p}_w_hh"]),
                      input_bias=_mil_order(W[f"{p}_b_ih"]), bias=_mil_order(W[f"{p}_b_hh"]), reset_after=True,
                      output_sequence=seq, direction="forward", recurrent_activation="sigmoid", activation="tanh")

    @mb.program(input_specs=specs, opset_version=ct_target.iOS18)
    def main(graphemes, decoder_in):
        _, h = gru(mb.gather(x=W["enc_emb"], indices=graphemes, axis=0), np.zeros((1, H), np.float32), "enc", False)
        y, _ = gru(mb.gather(x=W["dec_emb"], indices=decoder_in, axis=0), h, "dec", True)
        return mb.linear(x=y, weight=W["fc_w"], bias=W["fc_b"], name="logits")

    return main


def build_member(member: dict, out_root, cache, manifest: dict, ct, fetch, common, build_key: str) -> dict:
    """Writes models/zoo/<id>/ (package, inputs, expected logits, member.json, manifest.json)."""
    import time

    t0 = time.time()
    W = load(fetch.member_file(cache, member["weights"], manifest))
    graphemes = encode(member["word"])
    dec_in, logits = reference(W, graphemes)
    with common.quiet():
        mlmodel = ct.convert(build_program(W, len(graphemes), len(dec_in)), convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS18,
                             compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    d = common.start_model_dir(out_root, member["id"], mlmodel).parent
    common.write_npy(d / "inputs" / "graphemes.npy", graphemes.reshape(-1, 1))
    common.write_npy(d / "inputs" / "decoder_in.npy", dec_in.reshape(-1, 1))
    common.write_npy(d / "expected" / "logits.npy", logits.reshape(len(dec_in), 1, -1).astype(np.float32))
    ops, counts, _, _ = common.op_summary(mlmodel.get_spec())
    wf = manifest["files"][member["weights"]]
    phonemes = [int(np.argmax(lg)) for lg in logits]
    info = {
        "id": member["id"], "what": member["what"], "battery": member["battery"], "note": member.get("note"),
        "source": {"wheel": wf["wheel"], "wheel_sha256": manifest["wheels"][wf["wheel"]]["sha256"],
                   "file": wf["path"], "file_sha256": wf["sha256"]},
        "inputs_from": {"word": member["word"], "graphemes": graphemes.tolist(), "decoder_in": dec_in.tolist(),
                        "greedy_phoneme_ids": phonemes,
                        "how": "the word's letters + </s>; decoder inputs: <s> then the reference's greedy output"},
        "reference": "float64 numpy from PyTorch's GRU equations, greedy decoding as g2p_en does (scripts/zoo/g2p_gru.py)",
        "converter": "scripts/zoo/g2p_gru.py (coremltools mb builder)",
        "target": "iOS18", "precision": "fp32",
        "budget": {"rtol": member["rtol"], "rmse": None, "native_f16": None,
                   "meaning": "L-inf <= rtol * max(1, max |expected|) per output",
                   "why": member.get("rtol_why", "fp32 program vs float64 numpy: summation order differs")},
        "io": {"inputs": {"graphemes": {"name": "graphemes", "shape": [len(graphemes), 1], "dtype": "int32"},
                          "decoder_in": {"name": "decoder_in", "shape": [len(dec_in), 1], "dtype": "int32"}},
               "outputs": {"logits": {"name": "logits", "shape": [len(dec_in), 1, int(W["fc_b"].shape[0])],
                                      "dtype": "float32"}}},
        "ops": ops, "op_counts": counts, "coremltools_version": ct.__version__, "build_key": build_key,
    }
    common.write_json(d / "member.json", info)
    scale = max(1.0, float(np.max(np.abs(logits))))
    common.write_json(d / "manifest.json", {
        "model": member["id"], "source": f"{wf['wheel']} {wf['path']} (sha256 {wf['sha256']})", "backend": "mlprogram",
        "precision": "fp32", "quantization": "none", "accuracy_delta_l_inf": member["rtol"] * scale,
        "accuracy_delta_rmse": member["rtol"] * scale, "reference": info["reference"], "ops": ops,
        "zoo": "see member.json (tests/zoo.rs budgets)"})
    common.log(f"[zoo] {member['id']}: {sum(counts.values())} ops ({len(ops)} types), '{member['word']}' -> "
               f"{len(dec_in)} decoder steps in {time.time() - t0:.1f}s")
    return info
