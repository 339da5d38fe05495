//! Normalization (coremltools `normalization.py`).
//!
//! Conventions: `batch_norm` normalises per channel (dim 1) with constant
//! statistics, folded into one scale and shift at plan time; `layer_norm`
//! over `axes` (default all) with optional `gamma`/`beta` shaped like the
//! normalised dims; `instance_norm` per sample and channel over dims 2..,
//! `gamma`/`beta` per channel; `l2_norm` over the last three dims (earlier
//! dims are batch), `x / sqrt(sum(x^2) + epsilon)`; `local_response_norm`
//! divides by `(k + alpha / size * sum(x^2 over a window of size channels))^beta`,
//! the window `[c - (size-1)/2, c + size/2]` clipped to the channels.
//! Parameters may be in another float dtype than `x` (iOS17); f16 inputs of
//! `instance_norm` and `local_response_norm` are computed in f32.

use candle_core::{DType as CDType, Tensor};

use super::{axis_of, one, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "batch_norm" => batch_norm,
        "layer_norm" => layer_norm,
        "l2_norm" => l2_norm,
        "instance_norm" => instance_norm,
        "local_response_norm" => local_response_norm,
        _ => return None,
    })
}

pub(super) fn batch_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let mean = c
        .const_tensor("mean")?
        .ok_or_else(|| c.error("`mean` must be a constant"))?;
    let var = c
        .const_tensor("variance")?
        .ok_or_else(|| c.error("`variance` must be a constant"))?;
    let gamma = c.const_tensor("gamma")?;
    let beta = c.const_tensor("beta")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(1e-5);
    // Fold into one scale and shift per channel: y = x * s + t.
    let fold = || -> CResult<(Tensor, Tensor)> {
        let dt = mean.dtype();
        let m = mean.to_dtype(CDType::F32)?;
        let inv = var.to_dtype(CDType::F32)?.affine(1.0, eps)?.sqrt()?.recip()?;
        let s = match &gamma {
            Some(g) => g.to_dtype(CDType::F32)?.mul(&inv)?,
            None => inv,
        };
        let t = (match &beta {
            Some(b) => b.to_dtype(CDType::F32)?,
            None => m.zeros_like()?,
        } - m.mul(&s)?)?;
        Ok((s.to_dtype(dt)?, t.to_dtype(dt)?))
    };
    let (s, t) = fold().map_err(|e| c.error(e.to_string()))?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let mut shape = vec![1usize; x.rank()];
        if x.rank() < 2 {
            candle_core::bail!("batch_norm input of rank {}; expected [N, C, ...]", x.rank())
        }
        shape[1] = x.dims()[1];
        one(x
            .broadcast_mul(&s.reshape(shape.as_slice())?)?
            .broadcast_add(&t.reshape(shape.as_slice())?)?)
    }))
}

pub(super) fn layer_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    let gamma = c.const_tensor("gamma")?;
    let beta = c.const_tensor("beta")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(1e-5);
    Ok(Box::new(move |a| {
        let x = a[x];
        let rank = x.rank();
        let mut ax: Vec<usize> = match &axes {
            Some(v) => v.iter().map(|&i| axis_of(i, rank)).collect::<CResult<_>>()?,
            None => (0..rank).collect(),
        };
        ax.sort_unstable();
        if ax == [rank - 1] {
            let n = x.dims()[rank - 1];
            let g = match &gamma {
                Some(g) => g.clone(),
                None => Tensor::ones(n, x.dtype(), x.device())?,
            };
            let b = match &beta {
                Some(b) => b.clone(),
                None => Tensor::zeros(n, x.dtype(), x.device())?,
            };
            return one(candle_nn::ops::layer_norm(&x.contiguous()?, &g, &b, eps as f32)?);
        }
        ax.dedup();
        let mean = x.mean_keepdim(ax.clone())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(ax.clone())?;
        let mut y = centered.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
        // gamma and beta have the normalised dims' shape: put them back in place.
        let shape: Vec<usize> = (0..rank)
            .map(|d| if ax.contains(&d) { x.dims()[d] } else { 1 })
            .collect();
        if let Some(g) = &gamma {
            y = y.broadcast_mul(&g.to_dtype(y.dtype())?.reshape(shape.as_slice())?)?;
        }
        if let Some(b) = &beta {
            y = y.broadcast_add(&b.to_dtype(y.dtype())?.reshape(shape.as_slice())?)?;
        }
        one(y)
    }))
}

pub(super) fn l2_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(1e-6);
    Ok(Box::new(move |a| {
        let x = a[x];
        let rank = x.rank();
        if rank < 3 {
            candle_core::bail!("l2_norm input of rank {rank}; expected rank 3 or more")
        }
        let ax: Vec<usize> = (rank - 3..rank).collect();
        let norm = x.sqr()?.sum_keepdim(ax)?.affine(1.0, eps)?.sqrt()?;
        one(x.broadcast_div(&norm)?)
    }))
}

/// Reshapes a `[C]` parameter to broadcast along dim 1 of `x`, in `x`'s dtype.
fn channel_param(p: &Tensor, x: &Tensor) -> CResult<Tensor> {
    if p.rank() != 1 || x.rank() < 2 || p.dims()[0] != x.dims()[1] {
        candle_core::bail!(
            "per-channel parameter of shape {:?} for an input of shape {:?}; expected [C] with C = dim 1",
            p.dims(),
            x.dims()
        )
    }
    let mut shape = vec![1usize; x.rank()];
    shape[1] = p.dims()[0];
    p.to_dtype(x.dtype())?.reshape(shape)
}

/// `x` in f32 when it is f16 (statistics lose too much in f16), with its dtype.
fn widened(x: &Tensor) -> CResult<(Tensor, CDType)> {
    let dt = x.dtype();
    Ok((
        if dt == CDType::F16 {
            x.to_dtype(CDType::F32)?
        } else {
            x.clone()
        },
        dt,
    ))
}

pub(super) fn instance_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let gamma = c.const_tensor("gamma")?;
    let beta = c.const_tensor("beta")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(1e-5);
    Ok(Box::new(move |a| {
        let (x, dt) = widened(a[x])?;
        let rank = x.rank();
        if rank < 3 {
            candle_core::bail!("instance_norm input of rank {rank}; expected [N, C, ...] of rank 3 or more")
        }
        let ax: Vec<usize> = (2..rank).collect();
        let mean = x.mean_keepdim(ax.clone())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(ax)?;
        let mut y = centered.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
        if let Some(g) = &gamma {
            y = y.broadcast_mul(&channel_param(g, &y)?)?;
        }
        if let Some(b) = &beta {
            y = y.broadcast_add(&channel_param(b, &y)?)?;
        }
        one(y.to_dtype(dt)?)
    }))
}

pub(super) fn local_response_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let size = c.opt_int("size")?.ok_or_else(|| c.error("`size` is required"))?;
    if size < 1 {
        return Err(c.error(format!("parameter `size` = {size}; expected at least 1")));
    }
    let size = size as usize;
    let alpha = c.opt_float("alpha")?.unwrap_or(1e-4);
    let beta = c.opt_float("beta")?.unwrap_or(0.75);
    let k = c.opt_float("k")?.unwrap_or(1.0);
    Ok(Box::new(move |a| {
        let (x, dt) = widened(a[x])?;
        if x.rank() < 3 {
            candle_core::bail!("local_response_norm input of rank {}; expected [N, C, ...]", x.rank())
        }
        let ch = x.dims()[1];
        let sq = x.sqr()?;
        let (before, after) = ((size - 1) / 2, size / 2);
        let mut sums = Vec::with_capacity(ch);
        for i in 0..ch {
            let lo = i.saturating_sub(before);
            let hi = (i + after).min(ch - 1);
            sums.push(sq.narrow(1, lo, hi - lo + 1)?.sum_keepdim(1)?);
        }
        let s = Tensor::cat(&sums, 1)?;
        let denom = s.affine(alpha / size as f64, k)?.powf(beta)?;
        one(x.div(&denom)?.to_dtype(dt)?)
    }))
}
