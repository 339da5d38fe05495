//! Depthwise 2-D convolution (one filter per channel, `groups == channels`).
//!
//! candle's grouped convolution runs one convolution per group, which for
//! hundreds of channels costs far more than the arithmetic, so the
//! interpreter runs depthwise convolutions here, channels in parallel on
//! rayon's pool, with the bias fused (the output starts from it, not zero).
//!
//! Each filter tap is a multiply-add of contiguous runs, which vectorises:
//! - stride 1 (`conv_plane_wide`): the input is copied into a zero-bordered
//!   plane and the output computed as wide as it, so a tap is one run over
//!   the whole plane; per-row loops would be overhead-bound on 7-wide rows;
//! - stride above 1 (`conv_plane`): one output row at a time (it stays in
//!   L1); each tap's in-image column range is computed once, so no padding
//!   branches, and input rows are split into their stride phases (columns
//!   `p, p + s, p + 2s, ...` for each `p < s`) so each tap's inputs are
//!   contiguous.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

use super::fuse::Act;
use super::limits::{self, check_alloc};

type CResult<T> = candle_core::Result<T>;

/// Shape and spatial parameters of one depthwise convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    dil: usize,
    pad_top: usize,
    pad_left: usize,
}

/// One filter column `j`: the output columns `lo..hi` whose input column
/// `lo * stride + j * dil - pad_left` is inside the image, and where that
/// first input column sits in a phase-split row (`split_phases`).
#[derive(Clone, Copy, Debug)]
struct Tap {
    lo: usize,
    hi: usize,
    start: usize,
}

impl Geom {
    fn tap(&self, j: usize) -> Tap {
        let off = j * self.dil;
        // First ox with ox * stride + off >= pad_left.
        let lo = self.pad_left.saturating_sub(off).div_ceil(self.stride);
        // Last ox with ox * stride + off - pad_left <= w - 1, exclusive.
        let hi = match (self.w - 1 + self.pad_left).checked_sub(off) {
            Some(last) => (last / self.stride + 1).min(self.ow),
            None => 0,
        };
        if lo >= hi {
            return Tap { lo: 0, hi: 0, start: 0 };
        }
        let ix0 = lo * self.stride + off - self.pad_left;
        Tap {
            lo,
            hi,
            start: self.phase_offset(ix0 % self.stride) + ix0 / self.stride,
        }
    }

    /// Where phase `p` starts in a phase-split row: after the phases `< p`.
    fn phase_offset(&self, p: usize) -> usize {
        (0..p).map(|q| self.w.saturating_sub(q).div_ceil(self.stride)).sum()
    }

    /// The input row a filter row `i` reads for output row `oy`, if inside.
    fn input_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.stride + i * self.dil)
            .checked_sub(self.pad_top)
            .filter(|&iy| iy < self.h)
    }
}

/// Depthwise convolution of `x` `[n, c, h, w]` with `weight` `[c, 1, kh, kw]`
/// flattened to f32, an optional per-channel `bias`, explicit
/// `[begin, end]` `pads` for height and width, and equal strides and
/// dilations, then `act` on each channel's plane while it is in cache.
/// Computes in f32 and returns the input's dtype.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_conv2d(
    x: &Tensor,
    weight: &[f32],
    (kh, kw): (usize, usize),
    bias: Option<&[f32]>,
    pads: &[(usize, usize)],
    stride: usize,
    dil: usize,
    act: Act,
) -> CResult<Tensor> {
    let dtype = x.dtype();
    let (nb, ch, h, w) = x.dims4()?;
    if weight.len() != ch * kh * kw || bias.is_some_and(|b| b.len() != ch) {
        candle_core::bail!("depthwise weight/bias do not match {ch} channels of a {kh}x{kw} filter")
    }
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
    let g = Geom {
        h,
        w,
        oh: (span_h - eff_h) / stride + 1,
        ow: (span_w - eff_w) / stride + 1,
        kh,
        kw,
        stride,
        dil,
        pad_top: pt,
        pad_left: pl,
    };
    let taps: Vec<Tap> = (0..kw).map(|j| g.tap(j)).collect();
    check_alloc("depthwise output", &[nb, ch, g.oh, g.ow], 4)?;
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let mut out = vec![0f32; nb * ch * g.oh * g.ow];
    // The channel loop runs on rayon's threads, which do not see this
    // thread's scope: they check their own copy of the flag, once a plane.
    let cancel = limits::cancel_flag();
    let stopped = AtomicBool::new(false);
    with_f32_slice(&x32, |src| {
        out.par_chunks_mut(g.oh * g.ow)
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (plane, dst)| {
                if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                    stopped.store(true, Ordering::Relaxed);
                    return;
                }
                let c = plane % ch;
                let k = &weight[c * kh * kw..(c + 1) * kh * kw];
                let b = bias.map_or(0.0, |b| b[c]);
                let input = &src[plane * h * w..(plane + 1) * h * w];
                if stride == 1 {
                    conv_plane_wide(input, k, b, &g, scratch, dst);
                } else {
                    split_phases(input, w, stride, &mut scratch.input);
                    conv_plane(&scratch.input, k, b, &g, &taps, dst);
                }
                if act != Act::Identity {
                    act.epilogue(dst, 0.0);
                }
            });
    })?;
    if stopped.load(Ordering::Relaxed) {
        limits::note_cancelled();
        candle_core::bail!("cancelled")
    }
    Tensor::from_vec(out, (nb, ch, g.oh, g.ow), &Device::Cpu)?.to_dtype(dtype)
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
    input: Vec<f32>,
    acc: Vec<f32>,
}

/// One channel at stride 1. Rows can be as short as 7, where the per-row,
/// per-tap loop overhead would dominate; instead the input is copied once
/// into a zero-bordered plane `pw` wide and the output computed `pw` wide
/// (the columns past `ow` are discarded), so that each tap is a single
/// multiply-add over the whole plane: input offset `i * dil * pw + j * dil`.
fn conv_plane_wide(src: &[f32], k: &[f32], bias: f32, g: &Geom, scratch: &mut Scratch, dst: &mut [f32]) {
    let (ph, pw) = (g.oh - 1 + (g.kh - 1) * g.dil + 1, g.ow - 1 + (g.kw - 1) * g.dil + 1);
    let padded = &mut scratch.input;
    padded.clear();
    padded.resize(ph * pw, 0.0);
    for (iy, row) in src.chunks_exact(g.w).enumerate() {
        let at = (iy + g.pad_top) * pw + g.pad_left;
        padded[at..at + g.w].copy_from_slice(row);
    }
    // The last output row only needs its `ow` real columns; that also keeps
    // the bottom-right tap inside the padded plane.
    let len = (g.oh - 1) * pw + g.ow;
    let acc = &mut scratch.acc;
    acc.clear();
    acc.resize(len, bias);
    for i in 0..g.kh {
        for j in 0..g.kw {
            let at = i * g.dil * pw + j * g.dil;
            add_tap(acc, &padded[at..at + len], k[i * g.kw + j]);
        }
    }
    for (oy, drow) in dst.chunks_exact_mut(g.ow).enumerate() {
        drow.copy_from_slice(&acc[oy * pw..oy * pw + g.ow]);
    }
}

/// Rewrites each `w`-wide row of `src` into `out` as its stride phases:
/// columns `0, s, 2s, ...`, then `1, 1 + s, ...`, up to phase `s - 1`.
fn split_phases(src: &[f32], w: usize, s: usize, out: &mut Vec<f32>) {
    out.clear();
    for row in src.chunks_exact(w) {
        for p in 0..s.min(w) {
            out.extend(row[p..].iter().step_by(s));
        }
    }
}

/// One channel: `src` is its `h * w` input plane (phase-split if the stride
/// is above 1), `k` its `kh * kw` filter.
fn conv_plane(src: &[f32], k: &[f32], bias: f32, g: &Geom, taps: &[Tap], dst: &mut [f32]) {
    for (oy, drow) in dst.chunks_exact_mut(g.ow).enumerate() {
        drow.fill(bias);
        for i in 0..g.kh {
            let Some(iy) = g.input_row(oy, i) else { continue };
            let row = &src[iy * g.w..(iy + 1) * g.w];
            for (tap, &kv) in taps.iter().zip(&k[i * g.kw..(i + 1) * g.kw]) {
                let d = &mut drow[tap.lo..tap.hi];
                let len = d.len();
                add_tap(d, &row[tap.start..tap.start + len], kv);
            }
        }
    }
}

/// `d += kv * s` over equally long slices: a plain zip, so it vectorises.
#[inline(always)]
fn add_tap(d: &mut [f32], s: &[f32], kv: f32) {
    for (d, s) in d.iter_mut().zip(s) {
        *d += kv * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let got = depthwise_conv2d(&x, &ws, k, bias.as_deref(), &pads, stride, dil, Act::Identity).unwrap();
        assert_eq!(
            got.dims(),
            &[nb, ch, oh, ow],
            "{dims:?} k {k:?} pads {pads:?} s{stride} d{dil}"
        );
        // The fused activation computes what the activation after the conv does.
        for act in [Act::Clamp(0.0, 0.4), Act::Silu] {
            let fused = depthwise_conv2d(&x, &ws, k, bias.as_deref(), &pads, stride, dil, act).unwrap();
            let after = act.apply(&got).unwrap();
            let (f, a): (Vec<f32>, Vec<f32>) = (
                fused.flatten_all().unwrap().to_vec1().unwrap(),
                after.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(f, a, "{dims:?} k {k:?} {act:?}");
        }
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (n, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                "{dims:?} k {k:?} pads {pads:?} s{stride} d{dil}: [{n}] {g} vs {r}"
            );
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
    }

    #[test]
    fn keeps_the_input_dtype() {
        let x = Tensor::ones((1, 2, 4, 4), DType::F16, &Device::Cpu).unwrap();
        let y = depthwise_conv2d(&x, &[1.0; 18], (3, 3), None, &[(1, 1), (1, 1)], 1, 1, Act::Identity).unwrap();
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
}
