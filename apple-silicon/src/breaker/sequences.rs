//! [`ResilientEngine`]'s stateful steps and batches.
//!
//! A state belongs to the engine that made it: a KV cache Core ML keeps in
//! an `MLState` cannot be continued by Candle, nor the other way round. So
//! the engine serving a model when its state is made (the primary while its
//! breaker is closed and it can make one, else the fallback) serves every
//! step of that state. A step on a primary's state never falls back; once
//! the breaker has opened it is refused, naming why, and the caller starts a
//! new sequence with a new state (which the fallback then makes). Batches
//! have no such tie: they go to the primary under the breaker and fall back
//! as one batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{kind_of, lock, CallOutcome, ResilientEngine, ResilientModel, Route, Served};
use crate::deadline::Deadline;
use crate::error::{Error, ErrorKind, Result};
use crate::inference::{downcast_model, ModelState, PreparedModel};
use crate::telemetry::StageTimings;
use crate::tensor::TensorMap;

const ENGINE: &str = "resilient";

/// What a resilient [`ModelState`] holds: the state of the engine that made
/// it, and which engine that was.
struct ResilientState {
    by_primary: bool,
    inner: ModelState,
}

impl ResilientEngine {
    pub(super) fn make_state_impl(&self, model: &dyn PreparedModel) -> Result<ModelState> {
        let rm = downcast_model::<ResilientModel>(model, ENGINE)?;
        let primary_serves = rm.primary.is_some() && rm.breaker.state() == super::BreakerState::Closed;
        if let (true, Some(p)) = (primary_serves, &rm.primary) {
            match self.primary.make_state(&**p) {
                Ok(inner) => return Ok(wrap(rm, true, inner)),
                Err(e) => {
                    tracing::info!(target: "apple_silicon::breaker", model = %rm.model_id, error = %e,
                        "the primary could not make a state: the fallback makes it and serves its sequence");
                }
            }
        }
        let inner = self.fallback.make_state(&*rm.fallback)?;
        Ok(wrap(rm, false, inner))
    }

    pub(super) fn infer_with_state_impl(
        &self,
        model: &dyn PreparedModel,
        state: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<TensorMap> {
        let rm = downcast_model::<ResilientModel>(model, ENGINE)?;
        let st = state.inner_for::<ResilientState>(ENGINE, &rm.key)?;
        rm.schema.validate_inputs(inputs)?;
        let r = if st.by_primary {
            self.primary_step(rm, &mut st.inner, inputs, timeout)
        } else {
            let t0 = Instant::now();
            let r = self
                .fallback
                .infer_with_state(&*rm.fallback, &mut st.inner, inputs, timeout);
            rm.fallback_tel
                .record_inference(&StageTimings::total(t0.elapsed()), kind_of(&r));
            // Why the fallback made this state: no primary model, an open
            // breaker, or a primary that could not make one.
            rm.served(match (&rm.primary, rm.breaker.state()) {
                (None, _) => Served::FallbackPrimaryUnavailable,
                (Some(_), super::BreakerState::Closed) => Served::FallbackAfterPrimaryError,
                (Some(_), _) => Served::FallbackBreakerOpen,
            });
            r
        };
        if r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Timeout) {
            state.poison();
        }
        r
    }

    /// One step on a state the primary made: under the breaker, never
    /// falling back.
    fn primary_step(
        &self,
        rm: &ResilientModel,
        inner: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<TensorMap> {
        let p = rm
            .primary
            .as_ref()
            .ok_or_else(|| Error::internal("a state made by the primary for a model it has no copy of"))?;
        let route = rm.breaker.admit();
        if route == Route::Fallback {
            return Err(Error::Unavailable {
                engine: ENGINE.into(),
                reason: format!(
                    "this state was made by {} and the breaker now serves this model from {} ({}); a state cannot \
                     move between engines mid-sequence: make a new state (the fallback will serve it)",
                    self.primary.name(),
                    self.fallback.name(),
                    rm.breaker
                        .stats()
                        .last_trip
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "breaker open".into())
                ),
            });
        }
        let t0 = Instant::now();
        let r = match &self.guard {
            Some(runner) => {
                let deadline = Deadline::after(timeout);
                let (engine, model, inputs) = (self.primary.clone(), Arc::clone(p), inputs.clone());
                let mut moved = inner.take();
                let ran = runner.run(&self.primary_op, timeout, move || {
                    let out = engine.infer_with_state(&*model, &mut moved, &inputs, deadline.remaining());
                    Ok((moved, out))
                });
                match ran {
                    Ok((back, out)) => {
                        inner.restore(back);
                        out
                    }
                    Err(e) => Err(e),
                }
            }
            None => self.primary.infer_with_state(&**p, inner, inputs, timeout),
        };
        let latency = t0.elapsed();
        rm.primary_tel
            .record_inference(&StageTimings::total(latency), kind_of(&r));
        let outcome = match &r {
            Ok(_) => CallOutcome::ok(latency),
            Err(e) => CallOutcome::failed(e.kind(), latency),
        };
        if let Some(bytes) = rm.breaker.record(route, outcome) {
            rm.primary_tel.record_memory(bytes);
        }
        match &r {
            Ok(_) => rm.served(Served::Primary),
            Err(e) => *lock(&rm.last_primary_error) = Some(e.to_string()),
        }
        r
    }

    pub(super) fn infer_batch_impl(
        &self,
        model: &dyn PreparedModel,
        batch: &[TensorMap],
        timeout: Duration,
    ) -> Result<Vec<TensorMap>> {
        let rm = downcast_model::<ResilientModel>(model, ENGINE)?;
        rm.schema.validate_batch(batch)?;
        let mut out = None;
        self.route(
            rm,
            timeout,
            &mut out,
            |out, primary, budget| {
                let t0 = Instant::now();
                *out = Some(match &self.guard {
                    Some(runner) => {
                        self.on_guard(runner, primary, batch.to_vec(), budget, |engine, model, batch, left| {
                            engine.infer_batch(model, &batch, left?)
                        })?
                    }
                    None => self.primary.infer_batch(&**primary, batch, budget)?,
                });
                Ok(StageTimings::total(t0.elapsed()))
            },
            |out, left| {
                let t0 = Instant::now();
                *out = Some(self.fallback.infer_batch(&*rm.fallback, batch, left)?);
                Ok(StageTimings::total(t0.elapsed()))
            },
        )?;
        out.ok_or_else(|| Error::internal("resilient batch succeeded without outputs"))
    }
}

fn wrap(rm: &ResilientModel, by_primary: bool, inner: ModelState) -> ModelState {
    ModelState::new(ENGINE, rm.key.clone(), Box::new(ResilientState { by_primary, inner }))
}
