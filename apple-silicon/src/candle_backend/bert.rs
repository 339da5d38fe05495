//! BERT-family sentence encoders from safetensors, run by candle-transformers'
//! own `BertModel`: an independent reference for ML Programs built from the
//! same weights (MiniLM is the first user).
//!
//! Layout: a directory with `model.safetensors` and `config.json`, and
//! optionally sentence-transformers' `modules.json` and
//! `1_Pooling/config.json`, which decide pooling (mean or CLS) and whether the
//! embedding is L2-normalised. Inputs are `input_ids` and `attention_mask`
//! (i32, `[batch, seq]`); the output is `embedding` (f32, `[batch, hidden]`).

use std::path::{Path, PathBuf};

use candle_core::{DType as CDType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use crate::cache::fsx::{self, Confined};
use crate::error::{Error, Result};
use crate::inference::{IoSchema, ShapeConstraint, TensorSpec};
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
    model: BertModel,
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
        let model = BertModel::load(vb, &config).map_err(|e| Error::Load {
            model: weights.display().to_string(),
            message: format!("building BERT from the weights: {e}"),
        })?;
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
        };
        let weight_bytes = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
        Ok(BertEncoder {
            model,
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
    /// inputs must have the same shape.
    pub fn run(&self, inputs: &TensorMap) -> Result<TensorMap> {
        let ids = &inputs["input_ids"];
        let mask = &inputs["attention_mask"];
        if ids.shape() != mask.shape() {
            return Err(Error::schema_mismatch(
                "shape of input `attention_mask`",
                format!("the shape of `input_ids`, {:?}", ids.shape()),
                format!("{:?}", mask.shape()),
            ));
        }
        self.forward(ids, mask)
            .map_err(|e| Error::internal(format!("BERT forward failed: {e}")))
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<TensorMap> {
        let dev = &Device::Cpu;
        let to_i64 = |t: &Tensor| -> candle_core::Result<CTensor> {
            let v: Vec<i64> = t.to_f64_vec().into_iter().map(|x| x as i64).collect();
            CTensor::from_vec(v, t.shape(), dev)
        };
        let ids_t = to_i64(ids)?;
        let mask_t = to_i64(mask)?;
        let types = ids_t.zeros_like()?;
        let states = self.model.forward(&ids_t, &types, Some(&mask_t))?;
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
        Ok(TensorMap::from([("embedding".to_string(), t)]))
    }
}
