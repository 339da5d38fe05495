//! Model pools over the real bridge: N `CoreMlEngine` instances of one model
//! (the bridge's test runtime, every prediction sleeping a fixed time)
//! behind one [`PooledEngine`]. Runs where the bridge is linked
//! (`scripts/swift/rust-ffi-test.sh` in the Swift chroot); elsewhere ignored
//! with the reason. The queue's ordering and rebuild rules are tested over a
//! scripted engine in tests/pool.rs.

mod common;

use common::fake_bridge::{fake_package, margin, require_test_runtime};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apple_silicon::telemetry::Stage;
use apple_silicon::{
    CoreMlEngine, DType, ErrorKind, InferenceEngine, PooledEngine, PrepareOptions, TelemetryRegistry, Tensor, TensorMap,
};
use serde_json::json;

fn x(v: f32) -> TensorMap {
    let t = Tensor::from_vec(vec![2], vec![v, v + 1.0]).unwrap();
    assert_eq!(t.dtype(), DType::F32);
    TensorMap::from([("x".to_string(), t)])
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn throughput_scales_with_the_pool_and_queued_calls_time_out_at_their_deadline() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let per_call = Duration::from_millis(50);
    let artifact = fake_package(dir.path(), "sleepy", json!({"sleep_ms": per_call.as_millis() as u64}));
    let mut rates = vec![];
    for size in [1usize, 2, 4] {
        let registry = Arc::new(TelemetryRegistry::new());
        let engine = PooledEngine::new(Arc::new(CoreMlEngine::new()))
            .with_pool_size(size)
            .with_telemetry(Arc::clone(&registry));
        let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
        let calls = 24u32;
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let (engine, model) = (&engine, &*model);
                s.spawn(move || {
                    for i in 0..calls / 8 {
                        let v = (t * 10 + i) as f32;
                        let out = engine.infer(model, &x(v), Duration::from_secs(30)).unwrap();
                        assert_eq!(out["y"], x(v)["x"]);
                    }
                });
            }
        });
        let rate = calls as f64 / t0.elapsed().as_secs_f64();
        let snap = registry.get(model.cache_key(), "pool").unwrap().snapshot();
        let wait = snap.latency[&Stage::QueueWait];
        println!(
            "pool of {size} Core ML (test runtime) instances, 8 callers, {per_call:?} per prediction: {rate:.1} \
             predictions/s, queue wait p50 {} µs / p99 {} µs, queue depth high water {:?}",
            wait.p50_us, wait.p99_us, snap.queue_depth_high_water
        );
        rates.push(rate);
    }
    // Sleep-bound predictions: each doubling nearly doubles the rate.
    assert!(
        rates[1] > rates[0] * 1.4 && rates[2] > rates[1] * 1.4,
        "rates {rates:?}"
    );

    // One instance busy for 1 s: queued calls leave at their own deadlines.
    let slow = fake_package(dir.path(), "slow", json!({"sleep_ms": 1000}));
    let engine = PooledEngine::new(Arc::new(CoreMlEngine::new())).with_pool_size(1);
    let model = engine.prepare(&slow, PrepareOptions::default()).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| engine.infer(&*model, &x(1.0), Duration::from_secs(30)).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        for ms in [20u64, 150] {
            let timeout = Duration::from_millis(ms);
            let t0 = Instant::now();
            let err = engine.infer(&*model, &x(2.0), timeout).unwrap_err();
            let took = t0.elapsed();
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            assert!(err.to_string().contains("queue"), "{err}");
            assert!(
                took >= timeout && took < timeout + margin(300),
                "a {timeout:?} wait took {took:?}"
            );
        }
    });
}
