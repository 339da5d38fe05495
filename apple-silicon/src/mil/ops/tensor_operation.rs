//! Tensor operations (coremltools `tensor_operation.py`, iOS15 with its
//! iOS16/17 re-versions).
//!
//! Conventions: `concat`/`split`/`stack` along `axis` (negative counts from
//! the end; `interleave` alternates the inputs' slices); `pad` takes
//! `[begin, end]` pairs for the trailing dims in modes constant, reflect
//! (mirror without the edge; at most `size - 1`) and replicate (edge);
//! `tile` repeats dim `i` `reps[i]` times; sorting ops (`argsort`, `topk`)
//! are stable, descending unless `ascending`, NaN last; `topk` always
//! returns its elements sorted (a valid answer when `sort` is false);
//! `cumsum` accumulates in f64; `one_hot` counts negative indices from the
//! end (as ONNX; anything outside `[-size, size)` is an error);
//! `non_maximum_suppression` is greedy in score order (see its doc for the
//! iOS15 / iOS17 layouts); index outputs (`shape`, `non_zero`,
//! `argsort`, `topk`) are int. `reshape`-like sizes (`fill`'s shape, `pad`,
//! `tile`'s reps, `range_1d`'s bounds, `one_hot_vector_size`) may be
//! computed at run time; every size derived from them is checked arithmetic.

use candle_core::{DType as CDType, Device, Tensor};

use super::movement::{
    self, axis_at, count, for_each_index, from_f64, from_i64, host_f64, host_ints, map_or_fill, map_to, select_axes,
    strides, wrap_index, Ints,
};
use super::{one, unary, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "concat" => concat,
        "split" => split,
        "stack" => stack,
        "shape" => |c| {
            unary(c, |x| {
                Tensor::new(x.dims().iter().map(|&d| d as i64).collect::<Vec<_>>(), &Device::Cpu)
            })
        },
        "pad" => pad,
        "tile" => tile,
        "fill" => fill,
        "fill_like" => fill_like,
        "range_1d" => range_1d,
        "one_hot" => one_hot,
        "band_part" => band_part,
        "cumsum" => cumsum,
        "non_zero" => non_zero,
        "argsort" => argsort,
        "topk" => topk,
        "flatten2d" => flatten2d,
        "non_maximum_suppression" => non_maximum_suppression,
        _ => return None,
    })
}

fn required_int(c: &mut OpCtx, arg: &str) -> Result<i64> {
    c.opt_int(arg)?
        .ok_or_else(|| c.error(format!("required argument `{arg}` is missing")))
}

fn concat(c: &mut OpCtx) -> Result<Kernel> {
    let xs = c.tensors("values")?;
    let axis = required_int(c, "axis")?;
    let interleave = c.opt_bool("interleave")?.unwrap_or(false);
    if xs.is_empty() {
        return Err(c.error("`values` is empty"));
    }
    Ok(Box::new(move |a| {
        let mut parts: Vec<Tensor> = xs.iter().map(|&i| a[i].clone()).collect();
        // Rank-0 values concatenate as 1-element vectors (as coremltools infers).
        if parts[0].rank() == 0 {
            parts = parts.iter().map(|p| p.reshape(1)).collect::<CResult<_>>()?;
        }
        let dt = parts[0].dtype();
        // The output is every input together: checked before it is made, so a
        // chain of concats doubling a tensor stops at the memory limit.
        check_total("concat output", &parts, dt.size_in_bytes())?;
        let parts: Vec<Tensor> = parts.iter().map(|p| p.to_dtype(dt)).collect::<CResult<_>>()?;
        let ax = axis_at(axis, parts[0].rank())?;
        if !interleave {
            return one(Tensor::cat(&parts, ax)?);
        }
        if parts.iter().any(|p| p.dims() != parts[0].dims()) {
            candle_core::bail!(
                "interleave needs inputs of one shape; got {:?}",
                parts.iter().map(|p| p.dims()).collect::<Vec<_>>()
            )
        }
        // Stacking after the axis then merging the two puts input k's slice j
        // at position j * len + k: the interleaved order.
        let mut out = parts[0].dims().to_vec();
        out[ax] = count(&[out[ax], parts.len()])?;
        one(Tensor::stack(&parts, ax + 1)?.reshape(out)?)
    }))
}

fn split(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = required_int(c, "axis")?;
    let sizes = c.opt_ints("split_sizes")?;
    let num = c.opt_int("num_splits")?;
    let n_out = c.op.outputs.len();
    if sizes.is_none() && num.is_none() {
        return Err(c.error("one of `split_sizes` and `num_splits` is required"));
    }
    if let Some(s) = &sizes {
        if s.len() != n_out || s.iter().any(|&v| v < 0) {
            return Err(c.error(format!("`split_sizes` = {s:?} for {n_out} outputs")));
        }
    }
    if let Some(n) = num {
        if n < 1 || n as usize != n_out {
            return Err(c.error(format!("`num_splits` = {n} for {n_out} outputs")));
        }
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        let ax = axis_at(axis, x.rank())?;
        let dim = x.dims()[ax];
        let sizes: Vec<usize> = match &sizes {
            Some(s) => s.iter().map(|&v| v as usize).collect(),
            None if dim % n_out == 0 => vec![dim / n_out; n_out],
            None => candle_core::bail!("axis {ax} of size {dim} does not split evenly into {n_out}"),
        };
        if sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s)) != Some(dim) {
            candle_core::bail!("split sizes {sizes:?} do not add up to the axis size {dim}")
        }
        let mut start = 0;
        let mut outs = Vec::with_capacity(sizes.len());
        for s in sizes {
            outs.push(x.narrow(ax, start, s)?);
            start += s;
        }
        Ok(outs)
    }))
}

fn stack(c: &mut OpCtx) -> Result<Kernel> {
    let xs = c.tensors("values")?;
    let axis = required_int(c, "axis")?;
    if xs.is_empty() {
        return Err(c.error("`values` is empty"));
    }
    Ok(Box::new(move |a| {
        let parts: Vec<&Tensor> = xs.iter().map(|&i| a[i]).collect();
        if parts.iter().any(|p| p.dims() != parts[0].dims()) {
            candle_core::bail!(
                "stack needs inputs of one shape; got {:?}",
                parts.iter().map(|p| p.dims()).collect::<Vec<_>>()
            )
        }
        let ax = axis_at(axis, parts[0].rank() + 1)?;
        check_total("stack output", &parts, parts[0].dtype().size_in_bytes())?;
        one(Tensor::stack(&parts, ax)?)
    }))
}

/// Checks the bytes of an output holding all of `parts` (at `elem_bytes`
/// each) against the memory limit, with checked arithmetic.
fn check_total<T: std::borrow::Borrow<Tensor>>(what: &str, parts: &[T], elem_bytes: usize) -> CResult<()> {
    let elems = parts
        .iter()
        .try_fold(0u64, |acc, p| acc.checked_add(p.borrow().elem_count() as u64));
    crate::mil::limits::check_bytes(what, elems.and_then(|n| n.checked_mul(elem_bytes as u64)))
}

fn pad(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let pads = Ints::read(c, "pad")?;
    let mode = c.opt_string("mode")?.unwrap_or_else(|| "constant".into());
    let value = c.opt_float("constant_val")?.unwrap_or(0.0);
    if !matches!(mode.as_str(), "constant" | "reflect" | "replicate") {
        return Err(c.unsupported(format!("`mode` = `{mode}` (expected constant, reflect or replicate)")));
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        let pads = pads.get(a)?;
        let dims = x.dims();
        if pads.len() % 2 != 0 || pads.len() / 2 > dims.len() {
            candle_core::bail!("pad {pads:?} for a tensor of rank {}", dims.len())
        }
        if let Some(bad) = pads.iter().find(|&&p| p < 0) {
            candle_core::bail!("pad amount {bad} is negative")
        }
        let first = dims.len() - pads.len() / 2;
        let mut out_dims = dims.to_vec();
        // Saturating: an absurd amount becomes a size the memory limit refuses.
        for (d, o) in out_dims.iter_mut().enumerate().skip(first) {
            let (b, e) = (pads[2 * (d - first)] as usize, pads[2 * (d - first) + 1] as usize);
            *o = o.saturating_add(b).saturating_add(e);
        }
        super::check_alloc("padded tensor", &out_dims, x.dtype().size_in_bytes())?;
        movement::check_u32(count(&out_dims)?, "the padded tensor")?;
        let mut lists = Vec::with_capacity(dims.len());
        for (d, &n) in dims.iter().enumerate() {
            let (b, e) = if d < first {
                (0, 0)
            } else {
                (pads[2 * (d - first)] as usize, pads[2 * (d - first) + 1] as usize)
            };
            if mode == "reflect" && (b >= n.max(1) || e >= n.max(1)) {
                candle_core::bail!("reflect pad ({b}, {e}) on axis {d} of size {n}: each must be below the size")
            }
            if mode == "replicate" && n == 0 && b + e > 0 {
                candle_core::bail!("replicate pad on the empty axis {d}")
            }
            let len = count(&[1, n])?
                .checked_add(b + e)
                .ok_or_else(|| candle_core::Error::Msg("pad overflows".into()))?;
            let mut l = Vec::with_capacity(len);
            for k in 0..len {
                let i = k as i64 - b as i64;
                let last = n as i64 - 1;
                l.push(match mode.as_str() {
                    "constant" => (0..n as i64).contains(&i).then_some(i as usize),
                    "reflect" => Some(if i < 0 {
                        -i
                    } else if i > last {
                        2 * last - i
                    } else {
                        i
                    } as usize),
                    _ => Some(i.clamp(0, last) as usize),
                });
            }
            lists.push(l);
        }
        one(select_axes(x, &lists, value)?)
    }))
}

fn tile(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let reps = Ints::read(c, "reps")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let reps = reps.get(a)?;
        let dims = x.dims();
        if reps.len() != dims.len() {
            candle_core::bail!("reps {reps:?} for a tensor of rank {}", dims.len())
        }
        if reps.iter().any(|&r| r < 1) {
            candle_core::bail!("reps {reps:?} has an entry below 1")
        }
        let out: Vec<usize> = dims
            .iter()
            .zip(&reps)
            .map(|(&n, &r)| count(&[n, r as usize]))
            .collect::<CResult<_>>()?;
        super::check_alloc("tile output", &out, x.dtype().size_in_bytes())?;
        movement::check_u32(count(&out)?, "the tiled tensor")?;
        let lists: Vec<Vec<Option<usize>>> = out
            .iter()
            .zip(dims)
            .map(|(&len, &n)| (0..len).map(|k| Some(k % n.max(1))).collect())
            .collect();
        one(select_axes(x, &lists, 0.0)?)
    }))
}

/// A fill value: the op's `value` (a constant operand), else 0.0 as fp32.
fn fill_value(c: &mut OpCtx) -> Result<Option<usize>> {
    c.opt_tensor("value")
}

fn filled(v: Option<&Tensor>, dims: &[usize]) -> CResult<Tensor> {
    movement::check_u32(count(dims)?, "the filled tensor")?;
    let v = match v {
        Some(v) => v.flatten_all()?.narrow(0, 0, 1)?,
        None => Tensor::zeros(1, CDType::F32, &Device::Cpu)?,
    };
    v.reshape(vec![1; dims.len()])?.broadcast_as(dims)?.contiguous()
}

fn fill(c: &mut OpCtx) -> Result<Kernel> {
    let shape = Ints::read(c, "shape")?;
    let value = fill_value(c)?;
    Ok(Box::new(move |a| {
        let spec = shape.get(a)?;
        if let Some(bad) = spec.iter().find(|&&d| d < 0) {
            candle_core::bail!("fill shape {spec:?} has a negative dim {bad}")
        }
        let dims: Vec<usize> = spec.iter().map(|&d| d as usize).collect();
        one(filled(value.map(|i| a[i]), &dims)?)
    }))
}

fn fill_like(c: &mut OpCtx) -> Result<Kernel> {
    let r = c.tensor("ref_tensor")?;
    let value = fill_value(c)?;
    Ok(Box::new(move |a| one(filled(value.map(|i| a[i]), a[r].dims())?)))
}

fn range_1d(c: &mut OpCtx) -> Result<Kernel> {
    let start = c.tensor("start")?;
    let end = c.tensor("end")?;
    let step = c.tensor("step")?;
    Ok(Box::new(move |a| {
        let scalar = |i: usize| -> CResult<f64> {
            host_f64(a[i])?
                .first()
                .copied()
                .ok_or_else(|| candle_core::Error::Msg("an empty tensor where a scalar is expected".into()))
        };
        let (s, e, st) = (scalar(start)?, scalar(end)?, scalar(step)?);
        let len = ((e - s) / st).ceil();
        if st == 0.0 || !len.is_finite() {
            candle_core::bail!("range_1d({s}, {e}, {st}) has no finite length")
        }
        let len = len.max(0.0);
        if len > movement::MAX_ELEMENTS as f64 {
            candle_core::bail!("range_1d({s}, {e}, {st}) has {len} elements")
        }
        let v: Vec<f64> = (0..len as usize).map(|i| s + i as f64 * st).collect();
        one(from_f64(v, &[len as usize], a[start].dtype())?)
    }))
}

fn one_hot(c: &mut OpCtx) -> Result<Kernel> {
    let indices = c.tensor("indices")?;
    let depth = Ints::read(c, "one_hot_vector_size")?;
    let axis = c.opt_int("axis")?.unwrap_or(-1);
    let on = c.opt_tensor("on_value")?;
    let off = c.opt_tensor("off_value")?;
    Ok(Box::new(move |a| {
        let ind = host_ints(a[indices])?;
        let idims = a[indices].dims();
        let depth = *depth
            .get(a)?
            .first()
            .ok_or_else(|| candle_core::Error::Msg("empty one_hot_vector_size".into()))?;
        if !(0..u32::MAX as i64).contains(&depth) {
            candle_core::bail!("one_hot_vector_size {depth} is negative or absurd")
        }
        let depth = depth as usize;
        let ax = axis_at(axis, idims.len() + 1)?;
        let scalar = |t: Option<usize>, d: i64| -> CResult<Tensor> {
            match t {
                Some(i) => a[i].flatten_all()?.narrow(0, 0, 1),
                None => Tensor::new(&[d], &Device::Cpu),
            }
        };
        let on_t = scalar(on, 1)?;
        // [off, on]: the map picks 1 where the index hits.
        let src = Tensor::cat(&[&scalar(off, 0)?.to_dtype(on_t.dtype())?, &on_t], 0)?;
        let mut out = idims.to_vec();
        out.insert(ax, depth);
        let ist = strides(idims);
        let checked: Vec<usize> = ind
            .iter()
            .map(|&i| wrap_index(i, depth, "one_hot"))
            .collect::<CResult<_>>()?;
        one(map_to(&src, &out, |o| {
            let mut flat = 0;
            for (d, &i) in o.iter().enumerate() {
                match d.cmp(&ax) {
                    std::cmp::Ordering::Less => flat += i * ist[d],
                    std::cmp::Ordering::Greater => flat += i * ist[d - 1],
                    std::cmp::Ordering::Equal => {}
                }
            }
            Ok(usize::from(checked[flat] == o[ax]))
        })?)
    }))
}

fn band_part(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let lower = c.opt_int("lower")?.unwrap_or(-1);
    let upper = c.opt_int("upper")?.unwrap_or(-1);
    Ok(Box::new(move |a| {
        let x = a[x];
        let dims = x.dims().to_vec();
        if dims.len() < 2 {
            candle_core::bail!("band_part needs rank >= 2; got shape {dims:?}")
        }
        let r = dims.len();
        let st = strides(&dims);
        one(map_or_fill(x, &dims, 0.0, |o| {
            let (m, n) = (o[r - 2] as i64, o[r - 1] as i64);
            let keep = (lower < 0 || m - n <= lower) && (upper < 0 || n - m <= upper);
            Ok(keep.then(|| o.iter().zip(&st).map(|(i, s)| i * s).sum()))
        })?)
    }))
}

/// Splits `dims` around `ax` into (outer, axis size, inner) element counts.
fn lanes(dims: &[usize], ax: usize) -> (usize, usize, usize) {
    let prod = |d: &[usize]| d.iter().fold(1usize, |a, &b| a.saturating_mul(b));
    (prod(&dims[..ax]), dims[ax], prod(&dims[ax + 1..]))
}

fn cumsum(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c.opt_int("axis")?.unwrap_or(0);
    let exclusive = c.opt_bool("exclusive")?.unwrap_or(false);
    let reverse = c.opt_bool("reverse")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let x = a[x];
        let ax = axis_at(axis, x.rank())?;
        let (outer, n, inner) = lanes(x.dims(), ax);
        let v = host_f64(x)?;
        let mut out = vec![0.0; v.len()];
        for o in 0..outer {
            for i in 0..inner {
                let mut acc = 0.0;
                for k in 0..n {
                    let k = if reverse { n - 1 - k } else { k };
                    let at = (o * n + k) * inner + i;
                    if exclusive {
                        out[at] = acc;
                        acc += v[at];
                    } else {
                        acc += v[at];
                        out[at] = acc;
                    }
                }
            }
        }
        one(from_f64(out, x.dims(), x.dtype())?)
    }))
}

fn non_zero(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    Ok(Box::new(move |a| {
        let x = a[x];
        let v = host_f64(x)?;
        let dims = x.dims();
        let mut out = Vec::new();
        let mut k = 0;
        for_each_index(dims, |o| {
            if v[k] != 0.0 {
                out.extend(o.iter().map(|&i| i as i64));
            }
            k += 1;
            Ok(())
        })?;
        let rows = out.len() / dims.len().max(1);
        one(from_i64(out, &[rows, dims.len()])?)
    }))
}

/// Per lane along `ax`, the positions in sorted order (stable; descending
/// unless `ascending`; NaN last either way).
fn sort_lanes(x: &Tensor, ax: usize, ascending: bool) -> CResult<Vec<Vec<usize>>> {
    let v = host_f64(x)?;
    let (outer, n, inner) = lanes(x.dims(), ax);
    let mut res = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| v[(o * n + k) * inner + i];
            let mut p: Vec<usize> = (0..n).collect();
            p.sort_by(|&l, &r| {
                let (a, b) = (at(l), at(r));
                match (a.is_nan(), b.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if ascending => a.total_cmp(&b),
                    _ => b.total_cmp(&a),
                }
            });
            res.push(p);
        }
    }
    Ok(res)
}

fn argsort(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c.opt_int("axis")?.unwrap_or(-1);
    let ascending = c.opt_bool("ascending")?.unwrap_or(false);
    Ok(Box::new(move |a| {
        let x = a[x];
        let ax = axis_at(axis, x.rank())?;
        let (_, n, inner) = lanes(x.dims(), ax);
        let order = sort_lanes(x, ax, ascending)?;
        let mut out = vec![0i64; x.elem_count()];
        for (lane, p) in order.iter().enumerate() {
            let (o, i) = (lane / inner.max(1), lane % inner.max(1));
            for (k, &src) in p.iter().enumerate() {
                out[(o * n + k) * inner + i] = src as i64;
            }
        }
        one(from_i64(out, x.dims())?)
    }))
}

fn topk(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let k = c.opt_int("k")?.unwrap_or(1);
    let axis = c.opt_int("axis")?.unwrap_or(-1);
    let ascending = c.opt_bool("ascending")?.unwrap_or(false);
    let return_indices = c.opt_bool("return_indices")?.unwrap_or(true);
    if let Some(d) = c.opt_string("output_indices_dtype")? {
        if d != "int32" && d != "uint16" {
            return Err(c.unsupported(format!("`output_indices_dtype` = `{d}`")));
        }
    }
    if k < -1 || k == 0 {
        return Err(c.error(format!("`k` = {k}; expected a positive count or -1 (all)")));
    }
    Ok(Box::new(move |a| {
        let x = a[x];
        let ax = axis_at(axis, x.rank())?;
        let dims = x.dims();
        let (_, n, inner) = lanes(dims, ax);
        let kk = if k == -1 { n } else { k as usize };
        if kk > n {
            candle_core::bail!("k = {kk} exceeds axis {ax} of size {n}")
        }
        let order = sort_lanes(x, ax, ascending)?;
        let mut out = dims.to_vec();
        out[ax] = kk;
        let st = strides(dims);
        let mut idx = Vec::with_capacity(count(&out)?);
        for_each_index(&out, |o| {
            let lane = o[..ax].iter().zip(&dims[..ax]).fold(0, |l, (&i, &d)| l * d + i) * inner
                + o[ax + 1..].iter().zip(&dims[ax + 1..]).fold(0, |l, (&i, &d)| l * d + i);
            idx.push(order[lane][o[ax]]);
            Ok(())
        })?;
        let mut k_out = 0;
        let values = map_to(x, &out, |o| {
            let src = idx[k_out];
            k_out += 1;
            Ok(o.iter()
                .enumerate()
                .map(|(d, &i)| st[d] * if d == ax { src } else { i })
                .sum())
        })?;
        if !return_indices {
            return one(values);
        }
        let indices = from_i64(idx.into_iter().map(|i| i as i64).collect(), &out)?;
        Ok(vec![values, indices])
    }))
}

fn flatten2d(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let axis = c.opt_int("axis")?.unwrap_or(1);
    Ok(Box::new(move |a| {
        let x = a[x];
        let r = x.rank() as i64;
        let ax = if axis < 0 { axis + r } else { axis };
        if !(0..=r).contains(&ax) {
            candle_core::bail!("axis {axis} is outside [-{r}, {r}]")
        }
        let (pre, post) = x.dims().split_at(ax as usize);
        one(x.reshape((count(pre)?, count(post)?))?)
    }))
}

/// Intersection over union of two center-size boxes `(x, y, w, h)`; 0 when
/// the union is empty.
fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let span = |c: f64, w: f64| (c - w / 2.0, c + w / 2.0);
    let ((ax0, ax1), (ay0, ay1)) = (span(a[0], a[2]), span(a[1], a[3]));
    let ((bx0, bx1), (by0, by1)) = (span(b[0], b[2]), span(b[1], b[3]));
    let iw = (ax1.min(bx1) - ax0.max(bx0)).max(0.0);
    let ih = (ay1.min(by1) - ay0.max(by0)).max(0.0);
    let inter = iw * ih;
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy NMS (both forms). A box's score is its best class score, its
/// class that class; boxes are visited by score (stable, descending), one is
/// dropped when its IoU with a kept box (of its class, with
/// `per_class_suppression`) is above `iou_threshold`; iOS15 first drops
/// scores not above `score_threshold` and, when nothing survives, keeps the
/// best box (as Core ML does, per coremltools' reference). Padding: zeros,
/// index -1. iOS15: boxes `[n, B, 4]`, scores `[n, B, K]`, four outputs (the
/// fourth the count); iOS17: boxes `[n, 4, B]`, scores `[n, K, B]`, three.
fn non_maximum_suppression(c: &mut OpCtx) -> Result<Kernel> {
    let boxes = c.tensor("boxes")?;
    let scores = c.tensor("scores")?;
    let iou_t = c
        .opt_float("iou_threshold")?
        .ok_or_else(|| c.error("required argument `iou_threshold` is missing"))?;
    let score_t = c.opt_float("score_threshold")?;
    let max_boxes = required_int(c, "max_boxes")?;
    let per_class = c.opt_bool("per_class_suppression")?.unwrap_or(false);
    let ios15 = c.op.outputs.len() == 4;
    if !ios15 && c.op.outputs.len() != 3 {
        return Err(c.error(format!(
            "{} outputs; expected 4 (iOS15) or 3 (iOS17)",
            c.op.outputs.len()
        )));
    }
    if ios15 && score_t.is_none() {
        return Err(c.error("required argument `score_threshold` is missing"));
    }
    if !(0..=1 << 20).contains(&max_boxes) {
        return Err(c.error(format!("`max_boxes` = {max_boxes}; expected 0..2^20")));
    }
    let m = max_boxes as usize;
    Ok(Box::new(move |a| {
        let (bt, st) = (a[boxes], a[scores]);
        let (&[n, b0, b1], &[sn, s0, s1]) = (bt.dims(), st.dims()) else {
            candle_core::bail!("boxes {:?} and scores {:?} must have rank 3", bt.dims(), st.dims())
        };
        // (number of boxes, classes) and the two layouts' element positions.
        let (nb, k) = if ios15 { (b0, s1) } else { (b1, s0) };
        if sn != n || (ios15 && (b1 != 4 || s0 != nb)) || (!ios15 && (b0 != 4 || s1 != nb)) {
            candle_core::bail!("boxes {:?} and scores {:?} do not agree", bt.dims(), st.dims())
        }
        let (bv, sv) = (host_f64(bt)?, host_f64(st)?);
        let bx = |bi: usize, i: usize, j: usize| {
            if ios15 {
                bv[(bi * nb + i) * 4 + j]
            } else {
                bv[(bi * 4 + j) * nb + i]
            }
        };
        let sc = |bi: usize, i: usize, j: usize| {
            if ios15 {
                sv[(bi * nb + i) * k + j]
            } else {
                sv[(bi * k + j) * nb + i]
            }
        };
        movement::check_u32(count(&[n, m, k.max(4)])?, "the selected boxes")?;
        let mut ob = vec![0.0; n * m * 4];
        let mut os = vec![0.0; count(&[n, m, k])?];
        let mut oi = vec![-1i64; n * m];
        let mut on = vec![0i64; n];
        for bi in 0..n {
            let best: Vec<(f64, usize)> = (0..nb)
                .map(|i| {
                    (0..k).fold((f64::NEG_INFINITY, 0), |acc, j| {
                        let v = sc(bi, i, j);
                        if v > acc.0 {
                            (v, j)
                        } else {
                            acc
                        }
                    })
                })
                .collect();
            let mut order: Vec<usize> = (0..nb).collect();
            order.sort_by(|&l, &r| best[r].0.total_cmp(&best[l].0));
            let corners = |i: usize| [bx(bi, i, 0), bx(bi, i, 1), bx(bi, i, 2), bx(bi, i, 3)];
            let mut kept: Vec<usize> = Vec::new();
            for &i in &order {
                if kept.len() == m {
                    break;
                }
                if score_t.is_some_and(|t| best[i].0 <= t) {
                    continue;
                }
                let hit = kept
                    .iter()
                    .any(|&j| (!per_class || best[j].1 == best[i].1) && iou(corners(i), corners(j)) > iou_t);
                if !hit {
                    kept.push(i);
                }
            }
            if ios15 && kept.is_empty() && nb > 0 && m > 0 {
                kept.push(order[0]);
            }
            on[bi] = kept.len() as i64;
            for (slot, &i) in kept.iter().enumerate() {
                oi[bi * m + slot] = i as i64;
                for j in 0..4 {
                    let at = if ios15 {
                        (bi * m + slot) * 4 + j
                    } else {
                        (bi * 4 + j) * m + slot
                    };
                    ob[at] = bx(bi, i, j);
                }
                for j in 0..k {
                    let at = if ios15 {
                        (bi * m + slot) * k + j
                    } else {
                        (bi * k + j) * m + slot
                    };
                    os[at] = sc(bi, i, j);
                }
            }
        }
        let (bshape, sshape) = if ios15 {
            ([n, m, 4], [n, m, k])
        } else {
            ([n, 4, m], [n, k, m])
        };
        let mut outs = vec![
            from_f64(ob, &bshape, bt.dtype())?,
            from_f64(os, &sshape, st.dtype())?,
            from_i64(oi, &[n, m])?,
        ];
        if ios15 {
            outs.push(from_i64(on, &[n])?);
        }
        Ok(outs)
    }))
}

#[cfg(test)]
mod tests {
    use crate::tensor::{Tensor as HostTensor, TensorMap};

    fn run(case: &str, items: Vec<(&str, HostTensor)>) -> crate::Result<TensorMap> {
        crate::mil::test_support::run_case(&format!("tensor_operation/{case}"), items)
    }

    fn ints(v: &[i32]) -> HostTensor {
        HostTensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
    }

    fn err(r: crate::Result<TensorMap>) -> String {
        r.unwrap_err().to_string()
    }

    /// Run-time sizes are checked before anything is allocated: a bad or
    /// absurd one is an error naming it, never a panic or an abort.
    #[test]
    fn bad_runtime_sizes_are_errors() {
        let e = err(run("fill_runtime_shape", vec![("s", ints(&[2, -4]))]));
        assert!(e.contains("negative dim -4"), "{e}");
        let e = err(run("fill_runtime_shape", vec![("s", ints(&[1 << 30, 1 << 30]))]));
        assert!(e.contains("elements"), "{e}");
        let x = HostTensor::from_vec(vec![2, 3], vec![0f32; 6]).unwrap();
        let e = err(run("tile_runtime_reps", vec![("x", x.clone()), ("r", ints(&[2, 0]))]));
        assert!(e.contains("below 1"), "{e}");
        let e = err(run(
            "tile_runtime_reps",
            vec![("x", x), ("r", ints(&[1 << 30, 1 << 30]))],
        ));
        // The memory limit (mil::limits) sees it first: the size overflows.
        assert!(e.contains("tile output") && e.contains("overflows"), "{e}");
        let x = HostTensor::from_vec(vec![2, 3, 4], vec![0f32; 24]).unwrap();
        let e = err(run(
            "pad_runtime",
            vec![("x", x.clone()), ("p", ints(&[0, 1, -1, 0, 2, 2]))],
        ));
        assert!(e.contains("pad amount -1 is negative"), "{e}");
        let e = err(run("pad_runtime", vec![("x", x.clone()), ("p", ints(&[0, 1, 2]))]));
        assert!(e.contains("pad [0, 1, 2]"), "{e}");
        let e = err(run(
            "pad_runtime",
            vec![("x", x), ("p", ints(&[0, 0, 0, 0, 1 << 30, 1 << 30]))],
        ));
        // The memory limit (mil::limits) sees it first.
        assert!(
            e.contains("padded tensor") && e.contains("over the memory limit"),
            "{e}"
        );
        let e = err(run(
            "range_1d_runtime_int32",
            vec![("s", ints(&[0])), ("e", ints(&[5])), ("d", ints(&[0]))],
        ));
        assert!(e.contains("no finite length"), "{e}");
        let e = err(run(
            "one_hot_runtime_size",
            vec![("i", ints(&[1, 0, 5])), ("n", ints(&[5]))],
        ));
        assert!(e.contains("index 5") && e.contains("size 5"), "{e}");
    }
}
