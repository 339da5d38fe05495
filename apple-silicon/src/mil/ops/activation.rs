//! Activations (coremltools `ops/defs/iOS15/activation.py`).
//!
//! Conventions: every op maps `x` elementwise to a tensor of the same shape
//! and dtype; scalar parameters (`alpha`, `beta`) are constants read at plan
//! time. `softmax` normalises along `axis` (default -1).

use candle_core::Tensor;

use super::elementwise_unary::clamp;
use super::{axis_of, one, unary, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "relu" => |c| unary(c, |x| x.relu()),
        "relu6" => |c| unary(c, |x| clamp(x, 0.0, 6.0)),
        "tanh" => |c| unary(c, |x| x.tanh()),
        "sigmoid" => |c| unary(c, candle_nn::ops::sigmoid),
        "silu" => |c| unary(c, |x| x.silu()),
        "gelu" => gelu,
        "leaky_relu" => leaky_relu,
        "softplus" => |c| unary(c, |x| (x.exp()? + 1.0)?.log()),
        "softmax" => softmax,
        _ => return None,
    })
}

pub(super) fn gelu(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let mode = c.opt_string("mode")?.unwrap_or_else(|| "EXACT".into());
    let f: fn(&Tensor) -> CResult<Tensor> = match mode.as_str() {
        "EXACT" => |x| x.gelu_erf(),
        "TANH_APPROXIMATION" => |x| x.gelu(),
        "SIGMOID_APPROXIMATION" => |x| x.broadcast_mul(&candle_nn::ops::sigmoid(&x.affine(1.702, 0.0)?)?),
        other => {
            return Err(c.error(format!(
                "gelu mode `{other}`; expected EXACT, TANH_APPROXIMATION or SIGMOID_APPROXIMATION"
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
            one(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
        } else {
            one(candle_nn::ops::softmax(x, ax)?)
        }
    }))
}
