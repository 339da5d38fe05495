//! Elementwise binary ops (coremltools `elementwise_binary.py`).
//!
//! Conventions: numpy broadcasting of `x` and `y`; comparisons and logical
//! ops yield bools (u8); when the operands' dtypes differ, `y` is cast to
//! `x`'s. `floor_div` and `mod` round toward minus infinity (numpy: the
//! remainder takes the divisor's sign); integer `pow`, `floor_div` and `mod`
//! are computed elementwise in i64 (candle has no integer kernels for them);
//! float `pow` elementwise with `powf` (a negative base to an integral power is real, 0^0 = 1).

use candle_core::Tensor;

use candle_core::DType as CDType;

use super::{broadcast_shape, one, Builder, CResult};
use crate::error::Result;
use crate::mil::par_elementwise::{self, BinOp};
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "add" => |c| binary(c, |a, b| par_elementwise::binary(BinOp::Add, a, b)),
        "sub" => |c| binary(c, |a, b| par_elementwise::binary(BinOp::Sub, a, b)),
        "mul" => |c| binary(c, |a, b| par_elementwise::binary(BinOp::Mul, a, b)),
        "real_div" => |c| binary(c, |a, b| par_elementwise::binary(BinOp::Div, a, b)),
        "floor_div" => |c| binary(c, floor_div),
        "mod" => |c| binary(c, modulo),
        "maximum" => |c| binary(c, |a, b| par_elementwise::binary(BinOp::Max, a, b)),
        "minimum" => |c| binary(c, |a, b| par_elementwise::binary(BinOp::Min, a, b)),
        "pow" => |c| binary(c, pow),
        "equal" => |c| binary(c, |a, b| a.broadcast_eq(b)),
        "not_equal" => |c| binary(c, |a, b| a.broadcast_ne(b)),
        "less" => |c| binary(c, |a, b| a.broadcast_lt(b)),
        "less_equal" => |c| binary(c, |a, b| a.broadcast_le(b)),
        "greater" => |c| binary(c, |a, b| a.broadcast_gt(b)),
        "greater_equal" => |c| binary(c, |a, b| a.broadcast_ge(b)),
        "logical_and" => |c| binary(c, |a, b| a.broadcast_mul(b)?.ne(0u8)),
        "logical_or" => |c| binary(c, |a, b| a.broadcast_add(b)?.ne(0u8)),
        "logical_xor" => |c| binary(c, |a, b| a.ne(0u8)?.broadcast_ne(&b.ne(0u8)?)),
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

/// `f` on the broadcast elements of two integer tensors, in i64.
fn map2_i64(a: &Tensor, b: &Tensor, f: impl Fn(i64, i64) -> CResult<i64>) -> CResult<Tensor> {
    let shape = broadcast_shape(&[a.dims(), b.dims()])?;
    let flat = |t: &Tensor| -> CResult<Vec<i64>> {
        t.to_dtype(CDType::I64)?
            .broadcast_as(shape.as_slice())?
            .contiguous()?
            .flatten_all()?
            .to_vec1()
    };
    let (x, y) = (flat(a)?, flat(b)?);
    let out = x
        .into_iter()
        .zip(y)
        .map(|(x, y)| f(x, y))
        .collect::<CResult<Vec<i64>>>()?;
    Tensor::from_vec(out, shape.as_slice(), a.device())?.to_dtype(a.dtype())
}

fn int_divisor(y: i64) -> CResult<i64> {
    if y == 0 {
        candle_core::bail!("integer division by zero")
    }
    Ok(y)
}

fn floor_div(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    if a.dtype().is_int() {
        return map2_i64(a, b, |x, y| {
            Ok(x.div_euclid(int_divisor(y)?) - i64::from(y < 0 && x.rem_euclid(y) != 0))
        });
    }
    a.broadcast_div(b)?.floor()
}

fn modulo(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    if a.dtype().is_int() {
        return map2_i64(a, b, |x, y| {
            let r = x % int_divisor(y)?;
            Ok(if r != 0 && (r < 0) != (y < 0) { r + y } else { r })
        });
    }
    // x - floor(x / y) * y: the remainder takes y's sign.
    a.broadcast_sub(&a.broadcast_div(b)?.floor()?.broadcast_mul(b)?)
}

fn pow(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    if a.dtype().is_int() {
        return map2_i64(a, b, |x, y| {
            if y < 0 {
                // numpy refuses negative integer powers; 1/x^n truncates to 0 unless |x| == 1.
                return Ok(match x {
                    1 => 1,
                    -1 => {
                        if y % 2 == 0 {
                            1
                        } else {
                            -1
                        }
                    }
                    _ => 0,
                });
            }
            Ok(x.wrapping_pow(u32::try_from(y).unwrap_or(u32::MAX)))
        });
    }
    // candle's pow is exp(y * ln x): NaN for every negative base and for 0^0. numpy's (and
    // MIL's) real power is defined there when y is integral (LayerNorm decompositions square a
    // centred, half-negative tensor with pow(x, 2)), so compute it elementwise with powf.
    let shape = broadcast_shape(&[a.dims(), b.dims()])?;
    let flat = |t: &Tensor| -> CResult<Vec<f64>> {
        t.to_dtype(CDType::F64)?
            .broadcast_as(shape.as_slice())?
            .contiguous()?
            .flatten_all()?
            .to_vec1()
    };
    let out: Vec<f64> = flat(a)?.into_iter().zip(flat(b)?).map(|(x, y)| x.powf(y)).collect();
    Tensor::from_vec(out, shape.as_slice(), a.device())?.to_dtype(a.dtype())
}
