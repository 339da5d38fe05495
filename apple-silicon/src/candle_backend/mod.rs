//! `CandleEngine`: the CPU engine. It runs the ML Program inside an
//! `.mlpackage` with the [`crate::mil`] interpreter — the very file Core ML
//! runs — and BERT-family safetensors with candle-transformers. It is the
//! numerical ground truth and the engine the circuit breaker falls back to,
//! and it runs on any host.
//!
//! Stateful programs keep their states in caller-owned [`ModelState`]s
//! (`state`); a multifunction package runs the function
//! [`PrepareOptions::function_name`] names; batches run on one worker under
//! one deadline.
//!
//! Each inference runs off the caller's thread, on a deadline worker lent by
//! the interpreter's pool; if it does not finish within its timeout the
//! caller gets [`Error::Timeout`] at the deadline and the late result is
//! discarded when it arrives. The work reads the caller's inputs only while
//! converting them (`loan`: a caller that times out then waits out that
//! conversion, never the run) and otherwise touches its own copies.

pub mod allocator;
#[cfg(feature = "bert")]
mod bert;
mod loan;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "bert")]
pub use bert::{BertEncoder, Pooling};

use crate::cache::ModelCache;
use crate::deadline::DeadlineRunner;
use crate::error::{Error, ErrorKind, Result};
use crate::inference::{
    downcast_model, CacheKey, CapabilityReport, ComputeUnits, InferenceEngine, IoSchema, ModelArtifact, ModelFmt,
    ModelState, PrepareOptions, PreparedModel, ShapeConstraint,
};
use crate::mil::{CancelFlag, FloatPolicy, Plan};
use crate::mlpackage::MlPackage;
use crate::telemetry::StageTimings;
use crate::tensor::{DType, TensorMap};

/// Name of the lowered package inside a cache entry.
const COMPILED_PACKAGE: &str = "program.mlpackage";
/// In a cache entry: the hex SHA-256 of the spec the compiled form was built
/// from (see `plan_for`).
const SOURCE_SPEC: &str = "source_spec.sha256";

/// Version tag of the Candle engine's compiled form, part of its cache keys.
pub const ENGINE_VERSION: &str = concat!("candle-", env!("CARGO_PKG_VERSION"));

/// The CPU engine. Holds its options and a small pool of worker threads
/// (started on demand) that inferences run on.
#[derive(Debug, Clone)]
pub struct CandleEngine {
    float_policy: FloatPolicy,
    bert_seq_len: usize,
    runner: DeadlineRunner,
    cache: Option<Arc<ModelCache>>,
    allocator_tuning: bool,
}

impl Default for CandleEngine {
    fn default() -> Self {
        CandleEngine {
            float_policy: FloatPolicy::Upcast,
            bert_seq_len: 128,
            // Its own pool: work abandoned by other engines never counts
            // against it. Its workers are lent by the interpreter's pool,
            // where a program runs anyway: a call wakes one thread, not two.
            runner: DeadlineRunner::new("candle").lending_from(crate::mil::workers::lend),
            cache: None,
            allocator_tuning: true,
        }
    }
}

impl CandleEngine {
    /// An engine with default options: fp16 programs computed in f32.
    pub fn new() -> CandleEngine {
        CandleEngine::default()
    }

    /// How fp16 programs are computed: [`FloatPolicy::Upcast`] (default; f32
    /// arithmetic, fastest on CPUs without f16 units and closest to the
    /// reference) or [`FloatPolicy::Native`] (f16 tensors, as the program says).
    pub fn with_float_policy(mut self, policy: FloatPolicy) -> Self {
        self.float_policy = policy;
        self
    }

    /// Whether the first prepare of a program may tune glibc's malloc for the
    /// interpreter's buffers (default: yes; see [`allocator`]: a process-wide
    /// `mallopt` of the mmap and trim thresholds, ~20% faster on a
    /// convolutional network; nothing off glibc). `false` keeps the host's
    /// malloc settings, as does `APPLE_SILICON_MALLOC_TUNING=0`.
    pub fn with_allocator_tuning(mut self, on: bool) -> Self {
        self.allocator_tuning = on;
        self
    }

    /// Keeps compiled forms (lowered programs: weights in their run-time
    /// dtype, int8 and palettized weights still compressed, constants
    /// folded) in `cache`, so that a warm prepare skips decoding and folding
    /// and holds as much memory as a cold one. Without a cache every
    /// prepare builds from the package, and precompiled-only mode is refused.
    pub fn with_cache(mut self, cache: Arc<ModelCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Default sequence length reported in a BERT model's schema (any length up
    /// to the model's maximum is accepted).
    pub fn with_bert_seq_len(mut self, len: usize) -> Self {
        self.bert_seq_len = len.max(1);
        self
    }
}

enum Runner {
    Program(Plan),
    #[cfg(feature = "bert")]
    Bert(Box<BertEncoder>),
}

struct Inner {
    runner: Runner,
    schema: IoSchema,
    cache_key: String,
    /// The function it runs (`main` unless a multifunction package's other
    /// function was selected).
    function: String,
    sla: Duration,
    requested: ComputeUnits,
    precision: String,
    notes: Vec<String>,
    prepare_time: Duration,
}

impl Inner {
    /// Runs the model; stage timings as far as the runner can tell them (a
    /// BERT encoder is one `predict`).
    fn run(&self, inputs: &TensorMap, cancel: Option<&CancelFlag>) -> Result<(TensorMap, StageTimings)> {
        match &self.runner {
            Runner::Program(p) => p.run_timed(inputs, cancel),
            #[cfg(feature = "bert")]
            Runner::Bert(b) => {
                let t = std::time::Instant::now();
                let out = b.run(inputs, cancel)?;
                Ok((
                    out,
                    StageTimings {
                        predict: Some(t.elapsed()),
                        ..StageTimings::default()
                    },
                ))
            }
        }
    }
}

/// A model prepared by [`CandleEngine`]. `Send + Sync`: one prepared model can
/// serve many threads at once (every run works on its own tensors).
pub struct CandleModel {
    inner: Arc<Inner>,
}

impl CandleModel {
    /// The interpreter's plan, for ML Programs.
    pub fn plan(&self) -> Option<&Plan> {
        match &self.inner.runner {
            Runner::Program(p) => Some(p),
            #[cfg(feature = "bert")]
            Runner::Bert(_) => None,
        }
    }

    /// How long prepare took.
    pub fn prepare_time(&self) -> Duration {
        self.inner.prepare_time
    }

    /// Runs on the calling thread with no deadline (inputs are still checked
    /// against the schema). For benchmarks and tools; services should use
    /// [`InferenceEngine::infer`].
    pub fn run_blocking(&self, inputs: &TensorMap) -> Result<TensorMap> {
        self.inner.schema.validate_inputs(inputs)?;
        self.inner.run(inputs, None).map(|(out, _)| out)
    }
}

impl PreparedModel for CandleModel {
    fn cache_key(&self) -> &str {
        &self.inner.cache_key
    }
    fn io_schema(&self) -> &IoSchema {
        &self.inner.schema
    }
    fn sla_estimate(&self) -> Duration {
        self.inner.sla
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    /// The plan stage: the whole prepare (reading the package or the cached
    /// compiled form and building the plan) counts as compile; nothing loads.
    fn prepare_timings(&self) -> crate::telemetry::PrepareTimings {
        crate::telemetry::PrepareTimings {
            compile: Some(self.inner.prepare_time),
            load: None,
        }
    }
}

/// A short name of this machine's CPU (`model name` in /proc/cpuinfo where
/// there is one).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| format!("{} CPU", std::env::consts::ARCH))
}

/// The error a deadline worker replies with when the call that lent it
/// `what` (e.g. "the inputs") has already returned, timed out or
/// cancelled: no one reads the reply.
fn taken_back(what: &str) -> Error {
    Error::internal(format!(
        "{what}: taken back before the run (the call had already returned)"
    ))
}

/// `pkg` with the function `opts` asks for (the default one when none).
fn select_function(pkg: MlPackage, opts: &PrepareOptions) -> Result<MlPackage> {
    match &opts.function_name {
        Some(name) => pkg.select_function(name),
        None => Ok(pkg),
    }
}

fn precision_label(pkg: &MlPackage, policy: FloatPolicy) -> String {
    let q = pkg.quantization();
    if q == "fp32" {
        return "f32".into();
    }
    match policy {
        FloatPolicy::Upcast => format!("{q} weights, computed in f32 (f16 upcast)"),
        FloatPolicy::Native => format!("{q} weights, computed in f16 where the program is f16"),
    }
}

impl CandleEngine {
    fn prepare_program(&self, artifact: &ModelArtifact, opts: &PrepareOptions) -> Result<Inner> {
        if self.allocator_tuning {
            allocator::tune();
        }
        // One read, one truth, without reading the weights twice: the key
        // comes from the spec alone (one small read). The whole package is
        // read, and checked against the artifact's digest, only when a plan
        // is built from it (`read_verified`). A cache hit serves a compiled
        // form that was built from bytes with this digest, once the spec read
        // here is shown to be the one that form was built from.
        let spec_only = select_function(MlPackage::open(&artifact.path)?, opts)?;
        let key = self.key_for(artifact, &spec_only);
        let (plan, how, pkg) = self.plan_for(artifact, spec_only, &key, opts)?;
        let function = pkg.function_name().to_string();
        let mut notes = vec![format!(
            "ML Program interpreted by candle: {} run-time steps, {} ops folded at prepare; {how}",
            plan.step_count(),
            plan.folded_count()
        )];
        let functions = &pkg.io_schema().functions;
        if !functions.is_single() {
            notes.push(format!(
                "function `{function}` of a multifunction package with functions {:?}",
                functions.names
            ));
        }
        if opts.compute_units != ComputeUnits::CpuOnly {
            notes.push(format!(
                "requested compute units `{}`; the Candle engine runs on the CPU only",
                opts.compute_units
            ));
        }
        Ok(Inner {
            precision: precision_label(&pkg, self.float_policy),
            schema: pkg.io_schema().clone(),
            runner: Runner::Program(plan),
            cache_key: key.to_string(),
            function,
            sla: opts.sla.unwrap_or(Duration::from_secs(1)),
            requested: opts.compute_units,
            notes,
            prepare_time: Duration::ZERO,
        })
    }

    /// The cache key of `pkg` (its selected function) for `artifact`.
    fn key_for(&self, artifact: &ModelArtifact, pkg: &MlPackage) -> CacheKey {
        // Two functions of one package never share a cache entry or a plan.
        let shape_key = if pkg.io_schema().functions.is_single() {
            pkg.shape_key()
        } else {
            format!("fn-{}_{}", pkg.function_name(), pkg.shape_key())
        };
        CacheKey {
            sha256: artifact.sha256_hex(),
            coreml_version: ENGINE_VERSION.into(),
            backend: "mlprogram".into(),
            compute_units: ComputeUnits::CpuOnly,
            quantization: format!("{}-{:?}", pkg.quantization(), self.float_policy).to_lowercase(),
            shape_key,
            os_build: "any".into(),
        }
    }

    /// The whole package, read once into memory and checked against the
    /// artifact's digest, with the requested function; its key must be
    /// `key` (computed from the spec read first), so a package swapped
    /// between the two reads is refused, not built under the wrong key.
    fn read_verified(&self, artifact: &ModelArtifact, opts: &PrepareOptions, key: &CacheKey) -> Result<MlPackage> {
        let pkg = MlPackage::open_in_memory(&artifact.path)?;
        let read = pkg
            .sha256()
            .ok_or_else(|| Error::internal("a package opened in memory has a digest"))?;
        artifact.check_unchanged(&read)?;
        let pkg = select_function(pkg, opts)?;
        if self.key_for(artifact, &pkg) != *key {
            return Err(Error::invalid_artifact(
                &artifact.path,
                "the package changed while it was being prepared: its spec differs from the one read first",
            ));
        }
        Ok(pkg)
    }

    /// The plan for `artifact`, how it was obtained, and the package whose
    /// schema describes it: from the cache's compiled form when there is one
    /// (then `spec_only` describes it, once its spec is shown to be the one
    /// the form was built from), else built from the verified package (and,
    /// with a cache, installed for next time).
    fn plan_for(
        &self,
        artifact: &ModelArtifact,
        spec_only: MlPackage,
        key: &CacheKey,
        opts: &PrepareOptions,
    ) -> Result<(Plan, String, MlPackage)> {
        let build = |pkg: &MlPackage| Plan::build_budgeted(pkg, self.float_policy, opts.memory_budget);
        let Some(cache) = &self.cache else {
            if opts.precompiled_only {
                return Err(Error::Compile {
                    model: artifact.path.display().to_string(),
                    message: "precompiled-only mode needs a compiled-model cache (CandleEngine::with_cache)".into(),
                });
            }
            let pkg = self.read_verified(artifact, opts, key)?;
            return Ok((build(&pkg)?, "built from the package (no cache)".into(), pkg));
        };
        let entry = if opts.precompiled_only {
            cache.get_precompiled(key)?
        } else {
            let mut built = None;
            // Set until the build closure returns Ok: a build that failed or
            // panicked is the model's fault, anything else the cache's.
            let mut build_failed = false;
            // The closure builds only from bytes checked against the
            // artifact's digest: the entry records that digest as its source.
            let got = cache.get_or_build_from(key, &artifact.sha256_hex(), |tmp| {
                build_failed = true;
                let pkg = self.read_verified(artifact, opts, key)?;
                let (plan, lowered) = Plan::build_lowered_budgeted(&pkg, self.float_policy, opts.memory_budget)?;
                lowered.write(&pkg, &tmp.join(COMPILED_PACKAGE))?;
                std::fs::write(tmp.join(SOURCE_SPEC), crate::digest::to_hex(&pkg.spec_sha256()))
                    .map_err(|e| Error::io(format!("writing {}", tmp.join(SOURCE_SPEC).display()), e))?;
                built = Some((plan, pkg));
                build_failed = false;
                Ok(())
            });
            match got {
                Ok(_) if built.is_some() => {
                    let (plan, pkg) = built.expect("checked");
                    return Ok((plan, "cache miss: compiled form built and installed".into(), pkg));
                }
                Ok(entry) => entry,
                Err(e) if build_failed || e.kind() == ErrorKind::Timeout => return Err(e),
                Err(e) => {
                    // Degrade, don't fail: a read-only, full or broken cache
                    // costs the compiled form, not the model.
                    tracing::warn!(
                        target: "apple_silicon::cache",
                        key = %key,
                        error = %e,
                        "compiled-model cache unusable; preparing without it"
                    );
                    let (plan, pkg) = match built {
                        Some(built) => built,
                        None => {
                            let pkg = self.read_verified(artifact, opts, key)?;
                            (build(&pkg)?, pkg)
                        }
                    };
                    return Ok((plan, format!("built from the package, not cached ({e})"), pkg));
                }
            }
        };
        // A hit. The spec read first describes the compiled form only if it is
        // the spec the form was built from; otherwise (an entry without the
        // record, or a spec changed on disk) the package is read and verified.
        let recorded = std::fs::read(entry.path().join(SOURCE_SPEC))
            .ok()
            .filter(|r| r.len() == 64);
        let describes = if recorded.as_deref() == Some(crate::digest::to_hex(&spec_only.spec_sha256()).as_bytes()) {
            spec_only
        } else {
            self.read_verified(artifact, opts, key)?
        };
        let compiled = entry.path().join(COMPILED_PACKAGE);
        match MlPackage::open(&compiled).and_then(|lp| build(&lp)) {
            Ok(plan) => Ok((plan, "cache hit: loaded the compiled form".into(), describes)),
            Err(e) if !opts.precompiled_only => {
                // A damaged entry that passed the cache's cheap checks: serve
                // from the package rather than fail.
                tracing::warn!(entry = %compiled.display(), error = %e, "unusable compiled form; building from the package");
                let pkg = self.read_verified(artifact, opts, key)?;
                Ok((
                    build(&pkg)?,
                    "compiled form unusable, built from the package".into(),
                    pkg,
                ))
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(not(feature = "bert"))]
    fn prepare_bert(&self, _: &ModelArtifact, _: &PrepareOptions) -> Result<Inner> {
        Err(Error::unsupported(
            "BERT safetensors models: this build of apple-silicon has no `bert` feature (candle-transformers)",
        ))
    }

    #[cfg(feature = "bert")]
    fn prepare_bert(&self, artifact: &ModelArtifact, opts: &PrepareOptions) -> Result<Inner> {
        if let Some(name) = &opts.function_name {
            return Err(Error::schema_mismatch(
                format!("function of {}", artifact.path.display()),
                "no function name (a BERT safetensors model has one function)",
                format!("`{name}`"),
            ));
        }
        let enc = BertEncoder::load(&artifact.path, self.bert_seq_len)?;
        let key = CacheKey {
            sha256: artifact.sha256_hex(),
            coreml_version: ENGINE_VERSION.into(),
            backend: "safetensors-bert".into(),
            compute_units: ComputeUnits::CpuOnly,
            quantization: "fp32".into(),
            shape_key: format!("seq_{}", self.bert_seq_len),
            os_build: "any".into(),
        };
        let (pooling, normalize) = enc.head();
        Ok(Inner {
            schema: enc.schema().clone(),
            notes: vec![format!(
                "BERT encoder by candle-transformers, {pooling:?} pooling{}",
                if normalize { ", L2-normalised" } else { "" }
            )],
            runner: Runner::Bert(Box::new(enc)),
            cache_key: key.to_string(),
            function: "main".into(),
            sla: opts.sla.unwrap_or(Duration::from_secs(1)),
            requested: opts.compute_units,
            precision: "f32".into(),
            prepare_time: Duration::ZERO,
        })
    }
}

/// This module's engine, under the name [`crate::inference_backend`] gives it.
pub type Engine = CandleEngine;

impl Inner {
    /// The owner of this model's states (see [`ModelState::owner`]).
    fn state_owner(&self) -> String {
        state::owner(&self.cache_key, &self.function)
    }

    fn plan(&self) -> Result<&Plan> {
        match &self.runner {
            Runner::Program(p) => Ok(p),
            #[cfg(feature = "bert")]
            Runner::Bert(_) => Err(Error::unsupported(
                "states and batches of inputs prepared for a program with a BERT encoder",
            )),
        }
    }
}

impl CandleEngine {
    /// The tensors of a state this engine made (a copy, by state name): for
    /// tests and inspection. Costs one copy of the states.
    pub fn read_state(&self, state: &ModelState) -> Result<TensorMap> {
        state::read(state)
    }

    /// Replaces the tensors of `state`, made by [`InferenceEngine::make_state`]
    /// for `model`, with `tensors`: exactly the model's states in their
    /// declared dtypes and shapes, checked before anything changes (e.g. to
    /// resume a sequence from saved caches).
    pub fn write_state(&self, model: &dyn PreparedModel, state: &mut ModelState, tensors: TensorMap) -> Result<()> {
        let m = downcast_model::<CandleModel>(model, "candle")?;
        state::write(state, &m.inner.state_owner(), &m.inner.schema, tensors)
    }
}

impl InferenceEngine for CandleEngine {
    fn name(&self) -> &str {
        "candle"
    }

    fn prepare(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
        let start = Instant::now();
        let mut inner = match artifact.format {
            ModelFmt::MlPackage => self.prepare_program(artifact, &opts)?,
            ModelFmt::Safetensors => self.prepare_bert(artifact, &opts)?,
            ModelFmt::MlModelC => return Err(Error::unsupported(
                "running a compiled .mlmodelc with the Candle engine: compiled bundles are Core ML's private format; \
                     give the Candle engine the .mlpackage it was compiled from",
            )),
            other => {
                return Err(Error::unsupported(format!(
                    "{other} models (the Candle engine runs .mlpackage ML Programs and BERT safetensors)"
                )))
            }
        };
        if self.allocator_tuning {
            // The parse and fold's garbage is freed by now: give it back.
            allocator::release_free();
        }
        inner.prepare_time = start.elapsed();
        tracing::debug!(path = %artifact.path.display(), ms = inner.prepare_time.as_secs_f64() * 1e3, "candle prepared");
        Ok(Box::new(CandleModel { inner: Arc::new(inner) }))
    }

    fn infer(&self, model: &dyn PreparedModel, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap> {
        self.infer_timed(model, inputs, timeout).map(|(out, _)| out)
    }

    /// Stages: `marshal_in` (inputs into candle tensors), `predict` (the
    /// program's ops), `marshal_out` (outputs back), and `total`, the whole
    /// call including validation and the hop to the deadline worker.
    fn infer_timed(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<(TensorMap, StageTimings)> {
        let started = std::time::Instant::now();
        let m = downcast_model::<CandleModel>(model, "candle")?;
        m.inner.schema.validate_inputs(inputs)?;
        let inner = Arc::clone(&m.inner);
        // If the deadline passes, the caller returns, the flag is set and an
        // ML Program stops at its next op (a BERT encoder at its next layer),
        // freeing the worker. A program's inputs are lent to the worker, which
        // converts them on the pool thread that runs it (the conversion is
        // the only copy; the caller waits out a conversion under way, never
        // the run); a BERT encoder reads its inputs all along, so it owns a copy.
        // A program answers from the interpreter's pool thread that finished
        // it, not through the worker: one thread wake fewer per call.
        let (out, mut timings) = match &m.inner.runner {
            Runner::Program(_) => loan::lend(inputs, |borrow| {
                self.runner
                    .run_replying("candle inference", timeout, move |cancel, reply| match &inner.runner {
                        Runner::Program(plan) => match borrow.read(|inputs| plan.prepare_inputs(inputs)) {
                            Some(Ok(prepared)) => plan.run_prepared_replying(prepared, Some(cancel), reply),
                            Some(Err(e)) => reply.send(Err(e)),
                            // The caller has returned: no one waits for a reply.
                            None => reply.send(Err(taken_back("the inputs"))),
                        },
                        #[cfg(feature = "bert")]
                        Runner::Bert(_) => reply.send(Err(Error::internal("a program's call reached a BERT encoder"))),
                    })
            })?,
            #[cfg(feature = "bert")]
            Runner::Bert(_) => {
                let owned = inputs.clone();
                self.runner
                    .run_replying("candle inference", timeout, move |cancel, reply| {
                        reply.send(inner.run(&owned, Some(cancel)))
                    })?
            }
        };
        timings.total = Some(started.elapsed());
        Ok((out, timings))
    }

    /// A fresh state, every state tensor zeroed (`makeState()`), checked
    /// against the plan's memory budget before it is allocated.
    fn make_state(&self, model: &dyn PreparedModel) -> Result<ModelState> {
        let m = downcast_model::<CandleModel>(model, "candle")?;
        let limit = m.inner.plan().map(Plan::run_limit).unwrap_or(0);
        state::fresh(&m.inner.schema, m.inner.state_owner(), limit)
    }

    /// One step of a stateful ML Program (iOS18 `StateType`s). The state
    /// must have been made for this model and function; the step runs on a
    /// copy of it (the worker owns its copy, as it owns the inputs), which
    /// replaces the state only when the run succeeded within `timeout`. A
    /// failed run leaves the state unchanged; one that times out poisons it.
    /// Costs one copy of the states and of the inputs on top of the run.
    fn infer_with_state(
        &self,
        model: &dyn PreparedModel,
        state: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<TensorMap> {
        let m = downcast_model::<CandleModel>(model, "candle")?;
        let owner = m.inner.state_owner();
        let mut tensors = state
            .inner_for::<state::CandleState>(state::ENGINE, &owner)?
            .tensors
            .clone();
        m.inner.schema.validate_inputs(inputs)?;
        m.inner.schema.validate_states(&tensors)?;
        m.inner.plan()?;
        let (inner, inputs) = (Arc::clone(&m.inner), inputs.clone());
        let r = self.runner.run_cancellable("candle inference", timeout, move |cancel| {
            let out = inner
                .plan()?
                .run_with_state_cancellable(&inputs, &mut tensors, Some(cancel))?;
            Ok((out, tensors))
        });
        match r {
            Ok((out, tensors)) => {
                state.inner_for::<state::CandleState>(state::ENGINE, &owner)?.tensors = tensors;
                Ok(out)
            }
            Err(e) => {
                if e.kind() == ErrorKind::Timeout {
                    state.poison();
                }
                Err(e)
            }
        }
    }

    /// Runs the members one after another on one worker under one deadline
    /// for the whole batch (the worker stops at its next op once it passes).
    /// Every member is checked before any runs, on the caller's thread, and
    /// converted before any runs, on the worker (the batch is lent to it, as
    /// [`InferenceEngine::infer`] lends its inputs); a member that does not
    /// match the model is a [`Error::SchemaMismatch`] naming it. Costs what
    /// the members' inferences cost, with one thread hand-off. A call whose
    /// deadline passes while the worker converts the batch returns once
    /// that conversion ends (the lent batch cannot be taken back mid-read):
    /// late by at most one pass over the batch's inputs.
    fn infer_batch(&self, model: &dyn PreparedModel, batch: &[TensorMap], timeout: Duration) -> Result<Vec<TensorMap>> {
        let m = downcast_model::<CandleModel>(model, "candle")?;
        m.inner.schema.validate_batch(batch)?;
        let inner = Arc::clone(&m.inner);
        loan::lend(batch, |borrow| {
            self.runner
                .run_cancellable("candle batch inference", timeout, move |cancel| match &inner.runner {
                    Runner::Program(plan) => {
                        let members = borrow.read(|batch| {
                            batch
                                .iter()
                                .enumerate()
                                .map(|(i, inputs)| plan.prepare_inputs(inputs).map_err(|e| Error::batch_member(i, e)))
                                .collect::<Result<Vec<_>>>()
                        });
                        // `None`: the caller has returned, no one waits for a reply.
                        let members = members.ok_or_else(|| taken_back("the batch"))??;
                        members
                            .into_iter()
                            .map(|p| plan.run_prepared(p, Some(cancel)).map(|(out, _)| out))
                            .collect()
                    }
                    #[cfg(feature = "bert")]
                    Runner::Bert(_) => {
                        // The encoder reads its inputs all along: it owns a copy.
                        let members = borrow
                            .read(|batch| batch.to_vec())
                            .ok_or_else(|| taken_back("the batch"))?;
                        members
                            .iter()
                            .map(|m| inner.run(m, Some(cancel)).map(|(out, _)| out))
                            .collect()
                    }
                })
        })
    }

    fn capabilities(&self, model: &dyn PreparedModel) -> CapabilityReport {
        let (schema, requested, precision, notes) = match downcast_model::<CandleModel>(model, "candle") {
            Ok(m) => (
                m.inner.schema.clone(),
                m.inner.requested,
                m.inner.precision.clone(),
                m.inner.notes.clone(),
            ),
            Err(e) => (
                IoSchema::default(),
                ComputeUnits::CpuOnly,
                String::new(),
                vec![e.to_string()],
            ),
        };
        let max_batch = schema
            .inputs
            .iter()
            .map(|s| match &s.constraint {
                ShapeConstraint::Fixed => s.shape.first().copied().unwrap_or(1),
                ShapeConstraint::Enumerated(l) => l.iter().filter_map(|v| v.first().copied()).max().unwrap_or(1),
                ShapeConstraint::Range(r) => r.first().and_then(|&(_, hi)| hi).unwrap_or(usize::MAX),
            })
            .min()
            .unwrap_or(1);
        CapabilityReport {
            engine: "candle".into(),
            device_class: cpu_name(),
            supported_dtypes: vec![
                DType::F32,
                DType::F16,
                DType::F64,
                DType::I32,
                DType::I64,
                DType::I8,
                DType::U8,
            ],
            max_batch_size: max_batch,
            ane_op_coverage_pct: None,
            compute_units_requested: requested,
            compute_units_actual: Some(ComputeUnits::CpuOnly),
            compute_precision: precision,
            compile_p99_ms: None,
            infer_p99_ms: None,
            notes,
        }
    }
}
