"""Checks of onnx2mil.py on small ONNX graphs built here (no downloads; ~5 s), run by `make zoo`:

    .venv/bin/python scripts/zoo/test_onnx2mil.py

Refusals name the node, the op type and the value; converted graphs, run by npmil.py (float64
numpy), match onnxruntime on the original graph. Prints "N passed, M failed" and exits non-zero
on any failure.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "models"))

import common  # noqa: E402
import npmil  # noqa: E402
import onnx2mil  # noqa: E402
import reference  # noqa: E402

ct = common.import_coremltools()


def model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=[numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def agrees(m, feeds: dict, rtol=1e-5):
    """Convert `m`, run it with npmil, compare with onnxruntime."""
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    with common.quiet():
        prog, out_names, _ = onnx2mil.build_program(m, shapes, "iOS15")
        ml = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
                        compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    spec_in = [i.name for i in ml.get_spec().description.input]
    prog_feeds = {p: (v.astype(np.int32).reshape(v.shape or (1,)) if v.dtype == np.int64 else v)
                  for p, v in zip(spec_in, feeds.values())}
    got = npmil.run(ml._mil_program, prog_feeds)
    want = reference.run_onnxruntime(m.SerializeToString(), feeds)
    for name, w in want.items():
        g = got[out_names[name]]
        assert g.shape == w.shape, (name, g.shape, w.shape)
        err = float(np.max(np.abs(g - w))) / max(1.0, float(np.max(np.abs(w))))
        assert err <= rtol, f"{name}: relative L-inf {err:.3e}"


def refuses(m, shapes, *needles):
    try:
        onnx2mil.build_program(m, shapes, "iOS15")
    except onnx2mil.Unsupported as e:
        for n in needles:
            assert n in str(e), f"{n!r} not in {e}"
        return
    raise AssertionError("converted, expected a refusal")


rng = np.random.Generator(np.random.PCG64(5))


def r(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _resize(ctm, x_shape, scales=None, sizes=None, opset=17):
    ins = ["x", "", "s" if scales is not None else "", "z" if sizes is not None else ""]
    inits = [(k, v) for k, v in (("s", scales), ("z", sizes)) if v is not None]
    while ins[-1] == "":
        ins.pop()
    node = helper.make_node("Resize", ins, ["y"], name="rz", mode="linear", coordinate_transformation_mode=ctm)
    return model([node], [f32("x", x_shape)], [f32("y", None)], inits=[(k, np.asarray(v)) for k, v in inits],
                 opset=opset)


def test_linear_resize_half_pixel_integer_scale():
    agrees(_resize("half_pixel", [1, 2, 5, 7], scales=np.array([1, 1, 2, 2], np.float32)), {"x": r(1, 2, 5, 7)})


def test_linear_resize_half_pixel_sizes_non_integer_ratio():
    agrees(_resize("half_pixel", [1, 3, 5, 7], sizes=np.array([1, 3, 8, 10], np.int64)), {"x": r(1, 3, 5, 7)})


def test_linear_resize_pytorch_half_pixel_downscale():
    agrees(_resize("pytorch_half_pixel", [1, 1, 9, 12], sizes=np.array([1, 1, 4, 5], np.int64)), {"x": r(1, 1, 9, 12)})


def test_linear_resize_align_corners_sizes():
    agrees(_resize("align_corners", [1, 2, 6, 4], sizes=np.array([1, 2, 11, 9], np.int64)), {"x": r(1, 2, 6, 4)})


def test_linear_resize_asymmetric_scale():
    agrees(_resize("asymmetric", [1, 2, 4, 6], scales=np.array([1, 1, 2, 1.5], np.float32)), {"x": r(1, 2, 4, 6)})


def test_linear_resize_refusals_name_the_value():
    # a scale that is not output/input (floor(5 * 1.7) = 8): ONNX's half-pixel grid uses 1.7 itself
    refuses(_resize("half_pixel", [1, 1, 5, 5], scales=np.array([1, 1, 1.7, 1.7], np.float32)), {"x": [1, 1, 5, 5]},
            "rz", "Resize", "1.7")
    refuses(_resize("tf_crop_and_resize", [1, 1, 4, 4], scales=np.array([1, 1, 2, 2], np.float32)),
            {"x": [1, 1, 4, 4]}, "rz", "tf_crop_and_resize")


def test_unknown_op_is_refused_naming_node_and_op():
    m = model([helper.make_node("Hardmax", ["x"], ["y"], name="hm1")], [f32("x", [2, 3])], [f32("y", [2, 3])])
    refuses(m, {"x": [2, 3]}, "hm1", "Hardmax", "unknown ONNX op")


def test_unsupported_attribute_is_refused_naming_the_value():
    m = model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="rz", mode="cubic")],
              [f32("x", [1, 1, 4, 4])], [f32("y", [1, 1, 8, 8])], [("s", np.array([1, 1, 2, 2], np.float32))])
    refuses(m, {"x": [1, 1, 4, 4]}, "rz", "Resize", "cubic")


def test_conv_pads_strides_groups_and_bias():
    w, b = r(6, 2, 3, 2), r(6)
    m = model([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1], group=2)],
              [f32("x", [1, 4, 7, 5])], [f32("y", None)], [("w", w), ("b", b)])
    agrees(m, {"x": r(1, 4, 7, 5)})


def test_reflect_pad_then_shape_folded_reshape():
    nodes = [helper.make_node("Pad", ["x", "p"], ["a"], mode="reflect"),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Slice", ["s", "st", "en"], ["s0"]),
             helper.make_node("Concat", ["s0", "m1"], ["t"], axis=0),
             helper.make_node("Reshape", ["a", "t"], ["y"])]
    m = model(nodes, [f32("x", [2, 3, 5])], [f32("y", None)],
              [("p", np.array([0, 0, 1, 0, 0, 2], np.int64)), ("st", np.array([0], np.int64)),
               ("en", np.array([1], np.int64)), ("m1", np.array([-1], np.int64))])
    agrees(m, {"x": r(2, 3, 5)})


def lstm_model(direction):
    H, In = 4, 3
    nodes = [helper.make_node("LSTM", ["x", "w", "r", "b", "", "h0", "c0"], ["y", "yh", "yc"], hidden_size=H,
                              direction=direction, name="rnn")]
    return model(nodes, [f32("x", [5, 2, In]), f32("h0", [1, 2, H]), f32("c0", [1, 2, H])],
                 [f32("y", None), f32("yh", None), f32("yc", None)],
                 [("w", r(1, 4 * H, In)), ("r", r(1, 4 * H, H)), ("b", r(1, 8 * H))])


def test_lstm_forward_with_initial_state_and_bias():
    agrees(lstm_model("forward"), {"x": r(5, 2, 3), "h0": r(1, 2, 4), "c0": r(1, 2, 4)})


def test_lstm_reverse_is_refused():
    refuses(lstm_model("reverse"), {"x": [5, 2, 3], "h0": [1, 2, 4], "c0": [1, 2, 4]}, "rnn", "LSTM", "reverse")


def test_if_on_a_runtime_input_becomes_cond_both_ways():
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [f32("t", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [f32("e", [2, 3])])
    nodes = [helper.make_node("Equal", ["k", "k0"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    m = model(nodes, [f32("x", [2, 3]), helper.make_tensor_value_info("k", TensorProto.INT64, [])],
              [f32("y", [2, 3])], [("k0", np.array(7, np.int64))])
    x = r(2, 3)
    agrees(m, {"x": x, "k": np.array(7, np.int64)})
    agrees(m, {"x": x, "k": np.array(8, np.int64)})


def main() -> None:
    tests = [(k, v) for k, v in globals().items() if k.startswith("test_") and callable(v)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"ok   {name}")
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
