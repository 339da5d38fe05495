//! The interpreter's f32 matrix product: the `gemm` crate (the one candle's
//! matmul calls) called directly, with a fused epilogue.
//!
//! Why not candle's `matmul`: it zero-fills every output before the product
//! overwrites it, it asks `candle_core::utils::get_num_threads()` for a
//! thread count on every call (on Linux that re-reads `/proc/cpuinfo`, ~6%
//! of a MobileNetV2 run), and a bias or an activation is one more pass and
//! one more buffer each. And gemm's own threading splits a product in more
//! pieces than two cores can use and spins between them: on 2 threads it
//! made attention's products slower than on one. Here each product is
//! split in one block per thread of the interpreter's pool (by rows or by
//! columns, whichever packs less twice), a batch of small products runs one
//! product per task, and a product under ~10 µs stays on one thread. The
//! output is written once by the product, then the bias and activation
//! ([`Act`]) are applied to it band by band while it is in cache.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::fuse::{Act, Tail};
use super::gemv;
use super::limits::check_alloc;
use super::rows::{self, Isa};

type CResult<T> = candle_core::Result<T>;

/// Products of fewer multiply-adds than this (about 10 µs of one core) run
/// on one thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// A strided view of a matrix inside `data`: element `(r, c)` of batch `b`
/// is `data[b · batch + r · rs + c · cs]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
    pub batch: usize,
}

impl MatRef<'_> {
    /// A row-major `[rows, cols]` matrix, the same for every batch.
    pub fn row_major(data: &[f32], cols: usize) -> MatRef<'_> {
        MatRef {
            data,
            rs: cols,
            cs: 1,
            batch: 0,
        }
    }

    /// Whether every element a `batches × rows × cols` product reads is inside `data`.
    pub(crate) fn covers(&self, batches: usize, rows: usize, cols: usize) -> bool {
        if batches == 0 || rows == 0 || cols == 0 {
            return true;
        }
        let last = (batches - 1)
            .checked_mul(self.batch)
            .and_then(|a| (rows - 1).checked_mul(self.rs).and_then(|b| a.checked_add(b)))
            .and_then(|a| (cols - 1).checked_mul(self.cs).and_then(|b| a.checked_add(b)));
        last.is_some_and(|l| l < self.data.len())
    }
}

/// The bias added before the activation: none, one per output row, or one
/// per output column.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bias<'a> {
    None,
    Rows(&'a [f32]),
    Cols(&'a [f32]),
}

/// `batches` products `lhs_b [m×k] · rhs_b [k×n] + bias` then `tail` (an
/// activation, a residual of `batches · m · n` values in the result's
/// order), each written row-major into `m · n` consecutive elements of the
/// result. Costs `2·batches·m·n·k` flops on the pool plus one pass over the
/// output when there is a bias or a tail; the output is allocated once and not
/// zero-filled. Errors (never panics) when a view does not cover its matrix
/// or the output is over the run's memory limit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    batches: usize,
    (m, n, k): (usize, usize, usize),
    lhs: MatRef,
    rhs: MatRef,
    bias: Bias,
    tail: Tail,
) -> CResult<Vec<f32>> {
    check_alloc("matmul output", &[batches, m, n], 4)?;
    let len = batches * m * n;
    if tail.residual.is_some_and(|r| r.len() != len) {
        candle_core::bail!(
            "a residual of {} values for a [{batches}, {m}, {n}] product",
            tail.residual.map_or(0, <[f32]>::len)
        )
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    {
        let dst = &mut out.spare_capacity_mut()[..len];
        let one = |(b, d): (usize, &mut [MaybeUninit<f32>]), threads: usize| {
            let l = MatRef {
                data: &lhs.data[(b * lhs.batch).min(lhs.data.len())..],
                ..lhs
            };
            let r = MatRef {
                data: &rhs.data[(b * rhs.batch).min(rhs.data.len())..],
                ..rhs
            };
            matmul_into_rows(threads, d, n, (m, n, k), l, r, bias, tail.from(b * m * n))
        };
        let each = (m * n).max(1);
        let threads = rayon::current_num_threads();
        if threads > 1 && batches >= 2 * threads {
            // Many small products (attention's heads): one per task, each
            // on one thread, instead of each split across the pool.
            let chunks = dst.par_chunks_exact_mut(each).take(batches).enumerate();
            chunks.try_for_each(|c| one(c, 1))?;
        } else {
            for c in dst.chunks_exact_mut(each).take(batches).enumerate() {
                one(c, threads)?;
            }
        }
    }
    // SAFETY: `matmul_into_rows` wrote every element of each of the `batches`
    // chunks of `m · n`, which together are the first `len` elements.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// One product `lhs [m×k] · rhs [k×n] + bias` then `tail` into `dst`
/// (`m · n` elements, row-major; a residual indexed as `dst`), every
/// element written.
pub(crate) fn matmul_into(
    dst: &mut [MaybeUninit<f32>],
    mnk: (usize, usize, usize),
    lhs: MatRef,
    rhs: MatRef,
    bias: Bias,
    tail: Tail,
) -> CResult<()> {
    matmul_into_rows(rayon::current_num_threads(), dst, mnk.1, mnk, lhs, rhs, bias, tail)
}

/// Like [`matmul_into`] into rows `dst_rs` apart: row `r` of the product is
/// `dst[r · dst_rs..r · dst_rs + n]`, and only those elements are written
/// (a band of columns of a wider matrix); a residual is indexed as `dst`.
/// Runs on at most `threads` of the pool's threads (callers pass
/// `rayon::current_num_threads()`, or 1 inside a task of their own).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into_rows(
    threads: usize,
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    mnk: (usize, usize, usize),
    lhs: MatRef,
    rhs: MatRef,
    bias: Bias,
    tail: Tail,
) -> CResult<()> {
    // SAFETY: `dst` is borrowed mutably for the call, and is `dst.len()` long.
    unsafe {
        matmul_into_ptr(
            threads,
            Out(dst.as_mut_ptr()),
            dst.len(),
            dst_rs,
            mnk,
            lhs,
            rhs,
            bias,
            tail,
        )
    }
}

/// [`matmul_into_rows`] into `dst_len` elements at `out`, of which it
/// writes only rows `r · dst_rs..r · dst_rs + n` (checked to fit): for
/// callers whose tasks write disjoint column bands of one matrix.
///
/// # Safety
/// `dst_len` elements at `out` must be writable, and those rows' elements
/// written by no one else and read by no one until this returns.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_into_ptr(
    threads: usize,
    out: Out,
    dst_len: usize,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: MatRef,
    rhs: MatRef,
    bias: Bias,
    tail: Tail,
) -> CResult<()> {
    let need = if m == 0 || n == 0 {
        Some(0)
    } else {
        (m - 1).checked_mul(dst_rs).and_then(|v| v.checked_add(n))
    };
    let short_res = tail.residual.is_some_and(|r| need.is_none_or(|need| r.len() < need));
    if dst_rs < n || need.is_none_or(|need| dst_len < need) || short_res || !lhs.covers(1, m, k) || !rhs.covers(1, k, n)
    {
        candle_core::bail!("matmul of [{m}, {k}] by [{k}, {n}]: an operand or the output is too short")
    }
    match bias {
        Bias::Rows(b) if b.len() != m => candle_core::bail!("{} row biases for {m} rows", b.len()),
        Bias::Cols(b) if b.len() != n => candle_core::bail!("{} column biases for {n} columns", b.len()),
        _ => {}
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k > 0 && lhs.cs == 1 && rhs.rs == 1 && (m == 1 || n == 1) {
        // SAFETY: the caller's contract, and the views were checked above.
        unsafe { matvec(threads, out, dst_rs, (m, n, k), lhs, rhs, bias, tail) };
        return Ok(());
    }
    let plain = matches!((bias, tail.pre, tail.residual), (Bias::None, Act::Identity, None));
    // Small products stay on one thread: waking another costs more.
    let threads = if m.saturating_mul(n).saturating_mul(k) < PAR_MIN_MACS {
        1
    } else {
        threads
    };
    // Without an epilogue there is nothing to keep in cache: one band.
    let band = if plain || m * n < BAND_MIN { n } else { band_width(m) };
    // Blocks on the pool, one per thread: of rows when the product has
    // more rows than columns, else of columns, so that the operand every
    // block packs whole is the smaller one (the weights of a pointwise conv
    // over a large image, the image of one over many channels). In each
    // block, bands of columns, each band's epilogue applied right after its
    // product, while it is in cache.
    let (by_cols, blocks, per) = blocks(threads, (m, n, k));
    let isa = Isa::detect();
    let block = |i: usize| {
        let ((r0, mb), (c_lo, c_hi)) = if by_cols {
            ((0, m), (i * per, ((i + 1) * per).min(n)))
        } else {
            ((i * per, per.min(m - i * per)), (0, n))
        };
        let lhs = MatRef {
            data: &lhs.data[r0 * lhs.rs..],
            ..lhs
        };
        let bias = match bias {
            Bias::Rows(b) => Bias::Rows(&b[r0..r0 + mb]),
            other => other,
        };
        let tail = tail.from(r0 * dst_rs);
        for c0 in (c_lo..c_hi).step_by(band) {
            let w = band.min(c_hi - c0);
            let rhs = MatRef {
                data: &rhs.data[c0 * rhs.cs..],
                ..rhs
            };
            let bias = match bias {
                Bias::Cols(b) => Bias::Cols(&b[c0..c0 + w]),
                other => other,
            };
            // SAFETY: rows r0..r0 + mb, columns c0..c0 + w of the output
            // (checked above to fit in `dst`); no other block writes them.
            let at = unsafe { out.at(r0 * dst_rs + c0) };
            unsafe { product_into(at, dst_rs, (mb, w, k), lhs, rhs, false) };
            if plain {
                continue;
            }
            let tail = tail.from(c0);
            for r in 0..mb {
                // SAFETY: row r of this band, written by the product just above.
                let d = unsafe { std::slice::from_raw_parts_mut(at.add(r * dst_rs) as *mut f32, w) };
                epilogue_one(isa, d, r, dst_rs, bias, tail);
            }
        }
    };
    if blocks > 1 {
        super::workers::par_for(blocks, block);
    } else {
        block(0);
    }
    Ok(())
}

/// A product with one row (`m == 1`) whose columns are contiguous in
/// `rhs`, or with one column (`n == 1`) whose rows are contiguous in
/// `lhs`: every output one dot product of two contiguous runs, on
/// [`gemv::dots`] (no packing; each weight read once), split in runs of
/// outputs across the pool when large; then the bias and `tail`.
///
/// # Safety
/// As [`matmul_into_ptr`], whose checks must have passed.
#[allow(clippy::too_many_arguments)]
unsafe fn matvec(
    threads: usize,
    out: Out,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: MatRef,
    rhs: MatRef,
    bias: Bias,
    tail: Tail,
) {
    let isa = Isa::detect();
    // The vector, the matrix whose rows it meets, and the outputs' count.
    let (v, mat, rs, count) = if m == 1 {
        (&lhs.data[..k], rhs.data, rhs.cs, n)
    } else {
        (&rhs.data[..k], lhs.data, lhs.rs, m)
    };
    // One row, or one column stored one element a row: the outputs are
    // contiguous in `dst`. Otherwise gathered here, then stored `dst_rs`
    // apart.
    let contiguous = m == 1 || dst_rs == 1;
    let mut sums: Vec<MaybeUninit<f32>> = Vec::new();
    let dst: &mut [MaybeUninit<f32>] = if contiguous {
        // SAFETY: the output's first `count` elements: row 0 (`n` of them)
        // or, one a row, the `m` rows' (checked to fit).
        unsafe { std::slice::from_raw_parts_mut(out.at(0), count) }
    } else {
        sums.resize(count, MaybeUninit::uninit());
        &mut sums
    };
    let per = if threads > 1 && count * k >= PAR_MIN_MACS {
        count.div_ceil(threads).div_ceil(4) * 4
    } else {
        count
    };
    super::workers::par_parts(dst, per, |i, part| {
        gemv::dots(isa, v, &mat[i * per * rs..], rs, part);
    });
    if contiguous {
        // SAFETY: `dots` wrote all `count` outputs.
        let d = unsafe { std::slice::from_raw_parts_mut(out.at(0) as *mut f32, count) };
        // A contiguous column is the transposed product's one row: its
        // per-row biases are that row's per-column ones, and back.
        let bias = match (m == 1, bias) {
            (false, Bias::Rows(b)) => Bias::Cols(b),
            (false, Bias::Cols(b)) => Bias::Rows(b),
            (_, bias) => bias,
        };
        epilogue_one(isa, d, 0, dst_rs, bias, tail);
        return;
    }
    for (r, s) in sums.iter().enumerate() {
        // SAFETY: `dots` wrote every sum; row r's one element is inside the
        // output (checked by the caller) and this call's alone.
        let d = unsafe {
            let p = out.at(r * dst_rs) as *mut f32;
            p.write(s.assume_init());
            std::slice::from_raw_parts_mut(p, 1)
        };
        epilogue_one(isa, d, r, dst_rs, bias, tail);
    }
}

/// How a product is cut in at most `threads` blocks: whether by columns,
/// the number of blocks and the rows or columns in each but the last. A
/// product on gemm's packed kernel is only cut in blocks that are on it
/// too, so that its sums do not depend on the thread count or on the
/// weight's layout ([`packed_kernel`]).
fn blocks(threads: usize, (m, n, k): (usize, usize, usize)) -> (bool, usize, usize) {
    let by_cols = n > m && n >= 2 * COL_BLOCK_MIN;
    let packed = packed_kernel(m, n, k);
    for t in (2..=threads).rev() {
        let (len, align) = if by_cols { (n, 16) } else { (m, 1) };
        let per = len.div_ceil(t).div_ceil(align) * align;
        let count = len.div_ceil(per);
        let last = len - (count - 1) * per;
        let smallest = if by_cols { (m, last) } else { (last, n) };
        if count > 1 && (!packed || packed_kernel(smallest.0, smallest.1, k)) {
            return (by_cols, count, per);
        }
    }
    (false, 1, m)
}

/// Whether the `gemm` crate computes `[m, k] · [k, n]` with its packed
/// kernel, whose sums do not depend on the operands' layout nor on which
/// block of a larger product it is. Smaller products (one row: a
/// matrix-vector product; at most 256 outputs; `k` of 1 or 2) take kernels
/// that sum in an order of their layout's own.
pub(crate) fn packed_kernel(m: usize, n: usize, k: usize) -> bool {
    m > 1 && m.saturating_mul(n) > 256 && k > 2
}

/// The output's first element, shared by the blocks that write disjoint
/// parts of it.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut MaybeUninit<f32>);
// SAFETY: the blocks given an `Out` write disjoint elements, and the
// borrow of the output it came from outlives them (rayon joins them first).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The output's element `i`.
    ///
    /// # Safety
    /// `i` must be inside the output.
    pub(crate) unsafe fn at(self, i: usize) -> *mut MaybeUninit<f32> {
        // SAFETY: the caller keeps `i` inside the output.
        unsafe { self.0.add(i) }
    }
}

/// Column blocks narrower than this are not worth a thread of their own.
const COL_BLOCK_MIN: usize = 64;

/// Products with an epilogue at least this large run in column bands.
const BAND_MIN: usize = 1 << 15;

/// Columns per band for `m` rows: about 32K outputs (128 KB, in L2), a
/// multiple of 64 columns.
fn band_width(m: usize) -> usize {
    ((1usize << 15) / m.max(1)).div_ceil(64).max(1) * 64
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `add`, into `m` rows of
/// `n` elements at `dst`, `dst_rs` apart, on this thread. With `add` the
/// sum is the old value plus the product's own sum, added once.
///
/// # Safety
/// Those elements must be writable (and, with `add`, initialised) and
/// touched by no one else meanwhile, and `lhs`, `rhs` must cover `[m×k]`
/// and `[k×n]`.
pub(crate) unsafe fn product_into(
    dst: *mut MaybeUninit<f32>,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: MatRef,
    rhs: MatRef,
    add: bool,
) {
    if k == 0 {
        if add {
            return;
        }
        // An empty sum: the product is zero (gemm would not write).
        for r in 0..m {
            for c in 0..n {
                // SAFETY: inside the caller's rows.
                unsafe { dst.add(r * dst_rs + c).write(MaybeUninit::new(0.0)) };
            }
        }
        return;
    }
    // SAFETY: the caller vouches for the views and the destination; with
    // `read_dst` false gemm only writes those (alpha 0, beta 1: dst = lhs ·
    // rhs), with it, dst = 1 · dst + 1 · lhs · rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst as *mut f32,
            1,
            dst_rs as isize,
            add,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if add { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            // One thread: the callers split the work across the pool.
            Parallelism::None,
        )
    }
}

/// The bias and `tail` on `d`, row `r` of an output whose rows are
/// `dst_rs` apart (the residual indexed likewise).
pub(crate) fn epilogue_one(isa: Isa, d: &mut [f32], r: usize, dst_rs: usize, bias: Bias, tail: Tail) {
    let per_row = match bias {
        Bias::None => Some(0.0),
        Bias::Rows(b) => Some(b[r]),
        Bias::Cols(_) => None,
    };
    if let Some(b) = per_row {
        let res = tail.residual.map(|x| &x[r * dst_rs..r * dst_rs + d.len()]);
        if rows::epilogue(isa, d, b, tail.pre, res, tail.post) {
            return;
        }
    }
    epilogue_row(d, r, bias, tail.pre);
    tail.finish(d, r * dst_rs);
}

/// Row `r` of an output: its bias added, then `act`.
#[inline]
fn epilogue_row(d: &mut [f32], r: usize, bias: Bias, act: Act) {
    match bias {
        Bias::None => act.epilogue(d, 0.0),
        Bias::Rows(b) => act.epilogue(d, b[r]),
        Bias::Cols(b) => act.epilogue_cols(d, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + seed).sin() * 3.0).collect()
    }

    #[test]
    fn matches_candle_matmul_bias_and_activation_on_odd_shapes() {
        // One thread (bands in turn) and three (row blocks on the pool).
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(products_match_candle);
        }
    }

    fn products_match_candle() {
        for &(b, m, n, k) in &[
            (1, 1, 1, 1),
            (2, 7, 13, 5),
            (1, 33, 129, 67),
            (3, 65, 17, 300),
            (1, 5, 3, 0),
            // Large enough for column bands (and, on a pool, blocks of
            // columns: more columns than rows).
            (1, 40, 1000, 7),
            (2, 100, 700, 3),
            // Blocks of rows (more rows than columns), and blocks of
            // columns of a product too small for bands.
            (1, 301, 150, 64),
            (1, 8, 300, 200),
            // Heads: one product per task on a pool.
            (13, 64, 64, 70),
        ] {
            let (l, r) = (ramp(b * m * k, 0.1), ramp(b * k * n, 0.7));
            let (rb, cb) = (ramp(m, 1.3), ramp(n, 2.1));
            let lt = Tensor::from_vec(l.clone(), (b, m, k), &Device::Cpu).unwrap();
            let rt = Tensor::from_vec(r.clone(), (b, k, n), &Device::Cpu).unwrap();
            let prod = lt.matmul(&rt).unwrap();
            for (bias, act) in [
                (Bias::None, Act::Identity),
                (Bias::Rows(&rb), Act::Clamp(0.0, 6.0)),
                (Bias::Cols(&cb), Act::GeluErf),
                (Bias::Rows(&rb), Act::Silu),
            ] {
                let want = match bias {
                    Bias::None => prod.clone(),
                    Bias::Rows(v) => prod
                        .broadcast_add(&Tensor::from_slice(v, (m, 1), &Device::Cpu).unwrap())
                        .unwrap(),
                    Bias::Cols(v) => prod
                        .broadcast_add(&Tensor::from_slice(v, n, &Device::Cpu).unwrap())
                        .unwrap(),
                };
                let want: Vec<f32> = act.apply(&want).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let got = matmul(
                    b,
                    (m, n, k),
                    MatRef {
                        data: &l,
                        rs: k,
                        cs: 1,
                        batch: m * k,
                    },
                    MatRef {
                        data: &r,
                        rs: n,
                        cs: 1,
                        batch: k * n,
                    },
                    bias,
                    Tail::act(act),
                )
                .unwrap();
                assert_eq!(got, want, "b{b} m{m} n{n} k{k} {act:?}");
                // A residual (in the result's order) added after `act`, then a second activation.
                let res = ramp(b * m * n, 3.3);
                let tail = Tail {
                    pre: act,
                    residual: Some(&res),
                    post: Act::Relu,
                };
                let lhs = MatRef {
                    data: &l,
                    rs: k,
                    cs: 1,
                    batch: m * k,
                };
                let rhs = MatRef {
                    data: &r,
                    rs: n,
                    cs: 1,
                    batch: k * n,
                };
                let got = matmul(b, (m, n, k), lhs, rhs, bias, tail).unwrap();
                let want: Vec<f32> = want.iter().zip(&res).map(|(w, r)| Act::Relu.f(w + r)).collect();
                assert_eq!(got, want, "b{b} m{m} n{n} k{k} {act:?} + residual");
            }
        }
    }

    #[test]
    fn one_row_or_one_column_products_are_dot_products_on_any_pool() {
        // A classifier's linear (one row, the weight read as its
        // transpose), a 1×1 conv over one position (one column), and
        // sizes split across a pool or not.
        for (m, n, k) in [(1, 1000, 1280), (1, 37, 19), (300, 1, 1000), (50, 1, 33), (1, 1, 5)] {
            let (l, rt) = (ramp(m * k, 0.2), ramp(n * k, 0.5));
            let (rb, cb, res) = (ramp(m, 1.1), ramp(n, 2.3), ramp(m * n, 0.8));
            let lhs = MatRef::row_major(&l, k);
            // Column c of rhs is rt[c·k..(c + 1)·k]: rhs is [n, k] read transposed.
            let rhs = MatRef {
                data: &rt,
                rs: 1,
                cs: k,
                batch: 0,
            };
            let dot = |r: usize, c: usize| (0..k).map(|t| l[r * k + t] as f64 * rt[c * k + t] as f64).sum::<f64>();
            for (bias, act) in [(Bias::Cols(&cb), Act::Clamp(-1.0, 6.0)), (Bias::Rows(&rb), Act::Silu)] {
                let tail = Tail {
                    pre: act,
                    residual: Some(&res),
                    post: Act::Relu,
                };
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| matmul(1, (m, n, k), lhs, rhs, bias, tail).unwrap())
                };
                let one = run(1);
                for r in 0..m {
                    for c in 0..n {
                        let b = match bias {
                            Bias::Rows(v) => v[r],
                            Bias::Cols(v) => v[c],
                            Bias::None => 0.0,
                        };
                        let want = Act::Relu.f(act.f((dot(r, c) + b as f64) as f32) + res[r * n + c]);
                        let got = one[r * n + c];
                        assert!((got - want).abs() < 1e-3, "m{m} n{n} k{k} ({r}, {c}): {got} vs {want}");
                    }
                }
                assert!(run(3) == one, "m{m} n{n} k{k}: the sums changed on a pool");
            }
        }
    }

    #[test]
    fn one_column_rows_apart_are_gathered_then_stored_in_place() {
        // A product with one column written into rows 3 apart (a band of a
        // wider output): the dot products go through a buffer, then each
        // lands at its row with its bias, activation and residual; the
        // elements between them are not touched.
        let (m, k, rs) = (40, 33, 3);
        let (l, v, rb) = (ramp(m * k, 0.2), ramp(k, 0.7), ramp(m, 1.4));
        let len = (m - 1) * rs + 1;
        let res = ramp(len, 0.6);
        let tail = Tail {
            pre: Act::Clamp(-0.5, 6.0),
            residual: Some(&res),
            post: Act::Identity,
        };
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![MaybeUninit::new(f32::NAN); len];
            let at = Out(out.as_mut_ptr());
            let (lhs, rhs) = (MatRef::row_major(&l, k), MatRef::row_major(&v, 1));
            pool.install(|| unsafe {
                matmul_into_ptr(threads, at, len, rs, (m, 1, k), lhs, rhs, Bias::Rows(&rb), tail)
            })
            .unwrap();
            for (i, o) in out.iter().enumerate() {
                let got = unsafe { o.assume_init() };
                if i % rs != 0 {
                    assert!(got.is_nan(), "element {i} between rows was written: {got}");
                    continue;
                }
                let r = i / rs;
                let dot: f64 = (0..k).map(|t| l[r * k + t] as f64 * v[t] as f64).sum();
                let want = tail.pre.f((dot + rb[r] as f64) as f32) + res[i];
                assert!(
                    (got - want).abs() < 1e-4,
                    "row {r} on {threads} threads: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn transposed_views_and_short_operands() {
        // rhs given as its transpose [n, k] read with swapped strides.
        let (m, n, k) = (9, 11, 6);
        let (l, rt) = (ramp(m * k, 0.3), ramp(n * k, 0.9));
        let want = Tensor::from_vec(l.clone(), (m, k), &Device::Cpu)
            .unwrap()
            .matmul(&Tensor::from_vec(rt.clone(), (n, k), &Device::Cpu).unwrap().t().unwrap())
            .unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let rhs = MatRef {
            data: &rt,
            rs: 1,
            cs: k,
            batch: 0,
        };
        let got = matmul(
            1,
            (m, n, k),
            MatRef::row_major(&l, k),
            rhs,
            Bias::None,
            Tail::act(Act::Identity),
        )
        .unwrap();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "{diff}");
        let short = MatRef::row_major(&l[..m * k - 1], k);
        let err = matmul(1, (m, n, k), short, rhs, Bias::None, Tail::act(Act::Identity)).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
        let err = matmul(
            1,
            (m, n, k),
            MatRef::row_major(&l, k),
            rhs,
            Bias::Rows(&[1.0]),
            Tail::act(Act::Relu),
        )
        .unwrap_err();
        assert!(err.to_string().contains("row biases"), "{err}");
    }
}
