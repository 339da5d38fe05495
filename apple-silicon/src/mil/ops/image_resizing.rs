//! Image resizing (coremltools `image_resizing.py`): `upsample_nearest_neighbor`,
//! `resize_nearest_neighbor`, `upsample_bilinear`, `resize_bilinear`,
//! `resize` (iOS17), `crop`, `resample`, `affine`, `crop_resize`.
//!
//! Conventions: the resized dims are the last two (the last `resized_dims`
//! for `resize`); every other dim is batch. A linear resize samples each
//! output index `i` at a grid point of the input chosen by the sampling mode
//! (as `resize_bilinear`'s definition lists them, clamped to `[0, in - 1]`)
//! and interpolates between its two neighbours; the dims are done one after
//! the other, each as one matrix product with an `[out, in]` interpolation
//! matrix. Scale-factor ops size the output `floor(in · scale)` and then
//! sample as if the scale were `out / in` (PyTorch's
//! `recompute_scale_factor`). Nearest neighbour takes input index
//! `floor(i · in / out)` (TF's default); `resize`'s nearest mode with another
//! sampling mode rounds that mode's grid point half up.
//!
//! `resample` reads `x [B, C, H, W]` at `(x, y)` points given per output
//! pixel; coordinates outside the image read the image padded as
//! `padding_mode` says (constant, border, reflection without the edge,
//! symmetric with it). `affine` is `resample` at the points an affine map
//! of the output's normalised coordinates gives.
//!
//! `crop_resize` is TF's `crop_and_resize` (what coremltools' frontends map
//! to it, always with `ALIGN_CORNERS`): box edges in pixels (normalised ones
//! times `in - 1`, then times `spatial_scale`), output `i` at `start + i ·
//! (end - start) / (out - 1)` (one output: the box centre; the box start
//! under `STRICT_ALIGN_CORNERS`), points outside the image read `pad_value`.
//! The other sampling modes' placement inside a box is not defined by
//! coremltools' documentation: they are refused.

use candle_core::{DType, Tensor};

use super::spatial::check_elems;
use super::{one, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "upsample_nearest_neighbor" => upsample_nearest_neighbor,
        "resize_nearest_neighbor" => resize_nearest_neighbor,
        "upsample_bilinear" => upsample_bilinear,
        "resize_bilinear" => resize_bilinear,
        "resize" => resize,
        "crop" => crop,
        "resample" => resample,
        "affine" => affine,
        "crop_resize" => crop_resize,
        _ => return None,
    })
}

/// Where an output index samples the input, per `resize_bilinear`'s modes.
#[derive(Clone, Copy, Debug)]
enum Sampling {
    /// `i · (in - 1) / (out - 1)`; 0 when `out` is 1.
    StrictAlign,
    /// As `StrictAlign`, but the centre `(in - 1) / 2` when `out` is 1.
    Align,
    /// `i · in / out`.
    Default,
    /// `δ/2 + i · δ` with `δ = max(1, in - 1) / out`.
    Offset,
    /// Half-pixel centres: `(i + 0.5) · in / out - 0.5`.
    Unalign,
}

impl Sampling {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "STRICT_ALIGN_CORNERS" => Self::StrictAlign,
            "ALIGN_CORNERS" => Self::Align,
            "DEFAULT" => Self::Default,
            "OFFSET_CORNERS" => Self::Offset,
            "UNALIGN_CORNERS" => Self::Unalign,
            _ => return None,
        })
    }

    /// The input coordinate output index `i` samples, clamped to the input.
    fn point(self, i: usize, n_in: usize, n_out: usize) -> f64 {
        let (i, fi, fo) = (i as f64, n_in as f64, n_out as f64);
        let g = match self {
            Self::StrictAlign | Self::Align if n_out == 1 => {
                if matches!(self, Self::Align) {
                    (fi - 1.0) / 2.0
                } else {
                    0.0
                }
            }
            Self::StrictAlign | Self::Align => i * (fi - 1.0) / (fo - 1.0),
            Self::Default => i * fi / fo,
            Self::Offset => {
                let delta = (fi - 1.0).max(1.0) / fo;
                0.5 * delta + i * delta
            }
            Self::Unalign => (i + 0.5) * fi / fo - 0.5,
        };
        g.clamp(0.0, (fi - 1.0).max(0.0))
    }
}

fn sampling_of(c: &mut OpCtx) -> Result<Sampling> {
    let s = c.opt_string("sampling_mode")?.unwrap_or_else(|| "DEFAULT".into());
    Sampling::parse(&s).ok_or_else(|| {
        c.unsupported(format!(
            "`sampling_mode` {s} (STRICT_ALIGN_CORNERS, ALIGN_CORNERS, DEFAULT, OFFSET_CORNERS or UNALIGN_CORNERS)"
        ))
    })
}

/// How one dim is resized.
#[derive(Clone, Copy, Debug)]
enum Interp {
    Linear(Sampling),
    /// Nearest neighbour: `None` is TF's `floor(i · in / out)`, else the
    /// mode's grid point rounded half up.
    Nearest(Option<Sampling>),
}

/// Resizes dim `dim` of `x` to `n_out`.
fn resize_dim(x: &Tensor, dim: usize, n_out: usize, how: Interp) -> CResult<Tensor> {
    let n_in = x.dims()[dim];
    let mut out_shape = x.dims().to_vec();
    out_shape[dim] = n_out;
    check_elems(&out_shape, "resized output")?;
    check_elems(&[n_out, n_in], "interpolation matrix")?;
    if n_in == 0 || n_out == 0 {
        let mut shape = x.dims().to_vec();
        shape[dim] = n_out;
        return Tensor::zeros(shape, x.dtype(), x.device());
    }
    match how {
        Interp::Nearest(mode) => {
            let idx: Vec<u32> = nearest_index(n_in, n_out, mode).into_iter().map(|i| i as u32).collect();
            let idx = Tensor::from_vec(idx, n_out, x.device())?;
            x.contiguous()?.index_select(&idx, dim)
        }
        Interp::Linear(mode) => {
            // [out, in] interpolation matrix: two taps per row.
            let mut m = vec![0f64; n_out * n_in];
            for i in 0..n_out {
                let g = mode.point(i, n_in, n_out);
                let lo = (g.floor() as usize).min(n_in - 1);
                let hi = (lo + 1).min(n_in - 1);
                let f = g - lo as f64;
                m[i * n_in + lo] += 1.0 - f;
                m[i * n_in + hi] += f;
            }
            let ct = if x.dtype().is_float() { x.dtype() } else { DType::F64 };
            let m = Tensor::from_vec(m, (n_out, n_in), x.device())?.to_dtype(ct)?;
            let last = x.rank() - 1;
            let xt = x.to_dtype(ct)?.transpose(dim, last)?.contiguous()?;
            let y = xt.broadcast_matmul(&m.t()?)?;
            y.transpose(dim, last)?.contiguous()?.to_dtype(x.dtype())
        }
    }
}

/// Resizes the last two dims of `x` to `(h, w)`.
/// The input index each of `n_out` nearest-neighbour outputs reads (`n_in`
/// ≥ 1): see [`Interp::Nearest`].
fn nearest_index(n_in: usize, n_out: usize, mode: Option<Sampling>) -> Vec<usize> {
    (0..n_out)
        .map(|i| {
            let src = match mode {
                None => i * n_in / n_out,
                Some(m) => (m.point(i, n_in, n_out) + 0.5).floor() as usize,
            };
            src.min(n_in - 1)
        })
        .collect()
}

/// Nearest-neighbour resize of the last two dims of a contiguous f32 CPU
/// tensor (rank ≥ 2) to `h × w` in one pass: each output row is gathered
/// once from its input row, or copied from the row before when both read
/// the same input row (an integer upscale). Costs one write of the output
/// and no zero fill (the general path wrote the output twice, through two
/// `index_select`s). `None` for any other tensor or an empty dim.
fn nearest_hw_f32(x: &Tensor, h: usize, w: usize, mode: Option<Sampling>) -> CResult<Option<Tensor>> {
    let d = x.dims();
    let r = d.len();
    if x.dtype() != DType::F32 || !x.is_contiguous() || !x.device().is_cpu() || r < 2 {
        return Ok(None);
    }
    let (ih, iw) = (d[r - 2], d[r - 1]);
    let planes: usize = d[..r - 2].iter().product();
    if ih == 0 || iw == 0 || h == 0 || w == 0 || planes == 0 {
        return Ok(None);
    }
    let mut shape = d.to_vec();
    shape[r - 2] = h;
    shape[r - 1] = w;
    check_elems(&shape, "resized output")?;
    let (ys, xs) = (nearest_index(ih, h, mode), nearest_index(iw, w, mode));
    let out = crate::mil::depthwise::with_f32_slice(x, |src| {
        let mut out: Vec<f32> = Vec::with_capacity(planes * h * w);
        for plane in src.chunks_exact(ih * iw) {
            for (oy, &iy) in ys.iter().enumerate() {
                if oy > 0 && ys[oy - 1] == iy {
                    let prev = out.len() - w;
                    out.extend_from_within(prev..);
                } else {
                    let row = &plane[iy * iw..(iy + 1) * iw];
                    out.extend(xs.iter().map(|&ix| row[ix]));
                }
            }
        }
        out
    })?;
    Ok(Some(Tensor::from_vec(out, shape, x.device())?))
}

fn resize_hw(x: &Tensor, h: usize, w: usize, how: Interp) -> CResult<Tensor> {
    let r = x.rank();
    if r < 3 {
        candle_core::bail!("input of rank {r}; image resizing needs rank 3 or more")
    }
    if let Interp::Nearest(mode) = how {
        if let Some(y) = nearest_hw_f32(x, h, w, mode)? {
            return Ok(y);
        }
    }
    let y = resize_dim(x, r - 1, w, how)?;
    resize_dim(&y, r - 2, h, how)
}

/// A positive scale factor parameter (default 1).
fn scale(c: &mut OpCtx, arg: &str) -> Result<f64> {
    let s = c.opt_float(arg)?.unwrap_or(1.0);
    if !(s.is_finite() && s > 0.0) {
        return Err(c.unsupported(format!("`{arg}` {s} (a positive scale)")));
    }
    Ok(s)
}

/// A positive target size parameter.
fn size(c: &mut OpCtx, arg: &str) -> Result<usize> {
    let v = c
        .opt_int(arg)?
        .ok_or_else(|| c.error(format!("required argument `{arg}` is missing")))?;
    if v < 1 {
        return Err(c.unsupported(format!("`{arg}` {v} (a positive size)")));
    }
    Ok(v as usize)
}

/// `floor(n · s)`, or an error when that is an empty dim.
fn scaled(n: usize, s: f64) -> CResult<usize> {
    let o = (n as f64 * s).floor();
    if o < 1.0 {
        candle_core::bail!("scale {s} makes a dim of {n} empty")
    }
    Ok(o as usize)
}

fn upsample_nearest_neighbor(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let (sh, sw) = (scale(c, "scale_factor_height")?, scale(c, "scale_factor_width")?);
    Ok(Box::new(move |a| {
        let x = a[x];
        let r = x.rank().max(2);
        let (h, w) = (scaled(x.dims()[r - 2], sh)?, scaled(x.dims()[r - 1], sw)?);
        one(resize_hw(x, h, w, Interp::Nearest(None))?)
    }))
}

fn resize_nearest_neighbor(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let (h, w) = (size(c, "target_size_height")?, size(c, "target_size_width")?);
    Ok(Box::new(move |a| one(resize_hw(a[x], h, w, Interp::Nearest(None))?)))
}

fn upsample_bilinear(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let (sh, sw) = (scale(c, "scale_factor_height")?, scale(c, "scale_factor_width")?);
    let align = c.opt_bool("align_corners")?.unwrap_or(true);
    let half = c.opt_bool("half_pixel_centers")?.unwrap_or(!align);
    let mode = match (align, half) {
        (true, false) => Sampling::StrictAlign,
        (false, true) => Sampling::Unalign,
        (false, false) => Sampling::Default,
        (true, true) => {
            return Err(c.unsupported("`half_pixel_centers` true with `align_corners` true (they exclude each other)"))
        }
    };
    Ok(Box::new(move |a| {
        let x = a[x];
        let r = x.rank().max(2);
        let (h, w) = (scaled(x.dims()[r - 2], sh)?, scaled(x.dims()[r - 1], sw)?);
        one(resize_hw(x, h, w, Interp::Linear(mode))?)
    }))
}

fn resize_bilinear(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let (h, w) = (size(c, "target_size_height")?, size(c, "target_size_width")?);
    let mode = sampling_of(c)?;
    Ok(Box::new(move |a| one(resize_hw(a[x], h, w, Interp::Linear(mode))?)))
}

/// iOS17 `resize`: the last `resized_dims` dims take their sizes from the
/// end of `shape` (a 0 keeps the input's size), linear or nearest.
fn resize(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let shape = c.tensor("shape")?;
    let k = c
        .opt_int("resized_dims")?
        .ok_or_else(|| c.error("required argument `resized_dims` is missing"))?;
    let mode = sampling_of(c)?;
    let interp = c.opt_string("interpolation_mode")?.unwrap_or_else(|| "LINEAR".into());
    let how = match interp.as_str() {
        "LINEAR" => Interp::Linear(mode),
        "NEAREST_NEIGHBOR" => Interp::Nearest(match mode {
            Sampling::Default => None,
            m => Some(m),
        }),
        other => return Err(c.unsupported(format!("`interpolation_mode` {other} (LINEAR or NEAREST_NEIGHBOR)"))),
    };
    if k < 0 {
        return Err(c.unsupported(format!("`resized_dims` {k}")));
    }
    let k = k as usize;
    Ok(Box::new(move |a| {
        let x = a[x];
        let sizes = a[shape].flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        if k > sizes.len() || sizes.len() > x.rank() {
            candle_core::bail!(
                "resized_dims {k} with a shape of {} values for an input of rank {}",
                sizes.len(),
                x.rank()
            )
        }
        let mut y = x.clone();
        for j in 0..k {
            let dim = x.rank() - k + j;
            let v = sizes[sizes.len() - k + j];
            if v < 0 {
                candle_core::bail!("shape value {v} for dim {dim}")
            }
            let n = if v == 0 { x.dims()[dim] } else { v as usize };
            if n != x.dims()[dim] {
                y = resize_dim(&y, dim, n, how)?;
            }
        }
        one(y)
    }))
}

fn crop(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let ch = c.ints("crop_height")?;
    let cw = c.ints("crop_width")?;
    if ch.len() != 2 || cw.len() != 2 || ch.iter().chain(&cw).any(|&v| v < 0) {
        return Err(c.unsupported(format!(
            "`crop_height` {ch:?} / `crop_width` {cw:?} (two non-negative amounts each)"
        )));
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        let r = x.rank();
        if r < 3 {
            candle_core::bail!("input of rank {r}; crop needs rank 3 or more")
        }
        let mut y = x.clone();
        for (dim, amt) in [(r - 2, &ch), (r - 1, &cw)] {
            let n = x.dims()[dim];
            let (b, e) = (amt[0] as usize, amt[1] as usize);
            if b + e >= n {
                candle_core::bail!("crop of {b} + {e} from a dim of {n}")
            }
            y = y.narrow(dim, b, n - b - e)?;
        }
        one(y.contiguous()?)
    }))
}

/// How `resample` maps a coordinate to pixel units (`n` pixels on the axis).
#[derive(Clone, Copy)]
enum Coords {
    Unnormalized,
    MinusOneToOne { align: bool },
    ZeroToOne { align: bool },
}

impl Coords {
    fn to_pixel(self, c: f64, n: usize) -> f64 {
        let n = n as f64;
        match self {
            Self::Unnormalized => c,
            Self::MinusOneToOne { align: true } => (c + 1.0) / 2.0 * (n - 1.0),
            Self::MinusOneToOne { align: false } => ((c + 1.0) * n - 1.0) / 2.0,
            Self::ZeroToOne { align: true } => c * (n - 1.0),
            Self::ZeroToOne { align: false } => c * n - 0.5,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Padding {
    Constant,
    Border,
    Reflection,
    Symmetric,
}

/// The pixel index `i` stands for on an axis of `n` pixels, or `None` for
/// the constant padding.
fn fetch_index(i: i64, n: usize, pad: Padding) -> Option<usize> {
    let n = n as i64;
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    Some(match pad {
        Padding::Constant => return None,
        Padding::Border => i.clamp(0, n - 1) as usize,
        Padding::Reflection => {
            if n == 1 {
                return Some(0);
            }
            let p = 2 * (n - 1);
            let m = i.rem_euclid(p);
            (if m < n { m } else { p - m }) as usize
        }
        Padding::Symmetric => {
            let p = 2 * n;
            let m = i.rem_euclid(p);
            (if m < n { m } else { p - 1 - m }) as usize
        }
    })
}

/// Sampling parameters shared by `resample` and `affine`.
#[derive(Clone, Copy)]
struct Sampler {
    bilinear: bool,
    padding: Padding,
    value: f64,
    coords: Coords,
}

impl Sampler {
    fn parse(c: &mut OpCtx) -> Result<Self> {
        let mode = c.opt_string("sampling_mode")?.unwrap_or_default();
        let bilinear = match mode.to_lowercase().as_str() {
            "bilinear" => true,
            "nearest" => false,
            _ => return Err(c.unsupported(format!("`sampling_mode` {mode} (bilinear or nearest)"))),
        };
        let pm = c.opt_string("padding_mode")?.unwrap_or_default();
        let padding = match pm.to_lowercase().as_str() {
            "constant" => Padding::Constant,
            "border" => Padding::Border,
            "reflection" => Padding::Reflection,
            "symmetric" => Padding::Symmetric,
            _ => {
                return Err(c.unsupported(format!(
                    "`padding_mode` {pm} (constant, border, reflection or symmetric)"
                )))
            }
        };
        let value = c.opt_float("padding_value")?.unwrap_or(0.0);
        let align = c.opt_bool("align_corners")?.unwrap_or(false);
        let cm = c.opt_string("coordinates_mode")?.unwrap_or_default();
        let coords = match cm.to_lowercase().as_str() {
            "unnormalized" => Coords::Unnormalized,
            "normalized_minus_one_to_one" => Coords::MinusOneToOne { align },
            "normalized_zero_to_one" => Coords::ZeroToOne { align },
            _ => {
                return Err(c.unsupported(format!(
                    "`coordinates_mode` {cm} (unnormalized, normalized_minus_one_to_one or normalized_zero_to_one)"
                )))
            }
        };
        Ok(Self {
            bilinear,
            padding,
            value,
            coords,
        })
    }

    /// The value of `plane` (`h × w`) at coordinates `(cx, cy)`.
    fn sample(&self, plane: &[f32], h: usize, w: usize, cx: f64, cy: f64) -> f64 {
        let (px, py) = (self.coords.to_pixel(cx, w), self.coords.to_pixel(cy, h));
        let at = |yi: i64, xi: i64| -> f64 {
            match (fetch_index(yi, h, self.padding), fetch_index(xi, w, self.padding)) {
                (Some(y), Some(x)) => plane[y * w + x] as f64,
                _ => self.value,
            }
        };
        if !px.is_finite() || !py.is_finite() {
            return f64::NAN;
        }
        if !self.bilinear {
            return at((py + 0.5).floor() as i64, (px + 0.5).floor() as i64);
        }
        let (x0, y0) = (px.floor(), py.floor());
        let (fx, fy) = (px - x0, py - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1))
    }
}

/// Samples every `[B, C]` plane of `x` at per-batch points `pts[b][k] =
/// (x, y)`, giving `[B, C, oh, ow]`. Costs `O(B·C·oh·ow)` samples.
fn sample_all(x: &Tensor, s: &Sampler, pts: &[Vec<(f64, f64)>], oh: usize, ow: usize) -> CResult<Tensor> {
    let (nb, nc, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        candle_core::bail!("input of shape {:?} has an empty spatial dim", x.dims())
    }
    check_elems(&[nb, nc, oh, ow], "sampled output")?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(nb * nc * oh * ow);
    for (b, bp) in pts.iter().enumerate().take(nb) {
        for ch in 0..nc {
            let plane = &xs[(b * nc + ch) * h * w..(b * nc + ch + 1) * h * w];
            out.extend(bp.iter().map(|&(cx, cy)| s.sample(plane, h, w, cx, cy) as f32));
        }
    }
    Tensor::from_vec(out, (nb, nc, oh, ow), x.device())?.to_dtype(x.dtype())
}

fn resample(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let coords = c.tensor("coordinates")?;
    let s = Sampler::parse(c)?;
    Ok(Box::new(move |a| {
        let (xt, ct) = (a[x], a[coords]);
        let (nb, _, _, _) = xt.dims4()?;
        let (cb, oh, ow, two) = ct.dims4()?;
        if cb != nb || two != 2 {
            candle_core::bail!(
                "coordinates of shape {:?} for an input of shape {:?}",
                ct.dims(),
                xt.dims()
            )
        }
        let cv = ct.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let pts: Vec<Vec<(f64, f64)>> = cv
            .chunks(oh * ow * 2)
            .map(|b| b.chunks(2).map(|p| (p[0], p[1])).collect())
            .collect();
        one(sample_all(xt, &s, &pts, oh, ow)?)
    }))
}

fn affine(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let m = c.tensor("transform_matrix")?;
    let (oh, ow) = (size(c, "output_height")?, size(c, "output_width")?);
    let s = Sampler::parse(c)?;
    let Coords::MinusOneToOne { align } = s.coords else {
        return Err(c.unsupported("`coordinates_mode` other than normalized_minus_one_to_one"));
    };
    Ok(Box::new(move |a| {
        let (xt, mt) = (a[x], a[m]);
        let (nb, _, _, _) = xt.dims4()?;
        let (d, six) = mt.dims2()?;
        if six != 6 || (d != 1 && d != nb) {
            candle_core::bail!("transform_matrix of shape {:?} for a batch of {nb}", mt.dims())
        }
        check_elems(&[nb, xt.dims()[1], oh, ow], "affine output")?;
        let mv = mt.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        // The output grid in the same normalised coordinates the sampler reads.
        let norm = |i: usize, n: usize| {
            let (i, n) = (i as f64, n as f64);
            if align {
                if n > 1.0 {
                    -1.0 + 2.0 * i / (n - 1.0)
                } else {
                    0.0
                }
            } else {
                (2.0 * i + 1.0) / n - 1.0
            }
        };
        let pts: Vec<Vec<(f64, f64)>> = (0..nb)
            .map(|b| {
                let t = &mv[(if d == 1 { 0 } else { b }) * 6..][..6];
                let mut v = Vec::with_capacity(oh * ow);
                for i in 0..oh {
                    for j in 0..ow {
                        let (u, w) = (norm(j, ow), norm(i, oh));
                        v.push((t[0] * u + t[1] * w + t[2], t[3] * u + t[4] * w + t[5]));
                    }
                }
                v
            })
            .collect();
        one(sample_all(xt, &s, &pts, oh, ow)?)
    }))
}

/// iOS15/16 `roi` `[N, 1, 4 or 5, 1, 1]` (output `[N, B, C, h, w]`, or
/// `[N, 1, C, h, w]` with a batch index first), or iOS17 `boxes` `[N, 4]`
/// with `box_indices` (output `[N, C, h, w]`). Costs `O(N·C·h·w)`.
fn crop_resize(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let roi = c.opt_tensor("roi")?;
    let boxes = c.opt_tensor("boxes")?;
    let indices = c.opt_tensor("box_indices")?;
    let (th, tw) = (
        c.opt_int("target_height")?.unwrap_or(1),
        c.opt_int("target_width")?.unwrap_or(1),
    );
    if th < 1 || tw < 1 {
        return Err(c.unsupported(format!("`target_height` {th} / `target_width` {tw} (positive sizes)")));
    }
    let (th, tw) = (th as usize, tw as usize);
    let normalized = c.opt_bool("normalized_coordinates")?.unwrap_or(false);
    let scale = c.opt_float("spatial_scale")?.unwrap_or(1.0);
    let pad_value = c.opt_float("pad_value")?.unwrap_or(0.0);
    let bmode = c
        .opt_string("box_coordinate_mode")?
        .unwrap_or_else(|| "CORNERS_HEIGHT_FIRST".into());
    let order: fn([f64; 4]) -> [f64; 4] = match bmode.as_str() {
        "CORNERS_HEIGHT_FIRST" => |b| b,
        "CORNERS_WIDTH_FIRST" => |b| [b[1], b[0], b[3], b[2]],
        "CENTER_SIZE_HEIGHT_FIRST" => |b| [b[0] - b[2] / 2.0, b[1] - b[3] / 2.0, b[0] + b[2] / 2.0, b[1] + b[3] / 2.0],
        "CENTER_SIZE_WIDTH_FIRST" => |b| [b[1] - b[3] / 2.0, b[0] - b[2] / 2.0, b[1] + b[3] / 2.0, b[0] + b[2] / 2.0],
        other => {
            return Err(c.unsupported(format!(
                "`box_coordinate_mode` {other} (CORNERS_HEIGHT_FIRST, CORNERS_WIDTH_FIRST, CENTER_SIZE_HEIGHT_FIRST or CENTER_SIZE_WIDTH_FIRST)"
            )))
        }
    };
    let mode = c.opt_string("sampling_mode")?.unwrap_or_else(|| "DEFAULT".into());
    let centre_of_one = match mode.as_str() {
        "ALIGN_CORNERS" => true,
        "STRICT_ALIGN_CORNERS" => false,
        other => {
            return Err(c.unsupported(format!(
                "`sampling_mode` {other} (crop_resize runs ALIGN_CORNERS and STRICT_ALIGN_CORNERS)"
            )))
        }
    };
    let Some(bx) = roi.or(boxes) else {
        return Err(c.error("required argument `boxes` (or `roi`) is missing"));
    };
    let legacy = roi.is_some();
    Ok(Box::new(move |a| {
        let xt = a[x];
        let (nb, nc, h, w) = xt.dims4()?;
        if h == 0 || w == 0 {
            candle_core::bail!("input of shape {:?} has an empty spatial dim", xt.dims())
        }
        let bv = a[bx].to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        // (image index or None for every image, [h0, w0, h1, w1]) per box.
        let mut list: Vec<(Option<usize>, [f64; 4])> = Vec::new();
        let index_ok = |v: f64| -> CResult<usize> {
            if v < 0.0 || v as usize >= nb {
                candle_core::bail!("box index {v} outside a batch of {nb}")
            }
            Ok(v as usize)
        };
        if legacy {
            let d = a[bx].dims();
            let k = if d.len() == 5 { d[2] } else { 0 };
            if k != 4 && k != 5 {
                candle_core::bail!("roi of shape {d:?}; expected [N, 1, 4 or 5, 1, 1]")
            }
            for r in bv.chunks(k) {
                let (idx, b) = if k == 5 {
                    (Some(index_ok(r[0])?), &r[1..])
                } else {
                    (None, r)
                };
                list.push((idx, [b[0], b[1], b[2], b[3]]));
            }
        } else {
            let (n, four) = a[bx].dims2()?;
            if four != 4 {
                candle_core::bail!("boxes of shape {:?}; expected [N, 4]", a[bx].dims())
            }
            let idx: Vec<f64> = match indices {
                Some(i) => a[i].to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
                None => (0..n).map(|v| v as f64).collect(),
            };
            if idx.len() != n {
                candle_core::bail!("{} box indices for {n} boxes", idx.len())
            }
            for (r, &i) in bv.chunks(4).zip(&idx) {
                list.push((Some(index_ok(i)?), [r[0], r[1], r[2], r[3]]));
            }
        }
        let crops_total = list
            .iter()
            .map(|(i, _)| if i.is_some() { 1 } else { nb })
            .sum::<usize>();
        check_elems(&[crops_total, nc, th, tw], "crop_resize output")?;
        let xs = xt.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let points = |start: f64, end: f64, n_out: usize| -> Vec<f64> {
            (0..n_out)
                .map(|i| match n_out {
                    1 if centre_of_one => (start + end) / 2.0,
                    1 => start,
                    _ => start + i as f64 * (end - start) / (n_out - 1) as f64,
                })
                .collect()
        };
        let mut out = Vec::new();
        let mut crops = 0usize;
        for (idx, raw) in &list {
            let mut b = order(*raw);
            if normalized {
                b = [
                    b[0] * (h - 1) as f64,
                    b[1] * (w - 1) as f64,
                    b[2] * (h - 1) as f64,
                    b[3] * (w - 1) as f64,
                ];
            }
            let b = b.map(|v| v * scale);
            let (ys, xs_) = (points(b[0], b[2], th), points(b[1], b[3], tw));
            let images: Vec<usize> = match idx {
                Some(i) => vec![*i],
                None => (0..nb).collect(),
            };
            for img in images {
                crops += 1;
                for ch in 0..nc {
                    let plane = &xs[(img * nc + ch) * h * w..][..h * w];
                    for &py in &ys {
                        for &px in &xs_ {
                            let inside = (0.0..=(h - 1) as f64).contains(&py) && (0.0..=(w - 1) as f64).contains(&px);
                            if !inside {
                                out.push(pad_value as f32);
                                continue;
                            }
                            let (y0, x0) = (py.floor() as usize, px.floor() as usize);
                            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                            let (fy, fx) = (py - y0 as f64, px - x0 as f64);
                            let at = |y: usize, x: usize| plane[y * w + x] as f64;
                            let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x1))
                                + fy * ((1.0 - fx) * at(y1, x0) + fx * at(y1, x1));
                            out.push(v as f32);
                        }
                    }
                }
            }
        }
        let shape: Vec<usize> = if !legacy {
            vec![crops, nc, th, tw]
        } else {
            let per = if list.iter().all(|(i, _)| i.is_some()) { 1 } else { nb };
            vec![list.len(), per, nc, th, tw]
        };
        one(Tensor::from_vec(out, shape, xt.device())?.to_dtype(xt.dtype())?)
    }))
}

#[cfg(test)]
mod tests {
    use super::{nearest_hw_f32, resize_hw, Interp, Sampling};
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn the_one_pass_nearest_resize_reads_the_input_pixel_each_output_names() {
        // Odd sizes; up by integer and fractional factors, down, and a mode with its own grid.
        let (ih, iw) = (5, 7);
        let x = Tensor::arange(0f32, (2 * 3 * ih * iw) as f32, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, ih, iw))
            .unwrap();
        for (h, w, mode) in [
            (10, 14, None),
            (15, 21, None),
            (7, 9, None),
            (3, 4, None),
            (1, 1, None),
            (8, 11, Some(Sampling::Unalign)),
            (8, 11, Some(Sampling::Align)),
        ] {
            let got = nearest_hw_f32(&x, h, w, mode).unwrap().unwrap();
            assert_eq!(got.dims(), &[2, 3, h, w]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            // x's value is its flat index: the pixel read is `iy · iw + ix` in plane p.
            let pick = |i: usize, n_in: usize, n_out: usize| match mode {
                None => i * n_in / n_out,
                Some(m) => ((m.point(i, n_in, n_out) + 0.5).floor() as usize).min(n_in - 1),
            };
            let mut want = Vec::new();
            for p in 0..6 {
                for oy in 0..h {
                    for ox in 0..w {
                        want.push((p * ih * iw + pick(oy, ih, h) * iw + pick(ox, iw, w)) as f32);
                    }
                }
            }
            assert_eq!(got, want, "{h}×{w} {mode:?}");
            // The general path (two index_selects) agrees: f16 takes it.
            let general = resize_hw(&x.to_dtype(DType::F16).unwrap(), h, w, Interp::Nearest(mode)).unwrap();
            let general: Vec<f32> = general
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want16: Vec<f32> = want.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            assert_eq!(general, want16, "{h}×{w} {mode:?} general");
        }
        // Not contiguous: left to the general path.
        assert!(nearest_hw_f32(&x.transpose(2, 3).unwrap(), 4, 4, None)
            .unwrap()
            .is_none());
    }

    /// The grid points `resize_bilinear`'s docstring lists for `Xin = 2`.
    #[test]
    fn sampling_points_match_the_definitions_examples() {
        let cases: [(Sampling, usize, &[f64]); 8] = [
            (Sampling::Unalign, 5, &[0., 0.1, 0.5, 0.9, 1.]),
            (Sampling::StrictAlign, 5, &[0., 0.25, 0.5, 0.75, 1.]),
            (Sampling::Default, 5, &[0., 0.4, 0.8, 1., 1.]),
            (Sampling::Offset, 5, &[0.1, 0.3, 0.5, 0.7, 0.9]),
            (Sampling::Unalign, 6, &[0., 0., 0.33, 0.67, 1., 1.]),
            (Sampling::Align, 6, &[0., 0.2, 0.4, 0.6, 0.8, 1.]),
            (Sampling::Default, 6, &[0., 0.33, 0.67, 1., 1., 1.]),
            (Sampling::Offset, 6, &[0.08, 0.25, 0.42, 0.58, 0.75, 0.92]),
        ];
        for (mode, n_out, want) in cases {
            for (i, &w) in want.iter().enumerate() {
                let got = mode.point(i, 2, n_out);
                // The docstring rounds to two decimals.
                assert!(
                    (got - w).abs() < 0.005 + 1e-12,
                    "{mode:?} out {n_out} point {i}: {got}, listed {w}"
                );
            }
        }
        assert_eq!(Sampling::Align.point(0, 5, 1), 2.0);
        assert_eq!(Sampling::StrictAlign.point(0, 5, 1), 0.0);
    }
}
