//! How much does recording telemetry cost? Prints nanoseconds per record
//! (the median of several runs) for the hot-path calls, single-threaded and
//! with several threads recording into the same model at once.
//!
//! ```text
//! cargo run --release --example telemetry_bench
//! ```
//!
//! The target is "well under a microsecond" per record.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apple_silicon::telemetry::{ModelTelemetry, Op, Stage, StageTimings};

const RECORDS: u64 = 1_000_000;
const RUNS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median over `RUNS` of the ns per record when `threads` threads each make
/// `RECORDS / threads` calls of `record`.
fn bench(threads: usize, record: impl Fn(&ModelTelemetry, u64) + Sync) -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let t = Arc::new(ModelTelemetry::new("bench", "engine"));
            let per_thread = RECORDS / threads as u64;
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for k in 0..threads {
                    let (t, record) = (&t, &record);
                    s.spawn(move || {
                        for i in 0..per_thread {
                            record(t, black_box(i + k as u64));
                        }
                    });
                }
            });
            // Wall time over all records: with N threads this is the
            // throughput cost; per-thread latency is up to N times higher.
            t0.elapsed().as_nanos() as f64 / (per_thread * threads as u64) as f64
        })
        .collect();
    median(runs)
}

fn main() {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("telemetry record cost, median of {RUNS} runs of {RECORDS} records ({cores} cores)");
    println!("{:<52} {:>12}", "operation", "ns/record");

    let latency = |t: &ModelTelemetry, i: u64| t.record_latency(Stage::Predict, Duration::from_micros(100 + i % 5000));
    let inference = |t: &ModelTelemetry, i: u64| {
        let d = Duration::from_micros(100 + i % 5000);
        t.record_inference(
            &StageTimings {
                marshal_in: Some(d / 10),
                predict: Some(d),
                marshal_out: Some(d / 10),
                total: Some(d + d / 5),
                queue_wait: None,
            },
            if i.is_multiple_of(100) {
                Err(apple_silicon::ErrorKind::Timeout)
            } else {
                Ok(())
            },
        )
    };
    let counter = |t: &ModelTelemetry, i: u64| {
        t.record_outcome(
            Op::Predict,
            if i.is_multiple_of(100) {
                Err(apple_silicon::ErrorKind::Internal)
            } else {
                Ok(())
            },
        )
    };

    let rows: [(&str, usize, f64); 6] = [
        ("record_outcome (counters), 1 thread", 1, bench(1, counter)),
        ("record_latency (one stage), 1 thread", 1, bench(1, latency)),
        (
            "record_inference (4 stages + outcome), 1 thread",
            1,
            bench(1, inference),
        ),
        ("record_latency, 2 threads", 2, bench(2, latency)),
        ("record_latency, 4 threads", 4, bench(4, latency)),
        ("record_inference, 4 threads", 4, bench(4, inference)),
    ];
    for (name, _, ns) in rows {
        println!("{name:<52} {ns:>12.1}");
    }

    let t = ModelTelemetry::new("bench", "engine");
    for i in 0..100_000u64 {
        inference(&t, i);
    }
    let snaps: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t0 = Instant::now();
            black_box(t.snapshot());
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    println!("{:<52} {:>12.1}", "snapshot (µs, not ns)", median(snaps));
    println!("(rows with several threads: wall time over all records, i.e. the cost per record at full load)");
}
