//! Stateful programs (coremltools iOS18 `states.py`, and the
//! `coreml_update_state` of its Core ML dialect): `read_state`,
//! `write_state`.
//!
//! Conventions: a state is a main-function input of state type
//! (`ct.StateType`, `mb.StateTensorSpec`) wrapping a fixed-shape tensor. The
//! caller owns the states: a stateful run ([`crate::mil::Plan::run_with_state`])
//! takes a map holding every state by name, loads each into a slot of its
//! own, and hands the slots' final values back only once the whole run has
//! succeeded. `read_state(input)` returns the state's current value;
//! `write_state(input, data)` replaces it (same shape and dtype) and has no
//! output: the plan makes the state's slot the step's output. A saved
//! package never holds `coreml_update_state`: coremltools writes it as
//! `write_state` followed by `read_state`. Only these two ops may take a
//! state; a state slot is never freed, and an op reading one is never
//! folded (its operand is a run-time slot), so `read_state` always sees
//! the run's value.

use super::Builder;
use crate::error::{Error, Result};
use crate::mil::block::RVal;
use crate::mil::{candle_err, from_candle, to_candle, CancelFlag, FloatPolicy, Kernel, OpCtx, Plan, RunInputs, Val};
use crate::tensor::{DType, TensorMap};
use coreml_proto::proto::mil_spec::argument::binding::Binding;

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "read_state" => read_state,
        "write_state" => write_state,
        _ => return None,
    })
}

/// One state of a plan: the slot that holds its value during a run, and
/// the dtype and shape the caller's tensor must have.
pub(crate) struct StateSlot {
    pub name: String,
    pub slot: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

// The stateful run entries: the run itself is Plan::run_guarded, which
// loads and stores the states with `load` and `store` below.
impl Plan {
    /// The program's states (name, dtype, shape), in the function's order;
    /// empty for a stateless program. A stateful program runs with
    /// [`Plan::run_with_state`].
    pub fn states(&self) -> Vec<(String, DType, Vec<usize>)> {
        self.states
            .iter()
            .map(|s| (s.name.clone(), s.dtype, s.shape.clone()))
            .collect()
    }

    /// Runs a stateful program (Core ML `StateType` inputs, iOS18+) with a
    /// caller-owned state: `state` must hold every state of the program by
    /// name, in its declared dtype and shape ([`Plan::states`]), and nothing
    /// else, or the run is [`Error::SchemaMismatch`] naming the state.
    /// `read_state` reads it, `write_state` replaces it; once the run has
    /// succeeded, `state` holds the new values (the same map can drive the
    /// next run). A run that fails leaves `state` unchanged. Works on a
    /// stateless program too, with an empty map.
    pub fn run_with_state(&self, inputs: &TensorMap, state: &mut TensorMap) -> Result<TensorMap> {
        self.run_with_state_cancellable(inputs, state, None)
    }

    /// [`Plan::run_with_state`] stopping at the next op once `cancel` is set
    /// (as [`Plan::run_cancellable`]); a cancelled run leaves `state` unchanged.
    pub fn run_with_state_cancellable(
        &self,
        inputs: &TensorMap,
        state: &mut TensorMap,
        cancel: Option<&CancelFlag>,
    ) -> Result<TensorMap> {
        let ran = self.run_guarded(RunInputs::Host(inputs), Some(state), cancel)?;
        // Only now, after the whole run succeeded: every state at once.
        state.extend(ran.states);
        Ok(ran.outputs)
    }
}

/// Name of the state bound to `input` (for messages).
fn state_name(c: &OpCtx) -> String {
    match c.binding("input") {
        Some(Binding::Name(n)) => n.clone(),
        _ => "<not a state>".into(),
    }
}

fn read_state(c: &mut OpCtx) -> Result<Kernel> {
    let s = c.tensor("input")?;
    // A copy of the value now: candle tensors are immutable, so a later
    // write_state (which replaces the slot) cannot change it.
    Ok(Box::new(move |a| Ok(vec![a[s].clone()])))
}

fn write_state(c: &mut OpCtx) -> Result<Kernel> {
    let s = c.tensor("input")?;
    let d = c.tensor("data")?;
    let name = state_name(c);
    Ok(Box::new(move |a| {
        let (st, data) = (a[s], a[d]);
        if st.dims() != data.dims() || st.dtype() != data.dtype() {
            candle_core::bail!(
                "writing state `{name}`: data of shape {:?} ({:?}), but the state is {:?} ({:?})",
                data.dims(),
                data.dtype(),
                st.dims(),
                st.dtype()
            )
        }
        Ok(vec![data.clone()])
    }))
}

/// Plan-builder hook, called on every op's resolved operands: only
/// `read_state` and `write_state` may take a state, and theirs (`input`, the
/// first operand) must be one. Returns the state slot a `write_state`
/// writes, which the plan makes the step's output.
pub(crate) fn check_operands(c: &OpCtx, operands: &[Val], states: &[StateSlot]) -> Result<Option<usize>> {
    let state_of = |v: &Val| match v {
        Val::Slot(s) => states.iter().find(|st| st.slot == *s),
        Val::Const(_) => None,
    };
    let op_type = c.op.r#type.as_str();
    let is_state_op = builder(op_type).is_some();
    for (i, v) in operands.iter().enumerate() {
        if let Some(st) = state_of(v) {
            if !is_state_op || i > 0 {
                return Err(c.error(format!(
                    "takes state `{}` as a tensor; only read_state and write_state take a state",
                    st.name
                )));
            }
        }
    }
    if !is_state_op {
        return Ok(None);
    }
    let Some(st) = operands.first().and_then(state_of) else {
        return Err(c.error(format!(
            "argument `input` (`{}`) is not a state input of the program",
            state_name(c)
        )));
    };
    Ok((op_type == "write_state").then_some(st.slot))
}

/// Loads the caller's states into their slots, checking that `states` holds
/// exactly the plan's states with their dtypes and shapes. A stateful plan
/// run without a state map is an error naming the states it needs.
pub(crate) fn load(
    plan_states: &[StateSlot],
    states: Option<&TensorMap>,
    policy: FloatPolicy,
    slots: &mut [Option<RVal>],
) -> Result<()> {
    let names = || plan_states.iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
    let Some(states) = states else {
        if plan_states.is_empty() {
            return Ok(());
        }
        return Err(Error::schema_mismatch(
            "states of a stateful program",
            format!("a state map holding {:?} (Plan::run_with_state)", names()),
            "a run without state (Plan::run)",
        ));
    };
    for st in plan_states {
        let t = states.get(&st.name).ok_or_else(|| {
            let given: Vec<&str> = states.keys().map(String::as_str).collect();
            Error::schema_mismatch(
                format!("state `{}`", st.name),
                "the state to be present",
                format!("states {given:?}"),
            )
        })?;
        if t.dtype() != st.dtype {
            return Err(Error::schema_mismatch(
                format!("dtype of state `{}`", st.name),
                st.dtype.name(),
                t.dtype().name(),
            ));
        }
        if t.shape() != st.shape.as_slice() {
            return Err(Error::schema_mismatch(
                format!("shape of state `{}`", st.name),
                format!("{:?}", st.shape),
                format!("{:?}", t.shape()),
            ));
        }
        slots[st.slot] = Some(RVal::T(
            to_candle(t, policy).map_err(|e| candle_err(&st.name, "state", e))?,
        ));
    }
    if let Some(extra) = states.keys().find(|k| !plan_states.iter().any(|s| &s.name == *k)) {
        return Err(Error::schema_mismatch(
            format!("state `{extra}`"),
            format!("only the program's states {:?}", names()),
            format!("an unknown state `{extra}`"),
        ));
    }
    Ok(())
}

/// The states' values at the end of a run, in their declared dtypes.
pub(crate) fn store(plan_states: &[StateSlot], slots: &[Option<RVal>]) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for st in plan_states {
        let Some(RVal::T(t)) = &slots[st.slot] else {
            return Err(Error::internal(format!("state `{}` lost its value", st.name)));
        };
        out.insert(
            st.name.clone(),
            from_candle(t, st.dtype).map_err(|e| candle_err(&st.name, "state", e))?,
        );
    }
    Ok(out)
}
