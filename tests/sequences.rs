//! Stateful steps with caller-owned state objects, multifunction packages,
//! batches and async prepare, through CandleEngine (and ResilientEngine's
//! forwarding). Fixtures: the conformance suite's stateful programs
//! (scripts/conformance/cases_state.py) and scripts/features/multifunction.py's
//! packages; references are numpy's (expected/*.npy) or plain arithmetic
//! the fixture's case.json spells out.

mod common;

use common::copy_dir;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apple_silicon::breaker::ResilientModel;
use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::{
    BreakerConfig, CandleEngine, CapabilityReport, ErrorKind, InferenceEngine, ModelArtifact, ModelState,
    PrepareOptions, PreparedModel, ResilientEngine, Tensor, TensorMap,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn npy_dir(dir: &Path) -> TensorMap {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, Tensor::read_npy(&p).unwrap())
        })
        .collect()
}

fn prepare_with(engine: &dyn InferenceEngine, pkg: &Path, opts: PrepareOptions) -> Box<dyn PreparedModel> {
    engine.prepare(&ModelArtifact::open(pkg).unwrap(), opts).unwrap()
}

fn state_case(name: &str) -> PathBuf {
    root().join("conformance/state").join(name)
}

/// L∞ relative to max(1, max |reference|), the conformance suite's measure.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let num = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    num / w.iter().map(|v| v.abs()).fold(1.0, f64::max)
}

fn x_of(values: &[f32]) -> TensorMap {
    TensorMap::from([(
        "x".to_string(),
        Tensor::from_vec(vec![values.len()], values.to_vec()).unwrap(),
    )])
}

// ---------------------------------------------------------------- states

#[test]
fn make_state_gives_zeroed_states_of_the_schema() {
    let engine = CandleEngine::new();
    let dir = state_case("kv_cache_slice_update_runtime_pos_fp32");
    let model = prepare_with(&engine, &dir.join("model.mlpackage"), PrepareOptions::default());
    let state = engine.make_state(&*model).unwrap();
    assert_eq!(state.engine(), "candle");
    assert!(state.owner().starts_with(model.cache_key()), "{}", state.owner());
    let tensors = engine.read_state(&state).unwrap();
    assert_eq!(tensors.len(), model.io_schema().states.len());
    for spec in &model.io_schema().states {
        let t = &tensors[&spec.name];
        assert_eq!(
            (t.dtype(), t.shape()),
            (spec.dtype, spec.shape.as_slice()),
            "{}",
            spec.name
        );
        assert!(t.as_bytes().iter().all(|&b| b == 0), "{} is not zeroed", spec.name);
    }
    // A stateless model has no state to make.
    let plain = prepare_with(
        &engine,
        &root().join("features/multifunction/model.mlpackage"),
        PrepareOptions::default(),
    );
    let e = engine.make_state(&*plain).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("declares no states"), "{e}");
}

/// The conformance case's one step from its own initial states, through
/// the engine's state object: outputs and final states equal numpy's.
#[test]
fn a_step_with_a_state_object_matches_numpy() {
    let engine = CandleEngine::new();
    let dir = state_case("three_states_fp32");
    let model = prepare_with(&engine, &dir.join("model.mlpackage"), PrepareOptions::default());
    let mut state = engine.make_state(&*model).unwrap();
    engine
        .write_state(&*model, &mut state, npy_dir(&dir.join("states")))
        .unwrap();
    let out = engine
        .infer_with_state(&*model, &mut state, &npy_dir(&dir.join("inputs")), T)
        .unwrap();
    for (name, want) in npy_dir(&dir.join("expected")) {
        let err = rel_err(&out[&name], &want);
        assert!(err < 1e-5, "output {name}: rel {err:e}");
    }
    let after = engine.read_state(&state).unwrap();
    for (name, want) in npy_dir(&dir.join("expected_states")) {
        assert!(rel_err(&after[&name], &want) < 1e-5, "state {name}");
    }
}

#[test]
fn a_state_from_another_model_or_engine_is_refused() {
    let engine = CandleEngine::new();
    let a = prepare_with(
        &engine,
        &state_case("counter_fp32").join("model.mlpackage"),
        PrepareOptions::default(),
    );
    let b = prepare_with(
        &engine,
        &state_case("counter_fp16").join("model.mlpackage"),
        PrepareOptions::default(),
    );
    let mut sa = engine.make_state(&*a).unwrap();
    let before = engine.read_state(&sa).unwrap();
    let x = npy_dir(&state_case("counter_fp16").join("inputs"));
    let e = engine.infer_with_state(&*b, &mut sa, &x, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(b.cache_key()) && msg.contains(a.cache_key()), "{msg}");
    assert_eq!(engine.read_state(&sa).unwrap(), before);
    // A state another engine made: named as such.
    let mut foreign = ModelState::new("coreml", a.cache_key(), Box::new(()));
    let e = engine
        .infer_with_state(
            &*a,
            &mut foreign,
            &npy_dir(&state_case("counter_fp32").join("inputs")),
            T,
        )
        .unwrap_err();
    assert!(e.to_string().contains("made by the coreml engine"), "{e}");
}

/// A run that fails after it has written one state (the package's second
/// write is edited to write a wrongly shaped value) leaves every state as
/// it was: not half-updated.
#[test]
fn a_failed_step_leaves_the_state_unchanged() {
    use coreml_proto::proto::{mil_spec, model, Model};
    use prost::Message;
    let src = state_case("three_states_fp32");
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("m.mlpackage");
    copy_dir(&src.join("model.mlpackage"), &pkg);
    let spec_path = pkg.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    let Some(model::Type::MlProgram(p)) = &mut spec.r#type else {
        panic!("not an ML Program")
    };
    let block = p
        .functions
        .get_mut("main")
        .unwrap()
        .block_specializations
        .values_mut()
        .next()
        .unwrap();
    // The second write_state (of `n`, after `count` was written) takes `x`.
    let op = block
        .operations
        .iter_mut()
        .filter(|o| o.r#type == "write_state")
        .nth(1)
        .unwrap();
    op.inputs.get_mut("data").unwrap().arguments[0].binding =
        Some(mil_spec::argument::binding::Binding::Name("x".into()));
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();

    let engine = CandleEngine::new();
    let model = prepare_with(&engine, &pkg, PrepareOptions::default());
    let mut state = engine.make_state(&*model).unwrap();
    engine
        .write_state(&*model, &mut state, npy_dir(&src.join("states")))
        .unwrap();
    let before = engine.read_state(&state).unwrap();
    let e = engine
        .infer_with_state(&*model, &mut state, &npy_dir(&src.join("inputs")), T)
        .unwrap_err();
    assert!(e.to_string().contains("writing state `n`"), "{e}");
    assert_eq!(engine.read_state(&state).unwrap(), before);
    assert!(!state.is_poisoned());
}

#[test]
fn a_timed_out_step_poisons_the_state() {
    let engine = CandleEngine::new();
    let dir = state_case("counter_fp32");
    let model = prepare_with(&engine, &dir.join("model.mlpackage"), PrepareOptions::default());
    let mut state = engine.make_state(&*model).unwrap();
    let x = npy_dir(&dir.join("inputs"));
    let e = engine
        .infer_with_state(&*model, &mut state, &x, Duration::from_nanos(1))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(state.is_poisoned());
    // What it held is still readable; a new step is refused, naming why.
    assert_eq!(engine.read_state(&state).unwrap()["count"].to_f32_vec(), vec![0.0]);
    let e = engine.infer_with_state(&*model, &mut state, &x, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("poisoned"), "{e}");
}

#[test]
fn the_minilm_kv_decoder_runs_token_by_token_through_the_state_api() {
    // The full check (every step against numpy) is tests/zoo.rs's; here:
    // two sequences with two state objects of one model do not mix.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/zoo/minilm_kv_decoder");
    if !dir.join("model.mlpackage").exists() {
        assert!(
            std::env::var_os("APPLE_SILICON_ALLOW_SKIP").is_some(),
            "{} is missing: run `make zoo`",
            dir.display()
        );
        return;
    }
    let engine = CandleEngine::new();
    let model = prepare_with(&engine, &dir.join("model.mlpackage"), PrepareOptions::default());
    let inputs = npy_dir(&dir.join("inputs"));
    let expected = npy_dir(&dir.join("expected"));
    let step = |t: usize| -> TensorMap { inputs.iter().map(|(n, v)| (n.clone(), slice0(v, t))).collect() };
    let (mut s1, mut s2) = (engine.make_state(&*model).unwrap(), engine.make_state(&*model).unwrap());
    for t in 0..3 {
        let a = engine.infer_with_state(&*model, &mut s1, &step(t), T).unwrap();
        let want = slice0(&expected["hidden"], t);
        assert!(rel_err(&a["hidden"], &want) < 3e-4, "step {t}");
    }
    // s2 starts from zeros: its step 0 equals the reference's step 0.
    let b = engine.infer_with_state(&*model, &mut s2, &step(0), T).unwrap();
    assert!(rel_err(&b["hidden"], &slice0(&expected["hidden"], 0)) < 3e-4);
}

/// Slice `t` of the leading axis, keeping the rest (the zoo's per-step layout).
fn slice0(t: &Tensor, i: usize) -> Tensor {
    let rest: usize = t.shape()[1..].iter().product();
    let bytes = rest * t.dtype().size_in_bytes();
    Tensor::from_bytes(
        t.dtype(),
        t.shape()[1..].to_vec(),
        t.as_bytes()[i * bytes..][..bytes].to_vec(),
    )
    .unwrap()
}

// ---------------------------------------------------------- multifunction

fn mf_case(name: &str) -> (PathBuf, Value) {
    let dir = root().join("features").join(name);
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    (dir, meta)
}

#[test]
fn multifunction_package_lists_and_runs_each_function_against_numpy() {
    let (dir, meta) = mf_case("multifunction");
    let engine = CandleEngine::new();
    let pkg = dir.join("model.mlpackage");
    let names: Vec<String> = serde_json::from_value(meta["functions"].clone()).unwrap();
    let default = prepare_with(&engine, &pkg, PrepareOptions::default());
    let f = &default.io_schema().functions;
    assert_eq!(f.names, names);
    assert_eq!(f.default.as_deref(), meta["default"].as_str());
    assert_eq!(f.selected, f.default);
    let mut keys = Vec::new();
    for name in &names {
        let model = prepare_with(&engine, &pkg, PrepareOptions::default().with_function_name(name));
        assert_eq!(model.io_schema().functions.selected.as_deref(), Some(name.as_str()));
        let notes = engine.capabilities(&*model).notes.join("; ");
        assert!(
            notes.contains(&format!("function `{name}` of a multifunction package")),
            "{notes}"
        );
        let out = engine
            .infer(&*model, &npy_dir(&dir.join("inputs").join(name)), T)
            .unwrap();
        for (o, want) in npy_dir(&dir.join("expected").join(name)) {
            let err = rel_err(&out[&o], &want);
            assert!(err < 1e-5, "{name}/{o}: rel {err:e}");
        }
        keys.push(model.cache_key().to_string());
    }
    assert_ne!(keys[0], keys[1], "two functions must not share a cache key");
    // The default is the `scores` function.
    assert_eq!(
        default.cache_key(),
        keys[names.iter().position(|n| n == "scores").unwrap()]
    );
}

#[test]
fn an_unknown_function_is_a_clear_error_naming_the_functions() {
    let (dir, _) = mf_case("multifunction");
    let engine = CandleEngine::new();
    let art = ModelArtifact::open(dir.join("model.mlpackage")).unwrap();
    let e = engine
        .prepare(&art, PrepareOptions::default().with_function_name("nope"))
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("`nope`") && msg.contains("scores") && msg.contains("embed"),
        "{msg}"
    );
    // A single-function package knows only `main`.
    let single = ModelArtifact::open(state_case("counter_fp32").join("model.mlpackage")).unwrap();
    let e = engine
        .prepare(&single, PrepareOptions::default().with_function_name("embed"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("[\"main\"]"), "{e}");
    assert!(engine
        .prepare(&single, PrepareOptions::default().with_function_name("main"))
        .is_ok());
}

/// With a compiled-model cache, each function gets its own entry, cold and
/// warm, and each still matches numpy.
#[test]
fn cached_functions_keep_their_own_entries() {
    let (dir, meta) = mf_case("multifunction");
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(ModelCache::open(CacheConfig::at(tmp.path()), host_meta()).unwrap());
    let art = ModelArtifact::open(dir.join("model.mlpackage")).unwrap();
    let names: Vec<String> = serde_json::from_value(meta["functions"].clone()).unwrap();
    for round in ["cold", "warm"] {
        for name in &names {
            let engine = CandleEngine::new().with_cache(cache.clone());
            let model = engine
                .prepare(&art, PrepareOptions::default().with_function_name(name))
                .unwrap();
            let notes = engine.capabilities(&*model).notes.join("; ");
            if round == "warm" {
                assert!(notes.contains("cache hit"), "{round} {name}: {notes}");
            }
            let out = engine
                .infer(&*model, &npy_dir(&dir.join("inputs").join(name)), T)
                .unwrap();
            for (o, want) in npy_dir(&dir.join("expected").join(name)) {
                assert!(rel_err(&out[&o], &want) < 1e-5, "{round} {name}/{o}");
            }
        }
    }
}

#[test]
fn a_state_belongs_to_its_function() {
    let (dir, meta) = mf_case("multifunction_counter");
    let engine = CandleEngine::new();
    let pkg = dir.join("model.mlpackage");
    let x: Vec<f32> = serde_json::from_value(meta["x"].clone()).unwrap();
    let one = prepare_with(&engine, &pkg, PrepareOptions::default().with_function_name("add_one"));
    let two = prepare_with(&engine, &pkg, PrepareOptions::default().with_function_name("add_two"));
    for (model, name) in [(&one, "add_one"), (&two, "add_two")] {
        let mut state = engine.make_state(&**model).unwrap();
        for (i, run) in meta["runs"][name].as_array().unwrap().iter().enumerate() {
            let out = engine.infer_with_state(&**model, &mut state, &x_of(&x), T).unwrap();
            let want: Vec<f32> = serde_json::from_value(run["y"].clone()).unwrap();
            assert_eq!(out["y"].to_f32_vec(), want, "{name} run {i}");
            assert_eq!(
                engine.read_state(&state).unwrap()["count"].to_f32_vec(),
                vec![run["count"].as_f64().unwrap() as f32]
            );
        }
    }
    let mut s1 = engine.make_state(&*one).unwrap();
    let e = engine.infer_with_state(&*two, &mut s1, &x_of(&x), T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(
        e.to_string().contains("#add_one") && e.to_string().contains("#add_two"),
        "{e}"
    );
}

// ----------------------------------------------------------------- batches

#[test]
fn a_batch_runs_every_member_and_names_a_bad_one() {
    let (dir, _) = mf_case("multifunction");
    let engine = CandleEngine::new();
    let model = prepare_with(&engine, &dir.join("model.mlpackage"), PrepareOptions::default());
    let x = npy_dir(&dir.join("inputs/scores"));
    let want = &npy_dir(&dir.join("expected/scores"))["probs"];
    let out = engine
        .infer_batch(&*model, &[x.clone(), x.clone(), x.clone()], T)
        .unwrap();
    assert_eq!(out.len(), 3);
    for (i, o) in out.iter().enumerate() {
        assert!(rel_err(&o["probs"], want) < 1e-5, "member {i}");
    }
    // Member 1 has the other function's shape: refused before anything runs.
    let wrong = npy_dir(&dir.join("inputs/embed"));
    let e = engine.infer_batch(&*model, &[x.clone(), wrong], T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("batch member 1") && msg.contains("[2, 4]") && msg.contains("[1, 4]"),
        "{msg}"
    );
    // One deadline for the whole batch.
    let many = vec![x; 64];
    let e = engine.infer_batch(&*model, &many, Duration::from_nanos(1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(engine.infer_batch(&*model, &[], T).unwrap().is_empty());
}

// ------------------------------------------------------------ async prepare

/// A Candle engine whose prepare first sleeps: a prepare long enough to see
/// whether the runtime's thread is blocked while it runs.
struct SlowPrepare {
    inner: CandleEngine,
    delay: Duration,
}

impl InferenceEngine for SlowPrepare {
    fn name(&self) -> &str {
        "slow-prepare"
    }
    fn prepare(&self, a: &ModelArtifact, o: PrepareOptions) -> apple_silicon::Result<Box<dyn PreparedModel>> {
        std::thread::sleep(self.delay);
        self.inner.prepare(a, o)
    }
    fn infer(&self, m: &dyn PreparedModel, i: &TensorMap, t: Duration) -> apple_silicon::Result<TensorMap> {
        self.inner.infer(m, i, t)
    }
    fn capabilities(&self, m: &dyn PreparedModel) -> CapabilityReport {
        self.inner.capabilities(m)
    }
}

#[test]
fn prepare_async_keeps_a_current_thread_runtime_responsive() {
    let (dir, _) = mf_case("multifunction");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine: Arc<dyn InferenceEngine> = Arc::new(SlowPrepare {
        inner: CandleEngine::new(),
        delay: Duration::from_millis(400),
    });
    let art = ModelArtifact::open(dir.join("model.mlpackage")).unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        let t0 = Instant::now();
        let model = apple_silicon::prepare_async(engine.clone(), art.clone(), PrepareOptions::default())
            .await
            .unwrap();
        let took = t0.elapsed();
        let n = ticks.load(Ordering::Relaxed);
        println!("prepare_async took {took:?}; the runtime's ticker ticked {n} times meanwhile (every 10 ms)");
        assert!(n >= 10, "the runtime was blocked: {n} ticks in {took:?}");
        // The model serves the async inference and batch forms.
        let x = npy_dir(&dir.join("inputs/scores"));
        let want = &npy_dir(&dir.join("expected/scores"))["probs"];
        let out = apple_silicon::infer_async(engine.clone(), model.clone(), x.clone(), T)
            .await
            .unwrap();
        assert!(rel_err(&out["probs"], want) < 1e-5);
        let outs = apple_silicon::infer_batch_async(engine.clone(), model, vec![x.clone(), x], T)
            .await
            .unwrap();
        assert_eq!(outs.len(), 2);

        // prepare_timeout is honoured: a Timeout by the deadline, not after the prepare.
        let t0 = Instant::now();
        let e = apple_silicon::prepare_async(
            engine.clone(),
            art.clone(),
            PrepareOptions::default().with_prepare_timeout(Duration::from_millis(50)),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(t0.elapsed() < Duration::from_millis(350), "{:?}", t0.elapsed());
        ticker.abort();
    });
}

/// The counter state case prepared on CandleEngine, its inputs, and a
/// current-thread runtime to drive the async forms on.
fn counter_on_a_current_thread_runtime() -> (
    tokio::runtime::Runtime,
    Arc<dyn InferenceEngine>,
    Arc<dyn PreparedModel>,
    TensorMap,
) {
    let dir = state_case("counter_fp32");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine: Arc<dyn InferenceEngine> = Arc::new(CandleEngine::new());
    let model: Arc<dyn PreparedModel> = Arc::from(prepare_with(
        &*engine,
        &dir.join("model.mlpackage"),
        PrepareOptions::default(),
    ));
    (rt, engine, model, npy_dir(&dir.join("inputs")))
}

#[test]
fn infer_with_state_async_hands_the_state_back() {
    let (rt, engine, model, x) = counter_on_a_current_thread_runtime();
    rt.block_on(async {
        let mut state = engine.make_state(&*model).unwrap();
        for run in 1..=2 {
            let (back, out) =
                apple_silicon::infer_with_state_async(engine.clone(), model.clone(), state, x.clone(), T).await;
            let want: Vec<f32> = x["x"].to_f32_vec().iter().map(|v| v * run as f32).collect();
            assert_eq!(out.unwrap()["y"].to_f32_vec(), want);
            state = back;
        }
        assert_eq!(
            CandleEngine::new().read_state(&state).unwrap()["count"].to_f32_vec(),
            vec![2.0]
        );
    });
}

// ------------------------------------------------------- resilient engine

fn resilient() -> ResilientEngine {
    ResilientEngine::new(Box::new(CandleEngine::new()), Box::new(CandleEngine::new())).with_breaker(
        BreakerConfig::default()
            .with_window(4)
            .with_min_calls(1)
            .with_min_success_rate(0.99),
    )
}

/// A state belongs to the engine that made it: once the breaker opens, a
/// primary's state is refused (never silently continued on the fallback),
/// and a new state is the fallback's.
#[test]
fn resilient_states_stay_with_the_engine_that_made_them() {
    let dir = state_case("counter_fp32");
    let engine = resilient();
    let model = prepare_with(&engine, &dir.join("model.mlpackage"), PrepareOptions::default());
    let rm = model.as_any().downcast_ref::<ResilientModel>().unwrap();
    let x = npy_dir(&dir.join("inputs"));
    let (mut a, mut b) = (engine.make_state(&*model).unwrap(), engine.make_state(&*model).unwrap());
    assert_eq!(a.engine(), "resilient");
    engine.infer_with_state(&*model, &mut b, &x, T).unwrap();
    // A primary step that times out: the state is poisoned and the breaker opens.
    let e = engine
        .infer_with_state(&*model, &mut a, &x, Duration::from_nanos(1))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(a.is_poisoned());
    assert_ne!(rm.breaker().state(), apple_silicon::breaker::BreakerState::Closed);
    // b was the primary's: refused, naming why.
    let e = engine.infer_with_state(&*model, &mut b, &x, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("cannot move between engines"), "{e}");
    // A new state is the fallback's and runs from zero.
    let mut c = engine.make_state(&*model).unwrap();
    let out = engine.infer_with_state(&*model, &mut c, &x, T).unwrap();
    assert_eq!(out["y"], x["x"]);
    // A Candle state is not a resilient one.
    let mut plain = CandleEngine::new().make_state(&*rm_fallback(&dir)).unwrap();
    let e = engine.infer_with_state(&*model, &mut plain, &x, T).unwrap_err();
    assert!(e.to_string().contains("made by the resilient engine"), "{e}");
}

fn rm_fallback(dir: &Path) -> Box<dyn PreparedModel> {
    prepare_with(
        &CandleEngine::new(),
        &dir.join("model.mlpackage"),
        PrepareOptions::default(),
    )
}

#[test]
fn resilient_batches_are_forwarded() {
    let (dir, _) = mf_case("multifunction");
    let engine = resilient();
    let model = prepare_with(
        &engine,
        &dir.join("model.mlpackage"),
        PrepareOptions::default().with_function_name("embed"),
    );
    let x = npy_dir(&dir.join("inputs/embed"));
    let want = &npy_dir(&dir.join("expected/embed"))["embedding"];
    let out = engine.infer_batch(&*model, &[x.clone(), x], T).unwrap();
    for o in &out {
        assert!(rel_err(&o["embedding"], want) < 1e-5);
    }
    let e = engine
        .infer_batch(&*model, &[npy_dir(&dir.join("inputs/scores"))], T)
        .unwrap_err();
    assert!(e.to_string().contains("batch member 0"), "{e}");
}

/// On Linux Core ML cannot prepare: the resilient engine's states are the
/// fallback's, and a whole sequence runs on it.
#[test]
fn resilient_states_come_from_the_fallback_when_the_primary_is_unavailable() {
    let dir = state_case("counter_fp32");
    let engine = ResilientEngine::new(
        Box::new(apple_silicon::CoreMlEngine::new()),
        Box::new(CandleEngine::new()),
    );
    let model = prepare_with(&engine, &dir.join("model.mlpackage"), PrepareOptions::default());
    let x = npy_dir(&dir.join("inputs"));
    let mut state = engine.make_state(&*model).unwrap();
    for run in 1..=3 {
        let out = engine.infer_with_state(&*model, &mut state, &x, T).unwrap();
        let want: Vec<f32> = x["x"].to_f32_vec().iter().map(|v| v * run as f32).collect();
        assert_eq!(out["y"].to_f32_vec(), want);
    }
}

/// GuardedEngine forwards states: a step on its runner hands the state back;
/// one that times out leaves the caller a poisoned stand-in.
#[test]
fn guarded_engine_forwards_states_and_batches() {
    use apple_silicon::deadline::GuardedEngine;
    let dir = state_case("counter_fp32");
    let engine = GuardedEngine::new(Box::new(CandleEngine::new()));
    let model = prepare_with(&engine, &dir.join("model.mlpackage"), PrepareOptions::default());
    let x = npy_dir(&dir.join("inputs"));
    let mut state = engine.make_state(&*model).unwrap();
    engine.infer_with_state(&*model, &mut state, &x, T).unwrap();
    let out = engine.infer_with_state(&*model, &mut state, &x, T).unwrap();
    let want: Vec<f32> = x["x"].to_f32_vec().iter().map(|v| v * 2.0).collect();
    assert_eq!(out["y"].to_f32_vec(), want);
    let e = engine
        .infer_with_state(&*model, &mut state, &x, Duration::from_nanos(1))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(state.is_poisoned());
    let e = engine.infer_with_state(&*model, &mut state, &x, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");

    let (mf, _) = mf_case("multifunction");
    let m = prepare_with(&engine, &mf.join("model.mlpackage"), PrepareOptions::default());
    let xs = npy_dir(&mf.join("inputs/scores"));
    let want = &npy_dir(&mf.join("expected/scores"))["probs"];
    for o in engine.infer_batch(&*m, &[xs.clone(), xs], T).unwrap() {
        assert!(rel_err(&o["probs"], want) < 1e-5);
    }
}

#[test]
fn infer_with_state_async_timeout_returns_a_poisoned_state() {
    let (rt, engine, model, x) = counter_on_a_current_thread_runtime();
    rt.block_on(async {
        let state = engine.make_state(&*model).unwrap();
        let (back, out) = apple_silicon::infer_with_state_async(
            engine.clone(),
            model.clone(),
            state,
            x.clone(),
            Duration::from_nanos(1),
        )
        .await;
        assert_eq!(out.unwrap_err().kind(), ErrorKind::Timeout);
        assert!(back.is_poisoned());
        let (_, out) = apple_silicon::infer_with_state_async(engine.clone(), model.clone(), back, x, T).await;
        assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    });
}

/// A multifunction description that does not match its program is named
/// when the package is opened.
#[test]
fn inconsistent_multifunction_descriptions_are_named() {
    use apple_silicon::mlpackage::MlPackage;
    use coreml_proto::proto::Model;
    use prost::Message;
    let (dir, _) = mf_case("multifunction");
    let edit = |f: &dyn Fn(&mut Model)| -> String {
        let tmp = tempfile::tempdir().unwrap();
        let pkg = tmp.path().join("m.mlpackage");
        copy_dir(&dir.join("model.mlpackage"), &pkg);
        let spec_path = pkg.join("Data/com.apple.CoreML/model.mlmodel");
        let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
        f(&mut spec);
        std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
        MlPackage::open(&pkg).unwrap_err().to_string()
    };
    let e = edit(&|s: &mut Model| s.description.as_mut().unwrap().functions[1].name = "ghost".into());
    assert!(
        e.contains("function `ghost`, which the ML Program does not have"),
        "{e}"
    );
    let e = edit(&|s: &mut Model| s.description.as_mut().unwrap().default_function_name = "ghost".into());
    assert!(e.contains("default function `ghost`") && e.contains("scores"), "{e}");
}
