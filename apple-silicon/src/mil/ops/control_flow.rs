//! Control flow (coremltools `control_flow.py`): `select` and the list ops
//! (`make_list`, `list_length`, `list_read`, `list_write`, `list_gather`,
//! `list_scatter`). `cond` and `while_loop` hold nested blocks and are built
//! by the plan builder (`mil/block.rs`).
//!
//! Conventions: `select(cond, a, b)` broadcasts all three operands; a
//! non-zero `cond` picks `a`.
//!
//! Lists: a list is a run-time value ([`ListVal`]): its elements (each a
//! tensor, or unset), its element shape when known (from `elem_shape`, or
//! fixed by the first write when `elem_shape` is symbolic) and dtype. A
//! list starts with `init_length` unset elements (default 1); writing past
//! the end grows a `dynamic_length` list (default) and is an error on a
//! fixed-length one. Indices must be in `[0, length)` for reads and
//! non-negative for writes. Reading an unset element gives zeros of the
//! element shape (coremltools leaves it undefined); with no known shape it
//! is an error. Every growth is checked against the memory limit.

use std::sync::Arc;

use candle_core::{DType as CDType, Device, Tensor};

use super::{broadcast_shape, check_alloc, one, Builder, CResult};
use crate::error::Result;
use crate::mil::block::RVal;
use crate::mil::value::HostData;
use crate::mil::{FloatPolicy, Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "select" => select,
        _ => return None,
    })
}

pub(super) fn select(c: &mut OpCtx) -> Result<Kernel> {
    let cond = c.tensor("cond")?;
    let x = c.tensor("a")?;
    let y = c.tensor("b")?;
    Ok(Box::new(move |a| {
        let shape = broadcast_shape(&[a[cond].dims(), a[x].dims(), a[y].dims()])?;
        let cnd = a[cond].broadcast_as(shape.as_slice())?.contiguous()?;
        let t = a[x].broadcast_as(shape.as_slice())?.contiguous()?;
        let f = a[y].to_dtype(t.dtype())?.broadcast_as(shape.as_slice())?.contiguous()?;
        one(cnd.to_dtype(CDType::U8)?.where_cond(&t, &f)?)
    }))
}

/// A list op's computation: its operands (tensors or lists) in order, its
/// one result out.
pub(crate) type ListKernel = Box<dyn Fn(Vec<RVal>) -> CResult<RVal> + Send + Sync>;
pub(crate) type ListBuilder = fn(&mut OpCtx) -> Result<ListKernel>;

/// The list-op builder for `op_type`, if it is one.
pub(crate) fn list_builder(op_type: &str) -> Option<ListBuilder> {
    Some(match op_type {
        "make_list" => make_list,
        "list_length" => list_length,
        "list_read" => list_read,
        "list_write" => list_write,
        "list_gather" => list_gather,
        "list_scatter" => list_scatter,
        _ => return None,
    })
}

/// A list at run time.
#[derive(Clone)]
pub(crate) struct ListVal {
    elems: Vec<Option<Tensor>>,
    elem_shape: Option<Vec<usize>>,
    dtype: CDType,
    dynamic: bool,
}

impl ListVal {
    fn elem_bytes(&self) -> usize {
        self.dtype.size_in_bytes()
    }

    /// Grows the list to hold index `i`, checking the memory it may reach.
    fn reach(&mut self, i: i64) -> CResult<()> {
        if i < 0 {
            candle_core::bail!("list index {i} is negative")
        }
        let need = (i as u64).saturating_add(1);
        if need <= self.elems.len() as u64 {
            return Ok(());
        }
        if !self.dynamic {
            candle_core::bail!("list index {i} is outside a list of fixed length {}", self.elems.len())
        }
        let n = usize::try_from(need).map_err(|_| candle_core::Error::Msg(format!("list index {i} is too large")))?;
        check_alloc("list slots", &[n], std::mem::size_of::<Option<Tensor>>())?;
        if let Some(es) = &self.elem_shape {
            let mut dims = vec![n];
            dims.extend(es);
            check_alloc("list", &dims, self.elem_bytes())?;
        }
        self.elems.resize(n, None);
        Ok(())
    }

    fn write(&mut self, i: i64, v: &Tensor) -> CResult<()> {
        match &self.elem_shape {
            Some(es) if es.as_slice() != v.dims() => {
                candle_core::bail!("a value of shape {:?} written to a list of elements {es:?}", v.dims())
            }
            Some(_) => {}
            None => self.elem_shape = Some(v.dims().to_vec()),
        }
        self.reach(i)?;
        self.elems[i as usize] = Some(v.to_dtype(self.dtype)?);
        Ok(())
    }

    fn read(&self, i: i64) -> CResult<Tensor> {
        if i < 0 || i as u64 >= self.elems.len() as u64 {
            candle_core::bail!("list index {i} is outside a list of length {}", self.elems.len())
        }
        match (&self.elems[i as usize], &self.elem_shape) {
            (Some(t), _) => Ok(t.clone()),
            (None, Some(es)) => {
                check_alloc("list element", es, self.elem_bytes())?;
                Tensor::zeros(es.as_slice(), self.dtype, &Device::Cpu)
            }
            (None, None) => candle_core::bail!("list element {i} was never written and its shape is unknown"),
        }
    }
}

fn list_of(v: RVal) -> CResult<Arc<ListVal>> {
    match v {
        RVal::L(l) => Ok(l),
        RVal::T(_) => candle_core::bail!("a tensor where a list is expected"),
    }
}

fn tensor_of(v: &RVal) -> CResult<&Tensor> {
    match v {
        RVal::T(t) => Ok(t),
        RVal::L(_) => candle_core::bail!("a list where a tensor is expected"),
    }
}

fn ints_of(t: &Tensor) -> CResult<Vec<i64>> {
    t.flatten_all()?.to_dtype(CDType::I64)?.to_vec1::<i64>()
}

fn scalar_of(t: &Tensor, what: &str) -> CResult<i64> {
    match ints_of(t)?.as_slice() {
        [i] => Ok(*i),
        _ => candle_core::bail!("`{what}` of shape {:?} (a scalar expected)", t.dims()),
    }
}

fn make_list(c: &mut OpCtx) -> Result<ListKernel> {
    let init = c.opt_tensor("init_length")?;
    let dynamic = c.opt_bool("dynamic_length")?.unwrap_or(true);
    let mut elem_shape = Some(Vec::new());
    for d in c.consts("elem_shape")? {
        match &d.data {
            // A string is a symbolic dimension: the first write fixes it.
            HostData::Str(_) => elem_shape = None,
            data => {
                let v = data.to_f64().unwrap_or_default();
                match v.as_slice() {
                    [x] if *x >= 0.0 => {
                        if let Some(es) = elem_shape.as_mut() {
                            es.push(*x as usize)
                        }
                    }
                    _ => return Err(c.error(format!("`elem_shape` entry {v:?} is not a dimension"))),
                }
            }
        }
    }
    if !c.op.inputs.contains_key("elem_shape") {
        elem_shape = None;
    }
    let dtype = match c.opt_string("dtype")?.as_deref().unwrap_or("fp32") {
        "fp32" => CDType::F32,
        "fp16" => match c.policy {
            FloatPolicy::Native => CDType::F16,
            FloatPolicy::Upcast => CDType::F32,
        },
        "int32" => CDType::I64,
        "bool" => CDType::U8,
        other => return Err(c.unsupported(format!("`dtype` {other} (fp16, fp32, int32 or bool)"))),
    };
    Ok(Box::new(move |a| {
        let n = match init {
            Some(i) => scalar_of(tensor_of(&a[i])?, "init_length")?,
            None => 1,
        };
        if n < 0 {
            candle_core::bail!("`init_length` {n} is negative")
        }
        let mut l = ListVal {
            elems: Vec::new(),
            elem_shape: elem_shape.clone(),
            dtype,
            dynamic: true,
        };
        if n > 0 {
            l.reach(n - 1)?;
        }
        l.dynamic = dynamic;
        Ok(RVal::L(Arc::new(l)))
    }))
}

fn list_length(c: &mut OpCtx) -> Result<ListKernel> {
    let ls = c.list("ls")?;
    Ok(Box::new(move |mut a| {
        let l = list_of(a.swap_remove(ls))?;
        Ok(RVal::T(Tensor::new(l.elems.len() as i64, &Device::Cpu)?))
    }))
}

fn list_read(c: &mut OpCtx) -> Result<ListKernel> {
    let ls = c.list("ls")?;
    let index = c.tensor("index")?;
    Ok(Box::new(move |a| {
        let i = scalar_of(tensor_of(&a[index])?, "index")?;
        let l = list_of(a[ls].clone())?;
        Ok(RVal::T(l.read(i)?))
    }))
}

fn list_write(c: &mut OpCtx) -> Result<ListKernel> {
    let ls = c.list("ls")?;
    let index = c.tensor("index")?;
    let value = c.tensor("value")?;
    Ok(Box::new(move |mut a| {
        let i = scalar_of(tensor_of(&a[index])?, "index")?;
        let v = tensor_of(&a[value])?.clone();
        let mut l = list_of(std::mem::replace(&mut a[ls], RVal::T(v.clone())))?;
        drop(a);
        // In place when this op holds the only reference (the list died here).
        Arc::make_mut(&mut l).write(i, &v)?;
        Ok(RVal::L(l))
    }))
}

fn list_gather(c: &mut OpCtx) -> Result<ListKernel> {
    let ls = c.list("ls")?;
    let indices = c.tensor("indices")?;
    Ok(Box::new(move |a| {
        let idx = ints_of(tensor_of(&a[indices])?)?;
        let l = list_of(a[ls].clone())?;
        let elems = idx.iter().map(|&i| l.read(i)).collect::<CResult<Vec<_>>>()?;
        match &l.elem_shape {
            Some(es) => {
                let mut dims = vec![idx.len()];
                dims.extend(es);
                check_alloc("list_gather output", &dims, l.elem_bytes())?;
                if elems.is_empty() {
                    return Ok(RVal::T(Tensor::zeros(dims, l.dtype, &Device::Cpu)?));
                }
            }
            None => candle_core::bail!("gathering from a list whose element shape is unknown (never written)"),
        }
        Ok(RVal::T(Tensor::stack(&elems, 0)?))
    }))
}

fn list_scatter(c: &mut OpCtx) -> Result<ListKernel> {
    let ls = c.list("ls")?;
    let indices = c.tensor("indices")?;
    let value = c.tensor("value")?;
    Ok(Box::new(move |mut a| {
        let idx = ints_of(tensor_of(&a[indices])?)?;
        let v = tensor_of(&a[value])?.clone();
        if v.rank() == 0 || v.dims()[0] != idx.len() {
            candle_core::bail!("{} indices for values of shape {:?}", idx.len(), v.dims())
        }
        let mut l = list_of(std::mem::replace(&mut a[ls], RVal::T(v.clone())))?;
        drop(a);
        let lm = Arc::make_mut(&mut l);
        // In order: a repeated index keeps its last value.
        for (k, &i) in idx.iter().enumerate() {
            lm.write(i, &v.get(k)?)?;
        }
        Ok(RVal::L(l))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::limits;

    fn list(n: usize, shape: Option<Vec<usize>>, dynamic: bool) -> ListVal {
        ListVal {
            elems: vec![None; n],
            elem_shape: shape,
            dtype: CDType::F32,
            dynamic,
        }
    }

    #[test]
    fn growing_a_list_past_the_memory_limit_is_memory_pressure() {
        let mut l = list(1, Some(vec![1024]), true);
        let e = limits::scoped(Some(1 << 20), None, None, || {
            assert!(l.reach(1 << 40).is_err());
            limits::take_tripped("op `w` (list_write)").expect("a memory trip")
        });
        assert_eq!(e.kind(), crate::ErrorKind::MemoryPressure, "{e}");
        // Within the limit it grows.
        limits::scoped(Some(1 << 20), None, None, || l.reach(9)).unwrap();
        assert_eq!(l.elems.len(), 10);
    }

    #[test]
    fn list_indices_and_shapes_are_checked() {
        let v = Tensor::ones((2, 3), CDType::F32, &Device::Cpu).unwrap();
        let mut fixed = list(2, Some(vec![2, 3]), false);
        assert!(fixed.write(2, &v).unwrap_err().to_string().contains("fixed length 2"));
        assert!(fixed.write(-1, &v).is_err());
        let w = Tensor::ones(3, CDType::F32, &Device::Cpu).unwrap();
        assert!(fixed.write(0, &w).unwrap_err().to_string().contains("shape [3]"));
        fixed.write(1, &v).unwrap();
        assert!(fixed.read(2).is_err());
        // An unset element of known shape reads as zeros.
        assert_eq!(
            fixed.read(0).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
        assert_eq!(
            fixed.read(1).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
            6.0
        );
        // With a symbolic shape, the first write fixes it; before that an unset element is an error.
        let mut sym = list(2, None, true);
        assert!(sym.read(0).unwrap_err().to_string().contains("never written"));
        sym.write(1, &v).unwrap();
        assert_eq!(sym.read(0).unwrap().dims(), [2, 3]);
        assert!(sym.write(0, &w).is_err());
    }
}
