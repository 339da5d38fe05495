//! Comparing two `.mlpackage`s: what a conversion changed.
//!
//! The plan's `coreml-diff`: two packages are summarised ([`PackageSummary`]:
//! schema, metadata, specification version, weight storage, op histogram of
//! every function, and a sha256 of every weight blob a const references) and
//! compared field by field ([`compare`]). Use it in CI to see that a
//! re-conversion changed only what it meant to: the report says which inputs,
//! outputs, ops or weights differ, and [`DiffReport::matches`] is the verdict.
//!
//! Cost: one parse of each spec and one pass over the weight bytes the
//! program references (memory-mapped, hashed in place).

use std::collections::BTreeMap;

use coreml_proto::proto::mil_spec::{self, value};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::milblob::WeightFile;
use crate::mlpackage::MlPackage;

/// What [`compare`] looks at in one package.
#[derive(Debug, Clone, Serialize)]
pub struct PackageSummary {
    /// Core ML specification version.
    pub specification_version: i32,
    /// Weight storage, as [`MlPackage::quantization`] names it.
    pub weights: String,
    /// Each input as `dtype [shape] allowed`.
    pub inputs: BTreeMap<String, String>,
    /// Each output as `dtype [shape] allowed`.
    pub outputs: BTreeMap<String, String>,
    /// Description, author, license, version and user-defined metadata.
    pub metadata: BTreeMap<String, String>,
    /// Op type → count, over every function of the program (`function/op`
    /// keys when the program has more than one function).
    pub ops: BTreeMap<String, usize>,
    /// Const (or constexpr argument) name → sha256 of the blob bytes it
    /// references in the package's weight files, with the blob's dtype.
    pub weights_sha256: BTreeMap<String, String>,
}

impl PackageSummary {
    /// Summarises `pkg`. Reads every weight blob the program references once.
    pub fn of(pkg: &MlPackage) -> Result<PackageSummary> {
        let schema = pkg.io_schema();
        let describe = |s: &crate::inference::TensorSpec| format!("{} {:?} {}", s.dtype, s.shape, s.describe_allowed());
        let md = pkg.metadata();
        let mut metadata = BTreeMap::new();
        for (k, v) in [
            ("description", &md.short_description),
            ("author", &md.author),
            ("license", &md.license),
            ("version", &md.version),
        ] {
            if !v.is_empty() {
                metadata.insert(k.to_string(), v.clone());
            }
        }
        for (k, v) in &md.user_defined {
            metadata.insert(format!("user.{k}"), v.clone());
        }
        let mut ops = BTreeMap::new();
        let mut weights_sha256 = BTreeMap::new();
        let mut files: BTreeMap<String, WeightFile> = BTreeMap::new();
        let functions = &pkg.program().functions;
        let many = functions.len() > 1;
        for (fname, f) in functions {
            for block in f.block_specializations.values() {
                walk_block(pkg, block, fname, many, &mut ops, &mut weights_sha256, &mut files)?;
            }
        }
        Ok(PackageSummary {
            specification_version: pkg.specification_version(),
            weights: pkg.quantization(),
            inputs: schema.inputs.iter().map(|s| (s.name.clone(), describe(s))).collect(),
            outputs: schema.outputs.iter().map(|s| (s.name.clone(), describe(s))).collect(),
            metadata,
            ops,
            weights_sha256,
        })
    }
}

fn walk_block(
    pkg: &MlPackage,
    block: &mil_spec::Block,
    fname: &str,
    many: bool,
    ops: &mut BTreeMap<String, usize>,
    digests: &mut BTreeMap<String, String>,
    files: &mut BTreeMap<String, WeightFile>,
) -> Result<()> {
    for op in &block.operations {
        let key = if many {
            format!("{fname}/{}", op.r#type)
        } else {
            op.r#type.clone()
        };
        *ops.entry(key).or_default() += 1;
        let name = crate::mil::op_name(op);
        for (arg, v) in &op.attributes {
            if let Some(value::Value::BlobFileValue(b)) = &v.value {
                if !files.contains_key(&b.file_name) {
                    files.insert(b.file_name.clone(), pkg.open_weights(&b.file_name)?);
                }
                let blob = files[&b.file_name].blob(b.offset)?;
                let label = if arg == "val" {
                    name.clone()
                } else {
                    format!("{name}.{arg}")
                };
                let label = if many { format!("{fname}/{label}") } else { label };
                digests.insert(
                    label,
                    format!("{:?} {}", blob.dtype, hex::encode(Sha256::digest(blob.data))),
                );
            }
        }
        for inner in &op.blocks {
            walk_block(pkg, inner, fname, many, ops, digests, files)?;
        }
    }
    Ok(())
}

/// One difference between two packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Which part: `spec`, `weights`, `input`, `output`, `metadata`, `op`, `weight`.
    pub section: &'static str,
    /// The input, output, metadata key, op type or const name.
    pub item: String,
    /// Its value in the first package (`None`: absent there).
    pub a: Option<String>,
    /// Its value in the second package.
    pub b: Option<String>,
}

/// The result of [`compare`].
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// Every difference, grouped by section in a fixed order.
    pub differences: Vec<Difference>,
    /// How many items each section compared.
    pub compared: BTreeMap<&'static str, usize>,
    /// True when there is no difference.
    pub matches: bool,
}

fn diff_maps(
    section: &'static str,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
    out: &mut Vec<Difference>,
    compared: &mut BTreeMap<&'static str, usize>,
) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    compared.insert(section, keys.len());
    for k in keys {
        let (va, vb) = (a.get(k), b.get(k));
        if va != vb {
            out.push(Difference {
                section,
                item: k.clone(),
                a: va.cloned(),
                b: vb.cloned(),
            });
        }
    }
}

/// Compares two summaries field by field. Cheap (no I/O).
pub fn compare(a: &PackageSummary, b: &PackageSummary) -> DiffReport {
    let mut d = Vec::new();
    let mut compared = BTreeMap::new();
    let one = |s: &PackageSummary| {
        BTreeMap::from([
            ("specification_version".to_string(), s.specification_version.to_string()),
            ("weights".to_string(), s.weights.clone()),
        ])
    };
    diff_maps("spec", &one(a), &one(b), &mut d, &mut compared);
    diff_maps("input", &a.inputs, &b.inputs, &mut d, &mut compared);
    diff_maps("output", &a.outputs, &b.outputs, &mut d, &mut compared);
    diff_maps("metadata", &a.metadata, &b.metadata, &mut d, &mut compared);
    let counts = |m: &BTreeMap<String, usize>| m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    diff_maps("op", &counts(&a.ops), &counts(&b.ops), &mut d, &mut compared);
    diff_maps("weight", &a.weights_sha256, &b.weights_sha256, &mut d, &mut compared);
    DiffReport {
        matches: d.is_empty(),
        differences: d,
        compared,
    }
}

impl std::fmt::Display for DiffReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        for x in &self.differences {
            writeln!(f, "{:<9} {:<32} {}  |  {}", x.section, x.item, show(&x.a), show(&x.b))?;
        }
        let summary: Vec<String> = self
            .compared
            .iter()
            .map(|(s, n)| {
                let bad = self.differences.iter().filter(|x| x.section == *s).count();
                format!("{s} {}/{n}", n - bad)
            })
            .collect();
        write!(
            f,
            "{}: equal {}",
            if self.matches { "MATCH" } else { "DIFFERENT" },
            summary.join(", ")
        )
    }
}
