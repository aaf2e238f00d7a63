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
}
