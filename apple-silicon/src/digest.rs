//! SHA-256 of a model artifact: a single file, or a directory tree such as an
//! `.mlpackage` or `.mlmodelc`, hashed in a stable order.
//!
//! The tree digest covers every regular file's relative path (with `/`
//! separators), length and bytes, sorted by path, so it is the same on every
//! host and for every traversal order. Symbolic links are refused: an artifact
//! that points outside itself is not something we hash or load.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cache::fsx::{self, Confined};
use crate::error::{Error, Result};

/// Hashes a file's bytes, or a directory tree as described in the module docs.
/// Reads every byte once, in 1 MiB chunks. Inside a tree every file is opened
/// relative to the tree's root without following links
/// (the cache's confined opener); special files are refused unopened.
pub fn sha256_path(path: &Path) -> Result<[u8; 32]> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    if meta.is_dir() {
        let root = Confined::open(path)?;
        // The cache's walk: sorted by relative path, refusing links and special files.
        let (files, _) = fsx::walk(root.root())?;
        for f in files {
            let (file, len) = root.open_file(&f.rel)?;
            hash_entry_header(&mut hasher, &f.rel, len);
            hash_file(file, len, &f.full, &mut hasher)?;
        }
    } else if meta.is_file() {
        let (file, len) = fsx::open_regular(path)?;
        hash_file(file, len, path, &mut hasher)?;
    } else {
        return Err(Error::invalid_artifact(
            path,
            "not a regular file or directory (symbolic links are refused)",
        ));
    }
    Ok(hasher.finalize().into())
}

/// Every regular file of a directory tree, read into memory once, with the
/// [`sha256_path`] digest of exactly those bytes: what is hashed is what is
/// used. Costs one read and one copy in memory of the whole tree.
#[derive(Debug)]
pub(crate) struct TreeSnapshot {
    /// The tree's real path.
    pub root: PathBuf,
    /// File contents by `/`-separated relative path.
    pub files: BTreeMap<String, Arc<crate::milblob::FileBytes>>,
    /// Digest of the tree as read.
    pub sha256: [u8; 32],
}

/// Reads the tree at `path` into a [`TreeSnapshot`] (links and special files
/// refused, each file opened relative to the root without following links).
pub(crate) fn read_tree(path: &Path) -> Result<TreeSnapshot> {
    let root = Confined::open(path)?;
    let (listed, _) = fsx::walk(root.root())?;
    let mut hasher = Sha256::new();
    let mut files = BTreeMap::new();
    for f in listed {
        let (file, len) = root.open_file(&f.rel)?;
        // Large files (weights) in pages a plan builder can give back once decoded.
        let bytes = crate::milblob::FileBytes::read(file, len, &f.full)?;
        hash_entry_header(&mut hasher, &f.rel, len);
        hasher.update(bytes.get().expect("nothing released yet"));
        files.insert(f.rel, Arc::new(bytes));
    }
    Ok(TreeSnapshot {
        root: root.root().to_path_buf(),
        files,
        sha256: hasher.finalize().into(),
    })
}

impl TreeSnapshot {
    /// Writes the snapshot's files under `dest`, which must not exist yet:
    /// a private copy of exactly the bytes that were hashed, for a consumer
    /// (Core ML's compiler) that can only read from a path. Every directory
    /// and file is created new, so nothing already on disk is followed or
    /// overwritten. Costs one write of the whole tree.
    pub(crate) fn write_into(&self, dest: &Path) -> Result<()> {
        let io = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
        fs::create_dir(dest).map_err(|e| io("creating", dest, e))?;
        for (rel, bytes) in &self.files {
            // Relative paths came from our own confined walk; normalise again
            // so a `..` can never be written through.
            let parts =
                fsx::normalize(rel).ok_or_else(|| Error::internal(format!("snapshot path `{rel}` is not relative")))?;
            let mut path = dest.to_path_buf();
            for (i, part) in parts.iter().enumerate() {
                path.push(part);
                if i + 1 < parts.len() && !path.is_dir() {
                    fs::create_dir(&path).map_err(|e| io("creating", &path, e))?;
                }
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| io("creating", &path, e))?;
            let bytes = bytes
                .get()
                .ok_or_else(|| Error::internal(format!("snapshot file `{rel}` was partly released by a plan build")))?;
            std::io::Write::write_all(&mut f, bytes).map_err(|e| io("writing", &path, e))?;
        }
        Ok(())
    }
}

/// Lowercase hex of a digest.
pub fn to_hex(digest: &[u8; 32]) -> String {
    hex::encode(digest)
}

fn hash_entry_header(hasher: &mut Sha256, rel: &str, len: u64) {
    hasher.update(b"file\0");
    hasher.update(rel.as_bytes());
    hasher.update([0u8]);
    hasher.update(len.to_le_bytes());
}

/// Hashes exactly `len` bytes of `f`; a file that grew or shrank meanwhile is refused.
fn hash_file(f: fs::File, len: u64, path: &Path, hasher: &mut Sha256) -> Result<()> {
    let mut f = f.take(len.saturating_add(1));
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        seen += n as u64;
        hasher.update(&buf[..n]);
    }
    if seen != len {
        return Err(Error::invalid_artifact(
            path,
            format!("was {len} bytes when opened but {seen} bytes were read: it changed while being hashed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_plain_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            to_hex(&sha256_path(&p).unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tree_digest_depends_on_names_and_content_not_creation_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::create_dir_all(a.path().join("x/y")).unwrap();
        fs::create_dir_all(b.path().join("x/y")).unwrap();
        fs::write(a.path().join("x/y/one"), b"1").unwrap();
        fs::write(a.path().join("two"), b"22").unwrap();
        fs::write(b.path().join("two"), b"22").unwrap();
        fs::write(b.path().join("x/y/one"), b"1").unwrap();
        let da = sha256_path(a.path()).unwrap();
        assert_eq!(da, sha256_path(b.path()).unwrap());
        fs::write(b.path().join("two"), b"23").unwrap();
        assert_ne!(da, sha256_path(b.path()).unwrap());
        fs::write(b.path().join("two"), b"22").unwrap();
        fs::rename(b.path().join("two"), b.path().join("three")).unwrap();
        assert_ne!(da, sha256_path(b.path()).unwrap());
    }

    #[test]
    fn a_written_snapshot_hashes_as_what_was_read_and_never_overwrites() {
        let a = tempfile::tempdir().unwrap();
        fs::create_dir_all(a.path().join("Data/com.apple.CoreML/weights")).unwrap();
        fs::write(a.path().join("Manifest.json"), b"{}").unwrap();
        fs::write(a.path().join("Data/com.apple.CoreML/weights/weight.bin"), [7u8; 300]).unwrap();
        let snap = read_tree(a.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("copy.mlpackage");
        snap.write_into(&dest).unwrap();
        assert_eq!(sha256_path(&dest).unwrap(), snap.sha256);
        assert_eq!(sha256_path(a.path()).unwrap(), snap.sha256);
        // A destination that exists (a planted link included) is refused, not reused.
        let err = snap.write_into(&dest).unwrap_err();
        assert!(err.to_string().contains("copy.mlpackage"), "{err}");
        #[cfg(unix)]
        {
            let planted = out.path().join("planted.mlpackage");
            std::os::unix::fs::symlink(a.path(), &planted).unwrap();
            assert!(snap.write_into(&planted).is_err());
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_refused() {
        let a = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", a.path().join("link")).unwrap();
        let err = sha256_path(a.path()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}
