//! Direct 2-D convolution (AVX-512F), 8 output channels × 48 outputs in
//! registers, for convs with at least 8 output channels a group and 64
//! input channels × taps: any kernel size, dilation and padding, strides
//! 1 or 2, any group count (one group at a time). [`fits`] says which.
//!
//! Why: as a product (`conv_gemm`), such a conv copies its input once per
//! filter tap (im2col) or sums one thin product per tap, and gemm packs
//! both operands on each call; on YOLOv8n's 3 × 3 convs that ran at 35–55
//! G multiply-adds a second, against ONNX Runtime's ~80 (its own direct
//! kernels, channels in blocks of 16).
//!
//! How: a band of output rows' input rows is copied once into a
//! zero-bordered slab, split by row and column phase (padded row `a` to
//! phase `a % sh`, row `a / sh`; column `b` likewise), so that every tap
//! reads the band's outputs as one run at a fixed offset, rows `wq` apart
//! (the `wq − ow` between them computed and dropped; `conv_gemm`'s tap
//! products lay out a stride-1 band the same way). Then per 8 output
//! channels and 48 positions of the run, each (input channel, tap) is 3
//! vector loads and 24 fused multiply-adds, the 8 weights broadcast
//! straight from the weight tensor (no packing); the sums go to a
//! per-task buffer, then row by row to the output with the epilogue.
//!
//! Sums: each output is `Σ w · x` over (input channel, tap) in the
//! weight's `(c_in, i, j)` order from 0, then the bias, activation,
//! residual and final activation as the product path's epilogue applies
//! them (`gemm::epilogue_one`). The product path orders its sums by gemm's
//! blocking; the two agree to rounding. The sums depend neither on the
//! bands nor on the thread count, and neither does the choice of path.

use std::mem::MaybeUninit;

use super::conv_gemm::Window;
use super::fuse::Tail;
use super::gemm::{self, Bias, Out};
use super::limits::check_alloc;
use super::rows::{self, Isa};

type CResult<T> = candle_core::Result<T>;

/// Output channels summed together (one broadcast weight each).
const CHANNELS: usize = 8;
/// Lanes of a vector.
const LANES: usize = 16;
/// Vectors of positions summed together.
const VECS: usize = 3;

/// Floats of slab per task: 512 KB, a quarter of these machines' L2 (as
/// `conv_gemm`'s budgets). Small in tests (`conv_gemm::sized`), so that
/// they run several bands.
const SLAB_BUDGET: usize = 1 << 17;

/// Input channels × taps below which a conv stays on the product path.
/// First convs on RGB (27) ran here 0.74–1.24× their product time in
/// YOLOv8n, and raised the peak RSS of every network that has one by 3–10%
/// (heap layout: the peak heap in use was the same), so they stay there.
const MIN_DEPTH: usize = 64;

/// The most input channels × taps a strided conv runs here with: deeper,
/// im2col and gemm's packed product were faster (`conv_gemm::tests::timing`:
/// 1.1–1.7× slower here for 64 → 128 and 128 → 256 channels, 3 × 3, stride
/// 2; 0.75–0.96× at 32 → 64 and shallower).
const MAX_STRIDED_DEPTH: usize = 288;

/// The least share of the computed lanes that are outputs (the rest pad a
/// row to the slab's width or the run to whole blocks): below, the product
/// path was faster (64 → 64 channels on 10 × 10: 69%, 1.2–1.4× slower here).
const MIN_USEFUL: f64 = 0.8;

/// Whether one group of a conv (`cin_g` → `cout_g` channels, window `win`,
/// output `oh × ow`) runs here on `isa`: AVX-512F, at least 8 output
/// channels, more than one tap and [`MIN_DEPTH`] input channels × taps, strides of 1
/// or 2, at most [`MAX_STRIDED_DEPTH`] when strided, and most lanes
/// outputs ([`MIN_USEFUL`], over the whole output: the choice does not
/// depend on the thread count, and so neither do the sums).
pub(crate) fn fits(isa: Isa, cin_g: usize, cout_g: usize, win: &Window, (oh, ow): (usize, usize)) -> bool {
    let taps = win.kernel.0.saturating_mul(win.kernel.1);
    let depth = cin_g.saturating_mul(taps);
    let strides_ok = (1..=2).contains(&win.stride.0) && (1..=2).contains(&win.stride.1);
    if isa != Isa::Avx512 || cout_g < CHANNELS || taps < 2 || depth < MIN_DEPTH || !strides_ok || oh == 0 || ow == 0 {
        return false;
    }
    if win.stride != (1, 1) && depth > MAX_STRIDED_DEPTH {
        return false;
    }
    let wq = Slab::new(win, ow, oh).wq;
    let run = (oh - 1).saturating_mul(wq).saturating_add(ow);
    let computed = run.div_ceil(LANES * VECS).saturating_mul(LANES * VECS);
    oh.saturating_mul(ow) as f64 >= MIN_USEFUL * computed as f64
}

/// The slab's geometry for one conv and band height: per input channel,
/// `[row phase][column phase][idx][wq]`. Padded input row `r·sh + a` (from
/// the band's first) is row `r + a / sh` of row phase `a % sh`, padded
/// column `x·sw + b` column `x + b / sw` of column phase `b % sw`. Output
/// `(r, x)`'s tap `(i, j)` then reads position `r · wq + x` past the tap's
/// offset ([`Slab::tap`]), so a band's outputs are one run, `wq` apart per
/// row (the `wq − ow` between computed and dropped).
#[derive(Clone, Copy)]
struct Slab {
    sh: usize,
    sw: usize,
    /// Rows of a phase: the band's rows plus the tallest tap's reach.
    idx: usize,
    /// Values of a phase row: the outputs plus the widest tap's reach.
    wq: usize,
}

impl Slab {
    fn new(win: &Window, ow: usize, rows: usize) -> Slab {
        let (sh, sw) = win.stride;
        Slab {
            sh,
            sw,
            idx: rows + (win.kernel.0 - 1) * win.dilation.0 / sh,
            wq: ow + (win.kernel.1 - 1) * win.dilation.1 / sw,
        }
    }

    /// Floats of one input channel: the phases plus a block's slack, read
    /// (as zeros) by the last block of the run.
    fn plane(&self) -> usize {
        self.sh * self.sw * self.idx * self.wq + LANES * VECS
    }

    /// Where output (0, 0) reads tap `(i, j)` in a channel's floats.
    fn tap(&self, win: &Window, i: usize, j: usize) -> usize {
        let (a, b) = (i * win.dilation.0, j * win.dilation.1);
        (((a % self.sh) * self.sw + b % self.sw) * self.idx + a / self.sh) * self.wq + b / self.sw
    }
}

/// Output rows per task: the slab within [`SLAB_BUDGET`] (at least one
/// row), at most a thread's share of `oh`, and as many tasks as a multiple
/// of the thread count (two threads taking three bands: the one with two
/// sets the time). Bands a third of a thread's share were 6% slower on
/// YOLOv8n at 2 threads than one band a thread: more halo rows copied, and
/// its head convs then ran slower in the network than alone.
fn band_rows(cin: usize, win: &Window, (oh, ow): (usize, usize)) -> usize {
    let one = Slab::new(win, ow, 1);
    let per_row = cin * one.sh * one.sw * one.wq;
    let fixed = cin * one.plane();
    let budget = super::conv_gemm::sized(2_000, SLAB_BUDGET);
    let threads = rayon::current_num_threads().max(1);
    let rows = (1 + budget.saturating_sub(fixed) / per_row.max(1)).clamp(1, oh.div_ceil(threads).max(1));
    let tasks = oh.div_ceil(rows).next_multiple_of(threads).min(oh.max(1));
    oh.div_ceil(tasks.max(1)).max(1)
}

/// One image and group: `d` (`[cout_g, oh·ow]`, every element written) from
/// `xg` (`[cin_g, h, w]`) and the group's weights `wg` (`[cout_g, cin_g,
/// kh, kw]`), then the bias and `tail` (indexed as `d`). Costs `cout_g ·
/// oh · ow · cin_g · kh · kw` multiply-adds on the pool, a slab of about
/// [`SLAB_BUDGET`] floats and 8 channels' sums per worker (kept in
/// `scratch` by the caller). [`fits`] must hold (panics otherwise: an
/// internal invariant).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    isa: Isa,
    d: &mut [MaybeUninit<f32>],
    xg: &[f32],
    (cin, h, w): (usize, usize, usize),
    win: &Window,
    (oh, ow): (usize, usize),
    wg: &[f32],
    bias: Bias,
    tail: Tail,
    scratch: &mut Vec<MaybeUninit<f32>>,
) -> CResult<()> {
    let ohw = oh * ow;
    let cout = d.len() / ohw.max(1);
    let (kh, kw) = win.kernel;
    assert!(
        fits(isa, cin, cout, win, (oh, ow)) && xg.len() == cin * h * w && wg.len() == cout * cin * kh * kw,
        "direct conv of the wrong shape"
    );
    let task_rows = band_rows(cin, win, (oh, ow));
    let slab = Slab::new(win, ow, task_rows);
    let run = (task_rows - 1) * slab.wq + ow;
    let run_pad = run.div_ceil(LANES * VECS) * LANES * VECS;
    check_alloc("conv direct slab", &[cin, slab.plane()], 4)?;
    check_alloc("conv direct sums", &[CHANNELS, run_pad], 4)?;
    let (planes, per) = (cin * slab.plane(), cin * slab.plane() + CHANNELS * run_pad);
    let out = Out(d.as_mut_ptr());
    let taps: Vec<usize> = (0..kh * kw).map(|t| slab.tap(win, t / kw, t % kw)).collect();
    super::conv_gemm::bands_in_turn(oh, task_rows, per, scratch, |part, oy0, rows| {
        let (xs, sums) = part.split_at_mut(planes);
        let xs = fill(isa, xg, (h, w), win, oy0, &slab, rows, xs);
        let n = (rows - 1) * slab.wq + ow;
        let sums = sums.as_mut_ptr().cast::<f32>();
        for cb in (0..cout).step_by(CHANNELS) {
            let mut at = 0;
            while at < n {
                // SAFETY: AVX-512F (`fits`); every tap's reads for the 48
                // positions from `at` stay inside the channel's plane (its
                // slack covers the last block); the sums hold 8 rows of
                // `run_pad ≥ n` rounded up to 48.
                unsafe {
                    x86::block(
                        xs,
                        slab.plane(),
                        at,
                        &taps,
                        wg,
                        (cin * kh * kw, cb, cout),
                        (sums, run_pad),
                    )
                };
                at += LANES * VECS;
            }
            for co in cb..(cb + CHANNELS).min(cout) {
                for r in 0..rows {
                    let at = co * ohw + (oy0 + r) * ow;
                    // SAFETY: output row (co, oy0 + r) is this task's alone
                    // (`d` is borrowed mutably until every task returns);
                    // `block` wrote sums row co − cb up to `n`.
                    let row = unsafe {
                        let dp = out.at(at).cast::<f32>();
                        std::ptr::copy_nonoverlapping(sums.add((co - cb) * run_pad + r * slab.wq), dp, ow);
                        std::slice::from_raw_parts_mut(dp, ow)
                    };
                    gemm::epilogue_one(isa, row, co, ohw, bias, tail.from((oy0 + r) * ow));
                }
            }
        }
        Ok(())
    })
}

/// Fills `buf` (`cin` planes of [`Slab::plane`] floats) with the padded
/// input rows of output rows `oy0..oy0 + rows` of every channel, split by
/// row and column phase, zeros elsewhere; returns it, every element written.
#[allow(clippy::too_many_arguments)]
fn fill<'a>(
    isa: Isa,
    x: &[f32],
    (h, w): (usize, usize),
    win: &Window,
    oy0: usize,
    slab: &Slab,
    rows: usize,
    buf: &'a mut [MaybeUninit<f32>],
) -> &'a [f32] {
    let (pt, pl) = (win.pads[0].0, win.pads[1].0);
    for v in buf.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was written just above.
    let buf = unsafe { &mut *(buf as *mut [MaybeUninit<f32>] as *mut [f32]) };
    let phase = slab.idx * slab.wq;
    // Input columns that land inside a phase row (no output reads the rest).
    let n = w.min((slab.sw * slab.wq).saturating_sub(pl));
    let rows_in = ((rows - 1) * win.stride.0 + (win.kernel.0 - 1) * win.dilation.0 + 1).min(slab.sh * slab.idx);
    for (c, chan) in buf.chunks_exact_mut(slab.plane()).enumerate() {
        for a in 0..rows_in {
            let Some(iy) = (oy0 * slab.sh + a).checked_sub(pt).filter(|&iy| iy < h) else {
                continue;
            };
            let src = &x[(c * h + iy) * w..][..w];
            let start = ((a % slab.sh) * slab.sw * slab.idx + a / slab.sh) * slab.wq;
            if slab.sw == 1 {
                chan[start + pl..start + pl + n].copy_from_slice(&src[..n]);
            } else {
                rows::split_rows(
                    isa,
                    src,
                    (w, n, pl),
                    &mut chan[start..start + phase + slab.wq],
                    (phase + slab.wq, phase),
                );
            }
        }
    }
    buf
}

mod x86 {
    use std::arch::x86_64::*;

    use super::{CHANNELS, LANES, VECS};

    /// Sums for channels `cb..cb + 8` (those under `cout`) of the 48
    /// positions from `at` of a band's run, into `sums` (rows `rs` apart,
    /// from position 0): input channel `c`'s tap `t` read at `xs[c·plane +
    /// taps[t] + at ..]`, its weights at `wg[co·depth + c·taps + t]`.
    ///
    /// # Safety
    /// AVX-512F; every read inside `xs` and `wg`; the sums writable.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(
        xs: &[f32],
        plane: usize,
        at: usize,
        taps: &[usize],
        wg: &[f32],
        (depth, cb, cout): (usize, usize, usize),
        (sums, rs): (*mut f32, usize),
    ) {
        let cin = depth / taps.len();
        let mut acc = [[_mm512_setzero_ps(); VECS]; CHANNELS];
        let live = (cout - cb).min(CHANNELS);
        // Channels past `cout` read the last one's weights (computed, not stored).
        let wrow: [*const f32; CHANNELS] =
            std::array::from_fn(|k| wg.as_ptr().wrapping_add((cb + k.min(live - 1)) * depth));
        let xp = xs.as_ptr().wrapping_add(at);
        for c in 0..cin {
            let xc = xp.wrapping_add(c * plane);
            for (t, &off) in taps.iter().enumerate() {
                let k = c * taps.len() + t;
                let p = xc.wrapping_add(off);
                // SAFETY: the caller keeps these reads inside `xs`.
                let x: [__m512; VECS] = std::array::from_fn(|v| unsafe { _mm512_loadu_ps(p.add(v * LANES)) });
                for ch in 0..CHANNELS {
                    // SAFETY: inside `wg` (`k < depth`).
                    let wv = _mm512_set1_ps(unsafe { *wrow[ch].add(k) });
                    for v in 0..VECS {
                        acc[ch][v] = _mm512_fmadd_ps(wv, x[v], acc[ch][v]);
                    }
                }
            }
        }
        for (ch, a) in acc.iter().enumerate().take(live) {
            for (v, &s) in a.iter().enumerate() {
                // SAFETY: sums row ch holds `rs ≥ at + 48` values.
                unsafe { _mm512_storeu_ps(sums.add(ch * rs + at + v * LANES), s) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::fuse::Act;

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
    }

    /// The direct sums of `x` with `w`, on a pool of `threads` threads.
    fn run(
        threads: usize,
        x: &[f32],
        chw: (usize, usize, usize),
        win: &Window,
        w: &[f32],
        cout: usize,
        res: &[f32],
    ) -> Vec<f32> {
        let (oh, ow) = win.output(chw.1, chw.2).unwrap();
        let b = ramp(cout, 1.3);
        let tail = Tail {
            pre: Act::Silu,
            residual: Some(res),
            post: Act::Clamp(-1.0, 1.5),
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            assert!(band_rows(chw.0, win, (oh, ow)) < oh, "{win:?}: one band");
            let mut d = vec![MaybeUninit::new(f32::NAN); cout * oh * ow];
            let mut scratch = Vec::new();
            conv(
                Isa::Avx512,
                &mut d,
                x,
                chw,
                win,
                (oh, ow),
                w,
                Bias::Rows(&b),
                tail,
                &mut scratch,
            )
            .unwrap();
            // SAFETY: `conv` wrote every element.
            d.into_iter().map(|v| unsafe { v.assume_init() }).collect()
        })
    }

    #[test]
    fn sums_do_not_depend_on_bands_or_threads() {
        if Isa::detect() != Isa::Avx512 {
            eprintln!("no AVX-512F here: the direct path does not run");
            return;
        }
        #[rustfmt::skip]
        let cases = [
            // (cin, h, w, cout, kernel, stride, dilation, pads)
            (8, 30, 40, 12, (3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)]),
            (8, 41, 77, 17, (3, 3), (2, 2), (1, 1), [(1, 0), (1, 1)]),
            (11, 25, 50, 8, (3, 2), (2, 1), (2, 3), [(2, 1), (0, 3)]),
        ];
        for (cin, h, w, cout, kernel, stride, dilation, pads) in cases {
            let win = Window {
                kernel,
                stride,
                dilation,
                pads,
            };
            assert!(fits(Isa::Avx512, cin, cout, &win, win.output(h, w).unwrap()), "{win:?}");
            let x = ramp(cin * h * w, 0.1);
            let wt = ramp(cout * cin * kernel.0 * kernel.1, 0.6);
            let (oh, ow) = win.output(h, w).unwrap();
            let res = ramp(cout * oh * ow, 2.2);
            let one = run(1, &x, (cin, h, w), &win, &wt, cout, &res);
            for threads in [2, 3] {
                let got = run(threads, &x, (cin, h, w), &win, &wt, cout, &res);
                assert!(got == one, "{win:?} on {threads} threads: the sums changed");
            }
        }
    }
}
