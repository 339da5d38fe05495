//! `CandleEngine` on the compiled-model cache: a cold prepare builds and
//! installs the lowered program, a warm prepare loads it, and both give the
//! same outputs bit for bit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::golden::{self, GoldenModel};
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::parity::{compare, Thresholds};
use apple_silicon::{CandleEngine, ErrorKind, InferenceEngine, ModelArtifact, PrepareOptions, TensorMap};

const T: Duration = Duration::from_secs(60);

fn cache_at(dir: &Path) -> Arc<ModelCache> {
    Arc::new(ModelCache::open(CacheConfig::at(dir), host_meta()).unwrap())
}

fn run(
    engine: &CandleEngine,
    m: &GoldenModel,
    opts: PrepareOptions,
) -> apple_silicon::Result<(TensorMap, Vec<String>)> {
    let artifact = ModelArtifact::open(m.package_path())?;
    let model = engine.prepare(&artifact, opts)?;
    let out = engine.infer(model.as_ref(), &m.inputs()?, T)?;
    Ok((out, engine.capabilities(model.as_ref()).notes))
}

/// A cache under `dir` holding the compiled form of fixture `name`, made by
/// a cold prepare: the model, the cache, the cold run's outputs and the
/// compiled program's path inside the entry.
fn cold_entry(dir: &Path, name: &str) -> (GoldenModel, Arc<ModelCache>, TensorMap, std::path::PathBuf) {
    let m = GoldenModel::open(golden::fixtures_dir().join(name)).unwrap();
    let cache = cache_at(dir);
    let (cold, _) = run(
        &CandleEngine::new().with_cache(cache.clone()),
        &m,
        PrepareOptions::default(),
    )
    .unwrap();
    let id = cache.entries().unwrap()[0].id.clone();
    let program = dir.join("entries").join(&id).join("payload/program.mlpackage");
    (m, cache, cold, program)
}

/// A new engine on the cache under `dir` gives `cold`'s outputs, with a
/// note containing `why` (how it got past the damaged entry).
fn still_serves(dir: &Path, m: &GoldenModel, cold: &TensorMap, why: &str) {
    let (out, notes) = run(
        &CandleEngine::new().with_cache(cache_at(dir)),
        m,
        PrepareOptions::default(),
    )
    .unwrap();
    assert_eq!(&out, cold);
    assert!(notes.iter().any(|n| n.contains(why)), "{notes:?}");
}

fn models() -> Vec<GoldenModel> {
    let mut v = golden::discover(&golden::fixtures_dir()).unwrap();
    v.push(golden::downloaded("mobilenet_v2_int8").unwrap_or_else(|e| panic!("{e}")));
    v
}

#[test]
fn warm_prepare_loads_the_compiled_form_and_gives_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for m in models() {
        let cold_engine = CandleEngine::new().with_cache(cache_at(dir.path()));
        let (cold, notes) = run(&cold_engine, &m, PrepareOptions::default()).unwrap();
        assert!(notes.iter().any(|n| n.contains("cache miss")), "{}: {notes:?}", m.id);
        // A new engine and a new cache handle: as a new process would see it.
        let cache = cache_at(dir.path());
        let warm_engine = CandleEngine::new().with_cache(cache.clone());
        let (warm, notes) = run(&warm_engine, &m, PrepareOptions::default()).unwrap();
        assert!(notes.iter().any(|n| n.contains("cache hit")), "{}: {notes:?}", m.id);
        assert_eq!(cache.stats().hits, 1, "{}", m.id);
        assert_eq!(cold, warm, "{}: warm outputs differ from cold", m.id);
        let budget = Thresholds {
            l_inf: m.manifest.accuracy_delta_l_inf,
            rmse: m.manifest.accuracy_delta_rmse,
        };
        assert!(
            compare(&warm, &m.expected().unwrap(), budget).unwrap().passed,
            "{}",
            m.id
        );
    }
}

#[test]
fn the_compiled_form_is_a_lowered_ml_program() {
    let dir = tempfile::tempdir().unwrap();
    let m = GoldenModel::open(golden::fixtures_dir().join("cnn_palettized")).unwrap();
    let cache = cache_at(dir.path());
    run(
        &CandleEngine::new().with_cache(cache.clone()),
        &m,
        PrepareOptions::default(),
    )
    .unwrap();
    let entries = cache.entries().unwrap();
    assert_eq!(entries.len(), 1);
    let entry_dir = dir
        .path()
        .join("entries")
        .join(&entries[0].id)
        .join("payload/program.mlpackage");
    let lowered = MlPackage::open(&entry_dir).unwrap();
    let original = MlPackage::open(m.package_path()).unwrap();
    let ops = lowered.op_histogram();
    // The palettized weights stay palettized, as the plan keeps them; of
    // the other ops, the two casts of run-time values remain.
    assert_eq!(
        ops.get("constexpr_lut_to_dense"),
        original.op_histogram().get("constexpr_lut_to_dense"),
        "{ops:?}"
    );
    assert_eq!(ops.get("cast"), Some(&2), "the input and output casts: {ops:?}");
    assert_eq!(lowered.io_schema(), original.io_schema());
    assert_eq!(lowered.quantization(), "palettized");
}

fn weight_file_bytes(package: &Path) -> u64 {
    std::fs::metadata(package.join("Data/com.apple.CoreML/weights/weight.bin"))
        .unwrap()
        .len()
}

/// The compressed MiniLM variants through the cache: the compiled form keeps
/// their weights compressed (its weight file is about the package's, not the
/// 4 bytes an element of f32), and cold, warm and uncached prepares give the
/// same outputs bit for bit, within budget of numpy's reference.
#[test]
fn compressed_weights_stay_compressed_in_the_compiled_form() {
    for (id, op) in [
        ("minilm_l6_int8", "constexpr_affine_dequantize"),
        ("minilm_l6_pal8", "constexpr_lut_to_dense"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let m = golden::downloaded(id).unwrap_or_else(|e| panic!("{e}"));
        let (plain, _) = run(&CandleEngine::new(), &m, PrepareOptions::default()).unwrap();
        let (cold, notes) = run(
            &CandleEngine::new().with_cache(cache_at(dir.path())),
            &m,
            PrepareOptions::default(),
        )
        .unwrap();
        assert!(notes.iter().any(|n| n.contains("cache miss")), "{id}: {notes:?}");
        let cache = cache_at(dir.path());
        let (warm, notes) = run(
            &CandleEngine::new().with_cache(cache.clone()),
            &m,
            PrepareOptions::default(),
        )
        .unwrap();
        assert!(notes.iter().any(|n| n.contains("cache hit")), "{id}: {notes:?}");
        assert_eq!(cold, plain, "{id}: a cold cached prepare differs from an uncached one");
        assert_eq!(warm, plain, "{id}: a warm prepare differs from an uncached one");
        let budget = Thresholds {
            l_inf: m.manifest.accuracy_delta_l_inf,
            rmse: m.manifest.accuracy_delta_rmse,
        };
        let r = compare(&warm, &m.expected().unwrap(), budget).unwrap();
        assert!(r.passed, "{id}:\n{r}");

        let entry = &cache.entries().unwrap()[0].id;
        let compiled = dir.path().join("entries").join(entry).join("payload/program.mlpackage");
        let original = MlPackage::open(m.package_path()).unwrap();
        let lowered = MlPackage::open(&compiled).unwrap();
        let want = original.op_histogram()[op];
        assert!(want > 0, "{id} has no {op}");
        assert_eq!(lowered.op_histogram().get(op), Some(&want), "{id}");
        // Every compressed element is one byte in the package; decompressed
        // to f32 the file would be about 4× as large.
        let (ours, theirs) = (weight_file_bytes(&compiled), weight_file_bytes(&m.package_path()));
        println!("{id}: compiled form's weight file {ours} bytes, the package's {theirs}");
        assert!(
            ours as f64 <= 1.05 * theirs as f64,
            "{id}: the compiled form's weights are {ours} bytes, the package's {theirs}"
        );
    }
}

#[test]
fn precompiled_only_serves_cached_forms_and_refuses_to_compile() {
    let dir = tempfile::tempdir().unwrap();
    let m = GoldenModel::open(golden::fixtures_dir().join("mlp_int8")).unwrap();
    let engine = CandleEngine::new().with_cache(cache_at(dir.path()));
    let strict = PrepareOptions::default().with_precompiled_only(true);
    let e = run(&engine, &m, strict.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Compile, "{e}");
    assert!(e.to_string().contains("precompiled-only"), "{e}");
    run(&engine, &m, PrepareOptions::default()).unwrap();
    let (_, notes) = run(&engine, &m, strict).unwrap();
    assert!(notes.iter().any(|n| n.contains("cache hit")), "{notes:?}");
    // Without a cache there is nothing precompiled to load.
    let e = run(
        &CandleEngine::new(),
        &m,
        PrepareOptions::default().with_precompiled_only(true),
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs a compiled-model cache"), "{e}");
}

#[test]
fn a_damaged_compiled_form_is_never_served_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (m, cache, cold, payload) = cold_entry(dir.path(), "cnn_fp16");
    // Truncated weights: the cache's own check evicts and rebuilds the entry.
    let w = payload.join("Data/com.apple.CoreML/weights/weight.bin");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    still_serves(dir.path(), &m, &cold, "cache miss");
    // A same-size garbage spec passes the cheap checks but cannot load: the
    // engine builds from the package instead of failing or serving garbage.
    // (The entry was rebuilt: look its id up again.)
    let id = cache.entries().unwrap()[0].id.clone();
    let spec = dir
        .path()
        .join("entries")
        .join(&id)
        .join("payload/program.mlpackage/Data/com.apple.CoreML/model.mlmodel");
    let len = std::fs::metadata(&spec).unwrap().len() as usize;
    std::fs::write(&spec, vec![0xffu8; len]).unwrap();
    still_serves(dir.path(), &m, &cold, "unusable");
}

#[test]
fn cache_counters_feed_telemetry_snapshots() {
    use apple_silicon::telemetry::{RegistrySnapshot, TelemetryRegistry};
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_at(dir.path());
    let registry = TelemetryRegistry::new();
    registry.attach_cache("candle", cache.clone());
    let m = GoldenModel::open(golden::fixtures_dir().join("mlp_fp16")).unwrap();
    let engine = CandleEngine::new().with_cache(cache);
    run(&engine, &m, PrepareOptions::default()).unwrap();
    run(&engine, &m, PrepareOptions::default()).unwrap();
    let snap = registry.snapshot();
    let stats = &snap.caches["candle"];
    assert_eq!((stats.hits, stats.misses, stats.installs), (1, 1, 1));
    let back: RegistrySnapshot = serde_json::from_str(&registry.to_json()).unwrap();
    assert_eq!(back.caches["candle"], *stats);
}

/// A compiled form whose compressed weights are damaged (same-size file, so
/// the cache's size check passes) is refused with an error naming the
/// weight, and the engine builds from the package instead.
#[test]
fn a_damaged_compressed_compiled_form_is_refused() {
    use apple_silicon::mil::{FloatPolicy, Plan};
    let dir = tempfile::tempdir().unwrap();
    let (m, _cache, cold, compiled) = cold_entry(dir.path(), "mlp_int8");
    let lowered = MlPackage::open(&compiled).unwrap();
    assert!(lowered.op_histogram().contains_key("constexpr_affine_dequantize"));
    // Every blob's metadata record zeroed: no blob can be found.
    let w = compiled.join("Data/com.apple.CoreML/weights/weight.bin");
    let len = std::fs::metadata(&w).unwrap().len() as usize;
    std::fs::write(&w, vec![0u8; len]).unwrap();
    let e = MlPackage::open(&compiled)
        .and_then(|p| Plan::build(&p, FloatPolicy::Upcast))
        .unwrap_err();
    assert!(e.to_string().contains("weight.bin"), "{e}");
    still_serves(dir.path(), &m, &cold, "unusable");
}
