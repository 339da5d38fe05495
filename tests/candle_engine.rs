//! `CandleEngine` through the public `InferenceEngine` seam: golden parity,
//! the two independent MiniLM references, MobileNetV2 on a real photograph,
//! malformed inputs, timeouts and unsupported ops.

mod common;

use common::copy_dir;
use std::time::Duration;

use apple_silicon::golden::{self, GoldenModel};
use apple_silicon::mil::FloatPolicy;
use apple_silicon::parity::{compare, Thresholds};
use apple_silicon::{
    CandleEngine, ComputeUnits, DType, ErrorKind, InferenceEngine, ModelArtifact, PrepareOptions, Tensor, TensorMap,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn downloaded(id: &str) -> GoldenModel {
    golden::downloaded(id).unwrap_or_else(|e| panic!("{e}"))
}

fn prepare(engine: &CandleEngine, path: &std::path::Path) -> Box<dyn apple_silicon::PreparedModel> {
    let artifact = ModelArtifact::open(path).unwrap();
    engine
        .prepare(&artifact, PrepareOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_fixture_runs_through_the_engine_within_budget() {
    let engine = CandleEngine::new();
    for m in golden::discover(&golden::fixtures_dir()).unwrap() {
        let model = prepare(&engine, &m.package_path());
        let out = engine.infer(model.as_ref(), &m.inputs().unwrap(), T).unwrap();
        let budget = Thresholds {
            l_inf: m.manifest.accuracy_delta_l_inf,
            rmse: m.manifest.accuracy_delta_rmse,
        };
        let r = compare(&out, &m.expected().unwrap(), budget).unwrap();
        assert!(r.passed, "{}:\n{r}", m.id);
        let caps = engine.capabilities(model.as_ref());
        assert_eq!(caps.engine, "candle");
        assert_eq!(caps.compute_units_actual, Some(ComputeUnits::CpuOnly));
        assert!(!caps.compute_precision.is_empty());
    }
}

/// The compressed MiniLM variants (scripts/models/compressed_minilm.py): int8
/// weights (constexpr_affine_dequantize) and an 8-bit palette
/// (constexpr_lut_to_dense), kept compressed by the interpreter, match numpy's
/// forward pass over the same decompressed weights, under both float policies.
#[test]
fn compressed_minilm_variants_match_their_numpy_reference() {
    for id in ["minilm_l6_int8", "minilm_l6_pal8"] {
        let m = downloaded(id);
        for engine in [
            CandleEngine::new(),
            CandleEngine::new().with_float_policy(FloatPolicy::Native),
        ] {
            let model = prepare(&engine, &m.package_path());
            let out = engine.infer(model.as_ref(), &m.inputs().unwrap(), T).unwrap();
            let budget = Thresholds {
                l_inf: m.manifest.accuracy_delta_l_inf,
                rmse: m.manifest.accuracy_delta_rmse,
            };
            let r = compare(&out, &m.expected().unwrap(), budget).unwrap();
            assert!(r.passed, "{id}:\n{r}");
        }
    }
}

fn sentence_inputs(s: &Value) -> TensorMap {
    let ids: Vec<i32> = s["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    let mask: Vec<i32> = s["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    let n = ids.len();
    TensorMap::from([
        ("input_ids".to_string(), Tensor::from_vec(vec![1, n], ids).unwrap()),
        (
            "attention_mask".to_string(),
            Tensor::from_vec(vec![1, n], mask).unwrap(),
        ),
    ])
}

fn embedding(out: &TensorMap) -> Vec<f64> {
    out["embedding"].to_f64_vec()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The ML Program run by the interpreter and the safetensors run by
/// candle-transformers' BERT agree, and both match the published values.
#[test]
fn minilm_interpreter_and_native_bert_agree_with_each_other_and_the_published_values() {
    let engine = CandleEngine::new();
    let program = downloaded("minilm_l6_fp32");
    let mlp = prepare(&engine, &program.package_path());
    let bert = prepare(&engine, &golden::models_dir().join("minilm_l6_safetensors"));
    let sentences: Value = serde_json::from_slice(&std::fs::read(program.dir.join("sentences.json")).unwrap()).unwrap();
    let sentences = sentences["sentences"].as_array().unwrap();
    assert!(sentences.len() >= 5);
    let mut by_text = std::collections::HashMap::new();
    for s in sentences {
        let inputs = sentence_inputs(s);
        let a = embedding(&engine.infer(mlp.as_ref(), &inputs, T).unwrap());
        let b = embedding(&engine.infer(bert.as_ref(), &inputs, T).unwrap());
        let reference: Vec<f64> = s["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let c = cosine(&a, &b);
        assert!(
            c >= 0.9999,
            "{}: interpreter vs candle-transformers cosine {c}",
            s["text"]
        );
        assert!(cosine(&a, &reference) >= 0.9999, "{}", s["text"]);
        let linf = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        println!("{:<32} cosine {c:.8}  L∞ {linf:.2e}", s["text"].as_str().unwrap());
        by_text.insert(s["text"].as_str().unwrap().to_string(), (a, b));
    }

    let published: Value = serde_json::from_slice(&std::fs::read(program.dir.join("published.json")).unwrap()).unwrap();
    // First five dimensions of "hello world", as published (atol as there).
    let first5 = &published["first5"];
    let want: Vec<f64> = first5["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let atol = first5["atol"].as_f64().unwrap();
    let golden_inputs = program.inputs().unwrap();
    for model in [&mlp, &bert] {
        let got = embedding(&engine.infer(model.as_ref(), &golden_inputs, T).unwrap());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= atol, "published {w}, got {g}");
        }
    }
    // The published similarity matrix (printed to 4 decimals).
    let sim = &published["similarity"];
    let texts: Vec<&str> = sim["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let values = sim["values"].as_array().unwrap();
    for (i, ti) in texts.iter().enumerate() {
        for (j, tj) in texts.iter().enumerate() {
            let want = values[i][j].as_f64().unwrap();
            for pick in [0, 1] {
                let (ei, ej) = (&by_text[*ti], &by_text[*tj]);
                let (x, y) = if pick == 0 { (&ei.0, &ej.0) } else { (&ei.1, &ej.1) };
                let got = cosine(x, y);
                assert!(
                    (got - want).abs() <= 1e-4,
                    "similarity({ti}, {tj}): published {want}, got {got}"
                );
            }
        }
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

#[test]
fn mobilenet_v2_classifies_the_photograph_in_every_precision() {
    let engine = CandleEngine::new();
    for id in ["mobilenet_v2_fp32", "mobilenet_v2_fp16", "mobilenet_v2_int8"] {
        let m = downloaded(id);
        let want = m.manifest.extra["top1_class"].as_u64().unwrap() as usize;
        assert_eq!(want, 285, "the photograph is a cat (ImageNet 285, Egyptian cat)");
        let model = prepare(&engine, &m.package_path());
        let out = engine.infer(model.as_ref(), &m.inputs().unwrap(), T).unwrap();
        let logits = out["logits"].to_f32_vec();
        assert_eq!(logits.len(), 1000);
        assert_eq!(argmax(&logits), want, "{id}");
    }
}

#[test]
fn native_f16_policy_also_classifies_the_photograph() {
    let engine = CandleEngine::new().with_float_policy(FloatPolicy::Native);
    let m = downloaded("mobilenet_v2_fp16");
    let model = prepare(&engine, &m.package_path());
    let out = engine.infer(model.as_ref(), &m.inputs().unwrap(), T).unwrap();
    assert_eq!(argmax(&out["logits"].to_f32_vec()), 285);
    assert!(engine.capabilities(model.as_ref()).compute_precision.contains("f16"));
}

#[test]
fn malformed_inputs_get_clear_errors_and_nan_does_not_crash() {
    let engine = CandleEngine::new();
    let m = GoldenModel::open(golden::fixtures_dir().join("cnn_fp32")).unwrap();
    let model = prepare(&engine, &m.package_path());
    let good = m.inputs().unwrap();
    let image = &good["image"];

    let renamed = TensorMap::from([("picture".to_string(), image.clone())]);
    let e = engine.infer(model.as_ref(), &renamed, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch);
    assert!(e.to_string().contains("input `image`"), "{e}");

    let wrong_shape = TensorMap::from([(
        "image".to_string(),
        Tensor::zeros(DType::F32, vec![1, 3, 32, 31]).unwrap(),
    )]);
    let e = engine.infer(model.as_ref(), &wrong_shape, T).unwrap_err().to_string();
    assert!(e.contains("expected [1, 3, 32, 32], got [1, 3, 32, 31]"), "{e}");

    let wrong_dtype = TensorMap::from([("image".to_string(), image.cast(DType::F16))]);
    let e = engine.infer(model.as_ref(), &wrong_dtype, T).unwrap_err().to_string();
    assert!(e.contains("expected f32, got f16"), "{e}");

    let nan = TensorMap::from([(
        "image".to_string(),
        Tensor::from_vec(vec![1, 3, 32, 32], vec![f32::NAN; 3072]).unwrap(),
    )]);
    let out = engine.infer(model.as_ref(), &nan, T).unwrap();
    assert_eq!(out["logits"].shape(), &[1, 10]);

    // Token ids outside the vocabulary are an error, not a wild read.
    let minilm = downloaded("minilm_l6_fp32");
    let mmodel = prepare(&engine, &minilm.package_path());
    let mut inputs = minilm.inputs().unwrap();
    inputs.insert(
        "input_ids".into(),
        Tensor::from_vec(vec![1, 128], vec![999_999i32; 128]).unwrap(),
    );
    let e = engine.infer(mmodel.as_ref(), &inputs, T).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn a_timeout_returns_promptly_and_the_engine_keeps_working() {
    let engine = CandleEngine::new();
    let m = downloaded("mobilenet_v2_fp32");
    let model = prepare(&engine, &m.package_path());
    let inputs = m.inputs().unwrap();
    let e = engine
        .infer(model.as_ref(), &inputs, Duration::from_micros(1))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let out = engine.infer(model.as_ref(), &inputs, T).unwrap();
    assert_eq!(argmax(&out["logits"].to_f32_vec()), 285);
}

#[test]
fn unknown_ops_are_refused_at_prepare_naming_the_op() {
    use coreml_proto::proto::{model, Model};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let src = golden::fixtures_dir().join("mlp_fp32/model.mlpackage");
    let dst = dir.path().join("m.mlpackage");
    copy_dir(&src, &dst);
    let spec_path = dst.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    if let Some(model::Type::MlProgram(p)) = &mut spec.r#type {
        let f = p.functions.get_mut("main").unwrap();
        let block = f.block_specializations.values_mut().next().unwrap();
        let op = block.operations.iter_mut().find(|o| o.r#type == "relu").unwrap();
        op.r#type = "frobnicate".into();
    }
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    let e = CandleEngine::new()
        .prepare(&ModelArtifact::open(&dst).unwrap(), PrepareOptions::default())
        .err()
        .expect("prepare must fail");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(
        e.to_string().contains("`frobnicate`") && e.to_string().contains("(op `"),
        "{e}"
    );
}

#[test]
fn compiled_bundles_and_foreign_formats_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("m.mlmodelc");
    std::fs::create_dir(&c).unwrap();
    std::fs::write(c.join("coremldata.bin"), b"x").unwrap();
    let e = CandleEngine::new()
        .prepare(&ModelArtifact::open(&c).unwrap(), PrepareOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains(".mlpackage"), "{e}");
    let o = dir.path().join("m.onnx");
    std::fs::write(&o, b"x").unwrap();
    let e = CandleEngine::new()
        .prepare(&ModelArtifact::open(&o).unwrap(), PrepareOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

/// Rewrites the MLP fixture's input `x` to accept the given flexibility.
fn flexible_mlp(
    dir: &std::path::Path,
    flex: coreml_proto::proto::array_feature_type::ShapeFlexibility,
) -> ModelArtifact {
    use coreml_proto::proto::{feature_type, Model};
    use prost::Message;
    let dst = dir.join("flex.mlpackage");
    copy_dir(&golden::fixtures_dir().join("mlp_fp32/model.mlpackage"), &dst);
    let spec_path = dst.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    let input = &mut spec.description.as_mut().unwrap().input[0];
    match input.r#type.as_mut().unwrap().r#type.as_mut().unwrap() {
        feature_type::Type::MultiArrayType(a) => a.shape_flexibility = Some(flex),
        _ => unreachable!(),
    }
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    ModelArtifact::open(&dst).unwrap()
}

#[test]
fn flexible_input_shapes_come_from_the_spec_and_are_enforced() {
    use coreml_proto::proto::array_feature_type::{EnumeratedShapes, Shape, ShapeFlexibility, ShapeRange};
    use coreml_proto::proto::SizeRange;
    let engine = CandleEngine::new();
    let m = GoldenModel::open(golden::fixtures_dir().join("mlp_fp32")).unwrap();
    let one = m.inputs().unwrap()["x"].clone();
    let row: Vec<f32> = one.to_f32_vec();
    let dir = tempfile::tempdir().unwrap();

    // A batch range 1..=8 on the first dimension.
    let range = ShapeFlexibility::ShapeRange(ShapeRange {
        size_ranges: vec![
            SizeRange {
                lower_bound: 1,
                upper_bound: 8,
            },
            SizeRange {
                lower_bound: 64,
                upper_bound: 64,
            },
        ],
    });
    let model = engine
        .prepare(&flexible_mlp(dir.path(), range), PrepareOptions::default())
        .unwrap();
    let spec = &model.io_schema().inputs[0];
    assert!(spec.batch_capable);
    assert_eq!(spec.describe_allowed(), "[1..=8, 64]");
    let single = engine
        .infer(model.as_ref(), &TensorMap::from([("x".to_string(), one.clone())]), T)
        .unwrap()["logits"]
        .to_f32_vec();
    let batch: Vec<f32> = row.iter().cycle().take(4 * 64).copied().collect();
    let out = engine
        .infer(
            model.as_ref(),
            &TensorMap::from([("x".to_string(), Tensor::from_vec(vec![4, 64], batch).unwrap())]),
            T,
        )
        .unwrap();
    assert_eq!(out["logits"].shape(), &[4, 10]);
    let logits = out["logits"].to_f32_vec();
    for b in 0..4 {
        for (x, y) in logits[b * 10..(b + 1) * 10].iter().zip(&single) {
            assert!((x - y).abs() <= 1e-5, "batch row {b} differs from the single run");
        }
    }
    let too_big = TensorMap::from([("x".to_string(), Tensor::zeros(DType::F32, vec![9, 64]).unwrap())]);
    let e = engine.infer(model.as_ref(), &too_big, T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch);
    assert!(e.to_string().contains("expected [1..=8, 64], got [9, 64]"), "{e}");

    // Enumerated shapes: only those listed (and the default).
    let dir2 = tempfile::tempdir().unwrap();
    let enumerated = ShapeFlexibility::EnumeratedShapes(EnumeratedShapes {
        shapes: vec![Shape { shape: vec![1, 64] }, Shape { shape: vec![2, 64] }],
    });
    let model = engine
        .prepare(&flexible_mlp(dir2.path(), enumerated), PrepareOptions::default())
        .unwrap();
    let two = TensorMap::from([("x".to_string(), Tensor::zeros(DType::F32, vec![2, 64]).unwrap())]);
    assert_eq!(
        engine.infer(model.as_ref(), &two, T).unwrap()["logits"].shape(),
        &[2, 10]
    );
    let three = TensorMap::from([("x".to_string(), Tensor::zeros(DType::F32, vec![3, 64]).unwrap())]);
    let e = engine.infer(model.as_ref(), &three, T).unwrap_err().to_string();
    assert!(e.contains("one of [[1, 64], [2, 64]]"), "{e}");
}
