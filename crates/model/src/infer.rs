//! Inference with a key/value cache, for many sequences at once, on the CPU. Training runs on
//! candle's tensors; serving does not: on a model of a few million parameters one decode step
//! is a few hundred small operations, and a tensor library's per-operation cost (allocating,
//! dispatching, copying into contiguous layouts) outweighs the arithmetic. The decoder keeps
//! the weights as plain `f32` rows, fuses what belongs together (q/k/v and gate/up are one
//! matrix each), writes into buffers it reuses, and packs every projection for its products (see
//! [`crate::panels`]).
//!
//! Each step takes, per sequence, its new tokens (a prompt chunk, or the one token sampled
//! last) and returns the logits after its last new token. The sequences are split into one
//! group per core when their work divides evenly (see [`Decoder::forward_step`]); within a
//! group, projections and the MLP run once over the new tokens of every sequence together, and
//! attention runs per new token against its own sequence's cache. Caches are preallocated and
//! written in place.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::DType;
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::panels::PackedMatrix;
use crate::projection::{Embedding, Projection};
use crate::quantized::{GgmlDType, QuantizedMatrix};
use crate::serving_adapter::{ServingAdapter, Site};
use crate::team::Team;
use crate::{Llama, LlamaConfig, ModelError};

/// A model's weights laid out for decoding. Built once from a [`Llama`] (which can then go).
pub struct Decoder {
    config: LlamaConfig,
    embedding: Embedding,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// The output projection (packed: a copy when tied to the embedding; quantized: the
    /// embedding's own blocks).
    head: Projection,
    /// The rotary frequency of each pair of a head's dimensions.
    frequencies: Vec<f64>,
    /// One set of buffers per group of sequences stepped at once, reused from step to step.
    scratch: Mutex<Vec<Scratch>>,
    /// The threads a step runs on; the caller of [`Decoder::forward_step`] is one of them.
    team: Team,
    /// How the caches made for this decoder store keys and values.
    kv_precision: KvPrecision,
}

/// One block's weights, in the layout the products read. The optional parts are where the
/// family members differ.
pub(crate) struct Layer {
    pub(crate) input_norm: Vec<f32>,
    /// q, k and v projections side by side: `(heads + 2 kv_heads) * head_dim` columns.
    pub(crate) qkv: Projection,
    /// Qwen2's biases of q, k and v, side by side.
    pub(crate) qkv_bias: Option<Vec<f32>>,
    /// Qwen3's per-head RMS norms of queries and keys (`head_dim` weights each).
    pub(crate) query_key_norms: Option<(Vec<f32>, Vec<f32>)>,
    pub(crate) o: Projection,
    pub(crate) post_norm: Vec<f32>,
    /// gate and up projections side by side: `2 * intermediate` columns.
    pub(crate) gate_up: Projection,
    pub(crate) down: Projection,
}

/// Buffers reused from step to step, grown to the largest step seen.
#[derive(Default)]
struct Scratch {
    /// Each new token's rotary `cos` and `sin`, `head_dim / 2` of each per token.
    cos: Vec<f32>,
    sin: Vec<f32>,
    hidden: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attended: Vec<f32>,
    gate_up: Vec<f32>,
    activated: Vec<f32>,
}

/// How caches store keys and values. `F16` halves a sequence's cache and the bytes attention
/// reads from memory at every step (what bounds attention over many sequences), at a rounding
/// of each stored value to 11 significant bits (llama.cpp's default; a value past f16's largest,
/// 65504, would become infinite); `F32` stores them as computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPrecision {
    #[default]
    F32,
    F16,
}

/// Keys and values of one sequence: keys `[layers, kv_heads, head_dim, stride]` (transposed,
/// so a query's scores against every position are sums of contiguous rows), values
/// `[layers, kv_heads, stride, head_dim]`. The stride is the capacity rounded up to whole
/// vectors of [`LANES`], so scores are computed a whole vector at a time past the last
/// position (those extra scores are never used) instead of one position at a time at the end.
/// A clone is a sequence's fork: the choices of one prompt share its prefill this way.
#[derive(Clone)]
pub struct KvCache {
    stored: Stored,
    len: usize,
    capacity: usize,
    head_dim: usize,
}

#[derive(Clone)]
enum Stored {
    F32 { keys: Vec<f32>, values: Vec<f32> },
    F16 { keys: Vec<f16>, values: Vec<f16> },
}

impl KvCache {
    /// A cache for up to `capacity` positions (at most the model's `max_position_embeddings`).
    pub fn new(decoder: &Decoder, capacity: usize) -> Result<Self, ModelError> {
        let config = &decoder.config;
        if capacity == 0 || capacity > config.max_positions() {
            return Err(ModelError::Input(format!(
                "a cache holds 1 to {} positions, not {capacity}",
                config.max_positions()
            )));
        }
        let stride = capacity.next_multiple_of(LANES);
        let size = config.num_hidden_layers * config.kv_heads() * stride * config.head_dim();
        let stored = match decoder.kv_precision {
            KvPrecision::F32 => Stored::F32 { keys: vec![0.0; size], values: vec![0.0; size] },
            KvPrecision::F16 => Stored::F16 { keys: vec![f16::ZERO; size], values: vec![f16::ZERO; size] },
        };
        Ok(KvCache { stored, len: 0, capacity, head_dim: config.head_dim() })
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

    /// Positions allocated per key row: the capacity in whole vectors.
    fn stride(&self) -> usize {
        self.capacity.next_multiple_of(LANES)
    }

    /// A new cache of `capacity` positions holding this cache's first `positions`: a prompt's
    /// prefix kept for reuse, or restored into a new sequence's cache. The keys and values of
    /// a position depend only on the tokens up to it, so the copy is exactly what prefilling
    /// those tokens again would write.
    pub fn prefix(&self, positions: usize, capacity: usize) -> Result<KvCache, ModelError> {
        if positions > self.len || positions > capacity || capacity == 0 {
            return Err(ModelError::Input(format!(
                "cannot copy {positions} of {} positions into a cache of {capacity}",
                self.len
            )));
        }
        let (from_stride, to_stride) = (self.stride(), capacity.next_multiple_of(LANES));
        let shape = PrefixCopy { head_dim: self.head_dim, from: from_stride, to: to_stride, positions };
        let stored = match &self.stored {
            Stored::F32 { keys, values } => {
                let (keys, values) = shape.copy(keys, values);
                Stored::F32 { keys, values }
            }
            Stored::F16 { keys, values } => {
                let (keys, values) = shape.copy(keys, values);
                Stored::F16 { keys, values }
            }
        };
        Ok(KvCache { stored, len: positions, capacity, head_dim: self.head_dim })
    }

    /// Bytes this cache holds.
    pub fn bytes(&self) -> usize {
        match &self.stored {
            Stored::F32 { keys, values } => (keys.len() + values.len()) * size_of::<f32>(),
            Stored::F16 { keys, values } => (keys.len() + values.len()) * size_of::<f16>(),
        }
    }

    /// Stores one position's key and value of one key/value head, whose keys start at `base`
    /// (and its values too: both blocks are `head_dim * stride` long).
    fn store(&mut self, base: usize, position: usize, key: &[f32], value: &[f32]) {
        let (stride, at) = (self.stride(), base + position * value.len());
        match &mut self.stored {
            Stored::F32 { keys, values } => {
                for (d, &k) in key.iter().enumerate() {
                    keys[base + d * stride + position] = k;
                }
                values[at..at + value.len()].copy_from_slice(value);
            }
            Stored::F16 { keys, values } => {
                let mut narrowed = [f16::ZERO; 64];
                for (chunk, key) in key.chunks(narrowed.len()).enumerate() {
                    narrow(key, &mut narrowed[..key.len()]);
                    for (d, &k) in narrowed[..key.len()].iter().enumerate() {
                        keys[base + (chunk * narrowed.len() + d) * stride + position] = k;
                    }
                }
                narrow(value, &mut values[at..at + value.len()]);
            }
        }
    }
}

/// How a cache's first `positions` move from a stride of `from` positions to one of `to`.
struct PrefixCopy {
    head_dim: usize,
    from: usize,
    to: usize,
    positions: usize,
}

impl PrefixCopy {
    /// Keys are rows of `from` positions (`[blocks, head_dim, stride]`); values are blocks of
    /// `from` positions of `head_dim` (`[blocks, stride, head_dim]`), whose first positions are
    /// one contiguous run.
    fn copy<T: Copy + Default>(&self, keys: &[T], values: &[T]) -> (Vec<T>, Vec<T>) {
        let PrefixCopy { head_dim, from, to, positions } = *self;
        let rows = keys.len() / from;
        let mut new_keys = vec![T::default(); rows * to];
        for row in 0..rows {
            new_keys[row * to..row * to + positions].copy_from_slice(&keys[row * from..row * from + positions]);
        }
        let blocks = rows / head_dim;
        let mut new_values = vec![T::default(); blocks * to * head_dim];
        for block in 0..blocks {
            let (source, target) = (block * from * head_dim, block * to * head_dim);
            new_values[target..target + positions * head_dim]
                .copy_from_slice(&values[source..source + positions * head_dim]);
        }
        (new_keys, new_values)
    }
}

/// One sequence's part of a step.
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// The low-rank adapter this sequence runs with, if any (others in the step may have
    /// another, or none).
    pub adapter: Option<&'a ServingAdapter>,
}

/// Logits of one step: a row of `vocab` values per sequence.
pub struct Logits {
    values: Vec<f32>,
    vocab: usize,
}

impl Logits {
    pub fn rows(&self) -> usize {
        self.values.len() / self.vocab
    }

    pub fn row(&self, index: usize) -> &[f32] {
        &self.values[index * self.vocab..(index + 1) * self.vocab]
    }
}

fn host(model: &Llama, name: &str) -> Result<Vec<f32>, ModelError> {
    Ok(model.weights.get(name)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The block type a model's half-precision weights stay in when served, if they are half.
fn half_kind(model: &Llama) -> Option<GgmlDType> {
    match model.weights.dtype {
        DType::F16 => Some(GgmlDType::F16),
        DType::BF16 => Some(GgmlDType::BF16),
        _ => None,
    }
}

/// Weight `name` (`[rows, inner]`) kept in its half-precision type, as blocks.
fn half_matrix(model: &Llama, name: &str, kind: GgmlDType) -> Result<QuantizedMatrix, ModelError> {
    let tensor = model.weights.get(name)?;
    let (rows, inner) = tensor.dims2()?;
    let flat = tensor.flatten_all()?;
    let bytes: Vec<u8> = match kind {
        GgmlDType::BF16 => flat.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        _ => flat.to_vec1::<f16>()?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
    };
    QuantizedMatrix::from_bytes(kind, rows, inner, &bytes)
}

/// Projections side by side: packed `f32` (see [`packed`]), or, for a model whose weights are
/// half precision, kept so (half the memory of widening them).
fn projection(model: &Llama, names: &[&str]) -> Result<Projection, ModelError> {
    let Some(kind) = half_kind(model) else {
        return packed(model, names);
    };
    let parts = names.iter().map(|name| half_matrix(model, name, kind).map(Arc::new));
    Ok(Projection::Quantized(parts.collect::<Result<_, _>>()?))
}

/// Projections `[out_i, in]` placed side by side as one `[in, sum of out_i]`, packed.
fn packed(model: &Llama, names: &[&str]) -> Result<Projection, ModelError> {
    let mut matrices = Vec::with_capacity(names.len());
    for name in names {
        matrices.push(model.weights.get(name)?.to_dtype(DType::F32)?.t()?);
    }
    let transposed = candle_core::Tensor::cat(&matrices, 1)?;
    let (inner, columns) = transposed.dims2()?;
    Ok(Projection::Packed(PackedMatrix::pack(&transposed.flatten_all()?.to_vec1::<f32>()?, inner, columns)))
}

impl Decoder {
    /// Copies `model`'s weights into the decoder's layout, to run on every core. Adapters must
    /// be merged first.
    pub fn new(model: &Llama) -> Result<Self, ModelError> {
        Self::with_threads(model, std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// As [`Decoder::new`], on `threads` threads (the caller and `threads - 1` of its own).
    pub fn with_threads(model: &Llama, threads: usize) -> Result<Self, ModelError> {
        if model.adapters.is_some() {
            return Err(ModelError::Input("merge adapters into the weights before serving".to_string()));
        }
        let config = model.config.clone();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let name = |module: &str| format!("model.layers.{layer}.{module}.weight");
            let (q, k, v) = (name("self_attn.q_proj"), name("self_attn.k_proj"), name("self_attn.v_proj"));
            let (gate, up) = (name("mlp.gate_proj"), name("mlp.up_proj"));
            let qkv_bias = if config.attention_bias() {
                let bias = |module: &str| host(model, &format!("model.layers.{layer}.self_attn.{module}.bias"));
                Some([bias("q_proj")?, bias("k_proj")?, bias("v_proj")?].concat())
            } else {
                None
            };
            let query_key_norms = if config.query_key_norm() {
                Some((host(model, &name("self_attn.q_norm"))?, host(model, &name("self_attn.k_norm"))?))
            } else {
                None
            };
            layers.push(Layer {
                input_norm: host(model, &name("input_layernorm"))?,
                qkv: projection(model, &[&q, &k, &v])?,
                qkv_bias,
                query_key_norms,
                o: projection(model, &[&name("self_attn.o_proj")])?,
                post_norm: host(model, &name("post_attention_layernorm"))?,
                gate_up: projection(model, &[&gate, &up])?,
                down: projection(model, &[&name("mlp.down_proj")])?,
            });
        }
        let (embedding, head) = match half_kind(model) {
            None => {
                let head_name = if config.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
                (Embedding::Dense(host(model, "model.embed_tokens.weight")?), packed(model, &[head_name])?)
            }
            Some(kind) => {
                let embedding = Arc::new(half_matrix(model, "model.embed_tokens.weight", kind)?);
                let head = if config.tie_word_embeddings {
                    embedding.clone()
                } else {
                    Arc::new(half_matrix(model, "lm_head.weight", kind)?)
                };
                (Embedding::Quantized(embedding), Projection::Quantized(vec![head]))
            }
        };
        let final_norm = host(model, "model.norm.weight")?;
        Ok(Decoder::assemble(config, embedding, layers, final_norm, head, threads))
    }

    /// A decoder of these parts, to run on `threads` threads.
    pub(crate) fn assemble(
        config: LlamaConfig,
        embedding: Embedding,
        layers: Vec<Layer>,
        final_norm: Vec<f32>,
        head: Projection,
        threads: usize,
    ) -> Decoder {
        Decoder {
            frequencies: config.rope_frequencies(),
            embedding,
            final_norm,
            config,
            layers,
            head,
            scratch: Mutex::new(Vec::new()),
            team: Team::new(threads),
            kv_precision: KvPrecision::F32,
        }
    }

    /// This decoder with its rotary frequencies replaced (a GGUF file's Llama 3 scaling).
    pub(crate) fn with_frequencies(mut self, frequencies: Vec<f64>) -> Self {
        self.frequencies = frequencies;
        self
    }

    /// Bytes the weights take in memory.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|layer| {
                layer.qkv.bytes()
                    + layer.o.bytes()
                    + layer.gate_up.bytes()
                    + layer.down.bytes()
                    + (layer.input_norm.len() + layer.post_norm.len()) * size_of::<f32>()
            })
            .sum();
        // A quantized tied head is the embedding's own matrix, counted once.
        let shared = self.config.tie_word_embeddings && matches!(self.head, Projection::Quantized(_));
        let head = if shared { 0 } else { self.head.bytes() };
        self.embedding.bytes() + layers + head
    }

    /// This decoder with caches made from now on storing keys and values in `precision`.
    pub fn with_kv_precision(mut self, precision: KvPrecision) -> Self {
        self.kv_precision = precision;
        self
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Runs one step for every input and returns one row of logits per sequence, after its
    /// last new token. Each cache grows by its sequence's new tokens; nothing is written when
    /// any input is refused.
    ///
    /// Sequences are independent within a step, so when they split into groups of about equal
    /// work, each core steps one group from start to end: one fork and join per step instead
    /// of one per matrix product (five per layer), and the small serial parts (norms, rotary,
    /// SwiGLU, cache writes) run on every core too. One sequence, or one long prompt chunk
    /// among single tokens, cannot be split so; its products' columns and its attention's
    /// heads are spread over the cores instead.
    pub fn forward_step(&self, inputs: &mut [StepInput<'_>]) -> Result<Logits, ModelError> {
        self.check(inputs)?;
        let vocab = self.config.vocab_size;
        let mut values = vec![0.0; inputs.len() * vocab];
        match balanced_groups(inputs, self.team.size()) {
            Some(sizes) => {
                let logits = split_by(&mut values, sizes.iter().map(|size| size * vocab));
                let groups = split_by(inputs, sizes.iter().copied()).into_iter().zip(logits).collect();
                self.team.for_each(groups, |(group, logits)| self.forward_group(group, None, logits));
            }
            None => self.forward_group(inputs, Some(&self.team), &mut values),
        }
        Ok(Logits { values, vocab })
    }

    fn check(&self, inputs: &[StepInput<'_>]) -> Result<(), ModelError> {
        let config = &self.config;
        if inputs.is_empty() {
            return Err(ModelError::Input("a step needs at least one sequence".to_string()));
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
            if input.adapter.is_some_and(|adapter| !adapter.fits(config)) {
                return Err(ModelError::Input("the adapter was trained for a model of another shape".to_string()));
            }
            if let Some(bad) = input.tokens.iter().find(|&&t| t as usize >= config.vocab_size) {
                return Err(ModelError::Input(format!(
                    "token {bad} is outside the vocabulary of {}",
                    config.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// The step of one group of sequences into `logits` (`[sequences, vocab]`), spreading its
    /// products and attention over `team` when given.
    fn forward_group(&self, inputs: &mut [StepInput<'_>], team: Option<&Team>, logits: &mut [f32]) {
        let config = &self.config;
        let hidden_size = config.hidden_size;
        let (heads, kv_heads, head_dim) = (config.num_attention_heads, config.kv_heads(), config.head_dim());
        let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
        let group = heads / kv_heads;
        let qkv_width = q_width + 2 * kv_width;
        let intermediate = config.intermediate_size;
        // (sequence, position) of every new token, in step order.
        let rows: Vec<(usize, usize)> = inputs
            .iter()
            .enumerate()
            .flat_map(|(sequence, input)| (0..input.tokens.len()).map(move |i| (sequence, input.cache.len + i)))
            .collect();
        let total = rows.len();

        let mut scratch =
            self.scratch.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop().unwrap_or_default();
        let Scratch { cos, sin, hidden, normed, qkv, attended, gate_up, activated } = &mut scratch;
        let half = head_dim / 2;
        // The same angles as training's rotary tables: computed in f64, rounded once.
        cos.clear();
        sin.clear();
        for &(_, position) in &rows {
            for frequency in &self.frequencies {
                let angle = position as f64 * frequency;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        resize(hidden, total * hidden_size);
        resize(normed, total * hidden_size);
        resize(qkv, total * qkv_width);
        resize(attended, total * q_width);
        resize(gate_up, total * 2 * intermediate);
        resize(activated, total * intermediate);
        let tokens = inputs.iter().flat_map(|input| input.tokens.iter());
        for (row, &token) in hidden.chunks_exact_mut(hidden_size).zip(tokens) {
            self.embedding.row(token as usize, row);
        }

        let eps = config.rms_norm_eps as f32;
        for (index, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(hidden, &layer.input_norm, eps, normed);
            matmul(normed, total, &layer.qkv, qkv, false, team);
            self.adapt(inputs, &rows, index, Site::Qkv, normed, qkv);
            // Biases and norms where the family has them, rotary positions on q and k, then k
            // and v into each sequence's cache.
            for (i, (row, &(sequence, position))) in qkv.chunks_exact_mut(qkv_width).zip(&rows).enumerate() {
                if let Some(bias) = &layer.qkv_bias {
                    for (value, b) in row.iter_mut().zip(bias) {
                        *value += b;
                    }
                }
                if let Some((query_norm, key_norm)) = &layer.query_key_norms {
                    let (queries, keys) = row[..q_width + kv_width].split_at_mut(q_width);
                    for head in queries.chunks_exact_mut(head_dim) {
                        rms_norm_in_place(head, query_norm, eps);
                    }
                    for head in keys.chunks_exact_mut(head_dim) {
                        rms_norm_in_place(head, key_norm, eps);
                    }
                }
                let (cos, sin) = (&cos[i * half..][..half], &sin[i * half..][..half]);
                for head in row[..q_width + kv_width].chunks_exact_mut(head_dim) {
                    rotate(head, cos, sin);
                }
                let cache = &mut *inputs[sequence].cache;
                for g in 0..kv_heads {
                    let base = (index * kv_heads + g) * head_dim * cache.stride();
                    let key = &row[q_width + g * head_dim..][..head_dim];
                    cache.store(base, position, key, &row[q_width + kv_width + g * head_dim..][..head_dim]);
                }
            }
            let written: &[StepInput<'_>] = inputs;
            let arch = pulp::Arch::new();
            // The (row, head) pairs `items` of the step, in row-major order, into `out`.
            let attend = |(items, mut out): (Range<usize>, &mut [f32])| {
                for (row, heads_to_attend) in rows_and_heads(items, heads) {
                    let (sequence, position) = rows[row];
                    let query = &qkv[row * qkv_width..][..q_width];
                    let cache = &*written[sequence].cache;
                    let (this, rest) = std::mem::take(&mut out).split_at_mut(heads_to_attend.len() * head_dim);
                    out = rest;
                    arch.dispatch(Attend {
                        out: this,
                        query,
                        cache,
                        layer: index,
                        position,
                        heads_to_attend,
                        group,
                        head_dim,
                    });
                }
            };
            let items = total * heads;
            // Worth spreading over the cores once there are many rows or long contexts.
            let work: usize = rows.iter().map(|&(_, position)| position + 1).sum();
            match team {
                Some(team) if work * heads * head_dim >= PARALLEL_ATTENTION => {
                    let ranges = even_ranges(items, team.size());
                    let outs = split_by(attended, ranges.iter().map(|range| range.len() * head_dim));
                    team.for_each(ranges.into_iter().zip(outs).collect(), attend);
                }
                _ => attend((0..items, attended)),
            }
            matmul(attended, total, &layer.o, hidden, true, team);
            self.adapt(inputs, &rows, index, Site::O, attended, hidden);
            rms_norm_rows(hidden, &layer.post_norm, eps, normed);
            matmul(normed, total, &layer.gate_up, gate_up, false, team);
            self.adapt(inputs, &rows, index, Site::GateUp, normed, gate_up);
            arch.dispatch(SwiGlu { out: activated, gate_up, intermediate });
            matmul(activated, total, &layer.down, hidden, true, team);
            self.adapt(inputs, &rows, index, Site::Down, activated, hidden);
        }
        for input in inputs.iter_mut() {
            input.cache.len += input.tokens.len();
        }

        // Only each sequence's last new token is projected onto the vocabulary.
        let mut end = 0;
        for (input, out) in inputs.iter().zip(normed.chunks_exact_mut(hidden_size)) {
            end += input.tokens.len();
            rms_norm_rows(&hidden[(end - 1) * hidden_size..end * hidden_size], &self.final_norm, eps, out);
        }
        let sequences = inputs.len();
        matmul(&normed[..sequences * hidden_size], sequences, &self.head, logits, false, team);
        self.scratch.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(scratch);
    }
}

impl Decoder {
    /// Each adapted sequence's rows of the product at `site` of block `layer`: `x` its input
    /// rows, `out` its output rows, one per entry of `rows`.
    fn adapt(
        &self,
        inputs: &[StepInput<'_>],
        rows: &[(usize, usize)],
        layer: usize,
        site: Site,
        x: &[f32],
        out: &mut [f32],
    ) {
        if inputs.iter().all(|input| input.adapter.is_none()) {
            return;
        }
        let config = &self.config;
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        let (q_width, kv_width) =
            (config.num_attention_heads * config.head_dim(), config.kv_heads() * config.head_dim());
        let (x_width, out_width) = match site {
            Site::Qkv => (hidden, q_width + 2 * kv_width),
            Site::O => (q_width, hidden),
            Site::GateUp => (hidden, 2 * intermediate),
            Site::Down => (intermediate, hidden),
        };
        for (row, &(sequence, _)) in rows.iter().enumerate() {
            if let Some(adapter) = inputs[sequence].adapter {
                let x = &x[row * x_width..][..x_width];
                adapter.apply(layer, site, x, &mut out[row * out_width..][..out_width]);
            }
        }
    }
}

/// Group sizes (in sequences, in order) that share a step's tokens about equally between
/// `threads` cores, or `None` when the step is better run as one group: one core, one
/// sequence, or work too lopsided to split (a long prompt chunk among single tokens).
pub(crate) fn balanced_groups(inputs: &[StepInput<'_>], threads: usize) -> Option<Vec<usize>> {
    let groups = threads.min(inputs.len());
    if groups < 2 {
        return None;
    }
    let total: usize = inputs.iter().map(|input| input.tokens.len()).sum();
    let share = total.div_ceil(groups);
    let (mut sizes, mut largest) = (Vec::with_capacity(groups), 0);
    let (mut count, mut tokens) = (0, 0);
    for (index, input) in inputs.iter().enumerate() {
        count += 1;
        tokens += input.tokens.len();
        let remaining_groups = groups - sizes.len() - 1;
        if (tokens >= share && remaining_groups > 0) || index + 1 == inputs.len() {
            sizes.push(count);
            largest = largest.max(tokens);
            (count, tokens) = (0, 0);
        }
    }
    // Within a third of an even share: otherwise the other cores would mostly wait.
    (sizes.len() > 1 && largest * 3 <= share * 4).then_some(sizes)
}

/// Consecutive parts of `items` of the given sizes (which must not add up to more).
fn split_by<T>(mut items: &mut [T], sizes: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut parts = Vec::new();
    for size in sizes {
        let (part, rest) = std::mem::take(&mut items).split_at_mut(size);
        parts.push(part);
        items = rest;
    }
    parts
}

/// `0..len` cut into `parts` consecutive ranges of about equal length; empty ranges are left out.
pub(crate) fn even_ranges(len: usize, parts: usize) -> Vec<Range<usize>> {
    let step = len.div_ceil(parts.max(1));
    (0..len).step_by(step.max(1)).map(|start| start..(start + step).min(len)).collect()
}

/// The (row, heads of that row) that a range of row-major (row, head) pairs covers.
pub(crate) fn rows_and_heads(items: Range<usize>, heads: usize) -> impl Iterator<Item = (usize, Range<usize>)> {
    let rows = items.start / heads..items.end.div_ceil(heads);
    rows.map(move |row| {
        let first = items.start.max(row * heads) - row * heads;
        let end = items.end.min((row + 1) * heads) - row * heads;
        (row, first..end)
    })
}

fn resize(buffer: &mut Vec<f32>, len: usize) {
    buffer.clear();
    buffer.resize(len, 0.0);
}

/// `x / sqrt(mean(x²) + eps) * weight`, row by row.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inverse = 1.0 / (mean_square + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * inverse * w;
        }
    }
}

/// [`rms_norm_rows`] of one row, in place.
fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inverse = 1.0 / (mean_square + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(weight) {
        *v *= inverse * w;
    }
}

/// Rotates one head in place the way `transformers`' Llama does: the first half of the
/// dimensions pairs with the second.
fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (first, second) = head.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (first[i], second[i]);
        first[i] = a * cos[i] - b * sin[i];
        second[i] = b * cos[i] + a * sin[i];
    }
}

/// `silu(gate) * up`, row by row, vectorized like [`Attend`].
struct SwiGlu<'a> {
    out: &'a mut [f32],
    gate_up: &'a [f32],
    intermediate: usize,
}

impl pulp::WithSimd for SwiGlu<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let SwiGlu { out, gate_up, intermediate } = self;
        for (out, row) in out.chunks_exact_mut(intermediate).zip(gate_up.chunks_exact(2 * intermediate)) {
            let (gate, up) = row.split_at(intermediate);
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
    }
}

/// Attention of one new token (at `position`, already in the cache) over its sequence's
/// positions `0..=position`, for the query heads `heads_to_attend`; `out` is
/// `[heads_to_attend.len() * head_dim]`. Run through `pulp`'s dispatch so the loops below are
/// compiled for the vector units this CPU has (the build targets the x86-64 baseline).
struct Attend<'a> {
    out: &'a mut [f32],
    query: &'a [f32],
    cache: &'a KvCache,
    layer: usize,
    position: usize,
    heads_to_attend: Range<usize>,
    /// Query heads per key/value head.
    group: usize,
    head_dim: usize,
}

impl pulp::WithSimd for Attend<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Attend { out, query, cache, layer, position, heads_to_attend, group, head_dim } = self;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let kv_heads = query.len() / head_dim / group;
        let (stride, length) = (cache.stride(), position + 1);
        let first = heads_to_attend.start;
        // Taken out rather than borrowed in a closure: the loops must stay in this function,
        // which is compiled for the vector units; a closure would not be.
        let mut padded = SCORES.take();
        // Whole vectors, within the stride (a multiple of every vector width up to `LANES`).
        let width = length.next_multiple_of(S::F32_LANES);
        resize(&mut padded, width);
        let (mut widened_keys, mut widened_values) = (WIDENED_KEYS.take(), WIDENED_VALUES.take());
        // The key/value head whose entries the buffers above hold, so query heads that share one
        // (grouped-query attention) widen them once.
        let mut widened_for = None;
        for head in heads_to_attend {
            let q = &query[head * head_dim..][..head_dim];
            let base = (layer * kv_heads + head / group) * head_dim * stride;
            // Half-precision entries are widened first, the keys' rows packed `width` apart.
            let (keys, key_stride, values) = match &cache.stored {
                Stored::F32 { keys, values } => {
                    (&keys[base..base + head_dim * stride], stride, &values[base..base + length * head_dim])
                }
                Stored::F16 { keys, values } => {
                    if widened_for != Some(head / group) {
                        widened_keys.resize(head_dim * width, 0.0);
                        for (d, row) in widened_keys.chunks_exact_mut(width).enumerate() {
                            widen(simd, &keys[base + d * stride..][..width], row);
                        }
                        widened_values.resize(length * head_dim, 0.0);
                        widen(simd, &values[base..base + length * head_dim], &mut widened_values);
                        widened_for = Some(head / group);
                    }
                    (&widened_keys[..], width, &widened_values[..])
                }
            };
            dot_columns(simd, q, scale, keys, key_stride, &mut padded);
            let scores = &mut padded[..length];
            let sum = softmax_numerators(scores);
            let out = &mut out[(head - first) * head_dim..][..head_dim];
            let whole_vectors = head_dim % S::F32_LANES == 0;
            match head_dim / S::F32_LANES {
                1 if whole_vectors => weighted_sum::<S, 1, 4>(simd, scores, values, out),
                2 if whole_vectors => weighted_sum::<S, 2, 4>(simd, scores, values, out),
                4 if whole_vectors => weighted_sum::<S, 4, 2>(simd, scores, values, out),
                8 if whole_vectors => weighted_sum::<S, 8, 2>(simd, scores, values, out),
                16 if whole_vectors => weighted_sum::<S, 16, 1>(simd, scores, values, out),
                _ => {
                    out.fill(0.0);
                    for (&weight, value) in scores.iter().zip(values.chunks_exact(head_dim)) {
                        for (o, &v) in out.iter_mut().zip(value) {
                            *o += weight * v;
                        }
                    }
                }
            }
            for o in out.iter_mut() {
                *o /= sum;
            }
        }
        SCORES.set(padded);
        WIDENED_KEYS.set(widened_keys);
        WIDENED_VALUES.set(widened_values);
    }
}

/// `dst = src` rounded to half precision (to nearest, ties to even): sixteen at a time by
/// `vcvtps2ph` where AVX-512 runs, else by `half`'s conversion (F16C where the CPU has it).
pub(crate) fn narrow(src: &[f32], dst: &mut [f16]) {
    pulp::Arch::new().dispatch(Narrow { src, dst })
}

/// [`narrow`] on the vector units of `simd` (to test each kernel width).
#[cfg(test)]
pub(crate) fn narrow_on<S: pulp::Simd>(simd: S, src: &[f32], dst: &mut [f16]) {
    simd.vectorize(Narrow { src, dst })
}

struct Narrow<'a> {
    src: &'a [f32],
    dst: &'a mut [f16],
}

impl pulp::WithSimd for Narrow<'_> {
    type Output = ();

    #[inline(always)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Narrow { src, dst } = self;
        assert_eq!(src.len(), dst.len());
        #[cfg(target_arch = "x86_64")]
        if let Some(v4) = avx512(simd) {
            use pulp::bytemuck::cast;
            // Round to nearest, and raise no floating-point exceptions.
            const ROUNDING: i32 = 0x08;
            for (from, to) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
                let wide: [f32; 16] = std::array::from_fn(|i| from[i]);
                let bits: [u16; 16] = cast(v4.avx512f._mm512_cvtps_ph::<ROUNDING>(cast(wide)));
                for (to, bits) in to.iter_mut().zip(bits) {
                    *to = f16::from_bits(bits);
                }
            }
            let whole = src.len() / 16 * 16;
            dst[whole..].convert_from_f32_slice(&src[whole..]);
            return;
        }
        dst.convert_from_f32_slice(src);
    }
}

/// `dst = src` widened: sixteen at a time by `vcvtph2ps` where AVX-512 runs (inlined into the
/// caller's loops, which `simd` compiled for it), else by `half`'s conversion.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) fn widen<S: pulp::Simd>(simd: S, src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = avx512(simd) {
        use pulp::bytemuck::cast;
        for (from, to) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
            let bits: [u16; 16] = std::array::from_fn(|i| from[i].to_bits());
            let wide: [f32; 16] = cast(v4.avx512f._mm512_cvtph_ps(cast(bits)));
            to.copy_from_slice(&wide);
        }
        let whole = src.len() / 16 * 16;
        src[whole..].convert_to_f32_slice(&mut dst[whole..]);
        return;
    }
    src.convert_to_f32_slice(dst);
}

/// `simd` as pulp's AVX-512 token when that is what it is (decided at compile time: `simd`'s
/// type is known), for the conversions `pulp::Simd` does not offer.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx512<S: pulp::Simd>(simd: S) -> Option<pulp::x86::V4> {
    (&simd as &dyn std::any::Any).downcast_ref::<pulp::x86::V4>().copied()
}

thread_local! {
    /// One head's attention scores, reused by every attention on this thread.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One head's keys and values widened from half precision, likewise.
    static WIDENED_KEYS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static WIDENED_VALUES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// As many `f32` as the widest vector register (AVX-512) holds: the lanes of the accumulators
/// in the reductions below (so each lane's chain is independent and the compiler keeps them in
/// one vector), and what a cache's stride is a multiple of.
const LANES: usize = 16;

/// Replaces `scores` by `e^(score - max)` and returns their sum: the softmax before its
/// division, which the caller folds into the weighted sum.
#[inline(always)]
fn softmax_numerators(scores: &mut [f32]) -> f32 {
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut chunks = scores.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &s) in maxima.iter_mut().zip(chunk) {
            *m = m.max(s);
        }
    }
    let max = chunks.remainder().iter().chain(&maxima).copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0.0f32; LANES];
    let mut chunks = scores.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (sum, score) in sums.iter_mut().zip(chunk) {
            *score = exp(*score - max);
            *sum += *score;
        }
    }
    let mut sum = 0.0;
    for score in chunks.into_remainder() {
        *score = exp(*score - max);
        sum += *score;
    }
    sum + sums.iter().sum::<f32>()
}

/// `scores[p] = scale sum_d q[d] keys[d][p]` over transposed keys `[head_dim, stride]`, for
/// `scores` a whole number of vectors long (at most `stride`). Positions are taken a block of
/// up to four vectors at a time, the block's sums held in registers across the `head_dim` rows
/// (instead of loaded and stored once per row).
#[inline(always)]
fn dot_columns<S: pulp::Simd>(simd: S, q: &[f32], scale: f32, keys: &[f32], stride: usize, scores: &mut [f32]) {
    let lanes = S::F32_LANES;
    let mut start = 0;
    while start + 4 * lanes <= scores.len() {
        dot_block::<S, 4>(simd, q, scale, &keys[start..], stride, &mut scores[start..][..4 * lanes]);
        start += 4 * lanes;
    }
    let rest = &mut scores[start..];
    match rest.len() / lanes {
        3 => dot_block::<S, 3>(simd, q, scale, &keys[start..], stride, rest),
        2 => dot_block::<S, 2>(simd, q, scale, &keys[start..], stride, rest),
        1 => dot_block::<S, 1>(simd, q, scale, &keys[start..], stride, rest),
        _ => {}
    }
}

/// `B` vectors of [`dot_columns`]'s scores; `keys` starts at the block's first position. Even
/// and odd rows add into separate sums, so a block of one vector still has two chains of
/// multiply-adds in flight rather than one waiting on each result.
#[inline(always)]
fn dot_block<S: pulp::Simd, const B: usize>(
    simd: S,
    q: &[f32],
    scale: f32,
    keys: &[f32],
    stride: usize,
    scores: &mut [f32],
) {
    let width = scores.len();
    let zero = simd.splat_f32s(0.0);
    let (mut even, mut odd) = ([zero; B], [zero; B]);
    // Head dimensions are even (the configuration is refused otherwise: rotary pairs them).
    for (pair, q) in q.chunks_exact(2).enumerate() {
        let (first, _) = S::as_simd_f32s(&keys[2 * pair * stride..][..width]);
        let (second, _) = S::as_simd_f32s(&keys[(2 * pair + 1) * stride..][..width]);
        let (q0, q1) = (simd.splat_f32s(q[0]), simd.splat_f32s(q[1]));
        for b in 0..B {
            even[b] = simd.mul_add_f32s(q0, first[b], even[b]);
            odd[b] = simd.mul_add_f32s(q1, second[b], odd[b]);
        }
    }
    let (out, _) = S::as_mut_simd_f32s(scores);
    let scale = simd.splat_f32s(scale);
    for b in 0..B {
        out[b] = simd.mul_f32s(simd.add_f32s(even[b], odd[b]), scale);
    }
}

/// `out = sum_p weights[p] values[p]` over value rows of `V` vectors, the sums held in vector
/// registers, with `P` partial sums (positions taken `P` at a time) so that many independent
/// chains of multiply-adds are in flight instead of one. Written with explicit vectors: the
/// compiler kept the plain-loop version's sums on the stack, one scalar at a time.
#[inline(always)]
fn weighted_sum<S: pulp::Simd, const V: usize, const P: usize>(
    simd: S,
    weights: &[f32],
    values: &[f32],
    out: &mut [f32],
) {
    let (rows, _) = S::as_simd_f32s(values);
    let zero = simd.splat_f32s(0.0);
    let mut sums = [[zero; V]; P];
    let whole = weights.len() / P * P;
    for (weights, rows) in weights[..whole].chunks_exact(P).zip(rows.chunks_exact(P * V)) {
        for p in 0..P {
            let weight = simd.splat_f32s(weights[p]);
            for v in 0..V {
                sums[p][v] = simd.mul_add_f32s(weight, rows[p * V + v], sums[p][v]);
            }
        }
    }
    for (&weight, row) in weights[whole..].iter().zip(rows[whole * V..].chunks_exact(V)) {
        let weight = simd.splat_f32s(weight);
        for v in 0..V {
            sums[0][v] = simd.mul_add_f32s(weight, row[v], sums[0][v]);
        }
    }
    let (out, _) = S::as_mut_simd_f32s(out);
    for v in 0..V {
        out[v] = sums[0][v];
        for sum in &sums[1..] {
            out[v] = simd.add_f32s(out[v], sum[v]);
        }
    }
}

/// `e^x` for the softmax, in a form the compiler vectorizes (libm's is a call per element):
/// `2^n * 2^f` with `n` the nearest integer to `x log2(e)` and `2^f`, `|f| <= 1/2`, by its
/// degree-6 Taylor polynomial (relative error under 1e-7). The exponent is clamped to the
/// normal range: below it the result is ~0, above it ~3e38 (as `silu` of a very negative gate
/// needs no more).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let t = (x * std::f32::consts::LOG2_E).clamp(-126.0, 127.0);
    let n = t.round();
    let f = (t - n) * std::f32::consts::LN_2;
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

/// `out = x W^T` (or `out += x W^T` when `accumulate`) for `x` `[rows, inner]`, its panels
/// of columns spread over `team` when given and the product is large enough to repay the
/// hand-off.
fn matmul(x: &[f32], rows: usize, w: &Projection, out: &mut [f32], accumulate: bool, team: Option<&Team>) {
    assert!(out.len() >= rows * w.columns());
    // An address, not a pointer, crosses to the team's threads (pointers are not `Sync`).
    let address = out.as_mut_ptr() as usize;
    // SAFETY: `out` holds `rows * columns` values (asserted above) and was a unique borrow;
    // the parts handed to different threads are disjoint ranges of panels.
    #[allow(unsafe_code)]
    let product = |units: Range<usize>| unsafe { w.multiply(x, rows, address, accumulate, units) };
    match team {
        Some(team) if team.size() > 1 && rows * w.columns() * w.inner() >= PARALLEL_PRODUCT => {
            team.for_each(even_ranges(w.units(), team.size()), product)
        }
        _ => product(0..w.units()),
    }
}

/// Multiply-adds from which a product is worth spreading over the team's cores.
const PARALLEL_PRODUCT: usize = 1 << 14;

/// Multiply-adds of attention from which it is worth spreading over the team's cores.
const PARALLEL_ATTENTION: usize = 1 << 13;
