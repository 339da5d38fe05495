//! Bridge statuses and the operations they come from, and how each becomes the crate's [`Error`].

use super::*;

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
    pub(super) status: Status,
    pub(super) message: String,
    pub(super) error: Error,
}

impl BridgeError {
    /// Builds the error for a failed call.
    pub fn new(status: Status, op: Operation, subject: &str, message: impl Into<String>, timeout: Duration) -> Self {
        let message = message.into();
        let error = status_to_error(status, op, subject, &message, timeout);
        BridgeError { status, message, error }
    }

    pub(super) fn refused(status: Status, error: Error) -> Self {
        BridgeError {
            status,
            message: error.to_string(),
            error,
        }
    }

    pub(super) fn unavailable(reason: &str) -> Self {
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
