//! The opset conformance suite: every case under tests/fixtures/conformance
//! (built by scripts/conformance/build.py from float64 numpy references) run
//! through the interpreter and compared with its reference.
//!
//! Budgets: fp32 L∞ ≤ 1e-5 and fp16 L∞ ≤ 1e-2 (the plan's fp16 budget),
//! both relative to max(1, max |reference|); integer and bool outputs
//! exactly; a case's `rtol` overrides. NaN and infinities must match. fp16
//! cases run under both float policies (fp16 arithmetic, and upcast to f32).
//! Random ops are `"check": "distribution"` cases: their samples cannot match
//! Apple's generator, so shape, dtype, support, sample mean / std and value
//! frequencies are checked against bounds from the op's parameters, and a
//! second plan must draw the same samples.
//!
//! A case that errors or misses fails the test unless it (or its op type)
//! is in tests/fixtures/conformance/KNOWN.json with a reason; a listed case
//! that passes fails it too, so the list stays honest. For every case,
//! `unsupported_ops` (inspect) must agree with whether the plan builds
//! (prepare). Results go to target/conformance.json (for
//! scripts/conformance/table.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apple_silicon::mil::{unsupported_ops, FloatPolicy, Plan};
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::{DType, Tensor, TensorMap};
use coreml_proto::proto::mil_spec;
use serde_json::{json, Value};

const FP32_RTOL: f64 = 1e-5;
const FP16_RTOL: f64 = 1e-2;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance")
}

struct Case {
    id: String,
    dir: PathBuf,
    meta: Value,
}

fn discover() -> Vec<Case> {
    let mut out = Vec::new();
    let mut fams: Vec<_> = std::fs::read_dir(root())
        .expect("tests/fixtures/conformance (run scripts/conformance/build.py)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    fams.sort();
    for fam in fams {
        let mut cases: Vec<_> = std::fs::read_dir(&fam)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("case.json").is_file())
            .collect();
        cases.sort();
        for dir in cases {
            let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
            let id = format!(
                "{}/{}",
                meta["family"].as_str().unwrap(),
                meta["name"].as_str().unwrap()
            );
            out.push(Case { id, dir, meta });
        }
    }
    out
}

fn read_dir_npy(dir: &Path) -> Result<TensorMap, String> {
    let mut m = TensorMap::new();
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in rd {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "npy") {
            let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            m.insert(name, Tensor::read_npy(&p).map_err(|e| e.to_string())?);
        }
    }
    Ok(m)
}

/// Largest error of `got` against `want`, relative to max(1, max |want|),
/// or why they cannot be compared. Integer and bool references compare
/// exactly (any difference is an error of at least 1).
fn error_of(got: &Tensor, want: &Tensor) -> Result<f64, String> {
    if got.shape() != want.shape() {
        return Err(format!("shape {:?}, expected {:?}", got.shape(), want.shape()));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let exact = !want.dtype().is_float();
    let scale = w.iter().filter(|v| v.is_finite()).fold(1f64, |m, v| m.max(v.abs()));
    let mut worst = 0f64;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if b.is_nan() || b.is_infinite() || a.is_nan() || a.is_infinite() {
            let same = (a.is_nan() && b.is_nan()) || a == b;
            if !same {
                return Err(format!("element {i}: {a}, expected {b}"));
            }
            continue;
        }
        let d = (a - b).abs();
        if exact && d != 0.0 {
            return Err(format!("element {i}: {a}, expected {b} (exact)"));
        }
        worst = worst.max(d / scale);
    }
    Ok(worst)
}

/// Runs one case under `policy`: (status, detail, worst relative error,
/// inspect says supported, plan builds).
fn run_case(c: &Case, policy: FloatPolicy) -> (&'static str, String, Option<f64>, bool, bool) {
    let pkg = match MlPackage::open(c.dir.join("model.mlpackage")) {
        Ok(p) => p,
        Err(e) => return ("error", format!("open: {e}"), None, false, false),
    };
    let inspect_ok = unsupported_ops(&pkg).is_empty();
    let plan = match Plan::build(&pkg, policy) {
        Ok(p) => p,
        Err(e) => return ("error", format!("build: {e}"), None, inspect_ok, false),
    };
    let inputs = match read_dir_npy(&c.dir.join("inputs")) {
        Ok(i) => i,
        Err(e) => return ("error", format!("inputs: {e}"), None, inspect_ok, true),
    };
    let out = match plan.run(&inputs) {
        Ok(o) => o,
        Err(e) => return ("error", format!("run: {e}"), None, inspect_ok, true),
    };
    if c.meta["check"] == "distribution" {
        // Random ops: the statistics, and the same samples from a second plan (the seed is honoured).
        if let Err(msg) = check_stats(&out, &c.meta["stats"]) {
            return ("fail", msg, None, inspect_ok, true);
        }
        let again = Plan::build(&pkg, policy).and_then(|p| p.run(&inputs));
        return match again {
            Ok(o2) if o2 == out => ("pass", String::new(), None, inspect_ok, true),
            Ok(_) => (
                "fail",
                "a second plan drew other samples".into(),
                None,
                inspect_ok,
                true,
            ),
            Err(e) => ("error", format!("second run: {e}"), None, inspect_ok, true),
        };
    }
    let rtol = c.meta["rtol"].as_f64().unwrap_or(match c.meta["precision"].as_str() {
        Some("fp16") => FP16_RTOL,
        _ => FP32_RTOL,
    });
    let expected = match read_dir_npy(&c.dir.join("expected")) {
        Ok(e) => e,
        Err(e) => return ("error", format!("expected: {e}"), None, inspect_ok, true),
    };
    if expected.is_empty() {
        return ("error", "no expected outputs".into(), None, inspect_ok, true);
    }
    let mut worst = 0f64;
    for (name, want) in &expected {
        let Some(got) = out.get(name) else {
            return ("error", format!("output `{name}` missing"), None, inspect_ok, true);
        };
        // Bool references are stored as u8; outputs may come back as floats (Core ML has no bool I/O).
        let got = if want.dtype() == DType::U8 {
            got.cast(DType::F64)
        } else {
            got.clone()
        };
        match error_of(&got, want) {
            Ok(e) => worst = worst.max(e),
            Err(msg) => return ("fail", format!("output `{name}`: {msg}"), None, inspect_ok, true),
        }
    }
    if worst > rtol {
        return (
            "fail",
            format!("error {worst:.3e} > budget {rtol:.0e}"),
            Some(worst),
            inspect_ok,
            true,
        );
    }
    ("pass", String::new(), Some(worst), inspect_ok, true)
}

/// Checks random outputs against a distribution case's `stats` (see
/// scripts/conformance/case.py): shape and dtype exactly, value bounds and
/// set, bounds on the sample mean, std and value frequencies.
fn check_stats(out: &TensorMap, stats: &Value) -> Result<(), String> {
    let stats = stats.as_object().ok_or("distribution case without `stats`")?;
    for (name, st) in stats {
        let got = out.get(name).ok_or_else(|| format!("output `{name}` missing"))?;
        let shape: Vec<usize> = st["shape"]
            .as_array()
            .ok_or("stats without `shape`")?
            .iter()
            .map(|d| d.as_u64().unwrap_or(0) as usize)
            .collect();
        if got.shape() != shape.as_slice() {
            return Err(format!("output `{name}`: shape {:?}, expected {shape:?}", got.shape()));
        }
        if let Some(dt) = st["dtype"].as_str() {
            if got.dtype().name() != dt {
                return Err(format!("output `{name}`: dtype {}, expected {dt}", got.dtype().name()));
            }
        }
        let v = got.to_f64_vec();
        if v.is_empty() {
            return Err(format!("output `{name}` is empty"));
        }
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(format!("output `{name}`: non-finite sample {bad}"));
        }
        let (lo, hi) = (st["min"].as_f64(), st["max"].as_f64());
        if let Some(bad) = v
            .iter()
            .find(|&&x| lo.is_some_and(|l| x < l) || hi.is_some_and(|h| x > h))
        {
            return Err(format!("output `{name}`: sample {bad} outside [{lo:?}, {hi:?}]"));
        }
        if let Some(set) = st["values"].as_array() {
            let set: Vec<f64> = set.iter().filter_map(Value::as_f64).collect();
            if let Some(bad) = v.iter().find(|x| !set.contains(x)) {
                return Err(format!("output `{name}`: sample {bad} not in {set:?}"));
            }
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
        let within = |what: &str, x: f64, b: &Value| -> Result<(), String> {
            match (b[0].as_f64(), b[1].as_f64()) {
                (Some(l), Some(h)) if x < l || x > h => {
                    Err(format!("output `{name}`: {what} {x:.5} outside [{l:.5}, {h:.5}]"))
                }
                _ => Ok(()),
            }
        };
        within("mean", mean, &st["mean"])?;
        within("std", std, &st["std"])?;
        if let Some(fr) = st["freq"].as_object() {
            for (val, b) in fr {
                let target: f64 = val.parse().map_err(|_| format!("freq key `{val}` is not a number"))?;
                let f = v.iter().filter(|&&x| x == target).count() as f64 / n;
                within(&format!("frequency of {val}"), f, b)?;
            }
        }
    }
    Ok(())
}

fn known() -> BTreeMap<String, String> {
    let p = root().join("KNOWN.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).expect("tests/fixtures/conformance/KNOWN.json"))
        .expect("KNOWN.json is JSON");
    let mut m = BTreeMap::new();
    for (k, r) in v["unsupported"]
        .as_object()
        .expect("KNOWN.json: an `unsupported` object")
    {
        let reason = r.as_str().unwrap_or_default();
        assert!(!reason.trim().is_empty(), "KNOWN.json: `{k}` has no reason");
        m.insert(k.clone(), reason.to_string());
    }
    m
}

#[test]
fn every_conformance_case_matches_its_reference() {
    let cases = discover();
    assert!(!cases.is_empty(), "no conformance cases under {}", root().display());
    let known = known();
    let mut results = Vec::new();
    let mut problems = Vec::new();
    let mut used_known = std::collections::BTreeSet::new();
    // op type -> all its cases pass
    let mut ops: BTreeMap<String, bool> = BTreeMap::new();
    for c in &cases {
        let op = c.meta["op"].as_str().unwrap_or_default().to_string();
        // fp16 cases run with fp16 arithmetic and again computed in f32; the worse result counts.
        let mut run = run_case(c, FloatPolicy::Native);
        if c.meta["precision"] == "fp16" && run.0 == "pass" {
            let up = run_case(c, FloatPolicy::Upcast);
            if up.0 != "pass" {
                run = (up.0, format!("(upcast) {}", up.1), up.2, up.3, up.4);
            } else if up.2 > run.2 {
                run.2 = up.2;
            }
        }
        let (status, detail, err, inspect_ok, built) = run;
        // candle errors carry a backtrace after the first line.
        let detail = detail.lines().next().unwrap_or_default().to_string();
        let agree = inspect_ok == built;
        let known_key = if known.contains_key(&c.id) {
            Some(c.id.clone())
        } else if known.contains_key(&op) {
            Some(op.clone())
        } else {
            None
        };
        let ok = status == "pass" && agree;
        let verdict = match (&known_key, ok) {
            (None, true) => "pass",
            (None, false) => "FAIL",
            (Some(_), false) => "known",
            (Some(_), true) => "UNEXPECTED PASS",
        };
        if let Some(k) = &known_key {
            used_known.insert(k.clone());
        }
        let disagree = if agree {
            String::new()
        } else {
            format!(
                " [inspect says {}, plan build {}]",
                if inspect_ok { "supported" } else { "unsupported" },
                if built { "succeeded" } else { "failed" }
            )
        };
        let err_s = err.map(|e| format!(" err {e:.2e}")).unwrap_or_default();
        println!("{verdict:>15} {}{err_s} {detail}{disagree}", c.id);
        if verdict == "FAIL" || verdict == "UNEXPECTED PASS" {
            problems.push(format!("{verdict} {}: {detail}{disagree}", c.id));
        }
        *ops.entry(op.clone()).or_insert(true) &= ok;
        results.push(json!({
            "id": c.id,
            "family": c.meta["family"],
            "name": c.meta["name"],
            "op": op,
            "opset": c.meta["opset"],
            "precision": c.meta["precision"],
            "status": status,
            "verdict": verdict,
            "detail": detail,
            "error": err,
            "inspect_supported": inspect_ok,
            "plan_built": built,
            "known": known_key.as_ref().map(|k| known[k].clone()),
        }));
    }
    for k in known.keys() {
        if !used_known.contains(k) {
            problems.push(format!("KNOWN.json entry `{k}` matches no case"));
        }
    }
    let passing = ops.values().filter(|&&v| v).count();
    let n_pass = results.iter().filter(|r| r["verdict"] == "pass").count();
    println!(
        "conformance: {n_pass}/{} cases pass; op types with every case passing: {passing}/{}",
        results.len(),
        ops.len()
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target).unwrap();
    let report = json!({"cases": results, "known": known, "op_types_passing": passing, "op_types": ops.len()});
    std::fs::write(
        target.join("conformance.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Copies `src` (a directory tree) to `dst`.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let to = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &to);
        } else {
            std::fs::copy(&p, &to).unwrap();
        }
    }
}

/// A copy of a case's package in which the constant bound to `param` of the
/// `op_type` op is replaced by `val`; returns the plan build's error.
fn build_with_param(case: &str, op_type: &str, param: &str, val: mil_spec::tensor_value::Value) -> String {
    use coreml_proto::proto::{model, Model};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("m.mlpackage");
    copy_dir(&root().join(case).join("model.mlpackage"), &dst);
    let spec_path = dst.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    let Some(model::Type::MlProgram(p)) = &mut spec.r#type else {
        panic!("{case}: not an ML Program")
    };
    let block = p
        .functions
        .get_mut("main")
        .unwrap()
        .block_specializations
        .values_mut()
        .next()
        .unwrap();
    let op = block.operations.iter().find(|o| o.r#type == op_type).unwrap();
    let Some(mil_spec::argument::binding::Binding::Name(cname)) = op.inputs[param].arguments[0].binding.clone() else {
        panic!("{case}: `{param}` is not bound to a constant")
    };
    let c = block
        .operations
        .iter_mut()
        .find(|o| o.r#type == "const" && o.outputs[0].name == cname)
        .unwrap();
    let v = c.attributes.get_mut("val").unwrap();
    let Some(mil_spec::value::Value::ImmediateValue(iv)) = &mut v.value else {
        panic!("{case}: no immediate value")
    };
    let Some(mil_spec::value::immediate_value::Value::Tensor(t)) = &mut iv.value else {
        panic!("{case}: no tensor")
    };
    t.value = Some(val);
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    let pkg = MlPackage::open(&dst).unwrap();
    Plan::build(&pkg, FloatPolicy::Native)
        .err()
        .unwrap_or_else(|| panic!("{case}: a bad `{param}` must be refused at build"))
        .to_string()
}

#[test]
fn bad_options_are_errors_naming_op_parameter_and_value() {
    use mil_spec::tensor_value::{RepeatedInts, RepeatedStrings, Value as TV};
    let s = |v: &str| {
        TV::Strings(RepeatedStrings {
            values: vec![v.to_string()],
        })
    };
    for (case, op, param, val, value_text) in [
        ("activation/gelu_exact", "gelu", "mode", s("CUBIC"), "CUBIC"),
        (
            "elementwise_unary/cast_fp32_int32",
            "cast",
            "dtype",
            s("complex64"),
            "complex64",
        ),
        (
            "reduction/reduce_argmax_ios17_int32",
            "reduce_argmax",
            "output_dtype",
            s("fp32"),
            "fp32",
        ),
        ("conv/conv2d_same_odd", "conv", "pad_type", s("diagonal"), "diagonal"),
        (
            "image_resizing/resize_bilinear_default_up",
            "resize_bilinear",
            "sampling_mode",
            s("BICUBIC"),
            "BICUBIC",
        ),
        (
            "image_resizing/resample_bilinear_border_n_minus_one_to_one_align",
            "resample",
            "padding_mode",
            s("wrap"),
            "wrap",
        ),
        (
            "quantization_ops/quantize_int8_scalar",
            "quantize",
            "output_dtype",
            s("int16"),
            "int16",
        ),
        (
            "random/random_categorical_logits",
            "random_categorical",
            "mode",
            s("LOGITS"),
            "LOGITS",
        ),
        (
            "normalization/local_response_norm_size3",
            "local_response_norm",
            "size",
            TV::Ints(RepeatedInts { values: vec![0] }),
            "0",
        ),
        (
            "control_flow/make_list_runtime_init_length",
            "make_list",
            "dtype",
            s("fp64"),
            "fp64",
        ),
    ] {
        let e = build_with_param(case, op, param, val);
        println!("{case}: {e}");
        for want in [
            format!("({op})"),
            format!("`{param}`"),
            value_text.to_string(),
            "op `".to_string(),
        ] {
            assert!(e.contains(&want), "{case}: error `{e}` does not name {want}");
        }
    }
}

/// A copy of a case's package in which the inline value bound to `param` of
/// the `op_type` op is edited by `edit`; returns the plan build's error.
fn build_with_inline(
    case: &str,
    op_type: &str,
    param: &str,
    edit: impl FnOnce(&mut mil_spec::Value),
) -> apple_silicon::Error {
    use coreml_proto::proto::{model, Model};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("m.mlpackage");
    copy_dir(&root().join(case).join("model.mlpackage"), &dst);
    let spec_path = dst.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    let Some(model::Type::MlProgram(p)) = &mut spec.r#type else {
        panic!("{case}: not an ML Program")
    };
    let block = p
        .functions
        .get_mut("main")
        .unwrap()
        .block_specializations
        .values_mut()
        .next()
        .unwrap();
    let op = block.operations.iter_mut().find(|o| o.r#type == op_type).unwrap();
    let arg = op.inputs.get_mut(param).unwrap().arguments.get_mut(0).unwrap();
    let Some(mil_spec::argument::binding::Binding::Value(v)) = &mut arg.binding else {
        panic!("{case}: `{param}` is not an inline value")
    };
    edit(v);
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    let pkg = MlPackage::open(&dst).unwrap();
    Plan::build(&pkg, FloatPolicy::Native)
        .err()
        .unwrap_or_else(|| panic!("{case}: a malformed `{param}` must be refused at build"))
}

/// Sets the constant dimensions of a value's tensor type.
fn set_dims(v: &mut mil_spec::Value, dims: &[u64]) {
    let Some(mil_spec::value_type::Type::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.r#type.as_mut()) else {
        panic!("not a tensor value")
    };
    t.dimensions = dims
        .iter()
        .map(|&d| mil_spec::Dimension {
            dimension: Some(mil_spec::dimension::Dimension::Constant(
                mil_spec::dimension::ConstantDimension { size: d },
            )),
        })
        .collect();
    t.rank = dims.len() as i64;
}

/// The immediate tensor of a value.
fn immediate(v: &mut mil_spec::Value) -> &mut mil_spec::TensorValue {
    let Some(mil_spec::value::Value::ImmediateValue(iv)) = &mut v.value else {
        panic!("no immediate value")
    };
    let Some(mil_spec::value::immediate_value::Value::Tensor(t)) = &mut iv.value else {
        panic!("no tensor")
    };
    t
}

#[test]
fn malformed_compressed_constants_are_invalid_artifacts() {
    use mil_spec::tensor_value::{RepeatedInts, Value as TV};
    type Edit = Box<dyn FnOnce(&mut mil_spec::Value)>;
    let cases: Vec<(&str, &str, &str, Edit, &str)> = vec![
        (
            "constexpr_ops/lut_to_dense_ios18_vector_axis1",
            "constexpr_lut_to_dense",
            "vector_axis",
            Box::new(|v| immediate(v).value = Some(TV::Ints(RepeatedInts { values: vec![7] }))),
            "`vector_axis` 7",
        ),
        (
            // Groups of 4 along a dim of 6, and 2 palettes for 2-bit indices.
            "constexpr_ops/lut_to_dense_ios18_grouped_2bit",
            "constexpr_lut_to_dense",
            "lut",
            Box::new(|v| set_dims(v, &[4, 1, 2, 1])),
            "does not divide 6",
        ),
        (
            "constexpr_ops/blockwise_shift_scale_int8_blocks2x2",
            "constexpr_blockwise_shift_scale",
            "scale",
            Box::new(|v| set_dims(v, &[3, 2])),
            "does not divide 4",
        ),
        (
            // One value fewer than the mask's set bits.
            "constexpr_ops/sparse_to_dense_ios18",
            "constexpr_sparse_to_dense",
            "nonzero_data",
            Box::new(|v| {
                let Some(TV::Floats(f)) = &mut immediate(v).value else {
                    panic!("nonzero_data: not floats")
                };
                f.values.pop();
                let n = f.values.len() as u64;
                set_dims(v, &[n]);
            }),
            "mask sets",
        ),
    ];
    for (case, op, param, edit, want) in cases {
        let e = build_with_inline(case, op, param, edit);
        println!("{case}: {e}");
        assert!(
            matches!(e, apple_silicon::Error::InvalidArtifact { .. }),
            "{case}: {e} is not InvalidArtifact"
        );
        let s = e.to_string();
        assert!(
            s.contains(&format!("({op})")) && s.contains(want),
            "{case}: `{s}` does not name {op} / {want}"
        );
    }
}
