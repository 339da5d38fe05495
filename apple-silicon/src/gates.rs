//! Gates A–D of the plan as functions that return typed verdicts.
//!
//! | gate | checks |
//! |---|---|
//! | [`gate_a`] | N prepare (compile + load) cycles: no errors, memory growth under a budget, prepare p99 under a bound, cache hit ratio ≥ 90% |
//! | [`gate_b`] | output schema, timeout enforcement, p99 under the SLA, parity with a reference within the precision's thresholds |
//! | [`gate_c`] | the primary (Core ML) at least 30% faster than the CPU engine at p99; `NotApplicable` where the primary is unavailable |
//! | [`gate_d`] | a soak: no errors, no memory growth trend (least-squares slope), steady throughput (coefficient of variation), no p99 spikes (no interval's p99 far above the median interval's) |
//!
//! Every gate returns a [`GateVerdict`]: its status, each measurement next to
//! its threshold, and the reasons it failed. [`render_table`] prints verdicts
//! for people; verdicts serialise to JSON for machines.
//!
//! Parity: gate B takes any comparison function returning a
//! [`ParityOutcome`]. Until the crate's `parity` module lands it defaults to
//! [`linf_rmse`], a small local L∞ / RMSE comparison with the plan's
//! thresholds ([`ParityThresholds`]); swap in the parity module by passing it
//! with [`GateBConfig::with_parity`].
//!
//! Cache statistics for gate A come from any [`CacheStats`] source — a
//! closure `|| (hits, misses)` works — so the gate does not depend on a
//! concrete cache type.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::breaker::{process_memory_probe, MemoryProbe};
use crate::error::ErrorKind;
use crate::inference::{InferenceEngine, ModelArtifact, PrepareOptions, PreparedModel};
use crate::tensor::TensorMap;

/// Whether a gate passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum GateStatus {
    /// Every check passed.
    Passed,
    /// At least one check failed; see the verdict's reasons.
    Failed,
    /// The gate does not apply here (e.g. no Core ML on this host).
    NotApplicable {
        /// Why.
        reason: String,
    },
}

/// A bound on one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// The value must be at most this.
    AtMost(f64),
    /// The value must be at least this.
    AtLeast(f64),
}

impl Threshold {
    /// Whether `value` meets the bound (NaN never does).
    pub fn admits(self, value: f64) -> bool {
        match self {
            Threshold::AtMost(t) => value <= t,
            Threshold::AtLeast(t) => value >= t,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::AtMost(t) => write!(f, "<= {}", fmt_num(*t)),
            Threshold::AtLeast(t) => write!(f, ">= {}", fmt_num(*t)),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1e-3 || v == 0.0 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// The outcome of one gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// `A`, `B`, `C` or `D`.
    pub gate: String,
    /// What the gate checks, in a few words.
    pub name: String,
    /// Passed, failed, or not applicable.
    pub status: GateStatus,
    /// Measured values by name.
    pub measurements: BTreeMap<String, f64>,
    /// Bounds by measurement name (measurements without one are context).
    pub thresholds: BTreeMap<String, Threshold>,
    /// Why the gate failed, one line per failed check.
    pub reasons: Vec<String>,
    /// Context: checks skipped and why, and other facts.
    pub notes: Vec<String>,
}

impl GateVerdict {
    fn new(gate: &str, name: &str) -> GateVerdict {
        GateVerdict {
            gate: gate.into(),
            name: name.into(),
            status: GateStatus::Passed,
            measurements: BTreeMap::new(),
            thresholds: BTreeMap::new(),
            reasons: vec![],
            notes: vec![],
        }
    }

    fn not_applicable(gate: &str, name: &str, reason: String) -> GateVerdict {
        GateVerdict {
            status: GateStatus::NotApplicable { reason },
            ..GateVerdict::new(gate, name)
        }
    }

    /// Whether the gate passed.
    pub fn passed(&self) -> bool {
        self.status == GateStatus::Passed
    }

    /// Whether the gate did not apply.
    pub fn is_not_applicable(&self) -> bool {
        matches!(self.status, GateStatus::NotApplicable { .. })
    }

    fn measure(&mut self, key: &str, value: f64) {
        self.measurements.insert(key.into(), value);
    }

    /// Records a measurement with its bound; a miss adds a reason.
    fn check(&mut self, key: &str, value: f64, threshold: Threshold, what: &str) {
        self.measure(key, value);
        self.thresholds.insert(key.into(), threshold);
        if !threshold.admits(value) {
            self.reasons
                .push(format!("{what}: expected {key} {threshold}, got {}", fmt_num(value)));
        }
    }

    fn fail(&mut self, reason: String) {
        self.reasons.push(reason);
    }

    fn finish(mut self) -> GateVerdict {
        if !self.is_not_applicable() {
            self.status = if self.reasons.is_empty() {
                GateStatus::Passed
            } else {
                GateStatus::Failed
            };
        }
        self
    }
}

/// The nearest-rank percentile of `samples` (sorted in place), `None` if empty.
pub fn percentile(samples: &mut [Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((q.clamp(0.0, 1.0) * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Least-squares slope of `ys` against `xs` (`None` with fewer than two
/// distinct xs).
pub fn least_squares_slope(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return None;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for i in 0..n {
        sxy += (xs[i] - mx) * (ys[i] - my);
        sxx += (xs[i] - mx) * (xs[i] - mx);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Coefficient of variation (population standard deviation over mean) of
/// `v`; `None` when empty or the mean is zero.
pub fn coefficient_of_variation(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    if mean == 0.0 {
        return None;
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
    Some(var.sqrt() / mean)
}

// ---------------------------------------------------------------------------
// Parity

/// Result of comparing an engine's outputs with a reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityOutcome {
    /// Within the thresholds.
    pub passed: bool,
    /// Largest absolute difference over all compared elements (L∞).
    pub max_abs: f64,
    /// Root mean square difference over all compared elements.
    pub rmse: f64,
    /// What was compared, or what did not match.
    pub detail: String,
}

/// Parity bounds for one precision (the plan's §9 budgets).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParityThresholds {
    /// Largest allowed absolute difference.
    pub max_abs: f64,
    /// Largest allowed RMSE.
    pub rmse: f64,
}

impl ParityThresholds {
    /// fp32 against an fp32 reference: L∞ ≤ 1e-4, RMSE ≤ 1e-5.
    pub fn fp32() -> Self {
        ParityThresholds {
            max_abs: 1e-4,
            rmse: 1e-5,
        }
    }
    /// fp16: L∞ ≤ 1e-2, RMSE ≤ 1e-3.
    pub fn fp16() -> Self {
        ParityThresholds {
            max_abs: 1e-2,
            rmse: 1e-3,
        }
    }
    /// int8: L∞ ≤ 5e-2, RMSE ≤ 5e-3.
    pub fn int8() -> Self {
        ParityThresholds {
            max_abs: 5e-2,
            rmse: 5e-3,
        }
    }
}

/// A comparison of outputs (`got`, `want`), as gate B takes it.
pub type ParityFn = dyn Fn(&TensorMap, &TensorMap) -> ParityOutcome + Sync;

/// Compares every tensor of `want` with the same-named tensor of `got`
/// (values as f64, any dtype): L∞ and RMSE pooled over all elements. A
/// missing output, a different element count or a non-finite difference
/// fails. Costs one pass over the outputs.
pub fn linf_rmse(got: &TensorMap, want: &TensorMap, t: ParityThresholds) -> ParityOutcome {
    let (mut max_abs, mut sq, mut n) = (0.0f64, 0.0f64, 0usize);
    let mut problems = vec![];
    for (name, w) in want {
        let Some(g) = got.get(name) else {
            problems.push(format!("output `{name}` missing"));
            continue;
        };
        if g.numel() != w.numel() {
            problems.push(format!(
                "output `{name}`: expected {} elements, got {}",
                w.numel(),
                g.numel()
            ));
            continue;
        }
        for (a, b) in g.to_f64_vec().into_iter().zip(w.to_f64_vec()) {
            let d = (a - b).abs();
            if !d.is_finite() {
                if !(a.is_nan() && b.is_nan()) && a != b {
                    problems.push(format!("output `{name}`: non-finite difference ({a} vs {b})"));
                    max_abs = f64::INFINITY;
                }
                continue;
            }
            max_abs = max_abs.max(d);
            sq += d * d;
            n += 1;
        }
    }
    let rmse = if n > 0 { (sq / n as f64).sqrt() } else { 0.0 };
    if max_abs > t.max_abs {
        problems.push(format!("L∞ {max_abs:.3e} over {:.1e}", t.max_abs));
    }
    if rmse > t.rmse {
        problems.push(format!("RMSE {rmse:.3e} over {:.1e}", t.rmse));
    }
    ParityOutcome {
        passed: problems.is_empty(),
        max_abs,
        rmse,
        detail: if problems.is_empty() {
            format!("{n} elements in {} outputs within bounds", want.len())
        } else {
            problems.join("; ")
        },
    }
}

// ---------------------------------------------------------------------------
// Gate A

/// A source of cache hit and miss counts (cumulative). Any `Fn() -> (u64,
/// u64)` closure is one.
pub trait CacheStats {
    /// `(hits, misses)` so far.
    fn hits_misses(&self) -> (u64, u64);
}

impl<F: Fn() -> (u64, u64)> CacheStats for F {
    fn hits_misses(&self) -> (u64, u64) {
        self()
    }
}

/// One prepare cycle of [`gate_a`], as handed to [`GateAConfig::with_observer`].
#[derive(Debug, Clone, Serialize)]
pub struct CycleSample {
    /// 1-based cycle number, counting warm-up cycles.
    pub cycle: usize,
    /// `warmup + cycles`.
    pub total: usize,
    /// Whether this cycle is a warm-up cycle (not judged).
    pub warmup: bool,
    /// How long this prepare took.
    pub prepare_ms: f64,
    /// Whether this prepare failed.
    pub failed: bool,
    /// Memory after the prepared model was dropped (the probe's reading).
    pub memory_bytes: Option<u64>,
    /// Cumulative cache `(hits, misses)`, when a cache was given.
    pub cache: Option<(u64, u64)>,
}

/// Receives every [`CycleSample`] of [`gate_a`] (progress output, CSV rows).
pub type CycleObserver = std::sync::Arc<dyn Fn(&CycleSample) + Send + Sync>;

/// Settings of [`gate_a`].
#[derive(Clone)]
pub struct GateAConfig {
    /// Measured prepare cycles (the plan: 10 000).
    pub cycles: usize,
    /// Cycles run before measuring (allocator and cache warm-up).
    pub warmup: usize,
    /// Largest allowed memory growth over the measured cycles.
    pub memory_budget_bytes: u64,
    /// Smallest allowed cache hit ratio over the measured cycles.
    pub min_cache_hit_ratio: f64,
    /// Largest allowed prepare p99.
    pub max_prepare_p99: Duration,
    /// Reads memory use (default: process RSS).
    pub memory_probe: MemoryProbe,
    /// Called after every cycle; `None` (the default) skips the per-cycle
    /// memory and cache readings it needs.
    pub observer: Option<CycleObserver>,
}

impl Default for GateAConfig {
    /// 1 000 cycles after 100 warm-up, 10 MiB budget, ≥ 90% cache hits,
    /// prepare p99 ≤ 5 s.
    fn default() -> Self {
        GateAConfig {
            cycles: 1000,
            warmup: 100,
            memory_budget_bytes: 10 << 20,
            min_cache_hit_ratio: 0.90,
            max_prepare_p99: Duration::from_secs(5),
            memory_probe: process_memory_probe(),
            observer: None,
        }
    }
}

impl GateAConfig {
    /// Sets the measured cycles.
    pub fn with_cycles(mut self, n: usize) -> Self {
        self.cycles = n;
        self
    }
    /// Sets the warm-up cycles.
    pub fn with_warmup(mut self, n: usize) -> Self {
        self.warmup = n;
        self
    }
    /// Sets the memory budget.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget_bytes = bytes;
        self
    }
    /// Sets the minimum cache hit ratio.
    pub fn with_min_cache_hit_ratio(mut self, r: f64) -> Self {
        self.min_cache_hit_ratio = r;
        self
    }
    /// Sets the prepare p99 bound.
    pub fn with_max_prepare_p99(mut self, d: Duration) -> Self {
        self.max_prepare_p99 = d;
        self
    }
    /// Sets the memory probe.
    pub fn with_memory_probe(mut self, probe: MemoryProbe) -> Self {
        self.memory_probe = probe;
        self
    }
    /// Calls `observer` after every cycle (warm-up included), with the
    /// memory probe read and the cache counters taken after the model was
    /// dropped. Costs one probe reading per cycle.
    pub fn with_observer(mut self, observer: CycleObserver) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// Gate A: prepares (compile + load) `artifact` `warmup + cycles` times,
/// dropping each model, and checks that no prepare failed, that memory grew
/// by at most the budget over the measured cycles, that prepare p99 is under
/// its bound, and — when `cache` is given — that the cache hit ratio over
/// the measured cycles is high enough. Without `cache` the ratio is not
/// judged (a note says so). Costs `warmup + cycles` prepares.
pub fn gate_a(
    engine: &dyn InferenceEngine,
    artifact: &ModelArtifact,
    opts: &PrepareOptions,
    cache: Option<&dyn CacheStats>,
    cfg: &GateAConfig,
) -> GateVerdict {
    let mut v = GateVerdict::new("A", "compile+load cycles");
    let mut first_error = None;
    let total = cfg.warmup + cfg.cycles;
    let mut cycle = 0usize;
    // One prepare, the model dropped at once; reports to the observer if any.
    let mut run = |errors: &mut u64| {
        cycle += 1;
        let t0 = Instant::now();
        let r = engine.prepare(artifact, opts.clone());
        let d = t0.elapsed();
        // The model is dropped here, before memory is read: a cycle is prepare + free.
        let failed = match r {
            Ok(model) => {
                drop(model);
                false
            }
            Err(e) => {
                *errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
                true
            }
        };
        if let Some(observe) = &cfg.observer {
            observe(&CycleSample {
                cycle,
                total,
                warmup: cycle <= cfg.warmup,
                prepare_ms: ms(d),
                failed,
                memory_bytes: (cfg.memory_probe)(),
                cache: cache.map(|c| c.hits_misses()),
            });
        }
        d
    };
    let mut errors = 0u64;
    for _ in 0..cfg.warmup {
        run(&mut errors);
    }
    let mem0 = (cfg.memory_probe)();
    let cache0 = cache.map(|c| c.hits_misses());
    let mut times = Vec::with_capacity(cfg.cycles);
    let mut measured_errors = 0u64;
    for _ in 0..cfg.cycles {
        times.push(run(&mut measured_errors));
    }
    let mem1 = (cfg.memory_probe)();
    let cache1 = cache.map(|c| c.hits_misses());

    v.measure("cycles", cfg.cycles as f64);
    v.check(
        "prepare_errors",
        (errors + measured_errors) as f64,
        Threshold::AtMost(0.0),
        "every prepare must succeed",
    );
    if let Some(e) = &first_error {
        v.notes.push(format!("first prepare error: {e}"));
    }
    match (mem0, mem1) {
        (Some(a), Some(b)) => v.check(
            "memory_growth_bytes",
            b as f64 - a as f64,
            Threshold::AtMost(cfg.memory_budget_bytes as f64),
            "memory must not grow over the cycles",
        ),
        _ => v.fail("memory could not be measured on this host: the memory probe gave no value".into()),
    }
    if let Some(p99) = percentile(&mut times, 0.99) {
        v.check(
            "prepare_p99_ms",
            ms(p99),
            Threshold::AtMost(ms(cfg.max_prepare_p99)),
            "prepare must be fast enough",
        );
    }
    match (cache0, cache1) {
        (Some((h0, m0)), Some((h1, m1))) => {
            let hits = h1.saturating_sub(h0);
            let misses = m1.saturating_sub(m0);
            v.measure("cache_hits", hits as f64);
            v.measure("cache_misses", misses as f64);
            if hits + misses == 0 {
                v.fail("the cache saw no lookups during the measured cycles".into());
            } else {
                v.check(
                    "cache_hit_ratio",
                    hits as f64 / (hits + misses) as f64,
                    Threshold::AtLeast(cfg.min_cache_hit_ratio),
                    "compiled models must come from the cache",
                );
            }
        }
        _ => v
            .notes
            .push("no cache statistics supplied: the cache hit ratio was not judged".into()),
    }
    v.finish()
}

// ---------------------------------------------------------------------------
// Gate B

/// Settings of [`gate_b`].
#[derive(Clone)]
pub struct GateBConfig<'a> {
    /// Measured inferences for the latency check.
    pub iterations: usize,
    /// Inferences before measuring.
    pub warmup: usize,
    /// Latency target; `None`: the model's [`PreparedModel::sla_estimate`].
    pub sla: Option<Duration>,
    /// Timeout of each measured inference.
    pub timeout: Duration,
    /// The tiny timeout the engine must enforce.
    pub tiny_timeout: Duration,
    /// How late a `Timeout` may come back.
    pub timeout_margin: Duration,
    /// Expected outputs; `None` skips the parity check (noted).
    pub reference: Option<&'a TensorMap>,
    /// Comparison; `None`: [`linf_rmse`] with `thresholds`.
    pub parity: Option<&'a ParityFn>,
    /// Bounds for the default comparison.
    pub thresholds: ParityThresholds,
    /// A hanging engine and model (e.g. a guarded engine around a
    /// [`FaultyEngine`](crate::testing::FaultyEngine) that hangs) that must
    /// come back with `Timeout` within `hang_timeout` + margin.
    pub hang_probe: Option<(&'a dyn InferenceEngine, &'a dyn PreparedModel)>,
    /// The timeout given to the hang probe.
    pub hang_timeout: Duration,
}

impl Default for GateBConfig<'_> {
    /// 200 iterations after 5 warm-up, the model's SLA, 10 s per call, a
    /// 1 ns tiny timeout (no real inference fits in it) with 100 ms margin, fp16 parity bounds, no
    /// reference and no hang probe.
    fn default() -> Self {
        GateBConfig {
            iterations: 200,
            warmup: 5,
            sla: None,
            timeout: Duration::from_secs(10),
            tiny_timeout: Duration::from_nanos(1),
            timeout_margin: Duration::from_millis(100),
            reference: None,
            parity: None,
            thresholds: ParityThresholds::fp16(),
            hang_probe: None,
            hang_timeout: Duration::from_millis(200),
        }
    }
}

impl<'a> GateBConfig<'a> {
    /// Sets the measured iterations.
    pub fn with_iterations(mut self, n: usize) -> Self {
        self.iterations = n;
        self
    }
    /// Sets the warm-up iterations.
    pub fn with_warmup(mut self, n: usize) -> Self {
        self.warmup = n;
        self
    }
    /// Sets the SLA.
    pub fn with_sla(mut self, sla: Duration) -> Self {
        self.sla = Some(sla);
        self
    }
    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Sets the tiny timeout and how late its `Timeout` may come.
    pub fn with_tiny_timeout(mut self, tiny: Duration, margin: Duration) -> Self {
        self.tiny_timeout = tiny;
        self.timeout_margin = margin;
        self
    }
    /// Sets the expected outputs.
    pub fn with_reference(mut self, reference: &'a TensorMap) -> Self {
        self.reference = Some(reference);
        self
    }
    /// Sets the comparison function (e.g. the parity module's).
    pub fn with_parity(mut self, parity: &'a ParityFn) -> Self {
        self.parity = Some(parity);
        self
    }
    /// Sets the default comparison's bounds.
    pub fn with_thresholds(mut self, t: ParityThresholds) -> Self {
        self.thresholds = t;
        self
    }
    /// Sets a hanging engine that must time out, and its timeout.
    pub fn with_hang_probe(
        mut self,
        engine: &'a dyn InferenceEngine,
        model: &'a dyn PreparedModel,
        timeout: Duration,
    ) -> Self {
        self.hang_probe = Some((engine, model));
        self.hang_timeout = timeout;
        self
    }
}

/// Gate B: runs `model` on `engine` and checks that the outputs match the
/// model's output schema (names, dtypes, allowed shapes), that a call given
/// a tiny timeout returns `Timeout` promptly (and the hang probe, if any,
/// too), that no call fails and p99 is within the SLA, and — with a
/// reference — that outputs are within the parity bounds. Costs
/// `warmup + iterations + 2` inferences.
pub fn gate_b(
    engine: &dyn InferenceEngine,
    model: &dyn PreparedModel,
    inputs: &TensorMap,
    cfg: &GateBConfig<'_>,
) -> GateVerdict {
    let mut v = GateVerdict::new("B", "schema, timeout, latency, parity");
    for _ in 0..cfg.warmup {
        let _ = engine.infer(model, inputs, cfg.timeout);
    }

    // Schema and parity, from one call.
    match engine.infer(model, inputs, cfg.timeout) {
        Err(e) => v.fail(format!("an inference failed, so outputs could not be checked: {e}")),
        Ok(out) => {
            let schema = model.io_schema();
            let mut schema_errors = 0;
            for spec in &schema.outputs {
                match out.get(&spec.name) {
                    None => {
                        schema_errors += 1;
                        v.fail(format!("output `{}`: expected it, got no such output", spec.name));
                    }
                    Some(t) if t.dtype() != spec.dtype => {
                        schema_errors += 1;
                        v.fail(format!(
                            "output `{}`: expected dtype {}, got {}",
                            spec.name,
                            spec.dtype,
                            t.dtype()
                        ));
                    }
                    Some(t) if !spec.accepts_shape(t.shape()) => {
                        schema_errors += 1;
                        v.fail(format!(
                            "output `{}`: expected shape {}, got {:?}",
                            spec.name,
                            spec.describe_allowed(),
                            t.shape()
                        ));
                    }
                    Some(_) => {}
                }
            }
            for name in out.keys().filter(|k| schema.output(k).is_none()) {
                schema_errors += 1;
                v.fail(format!(
                    "output `{name}`: expected only the schema's outputs, got this one too"
                ));
            }
            v.measure("schema_errors", schema_errors as f64);
            v.thresholds.insert("schema_errors".into(), Threshold::AtMost(0.0));

            match cfg.reference {
                None => v.notes.push("no reference outputs: parity not checked".into()),
                Some(want) => {
                    let outcome = match cfg.parity {
                        Some(f) => f(&out, want),
                        None => linf_rmse(&out, want, cfg.thresholds),
                    };
                    v.measure("parity_max_abs", outcome.max_abs);
                    v.measure("parity_rmse", outcome.rmse);
                    if cfg.parity.is_none() {
                        v.thresholds
                            .insert("parity_max_abs".into(), Threshold::AtMost(cfg.thresholds.max_abs));
                        v.thresholds
                            .insert("parity_rmse".into(), Threshold::AtMost(cfg.thresholds.rmse));
                    }
                    if !outcome.passed {
                        v.fail(format!("parity: {}", outcome.detail));
                    }
                }
            }
        }
    }

    // Latency.
    let sla = cfg.sla.unwrap_or_else(|| model.sla_estimate());
    let mut times = Vec::with_capacity(cfg.iterations);
    let mut errors = 0u64;
    let mut first_error = None;
    for _ in 0..cfg.iterations {
        let t0 = Instant::now();
        let r = engine.infer(model, inputs, cfg.timeout);
        times.push(t0.elapsed());
        if let Err(e) = r {
            errors += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    }
    v.check(
        "inference_errors",
        errors as f64,
        Threshold::AtMost(0.0),
        "every inference must succeed",
    );
    if let Some(e) = first_error {
        v.notes.push(format!("first inference error: {e}"));
    }
    if let (Some(p50), Some(p99)) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99)) {
        v.measure("p50_ms", ms(p50));
        v.check(
            "p99_ms",
            ms(p99),
            Threshold::AtMost(ms(sla)),
            "p99 must be within the SLA",
        );
    }

    // Timeout enforcement.
    let timeout_check = |v: &mut GateVerdict, key: &str, e: &dyn InferenceEngine, m: &dyn PreparedModel, t| {
        let t0 = Instant::now();
        let r = e.infer(m, inputs, t);
        let took = t0.elapsed();
        match r {
            Err(err) if err.kind() == ErrorKind::Timeout => v.check(
                key,
                ms(took),
                Threshold::AtMost(ms(t + cfg.timeout_margin)),
                "Timeout must come back promptly",
            ),
            Err(err) => {
                v.measure(key, ms(took));
                v.fail(format!("{key}: expected a Timeout error after {t:?}, got: {err}"));
            }
            Ok(_) => {
                v.measure(key, ms(took));
                v.fail(format!(
                    "{key}: expected a Timeout error after {t:?}, got outputs after {took:?}: the timeout is not enforced"
                ));
            }
        }
    };
    timeout_check(&mut v, "tiny_timeout_return_ms", engine, model, cfg.tiny_timeout);
    if let Some((he, hm)) = cfg.hang_probe {
        timeout_check(&mut v, "hang_timeout_return_ms", he, hm, cfg.hang_timeout);
    }
    v.finish()
}

// ---------------------------------------------------------------------------
// Gate C

/// Settings of [`gate_c`].
#[derive(Debug, Clone)]
pub struct GateCConfig {
    /// Measured inferences per engine.
    pub iterations: usize,
    /// Inferences per engine before measuring.
    pub warmup: usize,
    /// Timeout of each inference.
    pub timeout: Duration,
    /// Largest allowed primary p99 / CPU p99 (the plan: 0.7, i.e. at least
    /// 30% faster).
    pub max_p99_ratio: f64,
    /// Whether a known Neural Engine op share of zero fails the gate.
    pub require_ane: bool,
}

impl Default for GateCConfig {
    /// 100 iterations after 5 warm-up, 10 s timeout, ratio ≤ 0.7, ANE not
    /// required.
    fn default() -> Self {
        GateCConfig {
            iterations: 100,
            warmup: 5,
            timeout: Duration::from_secs(10),
            max_p99_ratio: 0.7,
            require_ane: false,
        }
    }
}

impl GateCConfig {
    /// Sets the measured iterations.
    pub fn with_iterations(mut self, n: usize) -> Self {
        self.iterations = n;
        self
    }
    /// Sets the warm-up iterations.
    pub fn with_warmup(mut self, n: usize) -> Self {
        self.warmup = n;
        self
    }
    /// Sets the largest allowed p99 ratio.
    pub fn with_max_p99_ratio(mut self, r: f64) -> Self {
        self.max_p99_ratio = r;
        self
    }
    /// Requires Neural Engine dispatch where the engine reports it.
    pub fn with_require_ane(mut self, on: bool) -> Self {
        self.require_ane = on;
        self
    }
}

fn timed_runs(
    engine: &dyn InferenceEngine,
    model: &dyn PreparedModel,
    inputs: &TensorMap,
    cfg: &GateCConfig,
) -> (Vec<Duration>, u64, Option<String>) {
    for _ in 0..cfg.warmup {
        let _ = engine.infer(model, inputs, cfg.timeout);
    }
    let mut times = Vec::with_capacity(cfg.iterations);
    let (mut errors, mut first) = (0, None);
    for _ in 0..cfg.iterations {
        let t0 = Instant::now();
        let r = engine.infer(model, inputs, cfg.timeout);
        times.push(t0.elapsed());
        if let Err(e) = r {
            errors += 1;
            first.get_or_insert_with(|| e.to_string());
        }
    }
    (times, errors, first)
}

/// Gate C: prepares `artifact` on the primary (Core ML) and on the CPU
/// engine, runs both, and checks the primary's p99 is at most
/// `max_p99_ratio` × the CPU's. `NotApplicable` when the primary reports
/// `Unavailable` (as on Linux). Reports the Neural Engine op share where the
/// primary knows it. Costs two prepares and `2 × (warmup + iterations)`
/// inferences.
pub fn gate_c(
    primary: &dyn InferenceEngine,
    cpu: &dyn InferenceEngine,
    artifact: &ModelArtifact,
    opts: &PrepareOptions,
    inputs: &TensorMap,
    cfg: &GateCConfig,
) -> GateVerdict {
    const NAME: &str = "primary faster than CPU";
    let pm = match primary.prepare(artifact, opts.clone()) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::Unavailable => {
            return GateVerdict::not_applicable("C", NAME, e.to_string());
        }
        Err(e) => {
            let mut v = GateVerdict::new("C", NAME);
            v.fail(format!(
                "the primary ({}) could not prepare the model: {e}",
                primary.name()
            ));
            return v.finish();
        }
    };
    let mut v = GateVerdict::new("C", NAME);
    let cm = match cpu.prepare(artifact, opts.clone()) {
        Ok(m) => m,
        Err(e) => {
            v.fail(format!(
                "the CPU engine ({}) could not prepare the model: {e}",
                cpu.name()
            ));
            return v.finish();
        }
    };
    let (mut pt, perr, pfirst) = timed_runs(primary, &*pm, inputs, cfg);
    let (mut ct, cerr, cfirst) = timed_runs(cpu, &*cm, inputs, cfg);
    v.check(
        "primary_errors",
        perr as f64,
        Threshold::AtMost(0.0),
        "every primary inference must succeed",
    );
    v.check(
        "cpu_errors",
        cerr as f64,
        Threshold::AtMost(0.0),
        "every CPU inference must succeed",
    );
    for (who, e) in [("primary", pfirst), ("cpu", cfirst)] {
        if let Some(e) = e {
            v.notes.push(format!("first {who} error: {e}"));
        }
    }
    match (
        percentile(&mut pt, 0.99),
        percentile(&mut ct, 0.99),
        percentile(&mut pt, 0.5),
        percentile(&mut ct, 0.5),
    ) {
        (Some(p99), Some(c99), Some(p50), Some(c50)) => {
            v.measure("primary_p50_ms", ms(p50));
            v.measure("cpu_p50_ms", ms(c50));
            v.measure("primary_p99_ms", ms(p99));
            v.measure("cpu_p99_ms", ms(c99));
            if c99.is_zero() {
                v.fail("the CPU p99 is zero: nothing to compare with".into());
            } else {
                let ratio = p99.as_secs_f64() / c99.as_secs_f64();
                v.measure("speedup_pct", (1.0 - ratio) * 100.0);
                v.check(
                    "p99_ratio",
                    ratio,
                    Threshold::AtMost(cfg.max_p99_ratio),
                    "the primary must be faster than the CPU engine",
                );
            }
        }
        _ => v.fail("no iterations were run".into()),
    }
    let caps = primary.capabilities(&*pm);
    match caps.ane_op_coverage_pct {
        Some(pct) => {
            if cfg.require_ane {
                v.check(
                    "ane_op_coverage_pct",
                    pct as f64,
                    Threshold::AtLeast(1.0),
                    "Neural Engine dispatch must be confirmed",
                );
            } else {
                v.measure("ane_op_coverage_pct", pct as f64);
            }
        }
        None if cfg.require_ane => {
            v.fail("Neural Engine dispatch could not be confirmed: the primary does not report it".into())
        }
        None => v
            .notes
            .push("the primary does not report its Neural Engine op share".into()),
    }
    v.finish()
}

// ---------------------------------------------------------------------------
// Gate D

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

// ---------------------------------------------------------------------------
// Rendering

/// Renders verdicts as a plain-text table: one row per measurement with its
/// threshold, then the reasons and notes of each gate.
pub fn render_table(verdicts: &[GateVerdict]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<34} {:<6} {:<34} {:>14}  threshold",
        "gate", "check", "result", "measurement", "value"
    );
    for v in verdicts {
        let result = match &v.status {
            GateStatus::Passed => "PASS",
            GateStatus::Failed => "FAIL",
            GateStatus::NotApplicable { .. } => "N/A",
        };
        let mut first = true;
        let mut row = |out: &mut String, m: &str, value: String, th: String| {
            let (g, n, r) = if first {
                (v.gate.as_str(), v.name.as_str(), result)
            } else {
                ("", "", "")
            };
            first = false;
            let _ = writeln!(out, "{g:<5} {n:<34} {r:<6} {m:<34} {value:>14}  {th}");
        };
        if v.measurements.is_empty() {
            row(&mut out, "-", String::new(), String::new());
        }
        for (k, val) in &v.measurements {
            let th = v.thresholds.get(k).map(|t| t.to_string()).unwrap_or_default();
            row(&mut out, k, fmt_num(*val), th);
        }
        if let GateStatus::NotApplicable { reason } = &v.status {
            let _ = writeln!(out, "{:<5} not applicable: {reason}", "");
        }
        for r in &v.reasons {
            let _ = writeln!(out, "{:<5} why: {r}", "");
        }
        for n in &v.notes {
            let _ = writeln!(out, "{:<5} note: {n}", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn slope_and_cv() {
        let xs = [0.0, 1.0, 2.0, 3.0];
        let ys = [10.0, 12.0, 14.0, 16.0];
        assert!((least_squares_slope(&xs, &ys).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(least_squares_slope(&[1.0, 1.0], &[0.0, 5.0]), None);
        assert!((coefficient_of_variation(&[10.0, 10.0, 10.0]).unwrap()).abs() < 1e-12);
        let cv = coefficient_of_variation(&[5.0, 15.0]).unwrap();
        assert!((cv - 0.5).abs() < 1e-12, "{cv}");
        let mut d: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut d, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&mut d, 0.5), Some(Duration::from_millis(50)));
    }

    #[test]
    fn local_parity() {
        let t = |v: Vec<f32>| TensorMap::from([("y".to_string(), Tensor::from_vec(vec![v.len()], v).unwrap())]);
        let ok = linf_rmse(&t(vec![1.0, 2.0]), &t(vec![1.0, 2.001]), ParityThresholds::fp16());
        assert!(ok.passed, "{ok:?}");
        assert!((ok.max_abs - 0.001).abs() < 1e-6);
        let bad = linf_rmse(&t(vec![1.0, 2.5]), &t(vec![1.0, 2.0]), ParityThresholds::fp16());
        assert!(!bad.passed && bad.detail.contains("L∞"), "{bad:?}");
        let missing = linf_rmse(&TensorMap::new(), &t(vec![1.0]), ParityThresholds::fp16());
        assert!(!missing.passed && missing.detail.contains("missing"), "{missing:?}");
        let nan = linf_rmse(&t(vec![f32::NAN]), &t(vec![1.0]), ParityThresholds::fp16());
        assert!(!nan.passed, "{nan:?}");
    }
}
