//! What a lookup hands back ([`CacheEntry`], [`EntryInfo`]) and precompiled bundles opened in place.

use super::*;

/// A served entry: where its payload is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub(super) id: String,
    pub(super) dir: PathBuf,
    pub(super) payload: PathBuf,
    pub(super) meta: EntryMeta,
    pub(super) built: bool,
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
