//! `.mlpackage` reading against the committed fixtures (real coremltools
//! output) and against corrupted and hostile copies of them.

mod common;

use common::copy_dir;
use std::fs;
use std::path::{Path, PathBuf};

use apple_silicon::golden::{self, GoldenModel};
use apple_silicon::milblob::BlobDType;
use apple_silicon::mlpackage::{mil_dtype, MlPackage};
use apple_silicon::{DType, ErrorKind, ModelArtifact};
use coreml_proto::proto::mil_spec::{self, value, Value};
use prost::Message;

fn fixtures() -> Vec<GoldenModel> {
    let models = golden::discover(&golden::fixtures_dir()).unwrap();
    assert!(
        models.len() >= 8,
        "expected the committed fixtures, found {}",
        models.len()
    );
    models
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::I32 => "int32",
        other => other.name(),
    }
}

#[test]
fn every_fixture_opens_with_the_schema_its_manifest_records() {
    for m in fixtures() {
        let pkg = MlPackage::open(m.package_path()).unwrap_or_else(|e| panic!("{}: {e}", m.id));
        assert_eq!(pkg.specification_version(), 7, "{}", m.id);
        let want = &m.manifest.extra["io_schema"];
        for (role, specs) in [
            ("inputs", &pkg.io_schema().inputs),
            ("outputs", &pkg.io_schema().outputs),
        ] {
            let want = want[role].as_array().unwrap();
            assert_eq!(specs.len(), want.len(), "{} {role}", m.id);
            for (s, w) in specs.iter().zip(want) {
                assert_eq!(s.name, w["name"].as_str().unwrap(), "{}", m.id);
                assert_eq!(dtype_name(s.dtype), w["dtype"].as_str().unwrap(), "{} {}", m.id, s.name);
                let shape: Vec<usize> = w["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(s.shape, shape, "{} {}", m.id, s.name);
            }
        }
        // The op census matches what the generator recorded.
        let ops: Vec<String> = pkg.op_histogram().into_keys().collect();
        assert_eq!(ops, m.manifest.ops, "{}", m.id);
        // Golden tensors fit the schema.
        pkg.io_schema().validate_inputs(&m.inputs().unwrap()).unwrap();
        let quant = pkg.quantization();
        let q = m.manifest.quantization.as_str();
        let expected_quant = ["int8", "palettized", "sparse"]
            .into_iter()
            .find(|p| q.starts_with(p))
            .map(str::to_string)
            .unwrap_or_else(|| m.manifest.precision.clone());
        assert_eq!(quant, expected_quant, "{}", m.id);
    }
}

/// Every `blobFileValue` in every program reads back with the element count
/// and dtype its MIL type declares.
#[test]
fn every_weight_blob_reads_back_with_its_declared_type() {
    let mut blobs = 0;
    let mut seen = std::collections::BTreeSet::new();
    for m in fixtures() {
        let pkg = MlPackage::open(m.package_path()).unwrap();
        for op in &pkg.main_block().unwrap().operations {
            let values = op
                .attributes
                .values()
                .chain(
                    op.inputs
                        .values()
                        .flat_map(|a| &a.arguments)
                        .filter_map(|b| match &b.binding {
                            Some(mil_spec::argument::binding::Binding::Value(v)) => Some(v),
                            _ => None,
                        }),
                );
            for v in values {
                let Some(value::Value::BlobFileValue(bf)) = &v.value else {
                    continue;
                };
                let w = pkg.open_weights(&bf.file_name).unwrap();
                let blob = w
                    .blob(bf.offset)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", m.id, op.r#type));
                let (dt, dims) = tensor_type(v);
                let n: u64 = dims.iter().product();
                assert_eq!(blob.count, n, "{} {}: element count", m.id, op.r#type);
                let expect = match mil_spec::DataType::try_from(dt).unwrap() {
                    mil_spec::DataType::Float32 => BlobDType::F32,
                    mil_spec::DataType::Float16 => BlobDType::F16,
                    mil_spec::DataType::Int8 => BlobDType::I8,
                    mil_spec::DataType::Uint8 => BlobDType::U8,
                    mil_spec::DataType::Uint4 => BlobDType::U4,
                    mil_spec::DataType::Uint2 => BlobDType::U2,
                    mil_spec::DataType::Uint1 => BlobDType::U1,
                    other => panic!("{}: unexpected stored type {other:?}", m.id),
                };
                assert_eq!(blob.dtype, expect, "{} {}", m.id, op.r#type);
                match blob.dtype {
                    BlobDType::F32 | BlobDType::F16 => {
                        let v = blob.to_f32().unwrap();
                        assert!(v.iter().all(|x| x.is_finite()), "{}: non-finite weight", m.id);
                    }
                    _ => assert_eq!(blob.to_i64().unwrap().len() as u64, n),
                }
                seen.insert(format!("{:?}", blob.dtype));
                blobs += 1;
            }
        }
    }
    assert!(blobs > 40, "only {blobs} blobs read");
    // The fixture set covers fp32, fp16, int8, uint8/sub-byte palettes.
    for d in ["F32", "F16", "I8"] {
        assert!(seen.contains(d), "no {d} blob among {seen:?}");
    }
    assert!(
        seen.iter().any(|d| ["U1", "U2", "U4", "U8"].contains(&d.as_str())),
        "no palette indices in {seen:?}"
    );
}

fn tensor_type(v: &Value) -> (i32, Vec<u64>) {
    match v.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(mil_spec::value_type::Type::TensorType(t)) => (
            t.data_type,
            t.dimensions
                .iter()
                .map(|d| match d.dimension {
                    Some(mil_spec::dimension::Dimension::Constant(c)) => c.size,
                    _ => panic!("blob with a non-constant dimension"),
                })
                .collect(),
        ),
        other => panic!("blob value without a tensor type: {other:?}"),
    }
}

#[test]
fn mil_dtype_mapping_covers_model_io_types() {
    assert_eq!(mil_dtype(mil_spec::DataType::Float32 as i32), Some(DType::F32));
    assert_eq!(mil_dtype(mil_spec::DataType::Int32 as i32), Some(DType::I32));
    assert_eq!(mil_dtype(mil_spec::DataType::Uint4 as i32), None);
}

#[test]
fn artifact_hash_is_stable_and_matches_the_fixture_checksums() {
    let m = &fixtures()[0];
    let a = ModelArtifact::open(m.package_path()).unwrap();
    let b = ModelArtifact::open(m.package_path()).unwrap();
    assert_eq!(a.sha256, b.sha256);
    assert_eq!(a.format, apple_silicon::ModelFmt::MlPackage);
}

// ---- corrupted and hostile packages -------------------------------------

struct Scratch {
    _dir: tempfile::TempDir,
    pkg: PathBuf,
}

fn scratch(id: &str) -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("m.mlpackage");
    copy_dir(&golden::fixtures_dir().join(id).join("model.mlpackage"), &pkg);
    Scratch { _dir: dir, pkg }
}

fn spec_file(pkg: &Path) -> PathBuf {
    pkg.join("Data/com.apple.CoreML/model.mlmodel")
}

fn weight_file(pkg: &Path) -> PathBuf {
    pkg.join("Data/com.apple.CoreML/weights/weight.bin")
}

fn open_err(pkg: &Path) -> String {
    let e = MlPackage::open(pkg).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArtifact, "{e}");
    e.to_string()
}

fn edit_manifest(pkg: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = pkg.join("Manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn root_item_path(v: &mut serde_json::Value) -> &mut serde_json::Value {
    let root = v["rootModelIdentifier"].as_str().unwrap().to_string();
    &mut v["itemInfoEntries"][root]["path"]
}

#[test]
fn manifest_problems_are_named() {
    let s = scratch("mlp_fp32");
    fs::write(s.pkg.join("Manifest.json"), b"{ not json").unwrap();
    assert!(open_err(&s.pkg).contains("Manifest.json is not a valid manifest"));

    let s = scratch("mlp_fp32");
    edit_manifest(&s.pkg, |v| v["rootModelIdentifier"] = "nope".into());
    assert!(open_err(&s.pkg).contains("rootModelIdentifier `nope` names no item"));

    let s = scratch("mlp_fp32");
    fs::remove_file(s.pkg.join("Manifest.json")).unwrap();
    assert!(open_err(&s.pkg).contains("Manifest.json"));

    for hostile in ["../../../etc/passwd", "/etc/passwd", ""] {
        let s = scratch("mlp_fp32");
        edit_manifest(&s.pkg, |v| *root_item_path(v) = hostile.into());
        assert!(open_err(&s.pkg).contains("leaves the package"), "{hostile}");
    }
}

#[cfg(unix)]
#[test]
fn symlinked_spec_is_refused() {
    let s = scratch("mlp_fp32");
    let spec = spec_file(&s.pkg);
    let elsewhere = s.pkg.parent().unwrap().join("outside.mlmodel");
    fs::rename(&spec, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &spec).unwrap();
    assert!(open_err(&s.pkg).contains("symbolic link"));
}

#[test]
fn spec_problems_are_named() {
    let s = scratch("mlp_fp32");
    let spec = spec_file(&s.pkg);
    let bytes = fs::read(&spec).unwrap();
    fs::write(&spec, &bytes[..bytes.len() / 2]).unwrap();
    assert!(open_err(&s.pkg).contains("not a valid Core ML protobuf"));

    let s = scratch("mlp_fp32");
    fs::write(spec_file(&s.pkg), [0xffu8; 64]).unwrap();
    assert!(open_err(&s.pkg).contains("not a valid Core ML protobuf"));

    // Over 2 GiB: refused from its size alone (a sparse file, nothing read).
    let s = scratch("mlp_fp32");
    let f = fs::OpenOptions::new().write(true).open(spec_file(&s.pkg)).unwrap();
    f.set_len(3 << 30).unwrap();
    assert!(open_err(&s.pkg).contains("2 GiB"));

    // A NeuralNetwork model is not an ML Program.
    let s = scratch("mlp_fp32");
    let mut model = coreml_proto::proto::Model::decode(bytes.as_slice()).unwrap();
    model.r#type = Some(coreml_proto::proto::model::Type::NeuralNetwork(Default::default()));
    fs::write(spec_file(&s.pkg), model.encode_to_vec()).unwrap();
    assert!(open_err(&s.pkg).contains("NeuralNetwork model; only ML Program"));

    // No main function.
    let s = scratch("mlp_fp32");
    let mut model = coreml_proto::proto::Model::decode(bytes.as_slice()).unwrap();
    if let Some(coreml_proto::proto::model::Type::MlProgram(p)) = &mut model.r#type {
        let f = p.functions.remove("main").unwrap();
        p.functions.insert("other".into(), f);
    }
    fs::write(spec_file(&s.pkg), model.encode_to_vec()).unwrap();
    assert!(open_err(&s.pkg).contains("no `main` function"));
}

#[test]
fn damaged_weights_are_reported_when_read() {
    // Truncated weight file: every blob past the cut fails with a reason.
    let s = scratch("cnn_fp32");
    let w = weight_file(&s.pkg);
    let bytes = fs::read(&w).unwrap();
    fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let pkg = MlPackage::open(&s.pkg).unwrap();
    let weights = pkg.open_weights("@model_path/weights/weight.bin").unwrap();
    let last = last_blob_offset(&pkg);
    let e = weights.blob(last).unwrap_err().to_string();
    assert!(e.contains("past the end of the file"), "{e}");

    // Hostile blob file names.
    for name in [
        "@model_path/../../../etc/passwd",
        "/etc/passwd",
        "@model_path//etc/passwd",
    ] {
        let e = pkg.open_weights(name).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArtifact, "{name}: {e}");
    }

    // Wrong storage version.
    let s = scratch("cnn_fp32");
    let mut bytes = fs::read(weight_file(&s.pkg)).unwrap();
    bytes[4] = 1;
    fs::write(weight_file(&s.pkg), &bytes).unwrap();
    let pkg = MlPackage::open(&s.pkg).unwrap();
    let e = pkg
        .open_weights("@model_path/weights/weight.bin")
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage version is 1"), "{e}");
}

fn last_blob_offset(pkg: &MlPackage) -> u64 {
    pkg.main_block()
        .unwrap()
        .operations
        .iter()
        .flat_map(|op| op.attributes.values())
        .filter_map(|v| match &v.value {
            Some(value::Value::BlobFileValue(b)) => Some(b.offset),
            _ => None,
        })
        .max()
        .unwrap()
}

#[test]
fn non_packages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("file.mlpackage");
    fs::write(&f, b"x").unwrap();
    assert!(open_err(&f).contains("must be a directory"));
}
