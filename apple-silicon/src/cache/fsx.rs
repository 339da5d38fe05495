//! File-system helpers for the cache: tree walks that refuse links, durable
//! writes (fsync of files and directories), sizes, removal and copies.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One regular file found by [`walk`].
#[derive(Debug)]
pub(crate) struct WalkedFile {
    /// Path relative to the walked root, `/`-separated.
    pub rel: String,
    /// Full path.
    pub full: PathBuf,
    /// Length in bytes.
    pub len: u64,
}

/// Every regular file under `root` (sorted by relative path) and every
/// directory (including `root`). Symbolic links, special files and names that
/// are not UTF-8 are refused: a compiled model that points outside itself is
/// not something we install or load. Costs one `readdir` per directory and
/// one `lstat` per entry.
pub(crate) fn walk(root: &Path) -> Result<(Vec<WalkedFile>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let dir = dirs[i].clone();
        i += 1;
        let listing = fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        for item in listing {
            let item = item.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let full = item.path();
            let ft = item
                .file_type()
                .map_err(|e| Error::io(format!("reading {}", full.display()), e))?;
            if ft.is_dir() {
                dirs.push(full);
            } else if ft.is_file() {
                let len = item
                    .metadata()
                    .map_err(|e| Error::io(format!("reading {}", full.display()), e))?
                    .len();
                let rel = relative(root, &full)?;
                files.push(WalkedFile { rel, full, len });
            } else {
                let what = if ft.is_symlink() {
                    "a symbolic link"
                } else {
                    "a special file"
                };
                return Err(Error::invalid_artifact(
                    root,
                    format!(
                        "expected only regular files and directories, found {what}: {}",
                        full.display()
                    ),
                ));
            }
        }
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok((files, dirs))
}

fn relative(root: &Path, full: &Path) -> Result<String> {
    let rel = full
        .strip_prefix(root)
        .map_err(|_| Error::internal(format!("{} is not under {}", full.display(), root.display())))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| {
                Error::invalid_artifact(root, format!("expected UTF-8 file names, got {}", full.display()))
            })?),
            _ => {
                return Err(Error::internal(format!(
                    "unexpected path component in {}",
                    rel.display()
                )))
            }
        }
    }
    Ok(parts.join("/"))
}

/// Turns a recorded `/`-separated relative path back into a path under
/// `root`, refusing anything that could leave it (`..`, absolute paths,
/// empty components). `None` for such a path.
pub(crate) fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() {
        return None;
    }
    let mut out = root.to_path_buf();
    for part in rel.split('/') {
        let mut comps = Path::new(part).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(s)), None) if s == part => out.push(s),
            _ => return None,
        }
    }
    Some(out)
}

/// SHA-256 of a file's bytes as lowercase hex; reads it once in 1 MiB chunks.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    hash_open_file(&mut f, path)
}

fn hash_open_file(f: &mut File, path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Hashes every file, flushes it to stable storage, then flushes every
/// directory deepest first. Returns `(relative path, size, sha256)` per file.
/// Costs one full read of the tree plus one fsync per file and directory.
pub(crate) fn hash_and_sync(root: &Path) -> Result<Vec<(String, u64, String)>> {
    let (files, mut dirs) = walk(root)?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let mut file = File::open(&f.full).map_err(|e| Error::io(format!("opening {}", f.full.display()), e))?;
        let sha = hash_open_file(&mut file, &f.full)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", f.full.display()), e))?;
        out.push((f.rel, f.len, sha));
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        sync_dir(&d)?;
    }
    Ok(out)
}

/// Flushes a directory's entries (names created, renamed or removed in it) to
/// stable storage. File systems that cannot sync a directory are tolerated.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(path).map_err(|e| Error::io(format!("opening directory {}", path.display()), e))?;
        if let Err(e) = d.sync_all() {
            use std::io::ErrorKind;
            if !matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported) {
                return Err(Error::io(format!("syncing directory {}", path.display()), e));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates (or replaces) `path` with `bytes` and flushes it to stable storage.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Sets `path`'s modification time to now, creating it empty if missing (its
/// parent must exist). One `open` and one `futimens`; content is untouched.
pub(crate) fn touch(path: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?
        .set_modified(SystemTime::now())
}

/// Total length of the regular files under `path` (0 if it is missing).
/// Best effort: unreadable parts count as empty. Links are not followed.
pub(crate) fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(listing) = fs::read_dir(path) else {
        return 0;
    };
    listing.flatten().map(|e| tree_size(&e.path())).sum()
}

/// Removes a directory tree (or a lone file); a missing one is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Copies the tree at `src` into the existing directory `dst` (files and
/// directories only; links refused). Costs one read and one write per byte.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let (files, dirs) = walk(src)?;
    for d in dirs.iter().skip(1) {
        let rel = relative(src, d)?;
        let to = safe_join(dst, &rel).ok_or_else(|| Error::internal(format!("bad relative path {rel}")))?;
        fs::create_dir_all(&to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
    }
    for f in files {
        let to = safe_join(dst, &f.rel).ok_or_else(|| Error::internal(format!("bad relative path {}", f.rel)))?;
        fs::copy(&f.full, &to)
            .map_err(|e| Error::io(format!("copying {} to {}", f.full.display(), to.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_paths_that_leave_the_root() {
        let root = Path::new("/r");
        assert_eq!(safe_join(root, "a/b.bin"), Some(PathBuf::from("/r/a/b.bin")));
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/."] {
            assert_eq!(safe_join(root, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn walk_lists_files_sorted_with_sizes() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("w/x")).unwrap();
        fs::write(d.path().join("w/x/b"), b"123").unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        let (files, dirs) = walk(d.path()).unwrap();
        let got: Vec<(&str, u64)> = files.iter().map(|f| (f.rel.as_str(), f.len)).collect();
        assert_eq!(got, vec![("a", 1), ("w/x/b", 3)]);
        assert_eq!(dirs.len(), 3);
        assert_eq!(tree_size(d.path()), 4);
    }

    #[cfg(unix)]
    #[test]
    fn walk_refuses_symbolic_links() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("l")).unwrap();
        let e = walk(d.path()).unwrap_err().to_string();
        assert!(e.contains("found a symbolic link"), "{e}");
    }
}
