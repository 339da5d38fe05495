//! Predictions into the caller's tensors (`coreml_predict_into`) and the
//! bridge's buffer counters (`coreml_debug_counters`).
//!
//! The steady-state path allocates nothing on the Rust heap: descriptors and
//! shapes live on the stack (up to [`STACK_TENSORS`] inputs and outputs),
//! feature names are NUL-terminated once per name and kept with the model,
//! and the outputs are written by the bridge straight into the storage of
//! the caller's tensors. Only errors (their messages) and the first call
//! (which has no output tensors yet) allocate.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{check, ffi, parse_json, timeout_ms, BridgeError, BridgeModel, BridgeString, Operation, Status};
use super::{dtype_code, missing_out, INPUT_DTYPES};
use crate::error::Error;
use crate::tensor::{Tensor, TensorMap};

/// Most inputs, and most outputs, one call describes on the stack; beyond
/// that the descriptors go into a `Vec` (one allocation per call).
pub const STACK_TENSORS: usize = 16;

const RANK: usize = ffi::COREML_MAX_RANK as usize;

/// NUL-terminated feature names, made once per name for one model. The
/// `CString`s' heap bytes never move, so pointers into them stay valid
/// while the cache lives, however the `Vec` grows.
#[derive(Debug, Default)]
pub(super) struct NameCache(pub(super) RefCell<Vec<CString>>);

impl NameCache {
    /// The name as a C string; the first time for a name costs one allocation.
    fn get(&self, name: &str, what: &str) -> std::result::Result<*const c_char, BridgeError> {
        let mut names = self.0.borrow_mut();
        if let Some(c) = names.iter().find(|c| c.as_bytes() == name.as_bytes()) {
            return Ok(c.as_ptr());
        }
        let c = CString::new(name).map_err(|_| {
            BridgeError::refused(
                Status::InvalidArgument,
                Error::schema_mismatch(format!("name of {what} `{name:?}`"), "a name without NUL bytes", name),
            )
        })?;
        let p = c.as_ptr();
        names.push(c);
        Ok(p)
    }
}

/// The bridge's buffer counters for one model handle
/// (`coreml_debug_counters`), counted over `predict_into` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BufferCounters {
    /// Calls that ran a prediction.
    pub calls: u64,
    /// Staging buffers the bridge's pool allocated (inputs' copies, outputs' backings).
    pub buffer_allocations: u64,
    /// Their bytes.
    pub buffer_bytes_allocated: u64,
    /// Staging buffers idle in the pool now.
    pub pooled_buffers: u64,
    /// Copies of inputs into staging buffers.
    pub input_copies: u64,
    /// Copies of outputs into the caller's memory.
    pub output_copies: u64,
    /// Bytes moved by both kinds of copy.
    pub bytes_copied: u64,
    /// Outputs the runtime wrote into the bridge's staging backing.
    pub outputs_in_backing: u64,
    /// Outputs the runtime produced in its own array (an allocation of the
    /// runtime the bridge cannot avoid; still one copy into the caller's).
    pub outputs_runtime_owned: u64,
}

const EMPTY_INPUT: ffi::CoremlTensor = ffi::CoremlTensor {
    name: std::ptr::null(),
    dtype: 0,
    rank: 0,
    shape: std::ptr::null(),
    strides: std::ptr::null(),
    data: std::ptr::null(),
    byte_len: 0,
};

const EMPTY_OUTPUT: ffi::CoremlOutputBuffer = ffi::CoremlOutputBuffer {
    name: std::ptr::null(),
    dtype: 0,
    rank: 0,
    shape: std::ptr::null(),
    strides: std::ptr::null(),
    data: std::ptr::null_mut(),
    byte_len: 0,
};

/// Dtype code, rank and dimensions of a tensor the bridge will see, or a
/// `SchemaMismatch` naming what was expected and what came.
fn describe(name: &str, t: &Tensor, what: &str, input: bool) -> Result<(i32, [i64; RANK]), Error> {
    let code = dtype_code(t.dtype())
        .filter(|_| !input || INPUT_DTYPES.contains(&t.dtype()))
        .ok_or_else(|| {
            Error::schema_mismatch(
                format!("dtype of {what} `{name}`"),
                "one of f32, f16, f64, i32, i8 (i64 for outputs)",
                t.dtype().name(),
            )
        })?;
    let shape = t.shape();
    if shape.is_empty() || shape.len() > RANK || shape.contains(&0) {
        return Err(Error::schema_mismatch(
            format!("shape of {what} `{name}`"),
            format!("1..={RANK} dimensions, each >= 1"),
            format!("{shape:?}"),
        ));
    }
    let mut dims = [0i64; RANK];
    for (d, &s) in dims.iter_mut().zip(shape) {
        *d = i64::try_from(s).map_err(|_| {
            Error::schema_mismatch(
                format!("shape of {what} `{name}`"),
                "dimensions < 2^63",
                format!("{shape:?}"),
            )
        })?;
    }
    Ok((code, dims))
}

impl BridgeModel {
    /// Runs one prediction and writes its outputs into `outputs`' own
    /// storage (`coreml_predict_into`): every tensor already in `outputs`
    /// whose name, dtype and shape match what the model produces is
    /// overwritten in place, with one copy in the bridge and none here.
    ///
    /// When `outputs` is empty (the first call), or a tensor in it does not
    /// fit (an unknown name, another dtype or shape: the bridge refuses
    /// before writing any of them), it becomes the result of
    /// [`BridgeModel::predict`] instead, with what is left of `timeout` —
    /// for a mismatch that is a second prediction. Only the tensors present
    /// in `outputs` are written; other outputs of the model are not
    /// returned on this path.
    ///
    /// Costs: the prediction and one copy of each input into the bridge's
    /// pooled staging buffers and one copy of each output into `outputs`;
    /// no heap allocation on either side in the steady state (same shapes,
    /// at most [`STACK_TENSORS`] inputs and outputs, names seen before).
    /// On error the contents of `outputs` are unspecified. A timeout
    /// poisons the model, and the late prediction never writes into
    /// `outputs` (see `coreml_predict_into` in the header).
    pub fn predict_into(
        &self,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        timeout: Duration,
    ) -> std::result::Result<(), BridgeError> {
        let start = Instant::now();
        if outputs.is_empty() {
            *outputs = self.predict(inputs, timeout)?;
            return Ok(());
        }
        match self.predict_into_buffers(inputs, outputs, timeout) {
            Err(e) if e.status() == Status::SchemaMismatch && e.message().starts_with("output buffer") => {
                let left = timeout.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(e);
                }
                *outputs = self.predict(inputs, left)?;
                Ok(())
            }
            r => r,
        }
    }

    fn predict_into_buffers(
        &self,
        inputs: &TensorMap,
        outputs: &mut TensorMap,
        timeout: Duration,
    ) -> std::result::Result<(), BridgeError> {
        let refused = |e: Error| BridgeError::refused(Status::InvalidArgument, e);
        if inputs.is_empty() || inputs.len() > super::MAX_INPUTS {
            return Err(refused(Error::schema_mismatch(
                "number of inputs",
                format!("1..={}", super::MAX_INPUTS),
                inputs.len().to_string(),
            )));
        }
        let mut in_shapes = [[0i64; RANK]; STACK_TENSORS];
        let mut in_desc = [EMPTY_INPUT; STACK_TENSORS];
        let mut in_shapes_heap: Vec<[i64; RANK]> = Vec::new();
        let mut in_heap: Vec<ffi::CoremlTensor> = Vec::new();
        if inputs.len() > STACK_TENSORS {
            in_shapes_heap = vec![[0i64; RANK]; inputs.len()];
            in_heap = vec![EMPTY_INPUT; inputs.len()];
        }
        let (in_shapes, in_desc) = if inputs.len() > STACK_TENSORS {
            (&mut in_shapes_heap[..], &mut in_heap[..])
        } else {
            (&mut in_shapes[..inputs.len()], &mut in_desc[..inputs.len()])
        };
        for (i, (name, t)) in inputs.iter().enumerate() {
            let (code, dims) = describe(name, t, "input", true).map_err(refused)?;
            in_shapes[i] = dims;
            in_desc[i] = ffi::CoremlTensor {
                name: self.names.get(name, "input")?,
                dtype: code,
                rank: t.shape().len() as i32,
                shape: in_shapes[i].as_ptr(),
                strides: std::ptr::null(),
                data: t.as_bytes().as_ptr().cast(),
                byte_len: t.as_bytes().len() as u64,
            };
        }

        let n_out = outputs.len();
        if n_out > super::MAX_INPUTS {
            return Err(refused(Error::schema_mismatch(
                "number of output buffers",
                format!("1..={}", super::MAX_INPUTS),
                n_out.to_string(),
            )));
        }
        let mut out_shapes = [[0i64; RANK]; STACK_TENSORS];
        let mut out_desc = [EMPTY_OUTPUT; STACK_TENSORS];
        let mut out_shapes_heap: Vec<[i64; RANK]> = Vec::new();
        let mut out_heap: Vec<ffi::CoremlOutputBuffer> = Vec::new();
        if n_out > STACK_TENSORS {
            out_shapes_heap = vec![[0i64; RANK]; n_out];
            out_heap = vec![EMPTY_OUTPUT; n_out];
        }
        let (out_shapes, out_desc) = if n_out > STACK_TENSORS {
            (&mut out_shapes_heap[..], &mut out_heap[..])
        } else {
            (&mut out_shapes[..n_out], &mut out_desc[..n_out])
        };
        for (i, (name, t)) in outputs.iter_mut().enumerate() {
            let (code, dims) = describe(name, t, "output buffer", false).map_err(refused)?;
            out_shapes[i] = dims;
            let rank = t.shape().len() as i32;
            let bytes = t.as_bytes_mut();
            out_desc[i] = ffi::CoremlOutputBuffer {
                name: self.names.get(name, "output")?,
                dtype: code,
                rank,
                shape: out_shapes[i].as_ptr(),
                strides: std::ptr::null(),
                data: bytes.as_mut_ptr().cast(),
                byte_len: bytes.len() as u64,
            };
        }

        let mut err = BridgeString::null();
        // SAFETY: a live handle; every descriptor points into `inputs`,
        // `outputs` (borrowed mutably: nothing else touches their bytes),
        // the shape arrays above and the name cache, all alive until the
        // call returns. The bridge writes into the output bytes only before
        // it returns (never after, even on timeout).
        let code = unsafe {
            ffi::coreml_predict_into(
                self.raw(),
                in_desc.as_ptr(),
                in_desc.len() as i32,
                out_desc.as_ptr(),
                out_desc.len() as i32,
                timeout_ms(timeout),
                err.out(),
            )
        };
        let status = Status::from_code(code);
        if status == Status::Ok {
            return Ok(());
        }
        if matches!(status, Status::Timeout | Status::Poisoned) {
            self.poisoned.set(true);
        }
        check(code, &mut err, Operation::Predict, &self.subject(), timeout)
    }

    /// The bridge's buffer counters for this model's handle
    /// (`coreml_debug_counters`): staging allocations, copies and bytes
    /// copied by [`BridgeModel::predict_into`]. For tests and debugging;
    /// costs one call and a small JSON parse.
    pub fn buffer_counters(&self) -> std::result::Result<BufferCounters, BridgeError> {
        let subject = self.subject();
        let mut json = BridgeString::null();
        let mut err = BridgeString::null();
        // SAFETY: a live handle; empty out slots.
        let code = unsafe { ffi::coreml_debug_counters(self.raw(), json.out(), err.out()) };
        check(code, &mut err, Operation::Schema, &subject, Duration::ZERO)?;
        let json = json.take().ok_or_else(|| missing_out(Operation::Schema, "out_json"))?;
        parse_json(&json, Operation::Schema, &subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    #[test]
    fn a_name_is_made_once_and_a_nul_is_refused() {
        let cache = NameCache::default();
        let a = cache.get("logits", "output").unwrap();
        let b = cache.get("probs", "output").unwrap();
        assert_eq!(cache.get("logits", "output").unwrap(), a, "the same C string again");
        assert_ne!(a, b);
        // SAFETY: `a` points into a CString the cache still owns.
        assert_eq!(unsafe { std::ffi::CStr::from_ptr(a) }.to_str().unwrap(), "logits");
        let e = cache.get("bad\0name", "input").unwrap_err();
        assert_eq!(e.status(), Status::InvalidArgument);
        assert!(e.message().contains("without NUL"), "{}", e.message());
    }

    #[test]
    fn descriptors_name_what_the_bridge_would_refuse() {
        let t = Tensor::zeros(DType::F32, vec![2, 3]).unwrap();
        let (code, dims) = describe("x", &t, "input", true).unwrap();
        assert_eq!(code, ffi::COREML_DTYPE_F32);
        assert_eq!(&dims[..2], &[2, 3]);
        assert!(dims[2..].iter().all(|&d| d == 0));

        let empty = Tensor::zeros(DType::F32, vec![2, 0]).unwrap();
        let e = describe("x", &empty, "input", true).unwrap_err().to_string();
        assert!(e.contains("each >= 1") && e.contains("[2, 0]"), "{e}");

        // i64 is an output dtype only.
        let long = Tensor::zeros(DType::I64, vec![1]).unwrap();
        assert!(describe("n", &long, "input", true).is_err());
        assert_eq!(
            describe("n", &long, "output buffer", false).unwrap().0,
            ffi::COREML_DTYPE_I64
        );
    }
}
