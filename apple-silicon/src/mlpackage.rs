//! Reading Core ML `.mlpackage` directories, in pure Rust on every host.
//!
//! A package is `Manifest.json` plus the items it lists under `Data/`: the
//! protobuf spec (`CoreML.Specification.Model`, decoded with `coreml-proto`)
//! and the ML Program's `weights/weight.bin` ([`crate::milblob`]). Opening a
//! package validates the manifest, refuses paths that leave the package,
//! refuses specs too large for protobuf (over 2 GiB) and anything that is not
//! an ML Program, and decodes the spec once. Weights are mapped lazily.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coreml_proto::proto::mil_spec::{self, Block, Function, Program};
use coreml_proto::proto::{array_feature_type, feature_type, model, FeatureDescription, Model};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::cache::fsx::{self, Confined};
use crate::digest::{self, TreeSnapshot};
use crate::error::{Error, Result};
use crate::feature::{ClassLabels, ClassifierSpec, ColorLayout, FeatureKind, ImageSizes, ImageSpec, KeyKind};
use crate::inference::{IoSchema, ShapeConstraint, TensorSpec};
use crate::milblob::WeightFile;
use crate::tensor::DType;

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
        let main = main_function(program, &spec).map_err(bad)?;
        let schema = build_schema(&spec, main).map_err(bad)?;
        Ok(MlPackage {
            root,
            source,
            manifest,
            spec_rel,
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
            Ok(Arc::clone(b))
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
    let classifier = classifier_spec(desc, main)?;
    let inputs = desc
        .input
        .iter()
        .map(|f| feature_spec(f, &types, "input", classifier.as_ref()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let outputs = desc
        .output
        .iter()
        .map(|f| feature_spec(f, &types, "output", classifier.as_ref()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err(format!(
            "the model declares {} inputs and {} outputs; both must be at least 1",
            inputs.len(),
            outputs.len()
        ));
    }
    if let Some(c) = &classifier {
        for name in [&c.label_output, &c.probabilities_output] {
            if !outputs.iter().any(|o| &o.name == name) {
                return Err(format!(
                    "the classifier's output `{name}` is not among the model's outputs"
                ));
            }
        }
    }
    let states = state_specs(desc, main)?;
    Ok(IoSchema {
        inputs,
        outputs,
        states,
        classifier,
        functions: Default::default(),
    })
}

/// A classifier's outputs and label set: the description names the outputs
/// (`predictedFeatureName`, `predictedProbabilitiesName`), the program's
/// `classify` op holds the labels (its `classes` literal).
fn classifier_spec(
    desc: &coreml_proto::proto::ModelDescription,
    main: &Function,
) -> std::result::Result<Option<ClassifierSpec>, String> {
    let label = desc.predicted_feature_name.as_str();
    let probs = desc.predicted_probabilities_name.as_str();
    if label.is_empty() && probs.is_empty() {
        return Ok(None);
    }
    let classify = main
        .block_specializations
        .get(&main.opset)
        .and_then(|b| b.operations.iter().find(|op| op.r#type == "classify"));
    let Some(op) = classify else {
        return Err(format!(
            "the model description names classifier outputs (`{label}`, `{probs}`) but the program has no \
             `classify` op holding the label set"
        ));
    };
    let v = match op
        .inputs
        .get("classes")
        .and_then(|a| a.arguments.first())
        .and_then(|a| a.binding.as_ref())
    {
        Some(mil_spec::argument::binding::Binding::Value(v)) => v,
        _ => return Err("the `classify` op's `classes` is not a list literal (the label set is missing)".into()),
    };
    let labels = class_labels(v)?;
    if labels.is_empty() {
        return Err("the `classify` op's label set is empty".into());
    }
    let name_of = |i: usize| op.outputs.get(i).map(|o| o.name.clone()).unwrap_or_default();
    Ok(Some(ClassifierSpec {
        label_output: if label.is_empty() {
            name_of(0)
        } else {
            label.to_string()
        },
        probabilities_output: if probs.is_empty() {
            name_of(1)
        } else {
            probs.to_string()
        },
        labels,
    }))
}

/// The labels of a `classify` op's `classes` list literal: all int64 or all
/// strings.
pub(crate) fn class_labels(v: &mil_spec::Value) -> std::result::Result<ClassLabels, String> {
    use mil_spec::{tensor_value, value};
    let Some(value::Value::ImmediateValue(iv)) = &v.value else {
        return Err("`classes` is not an immediate list".into());
    };
    let Some(value::immediate_value::Value::List(list)) = &iv.value else {
        return Err("`classes` is not a list".into());
    };
    let mut ints = Vec::new();
    let mut strings = Vec::new();
    for (i, e) in list.values.iter().enumerate() {
        let t = match &e.value {
            Some(value::Value::ImmediateValue(iv)) => match &iv.value {
                Some(value::immediate_value::Value::Tensor(t)) => t,
                _ => return Err(format!("label {i} of `classes` is not a tensor")),
            },
            _ => return Err(format!("label {i} of `classes` is not an immediate value")),
        };
        match &t.value {
            Some(tensor_value::Value::LongInts(l)) if l.values.len() == 1 => ints.push(l.values[0]),
            Some(tensor_value::Value::Ints(l)) if l.values.len() == 1 => ints.push(l.values[0] as i64),
            Some(tensor_value::Value::Strings(l)) if l.values.len() == 1 => strings.push(l.values[0].clone()),
            _ => return Err(format!("label {i} of `classes` is not one int64 or one string")),
        }
    }
    match (ints.is_empty(), strings.is_empty()) {
        (_, true) => Ok(ClassLabels::Int64(ints)),
        (true, false) => Ok(ClassLabels::Strings(strings)),
        (false, false) => Err("`classes` mixes int64 and string labels".into()),
    }
}

/// The model's states: its description's `state` features, which must be
/// exactly the main function's state-typed inputs, each a fixed-shape array.
fn state_specs(
    desc: &coreml_proto::proto::ModelDescription,
    main: &Function,
) -> std::result::Result<Vec<TensorSpec>, String> {
    // Function inputs of state type, by name, with the tensor type they wrap.
    let mut wrapped: HashMap<&str, &mil_spec::TensorType> = HashMap::new();
    for v in &main.inputs {
        if let Some(mil_spec::value_type::Type::StateType(st)) = v.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
            match st.wrapped_type.as_ref().and_then(|w| w.r#type.as_ref()) {
                Some(mil_spec::value_type::Type::TensorType(t)) => {
                    wrapped.insert(v.name.as_str(), t);
                }
                _ => return Err(format!("state input `{}` does not wrap a tensor", v.name)),
            }
        }
    }
    let mut states = Vec::new();
    for f in &desc.state {
        let arr = match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
            Some(feature_type::Type::StateType(st)) => match &st.r#type {
                Some(coreml_proto::proto::state_feature_type::Type::ArrayType(a)) => a,
                None => return Err(format!("state `{}` has no array type", f.name)),
            },
            _ => return Err(format!("state `{}` is not a state feature", f.name)),
        };
        if !wrapped.contains_key(f.name.as_str()) {
            return Err(format!(
                "state `{}` is not a state-typed input of the main function",
                f.name
            ));
        }
        let spec = array_spec(&f.name, arr, &wrapped, "state")?;
        if spec.constraint != ShapeConstraint::Fixed {
            return Err(format!(
                "state `{}` has a flexible shape; states are fixed-shape",
                f.name
            ));
        }
        states.push(spec);
    }
    if let Some(name) = wrapped.keys().find(|n| !desc.state.iter().any(|f| f.name == **n)) {
        return Err(format!(
            "the main function's input `{name}` is a state, but the model description declares no state `{name}`"
        ));
    }
    Ok(states)
}

fn feature_spec(
    f: &FeatureDescription,
    types: &HashMap<&str, &mil_spec::TensorType>,
    role: &str,
    classifier: Option<&ClassifierSpec>,
) -> std::result::Result<TensorSpec, String> {
    let ty = match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(t) => t,
        None => return Err(format!("{role} `{}` has no type", f.name)),
    };
    let name = f.name.as_str();
    let is_output = role == "output";
    let refuse = |kind: &str, why: &str| Err(format!("{role} `{name}` is a {kind} feature; {why}"));
    let scalar = |dtype: DType, kind: FeatureKind| TensorSpec {
        kind,
        ..TensorSpec::fixed(name, dtype, vec![])
    };
    match ty {
        feature_type::Type::MultiArrayType(a) => array_spec(name, a, types, role),
        feature_type::Type::ImageType(img) if !is_output => image_spec(name, img, types),
        feature_type::Type::ImageType(_) => refuse("image", "image outputs are not supported"),
        feature_type::Type::Int64Type(_) if is_output => Ok(scalar(DType::I64, FeatureKind::Int64)),
        feature_type::Type::DoubleType(_) if is_output => Ok(scalar(DType::F64, FeatureKind::Double)),
        feature_type::Type::StringType(_) if is_output => match classifier {
            Some(c) if c.label_output == name && matches!(c.labels, ClassLabels::Strings(_)) => {
                Ok(scalar(DType::I64, FeatureKind::String))
            }
            _ => refuse(
                "string",
                "an ML Program's only string output is a classifier's label (with string labels)",
            ),
        },
        feature_type::Type::DictionaryType(d) if is_output => {
            use coreml_proto::proto::dictionary_feature_type::KeyType;
            let key = match d.key_type {
                Some(KeyType::StringKeyType(_)) => KeyKind::String,
                Some(KeyType::Int64KeyType(_)) => KeyKind::Int64,
                None => return refuse("dictionary", "its key type is missing"),
            };
            match classifier {
                Some(c) if c.probabilities_output == name => {
                    if c.labels.key_kind() != key {
                        return Err(format!(
                            "output `{name}` is a dictionary with {key:?} keys, but the classifier's labels are {:?}",
                            c.labels.key_kind()
                        ));
                    }
                    Ok(TensorSpec {
                        kind: FeatureKind::Dictionary { key },
                        ..TensorSpec::fixed(name, DType::F32, vec![c.labels.len()])
                    })
                }
                _ => refuse(
                    "dictionary",
                    "an ML Program's only dictionary output is a classifier's probabilities",
                ),
            }
        }
        feature_type::Type::Int64Type(_)
        | feature_type::Type::DoubleType(_)
        | feature_type::Type::StringType(_)
        | feature_type::Type::DictionaryType(_) => refuse(
            "scalar, string or dictionary",
            "an ML Program takes multi-array, image and state inputs only",
        ),
        feature_type::Type::SequenceType(_) => refuse("sequence", "ML Programs have no sequence features"),
        feature_type::Type::StateType(_) => refuse("state", "states belong in the description's `state` list"),
    }
}

/// The spec of image input `name`: the program's `[1, C, H, W]` tensor (its
/// dtype, fp32 or for `GRAYSCALE_FLOAT16` fp16) with the image's size,
/// color layout and allowed sizes.
fn image_spec(
    name: &str,
    img: &coreml_proto::proto::ImageFeatureType,
    types: &HashMap<&str, &mil_spec::TensorType>,
) -> std::result::Result<TensorSpec, String> {
    use coreml_proto::proto::image_feature_type::{ColorSpace, SizeFlexibility};
    let color = match ColorSpace::try_from(img.color_space) {
        Ok(ColorSpace::Rgb) => ColorLayout::Rgb,
        Ok(ColorSpace::Bgr) => ColorLayout::Bgr,
        Ok(ColorSpace::Grayscale) => ColorLayout::Grayscale,
        Ok(ColorSpace::GrayscaleFloat16) => ColorLayout::GrayscaleF16,
        _ => {
            return Err(format!(
                "image input `{name}` has an unknown color space (code {})",
                img.color_space
            ))
        }
    };
    let dim = |v: i64, what: &str| {
        usize::try_from(v)
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| format!("image input `{name}` has {what} {v}; expected at least 1"))
    };
    let (width, height) = (dim(img.width, "width")?, dim(img.height, "height")?);
    let t = types
        .get(name)
        .ok_or_else(|| format!("image input `{name}` is not a tensor input of the main function"))?;
    let dtype = mil_dtype(t.data_type)
        .filter(|d| d.is_float())
        .ok_or_else(|| format!("image input `{name}`: the program's input is not a float tensor"))?;
    let c = color.channels();
    if t.rank != 4 && t.dimensions.len() != 4 {
        return Err(format!(
            "image input `{name}`: the program's input has rank {}; an image is [1, {c}, H, W]",
            t.rank.max(t.dimensions.len() as i64)
        ));
    }
    if let Some(s) = mil_shape(t) {
        if s != [1, c, height, width] {
            return Err(format!(
                "image input `{name}` ({width}x{height}, {color:?}) is a program tensor of shape {s:?}; expected [1, {c}, {height}, {width}]"
            ));
        }
    }
    let bound = |r: Option<&coreml_proto::proto::SizeRange>,
                 what: &str|
     -> std::result::Result<(usize, Option<usize>), String> {
        let r = r.ok_or_else(|| format!("image input `{name}`: its size range has no {what} range"))?;
        let lo = usize::try_from(r.lower_bound)
            .map_err(|_| format!("image input `{name}`: {what} lower bound too large"))?;
        let hi = if r.upper_bound < 0 {
            None
        } else {
            Some(r.upper_bound as usize)
        };
        if hi.is_some_and(|h| h < lo) {
            return Err(format!(
                "image input `{name}`: {what} range [{lo}, {}] is inverted",
                r.upper_bound
            ));
        }
        Ok((lo, hi))
    };
    let (sizes, constraint) = match &img.size_flexibility {
        None => (ImageSizes::Fixed, ShapeConstraint::Fixed),
        Some(SizeFlexibility::EnumeratedSizes(e)) => {
            let sizes: Vec<(usize, usize)> = e.sizes.iter().map(|s| (s.width as usize, s.height as usize)).collect();
            let shapes = sizes.iter().map(|&(w, h)| vec![1, c, h, w]).collect();
            (ImageSizes::Enumerated { sizes }, ShapeConstraint::Enumerated(shapes))
        }
        Some(SizeFlexibility::ImageSizeRange(r)) => {
            let w = bound(r.width_range.as_ref(), "width")?;
            let h = bound(r.height_range.as_ref(), "height")?;
            (
                ImageSizes::Range { width: w, height: h },
                ShapeConstraint::Range(vec![(1, Some(1)), (c, Some(c)), h, w]),
            )
        }
    };
    Ok(TensorSpec {
        name: name.to_string(),
        shape: vec![1, c, height, width],
        dtype,
        batch_capable: false,
        constraint,
        kind: FeatureKind::Image(ImageSpec {
            width,
            height,
            color,
            sizes,
        }),
    })
}

/// The spec of the multi-array feature `name` (an input, output or state);
/// `types` fills in what the feature leaves unset from the program's types.
fn array_spec(
    name: &str,
    arr: &coreml_proto::proto::ArrayFeatureType,
    types: &HashMap<&str, &mil_spec::TensorType>,
    role: &str,
) -> std::result::Result<TensorSpec, String> {
    let prog_type = types.get(name);
    let dtype = match array_dtype(arr.data_type) {
        Some(d) => d,
        // ML Program outputs often leave the dtype unset: take the program's.
        None => prog_type.and_then(|t| mil_dtype(t.data_type)).ok_or_else(|| {
            format!(
                "{role} `{}` has an unknown or unsupported dtype (code {})",
                name, arr.data_type
            )
        })?,
    };
    let mut shape: Vec<usize> = arr
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("{role} `{}` has a negative dimension {d}", name)))
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
                .enumerate()
                .map(|(i, s)| {
                    s.shape
                        .iter()
                        .map(|&d| {
                            usize::try_from(d).map_err(|_| {
                                format!(
                                    "{role} `{}`: enumerated shape {i} {:?} has a negative dimension {d}",
                                    name, s.shape
                                )
                            })
                        })
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
        ),
        Some(array_feature_type::ShapeFlexibility::ShapeRange(r)) => ShapeConstraint::Range(
            r.size_ranges
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let range = format!(
                        "{role} `{}`: dimension {i} range [{}, {}]",
                        name, s.lower_bound, s.upper_bound
                    );
                    let lo = usize::try_from(s.lower_bound)
                        .map_err(|_| format!("{range} has a lower bound too large for this host"))?;
                    // -1 is the spec's "unbounded"; other negatives are errors.
                    let hi = match s.upper_bound {
                        -1 => None,
                        u if u < 0 => {
                            return Err(format!(
                                "{range} has a negative upper bound (only -1, unbounded, is allowed)"
                            ))
                        }
                        u => Some(u as usize),
                    };
                    if hi.is_some_and(|h| h < lo) {
                        return Err(format!("{range} is inverted (upper bound below lower bound)"));
                    }
                    Ok((lo, hi))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
        ),
    };
    let batch_capable = match &constraint {
        ShapeConstraint::Fixed => false,
        ShapeConstraint::Enumerated(list) => list.iter().any(|s| s.first() != shape.first()),
        ShapeConstraint::Range(r) => r.first().is_some_and(|&(lo, hi)| hi != Some(lo)),
    };
    Ok(TensorSpec {
        name: name.to_string(),
        shape,
        dtype,
        batch_capable,
        constraint,
        kind: FeatureKind::Tensor,
    })
}
