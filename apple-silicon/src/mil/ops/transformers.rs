//! Transformer ops (coremltools iOS18 `transformers.py`):
//! `scaled_dot_product_attention`.
//!
//! Conventions: `query [B, *, L, E]`, `key [B, *, S, E]`, `value [B, *,
//! S, EV]`; `softmax(Q Kᵀ / √E + mask) V` with an optional `attn_mask`
//! broadcastable to `[B, *, L, S]`: a bool mask keeps the scores where it is
//! true (the rest become -inf), a float mask is added. Computed in f32 (an
//! fp16 softmax overflows); the result takes the query's dtype.

use candle_core::{DType, Tensor};

use super::{one, Builder};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "scaled_dot_product_attention" => sdpa,
        _ => return None,
    })
}

/// Costs two batched matrix products (`B·L·S·(E + EV)` multiply-adds) and a
/// softmax over `B·L·S` scores.
fn sdpa(c: &mut OpCtx) -> Result<Kernel> {
    let q = c.tensor("query")?;
    let k = c.tensor("key")?;
    let v = c.tensor("value")?;
    let mask = c.opt_tensor("attn_mask")?;
    Ok(Box::new(move |a| {
        let (qt, kt, vt) = (a[q], a[k], a[v]);
        if qt.rank() < 3 || kt.rank() != qt.rank() || vt.rank() != qt.rank() {
            candle_core::bail!(
                "query, key and value of ranks {}, {} and {}; expected one rank of at least 3",
                qt.rank(),
                kt.rank(),
                vt.rank()
            )
        }
        let e = *qt.dims().last().expect("rank >= 3");
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let kt_t = f(kt)?.transpose(kt.rank() - 2, kt.rank() - 1)?.contiguous()?;
        let mut scores = (f(qt)?.contiguous()?.broadcast_matmul(&kt_t)? / (e as f64).sqrt())?;
        if let Some(m) = mask {
            let m = a[m];
            let add = if m.dtype() == DType::U8 {
                // Kept positions add 0, masked ones -inf.
                let zeros = Tensor::zeros(m.dims(), DType::F32, m.device())?;
                let ninf = Tensor::full(f32::NEG_INFINITY, m.dims(), m.device())?;
                m.where_cond(&zeros, &ninf)?
            } else {
                f(m)?
            };
            scores = scores.broadcast_add(&add)?;
        }
        let w = super::activation::softmax_last_dim(&scores)?;
        one(w.broadcast_matmul(&f(vt)?.contiguous()?)?.to_dtype(qt.dtype())?)
    }))
}
