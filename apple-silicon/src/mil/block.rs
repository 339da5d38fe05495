//! Blocks: building a block of ops into steps, and running steps. The main
//! block and the nested blocks of `cond` and `while_loop` are built by the
//! same code; a nested block is a list of steps over the plan's one slot
//! array, which the `cond` or `while_loop` step runs.
//!
//! Scoping: a nested block sees every value of its enclosing blocks by name
//! (a chain of scopes, [`Env`]); names it defines stay inside it. A `cond`
//! whose predicate is a constant is inlined: the chosen branch's ops become
//! steps of the enclosing block.
//!
//! Liveness: each block frees the slots it owns (its steps' outputs, and for
//! a loop body its inputs) after their last reader in that block. A step
//! with nested blocks counts as reading every outer slot its blocks read
//! (`captured`), so a value read inside a loop lives until the loop ends.
//!
//! Run-time values are tensors or lists ([`RVal`]). A list is shared
//! (`Arc`) and copied on write; a list op whose list operand dies at that op
//! takes it from its slot, so writing in a loop does not copy the list.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{DType as CDType, Tensor as CTensor};
use coreml_proto::proto::mil_spec::{self, Operation};

use super::ops::state::StateSlot;
use super::ops::{self, ListKernel, ListVal};
use super::workers::Warm;
use super::{
    candle_err, constexpr, fuse, limits, make_const, op_name, small_host, ConstVal, FloatPolicy, Kernel, OpCtx, Val,
};
use crate::error::{Error, Result};
use crate::mil::value::Decoder;
use crate::mlpackage::MlPackage;

/// A value at run time: a tensor, or a list of tensors.
#[derive(Clone)]
pub(crate) enum RVal {
    T(CTensor),
    L(Arc<ListVal>),
}

/// What a step does.
pub(crate) enum Exec {
    /// A tensor kernel over the step's operands.
    Kernel(Kernel),
    /// A list op: operands in, one tensor or list out.
    List(ListKernel),
    /// `cond`: runs branch 0 when the predicate (operand 0) is true, else branch 1.
    Cond(Box<CondExec>),
    /// `while_loop`: runs `body` while `cond` says so, over the loop slots
    /// (the step's outputs).
    While(Box<WhileExec>),
}

/// A `cond` step's branches (true, false).
pub(crate) struct CondExec {
    branches: [SubBlock; 2],
    captured: Vec<usize>,
}

/// A `while_loop` step's blocks; both read the loop vars from the step's
/// output slots.
pub(crate) struct WhileExec {
    cond: SubBlock,
    body: SubBlock,
    captured: Vec<usize>,
}

/// A built nested block.
pub(crate) struct SubBlock {
    steps: Vec<Step>,
    outputs: Vec<Val>,
    /// Output slots this block's steps define (cleared once read).
    own_outputs: Vec<usize>,
    /// Slots of enclosing blocks this block reads.
    captured: Vec<usize>,
}

/// One op of a plan: its operands, output slots, what it does, and the
/// slots to free once it has run.
pub(crate) struct Step {
    pub name: String,
    pub op_type: String,
    pub operands: Vec<Val>,
    pub outputs: Vec<usize>,
    pub exec: Exec,
    pub frees: Vec<usize>,
}

impl Step {
    /// Every slot the step reads: its operands and what its blocks capture.
    fn reads(&self) -> Vec<usize> {
        let mut r: Vec<usize> = self
            .operands
            .iter()
            .filter_map(|v| match v {
                Val::Slot(s) => Some(*s),
                Val::Const(_) => None,
            })
            .collect();
        match &self.exec {
            Exec::Cond(c) => r.extend(&c.captured),
            Exec::While(w) => r.extend(&w.captured),
            _ => {}
        }
        r
    }
}

/// Frees each slot in `owned` after its last reader among `steps` (or after
/// the step defining it when nothing reads it), except those in `keep`.
/// Returns the slots read by `steps` that they do not own (for a nested
/// block: what it captures).
pub(crate) fn liveness(steps: &mut [Step], owned: &HashSet<usize>, keep: &HashSet<usize>) -> Vec<usize> {
    let mut last: HashMap<usize, usize> = HashMap::new();
    let mut foreign = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        for o in &s.outputs {
            last.entry(*o).or_insert(i);
        }
        for r in s.reads() {
            if owned.contains(&r) || s.outputs.contains(&r) {
                last.insert(r, i);
            } else {
                foreign.push(r);
            }
        }
    }
    let defined: HashSet<usize> = steps.iter().flat_map(|s| s.outputs.iter().copied()).collect();
    for (slot, i) in last {
        if (owned.contains(&slot) || defined.contains(&slot)) && !keep.contains(&slot) {
            steps[i].frees.push(slot);
        }
    }
    let mut seen = HashSet::new();
    foreign.retain(|s| !defined.contains(s) && seen.insert(*s));
    foreign
}

/// Names in scope while building a block: its own, then its enclosing
/// blocks' (a chain, so entering a block copies nothing).
pub(crate) struct Env<'a> {
    pub map: HashMap<String, Val>,
    parent: Option<&'a Env<'a>>,
}

impl<'a> Env<'a> {
    /// The main block's scope.
    pub fn top() -> Env<'static> {
        Env {
            map: HashMap::new(),
            parent: None,
        }
    }

    fn nested(parent: &'a Env<'a>) -> Env<'a> {
        Env {
            map: HashMap::new(),
            parent: Some(parent),
        }
    }

    /// The value `name` refers to here.
    pub fn get(&self, name: &str) -> Option<&Val> {
        let mut e = Some(self);
        while let Some(env) = e {
            if let Some(v) = env.map.get(name) {
                return Some(v);
            }
            e = env.parent;
        }
        None
    }

    pub fn insert(&mut self, name: String, v: Val) {
        self.map.insert(name, v);
    }
}

/// Builds blocks into steps; one per plan, shared by its nested blocks.
pub(crate) struct BlockBuilder<'p> {
    pub pkg: &'p MlPackage,
    pub dec: Decoder<'p>,
    pub policy: FloatPolicy,
    pub budget: u64,
    /// Bytes of every constant made so far, against the budget.
    held: u64,
    pub n_slots: usize,
    pub folded: usize,
    /// Names of constants the kept ops read (for the lowered program).
    pub used: Vec<String>,
    /// Indices of the main block's ops the plan runs.
    pub kept_ops: Vec<usize>,
    /// Names the kept ops define (a lowered program must not also hold them as constants).
    pub kept_names: HashSet<String>,
    /// Slots that hold lists.
    lists: HashSet<usize>,
    /// The program's states (ops/state.rs): their slots are only read by
    /// `read_state` and written by `write_state`.
    pub states: Vec<StateSlot>,
    /// The main block's outputs: a value that is one is never fused away.
    pub block_outputs: HashSet<String>,
}

/// A step whose kernel could take the next op into its epilogue (`fuse.rs`).
struct Pending {
    step: usize,
    out: String,
    offer: fuse::Offer,
    /// What it has fused so far.
    epi: fuse::Epi,
    /// The ops of a hard-swish fused ahead of their turn (`clip`, `mul`):
    /// their indices and outputs.
    skip: Vec<(usize, String)>,
    /// The `k` of a clip-spelled hard-swish (`add(out, k)` fused) whose
    /// `clip`, the next op in `skip`, completes the step.
    hard_swish_at: Option<f32>,
    /// Whether ops ran between the step and the ops now joining it: then
    /// only ops that read nothing but `out` and constants may join (not a
    /// residual `add`, whose other operand may not exist yet at the step).
    late: bool,
    /// The step's conv when it is pointwise: a depthwise conv reading
    /// only its output may join it (`depthwise::expand`).
    pointwise: Option<ops::Pointwise>,
}

impl Pending {
    /// Whether the step may still take its output's one reader when that
    /// reader comes later, after other ops (converters do not always put
    /// a conv's activation right after it: YOLOv8's C2f blocks).
    fn can_wait(&self, uses: &HashMap<String, usize>, keep: &HashSet<String>) -> bool {
        self.skip.is_empty() && uses.get(&self.out) == Some(&1) && !keep.contains(&self.out)
    }
}

impl<'p> BlockBuilder<'p> {
    pub fn new(pkg: &'p MlPackage, policy: FloatPolicy, budget: u64) -> Self {
        BlockBuilder {
            pkg,
            dec: Decoder::new(pkg),
            policy,
            budget,
            held: 0,
            n_slots: 0,
            folded: 0,
            used: Vec::new(),
            kept_ops: Vec::new(),
            kept_names: HashSet::new(),
            lists: HashSet::new(),
            states: Vec::new(),
            block_outputs: HashSet::new(),
        }
    }

    pub fn slot(&mut self) -> usize {
        self.n_slots += 1;
        self.n_slots - 1
    }

    /// Whether `slot` holds a list.
    pub fn is_list(&self, slot: usize) -> bool {
        self.lists.contains(&slot)
    }

    /// A slot for the op output `o`, marked as a list when it is declared
    /// list-typed or `list` says so.
    fn slot_for(&mut self, o: &mil_spec::NamedValueType, list: bool) -> usize {
        let s = self.slot();
        let declared = matches!(
            o.r#type.as_ref().and_then(|t| t.r#type.as_ref()),
            Some(mil_spec::value_type::Type::ListType(_))
        );
        if list || declared {
            self.lists.insert(s);
        }
        s
    }

    fn hold(&mut self, name: &str, c: &ConstVal) -> Result<()> {
        let bytes = c.held_bytes() as u64;
        self.held = self.held.saturating_add(bytes);
        if self.held > self.budget {
            return Err(Error::MemoryPressure {
                message: format!(
                    "constants of {} need more than the memory budget of {} bytes \
                     (reached at `{name}`, {} bytes); raise it with PrepareOptions::with_memory_budget",
                    self.pkg.path().display(),
                    self.budget,
                    self.held
                ),
            });
        }
        Ok(())
    }

    fn add_const(&mut self, env: &mut Env<'_>, out: &str, name: &str, c: ConstVal) -> Result<()> {
        self.hold(name, &c)?;
        env.insert(out.to_string(), Val::Const(Arc::new(c)));
        Ok(())
    }

    /// Builds `ops` into `steps`, defining their outputs in `env`. `top`:
    /// the main block (its kept ops are recorded by index).
    pub fn build_ops(&mut self, ops: &[Operation], env: &mut Env<'_>, steps: &mut Vec<Step>, top: bool) -> Result<()> {
        // Fusion only in the main block, whose outputs are known here.
        let uses = if top { fuse::use_counts(ops) } else { HashMap::new() };
        let mut pending: Option<Pending> = None;
        // Steps waiting for their output's one reader, by output name.
        let mut waiting: HashMap<String, Pending> = HashMap::new();
        for (op_index, op) in ops.iter().enumerate() {
            let name = op_name(op);
            if op.r#type == "const" {
                let v = op.attributes.get("val").ok_or_else(|| {
                    Error::invalid_artifact(self.pkg.path(), format!("const op `{name}` has no `val`"))
                })?;
                let d = self.dec.decode(v, &format!("const `{name}`"))?;
                let out = op.outputs.first().ok_or_else(|| {
                    Error::invalid_artifact(self.pkg.path(), format!("const op `{name}` has no output"))
                })?;
                let c = make_const(d, self.policy, &name)?;
                self.add_const(env, &out.name, &name, c)?;
                continue;
            }
            // The step before when this op did not join its epilogue: a
            // pointwise conv that a depthwise conv may join.
            let mut expand_from: Option<Pending> = None;
            // The rest of a fused hard-swish: its value is the step's.
            if let Some(p) = pending.as_mut() {
                if let Some(at) = p.skip.iter().position(|(i, _)| *i == op_index) {
                    let (_, out) = p.skip.remove(at);
                    if let Some(k) = p.hard_swish_at.take() {
                        // The clip of a clip-spelled hard-swish: its bounds complete the step.
                        let mut cc = OpCtx::new(op, name.clone(), env, &self.lists, &mut self.dec, self.policy);
                        let Some((lo, hi)) = fuse::clip_bounds(&mut cc)? else {
                            return Err(cc.error("`alpha` and `beta` are required".to_string()));
                        };
                        let Some(epi) = fuse::with_step(p.epi, fuse::Step::HardSwishClip(k, lo, hi)) else {
                            return Err(cc.error("fused into a full epilogue (an interpreter bug)".to_string()));
                        };
                        self.used.append(&mut cc.used);
                        drop(cc);
                        let step = &mut steps[p.step];
                        step.exec = Exec::Kernel((p.offer)(epi));
                        step.op_type = format!("{}+hard_swish", step.op_type);
                        p.epi = epi;
                    }
                    let slot = steps[p.step].outputs[0];
                    env.insert(out.clone(), Val::Slot(slot));
                    self.kept_ops.push(op_index);
                    p.out = out;
                    continue;
                }
            }
            // Any op but a constant ends the chance to fuse into the step
            // before it, unless it is the one reader of a step that waits
            // for it; the step before waits in turn if it may.
            let reads = |o: &str| {
                op.inputs
                    .values()
                    .flat_map(|a| &a.arguments)
                    .any(|b| matches!(&b.binding, Some(mil_spec::argument::binding::Binding::Name(n)) if n == o))
            };
            if !constexpr::is_constexpr(&op.r#type) && !waiting.is_empty() {
                if let Some(x) = fuse::arg_name(op, "x").filter(|x| waiting.contains_key(*x)) {
                    if let Some(p) = pending.take() {
                        if !reads(&p.out) && p.can_wait(&uses, &self.block_outputs) {
                            waiting.insert(p.out.clone(), Pending { late: true, ..p });
                        }
                    }
                    pending = waiting.remove(x);
                }
            }
            if let Some(p) = pending.take_if(|p| !constexpr::is_constexpr(&op.r#type) && !reads(&p.out)) {
                if p.can_wait(&uses, &self.block_outputs) {
                    waiting.insert(p.out.clone(), Pending { late: true, ..p });
                }
            }
            if let Some(mut p) = pending.take_if(|_| !constexpr::is_constexpr(&op.r#type)) {
                let scalar_rank = |o: &Operation, arg: &str| match fuse::arg_name(o, arg) {
                    Some(n) => {
                        let Val::Const(c) = env.get(n)? else { return None };
                        let d = c.host.as_ref()?;
                        fuse::scalar_of(d).map(|_| d.shape.len())
                    }
                    None => fuse::inline_scalar_rank(o, arg),
                };
                let join = fuse::join(ops, op_index, &p.out, &p.epi, &uses, &self.block_outputs, &scalar_rank)
                    .filter(|j| !(p.late && matches!(j, fuse::Join::Add { .. })));
                if let Some(join) = join {
                    let mut ctx = OpCtx::new(op, name.clone(), env, &self.lists, &mut self.dec, self.policy);
                    let (epi, suffix, extra) = match join {
                        fuse::Join::Act => (
                            fuse::act_of(&mut ctx)?.and_then(|a| fuse::with_act(p.epi, a)),
                            op.r#type.clone(),
                            None,
                        ),
                        fuse::Join::HardSwish { mul } => {
                            let epi = match fuse::act_of(&mut ctx)? {
                                Some(fuse::Act::SigmoidHard(a, b)) => fuse::with_act(p.epi, fuse::Act::HardSwish(a, b)),
                                _ => None,
                            };
                            if epi.is_some() {
                                p.skip = vec![(mul, ops[mul].outputs[0].name.clone())];
                            }
                            (epi, "hard_swish".to_string(), None)
                        }
                        fuse::Join::HardSwishClip { k, clip, mul } => {
                            // The clip's bounds are constants defined after this op:
                            // the kernel takes the step when the clip comes.
                            let k = ctx.opt_const(k)?.as_ref().and_then(fuse::scalar_of);
                            if let Some(k) = k {
                                let (c, m) = (&ops[clip], &ops[mul]);
                                p.skip = vec![(clip, c.outputs[0].name.clone()), (mul, m.outputs[0].name.clone())];
                                p.hard_swish_at = Some(k);
                            }
                            (k.map(|_| p.epi), String::new(), None)
                        }
                        fuse::Join::Scalar { k, producer_is_x } => {
                            let k = ctx.opt_const(k)?.as_ref().and_then(fuse::scalar_of);
                            let step = k.and_then(|k| fuse::scalar_step(&op.r#type, k, producer_is_x));
                            (step.and_then(|s| fuse::with_step(p.epi, s)), op.r#type.clone(), None)
                        }
                        fuse::Join::Add { producer_is_x, .. } => {
                            ctx.tensor("x")?;
                            ctx.tensor("y")?;
                            let other = ctx.operands[if producer_is_x { 1 } else { 0 }].clone();
                            let residual = fuse::Residual {
                                operand: steps[p.step].operands.len(),
                                producer_is_x,
                            };
                            let epi = fuse::Epi {
                                residual: Some(residual),
                                ..p.epi
                            };
                            (Some(epi), op.r#type.clone(), Some(other))
                        }
                    };
                    if let Some(epi) = epi {
                        let mut used = std::mem::take(&mut ctx.used);
                        drop(ctx);
                        self.used.append(&mut used);
                        self.kept_ops.push(op_index);
                        let step = &mut steps[p.step];
                        step.operands.extend(extra);
                        if !suffix.is_empty() {
                            step.exec = Exec::Kernel((p.offer)(epi));
                            step.op_type = format!("{}+{suffix}", step.op_type);
                        }
                        let slot = step.outputs[0];
                        env.insert(op.outputs[0].name.clone(), Val::Slot(slot));
                        p.epi = epi;
                        p.out = op.outputs[0].name.clone();
                        pending = Some(p);
                        continue;
                    }
                }
                expand_from = Some(p);
            }
            let before = steps.len();
            let mut ctx = OpCtx::new(op, name.clone(), env, &self.lists, &mut self.dec, self.policy);
            if constexpr::is_constexpr(&op.r#type) {
                // Compressed weights computed in f32 stay compressed.
                if let (Some(w), [out]) = (constexpr::pack(&mut ctx)?, op.outputs.as_slice()) {
                    if !top {
                        self.used.append(&mut ctx.used);
                    }
                    self.add_const(env, &out.name, &name, ConstVal::packed(w))?;
                    continue;
                }
                let ds = constexpr::materialize_outputs(&mut ctx)?;
                if ds.len() != op.outputs.len() {
                    return Err(ctx.error(format!("has {} outputs; {} expected", op.outputs.len(), ds.len())));
                }
                if !top {
                    self.used.append(&mut ctx.used);
                }
                for (out, d) in op.outputs.iter().zip(ds) {
                    let c = make_const(d, self.policy, &name)?;
                    self.add_const(env, &out.name, &name, c)?;
                }
                continue;
            }
            if op.r#type == "cond" || op.r#type == "while_loop" {
                let is_cond = op.r#type == "cond";
                if is_cond {
                    ctx.tensor("pred")?;
                } else {
                    ctx.values("loop_vars")?;
                }
                let operands = std::mem::take(&mut ctx.operands);
                self.used.append(&mut ctx.used);
                let unsupported = |what: String| Error::unsupported(format!("op `{name}` ({}): {what}", op.r#type));
                if is_cond {
                    self.build_cond(op, &name, operands, env, steps, unsupported)?;
                } else {
                    self.build_while(op, &name, operands, env, steps, unsupported)?;
                }
                if top && steps.len() > before {
                    self.kept_ops.push(op_index);
                    self.kept_names.extend(op.outputs.iter().map(|o| o.name.clone()));
                }
                continue;
            }
            if !op.blocks.is_empty() {
                return Err(ctx.unsupported("nested blocks on an op other than cond and while_loop"));
            }
            let mut writes_state = None;
            let mut offer = None;
            let mut pointwise = None;
            let exec = if let Some(b) = ops::list_builder(&op.r#type) {
                // Lists never fold: they are run-time values.
                Exec::List(b(&mut ctx)?)
            } else {
                let builder = ops::builder(&op.r#type).ok_or_else(|| ctx.unsupported("op type"))?;
                let kernel = builder(&mut ctx)?;
                offer = ctx.offer.take();
                pointwise = ctx.pointwise.take();
                if let (Some(dw), Some(p)) = (ctx.depthwise.take(), expand_from.take()) {
                    let reads_p = matches!(ctx.operands.first(), Some(Val::Slot(s)) if *s == steps[p.step].outputs[0]);
                    let fusable = top
                        && reads_p
                        && dw.reads_only_x(ctx.operands.len())
                        && ctx.rebinds.is_empty()
                        && op.outputs.len() == 1
                        && steps[p.step].operands.len() == 1
                        && p.epi.residual.is_none()
                        && p.epi.post == fuse::Act::Identity
                        && p.skip.is_empty()
                        && p.hard_swish_at.is_none()
                        && uses.get(&p.out) == Some(&1)
                        && !self.block_outputs.contains(&p.out);
                    if let Some(pw) = p.pointwise.filter(|pw| fusable && dw.joins(pw)) {
                        // The pointwise conv's step computes both; this op's
                        // output is its slot, and later ops may join it.
                        let pw_epi = p.epi;
                        let make = move |epi| ops::expand_then_depthwise(&pw, pw_epi, &dw, epi);
                        let step = &mut steps[p.step];
                        step.exec = Exec::Kernel(make(fuse::Epi::act(fuse::Act::Identity)));
                        step.op_type = format!("{}+depthwise", step.op_type);
                        let slot = step.outputs[0];
                        self.used.append(&mut ctx.used);
                        drop(ctx);
                        self.kept_ops.push(op_index);
                        let out = op.outputs[0].name.clone();
                        env.insert(out.clone(), Val::Slot(slot));
                        pending = Some(Pending {
                            step: p.step,
                            out,
                            offer: Box::new(make),
                            epi: fuse::Epi::act(fuse::Act::Identity),
                            skip: Vec::new(),
                            hard_swish_at: None,
                            late: false,
                            pointwise: None,
                        });
                        continue;
                    }
                }
                writes_state = ops::state::check_operands(&ctx, &ctx.operands, &self.states)?;
                if ctx.operands.iter().all(|v| matches!(v, Val::Const(_))) {
                    if !top {
                        self.used.append(&mut ctx.used);
                    }
                    let operands = std::mem::take(&mut ctx.operands);
                    drop(ctx);
                    self.fold(op, &name, &operands, kernel, env)?;
                    continue;
                }
                Exec::Kernel(kernel)
            };
            let operands = std::mem::take(&mut ctx.operands);
            self.used.append(&mut ctx.used);
            let rebinds = std::mem::take(&mut ctx.rebinds);
            // A constant the builder re-laid out: later readers see the new
            // layout, and the old one is freed (the budget's bytes are unchanged).
            for (n, c) in rebinds {
                env.insert(n, Val::Const(Arc::new(c)));
            }
            if top {
                self.kept_ops.push(op_index);
            }
            let makes_list = matches!(op.r#type.as_str(), "make_list" | "list_write" | "list_scatter");
            // write_state's result is the state's new value, in the state's slot.
            let mut outputs: Vec<usize> = writes_state.into_iter().collect();
            for o in &op.outputs {
                let s = self.slot_for(o, makes_list);
                env.insert(o.name.clone(), Val::Slot(s));
                outputs.push(s);
            }
            if let (Some(offer), true, [o]) = (offer, top, op.outputs.as_slice()) {
                if outputs.len() == 1 {
                    pending = Some(Pending {
                        step: steps.len(),
                        out: o.name.clone(),
                        offer,
                        epi: fuse::Epi::act(fuse::Act::Identity),
                        skip: Vec::new(),
                        hard_swish_at: None,
                        late: false,
                        pointwise,
                    });
                }
            }
            steps.push(Step {
                name,
                op_type: op.r#type.clone(),
                operands,
                outputs,
                exec,
                frees: Vec::new(),
            });
        }
        Ok(())
    }

    /// Every input is known now: runs the op once and keeps its results.
    fn fold(&mut self, op: &Operation, name: &str, operands: &[Val], kernel: Kernel, env: &mut Env<'_>) -> Result<()> {
        let args: Vec<&CTensor> = operands
            .iter()
            .filter_map(|v| match v {
                Val::Const(c) => c.tensor(),
                Val::Slot(_) => None,
            })
            .collect();
        if args.len() != operands.len() {
            return Err(Error::Compile {
                model: format!("op `{name}` ({})", op.r#type),
                message: "an operand has no tensor value".into(),
            });
        }
        // An op failing on constants is the program's fault: a compile
        // error, not an internal one.
        let outs = kernel(&args).map_err(|e| match candle_err(name, &op.r#type, e) {
            Error::Internal { message } => Error::Compile {
                model: self.pkg.path().display().to_string(),
                message,
            },
            other => other,
        })?;
        for (o, t) in op.outputs.iter().zip(outs) {
            let host = small_host(&t);
            self.add_const(env, &o.name, name, ConstVal::new(Some(t), host))?;
        }
        self.folded += 1;
        Ok(())
    }

    /// Builds a nested block whose inputs live in `inputs` (slots); the
    /// block frees them after their last use when `free_inputs`.
    fn build_sub(
        &mut self,
        blk: &mil_spec::Block,
        outer: &Env<'_>,
        inputs: &[usize],
        free_inputs: bool,
        op: &str,
    ) -> Result<SubBlock> {
        let mut env = Env::nested(outer);
        for (inp, s) in blk.inputs.iter().zip(inputs) {
            env.insert(inp.name.clone(), Val::Slot(*s));
        }
        let mut steps = Vec::new();
        self.build_ops(&blk.operations, &mut env, &mut steps, false)?;
        let outputs = self.block_outputs(blk, &env, op)?;
        let defined: HashSet<usize> = steps.iter().flat_map(|s| s.outputs.iter().copied()).collect();
        let mut owned = defined.clone();
        if free_inputs {
            owned.extend(inputs);
        }
        let keep: HashSet<usize> = slots_of(&outputs).collect();
        let read = liveness(&mut steps, &owned, &keep);
        let own_outputs: Vec<usize> = keep.iter().copied().filter(|s| defined.contains(s)).collect();
        // Outer slots the block reads, or returns as they are.
        let inputs: HashSet<usize> = inputs.iter().copied().collect();
        let outer = slots_of(&outputs).filter(|s| !defined.contains(s));
        let captured = union(&read, &outer.collect::<Vec<_>>())
            .into_iter()
            .filter(|s| !inputs.contains(s))
            .collect();
        Ok(SubBlock {
            steps,
            outputs,
            own_outputs,
            captured,
        })
    }

    fn block_outputs(&mut self, blk: &mil_spec::Block, env: &Env<'_>, op: &str) -> Result<Vec<Val>> {
        blk.outputs
            .iter()
            .map(|n| {
                let v = env.get(n).cloned().ok_or_else(|| {
                    Error::invalid_artifact(
                        self.pkg.path(),
                        format!("op `{op}`: block output `{n}` is never defined"),
                    )
                })?;
                if matches!(v, Val::Const(_)) {
                    self.used.push(n.clone());
                }
                Ok(v)
            })
            .collect()
    }

    fn build_cond(
        &mut self,
        op: &Operation,
        name: &str,
        operands: Vec<Val>,
        env: &mut Env<'_>,
        steps: &mut Vec<Step>,
        unsupported: impl Fn(String) -> Error,
    ) -> Result<()> {
        let n = op.outputs.len();
        if op.blocks.len() != 2 {
            return Err(unsupported(format!(
                "{} blocks (2 expected: true, false)",
                op.blocks.len()
            )));
        }
        for b in &op.blocks {
            if !b.inputs.is_empty() || b.outputs.len() != n {
                return Err(self.malformed(
                    name,
                    format!(
                        "a branch with {} inputs and {} outputs (0 and {n} expected)",
                        b.inputs.len(),
                        b.outputs.len()
                    ),
                ));
            }
        }
        if let Val::Const(c) = &operands[0] {
            // Known now: the chosen branch becomes part of this block.
            let pred = truth(c.tensor()).map_err(|e| self.malformed(name, format!("`pred`: {e}")))?;
            let blk = &op.blocks[if pred { 0 } else { 1 }];
            let mut inner = Env::nested(env);
            self.build_ops(&blk.operations, &mut inner, steps, false)?;
            let outs = self.block_outputs(blk, &inner, name)?;
            drop(inner);
            for (o, v) in op.outputs.iter().zip(outs) {
                env.insert(o.name.clone(), v);
            }
            return Ok(());
        }
        let t = self.build_sub(&op.blocks[0], env, &[], false, name)?;
        let f = self.build_sub(&op.blocks[1], env, &[], false, name)?;
        let captured = union(&t.captured, &f.captured);
        let outputs: Vec<usize> = op.outputs.iter().map(|o| self.slot_for(o, false)).collect();
        for (o, s) in op.outputs.iter().zip(&outputs) {
            env.insert(o.name.clone(), Val::Slot(*s));
        }
        steps.push(Step {
            name: name.to_string(),
            op_type: op.r#type.clone(),
            operands,
            outputs,
            exec: Exec::Cond(Box::new(CondExec {
                branches: [t, f],
                captured,
            })),
            frees: Vec::new(),
        });
        Ok(())
    }

    fn build_while(
        &mut self,
        op: &Operation,
        name: &str,
        operands: Vec<Val>,
        env: &mut Env<'_>,
        steps: &mut Vec<Step>,
        unsupported: impl Fn(String) -> Error,
    ) -> Result<()> {
        let n = operands.len();
        if op.blocks.len() != 2 {
            return Err(unsupported(format!(
                "{} blocks (2 expected: cond, body)",
                op.blocks.len()
            )));
        }
        let (cb, bb) = (&op.blocks[0], &op.blocks[1]);
        if op.outputs.len() != n
            || cb.inputs.len() != n
            || bb.inputs.len() != n
            || cb.outputs.len() != 1
            || bb.outputs.len() != n
        {
            return Err(self.malformed(
                name,
                format!(
                    "{n} loop vars, {} outputs, cond block {}→{}, body block {}→{} ({n}, {n}→1 and {n}→{n} expected)",
                    op.outputs.len(),
                    cb.inputs.len(),
                    cb.outputs.len(),
                    bb.inputs.len(),
                    bb.outputs.len()
                ),
            ));
        }
        // The loop vars live in the step's output slots, which both blocks read as their inputs.
        let vars: Vec<usize> = op.outputs.iter().map(|o| self.slot_for(o, false)).collect();
        let cond = self.build_sub(cb, env, &vars, false, name)?;
        let body = self.build_sub(bb, env, &vars, true, name)?;
        let captured = union(&cond.captured, &body.captured);
        for (o, s) in op.outputs.iter().zip(&vars) {
            env.insert(o.name.clone(), Val::Slot(*s));
        }
        steps.push(Step {
            name: name.to_string(),
            op_type: op.r#type.clone(),
            operands,
            outputs: vars,
            exec: Exec::While(Box::new(WhileExec { cond, body, captured })),
            frees: Vec::new(),
        });
        Ok(())
    }

    fn malformed(&self, name: &str, msg: String) -> Error {
        Error::invalid_artifact(self.pkg.path(), format!("op `{name}`: {msg}"))
    }
}

/// Every step of `steps` and of the blocks nested in them.
pub(crate) fn all_steps(steps: &[Step]) -> Vec<&Step> {
    let mut out = Vec::new();
    for s in steps {
        out.push(s);
        let blocks: Vec<&SubBlock> = match &s.exec {
            Exec::Cond(c) => c.branches.iter().collect(),
            Exec::While(w) => vec![&w.cond, &w.body],
            _ => vec![],
        };
        for b in blocks {
            out.extend(all_steps(&b.steps));
        }
    }
    out
}

/// The slots of `a` and `b`, each once, in order.
fn union(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut seen = HashSet::new();
    a.iter().chain(b).copied().filter(|s| seen.insert(*s)).collect()
}

fn slots_of(vals: &[Val]) -> impl Iterator<Item = usize> + '_ {
    vals.iter().filter_map(|v| match v {
        Val::Slot(s) => Some(*s),
        Val::Const(_) => None,
    })
}

/// The truth of a scalar predicate.
fn truth(t: Option<&CTensor>) -> candle_core::Result<bool> {
    let t = t.ok_or_else(|| candle_core::Error::Msg("a predicate that is not a tensor".into()))?;
    if t.elem_count() != 1 {
        candle_core::bail!("a predicate of shape {:?} (a scalar expected)", t.dims())
    }
    Ok(t.flatten_all()?.to_dtype(CDType::F32)?.to_vec1::<f32>()?[0] != 0.0)
}

fn read<'s>(slots: &'s [Option<RVal>], v: &'s Val, step: &Step) -> Result<RValRef<'s>> {
    match v {
        Val::Const(c) => c
            .tensor()
            .map(RValRef::T)
            .ok_or_else(|| Error::internal(format!("op `{}` read a string constant", step.name))),
        Val::Slot(s) => match slots[*s].as_ref() {
            Some(RVal::T(t)) => Ok(RValRef::T(t)),
            Some(RVal::L(l)) => Ok(RValRef::L(l)),
            None => Err(Error::internal(format!("op `{}` read an empty slot", step.name))),
        },
    }
}

enum RValRef<'s> {
    T(&'s CTensor),
    L(&'s Arc<ListVal>),
}

impl RValRef<'_> {
    fn owned(&self) -> RVal {
        match self {
            RValRef::T(t) => RVal::T((*t).clone()),
            RValRef::L(l) => RVal::L((*l).clone()),
        }
    }
}

fn tensor_arg<'s>(r: RValRef<'s>, step: &Step) -> Result<&'s CTensor> {
    match r {
        RValRef::T(t) => Ok(t),
        RValRef::L(_) => Err(Error::internal(format!(
            "op `{}` ({}) read a list where a tensor is expected",
            step.name, step.op_type
        ))),
    }
}

/// Runs `steps` over `slots`, checking for cancellation before each.
pub(crate) fn run_steps(steps: &[Step], slots: &mut [Option<RVal>], warm: &Warm) -> Result<()> {
    let profiling = super::profile::recording();
    for (i, step) in steps.iter().enumerate() {
        warm.poke();
        let started = profiling.then(std::time::Instant::now);
        if limits::check_cancel().is_err() {
            let at = format!(
                "op `{}` ({}), step {} of {}",
                step.name,
                step.op_type,
                i + 1,
                steps.len()
            );
            return Err(limits::take_tripped(&at).unwrap_or_else(|| Error::internal("cancelled")));
        }
        let outs: Vec<RVal> = match &step.exec {
            Exec::Kernel(k) => {
                let mut args: Vec<&CTensor> = Vec::with_capacity(step.operands.len());
                for v in &step.operands {
                    args.push(tensor_arg(read(slots, v, step)?, step)?);
                }
                let outs = k(&args).map_err(|e| candle_err(&step.name, &step.op_type, e))?;
                outs.into_iter().map(RVal::T).collect()
            }
            Exec::List(k) => {
                let args = step
                    .operands
                    .iter()
                    .map(|v| read(slots, v, step).map(|r| r.owned()))
                    .collect::<Result<Vec<_>>>()?;
                // Dropping the dead operands first leaves a list written in a
                // loop with one owner, so it is updated in place.
                for s in &step.frees {
                    slots[*s] = None;
                }
                vec![k(args).map_err(|e| candle_err(&step.name, &step.op_type, e))?]
            }
            Exec::Cond(c) => {
                let pred = tensor_arg(read(slots, &step.operands[0], step)?, step)?;
                let pred = truth(Some(pred)).map_err(|e| candle_err(&step.name, &step.op_type, e))?;
                let b = &c.branches[if pred { 0 } else { 1 }];
                run_steps(&b.steps, slots, warm)?;
                finish(b, slots, step)?
            }
            Exec::While(w) => {
                run_while(w, step, slots, warm)?;
                Vec::new()
            }
        };
        if outs.len() < step.outputs.len() && !matches!(step.exec, Exec::While(_)) {
            return Err(Error::internal(format!(
                "op `{}` ({}) produced {} outputs, {} expected",
                step.name,
                step.op_type,
                outs.len(),
                step.outputs.len()
            )));
        }
        for (slot, t) in step.outputs.iter().zip(outs) {
            slots[*slot] = Some(t);
        }
        for s in &step.frees {
            slots[*s] = None;
        }
        if let Some(t) = started {
            super::profile::note(step as *const Step as usize, &step.name, &step.op_type, t.elapsed());
        }
    }
    Ok(())
}

/// A block's outputs, read out of `slots`; its own output slots are cleared.
fn finish(b: &SubBlock, slots: &mut [Option<RVal>], step: &Step) -> Result<Vec<RVal>> {
    let outs = b
        .outputs
        .iter()
        .map(|v| read(slots, v, step).map(|r| r.owned()))
        .collect::<Result<Vec<_>>>()?;
    for s in &b.own_outputs {
        slots[*s] = None;
    }
    Ok(outs)
}

fn run_while(w: &WhileExec, step: &Step, slots: &mut [Option<RVal>], warm: &Warm) -> Result<()> {
    let init = step
        .operands
        .iter()
        .map(|v| read(slots, v, step).map(|r| r.owned()))
        .collect::<Result<Vec<_>>>()?;
    for (s, v) in step.outputs.iter().zip(init) {
        slots[*s] = Some(v);
    }
    loop {
        // Checked per iteration too: a loop whose blocks have no steps must still stop.
        if limits::check_cancel().is_err() {
            let at = format!("op `{}` ({})", step.name, step.op_type);
            return Err(limits::take_tripped(&at).unwrap_or_else(|| Error::internal("cancelled")));
        }
        run_steps(&w.cond.steps, slots, warm)?;
        let c = finish(&w.cond, slots, step)?;
        let go = match c.first() {
            Some(RVal::T(t)) => truth(Some(t)).map_err(|e| candle_err(&step.name, &step.op_type, e))?,
            _ => {
                return Err(Error::internal(format!(
                    "op `{}`: the cond block gave no tensor",
                    step.name
                )))
            }
        };
        if !go {
            return Ok(());
        }
        run_steps(&w.body.steps, slots, warm)?;
        let next = finish(&w.body, slots, step)?;
        // A loop var that grows each trip (e.g. concatenated with itself)
        // stops at the memory limit, whether or not its op checks sizes.
        for v in &next {
            if let RVal::T(t) = v {
                limits::check_alloc("loop var", t.dims(), t.dtype().size_in_bytes())
                    .map_err(|e| candle_err(&step.name, &step.op_type, e))?;
            }
        }
        for (s, v) in step.outputs.iter().zip(next) {
            slots[*s] = Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::{CancelFlag, Plan, PlanInput, PlanOutput};
    use crate::tensor::{DType, Tensor, TensorMap};
    use candle_core::Device;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn truth_const() -> Val {
        let t = CTensor::new(1u8, &Device::Cpu).unwrap();
        Val::Const(Arc::new(ConstVal::new(Some(t), None)))
    }

    /// `while (true) { v = body(v) }` over input `x` (slot 0): the loop var
    /// is slot 1; `body` is a step `add_one` (counting itself in `ran`) or,
    /// when `ran` is `None`, no step at all (the var passes through).
    fn endless(ran: Option<Arc<AtomicUsize>>) -> Plan {
        let body = match ran {
            Some(ran) => {
                let kernel: Kernel = Box::new(move |a: &[&CTensor]| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(vec![(a[0] + 1.0)?])
                });
                SubBlock {
                    steps: vec![Step {
                        name: "add_one".into(),
                        op_type: "add".into(),
                        operands: vec![Val::Slot(1)],
                        outputs: vec![2],
                        exec: Exec::Kernel(kernel),
                        frees: vec![1],
                    }],
                    outputs: vec![Val::Slot(2)],
                    own_outputs: vec![2],
                    captured: vec![],
                }
            }
            None => SubBlock {
                steps: vec![],
                outputs: vec![Val::Slot(1)],
                own_outputs: vec![],
                captured: vec![],
            },
        };
        let cond = SubBlock {
            steps: vec![],
            outputs: vec![truth_const()],
            own_outputs: vec![],
            captured: vec![],
        };
        Plan {
            inputs: vec![PlanInput {
                name: "x".into(),
                slot: 0,
            }],
            states: Vec::new(),
            outputs: vec![PlanOutput {
                name: "y".into(),
                val: Val::Slot(1),
                dtype: DType::F32,
            }],
            steps: vec![Step {
                name: "loop".into(),
                op_type: "while_loop".into(),
                operands: vec![Val::Slot(0)],
                outputs: vec![1],
                exec: Exec::While(Box::new(WhileExec {
                    cond,
                    body,
                    captured: vec![],
                })),
                frees: vec![0],
            }],
            n_slots: 3,
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
    fn an_endless_loop_stops_at_the_next_op_once_cancelled() {
        let ran = Arc::new(AtomicUsize::new(0));
        let plan = endless(Some(ran.clone()));
        let cancel = CancelFlag::new();
        let (c, r) = (cancel.clone(), ran.clone());
        let t = std::thread::spawn(move || {
            while r.load(Ordering::SeqCst) < 1000 {
                std::thread::yield_now();
            }
            c.cancel();
        });
        let e = plan.run_cancellable(&x(), Some(&cancel)).unwrap_err();
        t.join().unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout, "{e}");
        // Seen before the body's step or at the loop's own per-trip check.
        let m = e.to_string();
        assert!(
            m.contains("op `add_one` (add)") || m.contains("op `loop` (while_loop)"),
            "{e}"
        );
        assert!(ran.load(Ordering::SeqCst) >= 1000);
    }

    #[test]
    fn a_loop_var_growing_each_trip_stops_at_the_memory_limit() {
        // v = concat(v, v) forever: the size check after each trip ends it.
        let mut plan = endless(Some(Arc::new(AtomicUsize::new(0))));
        plan.run_limit = 1 << 16;
        let Exec::While(w) = &mut plan.steps[0].exec else {
            unreachable!()
        };
        w.body.steps[0].exec = Exec::Kernel(Box::new(|a: &[&CTensor]| Ok(vec![CTensor::cat(&[a[0], a[0]], 0)?])));
        let e = plan.run(&x()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::MemoryPressure, "{e}");
        assert!(
            e.to_string()
                .contains("op `loop` (while_loop): loop var of shape [32768]"),
            "{e}"
        );
    }

    #[test]
    fn an_endless_loop_with_no_steps_is_still_cancellable() {
        let plan = endless(None);
        let cancel = CancelFlag::new();
        let c = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            c.cancel();
        });
        let e = plan.run_cancellable(&x(), Some(&cancel)).unwrap_err();
        t.join().unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout, "{e}");
        assert!(e.to_string().contains("op `loop` (while_loop)"), "{e}");
    }

    fn fixture(case: &str) -> MlPackage {
        MlPackage::open(crate::mil::test_support::package_path(&format!("control_flow/{case}"))).unwrap()
    }

    fn inputs(pairs: &[(&str, Tensor)]) -> TensorMap {
        pairs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect()
    }

    #[test]
    fn values_read_inside_a_loop_live_until_the_loop_ends() {
        // `x` is the loop's initial value and is read again inside a cond in
        // the body: the loop step must count as its last reader.
        let pkg = fixture("while_nested_cond");
        let plan = Plan::build(&pkg, FloatPolicy::Upcast).unwrap();
        let loop_at = plan.steps.iter().position(|s| s.op_type == "while_loop").unwrap();
        let x_slot = plan.inputs.iter().find(|i| i.name == "x").unwrap().slot;
        let Exec::While(w) = &plan.steps[loop_at].exec else {
            unreachable!()
        };
        assert!(w.captured.contains(&x_slot));
        for (i, s) in plan.steps.iter().enumerate() {
            assert_eq!(s.frees.contains(&x_slot), i == loop_at, "step {i} ({})", s.op_type);
        }
        let xs = Tensor::from_vec(vec![2, 3], vec![1f32, -2.0, 3.0, 0.5, 0.0, -1.0]).unwrap();
        let n = Tensor::from_vec(vec![1], vec![5i32]).unwrap();
        let out = plan.run(&inputs(&[("x", xs.clone()), ("n", n)])).unwrap();
        // Even trips add x, odd ones negate: x, 2x, -2x, -x, x, 0... five trips end at 2x.
        let want: Vec<f32> = xs.to_f32_vec().iter().map(|v| 2.0 * v).collect();
        assert_eq!(out["y"].to_f32_vec(), want);
    }

    #[test]
    fn a_constant_predicate_inlines_its_branch() {
        let pkg = fixture("cond_const_true");
        let plan = Plan::build(&pkg, FloatPolicy::Upcast).unwrap();
        assert_eq!(plan.step_histogram().into_keys().collect::<Vec<_>>(), ["relu"]);
        let plan = Plan::build(&fixture("cond_runtime_true"), FloatPolicy::Upcast).unwrap();
        assert!(plan.step_histogram().contains_key("cond"));
    }

    #[test]
    fn lowered_programs_with_blocks_and_lists_run_the_same() {
        let x = Tensor::from_vec(vec![2, 3], vec![0.5f32, -1.0, 2.0, 0.25, 0.0, -0.75]).unwrap();
        let n = |v: i32| Tensor::from_vec(vec![1], vec![v]).unwrap();
        let b = |v: bool| Tensor::from_vec(vec![1], vec![v as u8]).unwrap();
        let cases = [
            ("while_nested_cond", inputs(&[("x", x.clone()), ("n", n(5))])),
            ("cond_const_false", inputs(&[("x", x.clone())])),
            (
                "cond_nested_01",
                inputs(&[("x", x.clone()), ("p", b(false)), ("q", b(true))]),
            ),
            ("list_read_in_loop", inputs(&[("x", x.clone()), ("n", n(4))])),
        ];
        for (case, ins) in cases {
            let pkg = fixture(case);
            let (plan, lowered) = Plan::build_lowered(&pkg, FloatPolicy::Upcast).unwrap();
            let want = plan.run(&ins).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("lowered.mlpackage");
            lowered.write(&pkg, &dest).unwrap();
            let again = Plan::build(&MlPackage::open(&dest).unwrap(), FloatPolicy::Upcast)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            let got = again.run(&ins).unwrap();
            for (k, v) in &want {
                assert_eq!(got[k].as_bytes(), v.as_bytes(), "{case}: output {k}");
            }
        }
    }

    /// Builds a copy of `case` whose first `op_type` op (searched in nested
    /// blocks too) is changed by `edit`; returns the build's error.
    fn build_edited(case: &str, op_type: &str, edit: impl FnOnce(&mut Operation)) -> Error {
        fn find<'a>(b: &'a mut mil_spec::Block, t: &str) -> Option<&'a mut Operation> {
            for op in b.operations.iter_mut() {
                if op.r#type == t {
                    return Some(op);
                }
                for nb in op.blocks.iter_mut() {
                    if let Some(o) = find(nb, t) {
                        return Some(o);
                    }
                }
            }
            None
        }
        crate::mil::test_support::build_edited(&format!("control_flow/{case}"), |block| {
            edit(find(block, op_type).unwrap_or_else(|| panic!("{case}: no {op_type}")))
        })
    }

    #[test]
    fn malformed_blocks_are_errors_naming_the_op() {
        use crate::ErrorKind;
        let e = build_edited("cond_runtime_true", "cond", |op| {
            op.blocks.pop();
        });
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("(cond): 1 blocks"), "{e}");
        let e = build_edited("while_counted_5", "while_loop", |op| {
            op.blocks[1].outputs.pop();
        });
        assert_eq!(e.kind(), ErrorKind::InvalidArtifact, "{e}");
        assert!(e.to_string().contains("body block 2→1"), "{e}");
        let e = build_edited("while_counted_5", "while_loop", |op| {
            op.blocks[1].outputs[1] = "nowhere".into();
        });
        assert!(e.to_string().contains("block output `nowhere` is never defined"), "{e}");
        let e = build_edited("cond_runtime_false", "cond", |op| {
            op.blocks[0].inputs.push(op.outputs[0].clone());
        });
        assert!(e.to_string().contains("a branch with 1 inputs"), "{e}");
        // An op the interpreter lacks, inside a loop body: named up front.
        let e = build_edited("while_nested_cond", "mod", |op| op.r#type = "frobnicate".into());
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("`frobnicate`"), "{e}");
    }

    #[test]
    fn a_list_written_in_a_loop_body_is_updated_in_place() {
        let plan = Plan::build(&fixture("list_write_in_loop_fixed"), FloatPolicy::Upcast).unwrap();
        let mut slots: Vec<Option<RVal>> = vec![None; plan.n_slots];
        let make = plan.steps.iter().position(|s| s.op_type == "make_list").unwrap();
        run_steps(&plan.steps[make..make + 1], &mut slots, &Warm::start()).unwrap();
        let Some(RVal::L(list)) = slots[plan.steps[make].outputs[0]].take() else {
            panic!("no list")
        };
        let before = Arc::as_ptr(&list);
        let lp = plan.steps.iter().position(|s| s.op_type == "while_loop").unwrap();
        let Exec::While(w) = &plan.steps[lp].exec else {
            unreachable!()
        };
        let write = w.body.steps.iter().position(|s| s.op_type == "list_write").unwrap();
        let step = &w.body.steps[write];
        // Operands: ls, index, value; the loop var `ls` dies at this step.
        let [Val::Slot(ls), Val::Slot(i), Val::Slot(v)] = step.operands.as_slice() else {
            panic!("operands")
        };
        assert!(step.frees.contains(ls));
        slots[*ls] = Some(RVal::L(list));
        slots[*i] = Some(RVal::T(CTensor::new(2i64, &Device::Cpu).unwrap()));
        slots[*v] = Some(RVal::T(CTensor::ones((2, 3), CDType::F32, &Device::Cpu).unwrap()));
        run_steps(std::slice::from_ref(step), &mut slots, &Warm::start()).unwrap();
        let Some(RVal::L(after)) = &slots[step.outputs[0]] else {
            panic!("no list out")
        };
        assert_eq!(Arc::as_ptr(after), before, "the list was copied");
        assert!(slots[*ls].is_none());
    }

    #[test]
    fn lists_and_tensors_in_each_others_place_are_refused_at_build() {
        use mil_spec::argument::binding::Binding;
        let e = build_edited("list_length_grown", "list_gather", |op| {
            let ls = op.inputs["ls"].clone();
            op.inputs.insert("indices".into(), ls);
        });
        assert!(
            e.to_string()
                .contains("argument `indices` is a list where a tensor is expected"),
            "{e}"
        );
        let e = build_edited("list_length_grown", "list_length", |op| {
            op.inputs.get_mut("ls").unwrap().arguments[0].binding = Some(Binding::Name("x".into()));
        });
        assert!(
            e.to_string().contains("(list_length)") && e.to_string().contains("`ls` is not a list"),
            "{e}"
        );
    }

    #[test]
    fn step_counts_include_the_steps_inside_blocks() {
        let pkg = fixture("list_length_grown");
        let plan = Plan::build(&pkg, FloatPolicy::Native).unwrap();
        assert!(plan.step_histogram()["list_write"] == 1 && plan.step_count() > plan.steps.len());
    }
}
