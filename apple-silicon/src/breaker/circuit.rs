//! [`CircuitBreaker`]: the sliding window of primary calls, the trip rules, and open / half-open / closed.

use super::*;

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

pub(super) struct Inner {
    pub(super) state: BreakerState,
    pub(super) window: VecDeque<(bool, Duration)>,
    pub(super) window_ok: usize,
    pub(super) calls_since_eval: usize,
    pub(super) violations: u32,
    pub(super) memory_high_water: u64,
    pub(super) opened_at: Option<Instant>,
    pub(super) backoff: Duration,
    pub(super) probe_in_flight: bool,
    pub(super) probes_ok: u32,
    pub(super) forced: bool,
    pub(super) trips: u64,
    pub(super) probes: u64,
    pub(super) probe_failures: u64,
    pub(super) closes: u64,
    pub(super) manual_resets: u64,
    pub(super) suppressed: u64,
    pub(super) last_trip: Option<TripReason>,
}

/// A circuit breaker guarding one primary engine for one model. All methods
/// take `&self`; the state sits behind one mutex held for a few hundred
/// nanoseconds per call (a p99 evaluation sorts at most `window` latencies).
pub struct CircuitBreaker {
    pub(super) name: String,
    pub(super) config: BreakerConfig,
    pub(super) inner: Mutex<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("stats", &self.stats())
            .finish()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn initial_backoff(policy: &ReenablePolicy) -> Duration {
    match policy {
        ReenablePolicy::Manual => Duration::ZERO,
        ReenablePolicy::HalfOpen { initial_backoff, .. } => *initial_backoff,
    }
}

/// The nearest-rank percentile of `values` (sorted in place).
pub(super) fn nearest_rank(values: &mut [Duration], q: f64) -> Option<Duration> {
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

    pub(super) fn memory_over(&self, g: &Inner) -> Option<TripReason> {
        let limit = self.config.memory_limit_bytes?;
        (g.memory_high_water > limit).then_some(TripReason::Memory {
            high_water_bytes: g.memory_high_water,
            limit_bytes: limit,
        })
    }

    pub(super) fn record_closed(&self, g: &mut Inner, outcome: CallOutcome) {
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

    pub(super) fn record_probe(&self, g: &mut Inner, outcome: CallOutcome) {
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

    pub(super) fn close(g: &mut Inner, backoff: Duration) {
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

    pub(super) fn trip(&self, g: &mut Inner, reason: TripReason) {
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
