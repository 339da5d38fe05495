//! The Rust side of the C ABI of `coreml-bridge` (`coreml-bridge/include/coreml_bridge.h`).
//!
//! Two layers:
//!
//! - [`ffi`]: the raw declarations. `#[repr(C)]` structs, the status, dtype and
//!   compute-unit codes, and the functions. They are written out by hand to
//!   match the header. Unit tests parse the header and compare every function,
//!   parameter type and constant. They also compile a small C program with
//!   `cc` and compare struct sizes and field offsets.
//! - Safe wrappers: [`BridgeModel`] (a loaded model that frees its handle on
//!   drop), [`compile_model`], [`compute_plan`], [`runtime_info`] and
//!   [`abi_version`]. Every string the bridge hands out is copied and then
//!   freed with `coreml_free_string` exactly once, by a drop guard, whatever
//!   the outcome. Prediction outputs are copied into [`Tensor`]s and then freed
//!   with `coreml_free_outputs`. Every status becomes a [`BridgeError`]. That
//!   error keeps the bridge's status and message and converts into the crate's
//!   [`Error`] (see [`status_to_error`] for the table).
//!
//! # Where the bridge is linked
//!
//! The Swift library is linked only when `build.rs` links it. It does so on
//! macOS with the `coreml` feature, and on Linux with the `coreml` feature
//! plus `COREML_BRIDGE_LIB_DIR` (the test path, see
//! `docs/CORE_ML_BRIDGE_GUIDE.md`). `build.rs` then sets `cfg(coreml_bridge)`.
//! In every other build the same functions exist as stubs. A stub writes
//! nothing and returns `COREML_ERR_UNAVAILABLE`, so all the wrapper code
//! still compiles, type-checks and lints everywhere. The wrappers check
//! [`is_linked`] first and answer [`Error::Unavailable`] with [`NO_BRIDGE_REASON`].
//!
//! # Threading
//!
//! The bridge may be called from any thread. A [`BridgeModel`] is `Send`, so
//! it can move to another thread. It is not `Sync`, so two threads cannot
//! share one. Core ML's `MLModel` must not be used by two threads at once.
//! The bridge already serialises each handle on its own queue, and keeping the
//! Rust type `!Sync` also keeps our own bookkeeping (the poisoned flag) free
//! of locks. Share a model across threads with a lock, as `CoreMlEngine`
//! does.
//!
//! ```
//! fn assert_send<T: Send>() {}
//! assert_send::<apple_silicon::core_ml_bridge::BridgeModel>();
//! ```
//!
//! ```compile_fail,E0277
//! fn assert_sync<T: Sync>() {}
//! assert_sync::<apple_silicon::core_ml_bridge::BridgeModel>();
//! ```

#![deny(missing_docs)]

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inference::{ComputeUnits, IoSchema, ShapeConstraint, TensorSpec};
use crate::telemetry::StageTimings;
use crate::tensor::{checked_numel, DType, Tensor, TensorMap};

#[path = "core_ml_bridge_into.rs"]
mod into;
pub use into::{BufferCounters, STACK_TENSORS};

/// The raw C ABI, mirroring `coreml-bridge/include/coreml_bridge.h` by hand.
///
/// Keep it in step with the header. The unit tests of this module fail when
/// a function, parameter type, constant or struct layout disagrees. Calling
/// these functions directly is `unsafe`: the caller must follow the header's
/// ownership rules. Prefer the safe wrappers of the parent module.
pub mod ffi {
    use std::ffi::{c_char, c_void};

    /// `COREML_BRIDGE_ABI_VERSION`: the header version this mirror was written against.
    pub const COREML_BRIDGE_ABI_VERSION: i32 = 2;
    /// `COREML_MAX_RANK`: the largest tensor rank the bridge accepts.
    pub const COREML_MAX_RANK: i32 = 16;
    /// `COREML_MAX_BATCH` (v2): the most members one `coreml_predict_batch` may have.
    pub const COREML_MAX_BATCH: i32 = 4096;

    /// `COREML_OK`: success.
    pub const COREML_OK: i32 = 0;
    /// `COREML_ERR_INVALID_ARGUMENT`: NULL pointer, bad enum or descriptor, bad timeout, bad path.
    pub const COREML_ERR_INVALID_ARGUMENT: i32 = 1;
    /// `COREML_ERR_COMPILE`: the model could not be compiled.
    pub const COREML_ERR_COMPILE: i32 = 2;
    /// `COREML_ERR_LOAD`: the compiled model could not be loaded (also compute-plan failures).
    pub const COREML_ERR_LOAD: i32 = 3;
    /// `COREML_ERR_SCHEMA_MISMATCH`: inputs do not match the model.
    pub const COREML_ERR_SCHEMA_MISMATCH: i32 = 4;
    /// `COREML_ERR_PREDICT`: Core ML failed during prediction.
    pub const COREML_ERR_PREDICT: i32 = 5;
    /// `COREML_ERR_TIMEOUT`: the deadline passed (predict: the handle is now poisoned).
    pub const COREML_ERR_TIMEOUT: i32 = 6;
    /// `COREML_ERR_POISONED`: the handle timed out earlier; free it and load again.
    pub const COREML_ERR_POISONED: i32 = 7;
    /// `COREML_ERR_UNAVAILABLE`: Core ML (or the feature) does not exist on this OS.
    pub const COREML_ERR_UNAVAILABLE: i32 = 8;
    /// `COREML_ERR_OUT_OF_MEMORY`: an allocation failed or a size overflowed.
    pub const COREML_ERR_OUT_OF_MEMORY: i32 = 9;
    /// `COREML_ERR_INTERNAL`: a bridge bug or an unexpected Core ML answer.
    pub const COREML_ERR_INTERNAL: i32 = 10;
    /// `COREML_ERR_INVALID_HANDLE`: NULL, unknown, freed or garbage handle.
    pub const COREML_ERR_INVALID_HANDLE: i32 = 11;
    /// `COREML_ERR_UNSUPPORTED`: valid, but this OS's Core ML cannot do it.
    pub const COREML_ERR_UNSUPPORTED: i32 = 12;
    /// `COREML_ERR_STATE_IN_USE` (v2): the model state is being used by another call.
    pub const COREML_ERR_STATE_IN_USE: i32 = 13;
    /// `COREML_ERR_STATE_MISMATCH` (v2): the model state belongs to another model handle.
    pub const COREML_ERR_STATE_MISMATCH: i32 = 14;

    /// `COREML_DTYPE_F32`: IEEE binary32.
    pub const COREML_DTYPE_F32: i32 = 1;
    /// `COREML_DTYPE_F16`: IEEE binary16.
    pub const COREML_DTYPE_F16: i32 = 2;
    /// `COREML_DTYPE_F64`: IEEE binary64.
    pub const COREML_DTYPE_F64: i32 = 3;
    /// `COREML_DTYPE_I32`: int32.
    pub const COREML_DTYPE_I32: i32 = 4;
    /// `COREML_DTYPE_I8`: int8 (Core ML: macOS 26+ only).
    pub const COREML_DTYPE_I8: i32 = 5;
    /// `COREML_DTYPE_I64`: int64, outputs only (Int64 scalar features).
    pub const COREML_DTYPE_I64: i32 = 6;

    /// `COREML_COMPUTE_ALL`: `.all`.
    pub const COREML_COMPUTE_ALL: i32 = 0;
    /// `COREML_COMPUTE_CPU_ONLY`: `.cpuOnly`.
    pub const COREML_COMPUTE_CPU_ONLY: i32 = 1;
    /// `COREML_COMPUTE_CPU_AND_GPU`: `.cpuAndGPU`.
    pub const COREML_COMPUTE_CPU_AND_GPU: i32 = 2;
    /// `COREML_COMPUTE_CPU_AND_NE`: `.cpuAndNeuralEngine`.
    pub const COREML_COMPUTE_CPU_AND_NE: i32 = 3;

    /// `CoremlTensor`: an input tensor described by the caller, read only
    /// during `coreml_predict` (the bridge copies every byte before queueing).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CoremlTensor {
        /// Feature name (NUL-terminated UTF-8).
        pub name: *const c_char,
        /// A `COREML_DTYPE_*` code (not I64).
        pub dtype: i32,
        /// 1..=`COREML_MAX_RANK`.
        pub rank: i32,
        /// `rank` dimensions, each >= 1.
        pub shape: *const i64,
        /// `rank` strides in elements, or NULL for row-major contiguous.
        pub strides: *const i64,
        /// First element.
        pub data: *const c_void,
        /// Bytes readable at `data`.
        pub byte_len: u64,
    }

    /// `CoremlOutputTensor`: one output, pointing into bridge-owned memory
    /// that stays valid until `coreml_free_outputs`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CoremlOutputTensor {
        /// Feature name.
        pub name: *const c_char,
        /// `COREML_DTYPE_*` of the data as Core ML produced it.
        pub dtype: i32,
        /// Number of dimensions (>= 1).
        pub rank: i32,
        /// `rank` dimensions.
        pub shape: *const i64,
        /// Row-major contiguous elements.
        pub data: *const c_void,
        /// `product(shape) * sizeof(dtype)`.
        pub byte_len: u64,
    }

    /// `CoremlOutputs`: the result of a successful `coreml_predict`, released
    /// with `coreml_free_outputs`.
    #[repr(C)]
    #[derive(Debug)]
    pub struct CoremlOutputs {
        /// Number of entries in `tensors`.
        pub count: i32,
        /// `count` outputs, sorted by name.
        pub tensors: *const CoremlOutputTensor,
        /// Bridge-private bookkeeping.
        pub reserved: *mut c_void,
    }

    /// `COREML_FEATURE_TENSOR` (v2): a multi-array feature value.
    pub const COREML_FEATURE_TENSOR: i32 = 1;
    /// `COREML_FEATURE_INT64` (v2): an int64 feature value.
    pub const COREML_FEATURE_INT64: i32 = 2;
    /// `COREML_FEATURE_DOUBLE` (v2): a double feature value.
    pub const COREML_FEATURE_DOUBLE: i32 = 3;
    /// `COREML_FEATURE_STRING` (v2): a string feature value.
    pub const COREML_FEATURE_STRING: i32 = 4;
    /// `COREML_FEATURE_DICTIONARY` (v2): a dictionary (outputs only).
    pub const COREML_FEATURE_DICTIONARY: i32 = 5;

    /// `CoremlFeature` (v2): an input feature; `kind` selects the field read.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CoremlFeature {
        /// Feature name.
        pub name: *const c_char,
        /// A `COREML_FEATURE_*` kind (not DICTIONARY).
        pub kind: i32,
        /// TENSOR: the array (its name is ignored).
        pub tensor: CoremlTensor,
        /// INT64.
        pub int64_value: i64,
        /// DOUBLE.
        pub double_value: f64,
        /// STRING: NUL-terminated UTF-8.
        pub string_value: *const c_char,
    }

    /// `CoremlOutputFeature` (v2): an output feature in bridge-owned memory.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CoremlOutputFeature {
        /// Feature name.
        pub name: *const c_char,
        /// A `COREML_FEATURE_*` kind.
        pub kind: i32,
        /// TENSOR.
        pub tensor: CoremlOutputTensor,
        /// INT64.
        pub int64_value: i64,
        /// DOUBLE.
        pub double_value: f64,
        /// STRING.
        pub string_value: *const c_char,
        /// DICTIONARY: number of entries.
        pub dict_count: i32,
        /// DICTIONARY: `COREML_FEATURE_STRING` or `COREML_FEATURE_INT64` keys.
        pub dict_key_kind: i32,
        /// DICTIONARY: string keys.
        pub dict_string_keys: *const *const c_char,
        /// DICTIONARY: int64 keys.
        pub dict_int64_keys: *const i64,
        /// DICTIONARY: values.
        pub dict_values: *const f64,
    }

    /// `CoremlFeatureOutputs` (v2): released with `coreml_free_feature_outputs`.
    #[repr(C)]
    #[derive(Debug)]
    pub struct CoremlFeatureOutputs {
        /// Number of entries in `features`.
        pub count: i32,
        /// `count` features, sorted by name.
        pub features: *const CoremlOutputFeature,
        /// Bridge-private bookkeeping.
        pub reserved: *mut c_void,
    }

    /// `COREML_PIXEL_RGB8` (v2): 3 bytes R, G, B (the bridge converts to 32BGRA).
    pub const COREML_PIXEL_RGB8: i32 = 1;
    /// `COREML_PIXEL_BGR8` (v2): 3 bytes B, G, R (the bridge converts to 32BGRA).
    pub const COREML_PIXEL_BGR8: i32 = 2;
    /// `COREML_PIXEL_BGRA8` (v2): `kCVPixelFormatType_32BGRA`.
    pub const COREML_PIXEL_BGRA8: i32 = 3;
    /// `COREML_PIXEL_ARGB8` (v2): `kCVPixelFormatType_32ARGB`.
    pub const COREML_PIXEL_ARGB8: i32 = 4;
    /// `COREML_PIXEL_GRAY8` (v2): `kCVPixelFormatType_OneComponent8`.
    pub const COREML_PIXEL_GRAY8: i32 = 5;
    /// `COREML_PIXEL_GRAY_F16` (v2): `kCVPixelFormatType_OneComponent16Half`.
    pub const COREML_PIXEL_GRAY_F16: i32 = 6;

    /// `CoremlImage` (v2): an image input of `coreml_predict_images`, read
    /// only during the call.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CoremlImage {
        /// Feature name.
        pub name: *const c_char,
        /// A `COREML_PIXEL_*` format.
        pub pixel_format: i32,
        /// Pixels per row (>= 1).
        pub width: i32,
        /// Rows (>= 1).
        pub height: i32,
        /// Bytes from one row to the next (>= width × bytes per pixel).
        pub bytes_per_row: i64,
        /// First byte of the first row.
        pub data: *const c_void,
        /// Bytes readable at `data`.
        pub byte_len: u64,
    }

    /// `CoremlBatchMember` (v2): one member of a batch, its own input descriptors.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CoremlBatchMember {
        /// `n_inputs` descriptors, as for `coreml_predict`.
        pub inputs: *const CoremlTensor,
        /// Number of descriptors.
        pub n_inputs: i32,
    }

    /// `CoremlOutputBuffer` (v2, additive): a caller-owned buffer that
    /// `coreml_predict_into` writes one output into.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CoremlOutputBuffer {
        /// Output feature name (NUL-terminated UTF-8).
        pub name: *const c_char,
        /// `COREML_DTYPE_*` the model produces for it.
        pub dtype: i32,
        /// Number of dimensions, `1..=COREML_MAX_RANK`.
        pub rank: i32,
        /// `rank` dimensions, each >= 1.
        pub shape: *const i64,
        /// `rank` strides in elements, or NULL for row-major.
        pub strides: *const i64,
        /// First element (written, never read).
        pub data: *mut c_void,
        /// Bytes writable at `data`.
        pub byte_len: u64,
    }

    /// One C function as declared here, for the header-agreement test:
    /// Rust spellings of the parameter and return types.
    #[derive(Debug, Clone, Copy)]
    pub struct Signature {
        /// Function name.
        pub name: &'static str,
        /// Parameter types, in order (Rust spelling, e.g. `*mut *mut c_char`).
        pub params: &'static [&'static str],
        /// Return type (Rust spelling), empty for `void`.
        pub ret: &'static str,
    }

    /// Declares every function once. With `cfg(coreml_bridge)` (the Swift
    /// library is linked) this gives an `extern "C"` block. Without it, it
    /// gives stubs with the same signatures that write nothing and return
    /// the stub value. Either way it also fills [`SIGNATURES`].
    macro_rules! bridge_functions {
        ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $stub:expr; )*) => {
            #[cfg(coreml_bridge)]
            unsafe extern "C" {
                $( $(#[$doc])* pub fn $name($($arg: $ty),*) $(-> $ret)?; )*
            }
            $(
                $(#[$doc])*
                ///
                /// (Stub: this build has no Swift bridge linked. It writes
                /// nothing and returns `COREML_ERR_UNAVAILABLE`, or 0 for
                /// `coreml_bridge_abi_version`.)
                ///
                /// # Safety
                ///
                /// Same contract as the real function in `coreml_bridge.h`.
                #[cfg(not(coreml_bridge))]
                #[allow(unused_variables)]
                pub unsafe extern "C" fn $name($($arg: $ty),*) $(-> $ret)? { $stub }
            )*
            /// Every declared function with its parameter and return types,
            /// as written here (checked against the header by a unit test).
            pub const SIGNATURES: &[Signature] = &[
                $( Signature {
                    name: stringify!($name),
                    params: &[$(stringify!($ty)),*],
                    ret: concat!("" $(, stringify!($ret))?),
                }, )*
            ];
        };
    }

    bridge_functions! {
        /// `int32_t coreml_bridge_abi_version(void)`: the library's ABI version.
        fn coreml_bridge_abi_version() -> i32 => 0;
        /// `coreml_compile_model`: `.mlpackage` → `<dest_dir>/<stem>.mlmodelc`.
        fn coreml_compile_model(
            package_path: *const c_char,
            dest_dir: *const c_char,
            timeout_ms: i64,
            out_compiled_path: *mut *mut c_char,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_load_model`: loads a `.mlmodelc`; the handle is an id, not a pointer.
        fn coreml_load_model(
            compiled_path: *const c_char,
            compute_units: i32,
            timeout_ms: i64,
            out_handle: *mut *mut c_void,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_load_model_function` (v2): loads one function of a multifunction model (NULL: the default).
        fn coreml_load_model_function(
            compiled_path: *const c_char,
            function_name: *const c_char,
            compute_units: i32,
            timeout_ms: i64,
            out_handle: *mut *mut c_void,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_model_schema`: inputs, outputs and metadata as JSON.
        fn coreml_model_schema(handle: *mut c_void, out_json: *mut *mut c_char, out_err: *mut *mut c_char) -> i32
            => COREML_ERR_UNAVAILABLE;
        /// `coreml_predict`: one prediction; outputs released with `coreml_free_outputs`.
        fn coreml_predict(
            handle: *mut c_void,
            inputs: *const CoremlTensor,
            n_inputs: i32,
            timeout_ms: i64,
            out_outputs: *mut *mut CoremlOutputs,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_predict_batch` (v2): a batch under one deadline; one outputs slot per member.
        fn coreml_predict_batch(
            handle: *mut c_void,
            batch: *const CoremlBatchMember,
            n_batch: i32,
            timeout_ms: i64,
            out_outputs: *mut *mut CoremlOutputs,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_predict_features` (v2): feature values of every kind in and out.
        fn coreml_predict_features(
            handle: *mut c_void,
            inputs: *const CoremlFeature,
            n_inputs: i32,
            timeout_ms: i64,
            out_outputs: *mut *mut CoremlFeatureOutputs,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_predict_images` (v2): `coreml_predict_features` plus image inputs.
        fn coreml_predict_images(
            handle: *mut c_void,
            inputs: *const CoremlFeature,
            n_inputs: i32,
            images: *const CoremlImage,
            n_images: i32,
            timeout_ms: i64,
            out_outputs: *mut *mut CoremlFeatureOutputs,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_free_feature_outputs` (v2): releases feature outputs (NULL/unknown/freed ignored).
        fn coreml_free_feature_outputs(outputs: *mut CoremlFeatureOutputs) => ();
        /// `coreml_make_state` (v2): a fresh state (`MLModel.makeState()`) for a model handle.
        fn coreml_make_state(
            handle: *mut c_void,
            timeout_ms: i64,
            out_state: *mut *mut c_void,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_predict_with_state` (v2): one prediction reading and updating a state.
        fn coreml_predict_with_state(
            handle: *mut c_void,
            state: *mut c_void,
            inputs: *const CoremlTensor,
            n_inputs: i32,
            timeout_ms: i64,
            out_outputs: *mut *mut CoremlOutputs,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_free_state` (v2): releases a state (NULL/unknown/freed ignored).
        fn coreml_free_state(state: *mut c_void) => ();
        /// `coreml_compute_plan`: per-operation devices (MLComputePlan, macOS 14.4+) as JSON.
        fn coreml_compute_plan(
            compiled_path: *const c_char,
            compute_units: i32,
            timeout_ms: i64,
            out_json: *mut *mut c_char,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_runtime_info`: OS, chip, Core ML version, test runtime, as JSON.
        fn coreml_runtime_info(out_json: *mut *mut c_char, out_err: *mut *mut c_char) -> i32
            => COREML_ERR_UNAVAILABLE;
        /// `coreml_predict_into` (v2, additive): outputs written into caller buffers, one copy each.
        fn coreml_predict_into(
            handle: *mut c_void,
            inputs: *const CoremlTensor,
            n_inputs: i32,
            outputs: *const CoremlOutputBuffer,
            n_outputs: i32,
            timeout_ms: i64,
            out_err: *mut *mut c_char,
        ) -> i32 => COREML_ERR_UNAVAILABLE;
        /// `coreml_debug_counters` (v2, additive): the handle's buffer-pool and copy counters as JSON.
        fn coreml_debug_counters(handle: *mut c_void, out_json: *mut *mut c_char, out_err: *mut *mut c_char) -> i32
            => COREML_ERR_UNAVAILABLE;
        /// `coreml_free_model`: releases a handle (NULL/unknown/freed ignored; safe while predicting).
        fn coreml_free_model(handle: *mut c_void) => ();
        /// `coreml_free_string`: releases a string the bridge returned (NULL ignored).
        fn coreml_free_string(s: *mut c_char) => ();
        /// `coreml_free_outputs`: releases predict outputs (NULL/unknown/freed ignored).
        fn coreml_free_outputs(outputs: *mut CoremlOutputs) => ();
    }
}

/// Whether this build links the Swift bridge (`cfg(coreml_bridge)`, set by
/// `build.rs`). Without it every wrapper answers [`Error::Unavailable`].
/// Costs nothing (a constant).
pub const fn is_linked() -> bool {
    cfg!(coreml_bridge)
}

/// Why Core ML is unavailable in a build without the bridge.
pub const NO_BRIDGE_REASON: &str = if cfg!(target_vendor = "apple") {
    "this build has no Core ML bridge (enable the `coreml` feature of apple-silicon)"
} else {
    "Core ML exists only on Apple platforms; this build has no Core ML bridge (enable the `coreml` feature on macOS)"
};

/// The engine name used in [`Error::Unavailable`].
pub const ENGINE_NAME: &str = "coreml";

/// A bridge status (`CoremlStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// 0: success.
    Ok,
    /// 1: NULL pointer, bad enum, bad tensor descriptor, bad timeout, bad or missing path.
    InvalidArgument,
    /// 2: compilation failed.
    Compile,
    /// 3: loading failed (also compute-plan failures).
    Load,
    /// 4: inputs do not match the model.
    SchemaMismatch,
    /// 5: Core ML failed during prediction.
    Predict,
    /// 6: the deadline passed; after a predict the handle is poisoned.
    Timeout,
    /// 7: the handle timed out earlier; free it and load again.
    Poisoned,
    /// 8: no Core ML (or no MLComputePlan) here.
    Unavailable,
    /// 9: an allocation failed or a size overflowed.
    OutOfMemory,
    /// 10: a bridge bug or an unexpected Core ML answer.
    Internal,
    /// 11: NULL, unknown, freed or garbage handle.
    InvalidHandle,
    /// 12: valid, but not possible on this OS.
    Unsupported,
    /// 13 (v2): the model state is being used by another call.
    StateInUse,
    /// 14 (v2): the model state belongs to another model handle.
    StateMismatch,
    /// A code the header does not define.
    Unknown(i32),
}

impl Status {
    /// The status for a C code.
    pub fn from_code(code: i32) -> Status {
        match code {
            ffi::COREML_OK => Status::Ok,
            ffi::COREML_ERR_INVALID_ARGUMENT => Status::InvalidArgument,
            ffi::COREML_ERR_COMPILE => Status::Compile,
            ffi::COREML_ERR_LOAD => Status::Load,
            ffi::COREML_ERR_SCHEMA_MISMATCH => Status::SchemaMismatch,
            ffi::COREML_ERR_PREDICT => Status::Predict,
            ffi::COREML_ERR_TIMEOUT => Status::Timeout,
            ffi::COREML_ERR_POISONED => Status::Poisoned,
            ffi::COREML_ERR_UNAVAILABLE => Status::Unavailable,
            ffi::COREML_ERR_OUT_OF_MEMORY => Status::OutOfMemory,
            ffi::COREML_ERR_INTERNAL => Status::Internal,
            ffi::COREML_ERR_INVALID_HANDLE => Status::InvalidHandle,
            ffi::COREML_ERR_UNSUPPORTED => Status::Unsupported,
            ffi::COREML_ERR_STATE_IN_USE => Status::StateInUse,
            ffi::COREML_ERR_STATE_MISMATCH => Status::StateMismatch,
            other => Status::Unknown(other),
        }
    }

    /// The C code of this status.
    pub fn code(self) -> i32 {
        match self {
            Status::Ok => ffi::COREML_OK,
            Status::InvalidArgument => ffi::COREML_ERR_INVALID_ARGUMENT,
            Status::Compile => ffi::COREML_ERR_COMPILE,
            Status::Load => ffi::COREML_ERR_LOAD,
            Status::SchemaMismatch => ffi::COREML_ERR_SCHEMA_MISMATCH,
            Status::Predict => ffi::COREML_ERR_PREDICT,
            Status::Timeout => ffi::COREML_ERR_TIMEOUT,
            Status::Poisoned => ffi::COREML_ERR_POISONED,
            Status::Unavailable => ffi::COREML_ERR_UNAVAILABLE,
            Status::OutOfMemory => ffi::COREML_ERR_OUT_OF_MEMORY,
            Status::Internal => ffi::COREML_ERR_INTERNAL,
            Status::InvalidHandle => ffi::COREML_ERR_INVALID_HANDLE,
            Status::Unsupported => ffi::COREML_ERR_UNSUPPORTED,
            Status::StateInUse => ffi::COREML_ERR_STATE_IN_USE,
            Status::StateMismatch => ffi::COREML_ERR_STATE_MISMATCH,
            Status::Unknown(c) => c,
        }
    }

    /// The header's name, e.g. `COREML_ERR_TIMEOUT`.
    pub fn c_name(self) -> &'static str {
        match self {
            Status::Ok => "COREML_OK",
            Status::InvalidArgument => "COREML_ERR_INVALID_ARGUMENT",
            Status::Compile => "COREML_ERR_COMPILE",
            Status::Load => "COREML_ERR_LOAD",
            Status::SchemaMismatch => "COREML_ERR_SCHEMA_MISMATCH",
            Status::Predict => "COREML_ERR_PREDICT",
            Status::Timeout => "COREML_ERR_TIMEOUT",
            Status::Poisoned => "COREML_ERR_POISONED",
            Status::Unavailable => "COREML_ERR_UNAVAILABLE",
            Status::OutOfMemory => "COREML_ERR_OUT_OF_MEMORY",
            Status::Internal => "COREML_ERR_INTERNAL",
            Status::InvalidHandle => "COREML_ERR_INVALID_HANDLE",
            Status::Unsupported => "COREML_ERR_UNSUPPORTED",
            Status::StateInUse => "COREML_ERR_STATE_IN_USE",
            Status::StateMismatch => "COREML_ERR_STATE_MISMATCH",
            Status::Unknown(_) => "unknown status",
        }
    }
}

/// Which bridge call failed (used in error messages and in the status mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `coreml_compile_model`.
    Compile,
    /// `coreml_load_model`.
    Load,
    /// `coreml_model_schema`.
    Schema,
    /// `coreml_predict`.
    Predict,
    /// `coreml_compute_plan`.
    ComputePlan,
    /// `coreml_make_state`.
    MakeState,
    /// `coreml_runtime_info`.
    RuntimeInfo,
}

impl Operation {
    /// Lowercase words, e.g. `prediction`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Compile => "compile",
            Operation::Load => "load",
            Operation::Schema => "schema query",
            Operation::Predict => "prediction",
            Operation::ComputePlan => "compute plan",
            Operation::MakeState => "making a state",
            Operation::RuntimeInfo => "runtime info",
        }
    }
}

/// Maps a bridge status to the crate's failure taxonomy. `subject` names the
/// model (its path). `timeout` is the deadline the call had. Pure and cheap.
///
/// | status | [`Error`] |
/// |---|---|
/// | `INVALID_ARGUMENT` | compile, load, compute plan: `InvalidArtifact` (missing path, destination exists, bad fake spec); others: `Internal` (our descriptors were wrong: a bug here) |
/// | `COMPILE` | `Compile` |
/// | `LOAD` | `Load` |
/// | `SCHEMA_MISMATCH` | `SchemaMismatch` (expected: inputs the model accepts; got: the bridge's reason) |
/// | `PREDICT` | `Internal` (the taxonomy has no "prediction failed" kind; the message keeps Core ML's NSError chain) |
/// | `TIMEOUT` | `Timeout` |
/// | `POISONED` | `Load` ("load the model again"); [`BridgeError::is_poisoned`] tells it apart |
/// | `UNAVAILABLE` | `Unavailable` |
/// | `OUT_OF_MEMORY` | `MemoryPressure` |
/// | `INTERNAL`, `INVALID_HANDLE`, unknown codes | `Internal` |
/// | `UNSUPPORTED` | `Unsupported` |
/// | `STATE_IN_USE` | `Unavailable` (the state serves one call at a time; the safe API's `&mut` makes this unreachable) |
/// | `STATE_MISMATCH` | `SchemaMismatch` (expected: a state of this model handle) |
pub fn status_to_error(status: Status, op: Operation, subject: &str, message: &str, timeout: Duration) -> Error {
    let model = subject.to_string();
    let message = message.to_string();
    match status {
        Status::Ok => Error::internal(format!(
            "{} of {subject}: expected a failure status, got COREML_OK",
            op.name()
        )),
        Status::InvalidArgument => match op {
            Operation::Compile | Operation::Load | Operation::ComputePlan => Error::invalid_artifact(subject, message),
            _ => Error::internal(format!(
                "the bridge rejected an argument of the {} of {subject} (a bug in apple-silicon): {message}",
                op.name()
            )),
        },
        Status::Compile => Error::Compile { model, message },
        Status::Load => Error::Load { model, message },
        Status::SchemaMismatch => Error::schema_mismatch(
            format!("inputs of {subject}"),
            "inputs the model accepts",
            message,
        ),
        Status::Predict => Error::internal(format!("Core ML prediction failed for {subject}: {message}")),
        Status::Timeout => Error::Timeout {
            operation: format!("{} of {subject}", op.name()),
            after: timeout,
        },
        Status::Poisoned => Error::Load {
            model,
            message: format!("the loaded model is poisoned by an earlier prediction timeout; load it again ({message})"),
        },
        Status::Unavailable => Error::Unavailable {
            engine: ENGINE_NAME.to_string(),
            reason: message,
        },
        Status::OutOfMemory => Error::MemoryPressure {
            message: format!("{} of {subject}: {message}", op.name()),
        },
        Status::Internal => Error::internal(format!("bridge error in the {} of {subject}: {message}", op.name())),
        Status::InvalidHandle => Error::internal(format!(
            "the bridge does not know the model handle used for the {} of {subject} (a bug in apple-silicon): {message}",
            op.name()
        )),
        Status::Unsupported => Error::unsupported(format!("{} of {subject}: {message}", op.name())),
        Status::StateInUse => Error::Unavailable {
            engine: ENGINE_NAME.to_string(),
            reason: format!("{} of {subject}: {message}", op.name()),
        },
        Status::StateMismatch => Error::schema_mismatch(
            format!("model state for the {} of {subject}", op.name()),
            "a state made by this loaded model (coreml_make_state on the same handle)",
            message,
        ),
        Status::Unknown(code) => Error::internal(format!(
            "the bridge returned status {code} for the {} of {subject}; expected one of 0..=14 \
             (is the library built from another version of coreml_bridge.h?): {message}",
            op.name()
        )),
    }
}

/// A failed bridge call: the bridge's status and message, and the crate
/// [`Error`] they map to ([`status_to_error`]). Checks the Rust side makes
/// before calling (for example an input dtype the bridge does not take)
/// carry the status the bridge would have returned and a more precise error.
#[derive(Debug)]
pub struct BridgeError {
    status: Status,
    message: String,
    error: Error,
}

impl BridgeError {
    /// Builds the error for a failed call.
    pub fn new(status: Status, op: Operation, subject: &str, message: impl Into<String>, timeout: Duration) -> Self {
        let message = message.into();
        let error = status_to_error(status, op, subject, &message, timeout);
        BridgeError { status, message, error }
    }

    fn refused(status: Status, error: Error) -> Self {
        BridgeError {
            status,
            message: error.to_string(),
            error,
        }
    }

    fn unavailable(reason: &str) -> Self {
        BridgeError::refused(
            Status::Unavailable,
            Error::Unavailable {
                engine: ENGINE_NAME.to_string(),
                reason: reason.to_string(),
            },
        )
    }

    /// The bridge status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The bridge's message (NSError domain, code and chain when there was one).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the model handle is poisoned: the call timed out (predict) or
    /// found the handle poisoned. The model must be loaded again.
    pub fn is_poisoned(&self) -> bool {
        self.status == Status::Poisoned
    }

    /// The crate error this maps to.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// Converts into the crate error.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl fmt::Display for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.error, self.status.c_name())
    }
}

impl std::error::Error for BridgeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<BridgeError> for Error {
    fn from(e: BridgeError) -> Error {
        e.error
    }
}

/// A string owned by the bridge, freed exactly once with `coreml_free_string`
/// when dropped (also on every early return).
struct BridgeString(*mut c_char);

impl BridgeString {
    fn null() -> Self {
        BridgeString(ptr::null_mut())
    }

    /// The out pointer to hand to the bridge. The bridge never reads the old
    /// value, so the slot must be empty: a previous string is freed first.
    fn out(&mut self) -> *mut *mut c_char {
        self.free();
        &mut self.0
    }

    /// Copies the text (lossily for invalid UTF-8) and frees the original.
    fn take(&mut self) -> Option<String> {
        if self.0.is_null() {
            return None;
        }
        // SAFETY: the bridge returned a NUL-terminated string it owns until
        // coreml_free_string, which `free` calls right after the copy.
        let s = unsafe { CStr::from_ptr(self.0) }.to_string_lossy().into_owned();
        self.free();
        Some(s)
    }

    fn free(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a string handed out by the bridge, not freed before
            // (the pointer is cleared right after).
            unsafe { ffi::coreml_free_string(self.0) };
            self.0 = ptr::null_mut();
        }
    }
}

impl Drop for BridgeString {
    fn drop(&mut self) {
        self.free();
    }
}

/// Feature outputs owned by the bridge, freed exactly once on drop.
struct BridgeFeatureOutputs(*mut ffi::CoremlFeatureOutputs);

impl Drop for BridgeFeatureOutputs {
    fn drop(&mut self) {
        // SAFETY: NULL or outputs from coreml_predict_features, freed only here.
        unsafe { ffi::coreml_free_feature_outputs(self.0) };
    }
}

/// A NUL-terminated string of the bridge's outputs, or `bad`'s error.
///
/// # Safety
///
/// `p` must be NULL or a NUL-terminated string.
unsafe fn bridge_str(p: *const c_char, what: &str, bad: &dyn Fn(String) -> Error) -> Result<String> {
    if p.is_null() {
        return Err(bad(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(str::to_string)
        .map_err(|_| bad(format!("{what} is not UTF-8")))
}

/// Copies feature outputs into owned values, checking every field against
/// the header's promises (`Internal` on a broken one).
///
/// # Safety
///
/// `outputs` must be NULL or as `coreml_predict_features` hands it out.
unsafe fn read_feature_outputs(
    outputs: *const ffi::CoremlFeatureOutputs,
    subject: &str,
) -> Result<crate::feature::FeatureMap> {
    use crate::feature::{Dictionary, FeatureValue};
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
    if count > 0 && outs.features.is_null() {
        return Err(bad(format!("expected {count} features, got a NULL array")));
    }
    let mut map = crate::feature::FeatureMap::new();
    for i in 0..count {
        // SAFETY: `features` holds `count` entries.
        let f = unsafe { &*outs.features.add(i) };
        // SAFETY: the bridge's strings.
        let name = unsafe { bridge_str(f.name, &format!("output #{i}'s name"), &bad) }?;
        let value = match f.kind {
            // SAFETY: the bridge's output tensor.
            ffi::COREML_FEATURE_TENSOR => FeatureValue::Tensor(unsafe { read_output_tensor(&f.tensor, &name, &bad) }?),
            ffi::COREML_FEATURE_INT64 => FeatureValue::Int64(f.int64_value),
            ffi::COREML_FEATURE_DOUBLE => FeatureValue::Double(f.double_value),
            // SAFETY: the bridge's string.
            ffi::COREML_FEATURE_STRING => {
                FeatureValue::String(unsafe { bridge_str(f.string_value, &format!("output `{name}`"), &bad) }?)
            }
            ffi::COREML_FEATURE_DICTIONARY => {
                let n = usize::try_from(f.dict_count)
                    .map_err(|_| bad(format!("output `{name}`: negative dict_count {}", f.dict_count)))?;
                if n > 0 && f.dict_values.is_null() {
                    return Err(bad(format!("output `{name}`: NULL dict_values for {n} entries")));
                }
                let values = if n == 0 {
                    &[][..]
                } else {
                    // SAFETY: `dict_values` holds `dict_count` doubles.
                    unsafe { std::slice::from_raw_parts(f.dict_values, n) }
                };
                match f.dict_key_kind {
                    ffi::COREML_FEATURE_STRING => {
                        if n > 0 && f.dict_string_keys.is_null() {
                            return Err(bad(format!("output `{name}`: NULL dict_string_keys")));
                        }
                        let mut entries = Vec::with_capacity(n);
                        for (k, v) in values.iter().enumerate() {
                            // SAFETY: `dict_string_keys` holds `dict_count` strings.
                            let key = unsafe { bridge_str(*f.dict_string_keys.add(k), "a dictionary key", &bad) }?;
                            entries.push((key, *v));
                        }
                        FeatureValue::Dictionary(Dictionary::Strings(entries))
                    }
                    ffi::COREML_FEATURE_INT64 => {
                        if n > 0 && f.dict_int64_keys.is_null() {
                            return Err(bad(format!("output `{name}`: NULL dict_int64_keys")));
                        }
                        let keys = if n == 0 {
                            &[][..]
                        } else {
                            // SAFETY: `dict_int64_keys` holds `dict_count` keys.
                            unsafe { std::slice::from_raw_parts(f.dict_int64_keys, n) }
                        };
                        FeatureValue::Dictionary(Dictionary::Int64(
                            keys.iter().copied().zip(values.iter().copied()).collect(),
                        ))
                    }
                    other => return Err(bad(format!("output `{name}`: dictionary key kind {other}"))),
                }
            }
            other => {
                return Err(bad(format!(
                    "output `{name}`: expected a feature kind 1..=5, got {other}"
                )))
            }
        };
        if map.insert(name.clone(), value).is_some() {
            return Err(bad(format!("output `{name}` appears twice")));
        }
    }
    Ok(map)
}

/// Predict outputs owned by the bridge, freed exactly once on drop.
#[repr(transparent)]
struct BridgeOutputs(*mut ffi::CoremlOutputs);

impl Drop for BridgeOutputs {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: outputs handed out by coreml_predict, freed only here.
            unsafe { ffi::coreml_free_outputs(self.0) };
            self.0 = ptr::null_mut();
        }
    }
}

/// A timeout in whole milliseconds for the C ABI: rounded up, at least 1 ms
/// (the bridge rejects 0), at most `i64::MAX` (the bridge clamps to 30 days).
pub fn timeout_ms(timeout: Duration) -> i64 {
    let ms = timeout.as_nanos().div_ceil(1_000_000).max(1);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn path_cstring(path: &Path, op: Operation, what: &str) -> std::result::Result<CString, BridgeError> {
    let bad = |reason: &str| {
        BridgeError::refused(
            Status::InvalidArgument,
            Error::invalid_artifact(path, format!("{what} {reason} (the {} needs a UTF-8 path)", op.name())),
        )
    };
    let s = path.to_str().ok_or_else(|| bad("is not valid UTF-8"))?;
    CString::new(s).map_err(|_| bad("contains a NUL byte"))
}

fn ensure_linked() -> std::result::Result<(), BridgeError> {
    if is_linked() {
        Ok(())
    } else {
        Err(BridgeError::unavailable(NO_BRIDGE_REASON))
    }
}

/// Turns a status and its error slot into a result.
fn check(
    code: i32,
    err: &mut BridgeString,
    op: Operation,
    subject: &str,
    timeout: Duration,
) -> std::result::Result<(), BridgeError> {
    let status = Status::from_code(code);
    let message = err.take();
    if status == Status::Ok {
        return Ok(());
    }
    let message = message.unwrap_or_else(|| "(the bridge gave no message)".to_string());
    Err(BridgeError::new(status, op, subject, message, timeout))
}

/// The ABI version of the linked library (`coreml_bridge_abi_version`), or 0
/// without a bridge. Costs one call.
pub fn abi_version() -> i32 {
    // SAFETY: no arguments; the function only returns a constant.
    unsafe { ffi::coreml_bridge_abi_version() }
}

/// Checks that the linked library speaks this mirror's ABI version. The
/// error names the expected and the found version. Costs one call.
pub fn check_abi() -> Result<()> {
    if !is_linked() {
        return Err(BridgeError::unavailable(NO_BRIDGE_REASON).into_error());
    }
    check_abi_version(abi_version())
}

/// Refuses a bridge whose ABI version `got` is not this mirror's
/// ([`ffi::COREML_BRIDGE_ABI_VERSION`]); the error names both. Pure.
pub fn check_abi_version(got: i32) -> Result<()> {
    if got != ffi::COREML_BRIDGE_ABI_VERSION {
        return Err(Error::internal(format!(
            "coreml-bridge ABI version: this crate speaks version {}, the linked library speaks version {got} \
             (rebuild the Swift library from this checkout)",
            ffi::COREML_BRIDGE_ABI_VERSION
        )));
    }
    Ok(())
}

/// What the process runs on, from `coreml_runtime_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// The library's ABI version.
    pub bridge_abi_version: i32,
    /// `macOS`, `iOS`, `Linux`, …
    pub platform: String,
    /// `ProcessInfo.operatingSystemVersionString`.
    pub os_version: String,
    /// macOS build (e.g. `23E214`); `None` elsewhere.
    pub os_build: Option<String>,
    /// CPU brand string (e.g. `Apple M2`).
    pub chip: Option<String>,
    /// Whether Core ML exists here.
    pub coreml_available: bool,
    /// CoreML.framework's version.
    pub coreml_version: Option<String>,
    /// Whether there is a Neural Engine; `None` when it cannot be known.
    pub neural_engine_present: Option<bool>,
    /// Neural Engine cores, where known.
    pub neural_engine_cores: Option<u32>,
    /// Whether `MLComputePlan` exists (macOS 14.4+).
    pub compute_plan_available: bool,
    /// Whether the deterministic fake runtime serves model calls
    /// (`COREML_BRIDGE_TEST_RUNTIME=1`).
    pub test_runtime: bool,
    /// Why Core ML is unavailable.
    pub reason: Option<String>,
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    json: &str,
    op: Operation,
    subject: &str,
) -> std::result::Result<T, BridgeError> {
    serde_json::from_str(json).map_err(|e| {
        BridgeError::refused(
            Status::Internal,
            Error::internal(format!(
                "the bridge's {} JSON for {subject} does not have the documented layout: {e}",
                op.name()
            )),
        )
    })
}

/// Asks the bridge what it runs on (`coreml_runtime_info`). Works where Core
/// ML does not exist (it then says why). Costs one call and a small JSON
/// parse; on macOS the bridge reads a few sysctls and a bundle version.
pub fn runtime_info() -> std::result::Result<RuntimeInfo, BridgeError> {
    ensure_linked()?;
    let mut json = BridgeString::null();
    let mut err = BridgeString::null();
    // SAFETY: both out pointers point at live, empty slots.
    let code = unsafe { ffi::coreml_runtime_info(json.out(), err.out()) };
    check(code, &mut err, Operation::RuntimeInfo, "this process", Duration::ZERO)?;
    let text = json
        .take()
        .ok_or_else(|| missing_out(Operation::RuntimeInfo, "out_json"))?;
    parse_json(&text, Operation::RuntimeInfo, "this process")
}

fn missing_out(op: Operation, what: &str) -> BridgeError {
    BridgeError::refused(
        Status::Internal,
        Error::internal(format!(
            "the bridge returned COREML_OK from the {} but left {what} NULL",
            op.name()
        )),
    )
}

/// Compiles a model package (`.mlpackage` directory or `.mlmodel` file) into
/// `<dest_dir>/<package stem>.mlmodelc` and returns that path
/// (`coreml_compile_model`). `dest_dir` must exist and must not already hold
/// the result. Costs a Core ML compile: seconds to minutes for big models.
/// The calling thread waits at most `timeout` (rounded up to whole ms). A
/// compile that finishes later deletes its output and never writes into
/// `dest_dir`.
pub fn compile_model(package: &Path, dest_dir: &Path, timeout: Duration) -> std::result::Result<PathBuf, BridgeError> {
    ensure_linked()?;
    let subject = package.display().to_string();
    let c_package = path_cstring(package, Operation::Compile, "package path")?;
    let c_dest = path_cstring(dest_dir, Operation::Compile, "destination directory")?;
    let mut out = BridgeString::null();
    let mut err = BridgeString::null();
    // SAFETY: NUL-terminated strings that outlive the call; out pointers point at empty slots.
    let code = unsafe {
        ffi::coreml_compile_model(
            c_package.as_ptr(),
            c_dest.as_ptr(),
            timeout_ms(timeout),
            out.out(),
            err.out(),
        )
    };
    check(code, &mut err, Operation::Compile, &subject, timeout)?;
    out.take()
        .map(PathBuf::from)
        .ok_or_else(|| missing_out(Operation::Compile, "out_compiled_path"))
}

/// One operation of a compute plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOperation {
    /// ML Program function (`""` for neural network layers).
    #[serde(default)]
    pub function: String,
    /// Position in the program.
    #[serde(default)]
    pub index: i64,
    /// Operator (or layer type).
    #[serde(default)]
    pub operator: String,
    /// Output names.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// `cpu`, `gpu` or `neural_engine`, where known.
    pub preferred_device: Option<String>,
    /// Devices that could run it.
    #[serde(default)]
    pub supported_devices: Vec<String>,
    /// Core ML's relative cost estimate.
    pub estimated_cost: Option<f64>,
}

/// Operations per preferred device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceCounts {
    /// Preferred on the CPU.
    #[serde(default)]
    pub cpu: u64,
    /// Preferred on the GPU.
    #[serde(default)]
    pub gpu: u64,
    /// Preferred on the Neural Engine.
    #[serde(default)]
    pub neural_engine: u64,
    /// No known preferred device.
    #[serde(default)]
    pub unknown: u64,
}

/// Where each operation of a compiled model would run (`coreml_compute_plan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputePlan {
    /// `program`, `neuralNetwork`, `pipeline` or `unsupported`.
    pub model_type: String,
    /// Every operation.
    #[serde(default)]
    pub operations: Vec<PlanOperation>,
    /// Operations per preferred device.
    #[serde(default)]
    pub device_counts: DeviceCounts,
}

impl ComputePlan {
    /// Number of operations counted in [`ComputePlan::device_counts`].
    pub fn total_ops(&self) -> u64 {
        let c = self.device_counts;
        c.cpu + c.gpu + c.neural_engine + c.unknown
    }

    /// Share of operations whose preferred device is the Neural Engine, in
    /// percent rounded to nearest; `None` for a plan without operations.
    pub fn neural_engine_pct(&self) -> Option<u32> {
        let total = self.total_ops();
        if total == 0 {
            return None;
        }
        let pct = (self.device_counts.neural_engine * 100 + total / 2) / total;
        Some(pct.min(100) as u32)
    }

    /// The narrowest compute units that cover every preferred device in the
    /// plan: where Core ML would run the ops, not a measurement. `None` when
    /// no operation has a known device.
    pub fn units_in_use(&self) -> Option<ComputeUnits> {
        let c = self.device_counts;
        match (c.gpu > 0, c.neural_engine > 0, c.cpu > 0) {
            (false, false, false) => None,
            (false, false, true) => Some(ComputeUnits::CpuOnly),
            (true, false, _) => Some(ComputeUnits::CpuAndGpu),
            (false, true, _) => Some(ComputeUnits::CpuAndNe),
            (true, true, _) => Some(ComputeUnits::All),
        }
    }
}

/// The compute plan of a compiled model for `units` (`coreml_compute_plan`;
/// `MLComputePlan`, macOS 14.4+; elsewhere `Unavailable`). Costs about a
/// model load (Core ML plans the model on the devices). Waits at most `timeout`.
pub fn compute_plan(
    compiled: &Path,
    units: ComputeUnits,
    timeout: Duration,
) -> std::result::Result<ComputePlan, BridgeError> {
    ensure_linked()?;
    let subject = compiled.display().to_string();
    let c_path = path_cstring(compiled, Operation::ComputePlan, "compiled model path")?;
    let mut json = BridgeString::null();
    let mut err = BridgeString::null();
    // SAFETY: a NUL-terminated string that outlives the call; empty out slots.
    let code = unsafe {
        ffi::coreml_compute_plan(
            c_path.as_ptr(),
            units.ffi_code(),
            timeout_ms(timeout),
            json.out(),
            err.out(),
        )
    };
    check(code, &mut err, Operation::ComputePlan, &subject, timeout)?;
    let text = json
        .take()
        .ok_or_else(|| missing_out(Operation::ComputePlan, "out_json"))?;
    parse_json(&text, Operation::ComputePlan, &subject)
}

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

/// Input descriptors pointing into the caller's tensors and into names and
/// shapes owned here; valid while `self` and the tensors live.
struct MarshalledInputs {
    _names: Vec<CString>,
    _shapes: Vec<Vec<i64>>,
    descriptors: Vec<ffi::CoremlTensor>,
}

/// Builds the descriptors for `inputs`, checking first what the bridge would
/// refuse, so the caller gets a `SchemaMismatch` naming expected and got
/// rather than an invalid-argument status. Costs a few small allocations per
/// input; tensor bytes are not copied (the bridge copies them).
fn marshal_inputs(inputs: &TensorMap, subject: &str) -> Result<MarshalledInputs> {
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
fn marshal_tensor(name: &str, t: &Tensor, subject: &str) -> Result<(CString, Vec<i64>, ffi::CoremlTensor)> {
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
unsafe fn read_outputs(outputs: *const ffi::CoremlOutputs, subject: &str) -> Result<TensorMap> {
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
unsafe fn read_output_tensor(t: &ffi::CoremlOutputTensor, name: &str, bad: &dyn Fn(String) -> Error) -> Result<Tensor> {
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

/// A model loaded by the bridge. Dropping it calls `coreml_free_model`.
/// That is safe even while a timed-out prediction still runs: the bridge
/// keeps what that work needs alive.
///
/// `Send` but not `Sync`: see the module docs. After a prediction times out
/// the model is *poisoned*: every later prediction fails with
/// [`Status::Poisoned`]. Load it again; `CoreMlEngine` does that by itself.
#[derive(Debug)]
pub struct BridgeModel {
    /// The bridge's handle: an opaque id, never dereferenced.
    handle: usize,
    path: PathBuf,
    units: ComputeUnits,
    schema: BridgeSchema,
    /// Set when a prediction timed out or found the handle poisoned. The
    /// `Cell` is also what makes the type `!Sync`.
    poisoned: Cell<bool>,
    /// C strings of feature names for `predict_into` (made once each).
    names: into::NameCache,
}

impl BridgeModel {
    /// Loads a compiled model (`.mlmodelc`) for `units` (`coreml_load_model`)
    /// and reads its schema (`coreml_model_schema`). Costs a Core ML load:
    /// from milliseconds up to minutes for a first load on the Neural Engine
    /// (device specialisation). Waits at most `timeout`. A load that finishes
    /// later is discarded by the bridge.
    pub fn load(compiled: &Path, units: ComputeUnits, timeout: Duration) -> std::result::Result<Self, BridgeError> {
        Self::load_function(compiled, None, units, timeout)
    }

    /// Like [`BridgeModel::load`], for one function of a multifunction model
    /// (`coreml_load_model_function`; Core ML's
    /// `MLModelConfiguration.functionName`, macOS 15+, `Unsupported` before).
    /// `None` loads the default function through `coreml_load_model`. An
    /// unknown name is Core ML's load error. Same costs as `load`.
    pub fn load_function(
        compiled: &Path,
        function: Option<&str>,
        units: ComputeUnits,
        timeout: Duration,
    ) -> std::result::Result<Self, BridgeError> {
        ensure_linked()?;
        let c_function = function
            .map(|f| {
                CString::new(f).map_err(|_| {
                    BridgeError::refused(
                        Status::InvalidArgument,
                        Error::invalid_artifact(compiled, format!("function name {f:?} contains a NUL byte")),
                    )
                })
            })
            .transpose()?;
        let subject = compiled.display().to_string();
        let c_path = path_cstring(compiled, Operation::Load, "compiled model path")?;
        let mut handle: *mut c_void = ptr::null_mut();
        let mut err = BridgeString::null();
        // SAFETY: NUL-terminated strings that outlive the call; empty out slots.
        let code = unsafe {
            match &c_function {
                None => ffi::coreml_load_model(
                    c_path.as_ptr(),
                    units.ffi_code(),
                    timeout_ms(timeout),
                    &mut handle,
                    err.out(),
                ),
                Some(f) => ffi::coreml_load_model_function(
                    c_path.as_ptr(),
                    f.as_ptr(),
                    units.ffi_code(),
                    timeout_ms(timeout),
                    &mut handle,
                    err.out(),
                ),
            }
        };
        check(code, &mut err, Operation::Load, &subject, timeout)?;
        if handle.is_null() {
            return Err(missing_out(Operation::Load, "out_handle"));
        }
        let mut model = BridgeModel {
            handle: handle.addr(),
            path: compiled.to_path_buf(),
            units,
            schema: BridgeSchema {
                inputs: Vec::new(),
                outputs: Vec::new(),
                states: Vec::new(),
                functions: Vec::new(),
                function: None,
                classifier: None,
                metadata: SchemaMetadata::default(),
            },
            poisoned: Cell::new(false),
            names: Default::default(),
        };
        // On failure `model` is dropped here, which frees the handle.
        model.schema = model.fetch_schema()?;
        Ok(model)
    }

    fn raw(&self) -> *mut c_void {
        // The handle is an id that only round-trips through the bridge.
        ptr::without_provenance_mut(self.handle)
    }

    fn subject(&self) -> String {
        self.path.display().to_string()
    }

    fn fetch_schema(&self) -> std::result::Result<BridgeSchema, BridgeError> {
        let subject = self.subject();
        let json = self.schema_json()?;
        parse_json(&json, Operation::Schema, &subject)
    }

    /// The raw schema JSON (`coreml_model_schema`). Works on poisoned
    /// models. Costs one call; the bridge builds the JSON each time.
    pub fn schema_json(&self) -> std::result::Result<String, BridgeError> {
        let subject = self.subject();
        let mut json = BridgeString::null();
        let mut err = BridgeString::null();
        // SAFETY: a handle from coreml_load_model, not freed (self is alive); empty out slots.
        let code = unsafe { ffi::coreml_model_schema(self.raw(), json.out(), err.out()) };
        check(code, &mut err, Operation::Schema, &subject, Duration::ZERO)?;
        json.take().ok_or_else(|| missing_out(Operation::Schema, "out_json"))
    }

    /// The model's interface, read once at load (no call).
    pub fn schema(&self) -> &BridgeSchema {
        &self.schema
    }

    /// The compiled model directory it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The compute units it was loaded with.
    pub fn compute_units(&self) -> ComputeUnits {
        self.units
    }

    /// Whether a prediction timed out (or found the handle poisoned): every
    /// later prediction fails until the model is loaded again.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }

    /// Runs one prediction (`coreml_predict`). Checks first, on this side,
    /// what the bridge would refuse: dtype (see [`INPUT_DTYPES`]), rank,
    /// empty dimensions, names. The bridge copies every input byte before
    /// queueing the work. The calling thread waits at most `timeout`
    /// (rounded up to whole ms). The outputs are copied into owned tensors
    /// and the bridge's copies are freed before returning. Costs the
    /// prediction, plus one copy of the inputs (in the bridge) and two of
    /// the outputs (bridge gather, then ours).
    ///
    /// On [`Status::Timeout`] the prediction keeps running in the bridge
    /// (Core ML cannot be interrupted) and this model becomes poisoned.
    pub fn predict(&self, inputs: &TensorMap, timeout: Duration) -> std::result::Result<TensorMap, BridgeError> {
        self.predict_inner(inputs, timeout, None, &mut StageTimings::default())
    }

    /// [`BridgeModel::predict`], also returning how long each stage took as
    /// Rust sees it: `marshal_in` (descriptors over the caller's tensors),
    /// `predict` (the bridge call, which copies the inputs, predicts and
    /// gathers the outputs) and `marshal_out` (outputs into host tensors).
    /// Costs three clock reads more than `predict`.
    pub fn predict_timed(
        &self,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> std::result::Result<(TensorMap, StageTimings), BridgeError> {
        let mut t = StageTimings::default();
        let out = self.predict_inner(inputs, timeout, None, &mut t)?;
        Ok((out, t))
    }

    /// Runs a batch under one deadline (`coreml_predict_batch`, Core ML's
    /// `predictions(from:options:)`, which may run the members together).
    /// Every member is checked here and then by the bridge against the
    /// model before any runs; a bad member is refused naming its index. An
    /// empty batch returns at once. Costs the batch, plus one copy of every
    /// input (in the bridge) and two of every output. On
    /// [`Status::Timeout`] this model becomes poisoned.
    pub fn predict_batch(
        &self,
        batch: &[TensorMap],
        timeout: Duration,
    ) -> std::result::Result<Vec<TensorMap>, BridgeError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let subject = self.subject();
        if batch.len() > ffi::COREML_MAX_BATCH as usize {
            return Err(BridgeError::refused(
                Status::InvalidArgument,
                Error::schema_mismatch(
                    format!("batch size for {subject}"),
                    format!("1..={}", ffi::COREML_MAX_BATCH),
                    batch.len().to_string(),
                ),
            ));
        }
        let marshalled = batch
            .iter()
            .enumerate()
            .map(|(i, inputs)| {
                marshal_inputs(inputs, &format!("batch member #{i} of {subject}"))
                    .map_err(|e| BridgeError::refused(Status::InvalidArgument, e))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let members: Vec<ffi::CoremlBatchMember> = marshalled
            .iter()
            .map(|m| ffi::CoremlBatchMember {
                inputs: m.descriptors.as_ptr(),
                n_inputs: m.descriptors.len() as i32,
            })
            .collect();
        // One guard per slot: whatever the bridge stored is freed once.
        let mut slots: Vec<BridgeOutputs> = (0..batch.len()).map(|_| BridgeOutputs(ptr::null_mut())).collect();
        let mut err = BridgeString::null();
        // SAFETY: a live handle; `members` point into `marshalled` and
        // `batch`, alive until after the call; `slots` has `n_batch` entries
        // and BridgeOutputs is a transparent pointer wrapper.
        let code = unsafe {
            ffi::coreml_predict_batch(
                self.raw(),
                members.as_ptr(),
                members.len() as i32,
                timeout_ms(timeout),
                slots.as_mut_ptr().cast::<*mut ffi::CoremlOutputs>(),
                err.out(),
            )
        };
        drop(members);
        drop(marshalled);
        let status = Status::from_code(code);
        if matches!(status, Status::Timeout | Status::Poisoned) {
            self.poisoned.set(true);
        }
        check(code, &mut err, Operation::Predict, &subject, timeout)?;
        slots
            .iter()
            .enumerate()
            // SAFETY: COREML_OK: each slot holds the bridge's outputs, valid
            // until `slots` is dropped (which frees them).
            .map(|(i, o)| unsafe { read_outputs(o.0, &format!("batch member #{i} of {subject}")) })
            .collect::<Result<Vec<_>>>()
            .map_err(|e| BridgeError::refused(Status::Internal, e))
    }

    /// Runs one prediction on feature values of any kind
    /// (`coreml_predict_features`, or `coreml_predict_images` when there are
    /// images): multi-arrays, images, int64, double and string inputs; every
    /// output Core ML returns except images and sequences (a classifier's
    /// label and probabilities included). Dictionaries and sequences as
    /// inputs are refused as `Unsupported` before calling. Same checks,
    /// deadline and costs as [`BridgeModel::predict`], plus a copy of every
    /// string and of every image's pixels (into the bridge's pixel buffer).
    pub fn predict_features(
        &self,
        inputs: &crate::feature::FeatureMap,
        timeout: Duration,
    ) -> std::result::Result<crate::feature::FeatureMap, BridgeError> {
        use crate::feature::FeatureValue;
        let subject = self.subject();
        let refuse = |e: Error| BridgeError::refused(Status::InvalidArgument, e);
        if inputs.is_empty() || inputs.len() > MAX_INPUTS {
            return Err(refuse(Error::schema_mismatch(
                format!("number of inputs of {subject}"),
                format!("1..={MAX_INPUTS}"),
                inputs.len().to_string(),
            )));
        }
        // Owned C data the descriptors point into, alive across the call.
        let mut keep_names = Vec::with_capacity(inputs.len());
        let mut keep_tensor = Vec::new();
        let mut descriptors = Vec::with_capacity(inputs.len());
        let mut images = Vec::new();
        let empty = ffi::CoremlTensor {
            name: ptr::null(),
            dtype: 0,
            rank: 0,
            shape: ptr::null(),
            strides: ptr::null(),
            data: ptr::null(),
            byte_len: 0,
        };
        for (name, value) in inputs {
            if let FeatureValue::Image(img) = value {
                let (n, d) = crate::core_ml_images::marshal_image(name, img, &subject).map_err(refuse)?;
                keep_names.push(n);
                images.push(d);
                continue;
            }
            let c_name = CString::new(name.as_str()).map_err(|_| {
                refuse(Error::schema_mismatch(
                    format!("name of input `{}`", name.escape_debug()),
                    "a name without NUL bytes",
                    "a name with a NUL byte",
                ))
            })?;
            let mut f = ffi::CoremlFeature {
                name: c_name.as_ptr(),
                kind: 0,
                tensor: empty,
                int64_value: 0,
                double_value: 0.0,
                string_value: ptr::null(),
            };
            match value {
                FeatureValue::Tensor(t) => {
                    let (n, shape, d) = marshal_tensor(name, t, &subject).map_err(refuse)?;
                    f.kind = ffi::COREML_FEATURE_TENSOR;
                    f.tensor = d;
                    keep_tensor.push((n, shape));
                }
                FeatureValue::Int64(v) => {
                    f.kind = ffi::COREML_FEATURE_INT64;
                    f.int64_value = *v;
                }
                FeatureValue::Double(v) => {
                    f.kind = ffi::COREML_FEATURE_DOUBLE;
                    f.double_value = *v;
                }
                FeatureValue::String(s) => {
                    let c = CString::new(s.as_str()).map_err(|_| {
                        refuse(Error::schema_mismatch(
                            format!("input `{name}` of {subject}"),
                            "a string without NUL bytes",
                            "a string with a NUL byte",
                        ))
                    })?;
                    f.kind = ffi::COREML_FEATURE_STRING;
                    f.string_value = c.as_ptr();
                    keep_names.push(c);
                }
                other => {
                    return Err(BridgeError::refused(
                        Status::Unsupported,
                        Error::unsupported(format!(
                            "input `{name}` of {subject} is {}: the bridge's feature calls take multi-arrays, \
                             images, int64, double and string values",
                            other.kind_name()
                        )),
                    ))
                }
            }
            keep_names.push(c_name);
            descriptors.push(f);
        }
        let mut outputs = BridgeFeatureOutputs(ptr::null_mut());
        let mut err = BridgeString::null();
        // SAFETY: a live handle; every descriptor points into `keep_names`,
        // `keep_tensor` or `inputs`, all alive until after the call.
        let code = unsafe {
            if images.is_empty() {
                ffi::coreml_predict_features(
                    self.raw(),
                    descriptors.as_ptr(),
                    descriptors.len() as i32,
                    timeout_ms(timeout),
                    &mut outputs.0,
                    err.out(),
                )
            } else {
                ffi::coreml_predict_images(
                    self.raw(),
                    if descriptors.is_empty() {
                        ptr::null()
                    } else {
                        descriptors.as_ptr()
                    },
                    descriptors.len() as i32,
                    images.as_ptr(),
                    images.len() as i32,
                    timeout_ms(timeout),
                    &mut outputs.0,
                    err.out(),
                )
            }
        };
        drop((descriptors, images, keep_names, keep_tensor));
        if matches!(Status::from_code(code), Status::Timeout | Status::Poisoned) {
            self.poisoned.set(true);
        }
        check(code, &mut err, Operation::Predict, &subject, timeout)?;
        // SAFETY: COREML_OK: the bridge's outputs, valid until `outputs` drops.
        unsafe { read_feature_outputs(outputs.0, &subject) }.map_err(|e| BridgeError::refused(Status::Internal, e))
    }

    /// Makes a fresh state for this model (`coreml_make_state`, Core ML's
    /// `makeState()`: every state buffer zeroed; an empty state for a
    /// stateless model). Waits at most `timeout`. Costs the allocation of
    /// the model's state buffers. Core ML has states from macOS 15 / iOS 18
    /// on; before, the bridge answers [`Status::Unsupported`].
    pub fn make_state(&self, timeout: Duration) -> std::result::Result<BridgeState, BridgeError> {
        let subject = self.subject();
        let mut state: *mut c_void = ptr::null_mut();
        let mut err = BridgeString::null();
        // SAFETY: a live handle (self is alive); empty out slots.
        let code = unsafe { ffi::coreml_make_state(self.raw(), timeout_ms(timeout), &mut state, err.out()) };
        if Status::from_code(code) == Status::Poisoned {
            self.poisoned.set(true);
        }
        check(code, &mut err, Operation::MakeState, &subject, timeout)?;
        if state.is_null() {
            return Err(missing_out(Operation::MakeState, "out_state"));
        }
        Ok(BridgeState {
            handle: state.addr(),
            model: self.handle,
            poisoned: Cell::new(false),
        })
    }

    /// Runs one prediction that reads and updates `state`
    /// (`coreml_predict_with_state`, Core ML's
    /// `prediction(from:using:options:)`). Same checks, copies, deadline
    /// and costs as [`BridgeModel::predict`]. A state made by another
    /// loaded model is refused with [`Status::StateMismatch`] before
    /// anything runs. On [`Status::Timeout`] both this model and `state`
    /// become poisoned (the late prediction may still update the state).
    pub fn predict_with_state(
        &self,
        state: &BridgeState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> std::result::Result<TensorMap, BridgeError> {
        if state.model != self.handle {
            return Err(BridgeError::refused(
                Status::StateMismatch,
                Error::schema_mismatch(
                    format!("model state for {}", self.subject()),
                    "a state made by this loaded model",
                    "a state made by another loaded model (or by this model before it was loaded again)",
                ),
            ));
        }
        let out = self.predict_inner(inputs, timeout, Some(state), &mut StageTimings::default());
        if let Err(e) = &out {
            if matches!(e.status(), Status::Timeout | Status::Poisoned) {
                state.poisoned.set(true);
            }
        }
        out
    }

    fn predict_inner(
        &self,
        inputs: &TensorMap,
        timeout: Duration,
        state: Option<&BridgeState>,
        timings: &mut StageTimings,
    ) -> std::result::Result<TensorMap, BridgeError> {
        let subject = self.subject();
        let t0 = std::time::Instant::now();
        let marshalled =
            marshal_inputs(inputs, &subject).map_err(|e| BridgeError::refused(Status::InvalidArgument, e))?;
        let t1 = std::time::Instant::now();
        timings.marshal_in = Some(t1 - t0);
        let mut outputs = BridgeOutputs(ptr::null_mut());
        let mut err = BridgeString::null();
        // SAFETY: a live handle (and state: `state` is alive); `descriptors`
        // point into `marshalled` and `inputs`, both alive until after the
        // call; empty out slots.
        let code = unsafe {
            match state {
                None => ffi::coreml_predict(
                    self.raw(),
                    marshalled.descriptors.as_ptr(),
                    marshalled.descriptors.len() as i32,
                    timeout_ms(timeout),
                    &mut outputs.0,
                    err.out(),
                ),
                Some(st) => ffi::coreml_predict_with_state(
                    self.raw(),
                    st.raw(),
                    marshalled.descriptors.as_ptr(),
                    marshalled.descriptors.len() as i32,
                    timeout_ms(timeout),
                    &mut outputs.0,
                    err.out(),
                ),
            }
        };
        drop(marshalled);
        let t2 = std::time::Instant::now();
        timings.predict = Some(t2 - t1);
        let status = Status::from_code(code);
        if matches!(status, Status::Timeout | Status::Poisoned) {
            self.poisoned.set(true);
        }
        if status == Status::SchemaMismatch {
            // Name what the model accepts rather than a generic phrase.
            let message = err.take().unwrap_or_default();
            return Err(BridgeError {
                status,
                error: Error::schema_mismatch(
                    format!("inputs of {subject}"),
                    format!("inputs {}", self.schema.describe_inputs()),
                    format!("{} ({message})", describe_tensors(inputs)),
                ),
                message,
            });
        }
        check(code, &mut err, Operation::Predict, &subject, timeout)?;
        // SAFETY: COREML_OK: `outputs.0` is NULL or the bridge's outputs,
        // valid until `outputs` is dropped (which frees them).
        let out = unsafe { read_outputs(outputs.0, &subject) }.map_err(|e| BridgeError::refused(Status::Internal, e));
        timings.marshal_out = Some(t2.elapsed());
        out
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

/// A model state made by the bridge ([`BridgeModel::make_state`]): Core ML's
/// `MLState`, held across predictions of the model that made it. Dropping it
/// calls `coreml_free_state`, which is safe while a timed-out prediction
/// still uses it (the bridge keeps the `MLState` alive until that returns).
///
/// `Send` but not `Sync`, like [`BridgeModel`]: a state serves one call at a
/// time (the bridge refuses a second with [`Status::StateInUse`]).
#[derive(Debug)]
pub struct BridgeState {
    /// The bridge's state id, never dereferenced.
    handle: usize,
    /// The id of the model handle that made it.
    model: usize,
    /// Set when a prediction with it timed out or found it poisoned.
    poisoned: Cell<bool>,
}

impl BridgeState {
    fn raw(&self) -> *mut c_void {
        ptr::without_provenance_mut(self.handle)
    }

    /// Whether a prediction with it timed out: it is then unusable (make a
    /// new state). No call.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }
}

impl Drop for BridgeState {
    fn drop(&mut self) {
        // SAFETY: the id came from coreml_make_state and is freed only here,
        // once. The bridge ignores unknown ids in any case.
        unsafe { ffi::coreml_free_state(self.raw()) };
    }
}

impl Drop for BridgeModel {
    fn drop(&mut self) {
        // SAFETY: the handle came from coreml_load_model and is freed only
        // here, once. The bridge ignores unknown handles in any case.
        unsafe { ffi::coreml_free_model(self.raw()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::collections::{BTreeMap, BTreeSet};
    use std::process::Command;

    const HEADER: &str = include_str!("../../coreml-bridge/include/coreml_bridge.h");

    /// Removes `/* ... */` comments.
    fn strip_comments(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("/*") {
            out.push_str(&rest[..start]);
            match rest[start + 2..].find("*/") {
                Some(end) => rest = &rest[start + 2 + end + 2..],
                None => {
                    rest = "";
                    break;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// `(return type, name, [param types])` for every function prototype in the header.
    fn header_functions() -> Vec<(String, String, Vec<String>)> {
        let text = strip_comments(HEADER);
        let norm = |s: &str| -> String {
            let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
            s.replace(" *", "*").replace("* ", "*")
        };
        let mut out = Vec::new();
        let mut rest = text.as_str();
        while let Some(pos) = rest.find("coreml_") {
            // A prototype: `<type> coreml_name(<params>);` at statement level.
            let before = &rest[..pos];
            let line_start = before.rfind([';', '}', '{', '\n']).map(|i| i + 1).unwrap_or(0);
            let after = &rest[pos..];
            let name_end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..name_end];
            let tail = after[name_end..].trim_start();
            let ret = norm(&rest[line_start..pos]);
            if tail.starts_with('(') && (ret == "void" || ret == "int32_t") {
                let close = tail.find(')').expect("closing parenthesis");
                let params = tail[1..close].trim();
                let params: Vec<String> = if params == "void" || params.is_empty() {
                    Vec::new()
                } else {
                    params
                        .split(',')
                        .map(|p| {
                            // Drop the parameter name: the last identifier.
                            let p = norm(p);
                            let cut = p
                                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                                .map(|i| i + 1)
                                .unwrap_or(0);
                            norm(&p[..cut])
                        })
                        .collect()
                };
                out.push((ret, name.to_string(), params));
                rest = &tail[close..];
            } else {
                rest = &after[name_end..];
            }
        }
        out
    }

    /// The Rust spelling we expect for each C type of the header.
    fn rust_type(c: &str) -> &'static str {
        match c {
            "int32_t" => "i32",
            "int64_t" => "i64",
            "void" => "",
            "const char*" => "*const c_char",
            "char*" => "*mut c_char",
            "char**" => "*mut *mut c_char",
            "void*" => "*mut c_void",
            "void**" => "*mut *mut c_void",
            "const CoremlTensor*" => "*const CoremlTensor",
            "const CoremlBatchMember*" => "*const CoremlBatchMember",
            "const CoremlOutputBuffer*" => "*const CoremlOutputBuffer",
            "const CoremlFeature*" => "*const CoremlFeature",
            "const CoremlImage*" => "*const CoremlImage",
            "CoremlFeatureOutputs*" => "*mut CoremlFeatureOutputs",
            "CoremlFeatureOutputs**" => "*mut *mut CoremlFeatureOutputs",
            "CoremlOutputs*" => "*mut CoremlOutputs",
            "CoremlOutputs**" => "*mut *mut CoremlOutputs",
            other => panic!("C type `{other}` has no Rust mapping in this test: extend rust_type()"),
        }
    }

    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn every_header_function_is_declared_with_the_same_signature() {
        let header = header_functions();
        let names: Vec<&str> = header.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 20, "functions parsed from the header: {names:?}");
        let declared: BTreeMap<&str, &ffi::Signature> = ffi::SIGNATURES.iter().map(|s| (s.name, s)).collect();
        assert_eq!(
            declared.keys().copied().collect::<BTreeSet<_>>(),
            names.iter().copied().collect::<BTreeSet<_>>(),
            "functions declared in Rust vs in coreml_bridge.h"
        );
        for (ret, name, params) in &header {
            let sig = declared[name.as_str()];
            assert_eq!(squash(sig.ret), rust_type(ret), "return type of {name}");
            let want: Vec<&str> = params.iter().map(|p| rust_type(p)).collect();
            let got: Vec<String> = sig.params.iter().map(|p| squash(p)).collect();
            assert_eq!(got, want, "parameters of {name} (header: {params:?})");
        }
    }

    /// `NAME = value` or `#define NAME value` from the header.
    fn header_constants() -> BTreeMap<String, i64> {
        let text = strip_comments(HEADER);
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim().trim_end_matches(',');
            let (name, value) = if let Some(rest) = line.strip_prefix("#define ") {
                let mut it = rest.split_whitespace();
                match (it.next(), it.next()) {
                    (Some(n), Some(v)) => (n, v),
                    _ => continue,
                }
            } else if let Some((n, v)) = line.split_once('=') {
                (n.trim(), v.trim())
            } else {
                continue;
            };
            if name.starts_with("COREML_") {
                if let Ok(v) = value.parse::<i64>() {
                    map.insert(name.to_string(), v);
                }
            }
        }
        map
    }

    #[test]
    fn every_header_constant_has_the_same_value() {
        let header = header_constants();
        let ours: BTreeMap<&str, i32> = [
            ("COREML_BRIDGE_ABI_VERSION", ffi::COREML_BRIDGE_ABI_VERSION),
            ("COREML_MAX_RANK", ffi::COREML_MAX_RANK),
            ("COREML_MAX_BATCH", ffi::COREML_MAX_BATCH),
            ("COREML_OK", ffi::COREML_OK),
            ("COREML_ERR_INVALID_ARGUMENT", ffi::COREML_ERR_INVALID_ARGUMENT),
            ("COREML_ERR_COMPILE", ffi::COREML_ERR_COMPILE),
            ("COREML_ERR_LOAD", ffi::COREML_ERR_LOAD),
            ("COREML_ERR_SCHEMA_MISMATCH", ffi::COREML_ERR_SCHEMA_MISMATCH),
            ("COREML_ERR_PREDICT", ffi::COREML_ERR_PREDICT),
            ("COREML_ERR_TIMEOUT", ffi::COREML_ERR_TIMEOUT),
            ("COREML_ERR_POISONED", ffi::COREML_ERR_POISONED),
            ("COREML_ERR_UNAVAILABLE", ffi::COREML_ERR_UNAVAILABLE),
            ("COREML_ERR_OUT_OF_MEMORY", ffi::COREML_ERR_OUT_OF_MEMORY),
            ("COREML_ERR_INTERNAL", ffi::COREML_ERR_INTERNAL),
            ("COREML_ERR_INVALID_HANDLE", ffi::COREML_ERR_INVALID_HANDLE),
            ("COREML_ERR_UNSUPPORTED", ffi::COREML_ERR_UNSUPPORTED),
            ("COREML_ERR_STATE_IN_USE", ffi::COREML_ERR_STATE_IN_USE),
            ("COREML_ERR_STATE_MISMATCH", ffi::COREML_ERR_STATE_MISMATCH),
            ("COREML_FEATURE_TENSOR", ffi::COREML_FEATURE_TENSOR),
            ("COREML_FEATURE_INT64", ffi::COREML_FEATURE_INT64),
            ("COREML_FEATURE_DOUBLE", ffi::COREML_FEATURE_DOUBLE),
            ("COREML_FEATURE_STRING", ffi::COREML_FEATURE_STRING),
            ("COREML_FEATURE_DICTIONARY", ffi::COREML_FEATURE_DICTIONARY),
            ("COREML_PIXEL_RGB8", ffi::COREML_PIXEL_RGB8),
            ("COREML_PIXEL_BGR8", ffi::COREML_PIXEL_BGR8),
            ("COREML_PIXEL_BGRA8", ffi::COREML_PIXEL_BGRA8),
            ("COREML_PIXEL_ARGB8", ffi::COREML_PIXEL_ARGB8),
            ("COREML_PIXEL_GRAY8", ffi::COREML_PIXEL_GRAY8),
            ("COREML_PIXEL_GRAY_F16", ffi::COREML_PIXEL_GRAY_F16),
            ("COREML_DTYPE_F32", ffi::COREML_DTYPE_F32),
            ("COREML_DTYPE_F16", ffi::COREML_DTYPE_F16),
            ("COREML_DTYPE_F64", ffi::COREML_DTYPE_F64),
            ("COREML_DTYPE_I32", ffi::COREML_DTYPE_I32),
            ("COREML_DTYPE_I8", ffi::COREML_DTYPE_I8),
            ("COREML_DTYPE_I64", ffi::COREML_DTYPE_I64),
            ("COREML_COMPUTE_ALL", ffi::COREML_COMPUTE_ALL),
            ("COREML_COMPUTE_CPU_ONLY", ffi::COREML_COMPUTE_CPU_ONLY),
            ("COREML_COMPUTE_CPU_AND_GPU", ffi::COREML_COMPUTE_CPU_AND_GPU),
            ("COREML_COMPUTE_CPU_AND_NE", ffi::COREML_COMPUTE_CPU_AND_NE),
        ]
        .into_iter()
        .collect();
        let header_names: BTreeSet<&str> = header.keys().map(String::as_str).collect();
        let our_names: BTreeSet<&str> = ours.keys().copied().collect();
        assert_eq!(our_names, header_names, "constants mirrored vs defined in the header");
        for (name, v) in &ours {
            assert_eq!(i64::from(*v), header[*name], "{name}");
        }
        // The Status enum covers exactly the header's status codes.
        for (name, v) in &header {
            if name.starts_with("COREML_OK") || name.starts_with("COREML_ERR_") {
                let s = Status::from_code(*v as i32);
                assert_eq!(s.c_name(), name, "Status for code {v}");
                assert_eq!(s.code(), *v as i32);
            }
        }
        assert_eq!(
            (0..=14).collect::<BTreeSet<i32>>().len(),
            header
                .keys()
                .filter(|n| n.starts_with("COREML_OK") || n.starts_with("COREML_ERR_"))
                .count()
        );
        // Compute units agree with the seam's own codes.
        for (u, code) in [
            (ComputeUnits::All, ffi::COREML_COMPUTE_ALL),
            (ComputeUnits::CpuOnly, ffi::COREML_COMPUTE_CPU_ONLY),
            (ComputeUnits::CpuAndGpu, ffi::COREML_COMPUTE_CPU_AND_GPU),
            (ComputeUnits::CpuAndNe, ffi::COREML_COMPUTE_CPU_AND_NE),
        ] {
            assert_eq!(u.ffi_code(), code, "{u}");
        }
    }

    #[test]
    fn struct_layouts_match_the_c_compiler() {
        use std::mem::{offset_of, size_of};
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layout.c");
        let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("coreml-bridge/include");
        std::fs::write(
            &src,
            r#"#include <stdio.h>
#include <stddef.h>
#include "coreml_bridge.h"
#define F(T, f) printf(#T "." #f " %zu\n", offsetof(T, f))
int main(void) {
  printf("CoremlTensor %zu\n", sizeof(CoremlTensor));
  F(CoremlTensor, name); F(CoremlTensor, dtype); F(CoremlTensor, rank); F(CoremlTensor, shape);
  F(CoremlTensor, strides); F(CoremlTensor, data); F(CoremlTensor, byte_len);
  printf("CoremlOutputTensor %zu\n", sizeof(CoremlOutputTensor));
  F(CoremlOutputTensor, name); F(CoremlOutputTensor, dtype); F(CoremlOutputTensor, rank);
  F(CoremlOutputTensor, shape); F(CoremlOutputTensor, data); F(CoremlOutputTensor, byte_len);
  printf("CoremlOutputs %zu\n", sizeof(CoremlOutputs));
  F(CoremlOutputs, count); F(CoremlOutputs, tensors); F(CoremlOutputs, reserved);
  printf("CoremlBatchMember %zu\n", sizeof(CoremlBatchMember));
  F(CoremlBatchMember, inputs); F(CoremlBatchMember, n_inputs);
  printf("CoremlOutputBuffer %zu\n", sizeof(CoremlOutputBuffer));
  F(CoremlOutputBuffer, name); F(CoremlOutputBuffer, dtype); F(CoremlOutputBuffer, rank); F(CoremlOutputBuffer, shape);
  F(CoremlOutputBuffer, strides); F(CoremlOutputBuffer, data); F(CoremlOutputBuffer, byte_len);
  printf("CoremlFeature %zu\n", sizeof(CoremlFeature));
  F(CoremlFeature, name); F(CoremlFeature, kind); F(CoremlFeature, tensor); F(CoremlFeature, int64_value);
  F(CoremlFeature, double_value); F(CoremlFeature, string_value);
  printf("CoremlOutputFeature %zu\n", sizeof(CoremlOutputFeature));
  F(CoremlOutputFeature, name); F(CoremlOutputFeature, kind); F(CoremlOutputFeature, tensor);
  F(CoremlOutputFeature, int64_value); F(CoremlOutputFeature, double_value); F(CoremlOutputFeature, string_value);
  F(CoremlOutputFeature, dict_count); F(CoremlOutputFeature, dict_key_kind); F(CoremlOutputFeature, dict_string_keys);
  F(CoremlOutputFeature, dict_int64_keys); F(CoremlOutputFeature, dict_values);
  printf("CoremlFeatureOutputs %zu\n", sizeof(CoremlFeatureOutputs));
  F(CoremlFeatureOutputs, count); F(CoremlFeatureOutputs, features); F(CoremlFeatureOutputs, reserved);
  printf("CoremlStatus %zu\n", sizeof(CoremlStatus));
  return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.path().join("layout");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        let status = Command::new(&cc)
            .arg("-std=c11")
            .arg("-Wall")
            .arg("-Werror")
            .arg("-I")
            .arg(&include)
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status()
            .unwrap_or_else(|e| panic!("running the C compiler `{cc}` (set CC to override): {e}"));
        assert!(status.success(), "compiling {} with {cc} failed", src.display());
        let out = Command::new(&exe).output().unwrap();
        assert!(out.status.success());
        let c: BTreeMap<String, usize> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect();
        use ffi::{
            CoremlBatchMember as B, CoremlFeature as Fe, CoremlFeatureOutputs as Fos, CoremlOutputBuffer as Ob,
            CoremlOutputFeature as Of, CoremlOutputTensor as O, CoremlOutputs as Os, CoremlTensor as T,
        };
        let rust: BTreeMap<String, usize> = [
            ("CoremlTensor", size_of::<T>()),
            ("CoremlTensor.name", offset_of!(T, name)),
            ("CoremlTensor.dtype", offset_of!(T, dtype)),
            ("CoremlTensor.rank", offset_of!(T, rank)),
            ("CoremlTensor.shape", offset_of!(T, shape)),
            ("CoremlTensor.strides", offset_of!(T, strides)),
            ("CoremlTensor.data", offset_of!(T, data)),
            ("CoremlTensor.byte_len", offset_of!(T, byte_len)),
            ("CoremlOutputTensor", size_of::<O>()),
            ("CoremlOutputTensor.name", offset_of!(O, name)),
            ("CoremlOutputTensor.dtype", offset_of!(O, dtype)),
            ("CoremlOutputTensor.rank", offset_of!(O, rank)),
            ("CoremlOutputTensor.shape", offset_of!(O, shape)),
            ("CoremlOutputTensor.data", offset_of!(O, data)),
            ("CoremlOutputTensor.byte_len", offset_of!(O, byte_len)),
            ("CoremlOutputs", size_of::<Os>()),
            ("CoremlOutputs.count", offset_of!(Os, count)),
            ("CoremlOutputs.tensors", offset_of!(Os, tensors)),
            ("CoremlOutputs.reserved", offset_of!(Os, reserved)),
            ("CoremlFeature", size_of::<Fe>()),
            ("CoremlFeature.name", offset_of!(Fe, name)),
            ("CoremlFeature.kind", offset_of!(Fe, kind)),
            ("CoremlFeature.tensor", offset_of!(Fe, tensor)),
            ("CoremlFeature.int64_value", offset_of!(Fe, int64_value)),
            ("CoremlFeature.double_value", offset_of!(Fe, double_value)),
            ("CoremlFeature.string_value", offset_of!(Fe, string_value)),
            ("CoremlOutputFeature", size_of::<Of>()),
            ("CoremlOutputFeature.name", offset_of!(Of, name)),
            ("CoremlOutputFeature.kind", offset_of!(Of, kind)),
            ("CoremlOutputFeature.tensor", offset_of!(Of, tensor)),
            ("CoremlOutputFeature.int64_value", offset_of!(Of, int64_value)),
            ("CoremlOutputFeature.double_value", offset_of!(Of, double_value)),
            ("CoremlOutputFeature.string_value", offset_of!(Of, string_value)),
            ("CoremlOutputFeature.dict_count", offset_of!(Of, dict_count)),
            ("CoremlOutputFeature.dict_key_kind", offset_of!(Of, dict_key_kind)),
            ("CoremlOutputFeature.dict_string_keys", offset_of!(Of, dict_string_keys)),
            ("CoremlOutputFeature.dict_int64_keys", offset_of!(Of, dict_int64_keys)),
            ("CoremlOutputFeature.dict_values", offset_of!(Of, dict_values)),
            ("CoremlFeatureOutputs", size_of::<Fos>()),
            ("CoremlFeatureOutputs.count", offset_of!(Fos, count)),
            ("CoremlFeatureOutputs.features", offset_of!(Fos, features)),
            ("CoremlFeatureOutputs.reserved", offset_of!(Fos, reserved)),
            ("CoremlBatchMember", size_of::<B>()),
            ("CoremlBatchMember.inputs", offset_of!(B, inputs)),
            ("CoremlBatchMember.n_inputs", offset_of!(B, n_inputs)),
            ("CoremlOutputBuffer", size_of::<Ob>()),
            ("CoremlOutputBuffer.name", offset_of!(Ob, name)),
            ("CoremlOutputBuffer.dtype", offset_of!(Ob, dtype)),
            ("CoremlOutputBuffer.rank", offset_of!(Ob, rank)),
            ("CoremlOutputBuffer.shape", offset_of!(Ob, shape)),
            ("CoremlOutputBuffer.strides", offset_of!(Ob, strides)),
            ("CoremlOutputBuffer.data", offset_of!(Ob, data)),
            ("CoremlOutputBuffer.byte_len", offset_of!(Ob, byte_len)),
            // The enums cross as int32_t; the C enum type itself must fit.
            ("CoremlStatus", size_of::<i32>()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(rust, c, "Rust layouts (left) vs the C compiler's (right)");
    }

    #[test]
    fn every_status_maps_to_its_error_kind() {
        let t = Duration::from_millis(250);
        let kind = |s: Status, op: Operation| status_to_error(s, op, "m.mlmodelc", "why", t).kind();
        assert_eq!(
            kind(Status::InvalidArgument, Operation::Compile),
            ErrorKind::InvalidArtifact
        );
        assert_eq!(
            kind(Status::InvalidArgument, Operation::Load),
            ErrorKind::InvalidArtifact
        );
        assert_eq!(kind(Status::InvalidArgument, Operation::Predict), ErrorKind::Internal);
        assert_eq!(kind(Status::Compile, Operation::Compile), ErrorKind::Compile);
        assert_eq!(kind(Status::Load, Operation::Load), ErrorKind::Load);
        assert_eq!(kind(Status::Load, Operation::ComputePlan), ErrorKind::Load);
        assert_eq!(
            kind(Status::SchemaMismatch, Operation::Predict),
            ErrorKind::SchemaMismatch
        );
        assert_eq!(kind(Status::Predict, Operation::Predict), ErrorKind::Internal);
        assert_eq!(kind(Status::Timeout, Operation::Predict), ErrorKind::Timeout);
        assert_eq!(kind(Status::Poisoned, Operation::Predict), ErrorKind::Load);
        assert_eq!(kind(Status::Unavailable, Operation::Load), ErrorKind::Unavailable);
        assert_eq!(kind(Status::OutOfMemory, Operation::Predict), ErrorKind::MemoryPressure);
        assert_eq!(kind(Status::Internal, Operation::Predict), ErrorKind::Internal);
        assert_eq!(kind(Status::InvalidHandle, Operation::Predict), ErrorKind::Internal);
        assert_eq!(kind(Status::Unsupported, Operation::Predict), ErrorKind::Unsupported);
        assert_eq!(kind(Status::StateInUse, Operation::Predict), ErrorKind::Unavailable);
        assert_eq!(
            kind(Status::StateMismatch, Operation::Predict),
            ErrorKind::SchemaMismatch
        );
        assert_eq!(kind(Status::Unknown(99), Operation::Predict), ErrorKind::Internal);
        assert_eq!(kind(Status::Ok, Operation::Predict), ErrorKind::Internal);

        let e = status_to_error(Status::Timeout, Operation::Predict, "m.mlmodelc", "late", t);
        assert_eq!(e.to_string(), "prediction of m.mlmodelc timed out after 250ms");
        let e = status_to_error(Status::Unknown(99), Operation::Load, "m", "?", t).to_string();
        assert!(e.contains("status 99") && e.contains("expected one of 0..=14"), "{e}");
        let b = BridgeError::new(Status::Poisoned, Operation::Predict, "m", "poisoned", t);
        assert!(b.is_poisoned());
        assert!(b.to_string().contains("COREML_ERR_POISONED"), "{b}");
        assert!(b.to_string().contains("load it again"), "{b}");
        for code in (0..=14).collect::<BTreeSet<i32>>() {
            assert_eq!(Status::from_code(code).code(), code);
            assert_ne!(Status::from_code(code), Status::Unknown(code));
        }
        assert_eq!(Status::from_code(15), Status::Unknown(15));
    }

    #[test]
    fn a_bridge_of_another_abi_version_is_refused_naming_both_versions() {
        assert_eq!(ffi::COREML_BRIDGE_ABI_VERSION, 2);
        assert!(check_abi_version(2).is_ok());
        for got in [0, 1, 3] {
            let e = check_abi_version(got).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Internal);
            let text = e.to_string();
            assert!(
                text.contains("this crate speaks version 2") && text.contains(&format!("speaks version {got}")),
                "{text}"
            );
            assert!(text.contains("rebuild the Swift library"), "{text}");
        }
    }

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(timeout_ms(Duration::ZERO), 1);
        assert_eq!(timeout_ms(Duration::from_nanos(1)), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(timeout_ms(Duration::from_millis(250)), 250);
        assert_eq!(timeout_ms(Duration::MAX), i64::MAX);
    }

    #[test]
    fn dtype_codes_round_trip() {
        for d in DType::ALL {
            match dtype_code(d) {
                Some(code) => assert_eq!(dtype_from_code(code), Some(d)),
                None => assert_eq!(d, DType::U8),
            }
        }
        assert_eq!(dtype_from_code(0), None);
        assert_eq!(dtype_from_code(7), None);
    }

    #[test]
    fn inputs_the_bridge_would_refuse_are_refused_here_with_expected_and_got() {
        let one = |t: Tensor| TensorMap::from([("x".to_string(), t)]);
        let err = |m: TensorMap| marshal_inputs(&m, "m").err().unwrap();

        let e = err(one(Tensor::from_vec(vec![2], vec![1u8, 2]).unwrap()));
        assert_eq!(e.kind(), ErrorKind::SchemaMismatch);
        assert!(e.to_string().contains("got u8"), "{e}");
        let e = err(one(Tensor::from_vec(vec![1], vec![1i64]).unwrap()));
        assert!(e.to_string().contains("got i64"), "{e}");
        let e = err(one(Tensor::from_vec(vec![], vec![1.0f32]).unwrap()));
        assert!(e.to_string().contains("expected 1..=16 dimensions, got 0"), "{e}");
        let e = err(one(Tensor::from_vec(vec![1; 17], vec![1.0f32]).unwrap()));
        assert!(e.to_string().contains("got 17"), "{e}");
        let e = err(one(Tensor::zeros(DType::F32, vec![2, 0]).unwrap()));
        assert!(e.to_string().contains("got [2, 0]"), "{e}");
        let e = err(TensorMap::new());
        assert!(e.to_string().contains("expected 1..=4096, got 0"), "{e}");
        let e = err(TensorMap::from([(
            "a\0b".to_string(),
            Tensor::from_vec(vec![1], vec![1.0f32]).unwrap(),
        )]));
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[test]
    fn descriptors_point_at_the_callers_bytes_row_major() {
        let a = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = Tensor::from_vec(vec![4], vec![1i8, 2, 3, 4]).unwrap();
        let m = TensorMap::from([("a".to_string(), a), ("b".to_string(), b)]);
        let mi = marshal_inputs(&m, "m").unwrap();
        assert_eq!(mi.descriptors.len(), 2);
        for (d, (name, t)) in mi.descriptors.iter().zip(&m) {
            // SAFETY: the descriptors point into `mi` and `m`, both alive.
            unsafe {
                assert_eq!(CStr::from_ptr(d.name).to_str().unwrap(), name);
                let shape = std::slice::from_raw_parts(d.shape, d.rank as usize);
                assert_eq!(shape, t.shape().iter().map(|&x| x as i64).collect::<Vec<_>>());
            }
            assert_eq!(d.dtype, dtype_code(t.dtype()).unwrap());
            assert!(d.strides.is_null());
            assert_eq!(d.data, t.as_bytes().as_ptr().cast());
            assert_eq!(d.byte_len, t.as_bytes().len() as u64);
        }
    }

    fn outputs_of(tensors: &[ffi::CoremlOutputTensor]) -> ffi::CoremlOutputs {
        ffi::CoremlOutputs {
            count: tensors.len() as i32,
            tensors: tensors.as_ptr(),
            reserved: ptr::null_mut(),
        }
    }

    #[test]
    fn outputs_are_copied_and_every_broken_promise_is_an_internal_error() {
        let name = CString::new("y").unwrap();
        let shape = [2i64, 2];
        let data = [1.0f32, 2.0, 3.0, 4.0];
        let good = ffi::CoremlOutputTensor {
            name: name.as_ptr(),
            dtype: ffi::COREML_DTYPE_F32,
            rank: 2,
            shape: shape.as_ptr(),
            data: data.as_ptr().cast(),
            byte_len: 16,
        };
        let read = |t: &[ffi::CoremlOutputTensor]| {
            let o = outputs_of(t);
            // SAFETY: every pointer points into live locals of this test.
            unsafe { read_outputs(&o, "m") }
        };
        let m = read(&[good]).unwrap();
        assert_eq!(m["y"].shape(), &[2, 2]);
        assert_eq!(m["y"].to_vec::<f32>().unwrap(), data);

        let broken = [
            (
                ffi::CoremlOutputTensor { byte_len: 12, ..good },
                "expected byte_len 16, got 12",
            ),
            (ffi::CoremlOutputTensor { dtype: 9, ..good }, "got 9"),
            (
                ffi::CoremlOutputTensor { rank: 0, ..good },
                "expected rank 1..=16, got 0",
            ),
            (
                ffi::CoremlOutputTensor {
                    name: ptr::null(),
                    ..good
                },
                "NULL name",
            ),
            (
                ffi::CoremlOutputTensor {
                    shape: ptr::null(),
                    ..good
                },
                "NULL shape",
            ),
            (
                ffi::CoremlOutputTensor {
                    data: ptr::null(),
                    ..good
                },
                "NULL data",
            ),
        ];
        for (t, want) in broken {
            let e = read(&[t]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Internal);
            assert!(e.to_string().contains(want), "{e} (wanted `{want}`)");
        }
        let e = read(&[good, good]).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        // SAFETY: NULL is allowed by read_outputs' contract.
        let e = unsafe { read_outputs(ptr::null(), "m") }.unwrap_err();
        assert!(e.to_string().contains("got NULL"), "{e}");
    }

    #[test]
    fn schema_json_becomes_an_io_schema() {
        let json = r#"{
          "inputs": [
            {"name": "ids", "feature_type": "multiArray", "optional": false, "dtype": "i32", "dtype_code": 4,
             "shape": [1, 8], "shape_constraint": {"type": "range",
               "ranges": [{"lower": 1, "upper": 4}, {"lower": 1, "upper": null}]}},
            {"name": "image", "feature_type": "multiArray", "optional": false, "dtype": "f16", "dtype_code": 2,
             "shape": [1, 3, 32, 32], "shape_constraint": {"type": "enumerated",
               "enumerated_shapes": [[1, 3, 32, 32], [1, 3, 64, 64]]}},
            {"name": "label", "feature_type": "string", "optional": true, "dtype": null, "dtype_code": null,
             "shape": [], "shape_constraint": {"type": "none"}}
          ],
          "outputs": [
            {"name": "score", "feature_type": "double", "optional": false, "dtype": "f64", "dtype_code": 3,
             "shape": [1], "shape_constraint": {"type": "unspecified"}}
          ],
          "metadata": {"author": "a", "description": "d", "version": "1", "license": "MIT",
                       "user_defined": {"k": "v"}}
        }"#;
        let s: BridgeSchema = serde_json::from_str(json).unwrap();
        assert_eq!(s.metadata.user_defined["k"], "v");
        let io = s.to_io_schema();
        assert_eq!(io.inputs.len(), 2, "the string input has no tensor spec");
        let ids = io.input("ids").unwrap();
        assert_eq!(ids.dtype, DType::I32);
        assert_eq!(ids.constraint, ShapeConstraint::Range(vec![(1, Some(4)), (1, None)]));
        assert!(ids.batch_capable);
        assert!(ids.accepts_shape(&[3, 100]));
        let image = io.input("image").unwrap();
        assert_eq!(image.dtype, DType::F16);
        assert!(!image.batch_capable, "every enumerated shape has batch 1");
        assert_eq!(io.outputs[0].dtype, DType::F64);
        assert_eq!(io.outputs[0].constraint, ShapeConstraint::Fixed);
        assert_eq!(
            s.describe_inputs(),
            "[ids: i32 [1..=4, 1..], image: f16 one of [[1, 3, 32, 32], [1, 3, 64, 64]], label: string any shape \
             (optional)]"
        );
    }

    #[test]
    fn compute_plan_json_gives_the_neural_engine_share_and_units() {
        let json = r#"{"model_type": "program", "operations": [
            {"function": "main", "index": 0, "operator": "conv", "outputs": ["a"],
             "preferred_device": "neural_engine", "supported_devices": ["cpu", "neural_engine"], "estimated_cost": 0.7},
            {"function": "main", "index": 1, "operator": "softmax", "outputs": ["b"],
             "preferred_device": "cpu", "supported_devices": ["cpu"], "estimated_cost": null},
            {"function": "main", "index": 2, "operator": "relu", "outputs": ["c"],
             "preferred_device": "neural_engine", "supported_devices": ["neural_engine"], "estimated_cost": 0.1}
          ], "device_counts": {"cpu": 1, "gpu": 0, "neural_engine": 2, "unknown": 0}}"#;
        let p: ComputePlan = serde_json::from_str(json).unwrap();
        assert_eq!(p.operations.len(), 3);
        assert_eq!(p.neural_engine_pct(), Some(67));
        assert_eq!(p.units_in_use(), Some(ComputeUnits::CpuAndNe));
        let mut q = p.clone();
        q.device_counts = DeviceCounts {
            cpu: 3,
            ..DeviceCounts::default()
        };
        assert_eq!(
            (q.neural_engine_pct(), q.units_in_use()),
            (Some(0), Some(ComputeUnits::CpuOnly))
        );
        q.device_counts.gpu = 1;
        q.device_counts.neural_engine = 1;
        assert_eq!(q.units_in_use(), Some(ComputeUnits::All));
        q.device_counts = DeviceCounts::default();
        assert_eq!((q.neural_engine_pct(), q.units_in_use()), (None, None));
    }

    #[test]
    fn runtime_info_json_parses() {
        let json = r#"{"bridge_abi_version": 1, "platform": "Linux", "os_version": "Linux 6.1", "os_build": null,
          "chip": "AMD EPYC", "coreml_available": false, "coreml_version": null, "neural_engine_present": null,
          "neural_engine_cores": null, "compute_plan_available": false, "test_runtime": true,
          "reason": "Core ML is not available on this platform (Linux)"}"#;
        let info: RuntimeInfo = serde_json::from_str(json).unwrap();
        assert!(!info.coreml_available && info.test_runtime);
        assert_eq!(
            info.reason.as_deref(),
            Some("Core ML is not available on this platform (Linux)")
        );
    }

    #[cfg(not(coreml_bridge))]
    #[test]
    fn without_the_bridge_every_wrapper_answers_unavailable() {
        assert!(!is_linked());
        assert_eq!(abi_version(), 0);
        let check_unavailable = |e: BridgeError| {
            assert_eq!(e.status(), Status::Unavailable);
            assert_eq!(e.error().kind(), ErrorKind::Unavailable);
            assert!(e.to_string().contains("no Core ML bridge"), "{e}");
        };
        check_unavailable(runtime_info().unwrap_err());
        check_unavailable(
            compile_model(Path::new("a.mlpackage"), Path::new("/tmp"), Duration::from_secs(1)).unwrap_err(),
        );
        check_unavailable(
            BridgeModel::load(Path::new("a.mlmodelc"), ComputeUnits::All, Duration::from_secs(1)).unwrap_err(),
        );
        check_unavailable(
            compute_plan(Path::new("a.mlmodelc"), ComputeUnits::All, Duration::from_secs(1)).unwrap_err(),
        );
        assert_eq!(check_abi().unwrap_err().kind(), ErrorKind::Unavailable);
    }
}
