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

/// Environment variable that, set to `0`, keeps glibc's malloc defaults.
pub const MALLOC_TUNING_ENV: &str = "APPLE_SILICON_MALLOC_TUNING";

/// The mmap threshold set: buffers up to this size come from the heap.
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// The trim threshold set: freed memory kept before the heap is trimmed.
pub const TRIM_THRESHOLD: i32 = 64 << 20;

/// Whether the environment allows the tuning (anything but `0`, or unset).
pub fn allowed_by_env(value: Option<&str>) -> bool {
    value.map(str::trim) != Some("0")
}

/// Sets the thresholds once per process (glibc only; later calls, and
/// calls elsewhere, do nothing). Returns whether this process runs with
/// them. Costs two `mallopt` calls the first time.
pub fn tune() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        if !allowed_by_env(std::env::var(MALLOC_TUNING_ENV).ok().as_deref()) {
            return false;
        }
        set_thresholds()
    })
}

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
}
