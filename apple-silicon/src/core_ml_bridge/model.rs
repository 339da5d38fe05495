//! [`BridgeModel`] and [`BridgeState`]: a loaded model handle and a state it made, each freed on drop.

use super::*;

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
    pub(super) handle: usize,
    pub(super) path: PathBuf,
    pub(super) units: ComputeUnits,
    pub(super) schema: BridgeSchema,
    /// Set when a prediction timed out or found the handle poisoned. The
    /// `Cell` is also what makes the type `!Sync`.
    pub(super) poisoned: Cell<bool>,
    /// C strings of feature names for `predict_into` (made once each).
    pub(super) names: into::NameCache,
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

    pub(super) fn raw(&self) -> *mut c_void {
        // The handle is an id that only round-trips through the bridge.
        ptr::without_provenance_mut(self.handle)
    }

    pub(super) fn subject(&self) -> String {
        self.path.display().to_string()
    }

    pub(super) fn fetch_schema(&self) -> std::result::Result<BridgeSchema, BridgeError> {
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

    pub(super) fn predict_inner(
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
    pub(super) handle: usize,
    /// The id of the model handle that made it.
    pub(super) model: usize,
    /// Set when a prediction with it timed out or found it poisoned.
    pub(super) poisoned: Cell<bool>,
}

impl BridgeState {
    pub(super) fn raw(&self) -> *mut c_void {
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
