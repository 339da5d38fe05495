//! # apple-silicon
//!
//! Run Core ML models from Rust on the Apple Neural Engine, GPU or CPU —
//! safely — behind one trait, [`InferenceEngine`], with a CPU engine that runs
//! the very same `.mlpackage` files on any host.
//!
//! Modules, one job each:
//!
//! | module | job |
//! |---|---|
//! | [`inference`] | the seam: engines, prepared models, artifacts, options, reports |
//! | [`tensor`] | host tensors, dtypes and `.npy` I/O |
//! | [`error`] | the failure taxonomy |
//! | [`mlpackage`] | reading `.mlpackage` directories and their schema |
//! | [`milblob`] | reading MILBlob `weight.bin` files |
//! | [`digest`] | content hashes of artifacts |
//! | [`golden`] | model directories with golden inputs and expected outputs |
//! | [`candle_backend`] | `CandleEngine`: ML Programs and BERT safetensors on any CPU |
//! | [`mil`] | the ML Program interpreter behind `CandleEngine` |
//! | [`parity`] | L∞ / RMSE / cosine between outputs, budgets per precision |
//! | [`cache`] | the atomic compiled-model cache shared by the engines |

pub mod cache;
pub mod candle_backend;
pub mod digest;
pub mod error;
pub mod golden;
pub mod inference;
pub mod mil;
pub mod milblob;
pub mod mlpackage;
pub mod parity;
pub mod tensor;

pub use cache::{CacheConfig, CacheEntry, ModelCache};
pub use candle_backend::CandleEngine;
pub use error::{Error, ErrorKind, Result};
pub use inference::{
    CacheKey, CapabilityReport, CompiledMeta, ComputeUnits, InferenceEngine, IoSchema, ModelArtifact, ModelFmt,
    PrepareOptions, PreparedModel, ShapeConstraint, TensorSpec,
};
pub use tensor::{DType, Tensor, TensorMap};
