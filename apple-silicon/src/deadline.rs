//! Deadlines everywhere: run work off the caller's thread and stop waiting
//! for it when its time is up.
//!
//! Core ML offers no way to abort a running prediction, and any engine can
//! have a bug that makes it spin. So the only way to bound a call is to run it
//! on another thread and stop *waiting*. This module does that with bounded
//! resources:
//!
//! - [`DeadlineRunner`] — a small pool of worker threads. [`DeadlineRunner::run`]
//!   queues a closure (which owns everything it touches: `FnOnce() ->
//!   Result<T> + Send + 'static`), waits for it with a deadline, and returns
//!   [`Error::Timeout`] when the deadline passes. Work still queued at the
//!   deadline is cancelled and never runs; work already running is
//!   *abandoned*: its worker finishes it in the background and its late
//!   result is dropped. Panics inside the closure come back as
//!   [`Error::Internal`].
//! - Cancellation. [`DeadlineRunner::run_cancellable`] hands the work a
//!   [`CancelFlag`] that is set when its caller times out; work that checks
//!   it (the Candle interpreter does, between ops) stops early and frees its
//!   worker instead of running to the end for nobody.
//!   [`DeadlineRunner::run_replying`] also hands it a [`Reply`], which work
//!   that finishes on another pool's thread (the interpreter's) sends its
//!   result through from there, so the caller wakes without waiting for
//!   the worker to wake first.
//! - Resource bounds. At most `min(max_workers, max_abandoned)` workers
//!   exist (idle threads exit after `keep_alive`; a runner may instead
//!   borrow its workers from a pool, `lending_from`, as the Candle engine
//!   does from the interpreter's); work beyond that waits in the
//!   queue, inside its own deadline. Abandoned workers are counted: once
//!   `max_abandoned` of them are still stuck, the runner refuses new work
//!   with [`Error::Unavailable`] (naming how many are stuck) after waiting
//!   at most [`DeadlineRunner::ADMISSION_GRACE`] for one to finish, so a
//!   hanging engine cannot pile up threads or memory. As each stuck call
//!   finally returns, the runner accepts work again. The cap is hard: only a
//!   running call can be abandoned and each runs on its own worker, so
//!   capping the workers at `max_abandoned` caps the stuck ones, whatever
//!   number of callers time out at once (checking the count at admission
//!   alone let concurrent callers pass it together and overshoot).
//! - [`run_with_deadline`] — the same on a process-wide runner.
//! - [`GuardedEngine`] — wraps any [`InferenceEngine`] so that its `prepare`
//!   and `infer` run on a runner: a caller gets an answer or `Timeout` by the
//!   deadline even from an engine that ignores its timeout.
//! - [`infer_async`], [`prepare_async`], [`infer_batch_async`],
//!   [`infer_with_state_async`] — the async forms for Tokio: the call runs
//!   in `spawn_blocking` (itself bounded by a runner) and the future is
//!   bounded by `tokio::time::timeout`, so an async task is never blocked.
//! - [`Deadline`] — a copyable point in time that long-running work (an
//!   interpreter between ops) checks to give up early.
//!
//! Cost: one job is a boxed closure, a one-slot channel and a mutex/condvar
//! hand-off to a warm worker, about 5–30 µs, plus a thread spawn (about
//! 20–50 µs) when no idle worker is free. Work that hands on to a pool
//! costs one more wake each way, unless it answers through a [`Reply`]
//! from the pool (then one: the way back is the pool's own). Workers lent by
//! that pool save the other: the job starts with the pool's own wake.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::inference::{
    CapabilityReport, InferenceEngine, IoSchema, ModelArtifact, ModelState, PrepareOptions, PreparedModel,
};
use crate::tensor::TensorMap;

/// A point in time by which work must be done. `Copy`: hand it to the work
/// itself so it can stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    start: Instant,
    timeout: Duration,
}

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline {
            start: Instant::now(),
            timeout,
        }
    }

    /// The full timeout this deadline was made with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Time since the deadline was made.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Time left, zero once expired.
    pub fn remaining(&self) -> Duration {
        self.timeout.saturating_sub(self.start.elapsed())
    }

    /// Whether the time is up.
    pub fn is_expired(&self) -> bool {
        self.start.elapsed() >= self.timeout
    }

    /// The [`Error::Timeout`] for `operation` under this deadline.
    pub fn timeout_error(&self, operation: &str) -> Error {
        Error::Timeout {
            operation: operation.to_string(),
            after: self.timeout,
        }
    }

    /// `Ok` while time is left, else the timeout error for `operation`. Costs
    /// one clock read.
    pub fn check(&self, operation: &str) -> Result<()> {
        if self.is_expired() {
            Err(self.timeout_error(operation))
        } else {
            Ok(())
        }
    }
}

/// A flag a caller sets to make a running plan stop at its next check
/// (between ops, or at a coarse grain inside long kernels). Cloning shares
/// the flag. A flag may also carry a [`Deadline`], which
/// [`check_deadline`](Self::check_deadline) turns into a set flag once it
/// passes, so work stops on time even when the thread waiting for it is
/// descheduled and late to call [`cancel`](Self::cancel).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag {
    flag: Arc<AtomicBool>,
    deadline: Option<Deadline>,
}

impl CancelFlag {
    /// A flag not yet set, with no deadline.
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }

    /// A flag that [`check_deadline`](Self::check_deadline) also sets once
    /// `deadline` has passed.
    pub fn with_deadline(deadline: Deadline) -> CancelFlag {
        CancelFlag {
            flag: Arc::default(),
            deadline: Some(deadline),
        }
    }

    /// Asks the work to stop.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether the flag is set: [`cancel`](Self::cancel) was called, or a
    /// [`check_deadline`](Self::check_deadline) found the deadline passed.
    /// One atomic load and no clock read: cheap enough for checks inside
    /// kernels (once per channel plane, say).
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Sets the flag if its deadline has passed, then returns
    /// [`is_cancelled`](Self::is_cancelled). One clock read when the flag
    /// has a deadline (~25 ns): for coarse points such as between ops, where
    /// it bounds how late work notices its deadline to one op.
    pub fn check_deadline(&self) -> bool {
        if self.is_cancelled() {
            return true;
        }
        if self.deadline.is_some_and(|d| d.is_expired()) {
            self.cancel();
            return true;
        }
        false
    }
}

/// Where work run by [`DeadlineRunner::run_replying`] sends its result.
/// `Sync`: the work may lend it to the threads it fans out to. The first
/// [`send`](Self::send) counts; later ones are dropped.
pub struct Reply<T> {
    tx: mpsc::SyncSender<Result<T>>,
    sent: AtomicBool,
}

impl<T> Reply<T> {
    /// Hands `result` to the waiting caller, if this is the first result
    /// sent and the caller is still waiting (else it is dropped). Never
    /// blocks: one channel send, which wakes the caller.
    pub fn send(&self, result: Result<T>) {
        if !self.sent.swap(true, Ordering::SeqCst) {
            // Capacity 1 and a single send: never full. A dropped receiver
            // (the caller gave up) is fine.
            let _ = self.tx.try_send(result);
        }
    }
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("sent", &self.sent.load(Ordering::Relaxed))
            .finish()
    }
}

// Job states.
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const CANCELLED: u8 = 3;
const ABANDONED: u8 = 4;

/// A unit of work a runner queues: boxed, run once, on any thread.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Starts a task on a thread pool that lends its threads to a runner (see
/// [`DeadlineRunner::lending_from`]): queues it and returns at once, or
/// hands it back when there is no pool. Must never run it inline.
pub(crate) type Lender = fn(Job) -> std::result::Result<(), Job>;

struct State {
    queue: VecDeque<Job>,
    workers: usize,
    idle: usize,
    spawned_total: u64,
    lender: Option<Lender>,
}

struct Shared {
    name: String,
    max_workers: AtomicUsize,
    max_abandoned: AtomicUsize,
    keep_alive_ms: AtomicU64,
    state: Mutex<State>,
    work_ready: Condvar,
    /// Signalled when an abandoned call finishes (a stuck slot frees).
    slot_freed: Condvar,
    abandoned: AtomicUsize,
    completed: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
    finished_late: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Jobs run outside the lock and their panics are caught, so a poisoned
    // lock can only come from a bug here; the state stays consistent anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters of a [`DeadlineRunner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RunnerStats {
    /// Workers alive now: threads, or tasks a pool lent (see
    /// `DeadlineRunner::lending_from`).
    pub workers: usize,
    /// Of those, waiting for work.
    pub idle: usize,
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// Workers still running a call whose caller timed out.
    pub abandoned: usize,
    /// Threads spawned since the runner was made.
    pub spawned_total: u64,
    /// Calls answered in time (successfully or with the closure's error).
    pub completed: u64,
    /// Calls that returned `Timeout`.
    pub timed_out: u64,
    /// Of those, calls cancelled before they started.
    pub cancelled_before_start: u64,
    /// Calls refused because too many workers were stuck.
    pub refused: u64,
    /// Abandoned calls that have since finished (their results dropped).
    pub finished_late: u64,
}

/// A bounded pool of worker threads that runs closures under deadlines. See
/// the [module docs](self). Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct DeadlineRunner {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DeadlineRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineRunner")
            .field("name", &self.shared.name)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DeadlineRunner {
    /// Default cap on worker threads.
    pub const DEFAULT_MAX_WORKERS: usize = 64;
    /// Default cap on stuck (abandoned) workers before new work is refused.
    pub const DEFAULT_MAX_ABANDONED: usize = 16;
    /// How long a call waits at admission for a stuck worker to finish
    /// (cancelled work stops within one step) before it is refused.
    pub const ADMISSION_GRACE: Duration = Duration::from_millis(10);
    /// Default time an idle worker waits for work before it exits.
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

    /// An empty pool named `name` (used in thread names and errors). Spawns
    /// no thread until the first job.
    pub fn new(name: impl Into<String>) -> DeadlineRunner {
        DeadlineRunner {
            shared: Arc::new(Shared {
                name: name.into(),
                max_workers: AtomicUsize::new(Self::DEFAULT_MAX_WORKERS),
                max_abandoned: AtomicUsize::new(Self::DEFAULT_MAX_ABANDONED),
                keep_alive_ms: AtomicU64::new(Self::DEFAULT_KEEP_ALIVE.as_millis() as u64),
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    workers: 0,
                    idle: 0,
                    spawned_total: 0,
                    lender: None,
                }),
                work_ready: Condvar::new(),
                slot_freed: Condvar::new(),
                abandoned: AtomicUsize::new(0),
                completed: AtomicU64::new(0),
                timed_out: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                finished_late: AtomicU64::new(0),
            }),
        }
    }

    /// The process-wide runner used by [`run_with_deadline`] and
    /// [`infer_async`], with default limits.
    pub fn global() -> &'static DeadlineRunner {
        static GLOBAL: OnceLock<DeadlineRunner> = OnceLock::new();
        GLOBAL.get_or_init(|| DeadlineRunner::new("apple-silicon-deadline"))
    }

    /// Caps the number of worker threads (at least 1). Work beyond it queues.
    pub fn with_max_workers(self, n: usize) -> Self {
        self.shared.max_workers.store(n.max(1), Ordering::Relaxed);
        self
    }

    /// Caps the number of stuck workers (at least 1): at this many, new work
    /// is refused with `Unavailable` until one finishes. It also caps the
    /// worker threads (any running call may be abandoned), which is what
    /// makes it a hard bound.
    pub fn with_max_abandoned(self, n: usize) -> Self {
        self.shared.max_abandoned.store(n.max(1), Ordering::Relaxed);
        self
    }

    /// How long an idle worker waits for work before its thread exits.
    pub fn with_keep_alive(self, d: Duration) -> Self {
        self.shared.keep_alive_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
            Ordering::Relaxed,
        );
        self
    }

    /// Makes the workers tasks on `lender`'s pool (they take queued jobs
    /// until there are none, then give the pool thread back) instead of
    /// threads of their own; a thread is spawned only when `lender` has no
    /// pool. Caps and counts are unchanged: a lent worker counts as a worker
    /// from the moment it is queued until it returns, and runs one job at a
    /// time. Why: work that runs on that pool anyway (the interpreter's
    /// programs) then starts with one thread wake, not two.
    pub(crate) fn lending_from(self, lender: Lender) -> Self {
        lock(&self.shared.state).lender = Some(lender);
        self
    }

    /// The runner's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Current counters. Takes the pool lock briefly.
    pub fn stats(&self) -> RunnerStats {
        let s = &self.shared;
        let st = lock(&s.state);
        RunnerStats {
            workers: st.workers,
            idle: st.idle,
            queued: st.queue.len(),
            abandoned: s.abandoned.load(Ordering::SeqCst),
            spawned_total: st.spawned_total,
            completed: s.completed.load(Ordering::Relaxed),
            timed_out: s.timed_out.load(Ordering::Relaxed),
            cancelled_before_start: s.cancelled.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            finished_late: s.finished_late.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on a worker and waits at most `timeout` for its result.
    ///
    /// Returns `f`'s result if it finishes in time; [`Error::Timeout`] naming
    /// `operation` if not (the work is cancelled if it had not started, else
    /// abandoned and its result dropped when it ends); [`Error::Unavailable`]
    /// when `max_abandoned` workers are stuck and none finishes within
    /// [`Self::ADMISSION_GRACE`] (or the timeout, if shorter), or no thread
    /// can be spawned; [`Error::Internal`] if `f` panics. A zero timeout returns
    /// `Timeout` without running `f`.
    pub fn run<T, F>(&self, operation: &str, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        self.run_cancellable(operation, timeout, move |_| f())
    }

    /// Like [`DeadlineRunner::run`], handing `f` a [`CancelFlag`] that is
    /// set the moment its caller gives up, and that
    /// [`CancelFlag::check_deadline`] finds set once the timeout has passed,
    /// even if the caller is late to notice. Work that checks
    /// the flag and returns early frees its worker at once, instead of
    /// holding it (and counting as stuck) until it would have finished.
    pub fn run_cancellable<T, F>(&self, operation: &str, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&CancelFlag) -> Result<T> + Send + 'static,
    {
        self.run_replying(operation, timeout, move |cancel, reply| reply.send(f(cancel)))
    }

    /// Like [`DeadlineRunner::run_cancellable`], but `f` hands its result
    /// to the [`Reply`] instead of returning it, from any thread it has
    /// borrowed the reply to: work that finishes on another pool (the
    /// interpreter's) answers the caller from there, one thread hand-off
    /// sooner than through the worker. A reply left unsent when `f`
    /// returns is [`Error::Internal`]; a panic in `f` is reported as by
    /// `run_cancellable`. Deadlines, cancellation and the stuck-worker count
    /// are those of `run_cancellable` (a worker counts as busy until `f`
    /// returns, whenever it replied).
    pub fn run_replying<T, F>(&self, operation: &str, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&CancelFlag, &Reply<T>) + Send + 'static,
    {
        let deadline = Deadline::after(timeout);
        let s = &self.shared;
        let max_stuck = s.max_abandoned.load(Ordering::Relaxed);
        let mut stuck = s.abandoned.load(Ordering::SeqCst);
        if stuck >= max_stuck {
            // Cancelled work frees its worker within one step: wait briefly
            // for that rather than shed the call; a truly hung engine is
            // still refused promptly.
            let grace = timeout.min(Self::ADMISSION_GRACE);
            let mut st = lock(&s.state);
            while s.abandoned.load(Ordering::SeqCst) >= max_stuck && deadline.elapsed() < grace {
                let left = grace.saturating_sub(deadline.elapsed());
                st = s.slot_freed.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
            }
            drop(st);
            stuck = s.abandoned.load(Ordering::SeqCst);
        }
        if stuck >= max_stuck {
            s.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Unavailable {
                engine: format!("deadline runner `{}`", s.name),
                reason: format!(
                    "{stuck} workers are still running calls that timed out (limit {max_stuck}); \
                     refusing `{operation}` until they finish"
                ),
            });
        }
        if timeout.is_zero() {
            s.timed_out.fetch_add(1, Ordering::Relaxed);
            s.cancelled.fetch_add(1, Ordering::Relaxed);
            return Err(deadline.timeout_error(operation));
        }

        let (tx, rx) = mpsc::sync_channel::<Result<T>>(1);
        let status = Arc::new(AtomicU8::new(QUEUED));
        let job_status = status.clone();
        let job_shared = s.clone();
        let cancel = CancelFlag::with_deadline(deadline);
        let job_cancel = cancel.clone();
        let op = operation.to_string();
        let job: Job = Box::new(move || {
            if job_status
                .compare_exchange(QUEUED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return; // cancelled while queued
            }
            let reply = Reply {
                tx,
                sent: AtomicBool::new(false),
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| f(&job_cancel, &reply)));
            if !reply.sent.load(Ordering::SeqCst) {
                reply.send(Err(Error::internal(match outcome {
                    Err(payload) => {
                        let msg = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a non-string panic payload".to_string());
                        format!("`{op}` panicked on a deadline worker: {msg}")
                    }
                    Ok(()) => format!("`{op}` returned without a result"),
                })));
            }
            // Under the pool lock, as the caller's abandon: the count never
            // moves without the state, so it never passes its cap.
            let _st = lock(&job_shared.state);
            if job_status
                .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                job_shared.abandoned.fetch_sub(1, Ordering::SeqCst);
                job_shared.finished_late.fetch_add(1, Ordering::Relaxed);
                job_shared.slot_freed.notify_all();
            }
        });
        self.submit(job)?;

        match rx.recv_timeout(deadline.remaining()) {
            Ok(result) => {
                s.completed.fetch_add(1, Ordering::Relaxed);
                result
            }
            Err(RecvTimeoutError::Timeout) => {
                if status
                    .compare_exchange(QUEUED, CANCELLED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    s.timed_out.fetch_add(1, Ordering::Relaxed);
                    s.cancelled.fetch_add(1, Ordering::Relaxed);
                    return Err(deadline.timeout_error(operation));
                }
                // Mark and count together under the pool lock (the worker
                // decrements under it too), so the count is exact.
                let abandoned = {
                    let _st = lock(&s.state);
                    let ok = status
                        .compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                    if ok {
                        s.abandoned.fetch_add(1, Ordering::SeqCst);
                    }
                    ok
                };
                if abandoned {
                    // Work that checks the flag stops at its next check.
                    cancel.cancel();
                    s.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        target: "apple_silicon::deadline",
                        runner = %s.name,
                        operation,
                        timeout_ms = timeout.as_millis() as u64,
                        "call timed out; its worker is abandoned until the call returns"
                    );
                    return Err(deadline.timeout_error(operation));
                }
                // It finished in the instant between the timeout and now.
                match rx.try_recv() {
                    Ok(result) => {
                        s.completed.fetch_add(1, Ordering::Relaxed);
                        result
                    }
                    Err(_) => Err(Error::internal(format!(
                        "`{operation}` finished but its result was lost"
                    ))),
                }
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::internal(format!(
                "`{operation}` was dropped by the deadline runner without a result"
            ))),
        }
    }

    fn submit(&self, job: Job) -> Result<()> {
        let s = &self.shared;
        let mut st = lock(&s.state);
        st.queue.push_back(job);
        // Any running call may be abandoned: capping the workers at
        // `max_abandoned` is what makes that cap hard.
        let cap = s
            .max_workers
            .load(Ordering::Relaxed)
            .min(s.max_abandoned.load(Ordering::Relaxed));
        if st.idle < st.queue.len() && st.workers < cap {
            if let Some(lend) = st.lender {
                let shared = s.clone();
                if lend(Box::new(move || lent_worker(shared))).is_ok() {
                    // The lock is still held: the task cannot count itself
                    // out before this counts it in.
                    st.workers += 1;
                    drop(st);
                    return Ok(());
                }
            }
            let shared = s.clone();
            let n = st.spawned_total;
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{n}", s.name))
                .spawn(move || worker_loop(shared));
            match spawned {
                Ok(_) => {
                    st.workers += 1;
                    st.spawned_total += 1;
                }
                Err(e) if st.workers == 0 => {
                    st.queue.pop_back();
                    return Err(Error::Unavailable {
                        engine: format!("deadline runner `{}`", s.name),
                        reason: format!("cannot spawn a worker thread: {e}"),
                    });
                }
                // Other workers exist: the job waits for one of them.
                Err(_) => {}
            }
        }
        // Unlocked first, so the woken worker does not block on the lock
        // this thread still holds.
        drop(st);
        s.work_ready.notify_one();
        Ok(())
    }
}

/// A worker lent by a pool: the queued jobs, then back to the pool (a
/// borrowed thread never waits idle for more).
fn lent_worker(shared: Arc<Shared>) {
    let mut st = lock(&shared.state);
    while let Some(job) = st.queue.pop_front() {
        drop(st);
        job();
        st = lock(&shared.state);
    }
    st.workers -= 1;
}

fn worker_loop(shared: Arc<Shared>) {
    let mut st = lock(&shared.state);
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            job();
            st = lock(&shared.state);
            continue;
        }
        st.idle += 1;
        let keep_alive = Duration::from_millis(shared.keep_alive_ms.load(Ordering::Relaxed));
        let (guard, waited) = shared
            .work_ready
            .wait_timeout(st, keep_alive)
            .unwrap_or_else(|p| p.into_inner());
        st = guard;
        st.idle -= 1;
        if waited.timed_out() && st.queue.is_empty() {
            st.workers -= 1;
            return;
        }
    }
}

/// Runs `f` on the process-wide [`DeadlineRunner::global`] pool and waits at
/// most `timeout`. See [`DeadlineRunner::run`] for the outcomes; the
/// operation is called `work` in errors. Use your own runner (and
/// [`DeadlineRunner::run`]) to name the operation and to keep one engine's
/// stuck calls from counting against another's.
pub fn run_with_deadline<T, F>(timeout: Duration, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    DeadlineRunner::global().run("work", timeout, f)
}

/// Runs one inference without ever blocking the async task: the call runs in
/// Tokio's blocking pool, bounded there by the global [`DeadlineRunner`]
/// (so a hung engine cannot hold a blocking-pool thread, nor delay the
/// runtime's shutdown), and the future itself is bounded by
/// `tokio::time::timeout`. Returns the engine's result or
/// [`Error::Timeout`] by `timeout` after the call.
///
/// Must be awaited inside a Tokio runtime with its timer enabled
/// (`enable_time`/`enable_all`); outside any runtime it returns
/// [`Error::Unavailable`]. Costs two thread hand-offs (about 10–60 µs) on top
/// of the inference.
pub async fn infer_async(
    engine: Arc<dyn InferenceEngine>,
    model: Arc<dyn PreparedModel>,
    inputs: TensorMap,
    timeout: Duration,
) -> Result<TensorMap> {
    infer_async_on(DeadlineRunner::global().clone(), engine, model, inputs, timeout).await
}

/// [`infer_async`] on a runner of your choice.
pub async fn infer_async_on(
    runner: DeadlineRunner,
    engine: Arc<dyn InferenceEngine>,
    model: Arc<dyn PreparedModel>,
    inputs: TensorMap,
    timeout: Duration,
) -> Result<TensorMap> {
    let operation = format!("{} inference", engine.name());
    off_runtime(runner, operation, timeout, move |left| {
        engine.infer(&*model, &inputs, left)
    })
    .await
}

/// Prepares a model without ever blocking the async task, as
/// [`infer_async`] runs an inference: the engine's `prepare` runs in Tokio's
/// blocking pool under the global [`DeadlineRunner`], and the future
/// returns its model or [`Error::Timeout`] by `opts.prepare_timeout`. A
/// prepare that finishes after that is dropped. The model comes back shared,
/// ready for [`infer_async`]. Needs a Tokio runtime with its timer (see
/// [`infer_async`]). Costs two thread hand-offs on top of the prepare.
pub async fn prepare_async(
    engine: Arc<dyn InferenceEngine>,
    artifact: ModelArtifact,
    opts: PrepareOptions,
) -> Result<Arc<dyn PreparedModel>> {
    let operation = format!("{} prepare", engine.name());
    let timeout = opts.prepare_timeout;
    off_runtime(DeadlineRunner::global().clone(), operation, timeout, move |_| {
        engine.prepare(&artifact, opts).map(Arc::from)
    })
    .await
}

/// [`InferenceEngine::infer_batch`] without blocking the async task (see
/// [`infer_async`]): one `timeout` for the whole batch.
pub async fn infer_batch_async(
    engine: Arc<dyn InferenceEngine>,
    model: Arc<dyn PreparedModel>,
    batch: Vec<TensorMap>,
    timeout: Duration,
) -> Result<Vec<TensorMap>> {
    let operation = format!("{} batch inference", engine.name());
    off_runtime(DeadlineRunner::global().clone(), operation, timeout, move |left| {
        engine.infer_batch(&*model, &batch, left)
    })
    .await
}

/// [`InferenceEngine::infer_with_state`] without blocking the async task
/// (see [`infer_async`]). The state moves into the call and comes back
/// with its result: updated if the step succeeded, unchanged if it failed;
/// if the step timed out (or never ran), what comes back is a poisoned
/// stand-in (a late step may still hold the real one), which refuses later
/// steps.
pub async fn infer_with_state_async(
    engine: Arc<dyn InferenceEngine>,
    model: Arc<dyn PreparedModel>,
    mut state: ModelState,
    inputs: TensorMap,
    timeout: Duration,
) -> (ModelState, Result<TensorMap>) {
    let operation = format!("{} inference", engine.name());
    let mut moved = state.take();
    let r = off_runtime(DeadlineRunner::global().clone(), operation, timeout, move |left| {
        let out = engine.infer_with_state(&*model, &mut moved, &inputs, left);
        Ok((moved, out))
    })
    .await;
    match r {
        Ok((moved, out)) => (moved, out),
        Err(e) => (state, Err(e)),
    }
}

/// Runs `f` (given what is left of `timeout`) in Tokio's blocking pool under
/// `runner`, and awaits it at most `timeout`.
async fn off_runtime<T, F>(runner: DeadlineRunner, operation: String, timeout: Duration, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Duration) -> Result<T> + Send + 'static,
{
    let deadline = Deadline::after(timeout);
    let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::Unavailable {
        engine: "async call".into(),
        reason: format!("{operation} was awaited outside a Tokio runtime"),
    })?;
    let op = operation.clone();
    let task = handle.spawn_blocking(move || {
        let remaining = deadline.remaining();
        let waited = format!("{op} (waited for a worker)");
        runner.run(&op, remaining, move || {
            let left = deadline.remaining();
            if left.is_zero() {
                return Err(deadline.timeout_error(&waited));
            }
            f(left)
        })
    });
    match tokio::time::timeout(deadline.remaining(), task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Error::internal(format!("{operation} task failed: {join}"))),
        Err(_) => Err(deadline.timeout_error(&operation)),
    }
}

/// A prepared model of a [`GuardedEngine`]: the inner engine's model, shared
/// so a worker thread can hold it.
pub struct GuardedModel {
    inner: Arc<dyn PreparedModel>,
}

impl GuardedModel {
    /// The inner engine's prepared model.
    pub fn inner(&self) -> &Arc<dyn PreparedModel> {
        &self.inner
    }
}

impl PreparedModel for GuardedModel {
    fn cache_key(&self) -> &str {
        self.inner.cache_key()
    }
    fn io_schema(&self) -> &IoSchema {
        self.inner.io_schema()
    }
    fn sla_estimate(&self) -> Duration {
        self.inner.sla_estimate()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Wraps an engine so that its `prepare` (bounded by the options'
/// `prepare_timeout`) and `infer` run on a [`DeadlineRunner`]: callers get
/// an answer or `Timeout` by the deadline even when the engine ignores its
/// timeout or hangs. Each inference copies its inputs once (they must be
/// owned by the worker) and costs one thread hand-off.
pub struct GuardedEngine {
    inner: Arc<dyn InferenceEngine>,
    runner: DeadlineRunner,
}

impl GuardedEngine {
    /// Guards `inner` with a runner of its own, named after the engine.
    pub fn new(inner: Box<dyn InferenceEngine>) -> GuardedEngine {
        GuardedEngine::from_arc(Arc::from(inner))
    }

    /// Guards a shared engine with a runner of its own.
    pub fn from_arc(inner: Arc<dyn InferenceEngine>) -> GuardedEngine {
        let runner = DeadlineRunner::new(format!("{}-guard", inner.name()));
        GuardedEngine { inner, runner }
    }

    /// Uses `runner` instead (e.g. to share limits between engines).
    pub fn with_runner(mut self, runner: DeadlineRunner) -> Self {
        self.runner = runner;
        self
    }

    /// The runner (for its stats).
    pub fn runner(&self) -> &DeadlineRunner {
        &self.runner
    }

    /// The guarded engine.
    pub fn inner(&self) -> &Arc<dyn InferenceEngine> {
        &self.inner
    }
}

impl InferenceEngine for GuardedEngine {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn prepare(&self, artifact: &ModelArtifact, opts: PrepareOptions) -> Result<Box<dyn PreparedModel>> {
        let inner = self.inner.clone();
        let artifact = artifact.clone();
        let timeout = opts.prepare_timeout;
        let op = format!("{} prepare", self.inner.name());
        let model = self.runner.run(&op, timeout, move || inner.prepare(&artifact, opts))?;
        Ok(Box::new(GuardedModel {
            inner: Arc::from(model),
        }))
    }

    fn infer(&self, model: &dyn PreparedModel, inputs: &TensorMap, timeout: Duration) -> Result<TensorMap> {
        let deadline = Deadline::after(timeout);
        let gm = crate::inference::downcast_model::<GuardedModel>(model, "guarded")?;
        let inner = self.inner.clone();
        let m = gm.inner.clone();
        let inputs = inputs.clone();
        let op = format!("{} inference", self.inner.name());
        self.runner.run(&op, timeout, move || {
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Err(deadline.timeout_error("inference (waited for a worker)"));
            }
            inner.infer(&*m, &inputs, remaining)
        })
    }

    /// The inner engine's state for the inner model.
    fn make_state(&self, model: &dyn PreparedModel) -> Result<ModelState> {
        let gm = crate::inference::downcast_model::<GuardedModel>(model, "guarded")?;
        self.inner.make_state(&*gm.inner)
    }

    /// The inner engine's step on the runner: the state moves into the
    /// worker and back; if the deadline passes first (or the runner refuses
    /// the work), the caller is left a poisoned stand-in: the late step may
    /// still hold the real state.
    fn infer_with_state(
        &self,
        model: &dyn PreparedModel,
        state: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> Result<TensorMap> {
        let deadline = Deadline::after(timeout);
        let gm = crate::inference::downcast_model::<GuardedModel>(model, "guarded")?;
        let (inner, m, inputs) = (self.inner.clone(), gm.inner.clone(), inputs.clone());
        let mut moved = state.take();
        let op = format!("{} inference", self.inner.name());
        let (back, out) = self.runner.run(&op, timeout, move || {
            let out = inner.infer_with_state(&*m, &mut moved, &inputs, deadline.remaining());
            Ok((moved, out))
        })?;
        state.restore(back);
        out
    }

    /// The inner engine's batch on the runner, one deadline for the batch.
    fn infer_batch(&self, model: &dyn PreparedModel, batch: &[TensorMap], timeout: Duration) -> Result<Vec<TensorMap>> {
        let deadline = Deadline::after(timeout);
        let gm = crate::inference::downcast_model::<GuardedModel>(model, "guarded")?;
        let (inner, m, batch) = (self.inner.clone(), gm.inner.clone(), batch.to_vec());
        let op = format!("{} batch inference", self.inner.name());
        self.runner.run(&op, timeout, move || {
            inner.infer_batch(&*m, &batch, deadline.remaining())
        })
    }

    fn capabilities(&self, model: &dyn PreparedModel) -> CapabilityReport {
        match crate::inference::downcast_model::<GuardedModel>(model, "guarded") {
            Ok(gm) => self.inner.capabilities(&*gm.inner),
            Err(_) => self.inner.capabilities(model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::process_threads;

    const MARGIN: Duration = Duration::from_millis(400);

    #[test]
    fn returns_the_result_when_in_time() {
        let r = DeadlineRunner::new("t-ok");
        assert_eq!(r.run("add", Duration::from_secs(5), || Ok(2 + 2)).unwrap(), 4);
        let e = r
            .run::<(), _>("fail", Duration::from_secs(5), || Err(Error::unsupported("x")))
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert_eq!(r.stats().completed, 2);
        assert_eq!(
            run_with_deadline(Duration::from_secs(5), || Ok("global")).unwrap(),
            "global"
        );
    }

    #[test]
    fn times_out_and_drops_the_late_result() {
        let r = DeadlineRunner::new("t-late");
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        let e = r
            .run("sleepy", Duration::from_millis(50), move || {
                std::thread::sleep(Duration::from_millis(300));
                let _ = tx.send(());
                Ok(vec![0u8; 1024])
            })
            .unwrap_err();
        let waited = t0.elapsed();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        assert!(e.to_string().contains("sleepy timed out after 50ms"), "{e}");
        assert!(waited < Duration::from_millis(50) + MARGIN, "{waited:?}");
        assert_eq!(r.stats().abandoned, 1);
        // The work does finish in the background, and the runner notices.
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let t = Instant::now();
        while r.stats().abandoned != 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = r.stats();
        assert_eq!((s.abandoned, s.finished_late, s.timed_out), (0, 1, 1), "{s:?}");
    }

    #[test]
    fn panics_become_internal_errors() {
        let r = DeadlineRunner::new("t-panic");
        let e = r
            .run::<(), _>("boom", Duration::from_secs(5), || panic!("kaboom"))
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert!(e.to_string().contains("kaboom"), "{e}");
        // The worker survived and serves the next call.
        assert_eq!(r.run("next", Duration::from_secs(5), || Ok(1)).unwrap(), 1);
    }

    #[test]
    fn a_reply_reaches_the_caller_before_the_work_returns() {
        // Short keep-alive: its idle worker leaves the thread counts of
        // concurrent tests alone.
        let r = DeadlineRunner::new("t-reply").with_keep_alive(Duration::from_millis(20));
        let (done_tx, done_rx) = mpsc::channel();
        // The reply is sent from another thread (as from the interpreter's
        // pool); the work itself returns only once the caller has its answer.
        let got = r
            .run_replying("early", Duration::from_secs(5), move |_, reply| {
                std::thread::scope(|s| {
                    s.spawn(|| reply.send(Ok(41)));
                });
                reply.send(Ok(0)); // a second reply is dropped
                let _ = done_rx.recv_timeout(Duration::from_secs(5));
            })
            .unwrap();
        assert_eq!(got, 41);
        done_tx.send(()).unwrap();
        assert_eq!(r.stats().completed, 1);
    }

    #[test]
    fn unsent_and_panicking_replies_become_internal_errors() {
        // Short keep-alive: its idle worker leaves the thread counts of
        // concurrent tests alone.
        let r = DeadlineRunner::new("t-reply-none").with_keep_alive(Duration::from_millis(20));
        let e = r
            .run_replying::<u8, _>("silent", Duration::from_secs(5), |_, _| {})
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert!(e.to_string().contains("`silent` returned without a result"), "{e}");
        let e = r
            .run_replying::<u8, _>("boom", Duration::from_secs(5), |_, _| panic!("kaboom"))
            .unwrap_err();
        assert!(e.to_string().contains("kaboom"), "{e}");
        assert_eq!(r.run("next", Duration::from_secs(5), || Ok(1)).unwrap(), 1);
    }

    #[test]
    fn a_late_reply_still_counts_its_worker_as_stuck_until_the_work_returns() {
        // Short keep-alive: its idle worker leaves the thread counts of
        // concurrent tests alone.
        let r = DeadlineRunner::new("t-reply-late").with_keep_alive(Duration::from_millis(20));
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let e = r
            .run_replying("late", Duration::from_millis(30), move |_, reply| {
                let _ = go_rx.recv_timeout(Duration::from_secs(5));
                reply.send(Ok(1));
            })
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        assert_eq!(r.stats().abandoned, 1);
        go_tx.send(()).unwrap();
        let t = Instant::now();
        while r.stats().abandoned != 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!((r.stats().abandoned, r.stats().finished_late), (0, 1));
    }

    #[test]
    fn queued_work_is_cancelled_at_its_deadline_and_never_runs() {
        let r = DeadlineRunner::new("t-queue").with_max_workers(1);
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g = gate.clone();
        let blocker = std::thread::spawn({
            let r = r.clone();
            move || {
                r.run("blocker", Duration::from_secs(10), move || {
                    let (m, cv) = &*g;
                    let mut open = m.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                    Ok(())
                })
            }
        });
        while r.stats().workers == 0 || r.stats().idle != 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let ran = Arc::new(AtomicU64::new(0));
        let ran2 = ran.clone();
        let e = r
            .run("queued", Duration::from_millis(50), move || {
                ran2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        assert_eq!(r.stats().cancelled_before_start, 1);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        blocker.join().unwrap().unwrap();
        assert_eq!(r.run("after", Duration::from_secs(5), || Ok(7)).unwrap(), 7);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "cancelled work must never run");
        assert_eq!(r.stats().abandoned, 0);
    }

    #[test]
    fn stuck_workers_are_capped_and_refusal_is_prompt() {
        let r = DeadlineRunner::new("t-cap").with_max_abandoned(3);
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let threads_before = process_threads();
        // Until 3 are stuck: on a loaded machine a call can time out while
        // still queued (cancelled, not abandoned), so count, don't assume.
        let mut tries = 0;
        while r.stats().abandoned < 3 {
            tries += 1;
            assert!(tries < 50, "{:?}", r.stats());
            let rel = release.clone();
            let e = r
                .run::<(), _>("hang", Duration::from_millis(20), move || {
                    let (m, cv) = &*rel;
                    let mut open = m.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                    Ok(())
                })
                .unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        }
        let t0 = Instant::now();
        let e = r.run("more", Duration::from_secs(5), || Ok(())).unwrap_err();
        assert!(t0.elapsed() < MARGIN, "refusal must not wait for the deadline");
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable);
        assert!(e.to_string().contains("3 workers are still running"), "{e}");
        let s = r.stats();
        assert_eq!((s.abandoned, s.refused), (3, 1), "{s:?}");
        assert!(s.workers <= 3, "{s:?}");
        if let (Some(before), Some(now)) = (threads_before, process_threads()) {
            // Other tests run concurrently; our own share is at most 3.
            assert!(now <= before + 3 + 16, "threads {before} -> {now}");
        }
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        let t = Instant::now();
        while r.stats().abandoned != 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(r.run("again", Duration::from_secs(5), || Ok(3)).unwrap(), 3);
    }

    /// A lender for the tests: a pool of two threads of their own.
    fn lend_to_test_pool(job: Job) -> std::result::Result<(), Job> {
        static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
        POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap())
            .spawn(job);
        Ok(())
    }

    fn wait_for(r: &DeadlineRunner, what: &str, ok: impl Fn(&RunnerStats) -> bool) {
        let t = Instant::now();
        while !ok(&r.stats()) {
            assert!(t.elapsed() < Duration::from_secs(10), "{what}: {:?}", r.stats());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn lent_workers_run_on_the_lenders_pool_one_job_at_a_time_under_the_same_caps() {
        let r = DeadlineRunner::new("t-lent")
            .with_max_abandoned(1)
            .lending_from(lend_to_test_pool);
        let on = r
            .run("where", Duration::from_secs(5), || Ok(rayon::current_thread_index()))
            .unwrap();
        assert!(on.is_some(), "the job ran on the lender's pool");
        // Done, the lent worker gives its thread back; no thread was spawned.
        wait_for(&r, "the lent worker returned", |s| s.workers == 0);
        assert_eq!((r.stats().spawned_total, r.stats().completed), (0, 1));

        // A stuck job: abandoned, counted, and with a cap of one, new work
        // is refused until it returns, as with threads.
        let (release, held) = mpsc::channel::<()>();
        let e = r
            .run::<(), _>("hang", Duration::from_millis(20), move || {
                let _ = held.recv_timeout(Duration::from_secs(10));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        assert_eq!((r.stats().abandoned, r.stats().workers), (1, 1), "{:?}", r.stats());
        let e = r.run("more", Duration::from_secs(5), || Ok(())).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable, "{e}");
        release.send(()).unwrap();
        wait_for(&r, "the stuck job returned", |s| s.abandoned == 0 && s.workers == 0);
        assert_eq!(r.stats().finished_late, 1);

        // Two callers, a cap of one worker: the second job waits for the
        // first's lent worker, which runs both, one after the other.
        let r = DeadlineRunner::new("t-lent-queue")
            .with_max_workers(1)
            .lending_from(lend_to_test_pool);
        let busy = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..2)
            .map(|_| {
                let (r, busy) = (r.clone(), Arc::clone(&busy));
                std::thread::spawn(move || {
                    r.run("one at a time", Duration::from_secs(10), move || {
                        let overlapped = busy.fetch_add(1, Ordering::SeqCst) > 0;
                        std::thread::sleep(Duration::from_millis(20));
                        busy.fetch_sub(1, Ordering::SeqCst);
                        Ok(overlapped)
                    })
                })
            })
            .collect();
        for c in calls {
            assert!(!c.join().unwrap().unwrap(), "two jobs ran at once under a cap of one");
        }
        assert_eq!(r.stats().spawned_total, 0);
    }

    #[test]
    fn a_lender_without_a_pool_gets_threads_instead() {
        fn no_pool(job: Job) -> std::result::Result<(), Job> {
            Err(job)
        }
        let r = DeadlineRunner::new("t-lent-none")
            .with_keep_alive(Duration::from_millis(20))
            .lending_from(no_pool);
        let name = r
            .run("where", Duration::from_secs(5), || {
                Ok(std::thread::current().name().map(str::to_string))
            })
            .unwrap();
        assert_eq!(name.as_deref(), Some("t-lent-none-0"));
        assert_eq!(r.stats().spawned_total, 1);
    }

    #[test]
    fn a_timed_out_call_is_told_to_stop_and_frees_its_worker() {
        let r = DeadlineRunner::new("t-cancel");
        let (tx, rx) = mpsc::channel();
        let e = r
            .run_cancellable::<(), _>("spin", Duration::from_millis(20), move |cancel| {
                // Work that checks its flag, as the interpreter does between ops.
                let mut checks = 0u64;
                while !cancel.is_cancelled() {
                    checks += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = tx.send(checks);
                // As the interpreter does: a stop is reported as a timeout.
                Err(Error::Timeout {
                    operation: "spin".into(),
                    after: Duration::from_millis(20),
                })
            })
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        // The flag reached the work, which returned: the worker is not stuck.
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the work saw its cancel flag");
        let t = Instant::now();
        while r.stats().abandoned != 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let s = r.stats();
        assert_eq!(s.abandoned, 0);
        // Whichever saw the deadline first — the caller (the work then
        // finished late) or the work (its error came back in time) — the
        // work ran once and ended.
        assert_eq!(s.completed + s.finished_late, 1, "{s:?}");
    }

    #[test]
    fn a_flag_with_a_deadline_is_set_by_a_check_once_it_passes() {
        let plain = CancelFlag::new();
        assert!(!plain.check_deadline());
        let later = CancelFlag::with_deadline(Deadline::after(Duration::from_secs(3600)));
        assert!(!later.check_deadline());
        later.cancel();
        assert!(later.is_cancelled() && later.check_deadline());
        let soon = CancelFlag::with_deadline(Deadline::after(Duration::from_millis(5)));
        let shared = soon.clone();
        assert!(!soon.check_deadline());
        std::thread::sleep(Duration::from_millis(10));
        // Nobody called cancel: the plain load does not read the clock...
        assert!(!shared.is_cancelled());
        // ...a check at a coarse point does, and sets it for every clone.
        assert!(shared.check_deadline());
        assert!(soon.is_cancelled());
    }

    #[test]
    fn the_stuck_worker_cap_holds_under_concurrent_timeouts() {
        // 12 callers at once, each timing out on work that ignores its flag,
        // against a cap of 4: the count of stuck workers must never pass 4.
        let cap = 4;
        let r = DeadlineRunner::new("t-hard-cap").with_max_abandoned(cap);
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let watching = Arc::new(AtomicU8::new(1));
        let watcher = {
            let (r, peak, watching) = (r.clone(), peak.clone(), watching.clone());
            std::thread::spawn(move || {
                while watching.load(Ordering::SeqCst) == 1 {
                    let s = r.stats();
                    peak.fetch_max(s.abandoned.max(s.workers), Ordering::SeqCst);
                    std::thread::yield_now();
                }
            })
        };
        std::thread::scope(|sc| {
            for _ in 0..12 {
                let (r, rel) = (r.clone(), release.clone());
                sc.spawn(move || {
                    for _ in 0..3 {
                        let rel = rel.clone();
                        let _ = r.run::<(), _>("hang", Duration::from_millis(5), move || {
                            let (m, cv) = &*rel;
                            let mut open = m.lock().unwrap();
                            while !*open {
                                open = cv.wait(open).unwrap();
                            }
                            Ok(())
                        });
                    }
                });
            }
        });
        let s = r.stats();
        assert!(s.abandoned <= cap && s.workers <= cap, "{s:?}");
        assert!(s.refused > 0, "{s:?}");
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        watching.store(0, Ordering::SeqCst);
        watcher.join().unwrap();
        assert!(
            peak.load(Ordering::SeqCst) <= cap,
            "peak {} > cap {cap}",
            peak.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn idle_workers_exit_after_keep_alive() {
        let r = DeadlineRunner::new("t-idle").with_keep_alive(Duration::from_millis(30));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let r = r.clone();
                s.spawn(move || {
                    r.run("nap", Duration::from_secs(5), || {
                        std::thread::sleep(Duration::from_millis(20));
                        Ok(())
                    })
                });
            }
        });
        assert!(r.stats().workers >= 1);
        let t = Instant::now();
        while r.stats().workers != 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(r.stats().workers, 0, "{:?}", r.stats());
    }

    #[test]
    fn zero_timeout_never_runs() {
        let r = DeadlineRunner::new("t-zero");
        let e = r.run::<(), _>("instant", Duration::ZERO, || Ok(())).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        assert_eq!(r.stats().spawned_total, 0);
    }

    #[test]
    fn deadline_checks() {
        let d = Deadline::after(Duration::from_millis(30));
        assert!(d.check("x").is_ok());
        assert!(d.remaining() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert!(d.is_expired());
        assert_eq!(d.remaining(), Duration::ZERO);
        let e = d.check("op").unwrap_err();
        assert_eq!(e.to_string(), "op timed out after 30ms");
    }
}
