//! What the cache reports: evictions and their reasons, gc and verify reports, statistics.

use super::*;

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
    pub(super) const ALL: [EvictReason; 7] = [
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

    pub(super) fn index(self) -> usize {
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
pub(super) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) installs: AtomicU64,
    pub(super) build_failures: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) evictions: [AtomicU64; 7],
    pub(super) bytes_evicted: AtomicU64,
    pub(super) stale_temps: AtomicU64,
    pub(super) stale_temp_bytes: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}
