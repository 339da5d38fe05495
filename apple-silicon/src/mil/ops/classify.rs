//! Classifier outputs (coremltools `ops/defs/iOS15/classify.py`).
//!
//! Conventions: `classify` ends a classifier program; `classes` is a
//! constant list (int64 or string labels, one per probability). Its first
//! output is the label of the largest probability (the first on ties), its
//! second the probabilities keyed by label, which Core ML returns as a
//! dictionary; here it is the vector of probabilities in `classes` order.
//! String labels cannot be a tensor and are refused at plan build. (Today
//! the package reader refuses a classifier's int64 / dictionary output
//! features before a plan is built; see tests/fixtures/conformance/KNOWN.json.)

use candle_core::{DType as CDType, Device, Tensor};
use coreml_proto::proto::mil_spec::{self, argument::binding::Binding, tensor_value, value};

use super::{Builder, CResult};
use crate::error::Result;
use crate::mil::{Kernel, OpCtx};

/// The builder for `op_type`, if this family has it.
pub(super) fn builder(op_type: &str) -> Option<Builder> {
    Some(match op_type {
        "classify" => classify,
        _ => return None,
    })
}

/// The int64 labels of a `classes` list literal, or why they are not.
fn int_labels(v: &mil_spec::Value) -> std::result::Result<Vec<i64>, String> {
    let Some(value::Value::ImmediateValue(iv)) = &v.value else {
        return Err("`classes` is not an immediate list".into());
    };
    let Some(value::immediate_value::Value::List(list)) = &iv.value else {
        return Err("`classes` is not a list".into());
    };
    list.values
        .iter()
        .map(|e| match &e.value {
            Some(value::Value::ImmediateValue(iv)) => match &iv.value {
                Some(value::immediate_value::Value::Tensor(t)) => match &t.value {
                    Some(tensor_value::Value::LongInts(l)) if l.values.len() == 1 => Ok(l.values[0]),
                    Some(tensor_value::Value::Ints(l)) if l.values.len() == 1 => Ok(l.values[0] as i64),
                    Some(tensor_value::Value::Strings(_)) => Err("string labels".to_string()),
                    _ => Err("a label that is not one int64".to_string()),
                },
                _ => Err("a label that is not a tensor".to_string()),
            },
            _ => Err("a label that is not an immediate value".to_string()),
        })
        .collect()
}

fn classify(c: &mut OpCtx) -> Result<Kernel> {
    let p = c.tensor("probabilities")?;
    let classes = match c
        .op
        .inputs
        .get("classes")
        .and_then(|a| a.arguments.first())
        .and_then(|a| a.binding.as_ref())
    {
        Some(Binding::Value(v)) => int_labels(v).map_err(|e| {
            if e == "string labels" {
                c.unsupported("parameter `classes` holds string labels (a string output is not a tensor)")
            } else {
                c.error(e)
            }
        })?,
        _ => return Err(c.error("`classes` must be a list literal")),
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
