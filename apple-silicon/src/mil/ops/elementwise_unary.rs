//! Elementwise unary ops (coremltools `elementwise_unary.py`).
//!
//! Conventions: output shape = input shape; `epsilon` guards the ops with a
//! pole (`rsqrt`, `inverse`, `log`) and is added before the function; `clip`
//! clamps to `[alpha, beta]`; `threshold` is `max(x, alpha)`; `round` rounds
//! half to even (numpy); `cast` truncates floats toward zero like numpy's
//! `astype`, and bools are stored as u8. Functions candle lacks (`acos`,
//! `tan`, ...) map each element in f32 (f16 through f32); the int32 forms of
//! `square` and `exp2` map in i64.

use candle_core::{op, DType as CDType, Tensor};

use super::{one, unary, unary_eps, Builder, CResult};
use crate::error::Result;
use crate::mil::par_elementwise as par;
use crate::mil::vmath::{self, Fun};
use crate::mil::{compute_dtype, depthwise, Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "erf" => |c| unary(c, |x| map_fun(x, Fun::Erf)),
        "exp" => |c| unary(c, |x| map_fun(x, Fun::Exp)),
        "sqrt" => |c| unary(c, |x| par::unary::<op::Sqrt>(x, |x| x.sqrt())),
        "abs" => |c| unary(c, |x| par::unary::<op::Abs>(x, |x| x.abs())),
        "floor" => |c| unary(c, |x| x.floor()),
        "ceil" => |c| unary(c, |x| x.ceil()),
        "round" => |c| unary(c, |x| map_f32(x, f32::round_ties_even)),
        "sign" => |c| unary(c, |x| x.sign()),
        "sin" => |c| unary(c, |x| par::unary::<op::Sin>(x, |x| x.sin())),
        "cos" => |c| unary(c, |x| par::unary::<op::Cos>(x, |x| x.cos())),
        "square" => |c| unary(c, |x| if x.dtype().is_int() { x.mul(x) } else { x.sqr() }),
        "tan" => |c| unary(c, |x| map_f32(x, f32::tan)),
        "acos" => |c| unary(c, |x| map_f32(x, f32::acos)),
        "asin" => |c| unary(c, |x| map_f32(x, f32::asin)),
        "atan" => |c| unary(c, |x| map_f32(x, f32::atan)),
        "atanh" => |c| unary(c, |x| map_f32(x, f32::atanh)),
        "cosh" => |c| unary(c, |x| map_f32(x, f32::cosh)),
        "sinh" => |c| unary(c, |x| map_f32(x, f32::sinh)),
        "tanh" => |c| unary(c, |x| map_fun(x, Fun::Tanh)),
        "exp2" => |c| unary(c, exp2),
        "threshold" => threshold,
        "identity" => |c| unary(c, |x| Ok(x.clone())),
        "rsqrt" => |c| unary_eps(c, 1e-12, |x, e| x.affine(1.0, e)?.sqrt()?.recip()),
        "inverse" => |c| unary_eps(c, 1e-4, |x, e| x.affine(1.0, e)?.recip()),
        "log" => |c| unary_eps(c, 0.0, |x, e| x.affine(1.0, e)?.log()),
        "clip" => clip,
        "logical_not" => |c| unary(c, |x| x.eq(0u8)),
        "cast" => cast,
        _ => return None,
    })
}

/// `f` applied to every element of a float tensor, computed in f32 (f16 and
/// other float dtypes through f32); the result keeps `x`'s dtype. A
/// contiguous f32 tensor takes one vectorised pass ([`vmath::map_into`]),
/// on the interpreter's pool from 64K elements on; anything else costs a
/// copy out and one in around that pass. `f` should be small and
/// branch-free for the pass to vectorise; `vmath`'s functions go through
/// [`map_fun`].
pub(crate) fn map_f32(x: &Tensor, f: impl Fn(f32) -> f32 + Copy + Send + Sync) -> CResult<Tensor> {
    map_slices(x, move |s, d| vmath::map_into(s, d, f))
}

/// `fun` (one of `vmath`'s functions) of every element, like [`map_f32`]
/// with the function compiled into its own vector loop.
pub(crate) fn map_fun(x: &Tensor, fun: vmath::Fun) -> CResult<Tensor> {
    map_slices(x, move |s, d| vmath::apply_into(fun, s, d))
}

/// `kernel(src, dst)` over a float tensor's elements in f32, chunk by chunk
/// on the interpreter's rayon pool from 64K elements on (candle's own
/// threshold for fanning an elementwise op out); the result keeps `x`'s
/// dtype. Costs one pass for a contiguous f32 tensor, else a copy out and
/// one in around it.
fn map_slices(x: &Tensor, kernel: impl Fn(&[f32], &mut [f32]) + Send + Sync) -> CResult<Tensor> {
    use rayon::prelude::*;
    const PAR_MIN: usize = 64 * 1024;
    const CHUNK: usize = 16 * 1024;
    let dt = x.dtype();
    if !dt.is_float() {
        candle_core::bail!("expected a float tensor, found {dt:?}")
    }
    let run = |src: &[f32]| {
        // Zeroed (calloc'd pages, not a pass) so that the slice is initialised.
        let mut out = vec![0f32; src.len()];
        if src.len() < PAR_MIN {
            kernel(src, &mut out);
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(d, s)| kernel(s, d));
        }
        out
    };
    // A contiguous f32 tensor: one pass over its data, no copies around it.
    if dt == CDType::F32 && x.is_contiguous() && x.device().is_cpu() {
        let out = depthwise::with_f32_slice(x, run)?;
        return Tensor::from_vec(out, x.shape(), x.device());
    }
    let v: Vec<f32> = x.to_dtype(CDType::F32)?.flatten_all()?.to_vec1()?;
    Tensor::from_vec(run(&v), x.shape(), x.device())?.to_dtype(dt)
}

/// `f` applied to every element of an integer tensor (computed in i64).
pub(super) fn map_i64(x: &Tensor, f: impl Fn(i64) -> i64) -> CResult<Tensor> {
    let dt = x.dtype();
    let v: Vec<i64> = x.to_dtype(CDType::I64)?.flatten_all()?.to_vec1()?;
    let out: Vec<i64> = v.into_iter().map(f).collect();
    Tensor::from_vec(out, x.shape(), x.device())?.to_dtype(dt)
}

fn exp2(x: &Tensor) -> CResult<Tensor> {
    if x.dtype().is_float() {
        return map_f32(x, f32::exp2);
    }
    // Integer powers of two; negative exponents truncate to 0, large ones saturate.
    map_i64(x, |v| 2f64.powi(v.clamp(-64, 64) as i32).min(i64::MAX as f64) as i64)
}

fn threshold(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let alpha = c.opt_float("alpha")?.ok_or_else(|| c.error("`alpha` is required"))?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let t = Tensor::new(alpha, x.device())?.to_dtype(x.dtype())?;
        one(x.broadcast_maximum(&t)?)
    }))
}

pub(super) fn clip(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let lo = c.opt_float("alpha")?.ok_or_else(|| c.error("`alpha` is required"))?;
    let hi = c.opt_float("beta")?.ok_or_else(|| c.error("`beta` is required"))?;
    Ok(Box::new(move |a| one(clamp(a[x], lo as f32, hi as f32)?)))
}

/// `x` clamped to `[lo, hi]`. A contiguous f32 tensor (MobileNetV2's ReLU6
/// after every conv) takes one vectorisable pass; candle's `clamp` makes two
/// (maximum, then minimum) through broadcast scalar tensors.
pub(crate) fn clamp(x: &Tensor, lo: f32, hi: f32) -> CResult<Tensor> {
    if x.dtype() != CDType::F32 || !x.is_contiguous() || !x.device().is_cpu() {
        return x.clamp(lo, hi);
    }
    let v = depthwise::with_f32_slice(x, |s| {
        s.iter()
            .map(|&v| {
                if v < lo {
                    lo
                } else if v > hi {
                    hi
                } else {
                    v
                }
            })
            .collect::<Vec<f32>>()
    })?;
    Tensor::from_vec(v, x.shape(), x.device())
}

pub(super) fn cast(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let to = c.opt_string("dtype")?.ok_or_else(|| c.error("`dtype` is required"))?;
    let mil = match to.as_str() {
        "fp32" => 11,
        "fp16" => 10,
        "fp64" => 12,
        "bool" => 1,
        "int8" | "int16" | "int32" | "int64" | "uint8" | "uint16" | "uint32" => 23,
        other => {
            return Err(c.unsupported(format!(
                "parameter `dtype` = `{other}`; expected fp32, fp16, fp64, bool or an integer type"
            )))
        }
    };
    let target = compute_dtype(mil, c.policy).expect("numeric");
    let to_bool = to == "bool";
    Ok(Box::new(move |a| {
        if to_bool {
            return one(a[x].ne(0f64)?);
        }
        // Float to int casts truncate toward zero, like numpy's astype.
        let v = a[x];
        if target == CDType::I64 && v.dtype().is_float() {
            let t = (v.relu()?.floor()? - v.neg()?.relu()?.floor()?)?;
            return one(t.to_dtype(target)?);
        }
        one(v.to_dtype(target)?)
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
    fn clamp_matches_candle_clamp() {
        let x = (Tensor::randn(0f32, 5.0, (3, 4, 5), &Device::Cpu).unwrap() + 2.0).unwrap();
        for t in [x.clone(), x.transpose(0, 2).unwrap(), x.to_dtype(CDType::F16).unwrap()] {
            let got = clamp(&t, 0.0, 6.0).unwrap();
            let want = t.clamp(0f32, 6f32).unwrap();
            assert_eq!((got.dims(), got.dtype()), (want.dims(), want.dtype()));
            let (g, w) = (got.to_dtype(CDType::F32).unwrap(), want.to_dtype(CDType::F32).unwrap());
            assert_eq!(max_diff(&g, &w), 0.0);
        }
    }
}
