//! Out-of-place transposition of a row-major f32 matrix, in tiles so that
//! both the reads and the writes stay within a few cache lines at a time.
//! `linear` uses it once at prepare to hold a dense f32 weight as
//! `[in, out]`, the layout the GEMM packs without a gather.

/// Side of the square tiles: 16 f32 (one 64-byte line) on each side.
const TILE: usize = 16;

/// `dst [cols, rows] = srcᵀ` for `src [rows, cols]`, both row-major and
/// dense. Costs one read and one write of every element; no allocation.
/// Errors (never panics) when either slice does not hold `rows · cols`
/// values.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) -> candle_core::Result<()> {
    let n = rows.checked_mul(cols);
    if n != Some(src.len()) || n != Some(dst.len()) {
        candle_core::bail!(
            "transposing a [{rows}, {cols}] matrix from {} into {} values",
            src.len(),
            dst.len()
        )
    }
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for c in c0..c1 {
                let out = &mut dst[c * rows + r0..c * rows + r1];
                for (o, r) in out.iter_mut().zip(r0..r1) {
                    *o = src[r * cols + c];
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_odd_shapes_element_by_element() {
        for &(rows, cols) in &[(1, 1), (1, 7), (7, 1), (17, 33), (16, 16), (40, 3), (0, 5)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&src, rows, cols, &mut dst).unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * rows + r], src[r * cols + c], "[{rows}, {cols}] at ({r}, {c})");
                }
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut dst = vec![0f32; 6];
        assert!(transpose(&[0.0; 5], 2, 3, &mut dst).is_err());
        assert!(transpose(&[0.0; 6], 2, 3, &mut dst[..5]).is_err());
        assert!(transpose(&[], usize::MAX, 2, &mut []).is_err());
    }
}
