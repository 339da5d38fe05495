//! Depthwise 2-D convolution (one filter per channel, `groups == channels`).
//!
//! candle's grouped convolution runs one convolution per group, which for
//! hundreds of channels costs far more than the arithmetic, so the
//! interpreter runs depthwise convolutions here, channels in parallel on
//! rayon's pool, with the bias, an activation and a residual add fused
//! ([`Tail`]).
//!
//! Per channel, the input is copied once into a zero-bordered plane whose
//! rows are split into their stride phases (columns `p, p + s, p + 2s, ...`
//! for each `p < s`), so that every filter tap of an output row reads one
//! contiguous run, at an offset fixed for the whole plane. Each output is
//! then summed over all taps in a register and stored once, four output
//! rows at a time, the whole plane in one call (`run_rows`: AVX-512 or
//! AVX2 + FMA when the CPU has them, else portable code), activated while
//! still in the register. A plane whose padded copy would not fit in L1
//! (over 32 KiB: MobileNetV2's 112 × 112 layers) is copied and computed a
//! band of rows at a time instead, each band's padded rows about 16 KiB,
//! in the same sums. Narrow planes at stride 1 (rows under 16
//! outputs) are computed as one run as wide as the padded plane and their
//! rows copied out, so that short rows do not waste vector lanes. Any
//! kernel size, stride, dilation and padding takes this path.
//!
//! On AVX-512 cores, planes whose output rows are narrower than a vector
//! (MobileNetV2's 7×7 and 14×14 layers) go instead 16 channels at a time
//! with the channels on the lanes ([`lanes`]), in the same sums.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use super::fuse::Tail;
use super::limits::{self, check_alloc};
use super::rows::{self as run, Isa};

pub(crate) mod expand;
#[cfg(target_arch = "x86_64")]
mod lanes;

type CResult<T> = candle_core::Result<T>;

/// Rows narrower than this (at stride 1) are computed plane-wide.
const NARROW: usize = 16;

/// Bytes of padded rows a band holds when a plane goes in bands
/// ([`Layout::band_rows`]): a third of a 48 KiB L1, leaving room for the
/// input rows read and the outputs written.
const BAND_BYTES: usize = 16 << 10;

/// Where one channel's padded, phase-split plane puts things.
#[derive(Clone, Debug)]
struct Layout {
    w: usize,
    ow: usize,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
    /// Padded rows and columns the outputs read.
    ph: usize,
    pw: usize,
    /// Length of one stride phase of a padded row, and of a whole row (`stride · phase`).
    phase: usize,
    row: usize,
    /// Per filter tap `(i, j)`, row-major: where output `(0, 0)` reads it.
    offs: Vec<usize>,
}

impl Layout {
    fn new(
        g: (usize, usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        dil: usize,
        (pt, pl): (usize, usize),
    ) -> Layout {
        let (w, oh, ow) = g;
        let ph = (oh - 1) * stride + (kh - 1) * dil + 1;
        let pw = (ow - 1) * stride + (kw - 1) * dil + 1;
        let phase = pw.div_ceil(stride);
        let row = phase * stride;
        let mut offs = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            for j in 0..kw {
                let c = j * dil;
                offs.push(i * dil * row + (c % stride) * phase + c / stride);
            }
        }
        Layout {
            w,
            ow,
            stride,
            pad_top: pt,
            pad_left: pl,
            ph,
            pw,
            phase,
            row,
            offs,
        }
    }

    /// Whether the plane is computed as one run (see the module doc).
    fn plane_wide(&self) -> bool {
        self.stride == 1 && self.ow < NARROW
    }

    /// Fills `out` with whole padded rows from padded row `first` on
    /// (`out.len() / row` of them) of one channel's `h · w` input `src`,
    /// phase-split: rows above or below the image are zeroed; columns
    /// outside it are left as they are, which is zero when `out` was
    /// zeroed once and has held only this layout's rows since (every row
    /// writes the same columns).
    fn fill_rows(&self, isa: Isa, src: &[f32], first: usize, out: &mut [f32]) {
        self.fill_rows_of(isa, (src, 0), src.len() / self.w, first, out)
    }

    /// [`Layout::fill_rows`] from `src` holding only the input rows
    /// `row0 ..` of an image `h` rows high (every row the band reads; a
    /// missing one panics on the slice).
    fn fill_rows_of(&self, isa: Isa, (src, row0): (&[f32], usize), h: usize, first: usize, out: &mut [f32]) {
        let count = out.len() / self.row;
        // Padded row `pr` holds input row `pr − pad_top` when that is in the image.
        let img0 = self.pad_top.clamp(first, first + count) - first;
        let img1 = (self.pad_top + h).clamp(first, first + count) - first;
        out[..img0 * self.row].fill(0.0);
        out[img1.max(img0) * self.row..].fill(0.0);
        if img1 <= img0 {
            return;
        }
        let src = &src[(first + img0 - self.pad_top - row0) * self.w..];
        let src = &src[..(img1 - img0) * self.w];
        let rows = &mut out[img0 * self.row..img1 * self.row];
        // Columns past `pw` are never read.
        let n = self.w.min(self.pw.saturating_sub(self.pad_left));
        if self.stride == 2 {
            // One call for the band's rows: the per-row loop around the
            // split was a fifth of a 56 × 56 plane's time under `perf`.
            run::split_rows(isa, src, (self.w, n, self.pad_left), rows, (self.row, self.phase));
            return;
        }
        for (srow, drow) in src.chunks_exact(self.w).zip(rows.chunks_exact_mut(self.row)) {
            if self.stride == 1 {
                drow[self.pad_left..self.pad_left + n].copy_from_slice(&srow[..n]);
            } else {
                // Phase `p` holds padded columns `p + s·k`, input columns `p + s·k − pad_left`.
                let s = self.stride;
                for p in 0..s {
                    let k0 = self.pad_left.saturating_sub(p).div_ceil(s);
                    let ix0 = p + s * k0 - self.pad_left;
                    if ix0 >= n {
                        continue;
                    }
                    let dst = &mut drow[p * self.phase + k0..(p + 1) * self.phase];
                    for (d, &v) in dst.iter_mut().zip(srow[ix0..n].iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// Output rows per band when a plane is computed a band of rows at a
    /// time (each band's padded rows about `band_bytes`, [`BAND_BYTES`]
    /// outside tests, so that they stay in L1 while its outputs read them
    /// three or more times); all `oh` when the whole padded plane is
    /// under two bands, or computed as one run.
    fn band_rows(&self, oh: usize, eff_h: usize, band_bytes: usize) -> usize {
        let row_bytes = self.row * 4;
        if self.plane_wide() || self.ph * row_bytes <= band_bytes.saturating_mul(2) {
            return oh;
        }
        let padded = (band_bytes / row_bytes).max(eff_h);
        ((padded - eff_h) / self.stride + 1).clamp(1, oh)
    }
}

/// Depthwise convolution of `x` `[n, c, h, w]` with `weight` `[c, 1, kh, kw]`
/// flattened to f32, an optional per-channel `bias`, explicit
/// `[begin, end]` `pads` for height and width, and equal strides and
/// dilations, then `tail` (activation, residual add) on each channel's plane
/// while it is in cache. Computes in f32 and returns the input's dtype.
/// Costs `n·c·oh·ow·kh·kw` multiply-adds plus one copy of the input;
/// errors when a residual is not one value per output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_conv2d(
    x: &Tensor,
    weight: &[f32],
    (kh, kw): (usize, usize),
    bias: Option<&[f32]>,
    pads: &[(usize, usize)],
    stride: usize,
    dil: usize,
    tail: Tail,
) -> CResult<Tensor> {
    depthwise_conv2d_on(
        (Isa::detect(), true, BAND_BYTES),
        x,
        weight,
        (kh, kw),
        bias,
        pads,
        stride,
        dil,
        tail,
    )
}

/// [`depthwise_conv2d`] on `isa`, with narrow planes on the lanes when
/// `lanes_ok` and the CPU allows it, and wide planes in bands of about
/// `band_bytes` padded rows (tests compare all the paths).
#[allow(clippy::too_many_arguments)]
fn depthwise_conv2d_on(
    (isa, lanes_ok, band_bytes): (Isa, bool, usize),
    x: &Tensor,
    weight: &[f32],
    (kh, kw): (usize, usize),
    bias: Option<&[f32]>,
    pads: &[(usize, usize)],
    stride: usize,
    dil: usize,
    tail: Tail,
) -> CResult<Tensor> {
    let dtype = x.dtype();
    let (nb, ch, h, w) = x.dims4()?;
    if weight.len() != ch * kh * kw || bias.is_some_and(|b| b.len() != ch) {
        candle_core::bail!("depthwise weight/bias do not match {ch} channels of a {kh}x{kw} filter")
    }
    let (lay, (oh, ow)) = geometry((h, w), (kh, kw), pads, stride, dil)?;
    check_alloc("depthwise output", &[nb, ch, oh, ow], 4)?;
    check_alloc("depthwise padded plane", &[lay.ph, lay.row], 4)?;
    let plane = oh * ow;
    if tail.residual.is_some_and(|r| r.len() != nb * ch * plane) {
        candle_core::bail!(
            "depthwise residual of {} values for an output of [{nb}, {ch}, {oh}, {ow}]",
            tail.residual.map_or(0, <[f32]>::len)
        )
    }
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    // Not zero-filled: every plane is written whole below (a zeroed output
    // cost a pass over it, ~2% of a MobileNetV2 run).
    let n = nb * ch * plane;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    // The channel loop runs on rayon's threads, which do not see this
    // thread's scope: they check their own copy of the flag, once a plane.
    let cancel = limits::cancel_flag();
    let stopped = AtomicBool::new(false);
    let job = Job {
        lay: &lay,
        dims: (h, w, oh, ow),
        kernel: (kh, kw, dil),
        channels: ch,
        weight,
        bias,
        tail,
        cancel: &cancel,
        stopped: &stopped,
    };
    let dst = &mut out.spare_capacity_mut()[..n];
    if lanes_ok && on_lanes(isa, &lay, plane) {
        #[cfg(target_arch = "x86_64")]
        by_blocks(&job, &x32, dst)?;
    } else {
        per_plane(&job, isa, band_bytes, &x32, dst)?;
    }
    if stopped.load(Ordering::Relaxed) {
        limits::note_cancelled();
        candle_core::bail!("cancelled")
    }
    // SAFETY: not stopped, so every plane of the `n` outputs was written
    // (a panicking plane unwinds past this, leaving `out` empty).
    unsafe { out.set_len(n) };
    Tensor::from_vec(out, (nb, ch, oh, ow), &Device::Cpu)?.to_dtype(dtype)
}

/// A depthwise conv's output size and its planes' padded layout, for
/// `h × w` input planes, `[begin, end]` `pads` for height and width, and
/// equal strides and dilations; errors on a zero or overflowing size.
fn geometry(
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    pads: &[(usize, usize)],
    stride: usize,
    dil: usize,
) -> CResult<(Layout, (usize, usize))> {
    let (&(pt, pb), &(pl, pr)) = match pads {
        [a, b] => (a, b),
        _ => candle_core::bail!("depthwise pads {pads:?}; expected [begin, end] for height and width"),
    };
    if kh == 0 || kw == 0 || stride == 0 || dil == 0 {
        candle_core::bail!("depthwise kernel {kh}x{kw}, stride {stride}, dilation {dil}")
    }
    // Checked: hostile pads or dilations must not wrap (callers bound the
    // padded size by the memory limit before this).
    let eff_h = (kh - 1).checked_mul(dil).and_then(|v| v.checked_add(1));
    let eff_w = (kw - 1).checked_mul(dil).and_then(|v| v.checked_add(1));
    let span_h = h.checked_add(pt).and_then(|v| v.checked_add(pb));
    let span_w = w.checked_add(pl).and_then(|v| v.checked_add(pr));
    let (Some(eff_h), Some(eff_w), Some(span_h), Some(span_w)) = (eff_h, eff_w, span_h, span_w) else {
        candle_core::bail!("depthwise geometry overflows (kernel {kh}x{kw}, dilation {dil}, pads {pads:?})")
    };
    if span_h < eff_h || span_w < eff_w || h == 0 || w == 0 {
        candle_core::bail!("kernel {kh}x{kw} larger than the padded input {h}x{w}")
    }
    let (oh, ow) = ((span_h - eff_h) / stride + 1, (span_w - eff_w) / stride + 1);
    Ok((Layout::new((w, oh, ow), (kh, kw), stride, dil, (pt, pl)), (oh, ow)))
}

/// Whether this conv's planes go 16 at a time on the lanes ([`lanes`]).
fn on_lanes(isa: Isa, lay: &Layout, plane: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        lanes::fits(isa, lay, plane)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, lay, plane);
        false
    }
}

/// One depthwise conv's description, as the paths below take it.
struct Job<'a> {
    lay: &'a Layout,
    /// Input height and width, output height and width.
    dims: (usize, usize, usize, usize),
    /// Kernel height and width, dilation.
    kernel: (usize, usize, usize),
    channels: usize,
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    tail: Tail<'a>,
    cancel: &'a Option<limits::CancelFlag>,
    /// Set by a task that saw the cancel flag.
    stopped: &'a AtomicBool,
}

impl Job<'_> {
    /// Whether the run was cancelled: then notes it (once a plane or
    /// block, on the task's thread) for the caller to report.
    fn stop_here(&self) -> bool {
        let stop = self.cancel.as_ref().is_some_and(|c| c.is_cancelled());
        if stop {
            self.stopped.store(true, Ordering::Relaxed);
        }
        stop
    }
}

/// The planes 16 at a time, each block a task ([`lanes::block`]), then
/// each plane's residual and final activation.
#[cfg(target_arch = "x86_64")]
fn by_blocks(job: &Job, x32: &Tensor, out: &mut [MaybeUninit<f32>]) -> CResult<()> {
    let (lay, (h, w, oh, ow), tail) = (job.lay, job.dims, job.tail);
    let plane = oh * ow;
    let g = lanes::Geometry {
        h,
        oh,
        kh: job.kernel.0,
        kw: job.kernel.1,
        dil: job.kernel.2,
        channels: job.channels,
    };
    with_f32_slice(x32, |src| {
        out.par_chunks_mut(lanes::LANES * plane)
            .enumerate()
            .for_each_init(lanes::Block::default, |buf, (i, dst)| {
                if job.stop_here() {
                    return;
                }
                let p0 = i * lanes::LANES;
                let count = dst.len() / plane;
                let src = &src[p0 * h * w..(p0 + count) * h * w];
                // SAFETY: `fits` held; `src` and `dst` hold `count` planes.
                let dst = unsafe { lanes::block(lay, g, src, p0, job.weight, job.bias, tail.pre, buf, dst) };
                for (l, d) in dst.chunks_exact_mut(plane).enumerate() {
                    tail.finish(d, (p0 + l) * plane);
                }
            });
    })
}

/// The planes one at a time, each a task (see the module doc).
fn per_plane(job: &Job, isa: Isa, band_bytes: usize, x32: &Tensor, out: &mut [MaybeUninit<f32>]) -> CResult<()> {
    let (lay, (h, w, oh, ow), tail) = (job.lay, job.dims, job.tail);
    let (kh, kw, ch, weight, bias) = (job.kernel.0, job.kernel.1, job.channels, job.weight, job.bias);
    let plane = oh * ow;
    let stride = lay.stride;
    let eff_h = (kh - 1) * job.kernel.2 + 1;
    let band_rows = lay.band_rows(oh, eff_h, band_bytes);
    with_f32_slice(x32, |src| {
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (p, dst)| {
                if job.stop_here() {
                    return;
                }
                let c = p % ch;
                let k = &weight[c * kh * kw..(c + 1) * kh * kw];
                let b = bias.map_or(0.0, |b| b[c]);
                let src = &src[p * h * w..(p + 1) * h * w];
                if lay.plane_wide() {
                    // One run over the plane `row` wide; its rows' first `ow` are the outputs.
                    let Scratch { input, acc } = scratch;
                    let padded = zeroed_prefix(input, lay.ph * lay.row);
                    lay.fill_rows(isa, src, 0, padded);
                    let len = (oh - 1) * lay.row + ow;
                    acc.resize(len, 0.0);
                    run::run(isa, &mut acc[..len], padded, &lay.offs, k, b, tail.pre);
                    for (oy, drow) in dst.chunks_exact_mut(ow).enumerate() {
                        for (d, &v) in drow.iter_mut().zip(&acc[oy * lay.row..oy * lay.row + ow]) {
                            d.write(v);
                        }
                    }
                } else {
                    // Output rows `r0..r1` read padded rows `r0·s ..` `(r1 − 1)·s + eff_h`.
                    for (i, part) in dst.chunks_mut(band_rows * ow).enumerate() {
                        let rows = part.len() / ow;
                        let padded = zeroed_prefix(&mut scratch.input, ((rows - 1) * stride + eff_h) * lay.row);
                        lay.fill_rows(isa, src, i * band_rows * stride, padded);
                        run::run_rows(isa, part, ow, padded, stride * lay.row, &lay.offs, k, b, tail.pre);
                    }
                }
                // SAFETY: both branches wrote all `oh` rows of `ow` outputs.
                tail.finish(unsafe { run::assume_init(dst) }, p * plane);
            });
    })
}

/// Calls `f` with the data of a contiguous f32 CPU tensor, without copying.
pub(super) fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> CResult<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor")
    };
    match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => Ok(f(&data[start..end])),
        _ => candle_core::bail!("expected an f32 CPU tensor"),
    }
}

/// Per-thread buffers reused across channels.
#[derive(Default)]
struct Scratch {
    /// Padded rows of one channel: a plane or a band of it.
    input: Vec<f32>,
    acc: Vec<f32>,
}

/// The first `n` values of `v`, which is grown with zeros to hold them
/// (never shrunk, so what one fill left outside the image stays zero).
fn zeroed_prefix(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::fuse::Act;

    /// The straightforward loop the kernel replaced: zero padding by bounds
    /// checks on every tap.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        xs: &[f32],
        (nb, ch, h, w): (usize, usize, usize, usize),
        ws: &[f32],
        (kh, kw): (usize, usize),
        bias: Option<&[f32]>,
        pads: &[(usize, usize)],
        stride: usize,
        dil: usize,
    ) -> (Vec<f32>, usize, usize) {
        let (pt, pb) = pads[0];
        let (pl, pr) = pads[1];
        let oh = (h + pt + pb - ((kh - 1) * dil + 1)) / stride + 1;
        let ow = (w + pl + pr - ((kw - 1) * dil + 1)) / stride + 1;
        let mut out = vec![0f32; nb * ch * oh * ow];
        for b in 0..nb {
            for c in 0..ch {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias.map_or(0.0, |b| b[c]);
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * stride + i * dil) as isize - pt as isize;
                                let ix = (ox * stride + j * dil) as isize - pl as isize;
                                if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                                    let v = xs[((b * ch + c) * h + iy as usize) * w + ix as usize];
                                    acc += ws[(c * kh + i) * kw + j] * v;
                                }
                            }
                        }
                        out[((b * ch + c) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        (out, oh, ow)
    }

    /// Deterministic values in [-1, 1) without a random-number dependency.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        dims: (usize, usize, usize, usize),
        k: (usize, usize),
        pads: [(usize, usize); 2],
        stride: usize,
        dil: usize,
        with_bias: bool,
    ) {
        let (nb, ch, h, w) = dims;
        let xs = values(nb * ch * h * w, 1);
        let ws = values(ch * k.0 * k.1, 2);
        let bias = with_bias.then(|| values(ch, 3));
        let (want, oh, ow) = reference(&xs, dims, &ws, k, bias.as_deref(), &pads, stride, dil);
        let x = Tensor::from_vec(xs, dims, &Device::Cpu).unwrap();
        let res = values(nb * ch * oh * ow, 4);
        let res_t = Tensor::from_vec(res.clone(), (nb, ch, oh, ow), &Device::Cpu).unwrap();
        let conv_on = |isa: Isa, lanes: bool, band: usize, tail: Tail| {
            depthwise_conv2d_on(
                (isa, lanes, band),
                &x,
                &ws,
                k,
                bias.as_deref(),
                &pads,
                stride,
                dil,
                tail,
            )
            .unwrap()
        };
        let conv = |isa: Isa, tail: Tail| conv_on(isa, true, BAND_BYTES, tail);
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        // Every implementation this CPU runs, the portable one included.
        for isa in Isa::available() {
            let got = conv(isa, Tail::act(Act::Identity));
            let at = format!("{isa:?} {dims:?} k {k:?} pads {pads:?} s{stride} d{dil}");
            assert_eq!(got.dims(), &[nb, ch, oh, ow], "{at}");
            for (n, (g, r)) in flat(&got).iter().zip(&want).enumerate() {
                assert!((g - r).abs() <= 1e-5 * (1.0 + r.abs()), "{at}: [{n}] {g} vs {r}");
            }
            // A fused epilogue computes what the unfused ops after the conv compute.
            for (pre, residual, post) in [
                (Act::Clamp(0.0, 0.4), false, Act::Identity),
                (Act::Silu, false, Act::Identity),
                (Act::HardSwish(1.0 / 6.0, 0.5), false, Act::Identity),
                (Act::Identity, true, Act::Identity),
                (Act::Clamp(0.0, 6.0), true, Act::Relu),
                (Act::HardSwish(0.2, 0.5), true, Act::Silu),
            ] {
                let tail = Tail {
                    pre,
                    residual: residual.then_some(&res[..]),
                    post,
                };
                let fused = conv(isa, tail);
                // Narrow planes on the lanes sum as the plane-by-plane
                // kernels do: the same bits either way.
                assert_eq!(
                    flat(&fused),
                    flat(&conv_on(isa, false, BAND_BYTES, tail)),
                    "{at} {tail:?}: lanes vs planes"
                );
                // So do planes in bands: whole, one output row a band, or
                // the default bands (planes over 32 KiB padded).
                let whole = flat(&conv_on(isa, false, usize::MAX, tail));
                assert_eq!(flat(&fused), whole, "{at} {tail:?}: whole planes");
                assert_eq!(
                    flat(&conv_on(isa, false, 1, tail)),
                    whole,
                    "{at} {tail:?}: a row a band"
                );
                let mut after = pre.apply(&got).unwrap();
                if residual {
                    after = post.apply(&(after + &res_t).unwrap()).unwrap();
                }
                assert_eq!(flat(&fused), flat(&after), "{at} {tail:?}");
            }
        }
    }

    #[test]
    fn matches_reference_over_odd_shapes() {
        // MobileNetV2's shapes: 3x3, pad 1, stride 1 and 2 (even and odd sizes).
        check((1, 32, 112, 112), (3, 3), [(1, 1), (1, 1)], 1, 1, true);
        check((1, 13, 15, 15), (3, 3), [(1, 1), (1, 1)], 2, 1, true);
        check((1, 13, 14, 14), (3, 3), [(0, 1), (0, 1)], 2, 1, false);
        // Non-square, batch > 1, channels not a multiple of any vector width.
        check((2, 7, 9, 17), (3, 3), [(1, 1), (1, 1)], 1, 1, true);
        check((2, 5, 11, 6), (3, 5), [(1, 2), (2, 1)], 2, 1, true);
        // Dilation, asymmetric padding, stride 3, no padding.
        check((1, 3, 13, 10), (3, 3), [(2, 2), (2, 2)], 1, 2, true);
        check((1, 9, 10, 13), (3, 2), [(0, 3), (4, 0)], 3, 2, false);
        check((1, 4, 8, 8), (5, 5), [(0, 0), (0, 0)], 1, 1, true);
        // 5x5 "same" (PP-LCNet, PicoDet), stride 1 and 2.
        check((1, 6, 15, 13), (5, 5), [(2, 2), (2, 2)], 1, 1, true);
        check((1, 6, 15, 13), (5, 5), [(1, 2), (1, 2)], 2, 1, true);
        // Padding wider than the filter reach: taps with no valid columns.
        check((1, 2, 3, 2), (3, 3), [(3, 3), (4, 4)], 1, 1, true);
        check((1, 3, 1, 1), (1, 1), [(0, 0), (0, 0)], 1, 1, true);
        // More planes than a block of lanes, the last block short, channels
        // wrapping inside a block (batch 2); rows wider than a vector.
        check((2, 21, 9, 7), (3, 3), [(1, 1), (1, 1)], 1, 1, true);
        check((1, 40, 14, 14), (3, 3), [(1, 1), (1, 1)], 2, 1, true);
        check((1, 17, 6, 37), (3, 3), [(1, 1), (1, 1)], 2, 1, true);
        // Padded planes over two bands: stride 2 with uneven pads, stride 3
        // with dilation (the default bands; the whole plane and a row a
        // band are checked on every shape).
        check((1, 3, 75, 131), (3, 5), [(2, 1), (1, 2)], 2, 1, true);
        check((1, 2, 120, 70), (3, 3), [(3, 1), (0, 2)], 3, 2, true);
    }

    #[test]
    fn a_residual_of_the_wrong_length_is_an_error() {
        let x = Tensor::ones((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let tail = Tail {
            pre: Act::Identity,
            residual: Some(&[0.0; 5]),
            post: Act::Identity,
        };
        let e = depthwise_conv2d(&x, &[1.0; 18], (3, 3), None, &[(1, 1), (1, 1)], 1, 1, tail).unwrap_err();
        assert!(e.to_string().contains("residual of 5 values"), "{e}");
    }

    #[test]
    fn keeps_the_input_dtype() {
        let x = Tensor::ones((1, 2, 4, 4), DType::F16, &Device::Cpu).unwrap();
        let y = depthwise_conv2d(
            &x,
            &[1.0; 18],
            (3, 3),
            None,
            &[(1, 1), (1, 1)],
            1,
            1,
            Tail::act(Act::Identity),
        )
        .unwrap();
        assert_eq!(y.dtype(), DType::F16);
        // Centre: all nine taps; corner: four.
        let v = y
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!((v[5], v[0]), (9.0, 4.0));
    }

    /// Narrow planes on the lanes against plane by plane, interleaved:
    /// `cargo test --release --lib depthwise::tests::timing -- --ignored
    /// --nocapture` (MobileNetV2's depthwise shapes, two of PP-LCNet's,
    /// then strided ones whose outputs are about a vector wide, where the
    /// two paths cross). `DW_SHAPE=i` runs one shape, `DW_K=5` a 5×5 filter
    /// (3×3 by default), `DW_THREADS=2` a pool of two threads (one by
    /// default).
    #[test]
    #[ignore]
    fn timing() {
        let threads = std::env::var("DW_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1);
        let k = std::env::var("DW_K")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(3);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let isa = Isa::detect();
        let only = std::env::var("DW_SHAPE").ok().and_then(|v| v.parse::<usize>().ok());
        let shapes = [
            (576usize, 14usize, 2usize),
            (960, 7, 1),
            (192, 28, 2),
            (576, 14, 1),
            (144, 56, 2),
            (144, 56, 1),
            (96, 112, 2),
            (32, 112, 1),
            (16, 112, 2),
            (24, 56, 2),
            (256, 14, 1),
            (64, 56, 2),
            (256, 24, 2),
            (128, 20, 2),
            (512, 16, 2),
            (96, 28, 2),
        ];
        for (i, &(ch, hw, stride)) in shapes.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let x = Tensor::from_vec(values(ch * hw * hw, 1), (1, ch, hw, hw), &Device::Cpu).unwrap();
            let (ws, b) = (values(ch * k * k, 2), values(ch, 3));
            let pads = [(k / 2, k / 2), (k / 2, k / 2)];
            let reps = 200;
            let mut best = [f64::MAX; 2];
            pool.install(|| {
                for _ in 0..7 {
                    for (i, lanes) in [true, false].into_iter().enumerate() {
                        let t = std::time::Instant::now();
                        for _ in 0..reps {
                            let tail = Tail::act(Act::Clamp(0.0, 6.0));
                            depthwise_conv2d_on(
                                (isa, lanes, BAND_BYTES),
                                &x,
                                &ws,
                                (k, k),
                                Some(&b),
                                &pads,
                                stride,
                                1,
                                tail,
                            )
                            .unwrap();
                        }
                        best[i] = best[i].min(t.elapsed().as_secs_f64() / reps as f64);
                    }
                }
            });
            eprintln!(
                "{ch} ch {hw}x{hw} s{stride}: lanes {:.1} us, planes {:.1} us ({:.0} / {:.0} ns a channel)",
                best[0] * 1e6,
                best[1] * 1e6,
                best[0] * 1e9 / ch as f64,
                best[1] * 1e9 / ch as f64
            );
        }
    }
}
