//! Lowered programs: an ML Program rewritten to exactly what a [`Plan`] runs.
//! Constants the run-time ops read become plain `const` ops holding their
//! final values in the run-time dtype (fp16 weights already upcast where the
//! policy says so, constant subgraphs folded); a weight the plan keeps
//! compressed (int8, palettized) is written back, from the plan's own copy,
//! as the iOS16 `constexpr_*` op that yields it, so the lowered program is
//! about as large as the package and a warm load holds it compressed too.
//! Everything else the plan folded away is dropped. The result is
//! itself a valid `.mlpackage` that [`Plan::build`] loads without decoding,
//! dequantising or folding anything: the Candle engine's compiled form.
//!
//! [`Plan`]: super::Plan
//! [`Plan::build`]: super::Plan::build

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

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

use super::weights::{Store, Weights};

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
    /// A weight the plan keeps compressed (its stored form, shared).
    Packed(Arc<Weights>),
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

fn const_op(name: &str, c: &LoweredConst, weights: &mut WeightWriter<File>) -> candle_core::Result<Operation> {
    let stored;
    let t = match c {
        LoweredConst::Tensor(t) => t,
        LoweredConst::Packed(w) => {
            if let Some(op) = constexpr_op(name, w, weights) {
                return Ok(op);
            }
            stored = w.to_stored_tensor()?;
            &stored
        }
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
    make_op("const", name, ty.clone(), vec![("val", ty, val)])
}

/// An op with no inputs whose operands are attributes (as `const` and the
/// iOS16 `constexpr_*` ops keep them), yielding one value `name` of `ty`.
fn make_op(op_type: &str, name: &str, ty: ValueType, attrs: Vec<(&str, ValueType, value::Value)>) -> Operation {
    let name_value = Value {
        doc_string: String::new(),
        r#type: Some(tensor_type(DataType::String, &[])),
        value: Some(immediate(tensor_value::Value::Strings(tensor_value::RepeatedStrings {
            values: vec![name.to_string()],
        }))),
    };
    let mut attributes = HashMap::from([("name".to_string(), name_value)]);
    for (k, t, v) in attrs {
        attributes.insert(
            k.to_string(),
            Value {
                doc_string: String::new(),
                r#type: Some(t),
                value: Some(v),
            },
        );
    }
    Operation {
        r#type: op_type.into(),
        inputs: HashMap::new(),
        outputs: vec![NamedValueType {
            name: name.to_string(),
            r#type: Some(ty),
        }],
        blocks: vec![],
        attributes,
    }
}

/// Shape of a parameter of `n` values: a scalar for one value, else a vector.
fn param_shape(n: usize) -> Vec<usize> {
    if n == 1 {
        vec![]
    } else {
        vec![n]
    }
}

/// f32 values as an fp16 operand when `half` and every value is exactly an
/// fp16 (they were read from one), else as f32; inline when small.
fn float_param(v: &[f32], half: bool, weights: &mut WeightWriter<File>) -> (ValueType, value::Value) {
    let shape = param_shape(v.len());
    let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    if half && h.iter().zip(v).all(|(a, &b)| a.to_f32().to_bits() == b.to_bits()) {
        let bytes: Vec<u8> = bytemuck::cast_slice(&h).to_vec();
        let val = if v.len() <= INLINE_LIMIT {
            immediate(tensor_value::Value::Bytes(tensor_value::RepeatedBytes {
                values: bytes,
            }))
        } else {
            blob(weights.push(BlobDType::F16, &bytes))
        };
        return (tensor_type(DataType::Float16, &shape), val);
    }
    let val = if v.len() <= INLINE_LIMIT {
        immediate(tensor_value::Value::Floats(tensor_value::RepeatedFloats {
            values: v.to_vec(),
        }))
    } else {
        blob(weights.push(BlobDType::F32, bytemuck::cast_slice(v)))
    };
    (tensor_type(DataType::Float32, &shape), val)
}

/// A compressed weight as the iOS16 constexpr op that yields it
/// (`constexpr_affine_dequantize` or `constexpr_lut_to_dense`, with the
/// quantized bytes or packed indices in the weight file), written from the
/// plan's stored form: the package's blobs may have been released while
/// decoding. Costs one copy of the stored bytes. `None` when the stored form
/// has no such op (the caller writes the dense constant instead).
fn constexpr_op(name: &str, w: &Weights, weights: &mut WeightWriter<File>) -> Option<Operation> {
    let shape = w.shape();
    let out_dtype = if w.f16_values() {
        DataType::Float16
    } else {
        DataType::Float32
    };
    let out_ty = tensor_type(out_dtype, shape);
    match w.store() {
        Store::Affine {
            q,
            signed,
            scale,
            zero,
            dim,
            inner,
        } => {
            // Any axis of that size with `inner` elements after it reads the same.
            let axis =
                (0..shape.len()).find(|&a| shape[a] == *dim && shape[a + 1..].iter().product::<usize>() == *inner)?;
            // The zero point is in the data's dtype (it was read from it).
            let zp: Vec<u8> = zero
                .iter()
                .map(|&z| {
                    let ok = z.fract() == 0.0
                        && if *signed {
                            (-128.0..=127.0).contains(&z)
                        } else {
                            (0.0..=255.0).contains(&z)
                        };
                    ok.then_some(if *signed { z as i8 as u8 } else { z as u8 })
                })
                .collect::<Option<_>>()?;
            let (qdt, bdt) = if *signed {
                (DataType::Int8, BlobDType::I8)
            } else {
                (DataType::Uint8, BlobDType::U8)
            };
            let data = blob(weights.push(bdt, q));
            let zp_val = if zp.len() <= INLINE_LIMIT {
                immediate(tensor_value::Value::Bytes(tensor_value::RepeatedBytes {
                    values: zp.clone(),
                }))
            } else {
                blob(weights.push(bdt, &zp))
            };
            let (scale_ty, scale_val) = float_param(scale, w.f16_values(), weights);
            let axis_val = immediate(tensor_value::Value::Ints(tensor_value::RepeatedInts {
                values: vec![axis as i32],
            }));
            Some(make_op(
                "constexpr_affine_dequantize",
                name,
                out_ty,
                vec![
                    ("quantized_data", tensor_type(qdt, shape), data),
                    ("zero_point", tensor_type(qdt, &param_shape(zp.len())), zp_val),
                    ("scale", scale_ty, scale_val),
                    ("axis", tensor_type(DataType::Int32, &[]), axis_val),
                ],
            ))
        }
        Store::Lut { packed, nbits, table } => {
            if table.len() != 1usize << nbits || !matches!(nbits, 1 | 2 | 4 | 6 | 8) {
                return None;
            }
            // Checked before anything is written: a refusal leaves no blob behind.
            let dims: Vec<i32> = shape.iter().map(|&d| i32::try_from(d).ok()).collect::<Option<_>>()?;
            let indices = blob(weights.push(BlobDType::U8, packed));
            // At least 2 entries: a vector, as the op wants.
            let (lut_ty, lut_val) = float_param(table, w.f16_values(), weights);
            let shape_val = immediate(tensor_value::Value::Ints(tensor_value::RepeatedInts { values: dims }));
            Some(make_op(
                "constexpr_lut_to_dense",
                name,
                out_ty,
                vec![
                    ("indices", tensor_type(DataType::Uint8, &[packed.len()]), indices),
                    ("lut", lut_ty, lut_val),
                    ("shape", tensor_type(DataType::Uint32, &[shape.len()]), shape_val),
                ],
            ))
        }
        _ => None,
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
        let manifest = pkg.manifest();
        let root_item = &manifest.item_info_entries[&manifest.root_model_identifier];
        let spec_path = dest.join("Data").join(&root_item.path);
        let model_dir = spec_path.parent().expect("spec path has a parent");
        std::fs::create_dir_all(model_dir.join("weights")).map_err(|e| io("creating", e))?;
        // The weights are written as the ops are made: no copy of the file
        // is held (the caller installs `dest` only once this returns Ok).
        let weight_path = model_dir.join("weights/weight.bin");
        let file = File::create(&weight_path).map_err(|e| io("creating", e))?;
        let mut weights = WeightWriter::new(file);
        let mut ops = Vec::with_capacity(self.consts.len() + self.kept_ops.len());
        for (name, t) in &self.consts {
            ops.push(const_op(name, t, &mut weights).map_err(|e| Error::internal(format!("lowering `{name}`: {e}")))?);
        }
        for &i in &self.kept_ops {
            ops.push(block.operations[i].clone());
        }
        block.operations = ops;
        weights.finish().map_err(|e| io("writing", e))?;

        let manifest_json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::internal(e.to_string()))?;
        std::fs::write(dest.join("Manifest.json"), manifest_json).map_err(|e| io("writing", e))?;
        std::fs::write(&spec_path, spec.encode_to_vec()).map_err(|e| io("writing", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::package_path;
    use super::super::{FloatPolicy, Plan};
    use crate::mlpackage::MlPackage;

    /// Every iOS16 constexpr conformance case (int8 and uint8 along any axis,
    /// scalar parameters, fp16 outputs, palettes of 1 to 8 bits), lowered
    /// and loaded again, runs bit for bit as built from the package, under
    /// both float policies; with upcast, weights the plan keeps compressed
    /// stay constexpr ops in the lowered program.
    #[test]
    fn lowered_compressed_weights_run_bit_for_bit_and_stay_compressed() {
        let mut kept = Vec::new();
        for case in [
            "affine_dequantize_fp16",
            "affine_dequantize_fp32_zp_axis_neg1",
            "affine_dequantize_int8_axis1",
            "affine_dequantize_uint8_scalar",
            "lut_to_dense_ios16_1bit",
            "lut_to_dense_ios16_2bit",
            "lut_to_dense_ios16_4bit",
            "lut_to_dense_ios16_6bit",
            "lut_to_dense_ios16_8bit",
            "lut_to_dense_ios16_fp16",
            "lut_to_dense_ios16_int8_lut",
        ] {
            let path = package_path(&format!("constexpr_ops/{case}"));
            let ins = crate::golden::read_npy_dir(path.parent().unwrap(), "inputs").unwrap();
            let pkg = MlPackage::open(&path).unwrap();
            for policy in [FloatPolicy::Upcast, FloatPolicy::Native] {
                let (plan, lowered) = Plan::build_lowered(&pkg, policy).unwrap();
                let want = plan.run(&ins).unwrap();
                let dir = tempfile::tempdir().unwrap();
                let dest = dir.path().join("lowered.mlpackage");
                lowered.write(&pkg, &dest).unwrap();
                let lp = MlPackage::open(&dest).unwrap();
                let again = Plan::build(&lp, policy).unwrap_or_else(|e| panic!("{case}: {e}"));
                let got = again.run(&ins).unwrap();
                for (k, v) in &want {
                    assert_eq!(got[k].as_bytes(), v.as_bytes(), "{case} {policy:?}: output {k}");
                }
                if policy == FloatPolicy::Upcast && lp.op_histogram().keys().any(|k| k.starts_with("constexpr_")) {
                    assert_eq!(again.const_bytes(), plan.const_bytes(), "{case}");
                    kept.push(case);
                }
            }
        }
        // The other cases hold their data inline, which the plan decompresses
        // (4-bit palettes in a weight file: tests/candle_cache.rs).
        assert_eq!(kept, ["affine_dequantize_fp16", "affine_dequantize_int8_axis1"]);
    }
}
