//! Control flow (coremltools `control_flow.py`): `select`. `cond` and
//! `while_loop` hold nested blocks and are built by the plan builder
//! (`mil/block.rs`).
//!
//! Conventions: `select(cond, a, b)` broadcasts all three operands; a
//! non-zero `cond` picks `a`.

use candle_core::DType as CDType;

use super::{broadcast_shape, one, Builder};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "select" => select,
        _ => return None,
    })
}

pub(super) fn select(c: &mut OpCtx) -> Result<Kernel> {
    let cond = c.tensor("cond")?;
    let x = c.tensor("a")?;
    let y = c.tensor("b")?;
    Ok(Box::new(move |a| {
        let shape = broadcast_shape(&[a[cond].dims(), a[x].dims(), a[y].dims()])?;
        let cnd = a[cond].broadcast_as(shape.as_slice())?.contiguous()?;
        let t = a[x].broadcast_as(shape.as_slice())?.contiguous()?;
        let f = a[y].to_dtype(t.dtype())?.broadcast_as(shape.as_slice())?.contiguous()?;
        one(cnd.to_dtype(CDType::U8)?.where_cond(&t, &f)?)
    }))
}
