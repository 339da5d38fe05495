//! Host tensors: a dtype, a shape and row-major little-endian bytes.
//!
//! This is the only tensor type that crosses the public API. Engines convert to
//! their own representation internally (candle tensors, `MLMultiArray`s); the
//! bytes here are always dense, row-major and in the host's (little-endian)
//! byte order.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use half::f16;
use npyz::WriterBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Named tensors, as model inputs or outputs. Ordered by name so that
/// iteration, hashing and printing are deterministic.
pub type TensorMap = BTreeMap<String, Tensor>;

/// Element type of a [`Tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    F64,
    I32,
    I64,
    I8,
    U8,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::F64,
        DType::I32,
        DType::I64,
        DType::I8,
        DType::U8,
    ];

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
            DType::I8 | DType::U8 => 1,
        }
    }

    /// Short lowercase name (`f32`, `i64`, …), as used in errors and JSON.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::I8 => "i8",
            DType::U8 => "u8",
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::F64)
    }

    /// Parses the names produced by [`DType::name`] (also `float32`, `int32`, …).
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => DType::F32,
            "f16" | "float16" | "fp16" => DType::F16,
            "f64" | "float64" | "double" => DType::F64,
            "i32" | "int32" => DType::I32,
            "i64" | "int64" => DType::I64,
            "i8" | "int8" => DType::I8,
            "u8" | "uint8" => DType::U8,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Rust element types that map one-to-one onto a [`DType`].
pub trait Element: bytemuck::Pod + npyz::Deserialize + npyz::Serialize + npyz::AutoSerialize {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// Lossy conversion to f64, for casts and comparisons.
    fn to_f64(self) -> f64;
    /// Conversion from f64 (saturating for integers, rounding for floats).
    fn from_f64(v: f64) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr, |$v:ident| $to:expr, |$w:ident| $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            fn to_f64(self) -> f64 {
                let $v = self;
                $to
            }
            fn from_f64($w: f64) -> Self {
                $from
            }
        }
    };
}

element!(f32, DType::F32, |v| v as f64, |w| w as f32);
element!(f64, DType::F64, |v| v, |w| w);
element!(f16, DType::F16, |v| v.to_f64(), |w| f16::from_f64(w));
element!(i32, DType::I32, |v| v as f64, |w| w as i32);
element!(i64, DType::I64, |v| v as f64, |w| w as i64);
element!(i8, DType::I8, |v| v as f64, |w| w as i8);
element!(u8, DType::U8, |v| v as f64, |w| w as u8);

/// A dense, row-major tensor held in host memory.
///
/// Cloning copies the bytes. Construction checks that the byte length matches
/// the shape and dtype, so a `Tensor` is always internally consistent.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {:?}, {} bytes)", self.dtype, self.shape, self.data.len())
    }
}

/// Largest `.npy` header accepted, checked before the header is parsed
/// (numpy's own reader refuses headers over 10 000 bytes by default).
pub const MAX_NPY_HEADER_BYTES: usize = 64 << 10;

/// Deepest bracket nesting a `.npy` header may have. A plain array's header
/// is `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}` (depth 2);
/// structured dtypes nest a little deeper and are refused later anyway.
const MAX_NPY_HEADER_NESTING: usize = 4;

/// How deeply `{`, `[` and `(` nest in `header`, outside quoted strings. The
/// header parser behind npyz backtracks exponentially on deeply nested
/// malformed input (a 186-byte file hung it), so depth is checked first.
/// Costs one pass over the header.
fn npy_header_nesting(header: &[u8]) -> usize {
    let (mut depth, mut max, mut quote, mut escaped) = (0usize, 0usize, None::<u8>, false);
    for &b in header {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'{' | b'[' | b'(' => {
                    depth += 1;
                    max = max.max(depth);
                }
                b'}' | b']' | b')' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    max
}

/// The `'shape': (…)` tuple of a `.npy` header dictionary, when it can be
/// found and every entry is a non-negative integer.
fn npy_header_shape(header: &str) -> Option<Vec<u64>> {
    let at = header.find("'shape'").or_else(|| header.find("\"shape\""))?;
    let rest = &header[at..];
    let open = rest.find('(')?;
    let close = rest[open..].find(')')? + open;
    rest[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<u64>().ok())
        .collect()
}

/// Number of elements of a shape, or `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// Wraps row-major little-endian `bytes`. Costs nothing beyond the check.
    ///
    /// Fails with `SchemaMismatch` when the byte length is not
    /// `numel(shape) * dtype.size_in_bytes()`.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Tensor> {
        let expected = checked_numel(&shape)
            .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
            .ok_or_else(|| {
                Error::schema_mismatch(
                    format!("size of a {dtype} tensor of shape {shape:?}"),
                    "a size that fits in memory",
                    "an element count or byte size that overflows",
                )
            })?;
        if bytes.len() != expected {
            return Err(Error::schema_mismatch(
                format!("byte length of a {dtype} tensor of shape {shape:?}"),
                format!("{expected} bytes"),
                format!("{} bytes", bytes.len()),
            ));
        }
        Ok(Tensor {
            dtype,
            shape,
            data: bytes,
        })
    }

    /// Builds a tensor from typed values; fails if `values.len()` does not
    /// match the shape.
    pub fn from_vec<T: Element>(shape: Vec<usize>, values: Vec<T>) -> Result<Tensor> {
        let n = checked_numel(&shape).ok_or_else(|| {
            Error::schema_mismatch(
                format!("element count of a tensor of shape {shape:?}"),
                "a count that fits in memory",
                "a count that overflows",
            )
        })?;
        if values.len() != n {
            return Err(Error::schema_mismatch(
                format!("element count of a tensor of shape {shape:?}"),
                format!("{n} elements"),
                format!("{} elements", values.len()),
            ));
        }
        let data = bytemuck::cast_slice::<T, u8>(&values).to_vec();
        Ok(Tensor {
            dtype: T::DTYPE,
            shape,
            data,
        })
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
        let n = checked_numel(&shape)
            .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
            .ok_or_else(|| {
                Error::schema_mismatch(
                    format!("size of a {dtype} tensor of shape {shape:?}"),
                    "a size that fits in memory",
                    "an element count or byte size that overflows",
                )
            })?;
        Ok(Tensor {
            dtype,
            shape,
            data: vec![0; n],
        })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size_in_bytes()
    }

    /// The raw row-major little-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The raw bytes, writable in place (dtype and shape stay as they are).
    /// Costs nothing; how the output buffers of `predict_into` are reused.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Takes the raw bytes out of the tensor.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// Same data, new shape (must have the same element count).
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor> {
        Tensor::from_bytes(self.dtype, shape, self.data)
    }

    /// Copies the elements out as `T`; fails unless `T` is this tensor's dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::schema_mismatch(
                "tensor dtype",
                T::DTYPE.name(),
                self.dtype.name(),
            ));
        }
        Ok(bytemuck::pod_collect_to_vec(&self.data))
    }

    /// Copies the elements out as f32, converting from any dtype.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(&self.data),
            DType::F16 => {
                let h: Vec<f16> = bytemuck::pod_collect_to_vec(&self.data);
                h.iter().map(|v| v.to_f32()).collect()
            }
            _ => self.to_f64_vec().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// Copies the elements out as f64, converting from any dtype.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        fn conv<T: Element>(b: &[u8]) -> Vec<f64> {
            bytemuck::pod_collect_to_vec::<u8, T>(b)
                .into_iter()
                .map(T::to_f64)
                .collect()
        }
        match self.dtype {
            DType::F32 => conv::<f32>(&self.data),
            DType::F16 => conv::<f16>(&self.data),
            DType::F64 => conv::<f64>(&self.data),
            DType::I32 => conv::<i32>(&self.data),
            DType::I64 => conv::<i64>(&self.data),
            DType::I8 => conv::<i8>(&self.data),
            DType::U8 => conv::<u8>(&self.data),
        }
    }

    /// Converts to another dtype (f32↔f16 round to nearest; float→int
    /// truncates toward zero and saturates). Returns a copy even when the
    /// dtype is unchanged.
    pub fn cast(&self, to: DType) -> Tensor {
        if to == self.dtype {
            return self.clone();
        }
        let shape = self.shape.clone();
        let data = match (self.dtype, to) {
            (DType::F32, DType::F16) => {
                let v: Vec<f32> = bytemuck::pod_collect_to_vec(&self.data);
                let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                bytemuck::cast_slice(&h).to_vec()
            }
            (DType::F16, DType::F32) => bytemuck::cast_slice(&self.to_f32_vec()).to_vec(),
            _ => {
                fn back<T: Element>(v: Vec<f64>) -> Vec<u8> {
                    let t: Vec<T> = v.into_iter().map(T::from_f64).collect();
                    bytemuck::cast_slice(&t).to_vec()
                }
                let v = self.to_f64_vec();
                match to {
                    DType::F32 => back::<f32>(v),
                    DType::F16 => back::<f16>(v),
                    DType::F64 => back::<f64>(v),
                    DType::I32 => back::<i32>(v),
                    DType::I64 => back::<i64>(v),
                    DType::I8 => back::<i8>(v),
                    DType::U8 => back::<u8>(v),
                }
            }
        };
        Tensor { dtype: to, shape, data }
    }

    /// Parses a `.npy` file's bytes (format 1.0–3.0, C order, any byte order).
    /// The header length is capped at [`MAX_NPY_HEADER_BYTES`] before the
    /// header is parsed, and the data must be exactly what the header's
    /// shape and dtype need: fewer bytes (truncated) or more (trailing bytes)
    /// are errors. Nothing is allocated beyond the input's own size.
    pub fn from_npy_bytes(bytes: &[u8]) -> Result<Tensor> {
        Self::parse_npy(bytes, "<memory>")
    }

    /// Reads a `.npy` file: a regular file (a FIFO, device or socket is
    /// refused unread), read once, never more than its size. Fortran-order
    /// arrays and dtypes outside [`DType`] are rejected with a message saying
    /// what was found. Costs one read and the file's size in memory.
    pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
        let path = path.as_ref();
        let (f, len) = crate::cache::fsx::open_regular(path)?;
        let bytes = crate::cache::fsx::read_exact_len(f, len, path)?;
        Self::from_npy_file_bytes(&bytes, path)
    }

    /// [`Tensor::from_npy_bytes`] naming `path` in errors.
    pub(crate) fn from_npy_file_bytes(bytes: &[u8], path: &Path) -> Result<Tensor> {
        Self::parse_npy(bytes, &path.display().to_string())
    }

    fn parse_npy(bytes: &[u8], origin: &str) -> Result<Tensor> {
        let bad = |reason: String| Error::invalid_artifact(origin, reason);
        let len = bytes.len();
        if len < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad(
                "not a valid .npy file: it does not start with the \\x93NUMPY magic".into(),
            ));
        }
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
            2 | 3 if len >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            2 | 3 => {
                return Err(bad(format!(
                    "not a valid .npy file: {len} bytes, shorter than its preamble"
                )))
            }
            v => return Err(bad(format!("unsupported .npy format version {v} (expected 1, 2 or 3)"))),
        };
        if header_len > MAX_NPY_HEADER_BYTES {
            return Err(bad(format!(
                ".npy header of {header_len} bytes is more than the {MAX_NPY_HEADER_BYTES} allowed"
            )));
        }
        let data_start = start + header_len;
        if data_start > len {
            return Err(bad(format!(
                ".npy header of {header_len} bytes runs past the end of the file ({len} bytes)"
            )));
        }
        let nesting = npy_header_nesting(&bytes[start..data_start]);
        if nesting > MAX_NPY_HEADER_NESTING {
            return Err(bad(format!(
                "not a valid .npy file: its header nests brackets {nesting} deep (a plain array's header nests 2)"
            )));
        }
        // npyz multiplies the shape out unchecked: check it first.
        if let Some(dims) = std::str::from_utf8(&bytes[start..data_start])
            .ok()
            .and_then(npy_header_shape)
        {
            if dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none() {
                return Err(bad(format!("the element count of shape {dims:?} overflows")));
            }
        }
        let npy = npyz::NpyFile::new(bytes).map_err(|e| bad(format!("not a valid .npy file: {e}")))?;
        if npy.order() == npyz::Order::Fortran {
            return Err(bad(
                "Fortran-order arrays are not supported; save a C-contiguous array".into()
            ));
        }
        let shape: Vec<usize> = npy
            .shape()
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} too large"))))
            .collect::<Result<_>>()?;
        let descr = match npy.dtype() {
            npyz::DType::Plain(ts) => ts.to_string(),
            other => return Err(bad(format!("structured dtypes are not supported (found {other:?})"))),
        };
        // Type string: byte order char, kind, size (e.g. "<f4", "|u1").
        let kind_size = descr.get(1..).unwrap_or("");
        let item = match kind_size {
            "f4" | "i4" => 4,
            "f2" => 2,
            "f8" | "i8" => 8,
            "i1" | "u1" | "b1" => 1,
            _ => {
                return Err(bad(format!(
                    "unsupported .npy dtype `{descr}` (expected one of f4, f2, f8, i4, i8, i1, u1)"
                )))
            }
        };
        let need = checked_numel(&shape)
            .and_then(|n| n.checked_mul(item))
            .ok_or_else(|| bad(format!("the element count of shape {shape:?} overflows")))?;
        let have = len - data_start;
        if have < need {
            return Err(bad(format!(
                "truncated: shape {shape:?} of `{descr}` needs {need} data bytes, the file holds {have}"
            )));
        }
        if have > need {
            return Err(bad(format!(
                "{} trailing bytes after the data (shape {shape:?} of `{descr}` needs {need} bytes)",
                have - need
            )));
        }
        fn load<T: Element>(npy: npyz::NpyFile<&[u8]>, shape: Vec<usize>, origin: &str) -> Result<Tensor> {
            let v: Vec<T> = npy
                .into_vec()
                .map_err(|e| Error::invalid_artifact(origin, format!("reading .npy data: {e}")))?;
            Tensor::from_vec(shape, v)
        }
        match kind_size {
            "f4" => load::<f32>(npy, shape, origin),
            "f2" => load::<f16>(npy, shape, origin),
            "f8" => load::<f64>(npy, shape, origin),
            "i4" => load::<i32>(npy, shape, origin),
            "i8" => load::<i64>(npy, shape, origin),
            "i1" => load::<i8>(npy, shape, origin),
            _ => load::<u8>(npy, shape, origin),
        }
    }

    /// Serialises to `.npy` bytes (format 1.0, little-endian, C order).
    pub fn to_npy_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 128);
        self.write_npy_to(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Writes a `.npy` file (format 1.0, little-endian, C order).
    pub fn write_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let f = std::fs::File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut w = std::io::BufWriter::new(f);
        self.write_npy_to(&mut w)
            .and_then(|_| w.flush())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    fn write_npy_to<W: Write>(&self, w: W) -> std::io::Result<()> {
        fn write<T: Element, W: Write>(t: &Tensor, w: W) -> std::io::Result<()> {
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            let mut writer = npyz::WriteOptions::<T>::new()
                .default_dtype()
                .shape(&shape)
                .writer(w)
                .begin_nd()?;
            let values: Vec<T> = bytemuck::pod_collect_to_vec(&t.data);
            writer.extend(values)?;
            writer.finish()
        }
        match self.dtype {
            DType::F32 => write::<f32, W>(self, w),
            DType::F16 => write::<f16, W>(self, w),
            DType::F64 => write::<f64, W>(self, w),
            DType::I32 => write::<i32, W>(self, w),
            DType::I64 => write::<i64, W>(self, w),
            DType::I8 => write::<i8, W>(self, w),
            DType::U8 => write::<u8, W>(self, w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_length_is_checked() {
        let err = Tensor::from_bytes(DType::F32, vec![2, 3], vec![0; 23]).unwrap_err();
        assert!(err.to_string().contains("expected 24 bytes, got 23 bytes"), "{err}");
        assert!(Tensor::from_vec(vec![2, 2], vec![1.0f32; 3]).is_err());
        assert!(Tensor::from_bytes(DType::F32, vec![usize::MAX, 4], vec![]).is_err());
    }

    #[test]
    fn f32_f16_round_trip_rounds_to_nearest() {
        let t = Tensor::from_vec(vec![4], vec![1.0f32, 0.1, -65504.0, 1e-8]).unwrap();
        let h = t.cast(DType::F16);
        assert_eq!(h.dtype(), DType::F16);
        assert_eq!(h.as_bytes().len(), 8);
        let back = h.cast(DType::F32).to_vec::<f32>().unwrap();
        assert_eq!(back[0], 1.0);
        assert!((back[1] - 0.1).abs() < 1e-4 && back[1] != 0.1);
        assert_eq!(back[2], -65504.0);
        assert_eq!(back[3], 0.0, "1e-8 is below f16's smallest subnormal");
    }

    #[test]
    fn typed_access_checks_dtype() {
        let t = Tensor::from_vec(vec![2], vec![7i32, -3]).unwrap();
        assert_eq!(t.to_vec::<i32>().unwrap(), vec![7, -3]);
        let err = t.to_vec::<f32>().unwrap_err();
        assert!(err.to_string().contains("expected f32, got i32"), "{err}");
        assert_eq!(t.to_f32_vec(), vec![7.0, -3.0]);
        assert_eq!(t.cast(DType::I8).to_vec::<i8>().unwrap(), vec![7, -3]);
    }

    #[test]
    fn npy_round_trip_every_dtype() {
        for dtype in DType::ALL {
            let t = Tensor::from_vec(vec![2, 3], vec![0.0f64, 1.0, 2.0, 3.0, 4.0, 5.0])
                .unwrap()
                .cast(dtype);
            let bytes = t.to_npy_bytes();
            assert_eq!(&bytes[..6], b"\x93NUMPY");
            let back = Tensor::from_npy_bytes(&bytes).unwrap();
            assert_eq!(back, t, "{dtype}");
        }
    }

    #[test]
    fn npy_rejects_garbage_and_fortran_order() {
        assert!(Tensor::from_npy_bytes(b"not numpy at all").is_err());
        let mut bytes = Tensor::from_vec(vec![2, 2], vec![1.0f32; 4]).unwrap().to_npy_bytes();
        // Rewrite the header dict in place with fortran_order set (same length).
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let dict = b"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }";
        let mut header = dict.to_vec();
        header.resize(hlen - 1, b' ');
        header.push(b'\n');
        bytes[10..10 + hlen].copy_from_slice(&header);
        let err = Tensor::from_npy_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("Fortran"), "{err}");
        // Truncated data.
        let full = Tensor::from_vec(vec![8], vec![1.0f32; 8]).unwrap().to_npy_bytes();
        assert!(Tensor::from_npy_bytes(&full[..full.len() - 3]).is_err());
    }

    #[test]
    fn npy_headers_that_nest_deeply_are_refused_before_parsing() {
        // What the fuzzer found: malformed nested braces made the header
        // parser backtrack for minutes. Now refused at once.
        let mut bytes = Tensor::from_vec(vec![1, 64], vec![0.5f32; 64]).unwrap().to_npy_bytes();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let mut header = format!("{{'descr':{} '<f4', 'fortran[or 'shape': (1, 64), }}", "{".repeat(40)).into_bytes();
        header.resize(hlen - 1, b' ');
        header.push(b'\n');
        bytes[10..10 + hlen].copy_from_slice(&header);
        let t = std::time::Instant::now();
        let err = Tensor::from_npy_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("nests brackets 41 deep"), "{err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // Brackets inside quoted strings do not count; plain headers still parse.
        assert_eq!(npy_header_nesting(b"{'descr': '<f4((((((', 'shape': (1, 64)}"), 2);
        let plain = Tensor::from_vec(vec![1, 64], vec![0.5f32; 64]).unwrap().to_npy_bytes();
        assert_eq!(Tensor::from_npy_bytes(&plain).unwrap().shape(), &[1, 64]);
    }
}
