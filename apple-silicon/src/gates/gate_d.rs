//! Gate D: a soak — no errors, no memory growth trend, steady throughput, no p99 spikes.

use super::*;

/// One sampling interval of [`gate_d`], as handed to
/// [`GateDConfig::with_observer`].
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the soak started, at the end of this interval.
    pub elapsed_s: f64,
    /// Inferences so far (cumulative).
    pub calls: u64,
    /// Inferences per second in this interval.
    pub throughput_per_s: f64,
    /// Latency percentiles of this interval's inferences (nearest rank).
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p95_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// The memory probe's reading at the end of the interval.
    pub memory_bytes: Option<u64>,
    /// Failed inferences so far (cumulative).
    pub errors: u64,
    /// Whether this interval is a warm-up interval (left out of the verdict).
    pub warmup: bool,
}

/// Receives every [`SoakSample`] of [`gate_d`] (progress output, CSV rows, plots).
pub type SoakObserver = std::sync::Arc<dyn Fn(&SoakSample) + Send + Sync>;

/// Settings of [`gate_d`].
#[derive(Clone)]
pub struct GateDConfig {
    /// How long to soak (the plan: 1 hour).
    pub duration: Duration,
    /// Length of one throughput / memory sampling interval.
    pub interval: Duration,
    /// Intervals at the start left out of the trend and throughput figures.
    pub warmup_intervals: usize,
    /// Timeout of each inference.
    pub timeout: Duration,
    /// Largest allowed memory trend, bytes per 100 inferences (the plan:
    /// < 100 KB / 100 inferences).
    pub max_growth_per_100_calls: f64,
    /// Largest allowed coefficient of variation of per-interval throughput.
    pub max_throughput_cv: f64,
    /// Largest allowed number of failed inferences.
    pub max_errors: u64,
    /// Largest allowed ratio of the worst interval's p99 latency to the
    /// median interval's p99 (the plan: no spikes).
    pub max_p99_spike: f64,
    /// Reads memory use (default: process RSS).
    pub memory_probe: MemoryProbe,
    /// Called at the end of every interval.
    pub observer: Option<SoakObserver>,
}

impl Default for GateDConfig {
    /// One hour in 10 s intervals (first left out), 10 s timeout, ≤ 100 KB
    /// growth per 100 calls, throughput CV ≤ 0.2, no interval's p99 above
    /// 3× the median interval's, no errors.
    fn default() -> Self {
        GateDConfig {
            duration: Duration::from_secs(3600),
            interval: Duration::from_secs(10),
            warmup_intervals: 1,
            timeout: Duration::from_secs(10),
            max_growth_per_100_calls: 100.0 * 1024.0,
            max_throughput_cv: 0.2,
            max_errors: 0,
            max_p99_spike: 3.0,
            memory_probe: process_memory_probe(),
            observer: None,
        }
    }
}

impl GateDConfig {
    /// Sets the soak duration and interval.
    pub fn with_duration(mut self, duration: Duration, interval: Duration) -> Self {
        self.duration = duration;
        self.interval = interval;
        self
    }
    /// Sets the warm-up intervals.
    pub fn with_warmup_intervals(mut self, n: usize) -> Self {
        self.warmup_intervals = n;
        self
    }
    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Sets the memory trend bound (bytes per 100 calls).
    pub fn with_max_growth_per_100_calls(mut self, bytes: f64) -> Self {
        self.max_growth_per_100_calls = bytes;
        self
    }
    /// Sets the throughput CV bound.
    pub fn with_max_throughput_cv(mut self, cv: f64) -> Self {
        self.max_throughput_cv = cv;
        self
    }
    /// Sets the allowed failures.
    pub fn with_max_errors(mut self, n: u64) -> Self {
        self.max_errors = n;
        self
    }
    /// Sets the p99 spike bound (worst interval p99 / median interval p99).
    pub fn with_max_p99_spike(mut self, ratio: f64) -> Self {
        self.max_p99_spike = ratio;
        self
    }
    /// Sets the memory probe.
    pub fn with_memory_probe(mut self, probe: MemoryProbe) -> Self {
        self.memory_probe = probe;
        self
    }
    /// Calls `observer` at the end of every interval (warm-up included).
    pub fn with_observer(mut self, observer: SoakObserver) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// Gate D: runs `model` back to back for `duration`, sampling memory and
/// counting calls per interval, and checks that failures stay within
/// `max_errors`, that memory has no upward trend (least-squares slope of the
/// samples against the call count, in bytes per 100 calls) and that
/// throughput is steady (coefficient of variation of calls per second
/// across intervals) and so is latency (no interval's p99 above
/// `max_p99_spike` × the median interval's p99). Needs at least three
/// measured intervals. Costs
/// `duration` of one thread's time.
pub fn gate_d(
    engine: &dyn InferenceEngine,
    model: &dyn PreparedModel,
    inputs: &TensorMap,
    cfg: &GateDConfig,
) -> GateVerdict {
    let mut v = GateVerdict::new("D", "soak");
    let start = Instant::now();
    let interval = cfg.interval.max(Duration::from_millis(1));
    let (mut calls, mut errors, mut first_error) = (0u64, 0u64, None);
    let mut interval_start = start;
    let mut interval_calls = 0u64;
    let mut interval_latency: Vec<Duration> = vec![];
    // (cumulative calls, memory, seconds since start) per interval end; calls/s per interval.
    let mut samples: Vec<(f64, Option<u64>, f64)> = vec![];
    let mut throughput: Vec<f64> = vec![];
    let mut interval_p99: Vec<f64> = vec![];
    while start.elapsed() < cfg.duration {
        let t0 = Instant::now();
        let r = engine.infer(model, inputs, cfg.timeout);
        interval_latency.push(t0.elapsed());
        calls += 1;
        interval_calls += 1;
        if let Err(e) = r {
            errors += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
        let in_interval = interval_start.elapsed();
        if in_interval >= interval {
            let rate = interval_calls as f64 / in_interval.as_secs_f64();
            let memory = (cfg.memory_probe)();
            let elapsed_s = start.elapsed().as_secs_f64();
            throughput.push(rate);
            samples.push((calls as f64, memory, elapsed_s));
            let p99 = percentile(&mut interval_latency, 0.99).map_or(0.0, ms);
            interval_p99.push(p99);
            if let Some(observe) = &cfg.observer {
                let mut p = |q| percentile(&mut interval_latency, q).map_or(0.0, ms);
                observe(&SoakSample {
                    elapsed_s,
                    calls,
                    throughput_per_s: rate,
                    p50_ms: p(0.50),
                    p95_ms: p(0.95),
                    p99_ms: p99,
                    memory_bytes: memory,
                    errors,
                    warmup: samples.len() <= cfg.warmup_intervals,
                });
            }
            interval_calls = 0;
            interval_latency.clear();
            interval_start = Instant::now();
        }
    }
    v.measure("calls", calls as f64);
    v.measure("duration_s", start.elapsed().as_secs_f64());
    v.check(
        "errors",
        errors as f64,
        Threshold::AtMost(cfg.max_errors as f64),
        "inferences must not fail during the soak",
    );
    if let Some(e) = first_error {
        v.notes.push(format!("first error: {e}"));
    }
    let skip = cfg.warmup_intervals.min(samples.len());
    let measured = &samples[skip..];
    let tput = &throughput[skip..];
    v.measure("intervals", measured.len() as f64);
    if measured.len() < 3 {
        v.fail(format!(
            "expected at least 3 measured intervals to judge trends, got {} (duration {:?}, interval {:?}, {} warm-up)",
            measured.len(),
            cfg.duration,
            cfg.interval,
            cfg.warmup_intervals
        ));
        return v.finish();
    }
    let mem: Vec<(f64, f64, f64)> = measured
        .iter()
        .filter_map(|&(c, m, t)| m.map(|m| (c, m as f64, t)))
        .collect();
    if mem.len() < 3 {
        v.fail("memory could not be measured on this host: the memory probe gave no value".into());
    } else {
        let xs: Vec<f64> = mem.iter().map(|s| s.0).collect();
        let ys: Vec<f64> = mem.iter().map(|s| s.1).collect();
        let ts: Vec<f64> = mem.iter().map(|s| s.2).collect();
        match least_squares_slope(&xs, &ys) {
            Some(per_call) => v.check(
                "memory_slope_bytes_per_100_calls",
                per_call * 100.0,
                Threshold::AtMost(cfg.max_growth_per_100_calls),
                "memory must not trend upward",
            ),
            None => v.fail("no calls between memory samples: cannot fit a memory trend".into()),
        }
        if let Some(per_s) = least_squares_slope(&ts, &ys) {
            v.measure("memory_slope_bytes_per_s", per_s);
        }
        v.measure("memory_first_bytes", ys[0]);
        v.measure("memory_last_bytes", ys[ys.len() - 1]);
    }
    let mean = tput.iter().sum::<f64>() / tput.len() as f64;
    v.measure("throughput_mean_per_s", mean);
    match coefficient_of_variation(tput) {
        Some(cv) => v.check(
            "throughput_cv",
            cv,
            Threshold::AtMost(cfg.max_throughput_cv),
            "throughput must be steady",
        ),
        None => v.fail("throughput was zero in every interval".into()),
    }
    let mut p99s = interval_p99[skip..].to_vec();
    p99s.sort_by(f64::total_cmp);
    let (median, worst) = (p99s[p99s.len() / 2], p99s[p99s.len() - 1]);
    v.measure("p99_median_interval_ms", median);
    v.measure("p99_worst_interval_ms", worst);
    if median > 0.0 {
        v.check(
            "p99_spike_ratio",
            worst / median,
            Threshold::AtMost(cfg.max_p99_spike),
            "no interval's p99 may spike far above the soak's typical p99",
        );
    }
    v.finish()
}
