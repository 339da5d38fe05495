//! Hostile programs (issue #13, items 3–4): sizes taken from the program —
//! `tile` reps, pad amounts, `constexpr_lut_to_dense` shapes, constants —
//! are checked against the memory budget before anything is allocated, and
//! degenerate ops (concat of nothing, pool or conv on a rank-1 constant)
//! are errors, not panics. Each case is a fixture package whose program is
//! rewritten here, small; before the fix several of them aborted the test
//! process (allocation failure) or panicked (exit 101).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apple_silicon::mil::{FloatPolicy, Plan};
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::{CandleEngine, ErrorKind, InferenceEngine, ModelArtifact, PrepareOptions, Tensor, TensorMap};
use coreml_proto::proto::mil_spec::{
    self, argument, argument::binding::Binding, dimension, tensor_value, value, Argument, DataType, Dimension,
    NamedValueType, Operation, TensorType, TensorValue, Value, ValueType,
};
use coreml_proto::proto::{model, Model};
use prost::Message;

const SPEC: &str = "Data/com.apple.CoreML/model.mlmodel";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
        .join("model.mlpackage")
}

/// A copy of fixture `name` in `dir` with its spec rewritten by `edit`.
fn rewritten(dir: &Path, name: &str, edit: impl FnOnce(&mut Model)) -> PathBuf {
    let src = fixture(name);
    let dst = dir.join(format!("{name}.mlpackage"));
    for rel in ["Manifest.json", SPEC, "Data/com.apple.CoreML/weights/weight.bin"] {
        std::fs::create_dir_all(dst.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), dst.join(rel)).unwrap();
    }
    let mut m = Model::decode(std::fs::read(dst.join(SPEC)).unwrap().as_slice()).unwrap();
    edit(&mut m);
    std::fs::write(dst.join(SPEC), m.encode_to_vec()).unwrap();
    dst
}

fn main_ops(m: &mut Model) -> &mut mil_spec::Block {
    let Some(model::Type::MlProgram(p)) = m.r#type.as_mut() else {
        panic!("not an ML Program")
    };
    let f = p.functions.get_mut("main").unwrap();
    let opset = f.opset.clone();
    f.block_specializations.get_mut(&opset).unwrap()
}

fn ty(dt: DataType, shape: &[u64]) -> ValueType {
    ValueType {
        r#type: Some(mil_spec::value_type::Type::TensorType(TensorType {
            data_type: dt as i32,
            rank: shape.len() as i64,
            dimensions: shape
                .iter()
                .map(|&s| Dimension {
                    dimension: Some(dimension::Dimension::Constant(dimension::ConstantDimension { size: s })),
                })
                .collect(),
            attributes: HashMap::new(),
        })),
    }
}

fn imm(t: ValueType, v: tensor_value::Value) -> Value {
    Value {
        doc_string: String::new(),
        r#type: Some(t),
        value: Some(value::Value::ImmediateValue(value::ImmediateValue {
            value: Some(value::immediate_value::Value::Tensor(TensorValue { value: Some(v) })),
        })),
    }
}

fn const_op(name: &str, val: Value) -> Operation {
    Operation {
        r#type: "const".into(),
        outputs: vec![NamedValueType {
            name: name.into(),
            r#type: val.r#type.clone(),
        }],
        attributes: HashMap::from([("val".to_string(), val)]),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> Operation {
    const_op(
        name,
        imm(
            ty(DataType::Int32, &[v.len() as u64]),
            tensor_value::Value::LongInts(tensor_value::RepeatedLongInts { values: v.to_vec() }),
        ),
    )
}

fn floats(name: &str, shape: &[u64], v: &[f32]) -> Operation {
    const_op(
        name,
        imm(
            ty(DataType::Float32, shape),
            tensor_value::Value::Floats(tensor_value::RepeatedFloats { values: v.to_vec() }),
        ),
    )
}

/// An op named `out` reading `args` (argument name → value names).
fn op(kind: &str, out: &str, args: &[(&str, &[&str])]) -> Operation {
    Operation {
        r#type: kind.into(),
        inputs: args
            .iter()
            .map(|(a, names)| {
                (
                    a.to_string(),
                    Argument {
                        arguments: names
                            .iter()
                            .map(|n| argument::Binding {
                                binding: Some(Binding::Name(n.to_string())),
                            })
                            .collect(),
                    },
                )
            })
            .collect(),
        outputs: vec![NamedValueType {
            name: out.into(),
            r#type: Some(ty(DataType::Float32, &[1, 10])),
        }],
        ..Default::default()
    }
}

/// `mlp_fp32` (input `x` f32[1, 64], output `logits`) with its program
/// replaced by `ops`, the last of which must define `logits`.
fn program(dir: &Path, ops: Vec<Operation>) -> PathBuf {
    rewritten(dir, "mlp_fp32", |m| {
        let b = main_ops(m);
        b.operations = ops;
        b.outputs = vec!["logits".into()];
    })
}

fn build(path: &Path) -> apple_silicon::Result<Plan> {
    Plan::build_budgeted(&MlPackage::open(path)?, FloatPolicy::Upcast, Some(64 << 20))
}

fn x() -> TensorMap {
    TensorMap::from([(
        "x".to_string(),
        Tensor::zeros(apple_silicon::DType::F32, vec![1, 64]).unwrap(),
    )])
}

fn assert_memory(e: &apple_silicon::Error, needle: &str) {
    assert_eq!(e.kind(), ErrorKind::MemoryPressure, "{e}");
    assert!(e.to_string().contains(needle), "`{needle}` not in: {e}");
}

#[test]
fn a_huge_tile_of_a_run_time_value_is_refused_at_run_time_naming_the_op() {
    let dir = tempfile::tempdir().unwrap();
    let p = program(
        dir.path(),
        vec![
            ints("reps", &[1, 1 << 40]),
            op("tile", "logits", &[("x", &["x"]), ("reps", &["reps"])]),
        ],
    );
    let plan = build(&p).unwrap();
    let e = plan.run(&x()).unwrap_err();
    assert_memory(&e, "op `logits` (tile): tile output of shape [1, 70368744177664]");
    // Through the engine, with its deadline worker: the same typed error.
    let engine = CandleEngine::new();
    let model = engine
        .prepare(
            &ModelArtifact::open(&p).unwrap(),
            PrepareOptions::default().with_memory_budget(64 << 20),
        )
        .unwrap();
    let e = engine.infer(&*model, &x(), Duration::from_secs(30)).unwrap_err();
    assert_memory(&e, "tile output");
}

#[test]
fn huge_tiles_and_pads_of_constants_are_refused_while_folding() {
    let dir = tempfile::tempdir().unwrap();
    let tile = program(
        dir.path(),
        vec![
            floats("z", &[1, 4], &[1.0, 2.0, 3.0, 4.0]),
            ints("reps", &[1 << 40, 1]),
            op("tile", "logits", &[("x", &["z"]), ("reps", &["reps"])]),
        ],
    );
    assert_memory(&build(&tile).unwrap_err(), "op `logits` (tile)");
    let dir = tempfile::tempdir().unwrap();
    let pad = program(
        dir.path(),
        vec![
            floats("z", &[1, 4], &[1.0, 2.0, 3.0, 4.0]),
            ints("pads", &[0, 1 << 40, 0, 0]),
            op("pad", "logits", &[("x", &["z"]), ("pad", &["pads"])]),
        ],
    );
    assert_memory(
        &build(&pad).unwrap_err(),
        "op `logits` (pad): padded tensor of shape [1099511627777, 4]",
    );
}

#[test]
fn a_lut_shape_whose_element_count_wraps_is_refused() {
    // 8192 · 517625 · 2175126601 = 2^63 + 8192 elements: 4-bit indices for
    // it "need" exactly the 4096 bytes present once the multiplication
    // wraps, which used to reach an allocation of 2^63 bytes (abort).
    let dir = tempfile::tempdir().unwrap();
    let p = rewritten(dir.path(), "mlp_palettized", |m| {
        let b = main_ops(m);
        let lut = b
            .operations
            .iter_mut()
            .find(|o| o.r#type == "constexpr_lut_to_dense")
            .unwrap();
        let dims: [u32; 3] = [8192, 517_625, 2_175_126_601];
        let bytes: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        lut.attributes.insert(
            "shape".into(),
            imm(
                ty(DataType::Uint32, &[3]),
                tensor_value::Value::Bytes(tensor_value::RepeatedBytes { values: bytes }),
            ),
        );
    });
    let e = build(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MemoryPressure, "{e}");
    assert!(e.to_string().contains("overflows"), "{e}");
}

#[test]
fn degenerate_folded_ops_are_errors_not_panics() {
    let cases: Vec<(&str, Vec<Operation>)> = vec![
        (
            "concat of nothing",
            vec![
                ints("axis", &[0]),
                op("concat", "logits", &[("values", &[]), ("axis", &["axis"])]),
            ],
        ),
        (
            "max_pool of a rank-1 constant",
            vec![
                floats("z", &[4], &[1.0, 2.0, 3.0, 4.0]),
                ints("k", &[1, 1]),
                op("max_pool", "logits", &[("x", &["z"]), ("kernel_sizes", &["k"])]),
            ],
        ),
        (
            "conv of a rank-1 constant",
            vec![
                floats("z", &[4], &[1.0, 2.0, 3.0, 4.0]),
                floats("w", &[1, 1, 1, 1], &[1.0]),
                op("conv", "logits", &[("x", &["z"]), ("weight", &["w"])]),
            ],
        ),
        (
            "avg_pool window larger than the input, ceil mode",
            vec![
                floats("z", &[1, 1, 1, 1], &[1.0]),
                ints("k", &[3, 3]),
                const_op(
                    "ceil",
                    imm(
                        ty(DataType::Bool, &[]),
                        tensor_value::Value::Bools(tensor_value::RepeatedBools { values: vec![true] }),
                    ),
                ),
                op(
                    "avg_pool",
                    "logits",
                    &[("x", &["z"]), ("kernel_sizes", &["k"]), ("ceil_mode", &["ceil"])],
                ),
            ],
        ),
        (
            "reshape to an element count that overflows",
            vec![
                floats("z", &[1, 4], &[1.0, 2.0, 3.0, 4.0]),
                ints("shape", &[1 << 40, 1 << 40, -1]),
                op("reshape", "logits", &[("x", &["z"]), ("shape", &["shape"])]),
            ],
        ),
        (
            "reshape to an element count that wraps to the input's",
            vec![
                floats("z", &[1, 4], &[1.0, 2.0, 3.0, 4.0]),
                ints("shape", &[1 << 32, (1 << 32) + 4]),
                op("reshape", "logits", &[("x", &["z"]), ("shape", &["shape"])]),
            ],
        ),
        (
            "split of an empty dim into 2^40 parts",
            vec![
                floats("z", &[0, 4], &[]),
                ints("axis", &[0]),
                ints("n", &[1 << 40]),
                op(
                    "split",
                    "logits",
                    &[("x", &["z"]), ("axis", &["axis"]), ("num_splits", &["n"])],
                ),
            ],
        ),
    ];
    for (what, ops) in cases {
        let dir = tempfile::tempdir().unwrap();
        let p = program(dir.path(), ops);
        match build(&p) {
            // The split yields its one declared output (empty): fine.
            Ok(_) => assert!(what.starts_with("split"), "{what}: built"),
            // Folded at build: the program's fault, a compile error.
            Err(e) => assert_eq!(e.kind(), ErrorKind::Compile, "{what}: {e}"),
        }
    }
}

#[test]
fn the_prepare_budget_bounds_the_constants() {
    let artifact = ModelArtifact::open(fixture("mlp_fp32")).unwrap();
    let engine = CandleEngine::new();
    let e = engine
        .prepare(&artifact, PrepareOptions::default().with_memory_budget(4096))
        .err()
        .unwrap();
    assert_memory(&e, "over the memory limit of 4096 bytes");
    // The default budget serves the same model.
    assert!(engine.prepare(&artifact, PrepareOptions::default()).is_ok());
}

#[test]
fn concat_and_stack_outputs_are_checked_against_the_run_limit() {
    // Each case's inputs total 48 bytes and so does its output: under a
    // 40-byte limit the op is refused before it allocates, at 48 it runs.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance/tensor_operation");
    for (case, what) in [("concat_axis1_three", "concat output"), ("stack_axis0", "stack output")] {
        let pkg = MlPackage::open(fixtures.join(case).join("model.mlpackage")).unwrap();
        let mut inputs = TensorMap::new();
        for e in std::fs::read_dir(fixtures.join(case).join("inputs")).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            inputs.insert(name, Tensor::read_npy(&p).unwrap());
        }
        let tight = Plan::build_budgeted(&pkg, FloatPolicy::Upcast, Some(40)).unwrap();
        assert_memory(&tight.run(&inputs).unwrap_err(), what);
        let enough = Plan::build_budgeted(&pkg, FloatPolicy::Upcast, Some(48)).unwrap();
        enough.run(&inputs).unwrap_or_else(|e| panic!("{case}: {e}"));
    }
}
