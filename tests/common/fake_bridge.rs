//! Helpers for the tests that run against the Swift bridge's test runtime
//! (`scripts/swift/rust-ffi-test.sh`): the runtime check, time margins, and
//! fake models (directories holding a `fake_model.json`; see
//! coreml-bridge/README.md, "The test runtime's fake models").

use std::path::{Path, PathBuf};
use std::time::Duration;

use apple_silicon::{ModelArtifact, ModelFmt};

/// Fails unless the bridge's fake runtime is on (the script sets it).
pub fn require_test_runtime() {
    assert_eq!(
        std::env::var("COREML_BRIDGE_TEST_RUNTIME").as_deref(),
        Ok("1"),
        "these tests need COREML_BRIDGE_TEST_RUNTIME=1 (scripts/swift/rust-ffi-test.sh sets it)"
    );
}

/// `ms` milliseconds, scaled by `CORE_ML_FFI_TIME_SCALE` (the valgrind run
/// slows everything down).
pub fn margin(ms: u64) -> Duration {
    let scale: f64 = std::env::var("CORE_ML_FFI_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    Duration::from_millis((ms as f64 * scale) as u64)
}

/// A fake package `<dir>/<stem>.mlpackage` holding `spec` as fake_model.json.
pub fn fake_package(dir: &Path, stem: &str, spec: serde_json::Value) -> ModelArtifact {
    let pkg = dir.join(format!("{stem}.mlpackage"));
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("fake_model.json"), spec.to_string()).unwrap();
    ModelArtifact::with_format(ModelFmt::MlPackage, &pkg).unwrap()
}

/// A fake compiled model `<dir>/<stem>.mlmodelc` (loaded without compiling).
pub fn fake_compiled(dir: &Path, stem: &str, spec: serde_json::Value) -> PathBuf {
    let compiled = dir.join(format!("{stem}.mlmodelc"));
    std::fs::create_dir_all(&compiled).unwrap();
    std::fs::write(compiled.join("fake_model.json"), spec.to_string()).unwrap();
    compiled
}
