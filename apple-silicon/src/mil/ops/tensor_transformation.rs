//! Tensor transformations (coremltools `tensor_transformation.py`, iOS15
//! with its iOS16/17/18 re-versions).
//!
//! Conventions: negative axes count from the end; `reshape` takes `-1` for
//! one inferred dim and `0` to copy a dim, matched from the right (the iOS17
//! rule, which agrees with iOS15's whenever iOS15 allows a `0`); slices
//! follow numpy (`x[begin:end:stride]`, clamped bounds, negative strides,
//! masks; `squeeze_mask` indexes at `begin`, which must be in range);
//! `slice_update` (iOS18) writes `update` through the same slice;
//! `squeeze` ignores axes whose size is not 1 (PyTorch); `depth_to_space`
//! and `space_to_batch` follow TensorFlow's channel/batch order in NCHW,
//! `pixel_shuffle` PyTorch's. Slice bounds, reshape targets and sequence
//! lengths may be computed at run time; everything else is read once at
//! build. Data movement goes through index maps (see `movement.rs`), so every
//! op works on every dtype and any input layout.

use candle_core::Tensor;

use super::movement::{self, axis_at, count, map_or_fill, map_to, select_axes, strides, wrap_index, Ints};
use super::{one, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "reshape" => reshape,
        "reshape_like" => reshape_like,
        "transpose" => transpose,
        "expand_dims" => expand_dims,
        "squeeze" => squeeze,
        "slice_by_index" => slice_by_index,
        "slice_by_size" => slice_by_size,
        "slice_update" => slice_update,
        "reverse" => reverse,
        "reverse_sequence" => reverse_sequence,
        "depth_to_space" => |c| blocks(c, Block::DepthToSpace),
        "space_to_depth" => |c| blocks(c, Block::SpaceToDepth),
        "pixel_shuffle" => |c| blocks(c, Block::PixelShuffle),
        "pixel_unshuffle" => |c| blocks(c, Block::PixelUnshuffle),
        "space_to_batch" => |c| batch_space(c, true),
        "batch_to_space" => |c| batch_space(c, false),
        "sliding_windows" => sliding_windows,
        _ => return None,
    })
}

/// The dims `spec` asks of a tensor of `dims` (reshape's rules, above).
pub(super) fn resolve_shape(dims: &[usize], spec: &[i64]) -> CResult<Vec<usize>> {
    let total = count(dims)?;
    let mut out = Vec::with_capacity(spec.len());
    let mut hole = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 if hole.is_none() => {
                hole = Some(i);
                out.push(1);
            }
            0 => {
                // Matched from the right; a 0 with no counterpart is 1.
                let from_right = spec.len() - i;
                out.push(if from_right <= dims.len() {
                    dims[dims.len() - from_right]
                } else {
                    1
                });
            }
            s if s > 0 => out.push(usize::try_from(s).map_err(|_| candle_core::Error::Msg(format!("{s}")))?),
            s => candle_core::bail!("reshape target {spec:?} has an invalid entry {s} (one -1 at most)"),
        }
    }
    let known = count(&out)?;
    if let Some(h) = hole {
        if known == 0 || total % known != 0 {
            candle_core::bail!("cannot reshape {dims:?} ({total} elements) into {spec:?}")
        }
        out[h] = total / known;
    } else if known != total {
        candle_core::bail!("cannot reshape {dims:?} ({total} elements) into {spec:?} ({known} elements)")
    }
    Ok(out)
}

fn reshape(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let shape = Ints::read(c, "shape")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let out = resolve_shape(x.dims(), &shape.get(a)?)?;
        one(x.reshape(out)?)
    }))
}

fn reshape_like(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let refs = c.tensors("ref_tensors")?;
    let begins = c.tensors("begins")?;
    let ends = c.tensors("ends")?;
    let masks = c.tensors("end_masks")?;
    if begins.len() != refs.len() || ends.len() != refs.len() || masks.len() != refs.len() {
        return Err(c.error(format!(
            "ref_tensors, begins, ends and end_masks must have the same length; got {}, {}, {} and {}",
            refs.len(),
            begins.len(),
            ends.len(),
            masks.len()
        )));
    }
    Ok(Box::new(move |a| {
        let scalar = |i: usize| -> CResult<i64> {
            movement::host_ints(a[i])?
                .first()
                .copied()
                .ok_or_else(|| candle_core::Error::Msg("an empty tensor where a scalar is expected".into()))
        };
        let mut out = Vec::new();
        for k in 0..refs.len() {
            let dims = a[refs[k]].dims();
            let n = dims.len() as i64;
            let norm = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
            let b = norm(scalar(begins[k])?);
            let e = if scalar(masks[k])? != 0 {
                dims.len()
            } else {
                norm(scalar(ends[k])?)
            };
            out.extend_from_slice(&dims[b..e.max(b)]);
        }
        let x = a[x];
        if count(&out)? != x.elem_count() {
            candle_core::bail!("cannot reshape {:?} into {out:?}", x.dims())
        }
        one(x.reshape(out)?)
    }))
}

fn transpose(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let perm = c.ints("perm")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        if perm.len() != x.rank() {
            candle_core::bail!("perm {perm:?} for a tensor of rank {}", x.rank())
        }
        let p: Vec<usize> = perm.iter().map(|&i| axis_at(i, x.rank())).collect::<CResult<_>>()?;
        let mut seen = vec![false; p.len()];
        for &d in &p {
            if std::mem::replace(&mut seen[d], true) {
                candle_core::bail!("perm {perm:?} is not a permutation")
            }
        }
        if p.is_empty() {
            return one(x.clone());
        }
        one(x.permute(p)?)
    }))
}

fn expand_dims(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.ints("axes")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let out_rank = x.rank() + axes.len();
        let mut ax: Vec<usize> = axes.iter().map(|&i| axis_at(i, out_rank)).collect::<CResult<_>>()?;
        ax.sort_unstable();
        if ax.windows(2).any(|w| w[0] == w[1]) {
            candle_core::bail!("expand_dims axes {axes:?} repeat an axis")
        }
        let mut dims = x.dims().to_vec();
        for d in ax {
            dims.insert(d, 1);
        }
        one(x.reshape(dims)?)
    }))
}

fn squeeze(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let dims = x.dims();
        let drop: Vec<bool> = match &axes {
            Some(v) => {
                let mut m = vec![false; dims.len()];
                for &i in v {
                    let d = axis_at(i, dims.len())?;
                    m[d] = dims[d] == 1;
                }
                m
            }
            None => dims.iter().map(|&d| d == 1).collect(),
        };
        let out: Vec<usize> = dims.iter().zip(&drop).filter(|(_, &k)| !k).map(|(&d, _)| d).collect();
        one(x.reshape(out)?)
    }))
}

/// Source positions along one axis of `size` for numpy's `[begin:end:stride]`
/// (`None` bounds are the masked ones).
pub(super) fn slice_positions(size: usize, begin: Option<i64>, end: Option<i64>, stride: i64) -> CResult<Vec<usize>> {
    let n = i64::try_from(size).map_err(|_| candle_core::Error::Msg(format!("axis size {size}")))?;
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let mut out = Vec::new();
    if stride > 0 {
        let b = begin.map_or(0, |v| norm(v).clamp(0, n));
        let e = end.map_or(n, |v| norm(v).clamp(0, n));
        let mut i = b;
        while i < e {
            out.push(i as usize);
            i = i.saturating_add(stride);
        }
    } else if stride < 0 {
        let b = begin.map_or(n - 1, |v| norm(v).clamp(-1, n - 1));
        let e = end.map_or(-1, |v| norm(v).clamp(-1, n - 1));
        let mut i = b;
        while i > e {
            out.push(i as usize);
            i = i.saturating_add(stride);
        }
    } else {
        candle_core::bail!("slice stride 0")
    }
    Ok(out)
}

/// Per-axis source positions (`None`: a fill value), as `select_axes` takes them.
type AxisLists = Vec<Vec<Option<usize>>>;

/// slice_by_index's parameters (shared with slice_update).
struct SliceSpec {
    begin: Ints,
    end: Ints,
    stride: Option<Vec<i64>>,
    begin_mask: Option<Vec<i64>>,
    end_mask: Option<Vec<i64>>,
    squeeze_mask: Option<Vec<i64>>,
}

impl SliceSpec {
    fn read(c: &mut OpCtx) -> Result<SliceSpec> {
        let s = SliceSpec {
            begin: Ints::read(c, "begin")?,
            end: Ints::read(c, "end")?,
            stride: c.opt_ints("stride")?,
            begin_mask: c.opt_ints("begin_mask")?,
            end_mask: c.opt_ints("end_mask")?,
            squeeze_mask: c.opt_ints("squeeze_mask")?,
        };
        if let Some(z) = s.stride.as_ref().and_then(|v| v.iter().position(|&s| s == 0)) {
            return Err(c.error(format!("`stride` has a 0 on axis {z}")));
        }
        Ok(s)
    }

    /// Per-axis source positions and which axes are squeezed away.
    fn positions(&self, a: &[&Tensor], dims: &[usize]) -> CResult<(AxisLists, Vec<bool>)> {
        let rank = dims.len();
        let begin = self.begin.get(a)?;
        let end = self.end.get(a)?;
        let flag = |m: &Option<Vec<i64>>, d: usize| m.as_ref().is_some_and(|v| v.get(d).is_some_and(|&x| x != 0));
        for (name, len) in [
            ("begin", Some(begin.len())),
            ("end", Some(end.len())),
            ("stride", self.stride.as_ref().map(|v| v.len())),
            ("begin_mask", self.begin_mask.as_ref().map(|v| v.len())),
            ("end_mask", self.end_mask.as_ref().map(|v| v.len())),
            ("squeeze_mask", self.squeeze_mask.as_ref().map(|v| v.len())),
        ] {
            if let Some(l) = len {
                if l != rank {
                    candle_core::bail!("`{name}` has {l} entries for a tensor of rank {rank}")
                }
            }
        }
        let mut lists = Vec::with_capacity(rank);
        let mut squeezed = Vec::with_capacity(rank);
        for d in 0..rank {
            let sq = flag(&self.squeeze_mask, d);
            squeezed.push(sq);
            let pos = if sq {
                let b = if flag(&self.begin_mask, d) { 0 } else { begin[d] };
                vec![wrap_index(b, dims[d], &format!("slice (squeeze_mask, axis {d})"))?]
            } else {
                let s = self.stride.as_ref().map_or(1, |v| v[d]);
                let b = (!flag(&self.begin_mask, d)).then_some(begin[d]);
                let e = (!flag(&self.end_mask, d)).then_some(end[d]);
                slice_positions(dims[d], b, e, s)?
            };
            lists.push(pos.into_iter().map(Some).collect());
        }
        Ok((lists, squeezed))
    }
}

fn slice_by_index(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let spec = SliceSpec::read(c)?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let (lists, squeezed) = spec.positions(a, x.dims())?;
        let y = select_axes(x, &lists, 0.0)?;
        let out: Vec<usize> = y
            .dims()
            .iter()
            .zip(&squeezed)
            .filter(|(_, &s)| !s)
            .map(|(&d, _)| d)
            .collect();
        one(y.reshape(out)?)
    }))
}

fn slice_update(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let update = c.tensor("update")?;
    let spec = SliceSpec::read(c)?;
    Ok(Box::new(move |a| {
        let (x, u) = (a[x], a[update]);
        let dims = x.dims();
        let (lists, _) = spec.positions(a, dims)?;
        let slice_dims: Vec<usize> = lists.iter().map(|l| l.len()).collect();
        if count(&slice_dims)? != u.elem_count() {
            candle_core::bail!("update of shape {:?} for a slice of shape {slice_dims:?}", u.dims())
        }
        let n = x.elem_count();
        movement::check_u32(n + u.elem_count(), "x and update")?;
        let st = strides(dims);
        let mut map: Vec<u32> = (0..n as u32).collect();
        let mut k = n;
        movement::for_each_index(&slice_dims, |o| {
            let t: usize = o
                .iter()
                .enumerate()
                .map(|(d, &i)| lists[d][i].unwrap_or(0) * st[d])
                .sum();
            map[t] = k as u32;
            k += 1;
            Ok(())
        })?;
        let src = Tensor::cat(&[&x.flatten_all()?, &u.flatten_all()?.to_dtype(x.dtype())?], 0)?;
        one(movement::take(&src, map, dims)?)
    }))
}

fn slice_by_size(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let begin = Ints::read(c, "begin")?;
    let size = Ints::read(c, "size")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let dims = x.dims();
        let (b, s) = (begin.get(a)?, size.get(a)?);
        if b.len() != dims.len() || s.len() != dims.len() {
            candle_core::bail!("begin {b:?} / size {s:?} for a tensor of rank {}", dims.len())
        }
        let mut lists = Vec::with_capacity(dims.len());
        for d in 0..dims.len() {
            let n = dims[d] as i64;
            let lo = if b[d] < 0 { b[d] + n } else { b[d] };
            let hi = if s[d] == -1 { n } else { lo.saturating_add(s[d]) };
            if lo < 0 || s[d] < -1 || hi > n || lo > n {
                candle_core::bail!(
                    "slice begin {} size {} on axis {d} is out of range for an axis of size {n}",
                    b[d],
                    s[d]
                )
            }
            lists.push((lo..hi).map(|i| Some(i as usize)).collect());
        }
        one(select_axes(x, &lists, 0.0)?)
    }))
}

fn reverse(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axes = c.opt_ints("axes")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let dims = x.dims();
        let mut flip = vec![axes.is_none(); dims.len()];
        for &i in axes.iter().flatten() {
            flip[axis_at(i, dims.len())?] = true;
        }
        let lists: Vec<Vec<Option<usize>>> = dims
            .iter()
            .zip(&flip)
            .map(|(&n, &f)| (0..n).map(|i| Some(if f { n - 1 - i } else { i })).collect())
            .collect();
        one(select_axes(x, &lists, 0.0)?)
    }))
}

fn reverse_sequence(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let lengths = Ints::read(c, "lengths")?;
    let seq_axis = c.opt_int("seq_axis")?.unwrap_or(0);
    let batch_axis = c.opt_int("batch_axis")?.unwrap_or(0);
    Ok(Box::new(move |a| {
        let x = a[x];
        let dims = x.dims().to_vec();
        let (sa, ba) = (axis_at(seq_axis, dims.len())?, axis_at(batch_axis, dims.len())?);
        if sa == ba {
            candle_core::bail!("seq_axis and batch_axis are both axis {sa}")
        }
        let lens = lengths.get(a)?;
        if lens.len() != dims[ba] {
            candle_core::bail!("{} lengths for a batch axis of size {}", lens.len(), dims[ba])
        }
        if let Some(&bad) = lens.iter().find(|&&l| l < 0 || l as usize > dims[sa]) {
            candle_core::bail!(
                "sequence length {bad} is out of range for a sequence axis of size {}",
                dims[sa]
            )
        }
        let st = strides(&dims);
        one(map_to(x, &dims, |o| {
            let l = lens[o[ba]] as usize;
            Ok(o.iter()
                .enumerate()
                .map(|(d, &i)| st[d] * if d == sa && i < l { l - 1 - i } else { i })
                .sum())
        })?)
    }))
}

#[derive(Clone, Copy)]
enum Block {
    DepthToSpace,
    SpaceToDepth,
    PixelShuffle,
    PixelUnshuffle,
}

fn blocks(c: &mut OpCtx, kind: Block) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let arg = match kind {
        Block::DepthToSpace | Block::SpaceToDepth => "block_size",
        Block::PixelShuffle => "upscale_factor",
        Block::PixelUnshuffle => "downscale_factor",
    };
    let b = c
        .opt_int(arg)?
        .ok_or_else(|| c.error(format!("required argument `{arg}` is missing")))?;
    if !(1..=1 << 16).contains(&b) {
        return Err(c.error(format!("`{arg}` = {b}; expected a positive block size")));
    }
    let b = b as usize;
    Ok(Box::new(move |a| {
        let x = a[x];
        let &[n, ch, h, w] = x.dims() else {
            candle_core::bail!("input of shape {:?}; expected rank 4 (N, C, H, W)", x.dims())
        };
        let bb = b * b;
        let to_space = matches!(kind, Block::DepthToSpace | Block::PixelShuffle);
        if to_space && ch % bb != 0 {
            candle_core::bail!("{ch} channels are not divisible by block size {b} squared")
        }
        if !to_space && (h % b != 0 || w % b != 0) {
            candle_core::bail!("spatial size {h}x{w} is not divisible by block size {b}")
        }
        let out = if to_space {
            [n, ch / bb, count(&[h, b])?, count(&[w, b])?]
        } else {
            [n, count(&[ch, bb])?, h / b, w / b]
        };
        let st = strides(x.dims());
        let co = out[1];
        one(map_to(x, &out, |o| {
            let (nn, oc, y, xx) = (o[0], o[1], o[2], o[3]);
            let (ic, iy, ix) = match kind {
                // TensorFlow (DCR): channel = (i * b + j) * C_out + c.
                Block::DepthToSpace => (((y % b) * b + xx % b) * co + oc, y / b, xx / b),
                // PyTorch (CRD): channel = c * b^2 + i * b + j.
                Block::PixelShuffle => (oc * bb + (y % b) * b + xx % b, y / b, xx / b),
                Block::SpaceToDepth => {
                    let (k, cc) = (oc / ch, oc % ch);
                    (cc, y * b + k / b, xx * b + k % b)
                }
                Block::PixelUnshuffle => {
                    let (cc, r) = (oc / bb, oc % bb);
                    (cc, y * b + r / b, xx * b + r % b)
                }
            };
            Ok(nn * st[0] + ic * st[1] + iy * st[2] + ix * st[3])
        })?)
    }))
}

fn batch_space(c: &mut OpCtx, to_batch: bool) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let block = c.ints("block_shape")?;
    let arg = if to_batch { "paddings" } else { "crops" };
    let pads = c.ints(arg)?;
    if block.len() != 2 || block.iter().any(|&v| !(1..=1 << 16).contains(&v)) {
        return Err(c.error(format!("`block_shape` = {block:?}; expected two positive sizes")));
    }
    if pads.len() != 4 || pads.iter().any(|&v| !(0..=1 << 30).contains(&v)) {
        return Err(c.error(format!(
            "`{arg}` = {pads:?}; expected [[top, bottom], [left, right]] >= 0"
        )));
    }
    let (bh, bw) = (block[0] as usize, block[1] as usize);
    let p: Vec<usize> = pads.iter().map(|&v| v as usize).collect();
    Ok(Box::new(move |a| {
        let x = a[x];
        let &[n, ch, h, w] = x.dims() else {
            candle_core::bail!("input of shape {:?}; expected rank 4 (N, C, H, W)", x.dims())
        };
        let st = strides(x.dims());
        if to_batch {
            let (ph, pw) = (h + p[0] + p[1], w + p[2] + p[3]);
            if ph % bh != 0 || pw % bw != 0 {
                candle_core::bail!("padded spatial size {ph}x{pw} is not divisible by block {bh}x{bw}")
            }
            let out = [count(&[n, bh, bw])?, ch, ph / bh, pw / bw];
            one(map_or_fill(x, &out, 0.0, |o| {
                let (k, nn) = (o[0] / n, o[0] % n);
                let (i, j) = (k / bw, k % bw);
                let (py, px) = (o[2] * bh + i, o[3] * bw + j);
                if py < p[0] || px < p[2] || py - p[0] >= h || px - p[2] >= w {
                    return Ok(None);
                }
                Ok(Some(
                    nn * st[0] + o[1] * st[1] + (py - p[0]) * st[2] + (px - p[2]) * st[3],
                ))
            })?)
        } else {
            let bb = bh * bw;
            if n % bb != 0 {
                candle_core::bail!("batch {n} is not divisible by block {bh}x{bw}")
            }
            let (fh, fw) = (h * bh, w * bw);
            if p[0] + p[1] > fh || p[2] + p[3] > fw {
                candle_core::bail!("crops {p:?} exceed the spatial size {fh}x{fw}")
            }
            let nb = n / bb;
            let out = [nb, ch, fh - p[0] - p[1], fw - p[2] - p[3]];
            one(map_to(x, &out, |o| {
                let (yy, xx) = (o[2] + p[0], o[3] + p[2]);
                let ib = ((yy % bh) * bw + xx % bw) * nb + o[0];
                Ok(ib * st[0] + o[1] * st[1] + (yy / bh) * st[2] + (xx / bw) * st[3])
            })?)
        }
    }))
}

fn sliding_windows(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c
        .opt_int("axis")?
        .ok_or_else(|| c.error("required argument `axis` is missing"))?;
    let size = c
        .opt_int("size")?
        .ok_or_else(|| c.error("required argument `size` is missing"))?;
    let stride = c.opt_int("stride")?.unwrap_or(1);
    if size < 1 || stride < 1 {
        return Err(c.error(format!("`size` = {size}, `stride` = {stride}; both must be positive")));
    }
    let (size, stride) = (size as usize, stride as usize);
    Ok(Box::new(move |a| {
        let x = a[x];
        let dims = x.dims();
        let ax = axis_at(axis, dims.len())?;
        if dims[ax] < size {
            candle_core::bail!("window size {size} exceeds axis {ax} of size {}", dims[ax])
        }
        let mut out = dims.to_vec();
        out[ax] = (dims[ax] - size) / stride + 1;
        out.insert(ax + 1, size);
        let st = strides(dims);
        one(map_to(x, &out, |o| {
            let mut s = 0;
            for d in 0..dims.len() {
                let i = match d.cmp(&ax) {
                    std::cmp::Ordering::Less => o[d],
                    std::cmp::Ordering::Equal => o[ax] * stride + o[ax + 1],
                    std::cmp::Ordering::Greater => o[d + 1],
                };
                s += i * st[d];
            }
            Ok(s)
        })?)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_rules() {
        // The iOS17 definition's own example: [2, 50] by [1, 0, -1, 0] is [1, 1, 2, 50].
        assert_eq!(resolve_shape(&[2, 50], &[1, 0, -1, 0]).unwrap(), vec![1, 1, 2, 50]);
        // Equal lengths: a 0 copies the same-position dim (iOS15's rule).
        assert_eq!(resolve_shape(&[4, 3, 2], &[0, -1, 1]).unwrap(), vec![4, 6, 1]);
        assert!(resolve_shape(&[4, 3], &[-1, -1]).is_err());
        assert!(resolve_shape(&[4, 3], &[5, 2]).is_err());
        assert!(resolve_shape(&[4, 3], &[-2, 6]).is_err());
    }

    #[test]
    fn slices_follow_numpy() {
        // Python: list(range(6))[4:0:-2] == [4, 2]; [-2:] == [4, 5]; [::-1] reverses; [10:] is empty.
        assert_eq!(slice_positions(6, Some(4), Some(0), -2).unwrap(), vec![4, 2]);
        assert_eq!(slice_positions(6, Some(-2), None, 1).unwrap(), vec![4, 5]);
        assert_eq!(slice_positions(3, None, None, -1).unwrap(), vec![2, 1, 0]);
        assert!(slice_positions(3, Some(10), None, 1).unwrap().is_empty());
        // [5:-1:-1] is empty (-1 means the last element, not "before the first").
        assert!(slice_positions(6, Some(5), Some(-1), -1).unwrap().is_empty());
        assert!(slice_positions(6, None, None, 0).is_err());
    }

    use crate::tensor::{Tensor as HostTensor, TensorMap};

    fn run(case: &str, items: Vec<(&str, HostTensor)>) -> crate::Result<TensorMap> {
        crate::mil::test_support::run_case(&format!("tensor_transformation/{case}"), items)
    }

    fn ints(v: &[i32]) -> HostTensor {
        HostTensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
    }

    /// Run-time parameters that do not fit the tensor are errors naming the
    /// value (never a panic or a wild read).
    #[test]
    fn bad_runtime_parameters_are_errors() {
        let x = || HostTensor::from_vec(vec![2, 3, 4], vec![0f32; 24]).unwrap();
        let e = run("reshape_runtime_shape", vec![("x", x()), ("shape", ints(&[5, 5]))]).unwrap_err();
        assert!(e.to_string().contains("cannot reshape"), "{e}");
        let e = run("reshape_runtime_shape", vec![("x", x()), ("shape", ints(&[-1, -1]))]).unwrap_err();
        assert!(e.to_string().contains("invalid entry -1"), "{e}");
        let y = || HostTensor::from_vec(vec![4, 5, 6], vec![0f32; 120]).unwrap();
        let e = run(
            "slice_by_size_runtime",
            vec![("x", y()), ("b", ints(&[3, 0, 0])), ("s", ints(&[2, 1, 1]))],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("size of 4") || e.to_string().contains("size 4"),
            "{e}"
        );
        let e = run(
            "slice_by_index_runtime_bounds",
            vec![("x", y()), ("b", ints(&[0, 0])), ("e", ints(&[4, 5, 6]))],
        )
        .unwrap_err();
        assert!(e.to_string().contains("`begin` has 2 entries"), "{e}");
        let s = HostTensor::from_vec(vec![3, 5, 2], vec![0f32; 30]).unwrap();
        let e = run(
            "reverse_sequence_seq1_batch0",
            vec![("x", s), ("lengths", ints(&[5, 6, 0]))],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("length 6") && e.to_string().contains("size 5"),
            "{e}"
        );
    }
}
