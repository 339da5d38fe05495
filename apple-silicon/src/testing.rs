//! Test doubles: an [`EchoEngine`] that needs no model file, and a
//! [`FaultyEngine`] that wraps any engine and misbehaves on purpose.
//!
//! Everything here is deterministic: faults fire by call number, either on a
//! fixed pattern or at a rate drawn from a seeded SplitMix64 stream
//! ([`Pattern`]), so the same configuration fails the same calls on every run
//! (given the same call order).
//!
//! ```
//! use std::time::Duration;
//! use apple_silicon::testing::{fake_artifact, EchoEngine, FaultyEngine, Pattern};
//! use apple_silicon::{DType, ErrorKind, InferenceEngine, IoSchema, PrepareOptions, Tensor, TensorMap, TensorSpec};
//!
//! let schema = IoSchema {
//!     inputs: vec![TensorSpec::fixed("x", DType::F32, vec![1, 2])],
//!     outputs: vec![TensorSpec::fixed("y", DType::F32, vec![1, 2])],
//!     states: vec![],
//!     classifier: None,
//!     functions: Default::default(),
//! };
//! let engine = FaultyEngine::echo("coreml", schema).with_errors(ErrorKind::Internal, Pattern::Every(2));
//! let model = engine.prepare(&fake_artifact("m"), PrepareOptions::default()).unwrap();
//! let x = TensorMap::from([("x".to_string(), Tensor::from_vec(vec![1, 2], vec![1f32, 2.0]).unwrap())]);
//! let t = Duration::from_secs(1);
//! assert_eq!(engine.infer(&*model, &x, t).unwrap()["y"], x["x"]); // call 1
//! assert_eq!(engine.infer(&*model, &x, t).unwrap_err().kind(), ErrorKind::Internal); // call 2
//! ```

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::inference::{
    downcast_model, CapabilityReport, ComputeUnits, InferenceEngine, IoSchema, ModelArtifact, ModelFmt, PrepareOptions,
    PreparedModel,
};
use crate::tensor::{DType, Tensor, TensorMap};

/// Threads in this process now (Linux; `None` elsewhere). For tests that
/// check that stuck work does not pile up threads.
pub fn process_threads() -> Option<u64> {
    crate::telemetry::process_stats().threads
}

/// A [`ModelArtifact`] that names no real file, for engines that do not read
/// one (the doubles here). Its hash is derived from `name`.
pub fn fake_artifact(name: &str) -> ModelArtifact {
    let mut sha256 = [0u8; 32];
    for (i, chunk) in sha256.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix64(fnv1a(name.as_bytes()) ^ i as u64).to_le_bytes());
    }
    ModelArtifact {
        format: ModelFmt::MlPackage,
        path: format!("{name}.mlpackage").into(),
        sha256,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// SplitMix64: a tiny, well-mixed deterministic hash of one `u64`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which calls (numbered from 0) a fault hits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// No call.
    Never,
    /// Every call.
    Always,
    /// Calls `k-1, 2k-1, …`: one call in `k` (`Every(10)` fails 10%).
    Every(u64),
    /// The first `n` calls.
    FirstN(u64),
    /// Every call from number `n` on.
    From(u64),
    /// Calls `a` up to (not including) `b`: a burst.
    Range(u64, u64),
    /// Each call with this probability, drawn from the engine's seeded stream.
    Rate(f64),
}

impl Pattern {
    /// Whether call `n` is hit, for a stream `seed` and a per-fault `salt`.
    pub fn fires(self, n: u64, seed: u64, salt: u64) -> bool {
        match self {
            Pattern::Never => false,
            Pattern::Always => true,
            Pattern::Every(0) => false,
            Pattern::Every(k) => (n + 1).is_multiple_of(k),
            Pattern::FirstN(k) => n < k,
            Pattern::From(k) => n >= k,
            Pattern::Range(a, b) => (a..b).contains(&n),
            Pattern::Rate(p) => {
                let h = splitmix64(seed ^ splitmix64(salt) ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03));
                ((h >> 11) as f64 / (1u64 << 53) as f64) < p
            }
        }
    }
}

/// A way to spoil an engine's outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFault {
    /// Add this value to every element of every floating-point output
    /// (numeric drift; parity checks catch it).
    Offset(f64),
    /// Drop the named output.
    Drop(String),
    /// Convert every output to this dtype.
    Dtype(DType),
    /// Flatten every output to one dimension.
    Flatten,
}

impl OutputFault {
    fn apply(&self, outputs: TensorMap) -> TensorMap {
        match self {
            OutputFault::Offset(d) => outputs
                .into_iter()
                .map(|(k, t)| {
                    if !t.dtype().is_float() {
                        return (k, t);
                    }
                    let dtype = t.dtype();
                    let shape = t.shape().to_vec();
                    let shifted: Vec<f64> = t.to_f64_vec().into_iter().map(|v| v + d).collect();
                    let out = Tensor::from_vec(shape, shifted).map(|x| x.cast(dtype)).unwrap_or(t);
                    (k, out)
                })
                .collect(),
            OutputFault::Drop(name) => outputs.into_iter().filter(|(k, _)| k != name).collect(),
            OutputFault::Dtype(to) => outputs.into_iter().map(|(k, t)| (k, t.cast(*to))).collect(),
            OutputFault::Flatten => outputs
                .into_iter()
                .map(|(k, t)| {
                    let n = t.numel();
                    let flat = t.clone().reshape(vec![n]).unwrap_or(t);
                    (k, flat)
                })
                .collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error of `kind` saying it was injected by `engine`.
pub fn injected_error(kind: ErrorKind, engine: &str) -> Error {
    let msg = format!("fault injected by {engine}");
    match kind {
        ErrorKind::Compile => Error::Compile {
            model: "test model".into(),
            message: msg,
        },
        ErrorKind::Load => Error::Load {
            model: "test model".into(),
            message: msg,
        },
        ErrorKind::SchemaMismatch => Error::schema_mismatch("outputs", "the model's outputs", msg),
        ErrorKind::Timeout => Error::Timeout {
            operation: msg,
            after: Duration::ZERO,
        },
        ErrorKind::MemoryPressure => Error::MemoryPressure { message: msg },
        ErrorKind::Unavailable => Error::Unavailable {
            engine: engine.to_string(),
            reason: msg,
        },
        ErrorKind::Unsupported => Error::unsupported(msg),
        ErrorKind::InvalidArtifact => Error::invalid_artifact("test model", msg),
        ErrorKind::Io => Error::io(msg, std::io::Error::other("injected")),
        ErrorKind::Internal => Error::internal(msg),
    }
}

// ---------------------------------------------------------------------------
// EchoEngine

/// A model of the [`EchoEngine`].
#[derive(Debug)]
pub struct EchoModel {
    key: String,
    schema: IoSchema,
    sla: Duration,
    requested: ComputeUnits,
}

impl PreparedModel for EchoModel {
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

/// An engine that needs no model file: every artifact "is" the schema given
/// at construction. Output `i` is a copy of input `i` when dtype and element
/// count match (reshaped to the output's shape), else zeros of the output's
/// dtype and shape. Validates inputs against the schema and honours its
/// timeout (a call that takes longer than it returns `Timeout`). Costs one
/// copy of the inputs per call.
pub struct EchoEngine {
    name: String,
    schema: IoSchema,
    sla: Duration,
    calls: Arc<AtomicU64>,
}

impl EchoEngine {
    /// An echo engine called `name` for models with `schema`.
    pub fn new(name: impl Into<String>, schema: IoSchema) -> EchoEngine {
        EchoEngine {
            name: name.into(),
            schema,
            sla: Duration::from_millis(20),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The SLA its models report when prepare options give none.
    pub fn with_sla(mut self, sla: Duration) -> Self {
        self.sla = sla;
        self
    }

    /// A shared counter of `infer` calls (successful or not), readable after
    /// the engine is boxed.
    pub fn call_counter(&self) -> Arc<AtomicU64> {
        self.calls.clone()
    }
}

/// Writes `fresh` into `outputs` the way an engine with caller-owned output
/// buffers does: a tensor already there with the same name, dtype and shape
/// is overwritten in place (its allocation kept); any other is replaced.
fn write_in_place(outputs: &mut TensorMap, fresh: TensorMap) {
    for (name, t) in fresh {
        match outputs.get_mut(&name) {
            Some(slot) if slot.dtype() == t.dtype() && slot.shape() == t.shape() => {
                slot.as_bytes_mut().copy_from_slice(t.as_bytes());
            }
            _ => {
                outputs.insert(name, t);
            }
        }
    }
}

impl InferenceEngine for EchoEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
        Ok(Box::new(EchoModel {
            key: format!("{}:{}", artifact.sha256_hex(), self.name),
            schema: self.schema.clone(),
            sla: opts.sla.unwrap_or(self.sla),
            requested: opts.compute_units,
        }))
    }

    fn infer(&self, model: &dyn PreparedModel, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap> {
        let start = Instant::now();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let m = downcast_model::<EchoModel>(model, &self.name)?;
        m.schema.validate_inputs(inputs)?;
        let mut out = TensorMap::new();
        for (i, spec) in m.schema.outputs.iter().enumerate() {
            let source = m
                .schema
                .inputs
                .get(i)
                .and_then(|s| inputs.get(&s.name))
                .filter(|t| t.dtype() == spec.dtype && t.numel() == spec.shape.iter().product::<usize>());
            let t = match source {
                Some(t) => t.clone().reshape(spec.shape.clone())?,
                None => Tensor::zeros(spec.dtype, spec.shape.clone())?,
            };
            out.insert(spec.name.clone(), t);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                operation: format!("{} inference", self.name),
                after: timeout,
            });
        }
        Ok(out)
    }

    /// `infer`, written into `outputs` in place where a buffer of the right
    /// name, dtype and shape is already there (as Core ML's
    /// `coreml_predict_into` does).
    fn infer_into(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        timeout: Duration,
    ) -> Result<()> {
        write_in_place(outputs, self.infer(model, inputs, timeout)?);
        Ok(())
    }

    fn capabilities(&self, model: &dyn PreparedModel) -> CapabilityReport {
        let requested = downcast_model::<EchoModel>(model, &self.name)
            .map(|m| m.requested)
            .unwrap_or_default();
        CapabilityReport {
            engine: self.name.clone(),
            device_class: "test double".into(),
            supported_dtypes: DType::ALL.to_vec(),
            max_batch_size: 1,
            ane_op_coverage_pct: None,
            compute_units_requested: requested,
            compute_units_actual: Some(ComputeUnits::CpuOnly),
            compute_precision: "exact copy".into(),
            compile_p99_ms: None,
            infer_p99_ms: None,
            notes: vec![],
        }
    }
}

// ---------------------------------------------------------------------------
// FaultyEngine

#[derive(Debug, Clone)]
struct FaultPlan {
    seed: u64,
    errors: Option<(ErrorKind, Pattern)>,
    latency: Duration,
    spikes: Option<(Pattern, Duration)>,
    slowdown: Option<(Duration, Duration)>,
    hangs: Pattern,
    hang_for: Duration,
    grow_per_call: usize,
    grow_per_prepare: usize,
    prepare_error: Option<PrepareFault>,
    output_fault: Option<(OutputFault, Pattern)>,
    timeouts: TimeoutMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeoutMode {
    /// Injected delays ignore the deadline; the inner engine gets the
    /// caller's timeout as given.
    Passthrough,
    /// Injected delays end in `Timeout` at the deadline; the inner engine
    /// gets what is left.
    Honour,
    /// Nothing enforces a deadline: the inner engine is told it has an hour.
    Ignore,
}

#[derive(Debug, Clone)]
struct PrepareFault {
    kind: ErrorKind,
    reason: String,
}

/// Counters and controls of a [`FaultyEngine`], shared so tests can read
/// them after the engine is boxed. Cloning shares.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    inner: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    prepares: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    spikes: AtomicU64,
    hangs_started: AtomicU64,
    hangs_active: AtomicU64,
    corrupted: AtomicU64,
    retained_bytes: AtomicU64,
    retained: Mutex<Vec<Box<[u8]>>>,
    first_call: std::sync::OnceLock<Instant>,
    release_generation: Mutex<u64>,
    released: Condvar,
}

impl FaultHandle {
    /// `prepare` calls so far.
    pub fn prepares(&self) -> u64 {
        self.inner.prepares.load(Ordering::SeqCst)
    }
    /// `infer` calls so far.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }
    /// Errors injected so far (prepare and infer).
    pub fn errors_injected(&self) -> u64 {
        self.inner.errors.load(Ordering::SeqCst)
    }
    /// Latency spikes injected so far.
    pub fn spikes(&self) -> u64 {
        self.inner.spikes.load(Ordering::SeqCst)
    }
    /// Hangs started so far.
    pub fn hangs_started(&self) -> u64 {
        self.inner.hangs_started.load(Ordering::SeqCst)
    }
    /// Calls hanging right now.
    pub fn hangs_active(&self) -> u64 {
        self.inner.hangs_active.load(Ordering::SeqCst)
    }
    /// Outputs spoiled so far.
    pub fn outputs_corrupted(&self) -> u64 {
        self.inner.corrupted.load(Ordering::SeqCst)
    }
    /// Bytes allocated and kept by the memory-growth faults.
    pub fn retained_bytes(&self) -> u64 {
        self.inner.retained_bytes.load(Ordering::SeqCst)
    }
    /// Ends every hang in progress (those calls then carry on normally).
    pub fn release_hangs(&self) {
        *lock(&self.inner.release_generation) += 1;
        self.inner.released.notify_all();
    }
    /// Frees the memory kept by the memory-growth faults.
    pub fn free_memory(&self) {
        lock(&self.inner.retained).clear();
        self.inner.retained_bytes.store(0, Ordering::SeqCst);
    }
    /// A memory probe reading [`Self::retained_bytes`]: a deterministic
    /// stand-in for process RSS in breaker and gate tests.
    pub fn memory_probe(&self) -> crate::breaker::MemoryProbe {
        let h = self.clone();
        Arc::new(move || Some(h.retained_bytes()))
    }

    fn retain(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        // Non-zero fill so the pages are really committed (RSS grows).
        let block = vec![0xA5u8; bytes].into_boxed_slice();
        lock(&self.inner.retained).push(block);
        self.inner.retained_bytes.fetch_add(bytes as u64, Ordering::SeqCst);
    }

    fn hang(&self, max: Duration) {
        let s = &self.inner;
        s.hangs_started.fetch_add(1, Ordering::SeqCst);
        s.hangs_active.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        let mut generation = lock(&s.release_generation);
        let entered = *generation;
        while *generation == entered {
            let left = max.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            generation = s
                .released
                .wait_timeout(generation, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(generation);
        s.hangs_active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wraps an engine and injects faults: errors of chosen kinds on chosen calls
/// ([`Pattern`]), added latency, latency spikes and slowdowns, hangs (a call that sleeps
/// far past any deadline — an hour by default — until
/// [`FaultHandle::release_hangs`]), memory growth (bytes allocated and kept
/// per call or per prepare), spoiled outputs, and failing `prepare`.
///
/// By default injected delays ignore the caller's timeout, as a misbehaving
/// engine's would, while the inner engine still gets the caller's timeout;
/// [`FaultyEngine::honouring_timeout`] makes injected latency end in
/// `Timeout` at the deadline instead, and [`FaultyEngine::ignoring_timeout`]
/// enforces no deadline at all. Prepared models are the inner engine's own.
pub struct FaultyEngine {
    inner: Box<dyn InferenceEngine>,
    name: String,
    plan: FaultPlan,
    handle: FaultHandle,
}

impl FaultyEngine {
    /// Wraps `inner`; no fault is configured yet.
    pub fn new(inner: Box<dyn InferenceEngine>) -> FaultyEngine {
        let name = inner.name().to_string();
        FaultyEngine {
            inner,
            name,
            plan: FaultPlan {
                seed: 0x5EED,
                errors: None,
                latency: Duration::ZERO,
                spikes: None,
                slowdown: None,
                hangs: Pattern::Never,
                hang_for: Duration::from_secs(3600),
                grow_per_call: 0,
                grow_per_prepare: 0,
                prepare_error: None,
                output_fault: None,
                timeouts: TimeoutMode::Passthrough,
            },
            handle: FaultHandle::default(),
        }
    }

    /// Wraps an [`EchoEngine`] called `name` for `schema`.
    pub fn echo(name: impl Into<String>, schema: IoSchema) -> FaultyEngine {
        FaultyEngine::new(Box::new(EchoEngine::new(name, schema)))
    }

    /// Reports this name instead of the inner engine's.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Seeds the stream used by [`Pattern::Rate`].
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.plan.seed = seed;
        self
    }

    /// Fails the calls hit by `pattern` with an error of `kind`.
    pub fn with_errors(mut self, kind: ErrorKind, pattern: Pattern) -> Self {
        self.plan.errors = Some((kind, pattern));
        self
    }

    /// Adds `latency` to every call.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.plan.latency = latency;
        self
    }

    /// Adds `extra` latency to the calls hit by `pattern`.
    pub fn with_latency_spikes(mut self, pattern: Pattern, extra: Duration) -> Self {
        self.plan.spikes = Some((pattern, extra));
        self
    }

    /// Adds `extra` latency to every call once `after` has passed since the
    /// first call (a throttling device: steady, then slower).
    pub fn with_slowdown_after(mut self, after: Duration, extra: Duration) -> Self {
        self.plan.slowdown = Some((after, extra));
        self
    }

    /// Hangs the calls hit by `pattern`.
    pub fn with_hangs(mut self, pattern: Pattern) -> Self {
        self.plan.hangs = pattern;
        self
    }

    /// How long a hang lasts unless released (default one hour).
    pub fn with_hang_duration(mut self, d: Duration) -> Self {
        self.plan.hang_for = d;
        self
    }

    /// Allocates and keeps `bytes` on every `infer` call.
    pub fn with_memory_growth_per_call(mut self, bytes: usize) -> Self {
        self.plan.grow_per_call = bytes;
        self
    }

    /// Allocates and keeps `bytes` on every `prepare`.
    pub fn with_memory_growth_per_prepare(mut self, bytes: usize) -> Self {
        self.plan.grow_per_prepare = bytes;
        self
    }

    /// Makes every `prepare` fail with an error of `kind`.
    pub fn with_prepare_error(mut self, kind: ErrorKind) -> Self {
        self.plan.prepare_error = Some(PrepareFault {
            kind,
            reason: format!("fault injected by {}", self.name),
        });
        self
    }

    /// Makes every `prepare` fail with `Unavailable` and this reason, like
    /// Core ML on Linux.
    pub fn unavailable(mut self, reason: impl Into<String>) -> Self {
        self.plan.prepare_error = Some(PrepareFault {
            kind: ErrorKind::Unavailable,
            reason: reason.into(),
        });
        self
    }

    /// Spoils the outputs of the calls hit by `pattern`.
    pub fn with_output_fault(mut self, fault: OutputFault, pattern: Pattern) -> Self {
        self.plan.output_fault = Some((fault, pattern));
        self
    }

    /// Whether injected latency respects the caller's timeout (default: no;
    /// the inner engine still gets the caller's timeout).
    pub fn honouring_timeout(mut self, on: bool) -> Self {
        self.plan.timeouts = if on {
            TimeoutMode::Honour
        } else {
            TimeoutMode::Passthrough
        };
        self
    }

    /// Enforces no deadline at all: the inner engine is told it has an hour,
    /// so calls come back with outputs however late (an engine with a
    /// timeout bug).
    pub fn ignoring_timeout(mut self) -> Self {
        self.plan.timeouts = TimeoutMode::Ignore;
        self
    }

    /// Counters and controls, shared with the engine.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

const SALT_ERROR: u64 = 1;
const SALT_SPIKE: u64 = 2;
const SALT_HANG: u64 = 3;
const SALT_OUTPUT: u64 = 4;

impl InferenceEngine for FaultyEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
        self.handle.inner.prepares.fetch_add(1, Ordering::SeqCst);
        self.handle.retain(self.plan.grow_per_prepare);
        if let Some(e) = &self.plan.prepare_error {
            self.handle.inner.errors.fetch_add(1, Ordering::SeqCst);
            return Err(match e.kind {
                ErrorKind::Unavailable => Error::Unavailable {
                    engine: self.name.clone(),
                    reason: e.reason.clone(),
                },
                kind => injected_error(kind, &self.name),
            });
        }
        self.inner.prepare(artifact, opts)
    }

    fn infer(&self, model: &dyn PreparedModel, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap> {
        let start = Instant::now();
        let p = &self.plan;
        let h = &self.handle;
        let n = h.inner.calls.fetch_add(1, Ordering::SeqCst);
        h.retain(p.grow_per_call);
        if p.hangs.fires(n, p.seed, SALT_HANG) {
            h.hang(p.hang_for);
        }
        let first = *h.inner.first_call.get_or_init(Instant::now);
        let mut latency = p.latency;
        if let Some((after, extra)) = p.slowdown {
            if first.elapsed() >= after {
                latency += extra;
            }
        }
        if let Some((pattern, extra)) = p.spikes {
            if pattern.fires(n, p.seed, SALT_SPIKE) {
                h.inner.spikes.fetch_add(1, Ordering::SeqCst);
                latency += extra;
            }
        }
        if !latency.is_zero() {
            if p.timeouts == TimeoutMode::Honour && start.elapsed() + latency >= timeout {
                std::thread::sleep(timeout.saturating_sub(start.elapsed()));
                return Err(Error::Timeout {
                    operation: format!("{} inference", self.name),
                    after: timeout,
                });
            }
            std::thread::sleep(latency);
        }
        if let Some((kind, pattern)) = p.errors {
            if pattern.fires(n, p.seed, SALT_ERROR) {
                h.inner.errors.fetch_add(1, Ordering::SeqCst);
                return Err(injected_error(kind, &self.name));
            }
        }
        let inner_timeout = match p.timeouts {
            TimeoutMode::Honour => timeout.saturating_sub(start.elapsed()),
            TimeoutMode::Passthrough => timeout,
            TimeoutMode::Ignore => Duration::from_secs(3600),
        };
        let out = self.inner.infer(model, inputs, inner_timeout)?;
        match &p.output_fault {
            Some((fault, pattern)) if pattern.fires(n, p.seed, SALT_OUTPUT) => {
                h.inner.corrupted.fetch_add(1, Ordering::SeqCst);
                Ok(fault.apply(out))
            }
            _ => Ok(out),
        }
    }

    /// `infer` with every fault, written into `outputs` in place like
    /// [`EchoEngine`]'s.
    fn infer_into(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        timeout: Duration,
    ) -> Result<()> {
        write_in_place(outputs, self.infer(model, inputs, timeout)?);
        Ok(())
    }

    fn capabilities(&self, model: &dyn PreparedModel) -> CapabilityReport {
        let mut r = self.inner.capabilities(model);
        r.engine = self.name.clone();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::TensorSpec;

    pub(crate) fn schema() -> IoSchema {
        IoSchema {
            inputs: vec![TensorSpec::fixed("x", DType::F32, vec![1, 4])],
            outputs: vec![
                TensorSpec::fixed("y", DType::F32, vec![2, 2]),
                TensorSpec::fixed("z", DType::I32, vec![3]),
            ],
            states: Vec::new(),
            classifier: None,
            functions: Default::default(),
        }
    }

    fn input() -> TensorMap {
        TensorMap::from([(
            "x".to_string(),
            Tensor::from_vec(vec![1, 4], vec![1f32, 2.0, 3.0, 4.0]).unwrap(),
        )])
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn echo_copies_matching_inputs_and_zeroes_the_rest() {
        let e = EchoEngine::new("echo", schema());
        let m = e.prepare(&fake_artifact("m"), PrepareOptions::default()).unwrap();
        let out = e.infer(&*m, &input(), T).unwrap();
        assert_eq!(out["y"].shape(), &[2, 2]);
        assert_eq!(out["y"].to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(out["z"].to_vec::<i32>().unwrap(), vec![0, 0, 0]);
        // Schema is enforced, and so is the deadline.
        let mut bad = input();
        bad.insert("x".into(), Tensor::from_vec(vec![1, 3], vec![0f32; 3]).unwrap());
        assert_eq!(e.infer(&*m, &bad, T).unwrap_err().kind(), ErrorKind::SchemaMismatch);
        let err = e.infer(&*m, &input(), Duration::from_nanos(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }

    #[test]
    fn patterns_are_deterministic() {
        let hits = |p: Pattern| (0..1000u64).filter(|&n| p.fires(n, 42, 7)).count();
        assert_eq!(hits(Pattern::Every(10)), 100);
        assert_eq!(hits(Pattern::FirstN(3)), 3);
        assert_eq!(hits(Pattern::From(990)), 10);
        let r = hits(Pattern::Rate(0.1));
        assert!((70..=130).contains(&r), "{r}");
        assert_eq!(r, hits(Pattern::Rate(0.1)), "same seed, same hits");
        let other = (0..1000u64).filter(|&n| Pattern::Rate(0.1).fires(n, 43, 7)).count();
        let same_calls = (0..1000u64)
            .filter(|&n| Pattern::Rate(0.1).fires(n, 42, 7) && Pattern::Rate(0.1).fires(n, 43, 7))
            .count();
        assert!(same_calls < other, "another seed hits other calls");
    }

    #[test]
    fn faults_fire_where_configured() {
        let e = FaultyEngine::echo("coreml", schema())
            .with_errors(ErrorKind::MemoryPressure, Pattern::Every(3))
            .with_memory_growth_per_call(4096)
            .with_output_fault(OutputFault::Offset(0.5), Pattern::FirstN(1));
        let h = e.handle();
        let m = e.prepare(&fake_artifact("m"), PrepareOptions::default()).unwrap();
        let first = e.infer(&*m, &input(), T).unwrap();
        assert_eq!(first["y"].to_vec::<f32>().unwrap(), vec![1.5, 2.5, 3.5, 4.5]);
        assert!(e.infer(&*m, &input(), T).is_ok());
        assert_eq!(e.infer(&*m, &input(), T).unwrap_err().kind(), ErrorKind::MemoryPressure);
        assert_eq!((h.calls(), h.errors_injected(), h.outputs_corrupted()), (3, 1, 1));
        assert_eq!(h.retained_bytes(), 3 * 4096);
        h.free_memory();
        assert_eq!(h.retained_bytes(), 0);
    }

    #[test]
    fn prepare_can_be_unavailable() {
        let e = FaultyEngine::echo("coreml", schema()).unavailable("Core ML does not exist on Linux");
        let err = e.prepare(&fake_artifact("m"), PrepareOptions::default()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(
            err.to_string(),
            "coreml is unavailable: Core ML does not exist on Linux"
        );
    }

    #[test]
    fn hangs_last_until_released() {
        let e = Arc::new(FaultyEngine::echo("coreml", schema()).with_hangs(Pattern::Always));
        let h = e.handle();
        let m: Arc<dyn PreparedModel> = Arc::from(e.prepare(&fake_artifact("m"), PrepareOptions::default()).unwrap());
        let worker = {
            let (e, m) = (e.clone(), m.clone());
            std::thread::spawn(move || e.infer(&*m, &input(), T))
        };
        let t0 = Instant::now();
        while h.hangs_active() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(!worker.is_finished(), "a hang does not end by itself");
        h.release_hangs();
        assert!(worker.join().unwrap().is_ok(), "a released hang carries on normally");
        assert_eq!(h.hangs_active(), 0);
    }

    #[test]
    fn honouring_timeout_turns_latency_into_timeout() {
        let e = FaultyEngine::echo("cpu", schema())
            .with_latency(Duration::from_millis(200))
            .honouring_timeout(true);
        let m = e.prepare(&fake_artifact("m"), PrepareOptions::default()).unwrap();
        let t0 = Instant::now();
        let err = e.infer(&*m, &input(), Duration::from_millis(30)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(t0.elapsed() < Duration::from_millis(150), "{:?}", t0.elapsed());
    }
}
