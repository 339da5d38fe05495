//! Shared machinery of the tensor-movement families (tensor_transformation,
//! tensor_operation, scatter_gather).
//!
//! Most movement ops are an *index map*: for every output element, the flat
//! (row-major) index of the input element it copies. [`take`] applies such a
//! map with one `index_select` on the flattened input, so one code path
//! serves every dtype (fp16, fp32, int, bool) and every layout. Maps are
//! built on the host from the op's parameters with checked arithmetic; every
//! index is checked against its axis before it is used, so a bad parameter
//! is an error naming the value and the size, never a wild read.

use candle_core::{DType as CDType, Device, Tensor};

use super::CResult;
use crate::error::Result;
use crate::mil::OpCtx;

/// Row-major strides of `dims` (in elements). Exact whenever the element
/// count fits (see [`count`]); saturating otherwise, which only happens for
/// an empty tensor (a 0 dim), whose strides are never used.
pub(super) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(dims[i + 1]);
    }
    s
}

/// The element count of `dims`, or an error when it overflows.
pub(super) fn count(dims: &[usize]) -> CResult<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "shape {dims:?} has more elements than this machine can address"
        ))
    })
}

/// Calls `f` with every multi-index of `dims` in row-major order.
pub(super) fn for_each_index(dims: &[usize], mut f: impl FnMut(&[usize]) -> CResult<()>) -> CResult<()> {
    if dims.contains(&0) {
        return Ok(());
    }
    let mut idx = vec![0usize; dims.len()];
    loop {
        f(&idx)?;
        let mut d = dims.len();
        loop {
            if d == 0 {
                return Ok(());
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// `x` gathered through an index map: output element `i` (row-major in
/// `shape`) is input element `map[i]` (row-major in `x`). Costs one copy of
/// the output. Every entry of `map` must be `< x.elem_count()`.
pub(super) fn take(x: &Tensor, map: Vec<u32>, shape: &[usize]) -> CResult<Tensor> {
    let flat = x.flatten_all()?;
    if map.is_empty() {
        return Tensor::zeros(shape, x.dtype(), x.device());
    }
    let ids = Tensor::from_vec(map, (count(shape)?,), x.device())?;
    flat.index_select(&ids, 0)?.reshape(shape)
}

/// Like [`take`], where `None` entries take the constant `fill`.
pub(super) fn take_or_fill(x: &Tensor, map: &[Option<usize>], fill: f64, shape: &[usize]) -> CResult<Tensor> {
    let n = x.elem_count();
    let filler = Tensor::full(fill, (1,), &Device::Cpu)?.to_dtype(x.dtype())?;
    let src = Tensor::cat(&[&x.flatten_all()?, &filler], 0)?;
    take(
        &src,
        map.iter().map(|m| idx32(m.unwrap_or(n))).collect::<CResult<_>>()?,
        shape,
    )
}

/// `x` through a per-output-element source function: `src(o)` is the flat
/// index of the input element output multi-index `o` copies. Checks the
/// output size before it allocates the map.
pub(super) fn map_to(x: &Tensor, out: &[usize], mut src: impl FnMut(&[usize]) -> CResult<usize>) -> CResult<Tensor> {
    let n = count(out)?;
    check_u32(n, "the output")?;
    check_u32(x.elem_count(), "the input")?;
    let mut map = Vec::with_capacity(n);
    for_each_index(out, |o| {
        map.push(src(o)? as u32);
        Ok(())
    })?;
    take(x, map, out)
}

/// Like [`map_to`], where `None` takes the constant `fill`.
pub(super) fn map_or_fill(
    x: &Tensor,
    out: &[usize],
    fill: f64,
    mut src: impl FnMut(&[usize]) -> CResult<Option<usize>>,
) -> CResult<Tensor> {
    let n = count(out)?;
    check_u32(n, "the output")?;
    check_u32(x.elem_count(), "the input")?;
    let mut map = Vec::with_capacity(n);
    for_each_index(out, |o| {
        map.push(src(o)?);
        Ok(())
    })?;
    take_or_fill(x, &map, fill, out)
}

/// `x` with each axis `d` re-indexed by `lists[d]` (source positions along
/// that axis, `None` for the constant `fill`): slices, reversal, tiling and
/// padding are all this. The output has dims `lists[d].len()`.
pub(super) fn select_axes(x: &Tensor, lists: &[Vec<Option<usize>>], fill: f64) -> CResult<Tensor> {
    let dims = x.dims();
    if lists.len() != dims.len() {
        candle_core::bail!("{} axis selections for a tensor of rank {}", lists.len(), dims.len())
    }
    for (d, l) in lists.iter().enumerate() {
        if let Some(&bad) = l.iter().flatten().find(|&&i| i >= dims[d]) {
            candle_core::bail!("index {bad} is out of range for axis {d} of size {}", dims[d])
        }
    }
    // Plain ranges (stride-1 slices, no padding) are views: no map, no copy.
    let run = |l: &Vec<Option<usize>>| match l.first() {
        Some(Some(s)) => l.iter().enumerate().all(|(k, &i)| i == Some(s + k)).then_some(*s),
        _ => None,
    };
    if lists.iter().all(|l| l.is_empty() || run(l).is_some()) && lists.iter().all(|l| !l.is_empty()) {
        let mut y = x.clone();
        for (d, l) in lists.iter().enumerate() {
            if l.len() != dims[d] {
                y = y.narrow(d, run(l).unwrap_or(0), l.len())?;
            }
        }
        return Ok(y);
    }
    let st = strides(dims);
    let out: Vec<usize> = lists.iter().map(|l| l.len()).collect();
    let any_fill = lists.iter().any(|l| l.iter().any(|i| i.is_none()));
    if !any_fill {
        return map_to(x, &out, |o| {
            Ok(o.iter()
                .enumerate()
                .map(|(d, &i)| lists[d][i].unwrap_or(0) * st[d])
                .sum())
        });
    }
    map_or_fill(x, &out, fill, |o| {
        let mut s = 0;
        for (d, &i) in o.iter().enumerate() {
            match lists[d][i] {
                Some(j) => s += j * st[d],
                None => return Ok(None),
            }
        }
        Ok(Some(s))
    })
}

/// An element index as `u32` (what `index_select` reads fastest).
pub(super) fn idx32(i: usize) -> CResult<u32> {
    u32::try_from(i).map_err(|_| candle_core::Error::Msg(format!("element index {i} exceeds 2^32")))
}

/// Most elements a movement op's output (and its index map) may have:
/// 2^28, i.e. 1 GiB of fp32 plus 1 GiB of map. Sizes come from parameters
/// that may be computed at run time, so they are checked before anything
/// is allocated (an allocation failure aborts the process).
pub(super) const MAX_ELEMENTS: usize = 1 << 28;

/// Refuses `n` elements above [`MAX_ELEMENTS`] (which also keeps every
/// flat index within `u32`).
pub(super) fn check_u32(n: usize, what: &str) -> CResult<()> {
    if n > MAX_ELEMENTS {
        candle_core::bail!("{what} would have {n} elements; movement ops produce at most 2^28")
    }
    Ok(())
}

/// A tensor's values as host integers (floats truncated toward zero).
pub(super) fn host_ints(t: &Tensor) -> CResult<Vec<i64>> {
    t.flatten_all()?.to_dtype(CDType::I64)?.to_vec1()
}

/// A tensor's values as host f64.
pub(super) fn host_f64(t: &Tensor) -> CResult<Vec<f64>> {
    t.flatten_all()?.to_dtype(CDType::F64)?.to_vec1()
}

/// A host f64 buffer as a tensor of `dtype` and `shape`.
pub(super) fn from_f64(v: Vec<f64>, shape: &[usize], dtype: CDType) -> CResult<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// A host i64 buffer as an int tensor of `shape`.
pub(super) fn from_i64(v: Vec<i64>, shape: &[usize]) -> CResult<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// `axis` (negative from the end) of a tensor of `rank`; a scalar has no
/// axis, so every axis of one is an error (not an index past its dims).
pub(super) fn axis_at(axis: i64, rank: usize) -> CResult<usize> {
    if rank == 0 {
        candle_core::bail!("axis {axis} of a scalar (rank 0)")
    }
    super::axis_of(axis, rank)
}

/// `index` on an axis of `size`, with negative values counted from the end;
/// anything else outside `[-size, size)` is an error naming both.
pub(super) fn wrap_index(index: i64, size: usize, what: &str) -> CResult<usize> {
    let n = size as i64;
    let j = if index < 0 { index + n } else { index };
    if j < 0 || j >= n {
        candle_core::bail!("{what} index {index} is out of range for an axis of size {size}")
    }
    Ok(j as usize)
}

/// An integer-list argument that may be a constant or computed at run time
/// (reshape's `shape`, slice bounds, fill's `shape`, pad amounts, ...).
pub(super) enum Ints {
    Const(Vec<i64>),
    Operand(usize),
}

impl Ints {
    /// Reads `arg` (required) from the op.
    pub(super) fn read(c: &mut OpCtx, arg: &str) -> Result<Ints> {
        Ok(match Self::read_opt(c, arg)? {
            Some(v) => v,
            None => return Err(c.error(format!("required argument `{arg}` is missing"))),
        })
    }

    /// Reads `arg` (optional) from the op.
    pub(super) fn read_opt(c: &mut OpCtx, arg: &str) -> Result<Option<Ints>> {
        if c.is_runtime(arg)? {
            return Ok(Some(Ints::Operand(c.tensor(arg)?)));
        }
        Ok(c.opt_ints(arg)?.map(Ints::Const))
    }

    /// The values, given the kernel's operands.
    pub(super) fn get(&self, a: &[&Tensor]) -> CResult<Vec<i64>> {
        match self {
            Ints::Const(v) => Ok(v.clone()),
            Ints::Operand(i) => host_ints(a[*i]),
        }
    }
}

/// A copy of a conformance case's package in which the constant bound to
/// `param` of its `op_type` op is replaced by `val`; returns the plan
/// build's error (tests of build-time option checks).
#[cfg(test)]
pub(super) fn build_with_param(
    case: &str,
    op_type: &str,
    param: &str,
    val: coreml_proto::proto::mil_spec::tensor_value::Value,
) -> String {
    use coreml_proto::proto::mil_spec::argument::binding::Binding;
    use coreml_proto::proto::mil_spec::value::{self, immediate_value};
    crate::mil::test_support::build_edited(case, |block| {
        let op = block.operations.iter().find(|o| o.r#type == op_type).unwrap();
        let Some(Binding::Name(cname)) = op.inputs[param].arguments[0].binding.clone() else {
            panic!("{case}: `{param}` is not bound to a constant")
        };
        let c = block
            .operations
            .iter_mut()
            .find(|o| o.r#type == "const" && o.outputs[0].name == cname)
            .unwrap();
        let Some(value::Value::ImmediateValue(iv)) = &mut c.attributes.get_mut("val").unwrap().value else {
            panic!("{case}: no immediate value")
        };
        let Some(immediate_value::Value::Tensor(t)) = &mut iv.value else {
            panic!("{case}: no tensor")
        };
        t.value = Some(val);
    })
    .to_string()
}

#[cfg(test)]
mod option_tests {
    use coreml_proto::proto::mil_spec::tensor_value::{RepeatedInts, RepeatedStrings, Value as TV};

    use super::build_with_param;

    /// A bad option is refused when the plan is built, by an error naming the
    /// op, its name in the program, the parameter and the value.
    #[test]
    fn bad_options_are_build_errors_naming_op_parameter_and_value() {
        let s = |v: &str| {
            TV::Strings(RepeatedStrings {
                values: vec![v.to_string()],
            })
        };
        let i = |v: i32| TV::Ints(RepeatedInts { values: vec![v] });
        for (case, op, param, val, text) in [
            (
                "tensor_operation/pad_reflect_last2",
                "pad",
                "mode",
                s("mirror"),
                "mirror",
            ),
            ("scatter_gather/scatter_add", "scatter", "mode", s("xor"), "xor"),
            ("scatter_gather/scatter_nd_add", "scatter_nd", "mode", s("avg"), "avg"),
            ("tensor_operation/topk_k3", "topk", "k", i(0), "0"),
            (
                "tensor_transformation/depth_to_space_b2",
                "depth_to_space",
                "block_size",
                i(0),
                "0",
            ),
            (
                "tensor_transformation/sliding_windows_axis1",
                "sliding_windows",
                "size",
                i(-2),
                "-2",
            ),
            (
                "scatter_gather/gather_batch_dims1_ios16",
                "gather",
                "batch_dims",
                i(-1),
                "-1",
            ),
        ] {
            let e = build_with_param(case, op, param, val);
            assert!(
                e.contains(op) && e.contains(&format!("`{param}`")) && e.contains(text),
                "{case}: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_count() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(count(&[2, 3, 4]).unwrap(), 24);
        assert!(count(&[usize::MAX, 2]).is_err());
    }

    #[test]
    fn wrap_index_checks_bounds() {
        assert_eq!(wrap_index(-1, 4, "x").unwrap(), 3);
        let e = wrap_index(4, 4, "gather").unwrap_err().to_string();
        assert!(e.contains("index 4") && e.contains("size 4"), "{e}");
        assert!(wrap_index(-5, 4, "x").is_err());
    }

    #[test]
    fn take_or_fill_pads() {
        let x = Tensor::new(&[1u8, 2, 3], &Device::Cpu).unwrap();
        let y = take_or_fill(&x, &[None, Some(2), Some(0)], 7.0, &[3]).unwrap();
        assert_eq!(y.to_vec1::<u8>().unwrap(), vec![7, 3, 1]);
    }
}
