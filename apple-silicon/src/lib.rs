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
//! | [`feature`] | feature values (images, labels, dictionaries, …) and their conversion to the program's tensors |
//! | [`mlpackage`] | reading `.mlpackage` directories and their schema |
//! | [`milblob`] | reading MILBlob `weight.bin` files |
//! | [`digest`] | content hashes of artifacts |
//! | [`golden`] | model directories with golden inputs and expected outputs |
//! | [`candle_backend`] | `CandleEngine`: ML Programs and BERT safetensors on any CPU |
//! | [`mil`] | the ML Program interpreter behind `CandleEngine` |
//! | [`parity`] | L∞ / RMSE / cosine between outputs, budgets per precision |
//! | [`cache`] | the atomic compiled-model cache shared by the engines |
//! | [`telemetry`] | counters, latency histograms, failure taxonomy, memory high-water, JSON snapshots |
//! | [`deadline`] | running work under deadlines on a bounded pool; the async form |
//! | [`pool`] | N prepared instances of one model behind a bounded, deadline-aware queue |
//! | [`breaker`] | the circuit breaker and [`ResilientEngine`] (primary with a fallback) |
//! | [`gates`] | Gates A–D as functions returning typed verdicts |
//! | [`testing`] | test doubles: an echo engine and a fault-injecting engine |
//! | [`core_ml_bridge`] | the C ABI of the Swift `coreml-bridge` and its safe wrappers |
//! | [`core_ml_backend`] | `CoreMlEngine`: compile → store → load → predict with Core ML |
//! | [`diff`] | comparing two packages: schema, metadata, ops, weight digests |
//! | [`inference_backend`] | the engine module the `coreml` feature selects (the plan's switch) |

pub mod breaker;
pub mod cache;
pub mod candle_backend;
pub mod core_ml_backend;
pub mod core_ml_bridge;
pub mod core_ml_images;
pub mod deadline;
pub mod diff;
pub mod digest;
pub mod error;
pub mod feature;
pub mod gates;
pub mod golden;
pub mod inference;
pub mod mil;
pub mod milblob;
pub mod mlpackage;
pub mod parity;
pub mod pool;
pub mod telemetry;
pub mod tensor;
pub mod testing;

/// The engine module the build selects, as the plan's `lib.rs` shows:
/// [`core_ml_backend`] with the `coreml` feature, [`candle_backend`] without.
/// Both name their engine `Engine`, so `inference_backend::Engine::new()`
/// compiles either way. (On Linux `coreml` is a no-op build flag: the
/// selected `CoreMlEngine` answers `Unavailable` with the reason.)
#[cfg(not(feature = "coreml"))]
pub use crate::candle_backend as inference_backend;
/// The engine module the build selects, as the plan's `lib.rs` shows:
/// [`core_ml_backend`] with the `coreml` feature, [`candle_backend`] without.
#[cfg(feature = "coreml")]
pub use crate::core_ml_backend as inference_backend;

pub use breaker::{BreakerConfig, CircuitBreaker, ReenablePolicy, ResilientEngine};
pub use cache::{CacheConfig, CacheEntry, ModelCache};
pub use candle_backend::CandleEngine;
pub use core_ml_backend::{CompiledStore, CoreMlEngine, CoreMlModel, TempDirCompiledStore};
pub use deadline::{
    infer_async, infer_batch_async, infer_with_state_async, prepare_async, run_with_deadline, Deadline, DeadlineRunner,
    Reply,
};
pub use error::{Error, ErrorKind, Result};
pub use feature::{
    ClassLabels, ClassifierSpec, ColorLayout, Dictionary, FeatureKind, FeatureMap, FeatureValue, Image, ImageSizes,
    ImageSpec, PixelFormat,
};
pub use inference::{
    CacheKey, CapabilityReport, CompiledMeta, ComputeUnits, FunctionSet, InferenceEngine, IoSchema, ModelArtifact,
    ModelFmt, ModelState, PrepareOptions, PreparedModel, ShapeConstraint, TensorSpec,
};
pub use pool::{PoolConfig, PooledEngine, PooledModel};
pub use telemetry::{TelemetryRegistry, TelemetrySnapshot};
pub use tensor::{DType, Tensor, TensorMap};

/// The README's code blocks, compiled as doc tests so they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
