//! Decoding MIL constant values (immediate or `blobFileValue`) into host
//! arrays. Each decoded value keeps its MIL dtype and shape; numeric data is
//! widened only as far as needed (f16 stays f16, integers become i64).

use std::collections::HashMap;

use coreml_proto::proto::mil_spec::{self, tensor_value, value, DataType, Value};
use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::milblob::{unpack_bits, WeightFile};
use crate::mlpackage::MlPackage;
use crate::tensor::checked_numel;

/// Host data of a decoded constant.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    F64(Vec<f64>),
    /// Every integer type, widened.
    I64(Vec<i64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

impl HostData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::F64(v) => v.len(),
            HostData::I64(v) => v.len(),
            HostData::Bool(v) => v.len(),
            HostData::Str(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Numeric values as f64 (`None` for strings).
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        Some(match self {
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::F64(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::Bool(v) => v.iter().map(|&b| b as u8 as f64).collect(),
            HostData::Str(_) => return None,
        })
    }

    /// Numeric values as f32 (`None` for strings).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        Some(match self {
            HostData::F32(v) => v.clone(),
            HostData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            _ => self.to_f64()?.into_iter().map(|x| x as f32).collect(),
        })
    }
}

/// A decoded constant: MIL dtype, shape and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// MIL `DataType` code.
    pub dtype: i32,
    /// Dimensions (empty for scalars).
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: HostData,
}

/// An int8 / uint8 constant's raw bytes, shape and signedness.
pub type RawBytes = (Vec<u8>, Vec<usize>, bool);

/// Decodes values, caching mapped weight files by name.
pub struct Decoder<'a> {
    pkg: &'a MlPackage,
    weights: HashMap<String, WeightFile>,
    /// Reads still to come of each blob (file name, offset) of the main
    /// block: a blob's pages are given back after its last read.
    reads_left: HashMap<(String, u64), usize>,
}

/// Blobs from this size on give their pages back after their last read.
const RELEASE_FROM: usize = 64 << 10;

/// Counts every `blobFileValue` of `block` (nested blocks included).
fn count_blob_reads(block: &mil_spec::Block, out: &mut HashMap<(String, u64), usize>) {
    let mut add = |v: &Value| {
        if let Some(value::Value::BlobFileValue(b)) = &v.value {
            *out.entry((b.file_name.clone(), b.offset)).or_default() += 1;
        }
    };
    for op in &block.operations {
        for arg in op.inputs.values() {
            for a in &arg.arguments {
                if let Some(mil_spec::argument::binding::Binding::Value(v)) = &a.binding {
                    add(v);
                }
            }
        }
        op.attributes.values().for_each(&mut add);
    }
    for op in &block.operations {
        for b in &op.blocks {
            count_blob_reads(b, out);
        }
    }
}

fn dtype_name(code: i32) -> String {
    DataType::try_from(code)
        .map(|d| d.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| format!("dtype code {code}"))
}

impl<'a> Decoder<'a> {
    /// A decoder for values of `pkg`.
    pub fn new(pkg: &'a MlPackage) -> Decoder<'a> {
        let mut reads_left = HashMap::new();
        if let Ok(block) = pkg.main_block() {
            count_blob_reads(block, &mut reads_left);
        }
        Decoder {
            pkg,
            weights: HashMap::new(),
            reads_left,
        }
    }

    /// The package's path (for errors).
    pub fn package_path(&self) -> &std::path::Path {
        self.pkg.path()
    }

    fn bad(&self, what: &str, reason: String) -> Error {
        Error::invalid_artifact(self.pkg.path(), format!("{what}: {reason}"))
    }

    /// Decodes `v`; `what` names it in errors (e.g. "op `conv_0` input `weight`").
    pub fn decode(&mut self, v: &Value, what: &str) -> Result<Decoded> {
        let (dtype, shape) = self.type_of(v, what)?;
        let n = checked_numel(&shape).ok_or_else(|| self.bad(what, format!("shape {shape:?} overflows")))?;
        // Decoded host values take at most 8 bytes an element (i64, f64).
        super::limits::ensure(what, (n as u64).checked_mul(8))?;
        let data = match &v.value {
            Some(value::Value::ImmediateValue(iv)) => match &iv.value {
                Some(value::immediate_value::Value::Tensor(t)) => self.decode_immediate(t, dtype, n, what)?,
                _ => return Err(Error::unsupported(format!("{what}: non-tensor immediate values"))),
            },
            Some(value::Value::BlobFileValue(b)) => {
                if !self.weights.contains_key(&b.file_name) {
                    let w = self.pkg.open_weights(&b.file_name)?;
                    self.weights.insert(b.file_name.clone(), w);
                }
                let blob = self.weights[&b.file_name].blob(b.offset)?;
                if blob.count != n as u64 {
                    return Err(self.bad(
                        what,
                        format!(
                            "blob at offset {} holds {} elements, its type {shape:?} needs {n}",
                            b.offset, blob.count
                        ),
                    ));
                }
                // A blob of the wrong dtype: name the const as well as file and offset.
                let named = |e: Error| match e {
                    Error::InvalidArtifact { path, reason } => {
                        Error::invalid_artifact(path, format!("{what} (type {}): {reason}", dtype_name(dtype)))
                    }
                    other => other,
                };
                let decode = |blob: &crate::milblob::Blob<'_>| -> Result<HostData> {
                    Ok(match DataType::try_from(dtype) {
                        Ok(DataType::Float32 | DataType::Bfloat16) => HostData::F32(blob.to_f32().map_err(named)?),
                        Ok(DataType::Float16) => HostData::F16(blob.to_f16().map_err(named)?),
                        Ok(
                            DataType::Int8
                            | DataType::Uint8
                            | DataType::Int16
                            | DataType::Uint16
                            | DataType::Int32
                            | DataType::Uint32
                            | DataType::Int4
                            | DataType::Uint4
                            | DataType::Uint2
                            | DataType::Uint1
                            | DataType::Uint3
                            | DataType::Uint6,
                        ) => HostData::I64(blob.to_i64().map_err(named)?),
                        _ => {
                            return Err(Error::unsupported(format!(
                                "{what}: weights of type {}",
                                dtype_name(dtype)
                            )))
                        }
                    })
                };
                // After a large blob's last read the file's pages need not stay
                // resident beside the decoded copy: it is decoded chunk by chunk,
                // each chunk's pages given back. Small blobs (parameters an op
                // may read twice while it is being fused) are read as they are.
                let last = Self::count_read(&mut self.reads_left, &b.file_name, b.offset, blob.data.len());
                if !last {
                    decode(&blob)?
                } else {
                    let wf = &self.weights[&b.file_name];
                    // Checked by the dense decode of the first chunk: the variant.
                    let kind = std::mem::discriminant(&decode(&crate::milblob::Blob {
                        data: &[],
                        count: 0,
                        padding_bits: 0,
                        ..blob
                    })?);
                    // SAFETY: `blob` is not used after this, and no other read
                    // of this blob is to come (`reads_left`).
                    unsafe {
                        if kind == std::mem::discriminant(&HostData::F16(Vec::new())) {
                            HostData::F16(wf.consume(b.offset, |p, out| {
                                out.extend(p.to_f16().map_err(named)?);
                                Ok(())
                            })?)
                        } else if kind == std::mem::discriminant(&HostData::I64(Vec::new())) {
                            HostData::I64(wf.consume(b.offset, |p, out| {
                                out.extend(p.to_i64().map_err(named)?);
                                Ok(())
                            })?)
                        } else {
                            // f32 straight into the output (one copy).
                            HostData::F32(wf.consume(b.offset, |p, out| {
                                if p.dtype == crate::milblob::BlobDType::F32 {
                                    out.extend(
                                        p.data
                                            .chunks_exact(4)
                                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                                    );
                                    Ok(())
                                } else {
                                    {
                                        out.extend(p.to_f32().map_err(named)?);
                                        Ok(())
                                    }
                                }
                            })?)
                        }
                    }
                }
            }
            None => return Err(self.bad(what, "a value with no data".into())),
        };
        if data.len() != n {
            return Err(self.bad(
                what,
                format!("{} elements for a value of shape {shape:?} ({n} expected)", data.len()),
            ));
        }
        Ok(Decoded { dtype, shape, data })
    }

    /// The MIL dtype code and constant shape of a tensor value.
    fn type_of(&self, v: &Value, what: &str) -> Result<(i32, Vec<usize>)> {
        Ok(match v.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
            Some(mil_spec::value_type::Type::TensorType(t)) => {
                let shape = t
                    .dimensions
                    .iter()
                    .map(|d| match d.dimension {
                        Some(mil_spec::dimension::Dimension::Constant(c)) => usize::try_from(c.size)
                            .map_err(|_| self.bad(what, format!("dimension {} is too large", c.size))),
                        _ => Err(self.bad(what, "a constant with a non-constant dimension".into())),
                    })
                    .collect::<Result<Vec<_>>>()?;
                (t.data_type, shape)
            }
            Some(_) => {
                return Err(Error::unsupported(format!(
                    "{what}: non-tensor constant values (lists, tuples, dicts)"
                )))
            }
            None => return Err(self.bad(what, "a value without a type".into())),
        })
    }

    /// Whether this read of blob (`file`, `offset`) of `len` bytes is its
    /// last: then its pages are given back as it is decoded.
    fn count_read(reads_left: &mut HashMap<(String, u64), usize>, file: &str, offset: u64, len: usize) -> bool {
        len >= RELEASE_FROM
            && reads_left.get_mut(&(file.to_string(), offset)).is_some_and(|left| {
                *left = left.saturating_sub(1);
                *left == 0
            })
    }

    /// The raw bytes of an int8 / uint8 constant stored in a weight file,
    /// with its shape and whether it is signed (`None` for any other value,
    /// immediates included): 1 byte an element instead of the 8 of
    /// [`Decoder::decode`]'s widened integers. A blob's last read gives its
    /// file pages back as it is copied.
    pub fn decode_raw_bytes(&mut self, v: &Value, what: &str) -> Result<Option<RawBytes>> {
        let Some(value::Value::BlobFileValue(b)) = &v.value else {
            return Ok(None);
        };
        let (dtype, shape) = self.type_of(v, what)?;
        let signed = match DataType::try_from(dtype) {
            Ok(DataType::Int8) => true,
            Ok(DataType::Uint8) => false,
            _ => return Ok(None),
        };
        let n = checked_numel(&shape).ok_or_else(|| self.bad(what, format!("shape {shape:?} overflows")))?;
        super::limits::ensure(what, Some(n as u64))?;
        if !self.weights.contains_key(&b.file_name) {
            let w = self.pkg.open_weights(&b.file_name)?;
            self.weights.insert(b.file_name.clone(), w);
        }
        let blob = self.weights[&b.file_name].blob(b.offset)?;
        if blob.count != n as u64 || blob.data.len() != n {
            return Err(self.bad(
                what,
                format!(
                    "blob at offset {} holds {} {:?} elements, its type {shape:?} needs {n} bytes",
                    b.offset, blob.count, blob.dtype
                ),
            ));
        }
        let len = blob.data.len();
        if !Self::count_read(&mut self.reads_left, &b.file_name, b.offset, len) {
            return Ok(Some((blob.data.to_vec(), shape, signed)));
        }
        // SAFETY: `blob` is not used after this, and no other read of this
        // blob is to come (`reads_left`).
        let bytes = unsafe {
            self.weights[&b.file_name].consume(b.offset, |p, out| {
                out.extend_from_slice(p.data);
                Ok(())
            })
        }?;
        Ok(Some((bytes, shape, signed)))
    }

    fn decode_immediate(&self, t: &mil_spec::TensorValue, dtype: i32, n: usize, what: &str) -> Result<HostData> {
        use tensor_value::Value as V;
        let dt = DataType::try_from(dtype).map_err(|_| self.bad(what, format!("unknown dtype code {dtype}")))?;
        Ok(match (&t.value, dt) {
            (Some(V::Floats(f)), _) => match dt {
                DataType::Float16 => HostData::F16(f.values.iter().map(|&x| f16::from_f32(x)).collect()),
                _ => HostData::F32(f.values.clone()),
            },
            (Some(V::Doubles(d)), _) => HostData::F64(d.values.clone()),
            (Some(V::Ints(i)), _) => HostData::I64(i.values.iter().map(|&x| x as i64).collect()),
            (Some(V::LongInts(i)), _) => HostData::I64(i.values.clone()),
            (Some(V::Bools(b)), _) => HostData::Bool(b.values.clone()),
            (Some(V::Strings(s)), _) => HostData::Str(s.values.clone()),
            (Some(V::Bytes(b)), dt) => {
                let b = &b.values;
                let need = |bytes: usize| -> Result<()> {
                    if b.len() < bytes {
                        Err(self.bad(
                            what,
                            format!("{} bytes of data, {bytes} needed for {n} elements", b.len()),
                        ))
                    } else {
                        Ok(())
                    }
                };
                match dt {
                    DataType::Float16 => {
                        need(n.saturating_mul(2))?;
                        HostData::F16(
                            b.chunks_exact(2)
                                .take(n)
                                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                                .collect(),
                        )
                    }
                    DataType::Bfloat16 => {
                        need(n.saturating_mul(2))?;
                        HostData::F32(
                            b.chunks_exact(2)
                                .take(n)
                                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                                .collect(),
                        )
                    }
                    DataType::Int8 => {
                        need(n)?;
                        HostData::I64(b.iter().take(n).map(|&x| x as i8 as i64).collect())
                    }
                    DataType::Uint8 | DataType::Bool => {
                        need(n)?;
                        HostData::I64(b.iter().take(n).map(|&x| x as i64).collect())
                    }
                    DataType::Int16 | DataType::Uint16 => {
                        need(n.saturating_mul(2))?;
                        let signed = dt == DataType::Int16;
                        HostData::I64(
                            b.chunks_exact(2)
                                .take(n)
                                .map(|c| {
                                    let u = u16::from_le_bytes([c[0], c[1]]);
                                    if signed {
                                        u as i16 as i64
                                    } else {
                                        u as i64
                                    }
                                })
                                .collect(),
                        )
                    }
                    DataType::Int32 | DataType::Uint32 => {
                        need(n.saturating_mul(4))?;
                        let signed = dt == DataType::Int32;
                        HostData::I64(
                            b.chunks_exact(4)
                                .take(n)
                                .map(|c| {
                                    let u = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                                    if signed {
                                        u as i32 as i64
                                    } else {
                                        u as i64
                                    }
                                })
                                .collect(),
                        )
                    }
                    DataType::Int64 | DataType::Uint64 => {
                        need(n.saturating_mul(8))?;
                        HostData::I64(
                            b.chunks_exact(8)
                                .take(n)
                                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                                .collect(),
                        )
                    }
                    DataType::Float32 => {
                        need(n.saturating_mul(4))?;
                        HostData::F32(
                            b.chunks_exact(4)
                                .take(n)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect(),
                        )
                    }
                    DataType::Uint1
                    | DataType::Uint2
                    | DataType::Uint3
                    | DataType::Uint4
                    | DataType::Uint6
                    | DataType::Int4 => {
                        let bits = match dt {
                            DataType::Uint1 => 1,
                            DataType::Uint2 => 2,
                            DataType::Uint3 => 3,
                            DataType::Uint6 => 6,
                            _ => 4,
                        };
                        need(n.saturating_mul(bits as usize).div_ceil(8))?;
                        let v = unpack_bits(b, bits, n);
                        HostData::I64(
                            v.into_iter()
                                .map(|x| {
                                    if dt == DataType::Int4 && x >= 8 {
                                        x as i64 - 16
                                    } else {
                                        x as i64
                                    }
                                })
                                .collect(),
                        )
                    }
                    other => {
                        return Err(Error::unsupported(format!(
                            "{what}: byte-encoded {}",
                            other.as_str_name()
                        )))
                    }
                }
            }
            (None, _) => return Err(self.bad(what, "an immediate tensor with no data".into())),
        })
    }
}
