//! Tensor transformations (coremltools `tensor_transformation.py`).
//!
//! Conventions: ops that only re-view data (`reshape`, `transpose`,
//! `expand_dims`, `squeeze`, `slice_by_index`); negative axes count from the
//! end; `reshape` takes `-1` for one inferred dim and `0` to copy a dim.

use candle_core::{DType as CDType, Tensor};

use super::{axis_of, one, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "reshape" => reshape,
        "transpose" => transpose,
        "expand_dims" => expand_dims,
        "squeeze" => squeeze,
        "slice_by_index" => slice_by_index,
        _ => return None,
    })
}

pub(super) fn reshape(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let runtime = c.is_runtime("shape")?;
    let (shape_const, shape_op) = if runtime {
        (None, Some(c.tensor("shape")?))
    } else {
        (Some(c.ints("shape")?), None)
    };
    Ok(Box::new(move |a| {
        let x = a[x];
        let spec: Vec<i64> = match (&shape_const, shape_op) {
            (Some(s), _) => s.clone(),
            (None, Some(i)) => a[i].to_dtype(CDType::I64)?.flatten_all()?.to_vec1()?,
            _ => unreachable!(),
        };
        let dims = x.dims();
        let mut out: Vec<usize> = Vec::with_capacity(spec.len());
        let mut hole = None;
        for (i, &s) in spec.iter().enumerate() {
            match s {
                -1 if hole.is_none() => {
                    hole = Some(i);
                    out.push(1);
                }
                0 if spec.len() == dims.len() => out.push(dims[i]),
                s if s > 0 => out.push(s as usize),
                s => candle_core::bail!("reshape target {spec:?} has an invalid entry {s}"),
            }
        }
        if let Some(h) = hole {
            let known = crate::tensor::checked_numel(&out).unwrap_or(0); // overflow: refused below
            if known == 0 || x.elem_count() % known != 0 {
                candle_core::bail!("cannot reshape {dims:?} into {spec:?}")
            }
            out[h] = x.elem_count() / known;
        }
        crate::tensor::checked_numel(&out)
            .ok_or_else(|| candle_core::Error::Msg(format!("reshape target {spec:?} overflows")))?;
        one(x.reshape(out)?)
    }))
}

pub(super) fn transpose(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let perm = c.ints("perm")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let p: Vec<usize> = perm.iter().map(|&i| axis_of(i, x.rank())).collect::<CResult<_>>()?;
        one(x.permute(p)?)
    }))
}

pub(super) fn expand_dims(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.ints("axes")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let out_rank = x.rank() + axes.len();
        let mut ax: Vec<usize> = axes.iter().map(|&i| axis_of(i, out_rank)).collect::<CResult<_>>()?;
        ax.sort_unstable();
        let mut y = x.clone();
        for d in ax {
            y = y.unsqueeze(d)?;
        }
        one(y)
    }))
}

pub(super) fn squeeze(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let mut ax: Vec<usize> = match &axes {
            Some(v) => v.iter().map(|&i| axis_of(i, x.rank())).collect::<CResult<_>>()?,
            None => x
                .dims()
                .iter()
                .enumerate()
                .filter(|(_, &d)| d == 1)
                .map(|(i, _)| i)
                .collect(),
        };
        ax.sort_unstable();
        let mut y = x.clone();
        for d in ax.into_iter().rev() {
            y = y.squeeze(d)?;
        }
        one(y)
    }))
}

pub(super) fn slice_by_index(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let begin = c.ints("begin")?;
    let end = c.ints("end")?;
    let stride = c.opt_ints("stride")?;
    let bmask = c.opt_ints("begin_mask")?;
    let emask = c.opt_ints("end_mask")?;
    let smask = c.opt_ints("squeeze_mask")?;
    Ok(Box::new(move |a| {
        let mut y = a[x].clone();
        let dims = y.dims().to_vec();
        for (d, &size) in dims.iter().enumerate() {
            let s = stride.as_ref().map_or(1, |v| v.get(d).copied().unwrap_or(1));
            if s == 0 {
                candle_core::bail!("slice stride 0 on axis {d}")
            }
            let n = size as i64;
            let norm = |v: i64| if v < 0 { v + n } else { v };
            let masked = |m: &Option<Vec<i64>>| m.as_ref().is_some_and(|v| v.get(d).copied().unwrap_or(0) != 0);
            let (lo, hi) = if s > 0 {
                let b = if masked(&bmask) {
                    0
                } else {
                    norm(begin.get(d).copied().unwrap_or(0)).clamp(0, n)
                };
                let e = if masked(&emask) {
                    n
                } else {
                    norm(end.get(d).copied().unwrap_or(n)).clamp(0, n)
                };
                (b, e)
            } else {
                let b = if masked(&bmask) {
                    n - 1
                } else {
                    norm(begin.get(d).copied().unwrap_or(n - 1)).clamp(-1, n - 1)
                };
                let e = if masked(&emask) {
                    -1
                } else {
                    norm(end.get(d).copied().unwrap_or(-1)).clamp(-1, n - 1)
                };
                (b, e)
            };
            let idx: Vec<i64> = if s > 0 {
                (lo..hi).step_by(s as usize).collect()
            } else {
                let mut v = Vec::new();
                let mut i = lo;
                while i > hi {
                    v.push(i);
                    i += s;
                }
                v
            };
            if s == 1 && (lo, hi) == (0, n) {
                continue;
            }
            y = if s == 1 {
                y.narrow(d, lo as usize, (hi - lo).max(0) as usize)?
            } else {
                y.index_select(&Tensor::new(idx, y.device())?, d)?
            };
        }
        if let Some(m) = &smask {
            for d in (0..dims.len()).rev() {
                if m.get(d).copied().unwrap_or(0) != 0 {
                    y = y.squeeze(d)?;
                }
            }
        }
        one(y)
    }))
}
