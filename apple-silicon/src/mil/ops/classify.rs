//! Classifier outputs (coremltools `ops/defs/iOS15/classify.py`).
//!
//! Conventions: `classify` ends a classifier program; `classes` is a
//! constant list (int64 or string labels, one per probability). Its first
//! output is the label of the largest probability (the first on ties), its
//! second the probabilities keyed by label, which Core ML returns as a
//! dictionary; here it is the vector of probabilities in `classes` order.
//! String labels cannot be a tensor: with them the first output is the
//! class's index, which [`crate::feature::tensors_to_features`] turns into
//! the label (the package's schema carries the label set).

use candle_core::{DType as CDType, Device, Tensor};
use coreml_proto::proto::mil_spec::argument::binding::Binding;

use super::{Builder, CResult};
use crate::error::Result;
use crate::feature::ClassLabels;
use crate::mil::{Kernel, OpCtx};
use crate::mlpackage::class_labels;

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "classify" => classify,
        _ => return None,
    })
}

fn classify(c: &mut OpCtx) -> Result<Kernel> {
    let p = c.tensor("probabilities")?;
    let labels = match c
        .op
        .inputs
        .get("classes")
        .and_then(|a| a.arguments.first())
        .and_then(|a| a.binding.as_ref())
    {
        Some(Binding::Value(v)) => class_labels(v).map_err(|e| c.error(e))?,
        _ => return Err(c.error("`classes` must be a list literal")),
    };
    // String labels cannot be a tensor: the kernel gives the class index,
    // which the feature layer maps to its label (crate::feature).
    let classes: Vec<i64> = match labels {
        ClassLabels::Int64(v) => v,
        ClassLabels::Strings(v) => (0..v.len() as i64).collect(),
    };
    if classes.is_empty() {
        return Err(c.error("`classes` is empty"));
    }
    Ok(Box::new(move |a| {
        let (label, probs) = label_and_probs(&a[p].to_dtype(CDType::F32)?.flatten_all()?.to_vec1()?, &classes)?;
        Ok(vec![
            Tensor::new(label, &Device::Cpu)?,
            Tensor::from_vec(probs.clone(), probs.len(), &Device::Cpu)?,
        ])
    }))
}

/// The label of the largest probability (the first on ties) and the
/// probabilities, checked to be one per class.
fn label_and_probs(probs: &[f32], classes: &[i64]) -> CResult<(i64, Vec<f32>)> {
    if probs.len() != classes.len() {
        candle_core::bail!("{} probabilities for {} classes", probs.len(), classes.len())
    }
    let mut best = 0usize;
    for (i, &v) in probs.iter().enumerate() {
        if v > probs[best] {
            best = i;
        }
    }
    Ok((classes[best], probs.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_the_first_largest_probability() {
        let (l, p) = label_and_probs(&[0.1, 0.4, 0.4, 0.1], &[5, 6, 7, 8]).unwrap();
        assert_eq!(l, 6);
        assert_eq!(p, vec![0.1, 0.4, 0.4, 0.1]);
        assert_eq!(label_and_probs(&[0.9], &[-3]).unwrap().0, -3);
        let e = label_and_probs(&[0.5, 0.5], &[1, 2, 3]).unwrap_err().to_string();
        assert!(e.contains("2 probabilities for 3 classes"), "{e}");
    }
}
