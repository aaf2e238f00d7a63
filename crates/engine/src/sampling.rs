//! Choosing the next token from logits: greedy at temperature 0, otherwise temperature,
//! top-k and top-p (nucleus) filtering, then a draw from the request's own seeded generator.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this (1 keeps all).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Fixes the draws: the same seed and prompt give the same completion.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Generation ends before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Keep generating past the end-of-text token (benchmarks that need a fixed count).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Subtracted from the logit of every token already generated (-2 to 2, OpenAI's terms).
    #[serde(default)]
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated (-2 to 2).
    #[serde(default)]
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens before sampling (-100 to 100; 100 all but forces a
    /// token, -100 all but bans it).
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// (0 to [`MAX_TOP_LOGPROBS`]); none reports nothing.
    #[serde(default)]
    pub logprobs: Option<usize>,
}

/// The most alternatives `logprobs` may ask for (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A generated token's log-probability under the distribution it was drawn from (after
/// penalties and bias, before temperature and truncation, as vLLM reports it), and the most
/// likely tokens there with theirs, most likely first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// `token`'s log-probability among `scores` and the `top` most likely tokens with theirs.
pub fn logprobs(scores: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = scores.iter().map(|&s| f64::from(s - max).exp()).sum();
    let normalizer = max + total.ln() as f32;
    let of = |id: u32| scores.get(id as usize).map_or(f32::NEG_INFINITY, |s| s - normalizer);
    let mut ranked: Vec<u32> = (0..scores.len() as u32).collect();
    let top = top.min(ranked.len());
    if top > 0 && top < ranked.len() {
        ranked.select_nth_unstable_by(top - 1, |a, b| scores[*b as usize].total_cmp(&scores[*a as usize]));
    }
    ranked.truncate(top);
    ranked.sort_by(|a, b| scores[*b as usize].total_cmp(&scores[*a as usize]));
    TokenLogprob { logprob: of(token), top: ranked.into_iter().map(|id| (id, of(id))).collect() }
}

/// The most tokens `logit_bias` may name (OpenAI's bound).
pub const MAX_LOGIT_BIAS: usize = 300;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            max_tokens: 16,
            stop: Vec::new(),
            ignore_eos: false,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Every problem, each naming its field as the OpenAI API spells it.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("temperature must be between 0 and 2".to_string());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top_p must be in (0, 1]".to_string());
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be positive".to_string());
        }
        if self.stop.len() > 4 || self.stop.iter().any(|s| s.is_empty()) {
            return Err("stop takes up to 4 non-empty sequences".to_string());
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err("presence_penalty must be between -2 and 2".to_string());
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err("frequency_penalty must be between -2 and 2".to_string());
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return Err(format!("logit_bias names more than {MAX_LOGIT_BIAS} tokens"));
        }
        if self.logprobs.is_some_and(|top| top > MAX_TOP_LOGPROBS) {
            return Err(format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"));
        }
        if let Some((token, bias)) = self.logit_bias.iter().find(|(_, bias)| !(-100.0..=100.0).contains(bias)) {
            return Err(format!("logit_bias of token {token} is {bias}; it must be between -100 and 100"));
        }
        Ok(())
    }

    /// Whether the logits are changed before sampling at all.
    fn adjusts(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 || !self.logit_bias.is_empty()
    }

    pub(crate) fn rng(&self) -> rand::rngs::StdRng {
        match self.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_os_rng(),
        }
    }
}

/// The logits `params` samples from after `generated`: each generated token's penalised once
/// for being there and once per occurrence, and `logit_bias` added, OpenAI's way. Borrowed
/// unchanged when nothing adjusts them; adjusted into `scratch` otherwise.
pub fn adjusted<'a>(
    logits: &'a [f32],
    params: &SamplingParams,
    generated: &[u32],
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    if !params.adjusts() {
        return logits;
    }
    scratch.clear();
    scratch.extend_from_slice(logits);
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        let mut seen = std::collections::HashMap::<u32, u32>::new();
        for &token in generated {
            *seen.entry(token).or_default() += 1;
        }
        for (token, count) in seen {
            if let Some(logit) = scratch.get_mut(token as usize) {
                *logit -= params.presence_penalty + params.frequency_penalty * count as f32;
            }
        }
    }
    for &(token, bias) in &params.logit_bias {
        if let Some(logit) = scratch.get_mut(token as usize) {
            *logit += bias;
        }
    }
    scratch
}

/// The next token under `params`, from one row of logits.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut impl Rng) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    if params.top_k == 0 && params.top_p >= 1.0 {
        return draw_unfiltered(logits, params.temperature, rng);
    }
    let mut candidates: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    if params.top_k > 0 {
        candidates.truncate(params.top_k);
    }
    let max = candidates.first().map(|c| c.1).unwrap_or(0.0);
    let mut total = 0.0f64;
    let mut weights: Vec<f64> = candidates
        .iter()
        .map(|(_, l)| {
            let w = (((l - max) / params.temperature) as f64).exp();
            total += w;
            w
        })
        .collect();
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = weights
            .iter()
            .position(|w| {
                cumulative += w / total;
                cumulative >= params.top_p as f64
            })
            .map(|i| i + 1)
            .unwrap_or(weights.len());
        weights.truncate(keep);
        total = weights.iter().sum();
    }
    let mut draw = rng.random::<f64>() * total;
    for (index, weight) in weights.iter().enumerate() {
        draw -= weight;
        if draw <= 0.0 {
            return candidates[index].0;
        }
    }
    candidates[weights.len() - 1].0
}

/// Temperature alone needs no ranking: one pass for the maximum, one for the draw.
fn draw_unfiltered(logits: &[f32], temperature: f32, rng: &mut impl Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weight = |l: f32| (((l - max) / temperature) as f64).exp();
    let total: f64 = logits.iter().map(|&l| weight(l)).sum();
    let mut draw = rng.random::<f64>() * total;
    for (index, &l) in logits.iter().enumerate() {
        draw -= weight(l);
        if draw <= 0.0 {
            return index as u32;
        }
    }
    argmax(logits)
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (index, value) in logits.iter().enumerate() {
        if *value > logits[best] {
            best = index;
        }
    }
    best as u32
}
