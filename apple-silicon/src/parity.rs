//! Numerical parity between two sets of outputs (two engines, or an engine
//! and a golden): L∞, RMSE and cosine similarity per output, judged against
//! per-precision budgets, with the worst element named.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::feature::{Dictionary, FeatureMap, FeatureValue};
use crate::tensor::{Tensor, TensorMap};

/// Arithmetic/storage precision of a model variant, which sets its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Fp16,
    /// 8-bit (or smaller: palettized, sparse) compressed weights.
    Int8,
}

impl Precision {
    /// Reads the manifest spellings: `fp32`, `fp16`, and quantizations
    /// `int8`, `palettized*`, `sparse*` (which take the int8 budget).
    pub fn from_manifest(precision: &str, quantization: &str) -> Precision {
        let q = quantization.to_ascii_lowercase();
        if q.starts_with("int8") || q.starts_with("palettized") || q.starts_with("sparse") || q.starts_with("int4") {
            Precision::Int8
        } else if precision.eq_ignore_ascii_case("fp16") {
            Precision::Fp16
        } else {
            Precision::Fp32
        }
    }
}

/// Largest allowed differences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Largest absolute difference of any element.
    pub l_inf: f64,
    /// Root mean square difference.
    pub rmse: f64,
}

impl Thresholds {
    /// The plan's budgets: fp32 L∞ ≤ 1e-4, RMSE ≤ 1e-5; fp16 L∞ ≤ 1e-2,
    /// RMSE ≤ 1e-3; int8 L∞ ≤ 5e-2, RMSE ≤ 5e-3.
    pub fn for_precision(p: Precision) -> Thresholds {
        match p {
            Precision::Fp32 => Thresholds {
                l_inf: 1e-4,
                rmse: 1e-5,
            },
            Precision::Fp16 => Thresholds {
                l_inf: 1e-2,
                rmse: 1e-3,
            },
            Precision::Int8 => Thresholds {
                l_inf: 5e-2,
                rmse: 5e-3,
            },
        }
    }
}

/// Differences of one output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputParity {
    /// Output name.
    pub name: String,
    /// Largest absolute difference.
    pub l_inf: f64,
    /// Root mean square difference.
    pub rmse: f64,
    /// Cosine similarity of the two outputs as vectors.
    pub cosine: f64,
    /// Flat index of the largest difference.
    pub worst_index: usize,
    /// Values at the worst index (a, b).
    pub worst_values: (f64, f64),
    /// Number of elements compared.
    pub elements: usize,
    /// Elements where exactly one side is NaN.
    pub nan_mismatches: usize,
    /// For features compared exactly (strings, labels, int64, dictionary
    /// keys, sequences, images): how they differ; `None` when they agree or
    /// the output is compared by value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
}

/// Parity of every output, and the verdict against thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityReport {
    /// Per output, sorted by name.
    pub outputs: Vec<OutputParity>,
    /// Budgets applied.
    pub thresholds: Thresholds,
    /// Whether every output is within both budgets.
    pub passed: bool,
}

impl ParityReport {
    /// The output with the largest L∞.
    pub fn worst(&self) -> Option<&OutputParity> {
        self.outputs.iter().max_by(|a, b| a.l_inf.total_cmp(&b.l_inf))
    }
}

impl fmt::Display for ParityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:>12} {:>12} {:>10}  worst element",
            "output", "L∞", "RMSE", "cosine"
        )?;
        for o in &self.outputs {
            writeln!(
                f,
                "{:<24} {:>12.3e} {:>12.3e} {:>10.6}  [{}] {:.6} vs {:.6}{}",
                o.name,
                o.l_inf,
                o.rmse,
                o.cosine,
                o.worst_index,
                o.worst_values.0,
                o.worst_values.1,
                if o.nan_mismatches > 0 {
                    format!(" ({} NaN mismatches)", o.nan_mismatches)
                } else {
                    String::new()
                }
            )?;
            if let Some(m) = &o.mismatch {
                writeln!(f, "{:<24} differs: {m}", o.name)?;
            }
        }
        write!(
            f,
            "budget L∞ ≤ {:.0e}, RMSE ≤ {:.0e}: {}",
            self.thresholds.l_inf,
            self.thresholds.rmse,
            if self.passed { "PASS" } else { "FAIL" }
        )
    }
}

/// Compares `a` against `b` output by output. Both maps must hold the same
/// names with the same shapes (dtypes may differ: values compare as f64).
/// Costs one pass over every element.
pub fn compare(a: &TensorMap, b: &TensorMap, thresholds: Thresholds) -> Result<ParityReport> {
    same_names(a.keys(), b.keys())?;
    let mut outputs = Vec::new();
    for (name, ta) in a {
        outputs.push(compare_tensor(name, ta, &b[name])?);
    }
    Ok(report(outputs, thresholds))
}

/// Both runs produced the same output names (maps iterate sorted).
fn same_names<'a>(a: impl Iterator<Item = &'a String>, b: impl Iterator<Item = &'a String>) -> Result<()> {
    let (names_a, names_b): (Vec<&String>, Vec<&String>) = (a.collect(), b.collect());
    if names_a != names_b {
        return Err(Error::schema_mismatch(
            "compared outputs",
            format!("{names_b:?}"),
            format!("{names_a:?}"),
        ));
    }
    Ok(())
}

/// One tensor output of both runs: shapes must agree, values compare as f64.
fn compare_tensor(name: &str, ta: &Tensor, tb: &Tensor) -> Result<OutputParity> {
    if ta.shape() != tb.shape() {
        return Err(Error::schema_mismatch(
            format!("shape of output `{name}`"),
            format!("{:?}", tb.shape()),
            format!("{:?}", ta.shape()),
        ));
    }
    Ok(compare_values(name, &ta.to_f64_vec(), &tb.to_f64_vec()))
}

fn report(outputs: Vec<OutputParity>, thresholds: Thresholds) -> ParityReport {
    let passed = outputs.iter().all(|o| {
        o.mismatch.is_none() && o.nan_mismatches == 0 && o.l_inf <= thresholds.l_inf && o.rmse <= thresholds.rmse
    });
    ParityReport {
        outputs,
        thresholds,
        passed,
    }
}

/// Compares feature outputs ([`crate::feature::FeatureValue`]) of two runs:
/// tensors and doubles by value against `thresholds`, a dictionary's
/// probabilities by value once its keys agree in order; strings (labels),
/// int64s, sequences, images and dictionary keys exactly (a difference is a
/// [`OutputParity::mismatch`] and fails the report). Both maps must hold the
/// same names with the same kinds and shapes. Costs one pass over every value.
pub fn compare_features(a: &FeatureMap, b: &FeatureMap, thresholds: Thresholds) -> Result<ParityReport> {
    same_names(a.keys(), b.keys())?;
    let mut outputs = Vec::new();
    for (name, va) in a {
        let vb = &b[name];
        let exact = |same: bool, what: String| {
            let mut o = compare_values(name, &[], &[]);
            o.elements = 1;
            o.mismatch = (!same).then_some(what);
            o
        };
        let o = match (va, vb) {
            (FeatureValue::Tensor(ta), FeatureValue::Tensor(tb)) => compare_tensor(name, ta, tb)?,
            (FeatureValue::Double(x), FeatureValue::Double(y)) => compare_values(name, &[*x], &[*y]),
            (FeatureValue::Dictionary(da), FeatureValue::Dictionary(db)) => {
                let (ka, pa) = dict_parts(da);
                let (kb, pb) = dict_parts(db);
                if ka != kb {
                    let at = ka
                        .iter()
                        .zip(&kb)
                        .position(|(x, y)| x != y)
                        .unwrap_or(ka.len().min(kb.len()));
                    exact(
                        false,
                        format!(
                            "keys differ at entry {at} ({:?} vs {:?}; {} vs {} entries)",
                            ka.get(at),
                            kb.get(at),
                            ka.len(),
                            kb.len()
                        ),
                    )
                } else {
                    compare_values(name, &pa, &pb)
                }
            }
            (FeatureValue::String(x), FeatureValue::String(y)) => exact(x == y, format!("{x:?} vs {y:?}")),
            (FeatureValue::Int64(x), FeatureValue::Int64(y)) => exact(x == y, format!("{x} vs {y}")),
            (FeatureValue::Sequence(x), FeatureValue::Sequence(y)) => exact(x == y, "the sequences differ".to_string()),
            (FeatureValue::Image(x), FeatureValue::Image(y)) => exact(x == y, "the images differ".to_string()),
            (x, y) => {
                return Err(Error::schema_mismatch(
                    format!("kind of output `{name}`"),
                    y.kind_name(),
                    x.kind_name(),
                ))
            }
        };
        outputs.push(o);
    }
    Ok(report(outputs, thresholds))
}

/// A dictionary's keys (as text) and values, in order.
fn dict_parts(d: &Dictionary) -> (Vec<String>, Vec<f64>) {
    match d {
        Dictionary::Strings(v) => v.iter().map(|(k, p)| (k.clone(), *p)).unzip(),
        Dictionary::Int64(v) => v.iter().map(|(k, p)| (k.to_string(), *p)).unzip(),
    }
}

fn compare_values(name: &str, a: &[f64], b: &[f64]) -> OutputParity {
    let mut l_inf = 0f64;
    let mut worst = 0usize;
    let mut sq = 0f64;
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    let mut nan_mismatches = 0;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x.is_nan() || y.is_nan() {
            if x.is_nan() != y.is_nan() {
                nan_mismatches += 1;
            }
            continue;
        }
        let d = (x - y).abs();
        if d > l_inf {
            l_inf = d;
            worst = i;
        }
        sq += d * d;
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let n = a.len().max(1) as f64;
    let cosine = if na == 0.0 && nb == 0.0 {
        1.0
    } else if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    };
    OutputParity {
        name: name.to_string(),
        l_inf,
        rmse: (sq / n).sqrt(),
        cosine,
        worst_index: worst,
        worst_values: (
            a.get(worst).copied().unwrap_or(0.0),
            b.get(worst).copied().unwrap_or(0.0),
        ),
        elements: a.len(),
        nan_mismatches,
        mismatch: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn map(v: Vec<f32>) -> TensorMap {
        TensorMap::from([("y".to_string(), Tensor::from_vec(vec![v.len()], v).unwrap())])
    }

    #[test]
    fn metrics_and_worst_element() {
        let a = map(vec![1.0, 2.0, 3.0, 4.0]);
        let b = map(vec![1.0, 2.5, 3.0, 4.0]);
        let r = compare(&a, &b, Thresholds::for_precision(Precision::Int8)).unwrap();
        let o = &r.outputs[0];
        assert_eq!(o.l_inf, 0.5);
        assert!((o.rmse - 0.25).abs() < 1e-12);
        assert_eq!(o.worst_index, 1);
        assert_eq!(o.worst_values, (2.0, 2.5));
        assert!(o.cosine > 0.99 && o.cosine < 1.0);
        assert!(!r.passed);
        assert!(r.to_string().contains("FAIL"));
        let same = compare(&a, &a, Thresholds::for_precision(Precision::Fp32)).unwrap();
        assert!(same.passed && same.outputs[0].l_inf == 0.0 && same.outputs[0].cosine == 1.0);
    }

    #[test]
    fn nan_on_one_side_fails() {
        let a = map(vec![1.0, f32::NAN]);
        let b = map(vec![1.0, 2.0]);
        let r = compare(&a, &b, Thresholds::for_precision(Precision::Int8)).unwrap();
        assert_eq!(r.outputs[0].nan_mismatches, 1);
        assert!(!r.passed);
    }

    #[test]
    fn mismatched_names_and_shapes_are_errors() {
        let a = map(vec![1.0, 2.0]);
        let mut b = a.clone();
        b.insert("z".into(), Tensor::from_vec(vec![1], vec![0f32]).unwrap());
        assert!(compare(&a, &b, Thresholds::for_precision(Precision::Fp32)).is_err());
        let c = map(vec![1.0, 2.0, 3.0]);
        let e = compare(&a, &c, Thresholds::for_precision(Precision::Fp32)).unwrap_err();
        assert!(e.to_string().contains("shape of output `y`"), "{e}");
    }

    #[test]
    fn features_compare_labels_exactly_and_probabilities_by_value() {
        let out = |label: &str, p: f64, keys: [&str; 2]| {
            FeatureMap::from([
                ("label".to_string(), FeatureValue::String(label.into())),
                (
                    "probs".to_string(),
                    FeatureValue::Dictionary(Dictionary::Strings(vec![
                        (keys[0].into(), p),
                        (keys[1].into(), 1.0 - p),
                    ])),
                ),
            ])
        };
        let t = Thresholds::for_precision(Precision::Fp32);
        let r = compare_features(
            &out("cat", 0.7, ["cat", "dog"]),
            &out("cat", 0.700005, ["cat", "dog"]),
            t,
        )
        .unwrap();
        assert!(r.passed, "{r}");
        assert!((r.outputs[1].l_inf - 5e-6).abs() < 1e-9);
        let r = compare_features(&out("cat", 0.7, ["cat", "dog"]), &out("dog", 0.7, ["cat", "dog"]), t).unwrap();
        assert!(!r.passed);
        assert_eq!(r.outputs[0].mismatch.as_deref(), Some("\"cat\" vs \"dog\""));
        assert!(
            r.to_string()
                .contains("label                    differs: \"cat\" vs \"dog\""),
            "{r}"
        );
        let r = compare_features(&out("cat", 0.7, ["cat", "dog"]), &out("cat", 0.7, ["dog", "cat"]), t).unwrap();
        assert!(!r.passed);
        assert!(
            r.outputs[1]
                .mismatch
                .as_ref()
                .unwrap()
                .contains("keys differ at entry 0"),
            "{r}"
        );
        let mut other = out("cat", 0.7, ["cat", "dog"]);
        other.insert("label".into(), FeatureValue::Int64(1));
        let e = compare_features(&out("cat", 0.7, ["cat", "dog"]), &other, t).unwrap_err();
        assert!(
            e.to_string()
                .contains("kind of output `label`: expected an int64, got a string"),
            "{e}"
        );
    }

    #[test]
    fn manifest_precisions() {
        assert_eq!(Precision::from_manifest("fp16", "palettized4"), Precision::Int8);
        assert_eq!(Precision::from_manifest("fp16", "none"), Precision::Fp16);
        assert_eq!(Precision::from_manifest("fp32", "none"), Precision::Fp32);
        assert_eq!(Precision::from_manifest("fp16", "sparse50"), Precision::Int8);
    }
}
