//! Lowered programs: an ML Program rewritten to exactly what a [`Plan`] runs.
//! Constants the run-time ops read become plain `const` ops holding their
//! final values in the run-time dtype (compressed weights decompressed, fp16
//! weights already upcast where the policy says so, constant subgraphs
//! folded); everything else the plan folded away is dropped. The result is
//! itself a valid `.mlpackage` that [`Plan::build`] loads without decoding,
//! dequantising or folding anything: the Candle engine's compiled form.
//!
//! [`Plan`]: super::Plan
//! [`Plan::build`]: super::Plan::build

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType as CDType, Tensor as CTensor};
use coreml_proto::proto::mil_spec::{
    self, dimension, tensor_value, value, DataType, Dimension, NamedValueType, Operation, TensorType, TensorValue,
    Value, ValueType,
};
use coreml_proto::proto::model;
use prost::Message;

use crate::error::{Error, Result};
use crate::milblob::{BlobDType, WeightWriter};
use crate::mlpackage::MlPackage;

/// Constants up to this many elements are stored inline in the spec.
const INLINE_LIMIT: usize = 16;

/// What [`super::Plan::build_lowered`] keeps: the run-time ops (by index in
/// the original block) and the constants they read, by value name.
pub struct Lowered {
    pub(super) kept_ops: Vec<usize>,
    pub(super) consts: Vec<(String, LoweredConst)>,
}

/// A constant of a lowered program.
pub(super) enum LoweredConst {
    /// Numeric or bool, in its run-time dtype.
    Tensor(CTensor),
    /// Strings (op parameters such as a cast's dtype), with their shape.
    Strings(Vec<String>, Vec<usize>),
}

impl std::fmt::Debug for Lowered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Lowered({} ops, {} constants)",
            self.kept_ops.len(),
            self.consts.len()
        )
    }
}

fn tensor_type(dtype: DataType, shape: &[usize]) -> ValueType {
    ValueType {
        r#type: Some(mil_spec::value_type::Type::TensorType(TensorType {
            data_type: dtype as i32,
            rank: shape.len() as i64,
            dimensions: shape
                .iter()
                .map(|&d| Dimension {
                    dimension: Some(dimension::Dimension::Constant(dimension::ConstantDimension {
                        size: d as u64,
                    })),
                })
                .collect(),
            attributes: HashMap::new(),
        })),
    }
}

fn immediate(v: tensor_value::Value) -> value::Value {
    value::Value::ImmediateValue(value::ImmediateValue {
        value: Some(value::immediate_value::Value::Tensor(TensorValue { value: Some(v) })),
    })
}

fn const_op(name: &str, c: &LoweredConst, weights: &mut WeightWriter) -> candle_core::Result<Operation> {
    let t = match c {
        LoweredConst::Tensor(t) => t,
        LoweredConst::Strings(values, shape) => {
            let val = immediate(tensor_value::Value::Strings(tensor_value::RepeatedStrings {
                values: values.clone(),
            }));
            return Ok(make_const(name, tensor_type(DataType::String, shape), val));
        }
    };
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    let n = flat.elem_count();
    let (dtype, val) = match t.dtype() {
        CDType::F32 => {
            let v: Vec<f32> = flat.to_vec1()?;
            if n <= INLINE_LIMIT {
                (
                    DataType::Float32,
                    immediate(tensor_value::Value::Floats(tensor_value::RepeatedFloats { values: v })),
                )
            } else {
                let off = weights.push(BlobDType::F32, bytemuck::cast_slice(&v));
                (DataType::Float32, blob(off))
            }
        }
        CDType::F16 => {
            let v: Vec<half::f16> = flat.to_vec1()?;
            let bytes: Vec<u8> = bytemuck::cast_slice(&v).to_vec();
            if n <= INLINE_LIMIT {
                (
                    DataType::Float16,
                    immediate(tensor_value::Value::Bytes(tensor_value::RepeatedBytes {
                        values: bytes,
                    })),
                )
            } else {
                (DataType::Float16, blob(weights.push(BlobDType::F16, &bytes)))
            }
        }
        CDType::U8 => {
            let v: Vec<u8> = flat.to_vec1()?;
            let values = v.into_iter().map(|x| x != 0).collect();
            (
                DataType::Bool,
                immediate(tensor_value::Value::Bools(tensor_value::RepeatedBools { values })),
            )
        }
        _ => {
            let v: Vec<i64> = flat.to_dtype(CDType::I64)?.to_vec1()?;
            if v.iter().all(|&x| i32::try_from(x).is_ok()) {
                let v32: Vec<i32> = v.iter().map(|&x| x as i32).collect();
                if n <= INLINE_LIMIT {
                    (
                        DataType::Int32,
                        immediate(tensor_value::Value::Ints(tensor_value::RepeatedInts { values: v32 })),
                    )
                } else {
                    (
                        DataType::Int32,
                        blob(weights.push(BlobDType::I32, bytemuck::cast_slice(&v32))),
                    )
                }
            } else {
                (
                    DataType::Int64,
                    immediate(tensor_value::Value::LongInts(tensor_value::RepeatedLongInts {
                        values: v,
                    })),
                )
            }
        }
    };
    Ok(make_const(name, tensor_type(dtype, &shape), val))
}

fn make_const(name: &str, ty: ValueType, val: value::Value) -> Operation {
    let name_value = Value {
        doc_string: String::new(),
        r#type: Some(tensor_type(DataType::String, &[])),
        value: Some(immediate(tensor_value::Value::Strings(tensor_value::RepeatedStrings {
            values: vec![name.to_string()],
        }))),
    };
    Operation {
        r#type: "const".into(),
        inputs: HashMap::new(),
        outputs: vec![NamedValueType {
            name: name.to_string(),
            r#type: Some(ty.clone()),
        }],
        blocks: vec![],
        attributes: HashMap::from([
            ("name".to_string(), name_value),
            (
                "val".to_string(),
                Value {
                    doc_string: String::new(),
                    r#type: Some(ty),
                    value: Some(val),
                },
            ),
        ]),
    }
}

fn blob(offset: u64) -> value::Value {
    value::Value::BlobFileValue(value::BlobFileValue {
        file_name: "@model_path/weights/weight.bin".into(),
        offset,
    })
}

impl Lowered {
    /// Number of run-time ops kept.
    pub fn op_count(&self) -> usize {
        self.kept_ops.len()
    }

    /// Writes the lowered program of `pkg` as a new `.mlpackage` at `dest`
    /// (which must not exist). Costs one write of every kept constant.
    pub fn write(&self, pkg: &MlPackage, dest: &Path) -> Result<()> {
        let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", dest.display()), e);
        let mut spec = pkg.spec().clone();
        let main_name = pkg.function_name().to_string();
        // A multifunction package lowers to its selected function alone, as
        // the default: the lowered weights serve no other function.
        if let Some(d) = spec.description.as_mut().filter(|d| !d.functions.is_empty()) {
            d.functions.retain(|f| f.name == main_name);
            d.default_function_name = main_name.clone();
        }
        let Some(model::Type::MlProgram(program)) = &mut spec.r#type else {
            return Err(Error::internal("lowering a package that is not an ML Program"));
        };
        program.functions.retain(|name, _| *name == main_name);
        let f = program
            .functions
            .get_mut(&main_name)
            .ok_or_else(|| Error::internal("lowering: no main function"))?;
        let block = f
            .block_specializations
            .get_mut(&f.opset)
            .ok_or_else(|| Error::internal("lowering: no block for the opset"))?;
        let mut weights = WeightWriter::new();
        let mut ops = Vec::with_capacity(self.consts.len() + self.kept_ops.len());
        for (name, t) in &self.consts {
            ops.push(const_op(name, t, &mut weights).map_err(|e| Error::internal(format!("lowering `{name}`: {e}")))?);
        }
        for &i in &self.kept_ops {
            ops.push(block.operations[i].clone());
        }
        block.operations = ops;

        let manifest = pkg.manifest();
        let root_item = &manifest.item_info_entries[&manifest.root_model_identifier];
        let spec_path = dest.join("Data").join(&root_item.path);
        let model_dir = spec_path.parent().expect("spec path has a parent");
        std::fs::create_dir_all(model_dir.join("weights")).map_err(|e| io("creating", e))?;
        let manifest_json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::internal(e.to_string()))?;
        std::fs::write(dest.join("Manifest.json"), manifest_json).map_err(|e| io("writing", e))?;
        std::fs::write(&spec_path, spec.encode_to_vec()).map_err(|e| io("writing", e))?;
        std::fs::write(model_dir.join("weights/weight.bin"), weights.finish()).map_err(|e| io("writing", e))?;
        Ok(())
    }
}
