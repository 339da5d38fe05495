//! Gate D as a soak run: continuous inference on one model for `--duration`
//! seconds, sampling per interval the latency p50/p95/p99, throughput and
//! RSS. Samples are printed as they come, appended to a CSV (flushed every
//! interval, so an interrupted run keeps them) and drawn at the end as an
//! SVG: latency, throughput and RSS over time.
//!
//! ```text
//! cargo run --release --example core_ml_inference_soak -- --duration 3600 --model mobilenet_v2_int8 \
//!     [--interval SECS] [--out target/soak] [--engine chain|coreml|candle] [--max-throughput-cv 0.2]
//! cargo run --release --example core_ml_inference_soak -- --plot target/soak/soak-mobilenet_v2_int8.csv
//! ```
//!
//! Writes `<out>/soak-<model>.csv` (columns `elapsed_s, calls,
//! throughput_per_s, p50_ms, p95_ms, p99_ms, rss_mb, errors, warmup`),
//! `<out>/soak-<model>.svg` and `<out>/soak-<model>-verdict.json`. The
//! interval defaults to duration/120 within 1–10 s. Before soaking, one
//! inference is checked against the model's golden output. Exits 1 if Gate D
//! fails (errors, a memory trend, unsteady throughput) or parity fails, 2 on
//! bad arguments. A last, partial interval is not sampled.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apple_silicon::gates::{self, GateDConfig, GateVerdict, SoakSample};
use apple_silicon::parity::{self, Thresholds};
use apple_silicon::{ModelArtifact, PrepareOptions};
use clap::Parser;
use common::{mib, EngineChoice};
use plotters::prelude::*;

/// Gate D: a soak of continuous inference with periodic samples and a plot.
#[derive(Parser)]
struct Args {
    /// Soak length in seconds (the plan's Gate D: 3600).
    #[arg(long, default_value_t = 3600)]
    duration: u64,
    /// A model id (downloaded or fixture) or a model directory.
    #[arg(long, default_value = "mobilenet_v2_int8")]
    model: String,
    /// Sampling interval in seconds (default: duration/120, within 1–10 s).
    #[arg(long)]
    interval: Option<f64>,
    /// Where the CSV, SVG and verdict go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// Which engine serves the inferences.
    #[arg(long, value_enum, default_value_t = EngineChoice::Chain)]
    engine: EngineChoice,
    /// Compiled-model cache directory (default: a fresh temporary one).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Seconds at the start left out of the verdict, for allocator and cache
    /// warm-up (default: a tenth of the duration, at least one interval).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// Timeout of each inference, ms.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Gate D's bound on the throughput coefficient of variation.
    #[arg(long, default_value_t = 0.2)]
    max_throughput_cv: f64,
    /// Only draw the plot of an existing soak CSV (written next to it as .svg).
    #[arg(long, conflicts_with_all = ["model", "duration"])]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.plot {
        Some(csv) => replot(csv).map(|_| true),
        None => soak(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("core_ml_inference_soak: {e}");
            ExitCode::from(2)
        }
    }
}

const CSV_HEADER: &str = "elapsed_s,calls,throughput_per_s,p50_ms,p95_ms,p99_ms,rss_mb,errors,warmup";

fn csv_row(s: &SoakSample) -> String {
    format!(
        "{:.3},{},{:.3},{:.3},{:.3},{:.3},{:.3},{},{}",
        s.elapsed_s,
        s.calls,
        s.throughput_per_s,
        s.p50_ms,
        s.p95_ms,
        s.p99_ms,
        mib(s.memory_bytes.unwrap_or(0) as f64),
        s.errors,
        s.warmup as u8
    )
}

fn soak(args: &Args) -> Result<bool, String> {
    if args.duration < 3 {
        return Err(format!(
            "--duration: expected at least 3 seconds (Gate D needs three measured intervals), got {}",
            args.duration
        ));
    }
    let duration = Duration::from_secs(args.duration);
    let interval = match args.interval {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        Some(s) => return Err(format!("--interval: expected a positive number of seconds, got {s}")),
        None => (duration / 120).clamp(Duration::from_secs(1), Duration::from_secs(10)),
    };
    let warmup = match args.warmup_secs {
        Some(s) if s.is_finite() && s >= 0.0 => s,
        Some(s) => {
            return Err(format!(
                "--warmup-secs: expected a non-negative number of seconds, got {s}"
            ))
        }
        None => duration.as_secs_f64() / 10.0,
    };
    let warmup_intervals = ((warmup / interval.as_secs_f64()).ceil() as usize).max(1);
    let model = common::resolve_model(&args.model).map_err(|e| e.to_string())?;
    let artifact = ModelArtifact::open(model.package_path()).map_err(|e| e.to_string())?;
    let inputs = model.inputs().map_err(|e| e.to_string())?;
    let (cache, _tmp) = common::open_cache(args.cache_dir.as_ref()).map_err(|e| e.to_string())?;
    let engine = common::engine(args.engine, &cache);
    let timeout = Duration::from_millis(args.timeout_ms);
    let prepared = engine
        .prepare(&artifact, PrepareOptions::default())
        .map_err(|e| e.to_string())?;
    let served_by = engine.capabilities(prepared.as_ref()).engine;

    // One checked inference first: a soak of wrong answers proves nothing.
    let first = engine
        .infer(prepared.as_ref(), &inputs, timeout)
        .map_err(|e| e.to_string())?;
    let budget = Thresholds {
        l_inf: model.manifest.accuracy_delta_l_inf,
        rmse: model.manifest.accuracy_delta_rmse,
    };
    let report =
        parity::compare(&first, &model.expected().map_err(|e| e.to_string())?, budget).map_err(|e| e.to_string())?;
    let worst = report.worst().map_or(0.0, |o| o.l_inf);
    eprintln!(
        "soak: {} served by {served_by}, parity L∞ {worst:.1e} (budget {:.0e}) {}; {} s in {:.1} s intervals, \
         the first {warmup_intervals} left out as warm-up",
        model.id,
        budget.l_inf,
        if report.passed { "ok" } else { "FAILED" },
        args.duration,
        interval.as_secs_f64()
    );
    if !report.passed {
        return Ok(false);
    }

    std::fs::create_dir_all(&args.out).map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    let csv_path = args.out.join(format!("soak-{}.csv", model.id));
    let mut csv = std::fs::File::create(&csv_path).map_err(|e| format!("creating {}: {e}", csv_path.display()))?;
    writeln!(csv, "{CSV_HEADER}").map_err(|e| e.to_string())?;
    let csv = Arc::new(Mutex::new(csv));
    let samples: Arc<Mutex<Vec<SoakSample>>> = Arc::default();
    let (sink, csv_sink, total) = (samples.clone(), csv.clone(), args.duration);
    eprintln!(
        "{:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
        "elapsed", "calls", "calls/s", "p50 ms", "p95 ms", "p99 ms", "RSS MiB", "errors"
    );
    let cfg = GateDConfig::default()
        .with_duration(duration, interval)
        .with_warmup_intervals(warmup_intervals)
        .with_timeout(timeout)
        .with_max_throughput_cv(args.max_throughput_cv)
        .with_observer(Arc::new(move |s: &SoakSample| {
            eprintln!(
                "{:>6.0}/{total:<5} {:>9} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>10.1} {:>7}{}",
                s.elapsed_s,
                s.calls,
                s.throughput_per_s,
                s.p50_ms,
                s.p95_ms,
                s.p99_ms,
                mib(s.memory_bytes.unwrap_or(0) as f64),
                s.errors,
                if s.warmup { "  (warm-up)" } else { "" }
            );
            let mut f = csv_sink.lock().unwrap_or_else(|p| p.into_inner());
            // A failed write is reported once at the end by the flush below.
            let _ = writeln!(f, "{}", csv_row(s)).and_then(|_| f.flush());
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(s.clone());
        }));
    let verdict = gates::gate_d(engine.as_ref(), prepared.as_ref(), &inputs, &cfg);
    csv.lock()
        .unwrap_or_else(|p| p.into_inner())
        .flush()
        .map_err(|e| format!("writing {}: {e}", csv_path.display()))?;

    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let svg_path = csv_path.with_extension("svg");
    let title = format!(
        "{} on {served_by}: Gate D {} ({})",
        model.id,
        if verdict.passed() { "PASS" } else { "FAIL" },
        summary(&verdict)
    );
    plot(&samples, &title, &svg_path)?;
    let json_path = args.out.join(format!("soak-{}-verdict.json", model.id));
    let json = serde_json::to_string_pretty(&verdict).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, json).map_err(|e| format!("writing {}: {e}", json_path.display()))?;

    println!("{}", gates::render_table(std::slice::from_ref(&verdict)));
    let all: Vec<&SoakSample> = samples.iter().filter(|s| !s.warmup).collect();
    let med = |f: fn(&SoakSample) -> f64| {
        let mut v: Vec<f64> = all.iter().map(|s| f(s)).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "{} on {served_by}: {} calls in {:.0} s; median of interval p50/p95/p99 {:.2}/{:.2}/{:.2} ms, {:.1} calls/s",
        model.id,
        verdict.measurements.get("calls").copied().unwrap_or(0.0),
        verdict.measurements.get("duration_s").copied().unwrap_or(0.0),
        med(|s| s.p50_ms),
        med(|s| s.p95_ms),
        med(|s| s.p99_ms),
        med(|s| s.throughput_per_s)
    );
    println!(
        "wrote {}, {}, {}",
        csv_path.display(),
        svg_path.display(),
        json_path.display()
    );
    println!("Gate D: {}", if verdict.passed() { "PASS" } else { "FAIL" });
    Ok(verdict.passed())
}

/// The figures a reader of the plot wants in its title.
fn summary(v: &GateVerdict) -> String {
    let m = |k: &str| v.measurements.get(k).copied();
    format!(
        "memory trend {} B/100 calls, throughput CV {}, errors {}",
        m("memory_slope_bytes_per_100_calls").map_or("n/a".into(), |x| format!("{x:.0}")),
        m("throughput_cv").map_or("n/a".into(), |x| format!("{x:.3}")),
        m("errors").map_or("n/a".into(), |x| format!("{x:.0}"))
    )
}

/// Re-draws the SVG of an existing soak CSV.
fn replot(csv: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("reading {}: {e}", csv.display()))?;
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.trim() == CSV_HEADER => {}
        other => {
            return Err(format!(
                "{}: expected the header `{CSV_HEADER}`, got `{}`",
                csv.display(),
                other.unwrap_or("")
            ))
        }
    }
    let mut samples = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || {
            format!(
                "{} line {}: expected 9 numeric fields, got `{line}`",
                csv.display(),
                i + 2
            )
        };
        if f.len() != 9 {
            return Err(bad());
        }
        let num = |k: usize| f[k].trim().parse::<f64>().map_err(|_| bad());
        samples.push(SoakSample {
            elapsed_s: num(0)?,
            calls: num(1)? as u64,
            throughput_per_s: num(2)?,
            p50_ms: num(3)?,
            p95_ms: num(4)?,
            p99_ms: num(5)?,
            memory_bytes: Some((num(6)? * 1024.0 * 1024.0) as u64),
            errors: num(7)? as u64,
            warmup: num(8)? != 0.0,
        });
    }
    let svg = csv.with_extension("svg");
    let title = csv
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    plot(&samples, &title, &svg)?;
    println!("wrote {}", svg.display());
    Ok(())
}

/// Reads one figure of a sample.
type Field = fn(&SoakSample) -> f64;

/// One line of a panel: its legend name, what it plots, its colour.
type Series = (&'static str, Field, RGBColor);

/// Three stacked panels against elapsed time: latency percentiles,
/// throughput, RSS. Warm-up intervals are drawn on a grey band.
fn plot(samples: &[SoakSample], title: &str, path: &Path) -> Result<(), String> {
    if samples.is_empty() {
        return Err("no samples to plot: the soak ended before its first interval".into());
    }
    let err = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let panels = root.split_evenly((3, 1));
    let x_max = samples.last().map_or(1.0, |s| s.elapsed_s).max(1.0) * 1.02;
    let top = |v: f64| if v > 0.0 { v * 1.15 } else { 1.0 };
    // The warm-up intervals, shaded in every panel: the verdict leaves them out.
    let warm_end = samples
        .iter()
        .filter(|s| s.warmup)
        .map(|s| s.elapsed_s)
        .fold(0.0, f64::max);
    let shade = |y_max: f64| {
        Rectangle::new(
            [(0.0, 0.0), (warm_end, y_max)],
            RGBColor(200, 200, 200).mix(0.35).filled(),
        )
    };

    let rss: Field = |s| mib(s.memory_bytes.unwrap_or(0) as f64);
    let panels_series: [(&str, Vec<Series>); 3] = [
        (
            "latency per interval (ms)",
            vec![
                ("p50", |s| s.p50_ms, RGBColor(31, 119, 180)),
                ("p95", |s| s.p95_ms, RGBColor(255, 127, 14)),
                ("p99", |s| s.p99_ms, RGBColor(214, 39, 40)),
            ],
        ),
        (
            "throughput (inferences / s)",
            vec![("calls/s", |s| s.throughput_per_s, RGBColor(44, 160, 44))],
        ),
        ("resident memory (MiB)", vec![("RSS", rss, RGBColor(148, 103, 189))]),
    ];
    for (area, (caption, series)) in panels.iter().zip(panels_series) {
        let y_max = top(series
            .iter()
            .flat_map(|(_, f, _)| samples.iter().map(f))
            .fold(0.0, f64::max));
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(err)?;
        chart.configure_mesh().x_desc("elapsed s").draw().map_err(err)?;
        chart.draw_series(std::iter::once(shade(y_max))).map_err(err)?;
        let legend = series.len() > 1;
        for (name, f, color) in series {
            chart
                .draw_series(LineSeries::new(
                    samples.iter().map(|s| (s.elapsed_s, f(s))),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        if legend {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
