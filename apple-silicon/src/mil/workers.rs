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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

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

/// Queues `task` on the interpreter's pool and returns at once, or hands
/// it back when the pool could not be made: the lender of the Candle
/// engine's deadline runner ([`crate::deadline::DeadlineRunner`]), whose
/// workers then run programs on the pool thread that starts them. Costs a
/// boxed task and rayon's injection (waking a pool thread if all sleep).
pub(crate) fn lend(task: crate::deadline::Job) -> std::result::Result<(), crate::deadline::Job> {
    match pool() {
        Some(p) => {
            p.spawn(task);
            Ok(())
        }
        None => Err(task),
    }
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

/// How long a pool thread kept warm for a run ([`Warm`]) looks for work
/// before it goes back to rayon's sleep: longer than most gaps between two
/// parallel ops (a small op run on one thread), short enough that a run in
/// a long serial stretch soon gives the core back.
const WARM_IDLE: Duration = Duration::from_micros(300);

/// The other pool threads, kept looking for work while a run lasts.
///
/// Why: rayon puts an idle thread to sleep within microseconds, and waking
/// it costs the next parallel op ~40 µs on these machines (a futex wake and
/// a virtual CPU's wake-up) — once per op, and a network runs hundreds. So
/// while a run lasts, [`Warm::poke`] (before each step) makes sure each
/// other pool thread runs a task that steals the run's parallel work as
/// soon as it is queued ([`rayon::yield_now`]) and spins between, until
/// the run ends or it finds nothing for [`WARM_IDLE`]. Costs the spinning
/// core's time between ops while a run lasts (as ONNX Runtime's spinning
/// pool does), nothing on a pool of one thread.
pub(crate) struct Warm {
    state: Option<Arc<WarmState>>,
}

struct WarmState {
    /// Set when the run ends: the warm tasks return.
    done: AtomicBool,
    /// Warm tasks started and not yet returned.
    alive: AtomicUsize,
    /// The pool thread the run is on, where a warm task must not run: it
    /// would spin on top of the run it waits for.
    home: usize,
    /// The other pool threads.
    others: usize,
    /// Warm tasks that spun (ran anywhere but `home`): what the tests see.
    #[cfg(test)]
    spun: AtomicUsize,
}

impl Warm {
    /// Keeps the pool warm for a run on the current pool thread; nothing
    /// when the current thread is not a pool thread or the pool has one.
    pub(crate) fn start() -> Warm {
        if POOL_THREAD.with(|p| p.get()) {
            Warm::on_this_pool()
        } else {
            // Not the interpreter's pool (it could not be created): the
            // application's threads are not ours to keep busy.
            Warm { state: None }
        }
    }

    /// [`Warm::start`] on whichever rayon pool the current thread is in.
    fn on_this_pool() -> Warm {
        let threads = rayon::current_num_threads();
        let state = match rayon::current_thread_index() {
            Some(home) if threads > 1 => Some(Arc::new(WarmState {
                done: AtomicBool::new(false),
                alive: AtomicUsize::new(0),
                home,
                others: threads - 1,
                #[cfg(test)]
                spun: AtomicUsize::new(0),
            })),
            _ => None,
        };
        let warm = Warm { state };
        warm.poke();
        warm
    }

    /// Starts warm tasks for the other pool threads that have none (they
    /// stopped after [`WARM_IDLE`] without work). One atomic load when
    /// they are all running.
    pub(crate) fn poke(&self) {
        let Some(st) = &self.state else { return };
        let alive = st.alive.load(Ordering::Acquire);
        for _ in alive..st.others {
            st.alive.fetch_add(1, Ordering::AcqRel);
            let st = Arc::clone(st);
            rayon::spawn(move || {
                if rayon::current_thread_index() != Some(st.home) {
                    #[cfg(test)]
                    st.spun.fetch_add(1, Ordering::AcqRel);
                    spin_for_work(&st.done);
                }
                st.alive.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        if let Some(st) = &self.state {
            st.done.store(true, Ordering::Release);
        }
    }
}

/// Runs the pool's queued work as it comes until `done`, or until none has
/// come for [`WARM_IDLE`].
fn spin_for_work(done: &AtomicBool) {
    let mut idle_since = Instant::now();
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = Instant::now(),
            Some(rayon::Yield::Idle) => {
                if idle_since.elapsed() >= WARM_IDLE {
                    return;
                }
                // Politely: a thread of another process on this core runs first.
                std::thread::yield_now();
            }
            None => return,
        }
    }
}

/// `f(0)`, …, `f(n − 1)` on the pool: `f(0)` on this thread, the others
/// queued for the pool's other threads (or run here if none takes them).
/// Costs a queued task per `i` past the first.
///
/// Why not `rayon::join` or a parallel iterator: a rayon thread waiting for
/// a task another thread took sleeps after a few microseconds, and waking
/// it when that task ends costs ~30 µs on these machines — as much as a
/// small op. Here the waiting thread runs its own queued tasks, then yields
/// its core until the others are done; it never sleeps.
pub(crate) fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || rayon::current_num_threads() <= 1 || rayon::current_thread_index().is_none() {
        (0..n).for_each(f);
        return;
    }
    let left = AtomicUsize::new(n - 1);
    /// Counts its task done even when the task panics (the scope then
    /// carries the panic on), so the wait below always ends.
    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let (f, left_ref) = (&f, &left);
    rayon::in_place_scope(|s| {
        // Last first: this thread pops its queue from the end, so it runs
        // them in order after `f(0)`, while thieves take from the front.
        for i in (1..n).rev() {
            s.spawn(move |_| {
                let _done = Done(left_ref);
                f(i);
            });
        }
        f(0);
        while left.load(Ordering::Acquire) > 0 {
            if rayon::yield_local() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
    });
}

/// `f(i, part)` for each `part` of `data` cut in `per` elements (the last
/// may be shorter), on the pool as [`par_for`]: each part is its task's
/// alone. Costs `par_for`'s queued tasks plus a lock per part, taken once.
pub(crate) fn par_parts<T: Send>(data: &mut [T], per: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    // A lock hands each task its part through the shared closure; no two
    // tasks share an index, so none ever waits on one.
    let parts: Vec<std::sync::Mutex<&mut [T]>> = data.chunks_mut(per.max(1)).map(std::sync::Mutex::new).collect();
    par_for(parts.len(), |i| {
        let mut part = parts[i].lock().unwrap_or_else(|p| p.into_inner());
        f(i, &mut part);
    });
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
    #[test]
    fn par_for_runs_every_index_once_on_any_pool_and_nested() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                for n in [0usize, 1, 2, 5, 64] {
                    let hits: Vec<AtomicUsize> = (0..n * 3).map(|_| AtomicUsize::new(0)).collect();
                    par_for(n, |i| {
                        // Nested: each task fans out again.
                        par_for(3, |j| {
                            hits[i * 3 + j].fetch_add(1, Ordering::Relaxed);
                        })
                    });
                    assert!(
                        hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                        "{threads} threads, {n} tasks"
                    );
                }
            });
        }
        // Off any pool: in turn, on this thread.
        let order = std::sync::Mutex::new(Vec::new());
        par_for(4, |i| order.lock().unwrap().push(i));
        assert_eq!(order.into_inner().unwrap(), [0, 1, 2, 3]);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_once_all_tasks_end() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let ran = AtomicUsize::new(0);
        let r = pool.install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                par_for(6, |i| {
                    ran.fetch_add(1, Ordering::Relaxed);
                    if i == 4 {
                        panic!("task 4");
                    }
                })
            }))
        });
        assert!(r.is_err(), "the panic is carried to the caller");
        assert_eq!(ran.load(Ordering::Relaxed), 6, "the other tasks still ran");
    }

    #[test]
    fn warm_tasks_are_one_per_other_thread_never_on_the_runs_own_and_end_with_it() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        // The other thread blocked: the warm task stays in this thread's
        // queue, and this thread running it must come straight back.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        pool.spawn(move || blocked.recv().unwrap());
        let state = pool.install(|| {
            let warm = Warm::on_this_pool();
            let state = Arc::clone(warm.state.as_ref().expect("a pool of two is kept warm"));
            for _ in 0..100 {
                warm.poke();
            }
            assert_eq!(state.alive.load(Ordering::Acquire), 1, "one warm task per other thread");
            assert_eq!(rayon::yield_local(), Some(rayon::Yield::Executed));
            assert_eq!(
                state.alive.load(Ordering::Acquire),
                0,
                "it returned on the run's thread"
            );
            assert_eq!(state.spun.load(Ordering::Acquire), 0, "without spinning there");
            // Poked again, it goes to the other thread once that is free
            // (this thread does not run its queue meanwhile), and spins there.
            warm.poke();
            release.send(()).unwrap();
            let t = Instant::now();
            while state.spun.load(Ordering::Acquire) == 0 {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "the other thread never ran its warm task"
                );
                std::thread::yield_now();
            }
            drop(warm);
            state
        });
        let t = Instant::now();
        while state.alive.load(Ordering::Acquire) > 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "a warm task outlived its run");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Outside the interpreter's pool, and on a pool of one: nothing.
        assert!(Warm::start().state.is_none());
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert!(one.install(|| Warm::on_this_pool().state.is_none()));
    }

    #[test]
    fn par_parts_hands_each_task_its_own_part_on_any_pool() {
        // 103 elements in parts of 10: ten full parts and a last of 3; a
        // part size of 0 counts as 1.
        for (len, per) in [(103usize, 10usize), (5, 0), (7, 100), (0, 4)] {
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut data = vec![(usize::MAX, 0usize); len];
                pool.install(|| {
                    par_parts(&mut data, per, |i, part| {
                        let n = part.len();
                        for (j, v) in part.iter_mut().enumerate() {
                            *v = (i, j + n * 1000);
                        }
                    })
                });
                let per = per.max(1);
                for (x, &(i, tag)) in data.iter().enumerate() {
                    let want_len = per.min(len - x / per * per);
                    assert_eq!(
                        (i, tag),
                        (x / per, x % per + want_len * 1000),
                        "len {len} per {per} on {threads}: element {x}"
                    );
                }
            }
        }
    }
}
