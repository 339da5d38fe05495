//! A seeded mutation fuzzer on stable Rust, for everything a stranger's
//! model hands us: `.npy` inputs, `weight.bin`, the spec (bytes, and
//! programs mutated structurally: op types, shapes, attribute values,
//! wiring) and `Manifest.json`, through open, plan build and run.
//!
//! `cargo run --example fuzz -- [--secs N] [--seed S]` (or `FUZZ_SECS`,
//! `FUZZ_SEED`). The loop runs in a child process: a child killed by a
//! signal (an abort) or silent for `FUZZ_HANG_SECS` (default 20; a hang) is
//! a crash, as is a panic; the case that did it is kept in
//! `tests/fixtures/fuzz/crashes/` (replayed by `tests/fuzz_regressions.rs`),
//! and the loop goes on with the next seed (`FUZZ_SELFTEST=abort|hang|panic`
//! with `FUZZ_CRASHES_DIR=/tmp/x` checks that each is caught). Cases start from the committed
//! corpus `tests/fixtures/fuzz/corpus/` and the fixture packages. Prints the
//! iteration count; exits non-zero when it found a crash.

#[path = "fuzz_targets.rs"]
mod fuzz_targets;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fuzz_targets::*;

fn arg(name: &str, env: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| std::env::var(env).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn crashes_dir() -> PathBuf {
    std::env::var_os("FUZZ_CRASHES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/fixtures/fuzz/crashes"))
}

fn corpus(target: Target) -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("tests/fixtures/fuzz/corpus").join(target.name());
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let (_, fixture) = parse_case_name(&name)?;
                    Some((fixture, std::fs::read(e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    if out.is_empty() {
        for f in FIXTURES {
            out.push((f.to_string(), seed_bytes(target, f)));
        }
    }
    out
}

fn keep(target: Target, fixture: &str, bytes: &[u8], why: &str) -> PathBuf {
    let dir = crashes_dir();
    let p = dir.join(case_file_name(target, fixture, bytes));
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&p, bytes)) {
        Ok(()) => eprintln!("fuzz: CRASH ({why}) kept as {}", p.display()),
        Err(e) => eprintln!("fuzz: CRASH ({why}); could not keep it in {}: {e}", p.display()),
    }
    p
}

/// The loop itself: runs until `until`, writing the case about to run to
/// `state` first (so the parent can keep it if this process dies).
fn child(seed: u64, until: Instant, state: &Path) -> (u64, u64) {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let corpora: Vec<Vec<(String, Vec<u8>)>> = Target::ALL.iter().map(|&t| corpus(t)).collect();
    let mut rng = Rng::new(seed);
    let (mut iters, mut crashes) = (0u64, 0u64);
    let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
    while Instant::now() < until {
        let ti = rng.below(Target::ALL.len());
        let target = Target::ALL[ti];
        let (fixture, seed_case) = &corpora[ti][rng.below(corpora[ti].len())];
        let mut bytes = seed_case.clone();
        let stacked = 1 + rng.below(3);
        for _ in 0..stacked {
            match target {
                Target::Program => match mutate_program(&bytes, &mut rng) {
                    Some(b) => bytes = b,
                    None => mutate_bytes(&mut bytes, &mut rng),
                },
                _ => mutate_bytes(&mut bytes, &mut rng),
            }
        }
        // The replayable form of a program case is its spec.
        let kept_as = if target == Target::Program {
            Target::Spec
        } else {
            target
        };
        let mut head = format!("{} {fixture} {iters}\n", kept_as.name()).into_bytes();
        head.extend_from_slice(&bytes);
        let _ = std::fs::write(state, &head);
        // Self-test of the harness (`FUZZ_SELFTEST=abort|hang|panic`, with
        // `FUZZ_CRASHES_DIR` elsewhere): the 5th case misbehaves.
        if iters == 4 {
            match std::env::var("FUZZ_SELFTEST").as_deref() {
                Ok("abort") => std::process::abort(),
                Ok("hang") => std::thread::sleep(Duration::from_secs(3600)),
                Ok("panic") => panic!("fuzz self-test panic"),
                _ => {}
            }
        }
        match run_case(target, fixture, &bytes, scratch.path()) {
            Err(why) => {
                keep(kept_as, fixture, &bytes, &why);
                crashes += 1;
            }
            Ok(o) => *seen.entry(format!("{} {o:?}", target.name())).or_default() += 1,
        }
        iters += 1;
    }
    if std::env::var_os("FUZZ_VERBOSE").is_some() {
        for (k, n) in &seen {
            eprintln!("fuzz: {k}: {n}");
        }
    }
    (iters, crashes)
}

fn main() {
    apple_silicon::mil::quiet_panics();
    let secs = arg("--secs", "FUZZ_SECS", 30);
    let seed = arg("--seed", "FUZZ_SEED", 1);
    let hang = Duration::from_secs(arg("--hang-secs", "FUZZ_HANG_SECS", 20));
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--child") {
        let state = PathBuf::from(&args[args.iter().position(|a| a == "--state").unwrap() + 1]);
        let (iters, crashes) = child(seed, Instant::now() + Duration::from_secs(secs), &state);
        println!("child iterations {iters} crashes {crashes}");
        std::process::exit(if crashes > 0 { 3 } else { 0 });
    }

    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let state_dir = tempfile::tempdir().expect("state dir");
    let state = state_dir.path().join("case");
    let exe = std::env::current_exe().expect("own path");
    let (mut iters, mut crashes, mut children, mut next_seed) = (0u64, 0u64, 0u64, seed);
    while Instant::now() < end {
        let left = (end.saturating_duration_since(Instant::now()).as_millis() as u64).div_ceil(1000);
        if left == 0 {
            break;
        }
        let mut c = Command::new(&exe)
            .args(["--child", "--seed", &next_seed.to_string(), "--secs", &left.to_string()])
            .args(["--state", &state.display().to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the fuzz child");
        children += 1;
        next_seed = next_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Watch: a case that does not finish within `hang` is a hang.
        let status = loop {
            if let Some(st) = c.try_wait().expect("waiting for the child") {
                break Some(st);
            }
            let quiet = std::fs::metadata(&state)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if quiet > hang {
                let _ = c.kill();
                let _ = c.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        if let Some(mut so) = c.stdout.take() {
            use std::io::Read;
            let _ = so.read_to_string(&mut out);
        }
        let child_iters = out
            .split_whitespace()
            .skip_while(|w| *w != "iterations")
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok());
        iters += child_iters.unwrap_or(0);
        let why = match status {
            None => Some("hang".to_string()),
            Some(st) if st.code() == Some(3) => {
                crashes += out
                    .split_whitespace()
                    .skip_while(|w| *w != "crashes")
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                None
            }
            Some(st) if !st.success() => Some(format!("child died: {st}")),
            Some(_) => None,
        };
        if let Some(why) = why {
            crashes += 1;
            if let Ok(head) = std::fs::read(&state) {
                if let Some(nl) = head.iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&head[..nl]).to_string();
                    let f: Vec<&str> = line.split(' ').collect();
                    if let [t, fixture, done] = f[..] {
                        // The cases it finished before the one that killed it.
                        iters += done.parse::<u64>().unwrap_or(0);
                        if let Some(t) = Target::parse(t) {
                            keep(t, fixture, &head[nl + 1..], &why);
                        }
                    }
                }
            }
        }
    }
    let secs_run = start.elapsed().as_secs_f64();
    println!(
        "fuzz: {iters} iterations in {secs_run:.0} s ({:.0}/s) over {children} child process(es), seed {seed}: {crashes} crashes (panics, aborts, hangs)",
        iters as f64 / secs_run.max(1e-9)
    );
    let _ = std::io::stdout().flush();
    std::process::exit(if crashes > 0 { 1 } else { 0 });
}
