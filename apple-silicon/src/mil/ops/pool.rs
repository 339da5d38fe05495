//! Pooling (coremltools `pool.py`): `max_pool`, `avg_pool`, `l2_pool`.
//!
//! Conventions: `[N, C, *spatial]` input with 1-3 spatial dims,
//! `kernel_sizes` and `strides` per spatial dim, `pad_type` as for conv.
//! `ceil_mode` rounds the output size up (coremltools'
//! `spatial_dimensions_out_shape`: a last window that would start in the end
//! padding is dropped); the extra cells are not counted by any average.
//! Padded cells never win a max; an average divides by the window's cells
//! inside input and padding (PyTorch's `count_include_pad`), or, with
//! `exclude_padding_from_average`, by its cells inside the input. `l2_pool`
//! is the root of the window's sum of squares.

use candle_core::Tensor;

use super::spatial::{check_elems, check_padded, from_host, host_f32, lift3, pad_value, spatial_pads, spatial_params};
use super::{one, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "max_pool" => |c| pool(c, PoolKind::Max),
        "avg_pool" => |c| pool(c, PoolKind::Avg),
        "l2_pool" => |c| pool(c, PoolKind::L2),
        _ => return None,
    })
}

#[derive(Clone, Copy)]
pub(super) enum PoolKind {
    Max,
    Avg,
    L2,
}

pub(super) fn pool(c: &mut OpCtx, kind: PoolKind) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let kv = c.ints("kernel_sizes")?;
    let n = kv.len();
    if !(1..=3).contains(&n) || kv.iter().any(|&v| v < 1) {
        return Err(c.unsupported(format!("`kernel_sizes` {kv:?} (1 to 3 positive sizes)")));
    }
    let k: Vec<usize> = kv.iter().map(|&v| v as usize).collect();
    let (strides, _, pad_type, pad) = spatial_params(c, n)?;
    match pad_type.as_str() {
        "valid" | "same" | "same_lower" => {}
        "custom" if pad.len() == 2 * n && pad.iter().all(|&p| p >= 0) => {}
        "custom" => return Err(c.unsupported(format!("`pad` {pad:?} (2 x {n} non-negative values)"))),
        other => return Err(c.unsupported(format!("`pad_type` {other} (valid, same, same_lower or custom)"))),
    }
    let ceil_mode = c.opt_bool("ceil_mode")?.unwrap_or(false);
    let exclude = c.opt_bool("exclude_padding_from_average")?.unwrap_or(false);
    let candle_path = n == 2 && !ceil_mode && !matches!(kind, PoolKind::L2);
    Ok(Box::new(move |a| {
        let x = a[x];
        if x.rank() != n + 2 {
            candle_core::bail!("input of rank {} for {n}-D pooling", x.rank())
        }
        let spatial = &x.dims()[2..];
        let pads = spatial_pads(&pad_type, &pad, spatial, &k, &strides, &vec![1; n])?;
        if !candle_path {
            return one(pool_direct(x, kind, &k, &strides, &pads, ceil_mode, exclude)?);
        }
        // Sizes checked here: candle's pooling would underflow on a kernel longer than the input.
        let mut out_hw = [0; 2];
        for i in 0..2 {
            if spatial[i] == 0 {
                candle_core::bail!("input of shape {:?} has an empty spatial dim", x.dims())
            }
            out_hw[i] = pooled_size(spatial[i], pads[i], k[i], strides[i], false)?;
        }
        check_padded(x, &pads)?;
        let padded = pads.iter().any(|&(b, e)| b + e > 0);
        let kk = (k[0], k[1]);
        let ss = (strides[0], strides[1]);
        match kind {
            PoolKind::Max if x.dtype() == candle_core::DType::F32 && x.device().is_cpu() => {
                let [oh, ow] = out_hw;
                check_elems(&[x.dims()[0], x.dims()[1], oh, ow], "max_pool output")?;
                let dims = (x.dims()[0] * x.dims()[1], spatial[0], spatial[1]);
                let x = x.contiguous()?;
                let out = crate::mil::depthwise::with_f32_slice(&x, |src| {
                    max_pool2d_f32(src, dims, kk, ss, (pads[0].0, pads[1].0), (oh, ow))
                })?;
                one(Tensor::from_vec(out, (x.dims()[0], x.dims()[1], oh, ow), x.device())?)
            }
            PoolKind::Max => {
                let xp = if padded {
                    pad_value(x, &pads, f64::NEG_INFINITY)?
                } else {
                    x.clone()
                };
                one(xp.max_pool2d_with_stride(kk, ss)?)
            }
            _ => {
                if !padded {
                    return one(x.avg_pool2d_with_stride(kk, ss)?);
                }
                let xp = pad_value(x, &pads, 0.0)?;
                let sum = xp.avg_pool2d_with_stride(kk, ss)?;
                if !exclude {
                    return one(sum);
                }
                // Divide by the number of real (unpadded) elements per window.
                let ones = Tensor::ones((1, 1, spatial[0], spatial[1]), x.dtype(), x.device())?;
                let count = pad_value(&ones, &pads, 0.0)?.avg_pool2d_with_stride(kk, ss)?;
                one(sum.broadcast_div(&count)?)
            }
        }
    }))
}

/// 2-D max pooling of `planes` planes of `h × w` f32 values into `(oh,
/// ow)`, window `k`, strides `s`, leading pads `(pt, pl)` (cells outside
/// the input never win, NaN does; a window wholly in the padding gives
/// −inf, as pooling a −inf-padded copy does). Separable: each input row's maxima
/// over `kw` columns, then each output row's over `kh` of those rows, so a
/// plane costs `h·ow·kw + oh·ow·kh` comparisons in loops that vectorise
/// along the row. Planes spread over the interpreter's pool from 64K
/// outputs on. The caller checked the sizes (`pooled_size`).
fn max_pool2d_f32(
    src: &[f32],
    (planes, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    (pt, pl): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    use crate::mil::vmath::{max_into, nan_max};
    use rayon::prelude::*;
    let plane = |(p, out): (usize, &mut [f32]), (rows, padded): &mut (Vec<f32>, Vec<f32>)| {
        let x = &src[p * h * w..(p + 1) * h * w];
        if (sh, sw) == (1, 1) {
            max_pool_plane_s1(x, (h, w), (kh, kw), (pt, pl), (oh, ow), out, (padded, rows));
            return;
        }
        // Row maxima: rows[iy][ox] over input columns ox·sw − pl + j.
        rows.clear();
        rows.resize(h * ow, f32::NEG_INFINITY);
        for (xr, rr) in x.chunks_exact(w).zip(rows.chunks_exact_mut(ow)) {
            for j in 0..kw {
                // Output columns whose input column ox·sw + j − pl is inside [0, w).
                let lo = pl.saturating_sub(j).div_ceil(sw).min(ow);
                let hi = match (w + pl).checked_sub(j + 1) {
                    Some(last) => (last / sw + 1).min(ow),
                    None => 0,
                }
                .max(lo);
                if sw == 1 {
                    let first = lo + j - pl;
                    max_into(&mut rr[lo..hi], &xr[first..first + (hi - lo)]);
                } else {
                    for (ox, r) in rr.iter_mut().enumerate().take(hi).skip(lo) {
                        *r = nan_max(*r, xr[ox * sw + j - pl]);
                    }
                }
            }
        }
        for (oy, orow) in out.chunks_exact_mut(ow).enumerate() {
            orow.fill(f32::NEG_INFINITY);
            for i in 0..kh {
                let Some(iy) = (oy * sh + i).checked_sub(pt).filter(|&iy| iy < h) else {
                    continue;
                };
                max_into(orow, &rows[iy * ow..(iy + 1) * ow]);
            }
        }
    };
    let mut out = vec![0f32; planes * oh * ow];
    if oh * ow == 0 {
        return out;
    }
    if out.len() >= 1 << 16 && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each_init(Default::default, |bufs, c| plane(c, bufs));
    } else {
        let mut bufs = Default::default();
        out.chunks_mut(oh * ow).enumerate().for_each(|c| plane(c, &mut bufs));
    }
    out
}

/// One plane of [`max_pool2d_f32`] at stride 1, in passes over the whole
/// padded plane, so that every loop is as long as the plane whatever its
/// width (SPPF's 5 × 5 windows over 10 × 10 planes left row loops of 10
/// values, 4× ONNX Runtime's time): the plane copied into `padded`, a
/// −inf-bordered `[oh + kh − 1, ow + kw − 1]` grid (the cells the outputs
/// reach), then each cell's maximum over `kw` columns into `rows` (cells
/// whose window runs past their row's end are computed and never read),
/// then each output's over `kh` of those rows, back into `padded`. Costs
/// `kw + kh` passes over the padded plane.
fn max_pool_plane_s1(
    x: &[f32],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    (pt, pl): (usize, usize),
    (oh, ow): (usize, usize),
    out: &mut [f32],
    (padded, rows): (&mut Vec<f32>, &mut Vec<f32>),
) {
    use crate::mil::vmath::max_into;
    let (ph, pw) = (oh + kh - 1, ow + kw - 1);
    padded.clear();
    padded.resize(ph * pw, f32::NEG_INFINITY);
    // Input column ix is padded column ix + pl; those past pw no output reads.
    let n = w.min(pw.saturating_sub(pl));
    for (py, prow) in padded.chunks_exact_mut(pw).enumerate() {
        if let Some(iy) = py.checked_sub(pt).filter(|&iy| iy < h) {
            prow[pl..pl + n].copy_from_slice(&x[iy * w..iy * w + n]);
        }
    }
    // rows[q] = max over padded[q..q + kw]; cell (py, px) for px < ow reads
    // its own row only (px + kw − 1 < pw).
    let cells = ph * pw - (kw - 1);
    rows.clear();
    rows.extend_from_slice(&padded[..cells]);
    for j in 1..kw {
        max_into(rows, &padded[j..j + cells]);
    }
    // Output (oy, ox) is the maximum of rows[(oy + i) · pw + ox], i < kh.
    let span = (oh - 1) * pw + ow;
    let cols = &mut padded[..span];
    cols.copy_from_slice(&rows[..span]);
    for i in 1..kh {
        max_into(cols, &rows[i * pw..i * pw + span]);
    }
    for (orow, crow) in out.chunks_exact_mut(ow).zip(cols.chunks(pw)) {
        orow.copy_from_slice(&crow[..ow]);
    }
}

/// Output size of one pooled dim (coremltools' rule, ceil mode included).
fn pooled_size(input: usize, (b, e): (usize, usize), k: usize, s: usize, ceil: bool) -> CResult<usize> {
    let span = input.saturating_add(b).saturating_add(e);
    if span < k {
        candle_core::bail!("padded input {span} is shorter than the kernel {k}")
    }
    if !ceil {
        return Ok((span - k) / s + 1);
    }
    let mut out = (span - k).div_ceil(s) + 1;
    if b.saturating_add(e) > 0 && (out - 1) * s >= input.saturating_add(b) {
        out -= 1;
    }
    Ok(out)
}

/// Any pooling of 1-3 spatial dims on the host (f64 sums):
/// `O(N·C·|out|·|K|)`.
fn pool_direct(
    x: &Tensor,
    kind: PoolKind,
    k: &[usize],
    strides: &[usize],
    pads: &[(usize, usize)],
    ceil: bool,
    exclude: bool,
) -> CResult<Tensor> {
    let n = k.len();
    let sp = &x.dims()[2..];
    if sp.contains(&0) {
        candle_core::bail!("input of shape {:?} has an empty spatial dim", x.dims())
    }
    let mut osp = Vec::with_capacity(n);
    for i in 0..n {
        osp.push(pooled_size(sp[i], pads[i], k[i], strides[i], ceil)?);
    }
    let mut shape = x.dims()[..2].to_vec();
    shape.extend(&osp);
    check_elems(&shape, "pool output")?;
    let pb: Vec<usize> = pads.iter().map(|p| p.0).collect();
    let pe: Vec<usize> = pads.iter().map(|p| p.1).collect();
    let (i3, k3, o3, s3) = (lift3(sp, 1), lift3(k, 1), lift3(&osp, 1), lift3(strides, 1));
    let (b3, e3) = (lift3(&pb, 0), lift3(&pe, 0));
    let planes = x.dims()[0] * x.dims()[1];
    let isz: usize = i3.iter().product();
    let xs = host_f32(x)?;
    let mut out = Vec::with_capacity(planes * o3.iter().product::<usize>());
    // Window of output `o` along one dim: its cells in padded coordinates
    // (clipped to input + padding) and in the input.
    let range = |d: usize, o: usize| {
        let start = o * s3[d];
        let end = (start + k3[d]).min(i3[d].saturating_add(b3[d]).saturating_add(e3[d]));
        let lo = start.saturating_sub(b3[d]).min(i3[d]);
        let hi = end.saturating_sub(b3[d]).min(i3[d]);
        (end - start, lo, hi)
    };
    for p in 0..planes {
        let plane = &xs[p * isz..(p + 1) * isz];
        for o0 in 0..o3[0] {
            let (n0, lo0, hi0) = range(0, o0);
            for o1 in 0..o3[1] {
                let (n1, lo1, hi1) = range(1, o1);
                for o2 in 0..o3[2] {
                    let (n2, lo2, hi2) = range(2, o2);
                    let mut acc = match kind {
                        PoolKind::Max => f64::NEG_INFINITY,
                        _ => 0.0,
                    };
                    for i0 in lo0..hi0 {
                        for i1 in lo1..hi1 {
                            for i2 in lo2..hi2 {
                                let v = plane[(i0 * i3[1] + i1) * i3[2] + i2] as f64;
                                match kind {
                                    PoolKind::Max => acc = acc.max(v),
                                    PoolKind::Avg => acc += v,
                                    PoolKind::L2 => acc += v * v,
                                }
                            }
                        }
                    }
                    out.push(match kind {
                        PoolKind::Max => acc,
                        PoolKind::L2 => acc.sqrt(),
                        PoolKind::Avg => {
                            let count = if exclude {
                                (hi0 - lo0) * (hi1 - lo1) * (hi2 - lo2)
                            } else {
                                n0 * n1 * n2
                            };
                            acc / count.max(1) as f64
                        }
                    } as f32);
                }
            }
        }
    }
    from_host(out, &shape, x)
}

#[cfg(test)]
mod tests {
    use super::{max_pool2d_f32, pooled_size};

    #[test]
    fn separable_max_pooling_is_the_windows_maximum_on_odd_shapes() {
        for &(planes, h, w, k, st, pads) in &[
            (3, 7, 9, (3, 3), (1, 1), (1, 1)),
            (2, 10, 10, (5, 5), (1, 1), (2, 2)),
            (2, 11, 8, (3, 2), (2, 3), (1, 0)),
            (1, 5, 6, (2, 2), (2, 2), (0, 0)),
            (4, 6, 5, (4, 4), (3, 2), (3, 3)),
            (1, 3, 3, (1, 1), (1, 1), (0, 0)),
            // Over the pool's 64K outputs.
            (70, 33, 31, (3, 3), (1, 1), (1, 1)),
            // Stride 1 (whole-plane passes): YOLOv8n's SPPF, a window
            // wider than tall, pads past the window (windows wholly in
            // the padding), one column.
            (3, 10, 10, (5, 5), (1, 1), (2, 2)),
            (2, 6, 13, (2, 4), (1, 1), (1, 3)),
            (1, 4, 5, (2, 2), (1, 1), (3, 3)),
            (2, 7, 1, (3, 1), (1, 1), (1, 0)),
            // Strided rows over unit-stride columns.
            (2, 9, 12, (3, 3), (2, 1), (1, 1)),
        ] {
            let ((kh, kw), (sh, sw), (pt, pl)) = (k, st, pads);
            let oh = (h + 2 * pt - kh) / sh + 1;
            let ow = (w + 2 * pl - kw) / sw + 1;
            let xs: Vec<f32> = (0..planes * h * w).map(|i| ((i as f32) * 1.37).sin() * 5.0).collect();
            let got = max_pool2d_f32(&xs, (planes, h, w), k, st, pads, (oh, ow));
            for p in 0..planes {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut want = f32::NEG_INFINITY;
                        for i in 0..kh {
                            for j in 0..kw {
                                let (iy, ix) = (
                                    (oy * sh + i) as isize - pt as isize,
                                    (ox * sw + j) as isize - pl as isize,
                                );
                                if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                    want = want.max(xs[p * h * w + iy as usize * w + ix as usize]);
                                }
                            }
                        }
                        let at = (p * oh + oy) * ow + ox;
                        assert_eq!(
                            got[at], want,
                            "{planes}x{h}x{w} k{k:?} s{st:?} p{pads:?} at ({p}, {oy}, {ox})"
                        );
                    }
                }
            }
        }
        // NaN wins its windows.
        let mut xs = vec![1.0f32; 16];
        xs[5] = f32::NAN;
        let got = max_pool2d_f32(&xs, (1, 4, 4), (2, 2), (2, 2), (0, 0), (2, 2));
        assert!(got[0].is_nan() && got[1..].iter().all(|&v| v == 1.0), "{got:?}");
        // At stride 1 too: the four windows holding (1, 1) of a 4 × 4 plane.
        let got = max_pool2d_f32(&xs, (1, 4, 4), (2, 2), (1, 1), (0, 0), (3, 3));
        let nan: Vec<bool> = got.iter().map(|v| v.is_nan()).collect();
        let want = [true, true, false, true, true, false, false, false, false];
        assert_eq!(nan, want, "{got:?}");
        assert!(got.iter().filter(|v| !v.is_nan()).all(|&v| v == 1.0), "{got:?}");
    }

    #[test]
    fn pooled_sizes_follow_coremltools() {
        assert_eq!(pooled_size(7, (0, 0), 3, 2, false).unwrap(), 3);
        assert_eq!(pooled_size(6, (0, 0), 3, 2, true).unwrap(), 3);
        // Ceil mode drops a last window that would start in the end padding.
        assert_eq!(pooled_size(5, (1, 1), 2, 2, true).unwrap(), 3);
        assert!(pooled_size(2, (0, 0), 3, 1, false).is_err());
    }

    #[test]
    fn absurd_pads_are_errors_before_allocation() {
        use super::{pool_direct, PoolKind};
        use candle_core::{DType, Device, Tensor};
        let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let huge = 1usize << 40;
        let e = pool_direct(&x, PoolKind::Avg, &[1, 1], &[1, 1], &[(huge, 0), (0, 0)], false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds"), "{e}");
    }
}
