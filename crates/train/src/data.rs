//! From documents to the token streams training samples from.

use factory_tokenizer::{Tokenizer, TokenizerError, END_OF_TEXT};

/// Training and validation tokens, each one stream with documents separated by `<|endoftext|>`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStreams {
    pub train: Vec<u32>,
    pub validation: Vec<u32>,
}

/// Encodes every document and joins them with the end-of-text token.
pub fn tokenize_documents<I>(tokenizer: &Tokenizer, documents: I) -> Result<Vec<u32>, TokenizerError>
where
    I: IntoIterator<Item = String>,
{
    tokenize_separated(tokenizer, documents, tokenizer.token_id(END_OF_TEXT))
}

/// Encodes every document and ends each with `separator` (an imported model's own end of
/// sequence, whose vocabulary has no `<|endoftext|>`).
pub fn tokenize_separated<I>(
    tokenizer: &Tokenizer,
    documents: I,
    separator: Option<u32>,
) -> Result<Vec<u32>, TokenizerError>
where
    I: IntoIterator<Item = String>,
{
    let mut stream = Vec::new();
    for document in documents {
        stream.extend(tokenizer.encode(&document)?);
        stream.extend(separator);
    }
    Ok(stream)
}

/// Holds out the last `fraction` of the stream for validation (at least one window of
/// `seq_len + 1` tokens when the fraction is positive), so the two never share a token.
pub fn split_tokens(mut stream: Vec<u32>, fraction: f64, seq_len: usize) -> Result<TokenStreams, String> {
    let window = seq_len + 1;
    let held_out = if fraction > 0.0 { ((stream.len() as f64 * fraction) as usize).max(window) } else { 0 };
    if stream.len() < held_out + window {
        return Err(format!(
            "the data has {} tokens; training needs at least {} (one window of {window} plus {held_out} held out)",
            stream.len(),
            held_out + window
        ));
    }
    let validation = stream.split_off(stream.len() - held_out);
    Ok(TokenStreams { train: stream, validation })
}
