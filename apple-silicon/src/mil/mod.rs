//! An ML Program interpreter on candle-core: runs the program inside an
//! `.mlpackage` on any CPU.
//!
//! [`Plan::build`] turns the program into an execution plan once: ops in
//! order, arguments resolved to value slots, constants and `constexpr_*` ops
//! materialised as candle tensors, parameters (strides, axes, modes) read
//! into each op's kernel, and ops whose inputs are all constant folded away.
//! [`Plan::run`] then does no string lookups, no parsing and no weight
//! conversion: it walks the steps, calling each kernel on its slots, and frees
//! every intermediate after its last use. `cond` and `while_loop` run their
//! nested blocks as lists of steps over the same slots, and lists are
//! run-time values beside tensors (see the `block` module).
//!
//! Stateful programs (iOS18 `read_state` / `write_state`) run with
//! [`Plan::run_with_state`] and a caller-owned map of their states
//! (`ops/state.rs`).
//!
//! An op type the interpreter does not know is an [`Error::Unsupported`]
//! naming the op type and its name in the program, raised by `build`, never
//! at run time.
//!
//! Hostile programs: every size the program gives (constant shapes,
//! `constexpr_*` output shapes, `tile` reps, pad amounts) is checked against
//! a memory budget before it is allocated ([`limits`]), so a 2 KB package
//! cannot abort its host; building and running are panic barriers (a panic
//! becomes [`Error::Internal`], and is not printed: see [`quiet_panics`]);
//! and a run stops at the next op once its [`CancelFlag`] is set.

mod block;
mod constexpr;
#[cfg(target_arch = "x86_64")]
mod conv_direct;
mod conv_gemm;
mod depthwise;
mod fuse;
mod gemm;
mod gemv;
pub mod limits;
mod lower;
mod marshal;
mod ops;
mod par_elementwise;
mod profile;
mod rows;
#[cfg(test)]
mod test_support;
mod transpose;
pub mod value;
mod vmath;
mod weights;
pub(crate) mod workers;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use coreml_proto::proto::mil_spec::{self, argument::binding::Binding, DataType, Operation};

use crate::error::{Error, Result};
use crate::mlpackage::MlPackage;
use crate::tensor::{DType, Tensor, TensorMap};
use block::{BlockBuilder, RVal, Step};
pub use limits::CancelFlag;
pub use lower::Lowered;
pub use marshal::PlanInputs;
use marshal::RunInputs;
use ops::state::StateSlot;
pub use profile::OpTime;
use value::{Decoded, Decoder, HostData};
use workers::barrier;
pub use workers::quiet_panics;

/// How fp16 values of a program are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloatPolicy {
    /// As the program says: fp16 values are candle f16 tensors.
    Native,
    /// Every fp16 value is computed in f32 (more accurate; faster on CPUs
    /// without f16 arithmetic). Outputs keep their declared dtype.
    Upcast,
}

/// A kernel: the op's computation with its parameters baked in, called with
/// the op's tensor operands in order.
pub(crate) type Kernel = Box<dyn Fn(&[&CTensor]) -> candle_core::Result<Vec<CTensor>> + Send + Sync>;

/// A value during planning: a constant, or a slot filled at run time.
#[derive(Clone)]
pub(crate) enum Val {
    Const(Arc<ConstVal>),
    Slot(usize),
}

/// A constant: its candle tensor (none for strings) and, for small values,
/// its host data (parameters are read from it). A weight kept in its stored
/// form (`packed`: f16 or compressed, see `weights`) has a dense tensor only
/// once an op other than the weight readers asks for it.
pub(crate) struct ConstVal {
    tensor: OnceLock<Option<CTensor>>,
    pub host: Option<Decoded>,
    pub packed: Option<Arc<weights::Weights>>,
}

impl ConstVal {
    /// A constant with its tensor (none for strings) and host copy.
    pub(crate) fn new(tensor: Option<CTensor>, host: Option<Decoded>) -> ConstVal {
        ConstVal {
            tensor: OnceLock::from(tensor),
            host,
            packed: None,
        }
    }

    /// A weight kept in its stored form.
    pub(crate) fn packed(w: weights::Weights) -> ConstVal {
        ConstVal {
            tensor: OnceLock::new(),
            host: None,
            packed: Some(Arc::new(w)),
        }
    }

    /// The constant's tensor; for a packed weight, its dense f32 form, built
    /// on the first call and kept (costs 4 bytes an element from then on).
    /// `None` for strings, or a packed weight that cannot be expanded.
    pub(crate) fn tensor(&self) -> Option<&CTensor> {
        self.tensor
            .get_or_init(|| self.packed.as_ref().and_then(|w| w.to_tensor().ok()))
            .as_ref()
    }

    /// Whether the constant is a tensor (without expanding a packed weight).
    pub(crate) fn is_tensor(&self) -> bool {
        self.packed.is_some() || self.tensor.get().is_some_and(|t| t.is_some())
    }

    /// Bytes the constant holds now: its stored form, plus its dense tensor
    /// once built.
    pub(crate) fn held_bytes(&self) -> usize {
        let dense = self
            .tensor
            .get()
            .and_then(|t| t.as_ref())
            .map_or(0, |t| t.elem_count() * t.dtype().size_in_bytes());
        dense + self.packed.as_ref().map_or(0, |w| w.bytes())
    }

    /// The tensor a lowered program stores: a packed weight in its
    /// declared dtype (f16 stays f16), built without being kept.
    fn lowered_tensor(&self) -> Option<CTensor> {
        match &self.packed {
            Some(w) => w.to_stored_tensor().ok(),
            None => self.tensor().cloned(),
        }
    }
}

/// Constants up to this many elements keep a host copy for parameter reads.
const HOST_COPY_LIMIT: usize = 4096;

struct PlanInput {
    name: String,
    slot: usize,
}

struct PlanOutput {
    name: String,
    val: Val,
    dtype: DType,
}

/// An executable ML Program. Immutable after build: `run` may be called from
/// many threads at once.
pub struct Plan {
    inputs: Vec<PlanInput>,
    /// The program's states (ops/state.rs); empty for a stateless program.
    states: Vec<StateSlot>,
    outputs: Vec<PlanOutput>,
    steps: Vec<Step>,
    n_slots: usize,
    policy: FloatPolicy,
    folded: usize,
    const_bytes: usize,
    /// Largest tensor (bytes) a kernel may allocate from program sizes at
    /// run time: the memory budget the plan was built under.
    run_limit: u64,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Plan({} steps, {} folded, {} const bytes, {:?})",
            self.steps.len(),
            self.folded,
            self.const_bytes,
            self.policy
        )
    }
}

/// Whether the interpreter implements `op_type`.
pub fn is_supported(op_type: &str) -> bool {
    matches!(op_type, "const" | "cond" | "while_loop")
        || constexpr::is_constexpr(op_type)
        || ops::builder(op_type).is_some()
        || ops::list_builder(op_type).is_some()
}

/// Op types of `pkg`'s main function that the interpreter does not implement.
pub fn unsupported_ops(pkg: &MlPackage) -> Vec<String> {
    pkg.op_histogram().into_keys().filter(|t| !is_supported(t)).collect()
}

/// The op's name in the program (its `name` attribute, else its first output).
pub(crate) fn op_name(op: &Operation) -> String {
    if let Some(v) = op.attributes.get("name") {
        if let Some(mil_spec::value::Value::ImmediateValue(iv)) = &v.value {
            if let Some(mil_spec::value::immediate_value::Value::Tensor(t)) = &iv.value {
                if let Some(mil_spec::tensor_value::Value::Strings(s)) = &t.value {
                    if let Some(n) = s.values.first() {
                        return n.clone();
                    }
                }
            }
        }
    }
    op.outputs
        .first()
        .map(|o| o.name.clone())
        .unwrap_or_else(|| "<unnamed>".into())
}

/// The candle dtype a MIL dtype is computed in under `policy`.
pub(crate) fn compute_dtype(mil: i32, policy: FloatPolicy) -> Option<CDType> {
    Some(match DataType::try_from(mil).ok()? {
        DataType::Float32 | DataType::Float64 | DataType::Bfloat16 => CDType::F32,
        DataType::Float16 => match policy {
            FloatPolicy::Native => CDType::F16,
            FloatPolicy::Upcast => CDType::F32,
        },
        DataType::Bool => CDType::U8,
        DataType::String => return None,
        _ => CDType::I64,
    })
}

/// The candle dtype one of our host dtypes is computed in under `policy`.
fn compute_dtype_of(d: DType, policy: FloatPolicy) -> CDType {
    match d {
        DType::F32 | DType::F64 => CDType::F32,
        DType::F16 => match policy {
            FloatPolicy::Native => CDType::F16,
            FloatPolicy::Upcast => CDType::F32,
        },
        DType::I32 | DType::I64 | DType::I8 => CDType::I64,
        DType::U8 => CDType::U8,
    }
}

/// Makes a candle tensor of a decoded constant under `policy`.
pub(crate) fn const_tensor(d: &Decoded, policy: FloatPolicy) -> candle_core::Result<Option<CTensor>> {
    let dev = &Device::Cpu;
    let shape = d.shape.as_slice();
    let t = match (&d.data, compute_dtype(d.dtype, policy)) {
        (HostData::Str(_), _) | (_, None) => return Ok(None),
        (HostData::F32(v), Some(dt)) => CTensor::from_slice(v, shape, dev)?.to_dtype(dt)?,
        (HostData::F16(v), Some(dt)) => CTensor::from_slice(v, shape, dev)?.to_dtype(dt)?,
        (HostData::F64(v), Some(dt)) => CTensor::from_slice(v, shape, dev)?.to_dtype(dt)?,
        (HostData::I64(v), Some(dt)) => CTensor::from_slice(v, shape, dev)?.to_dtype(dt)?,
        (HostData::Bool(v), Some(_)) => {
            let b: Vec<u8> = v.iter().map(|&x| x as u8).collect();
            CTensor::from_slice(&b, shape, dev)?
        }
    };
    Ok(Some(t))
}

fn candle_err(name: &str, op_type: &str, e: impl std::fmt::Display) -> Error {
    // A limit check inside the kernel left its typed error (memory or
    // cancellation): report that, naming the op.
    if let Some(t) = limits::take_tripped(&format!("op `{name}` ({op_type})")) {
        return t;
    }
    Error::Internal {
        message: format!("op `{name}` ({op_type}) failed: {e}"),
    }
}

/// What a builder sees of one op: its arguments, resolved.
pub(crate) struct OpCtx<'b, 'p> {
    pub op: &'b Operation,
    pub name: String,
    env: &'b block::Env<'b>,
    /// Slots that hold lists (declared list-typed).
    lists: &'b HashSet<usize>,
    dec: &'b mut Decoder<'p>,
    pub policy: FloatPolicy,
    operands: Vec<Val>,
    /// Names of program constants this op reads (kept in a lowered program).
    used: Vec<String>,
    /// Set by a builder whose kernel can take a fused activation (`fuse.rs`).
    pub offer: Option<fuse::Offer>,
    /// Set by a pointwise conv's builder, and by a depthwise conv's: the
    /// block builder may run the two as one step (`depthwise::expand`).
    pub pointwise: Option<ops::Pointwise>,
    pub depthwise: Option<ops::DepthwiseSpec>,
    /// Constants this op's builder has replaced for every later reader
    /// (applied by the block builder once the op is built).
    pub(crate) rebinds: Vec<(String, ConstVal)>,
}

impl<'b, 'p> OpCtx<'b, 'p> {
    /// The context of `op` (named `name`) before any operand is read.
    pub(crate) fn new(
        op: &'b Operation,
        name: String,
        env: &'b block::Env<'b>,
        lists: &'b HashSet<usize>,
        dec: &'b mut Decoder<'p>,
        policy: FloatPolicy,
    ) -> Self {
        OpCtx {
            op,
            name,
            env,
            lists,
            dec,
            policy,
            operands: Vec::new(),
            used: Vec::new(),
            offer: None,
            pointwise: None,
            depthwise: None,
            rebinds: Vec::new(),
        }
    }
}

impl<'b, 'p> OpCtx<'b, 'p> {
    fn lookup(&mut self, arg: &str, n: &str) -> Result<Val> {
        match self.env.get(n) {
            Some(v) => {
                if matches!(v, Val::Const(_)) {
                    self.used.push(n.to_string());
                }
                Ok(v.clone())
            }
            None => Err(self.bad(format!(
                "argument `{arg}` refers to `{n}`, which is not defined before it"
            ))),
        }
    }

    fn binding(&self, arg: &str) -> Option<&'b Binding> {
        let a = self.op.inputs.get(arg)?;
        a.arguments.first()?.binding.as_ref()
    }

    fn bad(&self, msg: String) -> Error {
        Error::Compile {
            model: format!("op `{}` ({})", self.name, self.op.r#type),
            message: msg,
        }
    }

    fn resolve(&mut self, arg: &str) -> Result<Option<Val>> {
        match self.binding(arg) {
            Some(Binding::Name(n)) => self.lookup(arg, n).map(Some),
            Some(Binding::Value(v)) => Ok(Some(self.decode_val(v, arg)?)),
            None => match self.op.attributes.get(arg) {
                // constexpr ops keep their parameters as attributes.
                Some(v) => Ok(Some(self.decode_val(v, arg)?)),
                None => Ok(None),
            },
        }
    }

    fn decode_val(&mut self, v: &mil_spec::Value, arg: &str) -> Result<Val> {
        let what = format!("op `{}` argument `{arg}`", self.name);
        let d = self.dec.decode(v, &what)?;
        let tensor = const_tensor(&d, self.policy).map_err(|e| self.bad(e.to_string()))?;
        Ok(Val::Const(Arc::new(ConstVal::new(tensor, Some(d)))))
    }

    /// A tensor operand; returns its index among the kernel's arguments.
    pub fn tensor(&mut self, arg: &str) -> Result<usize> {
        self.opt_tensor(arg)?
            .ok_or_else(|| self.bad(format!("required argument `{arg}` is missing")))
    }

    /// An optional tensor operand.
    pub fn opt_tensor(&mut self, arg: &str) -> Result<Option<usize>> {
        let Some(v) = self.resolve(arg)? else { return Ok(None) };
        if let Val::Const(c) = &v {
            if !c.is_tensor() {
                return Err(self.bad(format!("argument `{arg}` is a string where a tensor is expected")));
            }
        }
        self.no_list(arg, &v)?;
        self.operands.push(v);
        Ok(Some(self.operands.len() - 1))
    }

    fn no_list(&self, arg: &str, v: &Val) -> Result<()> {
        match v {
            Val::Slot(s) if self.lists.contains(s) => {
                Err(self.bad(format!("argument `{arg}` is a list where a tensor is expected")))
            }
            _ => Ok(()),
        }
    }

    /// A list operand (list ops' `ls`); returns its index among the operands.
    pub fn list(&mut self, arg: &str) -> Result<usize> {
        match self.resolve(arg)? {
            Some(Val::Slot(s)) if self.lists.contains(&s) => {
                self.operands.push(Val::Slot(s));
                Ok(self.operands.len() - 1)
            }
            Some(_) => Err(self.bad(format!("argument `{arg}` is not a list"))),
            None => Err(self.bad(format!("required argument `{arg}` is missing"))),
        }
    }

    /// A variadic tensor argument (e.g. `concat`'s `values`).
    pub fn tensors(&mut self, arg: &str) -> Result<Vec<usize>> {
        let idx = self.values(arg)?;
        for &i in &idx {
            self.no_list(arg, &self.operands[i])?;
        }
        Ok(idx)
    }

    /// A variadic argument of tensors or lists (`while_loop`'s `loop_vars`).
    pub fn values(&mut self, arg: &str) -> Result<Vec<usize>> {
        let Some(a) = self.op.inputs.get(arg) else {
            return Err(self.bad(format!("required argument `{arg}` is missing")));
        };
        let mut idx = Vec::new();
        for b in &a.arguments {
            let v = match &b.binding {
                Some(Binding::Name(n)) => self.lookup(arg, n)?,
                Some(Binding::Value(v)) => self.decode_val(v, arg)?,
                None => return Err(self.bad(format!("argument `{arg}` has an empty binding"))),
            };
            self.operands.push(v);
            idx.push(self.operands.len() - 1);
        }
        Ok(idx)
    }

    /// A variadic argument of constants (e.g. `make_list`'s `elem_shape`), each
    /// with its host value; empty when absent.
    pub fn consts(&mut self, arg: &str) -> Result<Vec<Decoded>> {
        let Some(a) = self.op.inputs.get(arg) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for b in &a.arguments {
            let v = match &b.binding {
                Some(Binding::Name(n)) => self.lookup(arg, n)?,
                Some(Binding::Value(v)) => self.decode_val(v, arg)?,
                None => return Err(self.bad(format!("argument `{arg}` has an empty binding"))),
            };
            match v {
                Val::Const(c) => match &c.host {
                    Some(d) => out.push(d.clone()),
                    None => return Err(self.bad(format!("argument `{arg}` is too large to be a parameter"))),
                },
                Val::Slot(_) => {
                    return Err(self.unsupported(format!(
                        "argument `{arg}` computed at run time (the interpreter needs it constant)"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// A constant argument's host value (`None` when absent).
    pub fn opt_const(&mut self, arg: &str) -> Result<Option<Decoded>> {
        match self.resolve(arg)? {
            None => Ok(None),
            Some(Val::Slot(_)) => Err(Error::unsupported(format!(
                "op `{}` ({}): argument `{arg}` computed at run time (the interpreter needs it constant)",
                self.name, self.op.r#type
            ))),
            Some(Val::Const(c)) => match &c.host {
                Some(d) => Ok(Some(d.clone())),
                None => Err(self.bad(format!("argument `{arg}` is too large to be a parameter"))),
            },
        }
    }

    /// A constant argument's candle tensor (for weights folded into a kernel).
    pub fn const_tensor(&mut self, arg: &str) -> Result<Option<CTensor>> {
        match self.resolve(arg)? {
            None => Ok(None),
            Some(Val::Slot(_)) => Err(Error::unsupported(format!(
                "op `{}` ({}): argument `{arg}` computed at run time (the interpreter needs it constant)",
                self.name, self.op.r#type
            ))),
            Some(Val::Const(c)) => Ok(c.tensor().cloned()),
        }
    }

    /// A constant weight argument in its stored form (dense weights wrapped
    /// without a copy); the dense tensor of an f16 or compressed weight is
    /// not built. `None` when absent or a scalar.
    pub fn const_weights(&mut self, arg: &str) -> Result<Option<Arc<weights::Weights>>> {
        match self.resolve(arg)? {
            None => Ok(None),
            Some(Val::Slot(_)) => Err(Error::unsupported(format!(
                "op `{}` ({}): argument `{arg}` computed at run time (the interpreter needs it constant)",
                self.name, self.op.r#type
            ))),
            Some(Val::Const(c)) if c.packed.is_some() => Ok(c.packed.clone()),
            // Not packed: `tensor()` builds nothing.
            Some(Val::Const(c)) => match c.tensor() {
                // f16 (the Native policy) stays f16: a copy of 2 bytes an element.
                Some(t) if t.rank() >= 1 && t.dtype() == CDType::F16 => t
                    .flatten_all()
                    .and_then(|f| f.to_vec1())
                    .and_then(|v| weights::Weights::new(t.dims().to_vec(), weights::Store::F16(v), true))
                    .map(|w| Some(Arc::new(w)))
                    .map_err(|e| self.error(e.to_string())),
                Some(t) if t.rank() >= 1 => weights::Weights::dense(t.clone())
                    .map(|w| Some(Arc::new(w)))
                    .map_err(|e| self.error(e.to_string())),
                _ => Ok(None),
            },
        }
    }

    /// A dense f32 constant of rank 2 bound by name to `arg` (neither packed
    /// nor built from a packed weight; nothing is copied), with whether
    /// [`OpCtx::rebind_const`] can replace it: it is defined in this block's
    /// own scope and nothing but the scope holds it, so that replacing it
    /// frees the original. `None` for anything else.
    pub fn dense_f32_matrix(&mut self, arg: &str) -> Result<Option<(CTensor, bool)>> {
        let Some(Binding::Name(n)) = self.binding(arg).cloned() else {
            return Ok(None);
        };
        let Val::Const(c) = self.lookup(arg, &n)? else {
            return Ok(None);
        };
        if c.packed.is_some() {
            return Ok(None);
        }
        let t = match c.tensor() {
            Some(t) if t.dtype() == CDType::F32 && t.rank() == 2 => t.clone(),
            _ => return Ok(None),
        };
        drop(c);
        let sole = matches!(self.env.map.get(&n), Some(Val::Const(c)) if Arc::strong_count(c) == 1);
        Ok(Some((t, sole)))
    }

    /// Replaces the constant bound by name to `arg`, for every op after
    /// this one, with `t` (the same values in another layout); its host
    /// copy is kept. The old constant is dropped when the op is built.
    pub fn rebind_const(&mut self, arg: &str, t: CTensor) {
        let Some(Binding::Name(n)) = self.binding(arg).cloned() else {
            return;
        };
        if let Some(Val::Const(c)) = self.env.map.get(&n) {
            let host = c.host.clone();
            self.rebinds.push((n, ConstVal::new(Some(t), host)));
        }
    }

    /// An attribute (iOS16 constexpr ops keep their operands there) stored
    /// as int8 / uint8 in a weight file, as raw bytes with its shape and
    /// signedness; `None` for anything else (see `Decoder::decode_raw_bytes`).
    pub fn raw_bytes_attr(&mut self, arg: &str) -> Result<Option<value::RawBytes>> {
        let Some(v) = self.op.attributes.get(arg) else {
            return Ok(None);
        };
        let what = format!("op `{}` argument `{arg}`", self.name);
        self.dec.decode_raw_bytes(v, &what)
    }

    /// The rank of `arg` when it names a packed constant (nothing is read).
    pub fn packed_weight_rank(&self, arg: &str) -> Option<usize> {
        let Binding::Name(n) = self.binding(arg)? else {
            return None;
        };
        match self.env.get(n)? {
            Val::Const(c) => c.packed.as_ref().map(|w| w.shape().len()),
            Val::Slot(_) => None,
        }
    }

    /// The stored form of a packed (f16 or compressed) constant weight
    /// named by `arg`, without reading it as an operand; `None` for
    /// anything else.
    pub fn packed_const(&mut self, arg: &str) -> Option<Arc<weights::Weights>> {
        let Binding::Name(n) = self.binding(arg)? else {
            return None;
        };
        match self.env.get(n)? {
            Val::Const(c) => {
                let w = c.packed.clone()?;
                self.used.push(n.clone());
                Some(w)
            }
            Val::Slot(_) => None,
        }
    }

    /// Whether the argument is a run-time value.
    pub fn is_runtime(&mut self, arg: &str) -> Result<bool> {
        Ok(matches!(self.resolve(arg)?, Some(Val::Slot(_))))
    }

    fn numbers(&mut self, arg: &str) -> Result<Option<Vec<f64>>> {
        match self.opt_const(arg)? {
            None => Ok(None),
            Some(d) => d
                .data
                .to_f64()
                .map(Some)
                .ok_or_else(|| self.bad(format!("argument `{arg}` is a string where a number is expected"))),
        }
    }

    /// Optional integer list parameter.
    pub fn opt_ints(&mut self, arg: &str) -> Result<Option<Vec<i64>>> {
        Ok(self.numbers(arg)?.map(|v| v.into_iter().map(|x| x as i64).collect()))
    }

    /// Required integer list parameter.
    pub fn ints(&mut self, arg: &str) -> Result<Vec<i64>> {
        self.opt_ints(arg)?
            .ok_or_else(|| self.bad(format!("required argument `{arg}` is missing")))
    }

    /// Optional scalar integer parameter.
    pub fn opt_int(&mut self, arg: &str) -> Result<Option<i64>> {
        Ok(self.opt_ints(arg)?.and_then(|v| v.first().copied()))
    }

    /// Optional scalar float parameter.
    pub fn opt_float(&mut self, arg: &str) -> Result<Option<f64>> {
        Ok(self.numbers(arg)?.and_then(|v| v.first().copied()))
    }

    /// Optional bool parameter.
    pub fn opt_bool(&mut self, arg: &str) -> Result<Option<bool>> {
        Ok(self.numbers(arg)?.and_then(|v| v.first().map(|&x| x != 0.0)))
    }

    /// Optional string parameter.
    pub fn opt_string(&mut self, arg: &str) -> Result<Option<String>> {
        match self.opt_const(arg)? {
            None => Ok(None),
            Some(Decoded {
                data: HostData::Str(s), ..
            }) => Ok(s.into_iter().next()),
            Some(_) => Err(self.bad(format!("argument `{arg}` is not a string"))),
        }
    }

    /// An error naming this op.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        self.bad(msg.into())
    }

    /// An `InvalidArtifact` error naming this op (a malformed value in the package).
    pub fn invalid(&self, msg: impl Into<String>) -> Error {
        Error::invalid_artifact(
            self.dec.package_path(),
            format!("op `{}` ({}): {}", self.name, self.op.r#type, msg.into()),
        )
    }

    /// An `Unsupported` error naming this op.
    pub fn unsupported(&self, what: impl std::fmt::Display) -> Error {
        Error::unsupported(format!("op `{}` ({}): {what}", self.name, self.op.r#type))
    }
}

impl Plan {
    /// Builds the execution plan of `pkg`'s main function under the
    /// default memory budget ([`limits::default_memory_budget`] of the
    /// package's size). Costs one pass over the program plus reading and
    /// converting every weight once.
    pub fn build(pkg: &MlPackage, policy: FloatPolicy) -> Result<Plan> {
        Self::build_budgeted(pkg, policy, None)
    }

    /// Like [`Plan::build`] with an explicit memory `budget` in bytes (`None`:
    /// the default). The budget bounds the constants the plan holds (all of
    /// them together) and any one tensor a kernel allocates from the
    /// program's sizes, at build time (folding) and at every run; crossing it
    /// is [`Error::MemoryPressure`] naming the op and the size.
    pub fn build_budgeted(pkg: &MlPackage, policy: FloatPolicy, budget: Option<u64>) -> Result<Plan> {
        Self::build_guarded(pkg, policy, budget, false).map(|(plan, _)| plan)
    }

    /// Like [`Plan::build`], also returning the program lowered to what the
    /// plan runs (see [`Lowered`]), for caching.
    pub fn build_lowered(pkg: &MlPackage, policy: FloatPolicy) -> Result<(Plan, Lowered)> {
        Self::build_lowered_budgeted(pkg, policy, None)
    }

    /// [`Plan::build_lowered`] under a memory budget (see
    /// [`Plan::build_budgeted`]). A panic while building is caught and
    /// reported as [`Error::Internal`] naming the package.
    pub fn build_lowered_budgeted(
        pkg: &MlPackage,
        policy: FloatPolicy,
        budget: Option<u64>,
    ) -> Result<(Plan, Lowered)> {
        Self::build_guarded(pkg, policy, budget, true)
    }

    /// A build inside the panic barrier and the limits; `lower`: also
    /// collect the lowered program's constants.
    fn build_guarded(
        pkg: &MlPackage,
        policy: FloatPolicy,
        budget: Option<u64>,
        lower: bool,
    ) -> Result<(Plan, Lowered)> {
        let budget = budget.unwrap_or_else(|| limits::default_memory_budget(package_bytes(pkg.path())));
        let r = barrier(|| {
            limits::scoped(Some(budget), None, None, || {
                Self::build_inner(pkg, policy, budget, lower)
            })
        });
        r.unwrap_or_else(|msg| {
            Err(Error::internal(format!(
                "building the plan of {} panicked: {msg}",
                pkg.path().display()
            )))
        })
    }

    fn build_inner(pkg: &MlPackage, policy: FloatPolicy, budget: u64, lower: bool) -> Result<(Plan, Lowered)> {
        let main = pkg.main_function();
        let block = pkg.main_block()?;
        let mut unsupported = Vec::new();
        unsupported_in(block, &mut unsupported);
        if !unsupported.is_empty() {
            return Err(Error::unsupported(format!(
                "ML Program ops not implemented by the Candle interpreter: {}",
                unsupported.join(", ")
            )));
        }
        let mut bb = BlockBuilder::new(pkg, policy, budget);
        bb.block_outputs = block.outputs.iter().cloned().collect();
        let mut env = block::Env::top();
        let mut inputs = Vec::new();
        for inp in &main.inputs {
            let slot = bb.slot();
            env.insert(inp.name.clone(), Val::Slot(slot));
            // State-typed inputs (checked against the description at open) come from the state map.
            if let Some(st) = pkg.io_schema().state(&inp.name) {
                bb.states.push(StateSlot {
                    name: inp.name.clone(),
                    slot,
                    dtype: st.dtype,
                    shape: st.shape.clone(),
                });
            } else {
                inputs.push(PlanInput {
                    name: inp.name.clone(),
                    slot,
                });
            }
        }
        let mut steps: Vec<Step> = Vec::new();
        bb.build_ops(&block.operations, &mut env, &mut steps, true)?;
        let mut used_consts = std::mem::take(&mut bb.used);
        let schema = pkg.io_schema();
        let mut outputs = Vec::new();
        for name in &block.outputs {
            let val = env.get(name).cloned().ok_or_else(|| {
                Error::invalid_artifact(pkg.path(), format!("block output `{name}` is never defined"))
            })?;
            if matches!(val, Val::Slot(s) if bb.is_list(s)) {
                return Err(Error::unsupported(format!(
                    "program output `{name}` is a list (outputs are tensors)"
                )));
            }
            let dtype = schema.output(name).map(|s| s.dtype).unwrap_or(DType::F32);
            if matches!(val, Val::Const(_)) {
                used_consts.push(name.clone());
            }
            outputs.push(PlanOutput {
                name: name.clone(),
                val,
                dtype,
            });
        }
        // Liveness: free each value after its last reader (values read
        // inside nested blocks count as read by their cond/while step);
        // never a state.
        let keep: HashSet<usize> = outputs
            .iter()
            .filter_map(|o| match o.val {
                Val::Slot(s) => Some(s),
                _ => None,
            })
            .chain(bb.states.iter().map(|s| s.slot))
            .collect();
        let owned: HashSet<usize> = (0..bb.n_slots).collect();
        block::liveness(&mut steps, &owned, &keep);
        let mut seen = HashSet::new();
        let mut const_bytes = 0usize;
        for s in block::all_steps(&steps) {
            for v in &s.operands {
                if let Val::Const(c) = v {
                    if seen.insert(Arc::as_ptr(c) as usize) {
                        const_bytes += c.held_bytes();
                    }
                }
            }
        }
        let mut seen_names = HashSet::new();
        let consts = used_consts
            .into_iter()
            // Only a lowered build needs them (packed f16 weights are expanded for it).
            .filter(|_| lower)
            .filter(|n| !bb.kept_names.contains(n) && seen_names.insert(n.clone()))
            .filter_map(|n| match env.map.get(&n) {
                // A compressed weight stays compressed (written back as its constexpr op).
                Some(Val::Const(c)) if c.packed.as_ref().is_some_and(|w| w.is_compressed()) => {
                    let w = c.packed.clone().expect("checked");
                    Some((n, lower::LoweredConst::Packed(w)))
                }
                Some(Val::Const(c)) => match (c.is_tensor().then(|| c.lowered_tensor()).flatten(), &c.host) {
                    (Some(t), _) => Some((n, lower::LoweredConst::Tensor(t))),
                    (
                        None,
                        Some(Decoded {
                            data: HostData::Str(v),
                            shape,
                            ..
                        }),
                    ) => Some((n, lower::LoweredConst::Strings(v.clone(), shape.clone()))),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let plan = Plan {
            inputs,
            states: std::mem::take(&mut bb.states),
            outputs,
            steps,
            n_slots: bb.n_slots,
            policy,
            folded: bb.folded,
            const_bytes,
            run_limit: budget,
        };
        let kept_ops = std::mem::take(&mut bb.kept_ops);
        Ok((plan, Lowered { kept_ops, consts }))
    }

    /// The float policy the plan was built with.
    pub fn policy(&self) -> FloatPolicy {
        self.policy
    }

    /// Number of run-time steps (ops left after folding constants),
    /// counting those inside `cond` / `while_loop` blocks once each.
    pub fn step_count(&self) -> usize {
        block::all_steps(&self.steps).len()
    }

    /// Number of ops folded into constants at build time.
    pub fn folded_count(&self) -> usize {
        self.folded
    }

    /// Bytes of constant tensors the run-time steps read.
    pub fn const_bytes(&self) -> usize {
        self.const_bytes
    }

    /// Run-time step counts by op type (steps inside blocks included); a
    /// step with an activation fused into it counts as `producer+activation`
    /// (`conv+relu6`).
    pub fn step_histogram(&self) -> BTreeMap<String, usize> {
        let mut h = BTreeMap::new();
        for s in block::all_steps(&self.steps) {
            *h.entry(s.op_type.clone()).or_default() += 1;
        }
        h
    }

    /// The memory limit (bytes) of any one tensor a kernel allocates from
    /// the program's sizes at run time: the budget the plan was built under.
    pub fn run_limit(&self) -> u64 {
        self.run_limit
    }

    /// Runs the program. `inputs` must already match the model's schema
    /// (see [`crate::IoSchema::validate_inputs`]); outputs come back in their
    /// declared dtypes. A panic inside a kernel is caught and reported as
    /// [`Error::Internal`]; a kernel asking for more than
    /// [`Plan::run_limit`] is [`Error::MemoryPressure`].
    pub fn run(&self, inputs: &TensorMap) -> Result<TensorMap> {
        self.run_cancellable(inputs, None)
    }

    /// Like [`Plan::run`], stopping at the next op (or the next coarse check
    /// inside a long kernel) once `cancel` is set, with [`Error::Timeout`]
    /// naming the op it stopped at. Costs one atomic load per op.
    pub fn run_cancellable(&self, inputs: &TensorMap, cancel: Option<&CancelFlag>) -> Result<TensorMap> {
        self.run_timed(inputs, cancel).map(|(out, _)| out)
    }

    /// Like [`Plan::run_cancellable`], also returning how long the run spent
    /// converting inputs (`marshal_in`), in the ops (`predict`) and
    /// converting outputs (`marshal_out`); `total` is left to the caller,
    /// who sees the whole call. Costs a few clock reads.
    pub fn run_timed(
        &self,
        inputs: &TensorMap,
        cancel: Option<&CancelFlag>,
    ) -> Result<(TensorMap, crate::telemetry::StageTimings)> {
        self.run_guarded(RunInputs::Host(inputs), None, cancel)
            .map(|r| (r.outputs, r.timings))
    }

    /// Runs the plan `runs` times on `inputs` and returns, for every step
    /// (an op, or ops fused into one), how often it ran and the time it
    /// took, in the order the steps first ran: which ops a network spends
    /// its time in. Costs the runs plus two clock reads per step; errors as
    /// [`Plan::run`] does (a profile of a failed run is not returned).
    pub fn profile(&self, inputs: &TensorMap, runs: usize) -> Result<Vec<OpTime>> {
        let ran = barrier(|| {
            profile::record(|| -> Result<()> {
                for _ in 0..runs {
                    limits::scoped(Some(self.run_limit), None, Some(Instant::now()), || {
                        self.run_inner(RunInputs::Host(inputs), None)
                    })?;
                }
                Ok(())
            })
        });
        match ran {
            Ok((r, steps)) => r.map(|()| steps),
            Err(msg) => Err(panicked(&msg)),
        }
    }

    /// A run inside the panic barrier and the limits.
    fn run_guarded(
        &self,
        inputs: RunInputs<'_>,
        state: Option<&TensorMap>,
        cancel: Option<&CancelFlag>,
    ) -> Result<Ran> {
        self.run_guarded_then(inputs, state, cancel, |ran| ran)
            .unwrap_or_else(|msg| Err(panicked(&msg)))
    }

    /// [`Plan::run_guarded`], the run's result handed to `then` on the pool
    /// thread that finished it (outside the limits' scope); `Err` is the
    /// message of a panic the barrier caught.
    fn run_guarded_then<R: Send>(
        &self,
        inputs: RunInputs<'_>,
        state: Option<&TensorMap>,
        cancel: Option<&CancelFlag>,
        then: impl FnOnce(Result<Ran>) -> R + Send,
    ) -> std::result::Result<R, String> {
        let started = Instant::now();
        barrier(|| {
            then(limits::scoped(Some(self.run_limit), cancel, Some(started), || {
                self.run_inner(inputs, state)
            }))
        })
    }

    fn run_inner(&self, inputs: RunInputs<'_>, state: Option<&TensorMap>) -> Result<Ran> {
        let mut timings = crate::telemetry::StageTimings::default();
        let t_in = Instant::now();
        let mut slots: Vec<Option<RVal>> = vec![None; self.n_slots];
        ops::state::load(&self.states, state, self.policy, &mut slots)?;
        let ahead = inputs.converted_before();
        let inputs = inputs.into_prepared(self)?;
        for (slot, t) in inputs.tensors {
            slots[slot] = Some(RVal::T(t));
        }
        let t_ops = Instant::now();
        // Inputs converted before the run (on the caller's thread) count too.
        timings.marshal_in = Some(t_ops - t_in + ahead);
        let warm = workers::Warm::start();
        block::run_steps(&self.steps, &mut slots, &warm)?;
        drop(warm);
        let t_out = Instant::now();
        timings.predict = Some(t_out - t_ops);
        let mut out = TensorMap::new();
        for o in &self.outputs {
            let t = match &o.val {
                Val::Const(c) => c.tensor(),
                Val::Slot(s) => match &slots[*s] {
                    Some(RVal::T(t)) => Some(t),
                    _ => None,
                },
            }
            .ok_or_else(|| Error::internal(format!("output `{}` was never computed as a tensor", o.name)))?;
            out.insert(
                o.name.clone(),
                from_candle(t, o.dtype).map_err(|e| candle_err(&o.name, "output", e))?,
            );
        }
        let states = match state {
            Some(_) => ops::state::store(&self.states, &slots)?,
            None => TensorMap::new(),
        };
        timings.marshal_out = Some(t_out.elapsed());
        Ok(Ran {
            outputs: out,
            states,
            timings,
        })
    }
}

/// What one run produced: outputs, the states' final values (empty without
/// a state map) and the stage timings.
/// The error for a panic the barrier caught with message `msg`.
fn panicked(msg: &str) -> Error {
    Error::internal(format!("the interpreter panicked: {msg}"))
}

struct Ran {
    outputs: TensorMap,
    states: TensorMap,
    timings: crate::telemetry::StageTimings,
}

/// The unsupported op types of `block` and its nested blocks, as
/// "`type` (op `name`)".
fn unsupported_in(block: &mil_spec::Block, out: &mut Vec<String>) {
    for op in &block.operations {
        if !is_supported(&op.r#type) {
            out.push(format!("`{}` (op `{}`)", op.r#type, op_name(op)));
        }
        for b in &op.blocks {
            unsupported_in(b, out);
        }
    }
}

/// Bytes of the regular files under `root`, without following links (the
/// size the default memory budget is derived from). Stops at 16 levels.
fn package_bytes(root: &std::path::Path) -> u64 {
    fn walk(p: &std::path::Path, depth: usize) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
        if m.is_file() {
            return m.len();
        }
        if !m.is_dir() || depth == 0 {
            return 0;
        }
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| walk(&e.path(), depth - 1))
                    .fold(0u64, u64::saturating_add)
            })
            .unwrap_or(0)
    }
    walk(root, 16)
}

fn make_const(d: Decoded, policy: FloatPolicy, name: &str) -> Result<ConstVal> {
    if d.data.len() <= HOST_COPY_LIMIT {
        let tensor = const_tensor(&d, policy).map_err(|e| candle_err(name, "const", e))?;
        return Ok(ConstVal::new(tensor, Some(d)));
    }
    // Large fp16 constants computed in f32 stay f16 (weights::Weights): the
    // kernels that read weights convert a block at a time; any other
    // reader gets the f32 tensor, built when first asked for.
    if policy == FloatPolicy::Upcast && !d.shape.is_empty() {
        if let HostData::F16(_) = &d.data {
            let HostData::F16(v) = d.data else { unreachable!() };
            let w = weights::Weights::new(d.shape, weights::Store::F16(v), true)
                .map_err(|e| candle_err(name, "const", e))?;
            return Ok(ConstVal::packed(w));
        }
    }
    // Large constants (weights): move the decoded buffer into the tensor
    // instead of copying it; no host copy is kept.
    let target = compute_dtype(d.dtype, policy);
    let dev = &Device::Cpu;
    let shape = d.shape;
    let tensor = match (d.data, target) {
        (HostData::F32(v), Some(dt)) => CTensor::from_vec(v, shape, dev).and_then(|t| t.to_dtype(dt)),
        (HostData::F16(v), Some(dt)) => CTensor::from_vec(v, shape, dev).and_then(|t| t.to_dtype(dt)),
        (HostData::F64(v), Some(dt)) => CTensor::from_vec(v, shape, dev).and_then(|t| t.to_dtype(dt)),
        (HostData::I64(v), Some(dt)) => CTensor::from_vec(v, shape, dev).and_then(|t| t.to_dtype(dt)),
        (HostData::Bool(v), Some(_)) => {
            CTensor::from_vec(v.into_iter().map(|b| b as u8).collect::<Vec<u8>>(), shape, dev)
        }
        (HostData::Str(_), _) | (_, None) => return Ok(ConstVal::new(None, None)),
    }
    .map_err(|e| candle_err(name, "const", e))?;
    Ok(ConstVal::new(Some(tensor), None))
}

/// Host copy of a small folded tensor, so later ops can read it as a parameter.
fn small_host(t: &CTensor) -> Option<Decoded> {
    if t.elem_count() > HOST_COPY_LIMIT {
        return None;
    }
    let shape = t.dims().to_vec();
    let flat = t.flatten_all().ok()?;
    let (dtype, data) = match t.dtype() {
        CDType::F16 => (DataType::Float16, HostData::F16(flat.to_vec1().ok()?)),
        CDType::F32 => (DataType::Float32, HostData::F32(flat.to_vec1().ok()?)),
        CDType::U8 => (
            DataType::Bool,
            HostData::Bool(flat.to_vec1::<u8>().ok()?.into_iter().map(|x| x != 0).collect()),
        ),
        _ => (
            DataType::Int64,
            HostData::I64(flat.to_dtype(CDType::I64).ok()?.to_vec1().ok()?),
        ),
    };
    Some(Decoded {
        dtype: dtype as i32,
        shape,
        data,
    })
}

/// Converts a host tensor to the candle dtype it is computed in.
pub(crate) fn to_candle(t: &Tensor, policy: FloatPolicy) -> candle_core::Result<CTensor> {
    let dev = &Device::Cpu;
    let raw = match t.dtype() {
        DType::F32 => CTensor::from_raw_buffer(t.as_bytes(), CDType::F32, t.shape(), dev)?,
        DType::F16 => CTensor::from_raw_buffer(t.as_bytes(), CDType::F16, t.shape(), dev)?,
        DType::F64 => CTensor::from_raw_buffer(t.as_bytes(), CDType::F64, t.shape(), dev)?,
        DType::I32 => CTensor::from_raw_buffer(t.as_bytes(), CDType::I32, t.shape(), dev)?,
        DType::I64 => CTensor::from_raw_buffer(t.as_bytes(), CDType::I64, t.shape(), dev)?,
        DType::U8 => CTensor::from_raw_buffer(t.as_bytes(), CDType::U8, t.shape(), dev)?,
        DType::I8 => {
            let v: Vec<i64> = t.as_bytes().iter().map(|&b| b as i8 as i64).collect();
            CTensor::from_vec(v, t.shape(), dev)?
        }
    };
    raw.to_dtype(compute_dtype_of(t.dtype(), policy))
}

/// Converts a candle tensor to a host tensor of dtype `want`.
pub(crate) fn from_candle(t: &CTensor, want: DType) -> candle_core::Result<Tensor> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    let wrap = |r: crate::Result<Tensor>| r.map_err(|e| candle_core::Error::Msg(e.to_string()));
    match want {
        DType::F32 => wrap(Tensor::from_vec(shape, flat.to_dtype(CDType::F32)?.to_vec1::<f32>()?)),
        DType::F16 => wrap(Tensor::from_vec(
            shape,
            flat.to_dtype(CDType::F16)?.to_vec1::<half::f16>()?,
        )),
        DType::F64 => wrap(Tensor::from_vec(shape, flat.to_dtype(CDType::F64)?.to_vec1::<f64>()?)),
        DType::I32 => wrap(Tensor::from_vec(shape, flat.to_dtype(CDType::I32)?.to_vec1::<i32>()?)),
        DType::I64 => wrap(Tensor::from_vec(shape, flat.to_dtype(CDType::I64)?.to_vec1::<i64>()?)),
        DType::U8 => wrap(Tensor::from_vec(shape, flat.to_dtype(CDType::U8)?.to_vec1::<u8>()?)),
        DType::I8 => {
            let v: Vec<i8> = flat
                .to_dtype(CDType::I64)?
                .to_vec1::<i64>()?
                .into_iter()
                .map(|x| x as i8)
                .collect();
            wrap(Tensor::from_vec(shape, v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A plan of `n` steps `x -> x + 1`, each counting itself in `ran` and
    /// setting `cancel` when it is step `cancel_at` (1-based).
    fn counting_plan(n: usize, ran: &Arc<AtomicUsize>, cancel: &CancelFlag, cancel_at: usize) -> Plan {
        let steps = (0..n)
            .map(|i| {
                let (ran, cancel) = (ran.clone(), cancel.clone());
                let kernel: Kernel = Box::new(move |a: &[&CTensor]| {
                    if ran.fetch_add(1, Ordering::SeqCst) + 1 == cancel_at {
                        cancel.cancel();
                    }
                    Ok(vec![(a[0] + 1.0)?])
                });
                Step {
                    name: format!("add_{i}"),
                    op_type: "add".into(),
                    operands: vec![Val::Slot(i)],
                    outputs: vec![i + 1],
                    exec: block::Exec::Kernel(kernel),
                    frees: vec![i],
                }
            })
            .collect();
        Plan {
            inputs: vec![PlanInput {
                name: "x".into(),
                slot: 0,
            }],
            states: Vec::new(),
            outputs: vec![PlanOutput {
                name: "y".into(),
                val: Val::Slot(n),
                dtype: DType::F32,
            }],
            steps,
            n_slots: n + 1,
            policy: FloatPolicy::Upcast,
            folded: 0,
            const_bytes: 0,
            run_limit: u64::MAX,
        }
    }

    fn x() -> TensorMap {
        TensorMap::from([("x".to_string(), Tensor::from_vec(vec![2], vec![1f32, 2.0]).unwrap())])
    }

    #[test]
    fn a_cancelled_run_stops_at_the_next_op_with_a_timeout() {
        let ran = Arc::new(AtomicUsize::new(0));
        let cancel = CancelFlag::new();
        let plan = counting_plan(50, &ran, &cancel, 3);
        let e = plan.run_cancellable(&x(), Some(&cancel)).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout, "{e}");
        assert_eq!(ran.load(Ordering::SeqCst), 3, "steps after the cancel must not run");
        assert!(e.to_string().contains("op `add_3` (add), step 4 of 50"), "{e}");
    }

    #[test]
    fn an_uncancelled_run_runs_every_op() {
        let ran = Arc::new(AtomicUsize::new(0));
        let cancel = CancelFlag::new();
        let plan = counting_plan(50, &ran, &cancel, usize::MAX);
        let out = plan.run_cancellable(&x(), Some(&cancel)).unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 50);
        assert_eq!(out["y"].to_f32_vec(), vec![51.0, 52.0]);
        // Cancelled before it starts: nothing runs.
        cancel.cancel();
        ran.store(0, Ordering::SeqCst);
        assert_eq!(
            plan.run_cancellable(&x(), Some(&cancel)).unwrap_err().kind(),
            crate::ErrorKind::Timeout
        );
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn run_limit_turns_an_oversized_kernel_allocation_into_memory_pressure() {
        let ran = Arc::new(AtomicUsize::new(0));
        let mut plan = counting_plan(1, &ran, &CancelFlag::new(), usize::MAX);
        plan.run_limit = 1 << 20;
        plan.steps[0].exec = block::Exec::Kernel(Box::new(|a: &[&CTensor]| {
            limits::check_alloc("tile output", &[1 << 30, 2], 4)?;
            Ok(vec![a[0].clone()])
        }));
        let e = plan.run(&x()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::MemoryPressure, "{e}");
        assert!(
            e.to_string()
                .contains("op `add_0` (add): tile output of shape [1073741824, 2] needs 8589934592 bytes"),
            "{e}"
        );
    }

    #[test]
    fn panics_while_building_or_running_are_errors() {
        let r: std::result::Result<(), String> = barrier(|| panic!("boom"));
        assert_eq!(r.unwrap_err(), "boom");
        let ran = Arc::new(AtomicUsize::new(0));
        let mut plan = counting_plan(1, &ran, &CancelFlag::new(), usize::MAX);
        plan.steps[0].exec = block::Exec::Kernel(Box::new(|_| panic!("kernel bug")));
        let e = plan.run(&x()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert!(e.to_string().contains("kernel bug"), "{e}");
    }

    #[test]
    fn a_run_on_a_deadline_worker_replies_with_its_result_its_panic_or_its_timeout() {
        let runner = crate::deadline::DeadlineRunner::new("t-plan-reply");
        let call = |plan: Plan, timeout: std::time::Duration| {
            let inputs = plan.prepare_inputs(&x()).unwrap();
            runner.run_replying("run", timeout, move |cancel, reply| {
                plan.run_prepared_replying(inputs, Some(cancel), reply)
            })
        };
        let long = std::time::Duration::from_secs(10);
        let ran = Arc::new(AtomicUsize::new(0));
        let (out, timings) = call(counting_plan(3, &ran, &CancelFlag::new(), usize::MAX), long).unwrap();
        assert_eq!(out["y"].to_f32_vec(), vec![4.0, 5.0]);
        assert!(timings.marshal_in.is_some() && timings.predict.is_some());

        let mut bad = counting_plan(1, &ran, &CancelFlag::new(), usize::MAX);
        bad.steps[0].exec = block::Exec::Kernel(Box::new(|_| panic!("kernel bug")));
        let e = call(bad, long).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert!(e.to_string().contains("the interpreter panicked: kernel bug"), "{e}");

        // A slow op: the caller gets its timeout, and the run stops at the
        // next op instead of running the other 49.
        let ran = Arc::new(AtomicUsize::new(0));
        let mut slow = counting_plan(50, &ran, &CancelFlag::new(), usize::MAX);
        let r = ran.clone();
        slow.steps[0].exec = block::Exec::Kernel(Box::new(move |a: &[&CTensor]| {
            r.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok(vec![(a[0] + 1.0)?])
        }));
        let e = call(slow, std::time::Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout, "{e}");
        let t = Instant::now();
        while runner.stats().abandoned != 0 && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(runner.stats().abandoned, 0);
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the run stopped after the slow op");
    }

    #[test]
    fn inputs_prepared_ahead_run_like_the_callers_map() {
        let ran = Arc::new(AtomicUsize::new(0));
        let plan = counting_plan(3, &ran, &CancelFlag::new(), usize::MAX);
        let prepared = plan.prepare_inputs(&x()).unwrap();
        // Owned: runs on another thread after the caller's map is gone.
        let (out, timings) =
            std::thread::scope(|s| s.spawn(|| plan.run_prepared(prepared, None)).join().unwrap()).unwrap();
        assert_eq!(out["y"].to_f32_vec(), vec![4.0, 5.0]);
        assert_eq!(out["y"].to_f32_vec(), plan.run(&x()).unwrap()["y"].to_f32_vec());
        assert!(timings.marshal_in.is_some() && timings.predict.is_some());
        let e = plan.prepare_inputs(&TensorMap::new()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::SchemaMismatch, "{e}");
        assert!(e.to_string().contains("input `x`"), "{e}");
    }
}
