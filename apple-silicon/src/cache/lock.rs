//! Exclusive locks for the cache: one per key (compile once, evict safely) and
//! one per temporary directory (tells a cleaner the directory is still alive).
//!
//! Across processes we use [`File::lock`], which is `flock(2)` on Unix and
//! `LockFileEx` on Windows. An `flock` lock belongs to the *open file
//! description*: two `open()` calls in one process conflict with each other,
//! so separate threads that each open the lock file are excluded too. That is
//! not true everywhere — on NFS, Linux emulates `flock` with `fcntl` record
//! locks, which belong to the *process*, and two threads of one process would
//! both "hold" the lock — so a key is also held in a process-wide registry
//! ([`ProcessGuard`]) before its file is locked. Together they exclude every
//! thread of every process on every file system we care about.
//!
//! A lock lives as long as its open file description, and a child process
//! shares its parent's descriptions from `fork` until `exec` closes them
//! (std opens files close-on-exec). A lock released while another thread is
//! spawning a process can therefore stay held for that short window: waiters
//! wait a little longer and maintenance skips the entry as busy — harmless,
//! but a test that expects a just-released lock to be free must not run
//! beside one that spawns processes.
//!
//! Lock files may be deleted by a cleaner that holds them (orphaned lock files
//! of crashed builders, lock files of keys that have no entry any more). A
//! locker therefore checks, after locking, that the path still names the file
//! it locked, and starts again if it does not: otherwise two lockers could
//! each hold a lock on a different inode under the same name.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long to wait for a lock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Block until it is free.
    Forever,
    /// Give up at this instant.
    Until(Instant),
    /// Do not wait at all.
    No,
}

impl Wait {
    /// `Forever` for `None`, else a deadline `d` from now.
    pub(crate) fn from_timeout(d: Option<Duration>) -> Wait {
        match d {
            None => Wait::Forever,
            Some(d) => Instant::now().checked_add(d).map_or(Wait::Forever, Wait::Until),
        }
    }
}

/// An exclusive lock on a file; released when dropped (closing the file
/// releases it, also when the process dies).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
    path: PathBuf,
}

/// What trying to lock an existing lock file found.
#[derive(Debug)]
pub(crate) enum Existing {
    /// There is no such file.
    Missing,
    /// Someone holds it.
    Busy,
    /// We hold it now.
    Acquired(FileLock),
}

enum Outcome {
    Locked,
    WouldBlock,
    /// The path no longer names the file we locked (a cleaner removed it).
    Replaced,
}

impl FileLock {
    /// Opens (creating it if needed) and locks `path`. `Ok(None)` when `wait`
    /// ran out first. Costs one `open` and one `flock`, plus polling every few
    /// milliseconds while waiting with a deadline.
    pub(crate) fn acquire(path: &Path, wait: Wait) -> Result<Option<FileLock>> {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| Error::io(format!("opening lock file {}", path.display()), e))?;
            match lock_and_check(&file, path, wait)? {
                Outcome::Locked => {
                    return Ok(Some(FileLock {
                        _file: file,
                        path: path.to_path_buf(),
                    }))
                }
                Outcome::WouldBlock => return Ok(None),
                Outcome::Replaced => continue,
            }
        }
    }

    /// Locks a file created just now with `create_new` by the caller.
    /// `Ok(None)` if a cleaner removed it before we locked it (retry with a
    /// new name).
    pub(crate) fn lock_new(file: File, path: &Path) -> Result<Option<FileLock>> {
        match lock_and_check(&file, path, Wait::Forever)? {
            Outcome::Locked => Ok(Some(FileLock {
                _file: file,
                path: path.to_path_buf(),
            })),
            Outcome::WouldBlock | Outcome::Replaced => Ok(None),
        }
    }

    /// Tries, without waiting, to lock a lock file that should already exist.
    pub(crate) fn try_existing(path: &Path) -> Result<Existing> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Missing),
            Err(e) => return Err(Error::io(format!("opening lock file {}", path.display()), e)),
        };
        Ok(match lock_and_check(&file, path, Wait::No)? {
            Outcome::Locked => Existing::Acquired(FileLock {
                _file: file,
                path: path.to_path_buf(),
            }),
            // Replaced: a new file took the name; whoever made it may be alive.
            Outcome::WouldBlock | Outcome::Replaced => Existing::Busy,
        })
    }

    /// Deletes the lock file while still holding it, then releases it. Safe
    /// against concurrent lockers because of the identity check in
    /// [`FileLock::acquire`]. Failure to delete only leaves a small file.
    pub(crate) fn remove(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(path = %self.path.display(), error = %e, "could not remove lock file");
            }
        }
    }
}

impl Drop for FileLock {
    /// Unlocks explicitly rather than by closing: a child this process is
    /// forking on another thread holds a copy of the descriptor until it
    /// execs, and closing ours alone would leave the lock held meanwhile.
    fn drop(&mut self) {
        let _ = self._file.unlock();
    }
}

fn lock_and_check(file: &File, path: &Path, wait: Wait) -> Result<Outcome> {
    let io_err = |e| Error::io(format!("locking {}", path.display()), e);
    match wait {
        Wait::Forever => file.lock().map_err(io_err)?,
        Wait::No => match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Outcome::WouldBlock),
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        },
        Wait::Until(deadline) => {
            let mut pause = Duration::from_millis(1);
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Error(e)) => return Err(io_err(e)),
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Outcome::WouldBlock);
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
    if same_file(file, path)? {
        Ok(Outcome::Locked)
    } else {
        Ok(Outcome::Replaced)
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Elsewhere an open file cannot be deleted, so the name cannot change under us.
#[cfg(not(unix))]
fn same_file(_file: &File, _path: &Path) -> Result<bool> {
    Ok(true)
}

/// Keys (lock-file paths) held by some thread of this process.
struct Registry {
    held: Mutex<HashSet<PathBuf>>,
    freed: Condvar,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        held: Mutex::new(HashSet::new()),
        freed: Condvar::new(),
    })
}

/// A key held by the current thread within this process; released on drop.
#[derive(Debug)]
pub(crate) struct ProcessGuard {
    path: PathBuf,
}

impl ProcessGuard {
    /// Marks `path` as held by this thread, waiting per `wait` while another
    /// thread of this process holds it. `None` when `wait` ran out.
    pub(crate) fn acquire(path: &Path, wait: Wait) -> Option<ProcessGuard> {
        let reg = registry();
        let mut held = reg.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(path) {
            held = match wait {
                Wait::No => return None,
                Wait::Forever => reg.freed.wait(held).unwrap_or_else(PoisonError::into_inner),
                Wait::Until(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    reg.freed
                        .wait_timeout(held, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        held.insert(path.to_path_buf());
        Some(ProcessGuard {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let reg = registry();
        reg.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.path);
        reg.freed.notify_all();
    }
}

/// A cache key held exclusively by this thread, against every other thread
/// and process. Dropping it releases the file lock, then the registry entry.
#[derive(Debug)]
pub(crate) struct KeyLock {
    file: FileLock,
    _process: ProcessGuard,
}

impl KeyLock {
    /// Takes the key whose lock file is `path`. `Ok(None)` when `wait` ran out.
    pub(crate) fn acquire(path: &Path, wait: Wait) -> Result<Option<KeyLock>> {
        let Some(process) = ProcessGuard::acquire(path, wait) else {
            return Ok(None);
        };
        Ok(FileLock::acquire(path, wait)?.map(|file| KeyLock {
            file,
            _process: process,
        }))
    }

    /// Deletes the key's lock file while holding it (see [`FileLock::remove`]).
    pub(crate) fn remove(self) {
        self.file.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_open_file_descriptions_in_one_process_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        let first = FileLock::acquire(&p, Wait::No).unwrap().expect("free");
        assert!(matches!(FileLock::try_existing(&p).unwrap(), Existing::Busy));
        assert!(FileLock::acquire(&p, Wait::No).unwrap().is_none());
        drop(first);
        assert!(matches!(FileLock::try_existing(&p).unwrap(), Existing::Acquired(_)));
    }

    #[test]
    fn a_removed_lock_file_is_not_mistaken_for_a_held_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        // A cleaner holds and deletes the file; a later locker gets a new file.
        let cleaner = FileLock::acquire(&p, Wait::No).unwrap().unwrap();
        cleaner.remove();
        assert!(!p.exists());
        assert!(matches!(FileLock::try_existing(&p).unwrap(), Existing::Missing));
        let a = FileLock::acquire(&p, Wait::No).unwrap().expect("new file is free");
        assert!(p.exists());
        assert!(
            FileLock::acquire(&p, Wait::No).unwrap().is_none(),
            "the new file is held"
        );
        drop(a);
    }

    #[cfg(unix)]
    #[test]
    fn locking_a_file_that_was_unlinked_meanwhile_reports_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        let f = File::create(&p).unwrap();
        fs::remove_file(&p).unwrap();
        assert!(FileLock::lock_new(f, &p).unwrap().is_none());
    }

    #[test]
    fn the_process_registry_excludes_threads_and_honours_deadlines() {
        let p = PathBuf::from("/registry-test/unique-key.lock");
        let g = ProcessGuard::acquire(&p, Wait::No).unwrap();
        let p2 = p.clone();
        let other = std::thread::spawn(move || ProcessGuard::acquire(&p2, Wait::No).is_none());
        assert!(other.join().unwrap(), "another thread must not get a held key");
        let soon = Wait::Until(Instant::now() + Duration::from_millis(20));
        assert!(ProcessGuard::acquire(&p, soon).is_none());
        drop(g);
        assert!(ProcessGuard::acquire(&p, Wait::No).is_some());
    }
}
