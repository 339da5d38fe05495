//! `apple-silicon bench`: how fast a model prepares and runs here — cold and
//! warm prepare, latency percentiles per stage, throughput and peak RSS.
//!
//! Cold prepare builds through an empty compiled-model cache in a private
//! temporary directory; warm prepare is a second engine on that same cache,
//! which is what a restarted process sees. Calls run one after another on
//! one caller thread, so throughput is 1 / mean latency, not a concurrency
//! figure.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::mil::FloatPolicy;
use apple_silicon::telemetry::{process_stats, StageTimings};
use apple_silicon::{CandleEngine, Error, InferenceEngine, PrepareOptions, Result};
use serde::Serialize;

use crate::{inputs_for, open_model, Policy};

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// An .mlpackage, a BERT safetensors directory, or a model directory
    /// (whose golden inputs are used when no --input is given).
    model: PathBuf,
    /// An input as NAME=FILE.npy (repeatable).
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Measured calls.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Calls before measuring (not counted).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// How fp16 programs are computed.
    #[arg(long, value_enum, default_value_t = Policy::Upcast)]
    policy: Policy,
    /// Timeout of each call in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// Print JSON instead of a table (no progress bar).
    #[arg(long)]
    json: bool,
}

/// Percentiles of one stage, in milliseconds.
#[derive(Debug, Serialize)]
struct Percentiles {
    n: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` for no samples.
    fn of(mut v: Vec<Duration>) -> Option<Percentiles> {
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mut at = |q: f64| apple_silicon::gates::percentile(&mut v, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        Some(Percentiles {
            n,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

#[derive(Debug, Serialize)]
struct Report {
    model: PathBuf,
    engine: String,
    policy: FloatPolicy,
    cold_prepare_ms: f64,
    warm_prepare_ms: f64,
    warm_prepare_notes: Vec<String>,
    iterations: usize,
    warmup: usize,
    /// Per stage the engine measured: marshal_in, predict, marshal_out,
    /// framework (see [`framework_overhead`]), total.
    stages: Vec<(String, Percentiles)>,
    throughput_per_s: f64,
    rss_before_bytes: Option<u64>,
    peak_rss_bytes: Option<u64>,
}

/// A private cache directory, removed when dropped.
struct TempCache(PathBuf);

impl Drop for TempCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn progress(done: usize, total: usize) {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    eprint!(
        "\r[{}{}] {done}/{total}",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled)
    );
    let _ = std::io::stderr().flush();
}

/// Runs the benchmark and prints its report.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.iterations == 0 {
        return Err(Error::schema_mismatch("--iterations", "at least 1", "0"));
    }
    let (artifact, golden) = open_model(&args.model)?;
    let inputs = inputs_for(&args.model, &golden, &args.inputs)?;
    let policy: FloatPolicy = args.policy.into();
    let timeout = Duration::from_millis(args.timeout_ms);
    let rss_before = process_stats().rss_bytes;

    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = TempCache(std::env::temp_dir().join(format!(
        "apple-silicon-bench-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )));
    let cache = || -> Result<Arc<ModelCache>> { Ok(Arc::new(ModelCache::open(CacheConfig::at(&dir.0), host_meta())?)) };
    let prepare = |engine: &CandleEngine| -> Result<(Box<dyn apple_silicon::PreparedModel>, Duration)> {
        let t = Instant::now();
        let m = engine.prepare(&artifact, PrepareOptions::default())?;
        Ok((m, t.elapsed()))
    };
    let cold = CandleEngine::new().with_float_policy(policy).with_cache(cache()?);
    let (_, cold_t) = prepare(&cold)?;
    drop(cold);
    let engine = CandleEngine::new().with_float_policy(policy).with_cache(cache()?);
    let (model, warm_t) = prepare(&engine)?;
    let caps = engine.capabilities(model.as_ref());

    let show = !args.json && std::io::stderr().is_terminal();
    let total = args.warmup + args.iterations;
    let mut timings: Vec<StageTimings> = Vec::with_capacity(args.iterations);
    let mut busy = Duration::ZERO;
    for i in 0..total {
        let t = Instant::now();
        let (_, mut st) = engine.infer_timed(model.as_ref(), &inputs, timeout)?;
        let took = t.elapsed();
        st.total.get_or_insert(took);
        if i >= args.warmup {
            busy += took;
            timings.push(st);
        }
        if show {
            progress(i + 1, total);
        }
    }
    if show {
        eprintln!();
    }
    type Pick = fn(&StageTimings) -> Option<Duration>;
    let picks: [(&str, Pick); 5] = [
        ("marshal_in", |s| s.marshal_in),
        ("predict", |s| s.predict),
        ("marshal_out", |s| s.marshal_out),
        ("framework", framework_overhead),
        ("total", |s| s.total),
    ];
    let stages = picks
        .iter()
        .filter_map(|(name, pick)| {
            Percentiles::of(timings.iter().filter_map(pick).collect()).map(|p| (name.to_string(), p))
        })
        .collect();
    let report = Report {
        model: artifact.path.clone(),
        engine: caps.engine.clone(),
        policy,
        cold_prepare_ms: cold_t.as_secs_f64() * 1e3,
        warm_prepare_ms: warm_t.as_secs_f64() * 1e3,
        warm_prepare_notes: caps.notes.clone(),
        iterations: args.iterations,
        warmup: args.warmup,
        stages,
        throughput_per_s: args.iterations as f64 / busy.as_secs_f64().max(1e-9),
        rss_before_bytes: rss_before,
        peak_rss_bytes: process_stats().high_water_bytes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serialisable"));
    } else {
        print_table(&report, &args.model);
    }
    Ok(())
}

/// What a call cost beyond the engine's own stages: `total` minus
/// marshal_in, predict and marshal_out — validation, copies and the hops to
/// the deadline worker and the interpreter's pool. `None` unless all four are
/// known (a BERT encoder reports only `predict`).
fn framework_overhead(s: &StageTimings) -> Option<Duration> {
    let inside = s.marshal_in? + s.predict? + s.marshal_out?;
    Some(s.total?.saturating_sub(inside))
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
}

fn print_table(r: &Report, shown: &Path) {
    println!("model      {} ({} engine, {:?})", shown.display(), r.engine, r.policy);
    println!(
        "prepare    cold {:.1} ms, warm {:.1} ms ({:.1}x)",
        r.cold_prepare_ms,
        r.warm_prepare_ms,
        r.cold_prepare_ms / r.warm_prepare_ms.max(1e-9)
    );
    for n in &r.warm_prepare_notes {
        println!("note       {n}");
    }
    println!(
        "calls      {} measured after {} warm-up, one caller",
        r.iterations, r.warmup
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10}",
        "stage", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for (name, p) in &r.stages {
        println!(
            "{name:<12} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
        );
    }
    println!("throughput {:.1} calls/s", r.throughput_per_s);
    println!(
        "memory     RSS before {}, peak {}",
        mib(r.rss_before_bytes),
        mib(r.peak_rss_bytes)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        let p = Percentiles::of(ms(&[5, 1, 4, 2, 3, 6, 7, 8, 9, 10])).unwrap();
        assert_eq!(
            (p.n, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (10, 5.0, 10.0, 10.0, 10.0)
        );
        let p = Percentiles::of(ms(&[7])).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms), (7.0, 7.0));
        assert!(Percentiles::of(Vec::new()).is_none());
    }

    #[test]
    fn framework_overhead_is_total_minus_the_engine_stages() {
        let ms = Duration::from_millis;
        let full = StageTimings {
            marshal_in: Some(ms(1)),
            predict: Some(ms(20)),
            marshal_out: Some(ms(2)),
            total: Some(ms(25)),
            queue_wait: None,
        };
        assert_eq!(framework_overhead(&full), Some(ms(2)));
        // A clock that saw the parts sum past the whole is not negative overhead.
        let skewed = StageTimings {
            total: Some(ms(22)),
            ..full
        };
        assert_eq!(framework_overhead(&skewed), Some(Duration::ZERO));
        assert_eq!(framework_overhead(&StageTimings::total(ms(5))), None);
    }
}
