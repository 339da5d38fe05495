//! `CoreMlEngine`: runs models with Core ML through the Swift bridge.
//!
//! `prepare` turns an artifact into a loaded model:
//!
//! - `.mlpackage`: compile into a directory handed out by a [`CompiledStore`],
//!   then load. The store decides where compiled models live and whether they
//!   are reused. [`TempDirCompiledStore`] is a plain temporary-directory
//!   implementation (not a cache) and the default. The atomic cache
//!   ([`ModelCache`]) implements the same trait:
//!   `CoreMlEngine::with_store(Arc::new(cache))`.
//! - `.mlmodelc`: load only (precompiled mode). With
//!   [`PrepareOptions::precompiled_only`] a package is only loaded if the
//!   store already holds its compiled form.
//!
//! `infer` runs one prediction. Every stage is bounded: compile and load
//! share [`PrepareOptions::prepare_timeout`]. Waiting for the model, a
//! rebuild and the prediction share the timeout given to `infer`. After a
//! prediction times out, the bridge has poisoned the handle. The engine frees
//! it, even while the late prediction still runs, which the bridge makes
//! safe. The next `infer` loads the model again. That reload is counted in
//! [`CoreMlModel::rebuilds`].
//!
//! Where Core ML does not exist, `prepare` returns [`Error::Unavailable`]
//! with the reason. That covers builds without the bridge (see
//! [`crate::core_ml_bridge::NO_BRIDGE_REASON`]) and a bridge that reports no Core ML
//! (Linux without the test runtime).

#![deny(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::cache::ModelCache;
use crate::core_ml_bridge::{
    self as bridge, BridgeError, BridgeModel, BridgeSchema, BridgeState, ComputePlan, RuntimeInfo,
};
use crate::digest;
use crate::error::{Error, Result};
use crate::inference::{
    downcast_model, CacheKey, CapabilityReport, ComputeUnits, InferenceEngine, IoSchema, ModelArtifact, ModelFmt,
    ModelState, PrepareOptions, PreparedModel, ShapeConstraint,
};
use crate::mlpackage::MlPackage;
use crate::telemetry::{PrepareTimings, StageTimings};
use crate::tensor::TensorMap;

/// Where compiled models (`.mlmodelc`) live. `CoreMlEngine` compiles only
/// through this trait, so the atomic on-disk cache can take over without
/// touching the engine. Implementations must be safe to call from many
/// threads.
///
/// The directory a store returns must stay in place as long as a model
/// prepared from it is alive: the engine reloads from it after a timeout.
pub trait CompiledStore: Send + Sync {
    /// Short name for reports, e.g. `temp-dir` or `cache`.
    fn name(&self) -> &str;

    /// The directory holding the compiled model for `key`, if the store has
    /// it. Never compiles. Used in precompiled-only mode.
    fn lookup(&self, key: &CacheKey) -> Result<Option<PathBuf>>;

    /// The directory holding the compiled model for `key`. When the store
    /// has none, it calls `build` with an empty directory. `build` compiles
    /// into it (the bridge writes `<dir>/<stem>.mlmodelc`). If `build` fails,
    /// its error is returned and nothing is kept.
    fn get_or_build(&self, key: &CacheKey, build: &mut dyn FnMut(&Path) -> Result<()>) -> Result<PathBuf>;
}

/// A [`CompiledStore`] in a private temporary directory. **Not a cache**:
/// nothing is shared between processes or survives this store. It only
/// remembers, per key, what it compiled during its lifetime, so preparing
/// the same artifact twice compiles once. The directory is deleted when the
/// store is dropped, and models keep their store alive. Concurrent first
/// builds of one key may both compile; the first install wins and the other
/// copy is deleted.
pub struct TempDirCompiledStore {
    root: PathBuf,
    built: Mutex<HashMap<String, PathBuf>>,
    next: AtomicU64,
    builds: AtomicU64,
}

impl fmt::Debug for TempDirCompiledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempDirCompiledStore")
            .field("root", &self.root)
            .finish()
    }
}

impl TempDirCompiledStore {
    /// A store under the system temporary directory
    /// (`$TMPDIR/apple-silicon-coreml-<pid>-<n>`). Creates nothing until the
    /// first build.
    pub fn new() -> TempDirCompiledStore {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        TempDirCompiledStore::in_dir(
            std::env::temp_dir().join(format!("apple-silicon-coreml-{}-{n}", std::process::id())),
        )
    }

    /// A store rooted at `root`, which it owns: it is deleted on drop.
    pub fn in_dir(root: impl Into<PathBuf>) -> TempDirCompiledStore {
        TempDirCompiledStore {
            root: root.into(),
            built: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            builds: AtomicU64::new(0),
        }
    }

    /// Its root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many builds succeeded (a cheap counter, for tests and reports).
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, PathBuf>> {
        self.built.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for TempDirCompiledStore {
    fn default() -> Self {
        TempDirCompiledStore::new()
    }
}

impl CompiledStore for TempDirCompiledStore {
    fn name(&self) -> &str {
        "temp-dir"
    }

    fn lookup(&self, key: &CacheKey) -> Result<Option<PathBuf>> {
        Ok(self.map().get(&key.to_string()).cloned())
    }

    fn get_or_build(&self, key: &CacheKey, build: &mut dyn FnMut(&Path) -> Result<()>) -> Result<PathBuf> {
        let k = key.to_string();
        if let Some(dir) = self.map().get(&k) {
            return Ok(dir.clone());
        }
        // Built without holding the lock: other keys are not held up.
        let dir = self.root.join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        // Left over by an earlier process with the same pid: start empty.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        if let Err(e) = build(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.builds.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map();
        if let Some(first) = map.get(&k) {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(first.clone());
        }
        map.insert(k, dir.clone());
        Ok(dir)
    }
}

impl Drop for TempDirCompiledStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The atomic compiled-model cache as a store: each compiled model is one
/// cache entry whose payload holds `<stem>.mlmodelc`. Lookups and builds
/// cost what [`ModelCache::lookup`] and [`ModelCache::get_or_build`] cost
/// (atomic install, fsyncs, budgets). Eviction may remove the entry of a
/// model that is still loaded: the loaded model keeps running, but a reload
/// after a prediction timeout then fails with a load error.
impl CompiledStore for ModelCache {
    fn name(&self) -> &str {
        "cache"
    }

    fn lookup(&self, key: &CacheKey) -> Result<Option<PathBuf>> {
        Ok(ModelCache::lookup(self, key)?.map(|e| e.path().to_path_buf()))
    }

    fn get_or_build(&self, key: &CacheKey, build: &mut dyn FnMut(&Path) -> Result<()>) -> Result<PathBuf> {
        Ok(ModelCache::get_or_build(self, key, |dir| build(dir))?
            .path()
            .to_path_buf())
    }
}

/// The one `.mlmodelc` directory directly inside `dir` (the bridge's
/// compile writes `<dir>/<stem>.mlmodelc`; the stem is kept because it can
/// matter, e.g. to the bridge's test runtime). Costs one directory listing.
pub fn find_compiled_model(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "mlmodelc") && path.is_dir() {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(Error::invalid_artifact(
            dir,
            format!("expected exactly one .mlmodelc directory in the compiled-model store entry, found {n}"),
        )),
    }
}

/// Exclusive use of a value with a bounded wait. A `Mutex` cannot time out,
/// and holding one across a prediction would leave a second caller waiting
/// past its own deadline. Here the value is taken out, used without any lock
/// held, and put back, and waiters give up at their deadline.
struct Slot<T> {
    state: Mutex<SlotState<T>>,
    returned: Condvar,
}

struct SlotState<T> {
    busy: bool,
    value: Option<T>,
}

/// The right to use a slot's value; hands it back (and wakes one waiter) on drop.
struct SlotGuard<'a, T> {
    slot: &'a Slot<T>,
    value: Option<T>,
}

impl<T> Slot<T> {
    fn new(value: Option<T>) -> Self {
        Slot {
            state: Mutex::new(SlotState { busy: false, value }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no other caller holds the slot, or until `deadline`
    /// (`None` then).
    fn acquire(&self, deadline: Instant) -> Option<SlotGuard<'_, T>> {
        let mut st = self.lock();
        while st.busy {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())?;
            st = self
                .returned
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.busy = true;
        let value = st.value.take();
        Some(SlotGuard { slot: self, value })
    }
}

impl<T> Drop for SlotGuard<'_, T> {
    fn drop(&mut self) {
        let mut st = self.slot.lock();
        st.value = self.value.take();
        st.busy = false;
        drop(st);
        self.slot.returned.notify_one();
    }
}

/// What the compute plan says about a model, computed once on demand.
#[derive(Debug, Clone)]
struct PlanSummary {
    ane_pct: Option<u32>,
    units_in_use: Option<ComputeUnits>,
    note: String,
}

/// A model prepared by [`CoreMlEngine`]. `Send + Sync`: calls are serialised
/// by a slot that holds the (`!Sync`) [`BridgeModel`], with bounded waiting.
pub struct CoreMlModel {
    key: String,
    artifact: PathBuf,
    compiled: PathBuf,
    units_requested: ComputeUnits,
    /// The function of a multifunction package it runs (`None`: the default).
    function: Option<String>,
    units_note: Option<String>,
    schema: IoSchema,
    bridge_schema: BridgeSchema,
    sla: Duration,
    runtime: RuntimeInfo,
    slot: Slot<BridgeModel>,
    rebuilds: AtomicU64,
    plan: OnceLock<PlanSummary>,
    plan_timeout: Duration,
    /// How long prepare spent in the store (and compiling) and loading.
    prepare_timings: PrepareTimings,
    /// Keeps the compiled directory alive (a temp store deletes it on drop).
    _store: Arc<dyn CompiledStore>,
}

impl fmt::Debug for CoreMlModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreMlModel")
            .field("key", &self.key)
            .field("compiled", &self.compiled)
            .field("units", &self.units_requested)
            .finish()
    }
}

impl CoreMlModel {
    /// The compiled model directory it loads from.
    pub fn compiled_path(&self) -> &Path {
        &self.compiled
    }

    /// The artifact it was prepared from.
    pub fn artifact_path(&self) -> &Path {
        &self.artifact
    }

    /// The compute units the model is loaded with: the caller's request, or
    /// [`ComputeUnits::ENV_OVERRIDE`] when that was set.
    pub fn compute_units(&self) -> ComputeUnits {
        self.units_requested
    }

    /// The schema as the bridge reports it, including features without a
    /// dtype (strings, images, …) that [`PreparedModel::io_schema`] leaves out.
    pub fn bridge_schema(&self) -> &BridgeSchema {
        &self.bridge_schema
    }

    /// How many times the model was loaded again after a prediction timed
    /// out (or found its handle poisoned). A cheap counter.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    fn timeout(&self, what: &str, after: Duration) -> Error {
        Error::Timeout {
            operation: format!("{what} of {}", self.compiled.display()),
            after,
        }
    }

    /// What a [`ModelState`] of this model names as its owner: the cache
    /// key, plus the function for a multifunction package.
    fn state_owner(&self) -> String {
        match &self.function {
            Some(f) => format!("{} (function `{f}`)", self.key),
            None => self.key.clone(),
        }
    }

    /// The function of a multifunction package this model runs (`None`:
    /// the package's default), from [`PrepareOptions::function_name`].
    pub fn function(&self) -> Option<&str> {
        self.function.as_deref()
    }

    /// Runs `f` on the loaded model with what is left of `timeout`: a
    /// bounded wait for the model, a reload when it is absent or poisoned,
    /// then `f`. If `f` finds the handle poisoned by an earlier call we did
    /// not see time out, the model is reloaded and `f` runs once more. A
    /// model that `f` left poisoned is dropped here (freed while a late
    /// prediction still runs, which the bridge makes safe); the next call
    /// reloads. Timeouts report the caller's whole `timeout`.
    fn with_loaded<R>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&BridgeModel, Duration) -> std::result::Result<R, BridgeError>,
    ) -> Result<R> {
        let deadline = Instant::now() + timeout;
        let remaining = |what: &str| -> Result<Duration> {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| self.timeout(what, timeout))
        };
        let mut guard = self.slot.acquire(deadline).ok_or_else(|| {
            self.timeout(
                "waiting for the model (another inference on it is still running)",
                timeout,
            )
        })?;
        for attempt in 0..2 {
            let model = match guard.value.take() {
                Some(m) if !m.is_poisoned() => m,
                old => {
                    drop(old);
                    let m = BridgeModel::load_function(
                        &self.compiled,
                        self.function.as_deref(),
                        self.units_requested,
                        remaining("reload")?,
                    )
                    .map_err(Error::from)?;
                    self.rebuilds.fetch_add(1, Ordering::Relaxed);
                    m
                }
            };
            let left = match remaining(what) {
                Ok(left) => left,
                Err(e) => {
                    guard.value = Some(model);
                    return Err(e);
                }
            };
            match f(&model, left) {
                Ok(out) => {
                    guard.value = Some(model);
                    return Ok(out);
                }
                Err(e) if e.is_poisoned() && attempt == 0 => {
                    // Poisoned before this call: the next turn reloads it.
                    guard.value = Some(model);
                }
                Err(e) => {
                    if !model.is_poisoned() {
                        guard.value = Some(model);
                    }
                    return Err(match e.into_error() {
                        Error::Timeout { operation, .. } => Error::Timeout {
                            operation,
                            after: timeout,
                        },
                        other => other,
                    });
                }
            }
        }
        Err(Error::internal(format!(
            "{}: the model was reloaded but its new handle was reported poisoned at once",
            self.compiled.display()
        )))
    }

    /// One inference: bounded wait for the model, reload if poisoned, predict.
    fn run(&self, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap> {
        self.with_loaded("prediction", timeout, |model, left| model.predict(inputs, left))
    }

    /// The bridge's buffer counters of the loaded model's handle
    /// ([`BridgeModel::buffer_counters`]), for tests and debugging; waits
    /// at most `timeout` for the model (loading it if needed).
    pub fn buffer_counters(&self, timeout: Duration) -> Result<bridge::BufferCounters> {
        self.with_loaded("reading the buffer counters", timeout, |bm, _| bm.buffer_counters())
    }

    fn plan_summary(&self) -> PlanSummary {
        self.plan
            .get_or_init(
                || match bridge::compute_plan(&self.compiled, self.units_requested, self.plan_timeout) {
                    Ok(plan) => summarise_plan(&plan),
                    Err(e) => PlanSummary {
                        ane_pct: None,
                        units_in_use: None,
                        note: format!(
                            "no compute plan, so the Neural Engine share and the compute units in use are unknown: {e}"
                        ),
                    },
                },
            )
            .clone()
    }
}

fn summarise_plan(plan: &ComputePlan) -> PlanSummary {
    let c = plan.device_counts;
    PlanSummary {
        ane_pct: plan.neural_engine_pct(),
        units_in_use: plan.units_in_use(),
        note: format!(
            "compute plan ({} ops, preferred device: {} neural engine, {} gpu, {} cpu, {} unknown); \
             compute units in use are derived from it, not measured",
            plan.total_ops(),
            c.neural_engine,
            c.gpu,
            c.cpu,
            c.unknown
        ),
    }
}

impl PreparedModel for CoreMlModel {
    fn cache_key(&self) -> &str {
        &self.key
    }

    fn io_schema(&self) -> &IoSchema {
        &self.schema
    }

    fn sla_estimate(&self) -> Duration {
        self.sla
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn prepare_timings(&self) -> PrepareTimings {
        self.prepare_timings
    }
}

/// The largest batch every input allows (first dimension), `usize::MAX`
/// when unbounded; 1 for a model without inputs.
fn max_batch(schema: &IoSchema) -> usize {
    schema
        .inputs
        .iter()
        .map(|s| {
            let first = s.shape.first().copied().unwrap_or(1);
            match &s.constraint {
                ShapeConstraint::Fixed => first,
                ShapeConstraint::Enumerated(list) => list
                    .iter()
                    .filter_map(|shape| shape.first().copied())
                    .chain([first])
                    .max()
                    .unwrap_or(first),
                ShapeConstraint::Range(r) => r.first().map_or(first, |&(_, hi)| hi.unwrap_or(usize::MAX)),
            }
        })
        .min()
        .unwrap_or(1)
}

/// Loose default for [`PreparedModel::sla_estimate`] when the caller gave
/// no SLA: nothing here measures latency (telemetry does).
pub const DEFAULT_SLA: Duration = Duration::from_secs(1);

/// Default bound on the compute-plan query behind [`InferenceEngine::capabilities`].
pub const DEFAULT_PLAN_TIMEOUT: Duration = Duration::from_secs(60);

/// The Core ML engine. Cheap to create; holds the [`CompiledStore`].
pub struct CoreMlEngine {
    store: Arc<dyn CompiledStore>,
    plan_timeout: Duration,
}

impl fmt::Debug for CoreMlEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreMlEngine")
            .field("store", &self.store.name())
            .field("plan_timeout", &self.plan_timeout)
            .finish()
    }
}

impl Default for CoreMlEngine {
    fn default() -> Self {
        CoreMlEngine::new()
    }
}

impl CoreMlEngine {
    /// An engine that compiles into a [`TempDirCompiledStore`] (no reuse
    /// across processes). Costs nothing until the first prepare.
    pub fn new() -> CoreMlEngine {
        CoreMlEngine::with_store(Arc::new(TempDirCompiledStore::new()))
    }

    /// An engine that compiles through `store` (e.g. the atomic cache).
    pub fn with_store(store: Arc<dyn CompiledStore>) -> CoreMlEngine {
        CoreMlEngine {
            store,
            plan_timeout: DEFAULT_PLAN_TIMEOUT,
        }
    }

    /// Sets the bound on the compute-plan query made by the first
    /// [`InferenceEngine::capabilities`] call per model.
    pub fn with_plan_timeout(mut self, timeout: Duration) -> Self {
        self.plan_timeout = timeout;
        self
    }

    /// The store compiled models go to.
    pub fn store(&self) -> &Arc<dyn CompiledStore> {
        &self.store
    }

    /// Whether Core ML can serve models here, and if not why
    /// ([`Error::Unavailable`]). `Ok` carries what the bridge reports about
    /// the host. With the bridge's test runtime (`COREML_BRIDGE_TEST_RUNTIME=1`)
    /// a host without Core ML counts as available: fake models serve.
    /// Costs one bridge call.
    pub fn availability() -> Result<RuntimeInfo> {
        bridge::check_abi()?;
        let info = bridge::runtime_info()?;
        if !info.coreml_available && !info.test_runtime {
            return Err(Error::Unavailable {
                engine: bridge::ENGINE_NAME.to_string(),
                reason: info
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("Core ML is not available on {}", info.platform)),
            });
        }
        Ok(info)
    }

    /// The key the compiled form of `artifact` is stored under. Reads the
    /// package spec when it parses as an ML Program (for quantization and
    /// input shapes); other packages get `unknown` there (the SHA-256 still
    /// identifies them).
    pub fn cache_key(artifact: &ModelArtifact, units: ComputeUnits, info: &RuntimeInfo) -> CacheKey {
        CoreMlEngine::key_for(artifact, MlPackage::open(&artifact.path).ok().as_ref(), units, info)
    }

    /// [`CoreMlEngine::cache_key`] from a package already read (`None`: not
    /// an ML Program this crate parses).
    fn key_for(artifact: &ModelArtifact, pkg: Option<&MlPackage>, units: ComputeUnits, info: &RuntimeInfo) -> CacheKey {
        let (backend, quantization, shape_key) = match pkg {
            Some(p) => ("mlprogram".to_string(), p.quantization(), p.shape_key()),
            None => ("unknown".to_string(), "unknown".to_string(), "unknown".to_string()),
        };
        let coreml_version = match (&info.coreml_version, info.test_runtime) {
            (_, true) => "test-runtime".to_string(),
            (Some(v), false) => v.clone(),
            (None, false) => "none".to_string(),
        };
        CacheKey {
            sha256: artifact.sha256_hex(),
            coreml_version,
            backend,
            compute_units: units,
            quantization,
            shape_key,
            os_build: info.os_build.clone().unwrap_or_else(|| "unknown".to_string()),
        }
    }

    /// Compiles (through the store) or finds the compiled directory. On a
    /// miss the package is read once into memory and checked against the
    /// artifact's digest (the key's), and Core ML compiles a private copy of
    /// exactly those bytes: a package swapped on disk after it was hashed
    /// cannot put other weights under its key.
    fn compiled_dir(
        &self,
        artifact: &ModelArtifact,
        key: &CacheKey,
        opts: &PrepareOptions,
        deadline: Instant,
    ) -> Result<PathBuf> {
        if opts.precompiled_only {
            let dir = self.store.lookup(key)?.ok_or_else(|| Error::Compile {
                model: artifact.path.display().to_string(),
                message: format!(
                    "precompiled-only mode forbids compiling, and the {} store has no compiled form under key {key}",
                    self.store.name()
                ),
            })?;
            return find_compiled_model(&dir);
        }
        let path = artifact.path.clone();
        let timeout = opts.prepare_timeout;
        let mut build = |dir: &Path| -> Result<()> {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| Error::Timeout {
                    operation: format!("compile of {}", path.display()),
                    after: timeout,
                })?;
            // The copy keeps the package's file name: compile names its
            // output after the stem. It lives inside the store's fresh entry
            // directory and is removed before the entry is installed.
            let snap = digest::read_tree(&path)?;
            artifact.check_unchanged(&snap.sha256)?;
            let staging = dir.join(".source");
            let name = path.file_name().unwrap_or(std::ffi::OsStr::new("model.mlpackage"));
            std::fs::create_dir(&staging).map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
            let compiled = snap.write_into(&staging.join(name)).and_then(|()| {
                bridge::compile_model(&staging.join(name), dir, left)
                    .map(|_| ())
                    .map_err(|e| match e.into_error() {
                        Error::Timeout { operation, .. } => Error::Timeout {
                            operation,
                            after: timeout,
                        },
                        other => other,
                    })
            });
            let cleaned = std::fs::remove_dir_all(&staging)
                .map_err(|e| Error::io(format!("removing the compile's source copy {}", staging.display()), e));
            compiled.and(cleaned)
        };
        let dir = self.store.get_or_build(key, &mut build)?;
        find_compiled_model(&dir)
    }
}

/// How long [`InferenceEngine::make_state`] waits for Core ML to allocate a
/// model's state buffers (the trait's call has no timeout of its own).
pub const MAKE_STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a [`ModelState`] made by [`CoreMlEngine`] holds: the bridge's state,
/// which belongs to the loaded model (handle) that made it. A model that is
/// loaded again after a timeout refuses the states of its earlier load.
#[derive(Debug)]
pub struct CoreMlState {
    state: BridgeState,
}

/// This module's engine, under the name [`crate::inference_backend`] gives it.
pub type Engine = CoreMlEngine;

impl InferenceEngine for CoreMlEngine {
    fn name(&self) -> &str {
        bridge::ENGINE_NAME
    }

    /// Compiles (for `.mlpackage`, through the store) and loads the model.
    /// Costs one SHA-256-keyed store lookup, a Core ML compile on a miss, a
    /// load, and a schema query. Bounded by `opts.prepare_timeout`.
    fn prepare(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
        let start = Instant::now();
        let deadline = start + opts.prepare_timeout;
        let info = CoreMlEngine::availability()?;
        match artifact.format {
            ModelFmt::MlPackage | ModelFmt::MlModelC => {}
            other => {
                return Err(Error::unsupported(format!(
                    "the Core ML engine runs .mlpackage and .mlmodelc artifacts, not {other} ({})",
                    artifact.path.display()
                )))
            }
        }
        let (units, units_note) = match ComputeUnits::from_env()? {
            Some(u) if u != opts.compute_units => (
                u,
                Some(format!(
                    "{}={u} overrides the requested {}",
                    ComputeUnits::ENV_OVERRIDE,
                    opts.compute_units
                )),
            ),
            Some(u) => (u, None),
            None => (opts.compute_units, None),
        };
        // The key's content part is the artifact's digest; what is stored
        // under it is compiled from bytes checked against that digest (see
        // `compiled_dir`), so a warm prepare reads only the spec. A compiled
        // `.mlmodelc` is loaded from its path: nothing is stored under its
        // digest, so a swap there fools only that one load.
        let compile_start = Instant::now();
        let (key, compiled, compile_time) = match artifact.format {
            // Nothing to parse: a compiled bundle is not an ML Program package.
            ModelFmt::MlModelC => (
                CoreMlEngine::key_for(artifact, None, units, &info),
                artifact.path.clone(),
                None,
            ),
            _ => {
                let key = CoreMlEngine::cache_key(artifact, units, &info);
                let dir = self.compiled_dir(artifact, &key, &opts, deadline)?;
                (key, dir, Some(compile_start.elapsed()))
            }
        };
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::Timeout {
                operation: format!("prepare of {}", artifact.path.display()),
                after: opts.prepare_timeout,
            })?;
        let function = opts.function_name.clone();
        let load_start = Instant::now();
        let model = BridgeModel::load_function(&compiled, function.as_deref(), units, left).map_err(|e| {
            match e.into_error() {
                Error::Timeout { operation, .. } => Error::Timeout {
                    operation,
                    after: opts.prepare_timeout,
                },
                other => other,
            }
        })?;
        let prepare_timings = PrepareTimings {
            compile: compile_time,
            load: Some(load_start.elapsed()),
        };
        let bridge_schema = model.schema().clone();
        Ok(Box::new(CoreMlModel {
            key: key.to_string(),
            artifact: artifact.path.clone(),
            compiled,
            units_requested: units,
            function,
            units_note,
            schema: bridge_schema.to_io_schema(),
            bridge_schema,
            sla: opts.sla.unwrap_or(DEFAULT_SLA),
            runtime: info,
            slot: Slot::new(Some(model)),
            rebuilds: AtomicU64::new(0),
            plan: OnceLock::new(),
            plan_timeout: self.plan_timeout,
            prepare_timings,
            _store: Arc::clone(&self.store),
        }))
    }

    /// One prediction, bounded by `timeout` in total (waiting for the
    /// model, a reload after an earlier timeout, and the prediction). Costs
    /// the prediction plus copies of inputs and outputs.
    fn infer(&self, model: &dyn PreparedModel, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap> {
        downcast_model::<CoreMlModel>(model, bridge::ENGINE_NAME)?.run(inputs, timeout)
    }

    /// Stages as Rust sees them: `marshal_in` (input descriptors over the
    /// caller's tensors), `predict` (the bridge call: its copy of the inputs,
    /// Core ML's prediction and its gathering of the outputs), `marshal_out`
    /// (outputs into host tensors), and `total` (including the wait for the
    /// model and any reload).
    fn infer_timed(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<(TensorMap, StageTimings)> {
        let start = Instant::now();
        let m = downcast_model::<CoreMlModel>(model, bridge::ENGINE_NAME)?;
        let (out, mut t) = m.with_loaded("prediction", timeout, |bm, left| bm.predict_timed(inputs, left))?;
        t.total = Some(start.elapsed());
        Ok((out, t))
    }

    /// One prediction into `outputs` through `coreml_predict_into`
    /// ([`BridgeModel::predict_into`]): outputs already in the map are
    /// overwritten in place (one copy in the bridge, no allocation in the
    /// steady state); an empty map, or one that does not fit, is replaced
    /// by `infer`'s result. Bounded by `timeout` in all (waiting for the
    /// model, a reload, the prediction); a timeout poisons the model (the
    /// next call reloads) and never lets the late prediction write into
    /// `outputs`.
    fn infer_into(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        timeout: Duration,
    ) -> Result<()> {
        let m = downcast_model::<CoreMlModel>(model, bridge::ENGINE_NAME)?;
        m.with_loaded("prediction", timeout, |bm, left| bm.predict_into(inputs, outputs, left))
    }

    /// A fresh state (Core ML's `makeState()`, every buffer zeroed) through
    /// `coreml_make_state`, owned by the returned [`ModelState`] and freed
    /// with it. Waits at most [`MAKE_STATE_TIMEOUT`] in all. Costs the
    /// allocation of the model's state buffers. Core ML has states from
    /// macOS 15 on (`Unsupported` before); a stateless model gets an empty
    /// state that behaves like no state.
    fn make_state(&self, model: &dyn PreparedModel) -> Result<ModelState> {
        let m = downcast_model::<CoreMlModel>(model, bridge::ENGINE_NAME)?;
        let state = m.with_loaded("making a state", MAKE_STATE_TIMEOUT, |bm, left| bm.make_state(left))?;
        Ok(ModelState::new(
            bridge::ENGINE_NAME,
            m.state_owner(),
            Box::new(CoreMlState { state }),
        ))
    }

    /// One prediction that reads and updates `state`
    /// (`coreml_predict_with_state`, Core ML's
    /// `prediction(from:using:options:)`), bounded by `timeout` in all
    /// (waiting for the model, a reload, the prediction). A state of
    /// another model, or of this model before it was loaded again, is
    /// refused as `SchemaMismatch` before anything runs. A timeout poisons
    /// the state (and the model, which the next call reloads). Costs what
    /// `infer` costs.
    fn infer_with_state(
        &self,
        model: &dyn PreparedModel,
        state: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<TensorMap> {
        let m = downcast_model::<CoreMlModel>(model, bridge::ENGINE_NAME)?;
        let inner = state.inner_for::<CoreMlState>(bridge::ENGINE_NAME, &m.state_owner())?;
        let out = m.with_loaded("prediction with a state", timeout, |bm, left| {
            bm.predict_with_state(&inner.state, inputs, left)
        });
        if inner.state.is_poisoned() {
            state.poison();
        }
        out
    }

    /// A batch through `coreml_predict_batch` (Core ML's
    /// `predictions(from:options:)`) under one `timeout` for everything
    /// (waiting for the model, a reload, the batch). Every member is
    /// checked against the model before any runs; a bad member is refused
    /// naming its index. Costs the batch plus copies of inputs and outputs.
    fn infer_batch(&self, model: &dyn PreparedModel, batch: &[TensorMap], timeout: Duration) -> Result<Vec<TensorMap>> {
        let m = downcast_model::<CoreMlModel>(model, bridge::ENGINE_NAME)?;
        m.with_loaded("batch prediction", timeout, |bm, left| bm.predict_batch(batch, left))
    }

    /// Feature values of every kind through `coreml_predict_features`
    /// (`coreml_predict_images` when there are images): multi-arrays,
    /// images, int64, double and string inputs; outputs of every kind but
    /// images and sequences (a classifier's label string and its
    /// probabilities dictionary). An image reaches Core ML as a
    /// `CVPixelBuffer` the bridge fills with the caller's pixels (RGB / BGR
    /// converted to 32BGRA); its size and pixel format are checked against
    /// the model first. Bounded by `timeout` in all, as `infer`. Costs what
    /// `infer` costs, plus string copies and one copy of each image.
    fn infer_features(
        &self,
        model: &dyn PreparedModel,
        inputs: &crate::feature::FeatureMap,
        timeout: Duration,
    ) -> Result<crate::feature::FeatureMap> {
        let m = downcast_model::<CoreMlModel>(model, bridge::ENGINE_NAME)?;
        m.with_loaded("prediction", timeout, |bm, left| bm.predict_features(inputs, left))
    }

    /// The report. The first call per model asks the bridge for the compute
    /// plan (about the cost of a load, bounded by the engine's plan timeout)
    /// and remembers it.
    fn capabilities(&self, model: &dyn PreparedModel) -> CapabilityReport {
        let Ok(m) = downcast_model::<CoreMlModel>(model, bridge::ENGINE_NAME) else {
            return CapabilityReport {
                engine: bridge::ENGINE_NAME.to_string(),
                device_class: "unknown".to_string(),
                supported_dtypes: Vec::new(),
                max_batch_size: 0,
                ane_op_coverage_pct: None,
                compute_units_requested: ComputeUnits::All,
                compute_units_actual: None,
                compute_precision: "unknown".to_string(),
                compile_p99_ms: None,
                infer_p99_ms: None,
                notes: vec!["this model was not prepared by the Core ML engine".to_string()],
            };
        };
        let plan = m.plan_summary();
        let mut notes = Vec::new();
        notes.extend(m.units_note.clone());
        notes.push(plan.note);
        if m.runtime.test_runtime {
            notes.push("served by the bridge's test runtime (COREML_BRIDGE_TEST_RUNTIME=1): fake models".to_string());
        }
        notes.push("i8 inputs need macOS 26 or later (the bridge answers Unsupported before)".to_string());
        let rebuilds = m.rebuilds();
        if rebuilds > 0 {
            notes.push(format!("reloaded {rebuilds} time(s) after prediction timeouts"));
        }
        notes.push(format!("compiled models in the {} store", self.store.name()));
        CapabilityReport {
            engine: bridge::ENGINE_NAME.to_string(),
            device_class: m.runtime.chip.clone().unwrap_or_else(|| m.runtime.platform.clone()),
            supported_dtypes: bridge::INPUT_DTYPES.to_vec(),
            max_batch_size: max_batch(&m.schema),
            ane_op_coverage_pct: plan.ane_pct,
            compute_units_requested: m.units_requested,
            compute_units_actual: plan.units_in_use,
            compute_precision: "chosen by Core ML per device (the Neural Engine and the GPU compute in fp16)"
                .to_string(),
            compile_p99_ms: None,
            infer_p99_ms: None,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::inference::TensorSpec;
    use crate::tensor::DType;
    use std::sync::atomic::AtomicUsize;

    fn key(n: u8) -> CacheKey {
        CacheKey {
            sha256: format!("{n:02x}"),
            coreml_version: "v".into(),
            backend: "mlprogram".into(),
            compute_units: ComputeUnits::All,
            quantization: "fp32".into(),
            shape_key: "1".into(),
            os_build: "b".into(),
        }
    }

    #[test]
    fn temp_store_builds_once_per_key_and_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let store_root = root.path().join("store");
        let store = TempDirCompiledStore::in_dir(&store_root);
        let calls = AtomicUsize::new(0);
        let mut build = |d: &Path| {
            calls.fetch_add(1, Ordering::Relaxed);
            std::fs::create_dir(d.join("m.mlmodelc")).map_err(|e| Error::io("mk", e))
        };
        assert_eq!(store.lookup(&key(1)).unwrap(), None);
        let a = store.get_or_build(&key(1), &mut build).unwrap();
        let b = store.get_or_build(&key(1), &mut build).unwrap();
        assert_eq!(a, b);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(store.lookup(&key(1)).unwrap(), Some(a.clone()));
        assert_eq!(find_compiled_model(&a).unwrap(), a.join("m.mlmodelc"));
        let c = store.get_or_build(&key(2), &mut build).unwrap();
        assert_ne!(a, c);
        assert_eq!(store.builds(), 2);

        // A failed build leaves nothing behind and is not remembered.
        let mut failing = |d: &Path| -> Result<()> {
            std::fs::create_dir(d.join("half.mlmodelc")).unwrap();
            Err(Error::Compile {
                model: "m".into(),
                message: "boom".into(),
            })
        };
        let e = store.get_or_build(&key(3), &mut failing).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Compile);
        assert_eq!(store.lookup(&key(3)).unwrap(), None);
        assert_eq!(std::fs::read_dir(&store_root).unwrap().count(), 2);
        drop(store);
        assert!(!store_root.exists(), "the store deletes its directory on drop");
    }

    #[test]
    fn temp_store_concurrent_first_builds_install_one() {
        let root = tempfile::tempdir().unwrap();
        let store = TempDirCompiledStore::in_dir(root.path().join("s"));
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        store
                            .get_or_build(&key(7), &mut |d: &Path| {
                                std::thread::sleep(Duration::from_millis(20));
                                std::fs::create_dir(d.join("m.mlmodelc")).map_err(|e| Error::io("mk", e))
                            })
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(dirs.iter().all(|d| d == &dirs[0]), "{dirs:?}");
        assert_eq!(
            std::fs::read_dir(store.root()).unwrap().count(),
            1,
            "losers are deleted"
        );
    }

    #[test]
    fn the_cache_is_a_store_too() {
        let root = tempfile::tempdir().unwrap();
        let cache = ModelCache::open(crate::cache::CacheConfig::at(root.path()), crate::cache::host_meta()).unwrap();
        let store: &dyn CompiledStore = &cache;
        assert_eq!(store.name(), "cache");
        assert_eq!(store.lookup(&key(4)).unwrap(), None);
        let calls = AtomicUsize::new(0);
        let mut build = |d: &Path| {
            calls.fetch_add(1, Ordering::Relaxed);
            std::fs::create_dir(d.join("m.mlmodelc")).map_err(|e| Error::io("mk", e))?;
            std::fs::write(d.join("m.mlmodelc/model.bin"), b"compiled").map_err(|e| Error::io("write", e))
        };
        let a = store.get_or_build(&key(4), &mut build).unwrap();
        let b = store.get_or_build(&key(4), &mut build).unwrap();
        assert_eq!(a, b);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(store.lookup(&key(4)).unwrap(), Some(a.clone()));
        assert_eq!(
            std::fs::read(find_compiled_model(&a).unwrap().join("model.bin")).unwrap(),
            b"compiled"
        );
    }

    #[test]
    fn compiled_model_must_be_unique_in_its_entry() {
        let d = tempfile::tempdir().unwrap();
        let e = find_compiled_model(d.path()).unwrap_err();
        assert!(e.to_string().contains("found 0"), "{e}");
        std::fs::create_dir(d.path().join("a.mlmodelc")).unwrap();
        std::fs::create_dir(d.path().join("b.mlmodelc")).unwrap();
        let e = find_compiled_model(d.path()).unwrap_err();
        assert!(e.to_string().contains("found 2"), "{e}");
    }

    #[test]
    fn slot_waiters_give_up_at_their_deadline() {
        let slot = Slot::new(Some(5u32));
        let g = slot.acquire(Instant::now() + Duration::from_secs(1)).unwrap();
        assert_eq!(g.value, Some(5));
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let t = Instant::now();
                let got = slot.acquire(Instant::now() + Duration::from_millis(100)).is_some();
                (got, t.elapsed())
            });
            let (got, waited) = h.join().unwrap();
            assert!(!got);
            assert!(waited >= Duration::from_millis(95), "{waited:?}");
            assert!(waited < Duration::from_secs(2), "{waited:?}");
        });
        drop(g);
        // Handed back: the next holder sees the value.
        let g = slot.acquire(Instant::now() + Duration::from_millis(10)).unwrap();
        assert_eq!(g.value, Some(5));
        drop(g);
        // A waiter is woken when the holder returns the value.
        let g = slot.acquire(Instant::now() + Duration::from_secs(1)).unwrap();
        std::thread::scope(|s| {
            let h = s.spawn(|| slot.acquire(Instant::now() + Duration::from_secs(5)).map(|g| g.value));
            std::thread::sleep(Duration::from_millis(50));
            let mut g = g;
            g.value = Some(6);
            drop(g);
            assert_eq!(h.join().unwrap(), Some(Some(6)));
        });
    }

    #[test]
    fn max_batch_takes_the_tightest_input() {
        let fixed = TensorSpec::fixed("a", DType::F32, vec![2, 3]);
        let ranged = TensorSpec {
            constraint: ShapeConstraint::Range(vec![(1, Some(8)), (3, Some(3))]),
            ..TensorSpec::fixed("b", DType::F32, vec![1, 3])
        };
        let open = TensorSpec {
            constraint: ShapeConstraint::Range(vec![(1, None)]),
            ..TensorSpec::fixed("c", DType::F32, vec![1])
        };
        let enumerated = TensorSpec {
            constraint: ShapeConstraint::Enumerated(vec![vec![4, 3], vec![1, 3]]),
            ..TensorSpec::fixed("d", DType::F32, vec![1, 3])
        };
        let s = |v: Vec<TensorSpec>| IoSchema {
            inputs: v,
            outputs: vec![],
            states: vec![],
            classifier: None,
            functions: Default::default(),
        };
        assert_eq!(max_batch(&s(vec![])), 1);
        assert_eq!(max_batch(&s(vec![fixed.clone()])), 2);
        assert_eq!(max_batch(&s(vec![ranged.clone()])), 8);
        assert_eq!(max_batch(&s(vec![open.clone()])), usize::MAX);
        assert_eq!(max_batch(&s(vec![enumerated])), 4);
        assert_eq!(max_batch(&s(vec![ranged, open, fixed])), 2);
    }

    #[cfg(not(coreml_bridge))]
    #[test]
    fn without_the_bridge_prepare_is_unavailable_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("m.mlpackage");
        std::fs::create_dir(&pkg).unwrap();
        std::fs::write(pkg.join("fake_model.json"), "{}").unwrap();
        let artifact = ModelArtifact::with_format(ModelFmt::MlPackage, &pkg).unwrap();
        let engine = CoreMlEngine::new();
        let Err(e) = engine.prepare(&artifact, PrepareOptions::default()) else {
            panic!("prepare succeeded without a bridge");
        };
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(
            e.to_string(),
            format!("coreml is unavailable: {}", bridge::NO_BRIDGE_REASON)
        );
        if !cfg!(target_vendor = "apple") {
            assert!(e.to_string().contains("Core ML exists only on Apple platforms"), "{e}");
        }
        assert_eq!(CoreMlEngine::availability().unwrap_err().kind(), ErrorKind::Unavailable);
    }
}
