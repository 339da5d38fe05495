//! Gates A–D on fault-injected engines: each gate passes on a well-behaved
//! engine and fails, with the right reason, on one that breaks its rule.
//! Gate C is not applicable when the primary is unavailable (as on Linux).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apple_silicon::deadline::GuardedEngine;
use apple_silicon::gates::{
    gate_a, gate_b, gate_c, gate_d, render_table, CycleSample, GateAConfig, GateBConfig, GateCConfig, GateDConfig,
    GateStatus, GateVerdict, ParityOutcome, SoakSample, Threshold,
};
use apple_silicon::testing::{fake_artifact, FaultyEngine, OutputFault, Pattern};
use apple_silicon::{
    CapabilityReport, DType, ErrorKind, InferenceEngine, ModelArtifact, PrepareOptions, PreparedModel, Result,
    TensorMap,
};
use common::{expected, input, schema};

fn echo() -> FaultyEngine {
    FaultyEngine::echo("coreml", schema())
}

fn prepared(e: &dyn InferenceEngine) -> Box<dyn PreparedModel> {
    e.prepare(&fake_artifact("mlp"), PrepareOptions::default()).unwrap()
}

fn assert_failed_because(v: &GateVerdict, needle: &str) {
    assert_eq!(v.status, GateStatus::Failed, "{v:#?}");
    assert!(
        v.reasons.iter().any(|r| r.contains(needle)),
        "no reason mentions `{needle}`: {v:#?}"
    );
}

// ---------------------------------------------------------------- Gate A

/// An engine with a toy compiled-model cache: the first prepare of a key is
/// a miss, later ones are hits (or every one a miss, when `never_hit`).
struct CachingEngine {
    inner: FaultyEngine,
    seen: Mutex<HashSet<[u8; 32]>>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
    never_hit: bool,
}

impl CachingEngine {
    fn new(inner: FaultyEngine, never_hit: bool) -> CachingEngine {
        CachingEngine {
            inner,
            seen: Mutex::new(HashSet::new()),
            hits: Arc::default(),
            misses: Arc::default(),
            never_hit,
        }
    }
    fn stats(&self) -> impl Fn() -> (u64, u64) {
        let (h, m) = (self.hits.clone(), self.misses.clone());
        move || (h.load(Ordering::SeqCst), m.load(Ordering::SeqCst))
    }
}

impl InferenceEngine for CachingEngine {
    fn name(&self) -> &str {
        "cached"
    }
    fn prepare(&self, a: &ModelArtifact, o: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
        if self.seen.lock().unwrap().insert(a.sha256) || self.never_hit {
            self.misses.fetch_add(1, Ordering::SeqCst);
        } else {
            self.hits.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.prepare(a, o)
    }
    fn infer(&self, m: &dyn PreparedModel, i: &TensorMap, t: Duration) -> Result<TensorMap> {
        self.inner.infer(m, i, t)
    }
    fn capabilities(&self, m: &dyn PreparedModel) -> CapabilityReport {
        self.inner.capabilities(m)
    }
}

fn gate_a_cfg(probe: apple_silicon::breaker::MemoryProbe) -> GateAConfig {
    GateAConfig::default()
        .with_cycles(200)
        .with_warmup(10)
        .with_memory_budget(1 << 20)
        .with_memory_probe(probe)
}

#[test]
fn gate_a_passes_with_a_warm_cache_and_no_growth() {
    let faulty = echo();
    let probe = faulty.handle().memory_probe();
    let engine = CachingEngine::new(faulty, false);
    let stats = engine.stats();
    let v = gate_a(
        &engine,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        Some(&stats),
        &gate_a_cfg(probe),
    );
    assert!(v.passed(), "{v:#?}");
    assert_eq!(v.measurements["cache_hit_ratio"], 1.0);
    assert_eq!(v.measurements["memory_growth_bytes"], 0.0);
    assert_eq!(v.thresholds["cache_hit_ratio"], Threshold::AtLeast(0.9));
    assert_eq!(v.measurements["prepare_errors"], 0.0);
}

#[test]
fn gate_a_reports_every_cycle_to_its_observer() {
    let faulty = echo().with_memory_growth_per_prepare(1 << 10);
    let probe = faulty.handle().memory_probe();
    let engine = CachingEngine::new(faulty, false);
    let stats = engine.stats();
    let seen: Arc<Mutex<Vec<CycleSample>>> = Arc::default();
    let sink = seen.clone();
    let cfg = gate_a_cfg(probe)
        .with_cycles(20)
        .with_warmup(3)
        .with_observer(Arc::new(move |s: &CycleSample| sink.lock().unwrap().push(s.clone())));
    let v = gate_a(
        &engine,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        Some(&stats),
        &cfg,
    );
    assert!(v.passed(), "{v:#?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 23);
    assert_eq!(seen.iter().filter(|s| s.warmup).count(), 3);
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, s)| s.cycle == i + 1 && s.total == 23 && !s.failed));
    // The first prepare misses, every later one hits; memory grows 1 KiB a cycle.
    assert_eq!(seen[0].cache, Some((0, 1)));
    assert_eq!(seen[22].cache, Some((22, 1)));
    let growth = seen[22].memory_bytes.unwrap() - seen[0].memory_bytes.unwrap();
    assert_eq!(growth, 22 << 10);
}

#[test]
fn gate_a_fails_on_memory_growth() {
    let faulty = echo().with_memory_growth_per_prepare(64 << 10);
    let probe = faulty.handle().memory_probe();
    let engine = CachingEngine::new(faulty, false);
    let stats = engine.stats();
    let v = gate_a(
        &engine,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        Some(&stats),
        &gate_a_cfg(probe),
    );
    assert_failed_because(&v, "memory_growth_bytes");
    assert_eq!(v.measurements["memory_growth_bytes"], (200 * (64 << 10)) as f64);
}

#[test]
fn gate_a_fails_on_real_rss_growth() {
    // 1 MiB kept per prepare, 100 cycles, against a 16 MiB budget: RSS
    // noise from concurrent tests is far smaller than the 100 MiB growth.
    let faulty = echo().with_memory_growth_per_prepare(1 << 20);
    let handle = faulty.handle();
    let cfg = GateAConfig::default()
        .with_cycles(100)
        .with_warmup(2)
        .with_memory_budget(16 << 20);
    let v = gate_a(&faulty, &fake_artifact("mlp"), &PrepareOptions::default(), None, &cfg);
    handle.free_memory();
    assert_failed_because(&v, "memory_growth_bytes");
    assert!(
        v.notes.iter().any(|n| n.contains("cache hit ratio was not judged")),
        "{v:#?}"
    );
}

#[test]
fn gate_a_fails_on_a_cold_cache() {
    let faulty = echo();
    let probe = faulty.handle().memory_probe();
    let engine = CachingEngine::new(faulty, true);
    let stats = engine.stats();
    let v = gate_a(
        &engine,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        Some(&stats),
        &gate_a_cfg(probe),
    );
    assert_failed_because(&v, "cache_hit_ratio >= 0.9000, got 0");
}

#[test]
fn gate_a_fails_when_prepare_fails() {
    let faulty = echo().with_prepare_error(ErrorKind::Compile);
    let probe = faulty.handle().memory_probe();
    let v = gate_a(
        &faulty,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        None,
        &gate_a_cfg(probe),
    );
    assert_failed_because(&v, "prepare_errors");
    assert!(v.notes.iter().any(|n| n.contains("compile failed")), "{v:#?}");
}

// ---------------------------------------------------------------- Gate B

fn gate_b_cfg() -> GateBConfig<'static> {
    GateBConfig::default()
        .with_iterations(50)
        .with_sla(Duration::from_millis(250))
        .with_tiny_timeout(Duration::from_nanos(1), Duration::from_millis(300))
}

#[test]
fn gate_b_passes_on_a_correct_engine_and_a_guarded_hang() {
    let engine = echo();
    let model = prepared(&engine);
    let reference = expected(5);
    let hanging = echo().with_hangs(Pattern::Always);
    let hangs = hanging.handle();
    let guarded = GuardedEngine::new(Box::new(hanging));
    let hang_model = prepared(&guarded);
    let cfg =
        gate_b_cfg()
            .with_reference(&reference)
            .with_hang_probe(&guarded, &*hang_model, Duration::from_millis(100));
    let v = gate_b(&engine, &*model, &input(5), &cfg);
    hangs.release_hangs();
    assert!(v.passed(), "{v:#?}");
    for key in [
        "schema_errors",
        "parity_max_abs",
        "p99_ms",
        "tiny_timeout_return_ms",
        "hang_timeout_return_ms",
    ] {
        assert!(v.measurements.contains_key(key), "{key} missing: {v:#?}");
    }
    assert_eq!(v.measurements["parity_max_abs"], 0.0);
}

#[test]
fn gate_b_fails_on_wrong_output_schema() {
    for (fault, needle) in [
        (OutputFault::Flatten, "expected shape [1, 4], got [4]"),
        (OutputFault::Dtype(DType::F64), "expected dtype f32, got f64"),
        (OutputFault::Drop("y".into()), "got no such output"),
    ] {
        let engine = echo().with_output_fault(fault, Pattern::Always);
        let model = prepared(&engine);
        let v = gate_b(&engine, &*model, &input(1), &gate_b_cfg());
        assert_failed_because(&v, needle);
    }
}

#[test]
fn gate_b_fails_on_parity() {
    let engine = echo().with_output_fault(OutputFault::Offset(0.05), Pattern::Always);
    let model = prepared(&engine);
    let reference = expected(2);
    let v = gate_b(&engine, &*model, &input(2), &gate_b_cfg().with_reference(&reference));
    assert_failed_because(&v, "parity: L∞");
    assert!((v.measurements["parity_max_abs"] - 0.05).abs() < 1e-6, "{v:#?}");

    // A caller-supplied comparison (how the parity module plugs in).
    let strict = |_: &TensorMap, _: &TensorMap| ParityOutcome {
        passed: false,
        max_abs: 1.0,
        rmse: 1.0,
        detail: "custom comparison says no".into(),
    };
    let clean = echo();
    let m = prepared(&clean);
    let v = gate_b(
        &clean,
        &*m,
        &input(2),
        &gate_b_cfg().with_reference(&reference).with_parity(&strict),
    );
    assert_failed_because(&v, "custom comparison says no");
}

#[test]
fn gate_b_fails_when_the_timeout_is_not_enforced() {
    // Adds 5 ms and enforces no deadline at all.
    let engine = echo().with_latency(Duration::from_millis(5)).ignoring_timeout();
    let model = prepared(&engine);
    let v = gate_b(&engine, &*model, &input(1), &gate_b_cfg().with_iterations(5));
    assert_failed_because(&v, "the timeout is not enforced");
    // The same engine honouring its timeout passes that check.
    let engine = echo().with_latency(Duration::from_millis(5)).honouring_timeout(true);
    let model = prepared(&engine);
    let v = gate_b(&engine, &*model, &input(1), &gate_b_cfg().with_iterations(5));
    assert!(v.passed(), "{v:#?}");
}

#[test]
fn gate_b_fails_when_a_hang_is_not_bounded() {
    // An unguarded engine that hangs for 1.5 s: the hang probe must notice.
    let hanging = echo()
        .with_hangs(Pattern::Always)
        .with_hang_duration(Duration::from_millis(1500));
    let engine = echo();
    let model = prepared(&engine);
    let hang_model = prepared(&hanging);
    let cfg = gate_b_cfg()
        .with_iterations(5)
        .with_hang_probe(&hanging, &*hang_model, Duration::from_millis(50));
    let v = gate_b(&engine, &*model, &input(1), &cfg);
    assert_failed_because(&v, "hang_timeout_return_ms");
}

#[test]
fn gate_b_fails_on_p99_over_the_sla() {
    let engine = echo()
        .with_latency_spikes(Pattern::Every(5), Duration::from_millis(40))
        .honouring_timeout(true);
    let model = prepared(&engine);
    let v = gate_b(
        &engine,
        &*model,
        &input(1),
        &gate_b_cfg().with_sla(Duration::from_millis(20)),
    );
    assert_failed_because(&v, "p99_ms");
}

// ---------------------------------------------------------------- Gate C

fn gate_c_cfg() -> GateCConfig {
    GateCConfig::default().with_iterations(30).with_warmup(2)
}

#[test]
fn gate_c_is_not_applicable_without_the_primary() {
    let primary = echo().unavailable("Core ML does not exist on Linux");
    let cpu = FaultyEngine::echo("candle", schema());
    let v = gate_c(
        &primary,
        &cpu,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        &input(1),
        &gate_c_cfg(),
    );
    assert!(v.is_not_applicable(), "{v:#?}");
    assert!(!v.passed());
    match &v.status {
        GateStatus::NotApplicable { reason } => assert!(reason.contains("Core ML does not exist on Linux"), "{reason}"),
        s => panic!("{s:?}"),
    }
}

#[test]
fn gate_c_passes_when_the_primary_is_much_faster() {
    let primary = echo().with_latency(Duration::from_millis(2));
    let cpu = FaultyEngine::echo("candle", schema()).with_latency(Duration::from_millis(25));
    let v = gate_c(
        &primary,
        &cpu,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        &input(1),
        &gate_c_cfg(),
    );
    assert!(v.passed(), "{v:#?}");
    assert!(v.measurements["speedup_pct"] >= 30.0, "{v:#?}");
}

#[test]
fn gate_c_fails_when_the_primary_is_slower() {
    let primary = echo().with_latency(Duration::from_millis(25));
    let cpu = FaultyEngine::echo("candle", schema()).with_latency(Duration::from_millis(2));
    let v = gate_c(
        &primary,
        &cpu,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        &input(1),
        &gate_c_cfg(),
    );
    assert_failed_because(&v, "p99_ratio <= 0.7000");
}

#[test]
fn gate_c_fails_when_the_primary_cannot_prepare_for_another_reason() {
    let primary = echo().with_prepare_error(ErrorKind::Compile);
    let cpu = FaultyEngine::echo("candle", schema());
    let v = gate_c(
        &primary,
        &cpu,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        &input(1),
        &gate_c_cfg(),
    );
    assert_failed_because(&v, "could not prepare the model");
}

// ---------------------------------------------------------------- Gate D

fn gate_d_cfg(probe: apple_silicon::breaker::MemoryProbe) -> GateDConfig {
    GateDConfig::default()
        .with_duration(Duration::from_millis(1400), Duration::from_millis(200))
        .with_warmup_intervals(1)
        .with_max_throughput_cv(0.5)
        // Wide enough for 1 ms sleeps on a loaded 2-core machine; the spike test uses 100 ms.
        .with_max_p99_spike(20.0)
        .with_memory_probe(probe)
}

#[test]
fn gate_d_passes_on_a_steady_engine() {
    let engine = echo().with_latency(Duration::from_millis(1));
    let model = prepared(&engine);
    let v = gate_d(&engine, &*model, &input(1), &gate_d_cfg(engine.handle().memory_probe()));
    assert!(v.passed(), "{v:#?}");
    assert!(v.measurements["intervals"] >= 3.0);
    assert_eq!(v.measurements["memory_slope_bytes_per_100_calls"], 0.0);
}

#[test]
fn gate_d_reports_every_interval_with_its_latency_percentiles() {
    let engine = echo().with_latency(Duration::from_millis(2));
    let model = prepared(&engine);
    let seen: Arc<Mutex<Vec<SoakSample>>> = Arc::default();
    let sink = seen.clone();
    let cfg = gate_d_cfg(engine.handle().memory_probe())
        .with_observer(Arc::new(move |s: &SoakSample| sink.lock().unwrap().push(s.clone())));
    let v = gate_d(&engine, &*model, &input(1), &cfg);
    assert!(v.passed(), "{v:#?}");
    let seen = seen.lock().unwrap();
    // One sample per interval; the first is warm-up; the verdict counts the rest.
    assert!(seen.len() >= 4, "{seen:#?}");
    assert!(seen[0].warmup && seen[1..].iter().all(|s| !s.warmup));
    assert_eq!(v.measurements["intervals"], (seen.len() - 1) as f64);
    // A last, partial interval is counted in the verdict but not sampled.
    assert!(seen.last().unwrap().calls as f64 <= v.measurements["calls"]);
    for w in seen.windows(2) {
        assert!(w[1].calls > w[0].calls && w[1].elapsed_s > w[0].elapsed_s);
    }
    for s in seen.iter() {
        // Every call sleeps 2 ms, so no percentile can be below it, and they are ordered.
        assert!(s.p50_ms >= 2.0 && s.p50_ms <= s.p95_ms && s.p95_ms <= s.p99_ms, "{s:?}");
        assert!(s.throughput_per_s > 0.0 && s.throughput_per_s <= 500.0, "{s:?}");
        assert_eq!(s.errors, 0);
        assert!(s.memory_bytes.is_some());
    }
}

#[test]
fn gate_d_fails_on_a_memory_trend() {
    let engine = echo()
        .with_latency(Duration::from_millis(1))
        .with_memory_growth_per_call(4 << 10);
    let h = engine.handle();
    let model = prepared(&engine);
    let v = gate_d(&engine, &*model, &input(1), &gate_d_cfg(h.memory_probe()));
    h.free_memory();
    assert_failed_because(&v, "memory_slope_bytes_per_100_calls");
    // 4 KiB per call is 400 KiB per 100 calls.
    let slope = v.measurements["memory_slope_bytes_per_100_calls"];
    assert!((slope - 409_600.0).abs() < 1.0, "{slope}");
}

#[test]
fn gate_d_fails_on_unsteady_throughput() {
    // Steady for 0.6 s, then ten times slower: a throttling device.
    let engine = echo()
        .with_latency(Duration::from_millis(1))
        .with_slowdown_after(Duration::from_millis(600), Duration::from_millis(15));
    let model = prepared(&engine);
    let v = gate_d(&engine, &*model, &input(1), &gate_d_cfg(engine.handle().memory_probe()));
    assert_failed_because(&v, "throughput_cv");
}

#[test]
fn gate_d_fails_on_a_p99_spike_in_one_interval() {
    // Steady at 1 ms, but calls 300..303 (past the 200 ms warm-up) take 100 ms more: a
    // burst that lands in one or two of the five measured intervals, so the median is clean.
    let engine = echo()
        .with_latency(Duration::from_millis(1))
        .with_latency_spikes(Pattern::Range(300, 303), Duration::from_millis(100));
    let model = prepared(&engine);
    // A tighter bound than the steady test's 20×: under load the 1 ms sleeps' interval p99 reached
    // 6 ms (a 16.6× spike ratio, which passed 20×); 5× still leaves the clean intervals a 20 ms p99.
    let cfg = gate_d_cfg(engine.handle().memory_probe())
        .with_max_throughput_cv(10.0)
        .with_max_p99_spike(5.0);
    let v = gate_d(&engine, &*model, &input(1), &cfg);
    assert_failed_because(&v, "p99_spike_ratio");
    assert!(v.measurements["p99_worst_interval_ms"] >= 100.0, "{v:#?}");
    assert!(v.measurements["p99_median_interval_ms"] < 50.0, "{v:#?}");
}

#[test]
fn gate_d_fails_on_errors_and_on_too_short_a_soak() {
    let engine = echo().with_errors(ErrorKind::Timeout, Pattern::Every(50));
    let model = prepared(&engine);
    let probe = engine.handle().memory_probe();
    let v = gate_d(&engine, &*model, &input(1), &gate_d_cfg(probe.clone()));
    assert_failed_because(&v, "errors <= 0");
    let short = gate_d_cfg(probe).with_duration(Duration::from_millis(100), Duration::from_millis(50));
    let v = gate_d(&engine, &*model, &input(1), &short);
    assert_failed_because(&v, "expected at least 3 measured intervals");
}

// ---------------------------------------------------------------- rendering

#[test]
fn verdicts_render_as_a_table_and_round_trip_as_json() {
    let primary = echo().unavailable("Core ML does not exist on Linux");
    let cpu = FaultyEngine::echo("candle", schema());
    let na = gate_c(
        &primary,
        &cpu,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        &input(1),
        &gate_c_cfg(),
    );
    let slow = echo().with_latency(Duration::from_millis(25));
    let failed = gate_c(
        &slow,
        &cpu,
        &fake_artifact("mlp"),
        &PrepareOptions::default(),
        &input(1),
        &gate_c_cfg(),
    );
    let engine = echo();
    let model = prepared(&engine);
    let passed = gate_b(&engine, &*model, &input(1), &gate_b_cfg().with_iterations(5));
    let verdicts = [passed, failed, na];
    let table = render_table(&verdicts);
    assert!(table.starts_with("gate "), "{table}");
    for needle in [
        "PASS",
        "FAIL",
        "N/A",
        "p99_ratio",
        "<= 0.7000",
        "not applicable: coreml is unavailable",
        "why: the primary must be faster",
    ] {
        assert!(table.contains(needle), "`{needle}` missing from:\n{table}");
    }
    let json = serde_json::to_string(&verdicts).unwrap();
    let back: Vec<GateVerdict> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(back[2].status, verdicts[2].status);
    assert_eq!(back[1].reasons, verdicts[1].reasons);
    assert_eq!(back[0].thresholds, verdicts[0].thresholds);
}
