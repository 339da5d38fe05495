//! Large f32 elementwise ops on the interpreter's own thread pool: the
//! arithmetic binaries (`add`, `sub`, `mul`, `real_div`, `maximum`,
//! `minimum`) and candle's unary ops (`exp`, `gelu`, `relu`, …).
//!
//! Why: candle's CPU backend fans every elementwise op of 64K elements or
//! more out to a pool of its own (`CANDLE_NUM_THREADS` − 1 threads, which
//! busy-spin after each op while the calling thread busy-waits for them).
//! The interpreter already runs on its rayon pool (`workers.rs`), whose
//! threads candle's GEMM uses, so on a small machine that second pool is
//! oversubscription: measured on 2 cores, MobileNetV2 ran 2.6× faster with
//! candle's pool disabled. This module computes those ops on the rayon pool
//! instead, for the cases that are common and cheap to index: both operands
//! contiguous f32, each either the output's shape, or broadcast along
//! leading and trailing axes around one contiguous run of kept axes (a
//! scalar, a per-channel `[C,1,1]` bias on NCHW, a `[D]` bias on `[…, D]`).
//! Unary ops take any contiguous f32 tensor and compute each element with
//! candle's own scalar function (`UnaryOpT::f32`), so results are the same
//! bits as candle's. Anything else, and anything under 64K elements, goes to
//! candle unchanged. The output is written once, never zero-filled first.

use std::mem::MaybeUninit;

use candle_core::op::UnaryOpT;
use candle_core::{DType as CDType, Device, Tensor};
use rayon::prelude::*;

use super::depthwise::with_f32_slice;
use super::ops::broadcast_shape;

type CResult<T> = candle_core::Result<T>;

/// Below this many output elements the op runs on one thread (candle's own
/// threshold for fanning out, so small ops behave exactly as before).
const PAR_MIN: usize = 64 * 1024;
/// Elements per parallel work unit.
const CHUNK: usize = 16 * 1024;

/// `f(row, out_row)` for every row of `n` elements of `src`, into a new
/// buffer of `src`'s length: on the calling thread below [`PAR_MIN`]
/// elements, else whole rows per work unit (about [`CHUNK`] elements) on the
/// pool. `n` must be positive. Costs one zero-filled buffer plus `f`.
pub(crate) fn map_rows(src: &[f32], n: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    let rows = |d: &mut [f32], s: &[f32]| {
        for (d, s) in d.chunks_exact_mut(n).zip(s.chunks_exact(n)) {
            f(s, d);
        }
    };
    if src.len() < PAR_MIN {
        rows(&mut out, src);
    } else {
        let per = n * CHUNK.div_ceil(n);
        out.par_chunks_mut(per)
            .zip(src.par_chunks(per))
            .for_each(|(d, s)| rows(d, s));
    }
    out
}

/// The arithmetic ops this module computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

impl BinOp {
    #[inline(always)]
    fn apply(self, x: f32, y: f32) -> f32 {
        match self {
            BinOp::Add => x + y,
            BinOp::Sub => x - y,
            BinOp::Mul => x * y,
            BinOp::Div => x / y,
            // candle's maximum/minimum: `if x < y { y } else { x }` (NaN in x wins).
            BinOp::Max => {
                if x < y {
                    y
                } else {
                    x
                }
            }
            BinOp::Min => {
                if x > y {
                    y
                } else {
                    x
                }
            }
        }
    }

    /// candle's broadcasting op for the cases this module leaves to it.
    fn candle(self, a: &Tensor, b: &Tensor) -> CResult<Tensor> {
        match self {
            BinOp::Add => a.broadcast_add(b),
            BinOp::Sub => a.broadcast_sub(b),
            BinOp::Mul => a.broadcast_mul(b),
            BinOp::Div => a.broadcast_div(b),
            BinOp::Max => a.broadcast_maximum(b),
            BinOp::Min => a.broadcast_minimum(b),
        }
    }
}

/// `a op b` with numpy broadcasting: on the interpreter's pool when both are
/// contiguous f32 with a simple broadcast (see the module doc) and the output
/// has at least 64K elements, else candle's `broadcast_*` op. Costs one pass
/// and one output allocation.
pub(crate) fn binary(op: BinOp, a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    match fast(op, a, b)? {
        Some(t) => Ok(t),
        None => op.candle(a, b),
    }
}

/// `U` (one of candle's unary ops, e.g. `candle_core::op::Exp`) on every
/// element of `x`: on the interpreter's pool when `x` is a contiguous f32 CPU
/// tensor of at least 64K elements, else `fallback` (candle's method for the
/// same op, which must compute the same function). Costs one pass and one
/// output allocation.
pub(crate) fn unary<U: UnaryOpT>(x: &Tensor, fallback: fn(&Tensor) -> CResult<Tensor>) -> CResult<Tensor> {
    let n = x.elem_count();
    if x.dtype() != CDType::F32 || !x.is_contiguous() || !matches!(x.device(), Device::Cpu) || n < PAR_MIN {
        return fallback(x);
    }
    let mut out: Vec<f32> = Vec::with_capacity(n);
    with_f32_slice(x, |src| {
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(dst, src)| {
                for (d, &v) in dst.iter_mut().zip(src) {
                    d.write(U::f32(v));
                }
            });
    })?;
    // SAFETY: the chunks of `out` pair one-to-one with those of `src`, which
    // has exactly `n` elements: every element was written.
    unsafe { out.set_len(n) };
    Tensor::from_vec(out, x.dims(), &Device::Cpu)
}

/// How an operand's element `i` of the output is found: `(i / inner) % mid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pattern {
    inner: usize,
    mid: usize,
}

impl Pattern {
    /// The pattern of an operand of shape `dims` broadcast to `out`, if its
    /// non-1 axes (left-padded with 1s) are one contiguous run equal to the
    /// output's; `None` otherwise.
    fn of(dims: &[usize], out: &[usize]) -> Option<Pattern> {
        let pad = out.len().checked_sub(dims.len())?;
        let full = |i: usize| if i < pad { 1 } else { dims[i - pad] };
        let kept: Vec<usize> = (0..out.len()).filter(|&i| full(i) != 1).collect();
        let (Some(&lo), Some(&hi)) = (kept.first(), kept.last()) else {
            return Some(Pattern { inner: 1, mid: 1 });
        };
        if (lo..=hi).any(|i| full(i) != out[i]) {
            return None;
        }
        Some(Pattern {
            inner: out[hi + 1..].iter().product(),
            mid: out[lo..=hi].iter().product(),
        })
    }

    #[inline(always)]
    fn index(self, i: usize) -> usize {
        (i / self.inner) % self.mid
    }
}

fn fast(op: BinOp, a: &Tensor, b: &Tensor) -> CResult<Option<Tensor>> {
    if a.dtype() != CDType::F32 || b.dtype() != CDType::F32 || !a.is_contiguous() || !b.is_contiguous() {
        return Ok(None);
    }
    if !matches!(a.device(), Device::Cpu) || !matches!(b.device(), Device::Cpu) {
        return Ok(None);
    }
    let shape = broadcast_shape(&[a.dims(), b.dims()])?;
    let n: usize = shape.iter().product();
    if n < PAR_MIN {
        return Ok(None);
    }
    let (Some(pa), Some(pb)) = (Pattern::of(a.dims(), &shape), Pattern::of(b.dims(), &shape)) else {
        return Ok(None);
    };
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let mut run = |xa: &[f32], xb: &[f32]| {
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, dst)| fill(op, xa, pa, xb, pb, c * CHUNK, dst));
    };
    if a.id() == b.id() {
        // `x op x`: one read lock of the storage, not two nested ones.
        with_f32_slice(a, |xa| run(xa, xa))?;
    } else {
        // Two read locks, nested; sound even for two views of one storage,
        // since the interpreter never write-locks a tensor it has produced.
        with_f32_slice(a, |xa| with_f32_slice(b, |xb| run(xa, xb)))??;
    }
    // SAFETY: `fill` wrote every one of the first `n` elements (the chunks
    // cover `0..n` exactly once).
    unsafe { out.set_len(n) };
    Ok(Some(Tensor::from_vec(out, shape, &Device::Cpu)?))
}

/// What an operand contributes from output element `i` on: a run of its
/// elements read in order, or one value repeated; `len` elements either way.
enum Seg<'a> {
    Slice(&'a [f32]),
    Const(f32, usize),
}

impl Pattern {
    /// The operand's run starting at output element `i`.
    #[inline(always)]
    fn seg(self, x: &[f32], i: usize) -> Seg<'_> {
        if self.mid == 1 {
            Seg::Const(x[0], usize::MAX)
        } else if self.inner == 1 {
            // Index i % mid: consecutive until the next multiple of mid.
            let at = i % self.mid;
            Seg::Slice(&x[at..self.mid])
        } else {
            // Index constant until the next multiple of inner.
            Seg::Const(x[self.index(i)], self.inner - i % self.inner)
        }
    }
}

/// Output elements `start..start + dst.len()`, one run at a time: a run is
/// as long as neither operand's segment changes kind, so the inner loops are
/// plain slice loops (vectorisable).
fn fill(op: BinOp, xa: &[f32], pa: Pattern, xb: &[f32], pb: Pattern, start: usize, dst: &mut [MaybeUninit<f32>]) {
    let end = start + dst.len();
    let mut i = start;
    while i < end {
        let (sa, sb) = (pa.seg(xa, i), pb.seg(xb, i));
        let len_of = |s: &Seg| match s {
            Seg::Slice(v) => v.len(),
            Seg::Const(_, n) => *n,
        };
        let len = len_of(&sa).min(len_of(&sb)).min(end - i);
        let d = &mut dst[i - start..i - start + len];
        match (sa, sb) {
            (Seg::Slice(x), Seg::Slice(y)) => {
                for ((d, &x), &y) in d.iter_mut().zip(&x[..len]).zip(&y[..len]) {
                    d.write(op.apply(x, y));
                }
            }
            (Seg::Slice(x), Seg::Const(y, _)) => {
                for (d, &x) in d.iter_mut().zip(&x[..len]) {
                    d.write(op.apply(x, y));
                }
            }
            (Seg::Const(x, _), Seg::Slice(y)) => {
                for (d, &y) in d.iter_mut().zip(&y[..len]) {
                    d.write(op.apply(x, y));
                }
            }
            (Seg::Const(x, _), Seg::Const(y, _)) => {
                let v = op.apply(x, y);
                for d in d.iter_mut() {
                    d.write(v);
                }
            }
        }
        i += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(dims: &[usize], seed: f32) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + seed).sin() * 3.0).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    const OPS: [BinOp; 6] = [BinOp::Add, BinOp::Sub, BinOp::Mul, BinOp::Div, BinOp::Max, BinOp::Min];

    /// Against candle's own broadcasting op, on odd shapes past the
    /// threshold: the same values exactly (one f32 op per element both ways).
    #[test]
    fn matches_candle_on_odd_broadcasts() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[1, 37, 41, 43], &[1, 37, 41, 43]), // same shape
            (&[1, 37, 41, 43], &[37, 1, 1]),      // per-channel bias, NCHW
            (&[37, 1, 1], &[2, 37, 41, 43]),      // broadcast on the left operand
            (&[3, 129, 385], &[385]),             // trailing bias
            (&[3, 129, 385], &[1]),               // scalar
            (&[3, 129, 385], &[129, 1]),          // middle run
            (&[1], &[5, 113, 127]),               // scalar on the left
            (&[5, 1, 127], &[5, 113, 127]),       // not a simple pattern: candle's path
            (&[5, 113, 1], &[1, 113, 127]),       // both broadcast, not simple: candle's path
        ];
        for (da, db) in cases {
            let (a, b) = (ramp(da, 0.3), ramp(db, 1.1));
            for op in OPS {
                let got = binary(op, &a, &b).unwrap();
                let want = op.candle(&a, &b).unwrap();
                assert_eq!(got.dims(), want.dims(), "{op:?} {da:?} {db:?}");
                let (g, w) = (
                    got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                let bad = g.iter().zip(&w).position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(bad.is_none(), "{op:?} {da:?} {db:?}: element {bad:?} differs");
            }
        }
    }

    #[test]
    fn unary_matches_candle_bit_for_bit() {
        use candle_core::op::{Exp, Gelu, GeluErf, Relu, Sqrt, Tanh};
        let x = ramp(&[3, 131, 257], 0.7);
        let same = |got: Tensor, want: Tensor, what: &str| {
            assert_eq!(got.dims(), want.dims(), "{what}");
            let (g, w) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let bad = g.iter().zip(&w).position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(bad.is_none(), "{what}: element {bad:?} differs");
        };
        same(unary::<Exp>(&x, |t| t.exp()).unwrap(), x.exp().unwrap(), "exp");
        same(unary::<Tanh>(&x, |t| t.tanh()).unwrap(), x.tanh().unwrap(), "tanh");
        same(unary::<Relu>(&x, |t| t.relu()).unwrap(), x.relu().unwrap(), "relu");
        same(unary::<Gelu>(&x, |t| t.gelu()).unwrap(), x.gelu().unwrap(), "gelu");
        same(
            unary::<GeluErf>(&x, |t| t.gelu_erf()).unwrap(),
            x.gelu_erf().unwrap(),
            "gelu_erf",
        );
        let pos = x.abs().unwrap();
        same(unary::<Sqrt>(&pos, |t| t.sqrt()).unwrap(), pos.sqrt().unwrap(), "sqrt");
        // Non-contiguous input: the fallback, same values.
        let t = ramp(&[301, 300], 0.0).t().unwrap();
        same(
            unary::<Exp>(&t, |t| t.exp()).unwrap(),
            t.exp().unwrap(),
            "exp, transposed",
        );
    }

    #[test]
    fn an_operand_with_itself() {
        let x = ramp(&[5, 113, 127], 0.4);
        for op in OPS {
            let got = binary(op, &x, &x).unwrap();
            let want = op.candle(&x, &x).unwrap();
            let (g, w) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(g.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits()), "{op:?}");
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(
            Pattern::of(&[37, 1, 1], &[1, 37, 5, 7]),
            Some(Pattern { inner: 35, mid: 37 })
        );
        assert_eq!(Pattern::of(&[7], &[2, 5, 7]), Some(Pattern { inner: 1, mid: 7 }));
        assert_eq!(Pattern::of(&[1, 1], &[2, 5, 7]), Some(Pattern { inner: 1, mid: 1 }));
        assert_eq!(Pattern::of(&[2, 1, 7], &[2, 5, 7]), None);
    }

    #[test]
    fn small_and_non_f32_go_to_candle() {
        let a = ramp(&[3, 5], 0.0);
        assert!(fast(BinOp::Add, &a, &a).unwrap().is_none());
        let big = ramp(&[300, 301], 0.0).to_dtype(CDType::F64).unwrap();
        assert!(fast(BinOp::Add, &big, &big).unwrap().is_none());
        let t = ramp(&[301, 300], 0.0).t().unwrap();
        assert!(fast(BinOp::Add, &t, &t).unwrap().is_none(), "non-contiguous");
    }
}
