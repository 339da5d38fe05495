//! The inference seam: the traits and types an application embeds.
//!
//! An [`InferenceEngine`] turns a [`ModelArtifact`] into a [`PreparedModel`]
//! once (compile, load, build an execution plan — the expensive part) and then
//! runs it many times with [`InferenceEngine::infer`], each call bounded by a
//! timeout. Every engine — Core ML, Candle, the resilient wrapper — speaks
//! these types, so callers can swap engines without touching their code.

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::digest;
use crate::error::{Error, Result};
use crate::feature::{ClassifierSpec, FeatureKind, FeatureMap};
use crate::tensor::{DType, TensorMap};

/// Where Core ML may run a model. Names follow `MLComputeUnits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeUnits {
    /// CPU, GPU and Neural Engine (`.all`), Core ML's default.
    #[default]
    All,
    /// CPU only (`.cpuOnly`).
    CpuOnly,
    /// CPU and GPU (`.cpuAndGPU`).
    CpuAndGpu,
    /// CPU and Neural Engine (`.cpuAndNeuralEngine`, macOS 13+).
    CpuAndNe,
}

impl ComputeUnits {
    /// Environment variable that overrides the compute units a caller asked for.
    pub const ENV_OVERRIDE: &'static str = "COREML_COMPUTE_UNITS";

    /// The cache-key spelling: `all`, `cpu_only`, `cpu_gpu`, `cpu_ane`.
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeUnits::All => "all",
            ComputeUnits::CpuOnly => "cpu_only",
            ComputeUnits::CpuAndGpu => "cpu_gpu",
            ComputeUnits::CpuAndNe => "cpu_ane",
        }
    }

    /// The code used across the C ABI: 0 All, 1 CpuOnly, 2 CpuAndGpu, 3 CpuAndNe.
    pub fn ffi_code(self) -> i32 {
        match self {
            ComputeUnits::All => 0,
            ComputeUnits::CpuOnly => 1,
            ComputeUnits::CpuAndGpu => 2,
            ComputeUnits::CpuAndNe => 3,
        }
    }

    /// The value of [`Self::ENV_OVERRIDE`], if set. A set but unparsable value
    /// is an error rather than silently ignored.
    pub fn from_env() -> Result<Option<ComputeUnits>> {
        match std::env::var(Self::ENV_OVERRIDE) {
            Ok(v) if !v.trim().is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }
}

impl fmt::Display for ComputeUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ComputeUnits {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match norm.as_str() {
            "all" => ComputeUnits::All,
            "cpuonly" | "cpu" => ComputeUnits::CpuOnly,
            "cpugpu" | "cpuandgpu" => ComputeUnits::CpuAndGpu,
            "cpuane" | "cpuandne" | "cpuandneuralengine" | "cpune" => ComputeUnits::CpuAndNe,
            _ => {
                return Err(Error::schema_mismatch(
                    "compute units",
                    "one of all, cpu_only, cpu_gpu, cpu_ane",
                    format!("`{s}`"),
                ))
            }
        })
    }
}

/// What kind of file a [`ModelArtifact`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFmt {
    /// A Core ML package (`.mlpackage` directory) holding an ML Program.
    MlPackage,
    /// A compiled Core ML model (`.mlmodelc` directory): load only, no compile.
    MlModelC,
    /// A `.safetensors` file (or a directory holding `model.safetensors` and
    /// `config.json`) of a known architecture.
    Safetensors,
    /// ONNX: recognised but not run by any engine here.
    Onnx,
    /// TorchScript: recognised but not run by any engine here.
    TorchScript,
}

impl ModelFmt {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ModelFmt::MlPackage => "mlpackage",
            ModelFmt::MlModelC => "mlmodelc",
            ModelFmt::Safetensors => "safetensors",
            ModelFmt::Onnx => "onnx",
            ModelFmt::TorchScript => "torchscript",
        }
    }

    /// Guesses the format from the path: its extension, or for a directory,
    /// the files it holds.
    pub fn detect(path: &Path) -> Result<ModelFmt> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .unwrap_or_default();
        Ok(match ext.as_str() {
            "mlpackage" => ModelFmt::MlPackage,
            "mlmodelc" => ModelFmt::MlModelC,
            "safetensors" => ModelFmt::Safetensors,
            "onnx" => ModelFmt::Onnx,
            "pt" | "pth" | "torchscript" => ModelFmt::TorchScript,
            _ if path.join("model.safetensors").is_file() => ModelFmt::Safetensors,
            _ if path.join("Manifest.json").is_file() => ModelFmt::MlPackage,
            _ => {
                return Err(Error::invalid_artifact(
                    path,
                    "unknown model format: expected a .mlpackage or .mlmodelc directory, a .safetensors file \
                     (or a directory with model.safetensors), .onnx or .pt",
                ))
            }
        })
    }
}

impl fmt::Display for ModelFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model file on disk, identified by its content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelArtifact {
    /// What kind of file this is.
    pub format: ModelFmt,
    /// Where it is.
    pub path: PathBuf,
    /// SHA-256 of its content ([`digest::sha256_path`]): the cache key's root.
    pub sha256: [u8; 32],
}

impl ModelArtifact {
    /// Detects the format and hashes the content. Costs one full read of the
    /// artifact (about 1 s per GB).
    pub fn open(path: impl AsRef<Path>) -> Result<ModelArtifact> {
        let path = path.as_ref();
        let format = ModelFmt::detect(path)?;
        ModelArtifact::with_format(format, path)
    }

    /// Like [`ModelArtifact::open`] with an explicit format.
    pub fn with_format(format: ModelFmt, path: impl AsRef<Path>) -> Result<ModelArtifact> {
        let path = path.as_ref().to_path_buf();
        let sha256 = digest::sha256_path(&path)?;
        Ok(ModelArtifact { format, path, sha256 })
    }

    /// The content hash as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        digest::to_hex(&self.sha256)
    }

    /// Checks that bytes read after opening (digest `read`) are the ones
    /// [`ModelArtifact::open`] hashed: an engine builds from what it read,
    /// and stores it under this artifact's digest only if they match.
    pub(crate) fn check_unchanged(&self, read: &[u8; 32]) -> Result<()> {
        if *read == self.sha256 {
            return Ok(());
        }
        Err(Error::invalid_artifact(
            &self.path,
            format!(
                "the package changed since it was opened: its sha256 was {} then and is {} now; open the artifact again",
                self.sha256_hex(),
                digest::to_hex(read)
            ),
        ))
    }
}

/// How to prepare a model. Build with the `with_*` methods:
///
/// ```
/// use apple_silicon::{ComputeUnits, PrepareOptions};
/// let opts = PrepareOptions::default()
///     .with_compute_units(ComputeUnits::CpuAndNe)
///     .with_sla(std::time::Duration::from_millis(20));
/// assert_eq!(opts.compute_units, ComputeUnits::CpuAndNe);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOptions {
    /// Requested compute units (engines without a choice ignore it and say so
    /// in their capability report).
    pub compute_units: ComputeUnits,
    /// Only load already-compiled forms; never compile.
    pub precompiled_only: bool,
    /// The latency a caller expects per inference, used by the breaker and
    /// the gates. `None` lets the engine estimate.
    pub sla: Option<Duration>,
    /// Upper bound for the whole prepare (compile + load).
    pub prepare_timeout: Duration,
    /// Memory budget in bytes for what the program's own sizes make the
    /// engine allocate: the Candle engine's constants (all together) and any
    /// one tensor a kernel allocates from a shape, `tile` or pad in the
    /// program, at prepare and at every run. Crossing it is
    /// [`crate::Error::MemoryPressure`] naming the op and the size. `None`:
    /// 32× the package's size, at least 1 GiB, at most half the machine's
    /// memory ([`crate::mil::limits::default_memory_budget`]).
    pub memory_budget: Option<u64>,
    /// For a multifunction package (several functions sharing weights): the
    /// function to prepare (Core ML's `MLModelConfiguration.functionName`,
    /// macOS 15). `None`: the package's default function. The package's
    /// function names are in [`IoSchema::functions`].
    pub function_name: Option<String>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            compute_units: ComputeUnits::All,
            precompiled_only: false,
            sla: None,
            prepare_timeout: Duration::from_secs(300),
            memory_budget: None,
            function_name: None,
        }
    }
}

impl PrepareOptions {
    /// Sets the requested compute units.
    pub fn with_compute_units(mut self, units: ComputeUnits) -> Self {
        self.compute_units = units;
        self
    }

    /// Refuses to compile: only already-compiled forms are loaded.
    pub fn with_precompiled_only(mut self, on: bool) -> Self {
        self.precompiled_only = on;
        self
    }

    /// Sets the per-inference latency target.
    pub fn with_sla(mut self, sla: Duration) -> Self {
        self.sla = Some(sla);
        self
    }

    /// Sets the bound on compile + load.
    pub fn with_prepare_timeout(mut self, timeout: Duration) -> Self {
        self.prepare_timeout = timeout;
        self
    }

    /// Sets the memory budget (bytes) for what the program's sizes make the
    /// engine allocate; see [`PrepareOptions::memory_budget`].
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Selects the function of a multifunction package to prepare
    /// (`MLModelConfiguration.functionName`); see
    /// [`PrepareOptions::function_name`].
    pub fn with_function_name(mut self, name: impl Into<String>) -> Self {
        self.function_name = Some(name.into());
        self
    }
}

/// The environment a compiled model was built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledMeta {
    /// Host platform, e.g. `macos-arm64` or `linux-x86_64`.
    pub platform: String,
    /// Core ML version, or `none` where Core ML does not exist.
    pub coreml_version: String,
    /// `mlprogram` or `neuralnetwork`.
    pub backend: String,
    /// OS build (e.g. `24A335`), or the kernel release elsewhere.
    pub os_build: String,
}

/// The cache key of a prepared model, as the plan defines it:
/// `{sha256}:{coreml_version}:{backend}:{compute_units}:{quantization}:{shape_key}:{os_build}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheKey {
    /// Authoring artifact's SHA-256, hex.
    pub sha256: String,
    /// Core ML (or engine) version the entry was built with.
    pub coreml_version: String,
    /// `mlprogram` or `neuralnetwork`.
    pub backend: String,
    /// Compute units the entry was specialised for.
    pub compute_units: ComputeUnits,
    /// `fp32`, `fp16`, `int8`, `palettized`, …
    pub quantization: String,
    /// Input shapes, e.g. `1x3x224x224` or `batch_1`.
    pub shape_key: String,
    /// OS build number.
    pub os_build: String,
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}:{}:{}",
            self.sha256,
            self.coreml_version,
            self.backend,
            self.compute_units,
            self.quantization,
            self.shape_key,
            self.os_build
        )
    }
}

/// Allowed shapes of one input beyond its default shape.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "shapes")]
pub enum ShapeConstraint {
    /// Only the default shape.
    #[default]
    Fixed,
    /// Any one of these shapes.
    Enumerated(Vec<Vec<usize>>),
    /// Each dimension within `[lower, upper]` (`upper = None`: unbounded).
    Range(Vec<(usize, Option<usize>)>),
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Feature name.
    pub name: String,
    /// Default shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Whether the leading dimension may vary (batching).
    pub batch_capable: bool,
    /// Other shapes the model accepts.
    #[serde(default)]
    pub constraint: ShapeConstraint,
    /// What kind of feature it is (a tensor, an image, a classifier's label
    /// or probabilities, …); `dtype` and `shape` are the tensor the program
    /// itself sees for it (see [`FeatureKind`]).
    #[serde(default, skip_serializing_if = "is_tensor_kind")]
    pub kind: FeatureKind,
}

fn is_tensor_kind(k: &FeatureKind) -> bool {
    *k == FeatureKind::Tensor
}

impl TensorSpec {
    /// A fixed-shape spec.
    pub fn fixed(name: impl Into<String>, dtype: DType, shape: Vec<usize>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape,
            dtype,
            batch_capable: false,
            constraint: ShapeConstraint::Fixed,
            kind: FeatureKind::Tensor,
        }
    }

    /// Whether `shape` is one this tensor may take.
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        match &self.constraint {
            ShapeConstraint::Fixed => shape == self.shape.as_slice(),
            ShapeConstraint::Enumerated(list) => {
                shape == self.shape.as_slice() || list.iter().any(|s| s.as_slice() == shape)
            }
            ShapeConstraint::Range(ranges) => {
                ranges.len() == shape.len()
                    && ranges
                        .iter()
                        .zip(shape)
                        .all(|(&(lo, hi), &d)| d >= lo && hi.is_none_or(|h| d <= h))
            }
        }
    }

    /// The allowed shapes in words, for error messages.
    pub fn describe_allowed(&self) -> String {
        match &self.constraint {
            ShapeConstraint::Fixed => format!("{:?}", self.shape),
            ShapeConstraint::Enumerated(list) => format!("one of {list:?}"),
            ShapeConstraint::Range(r) => {
                let dims: Vec<String> = r
                    .iter()
                    .map(|(lo, hi)| match hi {
                        Some(h) if h == lo => format!("{lo}"),
                        Some(h) => format!("{lo}..={h}"),
                        None => format!("{lo}.."),
                    })
                    .collect();
                format!("[{}]", dims.join(", "))
            }
        }
    }
}

/// Inputs and outputs of a model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IoSchema {
    /// Inputs, in the model's order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the model's order.
    pub outputs: Vec<TensorSpec>,
    /// States (Core ML `StateType` features, iOS18+): tensors the model reads
    /// and overwrites across runs, held by the caller. Not inputs: they go
    /// to a stateful run (e.g. [`crate::mil::Plan::run_with_state`]) in a
    /// map of their own. Empty for a stateless model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<TensorSpec>,
    /// For a classifier: its label and probabilities outputs and its label
    /// set. `None` for other models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierSpec>,
    /// The package's functions (a multifunction package lists each; a
    /// single-function package lists nothing) and which one this schema
    /// describes.
    #[serde(default, skip_serializing_if = "FunctionSet::is_single")]
    pub functions: FunctionSet,
}

/// The functions of a package, for a multifunction package (coremltools'
/// `MultiFunctionDescriptor`): several programs sharing weights, one chosen at
/// prepare with [`PrepareOptions::with_function_name`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FunctionSet {
    /// Every function's name, in the package's order. Empty for a
    /// single-function package.
    pub names: Vec<String>,
    /// The package's default function (what a prepare without a function
    /// name selects).
    pub default: Option<String>,
    /// The function this prepared model runs.
    pub selected: Option<String>,
}

impl FunctionSet {
    /// Whether the package has one function only (nothing to list).
    pub fn is_single(&self) -> bool {
        self.names.is_empty()
    }
}

impl IoSchema {
    /// The input named `name`.
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    /// The state named `name`.
    pub fn state(&self, name: &str) -> Option<&TensorSpec> {
        self.states.iter().find(|s| s.name == name)
    }

    /// Checks that `states` holds exactly the model's states, each with its
    /// dtype and shape (states have fixed shapes). The error names the
    /// state, what was expected and what came.
    pub fn validate_states(&self, states: &TensorMap) -> Result<()> {
        for spec in &self.states {
            let Some(t) = states.get(&spec.name) else {
                let given: Vec<&str> = states.keys().map(String::as_str).collect();
                return Err(Error::schema_mismatch(
                    format!("state `{}`", spec.name),
                    "the state to be present",
                    format!("states {given:?}"),
                ));
            };
            if t.dtype() != spec.dtype {
                return Err(Error::schema_mismatch(
                    format!("dtype of state `{}`", spec.name),
                    spec.dtype.name(),
                    t.dtype().name(),
                ));
            }
            if t.shape() != spec.shape.as_slice() {
                return Err(Error::schema_mismatch(
                    format!("shape of state `{}`", spec.name),
                    format!("{:?}", spec.shape),
                    format!("{:?}", t.shape()),
                ));
            }
        }
        if let Some(extra) = states.keys().find(|k| self.state(k).is_none()) {
            let names: Vec<&str> = self.states.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::schema_mismatch(
                format!("state `{extra}`"),
                format!("only the model's states {names:?}"),
                format!("an unknown state `{extra}`"),
            ));
        }
        Ok(())
    }

    /// [`IoSchema::validate_inputs`] for every member of a batch, before
    /// any runs; the error names the first bad member ([`Error::batch_member`]).
    pub fn validate_batch(&self, batch: &[TensorMap]) -> Result<()> {
        for (i, inputs) in batch.iter().enumerate() {
            self.validate_inputs(inputs).map_err(|e| Error::batch_member(i, e))?;
        }
        Ok(())
    }

    /// Checks that `inputs` has exactly the model's inputs, each with its
    /// dtype and an allowed shape. The error names the input, what was
    /// expected and what came. Costs a few comparisons per input.
    pub fn validate_inputs(&self, inputs: &TensorMap) -> Result<()> {
        for spec in &self.inputs {
            let Some(t) = inputs.get(&spec.name) else {
                let given: Vec<&str> = inputs.keys().map(String::as_str).collect();
                return Err(Error::schema_mismatch(
                    format!("input `{}`", spec.name),
                    "the input to be present",
                    format!("inputs {given:?}"),
                ));
            };
            if t.dtype() != spec.dtype {
                return Err(Error::schema_mismatch(
                    format!("dtype of input `{}`", spec.name),
                    spec.dtype.name(),
                    t.dtype().name(),
                ));
            }
            if !spec.accepts_shape(t.shape()) {
                return Err(Error::schema_mismatch(
                    format!("shape of input `{}`", spec.name),
                    spec.describe_allowed(),
                    format!("{:?}", t.shape()),
                ));
            }
        }
        if let Some(extra) = inputs.keys().find(|k| self.input(k).is_none()) {
            let names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::schema_mismatch(
                format!("input `{extra}`"),
                format!("only the model's inputs {names:?}"),
                format!("an unknown input `{extra}`"),
            ));
        }
        Ok(())
    }
}

/// What an engine can do with a prepared model, and where it actually ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityReport {
    /// Engine that serves the model (`candle`, `coreml`, …).
    pub engine: String,
    /// Hardware class, e.g. `M2` or `x86_64 CPU`.
    pub device_class: String,
    /// Input dtypes the engine accepts.
    pub supported_dtypes: Vec<DType>,
    /// Largest batch the model accepts.
    pub max_batch_size: usize,
    /// Share of the model's ops that run on the Neural Engine, where known.
    pub ane_op_coverage_pct: Option<u32>,
    /// Compute units the caller asked for.
    pub compute_units_requested: ComputeUnits,
    /// Compute units actually used, where known.
    pub compute_units_actual: Option<ComputeUnits>,
    /// Arithmetic precision the engine runs the model in (e.g. `f32`, or
    /// `f16 upcast to f32`).
    pub compute_precision: String,
    /// p99 of prepare, in ms, where measured.
    pub compile_p99_ms: Option<u64>,
    /// p99 of inference, in ms, where measured.
    pub infer_p99_ms: Option<u64>,
    /// Anything else a caller should know (why a fallback served, …).
    pub notes: Vec<String>,
}

/// A model ready to run: compiled, loaded, planned. Created by
/// [`InferenceEngine::prepare`]; run by the same engine's `infer`.
pub trait PreparedModel: Send + Sync + Any {
    /// The cache key this model was prepared under.
    fn cache_key(&self) -> &str;
    /// Its inputs and outputs.
    fn io_schema(&self) -> &IoSchema;
    /// The latency to expect per inference (the SLA given at prepare, or an
    /// engine's estimate).
    fn sla_estimate(&self) -> Duration;
    /// For engines to recover their concrete type.
    fn as_any(&self) -> &dyn Any;
    /// Whether this instance can no longer run (e.g. a Core ML prediction
    /// timed out inside it and still holds it): a pool
    /// ([`crate::pool`]) rebuilds a poisoned instance. Default: never.
    fn is_poisoned(&self) -> bool {
        false
    }
    /// How long this instance's prepare spent compiling and loading, where
    /// the engine measured it (telemetry records them as the compile and
    /// load stages). Default: nothing measured.
    fn prepare_timings(&self) -> crate::telemetry::PrepareTimings {
        crate::telemetry::PrepareTimings::default()
    }
}

/// A stateful model's state (Core ML's `MLState`, iOS18/macOS 15: e.g. the
/// KV cache of a decoder), created by [`InferenceEngine::make_state`] for
/// one prepared model and passed to every
/// [`InferenceEngine::infer_with_state`] call on it. It outlives calls and
/// belongs to its model and function: another model's state is refused.
/// A run updates it only when the whole run succeeds. A run that times out
/// poisons it (later runs are refused), as it poisons the model handle on
/// Core ML.
///
/// Like `MLState`, it may move between threads but not be shared: it is
/// `Send` and not `Sync`, and every run takes it by `&mut`.
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<apple_silicon::ModelState>();
/// ```
pub struct ModelState {
    owner: String,
    engine: &'static str,
    poisoned: bool,
    inner: Box<dyn Any + Send>,
}

impl ModelState {
    /// Wraps an engine's own state for the prepared model whose cache key
    /// (plus function, for a multifunction package) is `owner`.
    pub fn new(engine: &'static str, owner: impl Into<String>, inner: Box<dyn Any + Send>) -> ModelState {
        ModelState {
            owner: owner.into(),
            engine,
            poisoned: false,
            inner,
        }
    }

    /// The prepared model (cache key, and function) this state belongs to.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The engine that made it.
    pub fn engine(&self) -> &str {
        self.engine
    }

    /// Whether a timed-out run left it unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Marks it unusable (a run timed out while it was in use).
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// The engine's own state, after checking that it belongs to `owner`,
    /// was made by `engine` and is not poisoned. The error names what was
    /// expected and what came.
    pub fn inner_for<T: Any>(&mut self, engine: &str, owner: &str) -> Result<&mut T> {
        if self.engine != engine || self.owner != owner {
            return Err(Error::schema_mismatch(
                "model state",
                format!("a state made by the {engine} engine for model `{owner}`"),
                format!("a state made by the {} engine for model `{}`", self.engine, self.owner),
            ));
        }
        if self.poisoned {
            return Err(Error::Unavailable {
                engine: engine.to_string(),
                reason: "this state was poisoned by a run that timed out; make a new state".into(),
            });
        }
        let got = std::any::type_name::<T>();
        self.inner
            .downcast_mut::<T>()
            .ok_or_else(|| Error::internal(format!("model state does not hold a {got}")))
    }
}

impl ModelState {
    /// The engine's own state, read-only (for inspection: e.g. a state's
    /// tensors), after checking that `engine` made it. A poisoned state is
    /// readable: it holds what it held before the run that timed out.
    pub fn inner_ref<T: Any>(&self, engine: &str) -> Result<&T> {
        if self.engine != engine {
            return Err(Error::schema_mismatch(
                "model state",
                format!("a state made by the {engine} engine"),
                format!("a state made by the {} engine for model `{}`", self.engine, self.owner),
            ));
        }
        let got = std::any::type_name::<T>();
        self.inner
            .downcast_ref::<T>()
            .ok_or_else(|| Error::internal(format!("model state does not hold a {got}")))
    }

    /// Moves the state out, leaving in its place a poisoned stand-in with
    /// the same owner and engine: for handing a state to a worker that may
    /// outlive its caller's deadline. Put the state back with
    /// [`ModelState::restore`] when the worker returns it; if it never
    /// does, the stand-in refuses later runs. Costs a box of nothing.
    pub fn take(&mut self) -> ModelState {
        let mut stand_in = ModelState::new(self.engine, self.owner.clone(), Box::new(()));
        stand_in.poisoned = true;
        std::mem::replace(self, stand_in)
    }

    /// Puts back a state moved out with [`ModelState::take`].
    pub fn restore(&mut self, state: ModelState) {
        *self = state;
    }
}

impl std::fmt::Debug for ModelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelState")
            .field("owner", &self.owner)
            .field("engine", &self.engine)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// An engine that prepares and runs models.
pub trait InferenceEngine: Send + Sync {
    /// Short engine name (`candle`, `coreml`, `resilient`).
    fn name(&self) -> &str;
    /// Compiles/loads/plans a model: the expensive, once-per-model step.
    fn prepare(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>>;
    /// Runs one inference. Returns [`Error::Timeout`] if it does not finish
    /// within `timeout`; the caller's thread is never blocked much longer.
    fn infer(&self, model: &dyn PreparedModel, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap>;
    /// [`InferenceEngine::infer`] into the caller's `outputs`: an engine
    /// that can reuse their storage writes each output into the tensor of
    /// that name, dtype and shape already in `outputs` (no allocation per
    /// call in the steady state). The default runs `infer` and replaces
    /// `outputs` with its result (what `infer` costs). On error the
    /// contents of `outputs` are unspecified.
    fn infer_into(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        timeout: Duration,
    ) -> Result<()> {
        *outputs = self.infer(model, inputs, timeout)?;
        Ok(())
    }
    /// [`InferenceEngine::infer`], also returning how long each stage took
    /// (marshal in, predict, marshal out, total). An engine that cannot see
    /// inside its call reports the total only (the default).
    fn infer_timed(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<(TensorMap, crate::telemetry::StageTimings)> {
        let t = std::time::Instant::now();
        let out = self.infer(model, inputs, timeout)?;
        Ok((out, crate::telemetry::StageTimings::total(t.elapsed())))
    }
    /// Runs one inference on feature values ([`crate::feature::FeatureValue`]):
    /// images, a classifier's label and probabilities, scalars, as well as
    /// tensors. The default converts the inputs to the program's tensors
    /// ([`crate::feature::features_to_tensors`]: an image becomes its raw
    /// `[1, C, H, W]` pixels, which the program scales and biases itself),
    /// runs [`InferenceEngine::infer`] and converts the outputs back
    /// ([`crate::feature::tensors_to_features`]). Costs `infer` plus a pass
    /// over each image and a copy of each non-tensor output.
    fn infer_features(&self, model: &dyn PreparedModel, inputs: &FeatureMap, timeout: Duration) -> Result<FeatureMap> {
        let schema = model.io_schema();
        let tensors = crate::feature::features_to_tensors(schema, inputs)?;
        let out = self.infer(model, &tensors, timeout)?;
        crate::feature::tensors_to_features(schema, out)
    }
    /// Creates a fresh state (every state tensor zeroed, as Core ML's
    /// `makeState()` does) for a stateful model; see [`ModelState`]. The
    /// default refuses: the engine has no stateful models.
    fn make_state(&self, model: &dyn PreparedModel) -> Result<ModelState> {
        let _ = model;
        Err(Error::unsupported(format!(
            "stateful models on the {} engine",
            self.name()
        )))
    }
    /// Runs one inference of a stateful model with its `state` (Core ML's
    /// `prediction(from:using:)`); the state is updated only if the whole
    /// run succeeds. The default refuses.
    fn infer_with_state(
        &self,
        model: &dyn PreparedModel,
        state: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<TensorMap> {
        let _ = (model, state, inputs, timeout);
        Err(Error::unsupported(format!(
            "stateful models on the {} engine",
            self.name()
        )))
    }
    /// Runs a batch of inferences under one `timeout` for the whole batch
    /// (Core ML's `predictions(fromBatch:)`); every member is validated
    /// before any runs. The default runs them one after another, each with
    /// what is left of the deadline.
    fn infer_batch(&self, model: &dyn PreparedModel, batch: &[TensorMap], timeout: Duration) -> Result<Vec<TensorMap>> {
        model.io_schema().validate_batch(batch)?;
        let deadline = std::time::Instant::now() + timeout;
        batch
            .iter()
            .map(|inputs| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout {
                        operation: "batch inference".into(),
                        after: timeout,
                    });
                }
                self.infer(model, inputs, left)
            })
            .collect()
    }
    /// What the engine can do with the model and where it runs it.
    fn capabilities(&self, model: &dyn PreparedModel) -> CapabilityReport;
}

/// Recovers an engine's own prepared-model type, or explains that the model
/// came from another engine.
pub fn downcast_model<'a, T: PreparedModel>(model: &'a dyn PreparedModel, engine: &str) -> Result<&'a T> {
    model.as_any().downcast_ref::<T>().ok_or_else(|| {
        Error::schema_mismatch(
            "prepared model",
            format!("a model prepared by the {engine} engine"),
            "a model prepared by another engine",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn assert_send_sync<T: Send + Sync + ?Sized>() {}

    #[test]
    fn seam_types_are_send_and_sync() {
        assert_send_sync::<dyn InferenceEngine>();
        assert_send_sync::<dyn PreparedModel>();
        assert_send_sync::<ModelArtifact>();
        assert_send_sync::<TensorMap>();
        assert_send_sync::<CapabilityReport>();
    }

    #[test]
    fn compute_units_parse_and_print() {
        for u in [
            ComputeUnits::All,
            ComputeUnits::CpuOnly,
            ComputeUnits::CpuAndGpu,
            ComputeUnits::CpuAndNe,
        ] {
            assert_eq!(u.as_str().parse::<ComputeUnits>().unwrap(), u);
        }
        assert_eq!(
            "cpuAndNeuralEngine".parse::<ComputeUnits>().unwrap(),
            ComputeUnits::CpuAndNe
        );
        let err = "gpu_only".parse::<ComputeUnits>().unwrap_err();
        assert!(err.to_string().contains("got `gpu_only`"), "{err}");
    }

    #[test]
    fn cache_key_has_the_plans_layout() {
        let k = CacheKey {
            sha256: "ab".into(),
            coreml_version: "8.0".into(),
            backend: "mlprogram".into(),
            compute_units: ComputeUnits::CpuAndNe,
            quantization: "fp16".into(),
            shape_key: "1x3x224x224".into(),
            os_build: "24A335".into(),
        };
        assert_eq!(k.to_string(), "ab:8.0:mlprogram:cpu_ane:fp16:1x3x224x224:24A335");
    }

    fn schema() -> IoSchema {
        IoSchema {
            inputs: vec![
                TensorSpec::fixed("x", DType::F32, vec![1, 4]),
                TensorSpec {
                    constraint: ShapeConstraint::Range(vec![(1, Some(1)), (1, Some(128))]),
                    ..TensorSpec::fixed("ids", DType::I32, vec![1, 8])
                },
            ],
            outputs: vec![TensorSpec::fixed("y", DType::F32, vec![1, 2])],
            states: vec![],
            classifier: None,
            functions: Default::default(),
        }
    }

    fn inputs(x_shape: Vec<usize>, ids_len: usize) -> TensorMap {
        let n = x_shape.iter().product();
        TensorMap::from([
            ("x".to_string(), Tensor::from_vec(x_shape, vec![0f32; n]).unwrap()),
            (
                "ids".to_string(),
                Tensor::from_vec(vec![1, ids_len], vec![0i32; ids_len]).unwrap(),
            ),
        ])
    }

    #[test]
    fn validation_names_what_was_expected_and_what_came() {
        let s = schema();
        s.validate_inputs(&inputs(vec![1, 4], 8)).unwrap();
        s.validate_inputs(&inputs(vec![1, 4], 128)).unwrap();

        let e = s.validate_inputs(&inputs(vec![1, 5], 8)).unwrap_err().to_string();
        assert_eq!(e, "schema mismatch for shape of input `x`: expected [1, 4], got [1, 5]");
        let e = s.validate_inputs(&inputs(vec![1, 4], 129)).unwrap_err().to_string();
        assert!(e.contains("expected [1, 1..=128], got [1, 129]"), "{e}");

        let mut m = inputs(vec![1, 4], 8);
        m.insert("x".into(), Tensor::from_vec(vec![1, 4], vec![0f64; 4]).unwrap());
        let e = s.validate_inputs(&m).unwrap_err().to_string();
        assert!(e.contains("dtype of input `x`: expected f32, got f64"), "{e}");

        let mut m = inputs(vec![1, 4], 8);
        m.remove("ids");
        let e = s.validate_inputs(&m).unwrap_err().to_string();
        assert!(e.contains("input `ids`") && e.contains("[\"x\"]"), "{e}");

        let mut m = inputs(vec![1, 4], 8);
        m.insert("z".into(), Tensor::from_vec(vec![1], vec![0f32]).unwrap());
        let e = s.validate_inputs(&m).unwrap_err().to_string();
        assert!(e.contains("unknown input `z`"), "{e}");
    }

    #[test]
    fn enumerated_shapes() {
        let spec = TensorSpec {
            constraint: ShapeConstraint::Enumerated(vec![vec![1, 3, 64, 64], vec![1, 3, 128, 128]]),
            ..TensorSpec::fixed("image", DType::F32, vec![1, 3, 32, 32])
        };
        assert!(spec.accepts_shape(&[1, 3, 32, 32]));
        assert!(spec.accepts_shape(&[1, 3, 128, 128]));
        assert!(!spec.accepts_shape(&[1, 3, 96, 96]));
    }

    #[test]
    fn format_detection() {
        assert_eq!(
            ModelFmt::detect(Path::new("a/b.mlpackage")).unwrap(),
            ModelFmt::MlPackage
        );
        assert_eq!(ModelFmt::detect(Path::new("b.mlmodelc")).unwrap(), ModelFmt::MlModelC);
        assert_eq!(ModelFmt::detect(Path::new("m.onnx")).unwrap(), ModelFmt::Onnx);
        let e = ModelFmt::detect(Path::new("/nonexistent/model.bin")).unwrap_err();
        assert!(e.to_string().contains("unknown model format"), "{e}");
    }
}
