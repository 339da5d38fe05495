//! Linear algebra (coremltools `linear.py`): `linear`, `matmul`, `einsum`.
//!
//! Conventions: `linear` is `x @ weightᵀ + bias` with `weight` `[out, in]`
//! constant, `x` of rank 1-3; `matmul` broadcasts leading (batch) dims, with
//! optional transposes of the last two dims of either operand, rank-1
//! operands as numpy; iOS17 lets a constant operand have another dtype (the
//! result takes the run-time operand's). Integer products are computed in
//! f64. `einsum` is the one contraction coremltools defines (see [`einsum`]).

use std::sync::Arc;

use candle_core::DType;

use super::{one, Builder};
use crate::error::Result;
use crate::mil::fuse::Act;
use crate::mil::gemm::{self, Bias, MatRef};
use crate::mil::{depthwise, Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "linear" => linear,
        "matmul" => matmul,
        "einsum" => einsum,
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
    let (dout, din) = w.dims2().map_err(|e| c.error(e.to_string()))?;
    if let Some(b) = &b {
        if b.elem_count() != dout {
            return Err(c.error(format!("`bias` has {} values for {dout} outputs", b.elem_count())));
        }
    }
    let host_b: Option<Arc<[f32]>> = match &b {
        Some(b) if b.dtype() == DType::F32 => Some(b.to_vec1::<f32>().map_err(|e| c.error(e.to_string()))?.into()),
        _ => None,
    };
    let make = move |act: Act| -> Kernel {
        let (w, b, host_b) = (w.clone(), b.clone(), host_b.clone());
        Box::new(move |a| {
            let x = a[x];
            let dims = x.dims().to_vec();
            if dims.last() != Some(&din) {
                candle_core::bail!("input of shape {dims:?}; expected a last dim of {din}")
            }
            // Leading dims flattened: one [rows, in] @ [in, out] product.
            let rows = x.elem_count() / din.max(1);
            let mut shape = dims;
            *shape.last_mut().expect("rank >= 1") = dout;
            // f32 with f32 weights: our GEMM, bias and activation fused.
            if x.dtype() == DType::F32 && w.dtype() == DType::F32 && (b.is_none() || host_b.is_some()) {
                let xc = x.contiguous()?;
                let y = depthwise::with_f32_slice(&xc, |xs| {
                    depthwise::with_f32_slice(&w, |ws| {
                        let rhs = MatRef {
                            data: ws,
                            rs: 1,
                            cs: din,
                            batch: 0,
                        };
                        let bias = host_b.as_deref().map_or(Bias::None, Bias::Cols);
                        gemm::matmul(1, (rows, dout, din), MatRef::row_major(xs, din), rhs, bias, act)
                    })
                })???;
                return one(candle_core::Tensor::from_vec(y, shape, x.device())?);
            }
            let ct = compute_type(x.dtype());
            let x2 = x.to_dtype(ct)?.reshape((rows, din))?;
            let mut y = x2.matmul(&w.to_dtype(ct)?.t()?)?;
            if let Some(b) = &b {
                y = y.broadcast_add(&b.to_dtype(ct)?)?;
            }
            one(act.apply(&y.reshape(shape)?.to_dtype(x.dtype())?)?)
        })
    };
    let offer = make.clone();
    c.offer = Some(Box::new(move |act| offer(act)));
    Ok(make(Act::Identity))
}

/// The dtype a product is computed in: floats as they are, integers in f64
/// (candle has no integer matmul; sums of int32 products stay exact up to 2^53).
fn compute_type(d: DType) -> DType {
    if d.is_float() {
        d
    } else {
        DType::F64
    }
}

pub(super) fn matmul(c: &mut OpCtx) -> Result<Kernel> {
    // iOS17: the result takes the dtype of the run-time operand when the other is constant.
    let y_decides = !c.is_runtime("x")? && c.is_runtime("y")?;
    let x = c.tensor("x")?;
    let y = c.tensor("y")?;
    let tx = c.opt_bool("transpose_x")?.unwrap_or(false);
    let ty = c.opt_bool("transpose_y")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let out_dt = if y_decides { a[y].dtype() } else { a[x].dtype() };
        let ct = compute_type(out_dt);
        let (mut l, mut r) = (a[x].to_dtype(ct)?, a[y].to_dtype(ct)?);
        if l.rank() == 0 || r.rank() == 0 {
            candle_core::bail!(
                "matmul of ranks {} and {} (both must be at least 1)",
                l.rank(),
                r.rank()
            )
        }
        // Rank-1 operands: numpy's rule (a row on the left, a column on the
        // right, that dim dropped from the result); transposes do not apply.
        let (lv, rv) = (l.rank() == 1, r.rank() == 1);
        if lv {
            l = l.unsqueeze(0)?;
        } else if tx {
            l = l.t()?;
        }
        if rv {
            r = r.unsqueeze(1)?;
        } else if ty {
            r = r.t()?;
        }
        super::check_matmul(&l, &r)?;
        let mut out = l.broadcast_matmul(&r)?;
        if rv {
            out = out.squeeze(out.rank() - 1)?;
        }
        if lv {
            out = out.squeeze(out.rank() - if rv { 1 } else { 2 })?;
        }
        one(out.to_dtype(out_dt)?)
    }))
}

/// `einsum` as coremltools defines it: `nchw,nwhu->nchu` (rank 4) or
/// `chw,whr->chr` (rank 3) and their renamings; `n` and `h` broadcast.
pub(super) fn einsum(c: &mut OpCtx) -> Result<Kernel> {
    let vals = c.tensors("values")?;
    let eq = c
        .opt_string("equation")?
        .ok_or_else(|| c.error("required argument `equation` is missing"))?;
    if vals.len() != 2 {
        return Err(c.unsupported(format!("{} operands (einsum takes two)", vals.len())));
    }
    let rank = einsum_rank(&eq).ok_or_else(|| {
        c.unsupported(format!(
            "`equation` {eq} (coremltools accepts nchw,nwhu->nchu and chw,whr->chr up to renaming)"
        ))
    })?;
    let (x, y) = (vals[0], vals[1]);
    Ok(Box::new(move |a| {
        let (l, r) = (a[x], a[y]);
        if l.rank() != rank || r.rank() != rank {
            candle_core::bail!(
                "operands of ranks {} and {} for a rank-{rank} equation",
                l.rank(),
                r.rank()
            )
        }
        // [.., C, H, W1] x [.., W1, H, W2]: H becomes a batch dim, then back.
        let (hl, hr) = (rank - 2, rank - 3);
        let lt = l.transpose(hl, hr)?.contiguous()?; // [.., H, C, W1]
        let rt = r.transpose(hl, hr)?.contiguous()?; // [.., H, W1, W2]
        let ct = compute_type(l.dtype());
        let out = lt.to_dtype(ct)?.broadcast_matmul(&rt.to_dtype(ct)?)?; // [.., H, C, W2]
        one(out.transpose(hl, hr)?.contiguous()?.to_dtype(l.dtype())?)
    }))
}

/// The rank of an einsum equation of coremltools' one supported form
/// (`abcd,adce->abce` or `bcd,dce->bce` up to renaming), if it is one.
fn einsum_rank(eq: &str) -> Option<usize> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, out) = eq.split_once("->")?;
    let (a, b) = lhs.split_once(',')?;
    let (a, b, o): (Vec<char>, Vec<char>, Vec<char>) =
        (a.chars().collect(), b.chars().collect(), out.chars().collect());
    let r = a.len();
    if !(r == 3 || r == 4) || b.len() != r || o.len() != r {
        return None;
    }
    let lead = &a[..r - 3];
    let (c, h, w1) = (a[r - 3], a[r - 2], a[r - 1]);
    let (w1b, hb, w2) = (b[r - 3], b[r - 2], b[r - 1]);
    let distinct = {
        let mut all: Vec<char> = lead.to_vec();
        all.extend([c, h, w1, w2]);
        let n = all.len();
        all.sort();
        all.dedup();
        all.len() == n
    };
    let ok = distinct && b[..r - 3] == *lead && w1b == w1 && hb == h && o[..r - 3] == *lead && o[r - 3..] == [c, h, w2];
    ok.then_some(r)
}
