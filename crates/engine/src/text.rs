//! Turning a growing token sequence into text deltas: a byte-level tokenizer can end a step in
//! the middle of a character, and a stop sequence can arrive split over several tokens, so text
//! that might still change is held back until it cannot.

use factory_tokenizer::Tokenizer;

/// Decodes a growing completion a few tokens at a time instead of whole on every step: each
/// step decodes the tokens from `prefix` on, and what they add beyond the tokens up to `read`
/// (text already taken) is new. Text only advances on a complete character, so a character
/// split over tokens is taken once all of its bytes are there.
#[derive(Default)]
pub struct Detokenizer {
    text: String,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// The text of `generated` (the whole completion so far) up to its last complete character.
    pub fn next(&mut self, tokenizer: &Tokenizer, generated: &[u32]) -> Result<&str, String> {
        let window = tokenizer.decode(&generated[self.prefix..]).map_err(|e| e.to_string())?;
        let before = tokenizer.decode(&generated[self.prefix..self.read]).map_err(|e| e.to_string())?;
        if window.ends_with('\u{FFFD}') {
            return Ok(&self.text);
        }
        match window.strip_prefix(before.as_str()) {
            Some(new) => self.text.push_str(new),
            // Not expected of a byte-level vocabulary; decoding it all is always right.
            None => self.text = tokenizer.decode(generated).map_err(|e| e.to_string())?,
        }
        (self.prefix, self.read) = (self.read, generated.len());
        Ok(&self.text)
    }

    /// The whole text of `generated`, an incomplete last character included (as U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer, generated: &[u32]) -> Result<&str, String> {
        self.text = tokenizer.decode(generated).map_err(|e| e.to_string())?;
        (self.prefix, self.read) = (generated.len(), generated.len());
        Ok(&self.text)
    }
}

pub struct TextStream {
    stop: Vec<String>,
    /// Bytes of the decoded text already sent.
    sent: usize,
    /// The latest decoded text.
    current: String,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        TextStream { stop, sent: 0, current: String::new() }
    }

    /// Takes the whole decoded completion so far; returns the text that is now certain, and
    /// whether a stop sequence ended it (the stop sequence itself is never sent).
    pub fn update(&mut self, decoded: &str) -> (String, bool) {
        self.current.clear();
        self.current.push_str(decoded);
        let search_from = self.sent.saturating_sub(self.stop.iter().map(|s| s.len()).max().unwrap_or(0));
        let search_from = floor_char_boundary(&self.current, search_from);
        let found = self
            .stop
            .iter()
            .filter_map(|stop| self.current[search_from..].find(stop.as_str()).map(|at| search_from + at))
            .min();
        if let Some(end) = found {
            let end = end.max(self.sent);
            let delta = self.current[self.sent..end].to_string();
            self.sent = end;
            return (delta, true);
        }
        // An incomplete character decodes as U+FFFD: wait for the rest of its bytes.
        let mut certain = self.current.trim_end_matches('\u{FFFD}').len();
        // A suffix that could begin a stop sequence waits for the next tokens.
        for stop in &self.stop {
            for cut in (1..stop.len()).rev() {
                if stop.is_char_boundary(cut) && self.current[..certain].ends_with(&stop[..cut]) {
                    certain = certain.min(self.current[..certain].len() - cut);
                    break;
                }
            }
        }
        if certain <= self.sent {
            return (String::new(), false);
        }
        let delta = self.current[self.sent..certain].to_string();
        self.sent = certain;
        (delta, false)
    }

    /// Everything of `decoded` (the whole completion) not sent yet, when generation ended
    /// without a stop sequence.
    pub fn end(&mut self, decoded: &str) -> String {
        self.current.clear();
        self.current.push_str(decoded);
        self.finish()
    }

    /// Everything not sent yet (at the end of generation nothing more can change it).
    pub fn finish(&mut self) -> String {
        let rest = self.current.get(self.sent..).unwrap_or_default().to_string();
        self.sent = self.current.len();
        rest
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}
