//! Temporary install slots under `tmp/` and the small file helpers installs use.

use super::*;

/// A uniquely named directory under `tmp/` whose lock file this process
/// holds. Dropping it removes the directory (if still there) and the lock.
pub(super) struct TempSlot {
    pub(super) dir: PathBuf,
    pub(super) lock: Option<FileLock>,
    pub(super) _here: ProcessGuard,
}

impl TempSlot {
    /// Creates and locks `<tmp>/<name>.lock`, then (with `make_dir`) the
    /// directory `<tmp>/<name>`.
    pub(super) fn create(tmp: &Path, make_dir: bool) -> Result<TempSlot> {
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

pub(super) fn unique_name() -> String {
    pub(super) static NEXT: AtomicU64 = AtomicU64::new(0);
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

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The LRU clock of an entry: `last_used`'s mtime, else the marker's, else the epoch.
pub(super) fn last_used(dir: &Path) -> SystemTime {
    [LAST_USED, MARKER]
        .iter()
        .find_map(|f| fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
        .unwrap_or(UNIX_EPOCH)
}

pub(super) fn ensure_dirs_at(root: &Path) -> Result<()> {
    for d in [root.join(ENTRIES), root.join(TMP), root.join(LOCKS)] {
        fs::create_dir_all(&d).map_err(|e| Error::io(format!("creating cache directory {}", d.display()), e))?;
    }
    Ok(())
}

pub(super) fn first_hash_mismatch(payload: &Path, meta: &EntryMeta) -> Option<String> {
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

pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Test hook ([`CRASH_POINT_ENV`]): stops here forever if asked to.
pub(super) fn crash_point(name: &str) {
    if std::env::var_os(CRASH_POINT_ENV).is_some_and(|v| v == name) {
        if let Some(signal) = std::env::var_os(CRASH_SIGNAL_ENV) {
            let _ = fs::write(signal, name);
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
