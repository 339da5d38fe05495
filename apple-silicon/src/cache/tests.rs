use super::*;

fn os(s: &str) -> Option<OsString> {
    Some(OsString::from(s))
}

#[test]
fn root_comes_from_the_env_var_then_the_platform_dir() {
    assert_eq!(
        resolve_root(os("/c"), os("/home/u"), os("/x"), false),
        Some(PathBuf::from("/c"))
    );
    assert_eq!(
        resolve_root(os(""), os("/home/u"), None, false),
        Some(PathBuf::from("/home/u/.cache/apple-silicon"))
    );
    assert_eq!(
        resolve_root(None, os("/home/u"), os("/xdg"), false),
        Some(PathBuf::from("/xdg/apple-silicon"))
    );
    // XDG requires absolute paths; a relative one is ignored.
    assert_eq!(
        resolve_root(None, os("/home/u"), os("rel"), false),
        Some(PathBuf::from("/home/u/.cache/apple-silicon"))
    );
    assert_eq!(
        resolve_root(None, os("/Users/u"), os("/xdg"), true),
        Some(PathBuf::from("/Users/u/Library/Caches/apple-silicon"))
    );
    assert_eq!(resolve_root(None, None, None, false), None);
}

#[test]
fn host_meta_names_this_platform() {
    let m = host_meta();
    assert!(m.platform.starts_with(std::env::consts::OS), "{}", m.platform);
    assert!(!m.os_build.is_empty());
    #[cfg(target_os = "linux")]
    assert_eq!(m.coreml_version, "none");
}

#[test]
fn version_rule_compares_platform_coreml_and_os_build_with_wildcards() {
    let dir = tempfile::tempdir().unwrap();
    let cur = CompiledMeta {
        platform: "macos-arm64".into(),
        coreml_version: "8.0".into(),
        backend: "mlprogram".into(),
        os_build: "24A335".into(),
    };
    let cache = ModelCache::new(CacheConfig::at(dir.path()), cur.clone()).unwrap();
    assert_eq!(cache.version_mismatch(&cur), None);
    // The backend is per model, not per environment.
    let other_backend = CompiledMeta {
        backend: "neuralnetwork".into(),
        ..cur.clone()
    };
    assert_eq!(cache.version_mismatch(&other_backend), None);
    let old = CompiledMeta {
        os_build: "23H124".into(),
        coreml_version: "7.0".into(),
        ..cur.clone()
    };
    assert_eq!(
        cache.version_mismatch(&old).unwrap(),
        "built for Core ML version 7.0, expected 8.0; OS build 23H124, expected 24A335"
    );
    let any = ModelCache::new(
        CacheConfig::at(dir.path()),
        CompiledMeta {
            coreml_version: ANY.into(),
            ..cur
        },
    )
    .unwrap();
    assert_eq!(
        any.version_mismatch(&old).unwrap(),
        "built for OS build 23H124, expected 24A335"
    );
}

#[test]
fn handles_and_entries_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ModelCache>();
    send_sync::<CacheEntry>();
    send_sync::<CacheStats>();
}

#[test]
fn panic_messages_are_recovered() {
    let p = panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
    assert_eq!(panic_message(p.as_ref()), "boom 7");
    let p = panic::catch_unwind(|| std::panic::panic_any(5u8)).unwrap_err();
    assert_eq!(panic_message(p.as_ref()), "a non-string panic payload");
}

#[test]
fn eviction_reasons_have_distinct_counter_slots() {
    for (i, r) in EvictReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
    let json = serde_json::to_value(EvictReason::ByteBudget).unwrap();
    assert_eq!(json, "byte_budget");
}
