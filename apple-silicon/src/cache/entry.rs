//! One cache entry on disk and its cheap validity check.
//!
//! ```text
//! entries/<id>/payload/     what the build closure wrote (e.g. model.mlmodelc/)
//! entries/<id>/meta.json    EntryMeta: the full key, environment, file list
//! entries/<id>/last_used    empty; its mtime is the LRU clock
//! entries/<id>/COMPLETE     written and fsynced last: without it, never served
//! ```

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fsx;
use crate::inference::{CacheKey, CompiledMeta};

/// Version of the on-disk entry layout; other versions are not served.
pub const FORMAT: u32 = 1;
pub(crate) const PAYLOAD: &str = "payload";
pub(crate) const META: &str = "meta.json";
pub(crate) const MARKER: &str = "COMPLETE";
pub(crate) const LAST_USED: &str = "last_used";
/// A metadata file larger than this is treated as corrupt rather than read.
const MAX_META_BYTES: u64 = 64 << 20;

/// One file of an entry's payload, as recorded at install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the payload directory, `/`-separated.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex (checked by `verify`).
    pub sha256: String,
}

/// The metadata of an entry (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// The key the entry was built for.
    pub key: CacheKey,
    /// `key` in the plan's colon format; its hash names the entry directory.
    pub key_string: String,
    /// The environment the cache was opened with when the entry was built.
    pub built_for: CompiledMeta,
    /// When the entry was installed, in ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Sum of the payload's file sizes.
    pub total_bytes: u64,
    /// Every payload file, sorted by path.
    pub files: Vec<FileRecord>,
    /// SHA-256 (hex) of the artifact bytes the payload was built from, as the
    /// builder read them, when the builder says ([`super::ModelCache::get_or_build_from`]).
    /// It must equal `key.sha256`: an entry built from other bytes than its
    /// key names is corrupt (checked on every serve and by `verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
}

/// The directory name of a key: the first 32 hex digits (128 bits) of the
/// SHA-256 of its colon-format string.
pub fn entry_id(key_string: &str) -> String {
    let mut h = hex::encode(Sha256::digest(key_string.as_bytes()));
    h.truncate(32);
    h
}

/// Whether `name` looks like an entry id (32 lowercase hex digits).
pub(crate) fn is_entry_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why an entry cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// No entry directory.
    Missing,
    /// The completeness marker is absent: an install died (or is running).
    Incomplete,
    /// Present and marked complete but wrong; the reason in words.
    Corrupt(String),
}

/// Reads `meta.json` of the entry at `dir`, if it parses.
/// The file is opened below `dir` without following links, and only if it is
/// a regular file of at most 64 MiB.
pub(crate) fn read_meta(dir: &Path) -> std::result::Result<EntryMeta, String> {
    let root = fsx::Confined::open(dir).map_err(|e| format!("the entry cannot be opened: {e}"))?;
    let (f, len) = root
        .open_file(META)
        .map_err(|e| format!("metadata cannot be opened: {e}"))?;
    if len > MAX_META_BYTES {
        return Err(format!("metadata is {len} bytes, expected at most {MAX_META_BYTES}"));
    }
    let bytes = fsx::read_exact_len(f, len, &dir.join(META)).map_err(|e| format!("metadata cannot be read: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("metadata does not parse as an entry record: {e}"))
}

/// The cheap check made before serving an entry: the marker is present, the
/// metadata parses and names this entry (and `key`, when given), and — with
/// `check_files` — every listed file exists with its recorded size. Costs one
/// `lstat` for the marker, one small read and one `lstat` per payload file.
pub(crate) fn check(
    dir: &Path,
    id: &str,
    key: Option<&CacheKey>,
    check_files: bool,
) -> std::result::Result<EntryMeta, Invalid> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Invalid::Corrupt("the entry is not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Invalid::Missing),
        Err(e) => return Err(Invalid::Corrupt(format!("the entry cannot be read: {e}"))),
    }
    match fs::symlink_metadata(dir.join(MARKER)) {
        Ok(m) if m.is_file() => {}
        _ => return Err(Invalid::Incomplete),
    }
    let meta = read_meta(dir).map_err(Invalid::Corrupt)?;
    if meta.format != FORMAT {
        return Err(Invalid::Corrupt(format!(
            "metadata format is {}, expected {FORMAT}",
            meta.format
        )));
    }
    let fields = meta.key.to_string();
    if fields != meta.key_string {
        return Err(Invalid::Corrupt(format!(
            "metadata key fields give `{fields}` but its key string is `{}`",
            meta.key_string
        )));
    }
    let named = entry_id(&meta.key_string);
    if named != id {
        return Err(Invalid::Corrupt(format!(
            "metadata key hashes to entry {named}, expected {id}"
        )));
    }
    if let Some(key) = key {
        if meta.key != *key {
            return Err(Invalid::Corrupt(format!(
                "metadata holds key `{}`, expected `{key}`",
                meta.key_string
            )));
        }
    }
    if let Some(src) = &meta.source_sha256 {
        if *src != meta.key.sha256 {
            return Err(Invalid::Corrupt(format!(
                "built from an artifact whose sha256 is {src}, but its key names {}",
                meta.key.sha256
            )));
        }
    }
    let sum = meta.files.iter().try_fold(0u64, |acc, f| acc.checked_add(f.size));
    if sum != Some(meta.total_bytes) || meta.files.is_empty() {
        let sum = sum.map_or_else(|| "more than 2^64".to_string(), |s| s.to_string());
        return Err(Invalid::Corrupt(format!(
            "metadata lists {} files of {sum} bytes in total, but records {} bytes",
            meta.files.len(),
            meta.total_bytes
        )));
    }
    if check_files {
        let payload = dir.join(PAYLOAD);
        for f in &meta.files {
            let Some(path) = fsx::safe_join(&payload, &f.path) else {
                return Err(Invalid::Corrupt(format!(
                    "metadata lists `{}`, which is not a plain path inside the entry",
                    f.path
                )));
            };
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && m.len() == f.size => {}
                Ok(m) if m.is_file() => {
                    return Err(Invalid::Corrupt(format!(
                        "file `{}` has {} bytes, expected {}",
                        f.path,
                        m.len(),
                        f.size
                    )))
                }
                Ok(_) => {
                    return Err(Invalid::Corrupt(format!(
                        "`{}` is not a regular file, expected one of {} bytes",
                        f.path, f.size
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Invalid::Corrupt(format!(
                        "file `{}` ({} bytes) listed in the metadata is missing",
                        f.path, f.size
                    )))
                }
                Err(e) => {
                    return Err(Invalid::Corrupt(format!(
                        "file `{}` of {} bytes is unreadable: {e}",
                        f.path, f.size
                    )))
                }
            }
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_32_hex_digits_of_the_key_hash() {
        let a = entry_id("ab:8.0:mlprogram:all:fp16:1x3:24A335");
        let b = entry_id("ab:8.0:mlprogram:all:fp16:1x3:24A336");
        assert_eq!(a.len(), 32);
        assert!(is_entry_id(&a) && is_entry_id(&b));
        assert_ne!(a, b);
        assert_eq!(a, entry_id("ab:8.0:mlprogram:all:fp16:1x3:24A335"));
        // sha256("abc") starts with ba7816bf8f01cfea414140de5dae2223.
        assert_eq!(entry_id("abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert!(!is_entry_id("BA7816BF8F01CFEA414140DE5DAE2223"));
        assert!(!is_entry_id("tmp"));
    }
}
