//! Reductions (coremltools `reduction.py`).
//!
//! Conventions: `axes` (default: all, negative counted from the end,
//! duplicates ignored); `keep_dims` keeps reduced dims as size 1.

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
}

pub(super) fn reduce(c: &mut OpCtx, kind: Reduce) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    let keep = c.opt_bool("keep_dims")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let x = a[x];
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
        one(y)
    }))
}
