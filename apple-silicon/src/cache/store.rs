//! [`ModelCache`]: opening a cache, looking keys up, and building or importing entries atomically.

use super::*;

/// A handle on the cache at one root. Cheap to clone (shared counters);
/// `Send + Sync`. Any number of handles, threads and processes may use one
/// root at once.
#[derive(Debug, Clone)]
pub struct ModelCache {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) config: CacheConfig,
    pub(super) current: CompiledMeta,
    pub(super) counters: Counters,
    /// Why nothing can be written (the directories could not be created),
    /// when the cache was opened on a read-only or broken root that still
    /// holds entries: those are served, nothing is installed or evicted.
    pub(super) read_only: Option<String>,
}

/// What the cheap check of an entry found, with the version rule applied.
pub(super) enum Class {
    Live { bytes: u64, used: SystemTime },
    Stale(EvictReason, String),
    Gone,
}

pub(super) enum Idle {
    Evicted(Eviction),
    Busy,
    Kept,
}

pub(super) struct Live {
    pub(super) id: String,
    pub(super) bytes: u64,
    pub(super) used: SystemTime,
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

    pub(super) fn ensure_dirs(&self) -> Result<()> {
        ensure_dirs_at(self.root())
    }

    /// Why the cache cannot be written, when it was opened read-only (see
    /// [`ModelCache::open`]); `None` for a writable cache.
    pub fn read_only(&self) -> Option<&str> {
        self.inner.read_only.as_deref()
    }

    pub(super) fn refuse_write(&self, what: &str) -> Result<()> {
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

    pub(super) fn entries_dir(&self) -> PathBuf {
        self.root().join(ENTRIES)
    }

    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.root().join(TMP)
    }

    pub(super) fn entry_dir(&self, id: &str) -> PathBuf {
        self.entries_dir().join(id)
    }

    pub(super) fn lock_path(&self, id: &str) -> PathBuf {
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

    pub(super) fn refusal(&self, key: &CacheKey) -> Error {
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

    pub(super) fn get_or_install<F>(
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
    pub(super) fn serve_or_evict(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
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

    pub(super) fn make_entry(&self, id: String, meta: EntryMeta, built: bool) -> CacheEntry {
        let dir = self.entry_dir(&id);
        CacheEntry {
            payload: dir.join(PAYLOAD),
            dir,
            id,
            meta,
            built,
        }
    }

    pub(super) fn touch(&self, dir: &Path) {
        if let Err(e) = fsx::touch(&dir.join(LAST_USED)) {
            tracing::debug!(target: "apple_silicon::cache", dir = %dir.display(), error = %e, "could not record last use");
        }
    }

    /// Builds into a temporary directory and installs it. The caller holds the key.
    pub(super) fn install_locked<F>(
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
}
