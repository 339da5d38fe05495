//! Tensors into the C ABI's input descriptors, and the bridge's outputs back into tensors.

use super::*;

/// Input descriptors pointing into the caller's tensors and into names and
/// shapes owned here; valid while `self` and the tensors live.
pub(super) struct MarshalledInputs {
    pub(super) _names: Vec<CString>,
    pub(super) _shapes: Vec<Vec<i64>>,
    pub(super) descriptors: Vec<ffi::CoremlTensor>,
}

/// Builds the descriptors for `inputs`, checking first what the bridge would
/// refuse, so the caller gets a `SchemaMismatch` naming expected and got
/// rather than an invalid-argument status. Costs a few small allocations per
/// input; tensor bytes are not copied (the bridge copies them).
pub(super) fn marshal_inputs(inputs: &TensorMap, subject: &str) -> Result<MarshalledInputs> {
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(Error::schema_mismatch(
            format!("number of inputs of {subject}"),
            format!("1..={MAX_INPUTS}"),
            inputs.len().to_string(),
        ));
    }
    let mut names = Vec::with_capacity(inputs.len());
    let mut shapes = Vec::with_capacity(inputs.len());
    let mut descriptors = Vec::with_capacity(inputs.len());
    for (name, t) in inputs {
        let (c_name, shape, descriptor) = marshal_tensor(name, t, subject)?;
        descriptors.push(descriptor);
        // Moving a CString or Vec moves only its header; the heap buffers the
        // descriptor points into stay where they are.
        names.push(c_name);
        shapes.push(shape);
    }
    Ok(MarshalledInputs {
        _names: names,
        _shapes: shapes,
        descriptors,
    })
}

/// One tensor's descriptor, its name and its shape (which the descriptor
/// points into: keep both alive with the tensor while it is used).
pub(super) fn marshal_tensor(name: &str, t: &Tensor, subject: &str) -> Result<(CString, Vec<i64>, ffi::CoremlTensor)> {
    {
        let code = dtype_code(t.dtype())
            .filter(|_| INPUT_DTYPES.contains(&t.dtype()))
            .ok_or_else(|| {
                Error::schema_mismatch(
                    format!("dtype of input `{name}` of {subject}"),
                    "one of f32, f16, f64, i32, i8 (the element types Core ML multi-arrays take)",
                    t.dtype().name(),
                )
            })?;
        let rank = t.shape().len();
        if rank == 0 || rank > ffi::COREML_MAX_RANK as usize {
            return Err(Error::schema_mismatch(
                format!("rank of input `{name}` of {subject}"),
                format!("1..={} dimensions", ffi::COREML_MAX_RANK),
                format!("{rank} (shape {:?})", t.shape()),
            ));
        }
        if t.shape().contains(&0) {
            return Err(Error::schema_mismatch(
                format!("shape of input `{name}` of {subject}"),
                "every dimension >= 1 (Core ML multi-arrays cannot be empty)",
                format!("{:?}", t.shape()),
            ));
        }
        let shape: Vec<i64> = t
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                Error::schema_mismatch(
                    format!("shape of input `{name}` of {subject}"),
                    "dimensions that fit in int64",
                    format!("{:?}", t.shape()),
                )
            })?;
        let c_name = CString::new(name).map_err(|_| {
            Error::schema_mismatch(
                format!("name of input `{}`", name.escape_debug()),
                "a name without NUL bytes",
                "a name with a NUL byte",
            )
        })?;
        let descriptor = ffi::CoremlTensor {
            name: c_name.as_ptr(),
            dtype: code,
            rank: rank as i32,
            shape: shape.as_ptr(),
            strides: ptr::null(),
            data: t.as_bytes().as_ptr().cast::<c_void>(),
            byte_len: t.as_bytes().len() as u64,
        };
        Ok((c_name, shape, descriptor))
    }
}

/// Copies predict outputs into owned tensors, checking every field against
/// the header's promises (a broken promise is an `Internal` error, never a
/// read out of bounds).
///
/// # Safety
///
/// `outputs` must be NULL or point at a `CoremlOutputs` whose pointers are
/// valid as the header describes (as `coreml_predict` hands them out).
pub(super) unsafe fn read_outputs(outputs: *const ffi::CoremlOutputs, subject: &str) -> Result<TensorMap> {
    let bad = |what: String| {
        Error::internal(format!(
            "the bridge returned inconsistent outputs for {subject}: {what}"
        ))
    };
    if outputs.is_null() {
        return Err(bad("expected an outputs pointer, got NULL".into()));
    }
    // SAFETY: non-NULL and valid per the caller's contract.
    let outs = unsafe { &*outputs };
    let count = usize::try_from(outs.count).map_err(|_| bad(format!("count {} is negative", outs.count)))?;
    if count > 0 && outs.tensors.is_null() {
        return Err(bad(format!("expected {count} tensors, got a NULL array")));
    }
    let mut map = TensorMap::new();
    for i in 0..count {
        // SAFETY: `tensors` holds `count` entries.
        let t = unsafe { &*outs.tensors.add(i) };
        if t.name.is_null() {
            return Err(bad(format!("output #{i} has a NULL name")));
        }
        // SAFETY: NUL-terminated name owned by the outputs.
        let name = unsafe { CStr::from_ptr(t.name) }
            .to_str()
            .map_err(|_| bad(format!("output #{i}'s name is not UTF-8")))?
            .to_string();
        // SAFETY: `t` is one of the bridge's output tensors.
        let tensor = unsafe { read_output_tensor(t, &name, &bad) }?;
        if map.insert(name.clone(), tensor).is_some() {
            return Err(bad(format!("output `{name}` appears twice")));
        }
    }
    Ok(map)
}

/// Copies one output tensor, checking its fields (`bad` makes the error).
///
/// # Safety
///
/// `t`'s pointers must be valid as the header describes.
pub(super) unsafe fn read_output_tensor(
    t: &ffi::CoremlOutputTensor,
    name: &str,
    bad: &dyn Fn(String) -> Error,
) -> Result<Tensor> {
    {
        let dtype = dtype_from_code(t.dtype)
            .ok_or_else(|| bad(format!("output `{name}`: expected a dtype code 1..=6, got {}", t.dtype)))?;
        let rank = usize::try_from(t.rank)
            .ok()
            .filter(|r| (1..=ffi::COREML_MAX_RANK as usize).contains(r))
            .ok_or_else(|| {
                bad(format!(
                    "output `{name}`: expected rank 1..={}, got {}",
                    ffi::COREML_MAX_RANK,
                    t.rank
                ))
            })?;
        if t.shape.is_null() {
            return Err(bad(format!("output `{name}`: NULL shape")));
        }
        // SAFETY: `shape` holds `rank` dimensions.
        let raw_shape = unsafe { std::slice::from_raw_parts(t.shape, rank) };
        let shape: Vec<usize> = raw_shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(format!("output `{name}`: negative dimension in {raw_shape:?}")))?;
        let expected = checked_numel(&shape)
            .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
            .ok_or_else(|| bad(format!("output `{name}`: shape {shape:?} overflows")))?;
        if t.byte_len != expected as u64 {
            return Err(bad(format!(
                "output `{name}` ({dtype} {shape:?}): expected byte_len {expected}, got {}",
                t.byte_len
            )));
        }
        let bytes = if expected == 0 {
            Vec::new()
        } else {
            if t.data.is_null() {
                return Err(bad(format!("output `{name}`: NULL data for {expected} bytes")));
            }
            // SAFETY: `data` holds `byte_len` (== expected) readable bytes.
            unsafe { std::slice::from_raw_parts(t.data.cast::<u8>(), expected) }.to_vec()
        };
        Tensor::from_bytes(dtype, shape, bytes)
    }
}

/// `{x: f32 [1, 3], …}`, for messages.
pub fn describe_tensors(tensors: &TensorMap) -> String {
    let v: Vec<String> = tensors
        .iter()
        .map(|(n, t)| format!("{n}: {} {:?}", t.dtype(), t.shape()))
        .collect();
    format!("{{{}}}", v.join(", "))
}
