//! The caller's inputs, lent to the deadline worker for the span of a call.
//!
//! Why: a worker must own what it touches (its caller may time out and
//! return while it runs), so the inputs used to be converted on the
//! caller's thread before the hand-off. That conversion is a copy the
//! program's own run would make anyway, but made on the wrong core: the
//! pool thread then reads the inputs from another core's cache, and the
//! hand-off waits for the copy, ~50 µs of a 3 ms MobileNetV2 call. Lent,
//! the inputs are converted by the worker, where the run reads them.
//!
//! How it stays sound: [`lend`] hands out a [`Borrow`] only inside a scope
//! that cannot end while the borrow is being read. When the scope ends
//! (returning or unwinding), it either revokes a borrow not yet read (which
//! then reads nothing) or waits for the reading under way to end — one
//! conversion of the inputs at most, never the run. So a call that times
//! out may return that much late, and never while its inputs are read.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::Thread;

/// The borrow has not been read, and still may be.
const OPEN: u8 = 0;
/// A worker is reading the value.
const READING: u8 = 1;
/// Read, or revoked: the value is no longer touched.
const CLOSED: u8 = 2;

struct Shared<T: ?Sized> {
    value: *const T,
    state: AtomicU8,
    /// The lender, woken when a reading it waits for ends.
    lender: Thread,
}

// SAFETY: `value` is only dereferenced as `&T` (so `T: Sync` makes sharing
// it across threads sound), and only while `state` is READING, which the
// lender's scope waits out before the value can go away.
unsafe impl<T: Sync + ?Sized> Send for Shared<T> {}
unsafe impl<T: Sync + ?Sized> Sync for Shared<T> {}

/// A right to read a value lent by [`lend`], at most once, from any thread,
/// for as long as its lender has not revoked it. `'static`, so it can go
/// into a deadline worker's job.
pub(super) struct Borrow<T: ?Sized> {
    shared: Arc<Shared<T>>,
}

impl<T: Sync + ?Sized> Borrow<T> {
    /// `f` on the lent value, or `None` when the lender has already
    /// revoked the loan (its call returned). The lender waits for `f` to
    /// end before it can return, so keep `f` short: a conversion, not a run.
    pub(super) fn read<R>(self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let s = &self.shared;
        if s.state
            .compare_exchange(OPEN, READING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        /// Closes the loan when the reading ends, also by a panic.
        struct Close<'a, T: ?Sized>(&'a Shared<T>);
        impl<T: ?Sized> Drop for Close<'_, T> {
            fn drop(&mut self) {
                self.0.state.store(CLOSED, Ordering::Release);
                self.0.lender.unpark();
            }
        }
        let _close = Close(s);
        // SAFETY: READING, so the lender's scope has not ended and cannot
        // end before `_close` stores CLOSED: the value is alive.
        Some(f(unsafe { &*s.value }))
    }
}

/// Runs `f` with a [`Borrow`] of `value` and returns what it returns, only
/// once no one reads `value` through that borrow any more: on the way out
/// (by return or unwinding) a borrow not yet read is revoked, and a reading
/// under way is waited for (the thread parks). Costs an `Arc` and, at most,
/// the reading's remaining time.
pub(super) fn lend<T: Sync + ?Sized, R>(value: &T, f: impl FnOnce(Borrow<T>) -> R) -> R {
    let shared = Arc::new(Shared {
        value: value as *const T,
        state: AtomicU8::new(OPEN),
        lender: std::thread::current(),
    });
    /// Ends the loan when the scope ends, whichever way it ends.
    struct Scope<'a, T: ?Sized> {
        shared: Arc<Shared<T>>,
        _value: PhantomData<&'a T>,
    }
    impl<T: ?Sized> Drop for Scope<'_, T> {
        fn drop(&mut self) {
            let s = &self.shared;
            if s.state
                .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
            while s.state.load(Ordering::Acquire) != CLOSED {
                // A stray unpark only makes this look again.
                std::thread::park();
            }
        }
    }
    let _scope: Scope<'_, T> = Scope {
        shared: Arc::clone(&shared),
        _value: PhantomData,
    };
    f(Borrow { shared })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_borrow_reads_the_value_on_another_thread() {
        let v = vec![1u32, 2, 3];
        let sum = lend(&v, |b| {
            std::thread::spawn(move || b.read(|v| v.iter().sum::<u32>()))
                .join()
                .unwrap()
        });
        assert_eq!(sum, Some(6));
    }

    #[test]
    fn a_borrow_not_read_before_the_scope_ends_reads_nothing() {
        let v = String::from("gone");
        let (tx, rx) = mpsc::channel();
        lend(&v, |b| tx.send(b).unwrap());
        let late = rx.recv().unwrap();
        assert_eq!(late.read(|s| s.len()), None, "the loan was revoked");
    }

    #[test]
    fn the_scope_waits_for_a_reading_under_way_and_no_longer() {
        let v = vec![7u8; 16];
        let reading = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let (r, f) = (Arc::clone(&reading), Arc::clone(&finished));
        let t = Instant::now();
        let worker = lend(&v, move |b| {
            let w = std::thread::spawn(move || {
                b.read(|v| {
                    r.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    let s: u32 = v.iter().map(|&x| x as u32).sum();
                    f.store(true, Ordering::SeqCst);
                    s
                })
            });
            while !reading.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            // The scope ends here, with the reading under way.
            w
        });
        assert!(
            finished.load(Ordering::SeqCst),
            "the scope ended before the reading did"
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(worker.join().unwrap(), Some(7 * 16));
    }

    #[test]
    fn a_panicking_reading_still_closes_the_loan_and_unwinding_scopes_wait_too() {
        let v = 5u64;
        let r = std::panic::catch_unwind(|| {
            lend(&v, |b| {
                let w = std::thread::spawn(move || b.read(|_| panic!("in the reading")));
                assert!(w.join().is_err(), "the reading's panic reaches its thread");
            })
        });
        assert!(r.is_ok(), "the scope ended: the panicking reading closed the loan");
        // The scope's own panic unwinds through it after it waits.
        let (tx, rx) = mpsc::channel();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lend(&v, |b| {
                tx.send(b).unwrap();
                panic!("in the scope");
            })
        }));
        assert!(r.is_err());
        assert_eq!(rx.recv().unwrap().read(|v| *v), None, "revoked on unwinding");
    }
}
