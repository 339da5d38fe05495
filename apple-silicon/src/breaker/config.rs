//! How a breaker is configured: thresholds, the re-enable policy, the memory probe and `COREML_FORCE_ENABLE`.

use super::*;

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

pub(super) fn force_enable_from_env() -> bool {
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
