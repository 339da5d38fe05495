//! Vectorised f32 transcendental functions: `exp`, `erf`, `tanh`,
//! `sigmoid` and the activations built on them (`silu`, the three GELUs),
//! as branchless scalar functions, plus [`apply_into`], [`apply_with`],
//! [`apply_zip`], [`map_into`] and [`softmax`], which apply them over slices
//! with the widest vector unit the CPU has.
//!
//! Why: the interpreter's activations and softmax called libm per element
//! (glibc's `expf` takes a slow path for every underflowing input, which
//! softmax over masked scores hits on most of a row; `erff` does not
//! vectorise at all). Here every function is range reduction plus a
//! polynomial (coefficients fitted for this module, least squares with
//! Lawson reweighting, on Chebyshev nodes) and selects instead of branches,
//! so a loop over a slice compiles to vector code with no slow path: ±inf,
//! NaN, -0.0, denormal inputs and results that overflow or underflow take
//! the same instructions as any other value.
//!
//! Every product and sum is either written separately (Rust never fuses
//! them into FMAs on its own) or as an explicit fused multiply-add
//! (`mul_add`, one rounding on every target: `exp`'s reduction and
//! polynomial, where it halves the operations that set these loops' time),
//! so the AVX-512, AVX2 and portable builds of the slice functions give the
//! same bits as the scalar function: a fused epilogue computing `f(v)` one
//! value at a time matches the unfused op exactly. The portable build on an
//! x86 CPU without FMA (neither AVX2 nor AVX-512) computes `mul_add` in
//! software, slower but to the same bits; aarch64 has it in hardware.
//!
//! Accuracy, measured and asserted by the tests below against libm's f64
//! functions over every 127th f32 bit pattern (all exponents, both signs),
//! a dense grid over [-20, 20] and the edges; ulps of the exact result, of
//! 2⁻¹⁴⁹ for denormal results:
//!
//! | function | max error |
//! |---|---|
//! | `exp` | 1.05 ulp |
//! | `erf`, `tanh` | 1.25, 1.30 ulp |
//! | `sigmoid` | 2.71 ulp |
//! | `silu` | 3.5 ulp |
//! | `gelu_tanh`, `gelu_sigmoid`, `gelu_erf`, x ≥ -3 | 17.1, 7.1, 16.5 ulp |
//! | the same, x < -3 | 184, 79, 44 ulp |
//!
//! The GELUs' larger figures come from their conditioning, not the
//! polynomials: the argument of the exponential (a cubic of x, x², 1.702 x)
//! is rounded to f32 before the exponential magnifies its error by up to
//! its own size (e.g. 70 at x = -9 for `gelu_tanh`, relative error 2e-5
//! there). Results under 2⁻¹⁰⁰ in magnitude (a denormal intermediate) are
//! within 2⁻¹⁰⁰; `gelu_erf` is 0 for x < -5.55, where f32's erf has
//! reached -1 (as in the f32 definition `0.5·x·(1 + erf(x/√2))`), and so
//! within 2⁻²³ of the exact value there.

/// `dst[i] = f(src[i])` in vector registers: an AVX-512 or AVX2 build picked
/// at run time on x86-64, plain code (which the compiler vectorises for the
/// target's baseline) elsewhere. Panics if the lengths differ (a caller's
/// bug). Costs one pass over each slice. `f` must be branch-free like this
/// module's functions; pass a function item (or a small closure): the
/// compiler may leave a large closure out of line, one call per element.
#[inline]
pub fn map_into(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    assert_eq!(src.len(), dst.len(), "map_into: source and destination lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx512() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { x86::map_into_avx512(src, dst, f) };
        }
        if x86::has_avx2() {
            // SAFETY: as above.
            return unsafe { x86::map_into_avx2(src, dst, f) };
        }
    }
    map_into_plain(src, dst, f)
}

/// The functions of this module, for the slice functions [`apply_into`],
/// [`apply_with`] and [`apply_zip`]: each compiles to its own vector loop
/// with the function inlined (a generic closure of this size may stay a call
/// per element).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fun {
    Exp,
    Erf,
    Tanh,
    Sigmoid,
    Silu,
    GeluErf,
    GeluTanh,
    GeluSigmoid,
}

/// `$body` with `$f` bound to `$fun`'s function item, one match arm per
/// function (so that each arm's loop calls its function directly).
macro_rules! each_fun {
    ($fun:expr, $f:ident => $body:expr) => {
        match $fun {
            Fun::Exp => {
                let $f = exp;
                $body
            }
            Fun::Erf => {
                let $f = erf;
                $body
            }
            Fun::Tanh => {
                let $f = tanh;
                $body
            }
            Fun::Sigmoid => {
                let $f = sigmoid;
                $body
            }
            Fun::Silu => {
                let $f = silu;
                $body
            }
            Fun::GeluErf => {
                let $f = gelu_erf;
                $body
            }
            Fun::GeluTanh => {
                let $f = gelu_tanh;
                $body
            }
            Fun::GeluSigmoid => {
                let $f = gelu_sigmoid;
                $body
            }
        }
    };
}

impl Fun {
    /// The function of one value (the same bits as the slice functions).
    #[inline(always)]
    pub fn f(self, x: f32) -> f32 {
        each_fun!(self, f => f(x))
    }
}

/// Dispatches `$plain(args)` to its AVX-512 or AVX2 build (`$avx512`,
/// `$avx2` in `x86`) when the CPU has one.
macro_rules! dispatch {
    ($plain:ident, $avx512:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx512() {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { x86::$avx512($($arg),*) };
            }
            if x86::has_avx2() {
                // SAFETY: as above.
                return unsafe { x86::$avx2($($arg),*) };
            }
        }
        $plain($($arg),*)
    }};
}

/// `dst[i] = fun(src[i])`, vectorised like [`map_into`]. Panics if the
/// lengths differ. Costs one pass over each slice.
#[inline]
pub fn apply_into(fun: Fun, src: &[f32], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "apply_into: source and destination lengths differ"
    );
    dispatch!(apply_into_plain, apply_into_avx512, apply_into_avx2, fun, src, dst)
}

/// `xs[i] = fun(xs[i] + c)` (an activation after one bias), vectorised like
/// [`map_into`]. Costs one pass.
#[inline]
pub fn apply_with(fun: Fun, xs: &mut [f32], c: f32) {
    dispatch!(apply_with_plain, apply_with_avx512, apply_with_avx2, fun, xs, c)
}

/// `xs[i] = fun(xs[i] + ys[i])` (an activation after a bias per column),
/// vectorised like [`map_into`]. Panics if the lengths differ. Costs one
/// pass over each slice.
#[inline]
pub fn apply_zip(fun: Fun, xs: &mut [f32], ys: &[f32]) {
    assert_eq!(xs.len(), ys.len(), "apply_zip: the slices' lengths differ");
    dispatch!(apply_zip_plain, apply_zip_avx512, apply_zip_avx2, fun, xs, ys)
}

#[inline(always)]
fn apply_into_plain(fun: Fun, src: &[f32], dst: &mut [f32]) {
    each_fun!(fun, f => for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    })
}

/// `acc[i] = max(acc[i], xs[i])`, NaN winning (numpy's `maximum`; the
/// unfused `max_pool`'s rule), vectorised like [`map_into`]. Panics if the
/// lengths differ. Costs one pass over each slice.
#[inline]
pub fn max_into(acc: &mut [f32], xs: &[f32]) {
    assert_eq!(acc.len(), xs.len(), "max_into: the slices' lengths differ");
    dispatch!(max_into_plain, max_into_avx512, max_into_avx2, acc, xs)
}

/// The larger of `a` and `b`, NaN winning from either side (numpy's
/// `maximum`; `f32::max` would drop it): the rule [`max_into`] applies.
#[inline(always)]
pub fn nan_max(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}

#[inline(always)]
fn max_into_plain(acc: &mut [f32], xs: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(xs) {
        *a = nan_max(*a, x);
    }
}

#[inline(always)]
fn apply_with_plain(fun: Fun, xs: &mut [f32], c: f32) {
    each_fun!(fun, f => for x in xs.iter_mut() {
        *x = f(*x + c);
    })
}

#[inline(always)]
fn apply_zip_plain(fun: Fun, xs: &mut [f32], ys: &[f32]) {
    each_fun!(fun, f => for (x, &y) in xs.iter_mut().zip(ys) {
        *x = f(*x + y);
    })
}

/// Softmax of one row: `dst[i] = e^(src[i] - max) / Σ e^(src[j] - max)`,
/// vectorised like [`map_into`]. A row holding NaN or +inf, or only -inf, gives
/// NaN (as numpy and torch do). Panics if the lengths differ. Costs one
/// [`exp`] per element and three more passes over the row (max, sum, scale),
/// all in cache for rows up to a few thousand elements.
#[inline]
pub fn softmax(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "softmax: source and destination lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if x86::has_avx512() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { x86::softmax_avx512(src, dst) };
        }
        if x86::has_avx2() {
            // SAFETY: as above.
            return unsafe { x86::softmax_avx2(src, dst) };
        }
    }
    softmax_plain(src, dst)
}

/// Lanes of the max and sum reductions: independent accumulators, so that
/// the loops vectorise (a single float accumulator fixes the order).
const LANES: usize = 16;

#[inline(always)]
fn softmax_plain(src: &[f32], dst: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = src.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in m.iter().chain(chunks.remainder()) {
        // NaN never wins here; it turns its row into NaN through the sum.
        max = if v > max { v } else { max };
    }
    map_into_plain(src, dst, |v| exp(v - max));
    let mut s = [0f32; LANES];
    let mut chunks = dst.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            s[i] += c[i];
        }
    }
    let sum = s.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for d in dst.iter_mut() {
        *d *= inv;
    }
}

#[inline(always)]
fn map_into_plain(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::sync::atomic::{AtomicU8, Ordering};

    /// 0 = not probed yet, 1 = plain, 2 = AVX2+FMA, 3 = AVX-512F.
    static LEVEL: AtomicU8 = AtomicU8::new(0);

    #[inline(always)]
    fn level() -> u8 {
        match LEVEL.load(Ordering::Relaxed) {
            0 => {
                let l = if std::arch::is_x86_feature_detected!("avx512f") {
                    3
                } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    2
                } else {
                    1
                };
                LEVEL.store(l, Ordering::Relaxed);
                l
            }
            l => l,
        }
    }

    #[inline(always)]
    pub fn has_avx512() -> bool {
        level() == 3
    }

    #[inline(always)]
    pub fn has_avx2() -> bool {
        level() == 2
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn map_into_avx512(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
        super::map_into_plain(src, dst, f)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn softmax_avx512(src: &[f32], dst: &mut [f32]) {
        super::softmax_plain(src, dst)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_avx2(src: &[f32], dst: &mut [f32]) {
        super::softmax_plain(src, dst)
    }

    /// The AVX-512 and AVX2 builds of `$plain(args)`.
    macro_rules! builds {
        ($plain:ident, $avx512:ident, $avx2:ident, $($arg:ident: $t:ty),*) => {
            #[target_feature(enable = "avx512f,avx2,fma")]
            pub unsafe fn $avx512($($arg: $t),*) {
                super::$plain($($arg),*)
            }

            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn $avx2($($arg: $t),*) {
                super::$plain($($arg),*)
            }
        };
    }
    use super::Fun;
    builds!(apply_into_plain, apply_into_avx512, apply_into_avx2, fun: Fun, src: &[f32], dst: &mut [f32]);
    builds!(apply_with_plain, apply_with_avx512, apply_with_avx2, fun: Fun, xs: &mut [f32], c: f32);
    builds!(apply_zip_plain, apply_zip_avx512, apply_zip_avx2, fun: Fun, xs: &mut [f32], ys: &[f32]);
    builds!(max_into_plain, max_into_avx512, max_into_avx2, acc: &mut [f32], xs: &[f32]);

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn map_into_avx2(src: &[f32], dst: &mut [f32], f: impl Fn(f32) -> f32) {
        super::map_into_plain(src, dst, f)
    }
}

/// `v < lo ? lo : v > hi ? hi : v`; NaN passes through (unlike `f32::clamp`'s
/// callers expect, and without its branch on NaN).
#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// 2^k for an integer-valued `k` in [-150, 128] as two normal factors
/// (their product may be a denormal or overflow; each factor never is).
/// `kf` is `k + MAGIC`, whose low bits hold k.
#[inline(always)]
fn pow2_split(kf: f32) -> (f32, f32) {
    let k = (kf.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let k1 = k >> 1;
    let k2 = k.wrapping_sub(k1);
    let s1 = f32::from_bits((k1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((k2.wrapping_add(127) as u32) << 23);
    (s1, s2)
}

/// 1.5 · 2²³: adding it rounds a float of magnitude < 2²² to an integer (to
/// nearest) and leaves that integer in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// e^x. Max error 1.05 ulp. Overflows to +inf above
/// 88.72284, underflows through the denormals to +0 below -103.97; NaN
/// stays NaN. Costs ~12 vector operations (seven of them fused
/// multiply-adds), no branches, no table.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = HI + LO with HI's 16 significant bits: k·HI is exact for |k| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // (e^r - 1 - r) / r² on [-ln2/2, ln2/2], relative error 1.2e-7 (of a term ≤ 0.06 of the result).
    const C: [f32; 5] = [0.5, 0.166_665_78, 0.041_666_854, 0.008_363_141, 0.001_390_126_9];
    let xc = clamp(x, -104.0, 89.0);
    // Fused multiply-adds (exact on every target: `mul_add` is IEEE fma):
    // half the operations of separate products and sums, which set the
    // time of these loops, and one rounding each instead of two.
    let kf = xc.mul_add(LOG2E, MAGIC);
    let k = kf - MAGIC;
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, xc));
    let q = C[4].mul_add(r, C[3]).mul_add(r, C[2]).mul_add(r, C[1]).mul_add(r, C[0]);
    let p = q.mul_add(r * r, r) + 1.0;
    let (s1, s2) = pow2_split(kf);
    (p * s1) * s2
}

/// erf(x) for 0 ≤ a < 0.921875: a · P(a²), relative error 4e-10 before
/// rounding, evaluated as a + a · (P(a²) - 1) so that the rounding of the
/// polynomial stays in a term < 0.13 a.
#[inline(always)]
fn erf_small(a: f32) -> f32 {
    const P: [f32; 7] = [
        0.128_379_17,
        -0.376_126_35,
        0.112_836_96,
        -0.026_859_403,
        0.005_201_042,
        -0.000_814_279_5,
        8.370_427e-5,
    ];
    let t = a * a;
    let r = ((((P[6] * t + P[5]) * t + P[4]) * t + P[3]) * t + P[2]) * t + P[1];
    a + a * (r * t + P[0])
}

/// Where erf rounds to 1 in f32 (erfc(3.925) = 2.84e-8 < 2⁻²⁵).
const ERF_ONE: f32 = 3.925;
/// Below this |z| erf uses its odd polynomial, above it erfc's exponential form.
const ERF_SPLIT: f32 = 0.921_875;

/// erfc(a) for 0.921875 ≤ a ≤ 3.925 (larger `a` are clamped to 3.925):
/// exp(-a² + M(a)), with M(a) = ln erfc(a) + a² fitted in a - 2.42 to an
/// absolute error of 8.5e-9.
#[inline(always)]
fn erfc_tail(a: f32) -> f32 {
    const MID: f32 = 2.423_437_5;
    const M: [f32; 9] = [
        -1.529_479_4,
        -0.361_466_88,
        0.058_678_467,
        -0.011_546_872,
        0.002_333_104_8,
        -0.000_457_442_63,
        8.472_261e-5,
        -1.427_935_9e-5,
        1.630_671_1e-6,
    ];
    let a = clamp(a, ERF_SPLIT, ERF_ONE);
    let w = a - MID;
    let m = (((((((M[8] * w + M[7]) * w + M[6]) * w + M[5]) * w + M[4]) * w + M[3]) * w + M[2]) * w + M[1]) * w + M[0];
    exp(m - a * a)
}

/// erf(x). Max error 1.25 ulp; ±1 for |x| ≥ 3.925 and ±inf, NaN stays NaN,
/// erf(-0) = -0. Costs one `exp` and two short polynomials.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let small = erf_small(a);
    let large = 1.0 - erfc_tail(a);
    let y = if a < ERF_SPLIT { small } else { large };
    y.copysign(x)
}

/// tanh(x). Max error 1.30 ulp; ±1 for |x| ≥ 9.1 and ±inf, NaN stays NaN,
/// tanh(-0) = -0. Costs one `exp`, one division and a short polynomial.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    // (tanh(a)/a - 1) / a² on [0, 0.625] in t = a², relative error 5e-9.
    const Q: [f32; 6] = [
        -0.333_333_34,
        0.133_333_04,
        -0.053_959_29,
        0.021_769_078,
        -0.008_344_363,
        0.002_293_140_4,
    ];
    let a = x.abs();
    let t = a * a;
    let q = ((((Q[5] * t + Q[4]) * t + Q[3]) * t + Q[2]) * t + Q[1]) * t + Q[0];
    let small = a + a * (t * q);
    let e = exp(2.0 * clamp(a, 0.0, 9.1));
    let large = 1.0 - 2.0 / (e + 1.0);
    let y = if a < 0.625 { small } else { large };
    y.copysign(x)
}

/// 1 / (1 + e^-x). Max error 2.71 ulp, accurate in relative terms for very
/// negative x too (e^x / (1 + e^x) there, down to the denormals); 0 at
/// -inf, 1 at +inf, NaN stays NaN. Costs one `exp` and one division.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 {
        r
    } else {
        e * r
    }
}

/// x · sigmoid(x) (SiLU, swish). Max error 3.5 ulp; -0 at -inf (the limit).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let y = x * sigmoid(x);
    if x == f32::NEG_INFINITY {
        -0.0
    } else {
        y
    }
}

/// 0.5 · x · (1 + erf(x / √2)), GELU's exact form, computed as
/// 0.5 · x · erfc(-x / √2) so that negative x do not cancel. Max error
/// 16.5 ulp for x ≥ -3, 44 ulp down to x ≈ -5.55, where f32 erf reaches -1
/// (-0 below and at -inf). Costs one `exp` and two short polynomials.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let small = erf_small(a);
    let tail = erfc_tail(a);
    // 1 + erf(z): erfc(|z|) directly for z ≤ -0.92, never 1 - (1 - erfc).
    let pos = if a < ERF_SPLIT { 1.0 + small } else { 2.0 - tail };
    let neg = if a < ERF_SPLIT { 1.0 - small } else { tail };
    let neg = if z < -ERF_ONE { 0.0 } else { neg };
    let one_plus = if z < 0.0 { neg } else { pos };
    let y = (0.5 * x) * one_plus;
    if one_plus == 0.0 {
        -0.0
    } else {
        y
    }
}

/// GELU's tanh form, 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 x³))),
/// computed as x · sigmoid(2u) (the same function, no cancellation for
/// negative x). Max error 17 ulp for x ≥ -3, more below (see the module
/// doc); -0 at -inf.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    // 2·√(2/π) and 2·√(2/π)·0.044715.
    const K0: f32 = 1.595_769;
    const K1: f32 = 0.071_354_816;
    let u2 = x * (K0 + K1 * (x * x));
    let y = x * sigmoid(u2);
    if x == f32::NEG_INFINITY {
        -0.0
    } else {
        y
    }
}

/// GELU's sigmoid form, x · sigmoid(1.702 x). Max error 7.1 ulp for x ≥ -3,
/// more below (see the module doc); -0 at -inf.
#[inline(always)]
pub fn gelu_sigmoid(x: f32) -> f32 {
    let y = x * sigmoid(1.702 * x);
    if x == f32::NEG_INFINITY {
        -0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 127th bit pattern (positive and negative, all exponents), plus
    /// the edges and a dense grid over [-20, 20].
    fn sweep() -> Vec<f32> {
        let mut v: Vec<f32> = (0..u32::MAX / 127).map(|i| f32::from_bits(i * 127)).collect();
        v.extend([
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            88.722_83,
            88.722_84,
            -87.336_55,
            -103.972_08,
            -103.972_09,
            ERF_SPLIT,
            -ERF_SPLIT,
            ERF_ONE,
            0.625,
            -0.625,
        ]);
        v.extend((-2_000_000..=2_000_000).map(|i| i as f32 * 1e-5));
        v
    }

    /// |got - want| in ulps of `want` (of f32::MIN_POSITIVE for denormals).
    fn ulps(got: f32, want: f64) -> f64 {
        if got as f64 == want || (got.is_nan() && want.is_nan()) {
            return 0.0;
        }
        // Beyond f32's range the reference is ±inf.
        let want32 = want as f32;
        if want32.is_infinite() {
            return if got == want32 { 0.0 } else { f64::INFINITY };
        }
        if got.is_nan() || want.is_nan() || got.is_infinite() || want.is_infinite() {
            return f64::INFINITY;
        }
        let w = want.abs().max(f32::MIN_POSITIVE as f64);
        // One ulp of a float in [2^e, 2^(e+1)) is 2^(e-23).
        let ulp = 2f64.powi(w.log2().floor() as i32 - 23);
        (got as f64 - want).abs() / ulp
    }

    /// The worst error of `f` over the sweep, with the input it happened at.
    fn worst(f: impl Fn(f32) -> f32 + Copy, want: impl Fn(f64) -> f64, skip: impl Fn(f32) -> bool) -> (f64, f32) {
        let xs = sweep();
        let mut ys = vec![0f32; xs.len()];
        map_into(&xs, &mut ys, f);
        let mut w = (0.0, 0.0);
        for (&x, &y) in xs.iter().zip(&ys) {
            // The slice and the scalar function are the same bits.
            assert!(
                y.to_bits() == f(x).to_bits() || (y.is_nan() && f(x).is_nan()),
                "map({x}) != f({x})"
            );
            if x.is_nan() || skip(x) {
                continue;
            }
            let e = ulps(y, want(x as f64));
            if e > w.0 {
                w = (e, x);
            }
        }
        println!("worst error {:.3} ulp at {}", w.0, w.1);
        w
    }

    fn sigmoid64(x: f64) -> f64 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            let e = x.exp();
            e / (1.0 + e)
        }
    }

    #[test]
    fn exp_is_within_1_1_ulp() {
        let (e, at) = worst(exp, libm::exp, |_| false);
        assert!(e <= 1.1, "exp: {e} ulp at {at}");
        assert_eq!(exp(f32::NEG_INFINITY).to_bits(), 0);
        assert_eq!(exp(-104.0).to_bits(), 0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(88.8), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!((exp(0.0), exp(-0.0)), (1.0, 1.0));
        assert!(exp(-100.0) > 0.0 && exp(-100.0) < f32::MIN_POSITIVE, "denormal result");
    }

    #[test]
    fn erf_and_tanh_are_within_1_5_ulp() {
        let (e, at) = worst(erf, libm::erf, |_| false);
        assert!(e <= 1.5, "erf: {e} ulp at {at}");
        let (e, at) = worst(tanh, libm::tanh, |_| false);
        assert!(e <= 1.5, "tanh: {e} ulp at {at}");
        for f in [erf, tanh] {
            assert_eq!(f(-0.0).to_bits(), (-0.0f32).to_bits());
            assert_eq!((f(f32::INFINITY), f(f32::NEG_INFINITY)), (1.0, -1.0));
            assert!(f(f32::NAN).is_nan());
            assert_eq!(f(-1e-45), -1e-45, "a denormal input");
        }
    }

    #[test]
    fn sigmoid_is_within_3_ulp() {
        let (e, at) = worst(sigmoid, sigmoid64, |_| false);
        assert!(e <= 3.0, "sigmoid: {e} ulp at {at}");
        assert_eq!((sigmoid(f32::NEG_INFINITY), sigmoid(f32::INFINITY)), (0.0, 1.0));
        assert!(sigmoid(f32::NAN).is_nan());
    }

    /// `f` within `bound` ulp of `want` for x ≥ -3, within `far` ulp below
    /// (where the argument of the exponential, computed from x in f32, is
    /// itself off by up to its own ulp: the function's condition number
    /// grows like x² or x³), and within `floor` where the result is smaller
    /// than `floor` (a denormal intermediate has lost its relative precision,
    /// or, for `gelu_erf`, f32's erf has reached -1).
    fn check_activation(name: &str, f: fn(f32) -> f32, want: impl Fn(f64) -> f64 + Copy, bounds: [f64; 3]) {
        let [bound, far, floor] = bounds;
        let skip = |x: f32| x == f32::NEG_INFINITY || want(x as f64).abs() < floor;
        let (e, at) = worst(f, want, |x| skip(x) || x < -3.0);
        assert!(e <= bound, "{name}: {e} ulp at {at}");
        let (e, at) = worst(f, want, |x| skip(x) || x >= -3.0);
        assert!(e <= far, "{name}: {e} ulp at {at}");
        for x in sweep() {
            if !x.is_nan() && x != f32::NEG_INFINITY && want(x as f64).abs() < floor {
                assert!((f(x) as f64 - want(x as f64)).abs() <= floor, "{name}({x})");
            }
        }
        assert_eq!(f(f32::NEG_INFINITY).to_bits(), (-0.0f32).to_bits(), "{name}(-inf)");
        assert_eq!(f(f32::INFINITY), f32::INFINITY, "{name}(inf)");
        assert_eq!(f(-0.0).to_bits(), (-0.0f32).to_bits(), "{name}(-0)");
        assert!(f(f32::NAN).is_nan(), "{name}(NaN)");
    }

    #[test]
    fn activations_are_accurate() {
        let tiny = 2f64.powi(-100);
        check_activation("silu", silu, |x| x * sigmoid64(x), [4.0, 4.0, tiny]);
        let k = (2.0 / std::f64::consts::PI).sqrt();
        let gt = move |x: f64| x * sigmoid64(2.0 * k * (x + 0.044715 * x * x * x));
        check_activation("gelu_tanh", gelu_tanh, gt, [18.0, 200.0, tiny]);
        check_activation(
            "gelu_sigmoid",
            gelu_sigmoid,
            |x| x * sigmoid64(1.702 * x),
            [8.0, 80.0, tiny],
        );
        let ge = |x: f64| 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2);
        check_activation("gelu_erf", gelu_erf, ge, [17.0, 100.0, 2f64.powi(-23)]);
    }

    #[test]
    fn softmax_matches_f64_on_odd_rows() {
        for n in [1usize, 3, 15, 16, 17, 33, 128, 1000] {
            // Masked scores (-1e9 and -inf) next to ordinary ones.
            let src: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    3 => -1e9,
                    5 if n > 6 => f32::NEG_INFINITY,
                    _ => ((i * 37 % 11) as f32 - 5.0) * 0.9,
                })
                .collect();
            let mut dst = vec![0f32; n];
            softmax(&src, &mut dst);
            let max = src.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = src.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            // exp's ulp, the scale's rounding, and the lane sums' (n/16 terms each, then 16).
            let bound = (6.0 + (n / LANES) as f64) * f32::EPSILON as f64;
            for (i, (&g, w)) in dst.iter().zip(e.iter().map(|v| v / sum)).enumerate() {
                assert!((g as f64 - w).abs() <= bound * w, "n {n}, [{i}]: {g} vs {w}");
            }
            let mut plain = vec![0f32; n];
            softmax_plain(&src, &mut plain);
            assert_eq!(plain, dst, "the plain build gives the same bits");
        }
        let mut d = [0f32; 3];
        softmax(&[1.0, f32::NAN, 2.0], &mut d);
        assert!(d.iter().all(|v| v.is_nan()));
        softmax(&[f32::NEG_INFINITY; 3], &mut d);
        assert!(d.iter().all(|v| v.is_nan()));
    }

    /// Each activation's time a value, dispatched, over 16K values (in L1
    /// and L2 as a conv epilogue's band is), best of 7: `cargo test
    /// --release --lib vmath::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let xs: Vec<f32> = (0..1 << 14).map(|i| ((i as f32) * 0.013).sin() * 8.0).collect();
        for fun in [
            Fun::Exp,
            Fun::Sigmoid,
            Fun::Silu,
            Fun::GeluErf,
            Fun::GeluTanh,
            Fun::Tanh,
        ] {
            let mut best = f64::MAX;
            let mut d = xs.clone();
            for _ in 0..7 {
                let t = std::time::Instant::now();
                for _ in 0..200 {
                    d.copy_from_slice(&xs);
                    apply_with(fun, &mut d, 0.25);
                }
                best = best.min(t.elapsed().as_secs_f64() / 200.0);
            }
            std::hint::black_box(&d);
            eprintln!("{fun:?}: {:.3} ns a value", best * 1e9 / xs.len() as f64);
        }
    }

    #[test]
    fn max_into_is_the_elementwise_maximum_with_nan_winning() {
        let a0: Vec<f32> = (0..37).map(|i| ((i as f32) * 1.3).sin()).collect();
        let mut xs: Vec<f32> = (0..37).map(|i| ((i as f32) * 0.7).cos()).collect();
        let mut a1 = a0.clone();
        a1[3] = f32::NAN;
        xs[20] = f32::NAN;
        xs[30] = f32::NEG_INFINITY;
        for (name, run) in [
            ("dispatched", max_into as fn(&mut [f32], &[f32])),
            ("plain", max_into_plain as fn(&mut [f32], &[f32])),
        ] {
            let mut got = a1.clone();
            run(&mut got, &xs);
            for (i, g) in got.iter().enumerate() {
                if i == 3 || i == 20 {
                    assert!(g.is_nan(), "{name} [{i}]: {g}");
                } else {
                    assert_eq!(*g, a1[i].max(xs[i]), "{name} [{i}]");
                }
            }
        }
    }

    #[test]
    fn the_plain_build_matches_the_dispatched_one() {
        let xs: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.037).collect();
        for f in [exp, erf, tanh, sigmoid, silu, gelu_erf, gelu_tanh, gelu_sigmoid] {
            let (mut a, mut b) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
            map_into_plain(&xs, &mut a, f);
            map_into(&xs, &mut b, f);
            assert_eq!(a, b);
        }
        for fun in [
            Fun::Exp,
            Fun::Erf,
            Fun::Tanh,
            Fun::Sigmoid,
            Fun::Silu,
            Fun::GeluErf,
            Fun::GeluTanh,
            Fun::GeluSigmoid,
        ] {
            let want: Vec<f32> = xs.iter().map(|&x| fun.f(x + 0.25)).collect();
            let mut a = xs.clone();
            apply_with(fun, &mut a, 0.25);
            assert_eq!(a, want, "{fun:?}");
            let mut b = xs.clone();
            apply_zip(fun, &mut b, &vec![0.25; xs.len()]);
            assert_eq!(b, want, "{fun:?}");
            let mut c = vec![0f32; xs.len()];
            let shifted: Vec<f32> = xs.iter().map(|&x| x + 0.25).collect();
            apply_into(fun, &shifted, &mut c);
            assert_eq!(c, want, "{fun:?}");
            let mut d = vec![0f32; xs.len()];
            apply_into_plain(fun, &shifted, &mut d);
            assert_eq!(d, want, "{fun:?} (plain build)");
        }
    }
}
