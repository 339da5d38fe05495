//! Depthwise 2-D convolution (one filter per channel, `groups == channels`).
//!
//! candle's grouped convolution runs one convolution per group, which for
//! hundreds of channels costs far more than the arithmetic, so the
//! interpreter runs depthwise convolutions here. The kernel works one output
//! row at a time: the row (at most a few hundred floats) stays in L1 while
//! each filter tap adds `weight * input` over the output columns whose input
//! is inside the image. The column range of each tap is computed once, so the
//! inner loop has no padding branches and the compiler can vectorise it.
//! Channels are independent and run in parallel on rayon's pool. The bias is
//! fused: each output row starts from it instead of from zero.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

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
/// `lo * stride + j * dil - pad_left` (first one `ix0`) is inside the image.
#[derive(Clone, Copy, Debug)]
struct Tap {
    lo: usize,
    hi: usize,
    ix0: usize,
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
            return Tap { lo: 0, hi: 0, ix0: 0 };
        }
        Tap {
            lo,
            hi,
            ix0: lo * self.stride + off - self.pad_left,
        }
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
/// dilations. Computes in f32 and returns the input's dtype.
pub(crate) fn depthwise_conv2d(
    x: &Tensor,
    weight: &[f32],
    (kh, kw): (usize, usize),
    bias: Option<&[f32]>,
    pads: &[(usize, usize)],
    stride: usize,
    dil: usize,
) -> CResult<Tensor> {
    let dtype = x.dtype();
    let (nb, ch, h, w) = x.dims4()?;
    if weight.len() != ch * kh * kw || bias.is_some_and(|b| b.len() != ch) {
        candle_core::bail!("depthwise weight/bias do not match {ch} channels of a {kh}x{kw} filter")
    }
    let (pt, pb) = pads[0];
    let (pl, pr) = pads[1];
    let eff_h = (kh - 1) * dil + 1;
    let eff_w = (kw - 1) * dil + 1;
    if h + pt + pb < eff_h || w + pl + pr < eff_w || h == 0 || w == 0 {
        candle_core::bail!("kernel {kh}x{kw} larger than the padded input {h}x{w}")
    }
    let g = Geom {
        h,
        w,
        oh: (h + pt + pb - eff_h) / stride + 1,
        ow: (w + pl + pr - eff_w) / stride + 1,
        kh,
        kw,
        stride,
        dil,
        pad_top: pt,
        pad_left: pl,
    };
    let taps: Vec<Tap> = (0..kw).map(|j| g.tap(j)).collect();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let mut out = vec![0f32; nb * ch * g.oh * g.ow];
    with_f32_slice(&x32, |src| {
        out.par_chunks_mut(g.oh * g.ow).enumerate().for_each(|(plane, dst)| {
            let c = plane % ch;
            let k = &weight[c * kh * kw..(c + 1) * kh * kw];
            let b = bias.map_or(0.0, |b| b[c]);
            conv_plane(&src[plane * h * w..(plane + 1) * h * w], k, b, &g, &taps, dst);
        });
    })?;
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

/// One channel: `src` is its `h * w` input plane, `k` its `kh * kw` filter.
fn conv_plane(src: &[f32], k: &[f32], bias: f32, g: &Geom, taps: &[Tap], dst: &mut [f32]) {
    for (oy, drow) in dst.chunks_exact_mut(g.ow).enumerate() {
        drow.fill(bias);
        for i in 0..g.kh {
            let Some(iy) = g.input_row(oy, i) else { continue };
            let row = &src[iy * g.w..(iy + 1) * g.w];
            for (tap, &kv) in taps.iter().zip(&k[i * g.kw..(i + 1) * g.kw]) {
                add_tap(&mut drow[tap.lo..tap.hi], &row[tap.ix0..], kv, g.stride);
            }
        }
    }
}

/// `d[n] += kv * s[n * stride]`; the stride-1 case is a plain slice zip so
/// that it vectorises.
#[inline(always)]
fn add_tap(d: &mut [f32], s: &[f32], kv: f32, stride: usize) {
    if stride == 1 {
        let s = &s[..d.len()];
        for (d, s) in d.iter_mut().zip(s) {
            *d += kv * s;
        }
    } else {
        for (d, s) in d.iter_mut().zip(s.iter().step_by(stride)) {
            *d += kv * s;
        }
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
        let got = depthwise_conv2d(&x, &ws, k, bias.as_deref(), &pads, stride, dil).unwrap();
        assert_eq!(
            got.dims(),
            &[nb, ch, oh, ow],
            "{dims:?} k {k:?} pads {pads:?} s{stride} d{dil}"
        );
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
        // Padding wider than the filter reach: taps with no valid columns.
        check((1, 2, 3, 2), (3, 3), [(3, 3), (4, 4)], 1, 1, true);
        check((1, 3, 1, 1), (1, 1), [(0, 0), (0, 0)], 1, 1, true);
    }

    #[test]
    fn keeps_the_input_dtype() {
        let x = Tensor::ones((1, 2, 4, 4), DType::F16, &Device::Cpu).unwrap();
        let y = depthwise_conv2d(&x, &[1.0; 18], (3, 3), None, &[(1, 1), (1, 1)], 1, 1).unwrap();
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
