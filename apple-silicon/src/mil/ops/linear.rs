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

use candle_core::Tensor;

use super::{one, Builder, CResult};
use crate::error::Result;
use crate::mil::fuse::{Act, Epi, Tail};
use crate::mil::gemm::{self, Bias, MatRef};
use crate::mil::transpose::transpose;
use crate::mil::weights::{self, Weights};
use crate::mil::{depthwise, Kernel, OpCtx};
use coreml_proto::proto::mil_spec::Operation;

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
    let w = LinWeight::prepare(c)?;
    let b = c.const_tensor("bias")?;
    let (dout, din) = w.dims();
    if let Some(b) = &b {
        if b.elem_count() != dout {
            return Err(c.error(format!("`bias` has {} values for {dout} outputs", b.elem_count())));
        }
    }
    let host_b: Option<Arc<[f32]>> = match &b {
        Some(b) if b.dtype() == DType::F32 => Some(b.to_vec1::<f32>().map_err(|e| c.error(e.to_string()))?.into()),
        _ => None,
    };
    let w = Arc::new(w);
    let make = move |epi: Epi| -> Kernel {
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
            // f32 input: our GEMM, bias and activation fused.
            if x.dtype() == DType::F32 && (b.is_none() || host_b.is_some()) {
                let xc = x.contiguous()?;
                let product = |tail: Tail| -> CResult<Vec<f32>> {
                    depthwise::with_f32_slice(&xc, |xs| linear_f32(xs, rows, &w, host_b.as_deref(), tail))?
                };
                let y = match epi.fast_residual(a, &shape)? {
                    Some(r) => {
                        let y = depthwise::with_f32_slice(&r, |rs| {
                            product(Tail {
                                pre: epi.pre,
                                residual: Some(rs),
                                post: epi.post,
                            })
                        })??;
                        candle_core::Tensor::from_vec(y, shape, x.device())?
                    }
                    None => {
                        let y = candle_core::Tensor::from_vec(product(Tail::act(epi.pre))?, shape, x.device())?;
                        epi.finish_unfused(y, a)?
                    }
                };
                return one(y);
            }
            let ct = compute_type(x.dtype());
            let x2 = x.to_dtype(ct)?.reshape((rows, din))?;
            let mut y = x2.matmul(&w.tensor()?.to_dtype(ct)?.t()?)?;
            if let Some(b) = &b {
                y = y.broadcast_add(&b.to_dtype(ct)?)?;
            }
            let y = epi.pre.apply(&y.reshape(shape)?.to_dtype(x.dtype())?)?;
            one(epi.finish_unfused(y, a)?)
        })
    };
    let offer = make.clone();
    c.offer = Some(Box::new(move |epi| offer(epi)));
    Ok(make(Epi::act(Act::Identity)))
}

/// `linear`'s weight as its kernel reads it.
///
/// Core ML stores it `[out, in]`; our product is `x [rows, in] · wᵀ`, and
/// the `gemm` crate reads `[out, in]` as its packed operand only through a
/// scalar gather (a quarter of MiniLM's time went there). `[in, out]`
/// row-major is packed with contiguous copies instead, so dense f32 weights
/// are transposed once at prepare when the declared product is on gemm's
/// packed kernel ([`gemm::packed_kernel`]). Compressed weights keep `[out, in]`
/// blocks: transposing each converted block on every call (a tiled scalar
/// pass) cost more than the gather it saves (MiniLM fp16 and int8 ~12%
/// slower, MobileNetV2 int8's classifier 9% of its run).
enum LinWeight {
    /// Dense f32, `[in, out]` row-major (contiguous).
    Transposed(Tensor),
    /// The stored form, `[out, in]`: compressed (converted a block of
    /// output features at a time), or dense f32 that could not be
    /// replaced (read as it is, never copied beside the original).
    Stored(Arc<Weights>),
}

impl LinWeight {
    /// Reads `weight` (a rank-2 constant). A dense f32 weight that only
    /// this block's scope holds is transposed (one pass, in tiles) and the
    /// constant rebound to a view of the copy, so the original is freed and
    /// later readers see the same values; one already held as that view
    /// (a second `linear` on it) is read in place.
    fn prepare(c: &mut OpCtx) -> Result<LinWeight> {
        if let Some((t, sole)) = c.dense_f32_matrix("weight")? {
            let tt = t.t().map_err(|e| c.error(e.to_string()))?;
            if tt.is_contiguous() {
                return Ok(LinWeight::Transposed(tt));
            }
            // Only for products on gemm's packed kernel (or of unknown
            // size): the others read [out, in] as fast, and a compressed
            // weight (read [out, in]) expanded to dense f32 in a cached
            // program must give the same bits.
            let (dout, din) = t.dims2().map_err(|e| c.error(e.to_string()))?;
            let packed = declared_rows(c.op).is_none_or(|m| gemm::packed_kernel(m, dout, din));
            if sole && packed && t.is_contiguous() {
                let wt = transposed(&t).map_err(|e| c.error(e.to_string()))?;
                let view = wt.t().map_err(|e| c.error(e.to_string()))?;
                c.rebind_const("weight", view);
                return Ok(LinWeight::Transposed(wt));
            }
        }
        // The stored form: f16 and compressed weights are converted a
        // block of output features at a time, never kept as f32.
        let w = c
            .const_weights("weight")?
            .ok_or_else(|| c.error("`weight` is required (a constant of rank 2)"))?;
        if w.shape().len() != 2 {
            return Err(c.error(format!("weight of rank {}; expected [out, in]", w.shape().len())));
        }
        Ok(LinWeight::Stored(w))
    }

    /// `(out, in)`.
    fn dims(&self) -> (usize, usize) {
        match self {
            LinWeight::Transposed(t) => (t.dims()[1], t.dims()[0]),
            LinWeight::Stored(w) => (w.shape()[0], w.shape()[1]),
        }
    }

    /// The weight as a dense `[out, in]` tensor (a view when held
    /// transposed; else a copy in f32 or the stored dtype), for the
    /// non-f32 path.
    fn tensor(&self) -> CResult<Tensor> {
        match self {
            LinWeight::Transposed(t) => t.t(),
            LinWeight::Stored(w) => w.to_tensor(),
        }
    }
}

/// `t [rows, cols]` (dense f32) as a new `[cols, rows]` tensor. Costs one
/// tiled pass and `4 · rows · cols` bytes, checked against the limits first.
fn transposed(t: &Tensor) -> CResult<Tensor> {
    let (r, cl) = t.dims2()?;
    crate::mil::limits::check_alloc("transposed weight", &[cl, r], 4)?;
    let mut out = vec![0f32; r * cl];
    depthwise::with_f32_slice(t, |s| transpose(s, r, cl, &mut out))??;
    Tensor::from_vec(out, (cl, r), t.device())
}

/// `tail(x [rows, in] · wᵀ + bias)` for `linear`'s weight `w` (the fused
/// activation, residual and activation, [`Tail`]): in one product when
/// `w` is dense f32, else one product per block of output features, each
/// block converted to f32 into reused scratch (`weights::with_rows`).
fn linear_f32(xs: &[f32], rows: usize, w: &LinWeight, bias: Option<&[f32]>, tail: Tail) -> CResult<Vec<f32>> {
    let (dout, din) = w.dims();
    let lhs = MatRef::row_major(xs, din);
    let bias_all = bias.map_or(Bias::None, Bias::Cols);
    let w = match w {
        LinWeight::Transposed(t) => {
            return depthwise::with_f32_slice(t, |ws| {
                gemm::matmul(1, (rows, dout, din), lhs, MatRef::row_major(ws, dout), bias_all, tail)
            })?;
        }
        LinWeight::Stored(w) => w,
    };
    if let Some(wd) = w.as_dense() {
        return depthwise::with_f32_slice(wd, |ws| {
            let rhs = MatRef {
                data: ws,
                rs: 1,
                cs: din,
                batch: 0,
            };
            gemm::matmul(1, (rows, dout, din), lhs, rhs, bias_all, tail)
        })?;
    }
    crate::mil::limits::check_alloc("linear output", &[rows, dout], 4)?;
    let len = rows * dout;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let step = weights::block_rows(w);
    {
        let dst = &mut out.spare_capacity_mut()[..len];
        for j0 in (0..dout).step_by(step.max(1)) {
            let j1 = (j0 + step).min(dout);
            weights::with_rows(w, j0..j1, |ws| {
                let rhs = MatRef {
                    data: ws,
                    rs: 1,
                    cs: din,
                    batch: 0,
                };
                let bias = bias.map_or(Bias::None, |b| Bias::Cols(&b[j0..j1]));
                gemm::matmul_into_rows(
                    rayon::current_num_threads(),
                    &mut dst[j0..],
                    dout,
                    (rows, j1 - j0, din),
                    lhs,
                    rhs,
                    bias,
                    tail.from(j0),
                )
            })?;
        }
    }
    // SAFETY: the blocks of columns j0..j1 cover 0..dout, and each wrote its
    // columns of every one of the `rows` rows.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// Rows of `op`'s `[.., out]` result as the program declares it (`None`
/// when a dim is not a constant).
fn declared_rows(op: &Operation) -> Option<usize> {
    let dims = super::declared_dims(op)?;
    let (_, lead) = dims.split_last()?;
    lead.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
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
        let mut out = match strided_matmul(&l, &r)? {
            Some(out) => out,
            None => l.broadcast_matmul(&r)?,
        };
        if rv {
            out = out.squeeze(out.rank() - 1)?;
        }
        if lv {
            out = out.squeeze(out.rank() - if rv { 1 } else { 2 })?;
        }
        one(out.to_dtype(out_dt)?)
    }))
}

/// `l [.., m, k] · r [.., k, n]` on our GEMM when both are f32 CPU tensors
/// with the same batch dims, each laid out with one stride per batch
/// (any strides for the last two dims: transposed views are read in
/// place); `None` otherwise (candle's `broadcast_matmul` then). Costs the
/// product and one output allocation, no zero-fill, no copies.
fn strided_matmul(l: &Tensor, r: &Tensor) -> CResult<Option<Tensor>> {
    let (ld, rd) = (l.dims(), r.dims());
    let rank = ld.len();
    if l.dtype() != DType::F32 || r.dtype() != DType::F32 || rank < 2 || rd.len() != rank {
        return Ok(None);
    }
    let (m, k, n) = (ld[rank - 2], ld[rank - 1], rd[rank - 1]);
    if ld[..rank - 2] != rd[..rank - 2] || rd[rank - 2] != k {
        return Ok(None);
    }
    let batches: usize = ld[..rank - 2].iter().product();
    // One stride per batch: the batch dims must collapse (or there is one batch).
    fn batch_stride(dims: &[usize], strides: &[usize]) -> Option<usize> {
        let nb = dims.len() - 2;
        let mut s = None;
        for i in (0..nb).rev() {
            if dims[i] == 1 {
                continue;
            }
            match s {
                None => s = Some((strides[i], dims[i])),
                Some((inner, span)) if strides[i] == inner * span => s = Some((inner, span * dims[i])),
                Some(_) => return None,
            }
        }
        Some(s.map_or(0, |(inner, _)| inner))
    }
    let (ls, rs) = (l.layout(), r.layout());
    let (Some(lb), Some(rb)) = (batch_stride(ld, ls.stride()), batch_stride(rd, rs.stride())) else {
        return Ok(None);
    };
    let (lst, rst) = (ls.stride(), rs.stride());
    let (l_store, _) = l.storage_and_layout();
    let (r_store, _) = r.storage_and_layout();
    let (
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(lv)),
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(rv)),
    ) = (&*l_store, &*r_store)
    else {
        return Ok(None);
    };
    let lhs = MatRef {
        data: &lv[ls.start_offset()..],
        rs: lst[rank - 2],
        cs: lst[rank - 1],
        batch: lb,
    };
    let rhs = MatRef {
        data: &rv[rs.start_offset()..],
        rs: rst[rank - 2],
        cs: rst[rank - 1],
        batch: rb,
    };
    let y = gemm::matmul(batches, (m, n, k), lhs, rhs, Bias::None, Tail::act(Act::Identity))?;
    let mut shape = ld[..rank - 2].to_vec();
    shape.extend([m, n]);
    Ok(Some(Tensor::from_vec(y, shape, l.device())?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use coreml_proto::proto::mil_spec;

    #[test]
    fn a_packed_weight_is_read_a_block_of_outputs_at_a_time_like_the_dense_one() {
        // 2000 outputs of 300 inputs: three blocks of output features.
        let (rows, dout, din) = (5, 2000, 300);
        let w16: Vec<half::f16> = (0..dout * din)
            .map(|i| half::f16::from_f32(((i * 7919) % 1013) as f32 / 512.0 - 1.0))
            .collect();
        let wf: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let xs: Vec<f32> = (0..rows * din).map(|i| ((i * 31) % 97) as f32 / 50.0 - 1.0).collect();
        let bias: Vec<f32> = (0..dout).map(|i| i as f32 / 1000.0).collect();
        let packed = Weights::new(vec![dout, din], weights::Store::F16(w16), true).unwrap();
        assert!(weights::block_rows(&packed) < dout);
        let dense = Weights::dense(Tensor::from_vec(wf.clone(), (dout, din), &Device::Cpu).unwrap()).unwrap();
        // relu, then a residual added, then relu6: the fused tail, block by block.
        let res: Vec<f32> = (0..rows * dout).map(|i| ((i * 13) % 29) as f32 / 7.0 - 2.0).collect();
        let tail = Tail {
            pre: Act::Relu,
            residual: Some(&res),
            post: Act::Clamp(0.0, 6.0),
        };
        let a = linear_f32(&xs, rows, &LinWeight::Stored(Arc::new(packed)), Some(&bias), tail).unwrap();
        let b = linear_f32(&xs, rows, &LinWeight::Stored(Arc::new(dense)), Some(&bias), tail).unwrap();
        // Reference: the sums written out, in f64.
        for r in 0..rows {
            for o in 0..dout {
                let want: f64 = (0..din)
                    .map(|i| xs[r * din + i] as f64 * wf[o * din + i] as f64)
                    .sum::<f64>()
                    + bias[o] as f64;
                let want = (want.max(0.0) + res[r * dout + o] as f64).clamp(0.0, 6.0);
                assert!((a[r * dout + o] as f64 - want).abs() < 1e-3, "row {r} output {o}");
                assert!((b[r * dout + o] as f64 - want).abs() < 1e-3, "row {r} output {o}");
            }
        }
    }

    #[test]
    fn every_weight_layout_gives_the_written_out_sums_on_odd_shapes() {
        // One thread, and a pool of three (row blocks).
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(layouts_match);
        }
    }

    fn layouts_match() {
        let ramp = |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect() };
        for &(rows, dout, din) in &[
            (1, 1, 1),
            (1, 17, 5),
            (1, 2000, 300),
            (2, 100, 7),
            (5, 2000, 300),
            (3, 40, 2),
            (3, 33, 67),
            (7, 130, 301),
            (128, 100, 19),
            (130, 50, 600),
        ] {
            // Values an f16 holds exactly, so the f16 store has the same weight.
            let wf: Vec<f32> = ramp(dout * din, 0.3)
                .iter()
                .map(|&v| half::f16::from_f32(v).to_f32())
                .collect();
            let xs = ramp(rows * din, 1.1);
            let bias = ramp(dout, 2.3);
            let res = ramp(rows * dout, 0.7);
            let wt = Tensor::from_vec(wf.clone(), (dout, din), &Device::Cpu).unwrap();
            let layouts = [
                ("transposed", LinWeight::Transposed(transposed(&wt).unwrap())),
                ("stored f32", LinWeight::Stored(Arc::new(Weights::dense(wt).unwrap()))),
                (
                    "stored f16",
                    LinWeight::Stored(Arc::new(
                        Weights::new(
                            vec![dout, din],
                            weights::Store::F16(wf.iter().map(|&v| half::f16::from_f32(v)).collect()),
                            true,
                        )
                        .unwrap(),
                    )),
                ),
            ];
            for (with_bias, tail) in [
                (false, Tail::act(Act::Identity)),
                (true, Tail::act(Act::GeluErf)),
                (
                    true,
                    Tail {
                        pre: Act::Relu,
                        residual: Some(&res),
                        post: Act::Clamp(0.0, 6.0),
                    },
                ),
            ] {
                let b = with_bias.then_some(&bias[..]);
                let got: Vec<Vec<f32>> = layouts
                    .iter()
                    .map(|(_, w)| linear_f32(&xs, rows, w, b, tail).unwrap())
                    .collect();
                // On the packed kernel the f16 store (blocks, converted) gives the
                // transposed dense bits: what a cached program with expanded
                // weights relies on.
                if gemm::packed_kernel(rows, dout, din) {
                    assert_eq!(got[0], got[2], "[{rows}, {din}] -> {dout}: f16 blocks vs transposed");
                }
                for r in 0..rows {
                    for o in 0..dout {
                        let terms = (0..din).map(|i| xs[r * din + i] as f64 * wf[o * din + i] as f64);
                        let scale: f64 = terms.clone().map(f64::abs).sum::<f64>() + 1.0;
                        let sum = terms.sum::<f64>() + b.map_or(0.0, |b| b[o] as f64);
                        let mut want = tail.pre.f(sum as f32);
                        if let Some(res) = tail.residual {
                            want = tail.post.f(want + res[r * dout + o]);
                        }
                        for ((name, _), g) in layouts.iter().zip(&got) {
                            let e = (g[r * dout + o] - want).abs() as f64;
                            assert!(
                                e <= 1e-6 * scale * din as f64,
                                "{name} [{rows}, {din}] -> {dout}: row {r} output {o}: {} vs {want}",
                                g[r * dout + o]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn declared_rows_are_the_leading_dims_of_a_static_result() {
        use mil_spec::dimension::{ConstantDimension, Dimension as D, UnknownDimension};
        let op = |dims: Vec<D>| Operation {
            outputs: vec![mil_spec::NamedValueType {
                name: "y".into(),
                r#type: Some(mil_spec::ValueType {
                    r#type: Some(mil_spec::value_type::Type::TensorType(mil_spec::TensorType {
                        rank: dims.len() as i64,
                        dimensions: dims
                            .into_iter()
                            .map(|d| mil_spec::Dimension { dimension: Some(d) })
                            .collect(),
                        ..Default::default()
                    })),
                }),
            }],
            ..Default::default()
        };
        let c = |n: u64| D::Constant(ConstantDimension { size: n });
        assert_eq!(declared_rows(&op(vec![c(2), c(3), c(5)])), Some(6));
        assert_eq!(declared_rows(&op(vec![c(7)])), Some(1));
        let flexible = D::Unknown(UnknownDimension { variadic: false });
        assert_eq!(declared_rows(&op(vec![c(1), flexible, c(5)])), None);
        assert_eq!(declared_rows(&op(vec![])), None);
        assert!(
            !gemm::packed_kernel(1, 1000, 1280) && !gemm::packed_kernel(3, 80, 64) && !gemm::packed_kernel(128, 384, 2)
        );
        assert!(gemm::packed_kernel(128, 384, 384));
    }

    #[test]
    fn a_transposed_weight_read_again_by_a_later_op_gives_the_same_values() {
        use mil_spec::dimension::{Dimension as D, UnknownDimension};
        let case = "linear/linear_rank3";
        // A second linear on the same weight, bias and input; the first's
        // rows undeclared, so that it transposes the weight and rebinds it.
        let plan = crate::mil::test_support::build_edited_result(case, |b| {
            let i = b.operations.iter().position(|o| o.r#type == "linear").unwrap();
            let mut second = b.operations[i].clone();
            second.outputs[0].name = "y2".into();
            if let Some(mil_spec::value_type::Type::TensorType(t)) = b.operations[i].outputs[0]
                .r#type
                .as_mut()
                .and_then(|t| t.r#type.as_mut())
            {
                t.dimensions[0].dimension = Some(D::Unknown(UnknownDimension { variadic: false }));
            }
            b.operations.insert(i + 1, second);
            b.outputs.push("y2".into());
        })
        .unwrap();
        // The fixture's reference (numpy).
        let (x, want) = crate::mil::test_support::case_x_and_y(case);
        let out = plan.run(&[("x".to_string(), x)].into_iter().collect()).unwrap();
        for name in ["y", "y2"] {
            let got = out[name].to_f32_vec();
            assert_eq!(got.len(), want.len());
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d < 1e-5, "{name}: {d}");
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn strided_matmul_matches_candle_on_views_and_refuses_what_it_cannot_read() {
        let t = |d: &[usize]| Tensor::randn(0f32, 1.0, d, &Device::Cpu).unwrap();
        // Attention's shapes, odd sizes: q·kᵀ with kᵀ a transposed view, then a permuted lhs.
        let (q, kk) = (t(&[1, 3, 7, 5]), t(&[1, 3, 9, 5]));
        let kt = kk.transpose(2, 3).unwrap();
        let cases = [
            (q.clone(), kt.clone()),
            (t(&[2, 1, 4, 6]).transpose(2, 3).unwrap(), t(&[2, 1, 4, 3])),
            (t(&[13, 17]), t(&[17, 1])),
            (t(&[3, 1, 6]), t(&[3, 6, 2])),
            (t(&[4, 0]), t(&[0, 5])),
        ];
        for (l, r) in cases {
            let got = strided_matmul(&l, &r).unwrap().expect("takes the fast path");
            let want = l.broadcast_matmul(&r).unwrap();
            assert_eq!(got.dims(), want.dims());
            if want.elem_count() > 0 {
                assert!(max_diff(&got, &want) < 1e-5, "{:?} x {:?}", l.dims(), r.dims());
            }
        }
        // Batch dims that differ (broadcast), or do not collapse to one stride, or f16: candle's path.
        assert!(strided_matmul(&t(&[2, 3, 4]), &t(&[1, 4, 5])).unwrap().is_none());
        let nc = t(&[3, 2, 4, 5]).transpose(0, 1).unwrap();
        assert!(strided_matmul(&nc, &t(&[2, 3, 5, 2])).unwrap().is_none());
        let h = t(&[2, 3]).to_dtype(DType::F16).unwrap();
        assert!(strided_matmul(&h, &t(&[3, 2]).to_dtype(DType::F16).unwrap())
            .unwrap()
            .is_none());
    }
}
