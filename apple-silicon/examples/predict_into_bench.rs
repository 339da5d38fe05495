//! `infer` against `infer_into` over the bridge's test runtime: per-call
//! latency (median of interleaved rounds) and their ratio, for a few output
//! sizes. The test runtime's "prediction" is a copy, so what this measures
//! is marshalling: `infer` allocates and copies each output in the bridge
//! and again in Rust (and the fake's `predict` itself copies twice, to
//! imitate a strided Core ML array), `infer_into` copies it once into
//! reused storage (and the fake writes its backing once). The gap is
//! therefore an upper bound for what Core ML will show, where the
//! prediction itself dominates.
//!
//! Needs the Linux build of the bridge (run inside the Swift chroot):
//!
//! ```sh
//! COREML_BRIDGE_LIB_DIR=… COREML_BRIDGE_TEST_RUNTIME=1 \
//!   cargo run --features coreml --example predict_into_bench
//! ```
//!
//! Without it, it says so and exits with status 2.

use std::time::{Duration, Instant};

use apple_silicon::{CoreMlEngine, InferenceEngine, ModelArtifact, ModelFmt, PrepareOptions, Tensor, TensorMap};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("COREML_BRIDGE_TEST_RUNTIME").as_deref() != Ok("1") {
        eprintln!("predict_into_bench: needs the bridge's test runtime (COREML_BRIDGE_TEST_RUNTIME=1, bridge linked)");
        std::process::exit(2);
    }
    let dir = tempfile::tempdir()?;
    let pkg = dir.path().join("identity.mlpackage");
    std::fs::create_dir_all(&pkg)?;
    std::fs::write(pkg.join("fake_model.json"), "{}")?;
    let engine = CoreMlEngine::new();
    let model = engine.prepare(
        &ModelArtifact::with_format(ModelFmt::MlPackage, &pkg)?,
        PrepareOptions::default(),
    )?;
    let timeout = Duration::from_secs(30);
    println!(
        "{:>12} {:>14} {:>14} {:>8}",
        "output", "infer p50", "infer_into p50", "ratio"
    );
    for n in [1_000usize, 100_000, 1_000_000, 4_000_000] {
        let x = Tensor::from_vec(vec![n], (0..n).map(|i| i as f32).collect())?;
        let inputs = TensorMap::from([("x".to_string(), x)]);
        let mut reused = TensorMap::new();
        engine.infer_into(model.as_ref(), &inputs, &mut reused, timeout)?; // warm-up
        let rounds = if n >= 1_000_000 { 15 } else { 101 };
        let (mut a, mut b) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        for _ in 0..rounds {
            let t = Instant::now();
            let out = engine.infer(model.as_ref(), &inputs, timeout)?;
            a.push(t.elapsed());
            drop(out);
            let t = Instant::now();
            engine.infer_into(model.as_ref(), &inputs, &mut reused, timeout)?;
            b.push(t.elapsed());
        }
        assert_eq!(reused["y"], inputs["x"], "infer_into returns the identity's output");
        a.sort();
        b.sort();
        let (ma, mb) = (a[rounds / 2], b[rounds / 2]);
        println!(
            "{:>9} f32 {:>11.1} µs {:>11.1} µs {:>7.2}x",
            n,
            ma.as_secs_f64() * 1e6,
            mb.as_secs_f64() * 1e6,
            ma.as_secs_f64() / mb.as_secs_f64()
        );
    }
    Ok(())
}
