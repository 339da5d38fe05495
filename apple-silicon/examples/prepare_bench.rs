//! Prepare time and memory of `CandleEngine` on the compiled-model cache:
//! cold (empty cache: build the plan, write and install the lowered program)
//! against warm (cache hit: load the lowered program) prepares.
//!
//! ```text
//! cargo run --release --example prepare_bench -- [--rounds N] [ID ...]
//! ```
//!
//! IDs are downloaded models (`models/<id>`; default: minilm_l6_fp32,
//! minilm_l6_int8, minilm_l6_pal8, mobilenet_v2_int8). Per model:
//! - memory: three child processes (`--child ID MODE DIR`), each prepares once
//!   and reports its RSS (VmRSS) and peak (VmHWM) minus its RSS at start,
//!   with the model held: no cache, a cold prepare into an empty cache, then
//!   a warm prepare from the cache the cold child filled;
//! - time: in this one steady process, after one uncached prepare as a
//!   warm-up, N rounds (default 15) of one cold prepare (a fresh empty cache)
//!   then one warm prepare (a new engine and cache handle on a filled
//!   cache); medians, and cold / warm.
//!
//! Linux only (reads /proc/self/status).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::golden;
use apple_silicon::telemetry::process_stats;
use apple_silicon::{CandleEngine, InferenceEngine, ModelArtifact, PrepareOptions};

const DEFAULT_IDS: [&str; 4] = [
    "minilm_l6_fp32",
    "minilm_l6_int8",
    "minilm_l6_pal8",
    "mobilenet_v2_int8",
];

/// kB of a figure of `telemetry::process_stats` (Linux's /proc/self/status).
fn kb(bytes: Option<u64>) -> u64 {
    bytes.expect("expected /proc/self/status (Linux) for RSS figures") / 1024
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn artifact(id: &str) -> ModelArtifact {
    let m = golden::downloaded(id).unwrap_or_else(|e| panic!("{e}"));
    ModelArtifact::open(m.package_path()).unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn cached_engine(dir: &Path) -> CandleEngine {
    let cache = ModelCache::open(CacheConfig::at(dir), host_meta()).unwrap_or_else(|e| panic!("{e}"));
    CandleEngine::new().with_cache(Arc::new(cache))
}

/// Milliseconds one prepare of `a` by `engine` takes, and its notes.
fn prepare(engine: &CandleEngine, a: &ModelArtifact) -> (f64, Box<dyn apple_silicon::PreparedModel>) {
    let t = Instant::now();
    let model = engine
        .prepare(a, PrepareOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", a.path.display()));
    (t.elapsed().as_secs_f64() * 1e3, model)
}

/// One prepare in this (fresh) process; prints `rss_mb hwm_mb ms note`.
fn child(id: &str, mode: &str, dir: &Path) {
    let a = artifact(id);
    let start = kb(process_stats().rss_bytes);
    let engine = match mode {
        "plain" => CandleEngine::new(),
        "cold" | "warm" => cached_engine(dir),
        other => panic!("mode {other:?}; expected plain, cold or warm"),
    };
    let (ms, model) = prepare(&engine, &a);
    let note = engine.capabilities(model.as_ref()).notes.join("; ");
    let now = process_stats();
    let (rss, hwm) = (kb(now.rss_bytes), kb(now.high_water_bytes));
    println!(
        "{:.1} {:.1} {ms:.1} {note}",
        rss.saturating_sub(start) as f64 / 1024.0,
        hwm.saturating_sub(start) as f64 / 1024.0
    );
    drop(model);
}

fn memory(id: &str) {
    let exe = std::env::current_exe().expect("the running example's path");
    let dir = tempfile::tempdir().unwrap();
    for mode in ["plain", "cold", "warm"] {
        let out = Command::new(&exe)
            .args(["--child", id, mode])
            .arg(dir.path())
            .output()
            .expect("spawning a child");
        assert!(
            out.status.success(),
            "{id} {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = line.trim().splitn(4, ' ').collect();
        println!(
            "| {id} | {mode} | {} | {} | {} | {} |",
            f[0],
            f[1],
            f[2],
            f.get(3).unwrap_or(&"")
        );
    }
}

fn timing(id: &str, rounds: usize) -> (f64, f64) {
    let a = artifact(id);
    drop(prepare(&CandleEngine::new(), &a));
    let filled = tempfile::tempdir().unwrap();
    drop(prepare(&cached_engine(filled.path()), &a));
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let empty = tempfile::tempdir().unwrap();
        cold.push(prepare(&cached_engine(empty.path()), &a).0);
        warm.push(prepare(&cached_engine(filled.path()), &a).0);
    }
    (median(&cold), median(&warm))
}

/// Prints what was wrong and how to call this, and exits with status 2.
fn usage_exit(what: &str) -> ! {
    eprintln!(
        "prepare_bench: {what}\nusage: prepare_bench [--rounds N] [ID ...] (IDs: downloaded models, e.g. {})",
        DEFAULT_IDS.join(", ")
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        match &args[1..] {
            [id, mode, dir] => return child(id, mode, Path::new(dir)),
            other => panic!("--child takes ID MODE DIR; got {other:?}"),
        }
    }
    let mut rounds = 15;
    let mut ids = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--rounds" {
            rounds = it
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("--rounds takes a positive count"));
        } else if a.starts_with('-') {
            usage_exit(&format!("unknown option {a:?}"));
        } else {
            ids.push(a);
        }
    }
    if ids.is_empty() {
        ids = DEFAULT_IDS.iter().map(|s| s.to_string()).collect();
    }
    for id in &ids {
        if let Err(e) = golden::downloaded(id) {
            usage_exit(&format!("model {id:?}: {e}"));
        }
    }
    println!("| model | prepare | RSS held MiB | peak RSS MiB | ms | note |");
    println!("|---|---|---|---|---|---|");
    for id in &ids {
        memory(id);
    }
    println!();
    println!("| model | cold ms (median of {rounds}) | warm ms | cold / warm |");
    println!("|---|---|---|---|");
    for id in &ids {
        let (c, w) = timing(id, rounds);
        println!("| {id} | {c:.1} | {w:.1} | {:.1}× |", c / w);
    }
}
