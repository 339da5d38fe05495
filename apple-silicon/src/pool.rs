//! Model instance pools: N prepared instances of one model behind one
//! handle, with a bounded first-come-first-served queue in front of them.
//!
//! One Core ML `MLModel` runs one prediction at a time, and the Neural
//! Engine pipelines a few requests: the plan's Phase 4 serves a hot model
//! with 2–4 loaded instances. [`PooledEngine`] wraps any engine: its
//! `prepare` prepares the model `size` times (the first prepare compiles, the
//! others load the same compiled form from the engine's store or cache), and
//! every call borrows one free instance for its duration.
//!
//! - **Back-pressure.** At most `queue_capacity` calls wait for an instance;
//!   one more is refused at once with [`Error::Unavailable`].
//! - **Deadlines.** A call's timeout covers its wait in the queue: a call
//!   whose deadline passes while it waits leaves the queue with
//!   [`Error::Timeout`] at its deadline and never starts late; the instance
//!   gets what is left of the deadline.
//! - **Order.** Waiting calls are served in arrival order, except that a
//!   stateful call waits for the instance its state lives on.
//! - **Poisoned instances.** After a call, an instance that reports itself
//!   poisoned ([`PreparedModel::is_poisoned`]) leaves the rotation and is
//!   prepared again on a thread of its own (retrying with backoff), while
//!   the other instances keep serving.
//! - **Telemetry.** With [`PooledEngine::with_telemetry`], every call's
//!   stages, its queue wait ([`crate::telemetry::Stage::QueueWait`]) and the queue-depth high
//!   water mark go to the registry under the engine name `pool`.
//!
//! Costs: `size` prepares (memory × `size` for engines that load weights per
//! instance), one mutex and at most one condition-variable wait per call.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::inference::{
    downcast_model, CapabilityReport, InferenceEngine, IoSchema, ModelArtifact, ModelState, PrepareOptions,
    PreparedModel,
};
use crate::telemetry::{ModelTelemetry, StageTimings, TelemetryRegistry};
use crate::tensor::TensorMap;

/// The name [`PooledEngine`] reports, and its telemetry's engine name.
pub const POOL_ENGINE: &str = "pool";

/// How many instances a pool holds and how many calls may wait for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Prepared instances of the model (at least 1).
    pub size: usize,
    /// Calls that may wait for a free instance at once; the next is refused.
    pub queue_capacity: usize,
    /// First wait before preparing a poisoned instance again after a failed
    /// attempt; doubles up to 30 s.
    pub rebuild_backoff: Duration,
}

impl PoolConfig {
    /// The plan's defaults for an engine named `engine`: 2 instances on Core
    /// ML (the Neural Engine pipelines requests), 1 elsewhere (the Candle
    /// engine already runs concurrent calls on one plan); 64 waiting calls.
    pub fn for_engine(engine: &str) -> PoolConfig {
        PoolConfig {
            size: if engine == "coreml" { 2 } else { 1 },
            queue_capacity: 64,
            rebuild_backoff: Duration::from_millis(100),
        }
    }
}

/// An engine that serves each model from a pool of prepared instances; see
/// the [module docs](self).
pub struct PooledEngine {
    inner: Arc<dyn InferenceEngine>,
    config: PoolConfig,
    telemetry: Option<Arc<TelemetryRegistry>>,
}

impl PooledEngine {
    /// Pools `inner`'s models with [`PoolConfig::for_engine`]'s defaults.
    pub fn new(inner: Arc<dyn InferenceEngine>) -> PooledEngine {
        let config = PoolConfig::for_engine(inner.name());
        PooledEngine {
            inner,
            config,
            telemetry: None,
        }
    }

    /// Sets how many instances each model gets (at least 1; the plan: no
    /// more than the Neural Engine's pipeline width, 2–4).
    pub fn with_pool_size(mut self, size: usize) -> PooledEngine {
        self.config.size = size.max(1);
        self
    }

    /// Sets how many calls may wait for an instance before the next is
    /// refused.
    pub fn with_queue_capacity(mut self, capacity: usize) -> PooledEngine {
        self.config.queue_capacity = capacity;
        self
    }

    /// Sets the first backoff between attempts to rebuild a poisoned
    /// instance.
    pub fn with_rebuild_backoff(mut self, backoff: Duration) -> PooledEngine {
        self.config.rebuild_backoff = backoff;
        self
    }

    /// Records every call's stages, queue wait and queue depth in `registry`.
    pub fn with_telemetry(mut self, registry: Arc<TelemetryRegistry>) -> PooledEngine {
        self.telemetry = Some(registry);
        self
    }

    /// The pool's configuration.
    pub fn config(&self) -> PoolConfig {
        self.config
    }
}

/// A model served by a pool of instances; made by [`PooledEngine::prepare`].
pub struct PooledModel {
    shared: Arc<Shared>,
    schema: IoSchema,
    cache_key: String,
    /// Owner of this pool's states: the cache key plus a process-unique
    /// pool number (two pools of one model do not share states).
    owner: String,
    sla: Duration,
}

static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

struct Shared {
    queue: Mutex<Queue>,
    freed: Condvar,
    engine: Arc<dyn InferenceEngine>,
    artifact: ModelArtifact,
    opts: PrepareOptions,
    config: PoolConfig,
    telemetry: Option<Arc<ModelTelemetry>>,
    rebuilds: AtomicU64,
}

struct Slot {
    /// `None` while the instance is being prepared again.
    model: Option<Arc<dyn PreparedModel>>,
    /// Bumped by every rebuild: a state made on an older instance is stale.
    generation: u64,
}

struct Queue {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Waiting calls in arrival order: (ticket, the instance it needs).
    waiting: VecDeque<(u64, Option<usize>)>,
    next_ticket: u64,
}

impl Queue {
    /// The free instance that waiter `ticket` gets if free instances go to
    /// waiters in arrival order, each to the first waiter that accepts it.
    fn grant(&self, ticket: u64) -> Option<usize> {
        let mut free = self.free.clone();
        for &(t, want) in &self.waiting {
            let pick = match want {
                Some(i) => free.iter().position(|&f| f == i),
                None => free.len().checked_sub(1),
            };
            if t == ticket {
                return pick.map(|p| free[p]);
            }
            if let Some(p) = pick {
                free.swap_remove(p);
            }
        }
        None
    }
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // The queue's invariants hold between statements; a panic elsewhere
    // while it was held cannot leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One instance borrowed for one call; returned (or sent for rebuild) on drop.
struct Lease<'a> {
    shared: &'a Arc<Shared>,
    index: usize,
    generation: u64,
    model: Arc<dyn PreparedModel>,
    waited: Duration,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.model.is_poisoned() {
            Shared::rebuild(self.shared, self.index);
        } else {
            lock(&self.shared.queue).free.push(self.index);
            self.shared.freed.notify_all();
        }
    }
}

impl Shared {
    /// Waits (in arrival order) until an instance — `want`, or any — is free
    /// or `deadline` passes.
    fn acquire<'a>(
        self: &'a Arc<Self>,
        want: Option<usize>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Lease<'a>> {
        let start = Instant::now();
        let mut q = lock(&self.queue);
        // A call that finds an instance free and nobody ahead never queues.
        let served_at_once = q.waiting.is_empty() && !q.free.is_empty();
        if !served_at_once && q.waiting.len() >= self.config.queue_capacity {
            return Err(Error::Unavailable {
                engine: POOL_ENGINE.into(),
                reason: format!(
                    "the queue of model {} is full ({} calls waiting for one of {} instances); retry later or raise \
                     with_queue_capacity",
                    self.artifact.path.display(),
                    q.waiting.len(),
                    self.config.size
                ),
            });
        }
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.waiting.push_back((ticket, want));
        if let Some(t) = &self.telemetry {
            t.record_queue_depth(q.waiting.len() as u64);
        }
        loop {
            if let Some(index) = q.grant(ticket) {
                q.waiting.retain(|&(t, _)| t != ticket);
                q.free.retain(|&f| f != index);
                let slot = &q.slots[index];
                let (model, generation) = match &slot.model {
                    Some(m) => (Arc::clone(m), slot.generation),
                    None => return Err(Error::internal("a pool instance was free while being rebuilt")),
                };
                // Others may be able to go now that the head moved.
                self.freed.notify_all();
                return Ok(Lease {
                    shared: self,
                    index,
                    generation,
                    model,
                    waited: start.elapsed(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                q.waiting.retain(|&(t, _)| t != ticket);
                self.freed.notify_all();
                return Err(Error::Timeout {
                    operation: format!(
                        "waiting in the queue of model {} for a free instance (of {})",
                        self.artifact.path.display(),
                        self.config.size
                    ),
                    after: timeout,
                });
            }
            q = self
                .freed
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes instance `index` out of rotation and prepares it again on a
    /// thread of its own, retrying with backoff until it succeeds or the
    /// pool is dropped.
    fn rebuild(self: &Arc<Self>, index: usize) {
        {
            let mut q = lock(&self.queue);
            q.slots[index].model = None;
            q.slots[index].generation += 1;
        }
        let weak: Weak<Shared> = Arc::downgrade(self);
        let mut backoff = self.config.rebuild_backoff;
        let spawned = std::thread::Builder::new()
            .name("apple-silicon-pool-rebuild".into())
            .spawn(move || loop {
                let Some(shared) = weak.upgrade() else { return };
                match shared.engine.prepare(&shared.artifact, shared.opts.clone()) {
                    Ok(m) => {
                        let mut q = lock(&shared.queue);
                        q.slots[index].model = Some(Arc::from(m));
                        q.free.push(index);
                        shared.rebuilds.fetch_add(1, Ordering::Relaxed);
                        shared.freed.notify_all();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(
                            model = %shared.artifact.path.display(),
                            instance = index,
                            error = %e,
                            "could not prepare a poisoned pool instance again; retrying in {backoff:?}"
                        );
                        drop(shared);
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a thread to rebuild a pool instance; it stays out of rotation");
        }
    }
}

impl PooledModel {
    /// How many instances the pool holds (some may be being rebuilt).
    pub fn size(&self) -> usize {
        self.shared.config.size
    }

    /// Calls waiting for an instance right now.
    pub fn queue_depth(&self) -> usize {
        lock(&self.shared.queue).waiting.len()
    }

    /// Instances free right now.
    pub fn idle_instances(&self) -> usize {
        lock(&self.shared.queue).free.len()
    }

    /// How many poisoned instances were prepared again.
    pub fn rebuilds(&self) -> u64 {
        self.shared.rebuilds.load(Ordering::Relaxed)
    }

    fn any_instance(&self) -> Option<Arc<dyn PreparedModel>> {
        lock(&self.shared.queue).slots.iter().find_map(|s| s.model.clone())
    }
}

impl PreparedModel for PooledModel {
    fn cache_key(&self) -> &str {
        &self.cache_key
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

/// A state pinned to the pool instance it was made on (Core ML's `MLState`
/// belongs to one `MLModel`).
struct PinnedState {
    index: usize,
    generation: u64,
    state: ModelState,
}

impl PooledEngine {
    fn model<'a>(&self, model: &'a dyn PreparedModel) -> Result<&'a PooledModel> {
        downcast_model::<PooledModel>(model, POOL_ENGINE)
    }

    fn deadline(timeout: Duration) -> Instant {
        let now = Instant::now();
        now.checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400 * 365))
    }

    /// What is left of `deadline` once an instance is in hand; a call never
    /// starts with nothing left.
    fn left(deadline: Instant, timeout: Duration, m: &PooledModel) -> Result<Duration> {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::Timeout {
                operation: format!("waiting in the queue of model {}", m.shared.artifact.path.display()),
                after: timeout,
            })
    }
}

impl InferenceEngine for PooledEngine {
    fn name(&self) -> &str {
        POOL_ENGINE
    }

    /// Prepares the model `size` times with the inner engine. Fails if any
    /// instance fails (nothing is kept).
    fn prepare(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
        let size = self.config.size.max(1);
        let mut slots = Vec::with_capacity(size);
        for _ in 0..size {
            let m: Arc<dyn PreparedModel> = Arc::from(self.inner.prepare(artifact, opts.clone())?);
            slots.push(Slot {
                model: Some(m),
                generation: 0,
            });
        }
        let first = slots[0]
            .model
            .as_ref()
            .map(Arc::clone)
            .ok_or_else(|| Error::internal("empty pool"))?;
        let cache_key = first.cache_key().to_string();
        let telemetry = self.telemetry.as_ref().map(|r| r.handle(&cache_key, POOL_ENGINE));
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                slots,
                free: (0..size).rev().collect(),
                waiting: VecDeque::new(),
                next_ticket: 0,
            }),
            freed: Condvar::new(),
            engine: Arc::clone(&self.inner),
            artifact: artifact.clone(),
            opts,
            config: PoolConfig { size, ..self.config },
            telemetry,
            rebuilds: AtomicU64::new(0),
        });
        Ok(Box::new(PooledModel {
            schema: first.io_schema().clone(),
            sla: first.sla_estimate(),
            owner: format!("{cache_key} (pool #{})", NEXT_POOL.fetch_add(1, Ordering::Relaxed)),
            cache_key,
            shared,
        }))
    }

    fn infer(&self, model: &dyn PreparedModel, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap> {
        self.infer_timed(model, inputs, timeout).map(|(out, _)| out)
    }

    /// The inner engine's stages, plus the queue wait; `total` includes it.
    fn infer_timed(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<(TensorMap, StageTimings)> {
        let start = Instant::now();
        let m = self.model(model)?;
        let deadline = Self::deadline(timeout);
        let result = m.shared.acquire(None, deadline, timeout).and_then(|lease| {
            let left = Self::left(deadline, timeout, m)?;
            let (out, mut t) = self.inner.infer_timed(&*lease.model, inputs, left)?;
            t.queue_wait = Some(lease.waited);
            t.total = Some(start.elapsed());
            Ok((out, t))
        });
        if let Some(tel) = &m.shared.telemetry {
            let timings = match &result {
                Ok((_, t)) => *t,
                Err(_) => StageTimings::total(start.elapsed()),
            };
            tel.record_inference(&timings, result.as_ref().map(|_| ()).map_err(|e| e.kind()));
        }
        result
    }

    /// The inner engine's `infer_into` on a free instance: with Core ML, the
    /// caller's output tensors are written in place.
    fn infer_into(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        timeout: Duration,
    ) -> Result<()> {
        let m = self.model(model)?;
        let deadline = Self::deadline(timeout);
        let lease = m.shared.acquire(None, deadline, timeout)?;
        let left = Self::left(deadline, timeout, m)?;
        self.inner.infer_into(&*lease.model, inputs, outputs, left)
    }

    /// A state on one instance; every run with it waits for that instance.
    fn make_state(&self, model: &dyn PreparedModel) -> Result<ModelState> {
        let m = self.model(model)?;
        let lease = m
            .shared
            .acquire(None, Self::deadline(Duration::from_secs(60)), Duration::from_secs(60))?;
        let state = self.inner.make_state(&*lease.model)?;
        Ok(ModelState::new(
            POOL_ENGINE,
            m.owner.clone(),
            Box::new(PinnedState {
                index: lease.index,
                generation: lease.generation,
                state,
            }),
        ))
    }

    fn infer_with_state(
        &self,
        model: &dyn PreparedModel,
        state: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<TensorMap> {
        let m = self.model(model)?;
        let pinned = state.inner_for::<PinnedState>(POOL_ENGINE, &m.owner)?;
        let deadline = Self::deadline(timeout);
        let lease = m.shared.acquire(Some(pinned.index), deadline, timeout)?;
        if lease.generation != pinned.generation {
            return Err(Error::Unavailable {
                engine: POOL_ENGINE.into(),
                reason: "the pool instance this state was made on was rebuilt after it was poisoned; make a new state"
                    .into(),
            });
        }
        let left = Self::left(deadline, timeout, m)?;
        self.inner
            .infer_with_state(&*lease.model, &mut pinned.state, inputs, left)
    }

    /// The whole batch on one instance.
    fn infer_batch(&self, model: &dyn PreparedModel, batch: &[TensorMap], timeout: Duration) -> Result<Vec<TensorMap>> {
        let m = self.model(model)?;
        let deadline = Self::deadline(timeout);
        let lease = m.shared.acquire(None, deadline, timeout)?;
        let left = Self::left(deadline, timeout, m)?;
        self.inner.infer_batch(&*lease.model, batch, left)
    }

    fn capabilities(&self, model: &dyn PreparedModel) -> CapabilityReport {
        // Every instance is being rebuilt, or the model is not a pool's:
        // report what the inner engine says of the model as given.
        let Some((m, instance)) = self.model(model).ok().and_then(|m| m.any_instance().map(|i| (m, i))) else {
            return self.inner.capabilities(model);
        };
        let mut report = self.inner.capabilities(&*instance);
        report.notes.push(format!(
            "served by a pool of {} {} instances (queue capacity {})",
            m.size(),
            self.inner.name(),
            m.shared.config.queue_capacity
        ));
        report
    }
}
