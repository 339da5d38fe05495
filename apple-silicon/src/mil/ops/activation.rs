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
            one(softmax_inner_axis(x, ax)?)
        }
    }))
}

/// Softmax along axis `ax`, not the last, of an f32 CPU tensor: viewed as
/// `[outer, n, inner]` (`n` the axis), each block of `n` rows of `inner`
/// values is reduced row against row, so that every pass (max, `e^(v −
/// max)` by `vmath`, sum, scale) reads whole contiguous rows and
/// vectorises; blocks spread over the interpreter's pool from 64K elements
/// on. Same results as the last-axis path on the transposed tensor up to
/// the order of the sum; a column holding NaN or +inf, or only −inf, gives
/// NaN. Other dtypes go to candle's strided softmax. Costs a contiguous
/// copy of `x` if it is strided, one new buffer and `2 · inner` floats of
/// scratch per block.
fn softmax_inner_axis(x: &Tensor, ax: usize) -> CResult<Tensor> {
    let x = x.contiguous()?;
    let n = x.dims()[ax];
    let inner: usize = x.dims()[ax + 1..].iter().product();
    if x.dtype() != DType::F32 || !x.device().is_cpu() || n == 0 || inner == 0 {
        return candle_nn::ops::softmax(&x, ax);
    }
    let block = |src: &[f32], dst: &mut [f32]| {
        let mut neg_max = vec![f32::NEG_INFINITY; inner];
        for row in src.chunks_exact(inner) {
            for (m, &v) in neg_max.iter_mut().zip(row) {
                // NaN never wins here; it turns its column into NaN through the sum.
                *m = if v > *m { v } else { *m };
            }
        }
        neg_max.iter_mut().for_each(|m| *m = -*m);
        let mut sum = vec![0f32; inner];
        for (d, s) in dst.chunks_exact_mut(inner).zip(src.chunks_exact(inner)) {
            d.copy_from_slice(s);
            vmath::apply_zip(vmath::Fun::Exp, d, &neg_max);
            sum.iter_mut().zip(d.iter()).for_each(|(t, &e)| *t += e);
        }
        for d in dst.chunks_exact_mut(inner) {
            d.iter_mut().zip(&sum).for_each(|(e, &t)| *e /= t);
        }
    };
    let out = depthwise::with_f32_slice(&x, |s| crate::mil::par_elementwise::map_rows(s, n * inner, block))?;
    Tensor::from_vec(out, x.shape(), x.device())
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Softmax along `ax` of a row-major `dims` array, in f64, one column at a time.
    fn reference(xs: &[f32], dims: &[usize], ax: usize) -> Vec<f32> {
        let n = dims[ax];
        let inner: usize = dims[ax + 1..].iter().product();
        let mut out = vec![0f32; xs.len()];
        for (b, block) in xs.chunks(n * inner).enumerate() {
            for i in 0..inner {
                let col: Vec<f64> = (0..n).map(|j| block[j * inner + i] as f64).collect();
                let m = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = col.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                for j in 0..n {
                    out[b * n * inner + j * inner + i] = (e[j] / s) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn softmax_on_an_inner_axis_matches_f64_and_turns_bad_columns_to_nan() {
        // Odd sizes; the last one is over the pool's 64K threshold.
        for (dims, ax) in [
            (vec![2, 5, 3, 7], 1),
            (vec![2, 5, 3, 7], 2),
            (vec![3, 2, 9], 0),
            (vec![1, 16, 4, 33], 1),
            (vec![3, 7, 4001], 1),
        ] {
            let len: usize = dims.iter().product();
            let xs: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.71).sin() * 9.0).collect();
            let x = Tensor::from_vec(xs.clone(), dims.as_slice(), &Device::Cpu).unwrap();
            let got: Vec<f32> = softmax_inner_axis(&x, ax)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = reference(&xs, &dims, ax);
            // A few ulps: vmath's exp, the f32 sum and the division.
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (b.abs() + 1e-30))
                .fold(0f32, f32::max);
            assert!(worst < 2e-6, "{dims:?} axis {ax}: off by {worst} relative");
        }
        // Columns of [4, 3]: one with NaN, one with +inf, one of only -inf.
        let xs = [
            1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            2.0,
            f32::NEG_INFINITY,
            3.0,
            0.0,
            f32::NEG_INFINITY,
            4.0,
            1.0,
            f32::NEG_INFINITY,
        ];
        let x = Tensor::from_vec(xs.to_vec(), (4, 3), &Device::Cpu).unwrap();
        let got: Vec<f32> = softmax_inner_axis(&x, 0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(got.iter().all(|v| v.is_nan()), "{got:?}");
    }
}
