//! Benchmark of the Candle engine, all figures from one run on this machine:
//! prepare time (and cold vs warm prepare on the compiled-model cache),
//! p50/p95 latency and peak RSS for MobileNetV2 (batch 1) and MiniLM-L6
//! (seq 128, batch 1), and the interpreter against candle-transformers'
//! native BERT on the same weights.
//!
//! ```text
//! cargo run --release --example candle_bench [-- --iterations N]
//! ```
//!
//! Each model runs in its own child process. Peak RSS is that process's
//! high-water mark (VmHWM) after one prepare and the timed runs, minus its RSS
//! when it started: what loading and running the model cost. Linux only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::candle_backend::CandleModel;
use apple_silicon::golden;
use apple_silicon::{CandleEngine, InferenceEngine, ModelArtifact, PrepareOptions, PreparedModel, TensorMap};

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

static START_RSS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// RSS when the process started benchmarking (kB).
fn start_rss() -> u64 {
    *START_RSS.get_or_init(|| status_kb("VmRSS:"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            n += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
        }
    }
    n
}

/// Milliseconds per run on the calling thread, after 3 warm-up runs.
fn latencies(model: &dyn PreparedModel, inputs: &TensorMap, iters: usize) -> Vec<f64> {
    let candle = model.as_any().downcast_ref::<CandleModel>().unwrap();
    for _ in 0..3 {
        candle.run_blocking(inputs).unwrap();
    }
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            candle.run_blocking(inputs).unwrap();
            ms(t)
        })
        .collect()
}

struct Row {
    name: String,
    weights_mb: f64,
    prepare_ms: f64,
    cold_ms: f64,
    warm_ms: f64,
    p50: f64,
    p95: f64,
    peak_mb: f64,
}

fn bench(name: &str, path: &Path, inputs: &TensorMap, weights: &Path, iters: usize, scratch: &Path) -> Row {
    let engine = CandleEngine::new();
    let artifact = ModelArtifact::open(path).unwrap();
    // Peak RSS of one prepare and the runs below, over the child's RSS at start.
    let base_rss = start_rss();
    let t = Instant::now();
    let model: Box<dyn PreparedModel> = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
    let mut prep = vec![ms(t)];
    let lat = latencies(model.as_ref(), inputs, iters);
    let peak_mb = (status_kb("VmHWM:").saturating_sub(base_rss)) as f64 / 1024.0;
    drop(model);
    // Prepare without a cache (parse + materialise), median of 5.
    for _ in 0..4 {
        let t = Instant::now();
        drop(engine.prepare(&artifact, PrepareOptions::default()).unwrap());
        prep.push(ms(t));
    }
    // Cold (empty cache: build + install) vs warm (cache hit) prepare.
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let root = scratch.join(format!("{name}-{i}"));
        let cached =
            CandleEngine::new().with_cache(Arc::new(ModelCache::open(CacheConfig::at(&root), host_meta()).unwrap()));
        let t = Instant::now();
        cached.prepare(&artifact, PrepareOptions::default()).unwrap();
        cold.push(ms(t));
        for _ in 0..2 {
            let fresh = CandleEngine::new()
                .with_cache(Arc::new(ModelCache::open(CacheConfig::at(&root), host_meta()).unwrap()));
            let t = Instant::now();
            fresh.prepare(&artifact, PrepareOptions::default()).unwrap();
            warm.push(ms(t));
        }
    }
    Row {
        name: name.into(),
        weights_mb: dir_bytes(weights) as f64 / 1e6,
        prepare_ms: median(prep),
        cold_ms: median(cold),
        warm_ms: median(warm),
        p50: pct(lat.clone(), 0.5),
        p95: pct(lat, 0.95),
        peak_mb,
    }
}

fn main() {
    start_rss();
    let args: Vec<String> = std::env::args().collect();
    let iters = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30usize);
    let scratch = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for id in [
        "mobilenet_v2_fp32",
        "mobilenet_v2_fp16",
        "mobilenet_v2_int8",
        "minilm_l6_fp32",
        "minilm_l6_fp16",
    ] {
        let m = golden::downloaded(id).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("benchmarking {id} ...");
        let pkg = m.package_path();
        let weights: PathBuf = pkg.join("Data/com.apple.CoreML/weights");
        rows.push(bench(id, &pkg, &m.inputs().unwrap(), &weights, iters, scratch.path()));
    }
    let bert_dir = golden::models_dir().join("minilm_l6_safetensors");
    let minilm_inputs = golden::downloaded("minilm_l6_fp32").unwrap().inputs().unwrap();
    eprintln!("benchmarking candle-transformers BERT ...");
    let native = bench_native(&bert_dir, &minilm_inputs, iters);
    println!("## Candle engine, one run ({} iterations per model, batch 1)\n", iters);
    println!("| model | weights MB | prepare ms (no cache) | cold / warm prepare ms (cache) | warm speed-up | p50 ms | p95 ms | peak RSS MB | peak RSS / weights |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows.iter().chain(std::iter::once(&native)) {
        let cache = if r.cold_ms > 0.0 {
            format!("{:.1} / {:.1} | {:.1}×", r.cold_ms, r.warm_ms, r.cold_ms / r.warm_ms)
        } else {
            "n/a | n/a".into()
        };
        println!(
            "| {} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {:.1} | {:.2} |",
            r.name,
            r.weights_mb,
            r.prepare_ms,
            cache,
            r.p50,
            r.p95,
            r.peak_mb,
            r.peak_mb / r.weights_mb
        );
    }
    // Interleaved A/B so that load from other processes hits both alike.
    let engine = CandleEngine::new();
    let program = golden::downloaded("minilm_l6_fp32").unwrap();
    let a = engine
        .prepare(
            &ModelArtifact::open(program.package_path()).unwrap(),
            PrepareOptions::default(),
        )
        .unwrap();
    let b = engine
        .prepare(&ModelArtifact::open(&bert_dir).unwrap(), PrepareOptions::default())
        .unwrap();
    let (a, b) = (
        a.as_any().downcast_ref::<CandleModel>().unwrap(),
        b.as_any().downcast_ref::<CandleModel>().unwrap(),
    );
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        a.run_blocking(&minilm_inputs).unwrap();
        let x = ms(t);
        let t = Instant::now();
        b.run_blocking(&minilm_inputs).unwrap();
        let y = ms(t);
        ta.push(x);
        tb.push(y);
        ratios.push(x / y);
    }
    println!(
        "\nMiniLM-L6 fp32, interpreter vs candle-transformers BERT, interleaved in one run ({iters} pairs): \
         p50 {:.2} ms vs {:.2} ms; median per-pair ratio {:.2}×",
        median(ta),
        median(tb),
        median(ratios)
    );
}

fn bench_native(dir: &Path, inputs: &TensorMap, iters: usize) -> Row {
    let engine = CandleEngine::new();
    let artifact = ModelArtifact::open(dir).unwrap();
    let base_rss = start_rss();
    let t = Instant::now();
    let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
    let prep = vec![ms(t)];
    let lat = latencies(model.as_ref(), inputs, iters);
    Row {
        name: "minilm_l6 (candle-transformers BERT, safetensors)".into(),
        weights_mb: std::fs::metadata(dir.join("model.safetensors")).unwrap().len() as f64 / 1e6,
        prepare_ms: median(prep),
        cold_ms: 0.0,
        warm_ms: 0.0,
        p50: pct(lat.clone(), 0.5),
        p95: pct(lat, 0.95),
        peak_mb: (status_kb("VmHWM:").saturating_sub(base_rss)) as f64 / 1024.0,
    }
}
