//! Reading Core ML `.mlpackage` directories, in pure Rust on every host.
//!
//! A package is `Manifest.json` plus the items it lists under `Data/`: the
//! protobuf spec (`CoreML.Specification.Model`, decoded with `coreml-proto`)
//! and the ML Program's `weights/weight.bin` ([`crate::milblob`]). Opening a
//! package validates the manifest, refuses paths that leave the package,
//! refuses specs too large for protobuf (over 2 GiB) and anything that is not
//! an ML Program, and decodes the spec once. Weights are mapped lazily.

mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coreml_proto::proto::mil_spec::{self, Block, Function, Program};
use coreml_proto::proto::{model, Model};
use prost::Message;
use serde::{Deserialize, Serialize};

pub(crate) use self::schema::class_labels;
pub use self::schema::{array_dtype, mil_dtype};
use crate::cache::fsx::{self, Confined};
use crate::digest::{self, TreeSnapshot};
use crate::error::{Error, Result};
use crate::inference::{FunctionSet, IoSchema};
use crate::milblob::WeightFile;

/// Protobuf cannot parse messages of 2 GiB or more.
pub const MAX_SPEC_BYTES: u64 = (i32::MAX as u64) - 1;

/// `Manifest.json` larger than this is refused unread (real ones are < 1 KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// `Manifest.json` of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Package format version, e.g. `1.0.0`.
    pub file_format_version: String,
    /// Items by identifier.
    pub item_info_entries: BTreeMap<String, ItemInfo>,
    /// Identifier of the item holding the model spec.
    pub root_model_identifier: String,
}

/// One entry of [`Manifest::item_info_entries`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemInfo {
    /// Who wrote it (`com.apple.CoreML`).
    #[serde(default)]
    pub author: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// File name.
    #[serde(default)]
    pub name: String,
    /// Path relative to the package's `Data/` directory.
    pub path: String,
}

/// Descriptive metadata from the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub short_description: String,
    pub version: String,
    pub author: String,
    pub license: String,
    /// User-defined key/value pairs, sorted.
    pub user_defined: BTreeMap<String, String>,
}

/// An opened, validated `.mlpackage` holding an ML Program.
///
/// Every file it reads (the manifest, the spec, weight files) is opened
/// relative to the package directory without following links at any level,
/// and only if it is a regular file: a package cannot make the library read
/// outside itself, block on a FIFO or stream a device.
#[derive(Debug)]
pub struct MlPackage {
    root: PathBuf,
    source: Source,
    manifest: Manifest,
    /// The spec's path inside the package (`Data/…`), normalised.
    spec_rel: Vec<String>,
    spec_path: PathBuf,
    spec: Model,
    spec_sha256: [u8; 32],
    /// The function plans are built from and the schema describes.
    function: String,
    schema: IoSchema,
}

/// Where a package's files come from.
enum Source {
    /// Opened on demand below the package's root.
    Disk(Confined),
    /// Read once into memory, with the digest of what was read.
    Memory(Arc<TreeSnapshot>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Disk(c) => write!(f, "Disk({})", c.root().display()),
            Source::Memory(s) => write!(f, "Memory({}, {} files)", s.root.display(), s.files.len()),
        }
    }
}

/// Joins `rel` (a path found inside the package) onto `base` (normalised
/// components) and normalises the result, which must stay under `Data/`.
fn inside_data(base: &[String], rel: &str) -> std::result::Result<Vec<String>, String> {
    let leaves = || format!("path `{rel}` leaves the package's Data directory");
    if rel.is_empty() || Path::new(rel).has_root() {
        return Err(leaves());
    }
    let joined = format!("{}/{rel}", base.join("/"));
    let parts = fsx::normalize(&joined).ok_or_else(leaves)?;
    if parts.len() < 2 || parts[0] != "Data" {
        return Err(leaves());
    }
    Ok(parts)
}

impl MlPackage {
    /// Opens and validates a package; decodes its spec. Costs one read of
    /// the manifest and the spec (weights are mapped when a plan asks for them).
    pub fn open(path: impl AsRef<Path>) -> Result<MlPackage> {
        let root = path.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::invalid_artifact(&root, "an .mlpackage must be a directory"));
        }
        let source = Source::Disk(Confined::open(&root)?);
        MlPackage::from_source(root, source)
    }

    /// Like [`MlPackage::open`], but reads every file of the package into
    /// memory once and hashes exactly those bytes ([`MlPackage::sha256`]):
    /// what is checked against an artifact's digest is then what plans are
    /// built from, whatever happens on disk afterwards. Costs one read of the
    /// whole package and its size in memory for the package's lifetime.
    pub fn open_in_memory(path: impl AsRef<Path>) -> Result<MlPackage> {
        let root = path.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::invalid_artifact(&root, "an .mlpackage must be a directory"));
        }
        let snap = digest::read_tree(&root)?;
        MlPackage::from_source(root, Source::Memory(Arc::new(snap)))
    }

    /// The SHA-256 ([`crate::digest::sha256_path`]) of the bytes a package
    /// opened with [`MlPackage::open_in_memory`] holds; `None` for one read
    /// from disk on demand.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        match &self.source {
            Source::Memory(s) => Some(s.sha256),
            Source::Disk(_) => None,
        }
    }

    fn from_source(root: PathBuf, source: Source) -> Result<MlPackage> {
        let bad = |reason: String| Error::invalid_artifact(&root, reason);
        let text = read_from(&source, &root, "Manifest.json", MAX_MANIFEST_BYTES)?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| bad(format!("Manifest.json is not a valid manifest: {e}")))?;
        let root_item = manifest
            .item_info_entries
            .get(&manifest.root_model_identifier)
            .ok_or_else(|| {
                bad(format!(
                    "Manifest.json's rootModelIdentifier `{}` names no item",
                    manifest.root_model_identifier
                ))
            })?;
        let spec_rel = inside_data(&["Data".to_string()], &root_item.path).map_err(bad)?;
        let spec_path = root.join(spec_rel.join("/"));
        let bytes = read_from(&source, &root, &spec_rel.join("/"), MAX_SPEC_BYTES).map_err(|e| match e {
            Error::InvalidArtifact { reason, .. } if reason.contains("allowed for this file") => bad(format!(
                "model spec: {reason}; protobuf cannot parse a spec of 2 GiB or more (move weights to weight.bin)"
            )),
            other => other,
        })?;
        let spec = Model::decode(bytes.as_slice())
            .map_err(|e| bad(format!("model spec is not a valid Core ML protobuf: {e}")))?;
        let spec_sha256 = {
            use sha2::Digest;
            sha2::Sha256::digest(bytes.as_slice()).into()
        };
        drop(bytes);
        let program = match &spec.r#type {
            Some(model::Type::MlProgram(p)) => p,
            Some(other) => {
                return Err(bad(format!(
                    "holds a {} model; only ML Program packages are supported",
                    model_type_name(other)
                )))
            }
            None => return Err(bad("the spec holds no model".into())),
        };
        let (names, default) = schema::function_list(&spec, program).map_err(bad)?;
        let main = function_named(program, &default).map_err(bad)?;
        let functions = FunctionSet {
            selected: (!names.is_empty()).then(|| default.clone()),
            default: (!names.is_empty()).then(|| default.clone()),
            names,
        };
        let schema = schema::build_schema(&spec, &default, main, functions).map_err(bad)?;
        Ok(MlPackage {
            root,
            source,
            manifest,
            spec_rel,
            spec_path,
            spec,
            spec_sha256,
            function: default,
            schema,
        })
    }

    /// The SHA-256 of the spec's bytes as read (`model.mlmodel`, not the
    /// weights): lets a cache tell, from one small read, whether a package's
    /// spec is the one a compiled form was built from. Free (computed at open).
    pub fn spec_sha256(&self) -> [u8; 32] {
        self.spec_sha256
    }

    /// Selects the function plans are built from and the schema describes
    /// (a multifunction package's `functions`; the default one is selected
    /// at open). A single-function package accepts only its one function's
    /// name. An unknown name is a [`Error::SchemaMismatch`] naming the
    /// package's functions. Costs one schema extraction.
    pub fn select_function(mut self, name: &str) -> Result<MlPackage> {
        if name == self.function {
            return Ok(self);
        }
        let names = if self.schema.functions.names.is_empty() {
            vec![self.function.clone()]
        } else {
            self.schema.functions.names.clone()
        };
        if !names.iter().any(|n| n == name) {
            return Err(Error::schema_mismatch(
                format!("function of {}", self.root.display()),
                format!("one of the package's functions {names:?}"),
                format!("`{name}`"),
            ));
        }
        let main = function_named(self.program(), name).map_err(|r| Error::invalid_artifact(&self.root, r))?;
        let mut functions = self.schema.functions.clone();
        functions.selected = Some(name.to_string());
        self.schema = schema::build_schema(&self.spec, name, main, functions)
            .map_err(|r| Error::invalid_artifact(&self.root, format!("function `{name}`: {r}")))?;
        self.function = name.to_string();
        Ok(self)
    }

    /// The selected function's name (`main` for most packages; see
    /// [`MlPackage::select_function`]).
    pub fn function_name(&self) -> &str {
        &self.function
    }

    /// The package directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The decoded spec.
    pub fn spec(&self) -> &Model {
        &self.spec
    }

    /// Core ML specification version (7 = macOS 13, 8 = macOS 14, …).
    pub fn specification_version(&self) -> i32 {
        self.spec.specification_version
    }

    /// The ML Program (checked at open).
    pub fn program(&self) -> &Program {
        match &self.spec.r#type {
            Some(model::Type::MlProgram(p)) => p,
            _ => unreachable!("open() accepts only ML Programs"),
        }
    }

    /// The selected function: the one Core ML runs by default (`main`, or a
    /// multifunction package's default) unless [`MlPackage::select_function`]
    /// chose another. Checked at open.
    pub fn main_function(&self) -> &Function {
        function_named(self.program(), &self.function).expect("checked at open")
    }

    /// The selected function's block for its opset (e.g. `CoreML6`).
    pub fn main_block(&self) -> Result<&Block> {
        let f = self.main_function();
        f.block_specializations.get(&f.opset).ok_or_else(|| {
            Error::invalid_artifact(
                &self.root,
                format!("main function has no block for its opset `{}`", f.opset),
            )
        })
    }

    /// Inputs and outputs (of the selected function) with dtypes, shapes
    /// and shape constraints; the package's functions.
    pub fn io_schema(&self) -> &IoSchema {
        &self.schema
    }

    /// Descriptive metadata.
    pub fn metadata(&self) -> ModelMetadata {
        let Some(m) = self.spec.description.as_ref().and_then(|d| d.metadata.as_ref()) else {
            return ModelMetadata::default();
        };
        ModelMetadata {
            short_description: m.short_description.clone(),
            version: m.version_string.clone(),
            author: m.author.clone(),
            license: m.license.clone(),
            user_defined: m.user_defined.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// How many times each op type occurs in the main function (nested blocks
    /// included).
    pub fn op_histogram(&self) -> BTreeMap<String, usize> {
        let mut h = BTreeMap::new();
        if let Ok(block) = self.main_block() {
            count_ops(block, &mut h);
        }
        h
    }

    /// The directory `@model_path` refers to (the one holding the spec).
    pub fn model_dir(&self) -> &Path {
        self.spec_path.parent().expect("spec path has a parent")
    }

    /// Resolves a `blobFileValue.fileName` such as
    /// `@model_path/weights/weight.bin` to its path inside the package
    /// (`Data/…`, normalised), refusing paths that leave `Data/`.
    fn blob_rel(&self, file_name: &str) -> Result<String> {
        let rel = file_name.strip_prefix("@model_path/").ok_or_else(|| {
            Error::invalid_artifact(
                &self.root,
                format!("blob file `{file_name}` does not start with @model_path/"),
            )
        })?;
        let dir = &self.spec_rel[..self.spec_rel.len() - 1];
        inside_data(dir, rel)
            .map(|p| p.join("/"))
            .map_err(|r| Error::invalid_artifact(&self.root, r))
    }

    /// Where a `blobFileValue.fileName` such as `@model_path/weights/weight.bin`
    /// lies, refusing paths outside the package's `Data/` (for messages: the
    /// file is read with [`MlPackage::open_weights`]).
    pub fn resolve_blob_file(&self, file_name: &str) -> Result<PathBuf> {
        Ok(self.root.join(self.blob_rel(file_name)?))
    }

    /// Opens a weight file named by a `blobFileValue.fileName`: mapped from
    /// disk (opened without following links, regular files only), or shared
    /// from memory for a package opened with [`MlPackage::open_in_memory`].
    pub fn open_weights(&self, file_name: &str) -> Result<WeightFile> {
        let rel = self.blob_rel(file_name)?;
        let shown = self.root.join(&rel);
        match &self.source {
            Source::Disk(c) => {
                let (f, _) = c.open_file(&rel)?;
                WeightFile::from_file(f, shown)
            }
            Source::Memory(s) => {
                let bytes = s.files.get(&rel).ok_or_else(|| {
                    Error::invalid_artifact(&self.root, format!("weight file `{rel}` is not in the package"))
                })?;
                WeightFile::from_shared(Arc::clone(bytes), shown)
            }
        }
    }

    /// `fp32`, `fp16`, `int8`, `palettized` or `sparse`: the weight storage,
    /// for cache keys and reports (judged from the constexpr ops and the
    /// dtype of stored constants).
    pub fn quantization(&self) -> String {
        let ops = self.op_histogram();
        let has = |name: &str| ops.keys().any(|k| k.starts_with(name));
        if has("constexpr_lut_to_dense") {
            "palettized".into()
        } else if has("constexpr_affine_dequantize") || has("constexpr_blockwise_shift_scale") {
            "int8".into()
        } else if has("constexpr_sparse_to_dense") {
            "sparse".into()
        } else if self.stores_fp16_constants() {
            "fp16".into()
        } else {
            "fp32".into()
        }
    }

    fn stores_fp16_constants(&self) -> bool {
        let Ok(block) = self.main_block() else { return false };
        block.operations.iter().any(|op| {
            op.r#type == "const" && op.outputs.iter().any(|o| {
                matches!(
                    o.r#type.as_ref().and_then(|t| t.r#type.as_ref()),
                    Some(mil_spec::value_type::Type::TensorType(t)) if t.data_type == mil_spec::DataType::Float16 as i32
                )
            })
        })
    }

    /// The inputs' default shapes joined for cache keys, e.g. `1x3x224x224`
    /// (inputs separated by `_`).
    pub fn shape_key(&self) -> String {
        self.schema
            .inputs
            .iter()
            .map(|s| s.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"))
            .collect::<Vec<_>>()
            .join("_")
    }
}

fn function_named<'a>(program: &'a Program, name: &str) -> std::result::Result<&'a Function, String> {
    program
        .functions
        .get(name)
        .ok_or_else(|| format!("the ML Program has no `{name}` function"))
}

fn count_ops(block: &Block, h: &mut BTreeMap<String, usize>) {
    for op in &block.operations {
        *h.entry(op.r#type.clone()).or_default() += 1;
        for b in &op.blocks {
            count_ops(b, h);
        }
    }
}

/// Reads the package file `rel` (normalised, `/`-separated) from `source`,
/// refusing it unread past `limit` bytes.
fn read_from(source: &Source, root: &Path, rel: &str, limit: u64) -> Result<Arc<Vec<u8>>> {
    match source {
        Source::Disk(c) => c.read(rel, limit).map(Arc::new),
        Source::Memory(s) => {
            let b = s
                .files
                .get(rel)
                .ok_or_else(|| Error::invalid_artifact(root, format!("`{rel}` is not in the package")))?;
            if b.len() as u64 > limit {
                return Err(Error::invalid_artifact(
                    root.join(rel),
                    format!("{} bytes is more than the {limit} allowed for this file", b.len()),
                ));
            }
            let bytes = b
                .get()
                .ok_or_else(|| Error::internal(format!("`{rel}` was partly released by a plan build")))?;
            Ok(Arc::new(bytes.to_vec()))
        }
    }
}

fn model_type_name(t: &model::Type) -> &'static str {
    match t {
        model::Type::NeuralNetwork(_) => "NeuralNetwork",
        model::Type::NeuralNetworkClassifier(_) => "NeuralNetworkClassifier",
        model::Type::NeuralNetworkRegressor(_) => "NeuralNetworkRegressor",
        model::Type::Pipeline(_) | model::Type::PipelineClassifier(_) | model::Type::PipelineRegressor(_) => "Pipeline",
        model::Type::MlProgram(_) => "ML Program",
        _ => "non-neural (classic Core ML)",
    }
}
