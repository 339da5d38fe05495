//! The circuit breaker, and [`ResilientEngine`]: Core ML with a Candle
//! fallback that keeps answering when Core ML fails.
//!
//! ## The breaker's rules (the plan's, §4 and §8c)
//!
//! A [`CircuitBreaker`] watches the primary engine's calls in a sliding
//! window (default: the last 200). Once the window holds at least
//! `min_calls` (default 10) calls it *trips* — stops sending calls to the
//! primary — when:
//!
//! 1. the success rate in the window falls under `min_success_rate` (95%);
//! 2. the p99 latency of the window's successful calls is over the SLA at an
//!    evaluation (one every `p99_every` calls, default 10, once the window
//!    holds `p99_min_samples` successes, default 100, so that one cold start
//!    is not a p99) and has been at `sla_violations_to_trip` (3) evaluations
//!    since the breaker last closed;
//! 3. the memory high-water mark (the highest value the memory probe gave
//!    since the breaker last closed; default probe: process RSS) passes
//!    `memory_limit_bytes`, when a limit is set.
//!
//! ## Re-enabling
//!
//! - [`ReenablePolicy::Manual`] (the default, as the plan says): an open
//!   breaker stays open until [`CircuitBreaker::reset`] (or
//!   [`ResilientEngine::reenable_primary`]) is called. The environment
//!   variable `COREML_FORCE_ENABLE=1` forces the primary on: read when a
//!   breaker is built and again on each reset, it keeps the breaker closed —
//!   trips are logged and counted as *suppressed* but calls keep going to
//!   the primary (a failed call is still answered by the fallback).
//! - [`ReenablePolicy::HalfOpen`]: after a backoff the next call is sent to
//!   the primary as a probe (one probe at a time; other calls keep going to
//!   the fallback). `probes_to_close` successful probes in a row close the
//!   breaker; a failed probe (or one slower than the SLA, or with memory
//!   over the limit) opens it again with the backoff doubled, up to
//!   `max_backoff`.
//!
//! Every transition is logged with `tracing` (target
//! `apple_silicon::breaker`, `warn` for trips, `info` otherwise) and counted
//! in [`BreakerStats`].

mod sequences;

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::deadline::{Deadline, DeadlineRunner};
use crate::error::{Error, ErrorKind, Result};
use crate::inference::{
    downcast_model, CapabilityReport, InferenceEngine, IoSchema, ModelArtifact, ModelState, PrepareOptions,
    PreparedModel,
};
use crate::telemetry::{ModelTelemetry, Op, Stage, StageTimings, TelemetryRegistry, TelemetrySnapshot};
use crate::tensor::TensorMap;

/// Something that reports memory use in bytes (`None`: unknown). The default
/// is [`crate::telemetry::process_memory_bytes`]; tests pass a deterministic
/// one.
pub type MemoryProbe = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// The default memory probe: this process's resident memory.
pub fn process_memory_probe() -> MemoryProbe {
    Arc::new(crate::telemetry::process_memory_bytes)
}

/// The environment variable that forces the primary engine on.
pub const FORCE_ENABLE_ENV: &str = "COREML_FORCE_ENABLE";

/// Whether a value of [`FORCE_ENABLE_ENV`] asks to force the primary on:
/// `1`, `true`, `yes` or `on` (any case).
pub fn force_enable_requested(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

fn force_enable_from_env() -> bool {
    force_enable_requested(std::env::var(FORCE_ENABLE_ENV).ok().as_deref())
}

/// How an open breaker closes again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReenablePolicy {
    /// Only by an explicit [`CircuitBreaker::reset`] (the plan's policy).
    Manual,
    /// By probing the primary after an exponentially growing backoff.
    HalfOpen {
        /// Wait after the first trip before the first probe.
        initial_backoff: Duration,
        /// Longest wait between probes.
        max_backoff: Duration,
        /// Successful probes in a row needed to close.
        probes_to_close: u32,
    },
}

impl ReenablePolicy {
    /// Half-open probing with a 1 s initial backoff, doubling up to 5 min,
    /// closing after 3 good probes.
    pub fn half_open() -> ReenablePolicy {
        ReenablePolicy::HalfOpen {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            probes_to_close: 3,
        }
    }
}

/// The breaker's thresholds and policy. Build with the `with_*` methods.
#[derive(Clone)]
pub struct BreakerConfig {
    /// Calls kept in the sliding window (at least `min_calls`).
    pub window: usize,
    /// Calls needed in the window before any rule is applied.
    pub min_calls: usize,
    /// Trip when the window's success rate falls under this.
    pub min_success_rate: f64,
    /// The latency target; `None`: the model's own estimate
    /// ([`PreparedModel::sla_estimate`]) when a [`ResilientEngine`] builds
    /// the breaker, and no SLA rule for a bare breaker.
    pub sla: Option<Duration>,
    /// Evaluations with p99 over the SLA needed to trip.
    pub sla_violations_to_trip: u32,
    /// Calls between two p99 evaluations.
    pub p99_every: usize,
    /// Successful calls the window must hold before p99 is evaluated. The
    /// p99 of fewer than 100 samples is their maximum, so a single cold
    /// start would count as a violation: the default is 100.
    pub p99_min_samples: usize,
    /// Trip when the memory high-water mark passes this.
    pub memory_limit_bytes: Option<u64>,
    /// Reads memory use; sampled after each primary call when a limit is
    /// set (process RSS costs 10–30 µs on Linux).
    pub memory_probe: MemoryProbe,
    /// How the breaker closes again.
    pub policy: ReenablePolicy,
    /// Keep the primary on whatever happens (trips are only logged).
    pub force_enable: bool,
    /// Whether `COREML_FORCE_ENABLE` may turn `force_enable` on.
    pub honour_env: bool,
}

impl fmt::Debug for BreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerConfig")
            .field("window", &self.window)
            .field("min_calls", &self.min_calls)
            .field("min_success_rate", &self.min_success_rate)
            .field("sla", &self.sla)
            .field("sla_violations_to_trip", &self.sla_violations_to_trip)
            .field("p99_every", &self.p99_every)
            .field("p99_min_samples", &self.p99_min_samples)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field("policy", &self.policy)
            .field("force_enable", &self.force_enable)
            .field("honour_env", &self.honour_env)
            .finish_non_exhaustive()
    }
}

impl Default for BreakerConfig {
    /// The plan's rules: window 200, first 10 calls, 95% success, p99 over
    /// SLA 3 times (checked every 10 calls once 100 successes are in the
    /// window), no memory limit, manual re-enable, `COREML_FORCE_ENABLE`
    /// honoured.
    fn default() -> Self {
        BreakerConfig {
            window: 200,
            min_calls: 10,
            min_success_rate: 0.95,
            sla: None,
            sla_violations_to_trip: 3,
            p99_every: 10,
            p99_min_samples: 100,
            memory_limit_bytes: None,
            memory_probe: process_memory_probe(),
            policy: ReenablePolicy::Manual,
            force_enable: false,
            honour_env: true,
        }
    }
}

impl BreakerConfig {
    /// Sets the window size.
    pub fn with_window(mut self, calls: usize) -> Self {
        self.window = calls.max(1);
        self
    }
    /// Sets the calls needed before the rules apply.
    pub fn with_min_calls(mut self, calls: usize) -> Self {
        self.min_calls = calls.max(1);
        self
    }
    /// Sets the lowest acceptable success rate (0..=1).
    pub fn with_min_success_rate(mut self, rate: f64) -> Self {
        self.min_success_rate = rate.clamp(0.0, 1.0);
        self
    }
    /// Sets the latency target.
    pub fn with_sla(mut self, sla: Duration) -> Self {
        self.sla = Some(sla);
        self
    }
    /// Sets how many p99-over-SLA evaluations trip the breaker.
    pub fn with_sla_violations_to_trip(mut self, n: u32) -> Self {
        self.sla_violations_to_trip = n.max(1);
        self
    }
    /// Sets the calls between p99 evaluations.
    pub fn with_p99_every(mut self, calls: usize) -> Self {
        self.p99_every = calls.max(1);
        self
    }
    /// Sets the successful calls needed before p99 is evaluated.
    pub fn with_p99_min_samples(mut self, calls: usize) -> Self {
        self.p99_min_samples = calls.max(1);
        self
    }
    /// Sets the memory limit.
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit_bytes = Some(bytes);
        self
    }
    /// Sets the memory probe.
    pub fn with_memory_probe(mut self, probe: MemoryProbe) -> Self {
        self.memory_probe = probe;
        self
    }
    /// Sets the re-enable policy.
    pub fn with_policy(mut self, policy: ReenablePolicy) -> Self {
        self.policy = policy;
        self
    }
    /// Forces the primary on (trips are only logged and counted).
    pub fn with_force_enable(mut self, on: bool) -> Self {
        self.force_enable = on;
        self
    }
    /// Whether `COREML_FORCE_ENABLE` is read (default yes).
    pub fn with_env_override(mut self, on: bool) -> Self {
        self.honour_env = on;
        self
    }
}

/// Why a breaker opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum TripReason {
    /// Too many failures in the window.
    SuccessRate {
        /// Success rate in the window.
        rate: f64,
        /// The configured minimum.
        min: f64,
        /// Calls in the window.
        calls: usize,
    },
    /// p99 over the SLA too often.
    SlaP99 {
        /// p99 at the last evaluation.
        p99: Duration,
        /// The SLA.
        sla: Duration,
        /// Evaluations over the SLA since the breaker last closed.
        violations: u32,
    },
    /// Memory high-water mark over the limit.
    Memory {
        /// The high-water mark.
        high_water_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// A half-open probe failed.
    ProbeFailed {
        /// What went wrong.
        detail: String,
    },
}

impl fmt::Display for TripReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TripReason::SuccessRate { rate, min, calls } => write!(
                f,
                "success rate {:.1}% over the last {calls} calls, expected at least {:.1}%",
                rate * 100.0,
                min * 100.0
            ),
            TripReason::SlaP99 { p99, sla, violations } => {
                write!(f, "p99 {p99:?} over the SLA {sla:?} ({violations} evaluations over it)")
            }
            TripReason::Memory {
                high_water_bytes,
                limit_bytes,
            } => write!(
                f,
                "memory high-water {high_water_bytes} bytes, expected at most {limit_bytes} bytes"
            ),
            TripReason::ProbeFailed { detail } => write!(f, "half-open probe failed: {detail}"),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go to the primary.
    Closed,
    /// Calls go to the fallback.
    Open,
    /// Probing: one call at a time goes to the primary.
    HalfOpen,
}

/// Where the breaker sends a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the primary, normally.
    Primary,
    /// To the primary, as a half-open probe.
    Probe,
    /// To the fallback.
    Fallback,
}

/// What happened to one primary call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    /// `None` on success, else the error's kind.
    pub error: Option<ErrorKind>,
    /// How long the call took as its caller saw it.
    pub latency: Duration,
}

impl CallOutcome {
    /// A success.
    pub fn ok(latency: Duration) -> CallOutcome {
        CallOutcome { error: None, latency }
    }
    /// A failure of `kind`.
    pub fn failed(kind: ErrorKind, latency: Duration) -> CallOutcome {
        CallOutcome {
            error: Some(kind),
            latency,
        }
    }
}

/// Counters and state of a breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerStats {
    /// State now.
    pub state: BreakerState,
    /// Times the breaker opened from closed.
    pub trips: u64,
    /// Half-open probes sent.
    pub probes: u64,
    /// Of those, failed.
    pub probe_failures: u64,
    /// Times it closed after probing.
    pub closes: u64,
    /// Manual resets.
    pub manual_resets: u64,
    /// Trips not carried out because the primary was forced on.
    pub suppressed_trips: u64,
    /// The most recent reason to open.
    pub last_trip: Option<TripReason>,
    /// Calls in the window now.
    pub window_calls: usize,
    /// Success rate in the window now.
    pub window_success_rate: Option<f64>,
    /// p99-over-SLA evaluations since the breaker last closed.
    pub sla_violations: u32,
    /// Memory high-water mark since the breaker last closed.
    pub memory_high_water_bytes: Option<u64>,
    /// Wait before the next probe (half-open policy).
    pub backoff: Duration,
    /// Whether the primary is forced on.
    pub forced: bool,
}

struct Inner {
    state: BreakerState,
    window: VecDeque<(bool, Duration)>,
    window_ok: usize,
    calls_since_eval: usize,
    violations: u32,
    memory_high_water: u64,
    opened_at: Option<Instant>,
    backoff: Duration,
    probe_in_flight: bool,
    probes_ok: u32,
    forced: bool,
    trips: u64,
    probes: u64,
    probe_failures: u64,
    closes: u64,
    manual_resets: u64,
    suppressed: u64,
    last_trip: Option<TripReason>,
}

/// A circuit breaker guarding one primary engine for one model. All methods
/// take `&self`; the state sits behind one mutex held for a few hundred
/// nanoseconds per call (a p99 evaluation sorts at most `window` latencies).
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("stats", &self.stats())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn initial_backoff(policy: &ReenablePolicy) -> Duration {
    match policy {
        ReenablePolicy::Manual => Duration::ZERO,
        ReenablePolicy::HalfOpen { initial_backoff, .. } => *initial_backoff,
    }
}

/// The nearest-rank percentile of `values` (sorted in place).
fn nearest_rank(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

impl CircuitBreaker {
    /// A closed breaker named `name` (used in logs). Reads
    /// `COREML_FORCE_ENABLE` if the config allows it.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> CircuitBreaker {
        let mut config = config;
        config.window = config.window.max(config.min_calls).max(1);
        let forced = config.force_enable || (config.honour_env && force_enable_from_env());
        let name = name.into();
        if forced {
            tracing::warn!(target: "apple_silicon::breaker", breaker = %name, "primary forced on: trips will only be logged");
        }
        CircuitBreaker {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                window: VecDeque::with_capacity(config.window),
                window_ok: 0,
                calls_since_eval: 0,
                violations: 0,
                memory_high_water: 0,
                opened_at: None,
                backoff: initial_backoff(&config.policy),
                probe_in_flight: false,
                probes_ok: 0,
                forced,
                trips: 0,
                probes: 0,
                probe_failures: 0,
                closes: 0,
                manual_resets: 0,
                suppressed: 0,
                last_trip: None,
            }),
            name,
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        lock(&self.inner).state
    }

    /// Decides where the next call goes. Under the half-open policy this is
    /// also what starts a probe once the backoff has passed; a caller given
    /// [`Route::Probe`] must report the outcome with [`Self::record`].
    pub fn admit(&self) -> Route {
        let mut g = lock(&self.inner);
        match g.state {
            BreakerState::Closed => Route::Primary,
            BreakerState::Open => {
                let ReenablePolicy::HalfOpen { .. } = self.config.policy else {
                    return Route::Fallback;
                };
                let due = g.opened_at.is_none_or(|t| t.elapsed() >= g.backoff);
                if due && !g.probe_in_flight {
                    g.state = BreakerState::HalfOpen;
                    g.probe_in_flight = true;
                    g.probes_ok = 0;
                    g.probes += 1;
                    tracing::info!(target: "apple_silicon::breaker", breaker = %self.name, backoff = ?g.backoff, "half-open: probing the primary");
                    Route::Probe
                } else {
                    Route::Fallback
                }
            }
            BreakerState::HalfOpen => {
                if g.probe_in_flight {
                    Route::Fallback
                } else {
                    g.probe_in_flight = true;
                    g.probes += 1;
                    Route::Probe
                }
            }
        }
    }

    /// Records the outcome of a call sent to the primary by `route` and
    /// applies the rules. Returns the memory sample taken, if any (one is
    /// taken when a memory limit is set).
    pub fn record(&self, route: Route, outcome: CallOutcome) -> Option<u64> {
        let sample = if self.config.memory_limit_bytes.is_some() {
            (self.config.memory_probe)()
        } else {
            None
        };
        let mut g = lock(&self.inner);
        if let Some(bytes) = sample {
            g.memory_high_water = g.memory_high_water.max(bytes);
        }
        match route {
            Route::Fallback => {}
            Route::Probe => self.record_probe(&mut g, outcome),
            Route::Primary if g.state == BreakerState::Closed => self.record_closed(&mut g, outcome),
            // A call admitted before a trip that finished after it.
            Route::Primary => {}
        }
        sample
    }

    fn memory_over(&self, g: &Inner) -> Option<TripReason> {
        let limit = self.config.memory_limit_bytes?;
        (g.memory_high_water > limit).then_some(TripReason::Memory {
            high_water_bytes: g.memory_high_water,
            limit_bytes: limit,
        })
    }

    fn record_closed(&self, g: &mut Inner, outcome: CallOutcome) {
        let ok = outcome.error.is_none();
        if g.window.len() == self.config.window {
            if let Some((was_ok, _)) = g.window.pop_front() {
                g.window_ok -= usize::from(was_ok);
            }
        }
        g.window.push_back((ok, outcome.latency));
        g.window_ok += usize::from(ok);
        g.calls_since_eval += 1;

        if let Some(reason) = self.memory_over(g) {
            return self.trip(g, reason);
        }
        let calls = g.window.len();
        if calls < self.config.min_calls {
            return;
        }
        let rate = g.window_ok as f64 / calls as f64;
        if rate < self.config.min_success_rate {
            let reason = TripReason::SuccessRate {
                rate,
                min: self.config.min_success_rate,
                calls,
            };
            return self.trip(g, reason);
        }
        if g.calls_since_eval >= self.config.p99_every {
            g.calls_since_eval = 0;
            if let Some(sla) = self.config.sla {
                let mut lat: Vec<Duration> = g.window.iter().filter(|(ok, _)| *ok).map(|&(_, d)| d).collect();
                let enough = lat.len() >= self.config.p99_min_samples;
                if let Some(p99) = nearest_rank(&mut lat, 0.99).filter(|_| enough) {
                    if p99 > sla {
                        g.violations += 1;
                        tracing::info!(target: "apple_silicon::breaker", breaker = %self.name, ?p99, ?sla, violations = g.violations, "p99 over the SLA");
                        if g.violations >= self.config.sla_violations_to_trip {
                            let reason = TripReason::SlaP99 {
                                p99,
                                sla,
                                violations: g.violations,
                            };
                            self.trip(g, reason);
                        }
                    }
                }
            }
        }
    }

    fn record_probe(&self, g: &mut Inner, outcome: CallOutcome) {
        g.probe_in_flight = false;
        if g.state != BreakerState::HalfOpen {
            return; // reset in the meantime
        }
        let ReenablePolicy::HalfOpen {
            max_backoff,
            probes_to_close,
            ..
        } = self.config.policy
        else {
            return;
        };
        let failure = match (outcome.error, self.config.sla) {
            (Some(kind), _) => Some(TripReason::ProbeFailed {
                detail: format!("the primary failed with {kind:?}"),
            }),
            (None, Some(sla)) if outcome.latency > sla => Some(TripReason::ProbeFailed {
                detail: format!("the primary took {:?}, over the SLA {sla:?}", outcome.latency),
            }),
            _ => self.memory_over(g),
        };
        if let Some(reason) = failure {
            g.probe_failures += 1;
            g.state = BreakerState::Open;
            g.opened_at = Some(Instant::now());
            g.backoff = (g.backoff * 2).min(max_backoff);
            tracing::warn!(target: "apple_silicon::breaker", breaker = %self.name, %reason, next_probe_in = ?g.backoff, "probe failed: breaker open again");
            g.last_trip = Some(reason);
            return;
        }
        g.probes_ok += 1;
        if g.probes_ok >= probes_to_close {
            g.closes += 1;
            tracing::info!(target: "apple_silicon::breaker", breaker = %self.name, probes = g.probes_ok, "probes succeeded: breaker closed, primary re-enabled");
            Self::close(g, initial_backoff(&self.config.policy));
        }
    }

    fn close(g: &mut Inner, backoff: Duration) {
        g.state = BreakerState::Closed;
        g.window.clear();
        g.window_ok = 0;
        g.calls_since_eval = 0;
        g.violations = 0;
        g.memory_high_water = 0;
        g.opened_at = None;
        g.backoff = backoff;
        g.probe_in_flight = false;
        g.probes_ok = 0;
    }

    fn trip(&self, g: &mut Inner, reason: TripReason) {
        if g.forced {
            g.suppressed += 1;
            tracing::warn!(target: "apple_silicon::breaker", breaker = %self.name, %reason, "breaker would trip, but the primary is forced on");
            // Start a fresh window so the same evidence is not reported on every call.
            let b = g.backoff;
            Self::close(g, b);
            return;
        }
        g.state = BreakerState::Open;
        g.opened_at = Some(Instant::now());
        g.trips += 1;
        tracing::warn!(target: "apple_silicon::breaker", breaker = %self.name, %reason, policy = ?self.config.policy, "breaker tripped: calls go to the fallback");
        g.last_trip = Some(reason);
    }

    /// Closes the breaker (manual re-enable) and starts a fresh window.
    /// Also re-reads `COREML_FORCE_ENABLE` (if the config honours it).
    pub fn reset(&self) {
        let forced = self.config.force_enable || (self.config.honour_env && force_enable_from_env());
        let mut g = lock(&self.inner);
        g.manual_resets += 1;
        g.forced = forced;
        Self::close(&mut g, initial_backoff(&self.config.policy));
        tracing::info!(target: "apple_silicon::breaker", breaker = %self.name, forced, "breaker reset by hand: primary re-enabled");
    }

    /// Counters and state.
    pub fn stats(&self) -> BreakerStats {
        let g = lock(&self.inner);
        BreakerStats {
            state: g.state,
            trips: g.trips,
            probes: g.probes,
            probe_failures: g.probe_failures,
            closes: g.closes,
            manual_resets: g.manual_resets,
            suppressed_trips: g.suppressed,
            last_trip: g.last_trip.clone(),
            window_calls: g.window.len(),
            window_success_rate: (!g.window.is_empty()).then(|| g.window_ok as f64 / g.window.len() as f64),
            sla_violations: g.violations,
            memory_high_water_bytes: (g.memory_high_water > 0).then_some(g.memory_high_water),
            backoff: g.backoff,
            forced: g.forced,
        }
    }
}

// ---------------------------------------------------------------------------
// ResilientEngine

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
    fn code(self) -> u8 {
        match self {
            Served::Primary => 1,
            Served::FallbackAfterPrimaryError => 2,
            Served::FallbackBreakerOpen => 3,
            Served::FallbackPrimaryUnavailable => 4,
        }
    }

    fn from_code(c: u8) -> Option<Served> {
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
    model_id: String,
    key: String,
    schema: IoSchema,
    sla: Duration,
    primary: Option<Arc<dyn PreparedModel>>,
    primary_unavailable: Option<String>,
    fallback: Arc<dyn PreparedModel>,
    breaker: Arc<CircuitBreaker>,
    primary_tel: Arc<ModelTelemetry>,
    fallback_tel: Arc<ModelTelemetry>,
    last_served: AtomicU8,
    last_primary_error: Mutex<Option<String>>,
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

    fn served(&self, s: Served) {
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
    primary: Arc<dyn InferenceEngine>,
    fallback: Arc<dyn InferenceEngine>,
    primary_op: String,
    config: BreakerConfig,
    telemetry: Arc<TelemetryRegistry>,
    primary_share: f64,
    guard: Option<DeadlineRunner>,
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

    fn prepare_primary(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
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

    fn call_primary(
        &self,
        model: &Arc<dyn PreparedModel>,
        inputs: &TensorMap,
        budget: Duration,
    ) -> Result<(TensorMap, StageTimings)> {
        match &self.guard {
            Some(runner) => {
                let deadline = Deadline::after(budget);
                let engine = self.primary.clone();
                let model = model.clone();
                let inputs = inputs.clone();
                runner.run(&self.primary_op, budget, move || {
                    let left = deadline.remaining();
                    if left.is_zero() {
                        return Err(deadline.timeout_error("primary inference (waited for a worker)"));
                    }
                    engine.infer_timed(&*model, &inputs, left)
                })
            }
            None => self.primary.infer_timed(&**model, inputs, budget),
        }
    }
}

fn model_id(artifact: &ModelArtifact) -> String {
    let file = artifact
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| artifact.path.display().to_string());
    let hex = artifact.sha256_hex();
    format!("{file}@{}", &hex[..12.min(hex.len())])
}

fn kind_of<T>(r: &Result<T>) -> std::result::Result<(), ErrorKind> {
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
        let deadline = Deadline::after(timeout);
        let rm = downcast_model::<ResilientModel>(model, "resilient")?;
        rm.schema.validate_inputs(inputs)?;

        let mut served = Served::FallbackPrimaryUnavailable;
        if let Some(primary) = &rm.primary {
            let route = rm.breaker.admit();
            if route == Route::Fallback {
                served = Served::FallbackBreakerOpen;
            } else {
                let budget = timeout.mul_f64(self.primary_share);
                let t0 = Instant::now();
                let r = self.call_primary(primary, inputs, budget);
                let latency = t0.elapsed();
                // The engine's stages, and the total as this call saw it
                // (including any wait for a guard worker).
                let timings = match &r {
                    Ok((_, t)) => StageTimings {
                        total: Some(latency),
                        ..*t
                    },
                    Err(_) => StageTimings::total(latency),
                };
                let r = r.map(|(out, _)| out);
                rm.primary_tel.record_inference(&timings, kind_of(&r));
                let outcome = match &r {
                    Ok(_) => CallOutcome::ok(latency),
                    Err(e) => CallOutcome::failed(e.kind(), latency),
                };
                if let Some(bytes) = rm.breaker.record(route, outcome) {
                    rm.primary_tel.record_memory(bytes);
                }
                match r {
                    Ok(out) => {
                        rm.served(Served::Primary);
                        return Ok(out);
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
        let r = self.fallback.infer_timed(&*rm.fallback, inputs, deadline.remaining());
        let timings = match &r {
            Ok((_, t)) => StageTimings {
                total: Some(t0.elapsed()),
                ..*t
            },
            Err(_) => StageTimings::total(t0.elapsed()),
        };
        let r = r.map(|(out, _)| out);
        rm.fallback_tel.record_inference(&timings, kind_of(&r));
        rm.served(served);
        r
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig::default().with_env_override(false)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_trips_before_min_calls() {
        let b = CircuitBreaker::new("b", cfg());
        for _ in 0..9 {
            assert_eq!(b.admit(), Route::Primary);
            b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Route::Fallback);
        let s = b.stats();
        assert_eq!(s.trips, 1);
        assert!(
            matches!(s.last_trip, Some(TripReason::SuccessRate { calls: 10, .. })),
            "{s:?}"
        );
    }

    #[test]
    fn one_failure_in_the_first_ten_is_over_five_percent() {
        let b = CircuitBreaker::new("b", cfg());
        b.record(Route::Primary, CallOutcome::failed(ErrorKind::Timeout, MS));
        for _ in 0..8 {
            b.record(Route::Primary, CallOutcome::ok(MS));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(Route::Primary, CallOutcome::ok(MS));
        assert_eq!(b.state(), BreakerState::Open, "9/10 = 90% < 95%");
    }

    #[test]
    fn sliding_window_forgets_old_failures() {
        let b = CircuitBreaker::new("b", cfg().with_window(20).with_min_calls(20));
        // 1 failure in 20 = 95%: not under the minimum.
        b.record(Route::Primary, CallOutcome::failed(ErrorKind::Timeout, MS));
        for _ in 0..19 {
            b.record(Route::Primary, CallOutcome::ok(MS));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.stats().window_success_rate, Some(0.95));
        b.record(Route::Primary, CallOutcome::ok(MS));
        assert_eq!(b.stats().window_success_rate, Some(1.0), "the failure slid out");
    }

    #[test]
    fn p99_over_sla_three_times_trips() {
        let b = CircuitBreaker::new("b", cfg().with_sla(Duration::from_millis(20)));
        // Evaluations at calls 100, 110 and 120.
        for i in 1..=119 {
            b.record(Route::Primary, CallOutcome::ok(Duration::from_millis(30)));
            assert_eq!(b.state(), BreakerState::Closed, "call {i}");
        }
        assert_eq!(b.stats().sla_violations, 2);
        b.record(Route::Primary, CallOutcome::ok(Duration::from_millis(30)));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(
            b.stats().last_trip,
            Some(TripReason::SlaP99 { violations: 3, .. })
        ));
    }

    #[test]
    fn a_cold_start_or_a_rare_slow_call_does_not_trip() {
        let b = CircuitBreaker::new("b", cfg().with_sla(Duration::from_millis(20)));
        for i in 0..1000 {
            let d = if i % 250 == 0 { 500 } else { 5 }; // 0.4% slow
            b.record(Route::Primary, CallOutcome::ok(Duration::from_millis(d)));
        }
        assert_eq!(b.state(), BreakerState::Closed, "{:?}", b.stats());
    }

    #[test]
    fn memory_over_the_limit_trips() {
        let mem = Arc::new(std::sync::atomic::AtomicU64::new(100));
        let m = mem.clone();
        let b = CircuitBreaker::new(
            "b",
            cfg()
                .with_memory_limit(1000)
                .with_memory_probe(Arc::new(move || Some(m.load(Ordering::SeqCst)))),
        );
        b.record(Route::Primary, CallOutcome::ok(MS));
        assert_eq!(b.state(), BreakerState::Closed);
        mem.store(1001, Ordering::SeqCst);
        b.record(Route::Primary, CallOutcome::ok(MS));
        assert_eq!(b.state(), BreakerState::Open, "memory trips even before min_calls");
        assert_eq!(
            b.stats().last_trip,
            Some(TripReason::Memory {
                high_water_bytes: 1001,
                limit_bytes: 1000
            })
        );
    }

    #[test]
    fn forced_on_only_counts_trips() {
        let b = CircuitBreaker::new("b", cfg().with_force_enable(true));
        for _ in 0..30 {
            assert_eq!(b.admit(), Route::Primary);
            b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
        }
        let s = b.stats();
        assert_eq!(
            (s.state, s.trips, s.suppressed_trips),
            (BreakerState::Closed, 0, 3),
            "{s:?}"
        );
    }

    #[test]
    fn env_values() {
        assert!(force_enable_requested(Some("1")));
        assert!(force_enable_requested(Some(" TRUE ")));
        assert!(!force_enable_requested(Some("0")));
        assert!(!force_enable_requested(Some("")));
        assert!(!force_enable_requested(None));
    }

    #[test]
    fn half_open_backoff_doubles_and_probes_close() {
        let policy = ReenablePolicy::HalfOpen {
            initial_backoff: Duration::from_millis(40),
            max_backoff: Duration::from_millis(100),
            probes_to_close: 2,
        };
        let b = CircuitBreaker::new("b", cfg().with_policy(policy).with_min_calls(1));
        b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
        assert_eq!(b.admit(), Route::Fallback, "backoff not over yet");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Route::Probe);
        assert_eq!(b.admit(), Route::Fallback, "one probe at a time");
        b.record(Route::Probe, CallOutcome::failed(ErrorKind::Timeout, MS));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.stats().backoff, Duration::from_millis(80));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.admit(), Route::Fallback, "the doubled backoff is not over");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.admit(), Route::Probe);
        b.record(Route::Probe, CallOutcome::failed(ErrorKind::Timeout, MS));
        assert_eq!(b.stats().backoff, Duration::from_millis(100), "capped");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(b.admit(), Route::Probe);
        b.record(Route::Probe, CallOutcome::ok(MS));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(), Route::Probe);
        b.record(Route::Probe, CallOutcome::ok(MS));
        assert_eq!(b.state(), BreakerState::Closed);
        let s = b.stats();
        assert_eq!((s.trips, s.probes, s.probe_failures, s.closes), (1, 4, 2, 1), "{s:?}");
        assert_eq!(s.backoff, Duration::from_millis(40), "backoff resets on close");
    }

    #[test]
    fn manual_policy_never_probes_until_reset() {
        let b = CircuitBreaker::new("b", cfg().with_min_calls(1));
        b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
        std::thread::sleep(Duration::from_millis(30));
        for _ in 0..100 {
            assert_eq!(b.admit(), Route::Fallback);
        }
        b.reset();
        assert_eq!(b.admit(), Route::Primary);
        let s = b.stats();
        assert_eq!((s.state, s.manual_resets, s.window_calls), (BreakerState::Closed, 1, 0));
    }
}
