//! The Candle engine's states of stateful ML Programs (Core ML `StateType`,
//! iOS18): a [`ModelState`] holding every state tensor of one prepared model
//! (and function) by name. The engine runs a step on a copy and puts the
//! copy's final values back only when the whole run succeeded, so a failed
//! run leaves the state as it was and a run that times out (its worker may
//! still be running) can never write into it.

use crate::error::{Error, Result};
use crate::inference::{IoSchema, ModelState};
use crate::tensor::{checked_numel, Tensor, TensorMap};

/// The engine name a Candle state is made by.
pub(super) const ENGINE: &str = "candle";

/// What a Candle [`ModelState`] holds: every state tensor by name, in its
/// declared dtype and shape.
pub(super) struct CandleState {
    pub(super) tensors: TensorMap,
}

/// The owner a state of this model and function is made for: the model's
/// cache key (which names the function of a multifunction package) and
/// the function.
pub(super) fn owner(cache_key: &str, function: &str) -> String {
    format!("{cache_key}#{function}")
}

/// A fresh state for a model of schema `schema`: every state zeroed, as
/// `MLModel.makeState()` does. The sizes come from the package, so they are
/// checked against `limit` bytes (the plan's memory budget) before anything
/// is allocated. Costs the states' size in zeroed memory.
pub(super) fn fresh(schema: &IoSchema, owner: String, limit: u64) -> Result<ModelState> {
    if schema.states.is_empty() {
        return Err(Error::schema_mismatch(
            "model state",
            "a stateful model (one with StateType inputs)",
            "a model that declares no states",
        ));
    }
    let mut total: u64 = 0;
    for s in &schema.states {
        let bytes = checked_numel(&s.shape)
            .and_then(|n| n.checked_mul(s.dtype.size_in_bytes()))
            .map(|b| b as u64);
        total = match bytes.and_then(|b| total.checked_add(b)) {
            Some(t) if t <= limit => t,
            _ => {
                return Err(Error::MemoryPressure {
                    message: format!(
                        "state `{}` ({} {:?}) takes the model's states past its memory budget of {limit} bytes",
                        s.name,
                        s.dtype.name(),
                        s.shape
                    ),
                })
            }
        };
    }
    let tensors = schema
        .states
        .iter()
        .map(|s| Ok((s.name.clone(), Tensor::zeros(s.dtype, s.shape.clone())?)))
        .collect::<Result<TensorMap>>()?;
    Ok(ModelState::new(ENGINE, owner, Box::new(CandleState { tensors })))
}

/// The state's tensors, by name (a copy). Refuses a state another engine
/// made; reads a poisoned one (it holds what it held before the run that
/// timed out).
pub(super) fn read(state: &ModelState) -> Result<TensorMap> {
    Ok(state.inner_ref::<CandleState>(ENGINE)?.tensors.clone())
}

/// Replaces the state's tensors with `tensors`, which must be exactly the
/// model's states in their dtypes and shapes (checked before anything
/// changes).
pub(super) fn write(state: &mut ModelState, owner: &str, schema: &IoSchema, tensors: TensorMap) -> Result<()> {
    schema.validate_states(&tensors)?;
    state.inner_for::<CandleState>(ENGINE, owner)?.tensors = tensors;
    Ok(())
}
