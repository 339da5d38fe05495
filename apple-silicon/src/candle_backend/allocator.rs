//! glibc's malloc, tuned once per process for the interpreter's buffers.
//!
//! Every op's output is a fresh buffer of up to a few MB, freed a few ops
//! later. With glibc's defaults a buffer above 128 KiB is `mmap`ed and
//! `munmap`ed each time (until a large enough free raises glibc's dynamic
//! threshold), and a shrinking heap is trimmed back to the kernel: each run
//! then page-faults and zero-fills its activations again. Measured on
//! PP-OCRv4 det (1 thread, fastest of 20 runs): 17.2 ms with the defaults,
//! 13.2–13.5 ms with the thresholds below, and a lower peak RSS (24.9 vs
//! 27.7 MB).
//!
//! [`tune`] raises the mmap threshold to 32 MiB and the trim threshold to
//! 64 MiB with `mallopt`, once, the first time an engine that allows it
//! prepares a program. That is process-wide: the host's own allocations up
//! to 32 MiB come from the heap too, and up to 64 MiB of freed memory stays
//! with the process. [`crate::CandleEngine::with_allocator_tuning`] turns it
//! off, and so does `APPLE_SILICON_MALLOC_TUNING=0`. Elsewhere (musl, macOS,
//! Windows) it does nothing.
//!
//! With the tuning in force, [`release_free`] also hands freed memory back
//! to the kernel (`malloc_trim`) at the end of each program prepare: parsing
//! and folding leave ~2 MiB of garbage in the heaps of the calling thread
//! and the build's worker, which the raised trim threshold would otherwise
//! keep for good. Measured at 1 thread, peak RSS after prepare and 4 runs:
//! MiniLM-L6 int8 37–39 → 35–36 MiB, MobileNetV2 fp32 32 → 30 MiB.

/// Environment variable that, set to `0`, keeps glibc's malloc defaults.
pub const MALLOC_TUNING_ENV: &str = "APPLE_SILICON_MALLOC_TUNING";

/// The mmap threshold set: buffers up to this size come from the heap.
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// The trim threshold set: freed memory kept before the heap is trimmed.
pub const TRIM_THRESHOLD: i32 = 64 << 20;

/// Whether this process runs with the thresholds (set by the first [`tune`]).
static TUNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether the environment allows the tuning (anything but `0`, or unset).
pub fn allowed_by_env(value: Option<&str>) -> bool {
    value.map(str::trim) != Some("0")
}

/// Sets the thresholds once per process (glibc only; later calls, and
/// calls elsewhere, do nothing). Returns whether this process runs with
/// them. Costs two `mallopt` calls the first time.
pub fn tune() -> bool {
    *TUNED.get_or_init(|| {
        if !allowed_by_env(std::env::var(MALLOC_TUNING_ENV).ok().as_deref()) {
            return false;
        }
        set_thresholds()
    })
}

/// Returns the process's freed heap memory to the kernel if [`tune`] set the
/// thresholds (glibc's `malloc_trim(0)`, over every arena); otherwise does
/// nothing. Costs 0.3–0.5 ms on the heaps of one prepared model; the memory
/// given back is page-faulted in again only if it is reused.
pub fn release_free() {
    if TUNED.get() == Some(&true) {
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only returns free pages of glibc's heaps to the
    // kernel; it is safe to call at any time from any thread.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> bool {
    // SAFETY: mallopt only changes glibc's allocation parameters; it is
    // safe to call at any time from any thread.
    let a = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    let b = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) };
    // mallopt returns 1 on success.
    a == 1 && b == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_zero_turns_the_tuning_off() {
        assert!(allowed_by_env(None));
        assert!(allowed_by_env(Some("1")));
        assert!(!allowed_by_env(Some("0")));
        assert!(!allowed_by_env(Some(" 0 ")));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_thresholds() {
        // The values are in mallopt's range: it returns 1 for both (and
        // tune() reports it, unless the environment turned it off).
        assert!(set_thresholds());
        let env_on = allowed_by_env(std::env::var(MALLOC_TUNING_ENV).ok().as_deref());
        assert_eq!(tune(), env_on);
    }

    /// RSS of this process in kB.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn rss_kb() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn release_free_gives_freed_heap_memory_back() {
        if !tune() {
            eprintln!("{MALLOC_TUNING_ENV}=0: the tuning and its release are off; nothing to check");
            return;
        }
        // 64 MiB in 256 KiB blocks (heap memory under the tuned thresholds);
        // every other one is freed, so that the free ones sit in the heap's
        // bins between live ones, where the raised trim threshold keeps them.
        let mut blocks: Vec<Option<Vec<u8>>> = (0..256).map(|i| Some(vec![i as u8 | 1; 256 << 10])).collect();
        for b in blocks.iter_mut().step_by(2) {
            *b = None;
        }
        let before = rss_kb();
        release_free();
        let after = rss_kb();
        assert!(
            after + 16 * 1024 < before,
            "expected at least 16 MiB of the 32 MiB freed to go back; RSS went from {before} to {after} kB"
        );
        assert!(blocks.iter().flatten().all(|b| b[1000] & 1 == 1));
    }
}
