//! The ML Program interpreter against golden outputs from an independent
//! numpy reference: every committed fixture, and the downloaded models.

use apple_silicon::golden::{self, GoldenModel};
use apple_silicon::mil::{FloatPolicy, Plan};
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::parity::{compare, Precision, Thresholds};

fn check(m: &GoldenModel, policy: FloatPolicy) -> apple_silicon::parity::ParityReport {
    let pkg = MlPackage::open(m.package_path()).unwrap();
    let plan = Plan::build(&pkg, policy).unwrap_or_else(|e| panic!("{}: {e}", m.id));
    let out = plan
        .run(&m.inputs().unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", m.id));
    let budget = Thresholds {
        l_inf: m.manifest.accuracy_delta_l_inf,
        rmse: m.manifest.accuracy_delta_rmse,
    };
    let r = compare(&out, &m.expected().unwrap(), budget).unwrap();
    println!(
        "{} ({policy:?}, {:?}):\n{r}",
        m.id,
        Precision::from_manifest(&m.manifest.precision, &m.manifest.quantization)
    );
    r
}

#[test]
fn every_fixture_matches_its_golden() {
    let models = golden::discover(&golden::fixtures_dir()).unwrap();
    let mut failed = Vec::new();
    for m in &models {
        let r = check(m, FloatPolicy::Upcast);
        if !r.passed {
            failed.push(m.id.clone());
        }
    }
    assert!(failed.is_empty(), "outside budget: {failed:?}");
}

/// The downloaded models need `make download-models`; without them this
/// fails and says so rather than skipping.
fn downloaded(id: &str) -> GoldenModel {
    golden::downloaded(id).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn downloaded_models_match_their_goldens() {
    let mut failed = Vec::new();
    for id in [
        "minilm_l6_fp32",
        "minilm_l6_fp16",
        "mobilenet_v2_fp32",
        "mobilenet_v2_fp16",
        "mobilenet_v2_int8",
    ] {
        let m = downloaded(id);
        let r = check(&m, FloatPolicy::Upcast);
        if !r.passed {
            failed.push(id);
        }
    }
    assert!(failed.is_empty(), "outside budget: {failed:?}");
}

#[test]
fn native_f16_runs_fp16_programs_in_f16() {
    for id in ["mlp_fp16", "cnn_fp16", "mlp_palettized"] {
        let m = GoldenModel::open(golden::fixtures_dir().join(id)).unwrap();
        let r = check(&m, FloatPolicy::Native);
        assert!(r.passed, "{id}");
        // Really computed in f16: not bit-identical to the f32 computation.
        let upcast = check(&m, FloatPolicy::Upcast);
        assert!(
            r.outputs[0].l_inf > upcast.outputs[0].l_inf,
            "{id}: native f16 should differ from f32 compute"
        );
    }
}
