//! [`ResilientEngine`]: the primary engine under a breaker, with the fallback answering whatever it cannot.

use super::*;

/// Who answered a call, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Served {
    /// The primary.
    Primary,
    /// The fallback, because the primary failed this call.
    FallbackAfterPrimaryError,
    /// The fallback, because the breaker is open.
    FallbackBreakerOpen,
    /// The fallback, because the primary could not prepare the model.
    FallbackPrimaryUnavailable,
}

impl Served {
    pub(super) fn code(self) -> u8 {
        match self {
            Served::Primary => 1,
            Served::FallbackAfterPrimaryError => 2,
            Served::FallbackBreakerOpen => 3,
            Served::FallbackPrimaryUnavailable => 4,
        }
    }

    pub(super) fn from_code(c: u8) -> Option<Served> {
        Some(match c {
            1 => Served::Primary,
            2 => Served::FallbackAfterPrimaryError,
            3 => Served::FallbackBreakerOpen,
            4 => Served::FallbackPrimaryUnavailable,
            _ => return None,
        })
    }
}

/// A model prepared by a [`ResilientEngine`]: the primary's model (if the
/// primary could prepare it), the fallback's, the breaker and the telemetry.
pub struct ResilientModel {
    pub(super) model_id: String,
    pub(super) key: String,
    pub(super) schema: IoSchema,
    pub(super) sla: Duration,
    pub(super) primary: Option<Arc<dyn PreparedModel>>,
    pub(super) primary_unavailable: Option<String>,
    pub(super) fallback: Arc<dyn PreparedModel>,
    pub(super) breaker: Arc<CircuitBreaker>,
    pub(super) primary_tel: Arc<ModelTelemetry>,
    pub(super) fallback_tel: Arc<ModelTelemetry>,
    pub(super) last_served: AtomicU8,
    pub(super) last_primary_error: Mutex<Option<String>>,
}

impl ResilientModel {
    /// The identifier used in telemetry: `{file name}@{first 12 hex of sha256}`.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The breaker guarding the primary for this model.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Whether the primary prepared this model.
    pub fn primary_available(&self) -> bool {
        self.primary.is_some()
    }

    /// Why the primary could not prepare this model, if it could not.
    pub fn primary_unavailable_reason(&self) -> Option<&str> {
        self.primary_unavailable.as_deref()
    }

    /// Who answered the most recent call.
    pub fn last_served(&self) -> Option<Served> {
        Served::from_code(self.last_served.load(Ordering::Relaxed))
    }

    /// The most recent primary error, as text.
    pub fn last_primary_error(&self) -> Option<String> {
        lock(&self.last_primary_error).clone()
    }

    /// Telemetry of the primary for this model.
    pub fn primary_telemetry(&self) -> &Arc<ModelTelemetry> {
        &self.primary_tel
    }

    /// Telemetry of the fallback for this model.
    pub fn fallback_telemetry(&self) -> &Arc<ModelTelemetry> {
        &self.fallback_tel
    }

    pub(super) fn served(&self, s: Served) {
        self.last_served.store(s.code(), Ordering::Relaxed);
    }
}

impl PreparedModel for ResilientModel {
    fn cache_key(&self) -> &str {
        &self.key
    }
    fn io_schema(&self) -> &IoSchema {
        &self.schema
    }
    fn sla_estimate(&self) -> Duration {
        self.sla
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An engine that serves each model from a primary (Core ML on a Mac) and
/// falls back to a second engine (Candle, on the same package) when the
/// primary cannot prepare the model, when a primary call fails, or when the
/// model's [`CircuitBreaker`] has tripped.
///
/// - `prepare` prepares on both engines at once. The fallback must succeed
///   (its error is returned otherwise: the engine's promise is that a
///   fallback exists). The primary may fail — `Unavailable` on Linux, or any
///   error — and then the fallback serves the model, with the reason kept in
///   the capability report's notes.
/// - `infer` checks the inputs against the schema first (a caller's mistake
///   is returned as `SchemaMismatch` and blamed on neither engine). A
///   primary call gets `primary_share` of the timeout (default half) and
///   runs on a [`DeadlineRunner`], so even a hung primary returns `Timeout`
///   within its share; a failed primary call (any error) is retried on the
///   fallback within the rest of the caller's deadline. Once the breaker has
///   tripped, calls go straight to the fallback: callers only see errors the
///   fallback itself returns.
/// - Telemetry per model and engine is in [`Self::telemetry`].
///
/// Cost per call on top of the engines: a schema check, a breaker lock, a few
/// atomic counters and histogram records, and for a guarded primary call one
/// copy of the inputs plus a thread hand-off (about 5–30 µs).
///
/// ```
/// use std::time::Duration;
/// use apple_silicon::testing::{fake_artifact, EchoEngine, FaultyEngine};
/// use apple_silicon::{DType, InferenceEngine, IoSchema, PrepareOptions, ResilientEngine, Tensor, TensorMap, TensorSpec};
///
/// let schema = IoSchema {
///     inputs: vec![TensorSpec::fixed("x", DType::F32, vec![2])],
///     outputs: vec![TensorSpec::fixed("y", DType::F32, vec![2])],
///     states: vec![],
///     classifier: None,
///     functions: Default::default(),
/// };
/// // As on Linux: the primary cannot prepare, the fallback serves.
/// let coreml = FaultyEngine::echo("coreml", schema.clone()).unavailable("no Core ML on this host");
/// let engine = ResilientEngine::new(Box::new(coreml), Box::new(EchoEngine::new("candle", schema)));
/// let model = engine.prepare(&fake_artifact("m"), PrepareOptions::default())?;
/// let x = TensorMap::from([("x".to_string(), Tensor::from_vec(vec![2], vec![1f32, 2.0])?)]);
/// let y = engine.infer(&*model, &x, Duration::from_millis(100))?;
/// assert_eq!(y["y"], x["x"]);
/// let report = engine.capabilities(&*model);
/// assert_eq!(report.engine, "candle");
/// assert!(report.notes[0].contains("could not prepare the model: coreml is unavailable"));
/// # Ok::<(), apple_silicon::Error>(())
/// ```
pub struct ResilientEngine {
    pub(super) primary: Arc<dyn InferenceEngine>,
    pub(super) fallback: Arc<dyn InferenceEngine>,
    pub(super) primary_op: String,
    pub(super) config: BreakerConfig,
    pub(super) telemetry: Arc<TelemetryRegistry>,
    pub(super) primary_share: f64,
    pub(super) guard: Option<DeadlineRunner>,
}

impl ResilientEngine {
    /// Serves from `primary`, falling back to `fallback`, with the plan's
    /// breaker rules ([`BreakerConfig::default`]) and a guard runner for the
    /// primary.
    pub fn new(primary: Box<dyn InferenceEngine>, fallback: Box<dyn InferenceEngine>) -> ResilientEngine {
        let primary: Arc<dyn InferenceEngine> = Arc::from(primary);
        let guard = DeadlineRunner::new(format!("{}-guard", primary.name()));
        ResilientEngine {
            primary_op: format!("{} inference", primary.name()),
            primary,
            fallback: Arc::from(fallback),
            config: BreakerConfig::default(),
            telemetry: Arc::new(TelemetryRegistry::new()),
            primary_share: 0.5,
            guard: Some(guard),
        }
    }

    /// Replaces the breaker configuration (for models prepared afterwards).
    pub fn with_breaker(mut self, config: BreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the re-enable policy.
    pub fn with_policy(mut self, policy: ReenablePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Sets the SLA the breaker checks p99 against (otherwise the model's).
    pub fn with_sla(mut self, sla: Duration) -> Self {
        self.config.sla = Some(sla);
        self
    }

    /// Sets the memory limit that trips the breaker.
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.config.memory_limit_bytes = Some(bytes);
        self
    }

    /// Sets the memory probe.
    pub fn with_memory_probe(mut self, probe: MemoryProbe) -> Self {
        self.config.memory_probe = probe;
        self
    }

    /// Sets the share of each call's timeout the primary may use before the
    /// fallback is tried (clamped to 0.05..=1; at 1 a failing primary leaves
    /// the fallback no time).
    pub fn with_primary_share(mut self, share: f64) -> Self {
        self.primary_share = share.clamp(0.05, 1.0);
        self
    }

    /// Runs primary calls on `runner` (to share or tune its limits).
    pub fn with_deadline_runner(mut self, runner: DeadlineRunner) -> Self {
        self.guard = Some(runner);
        self
    }

    /// Calls the primary on the caller's thread, trusting it to honour its
    /// timeout (saves an input copy and a hand-off per call).
    pub fn without_primary_guard(mut self) -> Self {
        self.guard = None;
        self
    }

    /// Records into `registry` instead of a registry of its own.
    pub fn with_telemetry(mut self, registry: Arc<TelemetryRegistry>) -> Self {
        self.telemetry = registry;
        self
    }

    /// The telemetry registry: one entry per model and engine.
    pub fn telemetry(&self) -> &Arc<TelemetryRegistry> {
        &self.telemetry
    }

    /// Telemetry snapshots of `model` for the primary and the fallback.
    pub fn snapshots(&self, model: &dyn PreparedModel) -> Result<(TelemetrySnapshot, TelemetrySnapshot)> {
        let rm = downcast_model::<ResilientModel>(model, "resilient")?;
        Ok((rm.primary_tel.snapshot(), rm.fallback_tel.snapshot()))
    }

    /// The guard runner of the primary, if any (for its stats).
    pub fn deadline_runner(&self) -> Option<&DeadlineRunner> {
        self.guard.as_ref()
    }

    /// The breaker of `model`.
    pub fn breaker(&self, model: &dyn PreparedModel) -> Result<Arc<CircuitBreaker>> {
        Ok(downcast_model::<ResilientModel>(model, "resilient")?.breaker.clone())
    }

    /// Manual re-enable: closes `model`'s breaker so calls go to the primary
    /// again. Fails if the primary never prepared the model (there is
    /// nothing to re-enable).
    pub fn reenable_primary(&self, model: &dyn PreparedModel) -> Result<()> {
        let rm = downcast_model::<ResilientModel>(model, "resilient")?;
        if let Some(reason) = &rm.primary_unavailable {
            return Err(Error::Unavailable {
                engine: self.primary.name().to_string(),
                reason: format!("it could not prepare this model, so it cannot be re-enabled: {reason}"),
            });
        }
        rm.breaker.reset();
        Ok(())
    }

    pub(super) fn prepare_primary(
        &self,
        artifact: &ModelArtifact,
        opts: PrepareOptions,
    ) -> Result<Box<dyn PreparedModel>> {
        match &self.guard {
            Some(runner) => {
                let engine = self.primary.clone();
                let artifact = artifact.clone();
                let timeout = opts.prepare_timeout;
                runner.run(&format!("{} prepare", self.primary.name()), timeout, move || {
                    engine.prepare(&artifact, opts)
                })
            }
            None => self.primary.prepare(artifact, opts),
        }
    }

    /// Runs `call` on the primary on the guard's worker, which owns a copy
    /// of the model handle and `payload` (the inputs, or a batch); `call`
    /// gets what is left of `budget`, or the timeout error when the wait for
    /// a worker used it up.
    pub(super) fn on_guard<P: Send + 'static, T: Send + 'static>(
        &self,
        runner: &DeadlineRunner,
        model: &Arc<dyn PreparedModel>,
        payload: P,
        budget: Duration,
        call: impl FnOnce(&dyn InferenceEngine, &dyn PreparedModel, P, Result<Duration>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let deadline = Deadline::after(budget);
        let (engine, model) = (self.primary.clone(), model.clone());
        runner.run(&self.primary_op, budget, move || {
            let left = deadline.remaining();
            let left = if left.is_zero() {
                Err(deadline.timeout_error("primary inference (waited for a worker)"))
            } else {
                Ok(left)
            };
            call(&*engine, &*model, payload, left)
        })
    }

    pub(super) fn call_primary(
        &self,
        model: &Arc<dyn PreparedModel>,
        inputs: &TensorMap,
        budget: Duration,
    ) -> Result<(TensorMap, StageTimings)> {
        match &self.guard {
            Some(runner) => self.on_guard(runner, model, inputs.clone(), budget, |engine, model, inputs, left| {
                engine.infer_timed(model, &inputs, left?)
            }),
            None => self.primary.infer_timed(&**model, inputs, budget),
        }
    }

    /// [`Self::call_primary`] for `infer_into`: under a guard the output
    /// map moves to the guard's worker and back (a move, not a copy), so
    /// the primary still writes into the caller's buffers. It comes back
    /// after a failed call too; only after the guard's timeout does the
    /// worker keep it, and `outputs` is left empty.
    pub(super) fn call_primary_into(
        &self,
        model: &Arc<dyn PreparedModel>,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        budget: Duration,
    ) -> Result<StageTimings> {
        let t0 = Instant::now();
        match &self.guard {
            Some(runner) => {
                let mut moved = std::mem::take(outputs);
                // The map comes back with the primary's own result, so that
                // a failed call leaves the buffers to the fallback.
                let (back, r) = self.on_guard(
                    runner,
                    model,
                    inputs.clone(),
                    budget,
                    move |engine, model, inputs, left| {
                        let r = left.and_then(|left| engine.infer_into(model, &inputs, &mut moved, left));
                        Ok((moved, r))
                    },
                )?;
                *outputs = back;
                r?;
            }
            None => self.primary.infer_into(&**model, inputs, outputs, budget)?,
        }
        Ok(StageTimings::total(t0.elapsed()))
    }

    /// One call's route (inputs already validated): the primary under the
    /// breaker when it admits the call (within `primary_share` of
    /// `timeout`), else, or after a primary failure, the fallback within
    /// what is left. `primary` and `fallback` run the call (an inference,
    /// `infer_into`, a batch) on `out`; telemetry and the breaker see every
    /// attempt.
    pub(super) fn route<O: ?Sized>(
        &self,
        rm: &ResilientModel,
        timeout: Duration,
        out: &mut O,
        primary: impl FnOnce(&mut O, &Arc<dyn PreparedModel>, Duration) -> Result<StageTimings>,
        fallback: impl FnOnce(&mut O, Duration) -> Result<StageTimings>,
    ) -> Result<()> {
        let deadline = Deadline::after(timeout);
        let mut served = Served::FallbackPrimaryUnavailable;
        if let Some(primary_model) = &rm.primary {
            let route = rm.breaker.admit();
            if route == Route::Fallback {
                served = Served::FallbackBreakerOpen;
            } else {
                let budget = timeout.mul_f64(self.primary_share);
                let t0 = Instant::now();
                let r = primary(out, primary_model, budget);
                let latency = t0.elapsed();
                // The engine's stages, and the total as this call saw it
                // (including any wait for a guard worker).
                let timings = match &r {
                    Ok(t) => StageTimings {
                        total: Some(latency),
                        ..*t
                    },
                    Err(_) => StageTimings::total(latency),
                };
                let r = r.map(|_| ());
                rm.primary_tel.record_inference(&timings, kind_of(&r));
                let outcome = match &r {
                    Ok(_) => CallOutcome::ok(latency),
                    Err(e) => CallOutcome::failed(e.kind(), latency),
                };
                if let Some(bytes) = rm.breaker.record(route, outcome) {
                    rm.primary_tel.record_memory(bytes);
                }
                match r {
                    Ok(()) => {
                        rm.served(Served::Primary);
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::debug!(target: "apple_silicon::breaker", model = %rm.model_id, error = %e, "primary call failed: retrying on the fallback");
                        *lock(&rm.last_primary_error) = Some(e.to_string());
                        served = Served::FallbackAfterPrimaryError;
                    }
                }
            }
        }

        rm.primary_tel.record_fallback();
        let t0 = Instant::now();
        let r = fallback(out, deadline.remaining());
        let timings = match &r {
            Ok(t) => StageTimings {
                total: Some(t0.elapsed()),
                ..*t
            },
            Err(_) => StageTimings::total(t0.elapsed()),
        };
        let r = r.map(|_| ());
        rm.fallback_tel.record_inference(&timings, kind_of(&r));
        rm.served(served);
        r
    }
}

pub(super) fn model_id(artifact: &ModelArtifact) -> String {
    let file = artifact
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| artifact.path.display().to_string());
    let hex = artifact.sha256_hex();
    format!("{file}@{}", &hex[..12.min(hex.len())])
}

pub(super) fn kind_of<T>(r: &Result<T>) -> std::result::Result<(), ErrorKind> {
    r.as_ref().map(|_| ()).map_err(Error::kind)
}

impl InferenceEngine for ResilientEngine {
    fn name(&self) -> &str {
        "resilient"
    }

    fn prepare(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
        let id = model_id(artifact);
        let ptel = self.telemetry.handle(&id, self.primary.name());
        let ftel = self.telemetry.handle(&id, self.fallback.name());

        let (primary, fallback) = std::thread::scope(|s| {
            let fb = s.spawn(|| {
                let t0 = Instant::now();
                let r = self.fallback.prepare(artifact, opts.clone());
                (r, t0.elapsed())
            });
            let t0 = Instant::now();
            let p = self.prepare_primary(artifact, opts.clone());
            let p_time = t0.elapsed();
            let f = fb
                .join()
                .unwrap_or_else(|_| (Err(Error::internal("the fallback's prepare panicked")), Duration::ZERO));
            ((p, p_time), f)
        });

        let ((p, p_time), (f, f_time)) = (primary, fallback);
        ptel.record_outcome(Op::Prepare, kind_of(&p));
        ptel.record_latency(Stage::Prepare, p_time);
        ftel.record_outcome(Op::Prepare, kind_of(&f));
        ftel.record_latency(Stage::Prepare, f_time);

        if let Ok(m) = &p {
            ptel.record_prepare_stages(&m.prepare_timings());
        }
        if let Ok(m) = &f {
            ftel.record_prepare_stages(&m.prepare_timings());
        }
        let fallback_model: Arc<dyn PreparedModel> = match f {
            Ok(m) => Arc::from(m),
            Err(e) => {
                tracing::error!(
                    target: "apple_silicon::breaker",
                    model = %id,
                    fallback = self.fallback.name(),
                    error = %e,
                    primary_ok = p.is_ok(),
                    "the fallback could not prepare the model; refusing to serve it without one"
                );
                return Err(e);
            }
        };
        ftel.record_capabilities(&self.fallback.capabilities(&*fallback_model));

        let (primary_model, unavailable): (Option<Arc<dyn PreparedModel>>, Option<String>) = match p {
            Ok(m) => {
                let m: Arc<dyn PreparedModel> = Arc::from(m);
                ptel.record_capabilities(&self.primary.capabilities(&*m));
                (Some(m), None)
            }
            Err(e) => {
                let reason = e.to_string();
                if e.kind() == ErrorKind::Unavailable {
                    tracing::info!(target: "apple_silicon::breaker", model = %id, primary = self.primary.name(), %reason, "primary unavailable: the fallback serves this model");
                } else {
                    tracing::warn!(target: "apple_silicon::breaker", model = %id, primary = self.primary.name(), %reason, "primary failed to prepare: the fallback serves this model");
                }
                (None, Some(reason))
            }
        };

        let sla = opts
            .sla
            .or_else(|| primary_model.as_ref().map(|m| m.sla_estimate()))
            .unwrap_or_else(|| fallback_model.sla_estimate());
        let mut config = self.config.clone();
        if config.sla.is_none() {
            config.sla = Some(sla);
        }
        let key = match &primary_model {
            Some(m) => format!("{}|{}", m.cache_key(), fallback_model.cache_key()),
            None => fallback_model.cache_key().to_string(),
        };
        Ok(Box::new(ResilientModel {
            breaker: Arc::new(CircuitBreaker::new(format!("{id}/{}", self.primary.name()), config)),
            model_id: id,
            key,
            schema: fallback_model.io_schema().clone(),
            sla,
            primary: primary_model,
            primary_unavailable: unavailable,
            fallback: fallback_model,
            primary_tel: ptel,
            fallback_tel: ftel,
            last_served: AtomicU8::new(0),
            last_primary_error: Mutex::new(None),
        }))
    }

    fn infer(&self, model: &dyn PreparedModel, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap> {
        let rm = downcast_model::<ResilientModel>(model, "resilient")?;
        rm.schema.validate_inputs(inputs)?;
        let mut out = None;
        self.route(
            rm,
            timeout,
            &mut out,
            |out, primary, budget| {
                let (o, t) = self.call_primary(primary, inputs, budget)?;
                *out = Some(o);
                Ok(t)
            },
            |out, left| {
                let (o, t) = self.fallback.infer_timed(&*rm.fallback, inputs, left)?;
                *out = Some(o);
                Ok(t)
            },
        )?;
        out.ok_or_else(|| Error::internal("resilient inference succeeded without outputs"))
    }

    /// Like `infer`, routed the same way (breaker, fallback, telemetry), on
    /// the serving engine's own `infer_into`: Core ML writes into the
    /// caller's buffers (under the primary's guard the output map moves to
    /// the worker and back), Candle replaces them. Outputs are unspecified on error.
    fn infer_into(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        timeout: Duration,
    ) -> Result<()> {
        let rm = downcast_model::<ResilientModel>(model, "resilient")?;
        rm.schema.validate_inputs(inputs)?;
        self.route(
            rm,
            timeout,
            outputs,
            |out, primary, budget| self.call_primary_into(primary, inputs, out, budget),
            |out, left| {
                let t0 = Instant::now();
                self.fallback.infer_into(&*rm.fallback, inputs, out, left)?;
                Ok(StageTimings::total(t0.elapsed()))
            },
        )
    }

    /// A state of the engine serving the model now (the primary while its
    /// breaker is closed and it can make one, else the fallback), which
    /// serves every step of it: see the `sequences` module.
    fn make_state(&self, model: &dyn PreparedModel) -> Result<ModelState> {
        self.make_state_impl(model)
    }

    /// A step on the engine that made `state`, never falling back mid-sequence:
    /// a primary's state is refused once the breaker has opened.
    fn infer_with_state(
        &self,
        model: &dyn PreparedModel,
        state: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<TensorMap> {
        self.infer_with_state_impl(model, state, inputs, timeout)
    }

    /// The batch on the primary under the breaker, on the fallback (as one
    /// batch, within what is left of `timeout`) if that fails.
    fn infer_batch(&self, model: &dyn PreparedModel, batch: &[TensorMap], timeout: Duration) -> Result<Vec<TensorMap>> {
        self.infer_batch_impl(model, batch, timeout)
    }

    fn capabilities(&self, model: &dyn PreparedModel) -> CapabilityReport {
        let Ok(rm) = downcast_model::<ResilientModel>(model, "resilient") else {
            let mut r = self.fallback.capabilities(model);
            r.notes
                .push("resilient: this model was not prepared by the resilient engine".into());
            return r;
        };
        let stats = rm.breaker.stats();
        let (served, why) = match (rm.last_served(), &rm.primary) {
            (Some(s), _) => (s, "last call"),
            (None, None) => (Served::FallbackPrimaryUnavailable, "no call yet"),
            (None, Some(_)) if stats.state == BreakerState::Closed => (Served::Primary, "no call yet"),
            (None, Some(_)) => (Served::FallbackBreakerOpen, "no call yet"),
        };
        let (mut report, tel) = match (&rm.primary, served) {
            (Some(p), Served::Primary) => (self.primary.capabilities(&**p), &rm.primary_tel),
            _ => (self.fallback.capabilities(&*rm.fallback), &rm.fallback_tel),
        };
        report.infer_p99_ms = tel
            .percentile(Stage::Total, 0.99)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let p = self.primary.name();
        let f = self.fallback.name();
        let reason = match served {
            Served::Primary => format!("served by {p} (primary); breaker closed"),
            Served::FallbackAfterPrimaryError => format!(
                "served by {f} (fallback) because the {p} call failed: {}",
                rm.last_primary_error().unwrap_or_default()
            ),
            Served::FallbackBreakerOpen => format!(
                "served by {f} (fallback) because the breaker is open: {}",
                stats.last_trip.as_ref().map(|r| r.to_string()).unwrap_or_default()
            ),
            Served::FallbackPrimaryUnavailable => format!(
                "served by {f} (fallback) because {p} could not prepare the model: {}",
                rm.primary_unavailable.as_deref().unwrap_or_default()
            ),
        };
        report.notes.push(format!("resilient: {reason} ({why})"));
        report.notes.push(format!(
            "resilient: breaker {:?}, {} trips, {} calls in window{}",
            stats.state,
            stats.trips,
            stats.window_calls,
            stats
                .window_success_rate
                .map(|r| format!(", success {:.1}%", r * 100.0))
                .unwrap_or_default()
        ));
        report
    }
}
