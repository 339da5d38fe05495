//! A loaded model's inputs and outputs as the bridge describes them, and the C ABI's dtype codes.

use super::*;

/// One range of a dimension: `upper = None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimRange {
    /// Smallest size.
    pub lower: i64,
    /// Largest size, `None` for unbounded.
    pub upper: Option<i64>,
}

/// A feature's shape constraint as the bridge reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureShapeConstraint {
    /// `none`, `unspecified`, `enumerated` or `range`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Allowed shapes (`enumerated`).
    #[serde(default)]
    pub enumerated_shapes: Vec<Vec<i64>>,
    /// One range per dimension (`range`).
    #[serde(default)]
    pub ranges: Vec<DimRange>,
}

/// One input or output feature as the bridge reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    /// Feature name.
    pub name: String,
    /// `multiArray`, `double`, `int64`, `string`, `image`, …
    pub feature_type: String,
    /// Whether an input may be left out.
    #[serde(default)]
    pub optional: bool,
    /// `f32`, `f16`, `f64`, `i32`, `i8`, `i64`; `None` when not an array (or
    /// when the model does not say).
    pub dtype: Option<String>,
    /// The matching `COREML_DTYPE_*` code.
    pub dtype_code: Option<i32>,
    /// Default shape (`[]` when not an array).
    #[serde(default)]
    pub shape: Vec<i64>,
    /// Other shapes the feature may take.
    pub shape_constraint: FeatureShapeConstraint,
    /// An image feature's size, pixel format and allowed sizes (v2).
    #[serde(default)]
    pub image: Option<crate::core_ml_images::BridgeImage>,
}

impl Feature {
    /// The crate dtype of this feature, if it has one.
    pub fn dtype(&self) -> Option<DType> {
        self.dtype_code.and_then(dtype_from_code)
    }

    /// As a [`TensorSpec`], or `None` for features without a dtype (string,
    /// dictionary, sequence, and arrays whose model does not say). An image
    /// with its constraint is the program's `[1, C, H, W]` tensor of kind
    /// [`crate::feature::FeatureKind::Image`].
    /// An `unspecified`/`none` constraint becomes [`ShapeConstraint::Fixed`].
    pub fn to_tensor_spec(&self) -> Option<TensorSpec> {
        if self.feature_type == "image" {
            // Its program tensor, kind Image (see core_ml_images).
            return self.image.as_ref().map(|i| i.tensor_spec(&self.name));
        }
        let dtype = self.dtype()?;
        let dims = |v: &[i64]| v.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect::<Vec<_>>();
        let shape = dims(&self.shape);
        let c = &self.shape_constraint;
        let constraint = match c.kind.as_str() {
            "enumerated" => ShapeConstraint::Enumerated(c.enumerated_shapes.iter().map(|s| dims(s)).collect()),
            "range" => ShapeConstraint::Range(
                c.ranges
                    .iter()
                    .map(|r| {
                        (
                            usize::try_from(r.lower).unwrap_or(0),
                            r.upper.map(|u| usize::try_from(u).unwrap_or(0)),
                        )
                    })
                    .collect(),
            ),
            _ => ShapeConstraint::Fixed,
        };
        let first = shape.first().copied();
        let batch_capable = match &constraint {
            ShapeConstraint::Fixed => false,
            ShapeConstraint::Enumerated(list) => list.iter().any(|s| s.first().copied() != first),
            ShapeConstraint::Range(r) => r.first().is_some_and(|&(lo, hi)| hi != Some(lo)),
        };
        Some(TensorSpec {
            name: self.name.clone(),
            shape,
            dtype,
            batch_capable,
            constraint,
            kind: Default::default(),
        })
    }

    /// `name: dtype shape (constraint)`, for messages.
    pub fn describe(&self) -> String {
        let dtype = self.dtype.as_deref().unwrap_or(&self.feature_type);
        let c = &self.shape_constraint;
        let shape = match c.kind.as_str() {
            "none" => "any shape".to_string(),
            "enumerated" => format!("one of {:?}", c.enumerated_shapes),
            "range" => {
                let dims: Vec<String> = c
                    .ranges
                    .iter()
                    .map(|r| match r.upper {
                        Some(u) if u == r.lower => u.to_string(),
                        Some(u) => format!("{}..={u}", r.lower),
                        None => format!("{}..", r.lower),
                    })
                    .collect();
                format!("[{}]", dims.join(", "))
            }
            _ => format!("{:?}", self.shape),
        };
        let optional = if self.optional { " (optional)" } else { "" };
        format!("{}: {dtype} {shape}{optional}", self.name)
    }
}

/// A model's metadata as the bridge reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SchemaMetadata {
    /// Author.
    #[serde(default)]
    pub author: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Version string.
    #[serde(default)]
    pub version: String,
    /// License.
    #[serde(default)]
    pub license: String,
    /// User-defined key/value pairs.
    #[serde(default)]
    pub user_defined: std::collections::BTreeMap<String, String>,
}

/// A classifier as the bridge reports it (`predictedFeatureName`,
/// `predictedProbabilitiesName`, `classLabels`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeClassifier {
    /// The output holding the predicted label.
    pub label_output: String,
    /// The output holding the probabilities dictionary.
    pub probabilities_output: Option<String>,
    /// The labels: strings or int64s (empty when Core ML does not say).
    pub labels: BridgeLabels,
}

/// A classifier's labels as JSON gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BridgeLabels {
    /// String labels.
    Strings(Vec<String>),
    /// Int64 labels.
    Int64(Vec<i64>),
}

/// A loaded model's interface (`coreml_model_schema`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSchema {
    /// Inputs, sorted by name.
    pub inputs: Vec<Feature>,
    /// Outputs, sorted by name.
    pub outputs: Vec<Feature>,
    /// States of a stateful model (v2), sorted by name: each state buffer's
    /// name, dtype and shape. Empty for a stateless model.
    #[serde(default)]
    pub states: Vec<Feature>,
    /// A multifunction model's functions, sorted (v2); empty for one
    /// function, or where Core ML cannot list them (before macOS 15).
    #[serde(default)]
    pub functions: Vec<String>,
    /// The function the handle was loaded with (`None`: the default).
    #[serde(default)]
    pub function: Option<String>,
    /// A classifier's outputs and labels (v2); `None` for other models.
    #[serde(default)]
    pub classifier: Option<BridgeClassifier>,
    /// Metadata.
    #[serde(default)]
    pub metadata: SchemaMetadata,
}

impl BridgeSchema {
    /// The crate's [`IoSchema`]: every feature with a dtype, via
    /// [`Feature::to_tensor_spec`]. Features without one are left out; this
    /// schema keeps them.
    pub fn to_io_schema(&self) -> IoSchema {
        IoSchema {
            inputs: self.inputs.iter().filter_map(Feature::to_tensor_spec).collect(),
            outputs: self.outputs.iter().filter_map(Feature::to_tensor_spec).collect(),
            states: self.states.iter().filter_map(Feature::to_tensor_spec).collect(),
            classifier: self.classifier.as_ref().map(|c| crate::feature::ClassifierSpec {
                label_output: c.label_output.clone(),
                probabilities_output: c.probabilities_output.clone().unwrap_or_default(),
                labels: match &c.labels {
                    BridgeLabels::Strings(v) => crate::feature::ClassLabels::Strings(v.clone()),
                    BridgeLabels::Int64(v) => crate::feature::ClassLabels::Int64(v.clone()),
                },
            }),
            functions: crate::inference::FunctionSet {
                names: self.functions.clone(),
                default: None,
                selected: self.function.clone(),
            },
        }
    }

    /// The inputs in words, for messages: `[x: f32 [1, 3], …]`.
    pub fn describe_inputs(&self) -> String {
        let v: Vec<String> = self.inputs.iter().map(Feature::describe).collect();
        format!("[{}]", v.join(", "))
    }
}

/// The `COREML_DTYPE_*` code of a dtype, if the bridge has one.
pub fn dtype_code(d: DType) -> Option<i32> {
    Some(match d {
        DType::F32 => ffi::COREML_DTYPE_F32,
        DType::F16 => ffi::COREML_DTYPE_F16,
        DType::F64 => ffi::COREML_DTYPE_F64,
        DType::I32 => ffi::COREML_DTYPE_I32,
        DType::I8 => ffi::COREML_DTYPE_I8,
        DType::I64 => ffi::COREML_DTYPE_I64,
        DType::U8 => return None,
    })
}

/// The dtype of a `COREML_DTYPE_*` code.
pub fn dtype_from_code(code: i32) -> Option<DType> {
    Some(match code {
        ffi::COREML_DTYPE_F32 => DType::F32,
        ffi::COREML_DTYPE_F16 => DType::F16,
        ffi::COREML_DTYPE_F64 => DType::F64,
        ffi::COREML_DTYPE_I32 => DType::I32,
        ffi::COREML_DTYPE_I8 => DType::I8,
        ffi::COREML_DTYPE_I64 => DType::I64,
        _ => return None,
    })
}

/// Input dtypes the bridge accepts (`I64` is output-only, `U8` has no code).
/// Core ML itself takes `I8` only from macOS 26 on; before, the bridge
/// answers `UNSUPPORTED`.
pub const INPUT_DTYPES: [DType; 5] = [DType::F32, DType::F16, DType::F64, DType::I32, DType::I8];

/// Most inputs one prediction may have (the bridge's limit).
pub const MAX_INPUTS: usize = 4096;
