//! Image resizing (coremltools `image_resizing.py`): `upsample_nearest_neighbor`,
//! `resize_nearest_neighbor`, `upsample_bilinear`, `resize_bilinear`,
//! `resize` (iOS17), `crop`.
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

use candle_core::{DType, Tensor};

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
    if n_in == 0 || n_out == 0 {
        let mut shape = x.dims().to_vec();
        shape[dim] = n_out;
        return Tensor::zeros(shape, x.dtype(), x.device());
    }
    match how {
        Interp::Nearest(mode) => {
            let idx: Vec<u32> = (0..n_out)
                .map(|i| {
                    let src = match mode {
                        None => i * n_in / n_out,
                        Some(m) => (m.point(i, n_in, n_out) + 0.5).floor() as usize,
                    };
                    src.min(n_in - 1) as u32
                })
                .collect();
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
fn resize_hw(x: &Tensor, h: usize, w: usize, how: Interp) -> CResult<Tensor> {
    let r = x.rank();
    if r < 3 {
        candle_core::bail!("input of rank {r}; image resizing needs rank 3 or more")
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
