//! A GGUF file into the serving decoder, its weights kept in the file's own blocks: resident
//! memory grows by about the file's size, not by four bytes a weight.
//!
//! llama.cpp's converter stores a Llama's query and key rows interleaved (each head's two
//! halves woven pair by pair, for its rotation of adjacent pairs); they are put back in the
//! order `transformers` uses, so one rotation (of the two halves) serves every family. Qwen
//! files are stored unpermuted.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;

use candle_core::{DType, Device, Tensor, Var};

use super::names::{gguf_name, rotated_projection, RotatedProjection};
use super::{fail, inspect, read_header, GgufError, GgufSummary, Inspected};
use crate::infer::Layer;
use crate::projection::{Embedding, Projection};
use crate::quantized::QuantizedMatrix;
use crate::{Decoder, Llama, LlamaConfig, Weights};

/// The `transformers` config a GGUF file's summary describes (its `model_type` the file's
/// architecture; a Mistral file says `llama`).
pub fn config_of(summary: &GgufSummary, vocab_rows: usize) -> Result<LlamaConfig, GgufError> {
    let hyper = &summary.hyper;
    let size = |value: u64| usize::try_from(value).map_err(|_| GgufError(format!("{value} is too large")));
    let mut config = LlamaConfig::new(
        vocab_rows,
        size(hyper.embedding_length)?,
        size(hyper.feed_forward_length)?,
        size(hyper.block_count)?,
        size(hyper.head_count)?,
    );
    config.model_type = summary.architecture.clone();
    config.architectures = vec![match summary.architecture.as_str() {
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        _ => "LlamaForCausalLM",
    }
    .to_string()];
    config.num_key_value_heads = Some(size(hyper.head_count_kv)?);
    config.max_position_embeddings = size(hyper.context_length)?;
    config.rope_theta = f64::from(hyper.rope_freq_base);
    config.rms_norm_eps = f64::from(hyper.rms_norm_eps);
    config.tie_word_embeddings = hyper.tied_embeddings;
    config.bos_token_id = summary.tokenizer.bos;
    config.eos_token_id = summary.tokenizer.eos;
    if let Some(head_dim) = hyper.head_dim {
        config.extra.insert("head_dim".to_string(), head_dim.into());
    }
    config.validate().map_err(|e| GgufError(e.to_string()))?;
    Ok(config)
}

/// Loads a GGUF file (checked whole first, as [`inspect`] checks an import) into a decoder on
/// `threads` threads, reading one tensor at a time.
pub fn load_decoder<R: Read + Seek>(reader: &mut R, threads: usize) -> Result<(Decoder, Inspected), GgufError> {
    let inspected = inspect(reader)?;
    let summary = &inspected.summary;
    let file_size = reader.seek(SeekFrom::End(0)).map_err(|e| GgufError(format!("reading the file: {e}")))?;
    let (_, content) = read_header(reader, file_size)?;
    let vocab_rows = content.tensor_infos.get("token_embd.weight").map_or(0, |info| info.shape.dims()[0]);
    let config = config_of(summary, vocab_rows)?;
    let mut tensors = Tensors { reader, content: &content };
    let (head_dim, heads, kv_heads) = (config.head_dim(), config.num_attention_heads, config.kv_heads());
    // Only llama.cpp's Llama layout interleaves the halves of query and key heads.
    let interleaved = summary.architecture == "llama";
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for block in 0..config.num_hidden_layers {
        let name = |part: &str| format!("blk.{block}.{part}");
        let mut q = tensors.matrix(&name("attn_q.weight"))?;
        let mut k = tensors.matrix(&name("attn_k.weight"))?;
        if interleaved {
            q.permute_rows(&halves_order(heads, head_dim));
            k.permute_rows(&halves_order(kv_heads, head_dim));
        }
        let v = tensors.matrix(&name("attn_v.weight"))?;
        let qkv_bias = if config.attention_bias() {
            let mut bias = tensors.vector(&name("attn_q.bias"))?;
            bias.extend(tensors.vector(&name("attn_k.bias"))?);
            bias.extend(tensors.vector(&name("attn_v.bias"))?);
            if bias.len() != (heads + 2 * kv_heads) * head_dim {
                return fail(format!("{}: biases do not match the projections", name("attn_*.bias")));
            }
            Some(bias)
        } else {
            None
        };
        let query_key_norms = if config.query_key_norm() {
            Some((
                tensors.norm(&name("attn_q_norm.weight"), head_dim)?,
                tensors.norm(&name("attn_k_norm.weight"), head_dim)?,
            ))
        } else {
            None
        };
        let widths = [(&q, heads * head_dim), (&k, kv_heads * head_dim), (&v, kv_heads * head_dim)];
        for (matrix, width) in widths {
            if matrix.rows() != width || matrix.inner() != config.hidden_size {
                return fail(format!(
                    "{}: attention projections are [{width}, {}], not [{}, {}]",
                    name("attn_*"),
                    config.hidden_size,
                    matrix.rows(),
                    matrix.inner()
                ));
            }
        }
        let parts =
            |matrices: Vec<QuantizedMatrix>| Projection::Quantized(matrices.into_iter().map(Arc::new).collect());
        let gate_up = vec![tensors.matrix(&name("ffn_gate.weight"))?, tensors.matrix(&name("ffn_up.weight"))?];
        let (o, down) = (tensors.matrix(&name("attn_output.weight"))?, tensors.matrix(&name("ffn_down.weight"))?);
        check_shape(&name("attn_output.weight"), &o, config.hidden_size, heads * head_dim)?;
        for matrix in &gate_up {
            check_shape(&name("ffn_gate/up.weight"), matrix, config.intermediate_size, config.hidden_size)?;
        }
        check_shape(&name("ffn_down.weight"), &down, config.hidden_size, config.intermediate_size)?;
        layers.push(Layer {
            input_norm: tensors.norm(&name("attn_norm.weight"), config.hidden_size)?,
            qkv: parts(vec![q, k, v]),
            qkv_bias,
            query_key_norms,
            o: parts(vec![o]),
            post_norm: tensors.norm(&name("ffn_norm.weight"), config.hidden_size)?,
            gate_up: parts(gate_up),
            down: parts(vec![down]),
        });
    }
    let embedding = Arc::new(tensors.matrix("token_embd.weight")?);
    check_shape("token_embd.weight", &embedding, config.vocab_size, config.hidden_size)?;
    let head = if config.tie_word_embeddings {
        Projection::Quantized(vec![embedding.clone()])
    } else {
        let output = tensors.matrix("output.weight")?;
        check_shape("output.weight", &output, config.vocab_size, config.hidden_size)?;
        Projection::Quantized(vec![Arc::new(output)])
    };
    let final_norm = tensors.norm("output_norm.weight", config.hidden_size)?;
    let mut frequencies = config.rope_frequencies();
    // Llama 3's long-context scaling, as llama.cpp's converter stores it: a divisor per pair.
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        let factors = tensors.vector("rope_freqs.weight")?;
        if factors.len() != frequencies.len() {
            return fail(format!("rope_freqs.weight: {} factors for {} pairs", factors.len(), frequencies.len()));
        }
        for (frequency, factor) in frequencies.iter_mut().zip(factors) {
            *frequency /= f64::from(factor);
        }
    }
    let decoder = Decoder::assemble(config, Embedding::Quantized(embedding), layers, final_norm, head, threads)
        .with_frequencies(frequencies);
    Ok((decoder, inspected))
}

/// The model in a GGUF file widened to `f32`, under `transformers`' names and in its row order:
/// what re-quantizing to another type starts from.
pub fn read_llama<R: Read + Seek>(reader: &mut R) -> Result<(Llama, Inspected), GgufError> {
    let (config, parameters, inspected) = read_parameters(reader)?;
    let mut params = std::collections::BTreeMap::new();
    for (name, parameter) in parameters {
        let (values, dims) = match parameter {
            Parameter::Matrix(matrix) => (matrix.dequantize(), vec![matrix.rows(), matrix.inner()]),
            Parameter::Vector(values) => {
                let length = values.len();
                (values, vec![length])
            }
        };
        let tensor = Tensor::from_vec(values, dims, &Device::Cpu).and_then(|t| Var::from_tensor(&t));
        params.insert(name.clone(), tensor.map_err(|e| GgufError(format!("{name}: {e}")))?);
    }
    let weights = Weights { params, dtype: DType::F32, device: Device::Cpu };
    let model = Llama::new(config, weights).map_err(|e| GgufError(e.to_string()))?;
    Ok((model, inspected))
}

/// The model in a GGUF file with its matrices frozen in their own blocks (the vectors widened):
/// the base adapters fine-tune without widening it.
pub fn read_frozen<R: Read + Seek>(reader: &mut R) -> Result<(Llama, Inspected), GgufError> {
    let (config, parameters, inspected) = read_parameters(reader)?;
    let (mut vectors, mut frozen) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for (name, parameter) in parameters {
        match parameter {
            Parameter::Matrix(matrix) => {
                frozen.insert(name, Arc::new(matrix));
            }
            Parameter::Vector(values) => {
                let length = values.len();
                let tensor = Tensor::from_vec(values, length, &Device::Cpu).and_then(|t| Var::from_tensor(&t));
                vectors.insert(name.clone(), tensor.map_err(|e| GgufError(format!("{name}: {e}")))?);
            }
        }
    }
    let vectors = Weights { params: vectors, dtype: DType::F32, device: Device::Cpu };
    let model = Llama::with_frozen_base(config, vectors, frozen).map_err(|e| GgufError(e.to_string()))?;
    Ok((model, inspected))
}

/// One parameter as read: a matrix in its blocks, or a vector widened.
enum Parameter {
    Matrix(QuantizedMatrix),
    Vector(Vec<f32>),
}

/// A GGUF file's parameters under `transformers`' names, in `parameter_shapes` order.
type NamedParameters = Vec<(String, Parameter)>;

/// Every parameter of a GGUF file under `transformers`' names, matrices in its row order.
fn read_parameters<R: Read + Seek>(reader: &mut R) -> Result<(LlamaConfig, NamedParameters, Inspected), GgufError> {
    let inspected = inspect(reader)?;
    let file_size = reader.seek(SeekFrom::End(0)).map_err(|e| GgufError(format!("reading the file: {e}")))?;
    let (_, content) = read_header(reader, file_size)?;
    let vocab_rows = content.tensor_infos.get("token_embd.weight").map_or(0, |info| info.shape.dims()[0]);
    let config = config_of(&inspected.summary, vocab_rows)?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        // Llama 3's divisors have no `transformers` config that reproduces them exactly.
        return fail("rope_freqs.weight: a file with scaled rotary frequencies cannot be widened or fine-tuned yet");
    }
    let interleaved = inspected.summary.architecture == "llama";
    let (heads, kv_heads, head_dim) = (config.num_attention_heads, config.kv_heads(), config.head_dim());
    let mut tensors = Tensors { reader, content: &content };
    let mut parameters = Vec::new();
    for (name, dims) in crate::parameter_shapes(&config) {
        let gguf = gguf_name(&name).ok_or_else(|| GgufError(format!("{name} has no GGUF name")))?;
        let parameter = if let [rows, inner] = dims[..] {
            let mut matrix = tensors.matrix(&gguf)?;
            check_shape(&gguf, &matrix, rows, inner)?;
            match rotated_projection(&name) {
                Some(RotatedProjection::Query) if interleaved => matrix.permute_rows(&halves_order(heads, head_dim)),
                Some(RotatedProjection::Key) if interleaved => matrix.permute_rows(&halves_order(kv_heads, head_dim)),
                _ => {}
            }
            Parameter::Matrix(matrix)
        } else {
            Parameter::Vector(tensors.norm(&gguf, dims.iter().product())?)
        };
        parameters.push((name, parameter));
    }
    Ok((config, parameters, inspected))
}

/// The row order that undoes llama.cpp's interleaving of `heads` heads of `head_dim` rows: row
/// `j * half + i` of a head (half `j`, pair `i`) was stored at `2 i + j`.
pub(crate) fn halves_order(heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..heads * head_dim)
        .map(|row| {
            let (head, within) = (row / head_dim, row % head_dim);
            head * head_dim + (within % half) * 2 + within / half
        })
        .collect()
}

fn check_shape(name: &str, matrix: &QuantizedMatrix, rows: usize, inner: usize) -> Result<(), GgufError> {
    if (matrix.rows(), matrix.inner()) != (rows, inner) {
        return fail(format!("{name}: expected [{rows}, {inner}], found [{}, {}]", matrix.rows(), matrix.inner()));
    }
    Ok(())
}

/// Reads tensors by name from the file whose header is `content`.
struct Tensors<'a, R> {
    reader: &'a mut R,
    content: &'a Content,
}

impl<R: Read + Seek> Tensors<'_, R> {
    /// Seeks to tensor `name`'s data: its type and dimensions (GGUF lists them innermost first;
    /// candle's reader reverses them).
    fn seek(&mut self, name: &str) -> Result<(GgmlDType, Vec<usize>), GgufError> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| GgufError(format!("tensor {name} is missing")))?;
        let at = self.content.tensor_data_offset + info.offset;
        self.reader.seek(SeekFrom::Start(at)).map_err(|e| GgufError(format!("{name}: {e}")))?;
        Ok((info.ggml_dtype, info.shape.dims().to_vec()))
    }

    /// A 2-D tensor, `[rows, inner]`, read straight into its blocks.
    fn matrix(&mut self, name: &str) -> Result<QuantizedMatrix, GgufError> {
        let (kind, dims) = self.seek(name)?;
        let [rows, inner] = dims[..] else {
            return fail(format!("{name}: expected a matrix, found dimensions {dims:?}"));
        };
        QuantizedMatrix::read(kind, rows, inner, &mut *self.reader).map_err(|e| GgufError(format!("{name}: {e}")))
    }

    /// A 1-D tensor widened to `f32`.
    fn vector(&mut self, name: &str) -> Result<Vec<f32>, GgufError> {
        let (kind, dims) = self.seek(name)?;
        let [length] = dims[..] else {
            return fail(format!("{name}: expected a vector, found dimensions {dims:?}"));
        };
        let row =
            QuantizedMatrix::read(kind, 1, length, &mut *self.reader).map_err(|e| GgufError(format!("{name}: {e}")))?;
        Ok(row.dequantize())
    }

    fn norm(&mut self, name: &str, width: usize) -> Result<Vec<f32>, GgufError> {
        let values = self.vector(name)?;
        if values.len() != width {
            return fail(format!("{name}: {} weights for a width of {width}", values.len()));
        }
        Ok(values)
    }
}
