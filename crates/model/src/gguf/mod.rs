//! GGUF files as the registry takes them in: checked whole before anything is registered, and
//! summarized (architecture, hyper-parameters, RoPE, tokenizer, chat template, tensor types).
//!
//! A GGUF file is outside input: its header declares counts and lengths that a reader would
//! allocate for. [`inspect`] first walks the header without keeping anything, bounding the
//! metadata by bytes and values, and only then lets candle's reader (itself bounds-checked
//! against the file's size) parse it. Then every tensor is checked: a type the factory serves, a
//! shape whose element count fits its blocks, and data that lies inside the file, so a
//! truncated file is refused by name instead of failing later when it is loaded.

#[cfg(test)]
mod frozen_tests;
mod load;
mod names;
#[cfg(test)]
mod serving_tests;
mod write;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use serde::Serialize;

pub use load::{config_of, load_decoder, read_frozen, read_llama};
pub use write::{storage_type, write_llama, write_merged, GgufVocabulary};

/// The most bytes of metadata and tensor descriptions read before the tensor data: a real
/// model's vocabulary, merges and template take a few MiB (a 256k vocabulary about 12).
pub const MAX_HEADER_BYTES: u64 = 64 << 20;

/// The most metadata values (array elements count one each) a header may hold: every value is
/// kept in memory while the file is inspected.
pub const MAX_METADATA_VALUES: u64 = 4 << 20;

/// The architectures (`general.architecture`) the factory's engine runs. Mistral's GGUF files
/// say `llama`.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3"];

/// The tensor types the factory serves.
pub const TENSOR_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct GgufError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, GgufError> {
    Err(GgufError(message.into()))
}

/// What a GGUF file holds, as far as the registry records and checks it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GgufSummary {
    /// The GGUF version: 2 or 3.
    pub version: u32,
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// Every tensor's elements, summed.
    pub parameters: u64,
    pub hyper: Hyper,
    pub tokenizer: TokenizerSummary,
    /// `tokenizer.chat_template`, when the file has one.
    pub chat_template: Option<String>,
    /// How many tensors of each type (`q8_0`, `q4k`, ...).
    pub tensor_types: BTreeMap<String, usize>,
    pub tensors: usize,
}

/// The hyper-parameters an engine needs, read from `<architecture>.*`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hyper {
    pub block_count: u64,
    pub context_length: u64,
    pub embedding_length: u64,
    pub feed_forward_length: u64,
    pub head_count: u64,
    pub head_count_kv: u64,
    /// `attention.key_length`: the width of a head, when it is not `embedding_length /
    /// head_count` (Qwen3).
    pub head_dim: Option<u64>,
    pub rms_norm_eps: f32,
    pub rope_freq_base: f32,
    /// `<arch>.rope.scaling.type` and its factors, for Llama 3's long-context scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the output projection is the embedding matrix (no `output.weight`).
    pub tied_embeddings: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RopeScaling {
    pub kind: String,
    pub factor: Option<f32>,
    pub original_context_length: Option<u64>,
}

/// The vocabulary as GGUF describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenizerSummary {
    /// `gpt2` (byte-level BPE with merges) or `llama` (SentencePiece-style, with scores).
    pub model: String,
    /// `tokenizer.ggml.pre`: how a byte-level vocabulary cuts text before merging (`default`
    /// when the file does not say).
    pub pre: String,
    pub vocab_size: usize,
    pub merges: usize,
    pub has_scores: bool,
    pub has_token_types: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End of turn: the token chat models end an answer with, when it is not `eos`.
    pub eot: Option<u32>,
}

/// What [`inspect`] read of a file it accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub summary: GgufSummary,
    pub vocabulary: Vocabulary,
}

/// Checks a GGUF file whole and summarizes it, with its vocabulary. Reads the header (bounded)
/// and every tensor's description once; the tensor data is only measured against the file,
/// never read.
pub fn inspect<R: Read + Seek>(reader: &mut R) -> Result<Inspected, GgufError> {
    let file_size = reader.seek(SeekFrom::End(0)).map_err(|e| GgufError(format!("reading the file: {e}")))?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| GgufError(format!("reading the file: {e}")))?;
    let (version, content) = read_header(reader, file_size)?;
    let architecture = text(&content, "general.architecture")?;
    if !ARCHITECTURES.contains(&architecture.as_str()) {
        return fail(format!(
            "general.architecture: {architecture:?} is not an architecture the factory runs ({})",
            ARCHITECTURES.join(", ")
        ));
    }
    let mut parameters = 0u64;
    let mut tensor_types = BTreeMap::new();
    for (name, info) in &content.tensor_infos {
        if !TENSOR_TYPES.contains(&info.ggml_dtype) {
            return fail(format!(
                "tensor {name}: type {:?} is not one the factory serves ({})",
                info.ggml_dtype,
                TENSOR_TYPES.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
            ));
        }
        let elements = info.shape.elem_count() as u64;
        let block = info.ggml_dtype.block_size() as u64;
        if elements == 0 || !elements.is_multiple_of(block) {
            return fail(format!("tensor {name}: {elements} elements do not fill blocks of {block}"));
        }
        let bytes = elements / block * info.ggml_dtype.type_size() as u64;
        let start = content.tensor_data_offset.checked_add(info.offset);
        match start.and_then(|start| start.checked_add(bytes)) {
            Some(end) if end <= file_size => {}
            _ => {
                return fail(format!(
                    "tensor {name}: its {bytes} bytes at offset {} lie past the end of the file ({file_size} bytes); \
                     the file is truncated",
                    info.offset
                ))
            }
        }
        parameters += elements;
        *tensor_types.entry(format!("{:?}", info.ggml_dtype).to_lowercase()).or_insert(0) += 1;
    }
    let hyper = hyper(&content, &architecture)?;
    for (index, required) in required_tensors(&hyper).iter().enumerate() {
        if !content.tensor_infos.contains_key(required) {
            let what = if index < 2 { "the model" } else { "a block" };
            return fail(format!("tensor {required} is missing: {what} needs it"));
        }
    }
    let tokenizer = tokenizer(&content)?;
    // Every token id indexes the embedding table: a vocabulary larger than it would read past it.
    let rows = content.tensor_infos.get("token_embd.weight").map(|t| t.shape.dims()[0]).unwrap_or_default();
    if rows < tokenizer.vocab_size {
        return fail(format!("token_embd.weight: {rows} rows for a vocabulary of {} tokens", tokenizer.vocab_size));
    }
    let chat_template = match content.metadata.get("tokenizer.chat_template") {
        None => None,
        Some(Value::String(template)) => Some(template.clone()),
        Some(_) => return fail("tokenizer.chat_template: expected a string"),
    };
    let name = match content.metadata.get("general.name") {
        Some(Value::String(name)) => Some(name.clone()),
        _ => None,
    };
    let summary = GgufSummary {
        version,
        architecture,
        name,
        parameters,
        hyper,
        tokenizer,
        chat_template,
        tensor_types,
        tensors: content.tensor_infos.len(),
    };
    Ok(Inspected { summary, vocabulary: vocabulary(&content)? })
}

/// Token texts that end a model's turn when the vocabulary marks them as control tokens
/// (llama.cpp stops at the same ones): Llama 3's, ChatML's (Qwen), Phi's, Gemma's.
const END_OF_TURN_TEXTS: &[&str] =
    &["<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>"];

/// Every token generation ends at: the file's end-of-sequence and end-of-turn ids, and control
/// tokens that end a turn by their text.
pub fn end_of_generation(summary: &GgufSummary, vocabulary: &Vocabulary) -> Vec<u32> {
    let mut ends: Vec<u32> = summary.tokenizer.eos.into_iter().chain(summary.tokenizer.eot).collect();
    for (id, text) in vocabulary.tokens.iter().enumerate() {
        let control = vocabulary.token_types.get(id) == Some(&3);
        if control && END_OF_TURN_TEXTS.contains(&text.as_str()) {
            ends.push(id as u32);
        }
    }
    ends.sort_unstable();
    ends.dedup();
    ends
}

/// The header, walked within bounds first (see [`prescan`]) and then parsed: the version and
/// the metadata and tensor descriptions.
fn read_header<R: Read + Seek>(reader: &mut R, file_size: u64) -> Result<(u32, Content), GgufError> {
    reader.seek(SeekFrom::Start(0)).map_err(|e| GgufError(format!("reading the file: {e}")))?;
    let version = prescan(&mut std::io::BufReader::new(&mut *reader), file_size)?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| GgufError(format!("reading the file: {e}")))?;
    let content = Content::read(&mut std::io::BufReader::new(&mut *reader)).map_err(|e| GgufError(e.to_string()))?;
    Ok((version, content))
}

/// A byte-level BPE vocabulary as the file lists it: tokens by id, merges, each token's type.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
    /// A SentencePiece vocabulary's piece scores (empty for byte-level BPE).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; llama.cpp's default is to add one).
    pub add_space_prefix: bool,
}

fn vocabulary(content: &Content) -> Result<Vocabulary, GgufError> {
    let strings = |key: &str| -> Result<Vec<String>, GgufError> {
        match content.metadata.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    _ => fail(format!("{key}: expected strings")),
                })
                .collect(),
            Some(_) => fail(format!("{key}: expected an array")),
        }
    };
    let token_types = match content.metadata.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::I32(kind) => Ok(*kind),
                Value::U32(kind) => Ok(*kind as i32),
                _ => fail("tokenizer.ggml.token_type: expected integers"),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return fail("tokenizer.ggml.token_type: expected an array"),
    };
    let scores = match content.metadata.get("tokenizer.ggml.scores") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::F32(score) => Ok(*score),
                Value::F64(score) => Ok(*score as f32),
                _ => fail("tokenizer.ggml.scores: expected numbers"),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return fail("tokenizer.ggml.scores: expected an array"),
    };
    let add_space_prefix = match content.metadata.get("tokenizer.ggml.add_space_prefix") {
        None => true,
        Some(Value::Bool(add)) => *add,
        Some(_) => return fail("tokenizer.ggml.add_space_prefix: expected a boolean"),
    };
    Ok(Vocabulary {
        tokens: strings("tokenizer.ggml.tokens")?,
        merges: strings("tokenizer.ggml.merges")?,
        token_types,
        scores,
        add_space_prefix,
    })
}

/// Walks the header keeping nothing: the version, and that the metadata and tensor
/// descriptions stay within [`MAX_HEADER_BYTES`] and [`MAX_METADATA_VALUES`].
fn prescan<R: Read + Seek>(reader: &mut R, file_size: u64) -> Result<u32, GgufError> {
    let mut walker = Walker { reader, read: 0, values: 0, file_size };
    let magic = walker.u32()?;
    if magic != 0x4655_4747 {
        return fail("not a GGUF file (its first bytes are not GGUF)");
    }
    let version = walker.u32()?;
    if !(2..=3).contains(&version) {
        return fail(format!("GGUF version {version} is not supported (2 and 3 are)"));
    }
    let tensors = walker.u64()?;
    let entries = walker.u64()?;
    for _ in 0..entries {
        walker.string()?;
        let kind = walker.u32()?;
        walker.value(kind, 0)?;
    }
    for _ in 0..tensors {
        walker.string()?;
        let dims = walker.u32()?;
        if dims > 4 {
            return fail(format!("a tensor has {dims} dimensions; GGUF allows at most 4"));
        }
        walker.skip(u64::from(dims) * 8 + 4 + 8)?;
    }
    Ok(version)
}

struct Walker<'a, R> {
    reader: &'a mut R,
    read: u64,
    values: u64,
    file_size: u64,
}

impl<R: Read + Seek> Walker<'_, R> {
    fn count(&mut self, bytes: u64) -> Result<(), GgufError> {
        self.read = self.read.saturating_add(bytes);
        if self.read > self.file_size {
            return fail(format!(
                "the header runs past the end of the file ({} bytes); the file is truncated",
                self.file_size
            ));
        }
        if self.read > MAX_HEADER_BYTES {
            return fail(format!("the header is larger than {MAX_HEADER_BYTES} bytes"));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        self.count(N as u64)?;
        let mut buffer = [0u8; N];
        self.reader.read_exact(&mut buffer).map_err(|e| GgufError(format!("reading the header: {e}")))?;
        Ok(buffer)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn skip(&mut self, bytes: u64) -> Result<(), GgufError> {
        self.count(bytes)?;
        let by = i64::try_from(bytes).map_err(|_| GgufError("a length overflows".to_string()))?;
        self.reader.seek_relative(by).map_err(|e| GgufError(format!("reading the header: {e}")))
    }

    fn string(&mut self) -> Result<(), GgufError> {
        let length = self.u64()?;
        self.skip(length)
    }

    /// Counts `values` more values, refusing past [`MAX_METADATA_VALUES`].
    fn count_values(&mut self, values: u64) -> Result<(), GgufError> {
        self.values = self.values.saturating_add(values);
        if self.values > MAX_METADATA_VALUES {
            return fail(format!("the metadata holds more than {MAX_METADATA_VALUES} values"));
        }
        Ok(())
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<(), GgufError> {
        self.count_values(1)?;
        if let Some(size) = fixed_size(kind) {
            return self.skip(size);
        }
        match kind {
            8 => self.string(),
            9 => {
                if depth >= 4 {
                    return fail("the metadata nests arrays more than 4 deep");
                }
                let element = self.u32()?;
                let length = self.u64()?;
                match fixed_size(element) {
                    // Fixed-size elements are skipped at once, but still counted.
                    Some(size) => {
                        self.count_values(length)?;
                        self.skip(length.saturating_mul(size))
                    }
                    None => (0..length).try_for_each(|_| self.value(element, depth + 1)),
                }
            }
            other => fail(format!("the metadata has a value of unknown type {other}")),
        }
    }
}

/// The bytes a metadata value of type `kind` takes, for the types of fixed size.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn text(content: &Content, key: &str) -> Result<String, GgufError> {
    match content.metadata.get(key) {
        Some(Value::String(value)) => Ok(value.clone()),
        Some(_) => fail(format!("{key}: expected a string")),
        None => fail(format!("{key} is missing")),
    }
}

fn integer(content: &Content, key: &str) -> Result<Option<u64>, GgufError> {
    let value = match content.metadata.get(key) {
        None => return Ok(None),
        Some(value) => value,
    };
    let number = match value {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    };
    number.map(Some).ok_or_else(|| GgufError(format!("{key}: expected a non-negative integer")))
}

fn required_integer(content: &Content, key: &str) -> Result<u64, GgufError> {
    integer(content, key)?.ok_or_else(|| GgufError(format!("{key} is missing")))
}

fn float(content: &Content, key: &str) -> Result<Option<f32>, GgufError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::F32(v)) => Ok(Some(*v)),
        Some(Value::F64(v)) => Ok(Some(*v as f32)),
        Some(_) => fail(format!("{key}: expected a number")),
    }
}

fn hyper(content: &Content, architecture: &str) -> Result<Hyper, GgufError> {
    let key = |name: &str| format!("{architecture}.{name}");
    let head_count = required_integer(content, &key("attention.head_count"))?;
    let embedding_length = required_integer(content, &key("embedding_length"))?;
    let block_count = required_integer(content, &key("block_count"))?;
    if head_count == 0 || embedding_length == 0 || block_count == 0 {
        return fail(format!(
            "{architecture}: block_count, embedding_length and attention.head_count must be positive"
        ));
    }
    let head_count_kv = integer(content, &key("attention.head_count_kv"))?.unwrap_or(head_count);
    if head_count_kv == 0 || head_count % head_count_kv != 0 {
        return fail(format!(
            "{}: {head_count_kv} does not divide attention.head_count {head_count}",
            key("attention.head_count_kv")
        ));
    }
    let rope_scaling = match content.metadata.get(&key("rope.scaling.type")) {
        Some(Value::String(kind)) if kind != "none" => Some(RopeScaling {
            kind: kind.clone(),
            factor: float(content, &key("rope.scaling.factor"))?,
            original_context_length: integer(content, &key("rope.scaling.original_context_length"))?,
        }),
        _ => None,
    };
    Ok(Hyper {
        block_count,
        context_length: required_integer(content, &key("context_length"))?,
        embedding_length,
        feed_forward_length: required_integer(content, &key("feed_forward_length"))?,
        head_count,
        head_count_kv,
        head_dim: integer(content, &key("attention.key_length"))?,
        rms_norm_eps: float(content, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_freq_base: float(content, &key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scaling,
        tied_embeddings: !content.tensor_infos.contains_key("output.weight"),
    })
}

/// The tensors a decoder of `hyper`'s depth cannot run without: the embedding, the final norm,
/// then each block's attention and MLP.
fn required_tensors(hyper: &Hyper) -> Vec<String> {
    let mut names = vec!["token_embd.weight".to_string(), "output_norm.weight".to_string()];
    for block in 0..hyper.block_count {
        for part in
            ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
        {
            names.push(format!("blk.{block}.{part}.weight"));
        }
    }
    names
}

fn token_id(content: &Content, key: &str, vocab_size: usize) -> Result<Option<u32>, GgufError> {
    match integer(content, key)? {
        None => Ok(None),
        Some(id) if (id as usize) < vocab_size => Ok(Some(id as u32)),
        Some(id) => fail(format!("{key}: token {id} is outside the vocabulary of {vocab_size}")),
    }
}

fn array_len(content: &Content, key: &str) -> Result<Option<usize>, GgufError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items.len())),
        Some(_) => fail(format!("{key}: expected an array")),
    }
}

fn tokenizer(content: &Content) -> Result<TokenizerSummary, GgufError> {
    let model = text(content, "tokenizer.ggml.model")?;
    if model != "gpt2" && model != "llama" {
        return fail(format!("tokenizer.ggml.model: {model:?} is not gpt2 (byte-level BPE) or llama (SentencePiece)"));
    }
    let vocab_size = match content.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) if !tokens.is_empty() => {
            if let Some(index) = tokens.iter().position(|t| !matches!(t, Value::String(_))) {
                return fail(format!("tokenizer.ggml.tokens[{index}]: expected a string"));
            }
            tokens.len()
        }
        Some(_) => return fail("tokenizer.ggml.tokens: expected a non-empty array of strings"),
        None => return fail("tokenizer.ggml.tokens is missing"),
    };
    for key in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
        if let Some(length) = array_len(content, key)? {
            if length != vocab_size {
                return fail(format!("{key}: {length} entries for a vocabulary of {vocab_size}"));
            }
        }
    }
    let merges = array_len(content, "tokenizer.ggml.merges")?.unwrap_or(0);
    if model == "gpt2" && merges == 0 {
        return fail("tokenizer.ggml.merges: a gpt2 (byte-level BPE) vocabulary needs its merges");
    }
    let pre = match content.metadata.get("tokenizer.ggml.pre") {
        None => "default".to_string(),
        Some(Value::String(pre)) => pre.clone(),
        Some(_) => return fail("tokenizer.ggml.pre: expected a string"),
    };
    Ok(TokenizerSummary {
        pre,
        has_scores: array_len(content, "tokenizer.ggml.scores")?.is_some(),
        has_token_types: array_len(content, "tokenizer.ggml.token_type")?.is_some(),
        bos: token_id(content, "tokenizer.ggml.bos_token_id", vocab_size)?,
        eos: token_id(content, "tokenizer.ggml.eos_token_id", vocab_size)?,
        eot: token_id(content, "tokenizer.ggml.eot_token_id", vocab_size)?,
        model,
        vocab_size,
        merges,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Cursor;

    use candle_core::quantized::{gguf_file, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    /// A two-block Llama-shaped GGUF written by candle's writer: embeddings of 256, f32 norms,
    /// the attention in `attention`'s type and the MLP in Q8_0.
    fn llama_file(architecture: &str, attention: GgmlDType, tied: bool, extra: &[(&str, Value)]) -> Vec<u8> {
        let device = Device::Cpu;
        let tensor = |rows: usize, columns: usize, dtype: GgmlDType| {
            let values = Tensor::randn(0f32, 1.0, (rows, columns), &device).unwrap();
            QTensor::quantize(&values, dtype).unwrap()
        };
        let norm = || QTensor::quantize(&Tensor::ones(256, candle_core::DType::F32, &device).unwrap(), GgmlDType::F32);
        let mut tensors: Vec<(String, QTensor)> = vec![
            ("token_embd.weight".into(), tensor(64, 256, GgmlDType::Q8_0)),
            ("output_norm.weight".into(), norm().unwrap()),
        ];
        if !tied {
            tensors.push(("output.weight".into(), tensor(64, 256, GgmlDType::Q6K)));
        }
        for block in 0..2 {
            let name = |part: &str| format!("blk.{block}.{part}.weight");
            tensors.push((name("attn_norm"), norm().unwrap()));
            tensors.push((name("ffn_norm"), norm().unwrap()));
            for part in ["attn_q", "attn_output"] {
                tensors.push((name(part), tensor(256, 256, attention)));
            }
            for part in ["attn_k", "attn_v"] {
                tensors.push((name(part), tensor(128, 256, attention)));
            }
            tensors.push((name("ffn_gate"), tensor(512, 256, GgmlDType::Q8_0)));
            tensors.push((name("ffn_up"), tensor(512, 256, GgmlDType::Q8_0)));
            tensors.push((name("ffn_down"), tensor(256, 512, GgmlDType::Q8_0)));
        }
        let tokens: Vec<Value> = (0..64).map(|i| Value::String(format!("t{i}"))).collect();
        let key = |name: &str| format!("{architecture}.{name}");
        let mut metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(architecture.into())),
            ("general.name".into(), Value::String("tiny".into())),
            (key("block_count"), Value::U32(2)),
            (key("context_length"), Value::U32(512)),
            (key("embedding_length"), Value::U32(256)),
            (key("feed_forward_length"), Value::U32(512)),
            (key("attention.head_count"), Value::U32(8)),
            (key("attention.head_count_kv"), Value::U32(4)),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            (key("rope.freq_base"), Value::F32(500_000.0)),
            ("tokenizer.ggml.model".into(), Value::String("llama".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
            ("tokenizer.ggml.scores".into(), Value::Array((0..64).map(|i| Value::F32(-(i as f32))).collect())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.chat_template".into(), Value::String("{{ messages[0].content }}".into())),
        ];
        for (name, value) in extra {
            metadata.retain(|(key, _)| key != name);
            metadata.push((name.to_string(), value.clone()));
        }
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = Cursor::new(Vec::new());
        gguf_file::write(&mut file, &metadata, &tensors).unwrap();
        file.into_inner()
    }

    fn inspect_bytes(bytes: Vec<u8>) -> Result<GgufSummary, GgufError> {
        inspect(&mut Cursor::new(bytes)).map(|inspected| inspected.summary)
    }

    #[test]
    fn a_llama_file_is_summarized_with_its_types_tokenizer_and_template() {
        let summary = inspect_bytes(llama_file("llama", GgmlDType::Q4K, false, &[])).unwrap();
        assert_eq!(
            (summary.version, summary.architecture.as_str(), summary.name.as_deref()),
            (2, "llama", Some("tiny"))
        );
        assert_eq!((summary.hyper.block_count, summary.hyper.head_count, summary.hyper.head_count_kv), (2, 8, 4));
        assert_eq!((summary.hyper.rope_freq_base, summary.hyper.rms_norm_eps), (500_000.0, 1e-6));
        assert!(!summary.hyper.tied_embeddings);
        let per_block = 256 * 2 + 2 * 256 * 256 + 2 * 128 * 256 + 3 * 512 * 256;
        assert_eq!(summary.parameters, (64 * 256 * 2 + 256 + 2 * per_block) as u64);
        let types: Vec<(&str, usize)> = summary.tensor_types.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(types, [("f32", 5), ("q4k", 8), ("q6k", 1), ("q8_0", 7)]);
        assert_eq!(summary.tensors, 21);
        let tokenizer = &summary.tokenizer;
        assert_eq!(
            (tokenizer.model.as_str(), tokenizer.vocab_size, tokenizer.bos, tokenizer.eos),
            ("llama", 64, Some(1), Some(2))
        );
        assert!(tokenizer.has_scores && !tokenizer.has_token_types);
        assert_eq!(tokenizer.pre, "default", "a file that names no pre-tokenizer");
        assert_eq!(summary.chat_template.as_deref(), Some("{{ messages[0].content }}"));

        let tied = inspect_bytes(llama_file("qwen2", GgmlDType::Q8_0, true, &[])).unwrap();
        assert!(tied.hyper.tied_embeddings);
        assert_eq!(tied.architecture, "qwen2");
    }

    #[test]
    fn every_served_tensor_type_is_accepted() {
        for dtype in [GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16, GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5K]
        {
            let summary = inspect_bytes(llama_file("qwen3", dtype, true, &[])).unwrap();
            // Eight attention projections, and the five norms when they share the type.
            let expected = if dtype == GgmlDType::F32 { 13 } else { 8 };
            assert_eq!(summary.tensor_types[&format!("{dtype:?}").to_lowercase()], expected, "{dtype:?}");
        }
    }

    #[test]
    fn what_the_factory_cannot_run_is_refused_by_name() {
        let error = |bytes: Vec<u8>| inspect_bytes(bytes).unwrap_err().0;
        let unknown = error(llama_file("gemma", GgmlDType::Q8_0, true, &[]));
        assert!(unknown.contains("\"gemma\"") && unknown.contains("llama, qwen2, qwen3"), "{unknown}");
        let unsupported = error(llama_file("llama", GgmlDType::Q2K, true, &[]));
        assert!(unsupported.starts_with("tensor blk.") && unsupported.contains("Q2K"), "{unsupported}");
        let tokenizer = error(llama_file(
            "llama",
            GgmlDType::Q8_0,
            true,
            &[("tokenizer.ggml.model", Value::String("wordpiece".into()))],
        ));
        assert!(tokenizer.starts_with("tokenizer.ggml.model"), "{tokenizer}");
        let eos = error(llama_file("llama", GgmlDType::Q8_0, true, &[("tokenizer.ggml.eos_token_id", Value::U32(64))]));
        assert!(eos.contains("outside the vocabulary of 64"), "{eos}");
        let tokens: Vec<Value> = (0..65).map(|i| Value::String(format!("t{i}"))).collect();
        let scores = Value::Array((0..65).map(|_| Value::F32(0.0)).collect());
        let larger = [("tokenizer.ggml.tokens", Value::Array(tokens)), ("tokenizer.ggml.scores", scores)];
        let past = error(llama_file("llama", GgmlDType::Q8_0, true, &larger));
        assert!(past.contains("token_embd.weight: 64 rows for a vocabulary of 65"), "{past}");
        let heads =
            error(llama_file("llama", GgmlDType::Q8_0, true, &[("llama.attention.head_count_kv", Value::U32(3))]));
        assert!(heads.contains("head_count_kv"), "{heads}");
        let deeper = error(llama_file("llama", GgmlDType::Q8_0, true, &[("llama.block_count", Value::U32(3))]));
        assert!(deeper.contains("blk.2.") && deeper.contains("missing"), "{deeper}");
        assert!(error(b"GGML not a gguf at all".to_vec()).contains("not a GGUF file"));
    }

    #[test]
    fn a_truncated_file_is_refused_at_the_tensor_it_cuts() {
        let mut bytes = llama_file("llama", GgmlDType::Q8_0, true, &[]);
        bytes.truncate(bytes.len() - 100);
        let message = inspect_bytes(bytes.clone()).unwrap_err().0;
        assert!(message.contains("truncated") && message.starts_with("tensor "), "{message}");
        // Cut inside the header, it is the header that is named.
        bytes.truncate(200);
        let message = inspect_bytes(bytes).unwrap_err().0;
        assert!(message.contains("truncated") || message.contains("past the end"), "{message}");
    }

    /// A GGUF v3 header with no tensors and one metadata entry: an array `key` of `count`
    /// elements of type `element`, followed by `body`.
    fn one_array(key: &str, element: u32, count: u64, body: &[u8]) -> Vec<u8> {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&element.to_le_bytes());
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn a_header_that_declares_more_than_it_holds_is_refused_before_it_is_read() {
        // An array of 2^40 bytes, in a file of a few dozen.
        let message = inspect_bytes(one_array("huge", 0, 1 << 40, &[])).unwrap_err().0;
        assert!(message.contains("more than") || message.contains("past the end"), "{message}");
        // A million strings of nothing: values are counted whatever their size.
        let empty_strings = vec![0u8; (MAX_METADATA_VALUES as usize + 1) * 8];
        let message = inspect_bytes(one_array("many", 8, MAX_METADATA_VALUES + 1, &empty_strings)).unwrap_err().0;
        assert!(message.contains(&format!("more than {MAX_METADATA_VALUES} values")), "{message}");
    }
}
