//! On a host without Core ML (Linux), `ResilientEngine` with `CoreMlEngine`
//! as primary and `CandleEngine` as fallback serves the real models through
//! the fallback and says why. (With the `coreml` feature a bridge may be
//! linked, and then this is not the path that runs.)
#![cfg(not(feature = "coreml"))]

use std::time::Duration;

use apple_silicon::core_ml_backend::CoreMlEngine;
use apple_silicon::golden;
use apple_silicon::parity::{compare, Thresholds};
use apple_silicon::telemetry::Stage;
use apple_silicon::{CandleEngine, ErrorKind, InferenceEngine, ModelArtifact, PrepareOptions, ResilientEngine};

#[test]
fn without_core_ml_the_fallback_serves_every_real_model_and_reports_why() {
    assert!(!apple_silicon::core_ml_bridge::is_linked());
    let engine = ResilientEngine::new(Box::new(CoreMlEngine::new()), Box::new(CandleEngine::new()));
    for id in ["mobilenet_v2_fp16", "mobilenet_v2_int8", "minilm_l6_fp32"] {
        let m = golden::downloaded(id).unwrap_or_else(|e| panic!("{e}"));
        let model = engine
            .prepare(
                &ModelArtifact::open(m.package_path()).unwrap(),
                PrepareOptions::default(),
            )
            .unwrap();
        for _ in 0..3 {
            let out = engine
                .infer(model.as_ref(), &m.inputs().unwrap(), Duration::from_secs(60))
                .unwrap();
            let budget = Thresholds {
                l_inf: m.manifest.accuracy_delta_l_inf,
                rmse: m.manifest.accuracy_delta_rmse,
            };
            assert!(compare(&out, &m.expected().unwrap(), budget).unwrap().passed, "{id}");
        }
        // The fallback's telemetry has every stage of those calls, not just the total.
        let (_, fallback) = engine.snapshots(model.as_ref()).unwrap();
        for stage in [Stage::MarshalIn, Stage::Predict, Stage::MarshalOut, Stage::Total] {
            let l = fallback
                .latency
                .get(&stage)
                .unwrap_or_else(|| panic!("{id}: no {stage:?} samples"));
            assert_eq!(l.count, 3, "{id}: {stage:?}");
        }
        assert!(
            fallback.latency[&Stage::Predict].p50_us <= fallback.latency[&Stage::Total].p50_us,
            "{id}: predict is inside the total"
        );
        let caps = engine.capabilities(model.as_ref());
        assert_eq!(caps.engine, "candle", "{id}: {caps:?}");
        let notes = caps.notes.join(" | ");
        assert!(
            notes.contains("Core ML"),
            "{id}: the report must say why the fallback served: {notes}"
        );
    }
    // The primary on its own says why it cannot serve.
    let m = golden::downloaded("mobilenet_v2_fp32").unwrap_or_else(|e| panic!("{e}"));
    let e = CoreMlEngine::new()
        .prepare(
            &ModelArtifact::open(m.package_path()).unwrap(),
            PrepareOptions::default(),
        )
        .err()
        .expect("no Core ML here");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
}
