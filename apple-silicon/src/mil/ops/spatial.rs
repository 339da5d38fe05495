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

/// A tensor's values as f32 on the host, with its candle dtype (for the way back).
pub(super) fn host_f32(t: &Tensor) -> CResult<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Host values back into a tensor of `like`'s dtype and device.
pub(super) fn from_host(v: Vec<f32>, shape: &[usize], like: &Tensor) -> CResult<Tensor> {
    Tensor::from_vec(v, shape, like.device())?.to_dtype(like.dtype())
}

/// Spatial dims, kernel, strides, dilations and begin pads lifted to three
/// dims (leading 1s, stride and dilation 1, no pad), so one triple loop
/// serves 1-, 2- and 3-D windows.
pub(super) fn lift3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

/// Output size of one spatial dim of a window op: `floor((in + pads -
/// dilated_kernel) / stride) + 1`, or an error when the input is empty or
/// the padded input is shorter than the kernel.
pub(super) fn window_out(input: usize, pads: (usize, usize), eff: usize, stride: usize) -> CResult<usize> {
    let span = input.saturating_add(pads.0).saturating_add(pads.1);
    if span < eff || input == 0 {
        candle_core::bail!("padded input {span} is shorter than the dilated kernel {eff}")
    }
    Ok((span - eff) / stride + 1)
}

/// Most elements a conv, pool or resize kernel of this family allocates
/// for one tensor (2 GiB of f32): sizes come from the program's parameters,
/// so an absurd pad, scale or target size is an error before anything is
/// allocated.
pub(super) const MAX_ELEMS: usize = 1 << 29;

/// Refuses a tensor of `shape` larger than [`MAX_ELEMS`].
pub(super) fn check_elems(shape: &[usize], what: &str) -> CResult<()> {
    let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match n {
        Some(n) if n <= MAX_ELEMS => Ok(()),
        _ => candle_core::bail!("{what} of shape {shape:?} exceeds {MAX_ELEMS} elements"),
    }
}

/// The shape of `x` with its trailing spatial dims padded by `pads`, checked against [`MAX_ELEMS`].
pub(super) fn check_padded(x: &Tensor, pads: &[(usize, usize)]) -> CResult<()> {
    let mut shape = x.dims().to_vec();
    let r = shape.len();
    for (i, &(b, e)) in pads.iter().enumerate() {
        let d = &mut shape[r - pads.len() + i];
        *d = d.saturating_add(b).saturating_add(e);
    }
    check_elems(&shape, "padded input")
}
