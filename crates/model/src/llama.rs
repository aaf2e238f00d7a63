//! The Llama decoder: token embedding, N blocks of (RMSNorm, grouped-query attention with
//! rotary positions, RMSNorm, SwiGLU MLP) with residuals, a final RMSNorm and the output
//! projection (optionally tied to the embedding). Layouts and names follow `transformers`'
//! `LlamaForCausalLM`, so its weights load unchanged and the logits agree (`tests/parity.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, D};

use crate::frozen::{frozen_linear, frozen_rows};
use crate::fused::{self, RotaryTables};
use crate::ops::{causal_mask, cross_entropy, rms_norm, silu, softmax_last_dim, Rotary};
use crate::quantized::QuantizedMatrix;
use crate::{LlamaConfig, LoraAdapters, ModelError, Weights};

pub struct Llama {
    pub config: LlamaConfig,
    pub weights: Weights,
    /// With adapters the base weights are frozen: gradients reach only the adapters.
    pub adapters: Option<LoraAdapters>,
    /// A quantized base's matrices (by `transformers`' names), kept in their blocks and frozen;
    /// `weights` then holds only the base's vectors (norms, biases).
    pub frozen: BTreeMap<String, Arc<QuantizedMatrix>>,
    /// Which kernels the forward pass (and so the backward) runs.
    pub kernels: Kernels,
    rotary: Rotary,
    rotary_tables: RotaryTables,
}

/// The kernels of a forward pass: [`fused`]'s (one op with a hand-written backward per
/// RMSNorm, rotation, causal softmax, SwiGLU and cross-entropy) where the tensors are f32 on the
/// CPU, or the composed primitives of [`crate::ops`] everywhere (the reference the fused ones
/// are tested against).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    #[default]
    Fused,
    Composed,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("parameters", &self.weights.parameter_count())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// `x @ weight^T` for `x` of any rank, `weight` `[out, in]` as `transformers` stores it.
pub(crate) fn linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let (inner, rest) = dims.split_last().ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
    let rows: usize = rest.iter().product();
    let out = weight.dim(0)?;
    let flat = x.reshape((rows, *inner))?;
    let projected = flat.matmul(&weight.t()?)?;
    let mut shape = rest.to_vec();
    shape.push(out);
    projected.reshape(shape)
}

impl Llama {
    pub fn new(config: LlamaConfig, weights: Weights) -> Result<Self, ModelError> {
        config.validate()?;
        let rotary = Rotary::new(&config.rope_frequencies(), config.max_positions(), weights.dtype, &weights.device)?;
        let rotary_tables = RotaryTables::new(&config.rope_frequencies(), config.max_positions());
        Ok(Llama {
            config,
            weights,
            adapters: None,
            frozen: BTreeMap::new(),
            kernels: Kernels::default(),
            rotary,
            rotary_tables,
        })
    }

    /// A model on a frozen quantized base: `frozen` holds its matrices, `vectors` the rest.
    /// Only adapters can train on it.
    pub fn with_frozen_base(
        config: LlamaConfig,
        vectors: Weights,
        frozen: BTreeMap<String, Arc<QuantizedMatrix>>,
    ) -> Result<Self, ModelError> {
        let mut model = Llama::new(config, vectors)?;
        for (name, dims) in crate::parameter_shapes(&model.config) {
            let held = match frozen.get(&name) {
                Some(matrix) => dims == [matrix.rows(), matrix.inner()],
                None => model.weights.params.get(&name).is_some_and(|var| var.dims() == dims.as_slice()),
            };
            if !held {
                return Err(ModelError::Weights(format!("the frozen base has no {name} of shape {dims:?}")));
            }
        }
        model.frozen = frozen;
        Ok(model)
    }

    /// Bytes the frozen quantized matrices hold.
    pub fn frozen_bytes(&self) -> usize {
        self.frozen.values().map(|matrix| matrix.as_bytes().len()).sum()
    }

    /// The model with low-rank adapters on its targeted projections (and its base frozen).
    pub fn with_adapters(mut self, adapters: LoraAdapters) -> Self {
        self.adapters = Some(adapters);
        self
    }

    /// A base parameter; detached from the autograd graph when adapters train instead.
    fn weight(&self, name: &str) -> Result<Tensor, ModelError> {
        let tensor = self.weights.get(name)?;
        Ok(if self.adapters.is_some() || !self.frozen.is_empty() { tensor.detach() } else { tensor.clone() })
    }

    /// `x W^T` for the base matrix `name`, held dense or frozen in its blocks.
    fn base_product(&self, name: &str, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(match self.frozen.get(name) {
            Some(matrix) => frozen_linear(x, matrix)?,
            None => linear(x, &self.weight(name)?)?,
        })
    }

    /// `x W^T` for the projection `name`, plus its adapter's `scale * x A^T B^T` if it has one.
    fn project(&self, name: &str, x: &Tensor) -> Result<Tensor, ModelError> {
        let base = self.base_product(name, x)?;
        let Some((a, b)) = self.adapters.as_ref().and_then(|adapters| adapters.pair(name)) else {
            return Ok(base);
        };
        let scale = self.adapters.as_ref().map(|adapters| adapters.config.scale()).unwrap_or(1.0);
        let delta = linear(&linear(x, a)?, b)?;
        Ok((base + (delta * scale)?)?)
    }

    pub fn dtype(&self) -> DType {
        self.weights.dtype
    }

    /// The same model running `kernels`.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Whether this pass over `x` runs the fused kernels.
    fn fused(&self, x: &Tensor) -> bool {
        self.kernels == Kernels::Fused && fused::enabled(x)
    }

    fn norm(&self, x: &Tensor, weight: &str) -> Result<Tensor, ModelError> {
        let weight = self.weight(weight)?;
        Ok(match self.fused(x) {
            true => fused::rms_norm(x, &weight, self.config.rms_norm_eps)?,
            false => rms_norm(x, &weight, self.config.rms_norm_eps)?,
        })
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (u32).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor, ModelError> {
        let (batch, seq) = ids.dims2()?;
        if seq > self.rotary.max_positions() {
            return Err(ModelError::Input(format!(
                "{seq} tokens exceed max_position_embeddings {}",
                self.rotary.max_positions()
            )));
        }
        let config = &self.config;
        const EMBEDDING: &str = "model.embed_tokens.weight";
        let embedded = match self.frozen.get(EMBEDDING) {
            Some(matrix) => frozen_rows(matrix, &ids.flatten_all()?.to_vec1::<u32>()?)?,
            None => self.weight(EMBEDDING)?.index_select(&ids.flatten_all()?, 0)?,
        };
        let mut hidden = embedded.reshape((batch, seq, config.hidden_size))?;
        // The composed attention adds a mask; the fused softmax knows where the future starts.
        let mask = match self.fused(&hidden) {
            true => None,
            false => Some(causal_mask(seq, 0, self.dtype(), &self.weights.device)?),
        };
        for layer in 0..config.num_hidden_layers {
            hidden = self.block(layer, &hidden, mask.as_ref())?;
        }
        let hidden = self.norm(&hidden, "model.norm.weight")?;
        let head = if config.tie_word_embeddings { EMBEDDING } else { "lm_head.weight" };
        self.base_product(head, &hidden)
    }

    /// One block; `mask` is the composed attention's causal mask, absent when the fused kernels
    /// run.
    fn block(&self, layer: usize, hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let config = &self.config;
        let name = |module: &str| format!("model.layers.{layer}.{module}.weight");
        let (batch, seq, _) = hidden.dims3()?;
        let (heads, kv_heads, head_dim) = (config.num_attention_heads, config.kv_heads(), config.head_dim());

        let normed = self.norm(hidden, &name("input_layernorm"))?;
        let split_heads = |x: Tensor, count: usize| -> candle_core::Result<Tensor> {
            x.reshape((batch, seq, count, head_dim))?.transpose(1, 2)?.contiguous()
        };
        // Qwen2 adds a bias to each of the three projections.
        let biased = |module: &str| -> Result<Tensor, ModelError> {
            let projected = self.project(&name(module), &normed)?;
            if !config.attention_bias() {
                return Ok(projected);
            }
            Ok(projected.broadcast_add(&self.weight(&format!("model.layers.{layer}.{module}.bias"))?)?)
        };
        let mut q = split_heads(biased("self_attn.q_proj")?, heads)?;
        let mut k = split_heads(biased("self_attn.k_proj")?, kv_heads)?;
        let v = split_heads(biased("self_attn.v_proj")?, kv_heads)?;
        if config.query_key_norm() {
            // Qwen3 normalizes each head of the queries and keys before rotating them.
            q = self.norm(&q, &name("self_attn.q_norm"))?;
            k = self.norm(&k, &name("self_attn.k_norm"))?;
        }
        let (q, k) = match mask {
            None => (fused::rotary(&q, &self.rotary_tables, 0)?, fused::rotary(&k, &self.rotary_tables, 0)?),
            Some(_) => (self.rotary.apply(&q, 0)?, self.rotary.apply(&k, 0)?),
        };
        let (k, v) = (repeat_kv(&k, heads / kv_heads)?, repeat_kv(&v, heads / kv_heads)?);

        let scale = 1.0 / (head_dim as f64).sqrt();
        let products = q.matmul(&k.t()?.contiguous()?)?;
        let weights = match mask {
            None => fused::causal_softmax(&products, scale, 0)?,
            Some(mask) => softmax_last_dim(&(products * scale)?.broadcast_add(mask)?)?,
        };
        let attended = weights.matmul(&v)?.transpose(1, 2)?.reshape((batch, seq, heads * head_dim))?;
        let hidden = (hidden + self.project(&name("self_attn.o_proj"), &attended)?)?;

        let normed = self.norm(&hidden, &name("post_attention_layernorm"))?;
        let gate = self.project(&name("mlp.gate_proj"), &normed)?;
        let up = self.project(&name("mlp.up_proj"), &normed)?;
        let activated = match mask {
            None => fused::swiglu(&gate, &up)?,
            Some(_) => (silu(&gate)? * up)?,
        };
        let down = self.project(&name("mlp.down_proj"), &activated)?;
        Ok((hidden + down)?)
    }

    /// Greedy continuation of `prompt` by up to `max_new` tokens, ending early after any token
    /// in `stop`. Every step re-reads the context (its last `max_position_embeddings` tokens):
    /// this is for evaluating a freshly trained model; serving has its own engine with a KV
    /// cache.
    pub fn greedy(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Result<Vec<u32>, ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Input("an empty prompt has nothing to continue".to_string()));
        }
        let window = self.rotary.max_positions();
        let mut context = prompt.to_vec();
        let mut generated = Vec::new();
        for _ in 0..max_new {
            let start = context.len().saturating_sub(window);
            let ids = Tensor::new(&context[start..], &self.weights.device)?.unsqueeze(0)?;
            let logits = self.forward(&ids)?;
            let last = logits.narrow(1, context.len() - start - 1, 1)?;
            let next = argmax_last(&last)?[0];
            generated.push(next);
            context.push(next);
            if stop.contains(&next) {
                break;
            }
        }
        Ok(generated)
    }

    /// Mean next-token cross-entropy of a batch `[batch, seq + 1]`: positions `..seq` predict
    /// `1..`.
    pub fn loss(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        let (batch, length) = tokens.dims2()?;
        if length < 2 {
            return Err(ModelError::Input("a training sequence needs at least two tokens".to_string()));
        }
        let inputs = tokens.narrow(1, 0, length - 1)?;
        let targets = tokens.narrow(1, 1, length - 1)?.flatten_all()?;
        let logits = self.forward(&inputs)?;
        let logits = logits.reshape((batch * (length - 1), self.config.vocab_size))?;
        Ok(match self.fused(&logits) {
            true => fused::cross_entropy(&logits, &targets)?,
            false => cross_entropy(&logits, &targets)?,
        })
    }
}

/// Key/value heads repeated so each group of `repeats` query heads shares one, in the order
/// `transformers`' `repeat_kv` uses (head `h` reads key head `h / repeats`).
pub(crate) fn repeat_kv(x: &Tensor, repeats: usize) -> candle_core::Result<Tensor> {
    if repeats == 1 {
        return Ok(x.clone());
    }
    let (batch, kv_heads, seq, head_dim) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((batch, kv_heads, repeats, seq, head_dim))?.contiguous()?.reshape((
        batch,
        kv_heads * repeats,
        seq,
        head_dim,
    ))
}

/// The last dimension's argmax per row, for tests and greedy decoding.
pub fn argmax_last(logits: &Tensor) -> Result<Vec<u32>, ModelError> {
    Ok(logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?)
}
