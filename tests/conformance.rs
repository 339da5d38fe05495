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

mod common;

use common::copy_dir;
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
    // Stateful cases run with their initial states; the map then holds the final ones.
    let mut state = None;
    if c.dir.join("states").is_dir() {
        match read_dir_npy(&c.dir.join("states")) {
            Ok(s) => state = Some(s),
            Err(e) => return ("error", format!("states: {e}"), None, inspect_ok, true),
        }
    }
    let run = match state.as_mut() {
        Some(st) => plan.run_with_state(&inputs, st),
        None => plan.run(&inputs),
    };
    let out = match run {
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
    let expected_states = match &state {
        Some(_) => match read_dir_npy(&c.dir.join("expected_states")) {
            Ok(e) => e,
            Err(e) => return ("error", format!("expected_states: {e}"), None, inspect_ok, true),
        },
        None => TensorMap::new(),
    };
    let final_states = state.unwrap_or_default();
    let checks = expected.iter().map(|(n, w)| ("output", n, w, out.get(n))).chain(
        expected_states
            .iter()
            .map(|(n, w)| ("state", n, w, final_states.get(n))),
    );
    let mut worst = 0f64;
    for (what, name, want, got) in checks {
        let Some(got) = got else {
            return ("error", format!("{what} `{name}` missing"), None, inspect_ok, true);
        };
        // Bool references are stored as u8; outputs may come back as floats (Core ML has no bool I/O).
        let got = if want.dtype() == DType::U8 {
            got.cast(DType::F64)
        } else {
            got.clone()
        };
        match error_of(&got, want) {
            Ok(e) => worst = worst.max(e),
            Err(msg) => return ("fail", format!("{what} `{name}`: {msg}"), None, inspect_ok, true),
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
/// A copy of a case's package in which the constant bound to `param` of the
/// `op_type` op is replaced by `val`; returns the plan build's error.
fn build_with_param(case: &str, op_type: &str, param: &str, val: mil_spec::tensor_value::Value) -> String {
    build_edited(case, |block| {
        let op = block.operations.iter().find(|o| o.r#type == op_type).unwrap();
        let Some(mil_spec::argument::binding::Binding::Name(cname)) = op.inputs[param].arguments[0].binding.clone()
        else {
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
    })
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
            "recurrent/gru_reverse_seq",
            "gru",
            "direction",
            s("bidirectional"),
            "bidirectional",
        ),
        (
            "recurrent/lstm_act_tanh_relu_linear",
            "lstm",
            "cell_activation",
            s("softplus"),
            "softplus",
        ),
        ("recurrent/rnn_act_relu", "rnn", "activation", s("gelu"), "gelu"),
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
    build_edited(case, |block| {
        let op = block.operations.iter_mut().find(|o| o.r#type == op_type).unwrap();
        let arg = op.inputs.get_mut(param).unwrap().arguments.get_mut(0).unwrap();
        let Some(mil_spec::argument::binding::Binding::Value(v)) = &mut arg.binding else {
            panic!("{case}: `{param}` is not an inline value")
        };
        edit(v);
    })
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

/// The plan, inputs and initial states of a stateful case.
fn stateful(case: &str) -> (Plan, TensorMap, TensorMap) {
    let dir = root().join(case);
    let pkg = MlPackage::open(dir.join("model.mlpackage")).unwrap();
    let plan = Plan::build(&pkg, FloatPolicy::Native).unwrap();
    (
        plan,
        read_dir_npy(&dir.join("inputs")).unwrap(),
        read_dir_npy(&dir.join("states")).unwrap(),
    )
}

fn f16s(v: &[f32]) -> Vec<half::f16> {
    v.iter().map(|&x| half::f16::from_f32(x)).collect()
}

#[test]
fn io_schema_lists_states_apart_from_inputs() {
    let pkg = MlPackage::open(root().join("state/kv_cache_slice_update_runtime_pos_fp32/model.mlpackage")).unwrap();
    let s = pkg.io_schema();
    let names = |v: &[apple_silicon::TensorSpec]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&s.inputs), ["new_k", "new_v", "pos"]);
    assert_eq!(names(&s.states), ["k_cache", "v_cache"]);
    let k = s.state("k_cache").unwrap();
    assert_eq!((k.dtype, k.shape.as_slice()), (DType::F16, [1, 2, 6, 4].as_slice()));
    let (plan, _, states) = stateful("state/kv_cache_slice_update_runtime_pos_fp32");
    assert_eq!(
        plan.states(),
        vec![
            ("k_cache".to_string(), DType::F16, vec![1, 2, 6, 4]),
            ("v_cache".to_string(), DType::F16, vec![1, 2, 6, 4])
        ]
    );
    s.validate_states(&states).unwrap();
    // read_state is a run-time value: never folded into a constant.
    // (two explicit reads, one read-back of each coreml_update_state)
    assert_eq!(plan.step_histogram()["read_state"], 5);
    assert_eq!(plan.step_histogram()["write_state"], 2);
}

#[test]
fn one_state_map_advances_across_runs() {
    // count += 1 per run; y = x * count.
    let (plan, inputs, mut state) = stateful("state/counter_fp32");
    let x = inputs["x"].to_f32_vec();
    for run in 1..=3 {
        let y = plan.run_with_state(&inputs, &mut state).unwrap();
        assert_eq!(state["count"].to_f32_vec(), vec![run as f32], "run {run}");
        let want: Vec<f32> = x.iter().map(|v| v * run as f32).collect();
        assert_eq!(y["y"].to_f32_vec(), want, "run {run}");
    }
    // A KV cache filled one position per run, at a run-time position.
    let (plan, mut inputs, mut state) = stateful("state/kv_cache_slice_update_runtime_pos_fp32");
    let zeros = Tensor::from_vec(vec![1, 2, 6, 4], f16s(&[0.0; 48])).unwrap();
    state.insert("k_cache".into(), zeros.clone());
    state.insert("v_cache".into(), zeros);
    for pos in 0..6i32 {
        let step = Tensor::from_vec(vec![1, 2, 1, 4], vec![(pos + 1) as f32; 8]).unwrap();
        inputs.insert("new_k".into(), step.clone());
        inputs.insert("new_v".into(), step);
        inputs.insert("pos".into(), Tensor::from_vec(vec![1], vec![pos]).unwrap());
        let out = plan.run_with_state(&inputs, &mut state).unwrap();
        assert_eq!(out["k"], state["k_cache"].cast(DType::F16));
    }
    // Every position holds the step that wrote it: k[0, h, p, d] = p + 1.
    let k = state["k_cache"].to_f32_vec();
    let want: Vec<f32> = (0..48).map(|i| ((i / 4) % 6 + 1) as f32).collect();
    assert_eq!(k, want);
    assert_eq!(state["v_cache"].to_f32_vec(), want);
}

#[test]
fn a_failed_run_leaves_the_state_unchanged() {
    use apple_silicon::ErrorKind;
    let (plan, mut inputs, mut state) = stateful("state/kv_cache_slice_update_runtime_pos_fp32");
    let before = state.clone();
    // The key cache is written, then the value's update does not fit its slice: the run fails
    // after a write_state ran, and neither state changes.
    inputs.insert(
        "new_v".into(),
        Tensor::from_vec(vec![1, 2, 2, 4], vec![1f32; 16]).unwrap(),
    );
    let e = plan.run_with_state(&inputs, &mut state).unwrap_err();
    assert!(e.to_string().contains("slice_update"), "{e}");
    assert_eq!(state, before);
    // Cancelled before it starts: a Timeout, the state untouched.
    let (plan, inputs, mut state) = stateful("state/counter_fp32");
    let before = state.clone();
    let cancel = apple_silicon::mil::CancelFlag::new();
    cancel.cancel();
    let e = plan
        .run_with_state_cancellable(&inputs, &mut state, Some(&cancel))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(state, before);
}

#[test]
fn wrong_or_missing_states_are_schema_mismatches_naming_the_state() {
    use apple_silicon::ErrorKind;
    let (plan, inputs, state) = stateful("state/kv_cache_slice_update_runtime_pos_fp32");
    // Plan::run on a stateful program.
    let e = plan.run(&inputs).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(
        e.to_string().contains("k_cache") && e.to_string().contains("run_with_state"),
        "{e}"
    );
    type Edit = Box<dyn Fn(&mut TensorMap)>;
    let cases: Vec<(Edit, &[&str])> = vec![
        (
            Box::new(|s| {
                s.remove("v_cache");
            }),
            &["state `v_cache`", "present"],
        ),
        (
            Box::new(|s| {
                s.insert(
                    "k_cache".into(),
                    Tensor::from_vec(vec![1, 2, 5, 4], f16s(&[0.0; 40])).unwrap(),
                );
            }),
            &["shape of state `k_cache`", "[1, 2, 6, 4]", "[1, 2, 5, 4]"],
        ),
        (
            Box::new(|s| {
                s.insert(
                    "k_cache".into(),
                    Tensor::from_vec(vec![1, 2, 6, 4], vec![0f32; 48]).unwrap(),
                );
            }),
            &["dtype of state `k_cache`", "f16", "f32"],
        ),
        (
            Box::new(|s| {
                s.insert("extra".into(), Tensor::from_vec(vec![1], vec![0f32]).unwrap());
            }),
            &["state `extra`", "unknown"],
        ),
    ];
    for (edit, want) in cases {
        let mut s = state.clone();
        edit(&mut s);
        let before = s.clone();
        let e = plan.run_with_state(&inputs, &mut s).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
        for w in want {
            assert!(e.to_string().contains(w), "`{e}` does not say {w}");
        }
        assert_eq!(s, before, "a refused run must not touch the state");
    }
    // A stateless plan runs with an empty state map.
    let pkg = MlPackage::open(root().join("activation/gelu_exact/model.mlpackage")).unwrap();
    let plan = Plan::build(&pkg, FloatPolicy::Native).unwrap();
    let inputs = read_dir_npy(&root().join("activation/gelu_exact/inputs")).unwrap();
    let mut empty = TensorMap::new();
    assert_eq!(
        plan.run_with_state(&inputs, &mut empty).unwrap(),
        plan.run(&inputs).unwrap()
    );
}

/// A copy of a case's package with its main block edited by `edit`, built
/// (native policy).
fn build_edited(case: &str, edit: impl FnOnce(&mut mil_spec::Block)) -> apple_silicon::Result<Plan> {
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
    edit(
        p.functions
            .get_mut("main")
            .unwrap()
            .block_specializations
            .values_mut()
            .next()
            .unwrap(),
    );
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    Plan::build(&MlPackage::open(&dst).unwrap(), FloatPolicy::Native)
}

/// Rebinds argument `param` of the first `op_type` op to the value named `to`.
fn rebind(block: &mut mil_spec::Block, op_type: &str, param: &str, to: &str) {
    let op = block.operations.iter_mut().find(|o| o.r#type == op_type).unwrap();
    op.inputs.get_mut(param).unwrap().arguments[0].binding =
        Some(mil_spec::argument::binding::Binding::Name(to.into()));
}

#[test]
fn only_state_ops_take_states_and_writes_must_match_the_state() {
    // An ordinary op reading a state as a tensor.
    let e = build_edited("state/read_state_fp16", |b| rebind(b, "add", "y", "s")).unwrap_err();
    assert!(e.to_string().contains("takes state `s` as a tensor"), "{e}");
    // read_state of something that is not a state.
    let e = build_edited("state/read_state_fp16", |b| rebind(b, "read_state", "input", "x")).unwrap_err();
    assert!(
        e.to_string().contains("(read_state)") && e.to_string().contains("not a state input"),
        "{e}"
    );
    // write_state of the [3] input into the [1] counter: a run-time error naming the state and
    // both shapes, and the caller's states stay as they were.
    let plan = build_edited("state/three_states_fp16", |b| rebind(b, "write_state", "data", "x")).unwrap();
    let dir = root().join("state/three_states_fp16");
    let inputs = read_dir_npy(&dir.join("inputs")).unwrap();
    let mut state = read_dir_npy(&dir.join("states")).unwrap();
    let before = state.clone();
    let e = plan.run_with_state(&inputs, &mut state).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("writing state `count`") && s.contains("[3]") && s.contains("[1]"),
        "{e}"
    );
    assert_eq!(state, before);
}

#[test]
fn candle_engine_runs_a_stateful_model_with_a_caller_state() {
    use apple_silicon::{CandleEngine, ErrorKind, InferenceEngine, ModelArtifact, PrepareOptions};
    use std::time::Duration;
    let dir = root().join("state/counter_fp32");
    let engine = CandleEngine::new();
    let model = engine
        .prepare(
            &ModelArtifact::open(dir.join("model.mlpackage")).unwrap(),
            PrepareOptions::default(),
        )
        .unwrap();
    assert_eq!(model.io_schema().states[0].name, "count");
    let inputs = read_dir_npy(&dir.join("inputs")).unwrap();
    let mut state = engine.make_state(&*model).unwrap();
    engine
        .write_state(&*model, &mut state, read_dir_npy(&dir.join("states")).unwrap())
        .unwrap();
    let t = Duration::from_secs(10);
    for run in 1..=2 {
        engine.infer_with_state(&*model, &mut state, &inputs, t).unwrap();
        assert_eq!(
            engine.read_state(&state).unwrap()["count"].to_f32_vec(),
            vec![run as f32]
        );
    }
    // Without a state: a clear SchemaMismatch, not a wrong answer.
    let e = engine.infer(&*model, &inputs, t).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    // A wrong state is refused before anything changes.
    let bad = TensorMap::from([(
        "count".to_string(),
        Tensor::from_vec(vec![2], f16s(&[0.0, 0.0])).unwrap(),
    )]);
    let before = engine.read_state(&state).unwrap();
    let e = engine.write_state(&*model, &mut state, bad).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch, "{e}");
    assert!(e.to_string().contains("shape of state `count`"), "{e}");
    assert_eq!(engine.read_state(&state).unwrap(), before);
}

#[test]
fn a_lowered_stateful_program_keeps_its_states() {
    // What the engine's cache stores: the plan's program written back as a package.
    let dir = root().join("state/kv_cache_slice_update_runtime_pos_fp16");
    let pkg = MlPackage::open(dir.join("model.mlpackage")).unwrap();
    let (plan, lowered) = Plan::build_lowered(&pkg, FloatPolicy::Native).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("lowered.mlpackage");
    lowered.write(&pkg, &dst).unwrap();
    let again = Plan::build(&MlPackage::open(&dst).unwrap(), FloatPolicy::Native).unwrap();
    assert_eq!(again.states(), plan.states());
    let inputs = read_dir_npy(&dir.join("inputs")).unwrap();
    let mut s1 = read_dir_npy(&dir.join("states")).unwrap();
    let mut s2 = s1.clone();
    assert_eq!(
        plan.run_with_state(&inputs, &mut s1).unwrap(),
        again.run_with_state(&inputs, &mut s2).unwrap()
    );
    assert_eq!(s1, s2);
}

/// Opens a copy of a case's package with its spec edited by `edit`.
fn open_edited(case: &str, edit: impl FnOnce(&mut coreml_proto::proto::Model)) -> apple_silicon::Result<MlPackage> {
    use coreml_proto::proto::Model;
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("m.mlpackage");
    copy_dir(&root().join(case).join("model.mlpackage"), &dst);
    let spec_path = dst.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    edit(&mut spec);
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    MlPackage::open(&dst)
}

#[test]
fn states_must_agree_between_description_and_function() {
    use apple_silicon::ErrorKind;
    let case = "state/three_states_fp32";
    // The description drops a state the function takes.
    let e = open_edited(case, |s| {
        s.description.as_mut().unwrap().state.retain(|f| f.name != "keep");
    })
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArtifact, "{e}");
    assert!(e.to_string().contains("input `keep` is a state"), "{e}");
    // The description declares a state the function does not take.
    let e = open_edited(case, |s| {
        let d = s.description.as_mut().unwrap();
        let mut extra = d.state[0].clone();
        extra.name = "ghost".into();
        d.state.push(extra);
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("state `ghost` is not a state-typed input"),
        "{e}"
    );
}
