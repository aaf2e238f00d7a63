//! Statistics of the text column a language model is trained on.
//!
//! Training and monitoring need more than a column profile of the text: how much text there is
//! (documents, characters, tokens), what its tokens look like, which languages it is in, and a
//! token frequency table that the drift monitor later compares live traffic against. Everything
//! is accumulated per document in bounded memory and merges across shards, like
//! [`crate::ColumnProfiler`].
//!
//! * Tokens are whitespace-delimited; the token-length histogram counts raw tokens, the
//!   frequency table counts normalised tokens ([`crate::normalize`]), so "The" and "the," are one
//!   entry.
//! * The frequency table is a Space-Saving summary ([`crate::topk`]) of 2,000 counters, reported
//!   as the 1,000 most frequent tokens with their probability and a remainder `other` mass, so
//!   the distribution sums to 1 and can be compared (KL / Jensen-Shannon, PSI) with another.
//! * A document's language is guessed from its first trigrams ([`crate::language`]) for the
//!   first [`LANGUAGE_ALL_UNTIL`] documents and then for about one document in
//!   [`LANGUAGE_STRIDE`] (chosen by a hash of the position): the mix is estimated from that
//!   sample, because guessing every document made language detection the costliest step of
//!   ingest.

use serde::{Deserialize, Serialize};

use crate::hash::{hash_i64, hash_str};
use crate::language::{detect_language, Language};
use crate::normalize::normalize_token;
use crate::numeric::{NumericAccumulator, NumericSummary};
use crate::topk::{truncate_label, SpaceSaving};

/// Counters in the token frequency summary (twice the reported size keeps the reported tail's
/// error bounds small).
const TOKEN_CAPACITY: usize = 2_000;
/// Tokens reported in [`TokenDistribution::tokens`].
pub const TOP_TOKENS: usize = 1_000;
/// Token lengths 1..=`MAX_TOKEN_LENGTH_BIN` have their own bin; longer tokens share the last.
pub const MAX_TOKEN_LENGTH_BIN: usize = 32;
/// Every document's language is guessed up to this many documents...
pub const LANGUAGE_ALL_UNTIL: u64 = 1_000;
/// ...and one in this many after.
pub const LANGUAGE_STRIDE: u64 = 8;

/// Incremental profiler of a training-text column; see the module documentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextProfiler {
    documents: u64,
    empty_documents: u64,
    characters: u64,
    bytes: u64,
    tokens: u64,
    document_characters: NumericAccumulator,
    document_tokens: NumericAccumulator,
    /// Index `i` counts tokens of `i + 1` characters, the last also everything longer.
    token_lengths: Vec<u64>,
    token_counts: SpaceSaving,
    /// Sampled documents per language, indexed by `Language::index`.
    languages: [u64; 4],
    /// Documents whose language was guessed.
    #[serde(default)]
    language_sample: u64,
}

impl Default for TextProfiler {
    fn default() -> Self {
        Self::new()
    }
}

/// The finished text statistics, embedded in the data set manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextProfile {
    pub documents: u64,
    /// Documents with no non-whitespace character.
    pub empty_documents: u64,
    /// Unicode scalar values.
    pub characters: u64,
    pub bytes: u64,
    /// Whitespace-delimited tokens.
    pub whitespace_tokens: u64,
    /// Characters per document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_characters: Option<NumericSummary>,
    /// Whitespace tokens per document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_tokens: Option<NumericSummary>,
    /// Tokens by length in characters.
    pub token_lengths: Vec<TokenLengthBin>,
    pub token_distribution: TokenDistribution,
    /// The data set's language: the most common per-document guess (unknown included, so a
    /// corpus that is mostly unrecognised text is reported as unknown).
    pub language: Language,
    /// Sampled documents per language, in [`Language::ALL`] order.
    pub languages: Vec<LanguageShare>,
    /// Documents whose language was guessed (all of the first 1,000, then about one in 8).
    #[serde(default)]
    pub language_sample: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLengthBin {
    /// Token length in characters; the last bin holds this length and longer.
    pub length: usize,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub and_longer: bool,
    pub count: u64,
}

/// The normalised token distribution a drift monitor compares against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenDistribution {
    /// Normalised tokens counted (tokens of punctuation only are skipped).
    pub total: u64,
    /// Up to [`TOP_TOKENS`] tokens, most frequent first.
    pub tokens: Vec<TokenFrequency>,
    /// Probability mass of every token not listed; with the listed probabilities it sums to 1.
    pub other_probability: f64,
}

/// A token's Space-Saving count (true count in `[count - max_error, count]`) and its share of
/// all tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenFrequency {
    pub token: String,
    pub count: u64,
    pub max_error: u64,
    pub probability: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageShare {
    pub language: Language,
    /// Sampled documents guessed to be in this language.
    pub documents: u64,
    /// `documents` over the sampled documents: the estimated share of the whole column.
    pub share: f64,
}

impl TextProfiler {
    pub fn new() -> Self {
        Self {
            documents: 0,
            empty_documents: 0,
            characters: 0,
            bytes: 0,
            tokens: 0,
            document_characters: NumericAccumulator::default(),
            document_tokens: NumericAccumulator::default(),
            token_lengths: vec![0; MAX_TOKEN_LENGTH_BIN],
            token_counts: SpaceSaving::new(TOKEN_CAPACITY),
            languages: [0; 4],
            language_sample: 0,
        }
    }

    /// Profiles one document.
    pub fn observe(&mut self, document: &str) {
        self.documents += 1;
        let characters = document.chars().count() as u64;
        self.characters += characters;
        self.bytes += document.len() as u64;
        self.document_characters.push_i64(characters as i64);
        let mut tokens = 0u64;
        for token in document.split_whitespace() {
            tokens += 1;
            let length = token.chars().count().clamp(1, MAX_TOKEN_LENGTH_BIN);
            if let Some(bin) = self.token_lengths.get_mut(length - 1) {
                *bin += 1;
            }
            if let Some(normalised) = normalize_token(token) {
                self.token_counts.offer(hash_str(&normalised), || truncate_label(&normalised).0);
            }
        }
        if tokens == 0 {
            self.empty_documents += 1;
        }
        self.tokens += tokens;
        self.document_tokens.push_i64(tokens as i64);
        // Which documents are sampled is decided by a hash of their position, not by the
        // position itself, so data with a period (every fourth row German) is not aliased.
        if self.documents <= LANGUAGE_ALL_UNTIL || hash_i64(self.documents as i64).is_multiple_of(LANGUAGE_STRIDE) {
            self.language_sample += 1;
            let language = detect_language(document).language;
            if let Some(slot) = self.languages.get_mut(language.index()) {
                *slot += 1;
            }
        }
    }

    /// Adds another shard's documents.
    pub fn merge(&mut self, other: TextProfiler) {
        self.documents += other.documents;
        self.empty_documents += other.empty_documents;
        self.characters += other.characters;
        self.bytes += other.bytes;
        self.tokens += other.tokens;
        self.document_characters.merge(&other.document_characters);
        self.document_tokens.merge(&other.document_tokens);
        if self.token_lengths.len() < other.token_lengths.len() {
            self.token_lengths.resize(other.token_lengths.len(), 0);
        }
        for (mine, theirs) in self.token_lengths.iter_mut().zip(&other.token_lengths) {
            *mine += theirs;
        }
        self.token_counts.merge(&other.token_counts);
        for (mine, theirs) in self.languages.iter_mut().zip(other.languages) {
            *mine += theirs;
        }
        self.language_sample += other.language_sample;
    }

    pub fn finish(&self) -> TextProfile {
        let total = self.token_counts.total();
        // After merges the counters may sum to more than the stream (each side's floor is
        // added), so probabilities are taken over the larger of the two to stay within 1.
        let counted: u64 = self.token_counts.ranked().iter().map(|c| c.count).sum();
        let denominator = total.max(counted).max(1) as f64;
        let tokens: Vec<TokenFrequency> = self
            .token_counts
            .ranked()
            .into_iter()
            .take(TOP_TOKENS)
            .map(|c| TokenFrequency {
                token: c.label.clone(),
                count: c.count,
                max_error: c.error,
                probability: c.count as f64 / denominator,
            })
            .collect();
        let listed: f64 = tokens.iter().map(|t| t.probability).sum();
        let other_probability = if total == 0 { 0.0 } else { (1.0 - listed).max(0.0) };
        let last = self.token_lengths.len();
        let token_lengths = self
            .token_lengths
            .iter()
            .enumerate()
            .map(|(i, &count)| TokenLengthBin { length: i + 1, and_longer: i + 1 == last, count })
            .collect();
        let languages: Vec<LanguageShare> = Language::ALL
            .iter()
            .map(|&language| {
                let documents = self.languages.get(language.index()).copied().unwrap_or(0);
                LanguageShare {
                    language,
                    documents,
                    share: if self.language_sample == 0 { 0.0 } else { documents as f64 / self.language_sample as f64 },
                }
            })
            .collect();
        // Ties go to the first language in `Language::ALL` order, unknown last.
        let language = languages
            .iter()
            .filter(|share| share.documents > 0)
            .fold(None::<&LanguageShare>, |best, share| match best {
                Some(b) if b.documents >= share.documents => Some(b),
                _ => Some(share),
            })
            .map_or(Language::Unknown, |share| share.language);
        TextProfile {
            documents: self.documents,
            empty_documents: self.empty_documents,
            characters: self.characters,
            bytes: self.bytes,
            whitespace_tokens: self.tokens,
            document_characters: (!self.document_characters.is_empty()).then(|| self.document_characters.summary()),
            document_tokens: (!self.document_tokens.is_empty()).then(|| self.document_tokens.summary()),
            token_lengths,
            token_distribution: TokenDistribution { total, tokens, other_probability },
            language,
            languages,
            language_sample: self.language_sample,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EN: &str = "The old lady pulled her spectacles down and looked over them about the room.";
    const DE: &str = "Da fing sie an zu weinen und weinte immer lauter und konnte sich gar nicht trösten.";

    #[test]
    fn counts_tokens_and_lengths() {
        let mut p = TextProfiler::new();
        p.observe("Hello, hello  world! ");
        p.observe("   ");
        p.observe(&"a".repeat(40));
        let profile = p.finish();
        assert_eq!(profile.documents, 3);
        assert_eq!(profile.empty_documents, 1);
        assert_eq!(profile.whitespace_tokens, 4);
        assert_eq!(profile.characters, 21 + 3 + 40);
        let lengths: Vec<(usize, u64)> =
            profile.token_lengths.iter().filter(|b| b.count > 0).map(|b| (b.length, b.count)).collect();
        assert_eq!(lengths, vec![(5, 1), (6, 2), (MAX_TOKEN_LENGTH_BIN, 1)]);
        assert!(profile.token_lengths.last().is_some_and(|b| b.and_longer));
        let tokens: Vec<(&str, u64)> =
            profile.token_distribution.tokens.iter().map(|t| (t.token.as_str(), t.count)).collect();
        assert_eq!(tokens[0], ("hello", 2));
        assert_eq!(profile.token_distribution.total, 4);
    }

    #[test]
    fn distribution_sums_to_one() {
        let mut p = TextProfiler::new();
        // More distinct tokens than counters, so the tail is in `other_probability`.
        for i in 0..3_000 {
            p.observe(&format!("the cat number{i} sat on the mat"));
        }
        let d = p.finish().token_distribution;
        assert_eq!(d.tokens.len(), TOP_TOKENS);
        let listed: f64 = d.tokens.iter().map(|t| t.probability).sum();
        assert!((listed + d.other_probability - 1.0).abs() < 1e-9);
        assert_eq!(d.tokens[0].token, "the");
        assert!((d.tokens[0].probability - 2.0 / 7.0).abs() < 1e-9);
        assert!(d.other_probability > 0.0);
    }

    #[test]
    fn language_mix_and_dataset_guess() {
        let mut p = TextProfiler::new();
        for _ in 0..3 {
            p.observe(EN);
        }
        p.observe(DE);
        p.observe("12 34");
        let profile = p.finish();
        assert_eq!(profile.language, Language::English);
        let shares: Vec<(Language, u64)> = profile.languages.iter().map(|s| (s.language, s.documents)).collect();
        assert_eq!(
            shares,
            vec![(Language::English, 3), (Language::German, 1), (Language::French, 0), (Language::Unknown, 1)]
        );
        assert!((profile.languages[0].share - 0.6).abs() < 1e-12);
        assert_eq!(TextProfiler::new().finish().language, Language::Unknown);
    }

    #[test]
    fn languages_are_estimated_from_a_systematic_sample() {
        let mut p = TextProfiler::new();
        for i in 0..3_000u64 {
            p.observe(if i % 4 == 0 { DE } else { EN });
        }
        let profile = p.finish();
        assert_eq!(profile.documents, 3_000);
        let expected = 1_000 + 2_000 / LANGUAGE_STRIDE;
        assert!(profile.language_sample.abs_diff(expected) < 60, "{} sampled", profile.language_sample);
        assert_eq!(profile.language, Language::English);
        let german = profile.languages.iter().find(|s| s.language == Language::German).map(|s| s.share);
        assert!(german.is_some_and(|share| (share - 0.25).abs() < 0.03), "periodic data is not aliased: {german:?}");
    }

    #[test]
    fn merge_and_json_round_trip() {
        let docs = [EN, DE, "Il était onze heures du soir.", EN];
        let mut whole = TextProfiler::new();
        let mut a = TextProfiler::new();
        let mut b = TextProfiler::new();
        for (i, doc) in docs.iter().enumerate() {
            whole.observe(doc);
            if i % 2 == 0 {
                a.observe(doc);
            } else {
                b.observe(doc);
            }
        }
        let json = serde_json::to_string(&b).unwrap_or_default();
        let b: TextProfiler = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        a.merge(b);
        let (x, y) = (whole.finish(), a.finish());
        assert_eq!(x.documents, y.documents);
        assert_eq!(x.whitespace_tokens, y.whitespace_tokens);
        assert_eq!(x.token_lengths, y.token_lengths);
        assert_eq!(x.languages, y.languages);
        assert_eq!(x.token_distribution.total, y.token_distribution.total);
        let profile_json = serde_json::to_string(&y).unwrap_or_default();
        assert!(profile_json.contains("\"language\":\"en\""), "{profile_json}");
        let back: TextProfile = serde_json::from_str(&profile_json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, y);
    }
}
