//! Gather and scatter (coremltools `scatter_gather.py`).
//!
//! Conventions: indices may be negative (counted from the end of the axis)
//! and are bounds-checked at run time: a bad index is an error, never a wild
//! read.

use candle_core::{DType as CDType, Tensor};

use super::{axis_of, one, Builder};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "gather" => gather,
        _ => return None,
    })
}

pub(super) fn gather(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let idx = c.tensor("indices")?;
    let axis = c.opt_int("axis")?.unwrap_or(0);
    if c.opt_int("batch_dims")?.unwrap_or(0) != 0 {
        return Err(c.unsupported("batch_dims != 0"));
    }
    Ok(Box::new(move |a| {
        let (x, ind) = (a[x], a[idx]);
        let ax = axis_of(axis, x.rank())?;
        let dim = x.dims()[ax] as i64;
        let flat = ind.to_dtype(CDType::I64)?.flatten_all()?;
        let v: Vec<i64> = flat.to_vec1()?;
        // Bounds are checked here: a bad index is an error, never a wild read.
        let mut fixed = Vec::with_capacity(v.len());
        for i in v {
            let j = if i < 0 { i + dim } else { i };
            if j < 0 || j >= dim {
                candle_core::bail!("gather index {i} is out of range for an axis of size {dim}")
            }
            fixed.push(j);
        }
        let sel = x.index_select(&Tensor::new(fixed, x.device())?, ax)?;
        let mut shape = x.dims()[..ax].to_vec();
        shape.extend_from_slice(ind.dims());
        shape.extend_from_slice(&x.dims()[ax + 1..]);
        one(sel.reshape(shape)?)
    }))
}
