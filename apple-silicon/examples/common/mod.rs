//! What the operating examples share: finding a model by name, the engine
//! chain on a compiled-model cache, and memory readings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::core_ml_backend::CoreMlEngine;
use apple_silicon::golden::{self, GoldenModel};
use apple_silicon::{CandleEngine, Error, InferenceEngine, ResilientEngine, Result};

/// Which engine serves the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// Core ML first, Candle on the same package when Core ML cannot serve.
    Chain,
    /// Core ML alone (fails where Core ML is unavailable).
    Coreml,
    /// The Candle CPU engine alone.
    Candle,
}

/// A model directory by path, or by id under the downloaded models
/// (`make download-models`) and then the committed fixtures.
pub fn resolve_model(name: &str) -> Result<GoldenModel> {
    let as_path = Path::new(name);
    if as_path.join("manifest.json").is_file() {
        return GoldenModel::open(as_path);
    }
    let roots = [golden::models_dir(), golden::fixtures_dir()];
    for root in &roots {
        let dir = root.join(name);
        if dir.join("manifest.json").is_file() {
            return GoldenModel::open(dir);
        }
    }
    let mut known: Vec<String> = Vec::new();
    for root in &roots {
        known.extend(golden::discover(root)?.into_iter().map(|m| m.id));
    }
    Err(Error::invalid_artifact(
        name,
        format!(
            "--model: expected a model directory or one of [{}] (downloaded models need `make download-models`)",
            known.join(", ")
        ),
    ))
}

/// The compiled-model cache: `dir` if given, else a fresh temporary
/// directory (returned so it lives as long as the run).
pub fn open_cache(dir: Option<&PathBuf>) -> Result<(Arc<ModelCache>, Option<tempfile::TempDir>)> {
    let (root, tmp) = match dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::tempdir().map_err(|e| Error::io("creating a temporary cache directory", e))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    Ok((Arc::new(ModelCache::open(CacheConfig::at(&root), host_meta())?), tmp))
}

/// The engine for `choice`, with both engines compiling through `cache`.
pub fn engine(choice: EngineChoice, cache: &Arc<ModelCache>) -> Box<dyn InferenceEngine> {
    let coreml = || CoreMlEngine::with_store(cache.clone());
    let candle = || CandleEngine::new().with_cache(cache.clone());
    match choice {
        EngineChoice::Chain => Box::new(ResilientEngine::new(Box::new(coreml()), Box::new(candle()))),
        EngineChoice::Coreml => Box::new(coreml()),
        EngineChoice::Candle => Box::new(candle()),
    }
}

/// Bytes as MiB.
pub fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}
