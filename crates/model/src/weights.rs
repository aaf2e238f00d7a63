//! The model's parameters under their Hugging Face names, as trainable `Var`s, and their
//! `model.safetensors` form.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_distr::Distribution;

use crate::{LlamaConfig, ModelError};

/// Every parameter of one model, keyed by its `transformers` name (`model.layers.0.mlp.up_proj.weight`).
/// A tied model has no `lm_head.weight`: the output projection reuses the embedding.
pub struct Weights {
    pub params: BTreeMap<String, Var>,
    pub dtype: DType,
    pub device: Device,
}

/// The name and shape of every parameter a config implies, in a fixed order.
pub fn parameter_shapes(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let kv_dim = config.kv_heads() * config.head_dim();
    let q_dim = config.num_attention_heads * config.head_dim();
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("model.layers.{layer}");
        shapes.push((format!("{prefix}.input_layernorm.weight"), vec![h]));
        shapes.push((format!("{prefix}.self_attn.q_proj.weight"), vec![q_dim, h]));
        shapes.push((format!("{prefix}.self_attn.k_proj.weight"), vec![kv_dim, h]));
        shapes.push((format!("{prefix}.self_attn.v_proj.weight"), vec![kv_dim, h]));
        if config.attention_bias() {
            shapes.push((format!("{prefix}.self_attn.q_proj.bias"), vec![q_dim]));
            shapes.push((format!("{prefix}.self_attn.k_proj.bias"), vec![kv_dim]));
            shapes.push((format!("{prefix}.self_attn.v_proj.bias"), vec![kv_dim]));
        }
        if config.query_key_norm() {
            shapes.push((format!("{prefix}.self_attn.q_norm.weight"), vec![config.head_dim()]));
            shapes.push((format!("{prefix}.self_attn.k_norm.weight"), vec![config.head_dim()]));
        }
        shapes.push((format!("{prefix}.self_attn.o_proj.weight"), vec![h, q_dim]));
        shapes.push((format!("{prefix}.post_attention_layernorm.weight"), vec![h]));
        shapes.push((format!("{prefix}.mlp.gate_proj.weight"), vec![i, h]));
        shapes.push((format!("{prefix}.mlp.up_proj.weight"), vec![i, h]));
        shapes.push((format!("{prefix}.mlp.down_proj.weight"), vec![h, i]));
    }
    shapes.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    shapes
}

fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight")
}

impl Weights {
    /// Fresh weights as `transformers` initialises a Llama: normal(0, 0.02) for matrices, ones
    /// for norms; deterministic for a seed.
    pub fn init(config: &LlamaConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0.0f32, 0.02).map_err(|e| ModelError::Config(e.to_string()))?;
        let mut params = BTreeMap::new();
        for (name, shape) in parameter_shapes(config) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> =
                if is_norm(&name) { vec![1.0; count] } else { (0..count).map(|_| normal.sample(&mut rng)).collect() };
            let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
            params.insert(name, Var::from_tensor(&tensor)?);
        }
        Ok(Weights { params, dtype, device: device.clone() })
    }

    /// Reads `model.safetensors` bytes, checking every expected tensor is there with its shape.
    /// Buffers `transformers` sometimes saves (rotary `inv_freq`) are ignored; a tied model
    /// without `lm_head.weight` is fine, an untied one is not.
    pub fn from_safetensors(
        config: &LlamaConfig,
        bytes: &[u8],
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::from_safetensors_shards(config, &[bytes], dtype, device)
    }

    /// As [`Weights::from_safetensors`], from a checkpoint sharded over several files
    /// (`model-00001-of-00002.safetensors`, ...): every tensor in exactly one shard.
    pub fn from_safetensors_shards(
        config: &LlamaConfig,
        shards: &[&[u8]],
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let mut tensors = std::collections::HashMap::new();
        for shard in shards {
            for (name, tensor) in candle_core::safetensors::load_buffer(shard, device)? {
                if tensors.insert(name.clone(), tensor).is_some() {
                    return Err(ModelError::Weights(format!("{name} is in more than one shard")));
                }
            }
        }
        // Each layer names nine tensors, so a file holds fewer layers than tensors. Checked before
        // the expected names are listed: listing them for a count an outside config.json claims
        // (10^12) would take that much time and memory, and abort the process.
        if config.num_hidden_layers > tensors.len() {
            return Err(ModelError::Weights(format!(
                "the config implies {} layers, but model.safetensors holds only {} tensors",
                config.num_hidden_layers,
                tensors.len()
            )));
        }
        let mut params = BTreeMap::new();
        for (name, shape) in parameter_shapes(config) {
            let tensor = tensors
                .remove(&name)
                .ok_or_else(|| ModelError::Weights(format!("model.safetensors has no tensor {name}")))?;
            if tensor.dims() != shape.as_slice() {
                return Err(ModelError::Weights(format!(
                    "{name} has shape {:?}, but the config implies {shape:?}",
                    tensor.dims()
                )));
            }
            params.insert(name, Var::from_tensor(&tensor.to_dtype(dtype)?)?);
        }
        tensors.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
        if config.tie_word_embeddings {
            tensors.remove("lm_head.weight");
        }
        if let Some(name) = tensors.keys().next() {
            return Err(ModelError::Weights(format!(
                "model.safetensors has a tensor the config does not explain: {name}"
            )));
        }
        Ok(Weights { params, dtype, device: device.clone() })
    }

    pub fn load(config: &LlamaConfig, path: &Path, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
        Self::from_safetensors(config, &bytes, dtype, device)
    }

    /// `model.safetensors` bytes, in float32 (what `transformers` loads by default).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let tensors: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().to_dtype(DType::F32)?)))
            .collect::<Result<_, candle_core::Error>>()?;
        to_safetensors(tensors)
    }

    pub fn get(&self, name: &str) -> Result<&Tensor, ModelError> {
        self.params.get(name).map(Var::as_tensor).ok_or_else(|| ModelError::Weights(format!("no parameter {name}")))
    }

    pub fn vars(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.params.iter()
    }

    pub fn parameter_count(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }
}

/// Named tensors as safetensors bytes (with the `format: pt` metadata `transformers` expects).
pub fn to_safetensors(tensors: Vec<(String, Tensor)>) -> Result<Vec<u8>, ModelError> {
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor.contiguous()?)))
        .collect::<Result<_, candle_core::Error>>()?;
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(tensors, Some(metadata)).map_err(|e| ModelError::Weights(e.to_string()))
}

/// The type a safetensors file stores its token embedding in (`F32`, `F16`, `BF16`): what a
/// served model keeps its weights in.
pub fn stored_dtype(bytes: &[u8]) -> Result<DType, ModelError> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Weights(e.to_string()))?;
    let embedding = file
        .tensor("model.embed_tokens.weight")
        .map_err(|_| ModelError::Weights("no model.embed_tokens.weight".to_string()))?;
    match embedding.dtype() {
        safetensors::Dtype::F32 => Ok(DType::F32),
        safetensors::Dtype::F16 => Ok(DType::F16),
        safetensors::Dtype::BF16 => Ok(DType::BF16),
        other => {
            Err(ModelError::Weights(format!("model.embed_tokens.weight is {other:?}; F32, F16 or BF16 are served")))
        }
    }
}

/// Every tensor in safetensors bytes, by name.
pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<BTreeMap<String, Tensor>, ModelError> {
    Ok(candle_core::safetensors::load_buffer(bytes, device)?.into_iter().collect())
}
