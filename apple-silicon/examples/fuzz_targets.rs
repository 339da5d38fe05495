//! Fuzz targets and mutators shared by the `fuzz` example (the loop) and
//! `tests/fuzz_regressions.rs` (the kept crashes and corpus, replayed).
//!
//! A case is bytes for one target: a `.npy` file, a `weight.bin`, a spec
//! (`model.mlmodel`, also what structure-aware program mutation produces)
//! or a `Manifest.json`. Package targets write the bytes into a copy of a
//! fixture package and open, build and run it under a small memory budget.
//! A case *crashes* when it panics past the library (or the library reports
//! a panic it caught), aborts, or hangs; any `Err` is a correct answer.
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use apple_silicon::mil::{FloatPolicy, Plan};
use apple_silicon::milblob::WeightFile;
use apple_silicon::mlpackage::MlPackage;
use apple_silicon::{ErrorKind, Tensor, TensorMap};
use coreml_proto::proto::mil_spec::{
    self, argument::binding::Binding, dimension, tensor_value, value, Block, Operation, Value,
};
use coreml_proto::proto::{model, Model};
use prost::Message;

/// Memory budget of every package case: far below what would hurt the host.
pub const BUDGET: u64 = 64 << 20;

/// The fixture packages mutated (small, committed).
pub const FIXTURES: [&str; 6] = [
    "mlp_fp32",
    "cnn_fp32",
    "mlp_fp16",
    "mlp_palettized",
    "mlp_sparse",
    "cnn_int8",
];

/// What a case feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Npy,
    Weights,
    Spec,
    Manifest,
    Program,
}

impl Target {
    /// All targets, in the order the loop cycles through them.
    pub const ALL: [Target; 5] = [
        Target::Npy,
        Target::Weights,
        Target::Spec,
        Target::Manifest,
        Target::Program,
    ];

    /// Its name in file names.
    pub fn name(self) -> &'static str {
        match self {
            Target::Npy => "npy",
            Target::Weights => "weights",
            Target::Spec => "spec",
            Target::Manifest => "manifest",
            Target::Program => "program",
        }
    }

    /// The target named `s`.
    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// The repository root (where `tests/fixtures` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture's package directory.
pub fn fixture_package(fixture: &str) -> PathBuf {
    repo_root()
        .join("tests/fixtures/models")
        .join(fixture)
        .join("model.mlpackage")
}

const SPEC_REL: &str = "Data/com.apple.CoreML/model.mlmodel";
const WEIGHTS_REL: &str = "Data/com.apple.CoreML/weights/weight.bin";

/// The seed bytes of `target` from `fixture`.
pub fn seed_bytes(target: Target, fixture: &str) -> Vec<u8> {
    let pkg = fixture_package(fixture);
    let p = match target {
        Target::Npy => {
            let dir = repo_root().join("tests/fixtures/models").join(fixture).join("inputs");
            let first = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .min()
                .unwrap();
            return std::fs::read(first).unwrap();
        }
        Target::Weights => pkg.join(WEIGHTS_REL),
        Target::Spec | Target::Program => pkg.join(SPEC_REL),
        Target::Manifest => pkg.join("Manifest.json"),
    };
    std::fs::read(p).unwrap()
}

/// How a case ended, when it did not crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Err(ErrorKind),
}

/// Runs one case; `Err` is a crash (its message). `scratch` is a directory
/// the case may overwrite.
pub fn run_case(target: Target, fixture: &str, bytes: &[u8], scratch: &Path) -> Result<Outcome, String> {
    let r = catch_unwind(AssertUnwindSafe(|| run_case_inner(target, fixture, bytes, scratch)));
    match r {
        Ok(Ok(())) => Ok(Outcome::Ok),
        Ok(Err(e)) => {
            let msg = e.to_string();
            if e.kind() == ErrorKind::Internal && msg.contains("panicked") {
                Err(format!("caught panic: {msg}"))
            } else {
                Ok(Outcome::Err(e.kind()))
            }
        }
        Err(p) => Err(format!(
            "panic: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

fn run_case_inner(target: Target, fixture: &str, bytes: &[u8], scratch: &Path) -> apple_silicon::Result<()> {
    match target {
        Target::Npy => Tensor::from_npy_bytes(bytes).map(|_| ()),
        Target::Weights => {
            let w = WeightFile::from_bytes(bytes.to_vec(), "<fuzz>/weight.bin")?;
            // Every blob the fixture's program names, at its offset.
            for off in [64u64, 128, 192, 256, 320, 384, 448, 512, 1024, 4096] {
                if let Ok(b) = w.blob(off) {
                    let _ = b.to_f32();
                    let _ = b.to_i64();
                }
            }
            Ok(())
        }
        Target::Spec | Target::Program | Target::Manifest => {
            let pkg_dir = scratch.join("case.mlpackage");
            let rel = if target == Target::Manifest {
                "Manifest.json"
            } else {
                SPEC_REL
            };
            // The harness's own I/O failing (a full disk) is no finding.
            let staged = copy_package(&fixture_package(fixture), &pkg_dir)
                .and_then(|_| std::fs::write(pkg_dir.join(rel), bytes));
            if let Err(e) = staged {
                eprintln!("fuzz: skipping a case, cannot stage it: {e}");
                return Ok(());
            }
            let pkg = MlPackage::open(&pkg_dir)?;
            let plan = Plan::build_budgeted(&pkg, FloatPolicy::Upcast, Some(BUDGET))?;
            let mut inputs = TensorMap::new();
            for s in &pkg.io_schema().inputs {
                // The harness's own allocation: keep it small.
                if s.shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .is_none_or(|n| n > 1 << 20)
                {
                    return Ok(());
                }
                inputs.insert(s.name.clone(), Tensor::zeros(s.dtype, s.shape.clone())?);
            }
            plan.run(&inputs).map(|_| ())
        }
    }
}

fn copy_package(from: &Path, to: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(to);
    for rel in ["Manifest.json", SPEC_REL, WEIGHTS_REL] {
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().expect("a relative path"))?;
        std::fs::copy(from.join(rel), dst)?;
    }
    Ok(())
}

/// A small seeded generator (splitmix64): the same seed, the same cases.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Integers that break size arithmetic.
const INTERESTING: [i64; 16] = [
    0,
    -1,
    1,
    2,
    3,
    7,
    255,
    256,
    65535,
    1 << 31,
    (1 << 31) - 1,
    1 << 32,
    1 << 40,
    i64::MAX,
    i64::MIN,
    -(1 << 40),
];

/// Byte-level mutation: flips, interesting bytes, splices of runs,
/// truncation and growth.
pub fn mutate_bytes(data: &mut Vec<u8>, rng: &mut Rng) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if data.is_empty() {
            data.push(rng.next() as u8);
            continue;
        }
        let i = rng.below(data.len());
        match rng.below(7) {
            0 => data[i] ^= 1 << rng.below(8),
            1 => data[i] = [0u8, 0xff, 0x7f, 0x80, 1][rng.below(5)],
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 {
                    (v as u32).to_le_bytes().to_vec()
                } else {
                    v.to_le_bytes().to_vec()
                };
                for (k, b) in bytes.into_iter().enumerate() {
                    if i + k < data.len() {
                        data[i + k] = b;
                    }
                }
            }
            3 => data.truncate(i),
            4 => {
                let n = 1 + rng.below(16);
                let b = rng.next() as u8;
                data.splice(i..i, std::iter::repeat_n(b, n));
            }
            5 => {
                let j = rng.below(data.len());
                let n = rng.below(32).min(data.len() - i).min(data.len() - j);
                let run: Vec<u8> = data[j..j + n].to_vec();
                data[i..i + n].copy_from_slice(&run);
            }
            _ => {
                let n = rng.below(16).min(data.len() - i);
                data.drain(i..i + n);
            }
        }
    }
}

/// The main block of a decoded spec.
fn main_block(m: &mut Model) -> Option<&mut Block> {
    let Some(model::Type::MlProgram(p)) = m.r#type.as_mut() else {
        return None;
    };
    let f = p.functions.get_mut("main")?;
    let opset = f.opset.clone();
    f.block_specializations.get_mut(&opset)
}

/// Every constant value of an op (attributes and bound values).
fn values_of(op: &mut Operation) -> Vec<&mut Value> {
    let mut v: Vec<&mut Value> = op.attributes.values_mut().collect();
    for a in op.inputs.values_mut() {
        for b in &mut a.arguments {
            if let Some(Binding::Value(val)) = b.binding.as_mut() {
                v.push(val);
            }
        }
    }
    v
}

/// Op types swapped in: every family, so kernels meet unexpected operands.
const OP_TYPES: [&str; 20] = [
    "tile",
    "pad",
    "concat",
    "split",
    "reshape",
    "transpose",
    "conv",
    "max_pool",
    "avg_pool",
    "matmul",
    "linear",
    "add",
    "mul",
    "reduce_mean",
    "softmax",
    "gather",
    "slice_by_index",
    "expand_dims",
    "squeeze",
    "layer_norm",
];

/// Structure-aware mutation of a program: op types, shapes (type
/// dimensions), attribute and argument values, wiring, op order. Returns
/// `None` when `spec` does not decode (then byte mutation serves).
pub fn mutate_program(spec: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut m = Model::decode(spec).ok()?;
    let block = main_block(&mut m)?;
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let n = block.operations.len();
        if n == 0 {
            break;
        }
        let names: Vec<String> = block
            .operations
            .iter()
            .flat_map(|o| o.outputs.iter().map(|x| x.name.clone()))
            .collect();
        let op = &mut block.operations[rng.below(n)];
        match rng.below(8) {
            0 => op.r#type = OP_TYPES[rng.below(OP_TYPES.len())].to_string(),
            1 | 2 => {
                let mut vals = values_of(op);
                if vals.is_empty() {
                    continue;
                }
                let k = rng.below(vals.len());
                mutate_value(vals.swap_remove(k), rng);
            }
            3 => {
                // Rewire an argument to another value of the program.
                let keys: Vec<String> = op.inputs.keys().cloned().collect();
                if keys.is_empty() || names.is_empty() {
                    continue;
                }
                let a = op.inputs.get_mut(&keys[rng.below(keys.len())]).unwrap();
                let name = names[rng.below(names.len())].clone();
                match rng.below(3) {
                    0 => a.arguments.clear(),
                    1 => a.arguments.push(a.arguments.first().cloned().unwrap_or_default()),
                    _ => {
                        for b in &mut a.arguments {
                            b.binding = Some(Binding::Name(name.clone()));
                        }
                    }
                }
            }
            4 => {
                let keys: Vec<String> = op.inputs.keys().cloned().collect();
                if !keys.is_empty() {
                    op.inputs.remove(&keys[rng.below(keys.len())]);
                }
            }
            5 => {
                if let Some(o) = op.outputs.first_mut() {
                    mutate_type(o.r#type.as_mut(), rng);
                }
            }
            6 => {
                let i = rng.below(n);
                let j = rng.below(n);
                block.operations.swap(i, j);
            }
            _ => {
                let i = rng.below(n);
                if rng.below(2) == 0 {
                    block.operations.remove(i);
                } else {
                    let dup = block.operations[i].clone();
                    block.operations.insert(rng.below(n), dup);
                }
            }
        }
    }
    Some(m.encode_to_vec())
}

fn mutate_type(t: Option<&mut mil_spec::ValueType>, rng: &mut Rng) {
    let Some(mil_spec::value_type::Type::TensorType(tt)) = t.and_then(|t| t.r#type.as_mut()) else {
        return;
    };
    match rng.below(4) {
        0 => tt.data_type = rng.below(30) as i32,
        1 if !tt.dimensions.is_empty() => {
            tt.dimensions.pop();
        }
        2 => tt.dimensions.push(mil_spec::Dimension {
            dimension: Some(dimension::Dimension::Constant(dimension::ConstantDimension {
                size: INTERESTING[rng.below(INTERESTING.len())] as u64,
            })),
        }),
        _ => {
            if tt.dimensions.is_empty() {
                return;
            }
            let i = rng.below(tt.dimensions.len());
            tt.dimensions[i].dimension = Some(dimension::Dimension::Constant(dimension::ConstantDimension {
                size: INTERESTING[rng.below(INTERESTING.len())] as u64,
            }));
        }
    }
}

fn mutate_value(v: &mut Value, rng: &mut Rng) {
    if rng.below(4) == 0 {
        mutate_type(v.r#type.as_mut(), rng);
        return;
    }
    let Some(value::Value::ImmediateValue(iv)) = v.value.as_mut() else {
        mutate_type(v.r#type.as_mut(), rng);
        return;
    };
    let Some(value::immediate_value::Value::Tensor(t)) = iv.value.as_mut() else {
        return;
    };
    let x = INTERESTING[rng.below(INTERESTING.len())];
    match t.value.as_mut() {
        Some(tensor_value::Value::Ints(i)) => poke(&mut i.values, x as i32, rng),
        Some(tensor_value::Value::LongInts(i)) => poke(&mut i.values, x, rng),
        Some(tensor_value::Value::Floats(f)) => {
            let special = [0.0, -1.0, f32::NAN, f32::INFINITY, 1e30, x as f32][rng.below(6)];
            poke(&mut f.values, special, rng)
        }
        Some(tensor_value::Value::Bools(b)) => poke(&mut b.values, rng.below(2) == 0, rng),
        Some(tensor_value::Value::Bytes(b)) => mutate_bytes(&mut b.values, rng),
        Some(tensor_value::Value::Strings(s)) => {
            let pick = ["same", "valid", "custom", "replicate", "reflect", "fp16", "int32", ""][rng.below(8)];
            poke(&mut s.values, pick.to_string(), rng)
        }
        _ => {}
    }
}

fn poke<T: Clone>(v: &mut Vec<T>, x: T, rng: &mut Rng) {
    match rng.below(5) {
        0 => v.push(x),
        // Every element at once: sizes whose product overflows.
        3 => v.iter_mut().for_each(|e| *e = x.clone()),
        1 if !v.is_empty() => {
            v.pop();
        }
        _ if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] = x;
        }
        _ => v.push(x),
    }
}

/// A stable short hash of a case (file names of kept crashes).
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The file a case is kept in: `<target>-<fixture>-<hash>.bin`.
pub fn case_file_name(target: Target, fixture: &str, bytes: &[u8]) -> String {
    format!("{}-{fixture}-{:016x}.bin", target.name(), fnv(bytes))
}

/// Parses a kept case's file name back into its target and fixture.
pub fn parse_case_name(name: &str) -> Option<(Target, String)> {
    let stem = name.strip_suffix(".bin")?;
    let (t, rest) = stem.split_once('-')?;
    let (fixture, _) = rest.rsplit_once('-')?;
    Some((Target::parse(t)?, fixture.to_string()))
}
