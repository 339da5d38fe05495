//! The compiled-model cache: compile once per model, OS and configuration,
//! install atomically, never serve a half-written entry. Shared by every
//! engine (Core ML's `.mlmodelc`, anything the Candle engine wants to keep)
//! and by every thread and process on the machine.
//!
//! # Layout
//!
//! ```text
//! <root>/CACHEDIR.TAG          marks the tree as a cache for backup tools
//! <root>/entries/<id>/         one entry per key (see below)
//! <root>/locks/<id>.lock       per-key lock file (File::lock)
//! <root>/tmp/<name>/           a build in progress, or an entry being deleted
//! <root>/tmp/<name>.lock       held by the process owning <name> while it lives
//! ```
//!
//! `<id>` is the first 32 hex digits of the SHA-256 of the key's colon format
//! ([`CacheKey`]'s `Display`); an entry holds `payload/` (what the build
//! wrote), `meta.json` ([`EntryMeta`]: the full key, the environment, every
//! file with its size and SHA-256), `last_used` (its mtime is the LRU clock)
//! and `COMPLETE`, the marker written last.
//!
//! # Install
//!
//! [`ModelCache::get_or_build`] checks the entry without locking; on a miss it
//! takes the key's lock (threads: a process-wide registry; processes:
//! `File::lock`), checks again, and only then runs the build closure in a
//! fresh directory under `tmp/`. The cache hashes and fsyncs every file and
//! directory, writes `meta.json`, renames the directory into `entries/`,
//! fsyncs `entries/`, and finally writes and fsyncs `COMPLETE`. An entry
//! without the marker is never served, so a crash at any point leaves either
//! nothing, or an entry that the next locked access or [`ModelCache::gc`]
//! removes.
//!
//! # Stale temporary directories
//!
//! Every directory under `tmp/` has a sibling `<name>.lock` that its owner
//! locks *before* creating the directory and holds until it is done. The lock
//! dies with the process (the kernel closes the file), so a cleaner removes a
//! temporary directory exactly when it can lock that file (or the file is
//! gone). No clock, no age threshold: a compile that runs for an hour is safe,
//! and a crash is cleaned up at the very next [`ModelCache::open`].
//!
//! # Eviction
//!
//! Entries are evicted, each logged through `tracing` with reason and bytes
//! freed, when: their completeness marker is missing or they fail the cheap
//! check (corrupt); they were built for another platform, Core ML version or
//! OS build than the [`CompiledMeta`] the cache is opened with; they fail the
//! full hash check of [`ModelCache::verify`]; or the byte or entry budget is
//! exceeded (least recently used first). Eviction only touches an entry whose
//! key lock it can take without waiting; a busy entry is skipped and reported.
//! An entry is evicted by renaming it into `tmp/` (atomic) and deleting it
//! there, so nobody ever sees a half-deleted entry.
//!
//! Limits: an entry evicted by another process (budgets, `cache clear`) while
//! this process is between a hit and the end of its load disappears under it;
//! the load then fails and a new `prepare` rebuilds it. Budget eviction takes
//! the least recently used entries first, so a just-served entry is the last
//! candidate. Counters ([`CacheStats`]) are per [`ModelCache`] handle, not
//! persisted.

mod config;
mod entry;
pub(crate) mod fsx;
mod handle;
mod lock;
mod maintenance;
mod reports;
mod store;
mod temp;

pub use config::*;
pub use handle::*;
pub use reports::*;
pub use store::*;
use temp::*;

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use entry::{entry_id, EntryMeta, FileRecord, FORMAT};

use crate::error::{Error, Result};
use crate::inference::{CacheKey, CompiledMeta};
use entry::{Invalid, LAST_USED, MARKER, META, PAYLOAD};
use lock::{Existing, FileLock, KeyLock, ProcessGuard, Wait};

/// Environment variable naming the cache root; overrides the platform default.
pub const CACHE_DIR_ENV: &str = "APPLE_SILICON_CACHE_DIR";
/// Default byte budget: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;
/// Default entry budget.
pub const DEFAULT_MAX_ENTRIES: usize = 256;
/// In the [`CompiledMeta`] a cache is opened with, a field equal to `ANY`
/// matches every entry (for example a Core ML version this process cannot
/// know, as in the CLI without the bridge).
pub const ANY: &str = "*";

/// Test hook: the name of an install step at which the process stops and
/// sleeps forever (one of [`CRASH_POINTS`]), so a test can kill it there.
#[doc(hidden)]
pub const CRASH_POINT_ENV: &str = "APPLE_SILICON_CACHE_CRASH_POINT";
/// Test hook: a file the process writes when it reaches the crash point.
#[doc(hidden)]
pub const CRASH_SIGNAL_ENV: &str = "APPLE_SILICON_CACHE_CRASH_SIGNAL";
/// Test hook: the install steps [`CRASH_POINT_ENV`] may name, in order.
#[doc(hidden)]
pub const CRASH_POINTS: &[&str] = &["after_build", "before_rename", "after_rename", "after_marker"];

const APP_DIR: &str = "apple-silicon";
const ENTRIES: &str = "entries";
const TMP: &str = "tmp";
const LOCKS: &str = "locks";
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This directory is a cache of compiled models made by apple-silicon.\n\
# See https://bford.info/cachedir/\n";
const INCOMPLETE: &str = "the completeness marker is missing (an install did not finish)";

#[cfg(test)]
mod tests;
