//! Eval sets: prompts with the answer expected, scored on greedy continuations by exact match
//! and by containment.

use factory_model::Llama;
use factory_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::TrainError;

const MAX_ITEMS: usize = 1000;
const MAX_NEW_TOKENS: usize = 256;
/// How many scored examples a result keeps for people to read.
const SAMPLES_KEPT: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSet {
    pub name: String,
    pub items: Vec<EvalItem>,
    /// Tokens generated per prompt (default 32).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
}

fn default_max_new_tokens() -> usize {
    32
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalItem {
    pub prompt: String,
    pub expected: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSetScore {
    pub name: String,
    pub items: usize,
    /// Share of items whose completion, trimmed (and cut at its first line break when the
    /// expected answer has none), equals the trimmed expected answer.
    pub exact_match: f64,
    /// Share of items whose completion contains the trimmed expected answer.
    pub contains: f64,
    pub samples: Vec<EvalSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSample {
    pub prompt: String,
    pub expected: String,
    pub completion: String,
}

/// Every problem with a list of eval sets, each naming the set and item.
pub fn validate_eval_sets(sets: &[EvalSet]) -> Result<(), String> {
    let mut problems = Vec::new();
    for (index, set) in sets.iter().enumerate() {
        let at = format!("eval_sets[{index}]");
        if set.name.trim().is_empty() {
            problems.push(format!("{at}.name must not be empty"));
        }
        if sets[..index].iter().any(|other| other.name == set.name) {
            problems.push(format!("{at}.name {:?} is used twice", set.name));
        }
        if set.items.is_empty() || set.items.len() > MAX_ITEMS {
            problems.push(format!("{at}.items must hold 1 to {MAX_ITEMS} items"));
        }
        if set.max_new_tokens == 0 || set.max_new_tokens > MAX_NEW_TOKENS {
            problems.push(format!("{at}.max_new_tokens must be 1 to {MAX_NEW_TOKENS}"));
        }
        for (item_index, item) in set.items.iter().enumerate() {
            if item.prompt.is_empty() {
                problems.push(format!("{at}.items[{item_index}].prompt must not be empty"));
            }
            if item.expected.trim().is_empty() {
                problems.push(format!("{at}.items[{item_index}].expected must not be blank"));
            }
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

/// Whether `completion` answers `expected`: (exact match, contains).
pub fn judge(completion: &str, expected: &str) -> (bool, bool) {
    let expected = expected.trim();
    let answer = match expected.contains('\n') {
        true => completion,
        false => completion.trim_start().split('\n').next().unwrap_or_default(),
    };
    (answer.trim() == expected, completion.contains(expected))
}

pub fn score_eval_set(model: &Llama, tokenizer: &Tokenizer, set: &EvalSet) -> Result<EvalSetScore, TrainError> {
    let stop: Vec<u32> = tokenizer.token_id("<|endoftext|>").into_iter().collect();
    let (mut exact, mut contains) = (0usize, 0usize);
    let mut samples = Vec::new();
    for item in &set.items {
        let prompt = tokenizer.encode(&item.prompt).map_err(|e| TrainError::Settings(e.to_string()))?;
        let generated = model.greedy(&prompt, set.max_new_tokens, &stop)?;
        let generated: Vec<u32> = generated.into_iter().filter(|id| !stop.contains(id)).collect();
        let completion = tokenizer.decode(&generated).map_err(|e| TrainError::Settings(e.to_string()))?;
        let (is_exact, does_contain) = judge(&completion, &item.expected);
        exact += usize::from(is_exact);
        contains += usize::from(does_contain);
        if samples.len() < SAMPLES_KEPT {
            samples.push(EvalSample { prompt: item.prompt.clone(), expected: item.expected.clone(), completion });
        }
    }
    let count = set.items.len().max(1) as f64;
    Ok(EvalSetScore {
        name: set.name.clone(),
        items: set.items.len(),
        exact_match: exact as f64 / count,
        contains: contains as f64 / count,
        samples,
    })
}
