//! Plan-time fusion of an activation into the op that produces its input.
//!
//! A `conv` or `linear` whose only reader is the next op, an activation
//! (`relu`, `relu6`, `clip`, `sigmoid`, `sigmoid_hard`, `silu`, `gelu`),
//! applies that activation in its own kernel: on each output block while it
//! is still in cache, instead of a second pass over memory and a second
//! buffer. The producer's builder offers a kernel factory ([`Offer`]); the
//! block builder (`block.rs`) takes the offer when the activation comes
//! next, replaces the producer's kernel with one built for [`Act`], and
//! binds the activation's output name to the producer's slot (the
//! activation stays in a lowered program: only the plan changes).
//!
//! Every fused kernel computes the same function as the unfused pair: the
//! fast f32 paths use the scalar functions the unfused activation uses
//! (candle's for relu, `vmath`'s for the transcendental ones, whose vector
//! builds give the same bits), and any other path applies the activation
//! with the unfused op's own code ([`Act::apply`]).

use std::collections::HashMap;

use candle_core::{op, op::UnaryOpT, Tensor};
use coreml_proto::proto::mil_spec::{self, Operation};

use super::ops::{
    elementwise_unary_clamp as clamp, elementwise_unary_map_f32 as map_f32, elementwise_unary_map_fun as map_fun,
};
use super::par_elementwise as par;
use super::vmath::{self, Fun};
use super::{Kernel, OpCtx};
use crate::error::Result;

type CResult<T> = candle_core::Result<T>;

/// Builds the producer's kernel again with an activation fused (plan time).
pub(crate) type Offer = Box<dyn FnOnce(Act) -> Kernel>;

/// An elementwise activation a kernel can apply to its output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Act {
    /// Nothing (the unfused kernel).
    Identity,
    Relu,
    /// `clip(alpha, beta)`; `relu6` is `Clamp(0, 6)`.
    Clamp(f32, f32),
    Sigmoid,
    /// `clamp(alpha · v + beta, 0, 1)`.
    SigmoidHard(f32, f32),
    Silu,
    GeluErf,
    GeluTanh,
}

impl Act {
    /// The activation of one f32 value: exactly the scalar function the
    /// unfused op computes on a contiguous f32 tensor.
    #[inline(always)]
    pub fn f(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Relu => op::Relu::f32(v),
            Act::Clamp(lo, hi) => {
                if v < lo {
                    lo
                } else if v > hi {
                    hi
                } else {
                    v
                }
            }
            Act::SigmoidHard(a, b) => (a * v + b).clamp(0.0, 1.0),
            Act::Sigmoid => Fun::Sigmoid.f(v),
            Act::Silu => Fun::Silu.f(v),
            Act::GeluErf => Fun::GeluErf.f(v),
            Act::GeluTanh => Fun::GeluTanh.f(v),
        }
    }

    /// `row[i] = f(row[i] + bias)`, the epilogue of one output run.
    #[inline]
    pub fn epilogue(self, row: &mut [f32], bias: f32) {
        // One loop per activation so that each vectorises on its own.
        macro_rules! each {
            ($v:ident => $e:expr) => {
                for x in row.iter_mut() {
                    let $v = *x + bias;
                    *x = $e;
                }
            };
        }
        match self {
            Act::Identity => {
                if bias != 0.0 {
                    each!(v => v)
                }
            }
            Act::Relu => each!(v => op::Relu::f32(v)),
            a @ Act::Clamp(..) => each!(v => a.f(v)),
            a @ Act::SigmoidHard(..) => each!(v => a.f(v)),
            // The transcendental ones: vmath's vector builds.
            Act::Sigmoid => vmath::apply_with(Fun::Sigmoid, row, bias),
            Act::Silu => vmath::apply_with(Fun::Silu, row, bias),
            Act::GeluErf => vmath::apply_with(Fun::GeluErf, row, bias),
            Act::GeluTanh => vmath::apply_with(Fun::GeluTanh, row, bias),
        }
    }

    /// `row[j] = f(row[j] + bias[j])`, the epilogue of one output row with a
    /// bias per column (`linear`). Panics if the lengths differ.
    #[inline]
    pub fn epilogue_cols(self, row: &mut [f32], bias: &[f32]) {
        assert_eq!(row.len(), bias.len(), "one bias per column");
        // One loop per activation so that each vectorises on its own.
        macro_rules! each {
            ($v:ident => $e:expr) => {
                for (x, &b) in row.iter_mut().zip(bias) {
                    let $v = *x + b;
                    *x = $e;
                }
            };
        }
        match self {
            Act::Identity => each!(v => v),
            Act::Relu => each!(v => op::Relu::f32(v)),
            a @ Act::Clamp(..) => each!(v => a.f(v)),
            a @ Act::SigmoidHard(..) => each!(v => a.f(v)),
            Act::Sigmoid => vmath::apply_zip(Fun::Sigmoid, row, bias),
            Act::Silu => vmath::apply_zip(Fun::Silu, row, bias),
            Act::GeluErf => vmath::apply_zip(Fun::GeluErf, row, bias),
            Act::GeluTanh => vmath::apply_zip(Fun::GeluTanh, row, bias),
        }
    }

    /// The activation of a whole tensor, by the code the unfused op runs
    /// (any dtype or layout; one pass and one new buffer).
    pub fn apply(self, x: &Tensor) -> CResult<Tensor> {
        match self {
            Act::Identity => Ok(x.clone()),
            Act::Relu => par::unary::<op::Relu>(x, |x| x.relu()),
            Act::Clamp(lo, hi) => clamp(x, lo, hi),
            Act::SigmoidHard(a, b) => map_f32(x, move |v| (a * v + b).clamp(0.0, 1.0)),
            Act::Sigmoid => map_fun(x, Fun::Sigmoid),
            Act::Silu => map_fun(x, Fun::Silu),
            Act::GeluErf => map_fun(x, Fun::GeluErf),
            Act::GeluTanh => map_fun(x, Fun::GeluTanh),
        }
    }
}

/// Whether an op of this type may be fused into its producer (its
/// parameters are read by [`act_of`]).
pub(crate) fn is_activation(op_type: &str) -> bool {
    matches!(
        op_type,
        "relu" | "relu6" | "clip" | "sigmoid" | "sigmoid_hard" | "silu" | "gelu"
    )
}

/// The activation `c.op` computes, reading `x` and its parameters through
/// `c` (so they count as the op's operands), or `None` when it has a form
/// the fused kernels do not compute (gelu's sigmoid approximation).
pub(crate) fn act_of(c: &mut OpCtx) -> Result<Option<Act>> {
    c.tensor("x")?;
    let f = |c: &mut OpCtx, arg: &str| -> Result<Option<f32>> { Ok(c.opt_float(arg)?.map(|v| v as f32)) };
    Ok(match c.op.r#type.as_str() {
        "relu" => Some(Act::Relu),
        "relu6" => Some(Act::Clamp(0.0, 6.0)),
        "clip" => match (f(c, "alpha")?, f(c, "beta")?) {
            (Some(lo), Some(hi)) => Some(Act::Clamp(lo, hi)),
            _ => None,
        },
        "sigmoid" => Some(Act::Sigmoid),
        "sigmoid_hard" => match (f(c, "alpha")?, f(c, "beta")?) {
            (Some(a), Some(b)) => Some(Act::SigmoidHard(a, b)),
            _ => None,
        },
        "silu" => Some(Act::Silu),
        "gelu" => match c.opt_string("mode")?.as_deref() {
            None | Some("EXACT") => Some(Act::GeluErf),
            Some("TANH_APPROXIMATION") => Some(Act::GeluTanh),
            _ => None,
        },
        _ => None,
    })
}

/// How many times each name is read by `ops` (arguments of every op,
/// nested blocks' ops and outputs included).
pub(crate) fn use_counts(ops: &[Operation]) -> HashMap<String, usize> {
    fn walk(ops: &[Operation], n: &mut HashMap<String, usize>) {
        for op in ops {
            for arg in op.inputs.values() {
                for b in &arg.arguments {
                    if let Some(mil_spec::argument::binding::Binding::Name(name)) = &b.binding {
                        *n.entry(name.clone()).or_default() += 1;
                    }
                }
            }
            for blk in &op.blocks {
                walk(&blk.operations, n);
                for o in &blk.outputs {
                    *n.entry(o.clone()).or_default() += 1;
                }
            }
        }
    }
    let mut n = HashMap::new();
    walk(ops, &mut n);
    n
}

/// The name bound to argument `arg` of `op`, if it is a single name.
pub(crate) fn arg_name<'o>(op: &'o Operation, arg: &str) -> Option<&'o str> {
    match op.inputs.get(arg).map(|a| a.arguments.as_slice()) {
        Some([b]) => match &b.binding {
            Some(mil_spec::argument::binding::Binding::Name(n)) => Some(n),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn scalar_functions_match_the_unfused_ops_bit_for_bit() {
        // Values around every kink, plus a spread; 3·7·11 elements (odd, < 64K: candle's own path).
        let v: Vec<f32> = (0..231).map(|i| (i as f32 - 115.0) * 0.071).collect();
        let x = Tensor::from_vec(v.clone(), (3, 7, 11), &Device::Cpu).unwrap();
        let big = Tensor::randn(0f32, 4.0, (3, 129, 385), &Device::Cpu).unwrap();
        for act in [
            Act::Relu,
            Act::Clamp(0.0, 6.0),
            Act::Clamp(-1.5, 0.25),
            Act::Sigmoid,
            Act::SigmoidHard(0.2, 0.5),
            Act::Silu,
            Act::GeluErf,
            Act::GeluTanh,
        ] {
            for t in [&x, &big] {
                let want: Vec<f32> = act.apply(t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let src: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                let mut got = src.clone();
                act.epilogue(&mut got, 0.0);
                assert_eq!(got, want, "{act:?}");
                let mut got = src.clone();
                act.epilogue_cols(&mut got, &vec![0.0; src.len()]);
                assert_eq!(got, want, "{act:?} by columns");
                let each: Vec<f32> = src.iter().map(|&v| act.f(v)).collect();
                assert_eq!(each, want, "{act:?}");
            }
        }
    }

    /// conv2d_valid's program with a `relu6` after its conv (and, with
    /// `expose`, the conv's own output kept as a second block output).
    fn conv_then_relu6(expose: bool) -> crate::mil::Plan {
        crate::mil::test_support::build_edited_result("conv/conv2d_valid", |b| {
            let conv = b.operations.iter_mut().find(|o| o.r#type == "conv").unwrap();
            conv.outputs[0].name = "c".into();
            let mut relu = Operation {
                r#type: "relu6".into(),
                outputs: conv.outputs.clone(),
                ..Default::default()
            };
            relu.outputs[0].name = "y".into();
            relu.inputs.insert(
                "x".into(),
                mil_spec::Argument {
                    arguments: vec![mil_spec::argument::Binding {
                        binding: Some(mil_spec::argument::binding::Binding::Name("c".into())),
                    }],
                },
            );
            b.operations.push(relu);
            if expose {
                b.outputs.push("c".into());
            }
        })
        .unwrap()
    }

    #[test]
    fn a_plan_fuses_an_activation_only_when_nothing_else_reads_the_conv() {
        let dir = crate::mil::test_support::package_path("conv/conv2d_valid");
        let dir = dir.parent().unwrap();
        let x = crate::tensor::Tensor::read_npy(dir.join("inputs/x.npy")).unwrap();
        // The fixture's reference conv output (numpy), clamped as relu6 does.
        let conv_ref = crate::tensor::Tensor::read_npy(dir.join("expected/y.npy"))
            .unwrap()
            .to_f32_vec();
        let relu_ref: Vec<f32> = conv_ref.iter().map(|v| v.clamp(0.0, 6.0)).collect();
        assert!(conv_ref.iter().any(|&v| v < 0.0), "the case must exercise the clamp");
        let close = |got: &[f32], want: &[f32]| {
            assert_eq!(got.len(), want.len());
            let d = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d < 1e-4, "{d}");
        };
        let inputs: crate::tensor::TensorMap = [("x".to_string(), x)].into_iter().collect();

        let fused = conv_then_relu6(false);
        let h = fused.step_histogram();
        assert_eq!(h.get("conv+relu6"), Some(&1), "{h:?}");
        assert!(!h.contains_key("relu6") && !h.contains_key("conv"), "{h:?}");
        close(&fused.run(&inputs).unwrap()["y"].to_f32_vec(), &relu_ref);

        let apart = conv_then_relu6(true);
        let h = apart.step_histogram();
        assert_eq!((h.get("conv"), h.get("relu6")), (Some(&1), Some(&1)), "{h:?}");
        let out = apart.run(&inputs).unwrap();
        close(&out["c"].to_f32_vec(), &conv_ref);
        close(&out["y"].to_f32_vec(), &relu_ref);
    }

    #[test]
    fn apply_keeps_dtype_and_shape() {
        let x = Tensor::randn(0f32, 3.0, (2, 5, 3), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        for act in [Act::Relu, Act::Clamp(0.0, 6.0), Act::Silu, Act::SigmoidHard(0.2, 0.5)] {
            let y = act.apply(&x).unwrap();
            assert_eq!((y.dims(), y.dtype()), (x.dims(), DType::F16));
        }
    }
}
