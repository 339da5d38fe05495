//! The compiled-model cache across processes: a process killed (SIGKILL) at
//! every install step, eight processes asking for one key at once, and the
//! `apple-silicon cache` CLI.
//!
//! Child processes are this test binary started again with `CACHE_TEST_CHILD`
//! set, running the ignored test `child_process`. The tests here run one at a
//! time ([`serial`]): a child forked while another test holds a lock shares
//! that lock's open file description until it execs, which would make the
//! other test see its own, already released, lock as busy for a moment.

mod cache_support;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use apple_silicon::cache::{self, CacheConfig, CacheEntry, ModelCache, CRASH_POINT_ENV, CRASH_SIGNAL_ENV};
use cache_support::*;

const CHILD_ENV: &str = "CACHE_TEST_CHILD";
/// Generous bound for a child to reach a point; only a hung child hits it.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
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
    // While the child lives, another process's maintenance must leave its
    // build alone: its temporary directory and its key are locked.
    let two = id(&key(2));
    let during = ModelCache::new(CacheConfig::at(&root), meta()).unwrap().gc().unwrap();
    assert!(
        during.stale_temps.is_empty() && during.evicted.is_empty(),
        "{point}: {during:?}"
    );
    if point == "after_rename" {
        assert_eq!(during.busy, vec![two.clone()], "{point}");
    }
    c.kill().unwrap(); // SIGKILL on Unix: no destructor, no cleanup runs.
    c.wait().unwrap();

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
    let _serial = serial();
    crash_at("mid_build");
}

#[test]
fn kill_after_the_build_before_hashing_serves_nothing_and_cleans_up() {
    let _serial = serial();
    crash_at("after_build");
}

#[test]
fn kill_before_the_rename_serves_nothing_and_cleans_up() {
    let _serial = serial();
    crash_at("before_rename");
}

#[test]
fn kill_after_the_rename_before_the_marker_serves_nothing_and_evicts() {
    let _serial = serial();
    crash_at("after_rename");
}

#[test]
fn kill_after_the_marker_leaves_a_complete_served_entry() {
    let _serial = serial();
    crash_at("after_marker");
}

// ---------------------------------------------------------------- one compile per key

#[test]
fn eight_processes_compile_a_key_exactly_once() {
    let _serial = serial();
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
    let _serial = serial();
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
