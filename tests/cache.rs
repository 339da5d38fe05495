//! The compiled-model cache within one process: many threads on one key,
//! live builds versus cleanup, damaged entries, budgets, OS and Core ML
//! updates, precompiled-only mode and failing builds. Crashes, other
//! processes and the CLI are in `tests/cache_processes.rs` (this binary starts
//! no process, so no forked child can hold a lock's file description while a
//! test here expects the lock to be free).

mod cache_support;

use std::fs::{self, OpenOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use apple_silicon::cache::{self, CacheConfig, CacheEntry, EvictReason, ModelCache};
use apple_silicon::{CompiledMeta, Error, ErrorKind};
use cache_support::*;

#[test]
fn eight_threads_compile_a_key_exactly_once() {
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    let compiles = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (cache, compiles, barrier) = (cache.clone(), compiles.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let e = cache
                    .get_or_build(&key(3), |p| {
                        compiles.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        write_model(p, "threads")
                    })
                    .unwrap();
                (e.was_built(), tree_digest(e.path()))
            })
        })
        .collect();
    let results: Vec<(bool, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(compiles.load(Ordering::SeqCst), 1);
    assert_eq!(results.iter().filter(|r| r.0).count(), 1);
    let want = expected_digest("threads");
    assert!(results.iter().all(|r| r.1 == want));
    let s = cache.stats();
    assert_eq!((s.installs, s.misses, s.hits), (1, 1, 7));
}

#[test]
fn cleanup_never_removes_a_build_that_is_still_running() {
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let builder = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache
                .get_or_build(&key(1), move |p| {
                    write_model(p, "slow")?;
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    Ok(())
                })
                .map(|e| tree_digest(e.path()))
        })
    };
    started_rx.recv().unwrap();
    // Another handle opens (cleanup at open) and collects while the build runs.
    let other = open(d.path());
    let report = other.gc().unwrap();
    assert!(report.stale_temps.is_empty(), "{report:?}");
    assert_eq!(other.stats().stale_temps_removed, 0);
    assert_eq!(tmp_names(d.path()).len(), 2, "the live build's directory and its lock");
    go_tx.send(()).unwrap();
    assert_eq!(builder.join().unwrap().unwrap(), expected_digest("slow"));
    assert_eq!(tmp_names(d.path()), Vec::<String>::new());
}

#[test]
fn a_bounded_wait_for_another_build_times_out_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    let impatient = ModelCache::new(
        CacheConfig::at(d.path()).with_lock_wait(Some(Duration::from_millis(50))),
        meta(),
    )
    .unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let builder = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache.get_or_build(&key(1), move |p| {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                write_model(p, "held")
            })
        })
    };
    started_rx.recv().unwrap();
    let err = impatient
        .get_or_build(&key(1), |_| Err(Error::internal("must not build while another does")))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains(&key(1).to_string()), "{err}");
    go_tx.send(()).unwrap();
    builder.join().unwrap().unwrap();
    let e = impatient
        .get_or_build(&key(1), |_| Err(Error::internal("cached")))
        .unwrap();
    assert!(!e.was_built());
}

// ---------------------------------------------------------------- corruption

#[derive(Debug, Clone, Copy)]
enum Damage {
    RemoveFile,
    TruncateFile,
    GarbageMetadata,
    RemoveMarker,
    ForeignKey,
    KeyFieldsDisagree,
    PathLeavesEntry,
    SizesOverflow,
    EntryIsAFile,
}

fn damage(e: &CacheEntry, how: Damage) {
    let weights = e.path().join("model.mlmodelc/weights/weight.bin");
    let meta_path = e.entry_dir().join("meta.json");
    let edit_meta = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
        f(&mut v);
        fs::write(&meta_path, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    match how {
        Damage::RemoveFile => fs::remove_file(weights).unwrap(),
        Damage::TruncateFile => OpenOptions::new()
            .write(true)
            .open(weights)
            .unwrap()
            .set_len(100)
            .unwrap(),
        Damage::GarbageMetadata => fs::write(meta_path, b"{not json").unwrap(),
        Damage::RemoveMarker => fs::remove_file(e.entry_dir().join("COMPLETE")).unwrap(),
        // A hash collision, or an entry copied under another name.
        Damage::ForeignKey => edit_meta(&|v| {
            let other = key(99);
            v["key"] = serde_json::to_value(&other).unwrap();
            v["key_string"] = other.to_string().into();
        }),
        Damage::KeyFieldsDisagree => edit_meta(&|v| v["key"]["quantization"] = "int8".into()),
        Damage::PathLeavesEntry => edit_meta(&|v| v["files"][0]["path"] = "../meta.json".into()),
        Damage::SizesOverflow => edit_meta(&|v| {
            v["files"][0]["size"] = u64::MAX.into();
            v["files"][1]["size"] = u64::MAX.into();
        }),
        Damage::EntryIsAFile => {
            fs::remove_dir_all(e.entry_dir()).unwrap();
            fs::write(e.entry_dir(), "not an entry").unwrap();
        }
    }
}

#[test]
fn damaged_entries_are_evicted_and_rebuilt_never_served() {
    let cases = [
        (Damage::RemoveFile, EvictReason::Corrupt),
        (Damage::TruncateFile, EvictReason::Corrupt),
        (Damage::GarbageMetadata, EvictReason::Corrupt),
        (Damage::RemoveMarker, EvictReason::Incomplete),
        (Damage::ForeignKey, EvictReason::Corrupt),
        (Damage::KeyFieldsDisagree, EvictReason::Corrupt),
        (Damage::PathLeavesEntry, EvictReason::Corrupt),
        (Damage::SizesOverflow, EvictReason::Corrupt),
        (Damage::EntryIsAFile, EvictReason::Corrupt),
    ];
    let want = expected_digest("good");
    for (how, reason) in cases {
        for via_lookup in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let cache = open(d.path());
            let n = AtomicUsize::new(0);
            let e = cache.get_or_build(&key(1), counting(&n, "good")).unwrap();
            damage(&e, how);
            if via_lookup {
                assert!(cache.lookup(&key(1)).unwrap().is_none(), "{how:?} was served");
            }
            let again = cache.get_or_build(&key(1), counting(&n, "good")).unwrap();
            assert!(again.was_built(), "{how:?}");
            assert_eq!(n.load(Ordering::SeqCst), 2, "{how:?}");
            assert_eq!(tree_digest(again.path()), want, "{how:?}");
            let s = cache.stats();
            assert_eq!(s.evictions.get(reason), 1, "{how:?} via_lookup={via_lookup}: {s:?}");
            assert_eq!(s.evictions.total(), 1, "{how:?}");
            assert_eq!(tmp_names(d.path()), Vec::<String>::new(), "{how:?}");
            // The rebuilt entry is whole.
            assert!(cache.verify().unwrap().bad.is_empty());
        }
    }
}

#[test]
fn damage_found_at_open_is_evicted_there() {
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    let bad = cache.get_or_build(&key(1), |p| write_model(p, "bad1")).unwrap();
    cache.get_or_build(&key(2), |p| write_model(p, "good")).unwrap();
    damage(&bad, Damage::TruncateFile);
    let reopened = ModelCache::new(CacheConfig::at(d.path()), meta()).unwrap();
    let report = reopened.gc().unwrap();
    assert_eq!(report.evicted.len(), 1, "{report:?}");
    assert_eq!(report.evicted[0].id, id(&key(1)));
    assert_eq!(report.evicted[0].reason, EvictReason::Corrupt);
    assert!(
        report.evicted[0].detail.contains("has 100 bytes, expected 4096"),
        "{}",
        report.evicted[0].detail
    );
    assert_eq!(entry_names(d.path()), vec![id(&key(2))]);
}

#[test]
fn verify_hashes_every_file_and_evicts_same_size_tampering() {
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    let one = cache.get_or_build(&key(1), |p| write_model(p, "one")).unwrap();
    cache.get_or_build(&key(2), |p| write_model(p, "two")).unwrap();
    let w = one.path().join("model.mlmodelc/weights/weight.bin");
    let mut bytes = fs::read(&w).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&w, bytes).unwrap();
    // The per-lookup check compares sizes only; flipping a byte needs verify.
    assert!(cache.lookup(&key(1)).unwrap().is_some());
    let report = cache.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.bad.len(), 1, "{report:?}");
    let bad = &report.bad[0];
    assert_eq!(
        (bad.id.as_str(), bad.reason),
        (id(&key(1)).as_str(), EvictReason::HashMismatch)
    );
    assert!(
        bad.detail.contains("model.mlmodelc/weights/weight.bin"),
        "{}",
        bad.detail
    );
    assert_eq!(bad.key.as_deref(), Some(key(1).to_string().as_str()));
    assert!(cache.lookup(&key(1)).unwrap().is_none());
    assert!(cache.lookup(&key(2)).unwrap().is_some());
    let again = cache.verify().unwrap();
    assert_eq!((again.checked, again.bad.len()), (1, 0));
    assert_eq!(cache.stats().evictions.hash_mismatch, 1);
}

// ---------------------------------------------------------------- budgets and versions

#[test]
fn the_entry_budget_evicts_the_least_recently_used() {
    let d = tempfile::tempdir().unwrap();
    let cache = ModelCache::open(CacheConfig::at(d.path()).with_max_entries(3), meta()).unwrap();
    for n in 1..=3 {
        cache.get_or_build(&key(n), |p| write_model(p, "same")).unwrap();
    }
    assert!(cache.lookup(&key(1)).unwrap().is_some()); // 1 is now the most recent
    cache.get_or_build(&key(4), |p| write_model(p, "same")).unwrap();
    let mut want = vec![id(&key(1)), id(&key(3)), id(&key(4))];
    want.sort();
    assert_eq!(entry_names(d.path()), want, "key 2 was least recently used");
    assert!(cache.lookup(&key(3)).unwrap().is_some()); // order of use now: 1, 4, 3
    cache.get_or_build(&key(5), |p| write_model(p, "same")).unwrap();
    let mut want = vec![id(&key(3)), id(&key(4)), id(&key(5))];
    want.sort();
    assert_eq!(entry_names(d.path()), want, "key 1 was least recently used");
    assert_eq!(cache.stats().evictions.entry_budget, 2);
}

#[test]
fn the_byte_budget_evicts_the_least_recently_used_and_counts_bytes() {
    let d = tempfile::tempdir().unwrap();
    let probe = open(&d.path().join("probe"))
        .get_or_build(&key(0), |p| write_model(p, "same"))
        .unwrap();
    let size = probe.size_bytes();
    assert!(size > 4096);
    let budget = 2 * size + size / 2; // room for two entries
    let cache = ModelCache::open(CacheConfig::at(d.path().join("c")).with_max_bytes(budget), meta()).unwrap();
    cache.get_or_build(&key(1), |p| write_model(p, "same")).unwrap();
    cache.get_or_build(&key(2), |p| write_model(p, "same")).unwrap();
    assert!(cache.lookup(&key(1)).unwrap().is_some());
    cache.get_or_build(&key(3), |p| write_model(p, "same")).unwrap();
    assert!(cache.lookup(&key(2)).unwrap().is_none());
    assert!(cache.lookup(&key(1)).unwrap().is_some());
    assert!(cache.lookup(&key(3)).unwrap().is_some());
    let s = cache.stats();
    assert_eq!(s.evictions.byte_budget, 1);
    assert!(s.bytes_evicted >= size, "{} < {size}", s.bytes_evicted);
}

#[test]
fn budgets_apply_at_open_and_never_evict_the_entry_just_returned() {
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    for n in 1..=3 {
        cache.get_or_build(&key(n), |p| write_model(p, "same")).unwrap();
    }
    assert!(cache.lookup(&key(1)).unwrap().is_some());
    let small = ModelCache::new(CacheConfig::at(d.path()).with_max_entries(1), meta()).unwrap();
    let report = small.gc().unwrap();
    let mut evicted: Vec<(String, EvictReason)> = report.evicted.iter().map(|e| (e.id.clone(), e.reason)).collect();
    evicted.sort();
    let mut want = vec![
        (id(&key(2)), EvictReason::EntryBudget),
        (id(&key(3)), EvictReason::EntryBudget),
    ];
    want.sort();
    assert_eq!(evicted, want);
    assert_eq!(entry_names(d.path()), vec![id(&key(1))]);
    // A budget smaller than one entry: the new entry is still returned whole.
    let tiny = ModelCache::open(CacheConfig::at(d.path()).with_max_bytes(1), meta()).unwrap();
    assert_eq!(
        entry_names(d.path()),
        Vec::<String>::new(),
        "open applied the byte budget"
    );
    let e = tiny.get_or_build(&key(4), |p| write_model(p, "same")).unwrap();
    assert_eq!(tree_digest(e.path()), expected_digest("same"));
    assert_eq!(entry_names(d.path()), vec![id(&key(4))]);
}

#[test]
fn entries_of_another_os_build_or_core_ml_are_evicted_at_open_current_ones_survive() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let old = env_meta("8.0", "23H124");
    let now = meta();
    let c_old = ModelCache::open(CacheConfig::at(root), old.clone()).unwrap();
    let o1 = c_old
        .get_or_build(&key_for(1, &old), |p| write_model(p, "old1"))
        .unwrap();
    let o2 = c_old
        .get_or_build(&key_for(2, &old), |p| write_model(p, "old2"))
        .unwrap();
    let old_bytes = tree_bytes(o1.entry_dir()) + tree_bytes(o2.entry_dir());
    assert!(old_bytes > o1.size_bytes() + o2.size_bytes(), "metadata counts too");
    // Built after the OS update, before anyone reopened the cache.
    let c_now = ModelCache::new(CacheConfig::at(root), now.clone()).unwrap();
    c_now
        .get_or_build(&key_for(3, &now), |p| write_model(p, "new3"))
        .unwrap();
    assert_eq!(entry_names(root).len(), 3, "installing does not judge other versions");

    let reopened = ModelCache::open(CacheConfig::at(root), now.clone()).unwrap();
    let s = reopened.stats();
    assert_eq!(s.evictions.version_mismatch, 2, "{s:?}");
    assert_eq!(s.bytes_evicted, old_bytes, "bytes freed = whole entry directories");
    assert_eq!(entry_names(root), vec![id(&key_for(3, &now))]);
    assert!(reopened.lookup(&key_for(3, &now)).unwrap().is_some());

    let again = ModelCache::open(CacheConfig::at(root), now.clone()).unwrap();
    assert_eq!(again.stats().evictions.total(), 0, "current entries survive");

    // A Core ML update evicts too; a wildcard version compares only the OS build.
    let any = ModelCache::open(
        CacheConfig::at(root),
        CompiledMeta {
            coreml_version: cache::ANY.into(),
            ..now.clone()
        },
    )
    .unwrap();
    assert_eq!(any.stats().evictions.total(), 0);
    let newer = ModelCache::open(
        CacheConfig::at(root),
        CompiledMeta {
            coreml_version: "9.0".into(),
            ..now
        },
    )
    .unwrap();
    assert_eq!(newer.stats().evictions.version_mismatch, 1);
    assert_eq!(entry_names(root), Vec::<String>::new());
}

#[test]
fn an_entry_is_judged_by_the_versions_in_its_key_not_by_the_cache_that_stored_it() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    // A process that cannot know the Core ML version (no bridge) stores an
    // entry that an engine keyed with the real one.
    let blind = ModelCache::open(CacheConfig::at(root), env_meta(cache::ANY, "24A335")).unwrap();
    let coreml_key = key_for(1, &env_meta("8.0", "24A335"));
    let e = blind.get_or_build(&coreml_key, |p| write_model(p, "ml80")).unwrap();
    let built = &e.meta().built_for;
    assert_eq!(
        (built.coreml_version.as_str(), built.os_build.as_str()),
        ("8.0", "24A335")
    );
    // Candle entries carry the engine's version; test-runtime entries none.
    let mut candle_key = key_for(2, &meta());
    candle_key.coreml_version = apple_silicon::candle_backend::ENGINE_VERSION.into();
    candle_key.os_build = "any".into();
    blind.get_or_build(&candle_key, |p| write_model(p, "cndl")).unwrap();
    let mut old_candle = candle_key.clone();
    old_candle.sha256 = format!("{:064x}", 3);
    old_candle.coreml_version = "candle-0.0.1".into();
    blind.get_or_build(&old_candle, |p| write_model(p, "cold")).unwrap();
    let mut fake = key_for(4, &meta());
    fake.coreml_version = "test-runtime".into();
    blind.get_or_build(&fake, |p| write_model(p, "fake")).unwrap();

    // Same Core ML: only the Candle entry of another engine version goes.
    let same = ModelCache::open(CacheConfig::at(root), meta()).unwrap();
    assert_eq!(same.stats().evictions.version_mismatch, 1, "{:?}", same.stats());
    let mut left = entry_names(root);
    let mut want = vec![id(&coreml_key), id(&candle_key), id(&fake)];
    left.sort();
    want.sort();
    assert_eq!(left, want);
    // A Core ML update evicts the Core ML entry only; the Candle and
    // test-runtime entries do not depend on Core ML.
    let updated = ModelCache::open(CacheConfig::at(root), env_meta("9.0", "24A335")).unwrap();
    assert_eq!(updated.stats().evictions.version_mismatch, 1, "{:?}", updated.stats());
    let mut left = entry_names(root);
    let mut want = vec![id(&candle_key), id(&fake)];
    left.sort();
    want.sort();
    assert_eq!(left, want);
}

// ---------------------------------------------------------------- precompiled-only, imports, failures

#[test]
fn precompiled_only_serves_existing_entries_and_refuses_to_compile() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cache");
    open(&root).get_or_build(&key(1), |p| write_model(p, "one")).unwrap();
    let strict = ModelCache::open(CacheConfig::at(&root).with_precompiled_only(true), meta()).unwrap();
    let n = AtomicUsize::new(0);
    let e = strict.get_or_build(&key(1), counting(&n, "one")).unwrap();
    assert!(!e.was_built());
    assert_eq!(tree_digest(e.path()), expected_digest("one"));

    let err = strict.get_or_build(&key(2), counting(&n, "two")).unwrap_err();
    assert_eq!(n.load(Ordering::SeqCst), 0, "no build in precompiled-only mode");
    assert_eq!(err.kind(), ErrorKind::Compile);
    let msg = err.to_string();
    for want in [
        key(2).to_string().as_str(),
        "not in the compiled-model cache",
        "precompiled-only mode forbids compiling",
    ] {
        assert!(msg.contains(want), "`{want}` missing from: {msg}");
    }
    assert_eq!(entry_names(&root), vec![id(&key(1))]);
    assert_eq!(tmp_names(&root), Vec::<String>::new());
    assert_eq!(strict.stats().refused_precompiled_only, 1);

    // The per-call form, for PrepareOptions::precompiled_only on a normal cache.
    let normal = open(&root);
    assert!(normal.get_precompiled(&key(1)).is_ok());
    assert_eq!(normal.get_precompiled(&key(2)).unwrap_err().kind(), ErrorKind::Compile);
}

#[test]
fn precompiled_directories_are_validated_and_used_in_place_or_imported() {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), "ship").unwrap();
    let bundle = d.path().join("model.mlmodelc");
    let pre = cache::open_precompiled(&bundle).unwrap();
    assert_eq!(pre.path, bundle);
    assert_eq!(pre.files, 3);
    assert_eq!(pre.total_bytes, tree_bytes(&bundle));

    let e = cache::open_precompiled(&d.path().join("missing.mlmodelc")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let e = cache::open_precompiled(&bundle.join("model.mil")).unwrap_err();
    assert!(e.to_string().contains("got a file"), "{e}");
    fs::create_dir(d.path().join("empty")).unwrap();
    let e = cache::open_precompiled(&d.path().join("empty")).unwrap_err();
    assert!(e.to_string().contains("got an empty directory"), "{e}");
    let no_data = d.path().join("nodata.mlmodelc");
    fs::create_dir(&no_data).unwrap();
    fs::write(no_data.join("model.mil"), "x").unwrap();
    let e = cache::open_precompiled(&no_data).unwrap_err();
    assert!(
        e.to_string().contains("expected coremldata.bin") && e.to_string().contains("model.mil"),
        "{e}"
    );
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/hostname", bundle.join("link")).unwrap();
        let e = cache::open_precompiled(&bundle).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        fs::remove_file(bundle.join("link")).unwrap();
    }

    // Registering it in a precompiled-only cache copies it in (not a compile).
    let strict = ModelCache::open(
        CacheConfig::at(d.path().join("cache")).with_precompiled_only(true),
        meta(),
    )
    .unwrap();
    let e = strict.import(&key(5), &bundle).unwrap();
    assert!(e.was_built());
    assert_eq!(tree_digest(&e.path().join("model.mlmodelc")), tree_digest(&bundle));
    assert!(strict.get_or_build(&key(5), |_| Err(Error::internal("cached"))).is_ok());
}

#[test]
fn a_failing_build_leaves_nothing_behind_and_returns_its_error() {
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    let kept = cache.get_or_build(&key(1), |p| write_model(p, "keep")).unwrap();
    let kept_digest = tree_digest(kept.path());
    let clean = |what: &str| {
        assert_eq!(tmp_names(d.path()), Vec::<String>::new(), "{what}");
        assert_eq!(entry_names(d.path()), vec![id(&key(1))], "{what}");
    };

    let err = cache
        .get_or_build(&key(2), |p| {
            write_model(p, "half")?;
            Err(Error::Compile {
                model: "m.mlpackage".into(),
                message: "coremlcompiler exited with status 1".into(),
            })
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "compile failed for m.mlpackage: coremlcompiler exited with status 1"
    );
    clean("error");

    let err = cache
        .get_or_build(&key(2), |p| {
            write_model(p, "half")?;
            panic!("compiler crashed");
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Compile);
    assert!(
        err.to_string().contains("the build closure panicked: compiler crashed"),
        "{err}"
    );
    clean("panic");

    let err = cache.get_or_build(&key(2), |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("wrote no files"), "{err}");
    clean("nothing written");

    let mut failures = 3;
    #[cfg(unix)]
    {
        let err = cache
            .get_or_build(&key(2), |p| {
                std::os::unix::fs::symlink("/etc/passwd", p.join("passwd")).map_err(io)
            })
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArtifact);
        assert!(err.to_string().contains("found a symbolic link"), "{err}");
        clean("symlink");
        failures += 1;
    }

    assert_eq!(cache.stats().build_failures, failures);
    assert_eq!(cache.stats().installs, 1);
    assert!(cache.lookup(&key(2)).unwrap().is_none());
    assert_eq!(tree_digest(cache.lookup(&key(1)).unwrap().unwrap().path()), kept_digest);
    // The key is not left locked: the next build succeeds.
    let e = cache.get_or_build(&key(2), |p| write_model(p, "good")).unwrap();
    assert!(e.was_built());
}

#[test]
fn counters_serialise_for_telemetry() {
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    cache.get_or_build(&key(1), |p| write_model(p, "one")).unwrap();
    assert!(cache.lookup(&key(1)).unwrap().is_some());
    assert!(cache.lookup(&key(2)).unwrap().is_none());
    cache.clear().unwrap();
    let v = serde_json::to_value(cache.stats()).unwrap();
    assert_eq!(v["hits"], 1);
    assert_eq!(v["misses"], 2);
    assert_eq!(v["installs"], 1);
    assert_eq!(v["evictions"]["cleared"], 1);
    assert_eq!(v["evictions"]["corrupt"], 0);
    assert!(v["bytes_evicted"].as_u64().unwrap() > 4096);
}

/// Collects what a `tracing` fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Everything this test binary logs. A global subscriber, not a scoped one:
/// with a single registered dispatcher, tracing computes a callsite's
/// interest from whichever thread registers it first, so a scoped
/// subscriber misses events whose callsites another test thread (with no
/// subscriber) registered concurrently.
fn captured_log() -> &'static Captured {
    static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of tests/cache.rs");
        captured
    })
}

#[test]
fn evictions_and_stale_temp_removals_are_logged_with_reason_and_bytes() {
    let captured = captured_log();
    let d = tempfile::tempdir().unwrap();
    let cache = open(d.path());
    // A key no other test uses: other tests' lines land in the same log.
    let k = key(0x10c);
    let e = cache.get_or_build(&k, |p| write_model(p, "one")).unwrap();
    damage(&e, Damage::RemoveMarker);
    // A temporary directory without a lock file: its owner is gone.
    let stale = d.path().join("tmp/dead-build");
    fs::create_dir_all(stale.join("payload")).unwrap();
    fs::write(stale.join("payload/part.bin"), [0u8; 1000]).unwrap();

    let report = ModelCache::new(CacheConfig::at(d.path()), meta())
        .unwrap()
        .gc()
        .unwrap();
    let all = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let mine = |needle: &str, what: &str| {
        let line = all.lines().find(|l| l.contains(needle) && l.contains(what));
        line.unwrap_or_default().to_string()
    };
    assert_eq!(report.evicted.len(), 1);
    let ev = &report.evicted[0];
    assert_eq!(ev.reason, EvictReason::Incomplete);
    let evicted = mine(&k.to_string(), "evicted compiled-model cache entry");
    assert!(!evicted.is_empty(), "{all}");
    assert!(evicted.contains("incomplete"), "{evicted}");
    assert!(evicted.contains(&format!("bytes_freed={}", ev.bytes)), "{evicted}");
    assert_eq!(report.stale_temps.len(), 1);
    assert_eq!(report.stale_temps[0].bytes, 1000);
    let removed = mine(&stale.display().to_string(), "removed a temporary directory");
    assert!(removed.contains("bytes_freed=1000"), "{all}");
    assert!(!stale.exists());
}

#[test]
fn the_cache_rebuilds_its_directories_if_they_are_deleted_under_it() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cache");
    let cache = open(&root);
    cache.get_or_build(&key(1), |p| write_model(p, "one")).unwrap();
    fs::remove_dir_all(&root).unwrap();
    assert!(cache.lookup(&key(1)).unwrap().is_none());
    let e = cache.get_or_build(&key(1), |p| write_model(p, "one")).unwrap();
    assert!(e.was_built());
    assert_eq!(tree_digest(e.path()), expected_digest("one"));
}
