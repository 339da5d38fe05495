//! `apple-silicon gates`: run the plan's Gates A–D on a model and print the
//! verdict table.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::gates::{self, GateAConfig, GateBConfig, GateCConfig, GateDConfig, ParityOutcome, ParityThresholds};
use apple_silicon::golden::GoldenModel;
use apple_silicon::parity::{self, Precision, Thresholds};
use apple_silicon::{CandleEngine, Error, InferenceEngine, ModelArtifact, PrepareOptions, Result, TensorMap};

/// Arguments of `gates`.
#[derive(clap::Args)]
pub struct GatesArgs {
    /// A model directory (manifest, package, golden inputs and outputs).
    model: PathBuf,
    /// Gate A: measured prepare (compile+load) cycles.
    #[arg(long, default_value_t = 50)]
    cycles: usize,
    /// Gate B: measured inferences.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Latency target per inference in ms (Gate B's p99 bound).
    #[arg(long, default_value_t = 1000)]
    sla_ms: u64,
    /// Gate D: soak length in seconds (the plan's is 3600).
    #[arg(long, default_value_t = 20)]
    soak_secs: u64,
    /// Print the verdicts as JSON.
    #[arg(long)]
    json: bool,
}

fn precision_thresholds(g: &GoldenModel) -> Thresholds {
    let p = Precision::from_manifest(&g.manifest.precision, &g.manifest.quantization);
    let budget = Thresholds::for_precision(p);
    Thresholds {
        l_inf: g.manifest.accuracy_delta_l_inf.max(budget.l_inf),
        rmse: g.manifest.accuracy_delta_rmse.max(budget.rmse),
    }
}

/// Runs the gates; fails (non-zero exit) if any applicable gate fails.
pub fn run(args: GatesArgs) -> Result<()> {
    let golden = GoldenModel::open(&args.model)?;
    let artifact = ModelArtifact::open(golden.package_path())?;
    let inputs = golden.inputs()?;
    let expected = golden.expected()?;
    let sla = Duration::from_millis(args.sla_ms);
    let opts = PrepareOptions::default().with_sla(sla);
    // The real compiled-model cache ($APPLE_SILICON_CACHE_DIR or the platform's).
    let cache = Arc::new(ModelCache::open(CacheConfig::from_env()?, host_meta())?);
    let cpu = CandleEngine::new().with_cache(cache.clone());

    let mut verdicts = Vec::new();
    eprintln!("gate A: {} prepare cycles ...", args.cycles);
    let stats = {
        let cache = cache.clone();
        move || {
            let s = cache.stats();
            (s.hits, s.misses)
        }
    };
    let a_cfg = GateAConfig::default().with_cycles(args.cycles).with_warmup(5);
    verdicts.push(gates::gate_a(&cpu, &artifact, &opts, Some(&stats), &a_cfg));

    eprintln!("gate B: {} inferences ...", args.iterations);
    let model = cpu.prepare(&artifact, opts.clone())?;
    let t = precision_thresholds(&golden);
    let compare = move |got: &TensorMap, want: &TensorMap| match parity::compare(got, want, t) {
        Ok(r) => {
            let w = r.worst().cloned();
            ParityOutcome {
                passed: r.passed,
                max_abs: w.as_ref().map_or(0.0, |o| o.l_inf),
                rmse: r.outputs.iter().map(|o| o.rmse).fold(0.0, f64::max),
                detail: w.map_or_else(String::new, |o| {
                    format!("worst output `{}` at [{}]", o.name, o.worst_index)
                }),
            }
        }
        Err(e) => ParityOutcome {
            passed: false,
            max_abs: f64::INFINITY,
            rmse: f64::INFINITY,
            detail: e.to_string(),
        },
    };
    let b_cfg = GateBConfig::default()
        .with_iterations(args.iterations)
        .with_sla(sla)
        .with_reference(&expected)
        .with_parity(&compare)
        .with_thresholds(ParityThresholds {
            max_abs: t.l_inf,
            rmse: t.rmse,
        });
    verdicts.push(gates::gate_b(&cpu, model.as_ref(), &inputs, &b_cfg));

    eprintln!("gate C: primary vs CPU ...");
    let primary = super::primary_engine();
    verdicts.push(gates::gate_c(
        primary.as_ref(),
        &cpu,
        &artifact,
        &opts,
        &inputs,
        &GateCConfig::default(),
    ));

    eprintln!("gate D: {} s soak ...", args.soak_secs);
    let soak = Duration::from_secs(args.soak_secs.max(3));
    let d_cfg = GateDConfig::default().with_duration(soak, soak / 10);
    verdicts.push(gates::gate_d(&cpu, model.as_ref(), &inputs, &d_cfg));

    if args.json {
        println!("{}", serde_json::to_string_pretty(&verdicts).expect("serialisable"));
    } else {
        println!("{}", gates::render_table(&verdicts));
    }
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|v| !v.passed() && !v.is_not_applicable())
        .map(|v| v.gate.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::schema_mismatch(
            "gates",
            "every applicable gate to pass",
            format!("failed: {failed:?}"),
        ))
    }
}
