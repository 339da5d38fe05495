//! Rust → C ABI → `coreml-bridge` → back, end to end.
//!
//! With the bridge linked (`cfg(coreml_bridge)`: on Linux only through
//! `scripts/swift/rust-ffi-test.sh`, which builds the Linux bridge in the Swift
//! chroot and runs this file there with `COREML_BRIDGE_TEST_RUNTIME=1`) every
//! test below runs against the bridge's deterministic fake runtime. The fake
//! models are directories holding a `fake_model.json` (see
//! `coreml-bridge/README.md`, "The test runtime's fake models").
//!
//! In a build without the bridge (the default `cargo test`) those tests are
//! reported as ignored, and the tests at the bottom check that the engine
//! answers `Unavailable` with the reason.

mod common;

use common::fake_bridge::{fake_compiled, fake_package, margin, require_test_runtime};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::process::Command;
use std::ptr;
use std::time::{Duration, Instant};

use apple_silicon::cache::{self, CacheConfig};
use apple_silicon::core_ml_bridge::{self as bridge, ffi, BridgeModel, Operation, Status};
use apple_silicon::{
    CompiledStore, ComputeUnits, CoreMlEngine, CoreMlModel, DType, ErrorKind, InferenceEngine, ModelArtifact,
    ModelCache, ModelFmt, PrepareOptions, PreparedModel, TempDirCompiledStore, Tensor, TensorMap,
};
use serde_json::json;
use std::sync::Arc;

const CHILD_ENV: &str = "CORE_ML_FFI_CHILD";

fn prepare(engine: &CoreMlEngine, artifact: &ModelArtifact, opts: PrepareOptions) -> Box<dyn PreparedModel> {
    engine
        .prepare(artifact, opts)
        .unwrap_or_else(|e| panic!("prepare {}: {e}", artifact.path.display()))
}

fn prepare_err(engine: &CoreMlEngine, artifact: &ModelArtifact, opts: PrepareOptions) -> apple_silicon::Error {
    match engine.prepare(artifact, opts) {
        Ok(_) => panic!("prepare {} succeeded; expected an error", artifact.path.display()),
        Err(e) => e,
    }
}

fn core_ml_model(m: &dyn PreparedModel) -> &CoreMlModel {
    m.as_any().downcast_ref::<CoreMlModel>().expect("a CoreMlModel")
}

fn one(name: &str, t: Tensor) -> TensorMap {
    TensorMap::from([(name.to_string(), t)])
}

fn f32s(shape: Vec<usize>, v: &[f32]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec()).unwrap()
}

const SECS: Duration = Duration::from_secs(20);

/// Runs one `#[ignore]`d child test of this binary in a new process with
/// `envs` set (`None`: removed), for tests that need a different process
/// environment: the variables are process-wide and the other tests run in
/// parallel.
fn run_child(test: &str, envs: &[(&str, Option<&str>)]) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test);
    for (k, v) in envs {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child test {test} failed:\n{stdout}\n{stderr}"
    );
}

/// True in the child process started by [`run_child`] for `test`.
fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(test)
}

/// Copies a bridge string and frees it (NULL → None).
fn take_string(s: *mut c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: a string the bridge handed out, freed right after the copy.
    let text = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
    unsafe { ffi::coreml_free_string(s) };
    Some(text)
}

// ---------------------------------------------------------------------------
// Success paths
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn abi_version_and_runtime_info_come_from_the_linked_bridge() {
    require_test_runtime();
    assert!(bridge::is_linked());
    assert_eq!(bridge::abi_version(), ffi::COREML_BRIDGE_ABI_VERSION);
    bridge::check_abi().unwrap();
    let info = bridge::runtime_info().unwrap();
    assert_eq!(info.bridge_abi_version, ffi::COREML_BRIDGE_ABI_VERSION);
    assert!(info.test_runtime);
    if cfg!(target_os = "linux") {
        assert_eq!(info.platform, "Linux");
        assert!(!info.coreml_available);
        assert!(!info.compute_plan_available);
        assert_eq!(info.coreml_version, None);
        assert_eq!(
            info.reason.as_deref(),
            Some("Core ML is not available on this platform (Linux)")
        );
    }
    let info = CoreMlEngine::availability().unwrap();
    assert!(info.test_runtime);
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn add_one_round_trips_every_input_dtype_the_bridge_accepts() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let artifact = fake_package(dir.path(), "add_one", json!({"behavior": "add_one"}));
    let engine = CoreMlEngine::new();
    let model = prepare(&engine, &artifact, PrepareOptions::default());
    let values = [-3.0f64, -1.0, 0.0, 0.5, 2.0, 100.0];
    assert_eq!(
        bridge::INPUT_DTYPES,
        [DType::F32, DType::F16, DType::F64, DType::I32, DType::I8]
    );
    for dtype in bridge::INPUT_DTYPES {
        let x = Tensor::from_vec(vec![2, 3], values.to_vec()).unwrap().cast(dtype);
        let out = engine.infer(model.as_ref(), &one("x", x.clone()), SECS).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["y"], "{dtype}");
        let y = &out["y"];
        assert_eq!(y.dtype(), dtype, "output dtype follows the input");
        assert_eq!(y.shape(), &[2, 3]);
        let want: Vec<f64> = x.to_f64_vec().iter().map(|v| v + 1.0).collect();
        assert_eq!(y.to_f64_vec(), want, "{dtype}: y = x + 1");
    }
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn several_inputs_padded_outputs_and_the_schema() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({
        "inputs": [
            {"name": "ids", "dtype": "i32", "shape": [1, 4], "ranges": [{"lower": 1, "upper": 8}, {"lower": 4, "upper": 4}]},
            {"name": "image", "dtype": "f16", "shape": [1, 2, 3], "enumerated_shapes": [[1, 2, 3], [2, 2, 3]]},
            {"name": "label", "feature_type": "string", "optional": true}
        ],
        "outputs": [
            {"name": "ids_out", "dtype": "i32", "shape": [1, 4]},
            {"name": "image_out", "dtype": "f16", "shape": [1, 2, 3]}
        ],
        "pad_outputs": 3,
        "metadata": {"author": "tests", "description": "padded", "version": "7", "license": "MIT",
                     "user_defined": {"k": "v"}}
    });
    let artifact = fake_package(dir.path(), "padded", spec);
    let engine = CoreMlEngine::new();
    let model = prepare(&engine, &artifact, PrepareOptions::default());

    let io = model.io_schema();
    let names: Vec<&str> = io.inputs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ids", "image"], "the string input has no tensor spec");
    let ids = io.input("ids").unwrap();
    assert_eq!(
        (ids.dtype, ids.shape.clone(), ids.batch_capable),
        (DType::I32, vec![1, 4], true)
    );
    assert!(ids.accepts_shape(&[8, 4]) && !ids.accepts_shape(&[9, 4]));
    let image = io.input("image").unwrap();
    assert_eq!(image.dtype, DType::F16);
    assert!(image.batch_capable && image.accepts_shape(&[2, 2, 3]));
    let raw = core_ml_model(model.as_ref()).bridge_schema();
    assert_eq!(raw.inputs.len(), 3, "the raw schema keeps the string input");
    assert_eq!(raw.metadata.user_defined["k"], "v");
    assert_eq!(raw.metadata.version, "7");

    let ids_in = Tensor::from_vec(vec![2, 4], vec![1i32, -2, 3, -4, 5, -6, 7, -8]).unwrap();
    let image_in = Tensor::from_vec(vec![2, 2, 3], (0..12).map(|v| v as f32 * 0.25).collect())
        .unwrap()
        .cast(DType::F16);
    let inputs = TensorMap::from([
        ("ids".to_string(), ids_in.clone()),
        ("image".to_string(), image_in.clone()),
    ]);
    let out = engine.infer(model.as_ref(), &inputs, SECS).unwrap();
    // Output i comes from input i; the 3 garbage elements padding every
    // innermost row must not leak into the copies.
    assert_eq!(out.keys().collect::<Vec<_>>(), ["ids_out", "image_out"]);
    assert_eq!(out["ids_out"], ids_in);
    assert_eq!(out["image_out"], image_in);
    let caps = engine.capabilities(model.as_ref());
    assert_eq!(caps.max_batch_size, 2, "image allows batch 2 at most, ids 8");
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn compiled_models_load_without_compiling_and_the_store_compiles_once_per_key() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(TempDirCompiledStore::in_dir(dir.path().join("store")));
    let engine = CoreMlEngine::with_store(store.clone());

    // .mlmodelc: load only.
    let compiled = fake_compiled(dir.path(), "add_one_c", json!({"behavior": "add_one"}));
    let artifact = ModelArtifact::with_format(ModelFmt::MlModelC, &compiled).unwrap();
    let model = prepare(
        &engine,
        &artifact,
        PrepareOptions::default().with_precompiled_only(true),
    );
    assert_eq!(core_ml_model(model.as_ref()).compiled_path(), compiled);
    let out = engine
        .infer(model.as_ref(), &one("x", f32s(vec![2], &[1.0, 2.0])), SECS)
        .unwrap();
    assert_eq!(out["y"].to_vec::<f32>().unwrap(), [2.0, 3.0]);
    assert_eq!(store.builds(), 0);

    // Precompiled-only refuses to compile a package the store does not hold.
    let pkg = fake_package(
        dir.path(),
        "pkg",
        json!({"behavior": "add_one", "metadata": {"author": "pkg"}}),
    );
    let e = prepare_err(&engine, &pkg, PrepareOptions::default().with_precompiled_only(true));
    assert_eq!(e.kind(), ErrorKind::Compile);
    assert!(e.to_string().contains("precompiled-only mode forbids compiling"), "{e}");
    assert_eq!(store.builds(), 0);

    // Compiled once, then served from the store (also in precompiled-only mode).
    let a = prepare(&engine, &pkg, PrepareOptions::default());
    let b = prepare(&engine, &pkg, PrepareOptions::default());
    let c = prepare(&engine, &pkg, PrepareOptions::default().with_precompiled_only(true));
    assert_eq!(store.builds(), 1);
    let path = core_ml_model(a.as_ref()).compiled_path().to_path_buf();
    assert_eq!(
        path.file_name().unwrap(),
        "pkg.mlmodelc",
        "the bridge names it after the package stem"
    );
    assert!(path.starts_with(store.root()));
    assert_eq!(core_ml_model(b.as_ref()).compiled_path(), path);
    assert_eq!(core_ml_model(c.as_ref()).compiled_path(), path);
    assert_eq!(a.cache_key(), b.cache_key());
    assert!(
        a.cache_key().contains(&pkg.sha256_hex()) && a.cache_key().contains(":all:"),
        "{}",
        a.cache_key()
    );
    // Other compute units: another key, another compile.
    let d = prepare(
        &engine,
        &pkg,
        PrepareOptions::default().with_compute_units(ComputeUnits::CpuOnly),
    );
    assert!(d.cache_key().contains(":cpu_only:"), "{}", d.cache_key());
    assert_eq!(store.builds(), 2);
    assert!(store.lookup(&key_of(&pkg, ComputeUnits::CpuOnly)).unwrap().is_some());
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn core_ml_compiles_the_bytes_that_were_hashed_and_nothing_else() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(TempDirCompiledStore::in_dir(dir.path().join("store")));
    let engine = CoreMlEngine::with_store(store.clone());
    let pkg = fake_package(dir.path(), "swapped", json!({"behavior": "add_one"}));
    // Swapped between open (which hashed) and prepare: nothing is compiled or stored.
    std::fs::write(
        pkg.path.join("fake_model.json"),
        json!({"behavior": "identity"}).to_string(),
    )
    .unwrap();
    let e = prepare_err(&engine, &pkg, PrepareOptions::default());
    assert_eq!(e.kind(), ErrorKind::InvalidArtifact);
    assert!(e.to_string().contains("changed since it was opened"), "{e}");
    assert_eq!(store.builds(), 0);
    assert!(store.lookup(&key_of(&pkg, ComputeUnits::All)).unwrap().is_none());

    // Reopened, it compiles from a private copy that is gone once the entry is installed.
    let pkg = ModelArtifact::with_format(ModelFmt::MlPackage, &pkg.path).unwrap();
    let m = prepare(&engine, &pkg, PrepareOptions::default());
    let compiled = core_ml_model(m.as_ref()).compiled_path().to_path_buf();
    assert_eq!(compiled.file_name().unwrap(), "swapped.mlmodelc");
    let entry: Vec<_> = std::fs::read_dir(compiled.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entry, ["swapped.mlmodelc"], "the compile's source copy is removed");
    let out = engine
        .infer(m.as_ref(), &one("x", f32s(vec![2], &[1.0, 2.0])), SECS)
        .unwrap();
    assert_eq!(
        out["y"].to_vec::<f32>().unwrap(),
        [1.0, 2.0],
        "the identity model the second hash covers"
    );
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn the_compiled_model_cache_serves_another_engine_without_compiling() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let open = || Arc::new(ModelCache::open(CacheConfig::at(&root), cache::host_meta()).unwrap());
    let pkg = fake_package(
        dir.path(),
        "cached",
        json!({"behavior": "add_one", "compile_sleep_ms": 200}),
    );
    let x = one("x", f32s(vec![2], &[1.0, -1.0]));

    let first = open();
    let engine = CoreMlEngine::with_store(first.clone());
    let model = prepare(&engine, &pkg, PrepareOptions::default());
    assert_eq!(
        engine.infer(model.as_ref(), &x, SECS).unwrap()["y"]
            .to_vec::<f32>()
            .unwrap(),
        [2.0, 0.0]
    );
    let compiled = core_ml_model(model.as_ref()).compiled_path().to_path_buf();
    assert!(
        compiled.starts_with(&root) && compiled.ends_with("cached.mlmodelc"),
        "{}",
        compiled.display()
    );
    assert_eq!((first.stats().installs, first.stats().misses), (1, 1));
    assert!(engine
        .capabilities(model.as_ref())
        .notes
        .iter()
        .any(|n| n == "compiled models in the cache store"));

    // Another handle on the same root (another process, say) finds the entry.
    let second = open();
    let engine = CoreMlEngine::with_store(second.clone());
    let t = Instant::now();
    let model = prepare(&engine, &pkg, PrepareOptions::default().with_precompiled_only(true));
    assert!(
        t.elapsed() < Duration::from_millis(200) + margin(1000),
        "no compile: {:?}",
        t.elapsed()
    );
    assert_eq!(core_ml_model(model.as_ref()).compiled_path(), compiled);
    assert_eq!((second.stats().hits, second.stats().installs), (1, 0));
    assert_eq!(
        engine.infer(model.as_ref(), &x, SECS).unwrap()["y"]
            .to_vec::<f32>()
            .unwrap(),
        [2.0, 0.0]
    );
}

fn key_of(artifact: &ModelArtifact, units: ComputeUnits) -> apple_silicon::CacheKey {
    CoreMlEngine::cache_key(artifact, units, &bridge::runtime_info().unwrap())
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn a_real_ml_program_package_is_keyed_by_its_content_and_spec() {
    require_test_runtime();
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/mlp_fp32/model.mlpackage");
    let artifact = ModelArtifact::open(&pkg).unwrap();
    let key = key_of(&artifact, ComputeUnits::CpuAndNe);
    assert_eq!(
        (
            key.backend.as_str(),
            key.quantization.as_str(),
            key.coreml_version.as_str()
        ),
        ("mlprogram", "fp32", "test-runtime")
    );
    assert_ne!(key.shape_key, "unknown");
    // The fake runtime serves it as `identity` (package stem `model`).
    let engine = CoreMlEngine::new();
    let model = prepare(
        &engine,
        &artifact,
        PrepareOptions::default().with_compute_units(ComputeUnits::CpuAndNe),
    );
    assert_eq!(model.cache_key(), key.to_string());
    let x = f32s(vec![1, 2], &[0.25, -4.0]);
    assert_eq!(
        engine.infer(model.as_ref(), &one("x", x.clone()), SECS).unwrap()["y"],
        x
    );
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn capabilities_report_units_and_the_neural_engine_share_from_the_compute_plan() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let ops = json!([
        {"operator": "conv", "device": "neural_engine", "cost": 0.5},
        {"operator": "relu", "device": "neural_engine"},
        {"operator": "linear", "device": "neural_engine"},
        {"operator": "softmax", "device": "cpu"}
    ]);
    let artifact = fake_package(dir.path(), "planned", json!({"operations": ops}));
    let engine = CoreMlEngine::new();
    let model = prepare(
        &engine,
        &artifact,
        PrepareOptions::default().with_compute_units(ComputeUnits::CpuAndNe),
    );
    let plan = bridge::compute_plan(
        core_ml_model(model.as_ref()).compiled_path(),
        ComputeUnits::CpuAndNe,
        SECS,
    )
    .unwrap();
    assert_eq!(plan.operations.len(), 4);
    assert_eq!(plan.operations[0].operator, "conv");
    let caps = engine.capabilities(model.as_ref());
    assert_eq!(caps.engine, "coreml");
    assert_eq!(caps.compute_units_requested, ComputeUnits::CpuAndNe);
    assert_eq!(caps.compute_units_actual, Some(ComputeUnits::CpuAndNe));
    assert_eq!(caps.ane_op_coverage_pct, Some(75));
    assert_eq!(caps.supported_dtypes, bridge::INPUT_DTYPES.to_vec());
    assert!(
        caps.notes.iter().any(|n| n.contains("test runtime")),
        "{:?}",
        caps.notes
    );
    assert!(
        caps.notes.iter().any(|n| n.contains("3 neural engine")),
        "{:?}",
        caps.notes
    );

    // Without operations the fake plans one CPU op.
    let plain = fake_package(dir.path(), "plain", json!({"behavior": "identity"}));
    let model = prepare(&engine, &plain, PrepareOptions::default());
    let caps = engine.capabilities(model.as_ref());
    assert_eq!(
        (caps.ane_op_coverage_pct, caps.compute_units_actual),
        (Some(0), Some(ComputeUnits::CpuOnly))
    );
}

// ---------------------------------------------------------------------------
// Every error status, mapped
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn failures_at_every_stage_map_to_their_error_kind_and_keep_the_nserror_chain() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let chain =
        "[com.apple.CoreML code=0] fake {stage} failure; caused by: [NSPOSIXErrorDomain code=5] Input/output error";

    let e = prepare_err(
        &engine,
        &fake_package(dir.path(), "c", json!({"fail_stage": "compile"})),
        PrepareOptions::default(),
    );
    assert_eq!(e.kind(), ErrorKind::Compile, "{e}");
    assert!(e.to_string().contains(&chain.replace("{stage}", "compile")), "{e}");

    let e = prepare_err(
        &engine,
        &fake_package(dir.path(), "l", json!({"fail_stage": "load"})),
        PrepareOptions::default(),
    );
    assert_eq!(e.kind(), ErrorKind::Load, "{e}");
    assert!(e.to_string().contains(&chain.replace("{stage}", "load")), "{e}");

    let custom = json!({"fail_stage": "predict", "error": {"domain": "com.apple.Espresso", "code": -7,
        "message": "espresso fell over", "underlying": {"domain": "NSPOSIXErrorDomain", "code": 12, "message": "ENOMEM"}}});
    let model = prepare(
        &engine,
        &fake_package(dir.path(), "p", custom),
        PrepareOptions::default(),
    );
    let e = engine
        .infer(model.as_ref(), &one("x", f32s(vec![1], &[1.0])), SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal, "COREML_ERR_PREDICT → Internal: {e}");
    assert!(e.to_string().contains("Core ML prediction failed"), "{e}");
    assert!(
        e.to_string().contains(
            "[com.apple.Espresso code=-7] espresso fell over; caused by: [NSPOSIXErrorDomain code=12] ENOMEM"
        ),
        "{e}"
    );
    // A failed prediction does not poison the model: it still answers.
    assert_eq!(core_ml_model(model.as_ref()).rebuilds(), 0);

    // An input that is not a multi-array: UNSUPPORTED.
    let spec = json!({"inputs": [{"name": "s", "feature_type": "string"}], "outputs": [{"name": "y"}]});
    let model = prepare(&engine, &fake_package(dir.path(), "s", spec), PrepareOptions::default());
    let e = engine
        .infer(model.as_ref(), &one("s", f32s(vec![1], &[1.0])), SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("only feeds multi-arrays"), "{e}");

    // Artifacts the engine does not run.
    let st = dir.path().join("w.safetensors");
    std::fs::write(&st, b"not really").unwrap();
    let e = prepare_err(
        &engine,
        &ModelArtifact::with_format(ModelFmt::Safetensors, &st).unwrap(),
        PrepareOptions::default(),
    );
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn schema_mismatches_name_what_the_model_expects_and_what_came() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let spec =
        json!({"inputs": [{"name": "x", "dtype": "f32", "shape": [1, 3]}], "outputs": [{"name": "y", "dtype": "f32"}]});
    let model = prepare(
        &engine,
        &fake_package(dir.path(), "fixed", spec),
        PrepareOptions::default(),
    );
    let ok = engine.infer(model.as_ref(), &one("x", f32s(vec![1, 3], &[1.0, 2.0, 3.0])), SECS);
    assert!(ok.is_ok(), "{ok:?}");

    let e = engine
        .infer(model.as_ref(), &one("x", f32s(vec![2, 3], &[0.0; 6])), SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    let text = e.to_string();
    assert!(text.contains("expected inputs [x: f32 [1, 3]]"), "{text}");
    assert!(text.contains("got {x: f32 [2, 3]}"), "{text}");
    assert!(
        text.contains("has shape [2, 3]; the model accepts shape [1, 3]"),
        "the bridge's reason: {text}"
    );

    let e = engine
        .infer(model.as_ref(), &one("z", f32s(vec![1, 3], &[0.0; 3])), SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("'z' is not an input of the model"), "{e}");

    // Refused on the Rust side before the call, with expected and got.
    let e = engine
        .infer(
            model.as_ref(),
            &one("x", Tensor::from_vec(vec![3], vec![1u8, 2, 3]).unwrap()),
            SECS,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("got u8"), "{e}");
    // None of this poisoned the model.
    assert!(engine
        .infer(model.as_ref(), &one("x", f32s(vec![1, 3], &[0.0; 3])), SECS)
        .is_ok());
    assert_eq!(core_ml_model(model.as_ref()).rebuilds(), 0);
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn invalid_arguments_from_the_safe_wrappers_are_invalid_artifacts() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.mlpackage");
    let e = bridge::compile_model(&missing, dir.path(), SECS).unwrap_err();
    assert_eq!(e.status(), Status::InvalidArgument);
    assert_eq!(e.error().kind(), ErrorKind::InvalidArtifact);
    assert!(e.message().contains("does not exist"), "{}", e.message());

    // The destination already holds the result: the bridge never overwrites.
    let pkg = fake_package(dir.path(), "twice", json!({}));
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let out = bridge::compile_model(&pkg.path, &dest, SECS).unwrap();
    assert_eq!(out, dest.join("twice.mlmodelc"));
    let e = bridge::compile_model(&pkg.path, &dest, SECS).unwrap_err();
    assert_eq!(e.status(), Status::InvalidArgument);
    assert!(e.message().contains("already exists"), "{}", e.message());

    let e = BridgeModel::load(&dir.path().join("nope.mlmodelc"), ComputeUnits::All, SECS).unwrap_err();
    assert_eq!(
        (e.status(), e.error().kind()),
        (Status::InvalidArgument, ErrorKind::InvalidArtifact)
    );
    let e = bridge::compute_plan(&dir.path().join("nope.mlmodelc"), ComputeUnits::All, SECS).unwrap_err();
    assert_eq!(
        (e.status(), e.error().kind()),
        (Status::InvalidArgument, ErrorKind::InvalidArtifact)
    );

    // A broken fake_model.json.
    let bad = dir.path().join("bad.mlmodelc");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("fake_model.json"), "{not json").unwrap();
    let e = BridgeModel::load(&bad, ComputeUnits::All, SECS).unwrap_err();
    assert_eq!(e.status(), Status::InvalidArgument);
    assert!(e.message().contains("bad fake_model.json"), "{}", e.message());
}

/// Calls coreml_predict directly; returns (status, error message).
fn raw_predict(handle: *mut c_void, inputs: &[ffi::CoremlTensor], timeout_ms: i64) -> (i32, Option<String>) {
    let mut outputs: *mut ffi::CoremlOutputs = ptr::null_mut();
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: descriptors built by the caller from live memory; out slots are live.
    let code = unsafe {
        ffi::coreml_predict(
            handle,
            inputs.as_ptr(),
            inputs.len() as i32,
            timeout_ms,
            &mut outputs,
            &mut err,
        )
    };
    // SAFETY: NULL or outputs the bridge handed out.
    unsafe { ffi::coreml_free_outputs(outputs) };
    (code, take_string(err))
}

fn raw_load(compiled: &Path, timeout_ms: i64) -> *mut c_void {
    let path = CString::new(compiled.to_str().unwrap()).unwrap();
    let mut handle: *mut c_void = ptr::null_mut();
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: a live C string and live out slots.
    let code = unsafe {
        ffi::coreml_load_model(
            path.as_ptr(),
            ffi::COREML_COMPUTE_ALL,
            timeout_ms,
            &mut handle,
            &mut err,
        )
    };
    let msg = take_string(err);
    assert_eq!(code, ffi::COREML_OK, "load: {msg:?}");
    assert!(!handle.is_null());
    handle
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn statuses_the_safe_api_never_causes_are_returned_and_mapped() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let handle = raw_load(&fake_compiled(dir.path(), "raw", json!({})), 20_000);
    let name = CString::new("x").unwrap();
    let shape = [2i64];
    let data = [1.0f32, 2.0];
    let x = ffi::CoremlTensor {
        name: name.as_ptr(),
        dtype: ffi::COREML_DTYPE_F32,
        rank: 1,
        shape: shape.as_ptr(),
        strides: ptr::null(),
        data: data.as_ptr().cast(),
        byte_len: 8,
    };
    let map = |code: i32, msg: &Option<String>| {
        bridge::BridgeError::new(
            Status::from_code(code),
            Operation::Predict,
            "raw",
            msg.clone().unwrap(),
            SECS,
        )
    };
    assert_eq!(raw_predict(handle, &[x], 20_000).0, ffi::COREML_OK);

    // A garbage handle: INVALID_HANDLE → Internal.
    let (code, msg) = raw_predict(ptr::without_provenance_mut(0xdead_beef), &[x], 20_000);
    assert_eq!(code, ffi::COREML_ERR_INVALID_HANDLE, "{msg:?}");
    assert!(msg.as_deref().unwrap().contains("unknown model handle"), "{msg:?}");
    assert_eq!(map(code, &msg).error().kind(), ErrorKind::Internal);

    // A zero timeout: INVALID_ARGUMENT → Internal for a prediction (our bug if it happened).
    let (code, msg) = raw_predict(handle, &[x], 0);
    assert_eq!(code, ffi::COREML_ERR_INVALID_ARGUMENT, "{msg:?}");
    assert!(msg.as_deref().unwrap().contains("timeout_ms must be > 0"), "{msg:?}");
    assert_eq!(map(code, &msg).error().kind(), ErrorKind::Internal);

    // A shape whose size overflows: OUT_OF_MEMORY → MemoryPressure.
    let huge = [1i64 << 40, 1 << 40];
    let big = ffi::CoremlTensor {
        rank: 2,
        shape: huge.as_ptr(),
        ..x
    };
    let (code, msg) = raw_predict(handle, &[big], 20_000);
    assert_eq!(code, ffi::COREML_ERR_OUT_OF_MEMORY, "{msg:?}");
    assert_eq!(map(code, &msg).error().kind(), ErrorKind::MemoryPressure);

    // A NULL out pointer, with and without an error slot.
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: NULL out pointers are part of the contract (INVALID_ARGUMENT).
    let code = unsafe { ffi::coreml_runtime_info(ptr::null_mut(), &mut err) };
    assert_eq!(code, ffi::COREML_ERR_INVALID_ARGUMENT);
    assert!(take_string(err).unwrap().contains("out_json is NULL"));
    // SAFETY: as above; the message is dropped by the bridge.
    assert_eq!(
        unsafe { ffi::coreml_runtime_info(ptr::null_mut(), ptr::null_mut()) },
        ffi::COREML_ERR_INVALID_ARGUMENT
    );

    // Frees of NULL, unknown and repeated pointers are ignored.
    // SAFETY: the header allows all of these.
    unsafe {
        ffi::coreml_free_outputs(ptr::null_mut());
        ffi::coreml_free_string(ptr::null_mut());
        ffi::coreml_free_model(ptr::null_mut());
        ffi::coreml_free_model(ptr::without_provenance_mut(0xdead_beef));
        ffi::coreml_free_model(handle);
        ffi::coreml_free_model(handle);
    }
    let (code, _) = raw_predict(handle, &[x], 20_000);
    assert_eq!(code, ffi::COREML_ERR_INVALID_HANDLE, "a freed handle is unknown");
}

/// Issue #13: a descriptor with zero strides and a huge shape used to be
/// copied in full before any deadline or schema check (56.5 s, then
/// OUT_OF_MEMORY). Now it is capped before any allocation, refused by the
/// schema before any copy, and a copy that is allowed stops at the deadline.
#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn huge_zero_stride_inputs_are_capped_checked_and_stopped_at_the_deadline() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let any_shape = raw_load(
        &fake_compiled(dir.path(), "add_one", json!({"behavior": "add_one"})),
        20_000,
    );
    let fixed = raw_load(
        &fake_compiled(
            dir.path(),
            "fixed",
            json!({"inputs": [{"name": "x", "dtype": "f32", "shape": [2]}]}),
        ),
        20_000,
    );
    let name = CString::new("x").unwrap();
    let one = [1.0f32];
    let zero = [0i64; 2];
    let tensor = |shape: &[i64]| ffi::CoremlTensor {
        name: name.as_ptr(),
        dtype: ffi::COREML_DTYPE_F32,
        rank: shape.len() as i32,
        shape: shape.as_ptr(),
        strides: zero.as_ptr(),
        data: one.as_ptr().cast(),
        byte_len: 4,
    };
    // 4 TiB of f32 described by 4 bytes: past the byte cap, refused at once.
    let huge = [1i64 << 20, 1 << 20];
    let t = Instant::now();
    let (code, msg) = raw_predict(any_shape, &[tensor(&huge)], 60_000);
    assert_eq!(code, ffi::COREML_ERR_OUT_OF_MEMORY, "{msg:?}");
    assert!(
        msg.as_deref().unwrap().contains("COREML_BRIDGE_MAX_INPUT_BYTES"),
        "{msg:?}"
    );
    assert!(t.elapsed() < margin(500), "{:?}", t.elapsed());
    // 1 GiB: under the cap, but its gather takes far longer than 20 ms.
    let big = [1i64 << 28];
    let t = Instant::now();
    let (code, msg) = raw_predict(any_shape, &[tensor(&big)], 20);
    let took = t.elapsed();
    assert_eq!(code, ffi::COREML_ERR_TIMEOUT, "{msg:?}");
    assert!(msg.as_deref().unwrap().contains("copying input 'x'"), "{msg:?}");
    assert!(took < Duration::from_millis(20) + margin(250), "took {took:?}");
    println!("1 GiB zero-stride input with a 20 ms timeout: TIMEOUT after {took:?}");
    // Nothing ran on the model: the handle is not poisoned.
    let (code, msg) = raw_predict(any_shape, &[tensor(&[3])], 20_000);
    assert_eq!(code, ffi::COREML_OK, "{msg:?}");
    // A shape the model does not take: refused before the copy.
    let t = Instant::now();
    let (code, msg) = raw_predict(fixed, &[tensor(&big)], 60_000);
    assert_eq!(code, ffi::COREML_ERR_SCHEMA_MISMATCH, "{msg:?}");
    assert!(t.elapsed() < margin(500), "{:?}", t.elapsed());
    // SAFETY: handles from raw_load, each freed once.
    unsafe {
        ffi::coreml_free_model(any_shape);
        ffi::coreml_free_model(fixed);
    }
}

// ---------------------------------------------------------------------------
// Timeouts, poisoning, rebuilds, freeing while running
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn compile_load_and_each_inference_stage_are_timed() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let artifact = fake_package(
        dir.path(),
        "staged",
        json!({"compile_sleep_ms": 150, "load_sleep_ms": 100, "sleep_ms": 60}),
    );
    let engine = CoreMlEngine::new();
    let model = prepare(&engine, &artifact, PrepareOptions::default());
    let p = model.prepare_timings();
    println!("prepare stages: {p:?}");
    assert!(p.compile.unwrap() >= Duration::from_millis(150), "{p:?}");
    assert!(p.load.unwrap() >= Duration::from_millis(100), "{p:?}");
    let x = one("x", f32s(vec![3], &[1.0, 2.0, 3.0]));
    let (out, t) = engine.infer_timed(model.as_ref(), &x, SECS).unwrap();
    println!("inference stages: {t:?}");
    assert_eq!(out["y"], x["x"]);
    let (i, pr, o, total) = (
        t.marshal_in.unwrap(),
        t.predict.unwrap(),
        t.marshal_out.unwrap(),
        t.total.unwrap(),
    );
    assert!(pr >= Duration::from_millis(60), "{t:?}");
    assert!(i + pr + o <= total, "the stages nest inside the total: {t:?}");
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn a_prediction_timeout_returns_in_time_and_the_next_call_rebuilds_the_model() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let artifact = fake_package(dir.path(), "slow", json!({"sleep_ms": 1000}));
    let engine = CoreMlEngine::new();
    let model = prepare(&engine, &artifact, PrepareOptions::default());
    let m = core_ml_model(model.as_ref());
    let x = one("x", f32s(vec![3], &[1.0, 2.0, 3.0]));

    let deadline = Duration::from_millis(150);
    let t = Instant::now();
    let e = engine.infer(model.as_ref(), &x, deadline).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        e.to_string().contains("prediction of") && e.to_string().contains("timed out after 150ms"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(140),
        "returned before the deadline: {took:?}"
    );
    assert!(
        took < deadline + margin(750),
        "returned {took:?} after a {deadline:?} deadline"
    );
    assert_eq!(m.rebuilds(), 0);

    // The poisoned handle was freed (its late prediction still runs); the
    // next call loads the model again and succeeds.
    let t = Instant::now();
    let out = engine.infer(model.as_ref(), &x, SECS).unwrap();
    assert_eq!(out["y"], x["x"]);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "the new handle still sleeps 1 s"
    );
    assert_eq!(m.rebuilds(), 1);
    engine.infer(model.as_ref(), &x, SECS).unwrap();
    assert_eq!(m.rebuilds(), 1, "a healthy model is not reloaded");
    let caps = engine.capabilities(model.as_ref());
    assert!(
        caps.notes.iter().any(|n| n.contains("reloaded 1 time")),
        "{:?}",
        caps.notes
    );
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn the_bridge_poisons_a_timed_out_handle_and_the_wrapper_says_so() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let compiled = fake_compiled(dir.path(), "slow_w", json!({"sleep_ms": 600}));
    let model = BridgeModel::load(&compiled, ComputeUnits::CpuOnly, SECS).unwrap();
    assert_eq!(model.compute_units(), ComputeUnits::CpuOnly);
    let x = one("x", f32s(vec![1], &[1.0]));
    let e = model.predict(&x, Duration::from_millis(100)).unwrap_err();
    assert_eq!(e.status(), Status::Timeout);
    assert_eq!(e.error().kind(), ErrorKind::Timeout);
    assert!(e.message().contains("poisoned"), "{}", e.message());
    assert!(model.is_poisoned());

    let e = model.predict(&x, SECS).unwrap_err();
    assert_eq!(e.status(), Status::Poisoned);
    assert!(e.is_poisoned());
    assert_eq!(e.error().kind(), ErrorKind::Load, "POISONED → Load (load it again)");
    assert!(e.to_string().contains("load it again"), "{e}");
    // The schema still answers on a poisoned handle.
    assert!(model.schema_json().unwrap().contains("\"inputs\""));
    // Dropped (freed) while the late prediction may still run.
    drop(model);
    std::thread::sleep(Duration::from_millis(700));
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn compile_and_load_timeouts_are_bounded_and_leave_nothing_in_the_store() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(TempDirCompiledStore::in_dir(dir.path().join("store")));
    let engine = CoreMlEngine::with_store(store.clone());
    let bound = Duration::from_millis(200);

    let artifact = fake_package(dir.path(), "slow_compile", json!({"compile_sleep_ms": 1500}));
    let t = Instant::now();
    let e = prepare_err(
        &engine,
        &artifact,
        PrepareOptions::default().with_prepare_timeout(bound),
    );
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        e.to_string().contains("compile of") && e.to_string().contains("after 200ms"),
        "{e}"
    );
    assert!(t.elapsed() < bound + margin(750), "{:?}", t.elapsed());
    assert_eq!(store.builds(), 0);
    let left: Vec<_> = std::fs::read_dir(store.root()).map(|d| d.collect()).unwrap_or_default();
    assert!(
        left.is_empty(),
        "a timed-out compile leaves nothing in the store: {left:?}"
    );

    let compiled = fake_compiled(dir.path(), "slow_load", json!({"load_sleep_ms": 1500}));
    let artifact = ModelArtifact::with_format(ModelFmt::MlModelC, &compiled).unwrap();
    let t = Instant::now();
    let e = prepare_err(
        &engine,
        &artifact,
        PrepareOptions::default().with_prepare_timeout(bound),
    );
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("load of"), "{e}");
    assert!(t.elapsed() < bound + margin(750), "{:?}", t.elapsed());

    // With enough time both work (the late work above was discarded).
    let artifact = fake_package(dir.path(), "slow_compile", json!({"compile_sleep_ms": 1500}));
    prepare(&engine, &artifact, PrepareOptions::default());
    assert_eq!(store.builds(), 1);
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn freeing_a_handle_while_another_thread_predicts_is_safe() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let handle = raw_load(
        &fake_compiled(dir.path(), "inflight", json!({"sleep_ms": 1000})),
        20_000,
    );
    let id = handle.addr();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let name = CString::new("x").unwrap();
        let shape = [3i64];
        let data = [1i32, 2, 3];
        let x = ffi::CoremlTensor {
            name: name.as_ptr(),
            dtype: ffi::COREML_DTYPE_I32,
            rank: 1,
            shape: shape.as_ptr(),
            strides: ptr::null(),
            data: data.as_ptr().cast(),
            byte_len: 12,
        };
        let mut outputs: *mut ffi::CoremlOutputs = ptr::null_mut();
        let mut err: *mut c_char = ptr::null_mut();
        started_tx.send(()).unwrap();
        // SAFETY: live descriptors and out slots; the handle is an id.
        let code =
            unsafe { ffi::coreml_predict(ptr::without_provenance_mut(id), &x, 1, 20_000, &mut outputs, &mut err) };
        let msg = take_string(err);
        assert_eq!(code, ffi::COREML_OK, "{msg:?}");
        // SAFETY: COREML_OK: one output with three i32s, valid until freed below.
        let y: Vec<i32> = unsafe {
            let o = &*outputs;
            assert_eq!(o.count, 1);
            let t = &*o.tensors;
            std::slice::from_raw_parts(t.data.cast::<i32>(), 3).to_vec()
        };
        // SAFETY: outputs from coreml_predict, freed once.
        unsafe { ffi::coreml_free_outputs(outputs) };
        y
    });
    // The worker is about to call coreml_predict; give the call time to get
    // queued (the prediction then sleeps 1 s), and free the handle under it.
    started_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    // SAFETY: the handle came from coreml_load_model; the bridge allows
    // freeing while a prediction on it is in flight.
    unsafe { ffi::coreml_free_model(handle) };
    assert!(t.elapsed() < margin(500), "freeing does not wait for the prediction");
    assert_eq!(worker.join().unwrap(), [1, 2, 3], "the in-flight prediction completes");
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn dropping_a_model_whose_timed_out_prediction_still_runs_is_safe() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let artifact = fake_package(dir.path(), "drop_late", json!({"sleep_ms": 500, "pad_outputs": 2}));
    let engine = CoreMlEngine::new();
    let model = prepare(&engine, &artifact, PrepareOptions::default());
    let x = one("x", f32s(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]));
    let e = engine.infer(model.as_ref(), &x, Duration::from_millis(80)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    drop(model);
    drop(engine);
    drop(x);
    // The late prediction finishes on the bridge's queue after its handle,
    // its Rust inputs and the compiled store are gone.
    std::thread::sleep(Duration::from_millis(700));
    // The bridge still serves new models.
    let engine = CoreMlEngine::new();
    let model = prepare(
        &engine,
        &fake_package(dir.path(), "after", json!({"behavior": "add_one"})),
        PrepareOptions::default(),
    );
    let y = engine
        .infer(model.as_ref(), &one("x", f32s(vec![1], &[1.0])), SECS)
        .unwrap();
    assert_eq!(y["y"].to_vec::<f32>().unwrap(), [2.0]);
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn concurrent_calls_on_one_model_are_serialised_and_waiting_is_bounded() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let artifact = fake_package(dir.path(), "busy", json!({"sleep_ms": 1000}));
    let engine = CoreMlEngine::new();
    let model = prepare(&engine, &artifact, PrepareOptions::default());
    let x = one("x", f32s(vec![1], &[7.0]));
    let t = Instant::now();
    std::thread::scope(|s| {
        let a = s.spawn(|| engine.infer(model.as_ref(), &x, SECS));
        let b = s.spawn(|| engine.infer(model.as_ref(), &x, SECS));
        // A and B have started: one of them holds the model for 1 s.
        std::thread::sleep(Duration::from_millis(300));
        let t_c = Instant::now();
        let e = engine
            .infer(model.as_ref(), &x, Duration::from_millis(100))
            .unwrap_err();
        let c_took = t_c.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(
            e.to_string().contains("another inference on it is still running"),
            "{e}"
        );
        assert!(c_took >= Duration::from_millis(95), "{c_took:?}");
        assert!(c_took < Duration::from_millis(100) + margin(750), "{c_took:?}");
        assert_eq!(a.join().unwrap().unwrap()["y"], x["x"]);
        assert_eq!(b.join().unwrap().unwrap()["y"], x["x"]);
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1990),
        "two 1 s predictions ran one after the other"
    );
    assert_eq!(
        core_ml_model(model.as_ref()).rebuilds(),
        0,
        "waiting out a deadline poisons nothing"
    );
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn many_calls_with_errors_in_between_keep_working() {
    // Exercises every ownership path many times (strings, outputs, handles);
    // the valgrind run of this binary checks that nothing leaks or is freed twice.
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let spec = json!({"behavior": "add_one", "inputs": [{"name": "x", "dtype": "f32", "shape": [2]}],
                      "outputs": [{"name": "y", "dtype": "f32", "shape": [2]}], "pad_outputs": 1});
    let model = prepare(
        &engine,
        &fake_package(dir.path(), "loop", spec),
        PrepareOptions::default(),
    );
    let good = one("x", f32s(vec![2], &[1.0, 2.0]));
    let bad = one("x", f32s(vec![3], &[1.0, 2.0, 3.0]));
    for i in 0..50 {
        assert_eq!(
            engine.infer(model.as_ref(), &good, SECS).unwrap()["y"]
                .to_vec::<f32>()
                .unwrap(),
            [2.0, 3.0]
        );
        if i % 5 == 0 {
            assert_eq!(
                engine.infer(model.as_ref(), &bad, SECS).unwrap_err().kind(),
                ErrorKind::SchemaMismatch
            );
            assert!(bridge::runtime_info().is_ok());
        }
    }
    for i in 0..5 {
        let m = prepare(
            &engine,
            &fake_package(dir.path(), &format!("m{i}"), json!({"n": i})),
            PrepareOptions::default(),
        );
        drop(m);
    }
}

// ---------------------------------------------------------------------------
// Process-wide environment: run in child processes
// ---------------------------------------------------------------------------

#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn without_the_test_runtime_linux_is_unavailable() {
    require_test_runtime();
    run_child("child_unavailable", &[("COREML_BRIDGE_TEST_RUNTIME", None)]);
}

#[cfg(target_os = "linux")]
#[test]
#[ignore = "child process of without_the_test_runtime_linux_is_unavailable"]
fn child_unavailable() {
    if !is_child("child_unavailable") {
        return;
    }
    let info = bridge::runtime_info().unwrap();
    assert!(!info.coreml_available && !info.test_runtime);
    let dir = tempfile::tempdir().unwrap();
    let artifact = fake_package(dir.path(), "identity", json!({}));
    let e = prepare_err(&CoreMlEngine::new(), &artifact, PrepareOptions::default());
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert_eq!(
        e.to_string(),
        "coreml is unavailable: Core ML is not available on this platform (Linux)"
    );
    // The bridge's own answer, through the wrapper.
    let e = BridgeModel::load(&fake_compiled(dir.path(), "c", json!({})), ComputeUnits::All, SECS).unwrap_err();
    assert_eq!(
        (e.status(), e.error().kind()),
        (Status::Unavailable, ErrorKind::Unavailable)
    );
    let e = bridge::compute_plan(&dir.path().join("c.mlmodelc"), ComputeUnits::All, SECS).unwrap_err();
    assert_eq!(e.status(), Status::Unavailable);
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn the_compute_units_override_comes_from_the_environment() {
    require_test_runtime();
    run_child(
        "child_units_override",
        &[(ComputeUnits::ENV_OVERRIDE, Some("cpu_only"))],
    );
    run_child(
        "child_units_override_invalid",
        &[(ComputeUnits::ENV_OVERRIDE, Some("gpu_only"))],
    );
}

#[test]
#[ignore = "child process of the_compute_units_override_comes_from_the_environment"]
fn child_units_override() {
    if !is_child("child_units_override") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let artifact = fake_package(dir.path(), "units", json!({}));
    let model = prepare(
        &engine,
        &artifact,
        PrepareOptions::default().with_compute_units(ComputeUnits::CpuAndNe),
    );
    assert_eq!(core_ml_model(model.as_ref()).compute_units(), ComputeUnits::CpuOnly);
    assert!(model.cache_key().contains(":cpu_only:"), "{}", model.cache_key());
    let caps = engine.capabilities(model.as_ref());
    assert_eq!(caps.compute_units_requested, ComputeUnits::CpuOnly);
    assert!(
        caps.notes
            .iter()
            .any(|n| n == "COREML_COMPUTE_UNITS=cpu_only overrides the requested cpu_ane"),
        "{:?}",
        caps.notes
    );
}

#[test]
#[ignore = "child process of the_compute_units_override_comes_from_the_environment"]
fn child_units_override_invalid() {
    if !is_child("child_units_override_invalid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let artifact = fake_package(dir.path(), "units", json!({}));
    let e = prepare_err(&CoreMlEngine::new(), &artifact, PrepareOptions::default());
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("got `gpu_only`"), "{e}");
}

// ---------------------------------------------------------------------------
// Builds without the bridge
// ---------------------------------------------------------------------------

#[cfg(not(coreml_bridge))]
#[test]
fn without_the_bridge_the_engine_is_unavailable_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = fake_package(dir.path(), "identity", json!({}));
    let e = prepare_err(&CoreMlEngine::new(), &artifact, PrepareOptions::default());
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(
        e.to_string(),
        format!("coreml is unavailable: {}", bridge::NO_BRIDGE_REASON)
    );
    assert!(!bridge::is_linked());
}

// ---------------------------------------------------------------------------
// Batches (ABI v2)
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn a_batch_runs_every_member_under_one_deadline_and_refuses_a_bad_member_before_running() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let add = prepare(
        &engine,
        &fake_package(dir.path(), "add", json!({"behavior": "add_one"})),
        PrepareOptions::default(),
    );
    let batch: Vec<TensorMap> = [vec![1.0f32], vec![2.0, 3.0], vec![10.0, 20.0, 30.0]]
        .iter()
        .map(|v| one("x", f32s(vec![v.len()], v)))
        .collect();
    let out = engine.infer_batch(add.as_ref(), &batch, SECS).unwrap();
    let ys: Vec<Vec<f32>> = out.iter().map(|o| o["y"].to_vec::<f32>().unwrap()).collect();
    assert_eq!(ys, [vec![2.0], vec![3.0, 4.0], vec![11.0, 21.0, 31.0]]);
    assert!(engine.infer_batch(add.as_ref(), &[], SECS).unwrap().is_empty());

    // A slow model with a fixed shape: member #2 is wrong, so nothing runs.
    let slow = prepare(
        &engine,
        &fake_package(
            dir.path(),
            "slow",
            json!({"sleep_ms": 200, "inputs": [{"name": "x", "dtype": "f32", "shape": [2]}]}),
        ),
        PrepareOptions::default(),
    );
    let good = one("x", f32s(vec![2], &[1.0, 2.0]));
    let bad = one("x", f32s(vec![3], &[1.0, 2.0, 3.0]));
    let t = Instant::now();
    let e = engine
        .infer_batch(slow.as_ref(), &[good.clone(), good.clone(), bad], SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("batch member #2"), "{e}");
    assert!(t.elapsed() < margin(150), "refused before running: {:?}", t.elapsed());

    // One deadline for the batch: 3 x 200 ms do not fit in 350 ms.
    let t = Instant::now();
    let e = engine
        .infer_batch(
            slow.as_ref(),
            &[good.clone(), good.clone(), good.clone()],
            Duration::from_millis(350),
        )
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(took < Duration::from_millis(350) + margin(300), "{took:?}");
    // The poisoned handle is replaced by the next call.
    let out = engine.infer_batch(slow.as_ref(), &[good], SECS).unwrap();
    assert_eq!(out[0]["y"].to_vec::<f32>().unwrap(), [1.0, 2.0]);
    assert_eq!(core_ml_model(slow.as_ref()).rebuilds(), 1);
    println!("batch of 3 x 200 ms with a 350 ms timeout: Timeout after {took:?}");
}

// ---------------------------------------------------------------------------
// Feature kinds (ABI v2)
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn a_classifier_returns_its_label_and_probabilities_and_scalars_and_strings_round_trip() {
    use apple_silicon::{ClassLabels, Dictionary, FeatureMap, FeatureValue};
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let classifier = prepare(
        &engine,
        &fake_package(
            dir.path(),
            "cls",
            json!({"behavior": "classify", "class_labels": ["cat", "dog", "fish"]}),
        ),
        PrepareOptions::default(),
    );
    let c = classifier
        .io_schema()
        .classifier
        .as_ref()
        .expect("a classifier in the schema");
    assert_eq!(
        (c.label_output.as_str(), c.probabilities_output.as_str()),
        ("classLabel", "classLabel_probs")
    );
    assert_eq!(
        c.labels,
        ClassLabels::Strings(vec!["cat".into(), "dog".into(), "fish".into()])
    );
    let x = FeatureMap::from([("x".to_string(), FeatureValue::Tensor(f32s(vec![3], &[0.1, 0.2, 0.7])))]);
    let out = engine.infer_features(classifier.as_ref(), &x, SECS).unwrap();
    assert_eq!(out["classLabel"], FeatureValue::String("fish".into()));
    let FeatureValue::Dictionary(Dictionary::Strings(probs)) = &out["classLabel_probs"] else {
        panic!("probabilities: {:?}", out["classLabel_probs"]);
    };
    let keys: Vec<&str> = probs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["cat", "dog", "fish"]);
    for ((_, got), want) in probs.iter().zip([0.1f32, 0.2, 0.7]) {
        assert_eq!(*got, f64::from(want), "the scores as f32 widened to f64");
    }

    let kinds = prepare(
        &engine,
        &fake_package(
            dir.path(),
            "kinds",
            json!({"behavior": "add_one",
                   "inputs": [{"name": "n", "feature_type": "int64"}, {"name": "d", "feature_type": "double"},
                              {"name": "s", "feature_type": "string"}],
                   "outputs": [{"name": "n_out", "feature_type": "int64"}, {"name": "d_out", "feature_type": "double"},
                               {"name": "s_out", "feature_type": "string"}]}),
        ),
        PrepareOptions::default(),
    );
    let inputs = FeatureMap::from([
        ("n".to_string(), FeatureValue::Int64(41)),
        ("d".to_string(), FeatureValue::Double(1.5)),
        ("s".to_string(), FeatureValue::String("h\u{e9}llo".into())),
    ]);
    let out = engine.infer_features(kinds.as_ref(), &inputs, SECS).unwrap();
    assert_eq!(out["n_out"], FeatureValue::Int64(42));
    assert_eq!(out["d_out"], FeatureValue::Double(2.5));
    assert_eq!(out["s_out"], FeatureValue::String("h\u{e9}llo".into()));
    // A value of the wrong kind: SchemaMismatch naming both kinds.
    let mut wrong = inputs.clone();
    wrong.insert("n".into(), FeatureValue::String("41".into()));
    let e = engine.infer_features(kinds.as_ref(), &wrong, SECS).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("is a int64 feature; got a string value"), "{e}");
    // An image for an int64 feature: the bridge refuses it, naming both kinds.
    let mut with_image = inputs.clone();
    with_image.insert(
        "n".into(),
        FeatureValue::Image(apple_silicon::Image::new(1, 1, apple_silicon::PixelFormat::Gray8, 1, vec![0]).unwrap()),
    );
    let e = engine.infer_features(kinds.as_ref(), &with_image, SECS).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("is a int64 feature; got a image value"), "{e}");
}

// ---------------------------------------------------------------------------
// Multifunction packages (ABI v2)
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn prepare_honours_the_function_name_and_the_schema_lists_the_functions() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let artifact = fake_package(
        dir.path(),
        "two",
        json!({"functions": {"plus": "add_one", "same": "identity"}, "default_function": "same", "sleep_ms": 150}),
    );
    let plus = prepare(&engine, &artifact, PrepareOptions::default().with_function_name("plus"));
    let same = prepare(&engine, &artifact, PrepareOptions::default());
    let x = one("x", f32s(vec![2], &[1.0, 2.0]));
    let y = |m: &dyn PreparedModel| engine.infer(m, &x, SECS).unwrap()["y"].to_vec::<f32>().unwrap();
    assert_eq!(y(plus.as_ref()), [2.0, 3.0]);
    assert_eq!(y(same.as_ref()), [1.0, 2.0], "no name: the package's default function");
    let f = &plus.io_schema().functions;
    assert_eq!(f.names, ["plus", "same"]);
    assert_eq!(f.selected.as_deref(), Some("plus"));
    assert_eq!(core_ml_model(plus.as_ref()).function(), Some("plus"));
    assert_eq!(same.io_schema().functions.selected, None);

    // A reload after a timeout loads the same function again.
    let e = engine.infer(plus.as_ref(), &x, Duration::from_millis(50)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(y(plus.as_ref()), [2.0, 3.0]);
    assert_eq!(core_ml_model(plus.as_ref()).rebuilds(), 1);

    // A state of one function is refused by another function of the same package.
    let mut s = engine.make_state(plus.as_ref()).unwrap();
    let e = engine.infer_with_state(same.as_ref(), &mut s, &x, SECS).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("function `plus`"), "{e}");

    // An unknown function: Core ML's load error, naming the functions.
    let e = prepare_err(&engine, &artifact, PrepareOptions::default().with_function_name("nope"));
    assert_eq!(e.kind(), ErrorKind::Load, "{e}");
    assert!(
        e.to_string().contains("no function 'nope'") && e.to_string().contains("plus"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Model state (ABI v2)
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn a_state_accumulates_across_calls_through_the_engine_and_belongs_to_its_model() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let model = prepare(
        &engine,
        &fake_package(dir.path(), "acc", json!({"behavior": "accumulate"})),
        PrepareOptions::default(),
    );
    let states = &model.io_schema().states;
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(
        (states[0].name.as_str(), states[0].dtype, states[0].shape.as_slice()),
        ("s", DType::F32, &[3usize][..])
    );
    let mut a = engine.make_state(model.as_ref()).unwrap();
    let mut b = engine.make_state(model.as_ref()).unwrap();
    let run = |state: &mut apple_silicon::ModelState, v: &[f32]| {
        engine
            .infer_with_state(model.as_ref(), state, &one("x", f32s(vec![3], v)), SECS)
            .map(|out| out["y"].to_vec::<f32>().unwrap())
    };
    assert_eq!(run(&mut a, &[1.0, 2.0, 3.0]).unwrap(), [1.0, 2.0, 3.0]);
    assert_eq!(run(&mut a, &[10.0, 20.0, 30.0]).unwrap(), [11.0, 22.0, 33.0]);
    assert_eq!(
        run(&mut b, &[5.0, 5.0, 5.0]).unwrap(),
        [5.0, 5.0, 5.0],
        "states are independent"
    );
    // A wrong input shape is refused and changes nothing.
    let e = engine
        .infer_with_state(model.as_ref(), &mut a, &one("x", f32s(vec![2], &[1.0, 1.0])), SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert_eq!(run(&mut a, &[0.0; 3]).unwrap(), [11.0, 22.0, 33.0]);
    // Without a state the stateful model fails (as Core ML's would).
    assert!(engine
        .infer(model.as_ref(), &one("x", f32s(vec![3], &[1.0; 3])), SECS)
        .is_err());

    // Another model's state: refused naming what was expected.
    let other = prepare(
        &engine,
        &fake_package(
            dir.path(),
            "acc2",
            json!({"behavior": "accumulate", "metadata": {"author": "other"}}),
        ),
        PrepareOptions::default(),
    );
    let e = engine
        .infer_with_state(other.as_ref(), &mut a, &one("x", f32s(vec![3], &[1.0; 3])), SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("model state"), "{e}");
    // The same package prepared twice: same cache key, but another loaded
    // model; the bridge-side owner check refuses it.
    let twin = prepare(
        &engine,
        &fake_package(dir.path(), "acc", json!({"behavior": "accumulate"})),
        PrepareOptions::default(),
    );
    let e = engine
        .infer_with_state(twin.as_ref(), &mut a, &one("x", f32s(vec![3], &[1.0; 3])), SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("another loaded model"), "{e}");
    // A stateless model makes an empty state that behaves like none.
    let plain = prepare(
        &engine,
        &fake_package(dir.path(), "plain", json!({"behavior": "add_one"})),
        PrepareOptions::default(),
    );
    assert!(plain.io_schema().states.is_empty());
    let mut empty = engine.make_state(plain.as_ref()).unwrap();
    let out = engine
        .infer_with_state(plain.as_ref(), &mut empty, &one("x", f32s(vec![1], &[1.0])), SECS)
        .unwrap();
    assert_eq!(out["y"].to_vec::<f32>().unwrap(), [2.0]);
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn a_timed_out_prediction_poisons_its_state_and_a_new_state_works_after_the_reload() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let model = prepare(
        &engine,
        &fake_package(
            dir.path(),
            "slowacc",
            json!({"behavior": "accumulate", "sleep_ms": 600}),
        ),
        PrepareOptions::default(),
    );
    let x = one("x", f32s(vec![3], &[1.0, 2.0, 3.0]));
    let mut state = engine.make_state(model.as_ref()).unwrap();
    let t = Instant::now();
    let e = engine
        .infer_with_state(model.as_ref(), &mut state, &x, Duration::from_millis(100))
        .unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(took < Duration::from_millis(100) + margin(400), "{took:?}");
    assert!(state.is_poisoned());
    let e = engine
        .infer_with_state(model.as_ref(), &mut state, &x, SECS)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("poisoned"), "{e}");
    // The engine reloads the model; a new state starts from zero.
    let mut fresh = engine.make_state(model.as_ref()).unwrap();
    assert_eq!(core_ml_model(model.as_ref()).rebuilds(), 1);
    let out = engine.infer_with_state(model.as_ref(), &mut fresh, &x, SECS).unwrap();
    assert_eq!(out["y"].to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0]);
}

fn raw_make_state(handle: *mut c_void) -> *mut c_void {
    let mut state: *mut c_void = ptr::null_mut();
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: live out slots.
    let code = unsafe { ffi::coreml_make_state(handle, 20_000, &mut state, &mut err) };
    let msg = take_string(err);
    assert_eq!(code, ffi::COREML_OK, "make_state: {msg:?}");
    assert!(!state.is_null());
    state
}

fn raw_predict_with_state(
    handle: *mut c_void,
    state: *mut c_void,
    inputs: &[ffi::CoremlTensor],
    timeout_ms: i64,
) -> (i32, Option<String>) {
    let mut outputs: *mut ffi::CoremlOutputs = ptr::null_mut();
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: descriptors built by the caller from live memory; out slots are live.
    let code = unsafe {
        ffi::coreml_predict_with_state(
            handle,
            state,
            inputs.as_ptr(),
            inputs.len() as i32,
            timeout_ms,
            &mut outputs,
            &mut err,
        )
    };
    // SAFETY: NULL or outputs the bridge handed out.
    unsafe { ffi::coreml_free_outputs(outputs) };
    (code, take_string(err))
}

/// Raw FFI: a state used by two threads at once, a state with another
/// handle, a model handle passed as a state, and freeing a state while a
/// timed-out prediction still uses it.
#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn the_c_abi_refuses_a_busy_state_a_foreign_state_and_frees_states_safely() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let compiled = fake_compiled(dir.path(), "acc", json!({"behavior": "accumulate", "sleep_ms": 300}));
    let h1 = raw_load(&compiled, 20_000);
    let h2 = raw_load(&compiled, 20_000);
    let s1 = raw_make_state(h1);
    let name = CString::new("x").unwrap();
    let shape = [3i64];
    let data = [1.0f32, 1.0, 1.0];
    let x = ffi::CoremlTensor {
        name: name.as_ptr(),
        dtype: ffi::COREML_DTYPE_F32,
        rank: 1,
        shape: shape.as_ptr(),
        strides: ptr::null(),
        data: data.as_ptr().cast(),
        byte_len: 12,
    };
    let (code, msg) = raw_predict_with_state(h2, s1, &[x], 20_000);
    assert_eq!(code, ffi::COREML_ERR_STATE_MISMATCH, "{msg:?}");
    let (code, _) = raw_predict_with_state(h1, h1, &[x], 20_000);
    assert_eq!(code, ffi::COREML_ERR_INVALID_HANDLE, "a model handle is not a state");
    let (code, _) = raw_predict_with_state(h1, ptr::null_mut(), &[x], 20_000);
    assert_eq!(code, ffi::COREML_ERR_INVALID_HANDLE);

    // Two threads, one state: the second is refused at once.
    let (h1_addr, s1_addr) = (h1.addr(), s1.addr());
    let busy = std::thread::spawn(move || {
        let name = CString::new("x").unwrap();
        let shape = [3i64];
        let data = [1.0f32; 3];
        let x = ffi::CoremlTensor {
            name: name.as_ptr(),
            dtype: ffi::COREML_DTYPE_F32,
            rank: 1,
            shape: shape.as_ptr(),
            strides: ptr::null(),
            data: data.as_ptr().cast(),
            byte_len: 12,
        };
        raw_predict_with_state(
            ptr::without_provenance_mut(h1_addr),
            ptr::without_provenance_mut(s1_addr),
            &[x],
            20_000,
        )
        .0
    });
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let (code, msg) = raw_predict_with_state(h1, s1, &[x], 20_000);
    assert_eq!(code, ffi::COREML_ERR_STATE_IN_USE, "{msg:?}");
    assert!(t.elapsed() < margin(100), "refused at once: {:?}", t.elapsed());
    assert_eq!(busy.join().unwrap(), ffi::COREML_OK);

    // A timeout poisons the state; freeing it (and the handle) while the
    // late prediction runs is safe.
    let (code, msg) = raw_predict_with_state(h1, s1, &[x], 30);
    assert_eq!(code, ffi::COREML_ERR_TIMEOUT, "{msg:?}");
    // SAFETY: each id freed once; the bridge keeps what the late work needs.
    unsafe {
        ffi::coreml_free_state(s1);
        ffi::coreml_free_model(h1);
        ffi::coreml_free_state(s1);
        ffi::coreml_free_state(ptr::null_mut());
    }
    std::thread::sleep(Duration::from_millis(400));
    let s2 = raw_make_state(h2);
    let (code, msg) = raw_predict_with_state(h2, s2, &[x], 20_000);
    assert_eq!(code, ffi::COREML_OK, "{msg:?}");
    // SAFETY: freed once each.
    unsafe {
        ffi::coreml_free_state(s2);
        ffi::coreml_free_model(h2);
    }
}

// ---------------------------------------------------------------------------
// Fuzzing the C ABI
// ---------------------------------------------------------------------------

/// splitmix64: a seeded, dependency-free generator for the ABI fuzz pass.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    /// Mostly small, sometimes hostile: 0, negative, huge, overflowing.
    fn dim(&mut self) -> i64 {
        match self.below(10) {
            0 => self.pick(&[0, -1, i64::MIN, i64::MAX, 1 << 32, 1 << 62]),
            1 => -(self.below(5) as i64),
            _ => 1 + self.below(4) as i64,
        }
    }
}

/// One random descriptor set over memory that is really there: every
/// pointer is NULL or points at a live buffer, and `byte_len` never exceeds
/// what is allocated, so any read outside it is the bridge's (valgrind
/// sees it). Everything else — names, dtypes, ranks, shapes, strides,
/// lengths, counts — is random.
struct Case {
    names: Vec<CString>,
    shapes: Vec<Vec<i64>>,
    strides: Vec<Vec<i64>>,
    data: Vec<u8>,
    tensors: Vec<ffi::CoremlTensor>,
}

fn random_case(rng: &mut Rng) -> Case {
    if rng.below(3) == 0 {
        return near_valid_case(rng);
    }
    let n = rng.below(4) as usize;
    let mut c = Case {
        names: Vec::new(),
        shapes: Vec::new(),
        strides: Vec::new(),
        data: vec![0x5a; rng.pick(&[0usize, 1, 7, 8, 64, 4096])],
        tensors: Vec::new(),
    };
    for _ in 0..n {
        c.names
            .push(CString::new(rng.pick(&["x", "x", "y", "", "x\u{e9}", "nope"])).unwrap());
        let rank = rng.pick(&[1usize, 1, 2, 3, 0, 17]);
        // Backing arrays always hold COREML_MAX_RANK entries, so any rank the
        // header allows is readable; only the rank checks guard the rest.
        c.shapes.push((0..rank.max(16)).map(|_| rng.dim()).collect());
        c.strides.push(
            (0..rank.max(16))
                .map(|_| match rng.below(6) {
                    0 => rng.pick(&[-1, i64::MAX, 1 << 40]),
                    _ => rng.below(8) as i64,
                })
                .collect(),
        );
    }
    for i in 0..n {
        let byte_len = match rng.below(4) {
            0 => c.data.len() as u64,
            1 => 0,
            _ => rng.below(c.data.len() as u64 + 1),
        };
        c.tensors.push(ffi::CoremlTensor {
            name: if rng.below(12) == 0 {
                ptr::null()
            } else {
                c.names[i].as_ptr()
            },
            dtype: rng.pick(&[1, 1, 2, 3, 4, 5, 6, 0, -1, 99]),
            rank: match rng.below(10) {
                0 => rng.pick(&[0, -1, 17, i32::MAX]),
                _ => rng.pick(&[1, 2, 3, 16]),
            },
            shape: if rng.below(12) == 0 {
                ptr::null()
            } else {
                c.shapes[i].as_ptr()
            },
            strides: if rng.below(2) == 0 {
                ptr::null()
            } else {
                c.strides[i].as_ptr()
            },
            data: if rng.below(12) == 0 {
                ptr::null()
            } else {
                c.data.as_ptr().cast()
            },
            byte_len,
        });
    }
    c
}

/// A valid f32 input `x` for the add-one model, half the time with one
/// field changed: validation must catch each field on its own.
fn near_valid_case(rng: &mut Rng) -> Case {
    let rank = 1 + rng.below(3) as usize;
    // Padded to COREML_MAX_RANK entries, like random_case's arrays.
    let mut shape: Vec<i64> = (0..rank).map(|_| 1 + rng.below(3) as i64).collect();
    let elems: i64 = shape.iter().product();
    shape.resize(16, 1);
    let mut c = Case {
        names: vec![CString::new("x").unwrap()],
        strides: vec![vec![1; 16]],
        shapes: vec![shape],
        data: vec![0; elems as usize * 4],
        tensors: Vec::new(),
    };
    let mut t = ffi::CoremlTensor {
        name: c.names[0].as_ptr(),
        dtype: ffi::COREML_DTYPE_F32,
        rank: rank as i32,
        shape: c.shapes[0].as_ptr(),
        strides: ptr::null(),
        data: c.data.as_ptr().cast(),
        byte_len: c.data.len() as u64,
    };
    match rng.below(16) {
        0 => t.name = ptr::null(),
        1 => t.dtype = rng.pick(&[0, 6, 7, -3]),
        2 => t.rank = rng.pick(&[0, -1, 17, t.rank + 1]),
        3 => t.shape = ptr::null(),
        4 => {
            c.strides[0][0] = rng.pick(&[i64::MAX, -1, 1 << 40, 2]);
            t.strides = c.strides[0].as_ptr();
        }
        5 => t.data = ptr::null(),
        6 => t.byte_len = rng.below(t.byte_len),
        7 => c.shapes[0][0] = rng.pick(&[0, -1, i64::MAX, 1 << 31]),
        _ => {}
    }
    c.tensors.push(t);
    c
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn the_c_abi_answers_random_descriptors_handles_and_nulls_with_a_status() {
    require_test_runtime();
    let secs: f64 = std::env::var("CORE_ML_FFI_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = std::env::var("CORE_ML_FFI_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let compiled = fake_compiled(dir.path(), "fuzz", json!({"behavior": "add_one"}));
    let mut live = raw_load(&compiled, 20_000);
    let mut live_state = raw_make_state(live);
    let freed = raw_load(&compiled, 20_000);
    let freed_state = raw_make_state(freed);
    // SAFETY: a state from coreml_make_state, freed once.
    unsafe { ffi::coreml_free_state(freed_state) };
    // SAFETY: a handle from coreml_load_model, freed once.
    unsafe { ffi::coreml_free_model(freed) };
    let pkg_c = CString::new(fake_package(dir.path(), "fuzzpkg", json!({})).path.to_str().unwrap()).unwrap();
    let compiled_c = CString::new(compiled.to_str().unwrap()).unwrap();
    let nowhere = CString::new("/nonexistent/\u{1}/x.mlmodelc").unwrap();
    let (empty_c, fname_c) = (CString::new("").unwrap(), CString::new("main").unwrap());
    let hello_c = CString::new("h\u{e9}llo").unwrap();
    let out_dir = CString::new(dir.path().join("out").to_str().unwrap()).unwrap();
    let image_compiled = fake_compiled(dir.path(), "fuzzimg", json!({"behavior": "image"}));
    let mut image_live = raw_load(&image_compiled, 20_000);
    let image_c = CString::new("image").unwrap();
    let pixels: Vec<u8> = (0..256u32).map(|i| i as u8).collect();

    let mut rng = Rng(seed);
    let mut seen = std::collections::BTreeMap::<(&str, i32), u64>::new();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut iterations = 0u64;
    let mut slowest = (Duration::ZERO, "", 0i64, 0i32);
    let mut worst_overshoot = Duration::ZERO;
    while Instant::now() < until {
        iterations += 1;
        let handle = match rng.below(8) {
            0 => ptr::null_mut(),
            1 => freed,
            2 => ptr::without_provenance_mut(rng.next() as usize),
            _ => live,
        };
        let timeout = rng.pick(&[20_000i64, 20_000, 0, -1, -5, i64::MAX, 1, 5, 50]);
        // What the call may take: its timeout (the bridge clamps to 30 days;
        // an invalid one is refused at once) plus a margin.
        let allowed = Duration::from_millis(timeout.clamp(0, 30 * 24 * 3_600_000) as u64) + margin(250);
        let call_start = Instant::now();
        let mut err: *mut c_char = ptr::null_mut();
        let err_slot: *mut *mut c_char = if rng.below(4) == 0 { ptr::null_mut() } else { &mut err };
        let (entry, code) = match rng.below(15) {
            0..=5 => {
                let case = random_case(&mut rng);
                let mut outputs: *mut ffi::CoremlOutputs = ptr::null_mut();
                let out_slot: *mut *mut ffi::CoremlOutputs = if rng.below(10) == 0 {
                    ptr::null_mut()
                } else {
                    &mut outputs
                };
                let n = match rng.below(8) {
                    0 => rng.pick(&[-1, 0, 1 << 20]),
                    _ => case.tensors.len() as i32,
                };
                let n = if n > case.tensors.len() as i32 {
                    case.tensors.len() as i32
                } else {
                    n
                };
                let inputs = if case.tensors.is_empty() || rng.below(12) == 0 {
                    ptr::null()
                } else {
                    case.tensors.as_ptr()
                };
                // SAFETY: every pointer is NULL or live for the call; n never exceeds the array.
                let code = unsafe { ffi::coreml_predict(handle, inputs, n, timeout, out_slot, err_slot) };
                if code == ffi::COREML_OK {
                    // SAFETY: outputs handed out by the bridge, freed once.
                    unsafe { ffi::coreml_free_outputs(outputs) };
                } else {
                    assert!(outputs.is_null(), "a failed predict ({code}) handed out outputs");
                }
                ("predict", code)
            }
            6 => {
                let mut json: *mut c_char = ptr::null_mut();
                let slot: *mut *mut c_char = if rng.below(5) == 0 { ptr::null_mut() } else { &mut json };
                // SAFETY: out slots are NULL or live.
                let code = unsafe { ffi::coreml_model_schema(handle, slot, err_slot) };
                take_string(json);
                ("schema", code)
            }
            7 => {
                let path = rng.pick(&[compiled_c.as_ptr(), nowhere.as_ptr(), ptr::null()]);
                let units = rng.pick(&[0, 1, 2, 3, 4, -1, i32::MAX]);
                let mut h: *mut c_void = ptr::null_mut();
                let slot: *mut *mut c_void = if rng.below(5) == 0 { ptr::null_mut() } else { &mut h };
                let code = match rng.below(3) {
                    0 => {
                        let function = rng.pick(&[ptr::null(), empty_c.as_ptr(), fname_c.as_ptr()]);
                        // SAFETY: as below; the function name is NULL or a live C string.
                        unsafe { ffi::coreml_load_model_function(path, function, units, timeout, slot, err_slot) }
                    }
                    // SAFETY: C strings are live or NULL; out slots NULL or live.
                    _ => unsafe { ffi::coreml_load_model(path, units, timeout, slot, err_slot) },
                };
                if code == ffi::COREML_OK {
                    // SAFETY: a handle just loaded, freed once.
                    unsafe { ffi::coreml_free_model(h) };
                }
                ("load", code)
            }
            10 => {
                let case = random_case(&mut rng);
                let state = match rng.below(6) {
                    0 => ptr::null_mut(),
                    1 => freed_state,
                    2 => ptr::without_provenance_mut(rng.next() as usize),
                    3 => handle,
                    _ => live_state,
                };
                let mut outputs: *mut ffi::CoremlOutputs = ptr::null_mut();
                let inputs = if case.tensors.is_empty() {
                    ptr::null()
                } else {
                    case.tensors.as_ptr()
                };
                // SAFETY: every pointer is NULL or live for the call; the count matches the array.
                let code = unsafe {
                    ffi::coreml_predict_with_state(
                        handle,
                        state,
                        inputs,
                        case.tensors.len() as i32,
                        timeout,
                        &mut outputs,
                        err_slot,
                    )
                };
                if code == ffi::COREML_OK {
                    // SAFETY: outputs handed out by the bridge, freed once.
                    unsafe { ffi::coreml_free_outputs(outputs) };
                } else {
                    assert!(
                        outputs.is_null(),
                        "a failed predict_with_state ({code}) handed out outputs"
                    );
                }
                ("predict_with_state", code)
            }
            12 => {
                let cases: Vec<Case> = (0..1 + rng.below(3)).map(|_| random_case(&mut rng)).collect();
                let members: Vec<ffi::CoremlBatchMember> = cases
                    .iter()
                    .map(|c| ffi::CoremlBatchMember {
                        inputs: if c.tensors.is_empty() {
                            ptr::null()
                        } else {
                            c.tensors.as_ptr()
                        },
                        n_inputs: c.tensors.len() as i32,
                    })
                    .collect();
                let n = match rng.below(8) {
                    0 => rng.pick(&[-1, 0]),
                    _ => members.len() as i32,
                };
                let mut slots = vec![ptr::null_mut::<ffi::CoremlOutputs>(); members.len()];
                let out_slot = if rng.below(10) == 0 {
                    ptr::null_mut()
                } else {
                    slots.as_mut_ptr()
                };
                let batch = if rng.below(12) == 0 {
                    ptr::null()
                } else {
                    members.as_ptr()
                };
                // SAFETY: every pointer is NULL or live; n never exceeds the arrays.
                let code = unsafe { ffi::coreml_predict_batch(handle, batch, n, timeout, out_slot, err_slot) };
                for o in &slots {
                    if code != ffi::COREML_OK {
                        assert!(o.is_null(), "a failed batch ({code}) handed out outputs");
                    }
                    // SAFETY: NULL or outputs handed out by the bridge, freed once.
                    unsafe { ffi::coreml_free_outputs(*o) };
                }
                ("predict_batch", code)
            }
            13 => {
                let case = random_case(&mut rng);
                let features: Vec<ffi::CoremlFeature> = case
                    .tensors
                    .iter()
                    .map(|t| ffi::CoremlFeature {
                        name: t.name,
                        kind: rng.pick(&[1, 1, 2, 3, 4, 5, 0, -1]),
                        tensor: *t,
                        int64_value: rng.next() as i64,
                        double_value: f64::from_bits(rng.next()),
                        string_value: rng.pick(&[ptr::null(), hello_c.as_ptr(), empty_c.as_ptr()]),
                    })
                    .collect();
                let mut outputs: *mut ffi::CoremlFeatureOutputs = ptr::null_mut();
                let inputs = if features.is_empty() {
                    ptr::null()
                } else {
                    features.as_ptr()
                };
                // SAFETY: every pointer is NULL or live for the call; the count matches the array.
                let code = unsafe {
                    ffi::coreml_predict_features(handle, inputs, features.len() as i32, timeout, &mut outputs, err_slot)
                };
                if code != ffi::COREML_OK {
                    assert!(
                        outputs.is_null(),
                        "a failed predict_features ({code}) handed out outputs"
                    );
                }
                // SAFETY: NULL or outputs handed out by the bridge, freed once.
                unsafe { ffi::coreml_free_feature_outputs(outputs) };
                ("predict_features", code)
            }
            14 => {
                // Image descriptors: honest byte_len (never past `pixels`), everything else random.
                let h = if handle == live { image_live } else { handle };
                let n_images = rng.pick(&[1usize, 1, 1, 0, 2]);
                let images: Vec<ffi::CoremlImage> = (0..n_images)
                    .map(|_| match rng.below(2) {
                        // A valid 4x3 image: RGB8 packed or BGRA8 with padded rows.
                        0 => {
                            let (format, bpr) = rng.pick(&[(1, 12), (3, 16), (3, 20)]);
                            ffi::CoremlImage {
                                name: image_c.as_ptr(),
                                pixel_format: format,
                                width: 4,
                                height: 3,
                                bytes_per_row: bpr,
                                data: pixels.as_ptr().cast(),
                                byte_len: pixels.len() as u64,
                            }
                        }
                        _ => ffi::CoremlImage {
                            name: rng.pick(&[image_c.as_ptr(), image_c.as_ptr(), hello_c.as_ptr(), ptr::null()]),
                            pixel_format: rng.pick(&[1, 2, 3, 4, 5, 6, 0, 9, -1]),
                            width: rng.pick(&[4, 4, 3, 1, 0, -1, i32::MAX]),
                            height: rng.pick(&[3, 3, 2, 1, 0, -1, i32::MAX]),
                            bytes_per_row: rng.pick(&[12, 16, 16, 11, 0, -1, i64::MAX, 1 << 40]),
                            data: if rng.below(10) == 0 {
                                ptr::null()
                            } else {
                                pixels.as_ptr().cast()
                            },
                            byte_len: match rng.below(4) {
                                0 => rng.below(256),
                                k => [pixels.len() as u64, 48, 0][k as usize - 1],
                            },
                        },
                    })
                    .collect();
                let case = random_case(&mut rng);
                let features: Vec<ffi::CoremlFeature> = case
                    .tensors
                    .iter()
                    .take(rng.below(2) as usize)
                    .map(|t| ffi::CoremlFeature {
                        name: t.name,
                        kind: 1,
                        tensor: *t,
                        int64_value: 0,
                        double_value: 0.0,
                        string_value: ptr::null(),
                    })
                    .collect();
                let mut outputs: *mut ffi::CoremlFeatureOutputs = ptr::null_mut();
                let n_in = if rng.below(12) == 0 { -1 } else { features.len() as i32 };
                let n_img = if rng.below(12) == 0 {
                    rng.pick(&[-1, 1 << 20])
                } else {
                    images.len() as i32
                };
                let n_img = n_img.min(images.len() as i32);
                // SAFETY: every pointer is NULL or live for the call; counts never exceed the arrays
                // and every byte_len is at most the bytes behind `data`.
                let code = unsafe {
                    ffi::coreml_predict_images(
                        h,
                        if features.is_empty() {
                            ptr::null()
                        } else {
                            features.as_ptr()
                        },
                        n_in,
                        if images.is_empty() {
                            ptr::null()
                        } else {
                            images.as_ptr()
                        },
                        n_img,
                        timeout,
                        &mut outputs,
                        err_slot,
                    )
                };
                if code != ffi::COREML_OK {
                    assert!(outputs.is_null(), "a failed predict_images ({code}) handed out outputs");
                }
                // SAFETY: NULL or outputs handed out by the bridge, freed once.
                unsafe { ffi::coreml_free_feature_outputs(outputs) };
                if code == ffi::COREML_ERR_TIMEOUT && h == image_live {
                    // SAFETY: the poisoned image handle, freed once; replaced.
                    unsafe { ffi::coreml_free_model(image_live) };
                    image_live = raw_load(&image_compiled, 20_000);
                }
                ("predict_images", code)
            }
            11 => {
                let mut s: *mut c_void = ptr::null_mut();
                let slot: *mut *mut c_void = if rng.below(5) == 0 { ptr::null_mut() } else { &mut s };
                // SAFETY: out slots NULL or live.
                let code = unsafe { ffi::coreml_make_state(handle, timeout, slot, err_slot) };
                // SAFETY: a state just made (or NULL), freed once.
                unsafe { ffi::coreml_free_state(s) };
                ("make_state", code)
            }
            8 => {
                let src = rng.pick(&[pkg_c.as_ptr(), nowhere.as_ptr(), ptr::null()]);
                let dst = rng.pick(&[out_dir.as_ptr(), nowhere.as_ptr(), ptr::null()]);
                let mut path: *mut c_char = ptr::null_mut();
                let slot: *mut *mut c_char = if rng.below(5) == 0 { ptr::null_mut() } else { &mut path };
                // SAFETY: as above.
                let code = unsafe { ffi::coreml_compile_model(src, dst, timeout, slot, err_slot) };
                take_string(path);
                ("compile", code)
            }
            _ => {
                let path = rng.pick(&[compiled_c.as_ptr(), nowhere.as_ptr(), ptr::null()]);
                let mut json: *mut c_char = ptr::null_mut();
                let slot: *mut *mut c_char = if rng.below(5) == 0 { ptr::null_mut() } else { &mut json };
                // SAFETY: as above.
                let code = unsafe { ffi::coreml_compute_plan(path, rng.pick(&[0, 1, 9]), timeout, slot, err_slot) };
                take_string(json);
                ("compute_plan", code)
            }
        };
        let took = call_start.elapsed();
        take_string(err);
        assert!(
            (ffi::COREML_OK..=ffi::COREML_ERR_STATE_MISMATCH).contains(&code),
            "{entry} returned {code}, not a status"
        );
        assert!(
            took <= allowed,
            "{entry} with timeout_ms {timeout} took {took:?} (status {code}); allowed {allowed:?}"
        );
        if took > slowest.0 {
            slowest = (took, entry, timeout, code);
        }
        if timeout > 0 && timeout < 20_000 {
            let over = took.saturating_sub(Duration::from_millis(timeout as u64));
            worst_overshoot = worst_overshoot.max(over);
        }
        *seen.entry((entry, code)).or_default() += 1;
        // A short timeout poisoned the live handle: a fresh one for what follows.
        if code == ffi::COREML_ERR_TIMEOUT && entry.starts_with("predict") && handle == live {
            // SAFETY: the poisoned handle and its state, freed once; replacements are made.
            unsafe {
                ffi::coreml_free_state(live_state);
                ffi::coreml_free_model(live);
            }
            live = raw_load(&compiled, 20_000);
            live_state = raw_make_state(live);
        }
    }
    // SAFETY: NULL is a no-op for every free function.
    unsafe {
        ffi::coreml_free_string(ptr::null_mut());
        ffi::coreml_free_outputs(ptr::null_mut());
        ffi::coreml_free_model(ptr::null_mut());
        ffi::coreml_free_state(ptr::null_mut());
        ffi::coreml_free_state(live_state);
        ffi::coreml_free_model(live);
        ffi::coreml_free_model(image_live);
    }
    println!("C ABI fuzz: seed {seed}, {iterations} calls in {secs} s; (entry, status) counts: {seen:?}");
    println!(
        "C ABI fuzz: slowest call {:?} ({} with timeout_ms {}, status {}); worst overshoot past a 1..50 ms timeout {:?}",
        slowest.0, slowest.1, slowest.2, slowest.3, worst_overshoot
    );
    assert!(iterations > 50, "only {iterations} calls");
    for entry in [
        "predict",
        "schema",
        "load",
        "compile",
        "predict_with_state",
        "make_state",
        "predict_batch",
        "predict_features",
        "predict_images",
    ] {
        assert!(seen.keys().any(|(e, _)| *e == entry), "{entry} never called: {seen:?}");
    }
    assert!(
        seen.contains_key(&("predict", ffi::COREML_OK)),
        "some random predictions must be valid: {seen:?}"
    );
    assert!(
        seen.contains_key(&("predict_images", ffi::COREML_OK)),
        "some random image predictions must be valid: {seen:?}"
    );
}

// ---------------------------------------------------------------------------
// Image inputs (ABI v2, coreml_predict_images)
// ---------------------------------------------------------------------------

/// A 4x3 image whose pixel (x, y) has red 10y + x, green 100 + x, blue
/// 200 + y, in `format`, rows `stride` bytes apart (padding 0xEE).
fn test_image(format: apple_silicon::PixelFormat, stride: usize) -> apple_silicon::Image {
    use apple_silicon::PixelFormat as P;
    let bpp = format.bytes_per_pixel();
    let mut data = vec![0xEEu8; stride * 3];
    for y in 0..3 {
        for x in 0..4 {
            let (r, g, b) = ((10 * y + x) as u8, (100 + x) as u8, (200 + y) as u8);
            let px: Vec<u8> = match format {
                P::Rgb => vec![r, g, b],
                P::Bgr => vec![b, g, r],
                P::Bgra => vec![b, g, r, 255],
                P::Argb => vec![255, r, g, b],
                P::Gray8 => vec![r],
                P::GrayF16 => vec![r, 0],
            };
            data[y * stride + x * bpp..y * stride + (x + 1) * bpp].copy_from_slice(&px);
        }
    }
    apple_silicon::Image::new(4, 3, format, stride, data).unwrap()
}

/// The fake image model's "pixels" for the test image stored as 32BGRA.
fn expected_bgra() -> Vec<i32> {
    let mut e = Vec::new();
    for y in 0..3 {
        for x in 0..4 {
            e.extend([200 + y, 100 + x, 10 * y + x, 255]);
        }
    }
    e
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn images_reach_the_model_as_bridge_owned_pixel_buffers() {
    use apple_silicon::{ColorLayout, FeatureKind, FeatureMap, FeatureValue, ImageSizes, PixelFormat};
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = CoreMlEngine::new();
    let model = prepare(
        &engine,
        &fake_package(
            dir.path(),
            "img",
            json!({"behavior": "image",
                   "inputs": [{"name": "image", "feature_type": "image",
                               "image": {"width": 4, "height": 3, "color_layout": "bgr",
                                         "enumerated_sizes": [[8, 6]]}}]}),
        ),
        PrepareOptions::default(),
    );
    // The schema: the program's [1, 3, H, W] tensor, kind Image with size, layout and sizes.
    let spec = model.io_schema().input("image").expect("an image input");
    assert_eq!((spec.shape.clone(), spec.dtype), (vec![1, 3, 3, 4], DType::F32));
    let FeatureKind::Image(is) = &spec.kind else {
        panic!("kind {:?}", spec.kind)
    };
    assert_eq!((is.width, is.height, is.color), (4, 3, ColorLayout::Bgr));
    assert_eq!(is.sizes, ImageSizes::Enumerated { sizes: vec![(8, 6)] });
    let run = |img: apple_silicon::Image| {
        let inputs = FeatureMap::from([("image".to_string(), FeatureValue::Image(img))]);
        engine.infer_features(model.as_ref(), &inputs, SECS)
    };
    // RGB with padded rows, BGR packed, BGRA padded: the same 32BGRA pixels.
    for (format, stride) in [(PixelFormat::Rgb, 16), (PixelFormat::Bgr, 12), (PixelFormat::Bgra, 24)] {
        let out = run(test_image(format, stride)).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        let FeatureValue::Tensor(p) = &out["pixels"] else {
            panic!("{:?}", out["pixels"])
        };
        assert_eq!(p.shape(), [3, 4, 4], "{format:?}");
        assert_eq!(p.to_vec::<i32>().unwrap(), expected_bgra(), "{format:?}");
        assert_eq!(
            out["pixel_format"],
            FeatureValue::Int64(0x4247_5241),
            "{format:?}: 32BGRA"
        );
    }
    // ARGB stays ARGB (kCVPixelFormatType_32ARGB).
    let out = run(test_image(PixelFormat::Argb, 16)).unwrap();
    assert_eq!(out["pixel_format"], FeatureValue::Int64(0x20));
    // Another allowed size.
    let big = apple_silicon::Image::packed(8, 6, PixelFormat::Rgb, vec![9; 8 * 6 * 3]).unwrap();
    let out = run(big).unwrap();
    let FeatureValue::Tensor(p) = &out["pixels"] else {
        panic!()
    };
    assert_eq!(p.shape(), [6, 8, 4]);
    // A size the model does not take: SchemaMismatch naming both.
    let odd = apple_silicon::Image::packed(5, 5, PixelFormat::Rgb, vec![0; 75]).unwrap();
    let e = run(odd).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(
        e.to_string().contains("5x5") && e.to_string().contains("one of 4x3, 8x6"),
        "{e}"
    );
    // A grayscale image for a color feature: SchemaMismatch naming both.
    let e = run(test_image(PixelFormat::Gray8, 4)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(
        e.to_string().contains("got GRAY8") && e.to_string().contains("RGB8"),
        "{e}"
    );
}

#[test]
#[cfg_attr(
    not(coreml_bridge),
    ignore = "needs the Linux build of coreml-bridge: run scripts/swift/rust-ffi-test.sh"
)]
fn bad_image_descriptors_get_a_clear_status_never_a_trap() {
    require_test_runtime();
    let dir = tempfile::tempdir().unwrap();
    let h = raw_load(&fake_compiled(dir.path(), "img", json!({"behavior": "image"})), 20_000);
    let name = CString::new("image").unwrap();
    let pixels = [1u8; 48];
    let call = |format: i32, w: i32, hgt: i32, bpr: i64, len: u64, data: *const c_void| -> (i32, String) {
        let img = ffi::CoremlImage {
            name: name.as_ptr(),
            pixel_format: format,
            width: w,
            height: hgt,
            bytes_per_row: bpr,
            data,
            byte_len: len,
        };
        let mut out: *mut ffi::CoremlFeatureOutputs = ptr::null_mut();
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: live descriptors; byte_len never exceeds `pixels`.
        let code = unsafe { ffi::coreml_predict_images(h, ptr::null(), 0, &img, 1, 20_000, &mut out, &mut err) };
        // SAFETY: NULL or bridge-owned outputs, freed once.
        unsafe { ffi::coreml_free_feature_outputs(out) };
        (code, take_string(err).unwrap_or_default())
    };
    let p = pixels.as_ptr().cast::<c_void>();
    // (pixel format, width, height, bytes per row, byte_len, data, status, words of the message)
    type Case<'a> = (i32, i32, i32, i64, u64, *const c_void, i32, &'a [&'a str]);
    let cases: [Case; 7] = [
        (1, 4, 3, 12, 48, p, ffi::COREML_OK, &[]),
        (
            1,
            4,
            3,
            11,
            48,
            p,
            ffi::COREML_ERR_INVALID_ARGUMENT,
            &["at least 12", "got 11"],
        ),
        (
            3,
            4,
            3,
            16,
            47,
            p,
            ffi::COREML_ERR_INVALID_ARGUMENT,
            &["at least 48", "got 47"],
        ),
        (
            7,
            4,
            3,
            16,
            48,
            p,
            ffi::COREML_ERR_INVALID_ARGUMENT,
            &["unknown pixel_format 7"],
        ),
        (
            1,
            4,
            3,
            12,
            48,
            ptr::null(),
            ffi::COREML_ERR_INVALID_ARGUMENT,
            &["data is NULL"],
        ),
        (
            1,
            4,
            i32::MAX,
            i64::MAX,
            48,
            p,
            ffi::COREML_ERR_INVALID_ARGUMENT,
            &["overflow"],
        ),
        (5, 4, 3, 4, 48, p, ffi::COREML_ERR_SCHEMA_MISMATCH, &["got GRAY8"]),
    ];
    for (format, w, hgt, bpr, len, data, want, words) in cases {
        let (code, msg) = call(format, w, hgt, bpr, len, data);
        assert_eq!(code, want, "format {format} {w}x{hgt} bpr {bpr} len {len}: {msg}");
        for word in words {
            assert!(msg.contains(word), "`{word}` not in `{msg}`");
        }
    }
    // SAFETY: the handle from raw_load, freed once.
    unsafe { ffi::coreml_free_model(h) };
}
