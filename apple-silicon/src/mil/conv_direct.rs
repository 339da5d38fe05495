//! Direct 2-D convolution of convs with few taps per output (AVX-512F): a
//! network's first conv on an RGB image (3 channels × 3 × 3 = 27 taps),
//! and any other whose input channels times kernel taps are at most
//! [`MAX_TAPS`], at column stride 1 or 2, any row stride, dilation and
//! padding, one group.
//!
//! Why: as a product, such a conv is `[C_out, taps] · [taps, oh·ow]`, too
//! shallow for gemm's packed kernel to earn back its packing, after an
//! im2col copy as large as the output times the taps. Here, for 16
//! outputs of one row, each tap's 16 input values are gathered once into a
//! vector (stride 1: one load; stride 2: two loads and a permute that
//! keeps the even lanes; lanes in the padding zero), and then every output
//! channel's 16 sums are one fused multiply-add per tap over those
//! vectors, 8 channels at a time.
//!
//! Sums: the bias, then the taps in the weight's `(c_in, i, j)` order, then
//! the activation in the register when it is a cheap one. The product path
//! orders its sums by gemm's blocking instead; the two agree to rounding.

use std::mem::MaybeUninit;

use super::conv_gemm::Window;
use super::fuse::{Act, Tail};
use super::gemm::Out;
use super::rows::{self, Isa};
use super::workers;

/// The most input channels × kernel taps this path takes: the gathered
/// vectors of one block of outputs (4 KiB) stay in L1 beside the weights.
pub(crate) const MAX_TAPS: usize = 64;

/// Whether a conv of `cin` input channels in `groups` groups and window
/// `win` runs here on `isa`.
pub(crate) fn fits(isa: Isa, cin: usize, groups: usize, win: &Window) -> bool {
    let taps = cin.checked_mul(win.kernel.0).and_then(|v| v.checked_mul(win.kernel.1));
    isa == Isa::Avx512
        && groups == 1
        && taps.is_some_and(|t| (1..=MAX_TAPS).contains(&t))
        && matches!(win.stride.1, 1 | 2)
        && win.stride.0 > 0
}

/// The conv of one image `x` (`[cin, h, w]`) with `weight` (`[cout, cin ·
/// kh · kw]`) and optional `bias` into `d` (`[cout, oh, ow]`, every element
/// written), then `tail` (indexed as `d`). Costs `cout · oh · ow · taps`
/// multiply-adds, rows of outputs as tasks on the pool, and a copy of the
/// weights regrouped by 8 channels into a buffer this thread keeps (about
/// the weight's size).
/// Panics (an internal invariant) when [`fits`] does not hold or a slice's
/// length disagrees with the shapes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    isa: Isa,
    x: &[f32],
    (cin, h, w): (usize, usize, usize),
    weight: &[f32],
    cout: usize,
    win: &Window,
    bias: Option<&[f32]>,
    tail: Tail,
    (oh, ow): (usize, usize),
    d: &mut [MaybeUninit<f32>],
) {
    let taps = cin * win.kernel.0 * win.kernel.1;
    assert!(
        fits(isa, cin, 1, win)
            && x.len() == cin * h * w
            && weight.len() == cout * taps
            && bias.is_none_or(|b| b.len() == cout)
            && d.len() == cout * oh * ow,
        "direct conv of the wrong shape"
    );
    let g = Geometry {
        cin,
        h,
        w,
        oh,
        ow,
        cout,
        win: *win,
    };
    let act = if rows::in_registers(tail.pre) {
        tail.pre
    } else {
        Act::Identity
    };
    // The weights as `[cout / 8][taps][8]` and the biases as `[cout / 8][8]`
    // (channels past `cout` repeat the last: computed, not stored), so that
    // the sums read each tap's 8 weights from one line.
    let groups = cout.div_ceil(x86::CHANNELS);
    let at = |cg: usize, c: usize| (cg * x86::CHANNELS + c).min(cout - 1);
    // Taken out of this thread's cell and put back after: an allocation
    // per call here moved the heap's holes under the next op's output,
    // which then page-faulted in every run.
    let mut wts = PACKED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    wts.clear();
    for k in 0..groups * taps {
        let (cg, t) = (k / taps, k % taps);
        wts.push(std::array::from_fn(|c| weight[at(cg, c) * taps + t]));
    }
    for cg in 0..groups {
        wts.push(std::array::from_fn(|c| bias.map_or(0.0, |b| b[at(cg, c)])));
    }
    let (wts_only, bs) = wts.split_at(groups * taps);
    let out = Out(d.as_mut_ptr());
    // About four tasks a thread, so that one slow thread does not hold the op.
    let tasks = oh.min(4 * rayon::current_num_threads()).max(1);
    let per = oh.div_ceil(tasks);
    workers::par_for(oh.div_ceil(per.max(1)), |t| {
        for oy in t * per..((t + 1) * per).min(oh) {
            // SAFETY: `Isa::Avx512` (`fits`, asserted) is only produced when
            // the CPU has AVX-512F; the slices hold what `g` says
            // (asserted); output row `oy` of every channel is this task's
            // alone, and `d` is borrowed mutably until every task returns.
            unsafe { x86::row(&g, x, (wts_only, bs), act, oy, out) };
        }
    });
    PACKED.with(|p| *p.borrow_mut() = wts);
    // SAFETY: the tasks wrote every output row of every channel.
    let d = unsafe { rows::assume_init(d) };
    if !rows::in_registers(tail.pre) {
        tail.pre.epilogue(d, 0.0);
    }
    tail.finish(d, 0);
}

thread_local! {
    /// Per-thread buffer of the packed weights and biases (grown, never
    /// shrunk: at most `⌈cout / 8⌉ · (MAX_TAPS + 1)` of 8 floats).
    static PACKED: std::cell::RefCell<Vec<[f32; x86::CHANNELS]>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a row of outputs needs to know of the conv.
struct Geometry {
    cin: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    cout: usize,
    win: Window,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::fuse::Act;
    use super::super::gemm::Out;
    use super::super::rows;
    use super::{Geometry, MAX_TAPS};

    /// Output channels summed at a time (their sums in registers).
    pub(super) const CHANNELS: usize = 8;

    /// Output row `oy` of every channel.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `x` holds what `g` says, `wts` and `bs`
    /// the weights and biases of `⌈cout / 8⌉` groups of 8 channels; row
    /// `oy` of every channel of the output at `out` is the caller's to write.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row(
        g: &Geometry,
        x: &[f32],
        (wts, bs): (&[[f32; CHANNELS]], &[[f32; CHANNELS]]),
        act: Act,
        oy: usize,
        out: Out,
    ) {
        let (kh, kw) = g.win.kernel;
        let (sh, sw) = g.win.stride;
        let (dh, dw) = g.win.dilation;
        let (pt, pl) = (g.win.pads[0].0 as isize, g.win.pads[1].0 as isize);
        let (h, w) = (g.h as isize, g.w as isize);
        let taps = g.cin * kh * kw;
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let xp = x.as_ptr();
        // Two blocks of 16 outputs at a time: each weight broadcast once
        // for both, so the sums are bound by the multiply-adds, not loads.
        let mut gathered = [[_mm512_setzero_ps(); 2]; MAX_TAPS];
        let mut x0 = 0;
        while x0 < g.ow {
            let n = (g.ow - x0).min(32);
            let live = |b: usize| -> __mmask16 {
                let k = n.saturating_sub(16 * b).min(16);
                if k == 16 {
                    !0
                } else {
                    (1u16 << k) - 1
                }
            };
            let blocks = n.div_ceil(16);
            let mut t = 0;
            for ci in 0..g.cin {
                for i in 0..kh {
                    let iy = (oy * sh + i * dh) as isize - pt;
                    for j in 0..kw {
                        for (b, v) in gathered[t].iter_mut().enumerate().take(blocks) {
                            // Output column `x0 + 16b + l` reads input column `s + sw·l`.
                            let s = ((x0 + 16 * b) * sw + j * dw) as isize - pl;
                            *v = if (0..h).contains(&iy) {
                                let p = xp.wrapping_offset((ci as isize * h + iy) * w + s);
                                // All 32 inside the row (most taps): no masks to work out.
                                let (lo, hi) = if s >= 0 && s + 32 <= w { (!0, !0) } else { inside(s, w) };
                                // SAFETY: the lanes loaded are columns 0..w
                                // of row `iy` of channel `ci`; the rest are
                                // masked off (not read).
                                unsafe {
                                    if sw == 1 {
                                        _mm512_maskz_loadu_ps(lo, p)
                                    } else {
                                        let a = _mm512_maskz_loadu_ps(lo, p);
                                        let b = _mm512_maskz_loadu_ps(hi, p.wrapping_add(16));
                                        _mm512_permutex2var_ps(a, evens, b)
                                    }
                                }
                            } else {
                                _mm512_setzero_ps()
                            };
                        }
                        t += 1;
                    }
                }
            }
            for (cg, b8) in bs.iter().enumerate() {
                let co = cg * CHANNELS;
                let mut a0: [__m512; CHANNELS] = std::array::from_fn(|c| _mm512_set1_ps(b8[c]));
                let mut a1 = a0;
                for (&[v0, v1], w8) in gathered[..taps].iter().zip(&wts[cg * taps..(cg + 1) * taps]) {
                    for ((p, q), &wt) in a0.iter_mut().zip(a1.iter_mut()).zip(w8) {
                        let wv = _mm512_set1_ps(wt);
                        *p = _mm512_fmadd_ps(wv, v0, *p);
                        *q = _mm512_fmadd_ps(wv, v1, *q);
                    }
                }
                let keep = (g.cout - co).min(CHANNELS);
                for c in 0..keep {
                    let at = ((co + c) * g.oh + oy) * g.ow + x0;
                    // SAFETY: the live columns of both blocks of row oy of
                    // channel co + c, the caller's to write (block 1's
                    // mask is empty when it has no columns).
                    unsafe {
                        let dp = out.at(at).cast::<f32>();
                        _mm512_mask_storeu_ps(dp, live(0), rows::act16(a0[c], act));
                        _mm512_mask_storeu_ps(dp.wrapping_add(16), live(1), rows::act16(a1[c], act));
                    }
                }
            }
            x0 += 32;
        }
    }

    /// Of the 32 values from column `s` of a row `w` wide, the lanes inside
    /// the row (`0 ≤ s + t < w`), as masks of the first and second 16.
    #[inline]
    pub(super) fn inside(s: isize, w: isize) -> (__mmask16, __mmask16) {
        let first = (-s).clamp(0, 32) as u32;
        let end = (w - s).clamp(0, 32) as u32;
        let below = |n: u32| if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
        let m = below(end) & !below(first);
        (m as u16, (m >> 16) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_exactly_the_columns_inside_the_row() {
        for w in [1isize, 5, 16, 17, 31, 32, 33, 70] {
            for s in -40isize..80 {
                let (lo, hi) = x86::inside(s, w);
                let m = lo as u32 | (hi as u32) << 16;
                for t in 0..32 {
                    assert_eq!(m >> t & 1 == 1, (0..w).contains(&(s + t)), "w {w} s {s} lane {t}");
                }
            }
        }
    }
}
