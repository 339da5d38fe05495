//! Smoke test: every available model through the engine chain, printing per
//! model which engine served, precision, compute units, parity against the
//! golden outputs, and p50/p95/p99 latency.
//!
//! ```text
//! cargo run --release --example core_ml_smoke_test [-- --iterations N] [--fixtures-only]
//! ```
//!
//! Under the table, each model's stages (marshal in, predict, marshal out,
//! total) as the serving engine's telemetry recorded them; the telemetry
//! snapshots themselves (JSON, both engines of the chain) go to
//! `target/smoke_telemetry.json`.
//!
//! Exits non-zero if any model fails to run or misses its parity budget.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use apple_silicon::core_ml_backend::CoreMlEngine;
use apple_silicon::golden::{self, GoldenModel};
use apple_silicon::parity::{compare, Thresholds};
use apple_silicon::telemetry::{Stage, TelemetrySnapshot};
use apple_silicon::{CandleEngine, InferenceEngine, ModelArtifact, PrepareOptions, ResilientEngine};

struct Row {
    why: Vec<String>,
    id: String,
    engine: String,
    precision: String,
    units: String,
    parity: String,
    passed: bool,
    prepare_ms: f64,
    p: [f64; 3],
    /// Telemetry of the engine that served, then the other one.
    served: TelemetrySnapshot,
    other: TelemetrySnapshot,
}

fn smoke(engine: &ResilientEngine, m: &GoldenModel, iterations: usize) -> apple_silicon::Result<Row> {
    let artifact = ModelArtifact::open(m.package_path())?;
    let t0 = Instant::now();
    let model = engine.prepare(&artifact, PrepareOptions::default())?;
    let prepare_ms = t0.elapsed().as_secs_f64() * 1e3;
    let inputs = m.inputs()?;
    let timeout = Duration::from_secs(60);
    let out = engine.infer(model.as_ref(), &inputs, timeout)?;
    let budget = Thresholds {
        l_inf: m.manifest.accuracy_delta_l_inf,
        rmse: m.manifest.accuracy_delta_rmse,
    };
    let report = compare(&out, &m.expected()?, budget)?;
    let mut lat = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        engine.infer(model.as_ref(), &inputs, timeout)?;
        lat.push(t.elapsed());
    }
    let caps = engine.capabilities(model.as_ref());
    let (primary, fallback) = engine.snapshots(model.as_ref())?;
    let (served, other) = if caps.engine == fallback.engine {
        (fallback, primary)
    } else {
        (primary, fallback)
    };
    let worst = report.worst().expect("at least one output");
    Ok(Row {
        why: caps.notes.clone(),
        id: m.id.clone(),
        engine: caps.engine,
        precision: caps.compute_precision,
        units: format!(
            "{}→{}",
            caps.compute_units_requested,
            caps.compute_units_actual.map_or("?".into(), |u| u.to_string())
        ),
        parity: format!("L∞ {:.1e} ≤ {:.0e}", worst.l_inf, budget.l_inf),
        passed: report.passed,
        prepare_ms,
        p: [0.50, 0.95, 0.99]
            .map(|q| apple_silicon::gates::percentile(&mut lat, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)),
        served,
        other,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let iterations = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30usize);
    let fixtures_only = args.iter().any(|a| a == "--fixtures-only");
    let mut models = golden::discover(&golden::fixtures_dir()).expect("fixtures");
    if !fixtures_only {
        let downloaded = golden::discover(&golden::models_dir()).expect("models dir");
        if downloaded.is_empty() {
            eprintln!(
                "no downloaded models in {}: run `make download-models`",
                golden::models_dir().display()
            );
            return ExitCode::FAILURE;
        }
        models.extend(downloaded);
        // The real-model battery (make zoo, scripts/zoo/README.md), if built.
        models.extend(golden::discover(&golden::models_dir().join("zoo")).expect("models/zoo"));
    }
    // The engine chain: Core ML first, Candle on the same package as fallback.
    let engine = ResilientEngine::new(Box::new(CoreMlEngine::new()), Box::new(CandleEngine::new()));
    let mut reason_shown = false;
    println!(
        "{:<20} {:<7} {:<44} {:<16} {:<22} {:>9} {:>8} {:>8} {:>8}",
        "model", "engine", "precision", "units", "parity vs golden", "prepare", "p50 ms", "p95 ms", "p99 ms"
    );
    let mut failures = 0;
    let mut stage_lines = Vec::new();
    let mut snapshots = Vec::new();
    for m in &models {
        match smoke(&engine, m, iterations) {
            Ok(r) => {
                let stages: Vec<String> = Stage::ALL
                    .iter()
                    .filter_map(|s| {
                        r.served.latency.get(s).map(|l| {
                            let ms = |us: u64| us as f64 / 1e3;
                            format!("{s:?} {:.2}/{:.2}/{:.2}", ms(l.p50_us), ms(l.p95_us), ms(l.p99_us))
                        })
                    })
                    .collect();
                stage_lines.push(format!("{:<20} {}", r.id, stages.join("  ")));
                snapshots.push(serde_json::json!({ "model": r.id, "served": r.served, "other": r.other }));
                if !reason_shown {
                    if let Some(why) = r.why.iter().find(|n| n.contains("Core ML") || n.contains("coreml")) {
                        println!("(engine chain: {why})");
                        reason_shown = true;
                    }
                }
                if !r.passed {
                    failures += 1;
                }
                println!(
                    "{:<20} {:<7} {:<44} {:<16} {:<22} {:>7.1}ms {:>8.2} {:>8.2} {:>8.2}{}",
                    r.id,
                    r.engine,
                    r.precision,
                    r.units,
                    r.parity,
                    r.prepare_ms,
                    r.p[0],
                    r.p[1],
                    r.p[2],
                    if r.passed { "" } else { "  PARITY FAIL" }
                );
            }
            Err(e) => {
                failures += 1;
                println!("{:<20} FAILED: {e}", m.id);
            }
        }
    }
    println!("\nstages of the serving engine, p50/p95/p99 ms (telemetry; the first, unmeasured call included):");
    for l in &stage_lines {
        println!("{l}");
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/smoke_telemetry.json");
    match std::fs::write(&out, serde_json::to_string_pretty(&snapshots).unwrap_or_default()) {
        Ok(()) => println!("telemetry snapshots: {}", out.display()),
        Err(e) => println!("telemetry snapshots not written to {}: {e}", out.display()),
    }
    println!(
        "{} models, {} iterations each, {} failures",
        models.len(),
        iterations,
        failures
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
