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

mod gate_a;
mod gate_b;
mod gate_c;
mod gate_d;

pub use gate_a::*;
pub use gate_b::*;
pub use gate_c::*;
pub use gate_d::*;

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
mod tests;
