//! Every crash the fuzzer ever found (tests/fixtures/fuzz/crashes/) and its
//! committed corpus (tests/fixtures/fuzz/corpus/), replayed through the same
//! targets: each must now end in `Ok` or a typed error, never a panic.
//! (An abort would end this test process: that fails too.)

#[path = "../apple-silicon/examples/fuzz_targets.rs"]
mod fuzz_targets;

use fuzz_targets::*;

fn replay(dir: &str) -> usize {
    let root = repo_root().join("tests/fixtures/fuzz").join(dir);
    let scratch = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            n += replay(&format!("{dir}/{name}"));
            continue;
        }
        let Some((target, fixture)) = parse_case_name(&name) else {
            continue;
        };
        let bytes = std::fs::read(&p).unwrap();
        if let Err(why) = run_case(target, &fixture, &bytes, scratch.path()) {
            panic!("{}: {why}", p.display());
        }
        n += 1;
    }
    n
}

#[test]
fn kept_crashes_no_longer_crash() {
    apple_silicon::mil::quiet_panics();
    replay("crashes");
}

#[test]
fn the_corpus_runs_clean_and_its_seeds_still_work() {
    let n = replay("corpus");
    assert!(n >= 20, "the corpus holds {n} cases");
    // The unmutated seeds are accepted: the targets exercise real parsing.
    let scratch = tempfile::tempdir().unwrap();
    for f in FIXTURES {
        for t in Target::ALL {
            let got = run_case(t, f, &seed_bytes(t, f), scratch.path());
            assert_eq!(got, Ok(Outcome::Ok), "{} seed of {f}", t.name());
        }
    }
}
