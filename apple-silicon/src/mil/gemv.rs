//! Matrix-vector products: each output one dot product of two contiguous
//! runs of `k` values.
//!
//! Why not the GEMM: a product with one row (a classifier's `linear` on
//! one image, a 1×1 conv over a 1×1 map) reads each weight once, so it is
//! bound by memory, and `gemm` first packs the whole weight matrix into its
//! panel layout — one more read and a write of all of it (MobileNetV2's
//! 5 MB classifier) before the product reads it again. Here each weight row
//! is read once, straight from where it is stored, four rows at a time
//! against one load of the vector.
//!
//! Each output's sum runs in the same order whatever the rows around it,
//! so a product split across threads gives the same values.

use std::mem::MaybeUninit;

use super::rows::Isa;

/// `out[i] = Σ_t v[t] · mat[i · rs + t]` for every `i < out.len()`, `t <
/// v.len()`, every element of `out` written. Costs `out.len() · v.len()`
/// multiply-adds and one read of each row. Panics (an internal invariant)
/// when a row reaches past `mat`.
pub(crate) fn dots(isa: Isa, v: &[f32], mat: &[f32], rs: usize, out: &mut [MaybeUninit<f32>]) {
    let k = v.len();
    let last = out.len().checked_sub(1);
    assert!(
        last.is_none_or(|r| r
            .checked_mul(rs)
            .and_then(|o| o.checked_add(k))
            .is_some_and(|e| e <= mat.len())),
        "gemv rows outside their matrix"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced when the CPU has AVX-512F;
        // every row is inside `mat` (asserted above).
        Isa::Avx512 => unsafe { x86::dots_avx512(v, mat, rs, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced when the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::dots_avx2(v, mat, rs, out) },
        _ => dots_portable(v, mat, rs, out),
    }
}

/// [`dots`] one row at a time, on [`dot_portable`]. Inlined so that an
/// ISA's wrapper compiles it with that ISA's vectors.
#[inline(always)]
fn dots_portable(v: &[f32], mat: &[f32], rs: usize, out: &mut [MaybeUninit<f32>]) {
    let k = v.len();
    for (i, o) in out.iter_mut().enumerate() {
        o.write(dot_portable(v, &mat[i * rs..i * rs + k]));
    }
}

/// A dot product in 16 partial sums (a loop compilers vectorise).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// AVX2 version of [`super::dots`]: the portable loop compiled with
    /// 256-bit vectors (its 16 partial sums in two registers).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots_avx2(v: &[f32], mat: &[f32], rs: usize, out: &mut [MaybeUninit<f32>]) {
        super::dots_portable(v, mat, rs, out)
    }

    /// AVX-512F version of [`super::dots`]: four rows per pass over `v`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and every row `i < out.len()` must be
    /// inside `mat` (`i · rs + v.len() ≤ mat.len()`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots_avx512(v: &[f32], mat: &[f32], rs: usize, out: &mut [MaybeUninit<f32>]) {
        let k = v.len();
        let (vp, mp) = (v.as_ptr(), mat.as_ptr());
        let tail: __mmask16 = if k.is_multiple_of(16) {
            !0
        } else {
            (1u16 << (k % 16)) - 1
        };
        let whole = k - k % 16;
        let mut i = 0;
        while i < out.len() {
            let r = (out.len() - i).min(4);
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut t = 0;
            while t < k {
                let m = if t < whole { !0 } else { tail };
                // SAFETY (all loads): lanes past `k − t` are masked off;
                // the rest are inside `v` and, by the caller's bounds, rows
                // i..i + r of `mat`.
                let x = unsafe { _mm512_maskz_loadu_ps(m, vp.add(t)) };
                for (j, a) in acc.iter_mut().enumerate().take(r) {
                    let w = unsafe { _mm512_maskz_loadu_ps(m, mp.add((i + j) * rs + t)) };
                    *a = _mm512_fmadd_ps(w, x, *a);
                }
                t += 16;
            }
            for (j, a) in acc.iter().enumerate().take(r) {
                out[i + j].write(_mm512_reduce_add_ps(*a));
            }
            i += r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_gives_the_dot_products_and_writes_every_output() {
        for k in [1usize, 5, 16, 17, 40, 129] {
            for rows in [1usize, 3, 4, 5, 9] {
                let rs = k + 3;
                let v: Vec<f32> = (0..k).map(|t| ((t * 7 % 13) as f32 - 6.0) * 0.25).collect();
                let mat: Vec<f32> = (0..(rows - 1) * rs + k)
                    .map(|t| ((t * 5 % 11) as f32 - 5.0) * 0.5)
                    .collect();
                let want: Vec<f64> = (0..rows)
                    .map(|i| (0..k).map(|t| v[t] as f64 * mat[i * rs + t] as f64).sum())
                    .collect();
                for isa in Isa::available() {
                    let mut out = vec![MaybeUninit::new(f32::NAN); rows + 1];
                    dots(isa, &v, &mat, rs, &mut out[..rows]);
                    for (i, w) in want.iter().enumerate() {
                        // SAFETY: NaN-initialised; a skipped output stays NaN and fails.
                        let got = unsafe { out[i].assume_init() } as f64;
                        assert!((got - w).abs() < 1e-4, "{isa:?} k {k} row {i}: {got} vs {w}");
                    }
                    // SAFETY: initialised above.
                    assert!(unsafe { out[rows].assume_init() }.is_nan(), "{isa:?}: wrote past out");
                }
            }
        }
        // A row past the matrix is refused.
        let r = std::panic::catch_unwind(|| {
            let mut out = vec![MaybeUninit::new(0.0); 2];
            dots(Isa::Portable, &[1.0; 4], &[1.0; 7], 4, &mut out);
        });
        assert!(r.is_err());
    }
}
