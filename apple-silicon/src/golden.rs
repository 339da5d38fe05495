//! Model directories with golden data, as `scripts/models/` writes them:
//!
//! ```text
//! <id>/manifest.json        the plan's manifest (precision, budgets, io schema, ops, …)
//! <id>/model.mlpackage/     the ML Program
//! <id>/inputs/<name>.npy    golden inputs
//! <id>/expected/<name>.npy  expected outputs, from a reference that is not our engine
//! ```
//!
//! Small fixtures are committed under `tests/fixtures/models`; real models are
//! built under `models/` by `make download-models`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::fsx::{self, Confined};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorMap};

/// A model directory's `manifest.json` larger than this is refused unread
/// (real ones are a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Environment variable naming the downloaded-models directory.
pub const MODELS_DIR_ENV: &str = "APPLE_SILICON_MODELS";

/// The per-model `manifest.json` (the plan's schema). Fields this crate does
/// not interpret are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Model id (the directory name).
    pub model: String,
    /// Where the weights came from.
    #[serde(default)]
    pub source: String,
    /// `mlprogram`.
    #[serde(default)]
    pub backend: String,
    /// `fp32` or `fp16`.
    #[serde(default)]
    pub precision: String,
    /// `none`, `int8`, `palettized4`, …
    #[serde(default)]
    pub quantization: String,
    /// Parity budget: largest allowed absolute difference.
    pub accuracy_delta_l_inf: f64,
    /// Parity budget: largest allowed RMSE.
    pub accuracy_delta_rmse: f64,
    /// What produced the expected outputs.
    #[serde(default)]
    pub reference: String,
    /// MIL op types in the program.
    #[serde(default)]
    pub ops: Vec<String>,
    /// Everything else (io_schema, shapes, expected speedups, top-1 class, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One model directory.
#[derive(Debug, Clone)]
pub struct GoldenModel {
    /// Directory name.
    pub id: String,
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: ModelManifest,
}

impl GoldenModel {
    /// Reads `dir/manifest.json` (a regular file of at most
    /// [`MAX_MANIFEST_BYTES`], not a link; anything else is refused unread).
    pub fn open(dir: impl AsRef<Path>) -> Result<GoldenModel> {
        let dir = dir.as_ref().to_path_buf();
        let mpath = dir.join("manifest.json");
        let text = Confined::open(&dir)?.read("manifest.json", MAX_MANIFEST_BYTES)?;
        let manifest: ModelManifest = serde_json::from_slice(&text)
            .map_err(|e| Error::invalid_artifact(&mpath, format!("not a valid model manifest: {e}")))?;
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(GoldenModel { id, dir, manifest })
    }

    /// `dir/model.mlpackage`.
    pub fn package_path(&self) -> PathBuf {
        self.dir.join("model.mlpackage")
    }

    /// Golden inputs, by name (`inputs/*.npy`, each a regular file opened
    /// without following links; data bounded by the file's size).
    pub fn inputs(&self) -> Result<TensorMap> {
        read_npy_dir(&self.dir, "inputs")
    }

    /// Expected outputs, by name (`expected/*.npy`, read as the inputs are).
    pub fn expected(&self) -> Result<TensorMap> {
        read_npy_dir(&self.dir, "expected")
    }
}

/// Every `<name>.npy` in directory `sub` of `model_dir`, by name: each a
/// regular file opened without following links (`sub` included), its data
/// bounded by the file's size. An empty directory is an error. Reads each
/// file once.
pub fn read_npy_dir(model_dir: &Path, sub: &str) -> Result<TensorMap> {
    let dir = Confined::open(model_dir)?.open_dir(sub)?;
    let shown = dir.root().to_path_buf();
    let mut out = TensorMap::new();
    let entries = std::fs::read_dir(&shown).map_err(|e| Error::io(format!("listing {}", shown.display()), e))?;
    for entry in entries {
        let file_name = entry
            .map_err(|e| Error::io(format!("listing {}", shown.display()), e))?
            .file_name();
        let Some(name) = file_name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".npy") {
            let (f, len) = dir.open_file(name)?;
            let path = shown.join(name);
            let bytes = fsx::read_exact_len(f, len, &path)?;
            out.insert(stem.to_string(), Tensor::from_npy_file_bytes(&bytes, &path)?);
        }
    }
    if out.is_empty() {
        return Err(Error::invalid_artifact(&shown, "holds no .npy files"));
    }
    Ok(out)
}

/// Every model directory directly under `root` (those with a manifest and a
/// package), sorted by id. A missing `root` yields an empty list.
pub fn discover(root: &Path) -> Result<Vec<GoldenModel>> {
    let mut models = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(models);
    };
    for entry in entries {
        let dir = entry
            .map_err(|e| Error::io(format!("listing {}", root.display()), e))?
            .path();
        if dir.join("manifest.json").is_file() && dir.join("model.mlpackage").is_dir() {
            models.push(GoldenModel::open(&dir)?);
        }
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(models)
}

/// The committed fixtures of this source tree (`tests/fixtures/models`).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// Where `make download-models` puts real models: `$APPLE_SILICON_MODELS`, or
/// `models/` in this source tree.
pub fn models_dir() -> PathBuf {
    std::env::var_os(MODELS_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// A downloaded model by id, or an error telling the user how to get it.
pub fn downloaded(id: &str) -> Result<GoldenModel> {
    let dir = models_dir().join(id);
    if !dir.join("manifest.json").is_file() {
        return Err(Error::Unavailable {
            engine: format!("model `{id}`"),
            reason: format!("{} is missing: run `make download-models`", dir.display()),
        });
    }
    GoldenModel::open(dir)
}
