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

/// The normalised tokens of `text` joined by single spaces into `joined`, with each token's
/// byte range in `bounds`: what [`normalized_tokens`] yields, without an allocation per token
/// (non-ASCII tokens still lowercase through `str::to_lowercase`, for its special cases).
pub fn normalize_into(text: &str, joined: &mut String, bounds: &mut Vec<(usize, usize)>) {
    joined.clear();
    bounds.clear();
    for token in text.split_whitespace() {
        let trimmed = token.trim_matches(|c: char| !c.is_alphanumeric());
        if trimmed.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(' ');
        }
        let start = joined.len();
        if trimmed.is_ascii() {
            joined.extend(trimmed.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            joined.push_str(&trimmed.to_lowercase());
        }
        bounds.push((start, joined.len()));
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

    #[test]
    fn joined_form_matches_the_tokens() {
        let (mut joined, mut bounds) = (String::new(), Vec::new());
        for text in ["  »Hello,   WORLD!«  – don't\n", "Straße ÉTÉ 3.14.", "", "...", "ΣΟΦΙΑ σοφία"] {
            normalize_into(text, &mut joined, &mut bounds);
            let tokens: Vec<String> = normalized_tokens(text).collect();
            assert_eq!(joined, tokens.join(" "), "{text:?}");
            let sliced: Vec<&str> = bounds.iter().map(|&(a, b)| &joined[a..b]).collect();
            assert_eq!(sliced, tokens, "{text:?}");
        }
    }
}
