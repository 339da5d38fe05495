//! Gather and scatter (coremltools `scatter_gather.py`, iOS15 with its
//! iOS16/17 re-versions).
//!
//! Conventions: indices may be negative (counted from the end of the axis,
//! as iOS15/16 define; iOS17 calls negatives out of range with undefined
//! results, and counting them from the end is one such result) and are
//! bounds-checked at run time: a bad index is an error naming the index and
//! the axis size, never a wild read. `validate_indices` (iOS17) is accepted;
//! indices are always validated. `batch_dims` (iOS16+) leading dims of `x`
//! and `indices` are matched one to one. Scatters apply their updates in
//! row-major order of `updates` (so with repeated indices, `update` keeps the
//! last one and the others accumulate), computing in f64 and rounding once
//! to the data's dtype; `mode` defaults to `add`.

use candle_core::Tensor;

use super::movement::{axis_at, count, for_each_index, from_f64, host_f64, host_ints, map_to, strides, wrap_index};
use super::{one, Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "gather" => gather,
        "gather_along_axis" => gather_along_axis,
        "gather_nd" => gather_nd,
        "scatter" => |c| scatter(c, Scatter::Axis),
        "scatter_along_axis" => |c| scatter(c, Scatter::AlongAxis),
        "scatter_nd" => |c| scatter(c, Scatter::Nd),
        _ => return None,
    })
}

fn batch_dims(c: &mut OpCtx) -> Result<usize> {
    let b = c.opt_int("batch_dims")?.unwrap_or(0);
    if !(0..=64).contains(&b) {
        return Err(c.error(format!("`batch_dims` = {b}; expected 0..rank")));
    }
    Ok(b as usize)
}

fn gather(c: &mut OpCtx) -> Result<Kernel> {
    if let Some(k) = gather_rows(c)? {
        return Ok(k);
    }
    let x = c.tensor("x")?;
    let idx = c.tensor("indices")?;
    let axis = c.opt_int("axis")?.unwrap_or(0);
    let bd = batch_dims(c)?;
    c.opt_bool("validate_indices")?;
    Ok(Box::new(move |a| {
        let (x, ind) = (a[x], a[idx]);
        let (xd, idd) = (x.dims(), ind.dims());
        let ax = axis_at(axis, xd.len())?;
        if bd > ax || bd > idd.len() || xd[..bd] != idd[..bd] {
            candle_core::bail!("batch_dims {bd} for x {xd:?}, indices {idd:?} and axis {ax}")
        }
        let iv: Vec<usize> = host_ints(ind)?
            .into_iter()
            .map(|i| wrap_index(i, xd[ax], &format!("gather (axis {ax})")))
            .collect::<CResult<_>>()?;
        let ni = idd.len() - bd;
        let mut out = xd[..ax].to_vec();
        out.extend_from_slice(&idd[bd..]);
        out.extend_from_slice(&xd[ax + 1..]);
        if bd == 0 {
            // Whole slices along one axis: candle's index_select (embedding lookups).
            let ids: Vec<u32> = iv.iter().map(|&i| i as u32).collect();
            let ids = Tensor::from_vec(ids, (iv.len(),), x.device())?;
            return one(x.contiguous()?.index_select(&ids, ax)?.reshape(out)?);
        }
        let (xs, is) = (strides(xd), strides(idd));
        one(map_to(x, &out, |o| {
            let mut ii = 0;
            for d in 0..bd {
                ii += o[d] * is[d];
            }
            for k in 0..ni {
                ii += o[ax + k] * is[bd + k];
            }
            let mut s = iv[ii] * xs[ax];
            for d in 0..ax {
                s += o[d] * xs[d];
            }
            for d in ax + 1..xd.len() {
                s += o[d - 1 + ni] * xs[d];
            }
            Ok(s)
        })?)
    }))
}

/// `gather` of whole rows (axis 0, no batch dims) of an f16 or compressed
/// constant (an embedding table): each row read from the stored form as
/// f32, the table never expanded. `None` for any other gather.
fn gather_rows(c: &mut OpCtx) -> Result<Option<Kernel>> {
    let axis = c.opt_int("axis")?.unwrap_or(0);
    if batch_dims(c)? != 0 {
        return Ok(None);
    }
    let Some(rank) = c.packed_weight_rank("x") else {
        return Ok(None);
    };
    if axis != 0 && axis != -(rank as i64) {
        return Ok(None);
    }
    let Some(w) = c.packed_const("x") else { return Ok(None) };
    let idx = c.tensor("indices")?;
    c.opt_bool("validate_indices")?;
    Ok(Some(Box::new(move |a| {
        let ind = a[idx];
        let n = w.shape()[0];
        let iv: Vec<usize> = host_ints(ind)?
            .into_iter()
            .map(|i| wrap_index(i, n, "gather (axis 0)"))
            .collect::<CResult<_>>()?;
        let mut shape = ind.dims().to_vec();
        shape.extend_from_slice(&w.shape()[1..]);
        crate::mil::limits::check_alloc("gather output", &shape, 4)?;
        let rl = w.row_len();
        let mut out = vec![0f32; iv.len() * rl];
        for (&i, o) in iv.iter().zip(out.chunks_exact_mut(rl.max(1))) {
            w.rows_f32(i..i + 1, o)?;
        }
        one(Tensor::from_vec(out, shape, &candle_core::Device::Cpu)?)
    })))
}

fn gather_along_axis(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let idx = c.tensor("indices")?;
    let axis = c.opt_int("axis")?.unwrap_or(0);
    c.opt_bool("validate_indices")?;
    Ok(Box::new(move |a| {
        let (x, ind) = (a[x], a[idx]);
        let (xd, idd) = (x.dims(), ind.dims());
        let ax = axis_at(axis, xd.len())?;
        if xd.len() != idd.len() || (0..xd.len()).any(|d| d != ax && xd[d] != idd[d]) {
            candle_core::bail!("indices of shape {idd:?} for x of shape {xd:?} along axis {ax}")
        }
        let iv = host_ints(ind)?;
        let xs = strides(xd);
        let mut k = 0;
        one(map_to(x, idd, |o| {
            let j = wrap_index(iv[k], xd[ax], &format!("gather_along_axis (axis {ax})"))?;
            k += 1;
            Ok(o.iter()
                .enumerate()
                .map(|(d, &i)| xs[d] * if d == ax { j } else { i })
                .sum())
        })?)
    }))
}

fn gather_nd(c: &mut OpCtx) -> Result<Kernel> {
    let x = c.tensor("x")?;
    let idx = c.tensor("indices")?;
    let bd = batch_dims(c)?;
    c.opt_bool("validate_indices")?;
    Ok(Box::new(move |a| {
        let (x, ind) = (a[x], a[idx]);
        let (xd, idd) = (x.dims(), ind.dims());
        let Some((&depth, lead)) = idd.split_last() else {
            candle_core::bail!("gather_nd indices must have rank >= 1")
        };
        if bd > lead.len() || bd + depth > xd.len() || xd[..bd] != idd[..bd] {
            candle_core::bail!("indices of shape {idd:?} (batch_dims {bd}) for x of shape {xd:?}")
        }
        let iv = host_ints(ind)?;
        let mut out = lead.to_vec();
        out.extend_from_slice(&xd[bd + depth..]);
        let xs = strides(xd);
        let nl = lead.len();
        one(map_to(x, &out, |o| {
            let row = o[..nl].iter().zip(lead).fold(0, |r, (&i, &d)| r * d + i) * depth;
            let mut s = 0;
            for d in 0..bd {
                s += o[d] * xs[d];
            }
            for k in 0..depth {
                s += wrap_index(iv[row + k], xd[bd + k], &format!("gather_nd (axis {})", bd + k))? * xs[bd + k];
            }
            for (k, &i) in o[nl..].iter().enumerate() {
                s += i * xs[bd + depth + k];
            }
            Ok(s)
        })?)
    }))
}

#[derive(Clone, Copy)]
enum Scatter {
    Axis,
    AlongAxis,
    Nd,
}

#[derive(Clone, Copy)]
enum Mode {
    Update,
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

impl Mode {
    fn apply(self, d: f64, u: f64) -> f64 {
        match self {
            Mode::Update => u,
            Mode::Add => d + u,
            Mode::Sub => d - u,
            Mode::Mul => d * u,
            Mode::Div => d / u,
            Mode::Max => d.max(u),
            Mode::Min => d.min(u),
        }
    }
}

fn scatter(c: &mut OpCtx, kind: Scatter) -> Result<Kernel> {
    let data = c.tensor("data")?;
    let idx = c.tensor("indices")?;
    let upd = c.tensor("updates")?;
    let axis = c.opt_int("axis")?.unwrap_or(0);
    c.opt_bool("validate_indices")?;
    let mode = match c.opt_string("mode")?.as_deref().unwrap_or("add") {
        "update" => Mode::Update,
        "add" => Mode::Add,
        "sub" => Mode::Sub,
        "mul" => Mode::Mul,
        "div" => Mode::Div,
        "max" => Mode::Max,
        "min" => Mode::Min,
        other => {
            return Err(c.unsupported(format!(
                "`mode` = `{other}` (expected update, add, sub, mul, div, max or min)"
            )))
        }
    };
    Ok(Box::new(move |a| {
        let (data, ind, upd) = (a[data], a[idx], a[upd]);
        let (dd, idd, ud) = (data.dims(), ind.dims(), upd.dims());
        let iv = host_ints(ind)?;
        // Where each update element lands, as a flat index into data.
        let ds = strides(dd);
        let mut target = Vec::with_capacity(count(ud)?);
        match kind {
            Scatter::Axis => {
                let ax = axis_at(axis, dd.len())?;
                let mut want = dd[..ax].to_vec();
                want.extend_from_slice(idd);
                want.extend_from_slice(&dd[ax + 1..]);
                if ud != want.as_slice() {
                    candle_core::bail!("updates of shape {ud:?}; expected {want:?}")
                }
                let ni = idd.len();
                for_each_index(ud, |u| {
                    let ii = u[ax..ax + ni].iter().zip(idd).fold(0, |r, (&i, &d)| r * d + i);
                    let j = wrap_index(iv[ii], dd[ax], &format!("scatter (axis {ax})"))?;
                    let mut s = j * ds[ax];
                    for d in 0..ax {
                        s += u[d] * ds[d];
                    }
                    for d in ax + 1..dd.len() {
                        s += u[d - 1 + ni] * ds[d];
                    }
                    target.push(s);
                    Ok(())
                })?;
            }
            Scatter::AlongAxis => {
                let ax = axis_at(axis, dd.len())?;
                if idd != ud || dd.len() != idd.len() || (0..dd.len()).any(|d| d != ax && dd[d] != idd[d]) {
                    candle_core::bail!("indices {idd:?} and updates {ud:?} for data {dd:?} along axis {ax}")
                }
                let mut k = 0;
                for_each_index(ud, |u| {
                    let j = wrap_index(iv[k], dd[ax], &format!("scatter_along_axis (axis {ax})"))?;
                    k += 1;
                    target.push(
                        u.iter()
                            .enumerate()
                            .map(|(d, &i)| ds[d] * if d == ax { j } else { i })
                            .sum(),
                    );
                    Ok(())
                })?;
            }
            Scatter::Nd => {
                let Some((&depth, lead)) = idd.split_last() else {
                    candle_core::bail!("scatter_nd indices must have rank >= 1")
                };
                let mut want = lead.to_vec();
                if depth > dd.len() {
                    candle_core::bail!("indices of depth {depth} for data of rank {}", dd.len())
                }
                want.extend_from_slice(&dd[depth..]);
                if ud != want.as_slice() {
                    candle_core::bail!("updates of shape {ud:?}; expected {want:?}")
                }
                let nl = lead.len();
                for_each_index(ud, |u| {
                    let row = u[..nl].iter().zip(lead).fold(0, |r, (&i, &d)| r * d + i) * depth;
                    let mut s = 0;
                    for k in 0..depth {
                        s += wrap_index(iv[row + k], dd[k], &format!("scatter_nd (axis {k})"))? * ds[k];
                    }
                    for (k, &i) in u[nl..].iter().enumerate() {
                        s += i * ds[depth + k];
                    }
                    target.push(s);
                    Ok(())
                })?;
            }
        }
        let mut out = host_f64(data)?;
        let uv = host_f64(upd)?;
        for (t, u) in target.into_iter().zip(uv) {
            out[t] = mode.apply(out[t], u);
        }
        one(from_f64(out, dd, data.dtype())?)
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::mil::{FloatPolicy, Plan};
    use crate::mlpackage::MlPackage;
    use crate::tensor::{Tensor as HostTensor, TensorMap};

    fn case(name: &str) -> Plan {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/conformance/scatter_gather")
            .join(name)
            .join("model.mlpackage");
        Plan::build(&MlPackage::open(p).unwrap(), FloatPolicy::Upcast).unwrap()
    }

    fn inputs(items: Vec<(&str, HostTensor)>) -> TensorMap {
        items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// A bad run-time index is an error naming the index and the axis size,
    /// for every gather and scatter form (inputs as the conformance cases).
    #[test]
    fn bad_indices_are_errors_naming_index_and_size() {
        let x = HostTensor::from_vec(vec![4, 5, 3], vec![0f32; 60]).unwrap();
        let bad = HostTensor::from_vec(vec![4], vec![3i32, 0, 4, 1]).unwrap();
        let e = case("gather_axis0")
            .run(&inputs(vec![("x", x.clone()), ("i", bad)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 4") && e.contains("size 4"), "{e}");
        let neg = HostTensor::from_vec(vec![4], vec![-5i32, 0, 0, 0]).unwrap();
        let e = case("gather_axis0")
            .run(&inputs(vec![("x", x), ("i", neg)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index -5") && e.contains("size 4"), "{e}");

        let d = HostTensor::from_vec(vec![4, 3], vec![0f32; 12]).unwrap();
        let u = HostTensor::from_vec(vec![2, 3], vec![1f32; 6]).unwrap();
        let i = HostTensor::from_vec(vec![2], vec![1i32, 9]).unwrap();
        let e = case("scatter_add")
            .run(&inputs(vec![("d", d), ("i", i), ("u", u)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 9") && e.contains("size 4"), "{e}");

        let d = HostTensor::from_vec(vec![3, 4, 2], vec![0f32; 24]).unwrap();
        let u = HostTensor::from_vec(vec![2, 2], vec![1f32; 4]).unwrap();
        let i = HostTensor::from_vec(vec![2, 2], vec![2i32, 1, 0, 4]).unwrap();
        let e = case("scatter_nd_add")
            .run(&inputs(vec![("d", d), ("i", i), ("u", u)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 4") && e.contains("size 4"), "{e}");

        let x = HostTensor::from_vec(vec![3, 4], vec![0f32; 12]).unwrap();
        let i = HostTensor::from_vec(vec![3, 2], vec![3i32, 0, 1, 1, 0, 7]).unwrap();
        let e = case("gather_along_axis_last")
            .run(&inputs(vec![("x", x), ("i", i)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 7") && e.contains("size 4"), "{e}");

        let x = HostTensor::from_vec(vec![3, 4, 2], vec![0f32; 24]).unwrap();
        let i = HostTensor::from_vec(vec![2, 1], vec![2i32, 3]).unwrap();
        let e = case("gather_nd_depth1")
            .run(&inputs(vec![("x", x), ("i", i)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 3") && e.contains("size 3"), "{e}");
    }
}
