//! A model as a GGUF file llama.cpp loads: its weights quantized to one type (norms and biases
//! stay `f32`, as llama.cpp keeps them), its hyper-parameters under llama.cpp's keys, its
//! vocabulary and chat template. The inverse of [`super::load_decoder`]: a Llama's query and
//! key rows are interleaved the way llama.cpp's converter stores them.

use std::io::{Seek, Write};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{DType, Device};

use super::load::halves_order;
use super::names::{gguf_name, rotated_projection, RotatedProjection};
use super::{fail, GgufError, Inspected};
use crate::quantized::QuantizedMatrix;
use crate::{Family, Llama};

/// A vocabulary as GGUF lists it (`tokenizer.ggml.*`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GgufVocabulary {
    /// `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// The pre-tokenizer (`default`, `llama-bpe`, `qwen2`, ...).
    pub pre: String,
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
    /// A SentencePiece vocabulary's piece scores (empty for byte-level BPE).
    pub scores: Vec<f32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub chat_template: Option<String>,
}

impl GgufVocabulary {
    /// The vocabulary of an inspected file, to write it again.
    pub fn of(inspected: Inspected) -> Self {
        let (summary, vocabulary) = (inspected.summary, inspected.vocabulary);
        GgufVocabulary {
            model: summary.tokenizer.model,
            pre: summary.tokenizer.pre,
            tokens: vocabulary.tokens,
            merges: vocabulary.merges,
            token_types: vocabulary.token_types,
            scores: vocabulary.scores,
            bos: summary.tokenizer.bos,
            eos: summary.tokenizer.eos,
            chat_template: summary.chat_template,
        }
    }
}

/// The type a matrix of rows of `inner` elements is stored in when `wanted` is asked for:
/// `wanted` when its blocks fit the rows, else Q8_0 (32-element blocks), else F16 (llama.cpp
/// falls back the same way for rows its K-quants cannot cut).
pub fn storage_type(wanted: GgmlDType, inner: usize) -> GgmlDType {
    if inner.is_multiple_of(wanted.block_size()) {
        wanted
    } else if inner.is_multiple_of(GgmlDType::Q8_0.block_size()) {
        GgmlDType::Q8_0
    } else {
        GgmlDType::F16
    }
}

/// Writes `model` with its matrices in `kind`, under `name`, with `vocabulary`.
pub fn write_llama<W: Write + Seek>(
    out: &mut W,
    model: &Llama,
    kind: GgmlDType,
    name: &str,
    vocabulary: &GgufVocabulary,
) -> Result<(), GgufError> {
    write_model(out, &model.config, name, vocabulary, &|hf_name, rows, inner, is_matrix| {
        let values =
            model.weights.get(hf_name).and_then(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))?;
        // Vectors (norms, biases) stay f32, as llama.cpp keeps them.
        let stored = if is_matrix { storage_type(kind, inner) } else { GgmlDType::F32 };
        QuantizedMatrix::quantize(stored, rows, inner, &values)
    })
}

/// Writes a model on a frozen quantized base with its adapters folded in: each adapted matrix
/// widened, `scale · B A` added, and quantized again to its own type; every other tensor as the
/// base holds it. What llama.cpp users do with a fine-tune (merge, then quantize), without
/// ever widening the whole model.
pub fn write_merged<W: Write + Seek>(
    out: &mut W,
    model: &Llama,
    name: &str,
    vocabulary: &GgufVocabulary,
) -> Result<(), GgufError> {
    write_model(out, &model.config, name, vocabulary, &|hf_name, rows, inner, _| {
        let Some(matrix) = model.frozen.get(hf_name) else {
            let values = model.weights.get(hf_name).and_then(|t| Ok(t.flatten_all()?.to_vec1()?))?;
            return QuantizedMatrix::quantize(GgmlDType::F32, rows, inner, &values);
        };
        match &model.adapters {
            Some(adapters) if adapters.pair(hf_name).is_some() => {
                let merged = adapters.merged(hf_name, matrix.dequantize())?;
                QuantizedMatrix::quantize(matrix.kind(), rows, inner, &merged)
            }
            _ => QuantizedMatrix::from_bytes(matrix.kind(), rows, inner, matrix.as_bytes()),
        }
    })
}

/// Each parameter as the file stores it: `(transformers name, rows, inner, is a matrix)` to its
/// blocks in `transformers`' row order.
type TensorSource<'a> = dyn Fn(&str, usize, usize, bool) -> Result<QuantizedMatrix, crate::ModelError> + 'a;

fn write_model<W: Write + Seek>(
    out: &mut W,
    config: &crate::LlamaConfig,
    name: &str,
    vocabulary: &GgufVocabulary,
    source: &TensorSource<'_>,
) -> Result<(), GgufError> {
    let family = config.family().map_err(|e| GgufError(e.to_string()))?;
    let architecture = match family {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
    };
    let key = |suffix: &str| format!("{architecture}.{suffix}");
    let count = |value: usize| Value::U32(value as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".to_string(), Value::String(architecture.to_string())),
        ("general.name".to_string(), Value::String(name.to_string())),
        (key("block_count"), count(config.num_hidden_layers)),
        (key("context_length"), count(config.max_positions())),
        (key("embedding_length"), count(config.hidden_size)),
        (key("feed_forward_length"), count(config.intermediate_size)),
        (key("attention.head_count"), count(config.num_attention_heads)),
        (key("attention.head_count_kv"), count(config.kv_heads())),
        (key("attention.key_length"), count(config.head_dim())),
        (key("attention.value_length"), count(config.head_dim())),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(config.rms_norm_eps as f32)),
        (key("rope.freq_base"), Value::F32(config.rope_theta as f32)),
        ("tokenizer.ggml.model".to_string(), Value::String(vocabulary.model.clone())),
        ("tokenizer.ggml.pre".to_string(), Value::String(vocabulary.pre.clone())),
        ("tokenizer.ggml.tokens".to_string(), strings(&vocabulary.tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(vocabulary.token_types.iter().map(|&kind| Value::I32(kind)).collect()),
        ),
    ];
    if !vocabulary.scores.is_empty() {
        let scores = vocabulary.scores.iter().map(|&score| Value::F32(score)).collect();
        metadata.push(("tokenizer.ggml.scores".to_string(), Value::Array(scores)));
    }
    if !vocabulary.merges.is_empty() {
        metadata.push(("tokenizer.ggml.merges".to_string(), strings(&vocabulary.merges)));
    }
    for (suffix, id) in [("bos_token_id", vocabulary.bos), ("eos_token_id", vocabulary.eos)] {
        if let Some(id) = id {
            metadata.push((format!("tokenizer.ggml.{suffix}"), Value::U32(id)));
        }
    }
    if let Some(template) = &vocabulary.chat_template {
        metadata.push(("tokenizer.chat_template".to_string(), Value::String(template.clone())));
    }

    let interleave = architecture == "llama";
    let (heads, kv_heads, head_dim) = (config.num_attention_heads, config.kv_heads(), config.head_dim());
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (hf_name, dims) in crate::parameter_shapes(config) {
        let gguf_name = gguf_name(&hf_name).ok_or_else(|| GgufError(format!("{hf_name} has no GGUF name")))?;
        let (rows, inner) = match dims[..] {
            [rows, inner] => (rows, inner),
            _ => (1, dims.iter().product()),
        };
        let mut quantized =
            source(&hf_name, rows, inner, dims.len() == 2).map_err(|e| GgufError(format!("{hf_name}: {e}")))?;
        let stored = quantized.kind();
        match rotated_projection(&hf_name) {
            Some(RotatedProjection::Query) if interleave => {
                quantized.permute_rows(&inverse(&halves_order(heads, head_dim)))
            }
            Some(RotatedProjection::Key) if interleave => {
                quantized.permute_rows(&inverse(&halves_order(kv_heads, head_dim)))
            }
            _ => {}
        }
        let qtensor = qtensor_from_ggml(stored, quantized.as_bytes(), dims, &Device::Cpu)
            .map_err(|e| GgufError(format!("{hf_name}: {e}")))?;
        tensors.push((gguf_name, qtensor));
    }
    // Llama 3's scaled frequencies, as the divisors llama.cpp reads from `rope_freqs.weight`.
    let scaled = config.rope_frequencies();
    let mut plain = config.clone();
    plain.extra.remove("rope_scaling");
    plain.extra.remove("rope_parameters");
    let divisors: Vec<f32> =
        plain.rope_frequencies().iter().zip(&scaled).map(|(plain, scaled)| (plain / scaled) as f32).collect();
    if divisors.iter().any(|&d| d != 1.0) {
        let qtensor = qtensor_from_ggml(GgmlDType::F32, &f32_bytes(&divisors), vec![divisors.len()], &Device::Cpu)
            .map_err(|e| GgufError(e.to_string()))?;
        tensors.push(("rope_freqs.weight".to_string(), qtensor));
    }
    if vocabulary.tokens.len() > config.vocab_size {
        return fail(format!(
            "the vocabulary's {} tokens exceed the model's {} embedding rows",
            vocabulary.tokens.len(),
            config.vocab_size
        ));
    }
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(out, &metadata, &tensors).map_err(|e| GgufError(e.to_string()))
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().map(|item| Value::String(item.clone())).collect())
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The permutation that undoes `order`.
fn inverse(order: &[usize]) -> Vec<usize> {
    let mut inverse = vec![0; order.len()];
    for (position, &source) in order.iter().enumerate() {
        inverse[source] = position;
    }
    inverse
}
