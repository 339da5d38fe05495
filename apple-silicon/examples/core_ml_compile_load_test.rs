//! Gate A as a leak test: `COREML_LEAK_TEST=N` compile+load cycles of one
//! model through the engine chain, each prepared model dropped at once,
//! reporting memory growth, its trend, the compiled-model cache hit ratio and
//! prepare p50/p99, then the Gate A verdict.
//!
//! ```text
//! COREML_LEAK_TEST=1000 cargo run --release --example core_ml_compile_load_test \
//!     [-- --model mobilenet_v2_fp32] [--warmup 100] [--engine chain|coreml|candle] \
//!     [--cache-dir DIR] [--csv FILE] [--json FILE]
//! ```
//!
//! `N` defaults to 1000 (the plan's Instruments protocol), warm-up to
//! min(100, N/5). Without `--cache-dir` the cache starts empty in a temporary
//! directory, so the first prepare compiles and the rest should hit. Progress
//! goes to stderr about twenty times per run; the verdict table to stdout.
//! Exits 1 if Gate A fails, 2 on bad arguments or a model that cannot be
//! opened.
//!
//! On macOS run it under Instruments (Leaks / Allocations) as
//! docs/CORE_ML_BRIDGE_GUIDE.md describes; on Linux `make leak-check` runs it
//! under valgrind.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use apple_silicon::gates::{self, CycleSample, GateAConfig};
use apple_silicon::{ModelArtifact, PrepareOptions};
use clap::Parser;
use common::{mib, EngineChoice};

/// Gate A: repeated compile+load of one model, checking memory and the cache.
#[derive(Parser)]
struct Args {
    /// A model id (downloaded or fixture) or a model directory.
    #[arg(long, default_value = "mobilenet_v2_fp32")]
    model: String,
    /// Warm-up cycles before measuring (default: min(100, N/5)).
    #[arg(long)]
    warmup: Option<usize>,
    /// Which engine serves the prepares.
    #[arg(long, value_enum, default_value_t = EngineChoice::Chain)]
    engine: EngineChoice,
    /// Compiled-model cache directory (default: a fresh temporary one).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Largest allowed memory growth over the measured cycles, MiB.
    #[arg(long, default_value_t = 10.0)]
    memory_budget_mib: f64,
    /// Write one CSV row per cycle here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the Gate A verdict as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `COREML_LEAK_TEST`, the plan's name for the cycle count.
fn cycles_from_env() -> Result<usize, String> {
    match std::env::var("COREML_LEAK_TEST") {
        Err(_) => Ok(1000),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "COREML_LEAK_TEST: expected a positive number of cycles, got `{v}`"
            )),
        },
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("core_ml_compile_load_test: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool, String> {
    let cycles = cycles_from_env()?;
    let warmup = args.warmup.unwrap_or((cycles / 5).min(100));
    let model = common::resolve_model(&args.model).map_err(|e| e.to_string())?;
    let artifact = ModelArtifact::open(model.package_path()).map_err(|e| e.to_string())?;
    let (cache, _tmp) = common::open_cache(args.cache_dir.as_ref()).map_err(|e| e.to_string())?;
    let engine = common::engine(args.engine, &cache);
    let mut csv = match &args.csv {
        Some(p) => {
            let mut f = std::fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            writeln!(f, "cycle,warmup,prepare_ms,failed,rss_bytes,cache_hits,cache_misses")
                .map_err(|e| e.to_string())?;
            Some(f)
        }
        None => None,
    };

    // One prepare first, to say who serves (on Linux: Candle, with Core ML's reason).
    let probe = engine
        .prepare(&artifact, PrepareOptions::default())
        .map_err(|e| e.to_string())?;
    let caps = engine.capabilities(probe.as_ref());
    drop(probe);
    eprintln!(
        "compile+load: {} ({}), {warmup} warm-up + {cycles} measured cycles, served by {}{}, cache {}",
        model.id,
        model.manifest.precision,
        caps.engine,
        caps.notes.first().map_or(String::new(), |n| format!(" ({n})")),
        cache.root().display()
    );
    let samples: Arc<Mutex<Vec<CycleSample>>> = Arc::default();
    let sink = samples.clone();
    let every = ((warmup + cycles) / 20).max(1);
    let cfg = GateAConfig::default()
        .with_cycles(cycles)
        .with_warmup(warmup)
        .with_memory_budget((args.memory_budget_mib * 1024.0 * 1024.0) as u64)
        .with_observer(Arc::new(move |s: &CycleSample| {
            if s.cycle.is_multiple_of(every) || s.cycle == s.total || s.failed {
                let (h, m) = s.cache.unwrap_or((0, 0));
                eprintln!(
                    "  cycle {:>6}/{}{}  prepare {:>8.2} ms  RSS {:>7.1} MiB  cache {h} hits / {m} misses{}",
                    s.cycle,
                    s.total,
                    if s.warmup { " (warm-up)" } else { "" },
                    s.prepare_ms,
                    mib(s.memory_bytes.unwrap_or(0) as f64),
                    if s.failed { "  FAILED" } else { "" }
                );
            }
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(s.clone());
        }));
    let stats = {
        let cache = cache.clone();
        move || {
            let s = cache.stats();
            (s.hits, s.misses)
        }
    };
    let verdict = gates::gate_a(
        engine.as_ref(),
        &artifact,
        &PrepareOptions::default(),
        Some(&stats),
        &cfg,
    );

    let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = csv.as_mut() {
        for s in samples.iter() {
            let (h, m) = s.cache.unwrap_or((0, 0));
            writeln!(
                f,
                "{},{},{:.3},{},{},{h},{m}",
                s.cycle,
                s.warmup as u8,
                s.prepare_ms,
                s.failed as u8,
                s.memory_bytes.unwrap_or(0)
            )
            .map_err(|e| e.to_string())?;
        }
    }
    // The trend over the measured cycles says more than first-vs-last alone:
    // a leak climbs steadily, allocator noise does not.
    let measured: Vec<&CycleSample> = samples.iter().filter(|s| !s.warmup).collect();
    let xs: Vec<f64> = measured.iter().map(|s| s.cycle as f64).collect();
    let ys: Vec<f64> = measured.iter().map(|s| s.memory_bytes.unwrap_or(0) as f64).collect();
    let mut prep: Vec<f64> = measured.iter().map(|s| s.prepare_ms).collect();
    prep.sort_by(f64::total_cmp);
    let q = |p: f64| {
        prep.get(((prep.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };

    println!("{}", gates::render_table(std::slice::from_ref(&verdict)));
    println!(
        "model {}  served by {}  cycles {cycles} (+{warmup} warm-up)",
        model.id, caps.engine
    );
    println!(
        "memory: {:+.2} MiB over the measured cycles; trend {} KiB per 100 cycles; RSS at end {:.1} MiB",
        mib(verdict
            .measurements
            .get("memory_growth_bytes")
            .copied()
            .unwrap_or(f64::NAN)),
        gates::least_squares_slope(&xs, &ys).map_or("n/a".into(), |s| format!("{:+.1}", s * 100.0 / 1024.0)),
        mib(ys.last().copied().unwrap_or(0.0))
    );
    let (hits, misses) = (
        verdict.measurements.get("cache_hits").copied().unwrap_or(0.0),
        verdict.measurements.get("cache_misses").copied().unwrap_or(0.0),
    );
    println!(
        "cache: {hits} hits / {misses} misses over the measured cycles (hit ratio {:.3}); prepare p50 {:.2} ms, p99 {:.2} ms",
        hits / (hits + misses).max(1.0),
        q(0.50),
        q(0.99)
    );
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&verdict).map_err(|e| e.to_string())?;
        std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    println!("Gate A: {}", if verdict.passed() { "PASS" } else { "FAIL" });
    Ok(verdict.passed())
}
