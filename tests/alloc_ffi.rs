//! `infer_into` over the real bridge (its test runtime): steady-state calls
//! allocate nothing, on the Rust heap (counted by this binary's global
//! allocator) or in the bridge (its buffer counters), each output is copied
//! exactly once, and a prediction that outlives its timeout never writes
//! into the caller's tensors. Runs where the bridge is linked
//! (`scripts/swift/rust-ffi-test.sh` in the Swift chroot); elsewhere
//! ignored with the reason.

mod common;

use common::fake_bridge::{fake_package, require_test_runtime};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apple_silicon::{CoreMlEngine, CoreMlModel, ErrorKind, InferenceEngine, PrepareOptions, Tensor, TensorMap};
use serde_json::json;

/// Counts allocations (and reallocations) made by threads that opted in.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: the thread-local may be gone while a thread exits.
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Rust heap allocations made by this thread while `f` runs.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

/// Two inputs and two outputs: `a` (f32 [4, 8]) and `b` (i32 [3]),
/// filled from `seed`.
fn inputs(seed: f32) -> TensorMap {
    let a: Vec<f32> = (0..32).map(|i| seed + i as f32 * 0.5).collect();
    let b: Vec<i32> = (0..3).map(|i| seed as i32 * 10 + i).collect();
    TensorMap::from([
        ("a".to_string(), Tensor::from_vec(vec![4, 8], a).unwrap()),
        ("b".to_string(), Tensor::from_vec(vec![3], b).unwrap()),
    ])
}

fn two_by_two(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "behavior": "add_one",
        "inputs": [{"name": "a", "dtype": "f32", "shape": [4, 8]}, {"name": "b", "dtype": "i32", "shape": [3]}],
        "outputs": [{"name": "ya", "dtype": "f32", "shape": [4, 8]}, {"name": "yb", "dtype": "i32", "shape": [3]}],
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

/// The reference: `add_one` adds one to every element (computed here, not
/// by the engine).
fn expected(seed: f32) -> (Vec<f32>, Vec<i32>) {
    let i = inputs(seed);
    (
        i["a"].to_vec::<f32>().unwrap().iter().map(|v| v + 1.0).collect(),
        i["b"].to_vec::<i32>().unwrap().iter().map(|v| v + 1).collect(),
    )
}

fn counters(
    engine: &CoreMlEngine,
    model: &dyn apple_silicon::PreparedModel,
) -> apple_silicon::core_ml_bridge::BufferCounters {
    let _ = engine;
    let m = model.as_any().downcast_ref::<CoreMlModel>().expect("a Core ML model");
    m.buffer_counters(Duration::from_secs(10)).unwrap()
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn steady_state_calls_allocate_nothing_and_copy_each_output_once() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    for (stem, pad) in [("backed", 0), ("padded", 3)] {
        let artifact = fake_package(dir.path(), stem, two_by_two(json!({"pad_outputs": pad})));
        let engine = CoreMlEngine::new();
        let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
        let timeout = Duration::from_secs(10);
        let mut outputs = TensorMap::new();
        // Warm-up: the first call fills `outputs` (the allocating path), the
        // next ones fill the bridge's pool and the name cache.
        let first = inputs(0.0);
        let (r, first_allocs) = allocations_in(|| engine.infer_into(model.as_ref(), &first, &mut outputs, timeout));
        r.unwrap();
        // The counter sees allocations: the first call makes the output tensors.
        assert!(
            first_allocs > 0,
            "{stem}: the counting allocator saw no allocation in the first call"
        );
        for seed in 1..3 {
            engine
                .infer_into(model.as_ref(), &inputs(seed as f32), &mut outputs, timeout)
                .unwrap();
        }
        let warm = counters(&engine, model.as_ref());
        let storage = (outputs["ya"].as_bytes().as_ptr(), outputs["yb"].as_bytes().as_ptr());

        let n = 50u64;
        let mut rust_allocations = 0;
        for k in 0..n {
            let seed = 3.0 + k as f32;
            let inp = inputs(seed);
            let (r, allocs) = allocations_in(|| engine.infer_into(model.as_ref(), &inp, &mut outputs, timeout));
            r.unwrap();
            rust_allocations += allocs;
            let (ya, yb) = expected(seed);
            assert_eq!(outputs["ya"].to_vec::<f32>().unwrap(), ya, "{stem}: ya at call {k}");
            assert_eq!(outputs["yb"].to_vec::<i32>().unwrap(), yb, "{stem}: yb at call {k}");
        }
        let after = counters(&engine, model.as_ref());
        println!("{stem} (pad_outputs {pad}): after warm-up {warm:?}");
        println!("{stem} (pad_outputs {pad}): after {n} more calls {after:?}; Rust heap allocations in them: {rust_allocations}");

        assert_eq!(
            rust_allocations, 0,
            "{stem}: Rust heap allocations in {n} steady-state infer_into calls"
        );
        assert_eq!(
            (outputs["ya"].as_bytes().as_ptr(), outputs["yb"].as_bytes().as_ptr()),
            storage,
            "{stem}: the output tensors keep their storage"
        );
        assert_eq!(after.calls - warm.calls, n);
        assert_eq!(
            after.buffer_allocations, warm.buffer_allocations,
            "{stem}: bridge staging allocations after warm-up"
        );
        assert_eq!(
            after.output_copies - warm.output_copies,
            2 * n,
            "{stem}: one copy per output per call"
        );
        assert_eq!(
            after.input_copies - warm.input_copies,
            2 * n,
            "{stem}: one copy per input per call"
        );
        let per_call_bytes = (32 * 4 + 3 * 4) * 2;
        assert_eq!(after.bytes_copied - warm.bytes_copied, per_call_bytes * n);
        if pad == 0 {
            // The runtime wrote into the staging backings.
            assert_eq!(after.outputs_in_backing - warm.outputs_in_backing, 2 * n);
            assert_eq!(after.outputs_runtime_owned, warm.outputs_runtime_owned);
        } else {
            // A padded layout does not fit a backing: the runtime's own
            // arrays (its allocation, not the bridge's), still one copy.
            assert_eq!(after.outputs_runtime_owned - warm.outputs_runtime_owned, 2 * n);
            assert_eq!(after.outputs_in_backing, warm.outputs_in_backing);
        }
    }
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn a_shape_change_reallocates_once_and_a_stray_output_is_replaced() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    // Identity over any shape: output y has input x's shape.
    let artifact = fake_package(dir.path(), "identity", json!({}));
    let engine = CoreMlEngine::new();
    let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
    let timeout = Duration::from_secs(10);
    let x = |n: usize| TensorMap::from([("x".to_string(), Tensor::from_vec(vec![n], vec![2.5f32; n]).unwrap())]);
    let mut outputs = TensorMap::from([(
        "y".to_string(),
        Tensor::zeros(apple_silicon::DType::F32, vec![4]).unwrap(),
    )]);
    engine.infer_into(model.as_ref(), &x(4), &mut outputs, timeout).unwrap();
    assert_eq!(outputs["y"].to_vec::<f32>().unwrap(), vec![2.5; 4]);
    // Another shape: the bridge refuses the old buffer before writing, and
    // the call falls back to a fresh output.
    engine.infer_into(model.as_ref(), &x(6), &mut outputs, timeout).unwrap();
    assert_eq!(outputs["y"].shape(), &[6]);
    assert_eq!(outputs["y"].to_vec::<f32>().unwrap(), vec![2.5; 6]);
    // A name the model does not produce: replaced by the model's outputs.
    let mut stray = TensorMap::from([(
        "nope".to_string(),
        Tensor::zeros(apple_silicon::DType::F32, vec![6]).unwrap(),
    )]);
    engine.infer_into(model.as_ref(), &x(6), &mut stray, timeout).unwrap();
    assert_eq!(stray.keys().collect::<Vec<_>>(), vec!["y"]);
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn a_late_prediction_never_writes_into_the_callers_outputs() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let scale: f64 = std::env::var("CORE_ML_FFI_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let sleep_ms = (300.0 * scale) as u64;
    let artifact = fake_package(dir.path(), "slow_into", two_by_two(json!({"sleep_ms": sleep_ms})));
    let engine = CoreMlEngine::new();
    let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
    const POISON: f32 = -7.25;
    let mut outputs = TensorMap::from([
        (
            "ya".to_string(),
            Tensor::from_vec(vec![4, 8], vec![POISON; 32]).unwrap(),
        ),
        ("yb".to_string(), Tensor::from_vec(vec![3], vec![-7i32; 3]).unwrap()),
    ]);
    let err = engine
        .infer_into(model.as_ref(), &inputs(1.0), &mut outputs, Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // The late prediction finishes while we wait; our buffers must stay as
    // we left them (its outputs went into the bridge's staging buffers).
    std::thread::sleep(Duration::from_millis(sleep_ms * 2 + 200));
    assert_eq!(outputs["ya"].to_vec::<f32>().unwrap(), vec![POISON; 32]);
    assert_eq!(outputs["yb"].to_vec::<i32>().unwrap(), vec![-7; 3]);
    // The next call reloads the poisoned model and writes as usual.
    engine
        .infer_into(model.as_ref(), &inputs(2.0), &mut outputs, Duration::from_secs(10))
        .unwrap();
    let (ya, yb) = expected(2.0);
    assert_eq!(outputs["ya"].to_vec::<f32>().unwrap(), ya);
    assert_eq!(outputs["yb"].to_vec::<i32>().unwrap(), yb);
}
