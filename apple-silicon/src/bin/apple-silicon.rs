//! `apple-silicon`: inspect and run Core ML models from the command line.

mod cache_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use apple_silicon::golden::GoldenModel;
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::{ModelArtifact, ModelFmt, Result};
use clap::{Parser, Subcommand};

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
    /// Inspect and maintain the compiled-model cache.
    Cache(cache_cli::CacheArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Cache(args) => cache_cli::run(args),
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
            println!(
                "{role}       {:<20} {:<4} {:?}  allowed {}",
                s.name,
                s.dtype.name(),
                s.shape,
                s.describe_allowed()
            );
        }
    }
    let total: usize = ops.values().sum();
    println!("ops          {total} in {} types", ops.len());
    for (op, n) in &ops {
        println!("  {n:>5}  {op}");
    }
    Ok(())
}
