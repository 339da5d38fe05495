//! Gate C: the primary (Core ML) at least 30% faster than the CPU engine at p99.

use super::*;

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

pub(super) fn timed_runs(
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
    pub(super) const NAME: &str = "primary faster than CPU";
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
