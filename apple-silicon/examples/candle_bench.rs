//! Benchmark of the Candle engine, all figures from one run on this machine:
//! prepare time (and cold vs warm prepare on the compiled-model cache),
//! p50/p95 latency and peak RSS for MobileNetV2 (batch 1) and MiniLM-L6
//! (seq 128, batch 1), and the interpreter against candle-transformers'
//! native BERT on the same weights.
//!
//! ```text
//! cargo run --release --example candle_bench [-- --iterations N]
//! candle_bench --child ID [--iterations N] [--json] [--prepare-stats]
//! candle_bench --child ID --per-op [--iterations N]
//! ```
//!
//! `--per-op` profiles an ML Program instead (`Plan::profile`, after 3
//! warm-up runs): the time per op type and the 15 slowest steps, as shares
//! of the profiled runs' total, on the threads `RAYON_NUM_THREADS` gives.
//!
//! The parent (no `--child`) runs itself once per model as a child process
//! (`--child ID --json --prepare-stats`), collects one JSON line from each and
//! prints the markdown table; the interleaved interpreter-vs-native MiniLM
//! comparison runs in a child of its own. Peak RSS is the child's high-water
//! mark (VmHWM) after one prepare, 3 warm-up runs and the timed runs, minus its
//! RSS when it started (before the model was opened): what loading and running
//! the model cost. It is read before the extra prepares of `--prepare-stats`.
//! Linux only (reads /proc/self/status).
//!
//! `--child ID --json` prints one JSON line to stdout (scripts/bench/peers.py
//! reads it): `{"id", "engine", "threads", "prepare_ms", "p50_ms", "p95_ms",
//! "peak_rss_mb", "start_rss_mb", "latencies_ms", ...}`. IDs: mobilenet_v2_fp32/fp16/int8,
//! minilm_l6_fp32/fp16/int8/pal8 (the interpreter), minilm_l6_safetensors
//! (candle-transformers' BertModel) and minilm_l6_interleaved (the A/B).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

/// Bytes in a MiB: weights and RSS are both reported in MiB.
const MIB: f64 = 1024.0 * 1024.0;

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::candle_backend::CandleModel;
use apple_silicon::golden;
use apple_silicon::telemetry::process_stats;
use apple_silicon::{CandleEngine, InferenceEngine, ModelArtifact, PrepareOptions, PreparedModel, TensorMap};
use serde::{Deserialize, Serialize};

/// The Core ML packages the interpreter runs, in table order.
const PROGRAMS: [&str; 7] = [
    "mobilenet_v2_fp32",
    "mobilenet_v2_fp16",
    "mobilenet_v2_int8",
    "minilm_l6_fp32",
    "minilm_l6_fp16",
    // scripts/models/compressed_minilm.py: int8 (constexpr_affine_dequantize)
    // and 8-bit palettized (constexpr_lut_to_dense) MiniLM, whose activations
    // are small enough for peak RSS to be mostly weights.
    "minilm_l6_int8",
    "minilm_l6_pal8",
];
/// Zoo members (`models/zoo/<member>`, built by `make zoo`) that only
/// `--child` runs (scripts/bench/peers.py compares them with ONNX Runtime on
/// their original ONNX files): 5×5 depthwise convolutions with "same"
/// padding (PP-LCNet), transposed convolutions and upsampling (PP-OCRv4 det),
/// and a control no kernel was tuned for (YOLOv8n: regular 3×3 convs, SiLU).
const ZOO_PROGRAMS: [&str; 3] = ["zoo/pplcnet_orientation", "zoo/ppocr_v4_det", "zoo/yolov8n_nudenet"];
/// candle-transformers' BertModel on the safetensors MiniLM-L6.
const NATIVE: &str = "minilm_l6_safetensors";
/// Interpreter vs native MiniLM-L6, interleaved in one process.
const INTERLEAVED: &str = "minilm_l6_interleaved";
const WARMUP: usize = 3;

/// kB of a figure of `telemetry::process_stats` (Linux's /proc/self/status).
fn kb(bytes: Option<u64>) -> u64 {
    bytes.expect("expected /proc/self/status (Linux) for RSS figures") / 1024
}

fn median(v: &[f64]) -> f64 {
    pct(v, 0.5)
}

/// Nearest-rank percentile (q in 0..=1) of a non-empty sample.
fn pct(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
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

fn candle(model: &dyn PreparedModel) -> &CandleModel {
    model
        .as_any()
        .downcast_ref::<CandleModel>()
        .expect("expected CandleEngine to prepare a CandleModel")
}

/// Milliseconds per run on the calling thread, after the warm-up runs.
fn latencies(model: &dyn PreparedModel, inputs: &TensorMap, iters: usize) -> Vec<f64> {
    let candle = candle(model);
    for _ in 0..WARMUP {
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

/// What one child measured for one model (the `--json` line).
#[derive(Serialize, Deserialize)]
struct Row {
    id: String,
    engine: String,
    /// Threads candle's CPU kernels use (rayon's count).
    threads: usize,
    warmup: usize,
    iterations: usize,
    /// `weight.bin` bytes in MiB, the unit of the RSS fields, so that
    /// their ratio is a ratio of bytes.
    weights_mb: f64,
    /// The first prepare, before any run.
    prepare_ms: f64,
    p50_ms: f64,
    p95_ms: f64,
    /// VmHWM at the end of the timed runs minus `start_rss_mb`, in MiB.
    peak_rss_mb: f64,
    /// VmRSS when the process started, before the model was opened.
    start_rss_mb: f64,
    latencies_ms: Vec<f64>,
    /// With --prepare-stats: median of 5 prepares without a cache, and the
    /// medians of cold (empty cache) and warm (cache hit) prepares.
    prepare_median_ms: Option<f64>,
    cache_cold_ms: Option<f64>,
    cache_warm_ms: Option<f64>,
    /// The framework's own cost (see [`Overhead`]); none for the native BERT.
    overhead: Option<Overhead>,
}

/// What `CandleEngine::infer` (schema check, inputs converted and handed to
/// the deadline worker, outputs back) costs on top of running the plan
/// directly on the calling thread: the two alternate in one process, the
/// order swapped every pair so that neither always runs second.
#[derive(Serialize, Deserialize)]
struct Overhead {
    pairs: usize,
    /// `CandleModel::run_blocking`: the plan on the calling thread.
    direct_p50_ms: f64,
    /// `InferenceEngine::infer` with a 60 s deadline.
    infer_p50_ms: f64,
    /// Median over pairs of (infer − direct).
    median_delta_ms: f64,
    /// `median_delta_ms` as a share of `direct_p50_ms`, in percent.
    percent: f64,
}

/// The interleaved A/B (the `--json` line of `--child minilm_l6_interleaved`).
#[derive(Serialize, Deserialize)]
struct Interleaved {
    id: String,
    pairs: usize,
    interpreter_p50_ms: f64,
    native_p50_ms: f64,
    median_ratio: f64,
}

struct Args {
    iters: usize,
    child: Option<String>,
    json: bool,
    prepare_stats: bool,
    per_op: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        iters: 30,
        child: None,
        json: false,
        prepare_stats: false,
        per_op: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => {
                let v = it.next().unwrap_or_default();
                args.iters = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| die(&format!("--iterations expects a positive integer, got {v:?}")));
            }
            "--child" => {
                args.child = Some(
                    it.next()
                        .unwrap_or_else(|| die("--child expects a model id, got nothing")),
                )
            }
            "--json" => args.json = true,
            "--prepare-stats" => args.prepare_stats = true,
            "--per-op" => args.per_op = true,
            other => die(&format!(
                "unexpected argument {other:?}; expected --iterations N, --child ID, --json, --prepare-stats, --per-op"
            )),
        }
    }
    args
}

fn die(msg: &str) -> ! {
    eprintln!("candle_bench: {msg}");
    std::process::exit(2)
}

fn main() {
    let start_kb = kb(process_stats().rss_bytes);
    let args = parse_args();
    match &args.child {
        Some(id) if id == INTERLEAVED => {
            let r = interleaved(args.iters);
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap());
            } else {
                print_interleaved(&r);
            }
        }
        Some(id) if args.per_op => per_op(id, args.iters),
        Some(id) => {
            let row = child(id, args.iters, args.prepare_stats, start_kb);
            if args.json {
                println!("{}", serde_json::to_string(&row).unwrap());
            } else {
                print_table(&[row], args.iters);
            }
        }
        None => parent(args.iters),
    }
}

/// Spawn this executable as `--child ID --json ...` and parse its one JSON line.
fn spawn_child<T: for<'de> Deserialize<'de>>(id: &str, iters: usize) -> T {
    let exe = std::env::current_exe().expect("expected the path of this executable");
    let out = Command::new(&exe)
        .args([
            "--child",
            id,
            "--iterations",
            &iters.to_string(),
            "--json",
            "--prepare-stats",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("could not start {} --child {id}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "child {id} exited with {}, expected success; stdout: {stdout}",
            out.status
        );
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("child {id}: expected one JSON line, got {line:?}: {e}"))
}

fn parent(iters: usize) {
    let mut rows = Vec::new();
    for id in PROGRAMS.iter().chain(std::iter::once(&NATIVE)) {
        eprintln!("benchmarking {id} (own process) ...");
        rows.push(spawn_child::<Row>(id, iters));
    }
    print_table(&rows, iters);
    eprintln!("interleaved interpreter vs candle-transformers BERT (own process) ...");
    print_interleaved(&spawn_child::<Interleaved>(INTERLEAVED, iters));
}

fn print_table(rows: &[Row], iters: usize) {
    println!("## Candle engine, one run ({iters} iterations per model, batch 1, one process per model)\n");
    println!("| model | weights MiB | prepare ms (no cache) | cold / warm prepare ms (cache) | warm speed-up | p50 ms | p95 ms | peak RSS MiB | peak RSS / weights |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let name = if r.id == NATIVE {
            "minilm_l6 (candle-transformers BERT, safetensors)"
        } else {
            &r.id
        };
        let cache = match (r.cache_cold_ms, r.cache_warm_ms) {
            (Some(c), Some(w)) => format!("{c:.1} / {w:.1} | {:.1}×", c / w),
            _ => "n/a | n/a".into(),
        };
        println!(
            "| {name} | {:.1} | {:.1} | {cache} | {:.2} | {:.2} | {:.1} | {:.2} |",
            r.weights_mb,
            r.prepare_median_ms.unwrap_or(r.prepare_ms),
            r.p50_ms,
            r.p95_ms,
            r.peak_rss_mb,
            r.peak_rss_mb / r.weights_mb
        );
    }
    println!("\n### Framework overhead: `CandleEngine::infer` against the plan run directly, interleaved\n");
    println!("| model | pairs | direct p50 ms | infer p50 ms | median per-pair Δ ms | Δ / direct p50 |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        if let Some(o) = &r.overhead {
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.3} | {:.2}% |",
                r.id, o.pairs, o.direct_p50_ms, o.infer_p50_ms, o.median_delta_ms, o.percent
            );
        }
    }
}

fn print_interleaved(r: &Interleaved) {
    println!(
        "\nMiniLM-L6 fp32, interpreter vs candle-transformers BERT, interleaved in one process ({} pairs): \
         p50 {:.2} ms vs {:.2} ms; median per-pair ratio {:.2}×",
        r.pairs, r.interpreter_p50_ms, r.native_p50_ms, r.median_ratio
    );
}

/// What to load for an id: the artifact path, the golden inputs and the weight bytes.
fn resolve(id: &str) -> (PathBuf, TensorMap, f64, &'static str) {
    if id == NATIVE {
        let dir = golden::models_dir().join(NATIVE);
        let inputs = golden::downloaded("minilm_l6_fp32").unwrap_or_else(|e| panic!("{e}"));
        let weights = std::fs::metadata(dir.join("model.safetensors"))
            .unwrap_or_else(|e| panic!("expected {}/model.safetensors: {e}", dir.display()))
            .len();
        return (
            dir,
            inputs.inputs().unwrap(),
            weights as f64 / MIB,
            "candle-transformers",
        );
    }
    if !PROGRAMS.contains(&id) && !ZOO_PROGRAMS.contains(&id) {
        die(&format!(
            "unknown model id {id:?}; expected one of {}, {}, {NATIVE}, {INTERLEAVED}",
            PROGRAMS.join(", "),
            ZOO_PROGRAMS.join(", ")
        ));
    }
    let m = golden::downloaded(id).unwrap_or_else(|e| panic!("{e}"));
    let pkg = m.package_path();
    let weights = dir_bytes(&pkg.join("Data/com.apple.CoreML/weights"));
    (pkg, m.inputs().unwrap(), weights as f64 / MIB, "candle-interpreter")
}

/// `--per-op`: one program's profile, by op type and by step.
fn per_op(id: &str, iters: usize) {
    let (path, inputs, _, _) = resolve(id);
    let artifact = ModelArtifact::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let model = CandleEngine::new()
        .prepare(&artifact, PrepareOptions::default())
        .unwrap();
    let Some(plan) = candle(model.as_ref()).plan() else {
        die(&format!("{id} is not an ML Program: --per-op profiles programs"))
    };
    for _ in 0..WARMUP {
        plan.run(&inputs).unwrap();
    }
    let steps = plan.profile(&inputs, iters).unwrap();
    let total: f64 = steps
        .iter()
        .filter(|s| !matches!(s.op_type.as_str(), "cond" | "while_loop"))
        .map(|s| s.total.as_secs_f64())
        .sum();
    let per_run = |t: f64| 1e3 * t / iters as f64;
    let mut by_type: Vec<(String, u64, f64)> = Vec::new();
    for s in &steps {
        match by_type.iter_mut().find(|(t, ..)| *t == s.op_type) {
            Some(e) => {
                e.1 += s.calls;
                e.2 += s.total.as_secs_f64();
            }
            None => by_type.push((s.op_type.clone(), s.calls, s.total.as_secs_f64())),
        }
    }
    by_type.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!(
        "### {id}: per op type ({iters} runs, {} threads; {:.3} ms a run in steps)\n",
        candle_core::utils::get_num_threads(),
        per_run(total)
    );
    println!("| op type | steps a run | ms a run | share |\n|---|---|---|---|");
    for (t, calls, secs) in &by_type {
        let share = 100.0 * secs / total;
        println!(
            "| {t} | {:.0} | {:.3} | {share:.1}% |",
            *calls as f64 / iters as f64,
            per_run(*secs)
        );
    }
    let mut slow: Vec<_> = steps.iter().collect();
    slow.sort_by_key(|s| std::cmp::Reverse(s.total));
    println!("\n### {id}: the 15 slowest steps\n\n| step | op type | ms a run | share |\n|---|---|---|---|");
    for s in slow.iter().take(15) {
        let secs = s.total.as_secs_f64();
        println!(
            "| `{}` | {} | {:.3} | {:.1}% |",
            s.name,
            s.op_type,
            per_run(secs),
            100.0 * secs / total
        );
    }
    println!("\n(`cond` and `while_loop` include their blocks' steps; the shares leave them out.)");
}

/// One model in this process: prepare, warm-up, timed runs, peak RSS; then
/// (with `prepare_stats`) more prepares without and with the cache.
fn child(id: &str, iters: usize, prepare_stats: bool, start_kb: u64) -> Row {
    let (path, inputs, weights_mb, engine_name) = resolve(id);
    let engine = CandleEngine::new();
    let artifact = ModelArtifact::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = Instant::now();
    let model: Box<dyn PreparedModel> = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
    let prepare_ms = ms(t);
    let lat = latencies(model.as_ref(), &inputs, iters);
    let peak_rss_mb = kb(process_stats().high_water_bytes).saturating_sub(start_kb) as f64 / 1024.0;
    let overhead = (id != NATIVE).then(|| overhead(&engine, model.as_ref(), &inputs, iters));
    drop(model);
    let mut row = Row {
        id: id.into(),
        engine: engine_name.into(),
        threads: candle_core::utils::get_num_threads(),
        warmup: WARMUP,
        iterations: iters,
        weights_mb,
        prepare_ms,
        p50_ms: pct(&lat, 0.5),
        p95_ms: pct(&lat, 0.95),
        peak_rss_mb,
        start_rss_mb: start_kb as f64 / 1024.0,
        latencies_ms: lat,
        prepare_median_ms: None,
        cache_cold_ms: None,
        cache_warm_ms: None,
        overhead,
    };
    if !prepare_stats {
        return row;
    }
    // Prepare without a cache (parse + materialise), median of 5.
    let mut prep = vec![prepare_ms];
    for _ in 0..4 {
        let t = Instant::now();
        drop(engine.prepare(&artifact, PrepareOptions::default()).unwrap());
        prep.push(ms(t));
    }
    row.prepare_median_ms = Some(median(&prep));
    if id == NATIVE {
        return row; // safetensors directories are not cached
    }
    // Cold (empty cache: build + install) vs warm (cache hit) prepare.
    let scratch = tempfile::tempdir().unwrap();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 0..3 {
        let root = scratch.path().join(format!("{id}-{i}"));
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
    row.cache_cold_ms = Some(median(&cold));
    row.cache_warm_ms = Some(median(&warm));
    row
}

/// The framework's overhead (see [`Overhead`]), after the timed runs.
fn overhead(engine: &CandleEngine, model: &dyn PreparedModel, inputs: &TensorMap, iters: usize) -> Overhead {
    let direct = candle(model);
    let timeout = std::time::Duration::from_secs(60);
    engine.infer(model, inputs, timeout).unwrap();
    let (mut d, mut f, mut delta) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iters {
        let run_direct = || {
            let t = Instant::now();
            direct.run_blocking(inputs).unwrap();
            ms(t)
        };
        let run_infer = || {
            let t = Instant::now();
            engine.infer(model, inputs, timeout).unwrap();
            ms(t)
        };
        let (x, y) = if i % 2 == 0 {
            let x = run_direct();
            (x, run_infer())
        } else {
            let y = run_infer();
            (run_direct(), y)
        };
        d.push(x);
        f.push(y);
        delta.push(y - x);
    }
    let (direct_p50_ms, median_delta_ms) = (median(&d), median(&delta));
    Overhead {
        pairs: iters,
        direct_p50_ms,
        infer_p50_ms: median(&f),
        median_delta_ms,
        percent: 100.0 * median_delta_ms / direct_p50_ms,
    }
}

/// Interleaved A/B so that load from other processes hits both alike.
fn interleaved(iters: usize) -> Interleaved {
    let engine = CandleEngine::new();
    let (program, inputs, _, _) = resolve("minilm_l6_fp32");
    let (native, _, _, _) = resolve(NATIVE);
    let prepare = |p: &Path| {
        let artifact = ModelArtifact::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        engine.prepare(&artifact, PrepareOptions::default()).unwrap()
    };
    let (a, b) = (prepare(&program), prepare(&native));
    let (a, b) = (candle(a.as_ref()), candle(b.as_ref()));
    for _ in 0..WARMUP {
        a.run_blocking(&inputs).unwrap();
        b.run_blocking(&inputs).unwrap();
    }
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        a.run_blocking(&inputs).unwrap();
        let x = ms(t);
        let t = Instant::now();
        b.run_blocking(&inputs).unwrap();
        let y = ms(t);
        ta.push(x);
        tb.push(y);
        ratios.push(x / y);
    }
    Interleaved {
        id: INTERLEAVED.into(),
        pairs: iters,
        interpreter_p50_ms: median(&ta),
        native_p50_ms: median(&tb),
        median_ratio: median(&ratios),
    }
}
