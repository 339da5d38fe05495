//! Reductions (coremltools `reduction.py`).
//!
//! Conventions: `axes` (default: all, negative counted from the end,
//! duplicates ignored); `keep_dims` keeps reduced dims as size 1.
//! `reduce_log_sum_exp` subtracts the maximum first (no overflow);
//! `reduce_prod` multiplies in f64 (i64 for integers). Integer inputs of the
//! float-valued reductions (mean, l2 norm, log sum, log-sum-exp) are reduced
//! in f64 and truncated toward zero (coremltools' `astype(int32)`). `reduce_argmax` and
//! `reduce_argmin` take one `axis` (default -1) and return int32 indices (the
//! first of equal extremes); their iOS17 form's `output_dtype` may be `int32`
//! or `uint16`.

use candle_core::{DType as CDType, Tensor};

use super::{axis_of, one, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "reduce_mean" => |c| reduce(c, Reduce::Mean),
        "reduce_sum" => |c| reduce(c, Reduce::Sum),
        "reduce_max" => |c| reduce(c, Reduce::Max),
        "reduce_min" => |c| reduce(c, Reduce::Min),
        "reduce_l2_norm" => |c| reduce(c, Reduce::L2),
        "reduce_l1_norm" => |c| reduce(c, Reduce::L1),
        "reduce_sum_square" => |c| reduce(c, Reduce::SumSquare),
        "reduce_log_sum" => |c| reduce(c, Reduce::LogSum),
        "reduce_log_sum_exp" => |c| reduce(c, Reduce::LogSumExp),
        "reduce_prod" => |c| reduce(c, Reduce::Prod),
        "reduce_argmax" => |c| arg(c, true),
        "reduce_argmin" => |c| arg(c, false),
        _ => return None,
    })
}

#[derive(Clone, Copy)]
pub(super) enum Reduce {
    Mean,
    Sum,
    Max,
    Min,
    L2,
    L1,
    SumSquare,
    LogSum,
    LogSumExp,
    Prod,
}

pub(super) fn reduce(c: &mut OpCtx, kind: Reduce) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    let keep = c.opt_bool("keep_dims")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let int_dtype = a[x].dtype().is_int().then(|| a[x].dtype());
        // Float-valued reductions of integers run in f64 and truncate toward zero.
        let widened = match (int_dtype, kind) {
            (Some(_), Reduce::Mean | Reduce::L2 | Reduce::LogSum | Reduce::LogSumExp) => {
                Some(a[x].to_dtype(CDType::F64)?)
            }
            _ => None,
        };
        let x = widened.as_ref().unwrap_or(a[x]);
        let rank = x.rank();
        let mut ax: Vec<usize> = match &axes {
            Some(v) => v.iter().map(|&i| axis_of(i, rank)).collect::<CResult<_>>()?,
            None => (0..rank).collect(),
        };
        ax.sort_unstable();
        ax.dedup();
        let mut y = match kind {
            Reduce::Mean => x.mean_keepdim(ax.clone())?,
            Reduce::Sum => x.sum_keepdim(ax.clone())?,
            Reduce::L2 => x.sqr()?.sum_keepdim(ax.clone())?.sqrt()?,
            Reduce::L1 => x.abs()?.sum_keepdim(ax.clone())?,
            Reduce::SumSquare => x.mul(x)?.sum_keepdim(ax.clone())?,
            Reduce::LogSum => x.sum_keepdim(ax.clone())?.log()?,
            Reduce::LogSumExp => {
                let mut m = x.clone();
                for &d in &ax {
                    m = m.max_keepdim(d)?;
                }
                x.broadcast_sub(&m)?.exp()?.sum_keepdim(ax.clone())?.log()?.add(&m)?
            }
            Reduce::Prod => prod_keepdim(x, &ax)?,
            Reduce::Max | Reduce::Min => {
                let mut y = x.clone();
                for &d in &ax {
                    y = match kind {
                        Reduce::Max => y.max_keepdim(d)?,
                        _ => y.min_keepdim(d)?,
                    };
                }
                y
            }
        };
        if !keep {
            for &d in ax.iter().rev() {
                y = y.squeeze(d)?;
            }
        }
        if let (Some(dt), Some(_)) = (int_dtype, &widened) {
            y = (y.relu()?.floor()? - y.neg()?.relu()?.floor()?)?.to_dtype(dt)?;
        }
        one(y)
    }))
}

/// The product over `axes` (sorted, distinct), keeping them as size 1:
/// reduced axes are moved last and each row multiplied out.
fn prod_keepdim(x: &Tensor, axes: &[usize]) -> CResult<Tensor> {
    let rank = x.rank();
    let kept: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
    let order: Vec<usize> = kept.iter().chain(axes).copied().collect();
    let inner: usize = axes.iter().map(|&d| x.dims()[d]).product();
    let mut shape = x.dims().to_vec();
    for &d in axes {
        shape[d] = 1;
    }
    let moved = x.permute(order)?.contiguous()?;
    let out = if x.dtype().is_int() {
        let v: Vec<i64> = moved.to_dtype(CDType::I64)?.flatten_all()?.to_vec1()?;
        let p: Vec<i64> = if inner == 0 {
            vec![1; shape.iter().product()]
        } else {
            v.chunks(inner)
                .map(|r| r.iter().fold(1i64, |a, &b| a.wrapping_mul(b)))
                .collect()
        };
        Tensor::from_vec(p, shape, x.device())?
    } else {
        let v: Vec<f64> = moved.to_dtype(CDType::F64)?.flatten_all()?.to_vec1()?;
        let p: Vec<f64> = if inner == 0 {
            vec![1.0; shape.iter().product()]
        } else {
            v.chunks(inner).map(|r| r.iter().product()).collect()
        };
        Tensor::from_vec(p, shape, x.device())?
    };
    out.to_dtype(x.dtype())
}

pub(super) fn arg(c: &mut OpCtx, max: bool) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c.opt_int("axis")?.unwrap_or(-1);
    let keep = c.opt_bool("keep_dims")?.unwrap_or(false);
    if let Some(dt) = c.opt_string("output_dtype")? {
        // coremltools lower-cases it before checking.
        if !dt.eq_ignore_ascii_case("int32") && !dt.eq_ignore_ascii_case("uint16") {
            return Err(c.unsupported(format!("parameter `output_dtype` = `{dt}`; expected int32 or uint16")));
        }
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        let d = axis_of(axis, x.rank())?;
        let i = if max {
            x.argmax_keepdim(d)?
        } else {
            x.argmin_keepdim(d)?
        };
        let i = i.to_dtype(CDType::I64)?;
        one(if keep { i } else { i.squeeze(d)? })
    }))
}
