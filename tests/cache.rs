//! The compiled-model cache under the conditions it exists for: processes
//! killed (SIGKILL) at every install step, many threads and processes asking
//! for the same key at once, damaged entries, budgets, OS and Core ML updates,
//! precompiled-only mode, failing builds — and its CLI.
//!
//! Child processes are this test binary started again with `CACHE_TEST_CHILD`
//! set, running the ignored test `child_process`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use apple_silicon::cache::{self, CacheConfig, CacheEntry, EvictReason, ModelCache, CRASH_POINT_ENV, CRASH_SIGNAL_ENV};
use apple_silicon::{digest, CacheKey, CompiledMeta, ComputeUnits, Error, ErrorKind, Result};

const CHILD_ENV: &str = "CACHE_TEST_CHILD";
/// Generous bound for a child to reach a point; only a hung child hits it.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

fn env_meta(coreml: &str, os_build: &str) -> CompiledMeta {
    CompiledMeta {
        platform: "macos-arm64".into(),
        coreml_version: coreml.into(),
        backend: "mlprogram".into(),
        os_build: os_build.into(),
    }
}

fn meta() -> CompiledMeta {
    env_meta("8.0", "24A335")
}

fn key_for(n: u32, m: &CompiledMeta) -> CacheKey {
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

fn key(n: u32) -> CacheKey {
    key_for(n, &meta())
}

fn io(e: std::io::Error) -> Error {
    Error::io("writing the test model", e)
}

/// What a "compile" writes: a small `.mlmodelc`-like tree whose bytes depend
/// on `tag` (keep tags the same length for same-size entries).
fn write_model(payload: &Path, tag: &str) -> Result<()> {
    let m = payload.join("model.mlmodelc");
    fs::create_dir_all(m.join("weights")).map_err(io)?;
    fs::write(m.join("coremldata.bin"), format!("coremldata {tag}")).map_err(io)?;
    fs::write(m.join("model.mil"), format!("program {tag}")).map_err(io)?;
    let weights: Vec<u8> = tag.bytes().cycle().take(4096).collect();
    fs::write(m.join("weights/weight.bin"), weights).map_err(io)
}

fn tree_digest(dir: &Path) -> String {
    digest::to_hex(&digest::sha256_path(dir).unwrap())
}

fn expected_digest(tag: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    write_model(d.path(), tag).unwrap();
    tree_digest(d.path())
}

fn counting<'a>(n: &'a AtomicUsize, tag: &'a str) -> impl FnOnce(&Path) -> Result<()> + 'a {
    move |p| {
        n.fetch_add(1, Ordering::SeqCst);
        write_model(p, tag)
    }
}

fn names(dir: &Path) -> Vec<String> {
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

fn tmp_names(root: &Path) -> Vec<String> {
    names(&root.join("tmp"))
}

fn entry_names(root: &Path) -> Vec<String> {
    names(&root.join("entries"))
}

fn id(k: &CacheKey) -> String {
    cache::entry_id(&k.to_string())
}

fn open(root: &Path) -> ModelCache {
    ModelCache::open(CacheConfig::at(root), meta()).unwrap()
}

// ---------------------------------------------------------------- child processes

fn child(mode: &str, root: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child_process",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, mode)
    .env("CACHE_TEST_ROOT", root)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

fn wait_for_file(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + CHILD_DEADLINE;
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut err);
            }
            panic!("child exited ({status}) before writing {}: {err}", path.display());
        }
        assert!(Instant::now() < deadline, "child did not write {}", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} not set")))
}

#[test]
#[ignore = "not a test: the child process that the crash and multi-process tests start"]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let root = env_path("CACHE_TEST_ROOT");
    let n: u32 = std::env::var("CACHE_TEST_KEY").unwrap().parse().unwrap();
    match mode.as_str() {
        "crash" => {
            let cache = open(&root);
            let point = std::env::var("CACHE_TEST_POINT").unwrap();
            let signal = env_path(CRASH_SIGNAL_ENV);
            let result = cache.get_or_build(&key(n), |p| {
                write_model(p, "crash")?;
                if point == "mid_build" {
                    // Inside the closure, files written, not yet returned: killed here.
                    fs::write(&signal, "mid_build").map_err(io)?;
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
                Ok(())
            });
            panic!("the child should have been killed at {point}, but the build returned {result:?}");
        }
        "race" => {
            fs::write(env_path("CACHE_TEST_READY"), "").unwrap();
            let go = env_path("CACHE_TEST_GO");
            let deadline = Instant::now() + CHILD_DEADLINE;
            while !go.exists() {
                assert!(Instant::now() < deadline, "no go signal");
                std::thread::sleep(Duration::from_millis(1));
            }
            let counter = env_path("CACHE_TEST_COUNTER");
            let cache = open(&root);
            let entry = cache
                .get_or_build(&key(n), |p| {
                    let mut f = OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&counter)
                        .map_err(io)?;
                    writeln!(f, "{}", std::process::id()).map_err(io)?;
                    // Keep the compile open long enough for every sibling to pile up on the lock.
                    std::thread::sleep(Duration::from_millis(300));
                    write_model(p, "race")
                })
                .unwrap();
            let line = format!("{} {}", entry.was_built(), tree_digest(entry.path()));
            fs::write(env_path("CACHE_TEST_OUT"), line).unwrap();
        }
        other => panic!("unknown child mode {other}"),
    }
}

// ---------------------------------------------------------------- kill -9 at every step

/// Caches key 1, then lets a child build key 2 and kills it (SIGKILL) at
/// `point`. Checks that nothing half-made is served, the next open cleans up,
/// key 1 is intact and key 2 then builds normally.
fn crash_at(point: &str) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cache");
    let cache = open(&root);
    let one = cache.get_or_build(&key(1), |p| write_model(p, "one")).unwrap();
    let one_digest = tree_digest(one.path());

    let signal = d.path().join("reached");
    let mut cmd = child("crash", &root);
    cmd.env("CACHE_TEST_KEY", "2")
        .env("CACHE_TEST_POINT", point)
        .env(CRASH_POINT_ENV, point)
        .env(CRASH_SIGNAL_ENV, &signal);
    let mut c = cmd.spawn().unwrap();
    wait_for_file(&signal, &mut c);
    c.kill().unwrap(); // SIGKILL on Unix: no destructor, no cleanup runs.
    c.wait().unwrap();

    let two = id(&key(2));
    let complete = point == "after_marker";
    // The state the crash left, before anyone cleans up.
    let listed = ModelCache::new(CacheConfig::at(&root), meta())
        .unwrap()
        .entries()
        .unwrap();
    let two_listed = listed.iter().find(|e| e.id == two);
    match point {
        "mid_build" | "after_build" | "before_rename" => {
            assert!(two_listed.is_none(), "{point}: {two_listed:?}");
            assert!(
                tmp_names(&root).iter().any(|n| !n.ends_with(".lock")),
                "{point}: the dead build's directory should still be there"
            );
        }
        "after_rename" => {
            let e = two_listed.expect("renamed into place");
            assert_eq!(e.status, cache::EntryStatus::Incomplete, "{point}");
        }
        _ => assert_eq!(two_listed.unwrap().status, cache::EntryStatus::Complete),
    }

    // The next open cleans up: no temporary leftovers, no incomplete entry.
    let reopened = open(&root);
    let stats = reopened.stats();
    assert_eq!(tmp_names(&root), Vec::<String>::new(), "{point}");
    match point {
        "after_rename" => {
            assert_eq!(stats.evictions.incomplete, 1, "{point}");
            assert!(stats.bytes_evicted > 0);
        }
        "after_marker" => assert_eq!(stats.evictions.total(), 0),
        _ => {
            assert_eq!(stats.stale_temps_removed, 1, "{point}");
            assert_eq!(stats.evictions.total(), 0, "{point}");
        }
    }
    assert_eq!(
        reopened.lookup(&key(2)).unwrap().is_some(),
        complete,
        "{point}: served state of the killed build"
    );

    // Nothing previously cached is lost.
    let one_again = reopened.lookup(&key(1)).unwrap().expect("key 1 survives");
    assert_eq!(tree_digest(one_again.path()), one_digest);

    // The killed process's lock died with it: key 2 builds (or is served) now.
    let n = AtomicUsize::new(0);
    let two_entry = reopened.get_or_build(&key(2), counting(&n, "after")).unwrap();
    assert_eq!(n.load(Ordering::SeqCst), usize::from(!complete), "{point}");
    let want = if complete { "crash" } else { "after" };
    assert_eq!(tree_digest(two_entry.path()), expected_digest(want));
}

#[test]
fn kill_during_the_build_closure_serves_nothing_and_cleans_up() {
    crash_at("mid_build");
}

#[test]
fn kill_after_the_build_before_hashing_serves_nothing_and_cleans_up() {
    crash_at("after_build");
}

#[test]
fn kill_before_the_rename_serves_nothing_and_cleans_up() {
    crash_at("before_rename");
}

#[test]
fn kill_after_the_rename_before_the_marker_serves_nothing_and_evicts() {
    crash_at("after_rename");
}

#[test]
fn kill_after_the_marker_leaves_a_complete_served_entry() {
    crash_at("after_marker");
}

// ---------------------------------------------------------------- one compile per key

#[test]
fn eight_processes_compile_a_key_exactly_once() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cache");
    let go = d.path().join("go");
    let counter = d.path().join("compiles");
    let mut children = Vec::new();
    for i in 0..8 {
        let ready = d.path().join(format!("ready-{i}"));
        let mut cmd = child("race", &root);
        cmd.env("CACHE_TEST_KEY", "7")
            .env("CACHE_TEST_GO", &go)
            .env("CACHE_TEST_READY", &ready)
            .env("CACHE_TEST_COUNTER", &counter)
            .env("CACHE_TEST_OUT", d.path().join(format!("out-{i}")));
        let mut c = cmd.spawn().unwrap();
        wait_for_file(&ready, &mut c);
        children.push(c);
    }
    fs::write(&go, "").unwrap();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let compiles = fs::read_to_string(&counter).unwrap();
    assert_eq!(compiles.lines().count(), 1, "compiled by {compiles:?}");
    let want = expected_digest("race");
    let mut built = 0;
    for i in 0..8 {
        let line = fs::read_to_string(d.path().join(format!("out-{i}"))).unwrap();
        let (was_built, digest) = line.split_once(' ').unwrap();
        built += usize::from(was_built == "true");
        assert_eq!(digest, want, "process {i} got different content");
    }
    assert_eq!(built, 1);
    assert_eq!(entry_names(&root), vec![id(&key(7))]);
    assert_eq!(tmp_names(&root), Vec::<String>::new());
}

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

fn tree_bytes(dir: &Path) -> u64 {
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

// ---------------------------------------------------------------- CLI

fn cli(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_apple-silicon"))
        .arg("cache")
        .args(args)
        .env(cache::CACHE_DIR_ENV, root)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn cli_entries(root: &Path) -> Vec<serde_json::Value> {
    let out = cli(root, &["ls", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn cli_lists_verifies_collects_and_clears() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cache");
    let host = cache::host_meta();
    let cache = ModelCache::open(CacheConfig::at(&root), host.clone()).unwrap();
    let entries: Vec<CacheEntry> = (1..=3)
        .map(|n| {
            cache
                .get_or_build(&key_for(n, &host), |p| write_model(p, "cli"))
                .unwrap()
        })
        .collect();

    let out = cli(&root, &["ls"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for e in &entries {
        assert!(text.contains(e.id()), "{text}");
    }
    assert!(text.contains("3 entries"), "{text}");
    let listed = cli_entries(&root);
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|e| e["status"]["state"] == "complete"));
    assert_eq!(listed[0]["key"]["quantization"], "fp16");

    // Same-size tampering: only verify finds it; it fails and evicts.
    let w = entries[0].path().join("model.mlmodelc/model.mil");
    let mut bytes = fs::read(&w).unwrap();
    bytes[0] ^= 1;
    fs::write(&w, bytes).unwrap();
    let out = cli(&root, &["verify"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(entries[0].id()) && text.contains("hash_mismatch"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 3 cache entries failed verification"));
    assert_eq!(cli_entries(&root).len(), 2);
    assert!(cli(&root, &["verify"]).status.success());

    // gc: budgets, then an OS update (by flag).
    let out = cli(&root, &["gc", "--max-entries", "1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("entry_budget"));
    assert_eq!(cli_entries(&root).len(), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_apple-silicon"))
        .args(["cache", "gc", "--os-build", "some-future-build", "--dir"])
        .arg(&root)
        .env_remove(cache::CACHE_DIR_ENV)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("version_mismatch") && text.contains("some-future-build"),
        "{text}"
    );
    assert_eq!(cli_entries(&root).len(), 0);

    // clear
    cache
        .get_or_build(&key_for(9, &host), |p| write_model(p, "cli"))
        .unwrap();
    let out = cli(&root, &["clear"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cleared"));
    assert_eq!(cli_entries(&root).len(), 0);
    assert!(!cli(&root, &["gc", "--max-bytes", "lots"]).status.success());
}
