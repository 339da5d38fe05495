//! The real-model battery ("zoo", issue #11 item 4): networks other people
//! trained, taken from pinned PyPI wheels as ONNX files, converted to ML
//! Programs by scripts/zoo/onnx2mil.py and built by `make zoo` into
//! `models/zoo/<member>/` with expected outputs from onnxruntime on the
//! original ONNX file (scripts/zoo/README.md).
//!
//! Every member listed in scripts/zoo/members.json runs through
//! `CandleEngine` and must match within its budget: L∞ ≤ rtol × max(1,
//! max |expected|) per output, rtol from member.json (1e-4 for fp32), and
//! RMSE ≤ budget.rmse where member.json sets one.
//! fp16 members run under both float policies (f32 upcast and f16
//! arithmetic). A stateful member (member.json `stateful`: a decoder with
//! its KV cache in state) is stepped token by token through
//! `infer_with_state`, each step checked. `inspect` (`unsupported_ops`) must
//! agree with `prepare`. A member whose
//! files are absent fails the test with a message naming `make zoo`, unless
//! `APPLE_SILICON_ALLOW_SKIP=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use apple_silicon::mil::{unsupported_ops, FloatPolicy};
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::tensor::DType;
use apple_silicon::{golden, CandleEngine, InferenceEngine, ModelArtifact, PrepareOptions, Tensor, TensorMap};
use serde_json::Value;

/// Allows members whose files are absent to be skipped (reported, not failed).
const ALLOW_SKIP_ENV: &str = "APPLE_SILICON_ALLOW_SKIP";
const T: Duration = Duration::from_secs(300);

fn members() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/zoo/members.json");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["members"].as_array().unwrap().clone()
}

fn zoo_dir() -> PathBuf {
    golden::models_dir().join("zoo")
}

fn read_npy_dir(dir: &Path) -> Result<TensorMap, String> {
    let mut m = TensorMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "npy") {
            let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            m.insert(name, Tensor::read_npy(&p).map_err(|e| e.to_string())?);
        }
    }
    Ok(m)
}

/// One member through the engine: Ok(figures) or Err(why).
///
/// `native_f16`: the engine computes fp16 in f16. Where member.json gives a
/// `budget.native_f16` ({mask_threshold, min_agreement}), that run is held
/// to it instead of L∞/RMSE: the share of outputs on the same side of the
/// threshold as the reference (the decision the application takes).
fn run_member(engine: &CandleEngine, dir: &Path, native_f16: bool) -> Result<String, String> {
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("member.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let rtol = info["budget"]["rtol"]
        .as_f64()
        .ok_or("member.json has no budget.rtol")?;
    let pkg_path = dir.join("model.mlpackage");
    let pkg = MlPackage::open(&pkg_path).map_err(|e| e.to_string())?;
    let inspect_unsupported = unsupported_ops(&pkg);

    let artifact = ModelArtifact::open(&pkg_path).map_err(|e| e.to_string())?;
    let prepared = engine.prepare(&artifact, PrepareOptions::default());
    let model = match prepared {
        Err(e) => {
            return Err(format!(
                "prepare: {e} (inspect's unsupported ops: {inspect_unsupported:?})"
            ));
        }
        Ok(m) => {
            if !inspect_unsupported.is_empty() {
                return Err(format!(
                    "inspect reports unsupported {inspect_unsupported:?} but prepare accepted the package"
                ));
            }
            m
        }
    };
    let inputs = read_npy_dir(&dir.join("inputs"))?;
    let expected = read_npy_dir(&dir.join("expected"))?;
    if info["stateful"].is_object() {
        return run_stateful(engine, model.as_ref(), dir, &info, &inputs, &expected, rtol);
    }
    let t0 = std::time::Instant::now();
    let out = engine
        .infer(model.as_ref(), &inputs, T)
        .map_err(|e| format!("infer: {e}"))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut figures = Vec::new();
    let mut bad = Vec::new();
    for (name, want) in &expected {
        let got = out.get(name).ok_or_else(|| format!("output `{name}` missing"))?;
        let Some(c) = compare(name, got, want, &mut bad) else {
            continue;
        };
        figures.push(format!(
            "{name}: L∞ {:.2e} (rel {:.2e}, budget {rtol:.0e}), RMSE {:.2e}",
            c.linf, c.rel, c.rmse
        ));
        let mask = &info["budget"]["native_f16"];
        if native_f16 && mask.is_object() {
            let (t, min) = (
                mask["mask_threshold"].as_f64().ok_or("native_f16.mask_threshold")?,
                mask["min_agreement"].as_f64().ok_or("native_f16.min_agreement")?,
            );
            let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
            let same = g.iter().zip(&w).filter(|(a, b)| (**a > t) == (**b > t)).count();
            let agree = same as f64 / w.len().max(1) as f64;
            figures.push(format!("{name}: mask (> {t}) agreement {agree:.5} (budget ≥ {min})"));
            if agree < min {
                bad.push(format!("{name}: mask agreement {agree:.5} < {min}"));
            }
            continue;
        }
        if c.rel > rtol {
            bad.push(format!(
                "{name}: L∞ {:.3e} relative {:.3e} > budget {rtol:e} (RMSE {:.3e})",
                c.linf, c.rel, c.rmse
            ));
        }
        if let Some(max_rmse) = info["budget"]["rmse"].as_f64() {
            if c.rmse > max_rmse {
                bad.push(format!("{name}: RMSE {:.3e} > budget {max_rmse:e}", c.rmse));
            }
        }
    }
    if bad.is_empty() {
        Ok(format!("{} [{ms:.0} ms]", figures.join("; ")))
    } else {
        Err(bad.join("; "))
    }
}

/// L∞, L∞ relative to max(1, max |want|), and RMSE of one output.
struct Diff {
    linf: f64,
    rel: f64,
    rmse: f64,
}

/// `got` against `want`; None (and a line in `bad`) when the shapes differ.
/// A NaN anywhere makes L∞ infinite, never a silently small max.
fn compare(name: &str, got: &Tensor, want: &Tensor, bad: &mut Vec<String>) -> Option<Diff> {
    if got.shape() != want.shape() {
        bad.push(format!(
            "{name}: shape {:?} != expected {:?}",
            got.shape(),
            want.shape()
        ));
        return None;
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (mut linf, mut sq) = (0.0f64, 0.0f64);
    for (a, b) in g.iter().zip(&w) {
        let d = (a - b).abs();
        linf = if d.is_nan() { f64::INFINITY } else { linf.max(d) };
        sq += d * d;
    }
    let rmse = (sq / w.len().max(1) as f64).sqrt();
    Some(Diff {
        linf,
        rel: linf / scale,
        rmse,
    })
}

/// Step `t` of a tensor whose axis 0 is the step axis (shape [steps, ...]).
fn step_of(t: &Tensor, step: usize) -> Result<Tensor, String> {
    let (&steps, rest) = t.shape().split_first().ok_or("a stepped tensor needs a step axis")?;
    if step >= steps {
        return Err(format!("step {step} of a tensor with {steps} steps"));
    }
    let chunk = t.as_bytes().len() / steps;
    Tensor::from_bytes(
        t.dtype(),
        rest.to_vec(),
        t.as_bytes()[step * chunk..(step + 1) * chunk].to_vec(),
    )
    .map_err(|e| e.to_string())
}

/// A stateful member (member.json `stateful`): its states start as zeros,
/// then every step runs `infer_with_state` on slice t of the inputs with the
/// states the previous step left, and each step's outputs are compared with
/// slice t of the expected ones (budget per step and output). The states
/// after the last step are compared with `expected_states/` (budget
/// `stateful.state_rtol`).
fn run_stateful(
    engine: &CandleEngine,
    model: &dyn apple_silicon::PreparedModel,
    dir: &Path,
    info: &Value,
    inputs: &TensorMap,
    expected: &TensorMap,
    rtol: f64,
) -> Result<String, String> {
    let st = &info["stateful"];
    let steps = st["steps"].as_u64().ok_or("stateful.steps")? as usize;
    // A fresh state from the engine (zeros, as Core ML's makeState()); it
    // must hold what member.json says the program's states are.
    let mut state = engine.make_state(model).map_err(|e| format!("make_state: {e}"))?;
    let fresh = engine.read_state(&state).map_err(|e| e.to_string())?;
    let declared = st["states"].as_object().ok_or("stateful.states")?;
    if fresh.len() != declared.len() {
        return Err(format!(
            "make_state made {} states, member.json declares {}",
            fresh.len(),
            declared.len()
        ));
    }
    for (name, s) in declared {
        let dtype = s["dtype"]
            .as_str()
            .and_then(DType::parse)
            .ok_or_else(|| format!("state {name}: dtype"))?;
        let shape: Vec<usize> = s["shape"]
            .as_array()
            .ok_or_else(|| format!("state {name}: shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).ok_or("state shape"))
            .collect::<Result<_, _>>()?;
        let want = Tensor::zeros(dtype, shape).map_err(|e| e.to_string())?;
        if fresh.get(name) != Some(&want) {
            return Err(format!(
                "make_state's `{name}` is not zeros of member.json's dtype and shape"
            ));
        }
    }
    let (mut bad, mut worst) = (
        Vec::new(),
        std::collections::BTreeMap::<String, (f64, f64, usize)>::new(),
    );
    let t0 = std::time::Instant::now();
    for step in 0..steps {
        let mut x = TensorMap::new();
        for (name, t) in inputs {
            x.insert(name.clone(), step_of(t, step)?);
        }
        let out = engine
            .infer_with_state(model, &mut state, &x, T)
            .map_err(|e| format!("step {step}: infer_with_state: {e}"))?;
        for (name, want) in expected {
            let got = out
                .get(name)
                .ok_or_else(|| format!("step {step}: output `{name}` missing"))?;
            let want = step_of(want, step)?;
            let Some(c) = compare(name, got, &want, &mut bad) else {
                continue;
            };
            if c.rel > rtol {
                bad.push(format!(
                    "step {step} {name}: L∞ {:.3e} relative {:.3e} > budget {rtol:e}",
                    c.linf, c.rel
                ));
            }
            let w = worst.entry(name.clone()).or_insert((0.0, 0.0, 0));
            if c.rel >= w.1 {
                *w = (c.linf, c.rel, step);
            }
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64;
    let mut figures: Vec<String> = worst
        .iter()
        .map(|(n, (l, r, s))| format!("{n}: worst step {s} L∞ {l:.2e} (rel {r:.2e}, budget {rtol:.0e})"))
        .collect();
    let state = engine.read_state(&state).map_err(|e| e.to_string())?;
    let state_rtol = st["state_rtol"].as_f64().ok_or("stateful.state_rtol")?;
    let want_states = read_npy_dir(&dir.join("expected_states"))?;
    if want_states.len() != state.len() {
        bad.push(format!(
            "expected_states holds {} states, the program has {}",
            want_states.len(),
            state.len()
        ));
    }
    for (name, want) in &want_states {
        let got = state.get(name).ok_or_else(|| format!("state `{name}` missing"))?;
        if let Some(c) = compare(name, got, want, &mut bad) {
            figures.push(format!(
                "state {name} after step {}: L∞ {:.2e} (rel {:.2e}, budget {state_rtol:.0e})",
                steps - 1,
                c.linf,
                c.rel
            ));
            if c.rel > state_rtol {
                bad.push(format!(
                    "state {name}: L∞ {:.3e} relative {:.3e} > budget {state_rtol:e}",
                    c.linf, c.rel
                ));
            }
        }
    }
    if !bad.is_empty() {
        return Err(bad.join("; "));
    }
    Ok(format!(
        "{steps} steps with state; {} [{ms:.1} ms/step]",
        figures.join("; ")
    ))
}

/// Runs every member under `root`; Err lists the failures, or the absent
/// members (naming `make zoo`) unless `allow_skip`. Ok holds the report lines.
fn run_zoo(root: &Path, allow_skip: bool) -> Result<Vec<String>, String> {
    let engine = CandleEngine::new();
    let native = CandleEngine::new().with_float_policy(FloatPolicy::Native);
    let (mut missing, mut failed, mut report) = (Vec::new(), Vec::new(), Vec::new());
    for m in members() {
        let id = m["id"].as_str().unwrap();
        let dir = root.join(id);
        if !dir.join("member.json").is_file() {
            missing.push(id.to_string());
            continue;
        }
        // fp16 programs run under both float policies: upcast to f32 (the default) and f16 arithmetic.
        let mut runs = vec![("", &engine, false)];
        if m["precision"] == "fp16" {
            runs.push((" (f16 arithmetic)", &native, true));
        }
        for (how, eng, native_f16) in runs {
            match run_member(eng, &dir, native_f16) {
                Ok(fig) => report.push(format!("zoo {id:<20} ok   {fig}{how}")),
                Err(e) => {
                    report.push(format!("zoo {id:<20} FAIL {e}{how}"));
                    failed.push(format!("{id}{how}: {e}"));
                }
            }
        }
    }
    for line in &report {
        println!("{line}");
    }
    if !missing.is_empty() {
        let msg = format!(
            "zoo members not built: {} (in {}): run `make zoo`",
            missing.join(", "),
            root.display()
        );
        if !allow_skip {
            return Err(format!("{msg} (or set {ALLOW_SKIP_ENV}=1 to skip them)"));
        }
        report.push(format!("skipped ({ALLOW_SKIP_ENV}=1): {msg}"));
    }
    if !failed.is_empty() {
        return Err(format!("zoo members failed:\n{}", failed.join("\n")));
    }
    Ok(report)
}

#[test]
fn every_zoo_member_matches_onnxruntime_within_budget() {
    let allow_skip = std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1");
    if let Err(e) = run_zoo(&zoo_dir(), allow_skip) {
        panic!("{e}");
    }
}

#[test]
fn absent_members_fail_naming_make_zoo_unless_skips_are_allowed() {
    let empty = tempfile::tempdir().unwrap();
    let e = run_zoo(empty.path(), false).unwrap_err();
    assert!(e.contains("run `make zoo`"), "{e}");
    assert!(e.contains("ppocr_v4_det"), "{e}");
    assert!(e.contains(ALLOW_SKIP_ENV), "{e}");
    let report = run_zoo(empty.path(), true).unwrap();
    assert!(report.last().unwrap().contains("skipped"), "{report:?}");
}

/// PP-OCRv4 det writes hard-swish as ONNX converters do (`add(c, 3)`,
/// `clip(0, 6)`, `mul(c, ·)`, `mul(·, 1/6)`) and follows it with a learnable
/// scale and shift (`mul` and `add` by one-element constants): the plan
/// takes every such chain into the conv before it, so no `clip` step and no
/// scalar arithmetic after a conv is left (the member's outputs are checked
/// against onnxruntime by the test above), and the chain stays fused when a
/// depthwise conv joins the pointwise conv it follows.
#[test]
fn ppocr_v4_det_fuses_its_clip_hard_swish_chains_into_the_convs() {
    let dir = zoo_dir().join("ppocr_v4_det");
    if !dir.join("member.json").is_file() {
        assert!(
            std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1"),
            "{} not built: run `make zoo`",
            dir.display()
        );
        return;
    }
    let pkg = MlPackage::open(dir.join("model.mlpackage")).unwrap();
    let plan = apple_silicon::mil::Plan::build(&pkg, FloatPolicy::Upcast).unwrap();
    let h = plan.step_histogram();
    println!("{h:#?}");
    assert!(!h.contains_key("clip"), "{h:?}");
    let count = |pat: &str| -> usize { h.iter().map(|(k, n)| k.matches(pat).count() * n).sum() };
    assert_eq!(count("hard_swish+mul+mul+add"), 24, "{h:?}");
    // One of them is a pointwise conv whose output is large
    // enough for the depthwise conv reading it to join it
    // (`depthwise::expand`); its chain stays fused.
    assert_eq!(count("conv+hard_swish+mul+mul+add+depthwise"), 1, "{h:?}");
}
