//! The one text normalisation used for exact-duplicate hashing, shingling and token counting.
//!
//! Copies of a document rarely match byte for byte: they differ in case, line wrapping and the
//! quotes or punctuation hugging words. Comparing normalised tokens makes those copies equal
//! while keeping the words themselves, and using the same tokens everywhere means the text
//! profile's token table and the deduplicator agree on what a word is.

/// Splits on Unicode whitespace, lowercases (full Unicode case mapping), and trims every
/// character that is neither alphabetic nor numeric from both ends of each token; tokens that
/// were only punctuation disappear. Inner punctuation stays ("don't", "3.14", "e-mail").
pub fn normalized_tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace().filter_map(normalize_token)
}

/// Normalises one whitespace-delimited token, or `None` if nothing alphanumeric remains.
pub fn normalize_token(token: &str) -> Option<String> {
    let trimmed = token.trim_matches(|c: char| !c.is_alphanumeric());
    if trimmed.is_empty() {
        None
    } else {
        Some(trimmed.to_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_whitespace_and_edge_punctuation_vanish() {
        let a: Vec<String> = normalized_tokens("  »Hello,   WORLD!«  – don't\n").collect();
        assert_eq!(a, vec!["hello", "world", "don't"]);
        let b: Vec<String> = normalized_tokens("Straße ÉTÉ 3.14.").collect();
        assert_eq!(b, vec!["straße", "été", "3.14"]);
    }
}
