//! Inference with a key/value cache, for many sequences at once. Each step takes, per
//! sequence, its new tokens (a prompt chunk, or the one token sampled last) and returns the
//! logits after its last new token. The projections and the MLP run once over the new tokens
//! of every sequence together (the bulk of the work); attention runs per sequence against its
//! own cache, so sequences of any length share a step. Caches are preallocated and written in
//! place: a step never copies a whole cache.

use candle_core::{DType, Device, Tensor};

use crate::llama::{linear, repeat_kv};
use crate::ops::{causal_mask, rms_norm, silu, softmax_last_dim};
use crate::{Llama, ModelError};

/// Keys and values of one sequence, `[kv_heads, capacity, head_dim]` per layer.
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions (at most the model's `max_position_embeddings`).
    pub fn new(model: &Llama, capacity: usize) -> Result<Self, ModelError> {
        let config = &model.config;
        if capacity == 0 || capacity > config.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "a cache holds 1 to {} positions, not {capacity}",
                config.max_position_embeddings
            )));
        }
        let shape = (config.kv_heads(), capacity, config.head_dim());
        let device = &model.weights.device;
        let dtype = model.dtype();
        let mut keys = Vec::with_capacity(config.num_hidden_layers);
        let mut values = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            keys.push(Tensor::zeros(shape, dtype, device)?);
            values.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(KvCache { keys, values, len: 0, capacity })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes this cache holds.
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }
}

/// One sequence's part of a step.
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

impl Llama {
    /// Runs one step for every input and returns `[inputs, vocab]` logits, one row per
    /// sequence, after its last new token. Each cache grows by its sequence's new tokens.
    pub fn forward_step(&self, inputs: &mut [StepInput<'_>]) -> Result<Tensor, ModelError> {
        let config = &self.config;
        let device: &Device = &self.weights.device;
        if inputs.is_empty() {
            return Err(ModelError::Input("a step needs at least one sequence".to_string()));
        }
        if self.adapters.is_some() {
            return Err(ModelError::Input("merge adapters into the weights before serving".to_string()));
        }
        for input in inputs.iter() {
            if input.tokens.is_empty() {
                return Err(ModelError::Input("every sequence in a step needs a new token".to_string()));
            }
            if input.cache.len + input.tokens.len() > input.cache.capacity {
                return Err(ModelError::Input(format!(
                    "{} more tokens exceed the cache's {} positions",
                    input.tokens.len(),
                    input.cache.capacity
                )));
            }
        }
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.tokens.iter().copied()).collect();
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, device)?;
        let embedding = self.weights.get("model.embed_tokens.weight")?;
        let mut hidden = embedding.index_select(&ids, 0)?;
        let (heads, kv_heads, head_dim) = (config.num_attention_heads, config.kv_heads(), config.head_dim());
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in 0..config.num_hidden_layers {
            let weight = |name: &str| self.weights.get(&format!("model.layers.{layer}.{name}.weight"));
            let normed = rms_norm(&hidden, weight("input_layernorm")?, config.rms_norm_eps)?;
            let q = linear(&normed, weight("self_attn.q_proj")?)?;
            let k = linear(&normed, weight("self_attn.k_proj")?)?;
            let v = linear(&normed, weight("self_attn.v_proj")?)?;
            let mut attended = Vec::with_capacity(inputs.len());
            let mut offset = 0;
            for input in inputs.iter_mut() {
                let (count, start) = (input.tokens.len(), input.cache.len);
                let heads_of = |x: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                    x.narrow(0, offset, count)?.reshape((count, n, head_dim))?.transpose(0, 1)?.contiguous()
                };
                let q_seq = self.rotary().apply(&heads_of(&q, heads)?.unsqueeze(0)?, start)?;
                let k_seq = self.rotary().apply(&heads_of(&k, kv_heads)?.unsqueeze(0)?, start)?.squeeze(0)?;
                let v_seq = heads_of(&v, kv_heads)?;
                input.cache.keys[layer].slice_set(&k_seq.contiguous()?, 1, start)?;
                input.cache.values[layer].slice_set(&v_seq, 1, start)?;
                let length = start + count;
                let keys = input.cache.keys[layer].narrow(1, 0, length)?.unsqueeze(0)?;
                let values = input.cache.values[layer].narrow(1, 0, length)?.unsqueeze(0)?;
                let (keys, values) = (repeat_kv(&keys, heads / kv_heads)?, repeat_kv(&values, heads / kv_heads)?);
                let mut scores = (q_seq.matmul(&keys.t()?.contiguous()?)? * scale)?;
                if count > 1 {
                    scores = scores.broadcast_add(&causal_mask(count, start, self.dtype(), device)?)?;
                }
                let out = softmax_last_dim(&scores)?.matmul(&values.contiguous()?)?;
                attended.push(out.squeeze(0)?.transpose(0, 1)?.reshape((count, config.hidden_size))?);
                offset += count;
            }
            let attended = Tensor::cat(&attended, 0)?;
            hidden = (hidden + linear(&attended, weight("self_attn.o_proj")?)?)?;
            let normed = rms_norm(&hidden, weight("post_attention_layernorm")?, config.rms_norm_eps)?;
            let gate = silu(&linear(&normed, weight("mlp.gate_proj")?)?)?;
            let up = linear(&normed, weight("mlp.up_proj")?)?;
            hidden = (hidden + linear(&(gate * up)?, weight("mlp.down_proj")?)?)?;
        }
        let mut last_rows = Vec::with_capacity(inputs.len());
        let mut offset = 0;
        for input in inputs.iter_mut() {
            offset += input.tokens.len();
            last_rows.push((offset - 1) as u32);
            input.cache.len += input.tokens.len();
        }
        let last = hidden.index_select(&Tensor::new(last_rows.as_slice(), device)?, 0)?;
        let last = rms_norm(&last, self.weights.get("model.norm.weight")?, config.rms_norm_eps)?;
        let head = if config.tie_word_embeddings { embedding } else { self.weights.get("lm_head.weight")? };
        Ok(linear(&last, head)?.to_dtype(DType::F32)?)
    }
}
