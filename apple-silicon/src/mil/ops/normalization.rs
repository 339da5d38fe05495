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
            if let Some(y) = layer_norm_last_f32(x, gamma.as_ref(), beta.as_ref(), eps as f32)? {
                return one(y);
            }
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

/// Layer norm over the last axis of an f32 CPU tensor with `[n]` (or
/// absent) `gamma`/`beta`: per row, the mean (summed as deviations from the
/// row's first value), then the variance of the deviations from the mean
/// (two passes, no `E[x²] - mean²` cancellation), then
/// `(x - mean) / sqrt(var + eps) · gamma + beta`, each pass vectorised (lane
/// accumulators); rows spread over the interpreter's pool from 64K elements
/// on. `None` for any other case (candle's op handles it). Costs three
/// passes over `x` (in cache per row) and one new buffer.
fn layer_norm_last_f32(x: &Tensor, gamma: Option<&Tensor>, beta: Option<&Tensor>, eps: f32) -> CResult<Option<Tensor>> {
    let n = x.dims().last().copied().unwrap_or(0);
    if x.dtype() != CDType::F32 || !x.device().is_cpu() || n == 0 {
        return Ok(None);
    }
    let param = |p: Option<&Tensor>| -> CResult<Option<Option<Vec<f32>>>> {
        match p {
            None => Ok(Some(None)),
            Some(p) if p.dims() == [n] => Ok(Some(Some(p.to_dtype(CDType::F32)?.to_vec1()?))),
            Some(_) => Ok(None),
        }
    };
    let (Some(g), Some(b)) = (param(gamma)?, param(beta)?) else {
        return Ok(None);
    };
    let x = x.contiguous()?;
    let out = crate::mil::depthwise::with_f32_slice(&x, |s| {
        crate::mil::par_elementwise::map_rows(s, n, |s, d| layer_norm_row(s, d, g.as_deref(), b.as_deref(), eps))
    })?;
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

/// Σ f(v) over `s` with 16 independent accumulators (so that it vectorises).
#[inline(always)]
fn lane_sum(s: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let mut chunks = s.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            acc[i] += f(c[i]);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

fn layer_norm_row(s: &[f32], d: &mut [f32], g: Option<&[f32]>, b: Option<&[f32]>, eps: f32) {
    let n = s.len() as f32;
    // Summed as deviations from the first value: exact for values near each
    // other however far from 0 (a plain f32 sum of 400 values near 1000 is
    // off by ~0.2, 6e-4 in the mean).
    let shift = s[0];
    let mean = shift + lane_sum(s, |v| v - shift) / n;
    let var = lane_sum(s, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    match (g, b) {
        (Some(g), Some(b)) => {
            for (((d, &v), &g), &b) in d.iter_mut().zip(s).zip(g).zip(b) {
                *d = (v - mean) * inv * g + b;
            }
        }
        (Some(g), None) => {
            for ((d, &v), &g) in d.iter_mut().zip(s).zip(g) {
                *d = (v - mean) * inv * g;
            }
        }
        (None, Some(b)) => {
            for ((d, &v), &b) in d.iter_mut().zip(s).zip(b) {
                *d = (v - mean) * inv + b;
            }
        }
        (None, None) => {
            for (d, &v) in d.iter_mut().zip(s) {
                *d = (v - mean) * inv;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The plain definition in f64: per row, (x - mean) / sqrt(var + eps) · g + b.
    fn reference(x: &[f32], n: usize, g: Option<&[f32]>, b: Option<&[f32]>, eps: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(n) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            for (j, &v) in row.iter().enumerate() {
                let y = (v as f64 - mean) / (var + eps).sqrt();
                out.push(y * g.map_or(1.0, |g| g[j] as f64) + b.map_or(0.0, |b| b[j] as f64));
            }
        }
        out
    }

    #[test]
    fn layer_norm_over_the_last_axis_matches_the_definition_on_odd_shapes() {
        // Small rows, rows off the lane width, and one tensor past the parallel threshold;
        // a large offset checks that the variance does not cancel (E[x²] - mean² would).
        for &(rows, n) in &[(1usize, 1usize), (3, 3), (5, 17), (7, 389), (200, 384)] {
            let x: Vec<f32> = (0..rows * n)
                .map(|i| 1000.0 + ((i * 7919 % 113) as f32 - 56.0) * 0.03)
                .collect();
            let g: Vec<f32> = (0..n).map(|j| 0.5 + j as f32 * 0.01).collect();
            let b: Vec<f32> = (0..n).map(|j| j as f32 * -0.02).collect();
            let xt = Tensor::from_vec(x.clone(), (rows, n), &Device::Cpu).unwrap();
            let (gt, bt) = (
                Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap(),
                Tensor::from_vec(b.clone(), n, &Device::Cpu)
                    .unwrap()
                    .to_dtype(CDType::F16)
                    .unwrap(),
            );
            let b16: Vec<f32> = bt.to_dtype(CDType::F32).unwrap().to_vec1().unwrap();
            for (gp, bp) in [
                (Some(&gt), Some(&bt)),
                (None, None),
                (Some(&gt), None),
                (None, Some(&bt)),
            ] {
                let got = layer_norm_last_f32(&xt, gp, bp, 1e-5).unwrap().expect("the fast path");
                let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
                let want = reference(&x, n, gp.map(|_| g.as_slice()), bp.map(|_| b16.as_slice()), 1e-5);
                let d = got
                    .iter()
                    .zip(&want)
                    .map(|(&a, &w)| (a as f64 - w).abs())
                    .fold(0.0, f64::max);
                // The inputs are ~1000 ± 1.7: their own rounding (3e-5) scaled by 1/std (~1) bounds the error.
                assert!(d < 2e-4, "rows {rows}, n {n}: {d}");
            }
        }
        // Another dtype or parameter shape is left to candle.
        let x = Tensor::ones((2, 3), CDType::F16, &Device::Cpu).unwrap();
        assert!(layer_norm_last_f32(&x, None, None, 1e-5).unwrap().is_none());
        let x = Tensor::ones((2, 3), CDType::F32, &Device::Cpu).unwrap();
        let g = Tensor::ones((1, 3), CDType::F32, &Device::Cpu).unwrap();
        assert!(layer_norm_last_f32(&x, Some(&g), None, 1e-5).unwrap().is_none());
    }
}
