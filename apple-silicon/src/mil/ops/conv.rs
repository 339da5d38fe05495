//! Convolution (coremltools `conv.py`).
//!
//! Conventions: NCHW (or NCW) input, weight `[C_out, C_in / groups, *kernel]`
//! constant, optional per-channel `bias`; `pad_type` valid / same /
//! same_lower / custom with `pad` as `[begin, end]` per spatial dim (see
//! `spatial`). Depthwise 2-D convs take our own kernel (`mil::depthwise`),
//! 1×1 stride-1 convs one matmul.

use candle_core::{DType as CDType, Tensor};

use super::spatial::{spatial_pads, spatial_params};
use super::{check_padded, one, Builder, CResult};
use crate::error::Result;
use crate::mil::{depthwise, Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "conv" => conv,
        _ => return None,
    })
}

pub(super) fn conv(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let w = c
        .const_tensor("weight")?
        .ok_or_else(|| c.error("`weight` must be a constant"))?;
    let bias = c.const_tensor("bias")?;
    let groups = c.opt_int("groups")?.unwrap_or(1).max(1) as usize;
    let n = w.rank().saturating_sub(2);
    if !(1..=2).contains(&n) {
        return Err(c.unsupported(format!("{n}-D convolution (1-D and 2-D are supported)")));
    }
    let (strides, dil, pad_type, pad) = spatial_params(c, n)?;
    if strides.iter().any(|&s| s != strides[0]) || dil.iter().any(|&d| d != dil[0]) {
        return Err(c.unsupported(format!("unequal strides {strides:?} or dilations {dil:?}")));
    }
    let (stride, dilation) = (strides[0], dil[0]);
    let kdims = w.dims()[2..].to_vec();
    let (cout, cin_g) = (w.dims()[0], w.dims()[1]);
    let depthwise = n == 2 && groups > 1 && cin_g == 1 && cout == groups;
    if depthwise {
        return depthwise_conv(c, x, &w, bias.as_ref(), (pad_type, pad), stride, dilation);
    }
    let bias = match bias {
        Some(b) => Some(
            b.reshape(if n == 2 { vec![1, cout, 1, 1] } else { vec![1, cout, 1] })
                .map_err(|e| c.error(e.to_string()))?,
        ),
        None => None,
    };
    // A 1x1, stride-1 conv is a matrix product `[cout, cin] @ [cin, h*w]`
    // per image: candle's conv2d would copy the input and the output around it.
    let pointwise = (n == 2 && groups == 1 && kdims == [1, 1] && stride == 1)
        .then(|| w.reshape((cout, cin_g)))
        .transpose()
        .map_err(|e| c.error(e.to_string()))?;
    Ok(Box::new(move |a| {
        let x = a[x];
        if x.rank() != n + 2 {
            candle_core::bail!(
                "{n}-D conv of a tensor of shape {:?} (expected rank {})",
                x.dims(),
                n + 2
            )
        }
        let spatial = &x.dims()[2..];
        let pads = spatial_pads(&pad_type, &pad, spatial, &kdims, &strides, &dil)?;
        check_padded(x, &pads)?;
        if let Some(w2) = pointwise.as_ref().filter(|_| pads.iter().all(|&p| p == (0, 0))) {
            let y = pointwise_conv2d(x, w2)?;
            return one(match &bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            });
        }
        let symmetric = pads.iter().all(|&(b, e)| b == e && b == pads[0].0);
        let (xp, p) = if symmetric {
            (x.clone(), pads[0].0)
        } else {
            let mut xp = x.clone();
            for (i, &(b, e)) in pads.iter().enumerate() {
                xp = xp.pad_with_zeros(2 + i, b, e)?;
            }
            (xp, 0)
        };
        let y = if n == 2 {
            xp.conv2d(&w, p, stride, dilation, groups)?
        } else {
            xp.conv1d(&w, p, stride, dilation, groups)?
        };
        one(match &bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }))
}

/// `x` `[n, cin, h, w]` times `w2` `[cout, cin]` as one batched matmul on
/// the contiguous input, straight into the NCHW output.
pub(super) fn pointwise_conv2d(x: &Tensor, w2: &Tensor) -> CResult<Tensor> {
    let (nb, cin, h, wd) = x.dims4()?;
    let xs = x.contiguous()?.reshape((nb, cin, h * wd))?;
    let y = w2.broadcast_left(nb)?.matmul(&xs)?;
    y.reshape((nb, w2.dims()[0], h, wd))
}

/// A depthwise conv runs in our own kernel (see `depthwise`), with the
/// weights and bias flattened to f32 once here and the bias fused.
pub(super) fn depthwise_conv(
    c: &mut OpCtx,
    x: usize,
    w: &Tensor,
    bias: Option<&Tensor>,
    (pad_type, pad): (String, Vec<i64>),
    stride: usize,
    dilation: usize,
) -> Result<Kernel> {
    let f32s = |t: &Tensor| -> CResult<Vec<f32>> { t.to_dtype(CDType::F32)?.flatten_all()?.to_vec1::<f32>() };
    let (_, _, kh, kw) = w.dims4().map_err(|e| c.error(e.to_string()))?;
    let ws = f32s(w).map_err(|e| c.error(e.to_string()))?;
    let bs = bias.map(f32s).transpose().map_err(|e| c.error(e.to_string()))?;
    Ok(Box::new(move |a| {
        let x = a[x];
        if x.rank() != 4 {
            candle_core::bail!("2-D conv of a tensor of shape {:?} (expected [n, c, h, w])", x.dims())
        }
        let pads = spatial_pads(&pad_type, &pad, &x.dims()[2..], &[kh, kw], &[stride; 2], &[dilation; 2])?;
        check_padded(x, &pads)?;
        one(depthwise::depthwise_conv2d(
            x,
            &ws,
            (kh, kw),
            bs.as_deref(),
            &pads,
            stride,
            dilation,
        )?)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn pointwise_conv_matches_candle_conv2d() {
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 7), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (6, 5, 1, 1), &Device::Cpu).unwrap();
        let want = x.conv2d(&w, 0, 1, 1, 1).unwrap();
        let got = pointwise_conv2d(&x, &w.reshape((6, 5)).unwrap()).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert!(max_diff(&got, &want) < 1e-5);
        // A non-contiguous input (a transposed view) gives the same result.
        let xt = x.transpose(2, 3).unwrap();
        let want = xt.contiguous().unwrap().conv2d(&w, 0, 1, 1, 1).unwrap();
        assert!(max_diff(&pointwise_conv2d(&xt, &w.reshape((6, 5)).unwrap()).unwrap(), &want) < 1e-5);
    }
}
