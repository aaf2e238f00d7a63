//! A small built-in language guess for training text: English, German, French, or unknown.
//!
//! The factory needs to know which language a training corpus is in (and how mixed it is)
//! without shipping a model or calling a service. The method is a naive-Bayes classifier over
//! character trigrams, the features of Cavnar and Trenkle's "N-gram-based text categorization"
//! (1994): each word is lowercased and padded with spaces, every run of three characters is a
//! trigram, and a language's score is the sum of `ln P(trigram | language)`. Trigrams outside
//! the table share one "other" probability per language, so they still count as evidence.
//!
//! The table ([`crate::language_table`]) holds the union of each language's 300 most frequent
//! trigrams with smoothed log-probabilities, derived from public-domain novels by
//! `scripts/gen_language_table.py` (which documents the training split) and committed as
//! source, so the build reads no data and the table is reproducible.
//!
//! A text is `Unknown` when it has too few trigrams to judge, or when too few of its trigrams
//! are in the table at all: another script (Cyrillic, CJK) matches almost none of them.
//! Limitation: Latin-script languages close to the three (Spanish, Dutch) share enough trigrams
//! to pass that test and are reported as the nearest of the three; a guess is "which of en, de,
//! fr, if any", not open-set identification.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::language_table::{LANGUAGE_ORDER, OTHER_LOG_PROB, TRIGRAMS};

/// Below this many trigrams (about two or three words) a guess is noise.
pub const MIN_TRIGRAMS: usize = 10;
/// Below this share of trigrams found in the table the text is not in a known language. The
/// paragraphs of the English, German and French corpora score 0.58 to 0.91 (median about 0.7);
/// other scripts score near 0, Italian about 0.43.
pub const MIN_COVERAGE: f64 = 0.45;
/// Trigrams read per text: a few paragraphs decide the language, and the cost per document
/// stays bounded however long it is.
pub const MAX_TRIGRAMS: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Language {
    #[serde(rename = "en")]
    English,
    #[serde(rename = "de")]
    German,
    #[serde(rename = "fr")]
    French,
    #[serde(rename = "unknown")]
    Unknown,
}

impl Language {
    /// Every value, in report order.
    pub const ALL: [Language; 4] = [Language::English, Language::German, Language::French, Language::Unknown];

    /// ISO 639-1 code, or "unknown".
    pub fn code(self) -> &'static str {
        match self {
            Language::English => "en",
            Language::German => "de",
            Language::French => "fr",
            Language::Unknown => "unknown",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Language::English => 0,
            Language::German => 1,
            Language::French => 2,
            Language::Unknown => 3,
        }
    }
}

/// The guess for one text, with the evidence behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LanguageGuess {
    pub language: Language,
    /// Trigrams scored.
    pub trigrams: usize,
    /// Share of those found in the table.
    pub coverage: f64,
    /// Log-likelihood lead of the best language over the runner-up, in nats per trigram.
    pub margin: f64,
}

/// Calls `visit` with every trigram of `text` (lowercased, non-letters separate words, words
/// padded with one space), up to `limit` of them. Must match `trigrams` in the generator.
///
/// Streams over the characters with a two-character window instead of collecting words, so it
/// allocates nothing.
fn for_each_trigram(text: &str, limit: usize, mut visit: impl FnMut([char; 3])) {
    let mut seen = 0usize;
    // The last two characters of the current padded word, and how many it has had (0: not in
    // a word; capped at 2).
    let mut window = [' ', ' '];
    let mut length = 0usize;
    let mut emit = |trigram: [char; 3], seen: &mut usize| {
        if *seen < limit {
            visit(trigram);
            *seen += 1;
        }
    };
    for c in text.chars() {
        if seen >= limit {
            return;
        }
        for lower in c.to_lowercase() {
            if lower.is_alphabetic() {
                match length {
                    0 => {
                        window = [' ', lower];
                        length = 2;
                    }
                    _ => {
                        emit([window[0], window[1], lower], &mut seen);
                        window = [window[1], lower];
                    }
                }
            } else if length > 0 {
                emit([window[0], window[1], ' '], &mut seen);
                length = 0;
            }
        }
    }
    if length > 0 {
        emit([window[0], window[1], ' '], &mut seen);
    }
}

/// Packs three characters (21 bits each) into one integer key.
fn pack(trigram: [char; 3]) -> u64 {
    trigram.iter().fold(0u64, |key, &c| (key << 21) | u64::from(u32::from(c)))
}

/// The table keyed by packed trigram and sorted by key, built once: integer comparisons make
/// the lookup several times faster than comparing strings.
static PACKED: LazyLock<Vec<(u64, [f32; 3])>> = LazyLock::new(|| {
    let mut packed: Vec<(u64, [f32; 3])> = TRIGRAMS
        .iter()
        .filter_map(|(text, row)| {
            let mut chars = text.chars();
            let trigram = [chars.next()?, chars.next()?, chars.next()?];
            Some((pack(trigram), *row))
        })
        .collect();
    packed.sort_by_key(|(key, _)| *key);
    packed
});

/// Guesses the language of `text` from its first [`MAX_TRIGRAMS`] trigrams.
pub fn detect_language(text: &str) -> LanguageGuess {
    let table = &*PACKED;
    let mut scores = [0f64; 3];
    let mut trigrams = 0usize;
    let mut hits = 0usize;
    for_each_trigram(text, MAX_TRIGRAMS, |trigram| {
        trigrams += 1;
        let key = pack(trigram);
        let row = match table.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(position) => {
                hits += 1;
                table.get(position).map_or(OTHER_LOG_PROB, |(_, p)| *p)
            }
            Err(_) => OTHER_LOG_PROB,
        };
        for (score, log_prob) in scores.iter_mut().zip(row) {
            *score += f64::from(log_prob);
        }
    });
    let coverage = if trigrams == 0 { 0.0 } else { hits as f64 / trigrams as f64 };
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let margin = if trigrams == 0 { 0.0 } else { (scores[order[0]] - scores[order[1]]) / trigrams as f64 };
    let language =
        if trigrams < MIN_TRIGRAMS || coverage < MIN_COVERAGE { Language::Unknown } else { LANGUAGE_ORDER[order[0]] };
    LanguageGuess { language, trigrams, coverage, margin }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(TRIGRAMS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(TRIGRAMS.iter().all(|(t, _)| t.chars().count() == 3));
        assert_eq!(PACKED.len(), TRIGRAMS.len());
        assert!(PACKED.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn trigrams_follow_the_generator() {
        let mut seen = Vec::new();
        for_each_trigram("Ab, c'DÉ", 100, |t| seen.push(t.iter().collect::<String>()));
        assert_eq!(seen, vec![" ab", "ab ", " c ", " dé", "dé "]);
        let mut limited = 0;
        for_each_trigram("hello world", 3, |_| limited += 1);
        assert_eq!(limited, 3);
    }

    #[test]
    fn guesses_short_sentences() {
        let cases = [
            ("The old lady pulled her spectacles down and looked over them about the room.", Language::English),
            ("Da fing sie an zu weinen und weinte immer lauter und konnte sich gar nicht trösten.", Language::German),
            ("Il était onze heures du soir, et les nuits sont courtes encore sous cette latitude.", Language::French),
        ];
        for (text, expected) in cases {
            assert_eq!(detect_language(text).language, expected, "{text}");
        }
    }

    #[test]
    fn unknown_for_too_little_or_foreign_text() {
        for text in [
            "",
            "12345 67890 !!!",
            "ok",
            "Nel mezzo del cammin di nostra vita mi ritrovai per una selva oscura, ché la diritta \
             via era smarrita.",
            "Москва — столица России и крупнейший город страны по численности населения.",
            "北京是中华人民共和国的首都，也是全国的政治和文化中心之一，历史悠久。",
        ] {
            assert_eq!(detect_language(text).language, Language::Unknown, "{text}");
        }
    }
}
