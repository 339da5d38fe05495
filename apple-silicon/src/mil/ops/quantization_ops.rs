//! Run-time quantization (coremltools `ops/defs/iOS17/quantization_ops.py`).
//!
//! Conventions: `scale` and `zero_point` are constants, scalars or vectors
//! along `axis` (required for vectors; negative counts from the end).
//! `quantize` computes `clip(round(x / scale) + zero_point)` to int8 or uint8
//! (rounding half to even, as numpy's `around`); `dequantize` computes
//! `scale * (x - zero_point)` in `scale`'s dtype. Quantized values are
//! carried as candle i64 tensors, like every integer.

use candle_core::{DType as CDType, Tensor};

use super::{axis_of, one, Builder, CResult};
use crate::error::Result;
use crate::mil::{compute_dtype, Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "quantize" => quantize,
        "dequantize" => dequantize,
        _ => return None,
    })
}

/// Scale, zero point and axis of a (de)quantize op, checked for shape.
struct Params {
    scale: Vec<f64>,
    zero_point: Option<Vec<f64>>,
    axis: Option<i64>,
}

fn params(c: &mut OpCtx) -> Result<(Params, i32)> {
    let scale = c
        .opt_const("scale")?
        .ok_or_else(|| c.error("required argument `scale` is missing"))?;
    let sv = scale.data.to_f64().ok_or_else(|| c.error("`scale` is not numeric"))?;
    let zp = match c.opt_const("zero_point")? {
        Some(z) => {
            if z.shape.len() != scale.shape.len() || z.data.len() != sv.len() {
                return Err(c.error(format!(
                    "`zero_point` has shape {:?}; expected the shape of `scale` {:?}",
                    z.shape, scale.shape
                )));
            }
            Some(z.data.to_f64().ok_or_else(|| c.error("`zero_point` is not numeric"))?)
        }
        None => None,
    };
    let axis = c.opt_int("axis")?;
    match scale.shape.len() {
        0 => {}
        1 if axis.is_some() => {}
        1 => return Err(c.error("`scale` is a vector but `axis` is missing")),
        r => return Err(c.error(format!("`scale` has rank {r}; expected a scalar or a vector"))),
    }
    if sv.is_empty() {
        return Err(c.error("`scale` is empty"));
    }
    Ok((
        Params {
            scale: sv,
            zero_point: zp,
            axis,
        },
        scale.dtype,
    ))
}

impl Params {
    /// For an input of `dims`: the parameter index of each flat element is
    /// `(i / inner) % n` (a scalar: `n` = 1).
    fn layout(&self, dims: &[usize]) -> CResult<(usize, usize)> {
        if self.scale.len() == 1 && self.axis.is_none() {
            return Ok((1, 1));
        }
        let ax = axis_of(self.axis.unwrap_or(0), dims.len())?;
        let Some(&n) = dims.get(ax) else {
            candle_core::bail!("per-axis `scale` for a scalar input")
        };
        if self.scale.len() != n && self.scale.len() != 1 {
            candle_core::bail!(
                "`scale` has {} values; the input {dims:?} has {n} along axis {ax}",
                self.scale.len()
            )
        }
        Ok((dims[ax + 1..].iter().product::<usize>().max(1), n))
    }

    fn at(v: &[f64], i: usize, inner: usize, n: usize) -> f64 {
        if v.len() == 1 {
            v[0]
        } else {
            v[(i / inner) % n]
        }
    }
}

fn quantize(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("input")?;
    let (p, _) = params(c)?;
    let dtype = c
        .opt_string("output_dtype")?
        .ok_or_else(|| c.error("required argument `output_dtype` is missing"))?;
    let (lo, hi) = match dtype.as_str() {
        "int8" => (-128.0, 127.0),
        "uint8" => (0.0, 255.0),
        other => return Err(c.unsupported(format!("parameter `output_dtype` = `{other}`; expected int8 or uint8"))),
    };
    Ok(Box::new(move |a| {
        let t = a[x];
        let (inner, n) = p.layout(t.dims())?;
        let v: Vec<f32> = t.to_dtype(CDType::F32)?.flatten_all()?.to_vec1()?;
        let out: Vec<i64> = v
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let s = Params::at(&p.scale, i, inner, n) as f32;
                let z = p.zero_point.as_deref().map_or(0.0, |z| Params::at(z, i, inner, n));
                ((x / s).round_ties_even() as f64 + z).clamp(lo, hi) as i64
            })
            .collect();
        one(Tensor::from_vec(out, t.shape(), t.device())?)
    }))
}

fn dequantize(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("input")?;
    let (p, scale_dtype) = params(c)?;
    let out_dt = compute_dtype(scale_dtype, c.policy).unwrap_or(CDType::F32);
    Ok(Box::new(move |a| {
        let t = a[x];
        let (inner, n) = p.layout(t.dims())?;
        let v: Vec<f64> = t.to_dtype(CDType::F64)?.flatten_all()?.to_vec1()?;
        let out: Vec<f32> = v
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let s = Params::at(&p.scale, i, inner, n);
                let z = p.zero_point.as_deref().map_or(0.0, |z| Params::at(z, i, inner, n));
                (s * (q - z)) as f32
            })
            .collect();
        one(Tensor::from_vec(out, t.shape(), t.device())?.to_dtype(out_dt)?)
    }))
}
