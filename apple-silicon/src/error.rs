//! The failure taxonomy: one error type for every engine, cache and bridge call.
//!
//! Each variant is one kind of failure a caller may want to react to
//! differently (retry, fall back, fix the input, give up). Messages say what was
//! expected and what came, so a person can act on them.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way an `apple-silicon` operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Turning an authoring package into a runnable form failed (Core ML
    /// compile, or the Candle engine's execution plan).
    #[error("compile failed for {model}: {message}")]
    Compile { model: String, message: String },

    /// A compiled model could not be loaded into memory.
    #[error("load failed for {model}: {message}")]
    Load { model: String, message: String },

    /// The inputs do not match the model's I/O schema (name, shape or dtype).
    #[error("schema mismatch for {what}: expected {expected}, got {got}")]
    SchemaMismatch {
        what: String,
        expected: String,
        got: String,
    },

    /// The call did not finish within its deadline. The work may still be
    /// running in the background; its result will be discarded.
    #[error("{operation} timed out after {after:?}")]
    Timeout { operation: String, after: Duration },

    /// Memory use passed a configured limit, or an allocation failed.
    #[error("memory pressure: {message}")]
    MemoryPressure { message: String },

    /// The engine cannot run on this host (for example Core ML on Linux).
    #[error("{engine} is unavailable: {reason}")]
    Unavailable { engine: String, reason: String },

    /// The request is understood but not implemented (a model format, an
    /// ML Program op, a dtype).
    #[error("unsupported: {what}")]
    Unsupported { what: String },

    /// A model file or directory is malformed, truncated or hostile.
    #[error("invalid artifact {path}: {reason}")]
    InvalidArtifact { path: PathBuf, reason: String },

    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A bug or a broken invariant inside this crate or the bridge.
    #[error("internal error: {message}")]
    Internal { message: String },
}

/// The variant of an [`Error`] without its payload: what telemetry counts and
/// what the circuit breaker reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Compile,
    Load,
    SchemaMismatch,
    Timeout,
    MemoryPressure,
    Unavailable,
    Unsupported,
    InvalidArtifact,
    Io,
    Internal,
}

impl Error {
    /// Which kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Compile { .. } => ErrorKind::Compile,
            Error::Load { .. } => ErrorKind::Load,
            Error::SchemaMismatch { .. } => ErrorKind::SchemaMismatch,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::MemoryPressure { .. } => ErrorKind::MemoryPressure,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::InvalidArtifact { .. } => ErrorKind::InvalidArtifact,
            Error::Io { .. } => ErrorKind::Io,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// Shorthand for [`Error::InvalidArtifact`].
    pub fn invalid_artifact(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidArtifact {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::SchemaMismatch`].
    pub fn schema_mismatch(what: impl Into<String>, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::SchemaMismatch {
            what: what.into(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    /// The [`Error::SchemaMismatch`] for member `index` of a batch whose
    /// inputs failed with `cause`.
    pub fn batch_member(index: usize, cause: Error) -> Self {
        Error::schema_mismatch(
            format!("batch member {index}"),
            "inputs matching the model",
            cause.to_string(),
        )
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported { what: what.into() }
    }

    /// Shorthand for [`Error::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal {
            message: message.into(),
        }
    }

    /// Wraps an I/O error with what was being done and on which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_expected_and_got() {
        let e = Error::schema_mismatch("input `x` shape", "[1, 64]", "[1, 63]");
        assert_eq!(
            e.to_string(),
            "schema mismatch for input `x` shape: expected [1, 64], got [1, 63]"
        );
        assert_eq!(e.kind(), ErrorKind::SchemaMismatch);
    }

    #[test]
    fn io_errors_keep_their_source() {
        let e = Error::io(
            "reading /nope",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string(), "reading /nope: gone");
    }
}
