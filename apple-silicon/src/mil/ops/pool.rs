//! Pooling (coremltools `pool.py`): `max_pool`, `avg_pool`.
//!
//! Conventions: NCHW input, `kernel_sizes` and `strides` per spatial dim,
//! `pad_type` as for conv; `ceil_mode` extends the end padding; padded cells
//! are -inf for max and, with `exclude_padding_from_average`, left out of the
//! average's count.

use candle_core::Tensor;

use super::spatial::{pad_value, spatial_pads, spatial_params};
use super::{one, Builder};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "max_pool" => |c| pool(c, PoolKind::Max),
        "avg_pool" => |c| pool(c, PoolKind::Avg),
        _ => return None,
    })
}

#[derive(Clone, Copy)]
pub(super) enum PoolKind {
    Max,
    Avg,
}

pub(super) fn pool(c: &mut OpCtx, kind: PoolKind) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let k: Vec<usize> = c.ints("kernel_sizes")?.into_iter().map(|v| v.max(1) as usize).collect();
    if k.len() != 2 {
        return Err(c.unsupported(format!("{}-D pooling (2-D is supported)", k.len())));
    }
    let (strides, _, pad_type, pad) = spatial_params(c, 2)?;
    let ceil_mode = c.opt_bool("ceil_mode")?.unwrap_or(false);
    let exclude = c.opt_bool("exclude_padding_from_average")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let x = a[x];
        if x.rank() != 4 {
            candle_core::bail!(
                "2-D pooling of a tensor of shape {:?} (expected [n, c, h, w])",
                x.dims()
            )
        }
        let spatial = &x.dims()[2..];
        let mut pads = spatial_pads(&pad_type, &pad, spatial, &k, &strides, &[1, 1])?;
        if ceil_mode {
            for i in 0..2 {
                let span = spatial[i].saturating_add(pads[i].0).saturating_add(pads[i].1);
                if span < k[i] {
                    candle_core::bail!("pool window {k:?} larger than the padded input {spatial:?}")
                }
                let floor_out = (span - k[i]) / strides[i] + 1;
                let ceil_out = (span - k[i]).div_ceil(strides[i]) + 1;
                if ceil_out > floor_out {
                    pads[i].1 += (ceil_out - 1) * strides[i] + k[i] - span;
                }
            }
        }
        let padded = pads.iter().any(|&(b, e)| b + e > 0);
        let kk = (k[0], k[1]);
        let ss = (strides[0], strides[1]);
        match kind {
            PoolKind::Max => {
                let xp = if padded {
                    pad_value(x, &pads, f64::NEG_INFINITY)?
                } else {
                    x.clone()
                };
                one(xp.max_pool2d_with_stride(kk, ss)?)
            }
            PoolKind::Avg => {
                if !padded {
                    return one(x.avg_pool2d_with_stride(kk, ss)?);
                }
                let xp = pad_value(x, &pads, 0.0)?;
                let sum = xp.avg_pool2d_with_stride(kk, ss)?;
                if !exclude && !ceil_mode {
                    return one(sum);
                }
                // Divide by the number of real (unpadded) elements per window.
                let ones = Tensor::ones((1, 1, spatial[0], spatial[1]), x.dtype(), x.device())?;
                let count = pad_value(&ones, &pads, 0.0)?.avg_pool2d_with_stride(kk, ss)?;
                one(sum.broadcast_div(&count)?)
            }
        }
    }))
}
