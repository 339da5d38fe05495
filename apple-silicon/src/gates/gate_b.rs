//! Gate B: output schema, timeout enforcement, p99 under the SLA, and parity with a reference
//! ([`linf_rmse`] and its thresholds by default).

use super::*;

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
