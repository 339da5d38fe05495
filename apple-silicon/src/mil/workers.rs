//! Where the interpreter's work runs, and how its panics are contained.
//!
//! Plan building and running happen inside a panic barrier ([`barrier`]) on
//! the interpreter's own rayon pool: the caller's thread hands the work over
//! and waits. Kernels that parallelise (candle's matmul and convolutions, our
//! depthwise kernel, large elementwise ops in `par_elementwise.rs`) then fan
//! out on that pool's threads, not on the application's global rayon pool
//! (nor on candle's own spinning elementwise pool). Two reasons:
//! - a panic on one of those threads is library code failing: rayon carries
//!   it to the barrier, which reports it as an error, and the panic hook
//!   ([`quiet_panics`]) knows to stay silent on these threads instead of
//!   printing a backtrace the caller already got as a value;
//! - the application's own rayon work and ours do not queue behind each
//!   other.
//!
//! The pool has rayon's default size (`RAYON_NUM_THREADS`, else one thread
//! per core), is created on first use, and lives for the process. If it
//! cannot be created, work runs on the caller's thread as before.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

thread_local! {
    /// Library panic barriers this thread is inside (see [`quiet_panics`]).
    static IN_BARRIER: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread belongs to the interpreter's pool, where only
    /// library code runs.
    static POOL_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("apple-silicon-mil-{i}"))
            .start_handler(|_| POOL_THREAD.with(|p| p.set(true)))
            .build()
            .ok()
    })
    .as_ref()
}

/// How caught panics stay quiet. Rust's panic hook is process-wide and
/// prints to stderr before unwinding starts, so `catch_unwind` alone would
/// still print every caught panic. Swapping the hook for the span of a call
/// would race with other threads (one thread's restore can drop another's
/// hook, or silence a panic the application wants to see). So, once per
/// process, this installs a hook that wraps the one in force and stays
/// silent only for a panic raised on a thread that is inside one of this
/// library's barriers (a per-thread counter) or is one of the interpreter's
/// pool threads (whose panics rayon carries to a barrier); every other panic
/// goes to the previous hook, unchanged. An application that sets its own
/// hook later replaces this one, and then sees our caught panics too (still
/// caught).
pub fn quiet_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = IN_BARRIER.with(|b| b.get()) > 0 || POOL_THREAD.with(|p| p.get());
            if !ours {
                prev(info);
            }
        }));
    });
}

/// Runs `f` on the interpreter's pool, catching a panic (there or on any
/// thread it fans out to) as its message, without printing it. Costs one
/// hand-over to a pool thread and back (microseconds).
pub(crate) fn barrier<R: Send>(f: impl FnOnce() -> R + Send) -> std::result::Result<R, String> {
    quiet_panics();
    let guarded = || {
        IN_BARRIER.with(|b| b.set(b.get() + 1));
        let r = catch_unwind(AssertUnwindSafe(f));
        IN_BARRIER.with(|b| b.set(b.get() - 1));
        r.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())
        })
    };
    match pool() {
        Some(p) => p.install(guarded),
        None => guarded(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn caught_panics_are_not_printed_and_others_still_are() {
        // In a child process (the hook is process-wide): this same test
        // binary, running `quiet_panic_child` with output not captured.
        if std::env::var_os("MIL_QUIET_PANIC_CHILD").is_some() {
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "mil::workers::tests::quiet_panic_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MIL_QUIET_PANIC_CHILD", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{err}");
        assert!(stdout.contains("1 passed"), "the child ran: {stdout}");
        assert!(
            !err.contains("caught in a barrier"),
            "a caught panic was printed: {err}"
        );
        assert!(
            !err.contains("caught on a pool thread"),
            "a panic on a kernel's worker thread was printed: {err}"
        );
        assert!(
            err.contains("outside any barrier"),
            "other panics must still print: {err}"
        );
    }

    #[test]
    fn quiet_panic_child() {
        if std::env::var_os("MIL_QUIET_PANIC_CHILD").is_none() {
            return;
        }
        assert!(barrier(|| panic!("caught in a barrier")).is_err());
        // A kernel fanning out: the panic happens on another pool thread.
        let r = barrier(|| {
            (0..64usize).into_par_iter().for_each(|i| {
                if i == 61 {
                    panic!("caught on a pool thread");
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            })
        });
        assert_eq!(r.unwrap_err(), "caught on a pool thread");
        // A panic outside the library's barriers goes to the previous hook.
        assert!(catch_unwind(|| panic!("outside any barrier")).is_err());
    }

    #[test]
    fn work_runs_on_the_interpreter_pool() {
        let name = barrier(|| std::thread::current().name().map(str::to_string)).unwrap();
        assert!(name.unwrap_or_default().starts_with("apple-silicon-mil-"));
        let inner = barrier(|| {
            (0..8usize)
                .into_par_iter()
                .map(|_| POOL_THREAD.with(|p| p.get()))
                .all(|b| b)
        });
        assert!(inner.unwrap(), "a kernel's parallel work stays on the pool");
    }
}
