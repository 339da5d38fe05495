//! A pointwise (1 × 1) conv and the depthwise conv that reads it, run
//! together a band of output rows at a time.
//!
//! In inverted-residual blocks (MobileNetV2 and the networks built from
//! its block) a 1 × 1 conv expands a few channels into many and a
//! depthwise conv reads the result once. Written whole, that expanded
//! activation is megabytes on the large feature maps (96 × 112 × 112
//! floats: 4.8 MB), more than L2 keeps until the depthwise conv reads it
//! back, and it is the program's largest buffer. Here each pool thread
//! takes a run of output rows and, band by band, computes only the
//! expanded rows the band reads, into a buffer of about
//! [`BAND_EXPANDED`] bytes that stays in L2, then runs the depthwise sums
//! on them. Rows that the next band reads too are kept for it, so a thread
//! computes no expanded value twice (only the rows on either side of a cut
//! between two threads are computed by both).
//!
//! The depthwise conv alone copies each input plane into a zero-bordered
//! row layout split by stride phase before its sums read it (`Layout`).
//! Here that copy is made of the few input channels instead: the
//! expansion treats every position alike, so given its input in that
//! layout it writes its output in it too, and once the border positions
//! are zeroed the sums read the expanded rows where they were written.
//!
//! The result is the same bit for bit as the two convs run one after the
//! other: the expansion's sums are `gemm`'s packed kernel's, which do not
//! depend on how the columns are cut (the path is refused where a band's
//! product could fall off that kernel), its bias and activation are the
//! same epilogue, and the depthwise sums are the ones `depthwise` runs on
//! a band of rows. Where it does not apply (the depthwise conv would run
//! on the lanes or plane-wide, the expanded activation is small enough to
//! stay in L2 anyway, or the input is not f32) [`expand_depthwise`]
//! returns `None` and the caller runs the two convs in turn.

use candle_core::{DType, Device, Tensor};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{geometry, on_lanes, run, with_f32_slice, Isa, Layout};
use crate::mil::conv_gemm::bands_in_turn;
use crate::mil::fuse::{Act, Tail};
use crate::mil::gemm::{self, Bias, MatRef, Out};
use crate::mil::limits::{self, check_alloc};

type CResult<T> = candle_core::Result<T>;

/// Bytes of expanded rows a band holds: half of these machines' 2 MB L2,
/// so that they are still there when the depthwise sums read them. Smaller
/// bands cost more than they save: a band of few output rows runs the
/// depthwise sums a row at a time, not four (MobileNetV2, paired against
/// the two convs: 1.00 with 256 KiB bands, 0.95–0.96 with 512 KiB and
/// 1 MiB at one thread, 0.97–0.98 at two).
const BAND_EXPANDED: usize = 1 << 20;

/// An expanded activation under this many bytes (these machines' L2) is
/// written whole, the two convs run in turn: L2 keeps most of it between
/// the two, and reading it from there, split by the depthwise conv into
/// L1-sized bands, was as fast or faster (MobileNetV2's 144 × 56 × 56
/// layers even, PP-LCNet's 32 × 112 × 112 one 1.15× slower joined; the
/// 96 × 112 × 112 one 0.7–0.9× joined; `candle_bench --per-op`).
const EXPANDED_MIN: usize = 2 << 20;

/// The 1 × 1 conv in front: `[channels, cin]` weights, an optional bias
/// per channel, and the activation fused after it.
pub(crate) struct Expansion<'a> {
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub act: Act,
}

/// The depthwise conv, as [`super::depthwise_conv2d`] takes it:
/// `[channels, 1, kh, kw]` weights, an optional bias, `[begin, end]` pads
/// for height and width, equal strides and dilations.
pub(crate) struct Depthwise<'a> {
    pub weight: &'a [f32],
    pub kernel: (usize, usize),
    pub bias: Option<&'a [f32]>,
    pub pads: &'a [(usize, usize)],
    pub stride: usize,
    pub dilation: usize,
}

/// `depthwise(expansion(x))` then `tail`, for `x` `[n, cin, h, w]`, in
/// bands (see the module doc), or `None` where that does not apply. Costs
/// the two convs' multiply-adds (plus the expanded rows on either side of
/// each cut between threads) and, per pool thread, about
/// [`BAND_EXPANDED`] bytes of expanded rows instead of the whole expanded
/// activation.
pub(crate) fn expand_depthwise(x: &Tensor, e: &Expansion, d: &Depthwise, tail: Tail) -> CResult<Option<Tensor>> {
    expand_depthwise_on((BAND_EXPANDED, EXPANDED_MIN), x, e, d, tail)
}

/// Whether [`expand_depthwise`] runs `cin` channels of `h × w` expanded
/// to `ch` by a depthwise conv of this `kernel`, `pads`, `stride` and
/// `dilation` in bands rather than returning `None` (the plan joins only
/// such pairs: elsewhere the joined step would only hold its input longer).
pub(crate) fn applies(
    (cin, ch): (usize, usize),
    (h, w): (usize, usize),
    kernel: (usize, usize),
    pads: &[(usize, usize)],
    (stride, dilation): (usize, usize),
) -> bool {
    geometry((h, w), kernel, pads, stride, dilation)
        .is_ok_and(|(lay, (oh, ow))| bands(Isa::detect(), &lay, (cin, ch), (h, w), oh * ow, EXPANDED_MIN))
}

/// Whether the banded path applies (see the module doc): the depthwise
/// conv would run on planes in bands, the expanded activation has at
/// least `min_bytes`, and every band's product is on `gemm`'s packed kernel.
fn bands(
    isa: Isa,
    lay: &Layout,
    (cin, ch): (usize, usize),
    (h, w): (usize, usize),
    plane: usize,
    min_bytes: usize,
) -> bool {
    let expanded = ch
        .checked_mul(h)
        .and_then(|v| v.checked_mul(w))
        .and_then(|v| v.checked_mul(4));
    !on_lanes(isa, lay, plane)
        && !lay.plane_wide()
        && expanded.is_some_and(|b| b >= min_bytes)
        && gemm::packed_kernel(ch, w, cin)
}

/// [`expand_depthwise`] with bands of about `band_bytes` expanded rows,
/// for expanded activations of at least `min_bytes` (tests force many
/// small bands).
fn expand_depthwise_on(
    (band_bytes, min_bytes): (usize, usize),
    x: &Tensor,
    e: &Expansion,
    d: &Depthwise,
    tail: Tail,
) -> CResult<Option<Tensor>> {
    if x.dtype() != DType::F32 || x.rank() != 4 {
        return Ok(None);
    }
    let (nb, cin, h, w) = x.dims4()?;
    let (kh, kw) = d.kernel;
    let ch = d.weight.len() / (kh * kw).max(1);
    if e.weight.len() != ch * cin
        || d.weight.len() != ch * kh * kw
        || e.bias.is_some_and(|b| b.len() != ch)
        || d.bias.is_some_and(|b| b.len() != ch)
    {
        candle_core::bail!(
            "expansion weight of {} values for [{ch}, {cin}] and a {kh}x{kw} depthwise weight of {}",
            e.weight.len(),
            d.weight.len()
        )
    }
    let (lay, (oh, ow)) = geometry((h, w), d.kernel, d.pads, d.stride, d.dilation)?;
    let isa = Isa::detect();
    let plane = oh * ow;
    if !bands(isa, &lay, (cin, ch), (h, w), plane, min_bytes) {
        return Ok(None);
    }
    let (s, eff_h, row) = (d.stride, (kh - 1) * d.dilation + 1, lay.row);
    // Output rows a band: its padded rows `(t − 1)·s + eff_h` about `band_bytes`.
    let t = ((band_bytes / (ch * row * 4)).saturating_sub(eff_h) / s + 1).clamp(1, oh);
    let cap = (t - 1) * s + eff_h;
    let per = (ch + cin) * cap * row;
    check_alloc("depthwise output", &[nb, ch, oh, ow], 4)?;
    check_alloc("expanded band", &[rayon::current_num_threads(), per], 4)?;
    if tail.residual.is_some_and(|r| r.len() != nb * ch * plane) {
        candle_core::bail!(
            "depthwise residual of {} values for an output of [{nb}, {ch}, {oh}, {ow}]",
            tail.residual.map_or(0, <[f32]>::len)
        )
    }
    // Where a padded row holds padding (read by the sums, so zeroed in
    // the expanded rows): padded column `p` is at `(p mod s)·phase + p / s`.
    let pad_cols = (0..lay.pw)
        .filter(|&p| p < lay.pad_left || p >= lay.pad_left + w)
        .map(|p| (p % s) * lay.phase + p / s)
        .collect();
    let n = nb * ch * plane;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let dst = Out(out.spare_capacity_mut().as_mut_ptr());
    let cancel = limits::cancel_flag();
    let stopped = AtomicBool::new(false);
    let mut scratch = Vec::new();
    let band = Band {
        lay: &lay,
        h,
        ow,
        plane,
        ch,
        cin,
        t,
        cap,
        eff_h,
        pad_cols,
        isa,
        lhs: MatRef::row_major(e.weight, cin),
        bias: e.bias.map_or(Bias::None, Bias::Rows),
        act: e.act,
    };
    with_f32_slice(x, |xs| {
        for img in 0..nb {
            let xb = &xs[img * cin * h * w..(img + 1) * cin * h * w];
            let threads = rayon::current_num_threads();
            // One run of output rows a thread: inside a run, bands share rows.
            bands_in_turn(oh, oh.div_ceil(threads), per, &mut scratch, |part, y0, rows| {
                if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                    stopped.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                let (ebuf, xpad) = part.split_at_mut(ch * cap * row);
                // Zeroed once: the fills leave columns outside the image as they are.
                let xpad = run::init(xpad, 0.0);
                // SAFETY: this run writes rows y0..y0 + rows of image img's
                // planes, which no other run writes; `out` outlives the runs.
                let at = unsafe { dst.at(img * ch * plane) };
                unsafe { band.run(xb, d, tail.from(img * ch * plane), (y0, rows), ebuf, xpad, at) }
            })?;
        }
        Ok::<(), candle_core::Error>(())
    })??;
    if stopped.load(Ordering::Relaxed) {
        limits::note_cancelled();
        candle_core::bail!("cancelled")
    }
    // SAFETY: not stopped, so every run wrote its rows of every plane of
    // every image: all `n` outputs.
    unsafe { out.set_len(n) };
    Ok(Some(Tensor::from_vec(out, (nb, ch, oh, ow), &Device::Cpu)?))
}

/// One fused conv, as each run of rows takes it.
struct Band<'a> {
    lay: &'a Layout,
    h: usize,
    ow: usize,
    plane: usize,
    ch: usize,
    cin: usize,
    /// Output rows a band, and padded rows the buffers hold.
    t: usize,
    cap: usize,
    eff_h: usize,
    /// Where a padded row holds padding.
    pad_cols: Vec<usize>,
    isa: Isa,
    /// The expansion: its weights, bias and activation.
    lhs: MatRef<'a>,
    bias: Bias<'a>,
    act: Act,
}

impl Band<'_> {
    /// Output rows `y0 .. y0 + rows` of every plane of one image (`xb`,
    /// `[cin, h, w]`), band by band, into the image's output at `out`
    /// (`tail` indexed from the image's first output).
    ///
    /// The input rows a band needs are copied into `xpad` in the
    /// depthwise conv's padded, phase-split layout (`Layout`), so that the
    /// expansion, which treats every position alike, writes its rows in
    /// that layout into `ebuf` (`cap` padded rows a channel), where the
    /// depthwise sums read them once the padding is zeroed: no expanded
    /// value is copied.
    ///
    /// # Safety
    /// `out` must be the image's `ch · oh · ow` outputs, these rows of
    /// which no one else writes meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        &self,
        xb: &[f32],
        d: &Depthwise,
        tail: Tail,
        (y0, rows): (usize, usize),
        ebuf: &mut [MaybeUninit<f32>],
        xpad: &mut [f32],
        out: *mut MaybeUninit<f32>,
    ) -> CResult<()> {
        let (lay, h, ch, cap) = (self.lay, self.h, self.ch, self.cap);
        let (s, pt, row) = (lay.stride, lay.pad_top, lay.row);
        let (kh, kw) = d.kernel;
        let at = |c: usize, r: usize| (c * cap + r) * row;
        // Padded rows held: `have.0 .. have.1`, at the front of each channel's `cap` rows.
        let mut have = (0usize, 0usize);
        for oy0 in (y0..y0 + rows).step_by(self.t) {
            let n = self.t.min(y0 + rows - oy0);
            // The padded rows this band reads.
            let (a, b) = (oy0 * s, (oy0 + n - 1) * s + self.eff_h);
            let kept = have.1.saturating_sub(a.max(have.0));
            if kept > 0 && a > have.0 {
                for c in 0..ch {
                    ebuf.copy_within(at(c, a - have.0)..at(c, a - have.0 + kept), at(c, 0));
                }
            }
            let new0 = a + kept;
            // Of the new rows, those in the image (padded row `pr` is input row `pr − pt`).
            let i0 = new0.max(pt).min(b);
            let i1 = b.min(pt + h).max(i0);
            for c in 0..ch {
                run::init(&mut ebuf[at(c, new0 - a)..at(c, i0 - a)], 0.0);
                run::init(&mut ebuf[at(c, i1 - a)..at(c, b - a)], 0.0);
            }
            if i1 > i0 {
                let xrows = (i1 - i0) * row;
                for (ci, xc) in xb.chunks_exact(h * lay.w).enumerate() {
                    lay.fill_rows_of(
                        self.isa,
                        (xc, 0),
                        h,
                        i0,
                        &mut xpad[ci * cap * row..ci * cap * row + xrows],
                    );
                }
                // SAFETY: rows i0 − a .. i1 − a of each channel's cap rows, in `ebuf`.
                unsafe {
                    gemm::matmul_into_ptr(
                        1,
                        Out(ebuf.as_mut_ptr().add(at(0, i0 - a))),
                        ebuf.len() - at(0, i0 - a),
                        cap * row,
                        (ch, xrows, self.cin),
                        self.lhs,
                        MatRef::row_major(xpad, cap * row),
                        self.bias,
                        Tail::act(self.act),
                    )?
                };
                for c in 0..ch {
                    for r in i0 - a..i1 - a {
                        for &p in &self.pad_cols {
                            ebuf[at(c, r) + p].write(0.0);
                        }
                    }
                }
            }
            have = (a, b);
            for c in 0..ch {
                // SAFETY: rows 0..b − a of channel c were written above or kept.
                let src = unsafe { run::assume_init(&mut ebuf[at(c, 0)..at(c, b - a)]) };
                let k = &d.weight[c * kh * kw..(c + 1) * kh * kw];
                let bc = d.bias.map_or(0.0, |bs| bs[c]);
                let first = c * self.plane + oy0 * self.ow;
                // SAFETY: rows oy0..oy0 + n of plane c: this run's (the caller's contract).
                let dst = unsafe { std::slice::from_raw_parts_mut(out.add(first), n * self.ow) };
                let dst = run::run_rows(self.isa, dst, self.ow, src, s * row, &lay.offs, k, bc, tail.pre);
                tail.finish(dst, first);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::conv_gemm::{self, Window};
    use crate::mil::depthwise::depthwise_conv2d;

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * seed).sin() * 1.3).collect()
    }

    /// The two convs one after the other, as the unfused plan runs them.
    fn unfused(x: &Tensor, e: &Expansion, d: &Depthwise, tail: Tail) -> Tensor {
        let (nb, cin, h, w) = x.dims4().unwrap();
        let ch = e.weight.len() / cin;
        let win = Window {
            kernel: (1, 1),
            stride: (1, 1),
            dilation: (1, 1),
            pads: [(0, 0), (0, 0)],
        };
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (y, _) = conv_gemm::conv2d(&xs, (nb, cin, h, w), e.weight, ch, 1, &win, e.bias, Tail::act(e.act)).unwrap();
        let y = Tensor::from_vec(y, (nb, ch, h, w), &Device::Cpu).unwrap();
        depthwise_conv2d(&y, d.weight, d.kernel, d.bias, d.pads, d.stride, d.dilation, tail).unwrap()
    }

    #[test]
    fn bands_match_the_two_convs_bit_for_bit() {
        // (n, cin, ch, h, w, k, stride, dil, pads (top, bottom, left, right))
        let cases = [
            (
                1usize,
                16usize,
                24usize,
                37usize,
                41usize,
                3usize,
                1usize,
                1usize,
                (1usize, 1usize, 1usize, 1usize),
            ),
            (1, 8, 20, 40, 33, 3, 2, 1, (0, 1, 0, 1)),
            (2, 5, 18, 29, 35, 5, 2, 1, (2, 2, 2, 2)),
            (1, 12, 17, 31, 52, 3, 3, 1, (1, 1, 1, 1)),
            (1, 6, 16, 27, 36, 3, 1, 2, (2, 2, 2, 2)),
            (1, 7, 32, 24, 48, 5, 1, 1, (3, 1, 2, 2)),
            (1, 9, 24, 20, 64, 1, 2, 1, (0, 0, 0, 0)),
        ];
        let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let pool3 = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for &(nb, cin, ch, h, w, k, s, dil, (pt, pb, pl, pr)) in &cases {
            let x = Tensor::from_vec(ramp(nb * cin * h * w, 0.37), (nb, cin, h, w), &Device::Cpu).unwrap();
            let ew = ramp(ch * cin, 0.71);
            let eb = ramp(ch, 0.13);
            let dw = ramp(ch * k * k, 0.53);
            let db = ramp(ch, 0.29);
            let pads = [(pt, pb), (pl, pr)];
            let d = Depthwise {
                weight: &dw,
                kernel: (k, k),
                bias: Some(&db),
                pads: &pads,
                stride: s,
                dilation: dil,
            };
            let e = Expansion {
                weight: &ew,
                bias: Some(&eb),
                act: Act::Clamp(0.0, 6.0),
            };
            let (oh, ow) = geometry((h, w), (k, k), &pads, s, dil).map(|(_, o)| o).unwrap();
            let res = ramp(nb * ch * oh * ow, 0.11);
            let tails = [
                Tail::act(Act::Clamp(0.0, 6.0)),
                Tail {
                    pre: Act::Relu,
                    residual: Some(&res),
                    post: Act::Silu,
                },
            ];
            for tail in tails {
                for pool in [&pool1, &pool3] {
                    let want = pool
                        .install(|| unfused(&x, &e, &d, tail))
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    // One output row a band, a few, and the default (one band when it fits).
                    for band in [1, 3 * ch * w * 4, BAND_EXPANDED] {
                        let got = pool
                            .install(|| expand_depthwise_on((band, 0), &x, &e, &d, tail))
                            .unwrap()
                            .unwrap_or_else(|| panic!("banded path refused {nb}x{cin}x{h}x{w} k{k} s{s}"));
                        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same && want.len() == got.len(),
                            "{nb}x{cin}x{h}x{w} → {ch}, k{k} s{s} d{dil} pads {pads:?}, band {band} B, {} threads",
                            pool.current_num_threads()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn small_or_narrow_convs_are_left_to_the_two_kernels() {
        let x = Tensor::from_vec(ramp(8 * 20 * 20, 0.3), (1, 8, 20, 20), &Device::Cpu).unwrap();
        let (ew, dw) = (ramp(16 * 8, 0.7), ramp(16 * 9, 0.5));
        let pads = [(1, 1), (1, 1)];
        let e = Expansion {
            weight: &ew,
            bias: None,
            act: Act::Identity,
        };
        let d = Depthwise {
            weight: &dw,
            kernel: (3, 3),
            bias: None,
            pads: &pads,
            stride: 1,
            dilation: 1,
        };
        // 16 × 20 × 20 floats: 25 KB, under the default minimum.
        assert!(expand_depthwise(&x, &e, &d, Tail::act(Act::Identity))
            .unwrap()
            .is_none());
        // Forced: it runs (the rows are 20 wide, not plane-wide).
        assert!(expand_depthwise_on((1024, 0), &x, &e, &d, Tail::act(Act::Identity))
            .unwrap()
            .is_some());
        // An f16 input is left to the two kernels.
        let x16 = x.to_dtype(DType::F16).unwrap();
        assert!(expand_depthwise_on((1024, 0), &x16, &e, &d, Tail::act(Act::Identity))
            .unwrap()
            .is_none());
        // Mismatched weights are an error naming both.
        let short = Expansion { weight: &ew[..10], ..e };
        let err = expand_depthwise(&x, &short, &d, Tail::act(Act::Identity))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expansion weight of 10 values for [16, 8]"), "{err}");
    }

    /// Fused against the two convs, MobileNetV2's three large blocks
    /// (`EXP_THREADS`, default 1).
    #[test]
    #[ignore]
    fn timing() {
        let threads = std::env::var("EXP_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        // (cin, ch, hw, stride)
        for &(cin, ch, hw, s) in &[(16usize, 96usize, 112usize, 2usize), (24, 144, 56, 1), (24, 144, 56, 2)] {
            let x = Tensor::from_vec(ramp(cin * hw * hw, 0.37), (1, cin, hw, hw), &Device::Cpu).unwrap();
            let (ew, eb, dw, db) = (ramp(ch * cin, 0.7), ramp(ch, 0.1), ramp(ch * 9, 0.5), ramp(ch, 0.3));
            let pads = [(1, 1), (1, 1)];
            let e = Expansion {
                weight: &ew,
                bias: Some(&eb),
                act: Act::Clamp(0.0, 6.0),
            };
            let d = Depthwise {
                weight: &dw,
                kernel: (3, 3),
                bias: Some(&db),
                pads: &pads,
                stride: s,
                dilation: 1,
            };
            let win = Window {
                kernel: (1, 1),
                stride: (1, 1),
                dilation: (1, 1),
                pads: [(0, 0), (0, 0)],
            };
            let tail = Tail::act(Act::Clamp(0.0, 6.0));
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let unfused = || {
                let (y, _) =
                    conv_gemm::conv2d(&xs, (1, cin, hw, hw), &ew, ch, 1, &win, Some(&eb), Tail::act(e.act)).unwrap();
                let y = Tensor::from_vec(y, (1, ch, hw, hw), &Device::Cpu).unwrap();
                depthwise_conv2d(&y, &dw, (3, 3), Some(&db), &pads, s, 1, tail).unwrap()
            };
            let bands = [64 << 10, 256 << 10, 1 << 20, 4 << 20];
            let mut best = [f64::MAX; 5];
            pool.install(|| {
                for _ in 0..7 {
                    for (i, b) in std::iter::once(0).chain(bands).enumerate() {
                        let t = std::time::Instant::now();
                        for _ in 0..20 {
                            if b == 0 {
                                std::hint::black_box(unfused());
                            } else {
                                std::hint::black_box(expand_depthwise_on((b, 0), &x, &e, &d, tail).unwrap().unwrap());
                            }
                        }
                        best[i] = best[i].min(t.elapsed().as_secs_f64() / 20.0);
                    }
                }
            });
            println!(
                "{cin} → {ch} at {hw}², stride {s}, {threads} thread(s): two convs {:.1} µs; bands of 64K {:.1}, 256K {:.1}, 1M {:.1}, 4M {:.1}",
                best[0] * 1e6,
                best[1] * 1e6,
                best[2] * 1e6,
                best[3] * 1e6,
                best[4] * 1e6
            );
        }
    }
}
