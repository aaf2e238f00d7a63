//! Byte-level BPE tokenizers: trained on a dataset version's text column, stored and loaded as
//! Hugging Face `tokenizer.json`, so `transformers` (and any HF-compatible runtime) reads them.
//!
//! Byte-level means every byte has a token, so no input is ever unknown and decoding inverts
//! encoding exactly; merges are learned on top. The crate wraps `tokenizers` (without its C
//! regex engine) and knows nothing of datasets or storage: text comes in as an iterator.

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder,
    TokenizerImpl,
};

/// The end-of-text token every trained tokenizer has; documents are separated by it in training.
pub const END_OF_TEXT: &str = "<|endoftext|>";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("invalid tokenizer settings: {0}")]
    Settings(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

impl From<tokenizers::Error> for TokenizerError {
    fn from(error: tokenizers::Error) -> Self {
        TokenizerError::Tokenizers(error.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpeSettings {
    /// Total vocabulary including the 256 byte tokens and the special tokens.
    pub vocab_size: usize,
    /// A pair is merged only if it occurs at least this often.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// Extra special tokens beside `<|endoftext|>`.
    #[serde(default)]
    pub special_tokens: Vec<String>,
}

fn default_min_frequency() -> u64 {
    2
}

impl BpeSettings {
    pub fn new(vocab_size: usize) -> Self {
        BpeSettings { vocab_size, min_frequency: default_min_frequency(), special_tokens: Vec::new() }
    }

    fn specials(&self) -> Vec<String> {
        let mut specials = vec![END_OF_TEXT.to_string()];
        specials.extend(self.special_tokens.iter().filter(|t| t.as_str() != END_OF_TEXT).cloned());
        specials
    }

    pub fn validate(&self) -> Result<(), TokenizerError> {
        let floor = 256 + self.specials().len();
        if self.vocab_size < floor {
            return Err(TokenizerError::Settings(format!(
                "vocab_size {} is below {floor} (256 byte tokens plus the special tokens)",
                self.vocab_size
            )));
        }
        if self.vocab_size > 1_000_000 {
            return Err(TokenizerError::Settings(format!("vocab_size {} is above 1,000,000", self.vocab_size)));
        }
        Ok(())
    }
}

type Bpe = TokenizerImpl<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// A byte-level BPE tokenizer, trained here or loaded from `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Learns merges from `texts` (streamed: only word counts are kept in memory).
    pub fn train<I>(settings: &BpeSettings, texts: I) -> Result<Tokenizer, TokenizerError>
    where
        I: Iterator<Item = String> + Send,
    {
        settings.validate()?;
        let specials: Vec<AddedToken> = settings.specials().into_iter().map(|t| AddedToken::from(t, true)).collect();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(settings.vocab_size)
            .min_frequency(settings.min_frequency)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tokenizer: Bpe = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))))
            .with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::new(false, false, true))))
            .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
            .build()?;
        tokenizer.train(&mut trainer, texts)?;
        Ok(Tokenizer { inner: tokenizers::Tokenizer::from(tokenizer) })
    }

    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Tokenizer, TokenizerError> {
        let inner: tokenizers::Tokenizer = json.parse()?;
        Ok(Tokenizer { inner })
    }

    /// The Hugging Face `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        Ok(self.inner.to_string(false)?)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.inner.encode(text, false)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        Ok(self.inner.decode(ids, false)?)
    }

    /// A `tokenizer_config.json` that lets `transformers`' `AutoTokenizer` use the tokenizer.
    pub fn hf_tokenizer_config(&self, model_max_length: usize) -> serde_json::Value {
        serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": END_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "unk_token": null,
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": false,
        })
    }
}

/// How GGUF marks a token (`tokenizer.ggml.token_type`): control tokens (end of text, turn
/// markers) and user-defined ones are matched whole in text, never split by merges.
pub const GGUF_CONTROL: i32 = 3;
pub const GGUF_USER_DEFINED: i32 = 4;

/// The pre-tokenizer splits of the byte-level BPE vocabularies GGUF names in
/// `tokenizer.ggml.pre`, as llama.cpp applies them: text is cut into pieces by each regex in
/// turn (each cutting the pieces of the one before), and merges never cross a cut. No regex:
/// GPT-2's own split, which `ByteLevel` applies itself. The second value: whether a piece that
/// is whole in the vocabulary skips the merges.
fn gguf_split(pre: &str) -> Result<(Vec<&'static str>, bool), TokenizerError> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    match pre {
        "gpt-2" => Ok((Vec::new(), false)),
        // llama.cpp's split for files whose converter did not recognize the tokenizer.
        "default" => Ok((vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"], false)),
        "llama-bpe" | "llama3" => Ok((
            vec![
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            true,
        )),
        "qwen2" => Ok((
            vec![
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            false,
        )),
        other => Err(TokenizerError::Settings(format!(
            "tokenizer.ggml.pre: {other:?} is not a pre-tokenizer the factory knows (gpt-2, default, llama-bpe, qwen2)"
        ))),
    }
}

impl Tokenizer {
    /// A byte-level BPE vocabulary as GGUF stores it (`tokenizer.ggml.model = "gpt2"`): tokens
    /// by id (already in byte-level form), merges as `"left right"`, each token's type, and the
    /// pre-tokenizer named by `tokenizer.ggml.pre`.
    pub fn from_gguf_bpe(
        tokens: &[String],
        merges: &[String],
        token_types: &[i32],
        pre: &str,
    ) -> Result<Tokenizer, TokenizerError> {
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(TokenizerError::Settings(format!(
                "{} token types for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        let (splits, ignore_merges) = gguf_split(pre)?;
        let vocab: serde_json::Map<String, serde_json::Value> =
            tokens.iter().enumerate().map(|(id, token)| (token.clone(), id.into())).collect();
        let added: Vec<serde_json::Value> = token_types
            .iter()
            .enumerate()
            .filter(|(_, kind)| **kind == GGUF_CONTROL || **kind == GGUF_USER_DEFINED)
            .map(|(id, kind)| {
                serde_json::json!({
                    "id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": *kind == GGUF_CONTROL,
                })
            })
            .collect();
        let byte_level = |use_regex: bool| serde_json::json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex });
        let pre_tokenizer = if splits.is_empty() {
            byte_level(true)
        } else {
            let mut steps: Vec<serde_json::Value> = splits
                .iter()
                .map(|pattern| serde_json::json!({ "type": "Split", "pattern": { "Regex": pattern }, "behavior": "Isolated", "invert": false }))
                .collect();
            steps.push(byte_level(false));
            serde_json::json!({ "type": "Sequence", "pretokenizers": steps })
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
            "pre_tokenizer": pre_tokenizer, "post_processor": null, "decoder": byte_level(true),
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
            },
        });
        Tokenizer::from_json(&json.to_string())
    }
}

/// GGUF's token types of an unknown token and of a byte token of a SentencePiece vocabulary
/// (`<0x0A>`).
pub const GGUF_UNKNOWN: i32 = 2;
pub const GGUF_BYTE: i32 = 6;

impl Tokenizer {
    /// A SentencePiece vocabulary as GGUF stores it (`tokenizer.ggml.model = "llama"`: Llama 2,
    /// Mistral, TinyLlama): pieces by id with their scores and types. It becomes what
    /// `transformers` converts such a vocabulary to: BPE whose merges are ranked by the merged
    /// piece's score, falling back to byte tokens (`<0xNN>`) for what the pieces do not cover,
    /// spaces written as `▁` and one prepended when `add_space_prefix` (llama.cpp's default).
    pub fn from_gguf_spm(
        tokens: &[String],
        scores: &[f32],
        token_types: &[i32],
        add_space_prefix: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        if scores.len() != tokens.len() || (!token_types.is_empty() && token_types.len() != tokens.len()) {
            return Err(TokenizerError::Settings(format!(
                "{} scores and {} token types for {} tokens",
                scores.len(),
                token_types.len(),
                tokens.len()
            )));
        }
        let kind = |id: usize| token_types.get(id).copied().unwrap_or(GGUF_NORMAL);
        let vocab: serde_json::Map<String, serde_json::Value> =
            tokens.iter().enumerate().map(|(id, token)| (token.clone(), id.into())).collect();
        let ids: std::collections::HashMap<&str, usize> =
            tokens.iter().enumerate().map(|(id, token)| (token.as_str(), id)).collect();
        // Every way a normal piece splits into two normal pieces is a merge, ranked by the
        // piece's score (ties in id order), as transformers' SentencePiece extractor ranks them.
        let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
        for (id, piece) in tokens.iter().enumerate().filter(|(id, _)| kind(*id) == GGUF_NORMAL) {
            for (cut, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(cut);
                if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                    if kind(l) == GGUF_NORMAL && kind(r) == GGUF_NORMAL {
                        merges.push((scores[id], id, l, r));
                    }
                }
            }
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then((a.2, a.3).cmp(&(b.2, b.3))));
        let merges: Vec<serde_json::Value> =
            merges.iter().map(|&(_, _, l, r)| serde_json::json!([tokens[l], tokens[r]])).collect();
        let special = |id: usize| matches!(kind(id), GGUF_CONTROL | GGUF_UNKNOWN);
        let added: Vec<serde_json::Value> = (0..tokens.len())
            .filter(|&id| special(id) || kind(id) == GGUF_USER_DEFINED)
            .map(|id| {
                serde_json::json!({
                    "id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": special(id),
                })
            })
            .collect();
        let unknown = (0..tokens.len()).find(|&id| kind(id) == GGUF_UNKNOWN).map(|id| tokens[id].clone());
        let space = "\u{2581}";
        let mut normalizers =
            vec![serde_json::json!({ "type": "Replace", "pattern": { "String": " " }, "content": space })];
        let mut decoders = vec![
            serde_json::json!({ "type": "Replace", "pattern": { "String": space }, "content": " " }),
            serde_json::json!({ "type": "ByteFallback" }),
            serde_json::json!({ "type": "Fuse" }),
        ];
        if add_space_prefix {
            normalizers.insert(0, serde_json::json!({ "type": "Prepend", "prepend": space }));
            decoders.push(serde_json::json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
        }
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": { "type": "Sequence", "normalizers": normalizers },
            "pre_tokenizer": null, "post_processor": null,
            "decoder": { "type": "Sequence", "decoders": decoders },
            "model": {
                "type": "BPE", "dropout": null, "unk_token": unknown, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        Tokenizer::from_json(&json.to_string())
    }
}

/// A byte-level BPE vocabulary as GGUF lists it: the inverse of [`Tokenizer::from_gguf_bpe`].
#[derive(Debug, Clone, PartialEq)]
pub struct GgufBpe {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
}

/// GGUF's token type of an ordinary token.
const GGUF_NORMAL: i32 = 1;

impl Tokenizer {
    /// This tokenizer as a GGUF vocabulary, when it is a byte-level BPE whose split llama.cpp
    /// knows (GPT-2's, Llama 3's, Qwen2's); otherwise says what it is instead.
    pub fn to_gguf_bpe(&self) -> Result<GgufBpe, TokenizerError> {
        let unsupported = |what: String| Err(TokenizerError::Settings(format!("a GGUF vocabulary: {what}")));
        let json: serde_json::Value = serde_json::from_str(&self.to_json()?)
            .map_err(|e| TokenizerError::Settings(format!("tokenizer.json: {e}")))?;
        let model = &json["model"];
        if model["type"] != "BPE" {
            return unsupported(format!("the model is {}, not byte-level BPE", model["type"]));
        }
        let pre = match &json["pre_tokenizer"] {
            split if split["type"] == "ByteLevel" && split["use_regex"] != false => "gpt-2".to_string(),
            sequence if sequence["type"] == "Sequence" => {
                let steps = sequence["pretokenizers"].as_array().map(Vec::as_slice).unwrap_or_default();
                let patterns: Vec<&str> = steps.iter().filter_map(|step| step["pattern"]["Regex"].as_str()).collect();
                let named = ["llama-bpe", "qwen2", "default"];
                match named.into_iter().find(|pre| gguf_split(pre).is_ok_and(|(splits, _)| splits == patterns)) {
                    Some(pre) => pre.to_string(),
                    None => return unsupported("its pre-tokenizer's split is not one llama.cpp names".to_string()),
                }
            }
            other => return unsupported(format!("pre-tokenizer {}", other["type"])),
        };
        let vocab = model["vocab"].as_object().map(|v| v.len()).unwrap_or_default();
        let size = self.inner.get_vocab_size(true).max(vocab);
        let mut tokens = vec![String::new(); size];
        let mut token_types = vec![GGUF_NORMAL; size];
        for (token, id) in self.inner.get_vocab(true) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = token;
            }
        }
        for (id, added) in self.inner.get_added_tokens_decoder() {
            if let Some(kind) = token_types.get_mut(id as usize) {
                *kind = if added.special { GGUF_CONTROL } else { GGUF_USER_DEFINED };
            }
        }
        if let Some(missing) = tokens.iter().position(String::is_empty) {
            return unsupported(format!("token id {missing} has no token"));
        }
        let merges = match model["merges"].as_array() {
            Some(merges) => merges
                .iter()
                .map(|merge| match merge {
                    serde_json::Value::String(pair) => Some(pair.clone()),
                    serde_json::Value::Array(pair) => Some(format!("{} {}", pair[0].as_str()?, pair[1].as_str()?)),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| TokenizerError::Settings("a GGUF vocabulary: malformed merges".to_string()))?,
            None => Vec::new(),
        };
        Ok(GgufBpe { tokens, merges, token_types, pre })
    }
}

/// Any Hugging Face `tokenizer.json` (WordPiece for BERT encoders, and so on), for models the
/// factory imports rather than trains. Encoding adds the model's special tokens and truncates to
/// `max_length` tokens, as sentence-transformers does.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    pub fn from_json(json: &str, max_length: usize) -> Result<TextTokenizer, TokenizerError> {
        let mut inner: tokenizers::Tokenizer = json.parse()?;
        let truncation = tokenizers::TruncationParams { max_length, ..Default::default() };
        inner.with_truncation(Some(truncation))?;
        inner.with_padding(None);
        Ok(TextTokenizer { inner })
    }

    /// Token ids with the special tokens the model expects (`[CLS] ... [SEP]` for BERT).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.inner.encode(text, true)?.get_ids().to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn corpus() -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/tinyshakespeare.txt");
        let text = std::fs::read_to_string(path).unwrap_or_else(|_| {
            "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n".repeat(200)
        });
        text.split("\n\n").map(str::to_string).collect()
    }

    #[test]
    fn trains_to_the_requested_size_and_round_trips_any_text() {
        let tokenizer = Tokenizer::train(&BpeSettings::new(512), corpus().into_iter()).unwrap();
        assert_eq!(tokenizer.vocab_size(), 512);
        assert_eq!(tokenizer.token_id(END_OF_TEXT), Some(0), "special tokens come first");
        for text in ["ROMEO: But, soft! what light through yonder window breaks?", "Zürich, 東京 and \u{1F600}\n\ttabs"]
        {
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(tokenizer.decode(&ids).unwrap(), text, "byte-level BPE loses nothing");
        }
        let english = tokenizer.encode("the king and the queen").unwrap();
        assert!(english.len() < "the king and the queen".len() / 2, "merges compress English: {english:?}");
    }

    #[test]
    fn tokenizer_json_reloads_identically() {
        let tokenizer = Tokenizer::train(&BpeSettings::new(300), corpus().into_iter().take(200)).unwrap();
        let json = tokenizer.to_json().unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["model"]["type"], "BPE");
        assert_eq!(value["pre_tokenizer"]["type"], "ByteLevel");
        let again = Tokenizer::from_json(&json).unwrap();
        let text = "Now is the winter of our discontent";
        assert_eq!(again.encode(text).unwrap(), tokenizer.encode(text).unwrap());
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let error = Tokenizer::train(&BpeSettings::new(100), corpus().into_iter()).err().unwrap();
        assert!(error.to_string().contains("vocab_size 100 is below 257"), "{error}");
    }

    #[test]
    fn a_gguf_byte_level_vocabulary_tokenizes_as_the_tokenizer_it_came_from() {
        let trained = Tokenizer::train(&BpeSettings::new(600), corpus().into_iter().take(400)).unwrap();
        let GgufBpe { tokens, merges, token_types, pre } = trained.to_gguf_bpe().unwrap();
        assert_eq!(pre, "gpt-2");
        assert_eq!(token_types[trained.token_id(END_OF_TEXT).unwrap() as usize], GGUF_CONTROL);
        let converted = Tokenizer::from_gguf_bpe(&tokens, &merges, &token_types, &pre).unwrap();
        // And back: the converted tokenizer lists the same vocabulary (a Qwen2 split survives too).
        assert_eq!(
            converted.to_gguf_bpe().unwrap(),
            GgufBpe { tokens: tokens.clone(), merges: merges.clone(), token_types: token_types.clone(), pre }
        );
        let qwen = Tokenizer::from_gguf_bpe(&tokens, &merges, &token_types, "qwen2").unwrap();
        assert_eq!(qwen.to_gguf_bpe().unwrap().pre, "qwen2");
        assert_eq!(converted.vocab_size(), trained.vocab_size());
        let mut texts: Vec<String> = corpus().into_iter().skip(400).take(200).collect();
        texts.push(format!("First line{END_OF_TEXT}second, with the end of text inside"));
        texts.push("Zürich, 東京 and \u{1F600}\n\ttabs  and   spaces".to_string());
        for text in &texts {
            let ids = converted.encode(text).unwrap();
            assert_eq!(ids, trained.encode(text).unwrap(), "{text:?}");
            assert_eq!(&converted.decode(&ids).unwrap(), text);
        }
        let marked = converted.encode(&format!("a{END_OF_TEXT}b")).unwrap();
        assert!(marked.contains(&trained.token_id(END_OF_TEXT).unwrap()), "control tokens are matched whole");
    }

    #[test]
    fn llama3_and_qwen2_pieces_split_digits_as_llama_cpp_does() {
        // The digits and the merges that make "12345" whole when nothing splits it (merges apply
        // lowest rank first); "4 5" and "12 3" come last, for the pieces a split leaves.
        let tokens: Vec<String> =
            ["1", "2", "3", "4", "5", "12", "34", "1234", "12345", "45", "123"].map(String::from).to_vec();
        let merges: Vec<String> = ["1 2", "3 4", "12 34", "1234 5", "4 5", "12 3"].map(String::from).to_vec();
        let types = vec![1; tokens.len()];
        let pieces = |pre: &str| {
            let tokenizer = Tokenizer::from_gguf_bpe(&tokens, &merges, &types, pre).unwrap();
            let ids = tokenizer.encode("12345").unwrap();
            ids.iter().map(|id| tokenizer.decode(&[*id]).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(pieces("gpt-2"), ["12345"], "GPT-2 keeps a number whole");
        assert_eq!(pieces("llama-bpe"), ["123", "45"], "Llama 3 splits numbers into threes");
        assert_eq!(pieces("qwen2"), ["1", "2", "3", "4", "5"], "Qwen2 splits every digit");
        let unknown = Tokenizer::from_gguf_bpe(&tokens, &merges, &types, "gemma").err().unwrap();
        assert!(unknown.to_string().contains("tokenizer.ggml.pre: \"gemma\""), "{unknown}");
    }

    #[test]
    fn sentencepiece_vocabularies_tokenize_as_llama_cpp_does() {
        let texts = [
            "Now is the winter of our discontent",
            "  two  spaces and a trailing one ",
            "Zürich, 東京 and \u{1F600}: bytes the pieces do not cover",
            "the ocean\nburied\tdeep",
            "upon",
            "",
        ];
        let dir = std::env::temp_dir().join(format!("spm-parity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/spm_parity.py");
        let output = std::process::Command::new("python3")
            .args([script, dir.join("spm.gguf").to_str().unwrap(), &serde_json::to_string(&texts).unwrap()])
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let output = match output {
            Ok(output) if output.status.success() => output,
            other => {
                factory_testkit::missing(&format!(
                    "llama-cpp-python and gguf (pip install llama-cpp-python gguf): SentencePiece parity untested ({:?})",
                    other.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                ));
                return;
            }
        };
        let llama_cpp: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let tokens: Vec<String> = serde_json::from_value(llama_cpp["tokens"].clone()).unwrap();
        let scores: Vec<f32> = serde_json::from_value(llama_cpp["scores"].clone()).unwrap();
        let types: Vec<i32> = serde_json::from_value(llama_cpp["types"].clone()).unwrap();
        let expected: Vec<Vec<u32>> = serde_json::from_value(llama_cpp["ids"].clone()).unwrap();
        let tokenizer = Tokenizer::from_gguf_spm(&tokens, &scores, &types, true).unwrap();
        for (text, expected) in texts.iter().zip(&expected) {
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(&ids, expected, "{text:?}");
            assert_eq!(tokenizer.decode(&ids).unwrap(), *text, "decoding gives the text back");
        }
        // The end of sequence is matched whole, never spelled out of pieces.
        assert_eq!(tokenizer.encode("upon</s>").unwrap().last(), Some(&2));
    }
}
