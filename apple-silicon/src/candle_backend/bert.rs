//! BERT-family sentence encoders from safetensors, run by candle-transformers'
//! own `BertModel`: an independent reference for ML Programs built from the
//! same weights (MiniLM is the first user).
//!
//! Layout: a directory with `model.safetensors` and `config.json`, and
//! optionally sentence-transformers' `modules.json` and
//! `1_Pooling/config.json`, which decide pooling (mean or CLS) and whether the
//! embedding is L2-normalised. Inputs are `input_ids` and `attention_mask`
//! (i32, `[batch, seq]`); the output is `embedding` (f32, `[batch, hidden]`).
//!
//! The encoder's layers are loaded one `BertEncoder` each (the weights of
//! layer i renamed into a one-layer stack) rather than as one `BertModel`, so
//! a run can stop between layers once its deadline has passed: the same
//! maths, with a cancellation point per layer.

use std::path::{Path, PathBuf};

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertEncoder as LayerStack, BertModel, Config};

use crate::cache::fsx::{self, Confined};
use crate::error::{Error, Result};
use crate::inference::{IoSchema, ShapeConstraint, TensorSpec};
use crate::mil::CancelFlag;
use crate::tensor::{DType, Tensor, TensorMap};

/// How token states become one sentence embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over tokens where `attention_mask` is 1.
    Mean,
    /// The first (`[CLS]`) token's state.
    Cls,
}

/// A loaded BERT encoder with its pooling head.
pub struct BertEncoder {
    /// Embeddings only (a model with zero layers).
    embeddings: BertModel,
    /// One single-layer stack per encoder layer, in order.
    layers: Vec<LayerStack>,
    pooling: Pooling,
    normalize: bool,
    schema: IoSchema,
    weight_bytes: u64,
}

/// Finds `model.safetensors` and `config.json` for `path` (a directory, or
/// the safetensors file itself with `config.json` beside it).
fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let weights = if path.is_dir() {
        dir.join("model.safetensors")
    } else {
        path.to_path_buf()
    };
    let config = dir.join("config.json");
    for p in [&weights, &config] {
        if !p.is_file() {
            return Err(Error::invalid_artifact(
                path,
                format!(
                    "{} is missing (a BERT safetensors model needs model.safetensors and config.json)",
                    p.display()
                ),
            ));
        }
    }
    Ok((weights, config))
}

/// A JSON file of the model directory larger than this is refused unread.
const MAX_JSON_BYTES: u64 = 16 << 20;

/// An optional JSON file of the model directory (opened without following
/// links, regular files only, capped); `None` when absent or unusable.
fn read_json(root: &Confined, rel: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&root.read(rel, MAX_JSON_BYTES).ok()?).ok()
}

impl BertEncoder {
    /// Loads config and memory-maps the weights. Costs parsing the config and
    /// mapping the file; weights are read as the model touches them.
    pub fn load(path: &Path, seq_len: usize) -> Result<BertEncoder> {
        let (weights, config_path) = locate(path)?;
        let dir = config_path.parent().unwrap_or(Path::new("."));
        let root = Confined::open(dir)?;
        let config_text = root.read("config.json", MAX_JSON_BYTES)?;
        // The weights must be a regular file (a FIFO would block the mapping's
        // open); inside a model directory, not a link either.
        if path.is_dir() {
            root.open_file("model.safetensors")?;
        } else {
            fsx::open_regular(&weights)?;
        }
        let raw: serde_json::Value = serde_json::from_slice(&config_text)
            .map_err(|e| Error::invalid_artifact(&config_path, format!("not JSON: {e}")))?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if model_type != "bert" {
            return Err(Error::unsupported(format!(
                "safetensors model of type `{model_type}` (the Candle engine knows the BERT family: model_type \"bert\")"
            )));
        }
        let config: Config = serde_json::from_value(raw.clone())
            .map_err(|e| Error::invalid_artifact(&config_path, format!("not a BERT config: {e}")))?;
        let pooling = match read_json(&root, "1_Pooling/config.json") {
            Some(p) if p.get("pooling_mode_cls_token").and_then(|v| v.as_bool()) == Some(true) => Pooling::Cls,
            _ => Pooling::Mean,
        };
        let normalize = read_json(&root, "modules.json").is_some_and(|m| m.to_string().contains("Normalize"));
        // SAFETY: the weights file is mapped read-only and treated as immutable.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], CDType::F32, &Device::Cpu) }
            .map_err(|e| Error::invalid_artifact(&weights, format!("not readable safetensors: {e}")))?;
        let load_err = |e: candle_core::Error| Error::Load {
            model: weights.display().to_string(),
            message: format!("building BERT from the weights: {e}"),
        };
        let embeddings = BertModel::load(
            vb.clone(),
            &Config {
                num_hidden_layers: 0,
                ..config.clone()
            },
        )
        .map_err(load_err)?;
        let prefix = ["encoder", "bert.encoder"]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}.layer.0.attention.self.query.weight")))
            .unwrap_or("encoder");
        let one_layer = Config {
            num_hidden_layers: 1,
            ..config.clone()
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let renamed = vb
                    .clone()
                    .rename_f(move |n: &str| n.replacen(".layer.0.", &format!(".layer.{i}."), 1));
                LayerStack::load(renamed.pp(prefix), &one_layer)
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(load_err)?;
        let max = raw
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .unwrap_or(512) as usize;
        let hidden = raw.get("hidden_size").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let token_spec = |name: &str| TensorSpec {
            name: name.into(),
            shape: vec![1, seq_len.min(max)],
            dtype: DType::I32,
            batch_capable: true,
            constraint: ShapeConstraint::Range(vec![(1, None), (1, Some(max))]),
            kind: Default::default(),
        };
        let schema = IoSchema {
            inputs: vec![token_spec("attention_mask"), token_spec("input_ids")],
            outputs: vec![TensorSpec {
                batch_capable: true,
                ..TensorSpec::fixed("embedding", DType::F32, vec![1, hidden])
            }],
            states: Vec::new(),
            classifier: None,
            functions: Default::default(),
        };
        let weight_bytes = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
        Ok(BertEncoder {
            embeddings,
            layers,
            pooling,
            normalize,
            schema,
            weight_bytes,
        })
    }

    /// Inputs and outputs.
    pub fn schema(&self) -> &IoSchema {
        &self.schema
    }

    /// Size of the weights file.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Pooling and normalisation, for reports.
    pub fn head(&self) -> (Pooling, bool) {
        (self.pooling, self.normalize)
    }

    /// Encodes a batch. `inputs` must already match the schema, and both
    /// inputs must have the same shape. Once `cancel` is set the run stops
    /// before the next layer with [`Error::Timeout`].
    pub fn run(&self, inputs: &TensorMap, cancel: Option<&CancelFlag>) -> Result<TensorMap> {
        let ids = &inputs["input_ids"];
        let mask = &inputs["attention_mask"];
        if ids.shape() != mask.shape() {
            return Err(Error::schema_mismatch(
                "shape of input `attention_mask`",
                format!("the shape of `input_ids`, {:?}", ids.shape()),
                format!("{:?}", mask.shape()),
            ));
        }
        match self.forward(ids, mask, cancel) {
            Ok(Some(out)) => Ok(out),
            Ok(None) => Err(Error::Timeout {
                operation: format!("BERT encoder (stopped before a layer of {})", self.layers.len()),
                after: std::time::Duration::ZERO,
            }),
            Err(e) => Err(Error::internal(format!("BERT forward failed: {e}"))),
        }
    }

    /// The embedding, or `None` when cancelled between layers.
    fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        cancel: Option<&CancelFlag>,
    ) -> candle_core::Result<Option<TensorMap>> {
        let dev = &Device::Cpu;
        let to_i64 = |t: &Tensor| -> candle_core::Result<CTensor> {
            let v: Vec<i64> = t.to_f64_vec().into_iter().map(|x| x as i64).collect();
            CTensor::from_vec(v, t.shape(), dev)
        };
        let ids_t = to_i64(ids)?;
        let mask_t = to_i64(mask)?;
        let types = ids_t.zeros_like()?;
        let mut states = self.embeddings.forward(&ids_t, &types, Some(&mask_t))?;
        // BERT's additive mask: 0 where attended, f32::MIN where padded.
        let keep = mask_t.to_dtype(CDType::F32)?.unsqueeze(1)?.unsqueeze(1)?;
        let additive = ((keep.ones_like()? - &keep)? * f64::from(f32::MIN))?;
        for layer in &self.layers {
            if cancel.is_some_and(|c| c.check_deadline()) {
                return Ok(None);
            }
            states = layer.forward(&states, &additive)?;
        }
        let pooled = match self.pooling {
            Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask_t.to_dtype(CDType::F32)?.unsqueeze(2)?;
                let summed = states.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                summed.broadcast_div(&count)?
            }
        };
        let emb = if self.normalize {
            let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        let shape = emb.dims().to_vec();
        let values = emb.flatten_all()?.to_vec1::<f32>()?;
        let t = Tensor::from_vec(shape, values).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Some(TensorMap::from([("embedding".to_string(), t)])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_run_stops_between_layers_and_an_uncancelled_one_does_not() {
        let dir = crate::golden::models_dir().join("minilm_l6_safetensors");
        assert!(
            dir.join("model.safetensors").is_file(),
            "{} is missing: run `make download-models`",
            dir.display()
        );
        let enc = BertEncoder::load(&dir, 8).unwrap();
        assert_eq!(enc.layers.len(), 6, "MiniLM-L6 has six layers, one stack each");
        let ids = Tensor::from_vec(vec![1, 8], vec![101i32, 7592, 2088, 2003, 1037, 3231, 102, 0]).unwrap();
        let mask = Tensor::from_vec(vec![1, 8], vec![1i32, 1, 1, 1, 1, 1, 1, 0]).unwrap();
        let inputs = TensorMap::from([("input_ids".to_string(), ids), ("attention_mask".to_string(), mask)]);
        let out = enc.run(&inputs, Some(&CancelFlag::new())).unwrap();
        let e = out["embedding"].to_f32_vec();
        let norm: f32 = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "an L2-normalised embedding, got norm {norm}");
        let cancel = CancelFlag::new();
        cancel.cancel();
        let err = enc.run(&inputs, Some(&cancel)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Timeout, "{err}");
    }
}
