//! 1-D and 2-D convolution as matrix products on our GEMM (`mil::gemm`),
//! for any kernel size, strides, dilations, explicit pads and group count,
//! with the bias and an activation fused into the product's epilogue.
//!
//! Per image and group, the output `[C_out/g, oh·ow]` is `W_g [C_out/g,
//! C_in/g·kh·kw] · col [C_in/g·kh·kw, oh·ow]`. A 1×1 kernel at stride 1
//! without padding reads the input itself as `col` (no copy); anything else
//! builds `col` (im2col: one row per input channel and filter tap, zeros
//! where the tap falls in the padding), row by row on the pool. Compared
//! with candle's conv: no zero-filled output, no separate bias and
//! activation passes, unequal strides computed directly (not at stride 1
//! then subsampled), and no per-call `/proc/cpuinfo` read.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::fuse::{Act, Tail};
use super::gemm::{self, Bias, MatRef};
use super::limits::check_alloc;
use super::rows;
use super::workers;

type CResult<T> = candle_core::Result<T>;

/// A 2-D convolution's window: kernel `(kh, kw)`, strides, dilations and
/// `[begin, end]` pads per spatial dim (a 1-D conv is `kh = 1`, no height pads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    pub pads: [(usize, usize); 2],
}

impl Window {
    /// The output size along one dim, or `None` when the dilated kernel
    /// does not fit in the padded input (or a size overflows).
    fn out_len(len: usize, (b, e): (usize, usize), k: usize, s: usize, d: usize) -> Option<usize> {
        let eff = k.checked_sub(1)?.checked_mul(d)?.checked_add(1)?;
        let span = len.checked_add(b)?.checked_add(e)?;
        (s > 0 && span >= eff).then(|| (span - eff) / s + 1)
    }

    /// `(oh, ow)` for an `h × w` input.
    pub fn output(&self, h: usize, w: usize) -> CResult<(usize, usize)> {
        let oh = Self::out_len(h, self.pads[0], self.kernel.0, self.stride.0, self.dilation.0);
        let ow = Self::out_len(w, self.pads[1], self.kernel.1, self.stride.1, self.dilation.1);
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => candle_core::bail!("conv window {self:?} does not fit a {h}x{w} input"),
        }
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == (1, 1) && self.pads == [(0, 0); 2]
    }
}

/// The convolution of `x` (`[nb, cin, h, w]`, contiguous f32) with `weight`
/// (`[cout, cin / groups, kh, kw]` flattened), optional per-output-channel
/// `bias`, then `tail` (an activation; a residual of one value per output,
/// in the output's order). Returns `[nb, cout, oh, ow]` flattened and `(oh,
/// ow)`. Costs `2·nb·cout·oh·ow·cin/g·kh·kw` flops on the pool, plus,
/// unless the conv is pointwise, per worker a slab of about
/// `conv_direct`'s budget (where that path applies), an im2col buffer of about
/// [`COL_BUDGET`] floats (more when one band of [`BAND_MIN_COLS`]
/// positions needs more) or a tap slab of about [`TAP_BUDGET`] (more when
/// one output row needs more).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d(
    x: &[f32],
    dims: (usize, usize, usize, usize),
    weight: &[f32],
    cout: usize,
    groups: usize,
    win: &Window,
    bias: Option<&[f32]>,
    tail: Tail,
) -> CResult<(Vec<f32>, (usize, usize))> {
    conv2d_on(
        (rows::Isa::detect(), true),
        x,
        dims,
        weight,
        cout,
        groups,
        win,
        bias,
        tail,
    )
}

/// [`conv2d`] on `isa`, with the direct path (`conv_direct`) where it
/// applies when `direct`, else always as products.
#[allow(clippy::too_many_arguments)]
fn conv2d_on(
    (isa, direct): (rows::Isa, bool),
    x: &[f32],
    (nb, cin, h, w): (usize, usize, usize, usize),
    weight: &[f32],
    cout: usize,
    groups: usize,
    win: &Window,
    bias: Option<&[f32]>,
    tail: Tail,
) -> CResult<(Vec<f32>, (usize, usize))> {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (isa, direct);
    let (kh, kw) = win.kernel;
    if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
        candle_core::bail!("conv of {cin} input and {cout} output channels in {groups} groups")
    }
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let kk = cin_g * kh * kw;
    if Some(x.len())
        != nb
            .checked_mul(cin)
            .and_then(|v| v.checked_mul(h))
            .and_then(|v| v.checked_mul(w))
        || Some(weight.len()) != cout.checked_mul(kk)
        || bias.is_some_and(|b| b.len() != cout)
    {
        candle_core::bail!(
            "conv input of {} values for [{nb}, {cin}, {h}, {w}], weight of {} for [{cout}, {cin_g}, {kh}, {kw}]",
            x.len(),
            weight.len()
        )
    }
    let (oh, ow) = win.output(h, w)?;
    let ohw = oh * ow;
    check_alloc("conv output", &[nb, cout, oh, ow], 4)?;
    let pointwise = win.is_pointwise();
    // Not zero-filled: im2col writes every element before the product reads it.
    let mut col: Vec<MaybeUninit<f32>> = Vec::new();
    // im2col in bands of output rows, so that its buffer stays near
    // COL_BUDGET floats whatever the image size (at least one output row).
    let band = if pointwise || oh == 0 {
        oh.max(1)
    } else {
        band_rows(col_budget(), kk, (oh, ow))
    };
    if !pointwise {
        check_alloc("conv im2col buffer", &[kk, band, ow], 4)?;
    }
    let len = nb * cout * ohw;
    if tail.residual.is_some_and(|r| r.len() != len) {
        candle_core::bail!(
            "conv residual of {} values for an output of [{nb}, {cout}, {oh}, {ow}]",
            tail.residual.map_or(0, <[f32]>::len)
        )
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    {
        let dst = &mut out.spare_capacity_mut()[..len];
        let mut chunks = dst.chunks_exact_mut((cout_g * ohw).max(1));
        for b in 0..nb {
            for g in 0..groups {
                let d: &mut [MaybeUninit<f32>] = if cout_g * ohw == 0 {
                    &mut []
                } else {
                    chunks.next().expect("one chunk per image and group")
                };
                let xg = &x[(b * cin + g * cin_g) * h * w..(b * cin + (g + 1) * cin_g) * h * w];
                let lhs = MatRef::row_major(&weight[g * cout_g * kk..(g + 1) * cout_g * kk], kk);
                let bias = match bias {
                    Some(bs) => Bias::Rows(&bs[g * cout_g..(g + 1) * cout_g]),
                    None => Bias::None,
                };
                let tail = tail.from((b * groups + g) * cout_g * ohw);
                if pointwise {
                    let rhs = MatRef::row_major(xg, ohw);
                    gemm::matmul_into(d, (cout_g, ohw, kk), lhs, rhs, bias, tail)?;
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                if direct && super::conv_direct::fits(isa, cin_g, cout_g, win, (oh, ow)) {
                    let wg = &weight[g * cout_g * kk..(g + 1) * cout_g * kk];
                    super::conv_direct::conv(isa, d, xg, (cin_g, h, w), win, (oh, ow), wg, bias, tail, &mut col)?;
                    continue;
                }
                if let Some(task_rows) = tap_band(cin_g, cout_g, win, (oh, ow)) {
                    let wg = &weight[g * cout_g * kk..(g + 1) * cout_g * kk];
                    tap_bands(d, xg, (cin_g, h, w), win, (oh, ow), task_rows, wg, bias, tail, &mut col)?;
                    continue;
                }
                if let Some(task_rows) = pooled_band(cout_g, kk, (oh, ow), band) {
                    bands_on_the_pool(
                        d,
                        xg,
                        (cin_g, h, w),
                        win,
                        (oh, ow),
                        task_rows,
                        (lhs, kk),
                        bias,
                        tail,
                        &mut col,
                    )?;
                    continue;
                }
                for oy0 in (0..oh).step_by(band) {
                    let rows = band.min(oh - oy0);
                    let col = im2col(xg, (cin_g, h, w), win, (oy0, rows, ow), &mut col);
                    let rhs = MatRef::row_major(col, rows * ow);
                    // Columns oy0·ow.. of every output row (rows ohw apart).
                    let dband = &mut d[oy0 * ow..];
                    let tail = tail.from(oy0 * ow);
                    gemm::matmul_into_rows(
                        rayon::current_num_threads(),
                        dband,
                        ohw,
                        (cout_g, rows * ow, kk),
                        lhs,
                        rhs,
                        bias,
                        tail,
                    )?;
                }
            }
        }
    }
    // SAFETY: each of the nb · groups chunks of cout_g · oh · ow elements
    // was fully written by `matmul_into`; together they are `len` elements.
    unsafe { out.set_len(len) };
    Ok((out, (oh, ow)))
}

/// Output rows per task when a conv's bands run as tasks on the pool
/// ([`bands_on_the_pool`]), or `None` to cut each band's product across
/// the pool instead: on one thread, when the output has fewer positions
/// than channels (its blocks would each pack the whole image), or when a
/// task's product or the one-thread band's would fall off gemm's packed
/// kernel (whose sums do not depend on the cut).
fn pooled_band(cout_g: usize, kk: usize, (oh, ow): (usize, usize), band: usize) -> Option<usize> {
    let threads = rayon::current_num_threads();
    if threads < 2 || oh < 2 || oh * ow < cout_g || cout_g * oh * ow * kk < 1 << 18 {
        return None;
    }
    let rows = band_rows(col_budget() / threads, kk, (oh, ow)).min(oh.div_ceil(threads));
    let last = |b: usize| (oh - 1) % b + 1;
    let packed = |b: usize| gemm::packed_kernel(cout_g, last(b) * ow, kk);
    (packed(rows) && packed(band)).then_some(rows)
}

/// Runs `task(part, oy0, rows)` for every band of `task_rows` output rows
/// of `oh`, the bands taken in turn by each of up to one worker a pool
/// thread, each worker with its own `per` elements of `scratch` (allocated
/// here, on the caller's thread: on the workers glibc would keep a second
/// arena's worth of them; kept by the caller across groups and images).
/// The first error a task returns stops its worker and is returned.
pub(super) fn bands_in_turn(
    oh: usize,
    task_rows: usize,
    per: usize,
    scratch: &mut Vec<MaybeUninit<f32>>,
    task: impl Fn(&mut [MaybeUninit<f32>], usize, usize) -> CResult<()> + Sync,
) -> CResult<()> {
    let tasks = oh.div_ceil(task_rows.max(1));
    let workers = rayon::current_num_threads().min(tasks).max(1);
    check_alloc("conv band buffers", &[workers, per], 4)?;
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<candle_core::Error>> = Mutex::new(None);
    workers::par_parts(uninit(scratch, workers * per), per, |_, part| loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= tasks {
            return;
        }
        let oy0 = t * task_rows;
        if let Err(e) = task(part, oy0, task_rows.min(oh - oy0)) {
            failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            return;
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One image and group of a conv whose output has more positions than
/// channels, on the pool: tasks of `task_rows` output rows, taken in turn
/// by each pool thread, each filling its own im2col buffer and running
/// its product on that thread, so that a thread reads the columns it just
/// wrote while they are in its cache, with one wait per conv instead of
/// two per band. `d` is the `[cout_g, oh·ow]` output.
#[allow(clippy::too_many_arguments)]
fn bands_on_the_pool(
    d: &mut [MaybeUninit<f32>],
    xg: &[f32],
    chw: (usize, usize, usize),
    win: &Window,
    (oh, ow): (usize, usize),
    task_rows: usize,
    (lhs, kk): (MatRef, usize),
    bias: Bias,
    tail: Tail,
    cols: &mut Vec<MaybeUninit<f32>>,
) -> CResult<()> {
    let cout_g = d.len() / (oh * ow).max(1);
    let (out, len) = (gemm::Out(d.as_mut_ptr()), d.len());
    // One im2col buffer per worker: more than the one band `conv2d` checked
    // when a band is a single output row (`bands_in_turn` checks them).
    bands_in_turn(oh, task_rows, kk * task_rows * ow, cols, |col, oy0, rows| {
        let col = im2col_rows(xg, chw, win, (oy0, rows, ow), &mut col[..kk * rows * ow], false);
        let at = oy0 * ow;
        // SAFETY: this task writes columns at..at + rows·ow of the output's
        // cout_g rows (oh·ow apart), which no other task writes; `d` is
        // borrowed mutably until every task returns.
        unsafe {
            gemm::matmul_into_ptr(
                1,
                gemm::Out(out.at(at)),
                len - at,
                oh * ow,
                (cout_g, rows * ow, kk),
                lhs,
                MatRef::row_major(col, rows * ow),
                bias,
                tail.from(at),
            )
        }
    })
}

/// Floats of input slab and sums per task of a conv run as tap products
/// ([`tap_bands`]): 512 KB, a quarter of these machines' L2, as
/// [`COL_BUDGET`] (1 MB made PP-OCRv4 det 6% slower at 1 and 2 threads).
/// Small in tests ([`sized`]).
const TAP_BUDGET: usize = 1 << 17;

/// Output rows per task when a conv runs as tap products ([`tap_bands`]),
/// or `None` for im2col: only at stride 1 with more than one tap, at least
/// 4 input channels a group (fewer, and the products are too thin to beat
/// the copy), more output positions than channels, and only when even a
/// one-row band's products are on gemm's packed kernel, so that the sums
/// do not depend on the bands (nor so on the thread count).
fn tap_band(cin_g: usize, cout_g: usize, win: &Window, (oh, ow): (usize, usize)) -> Option<usize> {
    let (kh, kw) = win.kernel;
    if win.stride != (1, 1) || kh * kw < 2 || cin_g < 4 || oh == 0 || oh * ow < cout_g {
        return None;
    }
    if !gemm::packed_kernel(cout_g, ow, cin_g) {
        return None;
    }
    let wp = ow.checked_add((kw - 1).checked_mul(win.dilation.1)?)?;
    let halo = (kh - 1).checked_mul(win.dilation.0)?;
    let fixed = cin_g.checked_mul(halo)?.checked_mul(wp)?;
    let per_row = cin_g.checked_add(cout_g)?.checked_mul(wp)?;
    let threads = rayon::current_num_threads().max(1);
    Some((sized(900, TAP_BUDGET).saturating_sub(fixed) / per_row).clamp(1, oh.div_ceil(threads)))
}

/// One image and group of a stride-1 conv as a sum of one product per
/// filter tap, without im2col: per task of `task_rows` output rows, the
/// input rows they read are copied once into a zero-bordered slab (`[cin_g,
/// rows + halo, wp]`, `wp` the padded width), in which tap `(i, j)`'s input
/// for every output is one `[cin_g, n]` view at a fixed offset (outputs
/// laid out `wp` apart per row, the `wp − ow` between rows computed and
/// dropped). The sums `[cout_g, n]` gather the taps' products (`W_ij ·
/// X_ij`, accumulated in place by gemm), then each output row is copied
/// out with the bias and `tail`. im2col copies every input `kh·kw` times;
/// this copies it about once, for `(wp − ow) / ow` more multiply-adds.
/// Bands are taken in turn by each pool thread ([`bands_in_turn`]). `d` is the `[cout_g, oh·ow]` output; `wg` the
/// group's `[cout_g, cin_g, kh, kw]` weights.
#[allow(clippy::too_many_arguments)]
fn tap_bands(
    d: &mut [MaybeUninit<f32>],
    xg: &[f32],
    (cin_g, h, w): (usize, usize, usize),
    win: &Window,
    (oh, ow): (usize, usize),
    task_rows: usize,
    wg: &[f32],
    bias: Bias,
    tail: Tail,
    scratch: &mut Vec<MaybeUninit<f32>>,
) -> CResult<()> {
    let (kh, kw) = win.kernel;
    let (dh, dw) = win.dilation;
    let (pt, pl) = (win.pads[0].0, win.pads[1].0);
    let ohw = oh * ow;
    let cout_g = d.len() / ohw.max(1);
    // Stride 1: the padded width is `w + pl + pr`, and the output `wp − (kw − 1)·dw` wide.
    let wp = ow + (kw - 1) * dw;
    let slab_rows = task_rows + (kh - 1) * dh;
    check_alloc("conv tap slab", &[cin_g, slab_rows, wp], 4)?;
    check_alloc("conv tap sums", &[cout_g, task_rows, wp], 4)?;
    let (slab, sums) = (cin_g * slab_rows * wp, cout_g * task_rows * wp);
    let isa = rows::Isa::detect();
    let out = gemm::Out(d.as_mut_ptr());
    let kk = cin_g * kh * kw;
    // One slab and sums per worker.
    bands_in_turn(oh, task_rows, slab + sums, scratch, |part, oy0, rows| {
        let (xs, acc) = part.split_at_mut(slab);
        let plane = (rows + (kh - 1) * dh) * wp;
        let xs = fill_slab(xg, (h, w), (oy0, plane / wp), (pt, pl), wp, &mut xs[..cin_g * plane]);
        // Output (r, x) of the band is column r·wp + x of the sums.
        let n = (rows - 1) * wp + ow;
        let acc = acc.as_mut_ptr();
        for (tap, (ti, tj)) in (0..kh).flat_map(|i| (0..kw).map(move |j| (i, j))).enumerate() {
            // W_ij: element (co, ci) at wg[(co·cin_g + ci)·kh·kw + i·kw + j].
            let lhs = MatRef {
                data: &wg[ti * kw + tj..],
                rs: kk,
                cs: kh * kw,
                batch: 0,
            };
            // X_ij: element (ci, p) at xs[ci·plane + i·dh·wp + j·dw + p]; its
            // last, (cin_g − 1, n − 1), is inside channel cin_g − 1's rows.
            let rhs = MatRef {
                data: &xs[ti * dh * wp + tj * dw..],
                rs: plane,
                cs: 1,
                batch: 0,
            };
            assert!(
                lhs.covers(1, cout_g, cin_g) && rhs.covers(1, cin_g, n),
                "conv tap ({ti}, {tj}) outside its weights or slab"
            );
            // SAFETY: `acc` holds `cout_g · n` elements of this worker's
            // part; the views cover their matrices (asserted: the slab's
            // rows reach `(kh − 1)·dh` past the band's last); the first
            // tap writes every sum, the others add to them.
            unsafe { gemm::product_into(acc, n, (cout_g, n, cin_g), lhs, rhs, tap > 0) };
        }
        for co in 0..cout_g {
            // SAFETY: the products above wrote `acc`'s row co.
            let sums = unsafe { std::slice::from_raw_parts_mut(acc.add(co * n).cast::<f32>(), n) };
            // Without a residual or per-position biases (both indexed by
            // output), the bias and activation go on the whole row of
            // sums at once: the dropped columns too, but in one call, not
            // one per row.
            let whole = tail.residual.is_none() && !matches!(bias, Bias::Cols(_));
            if whole {
                gemm::epilogue_one(isa, sums, co, 0, bias, tail);
            }
            for r in 0..rows {
                let at = co * ohw + (oy0 + r) * ow;
                // SAFETY: output row (co, oy0 + r) is this task's alone
                // (`d` is borrowed mutably until every task returns),
                // and once copied it is initialised.
                let dst = unsafe {
                    let dp = out.at(at).cast::<f32>();
                    std::ptr::copy_nonoverlapping(sums[r * wp..].as_ptr(), dp, ow);
                    std::slice::from_raw_parts_mut(dp, ow)
                };
                if !whole {
                    gemm::epilogue_one(isa, dst, co, ohw, bias, tail.from((oy0 + r) * ow));
                }
            }
        }
        Ok(())
    })
}

/// Fills `slab` (`[cin, rows, wp]`) with padded rows `oy0..oy0 + rows` of
/// every channel of `x` (`[cin, h, w]`, `pt` rows and `pl` columns of zero
/// padding before it, zeros after it up to `wp`), every element written.
fn fill_slab<'a>(
    x: &[f32],
    (h, w): (usize, usize),
    (oy0, rows): (usize, usize),
    (pt, pl): (usize, usize),
    wp: usize,
    slab: &'a mut [MaybeUninit<f32>],
) -> &'a [f32] {
    let plane = rows * wp;
    for (c, chan) in slab.chunks_exact_mut(plane.max(1)).enumerate() {
        for (r, row) in chan.chunks_exact_mut(wp).enumerate() {
            match (oy0 + r).checked_sub(pt).filter(|&iy| iy < h) {
                Some(iy) => {
                    let src = &x[(c * h + iy) * w..][..w];
                    zero(&mut row[..pl]);
                    // SAFETY: `row[pl..pl + w]` is inside the row (`pl + w ≤
                    // wp`) and cannot overlap `x`.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), row[pl..].as_mut_ptr().cast::<f32>(), w) };
                    zero(&mut row[pl + w..]);
                }
                None => zero(row),
            }
        }
    }
    // SAFETY: every channel's every row was written above.
    unsafe { &*(slab as *const [MaybeUninit<f32>] as *const [f32]) }
}

/// The transposed convolution of `x` (`[nb, cin, h, w]`, contiguous f32)
/// with `weight` (`[cin, cout / groups, kh, kw]` flattened), kernel,
/// strides and dilations from `win` (its pads are not used), into an
/// `(oh, ow)` output whose `(0, 0)` is position `(pads.0, pads.1)` of the
/// full (uncropped) result, plus an optional per-channel `bias`. Per image
/// and group: `cols [cout/g·kh·kw, h·w] = W_gᵀ · x_g` on the GEMM, then each
/// column scattered (added) into the output (col2im). Costs
/// `2·nb·cin·h·w·cout/g·kh·kw` flops plus a `cout/g·kh·kw·h·w` buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_transpose2d(
    x: &[f32],
    (nb, cin, h, w): (usize, usize, usize, usize),
    weight: &[f32],
    cout: usize,
    groups: usize,
    win: &Window,
    (pt, pl): (usize, usize),
    (oh, ow): (usize, usize),
    bias: Option<&[f32]>,
) -> CResult<Vec<f32>> {
    let (kh, kw) = win.kernel;
    let (sh, sw) = win.stride;
    let (dh, dw) = win.dilation;
    if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) || sh == 0 || sw == 0 {
        candle_core::bail!("transposed conv of {cin} input and {cout} output channels in {groups} groups")
    }
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let kk = cout_g * kh * kw;
    let hw = h * w;
    if Some(x.len()) != nb.checked_mul(cin).and_then(|v| v.checked_mul(hw))
        || Some(weight.len()) != cin.checked_mul(kk)
        || bias.is_some_and(|b| b.len() != cout)
    {
        candle_core::bail!(
            "transposed conv input of {} values for [{nb}, {cin}, {h}, {w}], weight of {} for [{cin}, {cout_g}, {kh}, {kw}]",
            x.len(),
            weight.len()
        )
    }
    check_alloc("conv_transpose output", &[nb, cout, oh, ow], 4)?;
    check_alloc("conv_transpose column buffer", &[kk, hw], 4)?;
    let ohw = oh * ow;
    let mut out = vec![0f32; nb * cout * ohw];
    let mut cols = Vec::new();
    for b in 0..nb {
        for g in 0..groups {
            let xg = &x[(b * cin + g * cin_g) * hw..(b * cin + (g + 1) * cin_g) * hw];
            // W_gᵀ: element (r, c) is weight[(g·cin_g + c)·kk + r].
            let lhs = MatRef {
                data: &weight[g * cin_g * kk..(g + 1) * cin_g * kk],
                rs: 1,
                cs: kk,
                batch: 0,
            };
            cols = gemm::matmul(
                1,
                (kk, hw, cin_g),
                lhs,
                MatRef::row_major(xg, hw),
                Bias::None,
                Tail::act(Act::Identity),
            )?;
            let planes = &mut out[(b * cout + g * cout_g) * ohw..(b * cout + (g + 1) * cout_g) * ohw];
            let scatter = |(co, plane): (usize, &mut [f32])| {
                if ohw == 0 {
                    return;
                }
                for i in 0..kh {
                    for j in 0..kw {
                        let src = &cols[((co * kh + i) * kw + j) * hw..][..hw];
                        let off = j * dw;
                        // Input columns whose output column ix·sw + off − pl is inside [0, ow).
                        let lo = pl.saturating_sub(off).div_ceil(sw).min(w);
                        let hi = match (ow + pl).checked_sub(off + 1) {
                            Some(last) => (last / sw + 1).min(w),
                            None => 0,
                        }
                        .max(lo);
                        for iy in 0..h {
                            let Some(oy) = (iy * sh + i * dh).checked_sub(pt).filter(|&oy| oy < oh) else {
                                continue;
                            };
                            let orow = &mut plane[oy * ow..(oy + 1) * ow];
                            let srow = &src[iy * w..(iy + 1) * w];
                            for ix in lo..hi {
                                orow[ix * sw + off - pl] += srow[ix];
                            }
                        }
                    }
                }
            };
            if planes.len() >= 1 << 15 && rayon::current_num_threads() > 1 {
                planes.par_chunks_mut(ohw.max(1)).enumerate().for_each(scatter);
            } else {
                planes.chunks_mut(ohw.max(1)).enumerate().for_each(scatter);
            }
        }
    }
    drop(cols);
    if let Some(bs) = bias {
        for (i, plane) in out.chunks_mut(ohw.max(1)).enumerate() {
            let bv = bs[i % cout];
            plane.iter_mut().for_each(|v| *v += bv);
        }
    }
    Ok(out)
}

/// Floats of im2col buffer per band of output rows: 512 KB, a quarter of
/// these machines' L2, so that the product reads back columns im2col just
/// wrote from cache (a 4 MB budget made YOLOv8n's stride-2 convs a third
/// slower). Small in tests ([`sized`]).
const COL_BUDGET: usize = 1 << 17;

/// The fewest output positions a band's product is given, budget or not:
/// narrower, gemm's per-call packing of the weights outweighs the cache
/// gain (one in tests: [`sized`]).
const BAND_MIN_COLS: usize = 512;

/// Test builds run with small budgets (300 floats of im2col, 900 of tap
/// slab, bands from one position), so that their small convs run several
/// bands and bands of one row, unless a timing test sets this.
#[cfg(test)]
pub(crate) static REAL_BUDGETS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// [`COL_BUDGET`], or 300 floats in tests ([`sized`]).
fn col_budget() -> usize {
    sized(300, COL_BUDGET)
}

/// `real` in release use (and timing tests), `small` in other tests.
#[inline]
pub(super) fn sized(small: usize, real: usize) -> usize {
    #[cfg(test)]
    if !REAL_BUDGETS.load(Ordering::Relaxed) {
        return small;
    }
    let _ = small;
    real
}

/// Output rows per im2col band of a conv with `kk` rows of columns:
/// `budget` floats' worth, but at least [`BAND_MIN_COLS`] positions, at
/// least one row and at most `oh`.
fn band_rows(budget: usize, kk: usize, (oh, ow): (usize, usize)) -> usize {
    (budget / (kk * ow).max(1))
        .max(sized(1, BAND_MIN_COLS).div_ceil(ow.max(1)))
        .clamp(1, oh.max(1))
}

/// Fills `col` (`[cin·kh·kw, oh·ow]` for output rows `oy0..oy0 + oh`) from
/// `x` (`[cin, h, w]`): row `(c, i, j)` holds, for each output position, the
/// input under filter tap `(i, j)` of channel `c`, or 0 in the padding.
/// Every element is written.
fn im2col<'a>(
    x: &[f32],
    chw: (usize, usize, usize),
    win: &Window,
    rows: (usize, usize, usize),
    col: &'a mut Vec<MaybeUninit<f32>>,
) -> &'a [f32] {
    let n = chw.0 * win.kernel.0 * win.kernel.1 * rows.1 * rows.2;
    im2col_rows(x, chw, win, rows, uninit(col, n), true)
}

/// The first `n` elements of `buf`, grown (not initialised) when shorter.
fn uninit(buf: &mut Vec<MaybeUninit<f32>>, n: usize) -> &mut [MaybeUninit<f32>] {
    if buf.len() < n {
        buf.reserve(n - buf.len());
        // SAFETY: the capacity is at least `n`, and `MaybeUninit` elements
        // need no initialising (`resize` would still loop over them).
        unsafe { buf.set_len(n) };
    }
    &mut buf[..n]
}

/// Writes 0.0 to every element of `s`.
fn zero(s: &mut [MaybeUninit<f32>]) {
    for v in s {
        v.write(0.0);
    }
}

/// [`im2col`] into `col`, exactly `cin·kh·kw·oh·ow` long, its rows filled
/// on the pool when `pool` and the buffer is large, else on this thread;
/// returns `col`, every element written.
fn im2col_rows<'a>(
    x: &[f32],
    (cin, h, w): (usize, usize, usize),
    win: &Window,
    (oy0, oh, ow): (usize, usize, usize),
    col: &'a mut [MaybeUninit<f32>],
    pool: bool,
) -> &'a [f32] {
    let (kh, kw) = win.kernel;
    let (sh, sw) = win.stride;
    let (dh, dw) = win.dilation;
    let (pt, pl) = (win.pads[0].0, win.pads[1].0);
    assert_eq!(col.len(), cin * kh * kw * oh * ow, "im2col buffer size");
    let isa = rows::Isa::detect();
    let fill = |(r, row): (usize, &mut [MaybeUninit<f32>])| {
        let (c, i, j) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &x[c * h * w..(c + 1) * h * w];
        let off = j * dw;
        // Output columns whose input column ox·sw + off − pl is inside [0, w).
        let lo = pl.saturating_sub(off).div_ceil(sw).min(ow);
        let hi = match (w + pl).checked_sub(off + 1) {
            Some(last) if w > 0 => (last / sw + 1).min(ow),
            _ => 0,
        }
        .max(lo);
        for (oy, orow) in row.chunks_exact_mut(ow).enumerate() {
            let iy = ((oy0 + oy) * sh + i * dh).checked_sub(pt).filter(|&iy| iy < h);
            let Some(iy) = iy else {
                zero(orow);
                continue;
            };
            let src = &plane[iy * w..(iy + 1) * w];
            zero(&mut orow[..lo]);
            zero(&mut orow[hi..]);
            if hi == lo {
                continue;
            }
            let first = lo * sw + off - pl;
            if sw == 1 {
                let (d, s) = (&mut orow[lo..hi], &src[first..first + (hi - lo)]);
                // SAFETY: `d` and `s` are `hi − lo` long, and `d` (the
                // buffer being filled) cannot overlap `s` (the input).
                unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), d.as_mut_ptr().cast::<f32>(), s.len()) };
            } else if sw == 2 {
                rows::evens(isa, &src[first..], &mut orow[lo..hi]);
            } else {
                for (d, s) in orow[lo..hi].iter_mut().zip(src[first..].iter().step_by(sw)) {
                    d.write(*s);
                }
            }
        }
    };
    let rows = oh * ow;
    if rows > 0 {
        if pool && col.len() >= 1 << 15 && rayon::current_num_threads() > 1 {
            col.par_chunks_mut(rows).enumerate().for_each(fill);
        } else {
            col.chunks_mut(rows).enumerate().for_each(fill);
        }
    }
    // SAFETY: the rows `fill` ran on cover `col` (cin·kh·kw rows of oh·ow;
    // none when oh·ow is 0), and it writes every element of each.
    unsafe { &*(col as *const [MaybeUninit<f32>] as *const [f32]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output at a time, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        (nb, cin, h, w): (usize, usize, usize, usize),
        wt: &[f32],
        cout: usize,
        groups: usize,
        win: &Window,
        bias: Option<&[f32]>,
        act: Act,
    ) -> Vec<f32> {
        let (oh, ow) = win.output(h, w).unwrap();
        let (kh, kw) = win.kernel;
        let (cin_g, cout_g) = (cin / groups, cout / groups);
        let mut out = vec![0f32; nb * cout * oh * ow];
        for b in 0..nb {
            for co in 0..cout {
                let g = co / cout_g;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias.map_or(0.0, |bs| bs[co] as f64);
                        for ci in 0..cin_g {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let iy = (oy * win.stride.0 + i * win.dilation.0) as isize - win.pads[0].0 as isize;
                                    let ix = (ox * win.stride.1 + j * win.dilation.1) as isize - win.pads[1].0 as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * cin + g * cin_g + ci) * h + iy as usize) * w + ix as usize];
                                    acc += xv as f64 * wt[((co * cin_g + ci) * kh + i) * kw + j] as f64;
                                }
                            }
                        }
                        out[((b * cout + co) * oh + oy) * ow + ox] = act.f(acc as f32);
                    }
                }
            }
        }
        out
    }

    /// Whether a group of this conv takes the direct path (never off x86-64).
    fn direct_fits(isa: rows::Isa, cin_g: usize, cout_g: usize, win: &Window, out: (usize, usize)) -> bool {
        #[cfg(target_arch = "x86_64")]
        return super::super::conv_direct::fits(isa, cin_g, cout_g, win, out);
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, cin_g, cout_g, win, out);
            false
        }
    }

    fn ramp(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.61 + seed).sin()).collect()
    }

    #[test]
    fn matches_the_definition_on_odd_windows_and_groups() {
        #[rustfmt::skip]
        let cases = [
            // (nb, cin, h, w, cout, groups, kernel, stride, dilation, pads)
            (1, 3, 9, 11, 5, 1, (1, 1), (1, 1), (1, 1), [(0, 0), (0, 0)]),
            (2, 4, 7, 6, 6, 2, (1, 1), (2, 1), (1, 1), [(0, 0), (1, 0)]),
            (1, 3, 13, 10, 4, 1, (3, 3), (2, 2), (1, 1), [(1, 1), (1, 1)]),
            (1, 6, 12, 9, 9, 3, (5, 3), (1, 2), (2, 1), [(4, 3), (0, 2)]),
            (2, 2, 1, 17, 3, 1, (1, 4), (1, 3), (1, 2), [(0, 0), (3, 1)]),
            (1, 5, 6, 6, 10, 5, (3, 3), (3, 3), (1, 1), [(0, 2), (2, 0)]),
            (1, 2, 4, 4, 2, 1, (5, 5), (1, 1), (1, 1), [(2, 2), (2, 2)]),
            // Rows wide enough for whole vectors of the stride-2 gather.
            (1, 2, 5, 75, 3, 1, (3, 3), (2, 2), (1, 1), [(1, 1), (1, 0)]),
            (1, 2, 4, 70, 2, 1, (3, 4), (1, 2), (1, 2), [(0, 1), (0, 3)]),
            // And of the stride-1 rows, padded, dilated and cropped.
            (1, 3, 6, 50, 2, 1, (3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)]),
            (2, 2, 7, 45, 4, 2, (3, 5), (2, 1), (2, 2), [(3, 0), (4, 1)]),
            (1, 2, 5, 33, 2, 1, (3, 3), (1, 1), (1, 1), [(0, 0), (0, 0)]),
            // Tap products (stride 1, ≥ 4 channels a group): pads on one
            // side, none, wider than the kernel, dilations, groups, and
            // bands of one row (the slab over the test budget).
            (1, 6, 9, 21, 20, 1, (3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)]),
            (2, 8, 7, 30, 24, 2, (3, 5), (1, 1), (2, 1), [(0, 3), (2, 0)]),
            (1, 5, 11, 30, 18, 1, (2, 4), (1, 1), (1, 3), [(0, 0), (0, 0)]),
            (1, 4, 6, 40, 9, 1, (5, 5), (1, 1), (1, 1), [(4, 4), (4, 4)]),
            (1, 12, 5, 30, 10, 1, (1, 3), (1, 1), (1, 2), [(0, 0), (2, 2)]),
            // The direct path (at least 8 output channels a group): stride
            // 2, a last block of one channel, groups with mixed strides
            // and dilations, a 5 × 5, stride 2 dilated, one-sided pads.
            (1, 8, 20, 70, 16, 1, (3, 3), (2, 2), (1, 1), [(1, 1), (1, 1)]),
            (1, 8, 9, 100, 9, 1, (3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)]),
            (2, 16, 12, 60, 24, 2, (3, 5), (1, 2), (2, 1), [(2, 2), (2, 1)]),
            (1, 8, 10, 96, 10, 1, (2, 4), (2, 1), (1, 3), [(0, 1), (3, 0)]),
            (1, 5, 7, 48, 8, 1, (5, 5), (1, 1), (1, 1), [(2, 2), (2, 2)]),
            (1, 8, 11, 64, 16, 1, (3, 3), (2, 2), (2, 2), [(2, 2), (2, 2)]),
            (1, 8, 8, 50, 8, 1, (3, 3), (1, 1), (1, 1), [(0, 2), (3, 0)]),
        ];
        let isa = rows::Isa::detect();
        let (mut tapped, mut direct) = (0, 0);
        for (nb, cin, h, w, cout, groups, kernel, stride, dilation, pads) in cases {
            let win = Window {
                kernel,
                stride,
                dilation,
                pads,
            };
            let x = ramp(nb * cin * h * w, 0.2);
            let wt = ramp(cout * cin / groups * kernel.0 * kernel.1, 1.1);
            let b = ramp(cout, 2.5);
            let (oh, ow) = win.output(h, w).unwrap();
            if direct_fits(isa, cin / groups, cout / groups, &win, (oh, ow)) {
                direct += 1;
            }
            if let Some(rows) = tap_band(cin / groups, cout / groups, &win, (oh, ow)) {
                tapped += 1;
                assert!(rows < oh, "{win:?}: bands of {rows} rows, not one band");
            }
            // Every case as products, and on the direct path where it applies.
            for on in [(isa, false), (isa, true)] {
                for (bias, act) in [
                    (None, Act::Identity),
                    (Some(&b[..]), Act::Clamp(0.0, 0.5)),
                    (Some(&b[..]), Act::Silu),
                ] {
                    let dims = (nb, cin, h, w);
                    let (got, (oh, ow)) =
                        conv2d_on(on, &x, dims, &wt, cout, groups, &win, bias, Tail::act(act)).unwrap();
                    let want = reference(&x, dims, &wt, cout, groups, &win, bias, act);
                    assert_eq!(got.len(), nb * cout * oh * ow);
                    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(diff < 1e-4, "{win:?} groups {groups} direct {}: {diff}", on.1);
                    // A fused residual: exactly the unfused add (and activation) on the same product.
                    let res = ramp(got.len(), 0.7);
                    let tail = Tail {
                        pre: act,
                        residual: Some(&res),
                        post: Act::Clamp(-0.5, 1.0),
                    };
                    let (fused, _) = conv2d_on(on, &x, dims, &wt, cout, groups, &win, bias, tail).unwrap();
                    let apart: Vec<f32> = got.iter().zip(&res).map(|(g, r)| tail.post.f(g + r)).collect();
                    assert_eq!(fused, apart, "{win:?} groups {groups} direct {} + residual", on.1);
                }
            }
        }
        assert_eq!(
            tapped, 8,
            "the tap-product cases (and three direct ones) take that path without the direct one"
        );
        if isa == rows::Isa::Avx512 {
            assert_eq!(direct, 8, "the direct cases (and a tap-product one) take that path");
        } else {
            eprintln!("no AVX-512F here: the direct path's cases ran as products only");
        }
    }

    #[test]
    fn bands_on_the_pool_give_the_one_thread_sums_bit_for_bit() {
        #[rustfmt::skip]
        let cases = [
            // (cin, h, w, cout, groups, kernel, stride, dilation, pads)
            (8, 14, 14, 24, 1, (3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)]),
            (8, 31, 29, 40, 2, (3, 3), (1, 2), (2, 1), [(2, 2), (0, 1)]),
            (3, 40, 23, 17, 1, (5, 5), (2, 1), (1, 1), [(2, 2), (2, 2)]),
        ];
        for (cin, h, w, cout, groups, kernel, stride, dilation, pads) in cases {
            let win = Window {
                kernel,
                stride,
                dilation,
                pads,
            };
            let dims = (2, cin, h, w);
            let x = ramp(2 * cin * h * w, 0.3);
            let wt = ramp(cout * cin / groups * kernel.0 * kernel.1, 0.9);
            let b = ramp(cout, 1.7);
            let (oh, ow) = win.output(h, w).unwrap();
            let res = ramp(2 * cout * oh * ow, 0.4);
            let tail = Tail {
                pre: Act::Silu,
                residual: Some(&res),
                post: Act::Identity,
            };
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let kk = cin / groups * kernel.0 * kernel.1;
                    let band = band_rows(col_budget(), kk, (oh, ow));
                    let pooled = pooled_band(cout / groups, kk, (oh, ow), band).is_some();
                    // As products: the direct path has its own test.
                    let on = (rows::Isa::detect(), false);
                    (
                        pooled,
                        conv2d_on(on, &x, dims, &wt, cout, groups, &win, Some(&b), tail)
                            .unwrap()
                            .0,
                    )
                })
            };
            let (pooled, one) = run(1);
            assert!(!pooled, "one thread runs bands in turn");
            let want = reference(&x, dims, &wt, cout, groups, &win, Some(&b), Act::Silu);
            let diff = one
                .iter()
                .zip(&want)
                .zip(&res)
                .map(|((a, b), r)| (a - b - r).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{win:?}: {diff}");
            for threads in [2, 3] {
                let (pooled, got) = run(threads);
                assert!(pooled, "{win:?} on {threads} threads: bands as tasks");
                assert!(got == one, "{win:?} on {threads} threads: the sums changed");
            }
        }
    }

    #[test]
    fn transposed_matches_the_definition_on_odd_windows_groups_and_crops() {
        #[rustfmt::skip]
        let cases = [
            // (nb, cin, h, w, cout, groups, kernel, stride, dilation, begin, out)
            (1, 3, 4, 5, 2, 1, (2, 2), (2, 2), (1, 1), (0, 0), (8, 10)),
            (2, 4, 3, 6, 6, 2, (3, 2), (2, 3), (1, 2), (1, 0), (6, 17)),
            (1, 5, 5, 4, 5, 5, (2, 2), (2, 2), (1, 1), (1, 1), (8, 6)),
            (1, 2, 1, 7, 3, 1, (1, 4), (1, 3), (1, 2), (0, 2), (1, 30)),
            (1, 2, 3, 3, 2, 2, (3, 3), (1, 1), (2, 2), (2, 2), (7, 9)),
        ];
        for (nb, cin, h, w, cout, groups, kernel, stride, dilation, begin, (oh, ow)) in cases {
            let win = Window {
                kernel,
                stride,
                dilation,
                pads: [(0, 0); 2],
            };
            let (cin_g, cout_g) = (cin / groups, cout / groups);
            let x = ramp(nb * cin * h * w, 0.4);
            let wt = ramp(cin * cout_g * kernel.0 * kernel.1, 1.7);
            let b = ramp(cout, 0.9);
            let got =
                conv_transpose2d(&x, (nb, cin, h, w), &wt, cout, groups, &win, begin, (oh, ow), Some(&b)).unwrap();
            // The definition: every input scattered through the kernel, in f64.
            let mut want = vec![0f64; nb * cout * oh * ow];
            for bi in 0..nb {
                for ci in 0..cin {
                    let g = ci / cin_g;
                    for iy in 0..h {
                        for ix in 0..w {
                            let xv = x[((bi * cin + ci) * h + iy) * w + ix] as f64;
                            for co in 0..cout_g {
                                for i in 0..kernel.0 {
                                    for j in 0..kernel.1 {
                                        let oy = (iy * stride.0 + i * dilation.0) as isize - begin.0 as isize;
                                        let ox = (ix * stride.1 + j * dilation.1) as isize - begin.1 as isize;
                                        if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                            continue;
                                        }
                                        let wv = wt[((ci * cout_g + co) * kernel.0 + i) * kernel.1 + j] as f64;
                                        let o = (((bi * cout + g * cout_g + co) * oh) + oy as usize) * ow + ox as usize;
                                        want[o] += xv * wv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for (i, v) in want.iter_mut().enumerate() {
                *v += b[(i / (oh * ow)) % cout] as f64;
            }
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0f64, f64::max);
            assert!(diff < 1e-5, "{win:?} groups {groups} begin {begin:?}: {diff}");
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let win = Window {
            kernel: (3, 3),
            stride: (1, 1),
            dilation: (1, 1),
            pads: [(0, 0); 2],
        };
        let e = conv2d(
            &[0.0; 4],
            (1, 1, 2, 2),
            &[0.0; 9],
            1,
            1,
            &win,
            None,
            Tail::act(Act::Identity),
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = conv2d(
            &[0.0; 3],
            (1, 1, 2, 2),
            &[0.0; 9],
            1,
            1,
            &win,
            None,
            Tail::act(Act::Identity),
        )
        .unwrap_err();
        assert!(e.to_string().contains("conv input of 3 values"), "{e}");
        let e = conv2d(
            &[0.0; 8],
            (1, 2, 2, 2),
            &[0.0; 9],
            3,
            2,
            &win,
            None,
            Tail::act(Act::Identity),
        )
        .unwrap_err();
        assert!(e.to_string().contains("groups"), "{e}");
    }

    /// The product path against the direct one (`conv_direct`, where it
    /// applies: the first convs on RGB and the pointwise convs at the end,
    /// MobileNetV2's, run as products in both columns),
    /// with the budgets release builds use, 1 thread (`CONV_THREADS=2` for two),
    /// best of 7: `cargo test --release --lib conv_gemm::tests::timing --
    /// --ignored --nocapture` (`CONV_SHAPE=i` for one shape). Run it alone:
    /// it switches the budgets of the whole test process.
    #[test]
    #[ignore]
    fn timing() {
        REAL_BUDGETS.store(true, Ordering::Relaxed);
        let threads = std::env::var("CONV_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let only = std::env::var("CONV_SHAPE").ok().and_then(|v| v.parse::<usize>().ok());
        // (cin, h = w, cout, k, stride): YOLOv8n's 3 × 3 convs at 320 × 320,
        // then MobileNetV2's first and PP-OCRv4 det's.
        let shapes = [
            (3usize, 320usize, 16usize, 3usize, 2usize),
            (16, 160, 32, 3, 2),
            (32, 80, 64, 3, 2),
            (64, 40, 128, 3, 2),
            (128, 20, 256, 3, 2),
            (16, 80, 16, 3, 1),
            (64, 40, 64, 3, 1),
            (128, 20, 64, 3, 1),
            (64, 10, 64, 3, 1),
            (3, 224, 32, 3, 2),
            (256, 20, 256, 3, 1),
            (32, 40, 32, 3, 1),
            (32, 40, 32, 5, 1),
            (64, 40, 128, 1, 2),
            (96, 48, 96, 3, 1),
            (96, 56, 24, 1, 1),
            (144, 56, 24, 1, 1),
            (576, 7, 160, 1, 1),
            (320, 7, 1280, 1, 1),
            (16, 112, 96, 1, 1),
        ];
        for (i, &(cin, hw, cout, k, s)) in shapes.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let x = ramp(cin * hw * hw, 0.3);
            let wt = ramp(cout * cin * k * k, 0.7);
            let b = ramp(cout, 0.1);
            let win = Window {
                kernel: (k, k),
                stride: (s, s),
                dilation: (1, 1),
                pads: [(k / 2, k / 2), (k / 2, k / 2)],
            };
            let (oh, ow) = win.output(hw, hw).unwrap();
            let reps = 30;
            let mut best = [f64::MAX; 2];
            pool.install(|| {
                for _ in 0..7 {
                    for (p, direct) in [false, true].into_iter().enumerate() {
                        let t = std::time::Instant::now();
                        for _ in 0..reps {
                            let tail = Tail::act(Act::Silu);
                            let on = (rows::Isa::detect(), direct);
                            conv2d_on(on, &x, (1, cin, hw, hw), &wt, cout, 1, &win, Some(&b), tail).unwrap();
                        }
                        best[p] = best[p].min(t.elapsed().as_secs_f64() / reps as f64);
                    }
                }
            });
            let macs = (cout * oh * ow * cin * k * k) as f64;
            eprintln!(
                "{cin}->{cout} {hw}² k{k} s{s}: product {:.1} µs ({:.1} G/s), direct {:.1} µs ({:.1} G/s), direct/product {:.2}",
                best[0] * 1e6,
                macs / best[0] / 1e9,
                best[1] * 1e6,
                macs / best[1] / 1e9,
                best[1] / best[0]
            );
        }
        REAL_BUDGETS.store(false, Ordering::Relaxed);
    }
}
