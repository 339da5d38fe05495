//! Hostile files: packages, model directories, `.npy` files and cache entries
//! built in each test the way an attacker would build them. Every one must be
//! refused at once with a message saying what was expected and what was
//! found, never followed outside its root, never block, never allocate what a
//! file claims before checking it against the file's size.

mod common;

use common::copy_dir;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
use apple_silicon::golden::{self, GoldenModel};
use apple_silicon::mil::{FloatPolicy, Plan};
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::parity::{compare, Thresholds};
use apple_silicon::{CandleEngine, ErrorKind, InferenceEngine, ModelArtifact, PrepareOptions, Tensor};
use coreml_proto::proto::{mil_spec, model, Model};
use prost::Message;

const WEIGHTS: &str = "@model_path/weights/weight.bin";
const T: Duration = Duration::from_secs(60);

/// A copy of the `mlp_fp32` model directory (manifest, package, inputs,
/// expected outputs) under `dir`.
fn model_copy(dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    copy_dir(&golden::fixtures_dir().join("mlp_fp32"), &dst);
    dst
}

fn package_copy(dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    copy_dir(&golden::fixtures_dir().join("mlp_fp32/model.mlpackage"), &dst);
    dst
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let ok = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Runs `f` on another thread and fails the test if it takes more than a few
/// seconds (a read that blocks on a FIFO never returns).
fn promptly<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{what} blocked for more than 5 s"))
}

fn err_text<T: std::fmt::Debug>(r: apple_silicon::Result<T>) -> String {
    r.expect_err("must be refused").to_string()
}

#[test]
fn a_symlinked_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_copy(dir.path(), "a.mlpackage");
    std::fs::rename(pkg.join("Data"), dir.path().join("elsewhere")).unwrap();
    symlink("../elsewhere", &pkg.join("Data"));
    let e = err_text(MlPackage::open(&pkg));
    assert!(
        e.contains("expected a directory at `Data`, found a symbolic link"),
        "{e}"
    );
    let e = err_text(MlPackage::open_in_memory(&pkg));
    assert!(
        e.contains("found a symbolic link") && e.contains("a.mlpackage/Data"),
        "{e}"
    );
    // And the artifact cannot be hashed either (the tree walk refuses links).
    assert!(err_text(ModelArtifact::open(&pkg)).contains("symbolic link"));
}

#[test]
fn a_symlinked_weight_file_is_refused_by_open_weights_and_plan_building() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_copy(dir.path(), "a.mlpackage");
    let w = pkg.join("Data/com.apple.CoreML/weights/weight.bin");
    std::fs::rename(&w, dir.path().join("weight.bin")).unwrap();
    symlink(dir.path().join("weight.bin"), &w);
    let p = MlPackage::open(&pkg).unwrap();
    let e = err_text(p.open_weights(WEIGHTS));
    assert!(
        e.contains("found a symbolic link") && e.contains("`Data/com.apple.CoreML/weights/weight.bin`"),
        "{e}"
    );
    let e = err_text(Plan::build(&p, FloatPolicy::Upcast));
    assert!(e.contains("symbolic link"), "{e}");
}

#[test]
fn a_symlink_in_a_middle_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_copy(dir.path(), "a.mlpackage");
    let mid = pkg.join("Data/com.apple.CoreML");
    std::fs::rename(&mid, dir.path().join("coreml")).unwrap();
    symlink(dir.path().join("coreml"), &mid);
    let e = err_text(MlPackage::open(&pkg));
    assert!(
        e.contains("expected a directory at `Data/com.apple.CoreML`, found a symbolic link"),
        "{e}"
    );
}

#[test]
fn fifo_weights_manifests_and_inputs_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    // Weights.
    let pkg = package_copy(dir.path(), "w.mlpackage");
    mkfifo(&pkg.join("Data/com.apple.CoreML/weights/weight.bin"));
    let e = promptly("open_weights on a FIFO", move || {
        let p = MlPackage::open(&pkg).unwrap();
        err_text(p.open_weights(WEIGHTS))
    });
    assert!(e.contains("found a FIFO"), "{e}");
    // Manifest.json of the package.
    let pkg = package_copy(dir.path(), "m.mlpackage");
    mkfifo(&pkg.join("Manifest.json"));
    let e = promptly("MlPackage::open with a FIFO manifest", move || {
        err_text(MlPackage::open(&pkg))
    });
    assert!(
        e.contains("expected a regular file at `Manifest.json`, found a FIFO"),
        "{e}"
    );
    // manifest.json of a model directory.
    let m = model_copy(dir.path(), "golden_m");
    mkfifo(&m.join("manifest.json"));
    let e = promptly("GoldenModel::open with a FIFO manifest", move || {
        err_text(GoldenModel::open(&m))
    });
    assert!(e.contains("found a FIFO"), "{e}");
    // An input .npy of a model directory, and read_npy on it directly.
    let m = model_copy(dir.path(), "golden_i");
    mkfifo(&m.join("inputs/x.npy"));
    let g = GoldenModel::open(&m).unwrap();
    let e = promptly("GoldenModel::inputs with a FIFO input", move || err_text(g.inputs()));
    assert!(e.contains("found a FIFO"), "{e}");
    let fifo = m.join("inputs/x.npy");
    let e = promptly("Tensor::read_npy on a FIFO", move || err_text(Tensor::read_npy(&fifo)));
    assert!(e.contains("expected a regular file, found a FIFO"), "{e}");
}

#[test]
fn dev_zero_as_an_input_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_copy(dir.path(), "z");
    std::fs::remove_file(m.join("inputs/x.npy")).unwrap();
    symlink("/dev/zero", &m.join("inputs/x.npy"));
    let g = GoldenModel::open(&m).unwrap();
    let e = promptly("inputs() through a link to /dev/zero", move || err_text(g.inputs()));
    assert!(e.contains("found a symbolic link"), "{e}");
    // Named directly (a caller's own path may be a link, but not a device).
    let e = promptly("read_npy(/dev/zero)", || err_text(Tensor::read_npy("/dev/zero")));
    assert!(e.contains("expected a regular file, found a device"), "{e}");
}

/// The weight file of the MLP with every float of its data region negated:
/// same program, different weights (a different digest and different outputs).
fn other_weights(pkg: &Path) {
    let w = pkg.join("Data/com.apple.CoreML/weights/weight.bin");
    let mut b = std::fs::read(&w).unwrap();
    // Data regions start 64 bytes after each record; flip the sign bit of
    // every fp32 after the header whose record is not a sentinel.
    let mut off = 64;
    while off + 64 <= b.len() {
        let sentinel = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        assert_eq!(sentinel, 0xDEAD_BEEF, "record at {off}");
        let size = u64::from_le_bytes(b[off + 8..off + 16].try_into().unwrap()) as usize;
        let data = u64::from_le_bytes(b[off + 16..off + 24].try_into().unwrap()) as usize;
        for i in (data..data + size).step_by(4) {
            b[i + 3] ^= 0x80;
        }
        off = (data + size).div_ceil(64) * 64;
    }
    std::fs::write(&w, b).unwrap();
}

#[test]
fn swapping_the_package_between_open_and_prepare_is_detected_and_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_copy(dir.path(), "mlp");
    let pkg = m.join("model.mlpackage");
    let evil = package_copy(dir.path(), "evil.mlpackage");
    other_weights(&evil);
    let cache = Arc::new(ModelCache::open(CacheConfig::at(dir.path().join("cache")), host_meta()).unwrap());
    let engine = CandleEngine::new().with_cache(cache.clone());

    let artifact = ModelArtifact::open(&pkg).unwrap();
    // The attacker swaps Data/ for other weights' (a real directory: no link to catch).
    std::fs::rename(pkg.join("Data"), dir.path().join("Data.orig")).unwrap();
    std::fs::rename(evil.join("Data"), pkg.join("Data")).unwrap();
    let e = engine
        .prepare(&artifact, PrepareOptions::default())
        .err()
        .expect("prepare must notice the swap");
    assert_eq!(e.kind(), ErrorKind::InvalidArtifact);
    assert!(
        e.to_string().contains("changed since it was opened") && e.to_string().contains(&artifact.sha256_hex()),
        "{e}"
    );
    assert!(
        cache.entries().unwrap().is_empty(),
        "nothing may be cached for a swapped package"
    );

    // Swapped back: an honest prepare builds, caches and serves the real weights.
    std::fs::remove_dir_all(pkg.join("Data")).unwrap();
    std::fs::rename(dir.path().join("Data.orig"), pkg.join("Data")).unwrap();
    let g = GoldenModel::open(&m).unwrap();
    let budget = Thresholds {
        l_inf: g.manifest.accuracy_delta_l_inf,
        rmse: g.manifest.accuracy_delta_rmse,
    };
    for _ in 0..2 {
        let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
        let out = engine.infer(model.as_ref(), &g.inputs().unwrap(), T).unwrap();
        assert!(compare(&out, &g.expected().unwrap(), budget).unwrap().passed);
    }
    let entries = cache.entries().unwrap();
    assert_eq!(entries.len(), 1);
    let report = cache.verify().unwrap();
    assert!(report.bad.is_empty(), "{report:?}");

    // Warm, only the spec is read: other weights swapped in after the open are never
    // read; the compiled form of the hashed bytes serves the real outputs.
    let evil = package_copy(dir.path(), "evil2.mlpackage");
    other_weights(&evil);
    std::fs::rename(pkg.join("Data"), dir.path().join("Data.orig")).unwrap();
    std::fs::rename(evil.join("Data"), pkg.join("Data")).unwrap();
    let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
    let notes = engine.capabilities(model.as_ref()).notes.join("; ");
    assert!(notes.contains("cache hit"), "{notes}");
    let out = engine.infer(model.as_ref(), &g.inputs().unwrap(), T).unwrap();
    assert!(compare(&out, &g.expected().unwrap(), budget).unwrap().passed);

    // Another spec on disk: not the one the compiled form was built from, so the whole
    // package is read and checked against the artifact's digest, and refused.
    std::fs::remove_dir_all(pkg.join("Data")).unwrap();
    std::fs::rename(dir.path().join("Data.orig"), pkg.join("Data")).unwrap();
    let spec_path = pkg.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    spec.description
        .get_or_insert_with(Default::default)
        .metadata
        .get_or_insert_with(Default::default)
        .short_description = "edited after the open".into();
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    let e = engine
        .prepare(&artifact, PrepareOptions::default())
        .err()
        .expect("a changed spec is noticed");
    assert!(e.to_string().contains("changed since it was opened"), "{e}");
}

#[test]
fn an_entry_built_from_other_bytes_than_its_key_names_is_refused_and_verify_evicts_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::open(CacheConfig::at(dir.path()), host_meta()).unwrap();
    let key = apple_silicon::CacheKey {
        sha256: "aa".repeat(32),
        coreml_version: "t".into(),
        backend: "b".into(),
        compute_units: apple_silicon::ComputeUnits::CpuOnly,
        quantization: "q".into(),
        shape_key: "1".into(),
        os_build: "any".into(),
    };
    let write = |p: &Path| std::fs::write(p.join("x"), b"compiled").map_err(|e| apple_silicon::Error::io("writing", e));
    let e = cache
        .get_or_build_from(&key, &"bb".repeat(32), write)
        .expect_err("a mismatching source digest is refused");
    assert!(e.to_string().contains("refusing to cache it"), "{e}");
    let entry = cache.get_or_build_from(&key, &key.sha256, write).unwrap();
    assert_eq!(entry.meta().source_sha256.as_deref(), Some(key.sha256.as_str()));
    // Another process rewrites the record to say what it was really built from.
    let meta_path = entry.entry_dir().join("meta.json");
    let text = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(
        &meta_path,
        text.replace(
            &format!("\"source_sha256\": \"{}\"", key.sha256),
            &format!("\"source_sha256\": \"{}\"", "cc".repeat(32)),
        ),
    )
    .unwrap();
    let report = cache.verify().unwrap();
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert!(
        report.bad[0]
            .detail
            .contains("built from an artifact whose sha256 is cccc"),
        "{report:?}"
    );
}

fn npy_v2_header(header_len: u32) -> Vec<u8> {
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend_from_slice(&header_len.to_le_bytes());
    b
}

#[test]
fn npy_header_lengths_are_capped_before_parsing() {
    let e = err_text(Tensor::from_npy_bytes(&npy_v2_header(0xFFFF_FFFF)));
    assert!(
        e.contains("header of 4294967295 bytes is more than the 65536 allowed"),
        "{e}"
    );
    // Within the cap but longer than the file.
    let e = err_text(Tensor::from_npy_bytes(&npy_v2_header(1000)));
    assert!(e.contains("runs past the end of the file (12 bytes)"), "{e}");
    // The same from a file on disk.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.npy");
    std::fs::write(&p, npy_v2_header(0xFFFF_FFFF)).unwrap();
    assert!(err_text(Tensor::read_npy(&p)).contains("more than the 65536 allowed"));
}

/// A format 1.0 `.npy` with the given header dictionary and data bytes.
fn npy_with(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn npy_data_must_be_exactly_what_the_header_says() {
    let good = Tensor::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap().to_npy_bytes();
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    let e = err_text(Tensor::from_npy_bytes(&trailing));
    assert!(e.contains("4 trailing bytes after the data"), "{e}");
    let e = err_text(Tensor::from_npy_bytes(&good[..good.len() - 1]));
    assert!(
        e.contains("truncated: shape [2] of `<f4` needs 8 data bytes, the file holds 7"),
        "{e}"
    );
    // A shape whose element count overflows is refused before any allocation.
    let huge = npy_with(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }",
        &[0; 8],
    );
    let e = err_text(Tensor::from_npy_bytes(&huge));
    assert!(e.contains("overflows"), "{e}");
    // A shape that claims far more data than the file holds.
    let big = npy_with(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000,), }",
        &[0; 8],
    );
    let e = err_text(Tensor::from_npy_bytes(&big));
    assert!(e.contains("needs 8000000000 data bytes, the file holds 8"), "{e}");
}

/// Rewrites the MLP fixture's spec with `edit`.
fn edited_package(dir: &Path, edit: impl FnOnce(&mut Model)) -> PathBuf {
    let dst = package_copy(dir, "edited.mlpackage");
    let spec_path = dst.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    edit(&mut spec);
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    dst
}

fn set_flexibility(spec: &mut Model, flex: coreml_proto::proto::array_feature_type::ShapeFlexibility) {
    use coreml_proto::proto::feature_type;
    let input = &mut spec.description.as_mut().unwrap().input[0];
    match input.r#type.as_mut().unwrap().r#type.as_mut().unwrap() {
        feature_type::Type::MultiArrayType(a) => a.shape_flexibility = Some(flex),
        _ => unreachable!(),
    }
}

#[test]
fn negative_or_inverted_shape_ranges_and_enumerated_shapes_are_refused_at_open() {
    use coreml_proto::proto::array_feature_type::{EnumeratedShapes, Shape, ShapeFlexibility, ShapeRange};
    use coreml_proto::proto::SizeRange;
    let range = |lo: u64, hi: i64| {
        ShapeFlexibility::ShapeRange(ShapeRange {
            size_ranges: vec![
                SizeRange {
                    lower_bound: lo,
                    upper_bound: hi,
                },
                SizeRange {
                    lower_bound: 4,
                    upper_bound: 4,
                },
            ],
        })
    };
    let cases = [
        (range(4, 2), "dimension 0 range [4, 2] is inverted"),
        (range(1, -5), "dimension 0 range [1, -5] has a negative upper bound"),
        (
            ShapeFlexibility::EnumeratedShapes(EnumeratedShapes {
                shapes: vec![Shape { shape: vec![1, 4] }, Shape { shape: vec![-3, 4] }],
            }),
            "enumerated shape 1 [-3, 4] has a negative dimension -3",
        ),
    ];
    for (flex, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let pkg = edited_package(dir.path(), |s| set_flexibility(s, flex));
        let e = err_text(MlPackage::open(&pkg));
        assert!(e.contains(want), "want {want:?}, got {e}");
    }
    // An unbounded range (-1) is still fine.
    let dir = tempfile::tempdir().unwrap();
    let pkg = edited_package(dir.path(), |s| set_flexibility(s, range(1, -1)));
    MlPackage::open(&pkg).unwrap();
}

#[test]
fn a_spec_path_that_goes_up_and_back_inside_is_accepted_and_one_that_leaves_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_copy(dir.path(), "a.mlpackage");
    let manifest = std::fs::read_to_string(pkg.join("Manifest.json")).unwrap();
    let original = "\"com.apple.CoreML/model.mlmodel\"";
    assert!(manifest.contains(original));
    std::fs::write(
        pkg.join("Manifest.json"),
        manifest.replace(original, "\"com.apple.CoreML/../com.apple.CoreML/model.mlmodel\""),
    )
    .unwrap();
    let p = MlPackage::open(&pkg).unwrap();
    Plan::build(&p, FloatPolicy::Upcast).unwrap();
    for bad in [
        "../Manifest.json",
        "com.apple.CoreML/../../Manifest.json",
        "/etc/passwd",
    ] {
        std::fs::write(
            pkg.join("Manifest.json"),
            manifest.replace(original, &format!("\"{bad}\"")),
        )
        .unwrap();
        let e = err_text(MlPackage::open(&pkg));
        assert!(e.contains("leaves the package's Data directory"), "{bad}: {e}");
    }
}

#[test]
fn a_blob_read_as_the_wrong_dtype_names_file_const_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut name = String::new();
    let mut offset = 0;
    let pkg = edited_package(dir.path(), |spec| {
        let Some(model::Type::MlProgram(p)) = &mut spec.r#type else {
            unreachable!()
        };
        let f = p.functions.get_mut("main").unwrap();
        let block = f.block_specializations.values_mut().next().unwrap();
        // The first const stored in weight.bin, declared fp16 although it holds fp32.
        for op in &mut block.operations {
            let Some(val) = op.attributes.get_mut("val") else {
                continue;
            };
            if let Some(mil_spec::value::Value::BlobFileValue(b)) = &val.value {
                offset = b.offset;
                name = op.outputs[0].name.clone();
                if let Some(mil_spec::value_type::Type::TensorType(t)) =
                    val.r#type.as_mut().and_then(|t| t.r#type.as_mut())
                {
                    t.data_type = mil_spec::DataType::Float16 as i32;
                }
                break;
            }
        }
    });
    assert!(!name.is_empty(), "the fixture stores a const in weight.bin");
    let p = MlPackage::open(&pkg).unwrap();
    let e = err_text(Plan::build(&p, FloatPolicy::Upcast));
    assert!(
        e.contains("weights/weight.bin")
            && e.contains(&format!("const `{name}`"))
            && e.contains(&format!(
                "blob at offset {offset} holds F32 data, which cannot be read as f16"
            )),
        "{e}"
    );
}

#[test]
fn an_element_count_that_overflows_says_so() {
    let e = err_text(Tensor::from_vec::<f32>(vec![usize::MAX, 2], vec![]));
    assert!(e.contains("overflows"), "{e}");
    let e = err_text(Tensor::zeros(apple_silicon::DType::F32, vec![1 << 62, 4]));
    assert!(e.contains("overflows"), "{e}");
}

/// Makes a cache root unwritable the way a read-only mount looks to root
/// (who may write through permissions): the directories it must create or
/// write in are files.
fn break_cache_root(root: &Path) {
    for d in ["locks", "tmp"] {
        std::fs::remove_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d), b"not a directory").unwrap();
    }
}

#[test]
fn a_read_only_cache_serves_its_entries_and_prepares_the_rest_uncached() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let mlp = GoldenModel::open(golden::fixtures_dir().join("mlp_fp32")).unwrap();
    let cnn = GoldenModel::open(golden::fixtures_dir().join("cnn_fp32")).unwrap();
    let prepare = |engine: &CandleEngine, g: &GoldenModel| {
        let artifact = ModelArtifact::open(g.package_path()).unwrap();
        let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
        let out = engine.infer(model.as_ref(), &g.inputs().unwrap(), T).unwrap();
        let budget = Thresholds {
            l_inf: g.manifest.accuracy_delta_l_inf,
            rmse: g.manifest.accuracy_delta_rmse,
        };
        assert!(
            compare(&out, &g.expected().unwrap(), budget).unwrap().passed,
            "{}",
            g.id
        );
        engine.capabilities(model.as_ref()).notes.join("; ")
    };
    let cache = Arc::new(ModelCache::open(CacheConfig::at(&root), host_meta()).unwrap());
    let notes = prepare(&CandleEngine::new().with_cache(cache), &mlp);
    assert!(notes.contains("cache miss"), "{notes}");

    break_cache_root(&root);
    let cache = Arc::new(ModelCache::open(CacheConfig::at(&root), host_meta()).unwrap());
    let why = cache.read_only().expect("opened read-only").to_string();
    assert!(
        why.contains("creating cache directory") && why.contains("cache/tmp"),
        "{why}"
    );
    let engine = CandleEngine::new().with_cache(cache.clone());
    let notes = prepare(&engine, &mlp);
    assert!(notes.contains("cache hit"), "what it has is served: {notes}");
    let notes = prepare(&engine, &cnn);
    assert!(
        notes.contains("built from the package, not cached") && notes.contains("read-only"),
        "{notes}"
    );
    assert_eq!(cache.entries().unwrap().len(), 1);
    // Maintenance that would have to write is refused, not half done.
    let e = cache.clear().expect_err("clear on a read-only cache");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("cannot clear it"), "{e}");
}

#[test]
fn a_cache_root_that_cannot_be_created_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let root = dir.path().join("file/cache");
    let e = ModelCache::open(CacheConfig::at(&root), host_meta()).expect_err("cannot be created");
    assert!(
        e.to_string().contains("creating cache directory") && e.to_string().contains("file/cache"),
        "{e}"
    );
}

#[test]
fn a_bert_directory_whose_config_is_a_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("bert");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(dir.path().join("config.json"), br#"{"model_type": "bert"}"#).unwrap();
    symlink(dir.path().join("config.json"), &m.join("config.json"));
    std::fs::write(m.join("model.safetensors"), b"not really").unwrap();
    let e = err_text(apple_silicon::candle_backend::BertEncoder::load(&m, 16).map(|_| ()));
    assert!(
        e.contains("expected a regular file at `config.json`, found a symbolic link"),
        "{e}"
    );
}

#[test]
fn a_cache_broken_after_it_was_opened_costs_the_compiled_form_not_the_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = Arc::new(ModelCache::open(CacheConfig::at(&root), host_meta()).unwrap());
    // Another process replaces the cache's directories with files.
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    for d in ["entries", "tmp", "locks"] {
        std::fs::write(root.join(d), b"not a directory").unwrap();
    }
    let g = GoldenModel::open(golden::fixtures_dir().join("mlp_fp32")).unwrap();
    let engine = CandleEngine::new().with_cache(cache);
    let artifact = ModelArtifact::open(g.package_path()).unwrap();
    let model = engine.prepare(&artifact, PrepareOptions::default()).unwrap();
    let notes = engine.capabilities(model.as_ref()).notes.join("; ");
    assert!(notes.contains("built from the package, not cached"), "{notes}");
    let out = engine.infer(model.as_ref(), &g.inputs().unwrap(), T).unwrap();
    let budget = Thresholds {
        l_inf: g.manifest.accuracy_delta_l_inf,
        rmse: g.manifest.accuracy_delta_rmse,
    };
    assert!(compare(&out, &g.expected().unwrap(), budget).unwrap().passed);
}
