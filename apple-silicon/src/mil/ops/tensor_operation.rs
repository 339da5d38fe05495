//! Tensor operations (coremltools `tensor_operation.py`).
//!
//! Conventions: `concat` and `split` along `axis`; `pad` takes `[begin, end]`
//! pairs for the trailing dims; `tile` repeats each dim `reps` times;
//! `shape` returns int dims.

use candle_core::{Device, Tensor};

use super::spatial::pad_value;
use super::{axis_of, one, unary, Builder};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "concat" => concat,
        "split" => split,
        "shape" => |c| {
            unary(c, |x| {
                Tensor::new(x.dims().iter().map(|&d| d as i64).collect::<Vec<_>>(), &Device::Cpu)
            })
        },
        "pad" => pad,
        "tile" => tile,
        _ => return None,
    })
}

pub(super) fn concat(c: &mut OpCtx) -> Result<Kernel> {
    let xs = c.tensors("values")?;
    xs.first()
        .ok_or_else(|| c.error("`values` is empty; concat needs at least one tensor"))?;
    let axis = c.opt_int("axis")?.ok_or_else(|| c.error("`axis` is required"))?;
    if c.opt_bool("interleave")?.unwrap_or(false) {
        return Err(c.unsupported("interleave=true"));
    }
    Ok(Box::new(move |a| {
        let parts: Vec<&Tensor> = xs.iter().map(|&i| a[i]).collect();
        let ax = axis_of(axis, parts[0].rank())?;
        one(Tensor::cat(&parts, ax)?)
    }))
}

pub(super) fn split(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c.opt_int("axis")?.ok_or_else(|| c.error("`axis` is required"))?;
    let sizes = c.opt_ints("split_sizes")?;
    let num = c.opt_int("num_splits")?;
    let n_out = c.op.outputs.len();
    Ok(Box::new(move |a| {
        let x = a[x];
        let ax = axis_of(axis, x.rank())?;
        let dim = x.dims()[ax];
        let sizes: Vec<usize> = match (&sizes, num) {
            (Some(s), _) => s.iter().map(|&v| v as usize).collect(),
            (None, Some(n)) if n > 0 && n as usize <= dim.max(1) && dim % n as usize == 0 => {
                vec![dim / n as usize; n as usize]
            }
            _ => vec![dim / n_out.max(1); n_out],
        };
        let mut start = 0;
        let mut outs = Vec::new();
        for s in sizes {
            outs.push(x.narrow(ax, start, s)?);
            start += s;
        }
        Ok(outs)
    }))
}

pub(super) fn pad(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let pads = c.ints("pad")?;
    let mode = c.opt_string("mode")?.unwrap_or_else(|| "constant".into());
    let value = c.opt_float("constant_val")?.unwrap_or(0.0);
    if mode != "constant" && mode != "replicate" {
        return Err(c.unsupported(format!("pad mode `{mode}`")));
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        let n = pads.len() / 2;
        let p: Vec<(usize, usize)> = (0..n)
            .map(|i| (pads[2 * i].max(0) as usize, pads[2 * i + 1].max(0) as usize))
            .collect();
        super::check_padded(x, &p)?;
        if mode == "replicate" {
            let mut t = x.clone();
            for (i, &(b, e)) in p.iter().enumerate() {
                t = t.pad_with_same(x.rank() - n + i, b, e)?;
            }
            return one(t);
        }
        one(pad_value(x, &p, value)?)
    }))
}

pub(super) fn tile(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let reps = c.ints("reps")?;
    Ok(Box::new(move |a| {
        super::check_tile(a[x], &reps)?;
        let mut y = a[x].clone();
        for (d, &r) in reps.iter().enumerate() {
            if r > 1 {
                let parts = vec![y.clone(); r as usize];
                y = Tensor::cat(&parts, d)?;
            }
        }
        one(y)
    }))
}
