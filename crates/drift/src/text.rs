//! What a monitor keeps of a text: its length in words and its words hashed into a fixed
//! number of bins. Words, not a model's tokens, so one reference serves every model trained on
//! the data, and hashing bounds memory whatever the vocabulary.

use serde::{Deserialize, Serialize};

/// Bins of the hashed word distribution.
pub const BINS: usize = 2048;

/// Words looked at per text: a long prompt is judged by its beginning.
const MAX_WORDS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TextSketch {
    pub words: u32,
    /// One bin per word, in order.
    pub bins: Vec<u16>,
}

/// Lower-cased runs of letters and digits (an apostrophe inside a word belongs to it).
pub fn sketch(text: &str) -> TextSketch {
    let mut bins = Vec::new();
    let mut word = String::new();
    let mut words = 0u32;
    let mut flush = |word: &mut String, bins: &mut Vec<u16>| {
        let trimmed = word.trim_end_matches('\'');
        if !trimmed.is_empty() {
            words += 1;
            if bins.len() < MAX_WORDS {
                bins.push((xxhash_rust::xxh3::xxh3_64(trimmed.as_bytes()) % BINS as u64) as u16);
            }
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() || (c == '\'' && !word.is_empty()) {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word, &mut bins);
        }
    }
    flush(&mut word, &mut bins);
    TextSketch { words, bins }
}

/// Adds the sketch's words to a histogram of `BINS` bins.
pub fn add_to(histogram: &mut [f64], sketch: &TextSketch) {
    for &bin in &sketch.bins {
        histogram[bin as usize] += 1.0;
    }
}
