//! Padding arithmetic shared by convolution and pooling.
//!
//! `pad_type` → explicit `[begin, end]` pads per spatial dim, as coremltools'
//! `spatial_dimensions_out_shape` computes them, and constant-value padding
//! of trailing dims.

use candle_core::Tensor;

use super::CResult;
use crate::error::Result;
use crate::mil::OpCtx;

/// Explicit `[begin, end]` padding per spatial dim for `pad_type`.
pub(super) fn spatial_pads(
    pad_type: &str,
    custom: &[i64],
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> CResult<Vec<(usize, usize)>> {
    let n = input.len();
    if kernel.len() < n || strides.len() < n || dilations.len() < n {
        candle_core::bail!("{n} spatial dims but kernel {kernel:?}, strides {strides:?}, dilations {dilations:?}")
    }
    Ok(match pad_type {
        "valid" => vec![(0, 0); n],
        "custom" => {
            if custom.len() != 2 * n {
                candle_core::bail!("custom pad has {} values; expected {}", custom.len(), 2 * n)
            }
            (0..n)
                .map(|i| (custom[2 * i].max(0) as usize, custom[2 * i + 1].max(0) as usize))
                .collect()
        }
        "same" | "same_lower" => (0..n)
            .map(|i| {
                // Saturating: hostile strides or dilations must not wrap
                // (an oversized result is refused when the pad is made).
                let out = input[i].div_ceil(strides[i].max(1));
                let eff = kernel[i]
                    .saturating_sub(1)
                    .saturating_mul(dilations[i])
                    .saturating_add(1);
                let total = out
                    .saturating_sub(1)
                    .saturating_mul(strides[i])
                    .saturating_add(eff)
                    .saturating_sub(input[i]);
                let small = total / 2;
                if pad_type == "same" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            })
            .collect(),
        other => candle_core::bail!("pad_type `{other}`; expected valid, same, same_lower or custom"),
    })
}

/// Strides, dilations, pad type and explicit pads of a conv or pool.
pub(super) type Spatial = (Vec<usize>, Vec<usize>, String, Vec<i64>);

pub(super) fn spatial_params(c: &mut OpCtx, n: usize) -> Result<Spatial> {
    let strides = c.opt_ints("strides")?.unwrap_or_else(|| vec![1; n]);
    let dil = c.opt_ints("dilations")?.unwrap_or_else(|| vec![1; n]);
    let pad_type = c.opt_string("pad_type")?.unwrap_or_else(|| "valid".into());
    let pad = c.opt_ints("pad")?.unwrap_or_else(|| vec![0; 2 * n]);
    if strides.len() != n || dil.len() != n || strides.iter().chain(&dil).any(|&v| v < 1) {
        return Err(c.error(format!("strides {strides:?} / dilations {dil:?} for {n} spatial dims")));
    }
    Ok((
        strides.iter().map(|&v| v as usize).collect(),
        dil.iter().map(|&v| v as usize).collect(),
        pad_type,
        pad,
    ))
}

/// Pads the two trailing (spatial) dims with a constant value.
pub(super) fn pad_value(x: &Tensor, pads: &[(usize, usize)], value: f64) -> CResult<Tensor> {
    super::check_padded(x, pads)?;
    let mut t = x.clone();
    let rank = x.rank();
    for (i, &(b, e)) in pads.iter().enumerate() {
        let dim = rank - pads.len() + i;
        if b + e == 0 {
            continue;
        }
        if value == 0.0 {
            t = t.pad_with_zeros(dim, b, e)?;
            continue;
        }
        let mut parts = Vec::new();
        let side = |n: usize| -> CResult<Tensor> {
            let mut shape = t.dims().to_vec();
            shape[dim] = n;
            Tensor::full(value as f32, shape, t.device())?.to_dtype(t.dtype())
        };
        if b > 0 {
            parts.push(side(b)?);
        }
        parts.push(t.clone());
        if e > 0 {
            parts.push(side(e)?);
        }
        t = Tensor::cat(&parts, dim)?;
    }
    Ok(t)
}
