//! Feature values through CandleEngine: ML Programs with `ImageType` inputs
//! (RGB, BGR, grayscale, with and without scale/bias) and an image
//! classifier with string labels, built by scripts/features/build.py with
//! coremltools; references from numpy. Also the int64 classifier of the
//! conformance suite, and bad images.

mod common;

use common::copy_dir;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apple_silicon::{
    CandleEngine, ColorLayout, Dictionary, FeatureKind, FeatureMap, FeatureValue, Image, InferenceEngine,
    ModelArtifact, PixelFormat, PrepareOptions, PreparedModel, Tensor, TensorMap,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/features")
}

fn prepare(dir: &Path) -> (CandleEngine, Box<dyn PreparedModel>) {
    let engine = CandleEngine::new();
    let art = ModelArtifact::open(dir.join("model.mlpackage")).unwrap();
    let model = engine.prepare(&art, PrepareOptions::default()).unwrap();
    (engine, model)
}

fn case(name: &str) -> (PathBuf, Value) {
    let dir = fixtures().join(name);
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    (dir, meta)
}

/// The case's pixels: (height, width, bytes; RGB order for color).
fn pixels(dir: &Path) -> (usize, usize, Vec<u8>) {
    let t = Tensor::read_npy(dir.join("pixels.npy")).unwrap();
    (t.shape()[0], t.shape()[1], t.as_bytes().to_vec())
}

/// `rgb` (packed RGB) in `format`, each row padded by `pad` bytes.
fn convert(rgb: &[u8], w: usize, h: usize, format: PixelFormat, pad: usize) -> Image {
    let bpp = format.bytes_per_pixel();
    let stride = w * bpp + pad;
    let mut data = vec![0u8; stride * h];
    for y in 0..h {
        for x in 0..w {
            let s = &rgb[(y * w + x) * 3..][..3];
            let (r, g, b) = (s[0], s[1], s[2]);
            let px: Vec<u8> = match format {
                PixelFormat::Rgb => vec![r, g, b],
                PixelFormat::Bgr => vec![b, g, r],
                PixelFormat::Bgra => vec![b, g, r, 255],
                PixelFormat::Argb => vec![255, r, g, b],
                _ => unreachable!(),
            };
            data[y * stride + x * bpp..][..bpp].copy_from_slice(&px);
        }
    }
    Image::new(w, h, format, stride, data).unwrap()
}

fn image_input(img: Image) -> FeatureMap {
    FeatureMap::from([("image".to_string(), FeatureValue::Image(img))])
}

/// Largest |got − want| / max(1, max |want|).
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = w.iter().fold(1f64, |m, v| m.max(v.abs()));
    g.iter().zip(&w).map(|(a, b)| (a - b).abs() / scale).fold(0.0, f64::max)
}

fn check_image_case(name: &str, layout: ColorLayout) {
    let (dir, _) = case(name);
    let (engine, model) = prepare(&dir);
    let spec = &model.io_schema().inputs[0];
    let FeatureKind::Image(is) = &spec.kind else {
        panic!("{name}: input is {:?}, not an image", spec.kind)
    };
    let (h, w, px) = pixels(&dir);
    assert_eq!((is.width, is.height, is.color), (w, h, layout), "{name}");
    assert_eq!(spec.shape, vec![1, layout.channels(), h, w], "{name}");
    let want = Tensor::read_npy(dir.join("expected/y.npy")).unwrap();
    let images: Vec<(String, Image)> = if layout.channels() == 1 {
        let mut padded = Vec::new();
        for row in px.chunks(w) {
            padded.extend_from_slice(row);
            padded.extend_from_slice(&[7, 7, 7]);
        }
        vec![
            (
                "gray8".into(),
                Image::packed(w, h, PixelFormat::Gray8, px.clone()).unwrap(),
            ),
            (
                "gray8 stride+3".into(),
                Image::new(w, h, PixelFormat::Gray8, w + 3, padded).unwrap(),
            ),
        ]
    } else {
        [
            (PixelFormat::Rgb, 0),
            (PixelFormat::Bgr, 0),
            (PixelFormat::Bgra, 0),
            (PixelFormat::Bgra, 12),
            (PixelFormat::Argb, 5),
        ]
        .into_iter()
        .map(|(f, pad)| (format!("{} pad {pad}", f.name()), convert(&px, w, h, f, pad)))
        .collect()
    };
    for (what, img) in images {
        let out = engine.infer_features(model.as_ref(), &image_input(img), T).unwrap();
        let FeatureValue::Tensor(y) = &out["y"] else {
            panic!("{name}: y is not a tensor")
        };
        let e = rel_err(y, &want);
        println!("{name} ({what}): rel err {e:.2e}");
        assert!(e <= 1e-5, "{name} ({what}): rel err {e:.3e}");
    }
}

#[test]
fn rgb_image_with_scale_and_bias_matches_numpy() {
    check_image_case("image_rgb", ColorLayout::Rgb);
}

#[test]
fn rgb_image_without_preprocessing_matches_numpy() {
    check_image_case("image_rgb_unscaled", ColorLayout::Rgb);
}

#[test]
fn bgr_image_matches_numpy() {
    check_image_case("image_bgr", ColorLayout::Bgr);
}

#[test]
fn grayscale_image_matches_numpy() {
    check_image_case("image_gray", ColorLayout::Grayscale);
}

#[test]
fn image_classifier_gives_the_label_and_probabilities_in_label_order() {
    let (dir, meta) = case("image_classifier");
    let (engine, model) = prepare(&dir);
    let schema = model.io_schema();
    let c = schema.classifier.as_ref().expect("a classifier schema");
    let labels: Vec<String> = meta["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(c.labels, apple_silicon::ClassLabels::Strings(labels.clone()));
    assert_eq!(schema.output(&c.label_output).unwrap().kind, FeatureKind::String);
    let (h, w, px) = pixels(&dir);
    let out = engine
        .infer_features(
            model.as_ref(),
            &image_input(convert(&px, w, h, PixelFormat::Bgra, 8)),
            T,
        )
        .unwrap();
    assert_eq!(
        out[&c.label_output],
        FeatureValue::String(meta["label"].as_str().unwrap().into())
    );
    let FeatureValue::Dictionary(Dictionary::Strings(d)) = &out[&c.probabilities_output] else {
        panic!("probabilities: {:?}", out[&c.probabilities_output])
    };
    let keys: Vec<&String> = d.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, labels.iter().collect::<Vec<_>>());
    for ((k, got), want) in d.iter().zip(meta["probabilities"].as_array().unwrap()) {
        let want = want.as_f64().unwrap();
        println!("P({k}) = {got:.6} (numpy {want:.6})");
        assert!((got - want).abs() <= 1e-5, "P({k}) = {got}, numpy {want}");
    }
    println!("label: {:?}", out[&c.label_output]);
    // The parity harness on features: the label exactly, probabilities by the fp32 budget.
    let want = FeatureMap::from([
        (
            c.label_output.clone(),
            FeatureValue::String(meta["label"].as_str().unwrap().into()),
        ),
        (
            c.probabilities_output.clone(),
            FeatureValue::Dictionary(Dictionary::Strings(
                labels
                    .iter()
                    .cloned()
                    .zip(
                        meta["probabilities"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_f64().unwrap()),
                    )
                    .collect(),
            )),
        ),
    ]);
    let r = apple_silicon::parity::compare_features(
        &out,
        &want,
        apple_silicon::parity::Thresholds::for_precision(apple_silicon::parity::Precision::Fp32),
    )
    .unwrap();
    println!("{r}");
    assert!(r.passed, "{r}");
}

#[test]
fn int64_classifier_gives_an_int_label_and_an_int_keyed_dictionary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance/classify/classify_int64_labels");
    let (engine, model) = prepare(&dir);
    let x = Tensor::read_npy(dir.join("inputs/x.npy")).unwrap();
    let want_label = Tensor::read_npy(dir.join("expected/classLabel.npy"))
        .unwrap()
        .to_f64_vec()[0] as i64;
    let want_p = Tensor::read_npy(dir.join("expected/classLabel_probs.npy"))
        .unwrap()
        .to_f64_vec();
    let out = engine
        .infer_features(
            model.as_ref(),
            &FeatureMap::from([("x".to_string(), FeatureValue::Tensor(x.clone()))]),
            T,
        )
        .unwrap();
    assert_eq!(out["classLabel"], FeatureValue::Int64(want_label));
    let FeatureValue::Dictionary(Dictionary::Int64(d)) = &out["classLabel_probs"] else {
        panic!()
    };
    assert_eq!(d.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 7, 11, 20, 42]);
    for ((_, got), want) in d.iter().zip(&want_p) {
        assert!((got - want).abs() <= 1e-6, "{got} vs {want}");
    }
    // Tensor callers keep their API: the label as an i64 scalar, probabilities in class order.
    let t = engine
        .infer(model.as_ref(), &TensorMap::from([("x".to_string(), x)]), T)
        .unwrap();
    assert_eq!(t["classLabel"].to_f64_vec(), vec![want_label as f64]);
    assert_eq!(t["classLabel_probs"].shape(), &[5]);
}

#[test]
fn bad_images_and_features_are_clear_errors() {
    let (dir, _) = case("image_rgb");
    let (engine, model) = prepare(&dir);
    let (h, w, px) = pixels(&dir);
    let run = |m: FeatureMap| engine.infer_features(model.as_ref(), &m, T).unwrap_err().to_string();

    // Wrong size.
    let small = convert(&px[..(w - 1) * 3 * (h - 1)], w - 1, h - 1, PixelFormat::Rgb, 0);
    assert_eq!(
        run(image_input(small)),
        format!(
            "schema mismatch for size of image `image`: expected {w}x{h}, got {}x{}",
            w - 1,
            h - 1
        )
    );
    // Gray pixels for a color model.
    let gray = Image::packed(w, h, PixelFormat::Gray8, vec![0; w * h]).unwrap();
    let e = run(image_input(gray));
    assert!(
        e.contains("pixel format of image `image`") && e.contains("got gray8"),
        "{e}"
    );
    // A tensor where the model takes an image.
    let t = Tensor::from_vec(vec![1, 3, h, w], vec![0f32; 3 * h * w]).unwrap();
    let e = run(FeatureMap::from([("image".to_string(), FeatureValue::Tensor(t))]));
    assert!(e.contains("expected an image (5x4, Rgb), got a multi-array"), "{e}");
    // Missing and unknown inputs.
    let e = run(FeatureMap::new());
    assert!(e.contains("input `image`") && e.contains("to be present"), "{e}");
    let mut m = image_input(convert(&px, w, h, PixelFormat::Rgb, 0));
    m.insert("extra".into(), FeatureValue::Int64(1));
    assert!(run(m).contains("unknown input `extra`"));
    // Images that cannot exist: a stride shorter than a row, a buffer shorter than its rows.
    let e = Image::new(w, h, PixelFormat::Bgra, w * 4 - 1, vec![0; w * 4 * h])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("at least {} bytes per row", w * 4)), "{e}");
    let e = Image::new(w, h, PixelFormat::Rgb, w * 3, px[..px.len() - 1].to_vec())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("at least {} bytes", px.len())) && e.contains(&format!("got {} bytes", px.len() - 1)),
        "{e}"
    );
}

fn main_ops(spec: &mut coreml_proto::proto::Model) -> &mut Vec<coreml_proto::proto::mil_spec::Operation> {
    let Some(coreml_proto::proto::model::Type::MlProgram(p)) = spec.r#type.as_mut() else {
        panic!("not an ML Program")
    };
    let f = p.functions.get_mut("main").unwrap();
    let opset = f.opset.clone();
    &mut f.block_specializations.get_mut(&opset).unwrap().operations
}

/// A copy of fixture `name`'s package with its spec edited by `f`.
fn edited(name: &str, f: impl FnOnce(&mut coreml_proto::proto::Model)) -> (tempfile::TempDir, PathBuf) {
    use prost::Message;
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("m.mlpackage");
    copy_dir(&fixtures().join(name).join("model.mlpackage"), &pkg);
    let spec_path = pkg.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = coreml_proto::proto::Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    f(&mut spec);
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    (tmp, pkg)
}

fn open_err(pkg: &Path) -> String {
    apple_silicon::mlpackage::MlPackage::open(pkg).unwrap_err().to_string()
}

#[test]
fn schema_problems_of_feature_models_are_named() {
    use coreml_proto::proto::feature_type;
    // A classifier without its label set.
    let (_t, pkg) = edited("image_classifier", |s| {
        let ops = main_ops(s);
        let i = ops.iter().position(|o| o.r#type == "classify").unwrap();
        ops[i].r#type = "identity".into();
    });
    let e = open_err(&pkg);
    assert!(e.contains("no `classify` op holding the label set"), "{e}");
    // A string output that is not a classifier's label.
    let (_t, pkg) = edited("image_classifier", |s| {
        let d = s.description.as_mut().unwrap();
        d.predicted_feature_name.clear();
        d.predicted_probabilities_name.clear();
    });
    let e = open_err(&pkg);
    assert!(
        e.contains(
            "output `classLabel` is a string feature; an ML Program's only string output is a classifier's label"
        ),
        "{e}"
    );
    // An image whose size disagrees with the program's tensor.
    let (_t, pkg) = edited("image_rgb", |s| {
        let d = s.description.as_mut().unwrap();
        let Some(feature_type::Type::ImageType(img)) = d.input[0].r#type.as_mut().unwrap().r#type.as_mut() else {
            panic!()
        };
        img.width = 6;
    });
    let e = open_err(&pkg);
    assert!(
        e.contains("image input `image` (6x4, Rgb) is a program tensor of shape [1, 3, 4, 5]; expected [1, 3, 4, 6]"),
        "{e}"
    );
}

/// MobileNetV2 with its real ImageNet weights as an image classifier
/// (models/mobilenet_v2_classifier, built by scripts/features/mobilenet_classifier.py in
/// `make download-models`): Chelsea the cat, fed as BGRA with padded rows, must come out as
/// the string "Egyptian cat", with probabilities matching numpy's forward pass.
#[test]
fn mobilenet_v2_image_classifier_says_egyptian_cat() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mobilenet_v2_classifier");
    if !dir.join("model.mlpackage").is_dir() {
        if std::env::var("APPLE_SILICON_ALLOW_SKIP").is_ok_and(|v| v == "1") {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        }
        panic!(
            "{} is absent: run `make download-models` (or set APPLE_SILICON_ALLOW_SKIP=1)",
            dir.display()
        );
    }
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let (engine, model) = prepare(&dir);
    let (h, w, px) = pixels(&dir);
    let img = convert(&px, w, h, PixelFormat::Bgra, 64);
    let t0 = std::time::Instant::now();
    let out = engine.infer_features(model.as_ref(), &image_input(img), T).unwrap();
    println!("mobilenet_v2_classifier: one image in {:?}", t0.elapsed());
    assert_eq!(out["classLabel"], FeatureValue::String("Egyptian cat".into()));
    assert_eq!(meta["label"], "Egyptian cat");
    let FeatureValue::Dictionary(Dictionary::Strings(d)) = &out["classLabel_probs"] else {
        panic!("probabilities are not a string-keyed dictionary")
    };
    let want = Tensor::read_npy(dir.join("probabilities.npy")).unwrap().to_f64_vec();
    assert_eq!(d.len(), 1000);
    let worst = d
        .iter()
        .zip(&want)
        .map(|((_, g), w)| (g - w).abs())
        .fold(0f64, f64::max);
    println!(
        "P(Egyptian cat) = {:.6} (numpy {:.6}); max |Δp| over 1000 classes {worst:.2e}",
        d.iter().find(|(k, _)| k == "Egyptian cat").unwrap().1,
        want[285]
    );
    assert!(worst <= 1e-4, "max |Δp| {worst:.3e}");
}

/// Images of every allowed size run; others are refused naming the allowed sizes.
fn check_flexible(name: &str, refused: (usize, usize), allowed_words: &str) {
    let (dir, meta) = case(name);
    let (engine, model) = prepare(&dir);
    let spec = &model.io_schema().inputs[0];
    let FeatureKind::Image(is) = &spec.kind else {
        panic!("{name}: not an image")
    };
    assert_eq!(is.describe_sizes(), allowed_words, "{name}");
    for s in meta["sizes"].as_array().unwrap() {
        let (w, h) = (s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize);
        let px = Tensor::read_npy(dir.join(format!("pixels_{w}x{h}.npy"))).unwrap();
        let img = convert(px.as_bytes(), w, h, PixelFormat::Bgra, 4);
        let out = engine.infer_features(model.as_ref(), &image_input(img), T).unwrap();
        let FeatureValue::Tensor(y) = &out["y"] else { panic!() };
        let want = Tensor::read_npy(dir.join(format!("expected/y_{w}x{h}.npy"))).unwrap();
        let e = rel_err(y, &want);
        println!("{name} {w}x{h}: rel err {e:.2e}");
        assert!(e <= 1e-6, "{name} {w}x{h}: {e}");
    }
    let (w, h) = refused;
    let img = Image::packed(w, h, PixelFormat::Rgb, vec![0; w * h * 3]).unwrap();
    let e = engine
        .infer_features(model.as_ref(), &image_input(img), T)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("schema mismatch for size of image `image`: expected {allowed_words}, got {w}x{h}")
    );
}

#[test]
fn enumerated_image_sizes() {
    check_flexible("image_sizes_enumerated", (8, 10), "one of 5x4, 10x8");
}

#[test]
fn ranged_image_sizes() {
    check_flexible("image_sizes_range", (13, 4), "width 3..=12 and height 2..=16");
}

/// The compiled form a cached CandleEngine stores keeps the image input and
/// the classifier: a cold and a warm prepare give the same label.
#[test]
fn cached_compiled_form_keeps_image_and_classifier_features() {
    use apple_silicon::cache::{host_meta, CacheConfig, ModelCache};
    let (dir, meta) = case("image_classifier");
    let tmp = tempfile::tempdir().unwrap();
    let cache = std::sync::Arc::new(ModelCache::open(CacheConfig::at(tmp.path()), host_meta()).unwrap());
    let art = ModelArtifact::open(dir.join("model.mlpackage")).unwrap();
    let (h, w, px) = pixels(&dir);
    for round in ["cold", "warm"] {
        let engine = CandleEngine::new().with_cache(cache.clone());
        let model = engine.prepare(&art, PrepareOptions::default()).unwrap();
        let img = convert(&px, w, h, PixelFormat::Rgb, 0);
        let out = engine.infer_features(model.as_ref(), &image_input(img), T).unwrap();
        assert_eq!(
            out["classLabel"],
            FeatureValue::String(meta["label"].as_str().unwrap().into()),
            "{round}"
        );
        assert!(
            matches!(model.io_schema().inputs[0].kind, FeatureKind::Image(_)),
            "{round}"
        );
    }
}

/// GRAYSCALE_FLOAT16 (iOS16+): half-float pixels (OneComponent16Half) into an fp16 program.
#[test]
fn grayscale_f16_image_matches_numpy() {
    let (dir, _) = case("image_gray_f16");
    let (engine, model) = prepare(&dir);
    let spec = &model.io_schema().inputs[0];
    let FeatureKind::Image(is) = &spec.kind else {
        panic!("not an image")
    };
    assert_eq!(is.color, ColorLayout::GrayscaleF16);
    assert_eq!(spec.dtype, apple_silicon::DType::F16);
    let px = Tensor::read_npy(dir.join("pixels.npy")).unwrap();
    let (h, w) = (px.shape()[0], px.shape()[1]);
    let img = Image::packed(w, h, PixelFormat::GrayF16, px.as_bytes().to_vec()).unwrap();
    let out = engine.infer_features(model.as_ref(), &image_input(img), T).unwrap();
    let FeatureValue::Tensor(y) = &out["y"] else { panic!() };
    let e = rel_err(y, &Tensor::read_npy(dir.join("expected/y.npy")).unwrap());
    println!("image_gray_f16: rel err {e:.2e} (fp16)");
    assert!(e <= 1e-3, "{e}");
    let gray8 = Image::packed(w, h, PixelFormat::Gray8, vec![0; w * h]).unwrap();
    let e = engine
        .infer_features(model.as_ref(), &image_input(gray8), T)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected a gray_f16 pixel format, got gray8"), "{e}");
}

/// The parity harness compares every feature kind: strings, int64s,
/// sequences and images exactly; doubles, dictionaries' probabilities and
/// tensors by the precision budget.
#[test]
fn parity_compares_every_feature_kind() {
    use apple_silicon::feature::Sequence;
    use apple_silicon::parity::{compare_features, Precision, Thresholds};
    let img = |v: u8| FeatureValue::Image(Image::new(1, 1, PixelFormat::Rgb, 3, vec![v, 0, 0]).unwrap());
    let run = |label: &str, n: i64, d: f64, seq: &[&str], px: u8, p: f64, t: f32| {
        FeatureMap::from([
            ("label".to_string(), FeatureValue::String(label.into())),
            ("n".to_string(), FeatureValue::Int64(n)),
            ("d".to_string(), FeatureValue::Double(d)),
            (
                "seq".to_string(),
                FeatureValue::Sequence(Sequence::Strings(seq.iter().map(|s| s.to_string()).collect())),
            ),
            ("img".to_string(), img(px)),
            (
                "probs".to_string(),
                FeatureValue::Dictionary(Dictionary::Int64(vec![(0, p), (1, 1.0 - p)])),
            ),
            (
                "t".to_string(),
                FeatureValue::Tensor(Tensor::from_vec(vec![2], vec![t, 1.0]).unwrap()),
            ),
        ])
    };
    let budget = Thresholds::for_precision(Precision::Fp32);
    let base = run("cat", 3, 0.5, &["a", "b"], 7, 0.25, 2.0);
    // Within budget everywhere: passes.
    let near = run("cat", 3, 0.5 + 1e-7, &["a", "b"], 7, 0.25 + 1e-7, 2.0 + 1e-7);
    let r = compare_features(&base, &near, budget).unwrap();
    assert!(r.passed, "{r}");
    assert_eq!(r.outputs.len(), 7);
    // Any exact kind that differs fails, named.
    for (other, name) in [
        (run("dog", 3, 0.5, &["a", "b"], 7, 0.25, 2.0), "label"),
        (run("cat", 4, 0.5, &["a", "b"], 7, 0.25, 2.0), "n"),
        (run("cat", 3, 0.5, &["a", "c"], 7, 0.25, 2.0), "seq"),
        (run("cat", 3, 0.5, &["a", "b"], 8, 0.25, 2.0), "img"),
    ] {
        let r = compare_features(&base, &other, budget).unwrap();
        assert!(!r.passed, "{name}: {r}");
        let o = r.outputs.iter().find(|o| o.name == name).unwrap();
        assert!(o.mismatch.is_some(), "{name}: {r}");
    }
    // Values past the budget fail: a double, a probability, a tensor.
    for (other, name) in [
        (run("cat", 3, 0.6, &["a", "b"], 7, 0.25, 2.0), "d"),
        (run("cat", 3, 0.5, &["a", "b"], 7, 0.35, 2.0), "probs"),
        (run("cat", 3, 0.5, &["a", "b"], 7, 0.25, 2.5), "t"),
    ] {
        let r = compare_features(&base, &other, budget).unwrap();
        assert!(!r.passed, "{name}: {r}");
        let o = r.outputs.iter().find(|o| o.name == name).unwrap();
        assert!(o.l_inf > budget.l_inf, "{name}: {r}");
    }
}
