//! Normalization (coremltools `normalization.py`).
//!
//! Conventions: `batch_norm` normalises per channel (dim 1) with constant
//! statistics, folded into one scale and shift at plan time; `layer_norm`
//! over `axes` (default all) with optional `gamma`/`beta`; `l2_norm` over the
//! last three dims (or the last for rank < 3), `epsilon` added to the norm.

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
        let mean = x.mean_keepdim(ax.clone())?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(ax.clone())?;
        let mut y = centered.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
        if let Some(g) = &gamma {
            y = y.broadcast_mul(g)?;
        }
        if let Some(b) = &beta {
            y = y.broadcast_add(b)?;
        }
        one(y)
    }))
}

pub(super) fn l2_norm(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(1e-6);
    Ok(Box::new(move |a| {
        // Normalises over all dims but the batch dim (rank >= 3: the last three).
        let x = a[x];
        let rank = x.rank();
        let ax: Vec<usize> = if rank >= 3 {
            (rank - 3..rank).collect()
        } else {
            (rank.saturating_sub(1)..rank).collect()
        };
        let norm = x.sqr()?.sum_keepdim(ax)?.sqrt()?.affine(1.0, eps)?;
        one(x.broadcast_div(&norm)?)
    }))
}
