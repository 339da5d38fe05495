//! The circuit breaker, and [`ResilientEngine`]: Core ML with a Candle
//! fallback that keeps answering when Core ML fails.
//!
//! ## The breaker's rules (the plan's, §4 and §8c)
//!
//! A [`CircuitBreaker`] watches the primary engine's calls in a sliding
//! window (default: the last 200). Once the window holds at least
//! `min_calls` (default 10) calls it *trips* — stops sending calls to the
//! primary — when:
//!
//! 1. the success rate in the window falls under `min_success_rate` (95%);
//! 2. the p99 latency of the window's successful calls is over the SLA at an
//!    evaluation (one every `p99_every` calls, default 10, once the window
//!    holds `p99_min_samples` successes, default 100, so that one cold start
//!    is not a p99) and has been at `sla_violations_to_trip` (3) evaluations
//!    since the breaker last closed;
//! 3. the memory high-water mark (the highest value the memory probe gave
//!    since the breaker last closed; default probe: process RSS) passes
//!    `memory_limit_bytes`, when a limit is set.
//!
//! ## Re-enabling
//!
//! - [`ReenablePolicy::Manual`] (the default, as the plan says): an open
//!   breaker stays open until [`CircuitBreaker::reset`] (or
//!   [`ResilientEngine::reenable_primary`]) is called. The environment
//!   variable `COREML_FORCE_ENABLE=1` forces the primary on: read when a
//!   breaker is built and again on each reset, it keeps the breaker closed —
//!   trips are logged and counted as *suppressed* but calls keep going to
//!   the primary (a failed call is still answered by the fallback).
//! - [`ReenablePolicy::HalfOpen`]: after a backoff the next call is sent to
//!   the primary as a probe (one probe at a time; other calls keep going to
//!   the fallback). `probes_to_close` successful probes in a row close the
//!   breaker; a failed probe (or one slower than the SLA, or with memory
//!   over the limit) opens it again with the backoff doubled, up to
//!   `max_backoff`.
//!
//! Every transition is logged with `tracing` (target
//! `apple_silicon::breaker`, `warn` for trips, `info` otherwise) and counted
//! in [`BreakerStats`].

mod circuit;
mod config;
mod resilient;
mod sequences;

pub use circuit::*;
pub use config::*;
pub use resilient::*;

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::deadline::{Deadline, DeadlineRunner};
use crate::error::{Error, ErrorKind, Result};
use crate::inference::{
    downcast_model, CapabilityReport, InferenceEngine, IoSchema, ModelArtifact, ModelState, PrepareOptions,
    PreparedModel,
};
use crate::telemetry::{ModelTelemetry, Op, Stage, StageTimings, TelemetryRegistry, TelemetrySnapshot};
use crate::tensor::TensorMap;

#[cfg(test)]
mod tests;
