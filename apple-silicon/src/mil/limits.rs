//! What bounds the interpreter while it builds or runs a plan: a memory
//! limit for every size that comes from the program (constant shapes,
//! `constexpr_*` output shapes, `tile` reps, pad amounts, …), checked with
//! checked arithmetic *before* anything is allocated, and a cancellation
//! flag checked between ops and inside long kernels.
//!
//! Both live in a per-thread scope set by [`Plan::build`](super::Plan) and
//! [`Plan::run`](super::Plan): kernels have a fixed signature, and a
//! thread-local lets the few kernels that allocate from parameters check
//! the limit with a one-line call (`check_alloc`). A check that fails leaves
//! its typed error ([`Error::MemoryPressure`] or [`Error::Timeout`]) here,
//! and the interpreter picks it up instead of the kernel's generic one
//! (`take_tripped`), so a caller sees which op asked for how much.
//!
//! Allocation failures abort the process and `catch_unwind` cannot catch
//! an abort: these checks are what keeps a hostile 2 KB program from
//! killing its host.

use std::cell::RefCell;
use std::time::Instant;

pub use crate::deadline::CancelFlag;
use crate::error::Error;

#[derive(Default)]
struct Scope {
    /// Largest allocation (bytes) a kernel may make from program sizes.
    limit: Option<u64>,
    cancel: Option<CancelFlag>,
    /// When the cancellable work started (for the error message).
    started: Option<Instant>,
    tripped: Option<Tripped>,
}

/// Why a check failed, before the op's name is known.
#[derive(Debug)]
pub(crate) enum Tripped {
    Memory {
        what: String,
        bytes: Option<u64>,
        limit: u64,
    },
    Cancelled,
}

thread_local! {
    static SCOPE: RefCell<Scope> = RefCell::new(Scope::default());
}

/// Runs `f` with `limit` and `cancel` in force on this thread; restores the
/// previous scope afterwards (scopes nest: a plan folded inside another
/// build keeps the outer one's flag).
pub(crate) fn scoped<R>(
    limit: Option<u64>,
    cancel: Option<&CancelFlag>,
    started: Option<Instant>,
    f: impl FnOnce() -> R,
) -> R {
    let prev = SCOPE.with(|s| {
        std::mem::replace(
            &mut *s.borrow_mut(),
            Scope {
                limit,
                cancel: cancel.cloned(),
                started,
                tripped: None,
            },
        )
    });
    struct Restore(Option<Scope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = SCOPE.try_with(|s| *s.borrow_mut() = p);
            }
        }
    }
    let _restore = Restore(Some(prev));
    f()
}

fn trip(t: Tripped) {
    SCOPE.with(|s| s.borrow_mut().tripped = Some(t));
}

/// The limit in force on this thread (bytes), if any.
pub(crate) fn limit() -> Option<u64> {
    SCOPE.with(|s| s.borrow().limit)
}

/// The cancellation flag in force on this thread, to hand to worker threads
/// (e.g. rayon) that do not see this thread's scope.
pub(crate) fn cancel_flag() -> Option<CancelFlag> {
    SCOPE.with(|s| s.borrow().cancel.clone())
}

/// Checks that a tensor of `dims` × `elem_bytes` may be allocated: the
/// element count is computed with checked arithmetic and compared with the
/// limit in force. `what` says what the allocation is for ("tile output",
/// "pad output", …). Costs a few multiplications.
pub(crate) fn check_alloc(what: &str, dims: &[usize], elem_bytes: usize) -> candle_core::Result<()> {
    let bytes = dims
        .iter()
        .try_fold(elem_bytes as u64, |acc, &d| acc.checked_mul(d as u64));
    check_bytes(&format!("{what} of shape {dims:?}"), bytes)
}

/// Like [`check_alloc`] for a byte count already computed (`None` when its
/// computation overflowed).
pub(crate) fn check_bytes(what: &str, bytes: Option<u64>) -> candle_core::Result<()> {
    let limit = limit().unwrap_or(u64::MAX);
    match bytes {
        Some(b) if b <= limit => Ok(()),
        _ => {
            trip(Tripped::Memory {
                what: what.to_string(),
                bytes,
                limit,
            });
            match bytes {
                Some(b) => candle_core::bail!("{what} needs {b} bytes, over the memory limit of {limit} bytes"),
                None => candle_core::bail!("{what}: its size overflows"),
            }
        }
    }
}

/// Like [`check_bytes`] for build-time code that returns the crate's
/// errors: [`Error::MemoryPressure`] naming `what` (which should name the
/// op or constant) when `bytes` overflowed or exceeds the limit in force.
pub(crate) fn ensure(what: &str, bytes: Option<u64>) -> crate::Result<()> {
    if check_bytes(what, bytes).is_err() {
        SCOPE.with(|s| s.borrow_mut().tripped = None);
        let limit = limit().unwrap_or(u64::MAX);
        return Err(Error::MemoryPressure {
            message: match bytes {
                Some(b) => format!("{what} needs {b} bytes, over the memory limit of {limit} bytes"),
                None => format!("{what}: its element count overflows"),
            },
        });
    }
    Ok(())
}

/// `Err` once the flag in force is set or its deadline has passed. Called
/// between ops and per step of a recurrence. Costs one atomic load and, with
/// a deadline, one clock read (kernels check the flag alone).
pub(crate) fn check_cancel() -> candle_core::Result<()> {
    if cancel_flag().is_some_and(|c| c.check_deadline()) {
        trip(Tripped::Cancelled);
        candle_core::bail!("cancelled")
    }
    Ok(())
}

/// Records a cancellation seen by a kernel through its own copy of the flag
/// (e.g. on rayon threads), so the caller reports it as such.
pub(crate) fn note_cancelled() {
    trip(Tripped::Cancelled);
}

/// The typed error of the last failed check on this thread, naming the op
/// (`op` is e.g. "op `tile_0` (tile)"); clears it.
pub(crate) fn take_tripped(op: &str) -> Option<Error> {
    let t = SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let started = s.started;
        s.tripped.take().map(|t| (t, started))
    })?;
    Some(match t {
        (Tripped::Memory { what, bytes, limit }, _) => Error::MemoryPressure {
            message: match bytes {
                Some(b) => format!("{op}: {what} needs {b} bytes, over the memory limit of {limit} bytes"),
                None => format!("{op}: {what}: its size overflows"),
            },
        },
        (Tripped::Cancelled, started) => Error::Timeout {
            operation: format!("candle inference (cancelled at {op})"),
            after: started.map(|t| t.elapsed()).unwrap_or_default(),
        },
    })
}

/// A default memory budget for a program whose files hold `file_bytes`:
/// 32 times the file (decompressed weights grow: 1-bit palettes to f32 are
/// 32×) but at least 1 GiB, and at most half of this machine's memory.
pub fn default_memory_budget(file_bytes: u64) -> u64 {
    let want = file_bytes.saturating_mul(32).max(1 << 30);
    want.min(machine_memory() / 2)
}

/// Total memory of this machine in bytes (`MemTotal` of /proc/meminfo; 8 GiB
/// where that cannot be read).
pub fn machine_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb.saturating_mul(1024))
        .unwrap_or(8 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_and_oversized_allocations_are_refused_with_the_op_named() {
        scoped(Some(1000), None, None, || {
            assert!(check_alloc("x", &[10, 25], 4).is_ok());
            assert!(check_alloc("tile output", &[10, 26], 4).is_err());
            let e = take_tripped("op `t` (tile)").unwrap();
            assert_eq!(e.kind(), crate::ErrorKind::MemoryPressure);
            assert!(
                e.to_string()
                    .contains("op `t` (tile): tile output of shape [10, 26] needs 1040 bytes"),
                "{e}"
            );
            assert!(check_alloc("pad output", &[1 << 40, 1 << 40], 4).is_err());
            let e = take_tripped("op `p` (pad)").unwrap();
            assert!(e.to_string().contains("overflows"), "{e}");
        });
        // Outside any scope there is no limit, and scopes do not leak.
        assert!(check_alloc("x", &[1 << 20, 1 << 20], 4).is_ok());
        assert!(take_tripped("x").is_none());
    }

    #[test]
    fn cancellation_is_seen_in_scope_only() {
        let flag = CancelFlag::new();
        scoped(None, Some(&flag), Some(Instant::now()), || {
            assert!(check_cancel().is_ok());
            flag.cancel();
            assert!(check_cancel().is_err());
            let e = take_tripped("op `c` (conv)").unwrap();
            assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        });
        assert!(check_cancel().is_ok());
    }

    #[test]
    fn default_budget_is_bounded_by_the_machine() {
        assert!(default_memory_budget(0) >= (1 << 30).min(machine_memory() / 2));
        assert!(default_memory_budget(u64::MAX) <= machine_memory() / 2);
    }
}
