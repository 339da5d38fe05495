//! Timeouts under load: `--threads` callers (default 8) run inferences back
//! to back for `--secs` seconds per engine (default 20), each call with a
//! timeout drawn uniformly from 1–50 ms (seeded), on the Candle engine and
//! on the Resilient engine (Core ML primary, Candle fallback; on Linux every
//! call is served by the fallback). Prints, per engine: calls answered in
//! time, timed out, shed (`Unavailable`: the runner refused work because too
//! many timed-out calls were still running), the largest stuck-worker count
//! a refusal reported, and how late timed-out calls returned past their
//! deadline (p50 / p99 / max).
//!
//! `cargo run --release --example deadline_load -- [--model mobilenet_v2_fp32] [--secs 20] [--threads 8]`
//! (`make load`). Needs the downloaded models (`make download-models`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apple_silicon::golden;
use apple_silicon::{
    CandleEngine, CoreMlEngine, ErrorKind, InferenceEngine, ModelArtifact, PrepareOptions, ResilientEngine,
};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[derive(Default)]
struct Tally {
    ok: usize,
    timeout: usize,
    shed: usize,
    other: usize,
    /// How late each call returned past its deadline (0 if in time), µs.
    late_us: Vec<u64>,
}

/// Nearest-rank percentile of microsecond samples, in ms (0 for none).
fn pct(v: &[u64], q: f64) -> f64 {
    let mut d: Vec<Duration> = v.iter().map(|&us| Duration::from_micros(us)).collect();
    apple_silicon::gates::percentile(&mut d, q).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn stuck_in(msg: &str) -> Option<usize> {
    // "… N workers are still running calls that timed out (limit M) …"
    msg.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "workers")
        .and_then(|w| w[0].parse().ok())
}

fn load(name: &str, engine: Arc<dyn InferenceEngine>, model_id: &str, secs: u64, threads: usize) {
    let gm = golden::downloaded(model_id).expect("the model (make download-models)");
    let artifact = ModelArtifact::open(gm.package_path()).expect("artifact");
    let model: Arc<dyn apple_silicon::PreparedModel> =
        Arc::from(engine.prepare(&artifact, PrepareOptions::default()).expect("prepare"));
    let inputs = gm.inputs().expect("inputs");
    // One warm call, unbounded, and its latency for the record.
    let t = Instant::now();
    engine
        .infer(&*model, &inputs, Duration::from_secs(60))
        .expect("warm call");
    let one_call = t.elapsed();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let max_stuck = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for th in 0..threads {
            let (engine, model, inputs, tally, max_stuck) = (
                engine.clone(),
                model.clone(),
                inputs.clone(),
                tally.clone(),
                max_stuck.clone(),
            );
            s.spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ th as u64;
                while Instant::now() < end {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let timeout = Duration::from_millis(1 + (seed >> 33) % 50);
                    let t0 = Instant::now();
                    let r = engine.infer(&*model, &inputs, timeout);
                    let took = t0.elapsed();
                    let late = took.saturating_sub(timeout).as_micros() as u64;
                    let mut t = tally.lock().unwrap();
                    match r {
                        Ok(_) => t.ok += 1,
                        Err(e) if e.kind() == ErrorKind::Timeout => {
                            t.timeout += 1;
                            t.late_us.push(late);
                        }
                        Err(e) if e.kind() == ErrorKind::Unavailable => {
                            t.shed += 1;
                            if let Some(n) = stuck_in(&e.to_string()) {
                                max_stuck.fetch_max(n, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            t.other += 1;
                            if t.other <= 3 {
                                eprintln!("{name}: {e}");
                            }
                        }
                    }
                }
            });
        }
    });
    let t = tally.lock().unwrap();
    let total = t.ok + t.timeout + t.shed + t.other;
    println!(
        "| {name} | {model_id} ({:.1} ms/call alone) | {threads} | {total} | {} | {} | {} ({:.1}%) | {} | {:.1} / {:.1} / {:.1} |",
        one_call.as_secs_f64() * 1e3,
        t.ok,
        t.timeout,
        t.shed,
        100.0 * t.shed as f64 / total.max(1) as f64,
        max_stuck.load(Ordering::Relaxed),
        pct(&t.late_us, 0.5),
        pct(&t.late_us, 0.99),
        pct(&t.late_us, 1.0),
    );
}

fn main() {
    let model = arg("--model", "mobilenet_v2_fp32");
    let secs: u64 = arg("--secs", "20").parse().expect("--secs N");
    let threads: usize = arg("--threads", "8").parse().expect("--threads N");
    println!("| engine | model | threads | calls | in time | timed out | shed (Unavailable) | most stuck workers reported | timed-out calls' overshoot p50 / p99 / max (ms) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    load("candle", Arc::new(CandleEngine::new()), &model, secs, threads);
    let resilient = ResilientEngine::new(Box::new(CoreMlEngine::new()), Box::new(CandleEngine::new()));
    load("resilient", Arc::new(resilient), &model, secs, threads);
}
