//! Elementwise binary ops (coremltools `elementwise_binary.py`).
//!
//! Conventions: numpy broadcasting of `x` and `y`; comparisons and logical
//! ops yield bools (u8); when the operands' dtypes differ, `y` is cast to
//! `x`'s.

use candle_core::Tensor;

use super::{one, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "add" => |c| binary(c, |a, b| a.broadcast_add(b)),
        "sub" => |c| binary(c, |a, b| a.broadcast_sub(b)),
        "mul" => |c| binary(c, |a, b| a.broadcast_mul(b)),
        "real_div" => |c| binary(c, |a, b| a.broadcast_div(b)),
        "floor_div" => |c| binary(c, |a, b| a.broadcast_div(b)?.floor()),
        "maximum" => |c| binary(c, |a, b| a.broadcast_maximum(b)),
        "minimum" => |c| binary(c, |a, b| a.broadcast_minimum(b)),
        "pow" => |c| binary(c, |a, b| a.broadcast_pow(b)),
        "equal" => |c| binary(c, |a, b| a.broadcast_eq(b)),
        "not_equal" => |c| binary(c, |a, b| a.broadcast_ne(b)),
        "less" => |c| binary(c, |a, b| a.broadcast_lt(b)),
        "less_equal" => |c| binary(c, |a, b| a.broadcast_le(b)),
        "greater" => |c| binary(c, |a, b| a.broadcast_gt(b)),
        "greater_equal" => |c| binary(c, |a, b| a.broadcast_ge(b)),
        "logical_and" => |c| binary(c, |a, b| a.broadcast_mul(b)?.ne(0u8)),
        "logical_or" => |c| binary(c, |a, b| a.broadcast_add(b)?.ne(0u8)),
        _ => return None,
    })
}

pub(super) fn binary(c: &mut OpCtx, f: fn(&Tensor, &Tensor) -> CResult<Tensor>) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let y = c.tensor("y")?;
    Ok(Box::new(move |a| {
        let (l, r) = (a[x], a[y]);
        super::check_broadcast(&[l.dims(), r.dims()], l.dtype().size_in_bytes())?;
        // Comparisons and logic on bools: keep u8; otherwise operands share a dtype.
        if l.dtype() != r.dtype() {
            let r = r.to_dtype(l.dtype())?;
            return one(f(l, &r)?);
        }
        one(f(l, r)?)
    }))
}
