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
