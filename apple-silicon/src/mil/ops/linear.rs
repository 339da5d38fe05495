//! Linear algebra (coremltools `linear.py`): `linear`, `matmul`.
//!
//! Conventions: `linear` is `x @ weightᵀ + bias` with `weight` `[out, in]`
//! constant; `matmul` broadcasts leading (batch) dims, with optional
//! transposes of the last two dims of either operand.

use super::{one, Builder};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "linear" => linear,
        "matmul" => matmul,
        _ => return None,
    })
}

pub(super) fn linear(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let w = c
        .const_tensor("weight")?
        .ok_or_else(|| c.error("`weight` is required"))?;
    let b = c.const_tensor("bias")?;
    if w.rank() != 2 {
        return Err(c.error(format!("weight of rank {}; expected [out, in]", w.rank())));
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        // As candle-nn's Linear: x @ W^T with W broadcast over leading dims.
        let y = match x.dims() {
            [b0, b1, _, _] => x.matmul(&w.broadcast_left((*b0, *b1))?.t()?)?,
            [bsize, _, _] => x.matmul(&w.broadcast_left(*bsize)?.t()?)?,
            _ => x.matmul(&w.t()?)?,
        };
        one(match &b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }))
}

pub(super) fn matmul(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let y = c.tensor("y")?;
    let tx = c.opt_bool("transpose_x")?.unwrap_or(false);
    let ty = c.opt_bool("transpose_y")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let (mut l, mut r) = (a[x].clone(), a[y].clone());
        if l.rank() < 2 || r.rank() < 2 {
            candle_core::bail!(
                "matmul of ranks {} and {} (only rank >= 2 is supported)",
                l.rank(),
                r.rank()
            )
        }
        if tx {
            l = l.t()?;
        }
        if ty {
            r = r.t()?;
        }
        super::check_matmul(&l, &r)?;
        one(l.broadcast_matmul(&r)?)
    }))
}
