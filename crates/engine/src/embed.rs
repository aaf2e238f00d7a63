//! Sentence embeddings: a BERT-family encoder with its WordPiece tokenizer, mean pooling and
//! L2 normalisation, as sentence-transformers computes them.

use factory_model::{BertConfig, BertEncoder, Device, ModelError};
use factory_tokenizer::TextTokenizer;

/// Texts encoded together in one forward pass.
const BATCH: usize = 32;

pub struct Embedder {
    encoder: BertEncoder,
    tokenizer: TextTokenizer,
}

impl Embedder {
    /// From `config.json`, `model.safetensors` and `tokenizer.json`; inputs are truncated to
    /// `max_tokens` (sentence-transformers' `max_seq_length`, 256 for all-MiniLM-L6-v2).
    pub fn load(config: &str, weights: &[u8], tokenizer: &str, max_tokens: usize) -> Result<Self, ModelError> {
        let config = BertConfig::from_json(config)?;
        let max_tokens = max_tokens.min(config.max_position_embeddings);
        let encoder = BertEncoder::from_safetensors(config, weights, &Device::Cpu)?;
        let tokenizer = TextTokenizer::from_json(tokenizer, max_tokens)
            .map_err(|e| ModelError::Config(format!("tokenizer.json: {e}")))?;
        Ok(Embedder { encoder, tokenizer })
    }

    pub fn parameter_count(&self) -> usize {
        self.encoder.parameter_count()
    }

    pub fn dimensions(&self) -> usize {
        self.encoder.config.hidden_size
    }

    /// One unit vector per text, and the number of tokens read.
    pub fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), ModelError> {
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for chunk in texts.chunks(BATCH) {
            let encoded: Vec<Vec<u32>> = chunk
                .iter()
                .map(|text| self.tokenizer.encode(text).map_err(|e| ModelError::Input(e.to_string())))
                .collect::<Result<_, _>>()?;
            tokens += encoded.iter().map(Vec::len).sum::<usize>();
            vectors.extend(self.encoder.embed(&encoded)?);
        }
        Ok((vectors, tokens))
    }
}
