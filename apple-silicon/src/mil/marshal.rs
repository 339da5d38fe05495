//! Inputs converted ahead of a run. A caller that must hand its inputs to
//! another thread (the engine's deadline worker, which may outlive the call)
//! converts them into the interpreter's own tensors first, on its own
//! thread, and hands those over: one copy of each input instead of two (a
//! clone of the caller's map, then the conversion on the worker).

use std::time::{Duration, Instant};

use candle_core::Tensor as CTensor;

use super::{candle_err, to_candle, CancelFlag, Plan};
use crate::deadline::Reply;
use crate::error::{Error, Result};
use crate::telemetry::StageTimings;
use crate::tensor::TensorMap;

/// A program's inputs as the interpreter's tensors, made by
/// [`Plan::prepare_inputs`] and consumed by [`Plan::run_prepared`]. Owns
/// its data (`Send`, `'static`): it can move to another thread while the
/// caller's map goes away.
#[derive(Debug)]
pub struct PlanInputs {
    /// (slot, tensor) per program input.
    pub(super) tensors: Vec<(usize, CTensor)>,
    /// How long the conversion took (reported as `marshal_in`).
    pub(super) took: Duration,
}

/// What a run starts from: the caller's map, converted inside the run, or
/// inputs converted beforehand.
pub(super) enum RunInputs<'a> {
    Host(&'a TensorMap),
    Prepared(PlanInputs),
}

impl RunInputs<'_> {
    /// Time already spent converting before the run began.
    pub(super) fn converted_before(&self) -> Duration {
        match self {
            RunInputs::Host(_) => Duration::ZERO,
            RunInputs::Prepared(p) => p.took,
        }
    }

    /// The converted inputs, converting now if they are still the caller's.
    pub(super) fn into_prepared(self, plan: &Plan) -> Result<PlanInputs> {
        match self {
            RunInputs::Host(m) => plan.prepare_inputs(m),
            RunInputs::Prepared(p) => Ok(p),
        }
    }
}

impl Plan {
    /// Converts `inputs` (already checked against the model's schema, see
    /// [`crate::IoSchema::validate_inputs`]) into the interpreter's tensors
    /// for [`Plan::run_prepared`]: the `marshal_in` stage of a run, done on
    /// the calling thread. Costs one copy of each input (two for `int8`,
    /// widened to i64, or for an fp16 input computed in f32). A missing input
    /// is [`Error::SchemaMismatch`]; extra entries are ignored, as by
    /// [`Plan::run`].
    pub fn prepare_inputs(&self, inputs: &TensorMap) -> Result<PlanInputs> {
        let started = Instant::now();
        let mut tensors = Vec::with_capacity(self.inputs.len());
        for inp in &self.inputs {
            let t = inputs.get(&inp.name).ok_or_else(|| {
                Error::schema_mismatch(format!("input `{}`", inp.name), "the input to be present", "nothing")
            })?;
            tensors.push((
                inp.slot,
                to_candle(t, self.policy).map_err(|e| candle_err(&inp.name, "input", e))?,
            ));
        }
        Ok(PlanInputs {
            tensors,
            took: started.elapsed(),
        })
    }

    /// [`Plan::run_timed`] on inputs converted by [`Plan::prepare_inputs`]
    /// (of this plan: inputs of another plan are refused by slot count only,
    /// so keep them together). `marshal_in` is the time the conversion took.
    pub fn run_prepared(&self, inputs: PlanInputs, cancel: Option<&CancelFlag>) -> Result<(TensorMap, StageTimings)> {
        if inputs.tensors.iter().any(|(slot, _)| *slot >= self.n_slots) {
            return Err(Error::internal("inputs prepared by another plan"));
        }
        self.run_guarded(RunInputs::Prepared(inputs), None, cancel)
            .map(|r| (r.outputs, r.timings))
    }

    /// [`Plan::run_prepared`], its result sent to `reply` from the pool
    /// thread that finished the run, before that thread hands control back:
    /// a caller waiting on `reply` elsewhere (the engine's caller, behind
    /// its deadline worker) wakes one thread hand-off sooner. A panic is
    /// sent as [`Error::Internal`], as by `run_prepared`. Costs nothing
    /// beyond `run_prepared`.
    pub fn run_prepared_replying(
        &self,
        inputs: PlanInputs,
        cancel: Option<&CancelFlag>,
        reply: &Reply<(TensorMap, StageTimings)>,
    ) {
        if inputs.tensors.iter().any(|(slot, _)| *slot >= self.n_slots) {
            return reply.send(Err(Error::internal("inputs prepared by another plan")));
        }
        let caught = self.run_guarded_then(RunInputs::Prepared(inputs), None, cancel, |ran| {
            reply.send(ran.map(|r| (r.outputs, r.timings)))
        });
        if let Err(msg) = caught {
            reply.send(Err(super::panicked(&msg)));
        }
    }
}
