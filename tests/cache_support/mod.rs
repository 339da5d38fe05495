//! Helpers shared by the cache integration tests (`tests/cache.rs`,
//! `tests/cache_processes.rs`): keys, a fake compile, digests, listings.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use apple_silicon::cache::{self, CacheConfig, ModelCache};
use apple_silicon::{digest, CacheKey, CompiledMeta, ComputeUnits, Error, Result};

pub fn env_meta(coreml: &str, os_build: &str) -> CompiledMeta {
    CompiledMeta {
        platform: "macos-arm64".into(),
        coreml_version: coreml.into(),
        backend: "mlprogram".into(),
        os_build: os_build.into(),
    }
}

pub fn meta() -> CompiledMeta {
    env_meta("8.0", "24A335")
}

pub fn key_for(n: u32, m: &CompiledMeta) -> CacheKey {
    CacheKey {
        sha256: format!("{n:064x}"),
        coreml_version: m.coreml_version.clone(),
        backend: "mlprogram".into(),
        compute_units: ComputeUnits::CpuAndNe,
        quantization: "fp16".into(),
        shape_key: "1x3x224x224".into(),
        os_build: m.os_build.clone(),
    }
}

pub fn key(n: u32) -> CacheKey {
    key_for(n, &meta())
}

pub fn io(e: std::io::Error) -> Error {
    Error::io("writing the test model", e)
}

/// What a "compile" writes: a small `.mlmodelc`-like tree whose bytes depend
/// on `tag` (keep tags the same length for same-size entries).
pub fn write_model(payload: &Path, tag: &str) -> Result<()> {
    let m = payload.join("model.mlmodelc");
    fs::create_dir_all(m.join("weights")).map_err(io)?;
    fs::write(m.join("coremldata.bin"), format!("coremldata {tag}")).map_err(io)?;
    fs::write(m.join("model.mil"), format!("program {tag}")).map_err(io)?;
    let weights: Vec<u8> = tag.bytes().cycle().take(4096).collect();
    fs::write(m.join("weights/weight.bin"), weights).map_err(io)
}

pub fn tree_digest(dir: &Path) -> String {
    digest::to_hex(&digest::sha256_path(dir).unwrap())
}

pub fn expected_digest(tag: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), tag).unwrap();
    tree_digest(d.path())
}

pub fn counting<'a>(n: &'a AtomicUsize, tag: &'a str) -> impl FnOnce(&Path) -> Result<()> + 'a {
    move |p| {
        n.fetch_add(1, Ordering::SeqCst);
        write_model(p, tag)
    }
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|l| {
            l.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn tmp_names(root: &Path) -> Vec<String> {
    names(&root.join("tmp"))
}

pub fn entry_names(root: &Path) -> Vec<String> {
    names(&root.join("entries"))
}

pub fn id(k: &CacheKey) -> String {
    cache::entry_id(&k.to_string())
}

pub fn open(root: &Path) -> ModelCache {
    ModelCache::open(CacheConfig::at(root), meta()).unwrap()
}

pub fn tree_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                tree_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}
