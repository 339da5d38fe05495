//! Gate A: N prepare (compile + load) cycles — no errors, bounded memory growth and prepare p99, cache hits.

use super::*;

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
