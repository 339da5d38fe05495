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

mod entry;
pub(crate) mod fsx;
mod lock;

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

/// Where the cache lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Root directory (created on open).
    pub root: PathBuf,
    /// Byte budget over all entries' payloads.
    pub max_bytes: u64,
    /// Entry budget.
    pub max_entries: usize,
    /// Never build: [`ModelCache::get_or_build`] serves existing entries and
    /// refuses to compile missing ones.
    pub precompiled_only: bool,
    /// How long [`ModelCache::get_or_build`] waits for another thread or
    /// process compiling the same key; `None` waits as long as it takes.
    pub lock_wait: Option<Duration>,
}

impl CacheConfig {
    /// A configuration rooted at `root` with the default budgets.
    pub fn at(root: impl Into<PathBuf>) -> CacheConfig {
        CacheConfig {
            root: root.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            precompiled_only: false,
            lock_wait: None,
        }
    }

    /// A configuration rooted at [`default_root`] with the default budgets.
    pub fn from_env() -> Result<CacheConfig> {
        Ok(CacheConfig::at(default_root()?))
    }

    /// Sets the byte budget.
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets the entry budget.
    pub fn with_max_entries(mut self, entries: usize) -> Self {
        self.max_entries = entries;
        self
    }

    /// Turns precompiled-only mode on or off.
    pub fn with_precompiled_only(mut self, on: bool) -> Self {
        self.precompiled_only = on;
        self
    }

    /// Bounds the wait for a concurrent compile of the same key.
    pub fn with_lock_wait(mut self, wait: Option<Duration>) -> Self {
        self.lock_wait = wait;
        self
    }
}

/// The cache root: `$APPLE_SILICON_CACHE_DIR` if set and non-empty, else
/// `~/Library/Caches/apple-silicon` on macOS, else `$XDG_CACHE_HOME/apple-silicon`
/// (when absolute) or `~/.cache/apple-silicon`. Reads three environment
/// variables; touches no file.
pub fn default_root() -> Result<PathBuf> {
    resolve_root(
        std::env::var_os(CACHE_DIR_ENV),
        std::env::var_os("HOME"),
        std::env::var_os("XDG_CACHE_HOME"),
        cfg!(target_os = "macos"),
    )
    .ok_or_else(|| Error::Unavailable {
        engine: "compiled-model cache".into(),
        reason: format!("no cache directory: expected {CACHE_DIR_ENV} or HOME to be set, found neither"),
    })
}

fn resolve_root(
    explicit: Option<OsString>,
    home: Option<OsString>,
    xdg: Option<OsString>,
    macos: bool,
) -> Option<PathBuf> {
    if let Some(dir) = explicit.filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if !macos {
        if let Some(x) = xdg.map(PathBuf::from).filter(|p| p.is_absolute()) {
            return Some(x.join(APP_DIR));
        }
    }
    let home = PathBuf::from(home.filter(|h| !h.is_empty())?);
    Some(if macos {
        home.join("Library").join("Caches").join(APP_DIR)
    } else {
        home.join(".cache").join(APP_DIR)
    })
}

/// This host: platform (`macos-arm64`, `linux-x86_64`, …), OS build (macOS
/// `kern.osversion`, the kernel release on Linux, else [`ANY`]), and the Core
/// ML version: the real one where the Swift bridge is linked and reports it
/// (the same value [`crate::CoreMlEngine`] puts in its cache keys), `none`
/// where Core ML does not exist, [`ANY`] on an Apple platform without the
/// bridge (a build without the `coreml` feature cannot know it). Backend
/// `mlprogram`. Costs one small file read on Linux; on macOS one `sysctl`
/// process and, with the bridge, one runtime-info call.
pub fn host_meta() -> CompiledMeta {
    let os = std::env::consts::OS;
    let arch = match (os, std::env::consts::ARCH) {
        ("macos", "aarch64") => "arm64",
        (_, a) => a,
    };
    CompiledMeta {
        platform: format!("{os}-{arch}"),
        coreml_version: host_coreml_version(),
        backend: "mlprogram".to_string(),
        os_build: detect_os_build().unwrap_or_else(|| ANY.to_string()),
    }
}

/// The Core ML version for [`host_meta`]. Only Apple platforms ask the
/// bridge: on Linux the bridge is the test runtime, whose keys say
/// `test-runtime` and are matched by [`version_rule`].
fn host_coreml_version() -> String {
    if !cfg!(target_vendor = "apple") {
        return "none".to_string();
    }
    match crate::core_ml_bridge::runtime_info() {
        Ok(info) => info.coreml_version.unwrap_or_else(|| ANY.to_string()),
        Err(_) => ANY.to_string(),
    }
}

/// What a cache entry was built for, from the key it was built under (the
/// key is what the building engine knew: its Core ML version, or for the
/// Candle engine its own version, and the OS build) plus this host's
/// platform.
fn built_for(key: &CacheKey, current: &CompiledMeta) -> CompiledMeta {
    CompiledMeta {
        platform: current.platform.clone(),
        coreml_version: key.coreml_version.clone(),
        backend: key.backend.clone(),
        os_build: key.os_build.clone(),
    }
}

/// Which version an entry built for `built` must match here, by who built
/// it: a Candle entry (`candle-<version>`) this build's engine version; a
/// test-runtime entry nothing (the fake runtime has no versions); a Core ML
/// entry the host's Core ML version and OS build. `None` for a field means
/// "not compared".
fn version_rule<'a>(current: &'a CompiledMeta, built: &CompiledMeta) -> (Option<&'a str>, Option<&'a str>) {
    if built.coreml_version.starts_with("candle-") {
        (Some(crate::candle_backend::ENGINE_VERSION), None)
    } else if built.coreml_version == "test-runtime" {
        (None, None)
    } else {
        // Entries written before keys carried an OS build say "any"/"unknown".
        let os = (!matches!(built.os_build.as_str(), "any" | "unknown")).then_some(current.os_build.as_str());
        (Some(current.coreml_version.as_str()), os)
    }
}

#[cfg(target_os = "linux")]
fn detect_os_build() -> Option<String> {
    let s = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(target_os = "macos")]
fn detect_os_build() -> Option<String> {
    let out = std::process::Command::new("/usr/sbin/sysctl")
        .args(["-n", "kern.osversion"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn detect_os_build() -> Option<String> {
    None
}

/// Why an entry was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictReason {
    /// Built for another platform, Core ML version or OS build.
    VersionMismatch,
    /// The completeness marker is missing: an install died.
    Incomplete,
    /// Failed the cheap check (metadata, key, file list, sizes).
    Corrupt,
    /// A file's SHA-256 differs from the recorded one ([`ModelCache::verify`]).
    HashMismatch,
    /// Least recently used while the byte budget was exceeded.
    ByteBudget,
    /// Least recently used while the entry budget was exceeded.
    EntryBudget,
    /// Removed by [`ModelCache::clear`].
    Cleared,
}

impl EvictReason {
    const ALL: [EvictReason; 7] = [
        EvictReason::VersionMismatch,
        EvictReason::Incomplete,
        EvictReason::Corrupt,
        EvictReason::HashMismatch,
        EvictReason::ByteBudget,
        EvictReason::EntryBudget,
        EvictReason::Cleared,
    ];

    /// Snake-case name, as logged and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::VersionMismatch => "version_mismatch",
            EvictReason::Incomplete => "incomplete",
            EvictReason::Corrupt => "corrupt",
            EvictReason::HashMismatch => "hash_mismatch",
            EvictReason::ByteBudget => "byte_budget",
            EvictReason::EntryBudget => "entry_budget",
            EvictReason::Cleared => "cleared",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EvictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One evicted entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Eviction {
    /// Entry id (directory name).
    pub id: String,
    /// Its key, when its metadata could be read.
    pub key: Option<String>,
    /// Why.
    pub reason: EvictReason,
    /// The specifics, in words.
    pub detail: String,
    /// Bytes freed.
    pub bytes: u64,
}

/// A temporary directory (or an orphaned temp lock) left by a dead process and removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleTemp {
    /// What was removed.
    pub path: PathBuf,
    /// Bytes freed.
    pub bytes: u64,
}

/// What a maintenance pass ([`ModelCache::gc`], [`ModelCache::clear`], open) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Entries evicted.
    pub evicted: Vec<Eviction>,
    /// Stale temporary directories removed.
    pub stale_temps: Vec<StaleTemp>,
    /// Entry ids that should have been evicted but were in use (locked).
    pub busy: Vec<String>,
    /// Failures that did not stop the pass, in words.
    pub errors: Vec<String>,
}

impl GcReport {
    /// Bytes freed by evictions and stale temporary directories.
    pub fn bytes_freed(&self) -> u64 {
        self.evicted
            .iter()
            .map(|e| e.bytes)
            .chain(self.stale_temps.iter().map(|t| t.bytes))
            .fold(0u64, u64::saturating_add)
    }
}

/// What [`ModelCache::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries fully checked (including the bad ones).
    pub checked: usize,
    /// Entries that failed and were evicted.
    pub bad: Vec<Eviction>,
    /// Entry ids skipped because they were in use.
    pub busy: Vec<String>,
}

/// Evictions per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictionCounts {
    /// See [`EvictReason::VersionMismatch`].
    pub version_mismatch: u64,
    /// See [`EvictReason::Incomplete`].
    pub incomplete: u64,
    /// See [`EvictReason::Corrupt`].
    pub corrupt: u64,
    /// See [`EvictReason::HashMismatch`].
    pub hash_mismatch: u64,
    /// See [`EvictReason::ByteBudget`].
    pub byte_budget: u64,
    /// See [`EvictReason::EntryBudget`].
    pub entry_budget: u64,
    /// See [`EvictReason::Cleared`].
    pub cleared: u64,
}

impl EvictionCounts {
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.version_mismatch
            + self.incomplete
            + self.corrupt
            + self.hash_mismatch
            + self.byte_budget
            + self.entry_budget
            + self.cleared
    }

    /// The count for one reason.
    pub fn get(&self, reason: EvictReason) -> u64 {
        match reason {
            EvictReason::VersionMismatch => self.version_mismatch,
            EvictReason::Incomplete => self.incomplete,
            EvictReason::Corrupt => self.corrupt,
            EvictReason::HashMismatch => self.hash_mismatch,
            EvictReason::ByteBudget => self.byte_budget,
            EvictReason::EntryBudget => self.entry_budget,
            EvictReason::Cleared => self.cleared,
        }
    }
}

/// A snapshot of a [`ModelCache`]'s counters since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Requests served from the cache (including after waiting for another compile).
    pub hits: u64,
    /// Requests that found nothing servable.
    pub misses: u64,
    /// Entries installed by this handle.
    pub installs: u64,
    /// Builds that failed (closure error or panic, or install I/O).
    pub build_failures: u64,
    /// Misses refused because of precompiled-only mode.
    pub refused_precompiled_only: u64,
    /// Evictions by reason.
    pub evictions: EvictionCounts,
    /// Bytes freed by evictions.
    pub bytes_evicted: u64,
    /// Stale temporary directories removed.
    pub stale_temps_removed: u64,
    /// Bytes freed by removing them.
    pub stale_temp_bytes_removed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    installs: AtomicU64,
    build_failures: AtomicU64,
    refused: AtomicU64,
    evictions: [AtomicU64; 7],
    bytes_evicted: AtomicU64,
    stale_temps: AtomicU64,
    stale_temp_bytes: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// A served entry: where its payload is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    id: String,
    dir: PathBuf,
    payload: PathBuf,
    meta: EntryMeta,
    built: bool,
}

impl CacheEntry {
    /// The payload directory: what the build closure wrote, to load from.
    pub fn path(&self) -> &Path {
        &self.payload
    }

    /// The entry directory (payload, metadata, marker).
    pub fn entry_dir(&self) -> &Path {
        &self.dir
    }

    /// The entry id (its directory name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its metadata.
    pub fn meta(&self) -> &EntryMeta {
        &self.meta
    }

    /// The key it was built for.
    pub fn key(&self) -> &CacheKey {
        &self.meta.key
    }

    /// Payload size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.meta.total_bytes
    }

    /// Whether this call built it (a cold prepare) rather than finding it.
    pub fn was_built(&self) -> bool {
        self.built
    }
}

/// The state of an entry, as [`ModelCache::entries`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum EntryStatus {
    /// Servable.
    Complete,
    /// Complete but built for another environment; the next open evicts it.
    OtherVersion(String),
    /// No completeness marker (an install is running, or died).
    Incomplete,
    /// Fails the cheap check; the reason in words.
    Corrupt(String),
}

/// One entry as listed by [`ModelCache::entries`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    /// Entry id (directory name).
    pub id: String,
    /// Entry directory.
    pub dir: PathBuf,
    /// Servable or not, and why.
    pub status: EntryStatus,
    /// Its key, when the metadata parses.
    pub key: Option<CacheKey>,
    /// The environment it was built for, when the metadata parses.
    pub built_for: Option<CompiledMeta>,
    /// Payload bytes (recorded, or measured when the metadata is unusable).
    pub size_bytes: u64,
    /// Last use, ms since the Unix epoch.
    pub last_used_unix_ms: Option<u64>,
    /// Install time, ms since the Unix epoch.
    pub created_unix_ms: Option<u64>,
}

/// A compiled model directory outside the cache, validated by [`open_precompiled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrecompiledModel {
    /// The directory, as given.
    pub path: PathBuf,
    /// Number of regular files in it.
    pub files: usize,
    /// Their total size.
    pub total_bytes: u64,
}

/// Validates a compiled model directory the user supplies (e.g. a
/// `.mlmodelc` bundle shipped with an app) and returns it as is, without
/// copying: it must be a directory of regular files only (no links), not
/// empty, and a `.mlmodelc` must hold `coremldata.bin` at its top. Costs one
/// `lstat` per file.
pub fn open_precompiled(dir: &Path) -> Result<PrecompiledModel> {
    let meta = fs::metadata(dir).map_err(|e| Error::io(format!("opening precompiled model {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::invalid_artifact(
            dir,
            "expected a compiled model directory (e.g. a .mlmodelc bundle), got a file",
        ));
    }
    let (files, _) = fsx::walk(dir)?;
    if files.is_empty() {
        return Err(Error::invalid_artifact(
            dir,
            "expected a compiled model directory holding files, got an empty directory",
        ));
    }
    let is_mlmodelc = dir
        .extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case("mlmodelc"));
    if is_mlmodelc && !files.iter().any(|f| f.rel == "coremldata.bin") {
        let some: Vec<&str> = files.iter().take(8).map(|f| f.rel.as_str()).collect();
        return Err(Error::invalid_artifact(
            dir,
            format!("expected coremldata.bin at the top of a .mlmodelc bundle, found only {some:?}"),
        ));
    }
    Ok(PrecompiledModel {
        path: dir.to_path_buf(),
        files: files.len(),
        total_bytes: files.iter().map(|f| f.len).sum(),
    })
}

/// A handle on the cache at one root. Cheap to clone (shared counters);
/// `Send + Sync`. Any number of handles, threads and processes may use one
/// root at once.
#[derive(Debug, Clone)]
pub struct ModelCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: CacheConfig,
    current: CompiledMeta,
    counters: Counters,
    /// Why nothing can be written (the directories could not be created),
    /// when the cache was opened on a read-only or broken root that still
    /// holds entries: those are served, nothing is installed or evicted.
    read_only: Option<String>,
}

/// What the cheap check of an entry found, with the version rule applied.
enum Class {
    Live { bytes: u64, used: SystemTime },
    Stale(EvictReason, String),
    Gone,
}

enum Idle {
    Evicted(Eviction),
    Busy,
    Kept,
}

struct Live {
    id: String,
    bytes: u64,
    used: SystemTime,
}

impl ModelCache {
    /// Opens the cache at `config.root` for an environment `current`, creating
    /// its directories, then runs [`ModelCache::gc`]: removes stale temporary
    /// directories, evicts incomplete, corrupt and other-version entries and
    /// applies the budgets. Costs one directory listing and one small metadata
    /// read plus one `lstat` per payload file of every entry. Maintenance
    /// problems are logged and do not fail the open.
    ///
    /// A root whose directories cannot be created or written (read-only,
    /// full, or a file where a directory should be) but that holds an
    /// `entries/` directory opens read-only ([`ModelCache::read_only`]): its
    /// entries are served, misses are reported without building (callers
    /// prepare uncached), and nothing is evicted.
    pub fn open(config: CacheConfig, current: CompiledMeta) -> Result<ModelCache> {
        let cache = ModelCache::new(config, current)?;
        if cache.read_only().is_some() {
            return Ok(cache);
        }
        let report = cache.gc()?;
        if !report.evicted.is_empty() || !report.stale_temps.is_empty() || !report.errors.is_empty() {
            tracing::info!(
                target: "apple_silicon::cache",
                root = %cache.root().display(),
                evicted = report.evicted.len(),
                stale_temps = report.stale_temps.len(),
                bytes_freed = report.bytes_freed(),
                errors = ?report.errors,
                "compiled-model cache maintenance at open"
            );
        }
        Ok(cache)
    }

    /// Like [`ModelCache::open`] without the maintenance pass: only creates the
    /// directories. For tools that look before they touch (`cache ls`).
    pub fn new(config: CacheConfig, current: CompiledMeta) -> Result<ModelCache> {
        let read_only = match ensure_dirs_at(&config.root) {
            Ok(()) => None,
            Err(e) if config.root.join(ENTRIES).is_dir() => {
                tracing::warn!(
                    target: "apple_silicon::cache",
                    root = %config.root.display(),
                    error = %e,
                    "compiled-model cache is not writable: serving its entries, preparing the rest uncached"
                );
                Some(e.to_string())
            }
            Err(e) => return Err(e),
        };
        let read_only_now = read_only.is_some();
        let cache = ModelCache {
            inner: Arc::new(Inner {
                config,
                current,
                counters: Counters::default(),
                read_only,
            }),
        };
        if read_only_now {
            return Ok(cache);
        }
        let tag = cache.root().join("CACHEDIR.TAG");
        if !tag.exists() {
            // Best effort: only a hint for backup tools.
            let _ = fs::write(&tag, CACHEDIR_TAG);
        }
        Ok(cache)
    }

    fn ensure_dirs(&self) -> Result<()> {
        ensure_dirs_at(self.root())
    }

    /// Why the cache cannot be written, when it was opened read-only (see
    /// [`ModelCache::open`]); `None` for a writable cache.
    pub fn read_only(&self) -> Option<&str> {
        self.inner.read_only.as_deref()
    }

    fn refuse_write(&self, what: &str) -> Result<()> {
        match &self.inner.read_only {
            Some(why) => Err(Error::Unavailable {
                engine: format!("compiled-model cache at {}", self.root().display()),
                reason: format!("it is read-only ({why}); cannot {what}"),
            }),
            None => Ok(()),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.config.root
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The environment it was opened for.
    pub fn current(&self) -> &CompiledMeta {
        &self.inner.current
    }

    fn entries_dir(&self) -> PathBuf {
        self.root().join(ENTRIES)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root().join(TMP)
    }

    fn entry_dir(&self, id: &str) -> PathBuf {
        self.entries_dir().join(id)
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        self.root().join(LOCKS).join(format!("{id}.lock"))
    }

    /// The servable entry for `key`, or `None`. Never builds. A bad entry
    /// found on the way is evicted (when nobody holds its key) and not served.
    /// Costs the cheap check (a few `lstat`s and one small read) and, on a
    /// hit, one mtime update.
    pub fn lookup(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        let found = self.serve_or_evict(key)?;
        let c = &self.inner.counters;
        bump(if found.is_some() { &c.hits } else { &c.misses }, 1);
        Ok(found)
    }

    /// The servable entry for `key`, or the error precompiled-only mode gives
    /// for a missing one (naming the key). For callers that refuse to compile
    /// per call (`PrepareOptions::precompiled_only`) whatever the cache's own
    /// mode. Costs what [`ModelCache::lookup`] costs.
    pub fn get_precompiled(&self, key: &CacheKey) -> Result<CacheEntry> {
        match self.lookup(key)? {
            Some(e) => Ok(e),
            None => {
                bump(&self.inner.counters.refused, 1);
                Err(self.refusal(key))
            }
        }
    }

    fn refusal(&self, key: &CacheKey) -> Error {
        Error::Compile {
            model: key.to_string(),
            message: format!(
                "the model is not in the compiled-model cache at {} and precompiled-only mode forbids compiling it",
                self.root().display()
            ),
        }
    }

    /// The entry for `key`, building it if needed: at most one build per key
    /// at a time across all threads and processes, and a caller that waited
    /// for another's build gets that build. `build` receives an empty
    /// directory inside the cache to write the compiled form into; when it
    /// returns `Ok`, the cache records, fsyncs and atomically installs what it
    /// wrote. If it returns an error (returned unchanged), panics (turned into
    /// [`Error::Compile`]) or writes links or nothing, its directory is removed
    /// and nothing is installed. After an install the budgets are applied
    /// (never evicting the entry returned). In precompiled-only mode a missing
    /// entry is an error and `build` is not called.
    ///
    /// Cost on a hit: the cheap check. On a miss: the build, plus one read of
    /// everything it wrote (SHA-256), one fsync per file and directory, and a
    /// scan of every entry's metadata for the budgets. Waiting for another
    /// build is bounded by [`CacheConfig::lock_wait`] ([`Error::Timeout`]).
    pub fn get_or_build<F>(&self, key: &CacheKey, build: F) -> Result<CacheEntry>
    where
        F: FnOnce(&Path) -> Result<()>,
    {
        self.get_or_install(key, build, !self.inner.config.precompiled_only, None)
    }

    /// Like [`ModelCache::get_or_build`] for a builder that read the artifact
    /// itself and knows the SHA-256 of the bytes it built from
    /// (`source_sha256`, hex): recorded in the entry's metadata, and refused
    /// before anything is built when it differs from `key.sha256`, so an
    /// entry can never hold the compiled form of other bytes than its key names.
    pub fn get_or_build_from<F>(&self, key: &CacheKey, source_sha256: &str, build: F) -> Result<CacheEntry>
    where
        F: FnOnce(&Path) -> Result<()>,
    {
        if source_sha256 != key.sha256 {
            return Err(Error::Compile {
                model: key.to_string(),
                message: format!(
                    "the artifact read has sha256 {source_sha256}, but the cache key names {}; refusing to cache it",
                    key.sha256
                ),
            });
        }
        self.get_or_install(
            key,
            build,
            !self.inner.config.precompiled_only,
            Some(source_sha256.to_string()),
        )
    }

    /// Installs a copy of the compiled model directory `src` (validated with
    /// [`open_precompiled`]) under `key`, as `<payload>/<file name of src>`,
    /// unless the key is already cached. Allowed in precompiled-only mode:
    /// registering is not compiling. Costs a copy of `src` plus an install.
    pub fn import(&self, key: &CacheKey, src: &Path) -> Result<CacheEntry> {
        let pre = open_precompiled(src)?;
        let name = src
            .file_name()
            .map(OsString::from)
            .unwrap_or_else(|| OsString::from("model"));
        self.get_or_install(
            key,
            |payload| {
                let dst = payload.join(&name);
                fs::create_dir(&dst).map_err(|e| Error::io(format!("creating {}", dst.display()), e))?;
                fsx::copy_tree(&pre.path, &dst)
            },
            true,
            None,
        )
    }

    fn get_or_install<F>(
        &self,
        key: &CacheKey,
        build: F,
        may_build: bool,
        source_sha256: Option<String>,
    ) -> Result<CacheEntry>
    where
        F: FnOnce(&Path) -> Result<()>,
    {
        let c = &self.inner.counters;
        if let Some(e) = self.serve_or_evict(key)? {
            bump(&c.hits, 1);
            return Ok(e);
        }
        if !may_build {
            bump(&c.misses, 1);
            bump(&c.refused, 1);
            return Err(self.refusal(key));
        }
        let key_string = key.to_string();
        let id = entry_id(&key_string);
        let dir = self.entry_dir(&id);
        if self.read_only().is_some() {
            bump(&c.misses, 1);
            self.refuse_write(&format!("install an entry for {key_string}"))?;
        }
        // Someone may have deleted the whole cache while we run.
        self.ensure_dirs()?;
        let lock_wait = self.inner.config.lock_wait;
        let Some(guard) = KeyLock::acquire(&self.lock_path(&id), Wait::from_timeout(lock_wait))? else {
            return Err(Error::Timeout {
                operation: format!("waiting for another build of cache key {key_string}"),
                after: lock_wait.unwrap_or_default(),
            });
        };
        // Double-checked: whoever held the lock may have installed it.
        match entry::check(&dir, &id, Some(key), true) {
            Ok(meta) => {
                drop(guard);
                bump(&c.hits, 1);
                self.touch(&dir);
                return Ok(self.make_entry(id, meta, false));
            }
            Err(Invalid::Missing) => {}
            Err(bad) => {
                self.evict_invalid(&id, bad)?;
            }
        }
        bump(&c.misses, 1);
        let installed = self.install_locked(key, &key_string, &id, build, source_sha256);
        drop(guard);
        match installed {
            Ok(meta) => {
                bump(&c.installs, 1);
                tracing::info!(
                    target: "apple_silicon::cache",
                    id = %id,
                    key = %key_string,
                    bytes = meta.total_bytes,
                    files = meta.files.len(),
                    "installed compiled model"
                );
                let mut report = GcReport::default();
                let live = self.live_entries(false);
                self.apply_budgets(live, Some(&id), &mut report);
                for e in &report.errors {
                    tracing::warn!(target: "apple_silicon::cache", error = %e, "budget eviction failed");
                }
                Ok(self.make_entry(id, meta, true))
            }
            Err(e) => {
                bump(&c.build_failures, 1);
                Err(e)
            }
        }
    }

    /// The cheap check without counting; evicts a bad entry if its key is free.
    fn serve_or_evict(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        let id = entry_id(&key.to_string());
        let dir = self.entry_dir(&id);
        match entry::check(&dir, &id, Some(key), true) {
            Ok(meta) => {
                self.touch(&dir);
                return Ok(Some(self.make_entry(id, meta, false)));
            }
            Err(Invalid::Missing) => return Ok(None),
            Err(_) => {}
        }
        // Bad, or being installed right now: only the key's holder may decide.
        if self.read_only().is_some() {
            return Ok(None);
        }
        let guard = match KeyLock::acquire(&self.lock_path(&id), Wait::No) {
            Ok(g) => g,
            Err(e) => {
                // A lock file we cannot create: not servable, nothing to evict.
                tracing::warn!(target: "apple_silicon::cache", id = %id, error = %e, "cannot lock a cache entry to check it");
                return Ok(None);
            }
        };
        if let Some(_guard) = guard {
            match entry::check(&dir, &id, Some(key), true) {
                Ok(meta) => {
                    self.touch(&dir);
                    return Ok(Some(self.make_entry(id, meta, false)));
                }
                Err(Invalid::Missing) => {}
                Err(bad) => {
                    self.evict_invalid(&id, bad)?;
                }
            }
        }
        Ok(None)
    }

    fn make_entry(&self, id: String, meta: EntryMeta, built: bool) -> CacheEntry {
        let dir = self.entry_dir(&id);
        CacheEntry {
            payload: dir.join(PAYLOAD),
            dir,
            id,
            meta,
            built,
        }
    }

    fn touch(&self, dir: &Path) {
        if let Err(e) = fsx::touch(&dir.join(LAST_USED)) {
            tracing::debug!(target: "apple_silicon::cache", dir = %dir.display(), error = %e, "could not record last use");
        }
    }

    /// Builds into a temporary directory and installs it. The caller holds the key.
    fn install_locked<F>(
        &self,
        key: &CacheKey,
        key_string: &str,
        id: &str,
        build: F,
        source_sha256: Option<String>,
    ) -> Result<EntryMeta>
    where
        F: FnOnce(&Path) -> Result<()>,
    {
        let slot = TempSlot::create(&self.tmp_dir(), true)?;
        let payload = slot.dir.join(PAYLOAD);
        fs::create_dir(&payload).map_err(|e| Error::io(format!("creating {}", payload.display()), e))?;
        match panic::catch_unwind(AssertUnwindSafe(|| build(&payload))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(p) => {
                return Err(Error::Compile {
                    model: key_string.to_string(),
                    message: format!("the build closure panicked: {}", panic_message(p.as_ref())),
                })
            }
        }
        crash_point("after_build");
        let files: Vec<FileRecord> = fsx::hash_and_sync(&payload)?
            .into_iter()
            .map(|(path, size, sha256)| FileRecord { path, size, sha256 })
            .collect();
        if files.is_empty() {
            return Err(Error::Compile {
                model: key_string.to_string(),
                message: "the build closure returned success but wrote no files".into(),
            });
        }
        let meta = EntryMeta {
            format: FORMAT,
            key: key.clone(),
            key_string: key_string.to_string(),
            built_for: built_for(key, &self.inner.current),
            created_unix_ms: unix_ms(SystemTime::now()),
            total_bytes: files.iter().map(|f| f.size).sum(),
            files,
            source_sha256,
        };
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::internal(format!("serialising cache metadata: {e}")))?;
        fsx::write_synced(&slot.dir.join(META), &json)?;
        fsx::write_synced(&slot.dir.join(LAST_USED), b"")?;
        fsx::sync_dir(&slot.dir)?;
        crash_point("before_rename");
        let dir = self.entry_dir(id);
        // We hold the key: nobody else creates `dir`, and a leftover was evicted.
        fs::rename(&slot.dir, &dir).map_err(|e| {
            Error::io(
                format!("moving {} into place at {}", slot.dir.display(), dir.display()),
                e,
            )
        })?;
        let committed = fsx::sync_dir(&self.entries_dir()).and_then(|()| {
            crash_point("after_rename");
            fsx::write_synced(&dir.join(MARKER), b"complete\n")?;
            fsx::sync_dir(&dir)
        });
        if let Err(e) = committed {
            // Without its marker it would never be served; do not leave it around.
            let _ = fsx::remove_tree(&dir);
            return Err(e);
        }
        // The kernel stamps new files with a coarse clock (a few ms behind);
        // set the LRU clock explicitly so it orders with hits' explicit stamps.
        self.touch(&dir);
        crash_point("after_marker");
        drop(slot);
        Ok(meta)
    }

    /// Applies the version rule to the cheap check of entry `id`.
    fn classify(&self, id: &str) -> Class {
        let dir = self.entry_dir(id);
        match entry::check(&dir, id, None, true) {
            Ok(meta) => match self.version_mismatch(&meta.built_for) {
                Some(why) => Class::Stale(EvictReason::VersionMismatch, why),
                None => Class::Live {
                    bytes: meta.total_bytes,
                    used: last_used(&dir),
                },
            },
            Err(Invalid::Missing) => Class::Gone,
            Err(Invalid::Incomplete) => Class::Stale(EvictReason::Incomplete, INCOMPLETE.into()),
            Err(Invalid::Corrupt(d)) => Class::Stale(EvictReason::Corrupt, d),
        }
    }

    /// Why an entry built for `built` is stale here, or `None`; see
    /// [`version_rule`] for which versions are compared.
    fn version_mismatch(&self, built: &CompiledMeta) -> Option<String> {
        let cur = &self.inner.current;
        let (version, os_build) = version_rule(cur, built);
        let what = if built.coreml_version.starts_with("candle-") {
            "engine version"
        } else {
            "Core ML version"
        };
        let diffs: Vec<String> = [
            ("platform", Some(cur.platform.as_str()), &built.platform),
            (what, version, &built.coreml_version),
            ("OS build", os_build, &built.os_build),
        ]
        .into_iter()
        .filter_map(|(what, want, got)| want.map(|w| (what, w, got)))
        .filter(|(_, want, got)| *want != ANY && want != got)
        .map(|(what, want, got)| format!("{what} {got}, expected {want}"))
        .collect();
        (!diffs.is_empty()).then(|| format!("built for {}", diffs.join("; ")))
    }

    fn evict_invalid(&self, id: &str, why: Invalid) -> Result<Option<Eviction>> {
        let (reason, detail) = match why {
            Invalid::Missing => return Ok(None),
            Invalid::Incomplete => (EvictReason::Incomplete, INCOMPLETE.to_string()),
            Invalid::Corrupt(d) => (EvictReason::Corrupt, d),
        };
        self.evict_locked(id, reason, detail)
    }

    /// Removes entry `id` (the caller holds its key): renames it into `tmp/`
    /// (atomic), then deletes it there. `None` if it was already gone.
    fn evict_locked(&self, id: &str, reason: EvictReason, detail: String) -> Result<Option<Eviction>> {
        let dir = self.entry_dir(id);
        let key = entry::read_meta(&dir).ok().map(|m| m.key_string);
        let slot = TempSlot::create(&self.tmp_dir(), false)?;
        match fs::rename(&dir, &slot.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::io(
                    format!("moving cache entry {} out of the way", dir.display()),
                    e,
                ))
            }
        }
        if let Err(e) = fsx::sync_dir(&self.entries_dir()) {
            tracing::warn!(target: "apple_silicon::cache", error = %e, "could not sync the entries directory");
        }
        let bytes = fsx::tree_size(&slot.dir);
        fsx::remove_tree(&slot.dir)?;
        drop(slot);
        let c = &self.inner.counters;
        bump(&c.evictions[reason.index()], 1);
        bump(&c.bytes_evicted, bytes);
        tracing::info!(
            target: "apple_silicon::cache",
            id = %id,
            key = key.as_deref().unwrap_or("unknown"),
            reason = reason.as_str(),
            detail = %detail,
            bytes_freed = bytes,
            "evicted compiled-model cache entry"
        );
        Ok(Some(Eviction {
            id: id.to_string(),
            key,
            reason,
            detail,
            bytes,
        }))
    }

    /// Evicts `id` if its key can be taken without waiting. With `recheck`,
    /// the reason is re-established under the lock (it may have been rebuilt).
    fn evict_if_idle(&self, id: &str, reason: EvictReason, detail: String, recheck: bool) -> Result<Idle> {
        let Some(_guard) = KeyLock::acquire(&self.lock_path(id), Wait::No)? else {
            return Ok(Idle::Busy);
        };
        let (reason, detail) = if recheck {
            match self.classify(id) {
                Class::Stale(r, d) => (r, d),
                Class::Live { .. } | Class::Gone => return Ok(Idle::Kept),
            }
        } else {
            (reason, detail)
        };
        Ok(match self.evict_locked(id, reason, detail)? {
            Some(ev) => Idle::Evicted(ev),
            None => Idle::Kept,
        })
    }

    fn entry_ids(&self) -> Result<Vec<String>> {
        let dir = self.entries_dir();
        let listing = match fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut ids: Vec<String> = listing
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| entry::is_entry_id(n))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Complete entries of the current environment with size and last use.
    fn live_entries(&self, check_files: bool) -> Vec<Live> {
        let Ok(ids) = self.entry_ids() else {
            return Vec::new();
        };
        ids.into_iter()
            .filter_map(|id| {
                let dir = self.entry_dir(&id);
                let meta = entry::check(&dir, &id, None, check_files).ok()?;
                self.version_mismatch(&meta.built_for).is_none().then(|| Live {
                    bytes: meta.total_bytes,
                    used: last_used(&dir),
                    id,
                })
            })
            .collect()
    }

    /// Evicts least-recently-used entries until both budgets hold, skipping
    /// `protect` and busy entries.
    fn apply_budgets(&self, mut live: Vec<Live>, protect: Option<&str>, report: &mut GcReport) {
        let max_entries = self.inner.config.max_entries;
        let max_bytes = self.inner.config.max_bytes;
        live.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.id.cmp(&b.id)));
        let mut count = live.len();
        let mut bytes = live.iter().map(|e| e.bytes).fold(0u64, u64::saturating_add);
        for e in &live {
            if count <= max_entries && bytes <= max_bytes {
                break;
            }
            if protect == Some(e.id.as_str()) {
                continue;
            }
            let (reason, detail) = if count > max_entries {
                (
                    EvictReason::EntryBudget,
                    format!("least recently used of {count} entries, budget {max_entries}"),
                )
            } else {
                (
                    EvictReason::ByteBudget,
                    format!("least recently used; {bytes} bytes cached, budget {max_bytes}"),
                )
            };
            match self.evict_if_idle(&e.id, reason, detail, false) {
                Ok(Idle::Evicted(ev)) => {
                    report.evicted.push(ev);
                    count -= 1;
                    bytes = bytes.saturating_sub(e.bytes);
                }
                Ok(Idle::Kept) => {
                    count -= 1;
                    bytes = bytes.saturating_sub(e.bytes);
                }
                Ok(Idle::Busy) => report.busy.push(e.id.clone()),
                Err(err) => report.errors.push(format!("evicting {}: {err}", e.id)),
            }
        }
    }

    /// Maintenance: removes stale temporary directories, evicts incomplete,
    /// corrupt and other-version entries, applies the budgets and removes
    /// lock files of keys without an entry. Entries in use are skipped and
    /// listed in the report; per-item failures are recorded in it. Costs one
    /// listing of `tmp/`, `entries/` and `locks/`, one small read and one
    /// `lstat` per payload file of every entry, plus the deletions.
    pub fn gc(&self) -> Result<GcReport> {
        self.refuse_write("collect garbage")?;
        let mut report = GcReport::default();
        self.clean_temps(&mut report)?;
        let mut live = Vec::new();
        for id in self.entry_ids()? {
            match self.classify(&id) {
                Class::Live { bytes, used } => live.push(Live { id, bytes, used }),
                Class::Gone => {}
                Class::Stale(reason, detail) => match self.evict_if_idle(&id, reason, detail, true) {
                    Ok(Idle::Evicted(ev)) => report.evicted.push(ev),
                    Ok(Idle::Kept) => {}
                    Ok(Idle::Busy) => report.busy.push(id),
                    Err(e) => report.errors.push(format!("evicting {id}: {e}")),
                },
            }
        }
        self.apply_budgets(live, None, &mut report);
        self.clean_key_locks(&mut report);
        Ok(report)
    }

    /// Evicts every entry not in use and removes stale temporary directories.
    /// Costs the deletions.
    pub fn clear(&self) -> Result<GcReport> {
        self.refuse_write("clear it")?;
        let mut report = GcReport::default();
        for id in self.entry_ids()? {
            match self.evict_if_idle(&id, EvictReason::Cleared, "cleared on request".into(), false) {
                Ok(Idle::Evicted(ev)) => report.evicted.push(ev),
                Ok(Idle::Kept) => {}
                Ok(Idle::Busy) => report.busy.push(id),
                Err(e) => report.errors.push(format!("evicting {id}: {e}")),
            }
        }
        self.clean_temps(&mut report)?;
        self.clean_key_locks(&mut report);
        Ok(report)
    }

    /// The full check: every entry not in use gets the cheap check and then
    /// every payload file is hashed and compared with its recorded SHA-256.
    /// Bad entries are evicted and listed. Costs one full read of the cache.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.refuse_write("verify it (bad entries could not be evicted)")?;
        let mut report = VerifyReport::default();
        for id in self.entry_ids()? {
            let Some(guard) = KeyLock::acquire(&self.lock_path(&id), Wait::No)? else {
                report.busy.push(id);
                continue;
            };
            let dir = self.entry_dir(&id);
            let bad = match entry::check(&dir, &id, None, true) {
                Err(Invalid::Missing) => continue,
                Err(Invalid::Incomplete) => Some((EvictReason::Incomplete, INCOMPLETE.to_string())),
                Err(Invalid::Corrupt(d)) => Some((EvictReason::Corrupt, d)),
                Ok(meta) => first_hash_mismatch(&dir.join(PAYLOAD), &meta).map(|d| (EvictReason::HashMismatch, d)),
            };
            report.checked += 1;
            if let Some((reason, detail)) = bad {
                if let Some(ev) = self.evict_locked(&id, reason, detail)? {
                    report.bad.push(ev);
                }
            }
            drop(guard);
        }
        Ok(report)
    }

    /// Every entry with its state, most recently used first. Read-only: a
    /// bad entry is reported, not evicted. Costs the cheap check per entry.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        for id in self.entry_ids()? {
            let dir = self.entry_dir(&id);
            let status = match entry::check(&dir, &id, None, true) {
                Err(Invalid::Missing) => continue,
                Err(Invalid::Incomplete) => EntryStatus::Incomplete,
                Err(Invalid::Corrupt(d)) => EntryStatus::Corrupt(d),
                Ok(meta) => match self.version_mismatch(&meta.built_for) {
                    Some(why) => EntryStatus::OtherVersion(why),
                    None => EntryStatus::Complete,
                },
            };
            let meta = entry::read_meta(&dir).ok();
            let size_bytes = match (&status, &meta) {
                (EntryStatus::Complete | EntryStatus::OtherVersion(_), Some(m)) => m.total_bytes,
                _ => fsx::tree_size(&dir.join(PAYLOAD)),
            };
            let used = last_used(&dir);
            out.push(EntryInfo {
                id,
                status,
                key: meta.as_ref().map(|m| m.key.clone()),
                built_for: meta.as_ref().map(|m| m.built_for.clone()),
                size_bytes,
                last_used_unix_ms: (used > UNIX_EPOCH).then(|| unix_ms(used)),
                created_unix_ms: meta.as_ref().map(|m| m.created_unix_ms),
                dir,
            });
        }
        out.sort_by(|a, b| {
            b.last_used_unix_ms
                .cmp(&a.last_used_unix_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ev = |r: EvictReason| load(&c.evictions[r.index()]);
        debug_assert_eq!(EvictReason::ALL.len(), c.evictions.len());
        CacheStats {
            hits: load(&c.hits),
            misses: load(&c.misses),
            installs: load(&c.installs),
            build_failures: load(&c.build_failures),
            refused_precompiled_only: load(&c.refused),
            evictions: EvictionCounts {
                version_mismatch: ev(EvictReason::VersionMismatch),
                incomplete: ev(EvictReason::Incomplete),
                corrupt: ev(EvictReason::Corrupt),
                hash_mismatch: ev(EvictReason::HashMismatch),
                byte_budget: ev(EvictReason::ByteBudget),
                entry_budget: ev(EvictReason::EntryBudget),
                cleared: ev(EvictReason::Cleared),
            },
            bytes_evicted: load(&c.bytes_evicted),
            stale_temps_removed: load(&c.stale_temps),
            stale_temp_bytes_removed: load(&c.stale_temp_bytes),
        }
    }

    /// Removes temporary directories whose owner is gone (see the module docs).
    fn clean_temps(&self, report: &mut GcReport) -> Result<()> {
        let tmp = self.tmp_dir();
        let listing = match fs::read_dir(&tmp) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("listing {}", tmp.display()), e)),
        };
        for item in listing.flatten() {
            let path = item.path();
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(".lock") {
                // A lock without its directory: a builder that died before
                // creating it or after renaming it away. Removed under its lock.
                if tmp.join(stem).exists() {
                    continue;
                }
                let Some(_here) = ProcessGuard::acquire(&path, Wait::No) else {
                    continue;
                };
                if let Ok(Existing::Acquired(l)) = FileLock::try_existing(&path) {
                    if !tmp.join(stem).exists() {
                        l.remove();
                    }
                }
                continue;
            }
            let lock_path = tmp.join(format!("{name}.lock"));
            let Some(_here) = ProcessGuard::acquire(&lock_path, Wait::No) else {
                continue;
            };
            let held = match FileLock::try_existing(&lock_path) {
                Ok(Existing::Busy) => continue,
                Ok(Existing::Acquired(l)) => Some(l),
                Ok(Existing::Missing) => None,
                Err(e) => {
                    report.errors.push(e.to_string());
                    continue;
                }
            };
            let bytes = fsx::tree_size(&path);
            let removed = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fsx::remove_tree(&path),
                Ok(_) => fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e)),
                Err(_) => Ok(()),
            };
            match removed {
                Ok(()) => {
                    let c = &self.inner.counters;
                    bump(&c.stale_temps, 1);
                    bump(&c.stale_temp_bytes, bytes);
                    tracing::info!(
                        target: "apple_silicon::cache",
                        path = %path.display(),
                        bytes_freed = bytes,
                        "removed a temporary directory left by a process that died"
                    );
                    report.stale_temps.push(StaleTemp { path, bytes });
                }
                Err(e) => report.errors.push(e.to_string()),
            }
            if let Some(l) = held {
                l.remove();
            }
        }
        Ok(())
    }

    /// Removes lock files of keys that have no entry and nobody holds.
    fn clean_key_locks(&self, report: &mut GcReport) {
        let locks = self.root().join(LOCKS);
        let Ok(listing) = fs::read_dir(&locks) else {
            return;
        };
        for item in listing.flatten() {
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some(id) = name.strip_suffix(".lock").filter(|id| entry::is_entry_id(id)) else {
                continue;
            };
            if self.entry_dir(id).exists() {
                continue;
            }
            match KeyLock::acquire(&item.path(), Wait::No) {
                Ok(Some(k)) if !self.entry_dir(id).exists() => k.remove(),
                Ok(_) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
}

/// A uniquely named directory under `tmp/` whose lock file this process
/// holds. Dropping it removes the directory (if still there) and the lock.
struct TempSlot {
    dir: PathBuf,
    lock: Option<FileLock>,
    _here: ProcessGuard,
}

impl TempSlot {
    /// Creates and locks `<tmp>/<name>.lock`, then (with `make_dir`) the
    /// directory `<tmp>/<name>`.
    fn create(tmp: &Path, make_dir: bool) -> Result<TempSlot> {
        loop {
            let name = unique_name();
            let lock_path = tmp.join(format!("{name}.lock"));
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&lock_path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("creating {}", lock_path.display()), e)),
            };
            let Some(here) = ProcessGuard::acquire(&lock_path, Wait::No) else {
                continue;
            };
            // A cleaner may remove the fresh file before we lock it: new name.
            let Some(lock) = FileLock::lock_new(file, &lock_path)? else {
                continue;
            };
            let dir = tmp.join(&name);
            if make_dir {
                fs::create_dir(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            }
            return Ok(TempSlot {
                dir,
                lock: Some(lock),
                _here: here,
            });
        }
    }
}

impl Drop for TempSlot {
    fn drop(&mut self) {
        if let Err(e) = fsx::remove_tree(&self.dir) {
            tracing::warn!(target: "apple_silicon::cache", error = %e, "could not remove a temporary directory");
        }
        if let Some(l) = self.lock.take() {
            l.remove();
        }
    }
}

fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:x}-{:x}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The LRU clock of an entry: `last_used`'s mtime, else the marker's, else the epoch.
fn last_used(dir: &Path) -> SystemTime {
    [LAST_USED, MARKER]
        .iter()
        .find_map(|f| fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
        .unwrap_or(UNIX_EPOCH)
}

fn ensure_dirs_at(root: &Path) -> Result<()> {
    for d in [root.join(ENTRIES), root.join(TMP), root.join(LOCKS)] {
        fs::create_dir_all(&d).map_err(|e| Error::io(format!("creating cache directory {}", d.display()), e))?;
    }
    Ok(())
}

fn first_hash_mismatch(payload: &Path, meta: &EntryMeta) -> Option<String> {
    let root = match fsx::Confined::open(payload) {
        Ok(r) => r,
        Err(e) => return Some(format!("the payload cannot be opened: {e}")),
    };
    for f in &meta.files {
        if fsx::safe_join(payload, &f.path).is_none() {
            return Some(format!("metadata lists `{}`, which is not a plain path", f.path));
        }
        match root
            .open_file(&f.path)
            .and_then(|(mut file, _)| fsx::hash_open_file(&mut file, &payload.join(&f.path)))
        {
            Ok(h) if h == f.sha256 => {}
            Ok(h) => return Some(format!("file `{}` has sha256 {h}, expected {}", f.path, f.sha256)),
            Err(e) => return Some(format!("file `{}` cannot be hashed: {e}", f.path)),
        }
    }
    None
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Test hook ([`CRASH_POINT_ENV`]): stops here forever if asked to.
fn crash_point(name: &str) {
    if std::env::var_os(CRASH_POINT_ENV).is_some_and(|v| v == name) {
        if let Some(signal) = std::env::var_os(CRASH_SIGNAL_ENV) {
            let _ = fs::write(signal, name);
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn root_comes_from_the_env_var_then_the_platform_dir() {
        assert_eq!(
            resolve_root(os("/c"), os("/home/u"), os("/x"), false),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            resolve_root(os(""), os("/home/u"), None, false),
            Some(PathBuf::from("/home/u/.cache/apple-silicon"))
        );
        assert_eq!(
            resolve_root(None, os("/home/u"), os("/xdg"), false),
            Some(PathBuf::from("/xdg/apple-silicon"))
        );
        // XDG requires absolute paths; a relative one is ignored.
        assert_eq!(
            resolve_root(None, os("/home/u"), os("rel"), false),
            Some(PathBuf::from("/home/u/.cache/apple-silicon"))
        );
        assert_eq!(
            resolve_root(None, os("/Users/u"), os("/xdg"), true),
            Some(PathBuf::from("/Users/u/Library/Caches/apple-silicon"))
        );
        assert_eq!(resolve_root(None, None, None, false), None);
    }

    #[test]
    fn host_meta_names_this_platform() {
        let m = host_meta();
        assert!(m.platform.starts_with(std::env::consts::OS), "{}", m.platform);
        assert!(!m.os_build.is_empty());
        #[cfg(target_os = "linux")]
        assert_eq!(m.coreml_version, "none");
    }

    #[test]
    fn version_rule_compares_platform_coreml_and_os_build_with_wildcards() {
        let dir = tempfile::tempdir().unwrap();
        let cur = CompiledMeta {
            platform: "macos-arm64".into(),
            coreml_version: "8.0".into(),
            backend: "mlprogram".into(),
            os_build: "24A335".into(),
        };
        let cache = ModelCache::new(CacheConfig::at(dir.path()), cur.clone()).unwrap();
        assert_eq!(cache.version_mismatch(&cur), None);
        // The backend is per model, not per environment.
        let other_backend = CompiledMeta {
            backend: "neuralnetwork".into(),
            ..cur.clone()
        };
        assert_eq!(cache.version_mismatch(&other_backend), None);
        let old = CompiledMeta {
            os_build: "23H124".into(),
            coreml_version: "7.0".into(),
            ..cur.clone()
        };
        assert_eq!(
            cache.version_mismatch(&old).unwrap(),
            "built for Core ML version 7.0, expected 8.0; OS build 23H124, expected 24A335"
        );
        let any = ModelCache::new(
            CacheConfig::at(dir.path()),
            CompiledMeta {
                coreml_version: ANY.into(),
                ..cur
            },
        )
        .unwrap();
        assert_eq!(
            any.version_mismatch(&old).unwrap(),
            "built for OS build 23H124, expected 24A335"
        );
    }

    #[test]
    fn handles_and_entries_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ModelCache>();
        send_sync::<CacheEntry>();
        send_sync::<CacheStats>();
    }

    #[test]
    fn panic_messages_are_recovered() {
        let p = panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 7");
        let p = panic::catch_unwind(|| std::panic::panic_any(5u8)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "a non-string panic payload");
    }

    #[test]
    fn eviction_reasons_have_distinct_counter_slots() {
        for (i, r) in EvictReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let json = serde_json::to_value(EvictReason::ByteBudget).unwrap();
        assert_eq!(json, "byte_budget");
    }
}
