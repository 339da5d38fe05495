//! Shared helpers for the integration tests: a small schema, inputs for it,
//! the timing margin used on our noisy shared machines, and copying a
//! fixture tree to edit it.
#![allow(dead_code)]

pub mod fake_bridge;

use std::time::{Duration, Instant};

use apple_silicon::{DType, IoSchema, Tensor, TensorMap, TensorSpec};

/// How late a deadline may be met on a loaded 2-core machine and still count
/// as prompt. Generous on purpose: these tests check behaviour, not speed.
pub const MARGIN: Duration = Duration::from_millis(400);

/// `x: f32[1, 4] -> y: f32[1, 4]`.
pub fn schema() -> IoSchema {
    IoSchema {
        inputs: vec![TensorSpec::fixed("x", DType::F32, vec![1, 4])],
        outputs: vec![TensorSpec::fixed("y", DType::F32, vec![1, 4])],
        states: vec![],
        classifier: None,
        functions: Default::default(),
    }
}

/// Inputs for [`schema`], with values depending on `i`.
pub fn input(i: u32) -> TensorMap {
    let v = i as f32;
    TensorMap::from([(
        "x".to_string(),
        Tensor::from_vec(vec![1, 4], vec![v, v + 1.0, v + 2.0, v + 3.0]).unwrap(),
    )])
}

/// What an echo engine answers to [`input`]`(i)`.
pub fn expected(i: u32) -> TensorMap {
    TensorMap::from([("y".to_string(), input(i)["x"].clone())])
}

/// Polls `cond` every few milliseconds for up to `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Copies the tree at `src` to `dst` (created), following nothing special:
/// fixtures are plain files and directories.
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}
