//! Activations (coremltools `ops/defs/iOS15/activation.py`).
//!
//! Conventions: every op maps `x` elementwise to a tensor of the same shape
//! and dtype; scalar parameters (`alpha`, `beta`) are constants read at plan
//! time (the iOS17 forms allow them in another float dtype than `x`).
//! `prelu` and `softplus_parametric` take one parameter per channel (dim 1).
//! `softmax` normalises along `axis` (default -1). `softplus` is computed as
//! `log1p(exp(-|x|)) + max(x, 0)`, which does not overflow.

use candle_core::{op, DType, Tensor};

use crate::mil::par_elementwise as par;

use super::elementwise_unary::{clamp, map_f32, map_fun};
use super::{axis_of, one, unary, Builder, CResult};
use crate::error::Result;
use crate::mil::vmath::{self, Fun};
use crate::mil::{depthwise, Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "relu" => |c| unary(c, |x| par::unary::<op::Relu>(x, |x| x.relu())),
        "relu6" => |c| unary(c, |x| clamp(x, 0.0, 6.0)),
        "sigmoid" => |c| unary(c, |x| map_fun(x, Fun::Sigmoid)),
        "silu" => |c| unary(c, |x| map_fun(x, Fun::Silu)),
        "gelu" => gelu,
        "leaky_relu" => leaky_relu,
        "softplus" => |c| unary(c, |x| map_f32(x, softplus)),
        "softsign" => |c| unary(c, |x| map_f32(x, |v| v / (1.0 + v.abs()))),
        "elu" => |c| alpha_beta(c, false, |v, a, _| if v > 0.0 { v } else { a * v.exp_m1() }),
        "thresholded_relu" => |c| alpha_beta(c, false, |v, a, _| if v >= a { v } else { 0.0 }),
        "clamped_relu" => |c| alpha_beta(c, true, |v, a, b| v.max(0.0).min(b) + (v.min(0.0) * a).min(b)),
        "linear_activation" => |c| alpha_beta(c, true, |v, a, b| a * v + b),
        "scaled_tanh" => |c| alpha_beta(c, true, |v, a, b| a * (b * v).tanh()),
        "sigmoid_hard" => |c| alpha_beta(c, true, |v, a, b| (a * v + b).clamp(0.0, 1.0)),
        "prelu" => prelu,
        "softplus_parametric" => softplus_parametric,
        "softmax" => softmax,
        _ => return None,
    })
}

pub(super) fn gelu(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let mode = c.opt_string("mode")?.unwrap_or_else(|| "EXACT".into());
    let f: fn(&Tensor) -> CResult<Tensor> = match mode.as_str() {
        "EXACT" => |x| map_fun(x, Fun::GeluErf),
        "TANH_APPROXIMATION" => |x| map_fun(x, Fun::GeluTanh),
        "SIGMOID_APPROXIMATION" => |x| map_fun(x, Fun::GeluSigmoid),
        other => {
            return Err(c.unsupported(format!(
                "parameter `mode` = `{other}`; expected EXACT, TANH_APPROXIMATION or SIGMOID_APPROXIMATION"
            )))
        }
    };
    Ok(Box::new(move |a| one(f(a[x])?)))
}

pub(super) fn leaky_relu(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let alpha = c.opt_float("alpha")?.unwrap_or(0.01);
    Ok(Box::new(move |a| {
        let x = a[x];
        one(x.relu()?.broadcast_sub(&x.neg()?.relu()?.affine(alpha, 0.0)?)?)
    }))
}

pub(super) fn softmax(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c.opt_int("axis")?.unwrap_or(-1);
    Ok(Box::new(move |a| {
        let x = a[x];
        let ax = axis_of(axis, x.rank())?;
        if ax + 1 == x.rank() {
            one(softmax_last_dim(x)?)
        } else {
            one(candle_nn::ops::softmax(x, ax)?)
        }
    }))
}

/// Softmax along the last axis. An f32 CPU tensor takes one vectorised
/// pass per row ([`vmath::softmax`]; rows spread over the interpreter's pool
/// from 64K elements on); other dtypes go to candle's `softmax_last_dim`.
/// Costs a contiguous copy of `x` if it is strided, and one new buffer.
pub(crate) fn softmax_last_dim(x: &Tensor) -> CResult<Tensor> {
    let x = x.contiguous()?;
    let n = x.dims().last().copied().unwrap_or(0);
    if x.dtype() != DType::F32 || !x.device().is_cpu() || n == 0 {
        return candle_nn::ops::softmax_last_dim(&x);
    }
    let out = depthwise::with_f32_slice(&x, |s| crate::mil::par_elementwise::map_rows(s, n, vmath::softmax))?;
    Tensor::from_vec(out, x.shape(), x.device())
}

/// `log(1 + e^v)` without overflow for large `v`.
fn softplus(v: f32) -> f32 {
    (-v.abs()).exp().ln_1p() + v.max(0.0)
}

/// An elementwise activation with a required scalar `alpha` and, when
/// `with_beta`, a required scalar `beta`.
/// Generic over `f` (not a fn pointer) so that the per-element call inlines.
fn alpha_beta<F>(c: &mut OpCtx, with_beta: bool, f: F) -> Result<Kernel>
where
    F: Fn(f32, f32, f32) -> f32 + Copy + Send + Sync + 'static,
{
    let x = c.tensor("x")?;
    let alpha = c.opt_float("alpha")?.ok_or_else(|| c.error("`alpha` is required"))? as f32;
    let beta = if with_beta {
        c.opt_float("beta")?.ok_or_else(|| c.error("`beta` is required"))? as f32
    } else {
        0.0
    };
    Ok(Box::new(move |a| one(map_f32(a[x], |v| f(v, alpha, beta))?)))
}

/// A per-channel constant parameter (`[C]`), reshaped to broadcast along dim
/// 1 of a rank-`rank` tensor, in `like`'s dtype.
fn per_channel(p: &Tensor, like: &Tensor) -> CResult<Tensor> {
    let rank = like.rank();
    if rank < 2 || p.rank() != 1 || p.dims()[0] != like.dims()[1] {
        candle_core::bail!(
            "per-channel parameter of shape {:?} for an input of shape {:?}; expected [C] with C = dim 1",
            p.dims(),
            like.dims()
        )
    }
    let mut shape = vec![1usize; rank];
    shape[1] = p.dims()[0];
    p.to_dtype(like.dtype())?.reshape(shape)
}

fn required_const(c: &mut OpCtx, arg: &str) -> Result<Tensor> {
    c.const_tensor(arg)?
        .ok_or_else(|| c.error(format!("`{arg}` is required and must be a constant")))
}

pub(super) fn prelu(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let alpha = required_const(c, "alpha")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let al = per_channel(&alpha, x)?;
        let zero = x.zeros_like()?;
        one(x.relu()?.add(&x.minimum(&zero)?.broadcast_mul(&al)?)?)
    }))
}

pub(super) fn softplus_parametric(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let alpha = required_const(c, "alpha")?;
    let beta = required_const(c, "beta")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let (al, be) = (per_channel(&alpha, x)?, per_channel(&beta, x)?);
        one(map_f32(&x.broadcast_mul(&be)?, softplus)?.broadcast_mul(&al)?)
    }))
}
