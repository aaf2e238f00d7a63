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
/// `tokenizer.ggml.pre`, as llama.cpp applies them: text is cut into pieces by the regex, and
/// merges never cross a cut. (`None`: GPT-2's own split, which `ByteLevel` applies itself.)
fn gguf_split(pre: &str) -> Result<(Option<&'static str>, bool), TokenizerError> {
    // (regex, whether a piece that is whole in the vocabulary skips the merges)
    match pre {
        "gpt2" | "default" => Ok((None, false)),
        "llama-bpe" | "llama3" => Ok((
            Some(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ),
            true,
        )),
        "qwen2" => Ok((
            Some(
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ),
            false,
        )),
        other => Err(TokenizerError::Settings(format!(
            "tokenizer.ggml.pre: {other:?} is not a pre-tokenizer the factory knows (gpt2, llama-bpe, qwen2)"
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
        let (split, ignore_merges) = gguf_split(pre)?;
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
        let pre_tokenizer = match split {
            None => byte_level(true),
            Some(pattern) => serde_json::json!({ "type": "Sequence", "pretokenizers": [
                { "type": "Split", "pattern": { "Regex": pattern }, "behavior": "Isolated", "invert": false },
                byte_level(false),
            ]}),
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

    /// A trained tokenizer's vocabulary and merges as GGUF lists them: tokens by id, merges as
    /// "left right", the end-of-text token marked as control.
    fn as_gguf(tokenizer: &Tokenizer) -> (Vec<String>, Vec<String>, Vec<i32>) {
        let json: serde_json::Value = serde_json::from_str(&tokenizer.to_json().unwrap()).unwrap();
        let vocab = json["model"]["vocab"].as_object().unwrap();
        let mut tokens = vec![String::new(); vocab.len()];
        for (token, id) in vocab {
            tokens[id.as_u64().unwrap() as usize] = token.clone();
        }
        let merges = json["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(pair) => pair.clone(),
                pair => format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
            })
            .collect();
        let types = tokens.iter().map(|t| if t == END_OF_TEXT { GGUF_CONTROL } else { 1 }).collect();
        (tokens, merges, types)
    }

    #[test]
    fn a_gguf_byte_level_vocabulary_tokenizes_as_the_tokenizer_it_came_from() {
        let trained = Tokenizer::train(&BpeSettings::new(600), corpus().into_iter().take(400)).unwrap();
        let (tokens, merges, types) = as_gguf(&trained);
        let converted = Tokenizer::from_gguf_bpe(&tokens, &merges, &types, "gpt2").unwrap();
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
        assert_eq!(pieces("gpt2"), ["12345"], "GPT-2 keeps a number whole");
        assert_eq!(pieces("llama-bpe"), ["123", "45"], "Llama 3 splits numbers into threes");
        assert_eq!(pieces("qwen2"), ["1", "2", "3", "4", "5"], "Qwen2 splits every digit");
        let unknown = Tokenizer::from_gguf_bpe(&tokens, &merges, &types, "gemma").err().unwrap();
        assert!(unknown.to_string().contains("tokenizer.ggml.pre: \"gemma\""), "{unknown}");
    }
}
