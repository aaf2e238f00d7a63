//! Low-rank adapters applied per sequence while decoding: one engine holds a base once, and each
//! sequence of a step may carry its own adapter (or none). After each of a block's products,
//! the rows of an adapted sequence get `scale · B (A x)` added in the columns of the projection
//! the adapter targets: `rank · (in + out)` multiply-adds a row, small beside the product.

use crate::{LlamaConfig, LoraAdapters, ModelError};

/// Which of a block's products an adapter's output lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    /// `[q | k | v]`
    Qkv,
    O,
    /// `[gate | up]`
    GateUp,
    Down,
}

/// The adapters of one version, laid out for the decoder's rows.
pub struct ServingAdapter {
    scale: f32,
    /// The hidden size of the model it was trained for (with `layers.len()`, what it fits).
    hidden_size: usize,
    /// Per block, the projections it adapts.
    layers: Vec<Vec<AdapterPart>>,
}

struct AdapterPart {
    site: Site,
    /// The first column of the product's row this projection writes.
    offset: usize,
    rank: usize,
    /// `A`, `[rank, in]`.
    down: Vec<f32>,
    /// `Bᵀ`, `[rank, out]`: the update adds whole rows of it.
    up: Vec<f32>,
}

impl std::fmt::Debug for ServingAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingAdapter").field("scale", &self.scale).field("bytes", &self.bytes()).finish()
    }
}

impl ServingAdapter {
    /// `adapters` (trained for a model of `config`) for the decoder of that model.
    pub fn new(config: &LlamaConfig, adapters: &LoraAdapters) -> Result<Self, ModelError> {
        let (heads, kv_heads, head_dim) = (config.num_attention_heads, config.kv_heads(), config.head_dim());
        let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
        let sites = [
            ("self_attn.q_proj", Site::Qkv, 0),
            ("self_attn.k_proj", Site::Qkv, q_width),
            ("self_attn.v_proj", Site::Qkv, q_width + kv_width),
            ("self_attn.o_proj", Site::O, 0),
            ("mlp.gate_proj", Site::GateUp, 0),
            ("mlp.up_proj", Site::GateUp, config.intermediate_size),
            ("mlp.down_proj", Site::Down, 0),
        ];
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let mut found = 0;
        for layer in 0..config.num_hidden_layers {
            let mut parts = Vec::new();
            for (module, site, offset) in sites {
                let Some((a, b)) = adapters.pair(&format!("model.layers.{layer}.{module}.weight")) else {
                    continue;
                };
                let (rank, _) = a.dims2()?;
                let down = a.flatten_all()?.to_vec1::<f32>()?;
                let up = b.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                parts.push(AdapterPart { site, offset, rank, down, up });
                found += 2;
            }
            layers.push(parts);
        }
        if found != adapters.params.len() {
            return Err(ModelError::Weights("the adapters name projections this model does not have".to_string()));
        }
        Ok(ServingAdapter { scale: adapters.config.scale() as f32, hidden_size: config.hidden_size, layers })
    }

    /// Whether it was made for a model of `config`'s shape.
    pub fn fits(&self, config: &LlamaConfig) -> bool {
        self.layers.len() == config.num_hidden_layers && self.hidden_size == config.hidden_size
    }

    /// Bytes its matrices hold.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|part| (part.down.len() + part.up.len()) * 4).sum()
    }

    /// `out += scale · B (A x)` for each projection of block `layer` that lands in `site`;
    /// `x` is one row of the product's input, `out` the same row of its output.
    pub(crate) fn apply(&self, layer: usize, site: Site, x: &[f32], out: &mut [f32]) {
        for part in self.layers[layer].iter().filter(|part| part.site == site) {
            let inner = x.len();
            let width = part.up.len() / part.rank;
            let out = &mut out[part.offset..part.offset + width];
            for (a_row, b_row) in part.down.chunks_exact(inner).zip(part.up.chunks_exact(width)) {
                let reduced: f32 = a_row.iter().zip(x).map(|(a, x)| a * x).sum::<f32>() * self.scale;
                for (value, b) in out.iter_mut().zip(b_row) {
                    *value += reduced * b;
                }
            }
        }
    }
}
