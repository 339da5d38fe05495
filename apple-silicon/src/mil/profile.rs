//! Where a run's time goes, step by step: [`super::Plan::profile`].
//!
//! Why our own and not only `perf`: a sampling profiler names kernels, not
//! the program's ops, and cannot tell a network's 60 convolutions apart. A
//! step is what the plan runs: one op, or ops fused into one (a conv with
//! its activation and residual add), named after the op whose value it
//! produces.
//!
//! While no profile is recording, a run pays one thread-local read per
//! block (not per step).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// One step of a plan and the time it took over the profiled runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpTime {
    /// The name of the value the step produces (its op's output name).
    pub name: String,
    /// The step's op type (`conv`, `linear`, …; a fused step names the op
    /// it was fused into).
    pub op_type: String,
    /// Times the step ran: once per run, or once per trip of its loop.
    pub calls: u64,
    /// Wall time of those calls on the run's thread, including the work it
    /// handed to the other pool threads. A `cond` or `while_loop` step's
    /// time includes its blocks' steps, which are listed too.
    pub total: Duration,
}

/// The steps recorded so far on this thread, and where each step is in it.
#[derive(Default)]
struct Recording {
    steps: Vec<OpTime>,
    at: HashMap<usize, usize>,
}

thread_local! {
    static RECORDING: RefCell<Option<Recording>> = const { RefCell::new(None) };
}

/// Runs `f`, recording the steps every run on this thread takes meanwhile;
/// returns what `f` returned and the steps in the order they first ran.
/// A panic in `f` still ends the recording.
pub(super) fn record<R>(f: impl FnOnce() -> R) -> (R, Vec<OpTime>) {
    /// Puts back what was recording before, however `f` ends.
    struct Restore(Option<Option<Recording>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(prev) = self.0.take() {
                RECORDING.with(|r| *r.borrow_mut() = prev);
            }
        }
    }
    let mut restore = Restore(Some(RECORDING.with(|r| r.replace(Some(Recording::default())))));
    let out = f();
    let prev = restore.0.take().unwrap_or_default();
    let got = RECORDING.with(|r| r.replace(prev)).unwrap_or_default();
    (out, got.steps)
}

/// Whether a profile is recording on this thread.
pub(super) fn recording() -> bool {
    RECORDING.with(|r| r.borrow().is_some())
}

/// Adds one call of the step `key` (its address: the same step on every
/// trip of a loop) that took `took`.
pub(super) fn note(key: usize, name: &str, op_type: &str, took: Duration) {
    RECORDING.with(|r| {
        let mut r = r.borrow_mut();
        let Some(rec) = r.as_mut() else { return };
        let i = *rec.at.entry(key).or_insert_with(|| {
            rec.steps.push(OpTime {
                name: name.to_string(),
                op_type: op_type.to_string(),
                calls: 0,
                total: Duration::ZERO,
            });
            rec.steps.len() - 1
        });
        rec.steps[i].calls += 1;
        rec.steps[i].total += took;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::test_support::package_path;
    use crate::mil::{FloatPolicy, Plan};
    use crate::mlpackage::MlPackage;
    use crate::tensor::{Tensor, TensorMap};

    #[test]
    fn a_profile_counts_every_step_once_a_run_and_loop_steps_once_a_trip() {
        let case = "control_flow/while_counted_5";
        let plan = Plan::build(&MlPackage::open(package_path(case)).unwrap(), FloatPolicy::Upcast).unwrap();
        let dir = package_path(case).parent().unwrap().join("inputs");
        let inputs: TensorMap = ["n", "x"]
            .iter()
            .map(|k| (k.to_string(), Tensor::read_npy(dir.join(format!("{k}.npy"))).unwrap()))
            .collect();
        let trips = inputs["n"].to_f32_vec()[0] as u64;
        assert_eq!(trips, 5, "the case's trip count");
        let started = std::time::Instant::now();
        let steps = plan.profile(&inputs, 3).unwrap();
        let wall = started.elapsed();
        let calls = |t: &str| {
            steps
                .iter()
                .filter(|s| s.op_type == t)
                .map(|s| s.calls)
                .collect::<Vec<_>>()
        };
        assert_eq!(calls("while_loop"), vec![3], "{steps:#?}");
        // The body's steps ran on every trip of every run (the condition's once more).
        assert!(steps.iter().any(|s| s.calls == 3 * trips), "{steps:#?}");
        assert!(
            steps.iter().all(|s| s.calls > 0 && s.total > Duration::ZERO),
            "{steps:#?}"
        );
        let looped = steps.iter().find(|s| s.op_type == "while_loop").unwrap().total;
        assert!(looped <= wall, "a step's time is within the profile's");
        // The loop did run that many trips; and no recording is left on.
        assert_eq!(plan.run(&inputs).unwrap()["i"].to_f32_vec(), vec![trips as f32]);
        assert!(!recording());
    }

    #[test]
    fn a_recording_ends_with_a_panic_and_nests() {
        let r = std::panic::catch_unwind(|| record(|| panic!("in a profiled run")));
        assert!(r.is_err());
        assert!(!recording(), "the panic ended the recording");
        let ((), outer) = record(|| {
            note(1, "a", "add", Duration::from_nanos(5));
            let ((), inner) = record(|| note(2, "b", "mul", Duration::from_nanos(7)));
            assert_eq!(inner.len(), 1);
            note(1, "a", "add", Duration::from_nanos(5));
        });
        assert_eq!(outer.len(), 1, "the inner recording's steps stay in it");
        assert_eq!((outer[0].calls, outer[0].total), (2, Duration::from_nanos(10)));
    }
}
