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

/// The raw C ABI, mirroring `coreml-bridge/include/coreml_bridge.h` by hand.
///
/// Keep it in step with the header. The unit tests of this module fail when
/// a function, parameter type, constant or struct layout disagrees. Calling
/// these functions directly is `unsafe`: the caller must follow the header's
/// ownership rules. Prefer the safe wrappers of the parent module.
pub mod ffi;

mod guards;
mod into;
mod marshal;
mod model;
mod plan;
mod runtime;
mod schema;
mod status;

use guards::*;
pub use into::{BufferCounters, STACK_TENSORS};
pub use marshal::*;
pub use model::*;
pub use plan::*;
pub use runtime::*;
pub use schema::*;
pub use status::*;

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

#[cfg(test)]
mod tests;
