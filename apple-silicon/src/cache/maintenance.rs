//! Keeping a cache healthy: classifying and evicting entries, budgets, gc, clear, verify, listing
//! and statistics.

use super::*;

impl ModelCache {
    /// Applies the version rule to the cheap check of entry `id`.
    pub(super) fn classify(&self, id: &str) -> Class {
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
    pub(super) fn version_mismatch(&self, built: &CompiledMeta) -> Option<String> {
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

    pub(super) fn evict_invalid(&self, id: &str, why: Invalid) -> Result<Option<Eviction>> {
        let (reason, detail) = match why {
            Invalid::Missing => return Ok(None),
            Invalid::Incomplete => (EvictReason::Incomplete, INCOMPLETE.to_string()),
            Invalid::Corrupt(d) => (EvictReason::Corrupt, d),
        };
        self.evict_locked(id, reason, detail)
    }

    /// Removes entry `id` (the caller holds its key): renames it into `tmp/`
    /// (atomic), then deletes it there. `None` if it was already gone.
    pub(super) fn evict_locked(&self, id: &str, reason: EvictReason, detail: String) -> Result<Option<Eviction>> {
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
    pub(super) fn evict_if_idle(&self, id: &str, reason: EvictReason, detail: String, recheck: bool) -> Result<Idle> {
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

    pub(super) fn entry_ids(&self) -> Result<Vec<String>> {
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
    pub(super) fn live_entries(&self, check_files: bool) -> Vec<Live> {
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
    pub(super) fn apply_budgets(&self, mut live: Vec<Live>, protect: Option<&str>, report: &mut GcReport) {
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
    pub(super) fn clean_temps(&self, report: &mut GcReport) -> Result<()> {
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
    pub(super) fn clean_key_locks(&self, report: &mut GcReport) {
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
