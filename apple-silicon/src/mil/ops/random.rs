//! Random sampling (coremltools `ops/defs/iOS15/random.py`).
//!
//! Conventions: samples come from our own generator (SplitMix64, Box–Muller
//! for normals), seeded by the op's `seed`; Apple's generator is not
//! public, so values never match Core ML's, only their distribution does.
//! A given seed gives the same values on every run and every machine;
//! `seed` = -1 (the default, "unseeded" in Core ML) uses the fixed seed 0,
//! so a plan is reproducible too (an op whose inputs are all constants is
//! sampled once, at plan build). The output dtype is that of the op's float
//! parameter (`prob`, `mean`, `low`; fp32 by default) or of `x`
//! (`random_categorical`, whose samples are category indices stored as
//! floats). `shape` may be a constant or a run-time int32 tensor; an output
//! over [`MAX_SAMPLES`] elements is refused.

use candle_core::{DType as CDType, Device, Tensor};

use super::{one, Builder, CResult};
use crate::error::Result;
use crate::mil::{compute_dtype, Kernel, OpCtx};
use crate::tensor::checked_numel;

/// Largest number of samples one op may draw (2^28).
pub(crate) const MAX_SAMPLES: usize = 1 << 28;

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "random_uniform" => |c| distribution(c, ("low", 0.0), ("high", 1.0), |r, lo, hi| lo + (hi - lo) * r.unit()),
        "random_normal" => |c| distribution(c, ("mean", 0.0), ("stddev", 1.0), |r, m, s| m + s * r.normal()),
        "random_bernoulli" => |c| {
            distribution(
                c,
                ("prob", 0.5),
                ("", 0.0),
                |r, p, _| if r.unit() < p { 1.0 } else { 0.0 },
            )
        },
        "random_categorical" => categorical,
        _ => return None,
    })
}

/// SplitMix64: a small, fast, well-mixed 64-bit generator.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed` (-1, Core ML's "unseeded", is seed 0).
    pub(crate) fn new(seed: i64) -> Rng {
        Rng(if seed == -1 { 0 } else { seed as u64 })
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller, one value per pair of draws).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // in (0, 1]: the log is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The output shape from a run-time `shape` tensor or a constant one.
enum ShapeArg {
    Const(Vec<usize>),
    Runtime(usize),
}

fn checked_shape(v: &[i64]) -> std::result::Result<Vec<usize>, String> {
    let dims: Vec<usize> = v
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("shape {v:?} has a negative dimension")))
        .collect::<std::result::Result<_, _>>()?;
    match checked_numel(&dims) {
        Some(n) if n <= MAX_SAMPLES => Ok(dims),
        _ => Err(format!("shape {v:?} holds more than {MAX_SAMPLES} samples")),
    }
}

fn shape_arg(c: &mut OpCtx) -> Result<ShapeArg> {
    if c.is_runtime("shape")? {
        return Ok(ShapeArg::Runtime(c.tensor("shape")?));
    }
    let v = c.ints("shape")?;
    checked_shape(&v).map(ShapeArg::Const).map_err(|e| c.error(e))
}

/// A sampler over `shape` of `f(rng, p1, p2)`, the two float parameters
/// read with their defaults (`p2` unnamed: unused).
fn distribution(
    c: &mut OpCtx,
    p1: (&'static str, f64),
    p2: (&'static str, f64),
    f: fn(&mut Rng, f64, f64) -> f64,
) -> Result<Kernel> {
    let shape = shape_arg(c)?;
    let seed = c.opt_int("seed")?.unwrap_or(-1);
    let first = c.opt_const(p1.0)?;
    let out_dt = first
        .as_ref()
        .and_then(|d| compute_dtype(d.dtype, c.policy))
        .unwrap_or(CDType::F32);
    let a = match first {
        Some(d) => d.data.to_f64().and_then(|v| v.first().copied()).unwrap_or(p1.1),
        None => p1.1,
    };
    let b = if p2.0.is_empty() {
        p2.1
    } else {
        c.opt_float(p2.0)?.unwrap_or(p2.1)
    };
    Ok(Box::new(move |args| {
        let dims = match &shape {
            ShapeArg::Const(d) => d.clone(),
            ShapeArg::Runtime(i) => {
                let v: Vec<i64> = args[*i].to_dtype(CDType::I64)?.flatten_all()?.to_vec1()?;
                checked_shape(&v).map_err(candle_core::Error::Msg)?
            }
        };
        let n: usize = dims.iter().product();
        let mut rng = Rng::new(seed);
        let v: Vec<f32> = (0..n).map(|_| f(&mut rng, a, b) as f32).collect();
        one(Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(out_dt)?)
    }))
}

fn categorical(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let mode = c.opt_string("mode")?.unwrap_or_else(|| "logits".into());
    let probs = match mode.as_str() {
        "logits" => false,
        "probs" => true,
        other => return Err(c.unsupported(format!("parameter `mode` = `{other}`; expected logits or probs"))),
    };
    let size = c.opt_int("size")?.unwrap_or(1);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s > 0 && s <= MAX_SAMPLES)
        .ok_or_else(|| c.error(format!("`size` {size} is not a positive sample count")))?;
    let seed = c.opt_int("seed")?.unwrap_or(-1);
    Ok(Box::new(move |a| one(sample_categorical(a[x], probs, size, seed)?)))
}

fn sample_categorical(x: &Tensor, probs: bool, size: usize, seed: i64) -> CResult<Tensor> {
    let dims = x.dims();
    let Some((&k, batch)) = dims.split_last() else {
        candle_core::bail!("`x` is a scalar; expected [..., categories]")
    };
    if k == 0 {
        candle_core::bail!("`x` {dims:?} has no categories")
    }
    let rows: usize = batch.iter().product();
    let total = rows
        .checked_mul(size)
        .filter(|&n| n <= MAX_SAMPLES)
        .ok_or_else(|| candle_core::Error::Msg(format!("{rows} x {size} samples exceed {MAX_SAMPLES}")))?;
    let v: Vec<f64> = x.to_dtype(CDType::F64)?.flatten_all()?.to_vec1()?;
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(total);
    let mut cdf = vec![0f64; k];
    for row in v.chunks(k) {
        // Weights: probs as given (logits = log probs), or softmax of the logits.
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut acc = 0.0;
        for (j, &w) in row.iter().enumerate() {
            acc += if probs { w.max(0.0) } else { (w - m).exp() };
            cdf[j] = acc;
        }
        for _ in 0..size {
            let u = rng.unit() * acc;
            let j = cdf.iter().position(|&c| u < c).unwrap_or(k - 1);
            out.push(j as f32);
        }
    }
    let mut oshape = batch.to_vec();
    oshape.push(size);
    Tensor::from_vec(out, oshape, x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_the_samples_and_seeds_differ() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..64).map(|_| r.unit()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // Core ML's "unseeded" -1 is our fixed seed 0.
        assert_eq!(draw(-1), draw(0));
        assert!(draw(3).iter().all(|&u| (0.0..1.0).contains(&u)));
    }

    #[test]
    fn bad_shapes_are_refused_before_allocating() {
        assert!(checked_shape(&[2, -1]).unwrap_err().contains("negative"));
        assert!(checked_shape(&[1 << 20, 1 << 20]).unwrap_err().contains("more than"));
        assert!(checked_shape(&[i64::MAX, i64::MAX]).unwrap_err().contains("more than"));
        assert_eq!(checked_shape(&[3, 0]).unwrap(), vec![3, 0]);
    }
}
