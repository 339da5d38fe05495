//! A package's schema from its spec: inputs, outputs, states and classifier
//! of one function, in the terms of [`IoSchema`]. A single-function package
//! describes its function at the top of its `ModelDescription`; a
//! multifunction package (`ct.utils.save_multifunction`) has one
//! `FunctionDescription` per function under `functions` and nothing at the top.

use std::collections::HashMap;

use coreml_proto::proto::mil_spec::{self, Function};
use coreml_proto::proto::{array_feature_type, feature_type, FeatureDescription, Model};

use crate::feature::{ClassLabels, ClassifierSpec, ColorLayout, FeatureKind, ImageSizes, ImageSpec, KeyKind};
use crate::inference::{FunctionSet, IoSchema, ShapeConstraint, TensorSpec};
use crate::tensor::DType;

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

/// The description of one function: its features and its classifier's
/// output names.
struct FnDesc<'a> {
    input: &'a [FeatureDescription],
    output: &'a [FeatureDescription],
    state: &'a [FeatureDescription],
    predicted_feature_name: &'a str,
    predicted_probabilities_name: &'a str,
}

/// The package's functions: every name in the description's order (empty
/// for a single-function package) and the default one (`main` unless the
/// description names another). Checks that each described function is in
/// the program and the default is one of them.
pub(super) fn function_list(
    spec: &Model,
    program: &mil_spec::Program,
) -> std::result::Result<(Vec<String>, String), String> {
    let desc = spec.description.as_ref().ok_or("the spec has no model description")?;
    let default = Some(desc.default_function_name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("main")
        .to_string();
    let names: Vec<String> = desc.functions.iter().map(|f| f.name.clone()).collect();
    for n in &names {
        if !program.functions.contains_key(n) {
            return Err(format!(
                "the model description lists function `{n}`, which the ML Program does not have"
            ));
        }
    }
    if !names.is_empty() && !names.contains(&default) {
        return Err(format!(
            "the default function `{default}` is not among the described functions {names:?}"
        ));
    }
    Ok((names, default))
}

fn function_desc<'a>(spec: &'a Model, name: &str) -> std::result::Result<FnDesc<'a>, String> {
    let desc = spec.description.as_ref().ok_or("the spec has no model description")?;
    if desc.functions.is_empty() {
        return Ok(FnDesc {
            input: &desc.input,
            output: &desc.output,
            state: &desc.state,
            predicted_feature_name: &desc.predicted_feature_name,
            predicted_probabilities_name: &desc.predicted_probabilities_name,
        });
    }
    let f = desc
        .functions
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("the model description has no function `{name}`"))?;
    Ok(FnDesc {
        input: &f.input,
        output: &f.output,
        state: &f.state,
        predicted_feature_name: &f.predicted_feature_name,
        predicted_probabilities_name: &f.predicted_probabilities_name,
    })
}

/// The schema of function `name` (the program's `main`, its [`Function`]);
/// `functions` is what [`IoSchema::functions`] will say.
pub(super) fn build_schema(
    spec: &Model,
    name: &str,
    main: &Function,
    functions: FunctionSet,
) -> std::result::Result<IoSchema, String> {
    let desc = function_desc(spec, name)?;
    let desc = &desc;
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
        functions,
    })
}

/// A classifier's outputs and label set: the description names the outputs
/// (`predictedFeatureName`, `predictedProbabilitiesName`), the program's
/// `classify` op holds the labels (its `classes` literal).
fn classifier_spec(desc: &FnDesc<'_>, main: &Function) -> std::result::Result<Option<ClassifierSpec>, String> {
    let label = desc.predicted_feature_name;
    let probs = desc.predicted_probabilities_name;
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
fn state_specs(desc: &FnDesc<'_>, main: &Function) -> std::result::Result<Vec<TensorSpec>, String> {
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
    for f in desc.state {
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
