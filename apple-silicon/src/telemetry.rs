//! Telemetry: what running a model costs and how it fails, per model and engine.
//!
//! A [`TelemetryRegistry`] hands out one [`ModelTelemetry`] per `(model,
//! engine)` pair. Each records, from any number of threads at once:
//!
//! - attempts and successes of prepare, compile, load and predict ([`Op`]);
//! - latencies per [`Stage`] (prepare, compile, load, marshal in, predict,
//!   marshal out, total) in HDR histograms, read back as p50/p95/p99;
//! - failures by the plan's taxonomy ([`Failure`], mapped from
//!   [`ErrorKind`]) plus a count of calls served by a fallback;
//! - a memory high-water mark, and the process's own RSS / peak RSS
//!   ([`process_stats`]);
//! - compute units requested vs actually used, and the Neural Engine share of
//!   the model's ops where an engine knows it.
//!
//! [`ModelTelemetry::snapshot`] gives a [`TelemetrySnapshot`] that serialises
//! to JSON (serde) and back; [`TelemetryRegistry::emit`] logs every snapshot as
//! a `tracing` event. Failures and fallbacks are also logged as they happen, at
//! `debug` level; successes are not (they are counted).
//!
//! ## Cost
//!
//! Counters are relaxed atomics (a few ns). A latency record locks one of a
//! small set of sharded mutexes (threads are spread over the shards, so
//! threads rarely contend) and bumps one histogram bucket: tens of
//! nanoseconds uncontended — `examples/telemetry_bench.rs` prints the figure.
//! Histograms keep 2 significant digits (values are exact to within 1%) from
//! 1 µs to 1 hour; one shard's histograms take about 180 KB and are allocated
//! the first time a thread mapped to that shard records. Snapshots merge the
//! shards and cost a few hundred microseconds: take them off the hot path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::inference::{CapabilityReport, ComputeUnits};

/// An operation whose attempts and successes are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A whole `prepare` (compile + load, or an engine's equivalent).
    Prepare,
    /// Compiling a package (Core ML compile, or Candle's execution plan).
    Compile,
    /// Loading a compiled model.
    Load,
    /// One inference.
    Predict,
}

impl Op {
    /// Every op, in declaration order.
    pub const ALL: [Op; 4] = [Op::Prepare, Op::Compile, Op::Load, Op::Predict];

    fn index(self) -> usize {
        self as usize
    }
}

/// A timed stage. The four inference stages nest: `Total` covers marshal in,
/// predict and marshal out of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A whole `prepare`.
    Prepare,
    /// Compile.
    Compile,
    /// Load.
    Load,
    /// Copying inputs into the engine's representation.
    MarshalIn,
    /// The engine's prediction itself.
    Predict,
    /// Copying outputs back into host tensors.
    MarshalOut,
    /// One whole inference call as its caller saw it.
    Total,
    /// Time a call waited in a model pool's queue for a free instance
    /// ([`crate::pool`]); not part of `Total`'s inner stages.
    QueueWait,
}

impl Stage {
    /// Every stage, in declaration order.
    pub const ALL: [Stage; 8] = [
        Stage::Prepare,
        Stage::Compile,
        Stage::Load,
        Stage::MarshalIn,
        Stage::Predict,
        Stage::MarshalOut,
        Stage::Total,
        Stage::QueueWait,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// The plan's failure taxonomy (compile error, schema mismatch, timeout,
/// memory pressure — plus load errors, an unavailable engine and everything
/// else). Fallbacks are counted separately, see
/// [`ModelTelemetry::record_fallback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The model could not be turned into a runnable form: compile errors,
    /// malformed artifacts, unsupported ops or formats.
    CompileError,
    /// A compiled model could not be loaded.
    LoadError,
    /// Inputs or outputs did not match the model's schema.
    SchemaMismatch,
    /// A deadline passed.
    Timeout,
    /// A memory limit was passed or an allocation failed.
    MemoryPressure,
    /// The engine cannot run here.
    Unavailable,
    /// I/O and internal errors.
    Other,
}

impl Failure {
    /// Every failure class, in declaration order.
    pub const ALL: [Failure; 7] = [
        Failure::CompileError,
        Failure::LoadError,
        Failure::SchemaMismatch,
        Failure::Timeout,
        Failure::MemoryPressure,
        Failure::Unavailable,
        Failure::Other,
    ];

    /// The taxonomy class of an error kind.
    pub fn from_kind(kind: ErrorKind) -> Failure {
        match kind {
            ErrorKind::Compile | ErrorKind::InvalidArtifact | ErrorKind::Unsupported => Failure::CompileError,
            ErrorKind::Load => Failure::LoadError,
            ErrorKind::SchemaMismatch => Failure::SchemaMismatch,
            ErrorKind::Timeout => Failure::Timeout,
            ErrorKind::MemoryPressure => Failure::MemoryPressure,
            ErrorKind::Unavailable => Failure::Unavailable,
            ErrorKind::Io | ErrorKind::Internal => Failure::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Memory figures of this process, where the OS gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Resident set size now, in bytes (Linux `VmRSS`; macOS
    /// `proc_pid_rusage` `ri_resident_size`).
    pub rss_bytes: Option<u64>,
    /// Peak resident set size, in bytes (Linux `VmHWM`; macOS
    /// `getrusage(RUSAGE_SELF).ru_maxrss`, which macOS reports in bytes).
    pub high_water_bytes: Option<u64>,
    /// macOS's physical footprint now, in bytes (`ri_phys_footprint`: what
    /// Activity Monitor, `footprint` and Instruments call memory, including
    /// compressed pages; `None` on Linux).
    #[serde(default)]
    pub footprint_bytes: Option<u64>,
    /// Threads in the process (Linux `Threads`; `None` elsewhere).
    pub threads: Option<u64>,
}

/// Reads this process's memory and thread figures. On Linux this parses
/// `/proc/self/status` (about 10–30 µs); on macOS it calls `proc_pid_rusage`
/// and `getrusage` (a few µs). Fields the OS does not give are `None`.
pub fn process_stats() -> ProcessStats {
    #[cfg(target_os = "linux")]
    {
        match std::fs::read_to_string("/proc/self/status") {
            Ok(text) => parse_proc_status(&text),
            Err(_) => ProcessStats::default(),
        }
    }
    #[cfg(target_os = "macos")]
    {
        let (rss_bytes, footprint_bytes) = macos_rusage_now();
        ProcessStats {
            rss_bytes,
            high_water_bytes: macos_max_rss(),
            footprint_bytes,
            threads: None,
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        ProcessStats::default()
    }
}

/// The process's memory now: macOS's physical footprint, else the resident
/// set size, else (where only that is known) the peak. The default memory
/// probe of the breaker and the gates, so their growth and trend checks see
/// memory that can go down as well as up.
pub fn process_memory_bytes() -> Option<u64> {
    let s = process_stats();
    s.footprint_bytes.or(s.rss_bytes).or(s.high_water_bytes)
}

/// `(resident size, physical footprint)` now, from `proc_pid_rusage`.
#[cfg(target_os = "macos")]
fn macos_rusage_now() -> (Option<u64>, Option<u64>) {
    let mut info = std::mem::MaybeUninit::<libc::rusage_info_v2>::zeroed();
    // SAFETY: with RUSAGE_INFO_V2 the call writes a whole `rusage_info_v2`
    // into the buffer when it returns 0; we only read it in that case.
    let rc = unsafe {
        libc::proc_pid_rusage(
            libc::getpid(),
            libc::RUSAGE_INFO_V2,
            info.as_mut_ptr().cast::<libc::rusage_info_t>(),
        )
    };
    if rc != 0 {
        return (None, None);
    }
    // SAFETY: initialised by the successful call above.
    let info = unsafe { info.assume_init() };
    (Some(info.ri_resident_size), Some(info.ri_phys_footprint))
}

#[cfg(target_os = "macos")]
fn macos_max_rss() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the whole struct when it returns 0; we only
    // read it in that case.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call above.
    let usage = unsafe { usage.assume_init() };
    u64::try_from(usage.ru_maxrss).ok()
}

/// Parses the `VmRSS`, `VmHWM` and `Threads` lines of a Linux
/// `/proc/<pid>/status` text (sizes are in kB there).
pub fn parse_proc_status(text: &str) -> ProcessStats {
    let mut out = ProcessStats::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut words = value.split_whitespace();
        let number = words.next().and_then(|n| n.parse::<u64>().ok());
        let scale = match words.next() {
            Some("kB") => 1024,
            _ => 1,
        };
        match key {
            "VmRSS" => out.rss_bytes = number.map(|n| n * scale),
            "VmHWM" => out.high_water_bytes = number.map(|n| n * scale),
            "Threads" => out.threads = number,
            _ => {}
        }
    }
    out
}

/// Attempts and successes of one [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OpCounts {
    /// Calls started.
    pub attempts: u64,
    /// Calls that succeeded.
    pub successes: u64,
}

/// Counters of every [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Whole prepares.
    pub prepare: OpCounts,
    /// Compiles.
    pub compile: OpCounts,
    /// Loads.
    pub load: OpCounts,
    /// Inferences.
    pub predict: OpCounts,
}

impl Counters {
    /// The counts of one op.
    pub fn get(&self, op: Op) -> OpCounts {
        match op {
            Op::Prepare => self.prepare,
            Op::Compile => self.compile,
            Op::Load => self.load,
            Op::Predict => self.predict,
        }
    }
}

/// Failure counts by taxonomy class, plus fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FailureCounts {
    /// [`Failure::CompileError`].
    pub compile_error: u64,
    /// [`Failure::LoadError`].
    pub load_error: u64,
    /// [`Failure::SchemaMismatch`].
    pub schema_mismatch: u64,
    /// [`Failure::Timeout`].
    pub timeout: u64,
    /// [`Failure::MemoryPressure`].
    pub memory_pressure: u64,
    /// [`Failure::Unavailable`].
    pub unavailable: u64,
    /// [`Failure::Other`].
    pub other: u64,
    /// Calls this engine could not answer that a fallback answered.
    pub fallback: u64,
}

impl FailureCounts {
    /// The count of one class.
    pub fn get(&self, f: Failure) -> u64 {
        match f {
            Failure::CompileError => self.compile_error,
            Failure::LoadError => self.load_error,
            Failure::SchemaMismatch => self.schema_mismatch,
            Failure::Timeout => self.timeout,
            Failure::MemoryPressure => self.memory_pressure,
            Failure::Unavailable => self.unavailable,
            Failure::Other => self.other,
        }
    }

    /// All failures (fallbacks excluded).
    pub fn total(&self) -> u64 {
        Failure::ALL.iter().map(|&f| self.get(f)).sum()
    }
}

/// Latency distribution of one stage, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Smallest sample.
    pub min_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// Mean, rounded to the microsecond.
    pub mean_us: u64,
}

/// Memory figures at snapshot time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemorySnapshot {
    /// Highest value given to [`ModelTelemetry::record_memory`].
    pub recorded_high_water_bytes: Option<u64>,
    /// The process's figures when the snapshot was taken.
    pub process: ProcessStats,
}

/// Everything one [`ModelTelemetry`] knows, as plain data (JSON via serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySnapshot {
    /// Model identifier.
    pub model: String,
    /// Engine name.
    pub engine: String,
    /// Milliseconds since the telemetry was created.
    pub uptime_ms: u64,
    /// Attempts and successes per op.
    pub counters: Counters,
    /// Latency per stage that has samples.
    pub latency: BTreeMap<Stage, LatencySummary>,
    /// Failures by class, and fallbacks.
    pub failures: FailureCounts,
    /// Memory high-water marks.
    pub memory: MemorySnapshot,
    /// Compute units the caller asked for, where recorded.
    pub compute_units_requested: Option<ComputeUnits>,
    /// Compute units actually used, where the engine knows.
    pub compute_units_actual: Option<ComputeUnits>,
    /// Share of the model's ops on the Neural Engine, where known.
    pub ane_op_coverage_pct: Option<u32>,
    /// The most calls ever waiting at once in a model pool's queue
    /// ([`crate::pool`]); `None` outside a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth_high_water: Option<u64>,
}

impl TelemetrySnapshot {
    /// Fraction of inferences that succeeded, `None` before the first.
    pub fn predict_success_rate(&self) -> Option<f64> {
        let c = self.counters.predict;
        (c.attempts > 0).then(|| c.successes as f64 / c.attempts as f64)
    }

    /// Pretty JSON. Serialising plain data cannot fail; should it ever, the
    /// error text is returned inside a JSON string instead of panicking.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Durations of the stages of one inference; `None` for stages the engine
/// did not measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageTimings {
    /// Marshal in.
    pub marshal_in: Option<Duration>,
    /// Predict.
    pub predict: Option<Duration>,
    /// Marshal out.
    pub marshal_out: Option<Duration>,
    /// The whole call.
    pub total: Option<Duration>,
    /// Waiting in a model pool's queue before the call started.
    pub queue_wait: Option<Duration>,
}

impl StageTimings {
    /// Only the total is known.
    pub fn total(total: Duration) -> StageTimings {
        StageTimings {
            total: Some(total),
            ..StageTimings::default()
        }
    }
}

/// Durations of the stages of one prepare, where the engine sees them:
/// `compile` (Core ML: the store lookup and, on a miss, the compile; Candle:
/// building the plan) and `load` (Core ML: loading the compiled model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrepareTimings {
    /// Compile (or plan).
    pub compile: Option<Duration>,
    /// Load.
    pub load: Option<Duration>,
}

// 1 µs .. 1 hour, 2 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;
const HIST_SIGFIG: u8 = 2;
const MAX_SHARDS: usize = 8;

fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG).ok()
}

struct Hists([Histogram<u64>; Stage::ALL.len()]);

impl Hists {
    fn new() -> Option<Box<Hists>> {
        let h = new_histogram()?;
        Some(Box::new(Hists(std::array::from_fn(|_| h.clone()))))
    }

    fn record(&mut self, stage: Stage, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0[stage.index()].saturating_record(us.min(HIST_MAX_US));
    }
}

#[repr(align(64))]
struct Shard(Mutex<Option<Box<Hists>>>);

static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a telemetry lock cannot leave the data in a state
    // worse than "one sample missing": keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default, Clone, Copy)]
struct ComputeInfo {
    requested: Option<ComputeUnits>,
    actual: Option<ComputeUnits>,
    ane_pct: Option<u32>,
}

/// Telemetry of one model on one engine. Share it as `Arc<ModelTelemetry>`;
/// every method takes `&self` and may be called from many threads at once.
pub struct ModelTelemetry {
    model: String,
    engine: String,
    created: Instant,
    attempts: [AtomicU64; 4],
    successes: [AtomicU64; 4],
    failures: [AtomicU64; 7],
    fallbacks: AtomicU64,
    memory_high_water: AtomicU64,
    queue_depth_high_water: AtomicU64,
    shards: Box<[Shard]>,
    info: Mutex<ComputeInfo>,
}

impl std::fmt::Debug for ModelTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTelemetry")
            .field("model", &self.model)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl ModelTelemetry {
    /// Empty telemetry for `model` on `engine`. Allocates only the shard
    /// table; histograms are allocated on first use of each shard.
    pub fn new(model: impl Into<String>, engine: impl Into<String>) -> ModelTelemetry {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4);
        let n = cores.next_power_of_two().clamp(2, MAX_SHARDS);
        ModelTelemetry {
            model: model.into(),
            engine: engine.into(),
            created: Instant::now(),
            attempts: Default::default(),
            successes: Default::default(),
            failures: Default::default(),
            fallbacks: AtomicU64::new(0),
            memory_high_water: AtomicU64::new(0),
            queue_depth_high_water: AtomicU64::new(0),
            shards: (0..n).map(|_| Shard(Mutex::new(None))).collect(),
            info: Mutex::new(ComputeInfo::default()),
        }
    }

    /// The model identifier.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The engine name.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// Counts one attempt of `op`. One relaxed atomic add.
    pub fn record_attempt(&self, op: Op) {
        self.attempts[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one success of `op`. One relaxed atomic add.
    pub fn record_success(&self, op: Op) {
        self.successes[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failure of class `Failure::from_kind(kind)` and logs it at
    /// `debug` level.
    pub fn record_failure(&self, kind: ErrorKind) {
        let f = Failure::from_kind(kind);
        self.failures[f.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "apple_silicon::telemetry",
            model = %self.model,
            engine = %self.engine,
            failure = ?f,
            "failure recorded"
        );
    }

    /// Counts one attempt of `op` and its outcome: a success, or a failure of
    /// the error's kind.
    pub fn record_outcome(&self, op: Op, outcome: std::result::Result<(), ErrorKind>) {
        self.record_attempt(op);
        match outcome {
            Ok(()) => self.record_success(op),
            Err(kind) => self.record_failure(kind),
        }
    }

    /// Counts one call this engine could not answer that a fallback answered.
    pub fn record_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "apple_silicon::telemetry",
            model = %self.model,
            engine = %self.engine,
            "call answered by the fallback"
        );
    }

    fn with_shard(&self, f: impl FnOnce(&mut Hists)) {
        let slot = THREAD_SLOT.with(|s| *s);
        let shard = &self.shards[slot & (self.shards.len() - 1)];
        let mut guard = lock(&shard.0);
        if guard.is_none() {
            *guard = Hists::new();
        }
        if let Some(h) = guard.as_mut() {
            f(h);
        }
    }

    /// Records one latency sample of `stage` (clamped to 1 hour). Costs one
    /// mostly-uncontended mutex and one histogram increment.
    pub fn record_latency(&self, stage: Stage, d: Duration) {
        self.with_shard(|h| h.record(stage, d));
    }

    /// Records one inference: the predict op's attempt and outcome, and every
    /// measured stage, under a single lock.
    pub fn record_inference(&self, timings: &StageTimings, outcome: std::result::Result<(), ErrorKind>) {
        self.record_outcome(Op::Predict, outcome);
        self.with_shard(|h| {
            for (stage, d) in [
                (Stage::MarshalIn, timings.marshal_in),
                (Stage::Predict, timings.predict),
                (Stage::MarshalOut, timings.marshal_out),
                (Stage::Total, timings.total),
                (Stage::QueueWait, timings.queue_wait),
            ] {
                if let Some(d) = d {
                    h.record(stage, d);
                }
            }
        });
    }

    /// Records a prepare's compile and load stages (those measured), and
    /// counts them as compile and load attempts that succeeded. Costs one
    /// lock.
    pub fn record_prepare_stages(&self, t: &PrepareTimings) {
        for (op, stage, d) in [
            (Op::Compile, Stage::Compile, t.compile),
            (Op::Load, Stage::Load, t.load),
        ] {
            if let Some(d) = d {
                self.record_outcome(op, Ok(()));
                self.record_latency(stage, d);
            }
        }
    }

    /// Raises the queue-depth high-water mark to `depth` (calls waiting in a
    /// model pool's queue, this one included). One atomic `fetch_max`.
    pub fn record_queue_depth(&self, depth: u64) {
        self.queue_depth_high_water.fetch_max(depth, Ordering::Relaxed);
    }

    /// The most calls seen waiting at once in a pool's queue, if any waited.
    pub fn queue_depth_high_water(&self) -> Option<u64> {
        match self.queue_depth_high_water.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Raises the memory high-water mark to `bytes` if higher. One atomic
    /// `fetch_max`.
    pub fn record_memory(&self, bytes: u64) {
        self.memory_high_water.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The highest value given to [`Self::record_memory`], if any.
    pub fn memory_high_water(&self) -> Option<u64> {
        match self.memory_high_water.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Records compute units requested and actually used, and the Neural
    /// Engine share, as far as they are known.
    pub fn record_compute_units(&self, requested: ComputeUnits, actual: Option<ComputeUnits>, ane_pct: Option<u32>) {
        let mut info = lock(&self.info);
        info.requested = Some(requested);
        if actual.is_some() {
            info.actual = actual;
        }
        if ane_pct.is_some() {
            info.ane_pct = ane_pct;
        }
    }

    /// Takes requested/actual compute units and the ANE share from an
    /// engine's capability report.
    pub fn record_capabilities(&self, report: &CapabilityReport) {
        self.record_compute_units(
            report.compute_units_requested,
            report.compute_units_actual,
            report.ane_op_coverage_pct,
        );
    }

    /// Attempts and successes of `op` so far.
    pub fn op_counts(&self, op: Op) -> OpCounts {
        OpCounts {
            attempts: self.attempts[op.index()].load(Ordering::Relaxed),
            successes: self.successes[op.index()].load(Ordering::Relaxed),
        }
    }

    /// Failures of class `f` so far.
    pub fn failure_count(&self, f: Failure) -> u64 {
        self.failures[f.index()].load(Ordering::Relaxed)
    }

    /// Calls answered by the fallback so far.
    pub fn fallback_count(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// All shards of one stage merged. Cold path.
    fn merged(&self, stage: Stage) -> Option<Histogram<u64>> {
        let mut out = new_histogram()?;
        for shard in self.shards.iter() {
            if let Some(h) = lock(&shard.0).as_ref() {
                // Same bounds everywhere: addition cannot fail.
                let _ = out.add(&h.0[stage.index()]);
            }
        }
        Some(out)
    }

    /// The latency at `quantile` (0..=1) of `stage`, or `None` with no
    /// samples. Merges the shards: a few hundred microseconds at most.
    pub fn percentile(&self, stage: Stage, quantile: f64) -> Option<Duration> {
        let h = self.merged(stage)?;
        (!h.is_empty()).then(|| Duration::from_micros(h.value_at_quantile(quantile.clamp(0.0, 1.0))))
    }

    /// Summary of one stage, or `None` with no samples.
    pub fn latency_summary(&self, stage: Stage) -> Option<LatencySummary> {
        let h = self.merged(stage)?;
        if h.is_empty() {
            return None;
        }
        Some(LatencySummary {
            count: h.len(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean().round() as u64,
        })
    }

    /// Everything as plain data, including the process's memory figures read
    /// now. Cold path (merges histograms, reads `/proc` on Linux).
    pub fn snapshot(&self) -> TelemetrySnapshot {
        let c = |op| self.op_counts(op);
        let f = |x| self.failure_count(x);
        let info = *lock(&self.info);
        TelemetrySnapshot {
            model: self.model.clone(),
            engine: self.engine.clone(),
            uptime_ms: u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX),
            counters: Counters {
                prepare: c(Op::Prepare),
                compile: c(Op::Compile),
                load: c(Op::Load),
                predict: c(Op::Predict),
            },
            latency: Stage::ALL
                .iter()
                .filter_map(|&s| self.latency_summary(s).map(|l| (s, l)))
                .collect(),
            failures: FailureCounts {
                compile_error: f(Failure::CompileError),
                load_error: f(Failure::LoadError),
                schema_mismatch: f(Failure::SchemaMismatch),
                timeout: f(Failure::Timeout),
                memory_pressure: f(Failure::MemoryPressure),
                unavailable: f(Failure::Unavailable),
                other: f(Failure::Other),
                fallback: self.fallback_count(),
            },
            memory: MemorySnapshot {
                recorded_high_water_bytes: self.memory_high_water(),
                process: process_stats(),
            },
            compute_units_requested: info.requested,
            compute_units_actual: info.actual,
            ane_op_coverage_pct: info.ane_pct,
            queue_depth_high_water: self.queue_depth_high_water(),
        }
    }
}

/// Snapshots of every model and engine in a registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    /// Wall-clock time of the snapshot, milliseconds since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// One entry per `(model, engine)`, ordered by model then engine.
    pub entries: Vec<TelemetrySnapshot>,
    /// Counters (hits, misses, installs, evictions) of every compiled-model
    /// cache attached with [`TelemetryRegistry::attach_cache`], by name.
    #[serde(default)]
    pub caches: BTreeMap<String, crate::cache::CacheStats>,
}

/// Hands out one [`ModelTelemetry`] per `(model, engine)` and snapshots them
/// all. Share it as `Arc<TelemetryRegistry>`.
#[derive(Debug, Default)]
pub struct TelemetryRegistry {
    entries: Mutex<BTreeMap<(String, String), Arc<ModelTelemetry>>>,
    caches: Mutex<BTreeMap<String, Arc<crate::cache::ModelCache>>>,
}

impl TelemetryRegistry {
    /// An empty registry.
    pub fn new() -> TelemetryRegistry {
        TelemetryRegistry::default()
    }

    /// Includes `cache`'s counters (hits, misses, installs, evictions) in every
    /// snapshot under `name`. Reading them costs a few atomic loads.
    pub fn attach_cache(&self, name: impl Into<String>, cache: Arc<crate::cache::ModelCache>) {
        lock(&self.caches).insert(name.into(), cache);
    }

    /// The telemetry of `model` on `engine`, created on first request. Takes
    /// a lock and a map lookup: call it at prepare time and keep the `Arc`
    /// for the hot path.
    pub fn handle(&self, model: &str, engine: &str) -> Arc<ModelTelemetry> {
        let mut map = lock(&self.entries);
        map.entry((model.to_string(), engine.to_string()))
            .or_insert_with(|| Arc::new(ModelTelemetry::new(model, engine)))
            .clone()
    }

    /// The telemetry of `model` on `engine`, if it exists.
    pub fn get(&self, model: &str, engine: &str) -> Option<Arc<ModelTelemetry>> {
        lock(&self.entries)
            .get(&(model.to_string(), engine.to_string()))
            .cloned()
    }

    /// Snapshots of every entry.
    pub fn snapshot(&self) -> RegistrySnapshot {
        let handles: Vec<Arc<ModelTelemetry>> = lock(&self.entries).values().cloned().collect();
        RegistrySnapshot {
            taken_at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            entries: handles.iter().map(|h| h.snapshot()).collect(),
            caches: lock(&self.caches).iter().map(|(k, c)| (k.clone(), c.stats())).collect(),
        }
    }

    /// [`Self::snapshot`] as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.snapshot()).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Logs one `info` event per entry (target `apple_silicon::telemetry`)
    /// with its counters, p50/p99 of total latency, failures and memory.
    pub fn emit(&self) {
        for s in self.snapshot().entries {
            let total = s.latency.get(&Stage::Total).copied().unwrap_or_default();
            tracing::info!(
                target: "apple_silicon::telemetry",
                model = %s.model,
                engine = %s.engine,
                predict_attempts = s.counters.predict.attempts,
                predict_successes = s.counters.predict.successes,
                p50_us = total.p50_us,
                p99_us = total.p99_us,
                failures = s.failures.total(),
                fallbacks = s.failures.fallback,
                memory_high_water = s.memory.recorded_high_water_bytes.or(s.memory.process.high_water_bytes),
                "telemetry snapshot"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_stages_are_recorded_where_measured() {
        let t = ModelTelemetry::new("m", "coreml");
        t.record_prepare_stages(&PrepareTimings {
            compile: Some(Duration::from_millis(120)),
            load: None,
        });
        t.record_prepare_stages(&PrepareTimings {
            compile: None,
            load: Some(Duration::from_millis(30)),
        });
        let s = t.snapshot();
        assert_eq!((s.counters.compile.successes, s.counters.load.successes), (1, 1));
        assert_eq!(s.latency[&Stage::Compile].count, 1);
        assert!(
            s.latency[&Stage::Load].p50_us >= 29_000,
            "{:?}",
            s.latency[&Stage::Load]
        );
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let t = ModelTelemetry::new("m", "e");
        // 1..=1000 ms, each once, shuffled deterministically across 4 threads.
        std::thread::scope(|s| {
            for k in 0..4u64 {
                let t = &t;
                s.spawn(move || {
                    for v in (1..=1000u64).filter(|v| v % 4 == k) {
                        t.record_latency(Stage::Total, Duration::from_millis(v));
                    }
                });
            }
        });
        let within = |got: Duration, want_ms: f64| {
            let g = got.as_secs_f64() * 1e3;
            assert!(
                (g - want_ms).abs() <= want_ms * 0.01 + 0.001,
                "got {g} ms, want {want_ms} ms ±1%"
            );
        };
        within(t.percentile(Stage::Total, 0.50).unwrap(), 500.0);
        within(t.percentile(Stage::Total, 0.95).unwrap(), 950.0);
        within(t.percentile(Stage::Total, 0.99).unwrap(), 990.0);
        let s = t.latency_summary(Stage::Total).unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.min_us as f64 - 1000.0).abs() <= 10.0, "{s:?}");
        assert!((s.max_us as f64 - 1_000_000.0).abs() <= 10_000.0, "{s:?}");
        assert!((s.mean_us as f64 - 500_500.0).abs() <= 5_005.0, "{s:?}");
        assert!(
            t.percentile(Stage::Predict, 0.5).is_none(),
            "no predict samples were recorded"
        );
    }

    #[test]
    fn skewed_distribution_tail() {
        // 990 fast calls at 2 ms and 10 slow ones at 80 ms: p99 must be
        // 2 ms (the 990th sample), max 80 ms; one more slow call moves p99.
        let t = ModelTelemetry::new("m", "e");
        for _ in 0..990 {
            t.record_latency(Stage::Predict, Duration::from_millis(2));
        }
        for _ in 0..10 {
            t.record_latency(Stage::Predict, Duration::from_millis(80));
        }
        let p99 = t.percentile(Stage::Predict, 0.99).unwrap();
        assert!(p99 <= Duration::from_micros(2020), "{p99:?}");
        t.record_latency(Stage::Predict, Duration::from_millis(80));
        let p99 = t.percentile(Stage::Predict, 0.99).unwrap();
        assert!(p99 >= Duration::from_micros(79_200), "{p99:?}");
    }

    #[test]
    fn counters_and_taxonomy_from_many_threads() {
        let t = Arc::new(ModelTelemetry::new("m", "coreml"));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for n in 0..250u32 {
                        let outcome = match (n + i) % 10 {
                            0 => Err(ErrorKind::Timeout),
                            1 => Err(ErrorKind::SchemaMismatch),
                            _ => Ok(()),
                        };
                        t.record_inference(&StageTimings::total(Duration::from_micros(100)), outcome);
                        if outcome.is_err() {
                            t.record_fallback();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = t.snapshot();
        assert_eq!(s.counters.predict.attempts, 1000);
        assert_eq!(s.counters.predict.successes, 800);
        assert_eq!(s.failures.timeout, 100);
        assert_eq!(s.failures.schema_mismatch, 100);
        assert_eq!(s.failures.fallback, 200);
        assert_eq!(s.failures.total(), 200);
        assert_eq!(s.latency[&Stage::Total].count, 1000);
        assert_eq!(s.predict_success_rate(), Some(0.8));
    }

    #[test]
    fn error_kinds_map_onto_the_plans_taxonomy() {
        assert_eq!(Failure::from_kind(ErrorKind::Compile), Failure::CompileError);
        assert_eq!(Failure::from_kind(ErrorKind::Unsupported), Failure::CompileError);
        assert_eq!(Failure::from_kind(ErrorKind::Load), Failure::LoadError);
        assert_eq!(Failure::from_kind(ErrorKind::Timeout), Failure::Timeout);
        assert_eq!(Failure::from_kind(ErrorKind::MemoryPressure), Failure::MemoryPressure);
        assert_eq!(Failure::from_kind(ErrorKind::Io), Failure::Other);
    }

    #[test]
    fn json_snapshot_round_trips() {
        let reg = TelemetryRegistry::new();
        let t = reg.handle("mlp@abc", "coreml");
        t.record_outcome(Op::Prepare, Ok(()));
        t.record_latency(Stage::Prepare, Duration::from_millis(1200));
        t.record_outcome(Op::Compile, Err(ErrorKind::Compile));
        for i in 0..50 {
            t.record_inference(
                &StageTimings {
                    marshal_in: Some(Duration::from_micros(30)),
                    predict: Some(Duration::from_micros(900 + i)),
                    marshal_out: Some(Duration::from_micros(20)),
                    total: Some(Duration::from_micros(960 + i)),
                    queue_wait: Some(Duration::from_micros(5)),
                },
                Ok(()),
            );
        }
        t.record_memory(123_456_789);
        t.record_compute_units(ComputeUnits::CpuAndNe, Some(ComputeUnits::CpuOnly), Some(0));
        reg.handle("mlp@abc", "candle").record_fallback();
        assert!(Arc::ptr_eq(&t, &reg.handle("mlp@abc", "coreml")), "one handle per pair");

        let snap = reg.snapshot();
        assert_eq!(snap.entries.len(), 2);
        let json = reg.to_json();
        let back: RegistrySnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.entries,
            reg.snapshot()
                .entries
                .iter()
                .map(|e| {
                    // The process figures and uptime move between two snapshots.
                    let mut e = e.clone();
                    let b = back.entries.iter().find(|b| b.engine == e.engine).unwrap();
                    e.memory.process = b.memory.process;
                    e.uptime_ms = b.uptime_ms;
                    e
                })
                .collect::<Vec<_>>()
        );

        let one = t.snapshot();
        let again: TelemetrySnapshot = serde_json::from_str(&one.to_json()).unwrap();
        assert_eq!(again, one);
        assert!(json.contains("\"marshal_in\""), "{json}");
        assert_eq!(
            one.counters.compile,
            OpCounts {
                attempts: 1,
                successes: 0
            }
        );
        assert_eq!(one.failures.compile_error, 1);
        assert_eq!(one.memory.recorded_high_water_bytes, Some(123_456_789));
        assert_eq!(one.compute_units_actual, Some(ComputeUnits::CpuOnly));
        assert_eq!(one.latency[&Stage::MarshalIn].p50_us, 30);
    }

    #[test]
    fn proc_status_parsing() {
        let text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t7\n";
        let s = parse_proc_status(text);
        assert_eq!(s.rss_bytes, Some(1024 * 1024));
        assert_eq!(s.high_water_bytes, Some(2048 * 1024));
        assert_eq!(s.threads, Some(7));
        assert_eq!(parse_proc_status("garbage"), ProcessStats::default());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_stats_are_read_on_linux() {
        let s = process_stats();
        let rss = s.rss_bytes.unwrap();
        assert!(rss > 1 << 20, "a test process uses more than 1 MiB: {rss}");
        assert!(s.high_water_bytes.unwrap() >= rss);
        assert!(s.threads.unwrap() >= 1);
    }
}
