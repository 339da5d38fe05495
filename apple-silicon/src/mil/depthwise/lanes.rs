//! Depthwise convolution of planes narrower than a vector, 16 channels at
//! a time with the channels on the lanes (AVX-512F).
//!
//! Why: a plane a task costs a fixed ~100–200 ns (copying its rows one by
//! one, one masked vector per output row), which for MobileNetV2's 7×7 and
//! 14×14 planes of hundreds of channels is most of the op — ONNX Runtime
//! ran those layers 2–5× faster with the channels on the lanes. Here 16
//! planes are copied into one zero-bordered `[ph, pw, 16]` block (16
//! columns of 16 planes at a time, transposed in registers), every output
//! is then one vector summed over the taps, and the outputs go back to
//! their 16 planes transposed the same way.
//!
//! Sums: each output is the bias, then one fused multiply-add per tap in
//! the filter's row-major order, then the activation in the register when
//! it is a cheap one — the same operations in the same order as the
//! plane-by-plane AVX-512 kernels, so the bits do not depend on which of
//! the two paths ran.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::super::fuse::Act;
use super::super::limits;
use super::super::rows;
use super::Layout;

/// Lanes of a vector: channels a block holds.
pub(super) const LANES: usize = 16;

/// Per-thread buffers reused across blocks.
#[derive(Default)]
pub(super) struct Block {
    /// The padded block `[ph, pw, 16]`; its border stays zero across
    /// blocks of one layout (every block writes the same interior).
    input: Vec<f32>,
    /// Per tap, the 16 lanes' weights; then the 16 lanes' biases.
    wts: Vec<f32>,
    /// The outputs, `[oh · ow, 16]`, before they go to their planes.
    sums: Vec<f32>,
    /// Per tap, where output `(0, 0)` reads it in the block.
    offs: Vec<usize>,
}

/// Strided convs whose output rows are at least this wide stay on the
/// plane path: there a row is one (masked) vector of outputs, while here
/// every input value (four per output at stride 2) goes through a
/// transposition. `depthwise::tests::timing`, planes / lanes, 3 × 3 and
/// 5 × 5, stride 2: 0.86–0.90 at 14 outputs a row (192 channels), 0.98 at
/// 14 (96 channels), 0.96–1.00 at 12, 1.29–1.35 at 10, 2.1–2.2 at 7. In the
/// networks: PP-LCNet's 128-channel 28 × 28 layer 0.055 → 0.040 ms,
/// MobileNetV2's 192-channel one 0.062 → 0.055.
const STRIDED_WIDE: usize = 12;

/// Whether a conv of this layout, input plane `hw` values and output plane
/// `plane` values, runs here: AVX-512F, outputs narrower than a vector (and
/// than [`STRIDED_WIDE`] when strided), and
/// a task's two buffers (the block, `ph · pw · 16` floats, and the sums,
/// `plane · 16`) each within the memory limit in force — 16 planes' worth
/// of what the plane path holds, so a tall plane near the limit stays on
/// that path.
pub(super) fn fits(isa: rows::Isa, lay: &Layout, plane: usize) -> bool {
    let bytes = |n: Option<usize>| n.and_then(|n| n.checked_mul(LANES * 4)).map(|b| b as u64);
    let limit = limits::limit().unwrap_or(u64::MAX);
    let within = |b: Option<u64>| b.is_some_and(|b| b <= limit);
    isa == rows::Isa::Avx512
        && lay.ow < LANES
        && (lay.stride == 1 || lay.ow < STRIDED_WIDE)
        && within(bytes(lay.ph.checked_mul(lay.pw)))
        && within(bytes(Some(plane)))
}

/// The geometry a block needs besides the layout.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub h: usize,
    pub oh: usize,
    pub kh: usize,
    pub kw: usize,
    pub dil: usize,
    pub channels: usize,
}

/// Convolves planes `p0..p0 + n` (`n ≤ 16`, `src` holding their `h · w`
/// inputs each, `dst` their `oh · ow` outputs each) whose channels are
/// `(p0 + l) % channels`, with `weight` (`[channels, kh · kw]`) and `bias`,
/// then `act`. Returns `dst`, written.
///
/// # Safety
/// `fits` must have been true for this layout; `src` and `dst` hold `n`
/// planes each.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block<'d>(
    lay: &Layout,
    g: Geometry,
    src: &[f32],
    p0: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Act,
    buf: &mut Block,
    dst: &'d mut [MaybeUninit<f32>],
) -> &'d mut [f32] {
    let plane = g.oh * lay.ow;
    let hw = g.h * lay.w;
    let n = dst.len() / plane;
    debug_assert!(n <= LANES && src.len() == n * hw && dst.len() == n * plane);
    let taps = g.kh * g.kw;
    let len = lay.ph * lay.pw * LANES;
    if buf.input.len() != len {
        buf.input.clear();
        buf.input.resize(len, 0.0);
    }
    buf.wts.clear();
    buf.wts.resize((taps + 1) * LANES, 0.0);
    for l in 0..n {
        let c = (p0 + l) % g.channels;
        for t in 0..taps {
            buf.wts[t * LANES + l] = weight[c * taps + t];
        }
        buf.wts[taps * LANES + l] = bias.map_or(0.0, |b| b[c]);
    }
    let inner = if rows::in_registers(act) { act } else { Act::Identity };
    // SAFETY: AVX-512F (`fits`); the sizes above.
    unsafe { gather(lay, g.h, src, hw, n, &mut buf.input) };
    buf.sums.resize(plane * LANES, 0.0);
    buf.offs.clear();
    buf.offs
        .extend((0..taps).map(|t| ((t / g.kw) * g.dil * lay.pw + (t % g.kw) * g.dil) * LANES));
    let Block { input, wts, sums, offs } = buf;
    // SAFETY: as for `gather`; the offsets are the taps' for this layout.
    unsafe { compute(lay, g, (input, wts, offs), n, inner, sums, dst) };
    // SAFETY: `compute` stored every output of the `n` planes.
    let out = unsafe { rows::assume_init(dst) };
    if !rows::in_registers(act) {
        act.epilogue(out, 0.0);
    }
    out
}

/// The lanes `0..n` live.
fn live(n: usize) -> __mmask16 {
    if n >= LANES {
        !0
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// Transposes 16 vectors in place: lane `j` of vector `i` becomes lane `i`
/// of vector `j` (48 shuffles, all in registers).
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: &mut [__m512; 16]) {
    // Pairs of rows interleaved, then pairs of pairs: each 128-bit chunk
    // `c` of `u[4q + e]` holds element `4c + e` of rows `4q..4q + 4`.
    let mut t = [_mm512_setzero_ps(); 16];
    for q in 0..8 {
        t[2 * q] = _mm512_unpacklo_ps(r[2 * q], r[2 * q + 1]);
        t[2 * q + 1] = _mm512_unpackhi_ps(r[2 * q], r[2 * q + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let (a, b, c, d) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
        let pd = |x: __m512| _mm512_castps_pd(x);
        u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
        u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
        u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
        u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
    }
    // Then the chunks: element 4c + e of all 16 rows from chunk c of
    // u[e], u[4 + e], u[8 + e], u[12 + e].
    for e in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[e], u[4 + e]);
        let v1 = _mm512_shuffle_f32x4::<0xdd>(u[e], u[4 + e]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + e], u[12 + e]);
        let v3 = _mm512_shuffle_f32x4::<0xdd>(u[8 + e], u[12 + e]);
        r[e] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        r[8 + e] = _mm512_shuffle_f32x4::<0xdd>(v0, v2);
        r[4 + e] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        r[12 + e] = _mm512_shuffle_f32x4::<0xdd>(v1, v3);
    }
}

/// Copies the `n` planes of `src` (`hw` apart) into the block's interior:
/// input `(iy, ix)` to `(iy + pad_top, ix + pad_left)`, lanes past `n`
/// zero, 16 columns of 16 planes at a time through [`transpose16`]. Rows
/// and columns the outputs never read are left out.
///
/// # Safety
/// AVX-512F; `src` holds `n` planes of `h · w`; `out` is `[ph, pw, 16]`.
#[target_feature(enable = "avx512f")]
unsafe fn gather(lay: &Layout, h: usize, src: &[f32], hw: usize, n: usize, out: &mut [f32]) {
    let cols = lay.w.min(lay.pw.saturating_sub(lay.pad_left));
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    let mut r = [_mm512_setzero_ps(); 16];
    for iy in 0..h {
        let py = iy + lay.pad_top;
        if py >= lay.ph {
            break;
        }
        let mut x0 = 0;
        while x0 < cols {
            let k = LANES.min(cols - x0);
            let m = live(k);
            for (l, v) in r.iter_mut().enumerate().take(n) {
                // SAFETY: plane l's row iy, columns x0..x0 + k (masked).
                *v = unsafe { _mm512_maskz_loadu_ps(m, sp.add(l * hw + iy * lay.w + x0)) };
            }
            for v in r.iter_mut().skip(n) {
                *v = _mm512_setzero_ps();
            }
            transpose16(&mut r);
            for (j, v) in r.iter().enumerate().take(k) {
                // SAFETY: pixel (py, pad_left + x0 + j) of the block's interior.
                unsafe { _mm512_storeu_ps(op.add((py * lay.pw + lay.pad_left + x0 + j) * LANES), *v) };
            }
            x0 += k;
        }
    }
}

/// Every output's sum into `sums` (`[oh · ow, 16]`) for `T` taps at
/// stride `S`: the bias, a fused multiply-add per tap, `act`. Up to eight
/// outputs of a row at a time ([`group`]), so that that many sums are in
/// flight (one alone waits on each FMA's latency), with the weights and
/// the taps' offsets in registers.
///
/// # Safety
/// As [`compute`]; `offs` holds the `T` taps' offsets in the block.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sum_rows<const T: usize, const S: usize>(
    lay: &Layout,
    g: Geometry,
    input: &[f32],
    wts: &[f32],
    offs: &[usize],
    act: Act,
    sums: &mut [f32],
) {
    let (ip, wp, sp) = (input.as_ptr(), wts.as_ptr(), sums.as_mut_ptr());
    // SAFETY (all): `wts` holds `T + 1` vectors; an output's taps read
    // inside the block (its size is the outputs' reach, from the layout);
    // output q is vector q of `sums`.
    let bias = unsafe { _mm512_loadu_ps(wp.add(T * LANES)) };
    let w: [__m512; T] = std::array::from_fn(|t| unsafe { _mm512_loadu_ps(wp.add(t * LANES)) });
    let o: [usize; T] = std::array::from_fn(|t| offs[t]);
    let ow = lay.ow;
    for oy in 0..g.oh {
        let row = unsafe { ip.add(oy * S * lay.pw * LANES) };
        let out = unsafe { sp.add(oy * ow * LANES) };
        let mut ox = 0;
        unsafe {
            while ox + 8 <= ow {
                group::<T, S, 8>(row.add(ox * S * LANES), &w, &o, bias, act, out.add(ox * LANES));
                ox += 8;
            }
            if ox + 4 <= ow {
                group::<T, S, 4>(row.add(ox * S * LANES), &w, &o, bias, act, out.add(ox * LANES));
                ox += 4;
            }
            if ox + 2 <= ow {
                group::<T, S, 2>(row.add(ox * S * LANES), &w, &o, bias, act, out.add(ox * LANES));
                ox += 2;
            }
            if ox < ow {
                group::<T, S, 1>(row.add(ox * S * LANES), &w, &o, bias, act, out.add(ox * LANES));
            }
        }
    }
}

/// `U` consecutive outputs of a row, the first reading the block at `p`:
/// `U` sums in flight, each the bias then the taps in order, `act`, stored
/// to `U` consecutive vectors at `out`.
///
/// # Safety
/// AVX-512F; every `p + o[t] + u · S · 16` (`u < U`) starts a vector
/// inside the block; `out` holds `U` vectors.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn group<const T: usize, const S: usize, const U: usize>(
    p: *const f32,
    w: &[__m512; T],
    o: &[usize; T],
    bias: __m512,
    act: Act,
    out: *mut f32,
) {
    let mut acc = [bias; U];
    for t in 0..T {
        // SAFETY: the caller's contract.
        let pt = unsafe { p.add(o[t]) };
        for (u, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(w[t], unsafe { _mm512_loadu_ps(pt.add(u * S * LANES)) }, *a);
        }
    }
    for (u, a) in acc.iter().enumerate() {
        // SAFETY: the caller's contract.
        unsafe { _mm512_storeu_ps(out.add(u * LANES), rows::act16(*a, act)) };
    }
}

/// [`sum_rows`] for any tap count and stride: one output at a time, the
/// weights read per tap.
///
/// # Safety
/// As [`compute`]; `offs` holds the taps' offsets in the block.
#[target_feature(enable = "avx512f")]
unsafe fn sum_any(lay: &Layout, g: Geometry, input: &[f32], wts: &[f32], offs: &[usize], act: Act, sums: &mut [f32]) {
    let taps = offs.len();
    let (ip, wp, sp) = (input.as_ptr(), wts.as_ptr(), sums.as_mut_ptr());
    // SAFETY (all): as in `sum_rows`.
    let bias = unsafe { _mm512_loadu_ps(wp.add(taps * LANES)) };
    for oy in 0..g.oh {
        for ox in 0..lay.ow {
            let at = (oy * lay.stride * lay.pw + ox * lay.stride) * LANES;
            let mut acc = bias;
            for (t, &o) in offs.iter().enumerate() {
                unsafe {
                    let v = _mm512_loadu_ps(ip.add(at + o));
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(t * LANES)), v, acc);
                }
            }
            unsafe { _mm512_storeu_ps(sp.add((oy * lay.ow + ox) * LANES), rows::act16(acc, act)) };
        }
    }
}

/// Every output of the block: the bias, a fused multiply-add per tap,
/// `act` (cheap ones only), into `sums` (`[oh · ow, 16]`), then 16 outputs
/// of the `n` planes at a time through [`transpose16`] into `dst`.
///
/// # Safety
/// AVX-512F; `input` is the filled `[ph, pw, 16]` block, `wts` holds
/// `(kh · kw + 1) · 16` values, `offs` the `kh · kw` taps' offsets in the
/// block, `sums` `oh · ow · 16`, `dst` `n` planes of `oh · ow`.
#[target_feature(enable = "avx512f")]
unsafe fn compute(
    lay: &Layout,
    g: Geometry,
    (input, wts, offs): (&[f32], &[f32], &[usize]),
    n: usize,
    act: Act,
    sums: &mut [f32],
    dst: &mut [MaybeUninit<f32>],
) {
    let plane = g.oh * lay.ow;
    let taps = g.kh * g.kw;
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match (taps, lay.stride) {
            (9, 1) => sum_rows::<9, 1>(lay, g, input, wts, offs, act, sums),
            (9, 2) => sum_rows::<9, 2>(lay, g, input, wts, offs, act, sums),
            (25, 1) => sum_rows::<25, 1>(lay, g, input, wts, offs, act, sums),
            (25, 2) => sum_rows::<25, 2>(lay, g, input, wts, offs, act, sums),
            _ => sum_any(lay, g, input, wts, offs, act, sums),
        }
    }
    let sp = sums.as_ptr();
    let dp = dst.as_mut_ptr().cast::<f32>();
    let mut r = [_mm512_setzero_ps(); 16];
    let mut q0 = 0;
    while q0 < plane {
        let k = LANES.min(plane - q0);
        for (j, v) in r.iter_mut().enumerate() {
            // SAFETY: outputs q0..q0 + k of `sums`; the rest unused.
            *v = if j < k {
                unsafe { _mm512_loadu_ps(sp.add((q0 + j) * LANES)) }
            } else {
                _mm512_setzero_ps()
            };
        }
        transpose16(&mut r);
        let m = live(k);
        for (l, v) in r.iter().enumerate().take(n) {
            // SAFETY: outputs q0..q0 + k of plane l (masked).
            unsafe { _mm512_mask_storeu_ps(dp.add(l * plane + q0), m, *v) };
        }
        q0 += k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_over_the_memory_limit_stays_on_the_plane_path() {
        // 200 rows of 3 outputs, 3×3, pad 1: the block is 202 × 5 × 16
        // floats (64,640 bytes), one plane's padded copy 4,040.
        let lay = Layout::new((3, 200, 3), (3, 3), 1, 1, (1, 1));
        let isa = rows::Isa::detect();
        let on = |limit: Option<u64>| limits::scoped(limit, None, None, || fits(isa, &lay, 600));
        if isa != rows::Isa::Avx512 {
            assert!(!on(None), "the lanes need AVX-512F");
            return;
        }
        assert!(on(None) && on(Some(64_640)));
        assert!(!on(Some(64_639)), "a block one byte over the limit");
    }
}
