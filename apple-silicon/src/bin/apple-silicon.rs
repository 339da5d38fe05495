//! `apple-silicon`: inspect and run Core ML models from the command line.

mod bench_cli;
mod cache_cli;
mod gates_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use std::time::{Duration, Instant};

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::golden::GoldenModel;
use apple_silicon::mil::{self, FloatPolicy};
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::parity::{self, Precision, Thresholds};
use apple_silicon::{
    CandleEngine, Error, InferenceEngine, ModelArtifact, ModelFmt, PrepareOptions, Result, Tensor, TensorMap,
};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "apple-silicon", version, about = "Inspect and run Core ML models from Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's schema, metadata and op census.
    Inspect {
        /// An .mlpackage, or a model directory holding model.mlpackage.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a model once and write its outputs as .npy files.
    Run {
        /// An .mlpackage, a BERT safetensors directory, or a model directory
        /// (whose golden inputs are used when no --input is given).
        model: PathBuf,
        /// An input as NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Where to write <output>.npy files.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// How fp16 programs are computed.
        #[arg(long, value_enum, default_value_t = Policy::Upcast)]
        policy: Policy,
        /// Timeout in milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        /// Prepare without the compiled-model cache ($APPLE_SILICON_CACHE_DIR,
        /// else the platform's cache directory), which is used by default.
        #[arg(long)]
        no_cache: bool,
    },
    /// Compare outputs: a model against its golden outputs, two models on the
    /// same inputs, or one model under two float policies.
    Parity {
        /// A model directory (with golden inputs), or any model with --input.
        model_a: PathBuf,
        /// A second model, run on the same inputs.
        model_b: Option<PathBuf>,
        /// An input as NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Compare model A under the upcast and the native f16 policy.
        #[arg(long, conflicts_with = "model_b")]
        policies: bool,
        /// Budget to apply (default: from the models' precision).
        #[arg(long, value_enum)]
        precision: Option<Prec>,
    },
    /// Compare two packages: schema, metadata, op histograms and weight
    /// digests. Exit status 0 when they match, 1 when they differ, 2 on error.
    Diff {
        /// The first .mlpackage or model directory.
        a: PathBuf,
        /// The second .mlpackage or model directory.
        b: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure a model: cold and warm prepare, p50/p95/p99 per stage,
    /// throughput and peak RSS.
    Bench(bench_cli::BenchArgs),
    /// Inspect and maintain the compiled-model cache.
    Cache(cache_cli::CacheArgs),
    /// Run the plan's Gates A–D on a model directory and print the verdicts.
    Gates(gates_cli::GatesArgs),
}

/// The primary engine: Core ML (answers `Unavailable` where it does not exist).
fn primary_engine() -> Box<dyn InferenceEngine> {
    Box::new(apple_silicon::core_ml_backend::CoreMlEngine::new())
}

#[derive(Clone, Copy, ValueEnum)]
enum Policy {
    Upcast,
    Native,
}

impl From<Policy> for FloatPolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Upcast => FloatPolicy::Upcast,
            Policy::Native => FloatPolicy::Native,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Prec {
    Fp32,
    Fp16,
    Int8,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Run {
            model,
            inputs,
            output_dir,
            policy,
            timeout_ms,
            no_cache,
        } => run(
            &model,
            &inputs,
            output_dir.as_deref(),
            policy.into(),
            Duration::from_millis(timeout_ms),
            !no_cache,
        ),
        Command::Parity {
            model_a,
            model_b,
            inputs,
            policies,
            precision,
        } => parity_cmd(&model_a, model_b.as_deref(), &inputs, policies, precision),
        Command::Diff { a, b, json } => {
            return match diff_cmd(&a, &b, json) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench(args) => bench_cli::run(args),
        Command::Cache(args) => cache_cli::run(args),
        Command::Gates(args) => gates_cli::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A model directory (with manifest.json) resolves to its package.
fn resolve_model(path: &Path) -> PathBuf {
    if path.join("model.mlpackage").is_dir() {
        path.join("model.mlpackage")
    } else {
        path.to_path_buf()
    }
}

fn inspect(path: &Path, json: bool) -> Result<()> {
    let pkg_path = resolve_model(path);
    let artifact = ModelArtifact::open(&pkg_path)?;
    if artifact.format != ModelFmt::MlPackage {
        return Err(apple_silicon::Error::unsupported(format!(
            "inspecting {} artifacts (only .mlpackage for now)",
            artifact.format
        )));
    }
    let pkg = MlPackage::open(&pkg_path)?;
    let ops = pkg.op_histogram();
    let golden = GoldenModel::open(path).ok();
    // Support is what the plan builder accepts, op instance by op instance
    // (an op type can be known while one of its options is not): build it.
    let candle = mil::Plan::build(&pkg, FloatPolicy::Upcast).err();
    if json {
        let v = serde_json::json!({
            "path": pkg_path,
            "format": artifact.format,
            "sha256": artifact.sha256_hex(),
            "specification_version": pkg.specification_version(),
            "quantization": pkg.quantization(),
            "metadata": pkg.metadata(),
            "io_schema": pkg.io_schema(),
            "ops": ops,
            "candle": match &candle {
                None => serde_json::json!({ "supported": true }),
                Some(e) => serde_json::json!({ "supported": false, "error": e.to_string() }),
            },
            "manifest": golden.map(|g| g.manifest),
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("serialisable"));
        return Ok(());
    }
    println!("model        {}", pkg_path.display());
    println!(
        "format       {} (ML Program, spec version {})",
        artifact.format,
        pkg.specification_version()
    );
    println!("sha256       {}", artifact.sha256_hex());
    println!("weights      {}", pkg.quantization());
    let md = pkg.metadata();
    if !md.short_description.is_empty() {
        println!("description  {}", md.short_description);
    }
    if !md.author.is_empty() {
        println!("author       {}", md.author);
    }
    for (k, v) in &md.user_defined {
        println!("meta         {k} = {v}");
    }
    for (role, specs) in [
        ("input ", &pkg.io_schema().inputs),
        ("output", &pkg.io_schema().outputs),
    ] {
        for s in specs {
            let kind = match &s.kind {
                apple_silicon::FeatureKind::Tensor => String::new(),
                apple_silicon::FeatureKind::Image(i) => format!(
                    "  image {}x{} {:?}, sizes {}",
                    i.width,
                    i.height,
                    i.color,
                    i.describe_sizes()
                ),
                other => format!("  {other:?}"),
            };
            println!(
                "{role}       {:<20} {:<4} {:?}  allowed {}{kind}",
                s.name,
                s.dtype.name(),
                s.shape,
                s.describe_allowed()
            );
        }
    }
    if let Some(c) = &pkg.io_schema().classifier {
        println!(
            "classifier   label `{}`, probabilities `{}`, {} {:?} labels",
            c.label_output,
            c.probabilities_output,
            c.labels.len(),
            c.labels.key_kind()
        );
    }
    let total: usize = ops.values().sum();
    let unsupported = mil::unsupported_ops(&pkg);
    println!(
        "ops          {total} in {} types; Candle interpreter: {}",
        ops.len(),
        match &candle {
            None => "all supported (the plan builds)".to_string(),
            Some(_) if !unsupported.is_empty() => format!("{} op types unsupported", unsupported.len()),
            Some(_) => "refused at prepare".to_string(),
        }
    );
    if let Some(e) = &candle {
        println!("candle       {e}");
    }
    for (op, n) in &ops {
        let mark = if mil::is_supported(op) {
            ""
        } else {
            "  (not supported by the Candle interpreter)"
        };
        println!("  {n:>5}  {op}{mark}");
    }
    Ok(())
}

/// Prints how two packages differ; returns whether they match.
fn diff_cmd(a: &Path, b: &Path, json: bool) -> Result<bool> {
    use apple_silicon::diff::{compare, PackageSummary};
    let sa = PackageSummary::of(&MlPackage::open(resolve_model(a))?)?;
    let sb = PackageSummary::of(&MlPackage::open(resolve_model(b))?)?;
    let report = compare(&sa, &sb);
    if json {
        let v = serde_json::json!({ "a": a, "b": b, "report": report });
        println!("{}", serde_json::to_string_pretty(&v).expect("serialisable"));
    } else {
        println!("a: {}\nb: {}", a.display(), b.display());
        println!("{report}");
    }
    Ok(report.matches)
}

/// Parses NAME=FILE.npy arguments; a name given twice is an error.
fn read_inputs(args: &[String]) -> Result<TensorMap> {
    let mut map = TensorMap::new();
    for a in args {
        let (name, file) = a
            .split_once('=')
            .ok_or_else(|| Error::schema_mismatch("--input argument", "NAME=FILE.npy", format!("`{a}`")))?;
        if map.contains_key(name) {
            return Err(Error::schema_mismatch(
                format!("--input `{name}`"),
                "each input name once",
                format!("`{name}` given more than once"),
            ));
        }
        map.insert(name.to_string(), Tensor::read_npy(file)?);
    }
    Ok(map)
}

/// The artifact behind a path (a model directory resolves to its package),
/// and the golden model when the path is a model directory.
fn open_model(path: &Path) -> Result<(ModelArtifact, Option<GoldenModel>)> {
    let golden = GoldenModel::open(path).ok();
    Ok((ModelArtifact::open(resolve_model(path))?, golden))
}

fn inputs_for(path: &Path, golden: &Option<GoldenModel>, args: &[String]) -> Result<TensorMap> {
    if !args.is_empty() {
        return read_inputs(args);
    }
    match golden {
        Some(g) => g.inputs(),
        None => Err(Error::schema_mismatch(
            format!("inputs for {}", path.display()),
            "--input NAME=FILE.npy, or a model directory with golden inputs",
            "neither",
        )),
    }
}

/// The compiled-model cache for `run`, or `None` (with a warning) when it
/// cannot be opened: a broken cache costs the compiled form, not the run.
fn open_cache() -> Option<Arc<ModelCache>> {
    match CacheConfig::from_env().and_then(|c| ModelCache::open(c, host_meta())) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!(error = %e, "compiled-model cache unavailable; preparing without it");
            eprintln!("warning: compiled-model cache unavailable ({e}); preparing without it");
            None
        }
    }
}

fn run(
    path: &Path,
    args: &[String],
    out_dir: Option<&Path>,
    policy: FloatPolicy,
    timeout: Duration,
    use_cache: bool,
) -> Result<()> {
    let (artifact, golden) = open_model(path)?;
    let inputs = inputs_for(path, &golden, args)?;
    let mut engine = CandleEngine::new().with_float_policy(policy);
    if let Some(cache) = use_cache.then(open_cache).flatten() {
        engine = engine.with_cache(cache);
    }
    let t0 = Instant::now();
    let model = engine.prepare(&artifact, PrepareOptions::default())?;
    let prepared = t0.elapsed();
    let t1 = Instant::now();
    let outputs = engine.infer(model.as_ref(), &inputs, timeout)?;
    let ran = t1.elapsed();
    let caps = engine.capabilities(model.as_ref());
    println!(
        "engine {} on {} ({}); prepare {:.1} ms, inference {:.2} ms",
        caps.engine,
        caps.device_class,
        caps.compute_precision,
        prepared.as_secs_f64() * 1e3,
        ran.as_secs_f64() * 1e3
    );
    for note in &caps.notes {
        println!("note   {note}");
    }
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    for (name, t) in &outputs {
        let preview: Vec<String> = t.to_f32_vec().iter().take(5).map(|v| format!("{v:.5}")).collect();
        println!(
            "output {name:<16} {} {:?}  [{}, ...]",
            t.dtype(),
            t.shape(),
            preview.join(", ")
        );
        if let Some(dir) = out_dir {
            let file = dir.join(format!("{name}.npy"));
            t.write_npy(&file)?;
            println!("  wrote {}", file.display());
        }
    }
    Ok(())
}

fn precision_of(path: &Path, golden: &Option<GoldenModel>) -> Precision {
    if let Some(g) = golden {
        return Precision::from_manifest(&g.manifest.precision, &g.manifest.quantization);
    }
    match MlPackage::open(resolve_model(path)).map(|p| p.quantization()) {
        Ok(q) if q == "fp32" => Precision::Fp32,
        Ok(q) if q == "fp16" => Precision::Fp16,
        Ok(_) => Precision::Int8,
        Err(_) => Precision::Fp32,
    }
}

fn run_once(engine: &CandleEngine, artifact: &ModelArtifact, inputs: &TensorMap) -> Result<TensorMap> {
    let model = engine.prepare(artifact, PrepareOptions::default())?;
    engine.infer(model.as_ref(), inputs, Duration::from_secs(600))
}

fn parity_cmd(a: &Path, b: Option<&Path>, args: &[String], policies: bool, prec: Option<Prec>) -> Result<()> {
    let (art_a, golden_a) = open_model(a)?;
    let inputs = inputs_for(a, &golden_a, args)?;
    let upcast = CandleEngine::new();
    let out_a = run_once(&upcast, &art_a, &inputs)?;
    let mut precision = precision_of(a, &golden_a);
    let (label, out_b) = if let Some(b) = b {
        let (art_b, golden_b) = open_model(b)?;
        let pb = precision_of(b, &golden_b);
        if pb != Precision::Fp32 && (precision == Precision::Fp32 || pb == Precision::Int8) {
            precision = pb;
        }
        (
            format!("{} vs {}", a.display(), b.display()),
            run_once(&upcast, &art_b, &inputs)?,
        )
    } else if policies {
        let native = CandleEngine::new().with_float_policy(FloatPolicy::Native);
        (
            format!("{}: f32 compute vs native f16", a.display()),
            run_once(&native, &art_a, &inputs)?,
        )
    } else {
        let g = golden_a.as_ref().ok_or_else(|| {
            Error::schema_mismatch(
                "parity reference",
                "a second model, --policies, or a model directory with expected outputs",
                "none",
            )
        })?;
        (
            format!("{}: candle vs golden ({})", a.display(), g.manifest.reference),
            g.expected()?,
        )
    };
    let thresholds = match prec {
        Some(Prec::Fp32) => Thresholds::for_precision(Precision::Fp32),
        Some(Prec::Fp16) => Thresholds::for_precision(Precision::Fp16),
        Some(Prec::Int8) => Thresholds::for_precision(Precision::Int8),
        None => Thresholds::for_precision(precision),
    };
    let report = parity::compare(&out_a, &out_b, thresholds)?;
    println!("{label}");
    println!("{report}");
    if report.passed {
        Ok(())
    } else {
        Err(Error::schema_mismatch(
            "parity",
            "every output within budget",
            "an output outside it",
        ))
    }
}
