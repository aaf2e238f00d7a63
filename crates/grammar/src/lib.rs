//! Constrained decoding: what a model may write next, so that an answer parses by construction.
//!
//! A [`Vocabulary`] is built once per model from its tokenizer (the bytes of every token, a
//! prefix tree over them). A [`Grammar`] (any JSON object, a JSON schema, or a Lark grammar
//! such as the one tool calls take) compiles against it into a [`Constraint`] per sequence:
//! before each token the constraint says which tokens may come ([`Constraint::allowed`]), and
//! the sampled one is committed ([`Constraint::commit`]). When the grammar is complete only the
//! end-of-sequence token is allowed, so the answer ends where the structure does.
//!
//! The grammar engine is llguidance (the one vLLM, SGLang and llama.cpp use): an Earley parser
//! over a derivative-based lexer, with bounded work per mask (its fuel limits), so a hostile
//! schema costs at most its limits. Compiling is CPU work: callers run it off the async workers.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

pub use serde_json::Value;

/// Why a grammar was refused or a constraint failed; the message says what, in llguidance's
/// words where it found it (e.g. `Unimplemented keys: ["patternProperties"]`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// What an answer must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A value valid under this JSON schema.
    JsonSchema(Value),
    /// A Lark grammar (llguidance's dialect, which may embed JSON schemas with `%json`).
    Lark(String),
}

/// JSON as one line, `,` and `:` with no space: a model, barely trained or not, cannot spend its
/// tokens on whitespace, and every answer is short for what it says.
fn compact(schema: Value) -> Value {
    // `true` (any value) is `{}` to llguidance, which takes schemas only as objects.
    let mut schema = if schema == Value::Bool(true) { Value::Object(Default::default()) } else { schema };
    if let Some(fields) = schema.as_object_mut() {
        fields.entry("x-guidance").or_insert_with(
            || serde_json::json!({ "whitespace_flexible": false, "item_separator": ",", "key_separator": ":" }),
        );
    }
    schema
}

/// `schema` as a Lark rule body (`%json {...}`), compact like [`Grammar::JsonSchema`], for
/// grammars that embed JSON values (a tool call's arguments).
pub fn json_in_lark(schema: &Value) -> String {
    format!("%json {}", compact(schema.clone()))
}

/// A Lark string literal matching exactly `text`.
pub fn lark_literal(text: &str) -> String {
    // JSON's string escapes are a subset of what Lark's literals take.
    Value::String(text.to_string()).to_string()
}

/// A model's tokens as the grammar engine sees them.
pub struct Vocabulary {
    factory: ParserFactory,
    /// Tokens with which an answer near its token budget is steered to finish (see
    /// [`Constraint::mask_logits`]).
    closing: Arc<Closers>,
}

/// Tokens made only of closing characters (`"`, `}`, `]`): those that start with a quote, and
/// the others.
#[derive(Debug, Default)]
struct Closers {
    quotes: Vec<u32>,
    brackets: Vec<u32>,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary").field("tokens", &self.factory.tok_env().tok_trie().vocab_size()).finish()
    }
}

impl Vocabulary {
    /// The vocabulary of a Hugging Face `tokenizer.json`, padded to the model's `vocab_size`
    /// logits (ids past the tokenizer's are never allowed), ending sequences with `end`.
    pub fn new(tokenizer_json: &str, vocab_size: usize, end: u32) -> Result<Vocabulary, GrammarError> {
        let json: Value = serde_json::from_str(tokenizer_json).map_err(|e| GrammarError(format!("tokenizer: {e}")))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| GrammarError(format!("the tokenizer's token bytes: {e}")))?;
        if words.len() > vocab_size {
            return Err(GrammarError(format!(
                "the tokenizer has {} tokens, more than the model's {vocab_size} logits",
                words.len()
            )));
        }
        words.resize(vocab_size, Vec::new());
        let mut closing = Closers::default();
        for (token, word) in words.iter().enumerate() {
            if word.is_empty() || !word.iter().all(|b| matches!(b, b'"' | b'}' | b']')) {
                continue;
            }
            match word[0] {
                b'"' => closing.quotes.push(token as u32),
                _ => closing.brackets.push(token as u32),
            }
        }
        let end = end as usize;
        if end >= vocab_size {
            return Err(GrammarError(format!("end token {end} is outside the vocabulary")));
        }
        let info = TokRxInfo::new(vocab_size as u32, end as u32);
        let trie = TokTrie::from(&info, &words);
        let environment: llguidance::toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&environment).map_err(|e| GrammarError(e.to_string()))?;
        // Warnings and errors go to the caller as values, never to the server's stderr.
        factory.quiet();
        Ok(Vocabulary { factory, closing: Arc::new(closing) })
    }

    /// Compiles `grammar` into a fresh constraint for one sequence. Refuses what the grammar
    /// engine cannot enforce, naming it.
    pub fn constrain(&self, grammar: &Grammar) -> Result<Constraint, GrammarError> {
        let top = match grammar {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({ "type": "object" }))),
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = self.factory.create_parser(top).map_err(|e| GrammarError(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(GrammarError(error));
        }
        Ok(Constraint {
            matcher,
            mask: None,
            closing: self.closing.clone(),
            end: self.factory.tok_env().tok_trie().eos_token(),
        })
    }
}

/// One sequence's progress through its grammar.
pub struct Constraint {
    matcher: Matcher,
    /// The mask for the next token, computed once per position.
    mask: Option<SimpleVob>,
    closing: Arc<Closers>,
    end: u32,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("finished", &self.finished()).finish()
    }
}

impl Constraint {
    /// Which tokens may come next. Once the grammar is complete, only the end token.
    pub fn allowed(&mut self) -> Result<&SimpleVob, GrammarError> {
        if self.mask.is_none() {
            let mask = self.matcher.compute_mask_or_eos().map_err(|e| GrammarError(e.to_string()))?;
            if mask.is_zero() {
                return Err(GrammarError("the grammar allows no token here".to_string()));
            }
            self.mask = Some(mask);
        }
        Ok(self.mask.get_or_insert_with(|| SimpleVob::alloc(0)))
    }

    /// Sets every logit the grammar forbids next to minus infinity. When `closing` (the answer
    /// is near its token budget), and the grammar allows the end or a token of closing quotes
    /// and brackets, only those stay: a model that would write a string or an array without end
    /// (a barely trained one does) is steered to finish the structure within its budget,
    /// still within the grammar.
    pub fn mask_logits(&mut self, logits: &mut [f32], closing: bool) -> Result<(), GrammarError> {
        let closing_tokens = self.closing.clone();
        let end = self.end;
        let allowed = self.allowed()?;
        for (token, logit) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(token as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        if closing {
            // The end if it may come; else a closing quote (inside a string, brackets are only
            // text); else a closing bracket.
            let usable = |token: &u32| allowed.is_allowed(*token) && (*token as usize) < logits.len();
            let quotes: Vec<u32> = closing_tokens.quotes.iter().copied().filter(usable).collect();
            let brackets: Vec<u32> = closing_tokens.brackets.iter().copied().filter(usable).collect();
            let allowed_closers = match (usable(&end), quotes.is_empty()) {
                (true, _) => vec![end],
                (false, false) => quotes,
                (false, true) => brackets,
            };
            if !allowed_closers.is_empty() {
                let kept: Vec<(u32, f32)> = allowed_closers.iter().map(|&t| (t, logits[t as usize])).collect();
                logits.iter_mut().for_each(|logit| *logit = f32::NEG_INFINITY);
                // Closers keep their own logits, so sampling still chooses among them.
                for (token, logit) in kept {
                    logits[token as usize] = if logit.is_finite() { logit } else { 0.0 };
                }
            }
        }
        Ok(())
    }

    /// Advances past `token`, which must have been allowed.
    pub fn commit(&mut self, token: u32) -> Result<(), GrammarError> {
        self.mask = None;
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| GrammarError(e.to_string()))
    }

    /// An independent copy at the same point (for another choice of the same request).
    pub fn fork(&self) -> Constraint {
        Constraint {
            matcher: self.matcher.deep_clone(),
            mask: self.mask.clone(),
            closing: self.closing.clone(),
            end: self.end,
        }
    }

    /// Whether the grammar is complete: nothing but the end may follow.
    pub fn finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests;
