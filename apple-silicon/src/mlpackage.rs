//! Reading Core ML `.mlpackage` directories, in pure Rust on every host.
//!
//! A package is `Manifest.json` plus the items it lists under `Data/`: the
//! protobuf spec (`CoreML.Specification.Model`, decoded with `coreml-proto`)
//! and the ML Program's `weights/weight.bin` ([`crate::milblob`]). Opening a
//! package validates the manifest, refuses paths that leave the package,
//! refuses specs too large for protobuf (over 2 GiB) and anything that is not
//! an ML Program, and decodes the spec once. Weights are mapped lazily.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use coreml_proto::proto::mil_spec::{self, Block, Function, Program};
use coreml_proto::proto::{array_feature_type, feature_type, model, FeatureDescription, Model};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inference::{IoSchema, ShapeConstraint, TensorSpec};
use crate::milblob::WeightFile;
use crate::tensor::DType;

/// Protobuf cannot parse messages of 2 GiB or more.
pub const MAX_SPEC_BYTES: u64 = (i32::MAX as u64) - 1;

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
#[derive(Debug)]
pub struct MlPackage {
    root: PathBuf,
    manifest: Manifest,
    spec_path: PathBuf,
    spec: Model,
    schema: IoSchema,
}

impl MlPackage {
    /// Opens and validates a package; decodes its spec. Costs one read of
    /// the spec file (weights are not read).
    pub fn open(path: impl AsRef<Path>) -> Result<MlPackage> {
        let root = path.as_ref().to_path_buf();
        let bad = |reason: String| Error::invalid_artifact(&root, reason);
        if !root.is_dir() {
            return Err(bad("an .mlpackage must be a directory".into()));
        }
        let manifest_path = root.join("Manifest.json");
        let text = read_small_file(&manifest_path, 1 << 20).map_err(|e| bad(format!("Manifest.json: {e}")))?;
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
        let spec_path = resolve_inside(&root.join("Data"), &root_item.path).map_err(bad)?;
        let meta =
            fs::symlink_metadata(&spec_path).map_err(|e| bad(format!("model spec {}: {e}", spec_path.display())))?;
        if !meta.is_file() {
            return Err(bad(format!("model spec {} is not a regular file", spec_path.display())));
        }
        if meta.len() > MAX_SPEC_BYTES {
            return Err(bad(format!(
                "model spec is {} bytes; protobuf cannot parse a spec of 2 GiB or more (move weights to weight.bin)",
                meta.len()
            )));
        }
        let bytes = fs::read(&spec_path).map_err(|e| Error::io(format!("reading {}", spec_path.display()), e))?;
        let spec = Model::decode(bytes.as_slice())
            .map_err(|e| bad(format!("model spec is not a valid Core ML protobuf: {e}")))?;
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
        let main = main_function(program, &spec).map_err(bad)?;
        let schema = build_schema(&spec, main).map_err(bad)?;
        Ok(MlPackage {
            root,
            manifest,
            spec_path,
            spec,
            schema,
        })
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

    /// The function Core ML runs by default (`main`), checked at open.
    pub fn main_function(&self) -> &Function {
        main_function(self.program(), &self.spec).expect("checked at open")
    }

    /// The main function's block for its opset (e.g. `CoreML6`).
    pub fn main_block(&self) -> Result<&Block> {
        let f = self.main_function();
        f.block_specializations.get(&f.opset).ok_or_else(|| {
            Error::invalid_artifact(
                &self.root,
                format!("main function has no block for its opset `{}`", f.opset),
            )
        })
    }

    /// Inputs and outputs with dtypes, shapes and shape constraints.
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
    /// `@model_path/weights/weight.bin`, refusing paths outside the package.
    pub fn resolve_blob_file(&self, file_name: &str) -> Result<PathBuf> {
        let rel = file_name.strip_prefix("@model_path/").ok_or_else(|| {
            Error::invalid_artifact(
                &self.root,
                format!("blob file `{file_name}` does not start with @model_path/"),
            )
        })?;
        resolve_inside(self.model_dir(), rel).map_err(|r| Error::invalid_artifact(&self.root, r))
    }

    /// Maps a weight file named by a `blobFileValue.fileName`.
    pub fn open_weights(&self, file_name: &str) -> Result<WeightFile> {
        WeightFile::open(self.resolve_blob_file(file_name)?)
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

fn main_function<'a>(program: &'a Program, spec: &Model) -> std::result::Result<&'a Function, String> {
    let name = spec
        .description
        .as_ref()
        .map(|d| d.default_function_name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("main");
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

fn read_small_file(path: &Path, limit: u64) -> std::result::Result<Vec<u8>, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > limit {
        return Err(format!("{} bytes is more than the {limit} allowed", meta.len()));
    }
    fs::read(path).map_err(|e| e.to_string())
}

/// Joins a relative path from a manifest or spec onto `base`, refusing
/// absolute paths, `..` and symbolic links on the way.
fn resolve_inside(base: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || rel_path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("path `{rel}` leaves the package"));
    }
    let mut cur = base.to_path_buf();
    for c in rel_path.components() {
        cur.push(c);
        if let Ok(m) = fs::symlink_metadata(&cur) {
            if m.file_type().is_symlink() {
                return Err(format!("path `{rel}` goes through a symbolic link"));
            }
        }
    }
    Ok(cur)
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

/// Maps a Core ML array dtype code to ours.
pub fn array_dtype(code: i32) -> Option<DType> {
    use array_feature_type::ArrayDataType as A;
    Some(match A::try_from(code).ok()? {
        A::Float32 => DType::F32,
        A::Float16 => DType::F16,
        A::Double => DType::F64,
        A::Int32 => DType::I32,
        A::Int8 => DType::I8,
        A::InvalidArrayDataType => return None,
    })
}

/// Maps a MIL tensor dtype to ours, where one exists.
pub fn mil_dtype(code: i32) -> Option<DType> {
    use mil_spec::DataType as D;
    Some(match D::try_from(code).ok()? {
        D::Float32 => DType::F32,
        D::Float16 => DType::F16,
        D::Float64 => DType::F64,
        D::Int32 => DType::I32,
        D::Int64 => DType::I64,
        D::Int8 => DType::I8,
        D::Uint8 | D::Bool => DType::U8,
        _ => return None,
    })
}

/// Type of a value produced inside the program, by name (function inputs and
/// op outputs of the main block).
fn program_types(main: &Function) -> HashMap<&str, &mil_spec::TensorType> {
    let mut types = HashMap::new();
    for v in &main.inputs {
        if let Some(mil_spec::value_type::Type::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
            types.insert(v.name.as_str(), t);
        }
    }
    if let Some(block) = main.block_specializations.get(&main.opset) {
        for op in &block.operations {
            for o in &op.outputs {
                if let Some(mil_spec::value_type::Type::TensorType(t)) =
                    o.r#type.as_ref().and_then(|t| t.r#type.as_ref())
                {
                    types.insert(o.name.as_str(), t);
                }
            }
        }
    }
    types
}

fn mil_shape(t: &mil_spec::TensorType) -> Option<Vec<usize>> {
    t.dimensions
        .iter()
        .map(|d| match d.dimension {
            Some(mil_spec::dimension::Dimension::Constant(c)) => usize::try_from(c.size).ok(),
            _ => None,
        })
        .collect()
}

fn build_schema(spec: &Model, main: &Function) -> std::result::Result<IoSchema, String> {
    let desc = spec.description.as_ref().ok_or("the spec has no model description")?;
    let types = program_types(main);
    let inputs = desc
        .input
        .iter()
        .map(|f| feature_spec(f, &types, "input"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let outputs = desc
        .output
        .iter()
        .map(|f| feature_spec(f, &types, "output"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err(format!(
            "the model declares {} inputs and {} outputs; both must be at least 1",
            inputs.len(),
            outputs.len()
        ));
    }
    Ok(IoSchema { inputs, outputs })
}

fn feature_spec(
    f: &FeatureDescription,
    types: &HashMap<&str, &mil_spec::TensorType>,
    role: &str,
) -> std::result::Result<TensorSpec, String> {
    let arr = match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(feature_type::Type::MultiArrayType(a)) => a,
        Some(other) => {
            let kind = match other {
                feature_type::Type::ImageType(_) => "image",
                feature_type::Type::Int64Type(_) => "int64 scalar",
                feature_type::Type::DoubleType(_) => "double scalar",
                feature_type::Type::StringType(_) => "string",
                feature_type::Type::DictionaryType(_) => "dictionary",
                feature_type::Type::SequenceType(_) => "sequence",
                feature_type::Type::StateType(_) => "state",
                feature_type::Type::MultiArrayType(_) => unreachable!(),
            };
            return Err(format!(
                "{role} `{}` is a {kind} feature; only multi-array features are supported",
                f.name
            ));
        }
        None => return Err(format!("{role} `{}` has no type", f.name)),
    };
    let prog_type = types.get(f.name.as_str());
    let dtype = match array_dtype(arr.data_type) {
        Some(d) => d,
        // ML Program outputs often leave the dtype unset: take the program's.
        None => prog_type.and_then(|t| mil_dtype(t.data_type)).ok_or_else(|| {
            format!(
                "{role} `{}` has an unknown or unsupported dtype (code {})",
                f.name, arr.data_type
            )
        })?,
    };
    let mut shape: Vec<usize> = arr
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("{role} `{}` has a negative dimension {d}", f.name)))
        .collect::<std::result::Result<_, _>>()?;
    if shape.is_empty() {
        if let Some(s) = prog_type.and_then(|t| mil_shape(t)) {
            shape = s;
        }
    }
    let constraint = match &arr.shape_flexibility {
        None => ShapeConstraint::Fixed,
        Some(array_feature_type::ShapeFlexibility::EnumeratedShapes(e)) => ShapeConstraint::Enumerated(
            e.shapes
                .iter()
                .map(|s| s.shape.iter().map(|&d| d.max(0) as usize).collect())
                .collect(),
        ),
        Some(array_feature_type::ShapeFlexibility::ShapeRange(r)) => ShapeConstraint::Range(
            r.size_ranges
                .iter()
                .map(|s| {
                    let lo = s.lower_bound as usize;
                    let hi = if s.upper_bound < 0 {
                        None
                    } else {
                        Some(s.upper_bound as usize)
                    };
                    (lo, hi)
                })
                .collect(),
        ),
    };
    let batch_capable = match &constraint {
        ShapeConstraint::Fixed => false,
        ShapeConstraint::Enumerated(list) => list.iter().any(|s| s.first() != shape.first()),
        ShapeConstraint::Range(r) => r.first().is_some_and(|&(lo, hi)| hi != Some(lo)),
    };
    Ok(TensorSpec {
        name: f.name.clone(),
        shape,
        dtype,
        batch_capable,
        constraint,
    })
}
