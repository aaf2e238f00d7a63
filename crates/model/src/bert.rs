//! A BERT-family encoder for sentence embeddings (all-MiniLM-L6-v2 and its relatives), read
//! from Hugging Face `config.json` and `model.safetensors` under `transformers`' `BertModel`
//! names: token, position and type embeddings with LayerNorm, then N post-norm blocks of
//! self-attention and a GELU (erf) MLP. Inference only; mean pooling over the attention mask
//! and L2 normalisation give sentence-transformers' vectors.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::ops::softmax_last_dim;
use crate::ModelError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".to_string()
}

impl BertConfig {
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        if value["model_type"].as_str() != Some("bert") {
            return Err(ModelError::Config(format!("config.json: model_type {} is not bert", value["model_type"])));
        }
        let config: BertConfig =
            serde_json::from_value(value).map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        if config.hidden_act != "gelu" {
            return Err(ModelError::Config(format!("hidden_act {:?} is not supported (gelu is)", config.hidden_act)));
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(ModelError::Config("hidden_size must be a multiple of num_attention_heads".to_string()));
        }
        Ok(config)
    }

    pub(crate) fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut shapes = vec![
            ("embeddings.word_embeddings.weight".to_string(), vec![self.vocab_size, h]),
            ("embeddings.position_embeddings.weight".to_string(), vec![self.max_position_embeddings, h]),
            ("embeddings.token_type_embeddings.weight".to_string(), vec![self.type_vocab_size, h]),
            ("embeddings.LayerNorm.weight".to_string(), vec![h]),
            ("embeddings.LayerNorm.bias".to_string(), vec![h]),
        ];
        for layer in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{layer}");
            for (name, shape) in [
                ("attention.self.query.weight", vec![h, h]),
                ("attention.self.query.bias", vec![h]),
                ("attention.self.key.weight", vec![h, h]),
                ("attention.self.key.bias", vec![h]),
                ("attention.self.value.weight", vec![h, h]),
                ("attention.self.value.bias", vec![h]),
                ("attention.output.dense.weight", vec![h, h]),
                ("attention.output.dense.bias", vec![h]),
                ("attention.output.LayerNorm.weight", vec![h]),
                ("attention.output.LayerNorm.bias", vec![h]),
                ("intermediate.dense.weight", vec![i, h]),
                ("intermediate.dense.bias", vec![i]),
                ("output.dense.weight", vec![h, i]),
                ("output.dense.bias", vec![h]),
                ("output.LayerNorm.weight", vec![h]),
                ("output.LayerNorm.bias", vec![h]),
            ] {
                shapes.push((format!("{p}.{name}"), shape));
            }
        }
        shapes
    }
}

pub struct BertEncoder {
    pub config: BertConfig,
    tensors: BTreeMap<String, Tensor>,
    device: Device,
}

fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(variance + eps)?.sqrt()?)?.broadcast_mul(weight)?.broadcast_add(bias)
}

impl BertEncoder {
    /// Reads the weights, checking every tensor the config implies; `position_ids` buffers and a
    /// `pooler` (unused by mean pooling) may be present, anything else may not. A `bert.`
    /// prefix (checkpoints of `BertForX` heads) is accepted.
    pub fn from_safetensors(config: BertConfig, bytes: &[u8], device: &Device) -> Result<Self, ModelError> {
        let loaded = candle_core::safetensors::load_buffer(bytes, device)?;
        let mut loaded: BTreeMap<String, Tensor> =
            loaded.into_iter().map(|(name, t)| (name.strip_prefix("bert.").unwrap_or(&name).to_string(), t)).collect();
        // Each layer names sixteen tensors, so a file holds fewer layers than tensors. Checked
        // before the expected names are listed, whose number an outside config.json decides.
        if config.num_hidden_layers > loaded.len() {
            return Err(ModelError::Weights(format!(
                "the config implies {} layers, but model.safetensors holds only {} tensors",
                config.num_hidden_layers,
                loaded.len()
            )));
        }
        let mut tensors = BTreeMap::new();
        for (name, shape) in config.shapes() {
            let tensor = loaded
                .remove(&name)
                .ok_or_else(|| ModelError::Weights(format!("model.safetensors has no tensor {name}")))?;
            if tensor.dims() != shape.as_slice() {
                return Err(ModelError::Weights(format!("{name} has shape {:?}, expected {shape:?}", tensor.dims())));
            }
            tensors.insert(name, tensor.to_dtype(DType::F32)?);
        }
        loaded.retain(|name, _| !name.ends_with("position_ids") && !name.starts_with("pooler."));
        if let Some(name) = loaded.keys().next() {
            return Err(ModelError::Weights(format!(
                "model.safetensors has a tensor the config does not explain: {name}"
            )));
        }
        Ok(BertEncoder { config, tensors, device: device.clone() })
    }

    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(Tensor::elem_count).sum()
    }

    fn get(&self, name: &str) -> Result<&Tensor, ModelError> {
        self.tensors.get(name).ok_or_else(|| ModelError::Weights(format!("no tensor {name}")))
    }

    fn dense(&self, x: &Tensor, name: &str) -> Result<Tensor, ModelError> {
        let weight = self.get(&format!("{name}.weight"))?;
        let bias = self.get(&format!("{name}.bias"))?;
        let (batch, seq, inner) = x.dims3()?;
        let out = x.reshape((batch * seq, inner))?.matmul(&weight.t()?)?.broadcast_add(bias)?;
        Ok(out.reshape((batch, seq, weight.dim(0)?))?)
    }

    fn norm(&self, x: &Tensor, name: &str) -> Result<Tensor, ModelError> {
        let (weight, bias) = (self.get(&format!("{name}.weight"))?, self.get(&format!("{name}.bias"))?);
        Ok(layer_norm(x, weight, bias, self.config.layer_norm_eps)?)
    }

    /// Mean-pooled, L2-normalised sentence vectors for tokenized inputs (each already carrying
    /// its special tokens), padded together as one batch.
    pub fn embed(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let config = &self.config;
        let longest = batch.iter().map(Vec::len).max().unwrap_or(0);
        if batch.is_empty() || longest == 0 {
            return Err(ModelError::Input("nothing to embed".to_string()));
        }
        if longest > config.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "{longest} tokens exceed max_position_embeddings {}",
                config.max_position_embeddings
            )));
        }
        let (rows, h) = (batch.len(), config.hidden_size);
        let mut ids = Vec::with_capacity(rows * longest);
        let mut mask = Vec::with_capacity(rows * longest);
        for tokens in batch {
            ids.extend(tokens.iter().copied().chain(std::iter::repeat_n(0, longest - tokens.len())));
            mask.extend((0..longest).map(|i| if i < tokens.len() { 1.0f32 } else { 0.0 }));
        }
        let ids = Tensor::from_vec(ids, rows * longest, &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, longest), &self.device)?;
        let words =
            self.get("embeddings.word_embeddings.weight")?.index_select(&ids, 0)?.reshape((rows, longest, h))?;
        let positions = self.get("embeddings.position_embeddings.weight")?.narrow(0, 0, longest)?;
        let types = self.get("embeddings.token_type_embeddings.weight")?.narrow(0, 0, 1)?;
        let embedded = words.broadcast_add(&positions)?.broadcast_add(&types)?;
        let mut hidden = self.norm(&embedded, "embeddings.LayerNorm")?;

        let heads = config.num_attention_heads;
        let head_dim = h / heads;
        // Padding positions get -inf before the softmax, so no token attends to them.
        let additive = ((mask.ones_like()? - &mask)? * -1e9)?.reshape((rows, 1, 1, longest))?;
        for layer in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{layer}");
            let split = |x: Tensor| -> candle_core::Result<Tensor> {
                x.reshape((rows, longest, heads, head_dim))?.transpose(1, 2)?.contiguous()
            };
            let q = split(self.dense(&hidden, &format!("{p}.attention.self.query"))?)?;
            let k = split(self.dense(&hidden, &format!("{p}.attention.self.key"))?)?;
            let v = split(self.dense(&hidden, &format!("{p}.attention.self.value"))?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? / (head_dim as f64).sqrt())?.broadcast_add(&additive)?;
            let attended = softmax_last_dim(&scores)?.matmul(&v)?.transpose(1, 2)?.reshape((rows, longest, h))?;
            let attended = self.dense(&attended, &format!("{p}.attention.output.dense"))?;
            hidden = self.norm(&(attended + &hidden)?, &format!("{p}.attention.output.LayerNorm"))?;
            let inner = self.dense(&hidden, &format!("{p}.intermediate.dense"))?.gelu_erf()?;
            let out = self.dense(&inner, &format!("{p}.output.dense"))?;
            hidden = self.norm(&(out + &hidden)?, &format!("{p}.output.LayerNorm"))?;
        }
        let weights = mask.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
        let counts = weights.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
