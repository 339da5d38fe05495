//! Vectorised loops over runs of f32 outputs, the convolution kernels'
//! innermost work:
//! - [`run`], the depthwise convolution's: `dst[x] = act(bias + Σ_t w[t] ·
//!   src[offs[t] + x])`, each output summed in a register over every filter
//!   tap and stored once, and [`run_rows`], a whole plane of such runs,
//!   four rows at a time;
//! - [`epilogue`], a GEMM output row's: bias, activation, residual add and
//!   a second activation in one pass;
//! - [`split_rows`], a stride-2 depthwise convolution's input rows split
//!   into their even and odd columns, and [`evens`], a stride-2 im2col row's
//!   gather of every other column.
//!
//! Implementations are picked by [`Isa::detect`] at run time: AVX-512F (16
//! lanes, masked tail), AVX2 + FMA (8 lanes, masked tail; `run` only) and
//! portable code (which compilers vectorise for any target, NEON
//! included). The vector paths apply the simple activations
//! ([`Act::Identity`], `Relu`, `Clamp`, `HardSwish`) in registers, with the
//! same results as [`Act::f`]; any other activation runs on the stored run
//! while it is in L1.

use std::mem::MaybeUninit;

use crate::mil::fuse::Act;

/// Which implementation of [`run`] to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Isa {
    /// Plain Rust, any target.
    Portable,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX-512F (x86-64).
    Avx512,
}

impl Isa {
    /// The widest implementation this CPU runs (checked at run time).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every implementation this CPU runs (for tests).
    #[cfg(test)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }
}

/// Whether the vector paths compute `act` in registers.
pub(crate) fn in_registers(act: Act) -> bool {
    matches!(act, Act::Identity | Act::Relu | Act::Clamp(..) | Act::HardSwish(..))
}

/// `dst[x] = act(bias + Σ_t wts[t] · src[offs[t] + x])` for every `x` of
/// `dst`. Costs `dst.len() · offs.len()` multiply-adds and one store per
/// output. Panics (an internal invariant, checked once) unless every
/// `offs[t] + dst.len() <= src.len()` and `wts.len() == offs.len()`.
pub(crate) fn run(isa: Isa, dst: &mut [f32], src: &[f32], offs: &[usize], wts: &[f32], bias: f32, act: Act) {
    let n = dst.len();
    assert!(
        wts.len() == offs.len() && offs.iter().all(|&o| o.checked_add(n).is_some_and(|e| e <= src.len())),
        "depthwise run outside its input"
    );
    if n == 0 {
        return;
    }
    let inner = if in_registers(act) { act } else { Act::Identity };
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced when the CPU has AVX-512F;
        // the assert above keeps every read inside `src`.
        Isa::Avx512 => unsafe { x86::run_avx512(dst, src, offs, wts, bias, inner) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::run_avx2(dst, src, offs, wts, bias, inner) },
        _ => {
            dst.fill(bias);
            run_portable(dst, src, offs, wts, inner)
        }
    }
    if !in_registers(act) {
        act.epilogue(dst, 0.0);
    }
}

/// [`run`] on each of the `dst.len() / ow` rows of `ow` outputs in `dst`,
/// row `r` reading `src` from `r · src_rs` on: a depthwise convolution's
/// whole output plane in one call, the same sums as [`run`] row by row.
/// The vector paths run four rows at a time (four independent sums in
/// flight instead of one chain of dependent multiply-adds), and the
/// bounds are checked once per plane instead of once per row. Panics (an
/// internal invariant) unless `ow` divides `dst.len()` and every tap of the
/// last row stays inside `src`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_rows<'d>(
    isa: Isa,
    dst: &'d mut [MaybeUninit<f32>],
    ow: usize,
    src: &[f32],
    src_rs: usize,
    offs: &[usize],
    wts: &[f32],
    bias: f32,
    act: Act,
) -> &'d mut [f32] {
    if dst.is_empty() {
        return init(dst, 0.0);
    }
    let rows = dst.len() / ow.max(1);
    let last = (rows.max(1) - 1).checked_mul(src_rs).and_then(|v| v.checked_add(ow));
    assert!(
        ow > 0
            && rows * ow == dst.len()
            && wts.len() == offs.len()
            && offs
                .iter()
                .all(|&o| last.and_then(|l| l.checked_add(o)).is_some_and(|e| e <= src.len())),
        "depthwise rows outside their input"
    );
    let inner = if in_registers(act) { act } else { Act::Identity };
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced when the CPU has AVX-512F;
        // the assert above keeps every row's reads inside `src`.
        Isa::Avx512 => unsafe {
            x86::run_rows_avx512(dst, ow, src, src_rs, offs, wts, bias, inner, unit_grid(offs, src_rs))
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::run_rows_avx2(dst, ow, src, src_rs, offs, wts, bias, inner) },
        _ => {
            for (r, d) in dst.chunks_exact_mut(ow).enumerate() {
                run_portable(init(d, bias), &src[r * src_rs..], offs, wts, inner);
            }
        }
    }
    // SAFETY: every path above wrote every element of `dst` (the vector
    // kernels store each row's every column; the portable one initialises
    // each row first).
    let dst = unsafe { assume_init(dst) };
    if !in_registers(act) {
        act.epilogue(dst, 0.0);
    }
    dst
}

/// `dst`, every element set to `v`, as initialised values.
pub(crate) fn init(dst: &mut [MaybeUninit<f32>], v: f32) -> &mut [f32] {
    for d in dst.iter_mut() {
        d.write(v);
    }
    // SAFETY: every element was just written.
    unsafe { assume_init(dst) }
}

/// `dst` as the values it holds.
///
/// # Safety
/// Every element of `dst` must be initialised.
pub(crate) unsafe fn assume_init(dst: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller
    // vouches that every element is initialised.
    unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `Some(kw)` when the taps are a dense `kh × kw` grid at unit spacing
/// whose rows are `src_rs` apart (`offs[i·kw + j] = offs[0] + i·src_rs + j`:
/// a stride-1, dilation-1 filter), so that output row `r + 1`'s tap `(i, j)`
/// reads what row `r`'s tap `(i + 1, j)` reads.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn unit_grid(offs: &[usize], src_rs: usize) -> Option<usize> {
    let o0 = *offs.first()?;
    let kw = offs.iter().enumerate().take_while(|&(t, &o)| o == o0 + t).count();
    let dense = offs.len().is_multiple_of(kw)
        && offs
            .iter()
            .enumerate()
            .all(|(t, &o)| Some(o) == (t / kw).checked_mul(src_rs).and_then(|v| v.checked_add(o0 + t % kw)));
    (kw > 0 && dense).then_some(kw)
}

/// `d[x] = post(pre(d[x] + bias) + res[x])`, or `pre(d[x] + bias)`
/// without `res`, in one pass; exactly what [`Act::f`] computes on each.
/// Returns `false`, having done nothing, when this CPU or these activations
/// have no vector path here (the caller then runs its scalar loop). Errs
/// never; panics (an internal invariant) when `res` is shorter than `d`.
pub(crate) fn epilogue(isa: Isa, d: &mut [f32], bias: f32, pre: Act, res: Option<&[f32]>, post: Act) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && in_registers(pre) && in_registers(post) {
        assert!(
            res.is_none_or(|r| r.len() >= d.len()),
            "residual run shorter than its outputs"
        );
        // SAFETY: `Isa::Avx512` is only produced when the CPU has AVX-512F;
        // `res`, when given, is at least as long as `d` (asserted).
        unsafe { x86::epilogue_avx512(d, bias, pre, res, post) };
        return true;
    }
    // Other targets: no vector path here.
    let _ = (isa, d, bias, pre, res, post);
    false
}

/// `even[i] = pairs[2i]`, `odd[i] = pairs[2i + 1]` for every whole pair of
/// `pairs` (an odd last value is left to the caller): the portable loop of
/// [`split_rows`], which compilers vectorise. Panics (an internal
/// invariant) when `even` or `odd` is shorter than `pairs.len() / 2`.
fn split_pairs(pairs: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let n = pairs.len() / 2;
    let (even, odd) = (&mut even[..n], &mut odd[..n]);
    for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs.chunks_exact(2)) {
        *e = p[0];
        *o = p[1];
    }
}

/// Each `w`-wide row of `src` into one `row`-wide row of `dst`, split into
/// its two stride phases as a stride-2 plane lays them out: padded column
/// `c` (input column `c − pad_left`) to `dst[c / 2 + (c % 2) · phase]`, for
/// the first `n` input columns of each row. Stops at whichever of `src`
/// and `dst` runs out of rows first; writes nothing else. One pass over the
/// plane in one call (AVX-512F: 16 pairs per two permutes, the row's
/// geometry and bounds worked out once for all rows: per-row slicing was
/// half a stride-2 depthwise conv's time on 56-wide planes).
pub(crate) fn split_rows(
    isa: Isa,
    src: &[f32],
    (w, n, pad_left): (usize, usize, usize),
    dst: &mut [f32],
    (row, phase): (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `Isa::Avx512` is only produced when the CPU has AVX-512F.
        unsafe { x86::split_rows_avx512(src, (w, n, pad_left), dst, (row, phase)) };
        return;
    }
    let _ = isa;
    split_rows_portable(src, (w, n, pad_left), dst, (row, phase));
}

/// Where [`split_rows`] puts one row's columns (the same for every row):
/// with an odd `pad_left`, input column 0 goes alone to odd column
/// `pad_left / 2` (`lead`); then `pairs` whole pairs from input column
/// `lead` split to even and odd columns from `base`; then, when `n` leaves
/// one column over, it goes to even column `base + pairs` (`last`).
#[derive(Clone, Copy)]
struct Split {
    lead: usize,
    base: usize,
    pairs: usize,
    last: usize,
}

impl Split {
    fn of(n: usize, pl: usize) -> Split {
        let lead = usize::from(pl % 2 == 1 && n > 0);
        let pairs = (n - lead) / 2;
        Split {
            lead,
            base: (lead + pl) / 2,
            pairs,
            last: n - lead - 2 * pairs,
        }
    }
}

/// [`split_rows`]' portable loop, row by row.
fn split_rows_portable(src: &[f32], (w, n, pl): (usize, usize, usize), dst: &mut [f32], (row, phase): (usize, usize)) {
    let g = Split::of(n, pl);
    for (srow, drow) in src.chunks_exact(w).zip(dst.chunks_exact_mut(row)) {
        let (even, odd) = drow.split_at_mut(phase);
        if g.lead == 1 {
            odd[pl / 2] = srow[0];
        }
        let pairs = &srow[g.lead..g.lead + 2 * g.pairs];
        split_pairs(pairs, &mut even[g.base..], &mut odd[g.base..]);
        if g.last == 1 {
            even[g.base + g.pairs] = srow[g.lead + 2 * g.pairs];
        }
    }
}

/// Tap by tap over the run, added to what `dst` holds (the bias): a plain
/// zip per tap, which vectorises.
fn run_portable(dst: &mut [f32], src: &[f32], offs: &[usize], wts: &[f32], act: Act) {
    let n = dst.len();
    for (&o, &w) in offs.iter().zip(wts) {
        for (d, s) in dst.iter_mut().zip(&src[o..o + n]) {
            *d += w * s;
        }
    }
    if !matches!(act, Act::Identity) {
        act.epilogue(dst, 0.0);
    }
}

/// `dst[i] = src[2i]` for every `i < dst.len()`, writing every element of
/// `dst` (which may be uninitialised). AVX-512F gathers 16 per two loads
/// and a permute; other CPUs run a loop. Panics (an internal invariant)
/// when `src` is shorter than `2·dst.len() − 1`.
pub(crate) fn evens(isa: Isa, src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    let src = &src[..2 * n - 1];
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `Isa::Avx512` is only produced when the CPU has AVX-512F;
        // `src` holds `2n − 1` values and `dst` `n`.
        unsafe { x86::evens_avx512(src, dst) };
        return;
    }
    let _ = isa;
    for (d, s) in dst.iter_mut().zip(src.iter().step_by(2)) {
        d.write(*s);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::act16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use crate::mil::fuse::Act;

    /// `act` on 16 lanes, as [`Act::f`] computes it on each (NaN kept
    /// where `Act::f` keeps it: `max_ps`/`min_ps` return their second
    /// operand when either is NaN).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn act16(v: __m512, act: Act) -> __m512 {
        match act {
            Act::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
            Act::Clamp(lo, hi) => _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), v)),
            Act::HardSwish(a, b) => {
                // Not fused: `a · v + b` rounds twice, as the scalar code does.
                let t = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(a)), _mm512_set1_ps(b));
                let t = _mm512_min_ps(_mm512_set1_ps(1.0), _mm512_max_ps(_mm512_setzero_ps(), t));
                _mm512_mul_ps(v, t)
            }
            _ => v,
        }
    }

    /// AVX-512F version of [`super::run`] (same contract).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and every `offs[t] + dst.len()` must be
    /// at most `src.len()`, with `wts.len() == offs.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run_avx512(dst: &mut [f32], src: &[f32], offs: &[usize], wts: &[f32], bias: f32, act: Act) {
        match offs.len() {
            9 => run16::<9>(dst, src, offs, wts, bias, act),
            25 => run16::<25>(dst, src, offs, wts, bias, act),
            _ => run16_any(dst, src, offs, wts, bias, act),
        }
    }

    /// A fixed number of taps: the weights stay in registers.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn run16<const T: usize>(dst: &mut [f32], src: &[f32], offs: &[usize], wts: &[f32], bias: f32, act: Act) {
        let n = dst.len();
        let w: [__m512; T] = std::array::from_fn(|t| _mm512_set1_ps(wts[t]));
        let o: [usize; T] = std::array::from_fn(|t| offs[t]);
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        let bv = _mm512_set1_ps(bias);
        let mut x = 0;
        while x < n {
            let m: __mmask16 = if n - x >= 16 { !0 } else { (1u16 << (n - x)) - 1 };
            let mut acc = bv;
            for t in 0..T {
                // SAFETY: lanes past `n - x` are masked off; the rest are
                // below `o[t] + n <= src.len()`.
                let v = unsafe { _mm512_maskz_loadu_ps(m, sp.add(o[t] + x)) };
                acc = _mm512_fmadd_ps(w[t], v, acc);
            }
            // SAFETY: the masked lanes are below `n`.
            unsafe { _mm512_mask_storeu_ps(dp.add(x), m, act16(acc, act)) };
            x += 16;
        }
    }

    /// Any number of taps.
    #[target_feature(enable = "avx512f")]
    unsafe fn run16_any(dst: &mut [f32], src: &[f32], offs: &[usize], wts: &[f32], bias: f32, act: Act) {
        let n = dst.len();
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        let bv = _mm512_set1_ps(bias);
        let mut x = 0;
        while x < n {
            let m: __mmask16 = if n - x >= 16 { !0 } else { (1u16 << (n - x)) - 1 };
            let mut acc = bv;
            for (&o, &w) in offs.iter().zip(wts) {
                // SAFETY: as in `run16`.
                let v = unsafe { _mm512_maskz_loadu_ps(m, sp.add(o + x)) };
                acc = _mm512_fmadd_ps(_mm512_set1_ps(w), v, acc);
            }
            // SAFETY: as in `run16`.
            unsafe { _mm512_mask_storeu_ps(dp.add(x), m, act16(acc, act)) };
            x += 16;
        }
    }

    /// AVX-512F version of [`super::run_rows`] (same contract).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, `ow` must divide `dst.len()`, and every
    /// `offs[t] + (rows − 1) · src_rs + ow` must be at most `src.len()`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run_rows_avx512(
        dst: &mut [MaybeUninit<f32>],
        ow: usize,
        src: &[f32],
        src_rs: usize,
        offs: &[usize],
        wts: &[f32],
        bias: f32,
        act: Act,
        grid: Option<usize>,
    ) {
        match (grid, offs.len()) {
            // SAFETY (both): the caller's bounds.
            (Some(3), 9) => return unsafe { rows_grid16::<3, 3>(dst, ow, src, src_rs, offs, wts, bias, act) },
            (Some(5), 25) => return unsafe { rows_grid16::<5, 5>(dst, ow, src, src_rs, offs, wts, bias, act) },
            _ => {}
        }
        // SAFETY (all three): the caller's bounds.
        match offs.len() {
            9 => unsafe { rows_fixed16::<9>(dst, ow, src, src_rs, offs, wts, bias, act) },
            25 => unsafe { rows_fixed16::<25>(dst, ow, src, src_rs, offs, wts, bias, act) },
            _ => {
                let ws: Vec<__m512> = wts.iter().map(|&w| _mm512_set1_ps(w)).collect();
                unsafe { rows_each16(dst, ow, src, src_rs, offs, &ws, bias, act) }
            }
        }
    }

    /// A fixed number of taps: the weights broadcast once.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_fixed16<const T: usize>(
        dst: &mut [MaybeUninit<f32>],
        ow: usize,
        src: &[f32],
        src_rs: usize,
        offs: &[usize],
        wts: &[f32],
        bias: f32,
        act: Act,
    ) {
        let w: [__m512; T] = std::array::from_fn(|t| _mm512_set1_ps(wts[t]));
        let o: [usize; T] = std::array::from_fn(|t| offs[t]);
        // SAFETY: the caller's bounds.
        unsafe { rows_each16(dst, ow, src, src_rs, &o, &w, bias, act) }
    }

    /// Blocks of four rows, then the rest one by one. (Weights and offsets
    /// read from memory per tap: unrolling the taps with them in registers
    /// measured 1.5% slower.)
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_each16(
        dst: &mut [MaybeUninit<f32>],
        ow: usize,
        src: &[f32],
        src_rs: usize,
        o: &[usize],
        w: &[__m512],
        bias: f32,
        act: Act,
    ) {
        let rows = dst.len() / ow;
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr().cast::<f32>());
        let bv = _mm512_set1_ps(bias);
        let mut r = 0;
        // SAFETY (both): rows r.. are inside `dst` and, by the caller's
        // bounds, their taps inside `src`.
        while r + 4 <= rows {
            unsafe { rows16::<4>(dp.add(r * ow), ow, sp.add(r * src_rs), src_rs, o, w, bv, act) };
            r += 4;
        }
        while r < rows {
            unsafe { rows16::<1>(dp.add(r * ow), ow, sp.add(r * src_rs), src_rs, o, w, bv, act) };
            r += 1;
        }
    }

    /// `R` rows of `ow` outputs at `dp` (`ow` apart), row `r` reading from
    /// `sp + r · src_rs`: per 16 columns, `R` sums in flight, each over the
    /// taps in order, as `run16` sums one.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows16<const R: usize>(
        dp: *mut f32,
        ow: usize,
        sp: *const f32,
        src_rs: usize,
        o: &[usize],
        w: &[__m512],
        bv: __m512,
        act: Act,
    ) {
        let mut x = 0;
        while x < ow {
            let m: __mmask16 = if ow - x >= 16 { !0 } else { (1u16 << (ow - x)) - 1 };
            let mut acc = [bv; R];
            for (&ot, &wt) in o.iter().zip(w) {
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: lanes past `ow - x` are masked off; the rest
                    // are inside `src` by the caller's bounds.
                    let v = unsafe { _mm512_maskz_loadu_ps(m, sp.add(r * src_rs + ot + x)) };
                    *a = _mm512_fmadd_ps(wt, v, *a);
                }
            }
            for (r, &a) in acc.iter().enumerate() {
                // SAFETY: the stored lanes are inside row r of the caller's rows.
                unsafe { _mm512_mask_storeu_ps(dp.add(r * ow + x), m, act16(a, act)) };
            }
            x += 16;
        }
    }

    /// A dense `KH × KW` unit-spaced filter ([`super::unit_grid`]): blocks
    /// of four rows sharing their loads (`rows16_grid`), then the rest one
    /// by one.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_grid16<const KH: usize, const KW: usize>(
        dst: &mut [MaybeUninit<f32>],
        ow: usize,
        src: &[f32],
        src_rs: usize,
        offs: &[usize],
        wts: &[f32],
        bias: f32,
        act: Act,
    ) {
        let w: [[__m512; KW]; KH] = std::array::from_fn(|i| std::array::from_fn(|j| _mm512_set1_ps(wts[i * KW + j])));
        let rows = dst.len() / ow;
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr().cast::<f32>());
        let bv = _mm512_set1_ps(bias);
        let mut r = 0;
        // SAFETY (both loops): rows r.. are inside `dst` and, by the
        // caller's bounds, their taps inside `src`; the grid reads only taps.
        while r + 4 <= rows {
            unsafe { rows16_grid::<KH, KW, 4>(dp.add(r * ow), ow, sp.add(r * src_rs + offs[0]), src_rs, &w, bv, act) };
            r += 4;
        }
        while r < rows {
            unsafe { rows16_grid::<KH, KW, 1>(dp.add(r * ow), ow, sp.add(r * src_rs + offs[0]), src_rs, &w, bv, act) };
            r += 1;
        }
    }

    /// `R` rows of a dense `KH × KW` unit-spaced filter, tap `(i, j)` of
    /// row `r` at `sp + (r + i) · src_rs + j`: each input vector is loaded
    /// once and used by every row it falls under (`(KH + R − 1) · KW` loads
    /// for `R · KH · KW` multiply-adds, where `rows16` loads once per
    /// multiply-add). Each sum still takes its taps in order `(i, j)`, as
    /// `run16` does.
    // `j` is a column offset as much as an index into `w`.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows16_grid<const KH: usize, const KW: usize, const R: usize>(
        dp: *mut f32,
        ow: usize,
        sp: *const f32,
        src_rs: usize,
        w: &[[__m512; KW]; KH],
        bv: __m512,
        act: Act,
    ) {
        let mut x = 0;
        while x < ow {
            let m: __mmask16 = if ow - x >= 16 { !0 } else { (1u16 << (ow - x)) - 1 };
            let mut acc = [bv; R];
            for ii in 0..KH + R - 1 {
                for j in 0..KW {
                    // SAFETY: lanes past `ow - x` are masked off; the rest
                    // are a tap of one of the rows, inside `src`.
                    let v = unsafe { _mm512_maskz_loadu_ps(m, sp.add(ii * src_rs + j + x)) };
                    for (r, a) in acc.iter_mut().enumerate() {
                        // Row r uses input row ii as its filter row ii − r.
                        if ii >= r && ii - r < KH {
                            *a = _mm512_fmadd_ps(w[ii - r][j], v, *a);
                        }
                    }
                }
            }
            for (r, &a) in acc.iter().enumerate() {
                // SAFETY: the stored lanes are inside row r of the caller's rows.
                unsafe { _mm512_mask_storeu_ps(dp.add(r * ow + x), m, act16(a, act)) };
            }
            x += 16;
        }
    }

    /// AVX-512F version of [`super::epilogue`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `res`, when given, holds at least `d.len()` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn epilogue_avx512(d: &mut [f32], bias: f32, pre: Act, res: Option<&[f32]>, post: Act) {
        let n = d.len();
        let dp = d.as_mut_ptr();
        let bv = _mm512_set1_ps(bias);
        let mut x = 0;
        while x < n {
            let m: __mmask16 = if n - x >= 16 { !0 } else { (1u16 << (n - x)) - 1 };
            // SAFETY (all loads and stores): lanes past `n - x` are masked off.
            let mut v = act16(_mm512_add_ps(unsafe { _mm512_maskz_loadu_ps(m, dp.add(x)) }, bv), pre);
            if let Some(r) = res {
                v = act16(
                    _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(m, r.as_ptr().add(x)) }),
                    post,
                );
            }
            unsafe { _mm512_mask_storeu_ps(dp.add(x), m, v) };
            x += 16;
        }
    }

    /// The first `k` (≤ 16) lanes.
    #[inline]
    fn lanes(k: usize) -> __mmask16 {
        if k >= 16 {
            !0
        } else {
            (1u16 << k) - 1
        }
    }

    /// The 32 values of `src` from `from` as two vectors, lanes past
    /// `src.len()` zero.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `from < src.len()`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load32(src: &[f32], from: usize) -> (__m512, __m512) {
        let left = src.len() - from;
        let p = src.as_ptr();
        // SAFETY: masked lanes stay below `src.len()`; a masked-off lane
        // is not read, so `p.add(from + 16)` past the end reads nothing.
        unsafe {
            (
                _mm512_maskz_loadu_ps(lanes(left), p.add(from)),
                _mm512_maskz_loadu_ps(lanes(left.saturating_sub(16)), p.wrapping_add(from + 16)),
            )
        }
    }

    /// The permute index that takes lane `2i + first` of the 32 lanes of
    /// `lo:hi` into lane i (`first` 0: the evens, 1: the odds).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn every_other(first: i32) -> __m512i {
        _mm512_add_epi32(
            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
            _mm512_set1_epi32(first),
        )
    }

    /// AVX-512F version of [`super::split_rows`]: the bounds checked once
    /// for every row (they are the same), then one straight loop.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn split_rows_avx512(
        src: &[f32],
        (w, n, pl): (usize, usize, usize),
        dst: &mut [f32],
        (row, phase): (usize, usize),
    ) {
        let count = src
            .len()
            .checked_div(w)
            .unwrap_or(0)
            .min(dst.len().checked_div(row).unwrap_or(0));
        let g = super::Split::of(n, pl);
        // Every row reads and writes the same columns; an internal
        // invariant, as the portable loop's slicing.
        assert!(
            n <= w && g.base + g.pairs + g.last <= phase && phase + g.base + g.pairs <= row,
            "{n} of {w} columns split into rows of {row} (phase {phase}) from {pl}"
        );
        let (full, rest) = (g.pairs / 16, g.pairs % 16);
        let (lo_mask, hi_mask, out_mask) = (lanes(2 * rest), lanes((2 * rest).saturating_sub(16)), lanes(rest));
        let (evens, odds) = (every_other(0), every_other(1));
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        for r in 0..count {
            // SAFETY: row `r < count` is inside both slices; the assert
            // above keeps every column read below `n ≤ w` and every
            // column written below `row`; masked-off lanes are neither
            // read nor written.
            unsafe {
                let s = sp.add(r * w);
                let even = dp.add(r * row);
                let odd = even.add(phase);
                if g.lead == 1 {
                    *odd.add(pl / 2) = *s;
                }
                let p = s.add(g.lead);
                let (e, o) = (even.add(g.base), odd.add(g.base));
                for j in 0..full {
                    let (lo, hi) = (_mm512_loadu_ps(p.add(32 * j)), _mm512_loadu_ps(p.add(32 * j + 16)));
                    _mm512_storeu_ps(e.add(16 * j), _mm512_permutex2var_ps(lo, evens, hi));
                    _mm512_storeu_ps(o.add(16 * j), _mm512_permutex2var_ps(lo, odds, hi));
                }
                if rest > 0 {
                    let lo = _mm512_maskz_loadu_ps(lo_mask, p.add(32 * full));
                    let hi = _mm512_maskz_loadu_ps(hi_mask, p.wrapping_add(32 * full + 16));
                    _mm512_mask_storeu_ps(e.add(16 * full), out_mask, _mm512_permutex2var_ps(lo, evens, hi));
                    _mm512_mask_storeu_ps(o.add(16 * full), out_mask, _mm512_permutex2var_ps(lo, odds, hi));
                }
                if g.last == 1 {
                    *e.add(g.pairs) = *p.add(2 * g.pairs);
                }
            }
        }
    }

    /// AVX-512F version of [`super::evens`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `src` holds `2n − 1` values and `dst` `n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn evens_avx512(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let n = dst.len();
        let dp = dst.as_mut_ptr().cast::<f32>();
        let (sp, evens) = (src.as_ptr(), every_other(0));
        let mut i = 0;
        // Whole steps without masks while the step's 32 values are inside
        // `src` (`2i + 32 ≤ 2n − 1`): masks worked out per step were most
        // of a short row's time (im2col's rows of a strided conv).
        while i + 16 < n {
            // SAFETY: `2i + 32 ≤ 2n − 2 < src.len()`, `i + 16 ≤ n`.
            unsafe {
                let (lo, hi) = (_mm512_loadu_ps(sp.add(2 * i)), _mm512_loadu_ps(sp.add(2 * i + 16)));
                _mm512_storeu_ps(dp.add(i), _mm512_permutex2var_ps(lo, evens, hi));
            }
            i += 16;
        }
        if i < n {
            // SAFETY (the load and store): `2i ≤ 2n − 2 < src.len()`;
            // masked lanes stay below `n` values of `dst`.
            let (lo, hi) = unsafe { load32(src, 2 * i) };
            unsafe { _mm512_mask_storeu_ps(dp.add(i), lanes(n - i), _mm512_permutex2var_ps(lo, evens, hi)) };
        }
    }

    /// `act` on 8 lanes (see `act16`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn act8(v: __m256, act: Act) -> __m256 {
        match act {
            Act::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
            Act::Clamp(lo, hi) => _mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), v)),
            Act::HardSwish(a, b) => {
                let t = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(a)), _mm256_set1_ps(b));
                let t = _mm256_min_ps(_mm256_set1_ps(1.0), _mm256_max_ps(_mm256_setzero_ps(), t));
                _mm256_mul_ps(v, t)
            }
            _ => v,
        }
    }

    /// AVX2 + FMA version of [`super::run`] (same contract).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; offsets as for `run_avx512`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2(dst: &mut [f32], src: &[f32], offs: &[usize], wts: &[f32], bias: f32, act: Act) {
        let n = dst.len();
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        let bv = _mm256_set1_ps(bias);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut x = 0;
        while x < n {
            let rem = (n - x).min(8) as i32;
            // Lanes below `rem` have their sign bit set: those are loaded and stored.
            let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), lanes);
            let mut acc = bv;
            for (&o, &w) in offs.iter().zip(wts) {
                // SAFETY: masked-off lanes are not read; the rest are below `o + n <= src.len()`.
                let v = unsafe { _mm256_maskload_ps(sp.add(o + x), m) };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(w), v, acc);
            }
            // SAFETY: the stored lanes are below `n`.
            unsafe { _mm256_maskstore_ps(dp.add(x), m, act8(acc, act)) };
            x += 8;
        }
    }

    /// AVX2 + FMA version of [`super::run_rows`] (same contract as
    /// `run_rows_avx512`): four rows at a time, 8 columns per step.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; bounds as for `run_rows_avx512`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_rows_avx2(
        dst: &mut [MaybeUninit<f32>],
        ow: usize,
        src: &[f32],
        src_rs: usize,
        offs: &[usize],
        wts: &[f32],
        bias: f32,
        act: Act,
    ) {
        let rows = dst.len() / ow;
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr().cast::<f32>());
        let mut r = 0;
        // SAFETY (both): rows r.. are inside `dst` and, by the caller's
        // bounds, their taps inside `src`.
        while r + 4 <= rows {
            unsafe { rows8::<4>(dp.add(r * ow), ow, sp.add(r * src_rs), src_rs, offs, wts, bias, act) };
            r += 4;
        }
        while r < rows {
            unsafe { rows8::<1>(dp.add(r * ow), ow, sp.add(r * src_rs), src_rs, offs, wts, bias, act) };
            r += 1;
        }
    }

    /// `R` rows (see `rows16`) on 8 lanes, summed as `run_avx2` sums one.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows8<const R: usize>(
        dp: *mut f32,
        ow: usize,
        sp: *const f32,
        src_rs: usize,
        offs: &[usize],
        wts: &[f32],
        bias: f32,
        act: Act,
    ) {
        let bv = _mm256_set1_ps(bias);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut x = 0;
        while x < ow {
            let rem = (ow - x).min(8) as i32;
            let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), lanes);
            let mut acc = [bv; R];
            for (&o, &w) in offs.iter().zip(wts) {
                let wv = _mm256_set1_ps(w);
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: masked-off lanes are not read; the rest are
                    // inside `src` by the caller's bounds.
                    let v = unsafe { _mm256_maskload_ps(sp.add(r * src_rs + o + x), m) };
                    *a = _mm256_fmadd_ps(wv, v, *a);
                }
            }
            for (r, &a) in acc.iter().enumerate() {
                // SAFETY: the stored lanes are inside row r of the caller's rows.
                unsafe { _mm256_maskstore_ps(dp.add(r * ow + x), m, act8(a, act)) };
            }
            x += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::fuse::Step;

    /// `steps` as one chained activation.
    fn chain(steps: &[Step]) -> Act {
        steps.iter().try_fold(Act::Identity, |a, &s| a.then(s)).unwrap()
    }

    /// Hard-swish in the clip spelling, a division, a scale and shifts.
    fn hard_swish_chain() -> Act {
        chain(&[
            Step::HardSwishClip(3.0, 0.0, 6.0),
            Step::Div(6.0),
            Step::Mul(0.75),
            Step::Sub(0.125),
            Step::SubFrom(0.5),
            Step::Add(0.1),
        ])
    }

    #[test]
    fn the_vector_epilogue_is_the_scalar_one() {
        let src: Vec<f32> = (0..77).map(|i| ((i * 29 % 83) as f32 - 41.0) * 0.13).collect();
        let res: Vec<f32> = (0..77).map(|i| ((i * 17 % 31) as f32 - 15.0) * 0.2).collect();
        let acts = [
            Act::Identity,
            Act::Relu,
            Act::Clamp(0.0, 6.0),
            Act::HardSwish(1.0 / 6.0, 0.5),
            hard_swish_chain(),
            chain(&[
                Step::Relu,
                Step::Mul(2.0),
                Step::SigmoidHard(0.2, 0.5),
                Step::DivInto(2.0),
            ]),
        ];
        for n in [0usize, 1, 15, 16, 17, 77] {
            for pre in acts {
                for post in acts {
                    for r in [None, Some(&res[..n])] {
                        let want: Vec<f32> = src[..n]
                            .iter()
                            .enumerate()
                            .map(|(x, &v)| {
                                let v = pre.f(v + 0.75);
                                r.map_or(v, |r| post.f(v + r[x]))
                            })
                            .collect();
                        let mut got = src[..n].to_vec();
                        let done = epilogue(Isa::detect(), &mut got, 0.75, pre, r, post);
                        if done {
                            assert_eq!(got, want, "{pre:?} {post:?} n{n} residual {}", r.is_some());
                        } else {
                            assert_eq!(got, &src[..n], "untouched when not done");
                        }
                    }
                }
            }
        }
        assert!(!epilogue(
            Isa::Portable,
            &mut [1.0],
            0.0,
            Act::Relu,
            None,
            Act::Identity
        ));
        assert!(!epilogue(
            Isa::detect(),
            &mut [1.0],
            0.0,
            Act::Silu,
            None,
            Act::Identity
        ));
        // A chain runs as passes over blocks of the stored run (`Act::epilogue`):
        // evaluated step by step in registers here it measured slower.
        assert!(!epilogue(
            Isa::detect(),
            &mut [1.0],
            0.0,
            chain(&[Step::Mul(2.0), Step::Fun(crate::mil::vmath::Fun::Silu)]),
            None,
            Act::Identity
        ));
    }

    #[test]
    fn evens_take_every_other_value_on_every_isa_and_write_no_further() {
        for isa in Isa::available() {
            for n in [0usize, 1, 2, 7, 15, 16, 17, 31, 32, 33, 100] {
                // Exactly `2n − 1` values: the last even is the last value.
                let src: Vec<f32> = (0..(2 * n).saturating_sub(1)).map(|i| i as f32 * 0.5 - 3.0).collect();
                let mut dst = vec![std::mem::MaybeUninit::new(f32::NAN); n + 1];
                evens(isa, &src, &mut dst[..n]);
                for i in 0..n {
                    // SAFETY: every element was initialised above.
                    assert_eq!(unsafe { dst[i].assume_init() }, src[2 * i], "{isa:?} n {n} value {i}");
                }
                assert!(
                    unsafe { dst[n].assume_init() }.is_nan(),
                    "{isa:?} n {n}: wrote past dst"
                );
            }
        }
    }

    #[test]
    fn rows_split_into_their_stride_phases_on_every_isa() {
        // Every padded column `c` of a row lands at `c / 2 + (c % 2) · phase`
        // of its row of `dst`; nothing else is written.
        for isa in Isa::available() {
            for w in [1usize, 2, 3, 15, 16, 17, 31, 32, 33, 34, 63, 65, 200] {
                for (n, pl) in [
                    (w, 0usize),
                    (w, 1),
                    (w, 2),
                    (w, 3),
                    (w.saturating_sub(1), 1),
                    (w / 2, 0),
                ] {
                    let rows = 3;
                    let src: Vec<f32> = (0..rows * w).map(|i| i as f32 * 1.5 - 7.0).collect();
                    let phase = (pl + n + 2) / 2 + 1;
                    let row = 2 * phase + 1;
                    let mut dst = vec![f32::NAN; rows * row];
                    split_rows(isa, &src, (w, n, pl), &mut dst, (row, phase));
                    let mut want = vec![f32::NAN; rows * row];
                    for r in 0..rows {
                        for x in 0..n {
                            let c = x + pl;
                            want[r * row + c / 2 + (c % 2) * phase] = src[r * w + x];
                        }
                    }
                    let same = dst.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa:?} w {w} n {n} pad {pl}: {dst:?} against {want:?}");
                }
            }
        }
    }

    #[test]
    fn rows_at_once_are_the_runs_row_by_row_bit_for_bit() {
        let src: Vec<f32> = (0..900).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.05).collect();
        for taps in [1usize, 9, 25, 30] {
            let offs: Vec<usize> = (0..taps).map(|t| (t * 7) % 43).collect();
            let wts: Vec<f32> = (0..taps).map(|t| ((t * 11 % 9) as f32 - 4.0) * 0.27).collect();
            for (ow, src_rs) in [(1usize, 3usize), (7, 9), (16, 18), (17, 40), (33, 35), (70, 75)] {
                for rows in [1usize, 3, 4, 5, 9] {
                    for act in [Act::Identity, Act::Clamp(-0.5, 0.75), Act::Silu] {
                        for isa in Isa::available() {
                            let mut want = vec![0.0; rows * ow];
                            for (r, d) in want.chunks_exact_mut(ow).enumerate() {
                                run(isa, d, &src[r * src_rs..], &offs, &wts, 0.5, act);
                            }
                            // NaN-filled: an output left unwritten fails the comparison.
                            let mut got = vec![MaybeUninit::new(f32::NAN); rows * ow];
                            let got = run_rows(isa, &mut got, ow, &src, src_rs, &offs, &wts, 0.5, act);
                            assert_eq!(got, &want[..], "{isa:?} {act:?} t{taps} ow{ow} rows{rows}");
                        }
                    }
                }
            }
        }
        // Dense unit-spaced filters (stride 1): each input vector loaded
        // once for all the rows under it, the same sums.
        for (kh, kw) in [(3usize, 3usize), (5, 5), (1, 3), (3, 1), (2, 4), (7, 7)] {
            for (ow, pad) in [(7usize, 0usize), (16, 2), (33, 1)] {
                let src_rs = ow + kw - 1 + pad;
                let offs: Vec<usize> = (0..kh * kw).map(|t| 2 + (t / kw) * src_rs + t % kw).collect();
                assert_eq!(unit_grid(&offs, src_rs), Some(kw));
                let wts: Vec<f32> = (0..kh * kw).map(|t| ((t * 5 % 11) as f32 - 5.0) * 0.13).collect();
                for rows in [1usize, 4, 6, 9] {
                    if 2 + (rows + kh - 1) * src_rs > src.len() {
                        continue;
                    }
                    for isa in Isa::available() {
                        let mut want = vec![0.0; rows * ow];
                        for (r, d) in want.chunks_exact_mut(ow).enumerate() {
                            run(isa, d, &src[r * src_rs..], &offs, &wts, -0.25, Act::Relu);
                        }
                        let mut got = vec![MaybeUninit::new(f32::NAN); rows * ow];
                        let got = run_rows(isa, &mut got, ow, &src, src_rs, &offs, &wts, -0.25, Act::Relu);
                        assert_eq!(got, &want[..], "{isa:?} {kh}x{kw} ow{ow} rows{rows}");
                    }
                }
            }
        }
        // Not a unit grid: a dilation, a stride's phases, a gap.
        assert_eq!(unit_grid(&[0, 2, 4, 10, 12, 14], 10), None);
        assert_eq!(unit_grid(&[0, 1, 20, 21], 10), None);
        assert_eq!(unit_grid(&[0, 1, 2, 10, 11], 10), None);
        assert_eq!(unit_grid(&[5], 10), Some(1));
        // The last row's taps must fit: one value short is refused.
        let r = std::panic::catch_unwind(|| {
            let mut d = vec![MaybeUninit::new(0.0); 2 * 4];
            run_rows(
                Isa::Portable,
                &mut d,
                4,
                &src[..4 + 10 + 5 - 1],
                10,
                &[0, 5],
                &[1.0, 1.0],
                0.0,
                Act::Identity,
            );
        });
        assert!(r.is_err());
    }

    #[test]
    fn every_isa_matches_the_sum_with_each_activation() {
        let src: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.07).collect();
        for taps in [1usize, 2, 9, 25, 30] {
            let offs: Vec<usize> = (0..taps).map(|t| (t * 5) % 41).collect();
            let wts: Vec<f32> = (0..taps).map(|t| ((t * 13 % 7) as f32 - 3.0) * 0.31).collect();
            for n in [1usize, 7, 8, 15, 16, 17, 33, 64, 100, 130] {
                let want: Vec<f32> = (0..n)
                    .map(|x| 0.25 + offs.iter().zip(&wts).map(|(&o, &w)| w * src[o + x]).sum::<f32>())
                    .collect();
                for act in [
                    Act::Identity,
                    Act::Relu,
                    Act::Clamp(-0.5, 0.75),
                    Act::HardSwish(1.0 / 6.0, 0.5),
                    Act::Silu,
                    hard_swish_chain(),
                    chain(&[Step::Mul(0.5), Step::Fun(crate::mil::vmath::Fun::Silu)]),
                ] {
                    for isa in Isa::available() {
                        let mut got = vec![f32::NAN; n];
                        run(isa, &mut got, &src, &offs, &wts, 0.25, act);
                        // The activation of the sum, up to the sum's rounding.
                        for (x, (g, w)) in got.iter().zip(&want).enumerate() {
                            let r = act.f(*w);
                            assert!(
                                (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                                "{isa:?} {act:?} t{taps} n{n} [{x}] {g} vs {r}"
                            );
                        }
                        // Exactly the activation of the unactivated run (the fused = unfused promise).
                        let mut raw = vec![0.0; n];
                        run(isa, &mut raw, &src, &offs, &wts, 0.25, Act::Identity);
                        let after: Vec<f32> = raw.iter().map(|&v| act.f(v)).collect();
                        assert_eq!(got, after, "{isa:?} {act:?} t{taps} n{n}");
                    }
                }
            }
        }
    }
}
