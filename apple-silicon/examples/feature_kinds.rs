//! Every feature kind through one engine, checked against independent
//! references: an image classifier (MobileNetV2 with its real ImageNet
//! weights; the photo must come out as "Egyptian cat", probabilities against
//! numpy), a multifunction package (each function against numpy), a batch,
//! and stateful functions run step by step (counts and outputs against the
//! fixture's arithmetic). Exits non-zero on any mismatch.
//!
//! ```text
//! cargo run --release --example feature_kinds                   # CandleEngine (any OS)
//! cargo run --release --features coreml --example feature_kinds -- --engine coreml   # macOS
//! ```
//!
//! Needs `make download-models` (models/mobilenet_v2_classifier) and the
//! committed fixtures under tests/fixtures/features/. The macOS workflow
//! runs it with `--engine coreml` (written; not run here: no Mac). Core ML
//! may run the classifier in fp16 on the GPU or Neural Engine, so its
//! probability budget is wider; the label must be the same.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use apple_silicon::feature::{Dictionary, FeatureMap, FeatureValue, Image, PixelFormat};
use apple_silicon::golden::read_npy_dir;
use apple_silicon::{CandleEngine, CoreMlEngine, InferenceEngine, ModelArtifact, PrepareOptions, Tensor, TensorMap};

const T: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Largest |got − want| / max(1, max |want|).
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    if g.len() != w.len() {
        return f64::INFINITY;
    }
    let scale = w.iter().fold(1f64, |m, v| m.max(v.abs()));
    g.iter().zip(&w).map(|(a, b)| (a - b).abs() / scale).fold(0.0, f64::max)
}

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, what: String) {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        self.failed += usize::from(!ok);
    }
}

fn classifier(engine: &dyn InferenceEngine, budget: f64, c: &mut Checks) -> apple_silicon::Result<()> {
    let dir = root().join("models/mobilenet_v2_classifier");
    let model = engine.prepare(
        &ModelArtifact::open(dir.join("model.mlpackage"))?,
        PrepareOptions::default(),
    )?;
    let px = Tensor::read_npy(dir.join("pixels.npy"))?;
    let (h, w) = (px.shape()[0], px.shape()[1]);
    let image = Image::packed(w, h, PixelFormat::Rgb, px.as_bytes().to_vec())?;
    let t0 = Instant::now();
    let out = engine.infer_features(
        &*model,
        &FeatureMap::from([("image".into(), FeatureValue::Image(image))]),
        T,
    )?;
    let took = t0.elapsed();
    let label = out.get("classLabel");
    c.check(
        label == Some(&FeatureValue::String("Egyptian cat".into())),
        format!("classifier label {label:?} (want \"Egyptian cat\") in {took:?}"),
    );
    let want = Tensor::read_npy(dir.join("probabilities.npy"))?.to_f64_vec();
    match out.get("classLabel_probs") {
        Some(FeatureValue::Dictionary(Dictionary::Strings(d))) if d.len() == want.len() => {
            let worst = d
                .iter()
                .zip(&want)
                .map(|((_, g), w)| (g - w).abs())
                .fold(0f64, f64::max);
            c.check(
                worst <= budget,
                format!(
                    "classifier probabilities: max |Δp| {worst:.2e} over {} classes (budget {budget:.0e})",
                    d.len()
                ),
            );
        }
        other => c.check(false, format!("classifier probabilities: {other:?}")),
    }
    Ok(())
}

fn multifunction(engine: &dyn InferenceEngine, budget: f64, c: &mut Checks) -> apple_silicon::Result<()> {
    let dir = root().join("tests/fixtures/features/multifunction");
    let art = ModelArtifact::open(dir.join("model.mlpackage"))?;
    for function in ["scores", "embed"] {
        let model = engine.prepare(&art, PrepareOptions::default().with_function_name(function))?;
        let listed = &model.io_schema().functions.names;
        c.check(
            listed.iter().any(|f| f == "scores") && listed.iter().any(|f| f == "embed"),
            format!("multifunction: the schema lists {listed:?}"),
        );
        let inputs = read_npy_dir(&dir.join("inputs"), function)?;
        let want = read_npy_dir(&dir.join("expected"), function)?;
        let out = engine.infer(&*model, &inputs, T)?;
        for (name, w) in &want {
            let e = out.get(name).map_or(f64::INFINITY, |g| rel_err(g, w));
            c.check(
                e <= budget,
                format!("multifunction `{function}` output `{name}`: rel err {e:.2e}"),
            );
        }
        // The same inputs twice in one batch give the single answer twice.
        let batch = engine.infer_batch(&*model, &[inputs.clone(), inputs.clone()], T)?;
        let same = batch.len() == 2 && batch.iter().all(|b| b == &out);
        c.check(same, format!("batch of 2 on `{function}` equals the single call"));
    }
    Ok(())
}

fn stateful(engine: &dyn InferenceEngine, c: &mut Checks) -> apple_silicon::Result<()> {
    let dir = root().join("tests/fixtures/features/multifunction_counter");
    let case: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("case.json"))
            .map_err(|e| apple_silicon::Error::io(format!("reading {}", dir.join("case.json").display()), e))?,
    )
    .map_err(|e| apple_silicon::Error::internal(format!("case.json: {e}")))?;
    let x: Vec<f32> = serde_json::from_value(case["x"].clone()).unwrap_or_default();
    let inputs = TensorMap::from([("x".to_string(), Tensor::from_vec(vec![x.len()], x)?)]);
    let art = ModelArtifact::open(dir.join("model.mlpackage"))?;
    for function in ["add_one", "add_two"] {
        let model = engine.prepare(&art, PrepareOptions::default().with_function_name(function))?;
        let mut state = engine.make_state(&*model)?;
        for (i, run) in case["runs"][function].as_array().into_iter().flatten().enumerate() {
            let out = engine.infer_with_state(&*model, &mut state, &inputs, T)?;
            let want: Vec<f32> = serde_json::from_value(run["y"].clone()).unwrap_or_default();
            let got = out.get("y").map(Tensor::to_f32_vec);
            c.check(
                got.as_deref() == Some(&want[..]),
                format!("state `{function}` step {i}: y {got:?} (want {want:?})"),
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let engine_name = args
        .iter()
        .position(|a| a == "--engine")
        .and_then(|i| args.get(i + 1))
        .map_or("candle", String::as_str);
    let (engine, budget): (Box<dyn InferenceEngine>, f64) = match engine_name {
        "candle" => (Box::new(CandleEngine::new()), 1e-4),
        "coreml" => (Box::new(CoreMlEngine::new()), 2e-2),
        other => {
            eprintln!("--engine {other}: expected candle or coreml");
            return ExitCode::from(2);
        }
    };
    println!("feature_kinds on the {} engine", engine.name());
    let mut c = Checks { failed: 0 };
    type Part = fn(&dyn InferenceEngine, f64, &mut Checks) -> apple_silicon::Result<()>;
    let parts: [(&str, Part); 3] = [
        ("classifier", classifier),
        ("multifunction", |e, b, c| multifunction(e, b.min(1e-3), c)),
        ("stateful", |e, _, c| stateful(e, c)),
    ];
    for (part, run) in parts {
        if let Err(e) = run(&*engine, budget, &mut c) {
            c.check(false, format!("{part}: {e}"));
        }
    }
    if c.failed > 0 {
        eprintln!("feature_kinds: {} check(s) failed", c.failed);
        return ExitCode::FAILURE;
    }
    println!("feature_kinds: every check passed");
    ExitCode::SUCCESS
}
