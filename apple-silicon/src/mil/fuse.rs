//! Plan-time fusion of the elementwise ops after a `conv` or `linear` into
//! that op's kernel.
//!
//! A `conv` or `linear` whose output only the next op reads applies, in its
//! own kernel's epilogue ([`Epi`]: `post(pre(v) + r)`), on each output block
//! while it is still in cache instead of in more passes over memory and
//! more buffers:
//! - activations (`relu`, `relu6`, `clip`, `sigmoid`, `sigmoid_hard`,
//!   `silu`, `gelu`), hard-swish as coremltools spells it
//!   (`sigmoid_hard(v)` then `mul` of `v` by it: [`Act::HardSwish`]) or as
//!   ONNX/Paddle converters do (`add(v, 3)`, `clip(0, 6)`, `mul` of `v` by
//!   it: [`Step::HardSwishClip`]), and `add`/`sub`/`mul`/`real_div` by a
//!   float constant of one element whose broadcast keeps the shape (either
//!   operand order), several in a row as one [`Act::Chain`];
//! - then a residual `add` of another value (`r`, either operand order),
//!   added in the epilogue when it is f32 of exactly the output's shape and
//!   otherwise by the add op's own code (broadcasting, dtype conversion);
//! - then more of the first kind.
//!
//! The producer's builder offers a kernel factory ([`Offer`]); the block
//! builder (`block.rs`) asks [`join`] whether the next op extends the
//! epilogue, builds the producer's kernel again for it, and binds the
//! joined op's output name to the producer's slot (a residual becomes one
//! more operand of the step, so liveness sees it; the ops stay in a lowered
//! program: only the plan changes).
//!
//! The block builder also joins a pointwise conv to the depthwise conv
//! that reads it, where that runs in bands (`depthwise::expand`); the
//! depthwise conv's epilogue then fuses into the joined step as here.
//!
//! Every fused kernel computes the same function as the unfused ops: the
//! fast f32 paths use the unfused ops' scalar functions (candle's for relu,
//! `vmath`'s for the transcendental ones, or vector code giving the same
//! results, `mil::rows`), and any other path applies the
//! epilogue with the unfused ops' own code ([`Act::apply`],
//! [`Epi::finish_unfused`]).

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

/// Builds the producer's kernel again with an epilogue fused (plan time;
/// callable again as more ops join the epilogue).
pub(crate) type Offer = Box<dyn Fn(Epi) -> Kernel>;

/// What a fused kernel applies to each output value `v` (its bias added):
/// `post(pre(v) + r)`, with `r` the residual operand's value at the same
/// index, or just `pre(v)` without a residual (`post` is then `Identity`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Epi {
    pub pre: Act,
    pub residual: Option<Residual>,
    pub post: Act,
}

/// The other operand of a fused `add`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Residual {
    /// Its index among the fused step's operands.
    pub operand: usize,
    /// Whether the producer was the add's `x` (the add converts `y` to
    /// `x`'s dtype: the unfused fallback keeps that order).
    pub producer_is_x: bool,
}

impl Epi {
    /// Just an activation.
    pub fn act(pre: Act) -> Epi {
        Epi {
            pre,
            residual: None,
            post: Act::Identity,
        }
    }

    /// The residual operand among the kernel's arguments, when the fused
    /// kernel can add it in its own epilogue: an f32 tensor of exactly the
    /// output's shape. `None` otherwise (then [`Epi::finish_unfused`]).
    pub fn fast_residual(&self, a: &[&Tensor], out_dims: &[usize]) -> CResult<Option<Tensor>> {
        match self.residual {
            Some(r) => {
                let t = a[r.operand];
                if t.dtype() == candle_core::DType::F32 && t.dims() == out_dims {
                    Ok(Some(t.contiguous()?))
                } else {
                    Ok(None)
                }
            }
            None => Ok(None),
        }
    }

    /// The epilogue past `pre`, computed as the unfused ops would on `y`
    /// (the producer's output with `pre` applied): the add (broadcasting,
    /// dtype conversion as the add op does), then `post`.
    pub fn finish_unfused(&self, y: Tensor, a: &[&Tensor]) -> CResult<Tensor> {
        let Some(r) = self.residual else { return Ok(y) };
        let other = a[r.operand];
        let (l, rt) = if r.producer_is_x { (&y, other) } else { (other, &y) };
        super::ops::check_broadcast(&[l.dims(), rt.dims()], l.dtype().size_in_bytes())?;
        let sum = if l.dtype() != rt.dtype() {
            par::binary(par::BinOp::Add, l, &rt.to_dtype(l.dtype())?)?
        } else {
            par::binary(par::BinOp::Add, l, rt)?
        };
        self.post.apply(&sum)
    }
}

/// `r` from index `at` (empty past its end). Not inlined: inlined, the
/// compiler computed `min(at, len)` before testing whether there was a
/// residual at all, a branch on the undefined length of a `None` that
/// valgrind reports (tests/leak check, `inference-cnn_fp32`).
#[inline(never)]
fn suffix(r: &[f32], at: usize) -> &[f32] {
    &r[at.min(r.len())..]
}

/// A kernel's view of an [`Epi`]: the residual, when fused, as the output's
/// f32 values in the output's order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tail<'a> {
    pub pre: Act,
    pub residual: Option<&'a [f32]>,
    pub post: Act,
}

impl Tail<'_> {
    /// Just an activation.
    pub fn act(pre: Act) -> Tail<'static> {
        Tail {
            pre,
            residual: None,
            post: Act::Identity,
        }
    }

    /// The same epilogue for a part of the output starting at index `at`.
    pub fn from(self, at: usize) -> Self {
        match self.residual {
            Some(r) => Tail {
                residual: Some(suffix(r, at)),
                ..self
            },
            None => self,
        }
    }

    /// For a run of outputs starting at index `at` of the output, `pre`
    /// already applied: adds the residual's matching values, then `post`.
    /// One pass over the run (none without a residual or `post`).
    #[inline]
    pub fn finish(&self, run: &mut [f32], at: usize) {
        if let Some(r) = self.residual {
            let n = run.len();
            for (d, r) in run.iter_mut().zip(&r[at..at + n]) {
                *d += r;
            }
        }
        if !matches!(self.post, Act::Identity) {
            self.post.epilogue(run, 0.0);
        }
    }
}

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
    /// `v · clamp(alpha · v + beta, 0, 1)`: hard-swish, as coremltools
    /// spells it (`mul(v, sigmoid_hard(v))`).
    HardSwish(f32, f32),
    /// Several steps in order (scalar arithmetic, hard-swish in the clip
    /// spelling, activations): see [`Act::then`].
    Chain(Chain),
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
            Act::HardSwish(a, b) => v * (a * v + b).clamp(0.0, 1.0),
            Act::Chain(c) => c.steps().iter().fold(v, |v, s| s.f(v)),
        }
    }

    /// `self` then step `s`: a single activation when `self` is `Identity`
    /// and `s` is one (so the kernels' fast paths for it still apply),
    /// otherwise a chain; `None` when the chain is full.
    pub fn then(self, s: Step) -> Option<Act> {
        let single = match s {
            Step::Relu => Some(Act::Relu),
            Step::Clamp(lo, hi) => Some(Act::Clamp(lo, hi)),
            Step::SigmoidHard(a, b) => Some(Act::SigmoidHard(a, b)),
            Step::HardSwish(a, b) => Some(Act::HardSwish(a, b)),
            Step::Fun(Fun::Sigmoid) => Some(Act::Sigmoid),
            Step::Fun(Fun::Silu) => Some(Act::Silu),
            Step::Fun(Fun::GeluErf) => Some(Act::GeluErf),
            Step::Fun(Fun::GeluTanh) => Some(Act::GeluTanh),
            _ => None,
        };
        let empty = Chain {
            steps: [Step::Relu; CHAIN_LEN],
            len: 0,
        };
        match (self, single) {
            (Act::Identity, Some(a)) => Some(a),
            (Act::Identity, None) => empty.push(s).map(Act::Chain),
            (Act::Chain(c), _) => c.push(s).map(Act::Chain),
            (a, _) => empty.push(Step::of(a)?)?.push(s).map(Act::Chain),
        }
    }

    /// Whether [`Act::then`] can add a step.
    pub fn has_room(self) -> bool {
        !matches!(self, Act::Chain(c) if c.len as usize == CHAIN_LEN)
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
            a @ Act::HardSwish(..) => each!(v => a.f(v)),
            // The transcendental ones: vmath's vector builds.
            Act::Sigmoid => vmath::apply_with(Fun::Sigmoid, row, bias),
            Act::Silu => vmath::apply_with(Fun::Silu, row, bias),
            Act::GeluErf => vmath::apply_with(Fun::GeluErf, row, bias),
            Act::GeluTanh => vmath::apply_with(Fun::GeluTanh, row, bias),
            // The bias as the unfused kernel (`Identity`) adds it, then the steps.
            Act::Chain(c) => c.run(row, bias),
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
            a @ Act::HardSwish(..) => each!(v => a.f(v)),
            Act::Sigmoid => vmath::apply_zip(Fun::Sigmoid, row, bias),
            Act::Silu => vmath::apply_zip(Fun::Silu, row, bias),
            Act::GeluErf => vmath::apply_zip(Fun::GeluErf, row, bias),
            Act::GeluTanh => vmath::apply_zip(Fun::GeluTanh, row, bias),
            Act::Chain(c) => {
                each!(v => v);
                c.run(row, 0.0)
            }
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
            Act::HardSwish(a, b) => {
                let hs = map_f32(x, move |v| (a * v + b).clamp(0.0, 1.0))?;
                par::binary(par::BinOp::Mul, x, &hs)
            }
            Act::Chain(c) => {
                let mut y = x.clone();
                for s in c.steps() {
                    y = s.apply(&y)?;
                }
                Ok(y)
            }
        }
    }
}

/// How many [`Step`]s an [`Act::Chain`] holds (hard-swish in the clip
/// spelling, a scale and a shift, and an activation fit with room left).
pub(crate) const CHAIN_LEN: usize = 6;

/// One elementwise step of an [`Act::Chain`], as one unfused op computes it
/// on an f32 value: a constant scalar operand (`k`) on either side of an
/// arithmetic op, or an activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Step {
    /// `v + k` (`add`, either operand order: f32 addition commutes exactly).
    Add(f32),
    /// `v - k`.
    Sub(f32),
    /// `k - v`.
    SubFrom(f32),
    /// `v · k` (`mul`, either operand order).
    Mul(f32),
    /// `v / k` (`real_div`).
    Div(f32),
    /// `k / v`.
    DivInto(f32),
    Relu,
    /// As [`Act::Clamp`].
    Clamp(f32, f32),
    /// As [`Act::SigmoidHard`].
    SigmoidHard(f32, f32),
    /// As [`Act::HardSwish`].
    HardSwish(f32, f32),
    /// `v · clip(v + k, lo, hi)`: hard-swish as ONNX and Paddle converters
    /// spell it (`add`, `clip`, then `mul` by the producer's value).
    HardSwishClip(f32, f32, f32),
    /// One of `vmath`'s functions (sigmoid, silu, the GELUs).
    Fun(Fun),
}

impl Step {
    /// The step of a single activation (`None` for `Identity`, which is no
    /// step, and for a chain).
    fn of(act: Act) -> Option<Step> {
        Some(match act {
            Act::Identity | Act::Chain(_) => return None,
            Act::Relu => Step::Relu,
            Act::Clamp(lo, hi) => Step::Clamp(lo, hi),
            Act::Sigmoid => Step::Fun(Fun::Sigmoid),
            Act::SigmoidHard(a, b) => Step::SigmoidHard(a, b),
            Act::Silu => Step::Fun(Fun::Silu),
            Act::GeluErf => Step::Fun(Fun::GeluErf),
            Act::GeluTanh => Step::Fun(Fun::GeluTanh),
            Act::HardSwish(a, b) => Step::HardSwish(a, b),
        })
    }

    /// The step on one value: exactly the unfused op's scalar function.
    #[inline(always)]
    pub fn f(self, v: f32) -> f32 {
        match self {
            Step::Add(k) => v + k,
            Step::Sub(k) => v - k,
            Step::SubFrom(k) => k - v,
            Step::Mul(k) => v * k,
            Step::Div(k) => v / k,
            Step::DivInto(k) => k / v,
            Step::Relu => Act::Relu.f(v),
            Step::Clamp(lo, hi) => Act::Clamp(lo, hi).f(v),
            Step::SigmoidHard(a, b) => Act::SigmoidHard(a, b).f(v),
            Step::HardSwish(a, b) => Act::HardSwish(a, b).f(v),
            Step::HardSwishClip(k, lo, hi) => v * Act::Clamp(lo, hi).f(v + k),
            Step::Fun(fun) => fun.f(v),
        }
    }

    /// The step on every value of `xs`, one vectorised loop per kind.
    #[inline]
    fn pass(self, xs: &mut [f32]) {
        macro_rules! each {
            ($v:ident => $e:expr) => {
                for x in xs.iter_mut() {
                    let $v = *x;
                    *x = $e;
                }
            };
        }
        match self {
            Step::Add(k) => each!(v => v + k),
            Step::Sub(k) => each!(v => v - k),
            Step::SubFrom(k) => each!(v => k - v),
            Step::Mul(k) => each!(v => v * k),
            Step::Div(k) => each!(v => v / k),
            Step::DivInto(k) => each!(v => k / v),
            Step::Fun(fun) => vmath::apply_with(fun, xs, 0.0),
            s @ Step::Relu => each!(v => s.f(v)),
            s @ Step::Clamp(..) => each!(v => s.f(v)),
            s @ Step::SigmoidHard(..) => each!(v => s.f(v)),
            s @ Step::HardSwish(..) => each!(v => s.f(v)),
            s @ Step::HardSwishClip(..) => each!(v => s.f(v)),
        }
    }

    /// The step on a whole tensor, by the unfused op's own code (the
    /// constant in the tensor's dtype, as the binary ops cast `y` to `x`'s).
    fn apply(self, x: &Tensor) -> CResult<Tensor> {
        use par::BinOp;
        let k = |k: f32| Tensor::new(k, x.device())?.to_dtype(x.dtype());
        match self {
            Step::Add(c) => par::binary(BinOp::Add, x, &k(c)?),
            Step::Sub(c) => par::binary(BinOp::Sub, x, &k(c)?),
            Step::SubFrom(c) => par::binary(BinOp::Sub, &k(c)?, x),
            Step::Mul(c) => par::binary(BinOp::Mul, x, &k(c)?),
            Step::Div(c) => par::binary(BinOp::Div, x, &k(c)?),
            Step::DivInto(c) => par::binary(BinOp::Div, &k(c)?, x),
            Step::Relu => Act::Relu.apply(x),
            Step::Clamp(lo, hi) => Act::Clamp(lo, hi).apply(x),
            Step::SigmoidHard(a, b) => Act::SigmoidHard(a, b).apply(x),
            Step::HardSwish(a, b) => Act::HardSwish(a, b).apply(x),
            Step::HardSwishClip(c, lo, hi) => {
                let t = clamp(&par::binary(BinOp::Add, x, &k(c)?)?, lo, hi)?;
                par::binary(BinOp::Mul, x, &t)
            }
            Step::Fun(fun) => map_fun(x, fun),
        }
    }
}

/// Up to [`CHAIN_LEN`] steps applied in order (a plain-data list, so that
/// [`Act`] stays `Copy`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Chain {
    steps: [Step; CHAIN_LEN],
    len: u8,
}

impl Chain {
    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps[..self.len as usize]
    }

    /// `self` then `s`, or `None` when it is full.
    fn push(mut self, s: Step) -> Option<Chain> {
        let i = self.len as usize;
        (i < CHAIN_LEN).then(|| {
            self.steps[i] = s;
            self.len += 1;
            self
        })
    }

    /// `bias` (unless 0, as the unfused kernel skips it) then every step
    /// over `row`, in blocks that stay in L1: one vectorised loop per step
    /// and block, one read and one write of `row` in all. (Evaluating the
    /// steps one vector at a time in registers measured slower.)
    fn run(&self, row: &mut [f32], bias: f32) {
        const BLOCK: usize = 256;
        for block in row.chunks_mut(BLOCK) {
            if bias != 0.0 {
                Step::Add(bias).pass(block);
            }
            for s in self.steps() {
                s.pass(block);
            }
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

/// A `clip` op's bounds (`alpha`, `beta`), read through `c` without its
/// `x` (which the plan may not have defined yet); `None` when either is
/// missing.
pub(crate) fn clip_bounds(c: &mut OpCtx) -> Result<Option<(f32, f32)>> {
    let f = |c: &mut OpCtx, arg: &str| -> Result<Option<f32>> { Ok(c.opt_float(arg)?.map(|v| v as f32)) };
    Ok(f(c, "alpha")?.zip(f(c, "beta")?))
}

/// How the op at `ops[i]` can join the epilogue `epi` of the step whose
/// output is `out` (nothing else may read `out`; `keep`: names that must
/// stay values of their own, the block's outputs).
#[derive(Debug, PartialEq)]
pub(crate) enum Join<'o> {
    /// An activation of `out` (its parameters read by [`act_of`]).
    Act,
    /// `sigmoid_hard(out)` then, as the next op, `mul` of `out` by it
    /// (either order), at `ops[mul]`: hard-swish.
    HardSwish { mul: usize },
    /// `add(out, k)` (either order, `k` a constant of one element: its
    /// argument `k`), then `clip` of that at `ops[clip]`, then `mul` of
    /// `out` by the clip (either order) at `ops[mul]`: hard-swish as ONNX
    /// converters spell it ([`Step::HardSwishClip`]).
    HardSwishClip { k: &'o str, clip: usize, mul: usize },
    /// `add`, `sub`, `mul` or `real_div` of `out` and a constant of one
    /// element (its argument `k`; `producer_is_x`: `out` is the op's `x`).
    Scalar { k: &'o str, producer_is_x: bool },
    /// `add(out, other)`, either order.
    Add { other: &'o str, producer_is_x: bool },
}

/// The rank `ops` declare for the value `name` (`None` if no op outputs it
/// or its type is not a tensor's).
fn declared_rank(ops: &[Operation], name: &str) -> Option<usize> {
    let o = ops.iter().flat_map(|op| &op.outputs).find(|o| o.name == name)?;
    match o.r#type.as_ref()?.r#type.as_ref()? {
        mil_spec::value_type::Type::TensorType(t) => usize::try_from(t.rank).ok(),
        _ => None,
    }
}

/// Whether (and how) `ops[i]` joins the pending epilogue: an activation,
/// hard-swish or scalar arithmetic extends `pre` (no residual yet) or
/// `post` (after the residual), an add takes the residual once. `None` ends
/// the fusion. `scalar_rank(op, arg)`: the rank of `op`'s argument `arg`
/// when it is a float constant of one element.
pub(crate) fn join<'o>(
    ops: &'o [Operation],
    i: usize,
    out: &str,
    epi: &Epi,
    uses: &HashMap<String, usize>,
    keep: &std::collections::HashSet<String>,
    scalar_rank: &dyn Fn(&Operation, &str) -> Option<usize>,
) -> Option<Join<'o>> {
    let op = &ops[i];
    if op.outputs.len() != 1 || keep.contains(out) {
        return None;
    }
    let uses_of = |n: &str| uses.get(n).copied().unwrap_or(0);
    let room = match epi.residual {
        None => epi.pre.has_room(),
        Some(_) => epi.post.has_room(),
    };
    // A value only the next op of a pattern reads, and not a block output.
    let inner = |n: &str| uses_of(n) == 1 && !keep.contains(n);
    let next = |from: usize| (from + 1..ops.len()).find(|&j| ops[j].r#type != "const");
    let reads_out = arg_name(op, "x") == Some(out);
    // Which of `x`, `y` is `out`: `Some(true)` for `x` alone, `Some(false)` for `y` alone.
    let side = |o: &Operation| match (arg_name(o, "x") == Some(out), arg_name(o, "y") == Some(out)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    };
    // The other operand, when it is a constant scalar whose broadcast keeps `out`'s shape.
    let scalar_of = |o: &Operation, producer_is_x: bool| {
        let k = if producer_is_x { "y" } else { "x" };
        let r = scalar_rank(o, k)?;
        (r <= declared_rank(ops, out)?).then_some(k)
    };
    match op.r#type.as_str() {
        "add" if room && uses_of(out) == 2 => {
            let producer_is_x = side(op)?;
            let k = scalar_of(op, producer_is_x)?;
            let a = op.outputs[0].name.as_str();
            let clip = next(i)?;
            let c = &ops[clip];
            let fits = c.r#type == "clip" && c.outputs.len() == 1 && arg_name(c, "x") == Some(a) && inner(a);
            let cl = c.outputs[0].name.as_str();
            if !fits || !inner(cl) {
                return None;
            }
            let mul = next(clip)?;
            let m = &ops[mul];
            let pair = (arg_name(m, "x")?, arg_name(m, "y")?);
            let is_hs = m.r#type == "mul" && m.outputs.len() == 1 && (pair == (out, cl) || pair == (cl, out));
            is_hs.then_some(Join::HardSwishClip { k, clip, mul })
        }
        "add" | "sub" | "mul" | "real_div" if uses_of(out) == 1 && side(op).is_some() => {
            let producer_is_x = side(op)?;
            match scalar_of(op, producer_is_x) {
                Some(k) => room.then_some(Join::Scalar { k, producer_is_x }),
                None if op.r#type == "add" && epi.residual.is_none() => Some(Join::Add {
                    other: arg_name(op, if producer_is_x { "y" } else { "x" })?,
                    producer_is_x,
                }),
                None => None,
            }
        }
        "sigmoid_hard" if room && reads_out && uses_of(out) == 2 => {
            let hs = op.outputs[0].name.as_str();
            if !inner(hs) {
                return None;
            }
            let j = next(i)?;
            let m = &ops[j];
            let pair = (arg_name(m, "x")?, arg_name(m, "y")?);
            let is_hs = m.r#type == "mul" && m.outputs.len() == 1 && (pair == (out, hs) || pair == (hs, out));
            is_hs.then_some(Join::HardSwish { mul: j })
        }
        t if is_activation(t) => (room && reads_out && uses_of(out) == 1).then_some(Join::Act),
        _ => None,
    }
}

/// `epi` with step `s` after what its free place holds (`pre` without a
/// residual, else `post`); `None` when that place is full.
pub(crate) fn with_step(mut epi: Epi, s: Step) -> Option<Epi> {
    if epi.residual.is_none() {
        epi.pre = epi.pre.then(s)?;
    } else {
        epi.post = epi.post.then(s)?;
    }
    Some(epi)
}

/// `epi` with activation `act` after what its free place holds (see
/// [`with_step`]).
pub(crate) fn with_act(epi: Epi, act: Act) -> Option<Epi> {
    with_step(epi, Step::of(act)?)
}

/// The value of a float constant of exactly one element (`None` for any
/// other constant).
pub(crate) fn scalar_of(d: &super::value::Decoded) -> Option<f32> {
    use super::value::HostData;
    match &d.data {
        HostData::F32(v) if v.len() == 1 => Some(v[0]),
        HostData::F16(v) if v.len() == 1 => Some(v[0].to_f32()),
        _ => None,
    }
}

/// The rank of `op`'s argument `arg` when it is an inline fp32 value of
/// one element (`None` otherwise).
pub(crate) fn inline_scalar_rank(op: &Operation, arg: &str) -> Option<usize> {
    use mil_spec::{argument::binding::Binding, tensor_value, value, value_type};
    let [b] = op.inputs.get(arg)?.arguments.as_slice() else {
        return None;
    };
    let Some(Binding::Value(v)) = &b.binding else {
        return None;
    };
    let Some(value_type::Type::TensorType(t)) = v.r#type.as_ref()?.r#type.as_ref() else {
        return None;
    };
    let Some(value::Value::ImmediateValue(iv)) = &v.value else {
        return None;
    };
    let Some(value::immediate_value::Value::Tensor(tv)) = &iv.value else {
        return None;
    };
    match &tv.value {
        Some(tensor_value::Value::Floats(f))
            if f.values.len() == 1 && t.data_type == mil_spec::DataType::Float32 as i32 =>
        {
            usize::try_from(t.rank).ok()
        }
        _ => None,
    }
}

/// The step of scalar arithmetic `op_type` with constant `k`
/// (`producer_is_x`: the producer is the op's `x`).
pub(crate) fn scalar_step(op_type: &str, k: f32, producer_is_x: bool) -> Option<Step> {
    Some(match (op_type, producer_is_x) {
        ("add", _) => Step::Add(k),
        ("mul", _) => Step::Mul(k),
        ("sub", true) => Step::Sub(k),
        ("sub", false) => Step::SubFrom(k),
        ("real_div", true) => Step::Div(k),
        ("real_div", false) => Step::DivInto(k),
        _ => return None,
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
        // The fixture's reference conv output (numpy), clamped as relu6 does.
        let (x, conv_ref) = crate::mil::test_support::case_x_and_y("conv/conv2d_valid");
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

    fn name_arg(n: &str) -> mil_spec::Argument {
        mil_spec::Argument {
            arguments: vec![mil_spec::argument::Binding {
                binding: Some(mil_spec::argument::binding::Binding::Name(n.into())),
            }],
        }
    }

    fn float_arg(v: f32) -> mil_spec::Argument {
        use mil_spec::{tensor_value, value};
        let tensor = mil_spec::TensorValue {
            value: Some(tensor_value::Value::Floats(tensor_value::RepeatedFloats {
                values: vec![v],
            })),
        };
        let val = mil_spec::Value {
            doc_string: String::new(),
            r#type: Some(mil_spec::ValueType {
                r#type: Some(mil_spec::value_type::Type::TensorType(mil_spec::TensorType {
                    data_type: mil_spec::DataType::Float32 as i32,
                    rank: 0,
                    dimensions: vec![],
                    attributes: Default::default(),
                })),
            }),
            value: Some(value::Value::ImmediateValue(value::ImmediateValue {
                value: Some(value::immediate_value::Value::Tensor(tensor)),
            })),
        };
        mil_spec::Argument {
            arguments: vec![mil_spec::argument::Binding {
                binding: Some(mil_spec::argument::binding::Binding::Value(val)),
            }],
        }
    }

    /// An op of type `t` named `name` with `args`, whose one output has the
    /// type of `out` (the conv's).
    fn like_output(
        out: &mil_spec::NamedValueType,
        t: &str,
        name: &str,
        args: Vec<(&str, mil_spec::Argument)>,
    ) -> Operation {
        let mut o = Operation {
            r#type: t.into(),
            outputs: vec![out.clone()],
            ..Default::default()
        };
        o.outputs[0].name = name.into();
        o.inputs = args.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        o
    }

    /// conv2d_depthwise's program (x [1, 3, 6, 6] -> y of the same shape)
    /// with hard-swish as coremltools spells it, a residual add of the
    /// input (`x_first`: the input is the add's `x`) and a `relu` after:
    /// `relu(hs(conv(x)) + x)`. With `expose`, the conv's output is a block
    /// output too (nothing may fuse into the conv).
    fn depthwise_hs_add_relu(x_first: bool, expose: bool) -> crate::mil::Plan {
        crate::mil::test_support::build_edited_result("conv/conv2d_depthwise", |b| {
            let conv = b.operations.iter_mut().find(|o| o.r#type == "conv").unwrap();
            conv.outputs[0].name = "c".into();
            let out = conv.outputs[0].clone();
            let op = |t: &str, name: &str, args: Vec<(&str, mil_spec::Argument)>| like_output(&out, t, name, args);
            let hs = op(
                "sigmoid_hard",
                "hs",
                vec![
                    ("x", name_arg("c")),
                    ("alpha", float_arg(1.0 / 6.0)),
                    ("beta", float_arg(0.5)),
                ],
            );
            let mul = op("mul", "m", vec![("x", name_arg("hs")), ("y", name_arg("c"))]);
            let (ax, ay) = if x_first { ("x", "m") } else { ("m", "x") };
            let add = op("add", "a", vec![("x", name_arg(ax)), ("y", name_arg(ay))]);
            let relu = op("relu", "y", vec![("x", name_arg("a"))]);
            b.operations.extend([hs, mul, add, relu]);
            if expose {
                b.outputs.push("c".into());
            }
        })
        .unwrap()
    }

    #[test]
    fn a_plan_fuses_hard_swish_and_a_residual_add_into_a_depthwise_conv() {
        // The fixture's reference conv output (numpy), then the ops after it, in f64.
        let (x, conv_ref) = crate::mil::test_support::case_x_and_y("conv/conv2d_depthwise");
        let xs = x.to_f32_vec();
        let want: Vec<f32> = conv_ref
            .iter()
            .zip(&xs)
            .map(|(&c, &x)| {
                let (c, x) = (c as f64, x as f64);
                (c * (c / 6.0 + 0.5).clamp(0.0, 1.0) + x).max(0.0) as f32
            })
            .collect();
        // Hard-swish's curved part (|v| < 3) is exercised.
        assert!(conv_ref.iter().any(|&v| v.abs() < 3.0 && v != 0.0));
        let inputs: crate::tensor::TensorMap = [("x".to_string(), x)].into_iter().collect();
        let close = |got: &[f32]| {
            assert_eq!(got.len(), want.len());
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d < 1e-4, "{d}");
        };
        for x_first in [true, false] {
            let fused = depthwise_hs_add_relu(x_first, false);
            let h = fused.step_histogram();
            assert_eq!(h.get("conv+hard_swish+add+relu"), Some(&1), "{h:?}");
            assert_eq!(h.len(), 1, "{h:?}");
            close(&fused.run(&inputs).unwrap()["y"].to_f32_vec());
        }
        let apart = depthwise_hs_add_relu(true, true);
        let h = apart.step_histogram();
        assert_eq!(
            (h.get("conv"), h.get("mul"), h.get("add+relu")),
            (Some(&1), Some(&1), None),
            "{h:?}"
        );
        let out = apart.run(&inputs).unwrap();
        close(&out["y"].to_f32_vec());
    }

    /// conv2d_depthwise's program with another op between its conv and
    /// the conv's activation, then a residual add of that op's value:
    /// `y = relu6(conv(x)) + relu(x)`, with `relu(x)` computed after the conv.
    fn depthwise_relu_apart_then_add() -> crate::mil::Plan {
        crate::mil::test_support::build_edited_result("conv/conv2d_depthwise", |b| {
            let conv = b.operations.iter_mut().find(|o| o.r#type == "conv").unwrap();
            conv.outputs[0].name = "c".into();
            let out = conv.outputs[0].clone();
            let op = |t: &str, name: &str, args: Vec<(&str, mil_spec::Argument)>| like_output(&out, t, name, args);
            let r = op("relu", "r", vec![("x", name_arg("x"))]);
            let t = op("relu6", "t", vec![("x", name_arg("c"))]);
            let add = op("add", "y", vec![("x", name_arg("t")), ("y", name_arg("r"))]);
            b.operations.extend([r, t, add]);
        })
        .unwrap()
    }

    #[test]
    fn a_later_activation_fuses_into_the_conv_but_a_later_residual_add_does_not() {
        let (x, conv_ref) = crate::mil::test_support::case_x_and_y("conv/conv2d_depthwise");
        let want: Vec<f32> = conv_ref
            .iter()
            .zip(x.to_f32_vec())
            .map(|(&c, x)| c.clamp(0.0, 6.0) + x.max(0.0))
            .collect();
        assert!(conv_ref.iter().any(|&v| v < 0.0), "the case must exercise the clamp");
        let plan = depthwise_relu_apart_then_add();
        let h = plan.step_histogram();
        // relu6 waited for across `relu`; the add's other operand does not
        // exist yet where the conv runs, so it stays an op of its own.
        assert_eq!(
            (h.get("conv+relu6"), h.get("relu"), h.get("add"), h.len()),
            (Some(&1), Some(&1), Some(&1), 3),
            "{h:?}"
        );
        let inputs: crate::tensor::TensorMap = [("x".to_string(), x)].into_iter().collect();
        let got = plan.run(&inputs).unwrap()["y"].to_f32_vec();
        assert_eq!(got.len(), want.len());
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "{d}");
    }

    /// The unfused ops' own code for the clip-spelled hard-swish, a
    /// division, a scale and a shift (`x - 0.125`): the reference for
    /// [`clip_chain`].
    fn clip_chain_unfused(x: &Tensor) -> Tensor {
        use par::BinOp;
        let k = |v: f32| Tensor::new(v, x.device()).unwrap().to_dtype(x.dtype()).unwrap();
        let a = par::binary(BinOp::Add, &k(3.0), x).unwrap();
        let c = clamp(&a, 0.0, 6.0).unwrap();
        let m = par::binary(BinOp::Mul, &c, x).unwrap();
        let d = par::binary(BinOp::Div, &m, &k(6.0)).unwrap();
        let s = par::binary(BinOp::Mul, &k(0.75), &d).unwrap();
        par::binary(BinOp::Sub, &s, &k(0.125)).unwrap()
    }

    fn clip_chain() -> Act {
        [
            Step::HardSwishClip(3.0, 0.0, 6.0),
            Step::Div(6.0),
            Step::Mul(0.75),
            Step::Sub(0.125),
        ]
        .into_iter()
        .try_fold(Act::Identity, Act::then)
        .unwrap()
    }

    #[test]
    fn a_chain_matches_its_unfused_ops_bit_for_bit() {
        // Odd sizes: under and over one block of the chain, and over 64K (the ops' parallel path).
        let small: Vec<f32> = (0..231).map(|i| (i as f32 - 115.0) * 0.071).collect();
        let x = Tensor::from_vec(small, (3, 7, 11), &Device::Cpu).unwrap();
        let big = Tensor::randn(0f32, 4.0, (3, 129, 385), &Device::Cpu).unwrap();
        let chain = clip_chain();
        assert!(matches!(chain, Act::Chain(c) if c.steps().len() == 4), "{chain:?}");
        for t in [&x, &big] {
            let want: Vec<f32> = clip_chain_unfused(t).flatten_all().unwrap().to_vec1().unwrap();
            let src: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let mut got = src.clone();
            chain.epilogue(&mut got, 0.0);
            assert_eq!(got, want);
            let mut got = src.clone();
            chain.epilogue_cols(&mut got, &vec![0.0; src.len()]);
            assert_eq!(got, want, "by columns");
            let each: Vec<f32> = src.iter().map(|&v| chain.f(v)).collect();
            assert_eq!(each, want, "one by one");
            let got: Vec<f32> = chain.apply(t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "by the ops' code");
            // A bias is added first, as the unfused producer adds it.
            let mut got = src.clone();
            chain.epilogue(&mut got, -0.5);
            let shifted = (t - 0.5).unwrap();
            let want: Vec<f32> = clip_chain_unfused(&shifted).flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "with a bias");
        }
        // Every other step against its op, with the chain's activations after a scalar.
        let src: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let want = |f: &dyn Fn(f32) -> f32| src.iter().map(|&v| f(v)).collect::<Vec<f32>>();
        let cases: [(Step, Vec<f32>); 5] = [
            (Step::Add(0.3), want(&|v| v + 0.3)),
            (Step::SubFrom(0.3), want(&|v| 0.3 - v)),
            (Step::DivInto(0.3), want(&|v| 0.3 / v)),
            (Step::Relu, want(&|v| (v * 0.5).max(0.0))),
            (Step::Fun(Fun::Silu), want(&|v| Fun::Silu.f(v * 0.5))),
        ];
        for (step, want) in cases {
            let act = if matches!(step, Step::Relu | Step::Fun(_)) {
                Act::Identity.then(Step::Mul(0.5)).unwrap().then(step).unwrap()
            } else {
                Act::Identity.then(step).unwrap()
            };
            let mut got = src.clone();
            act.epilogue(&mut got, 0.0);
            assert_eq!(got, want, "{act:?}");
            let t: Vec<f32> = act.apply(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(t, want, "{act:?} by the ops' code");
        }
    }

    #[test]
    fn a_single_activation_stays_one_and_a_full_chain_takes_no_more() {
        assert_eq!(Act::Identity.then(Step::Relu), Some(Act::Relu));
        assert_eq!(Act::Identity.then(Step::Fun(Fun::Silu)), Some(Act::Silu));
        let mut a = Act::Relu;
        for _ in 1..CHAIN_LEN {
            assert!(a.has_room());
            a = a.then(Step::Mul(2.0)).unwrap();
        }
        assert!(!a.has_room());
        assert_eq!(a.then(Step::Relu), None);
        assert_eq!(a.f(-1.0), 0.0);
        assert_eq!(a.f(1.0), 32.0);
    }

    /// `fixture`'s program with the ONNX spelling of hard-swish after its
    /// conv `c`, operands in the less usual orders (`add(3, c)`,
    /// `mul(clip, c)`), then `real_div` by 6, `mul(0.75, ·)` and
    /// `sub(·, 0.125)`. With `expose`, `c` is a block output too (nothing
    /// may fuse into the conv).
    fn conv_clip_chain(fixture: &str, expose: bool) -> crate::mil::Plan {
        crate::mil::test_support::build_edited_result(fixture, |b| {
            let conv = b.operations.iter_mut().find(|o| o.r#type == "conv").unwrap();
            let y = conv.outputs[0].name.clone();
            conv.outputs[0].name = "c".into();
            let out = conv.outputs[0].clone();
            let op = |t: &str, name: &str, args: Vec<(&str, mil_spec::Argument)>| like_output(&out, t, name, args);
            b.operations.extend([
                op("add", "a", vec![("x", float_arg(3.0)), ("y", name_arg("c"))]),
                op(
                    "clip",
                    "cl",
                    vec![
                        ("x", name_arg("a")),
                        ("alpha", float_arg(0.0)),
                        ("beta", float_arg(6.0)),
                    ],
                ),
                op("mul", "m", vec![("x", name_arg("cl")), ("y", name_arg("c"))]),
                op("real_div", "d", vec![("x", name_arg("m")), ("y", float_arg(6.0))]),
                op("mul", "s", vec![("x", float_arg(0.75)), ("y", name_arg("d"))]),
                op("sub", &y, vec![("x", name_arg("s")), ("y", float_arg(0.125))]),
            ]);
            if expose {
                b.outputs.push("c".into());
            }
        })
        .unwrap()
    }

    #[test]
    fn a_plan_fuses_clip_hard_swish_and_scalar_arithmetic_bit_for_bit() {
        for fixture in ["conv/conv2d_depthwise", "conv/conv2d_valid"] {
            let dir = crate::mil::test_support::package_path(fixture);
            let dir = dir.parent().unwrap();
            let x = crate::tensor::Tensor::read_npy(dir.join("inputs/x.npy")).unwrap();
            let inputs: crate::tensor::TensorMap = [("x".to_string(), x)].into_iter().collect();
            let fused = conv_clip_chain(fixture, false);
            let h = fused.step_histogram();
            assert_eq!(h.get("conv+hard_swish+real_div+mul+sub"), Some(&1), "{fixture}: {h:?}");
            assert_eq!(h.len(), 1, "{fixture}: {h:?}");
            let apart = conv_clip_chain(fixture, true);
            let h = apart.step_histogram();
            assert_eq!((h.get("conv"), h.get("clip")), (Some(&1), Some(&1)), "{fixture}: {h:?}");
            let (got, want) = (fused.run(&inputs).unwrap(), apart.run(&inputs).unwrap());
            let (got, want) = (got["y"].to_f32_vec(), want["y"].to_f32_vec());
            // The conv's own output reaches every value of the chain's curved part.
            let c = apart.run(&inputs).unwrap()["c"].to_f32_vec();
            assert!(c.iter().any(|&v| v > -3.0 && v < 3.0 && v != 0.0), "{fixture}");
            assert_eq!(got, want, "{fixture}");
        }
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
