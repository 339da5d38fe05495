//! SHA-256 of a model artifact: a single file, or a directory tree such as an
//! `.mlpackage` or `.mlmodelc`, hashed in a stable order.
//!
//! The tree digest covers every regular file's relative path (with `/`
//! separators), length and bytes, sorted by path, so it is the same on every
//! host and for every traversal order. Symbolic links are refused: an artifact
//! that points outside itself is not something we hash or load.

use std::fs;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Hashes a file's bytes, or a directory tree as described in the module docs.
/// Reads every byte once, in 1 MiB chunks.
pub fn sha256_path(path: &Path) -> Result<[u8; 32]> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    if meta.is_dir() {
        // The cache's walk: sorted by relative path, refusing links and special files.
        let (files, _) = crate::cache::fsx::walk(path)?;
        for f in files {
            hasher.update(b"file\0");
            hasher.update(f.rel.as_bytes());
            hasher.update([0u8]);
            hasher.update(f.len.to_le_bytes());
            hash_file(&f.full, &mut hasher)?;
        }
    } else if meta.is_file() {
        hash_file(path, &mut hasher)?;
    } else {
        return Err(Error::invalid_artifact(
            path,
            "not a regular file or directory (symbolic links are refused)",
        ));
    }
    Ok(hasher.finalize().into())
}

/// Lowercase hex of a digest.
pub fn to_hex(digest: &[u8; 32]) -> String {
    hex::encode(digest)
}

fn hash_file(path: &Path, hasher: &mut Sha256) -> Result<()> {
    let mut f = fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
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

    #[cfg(unix)]
    #[test]
    fn symlinks_are_refused() {
        let a = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", a.path().join("link")).unwrap();
        let err = sha256_path(a.path()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}
