//! Op kernels, one file per op family as coremltools lays out its
//! definitions (`ops/defs/iOS15..18`). Each builder reads an op's
//! parameters once (they must be constants) and returns a kernel closure
//! over its tensor operands. Family conventions are at the top of each file;
//! shared across families: numpy broadcasting, negative axes counted from
//! the end, `pad` as `[begin, end]` per dimension.

mod activation;
mod classify;
mod control_flow;
mod conv;
mod elementwise_binary;
mod elementwise_unary;
pub(crate) use elementwise_unary::{
    clamp as elementwise_unary_clamp, map_f32 as elementwise_unary_map_f32, map_fun as elementwise_unary_map_fun,
};
mod image_resizing;
mod linear;
mod movement;
mod normalization;
mod pool;
mod quantization_ops;
mod random;
mod recurrent;
mod reduction;
mod scatter_gather;
mod spatial;
pub(super) mod state;
mod tensor_operation;
mod tensor_transformation;
mod transformers;

use candle_core::Tensor;

use crate::error::Result;
pub(super) use crate::mil::limits::check_alloc;
use crate::mil::{Kernel, OpCtx};

pub(crate) type Builder = fn(&mut OpCtx) -> Result<Kernel>;
pub(crate) use control_flow::{list_builder, ListKernel, ListVal};
pub(crate) use conv::{expand_then_depthwise, DepthwiseSpec, Pointwise};
pub(crate) type CResult<T> = candle_core::Result<T>;

/// The builder for `op_type`, if the interpreter implements it.
pub fn builder(op_type: &str) -> Option<Builder> {
    activation::builder(op_type)
        .or_else(|| elementwise_unary::builder(op_type))
        .or_else(|| elementwise_binary::builder(op_type))
        .or_else(|| control_flow::builder(op_type))
        .or_else(|| linear::builder(op_type))
        .or_else(|| conv::builder(op_type))
        .or_else(|| pool::builder(op_type))
        .or_else(|| image_resizing::builder(op_type))
        .or_else(|| transformers::builder(op_type))
        .or_else(|| normalization::builder(op_type))
        .or_else(|| reduction::builder(op_type))
        .or_else(|| tensor_transformation::builder(op_type))
        .or_else(|| tensor_operation::builder(op_type))
        .or_else(|| scatter_gather::builder(op_type))
        .or_else(|| quantization_ops::builder(op_type))
        .or_else(|| random::builder(op_type))
        .or_else(|| recurrent::builder(op_type))
        .or_else(|| classify::builder(op_type))
        .or_else(|| state::builder(op_type))
}

/// The shape of `op`'s first output as the program declares it (`None`
/// when a dim is not a constant).
pub(super) fn declared_dims(op: &coreml_proto::proto::mil_spec::Operation) -> Option<Vec<usize>> {
    use coreml_proto::proto::mil_spec::{dimension::Dimension, value_type::Type};
    let Type::TensorType(t) = op.outputs.first()?.r#type.as_ref()?.r#type.as_ref()? else {
        return None;
    };
    t.dimensions
        .iter()
        .map(|d| match d.dimension {
            Some(Dimension::Constant(c)) => usize::try_from(c.size).ok(),
            _ => None,
        })
        .collect()
}

pub(super) fn one(t: Tensor) -> CResult<Vec<Tensor>> {
    Ok(vec![t])
}

/// Normalises a possibly negative axis against `rank`.
pub(super) fn axis_of(axis: i64, rank: usize) -> CResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        candle_core::bail!("axis {axis} is outside a tensor of rank {rank}")
    }
    Ok(a as usize)
}

pub(super) fn unary(c: &mut OpCtx, f: fn(&Tensor) -> CResult<Tensor>) -> Result<Kernel> {
    let x = c.tensor("x")?;
    Ok(Box::new(move |a| one(f(a[x])?)))
}

pub(super) fn unary_eps(c: &mut OpCtx, default: f64, f: fn(&Tensor, f64) -> CResult<Tensor>) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let eps = c.opt_float("epsilon")?.unwrap_or(default);
    Ok(Box::new(move |a| one(f(a[x], eps)?)))
}

pub(super) fn broadcast_shape(shapes: &[&[usize]]) -> CResult<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                candle_core::bail!("shapes {shapes:?} do not broadcast")
            }
        }
    }
    Ok(out)
}

// Memory checks of the kernels that allocate from the program's sizes: each
// computes the output's size with checked arithmetic and compares it with
// the limit in force (`mil::limits`) before anything is allocated. A kernel
// calls one of these with a one-line edit.

/// Checks `x` padded by `[begin, end]` `pads` on its trailing dims.
pub(super) fn check_padded(x: &Tensor, pads: &[(usize, usize)]) -> CResult<()> {
    let rank = x.rank();
    if pads.len() > rank {
        candle_core::bail!("{} padded dims for a tensor of rank {rank}", pads.len())
    }
    let mut dims = x.dims().to_vec();
    for (i, &(b, e)) in pads.iter().enumerate() {
        let d = &mut dims[rank - pads.len() + i];
        *d = d.saturating_add(b).saturating_add(e);
    }
    check_alloc("padded tensor", &dims, x.dtype().size_in_bytes())
}

/// Checks the output of broadcasting `shapes` (elements of `elem_bytes`).
/// Shapes that do not broadcast pass: the op itself reports that.
pub(super) fn check_broadcast(shapes: &[&[usize]], elem_bytes: usize) -> CResult<()> {
    match broadcast_shape(shapes) {
        Ok(out) => check_alloc("broadcast output", &out, elem_bytes),
        Err(_) => Ok(()),
    }
}

/// Checks a (batched) matmul's output `[..batch, m, n]` of `l` `[.., m, k]`
/// and `r` `[.., k, n]` (after any transposes).
pub(super) fn check_matmul(l: &Tensor, r: &Tensor) -> CResult<()> {
    let (ld, rd) = (l.dims(), r.dims());
    if ld.len() < 2 || rd.len() < 2 {
        return Ok(());
    }
    let (lb, rb) = (&ld[..ld.len() - 2], &rd[..rd.len() - 2]);
    let mut out = broadcast_shape(&[lb, rb]).unwrap_or_else(|_| lb.to_vec());
    out.extend([ld[ld.len() - 2], rd[rd.len() - 1]]);
    check_alloc("matmul output", &out, l.dtype().size_in_bytes())
}
