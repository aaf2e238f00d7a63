//! The serving engine: one thread runs a loop of steps over every admitted sequence at once
//! (continuous batching). New requests join at the next step, their prompts prefilled in
//! chunks under a per-step token budget so a long prompt never stalls the decoding of others;
//! finished sequences leave at once, and a client that hangs up frees its slot at the next step.
//! Each sequence owns a preallocated KV cache. Admission is bounded: past `max_waiting` queued
//! requests, `submit` says `Overloaded` instead of growing memory.
//!
//! Architecture Invariant: no HTTP, no registry. The server verifies a model before loading it
//! here and turns events into API responses.

pub mod embed;
mod sampling;
mod text;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use factory_model::{Decoder, KvCache, ServingAdapter, StepInput};
use factory_tokenizer::Tokenizer;
use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

pub use sampling::{
    adjusted, argmax, logprobs, sample, SamplingParams, TokenLogprob, MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS,
};

use crate::text::{Detokenizer, TextStream};

#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests waiting for a slot before new ones are refused.
    pub max_waiting: usize,
    /// Prompt tokens prefilled per step, across all sequences.
    pub prefill_chunk: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { max_batch: 32, max_waiting: 64, prefill_chunk: 256 }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("the engine is at capacity; retry shortly")]
    Overloaded,
    #[error("{0}")]
    Invalid(String),
    #[error("the engine has stopped")]
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Where a request's time went, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Timings {
    /// Submitted until admitted to the batch.
    pub queue_ms: f64,
    /// Submitted until the first token.
    pub first_token_ms: f64,
    /// First token until the last.
    pub decode_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// New text (possibly empty while a multi-byte character or a possible stop sequence is
    /// held back) and the token that produced it.
    Delta {
        text: String,
        token: u32,
        /// The token's log-probability, when the request asked for them (once per token: a
        /// trailing delta of held-back text carries none).
        logprob: Option<TokenLogprob>,
    },
    Done {
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
        batch_size: usize,
    },
    Failed(String),
}

pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// The adapter this request runs with on the engine's base (none: the base itself).
    pub adapter: Option<Arc<ServingAdapter>>,
}

/// What the engine is doing now, for metrics and load shedding.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub steps: AtomicUsize,
}

struct Submitted {
    request: GenerationRequest,
    events: UnboundedSender<GenerationEvent>,
    submitted_at: Instant,
}

/// A handle to the engine thread; dropping every handle stops it.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Submitted>,
    pub stats: Arc<EngineStats>,
    max_context: usize,
    pub vocab_size: usize,
}

impl Engine {
    /// Starts the engine thread for `model` (see [`Decoder::new`]), whose sequences end at
    /// `<|endoftext|>` (the factory's own tokenizers) and at every token of `end_tokens` (the
    /// end-of-sequence and end-of-turn tokens a model declares).
    pub fn start(model: Decoder, tokenizer: Tokenizer, end_tokens: &[u32], settings: EngineSettings) -> Engine {
        let (queue, incoming) = std::sync::mpsc::sync_channel(settings.max_waiting.max(1));
        let stats = Arc::new(EngineStats::default());
        let max_context = model.config().max_positions();
        let vocab_size = model.config().vocab_size;
        let mut end_tokens = end_tokens.to_vec();
        end_tokens.extend(tokenizer.token_id(factory_tokenizer::END_OF_TEXT));
        end_tokens.sort_unstable();
        end_tokens.dedup();
        let scheduler = Scheduler {
            model,
            tokenizer,
            settings,
            incoming,
            stats: stats.clone(),
            waiting: VecDeque::new(),
            active: Vec::new(),
            end_tokens,
        };
        // The decoder brings its own threads for the parallel parts of a step; this one leads them.
        let started = std::thread::Builder::new().name("factory-engine".to_string()).spawn(move || scheduler.run());
        if let Err(error) = started {
            eprintln!("cannot start the engine's thread: {error}");
        }
        Engine { queue, stats, max_context, vocab_size }
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request.
    pub fn submit(&self, request: GenerationRequest) -> Result<UnboundedReceiver<GenerationEvent>, EngineError> {
        request.params.validate().map_err(EngineError::Invalid)?;
        if let Some((token, _)) = request.params.logit_bias.iter().find(|(token, _)| *token as usize >= self.vocab_size)
        {
            return Err(EngineError::Invalid(format!(
                "logit_bias names token {token}; this model's vocabulary has {} tokens",
                self.vocab_size
            )));
        }
        if request.prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".to_string()));
        }
        if request.prompt.len() >= self.max_context {
            return Err(EngineError::Invalid(format!(
                "the prompt has {} tokens; this model's context holds {}",
                request.prompt.len(),
                self.max_context
            )));
        }
        let (events, receiver) = unbounded_channel();
        let submitted = Submitted { request, events, submitted_at: Instant::now() };
        match self.queue.try_send(submitted) {
            Ok(()) => {
                self.stats.waiting.fetch_add(1, Ordering::SeqCst);
                Ok(receiver)
            }
            Err(TrySendError::Full(_)) => Err(EngineError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }
}

struct Sequence {
    prompt: Vec<u32>,
    adapter: Option<Arc<ServingAdapter>>,
    prefilled: usize,
    generated: Vec<u32>,
    cache: KvCache,
    params: SamplingParams,
    rng: rand::rngs::StdRng,
    events: UnboundedSender<GenerationEvent>,
    detokenizer: Detokenizer,
    text: TextStream,
    submitted_at: Instant,
    admitted_at: Instant,
    first_token_at: Option<Instant>,
}

impl Sequence {
    fn prefilling(&self) -> bool {
        self.prefilled < self.prompt.len()
    }
}

struct Scheduler {
    model: Decoder,
    tokenizer: Tokenizer,
    settings: EngineSettings,
    incoming: Receiver<Submitted>,
    stats: Arc<EngineStats>,
    waiting: VecDeque<Submitted>,
    active: Vec<Sequence>,
    /// Tokens that end a sequence (never sent as text).
    end_tokens: Vec<u32>,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            if !self.receive() {
                return;
            }
            self.admit();
            if self.active.is_empty() {
                continue;
            }
            if let Err(error) = self.step() {
                for sequence in self.active.drain(..) {
                    let _ = sequence.events.send(GenerationEvent::Failed(error.clone()));
                }
            }
            self.stats.running.store(self.active.len(), Ordering::SeqCst);
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes what was submitted; blocks only when there is nothing else to do. False when every
    /// handle is gone and no work remains.
    fn receive(&mut self) -> bool {
        if self.active.is_empty() && self.waiting.is_empty() {
            match self.incoming.recv() {
                Ok(submitted) => self.waiting.push_back(submitted),
                Err(_) => return false,
            }
        }
        // Only what the batch can take soon leaves the bounded channel, so a full channel is
        // what refuses new requests: the engine's memory stays bounded under any load.
        while self.waiting.len() < self.settings.max_batch.saturating_sub(self.active.len()).max(1) {
            match self.incoming.try_recv() {
                Ok(submitted) => self.waiting.push_back(submitted),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !(self.active.is_empty() && self.waiting.is_empty()),
            }
        }
        true
    }

    fn admit(&mut self) {
        while self.active.len() < self.settings.max_batch {
            let Some(submitted) = self.waiting.pop_front() else { break };
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            if submitted.events.is_closed() {
                continue;
            }
            let request = submitted.request;
            let capacity =
                request.prompt.len().saturating_add(request.params.max_tokens).min(self.model.config().max_positions());
            let cache = match KvCache::new(&self.model, capacity) {
                Ok(cache) => cache,
                Err(error) => {
                    let _ = submitted.events.send(GenerationEvent::Failed(error.to_string()));
                    continue;
                }
            };
            self.active.push(Sequence {
                rng: request.params.rng(),
                detokenizer: Detokenizer::default(),
                text: TextStream::new(request.params.stop.clone()),
                prompt: request.prompt,
                adapter: request.adapter,
                prefilled: 0,
                generated: Vec::new(),
                cache,
                params: request.params,
                events: submitted.events,
                submitted_at: submitted.submitted_at,
                admitted_at: Instant::now(),
                first_token_at: None,
            });
        }
        self.stats.running.store(self.active.len(), Ordering::SeqCst);
    }

    /// One forward pass over every sequence that has work this step.
    fn step(&mut self) -> Result<(), String> {
        // Clients that hung up leave before any work is done for them.
        self.active.retain(|sequence| !sequence.events.is_closed());
        if self.active.is_empty() {
            return Ok(());
        }
        let mut budget = self.settings.prefill_chunk.max(1);
        // (index into active, tokens this step, whether this step ends its prefill); the
        // inputs borrow their tokens from the sequences themselves.
        let mut plan: Vec<(usize, usize, bool)> = Vec::with_capacity(self.active.len());
        let mut inputs = Vec::with_capacity(self.active.len());
        for (index, sequence) in self.active.iter_mut().enumerate() {
            if sequence.prefilling() {
                if budget == 0 {
                    continue;
                }
                let take = (sequence.prompt.len() - sequence.prefilled).min(budget);
                budget -= take;
                let end = sequence.prefilled + take;
                plan.push((index, take, end == sequence.prompt.len()));
                inputs.push(StepInput {
                    tokens: &sequence.prompt[sequence.prefilled..end],
                    cache: &mut sequence.cache,
                    adapter: sequence.adapter.as_deref(),
                });
            } else if let Some(last) = sequence.generated.last() {
                plan.push((index, 1, true));
                inputs.push(StepInput {
                    tokens: std::slice::from_ref(last),
                    cache: &mut sequence.cache,
                    adapter: sequence.adapter.as_deref(),
                });
            }
        }
        let logits = self.model.forward_step(&mut inputs).map_err(|e| e.to_string())?;
        drop(inputs);
        let batch_size = plan.len();
        let mut finished = Vec::new();
        let mut scratch = Vec::new();
        for (row, (index, tokens, samples)) in plan.into_iter().enumerate() {
            let sequence = &mut self.active[index];
            if sequence.prefilling() {
                sequence.prefilled += tokens;
            }
            if !samples {
                continue;
            }
            let scores = adjusted(logits.row(row), &sequence.params, &sequence.generated, &mut scratch);
            let token = sample(scores, &sequence.params, &mut sequence.rng);
            let logprob = sequence.params.logprobs.map(|top| logprobs(scores, token, top));
            let now = Instant::now();
            sequence.first_token_at.get_or_insert(now);
            let end_of_text = self.end_tokens.contains(&token) && !sequence.params.ignore_eos;
            if !end_of_text {
                sequence.generated.push(token);
            }
            let full = sequence.generated.len() >= sequence.params.max_tokens
                || sequence.cache.len() + 1 > sequence.cache.capacity();
            let (delta, stopped) = if end_of_text {
                let decoded = sequence.detokenizer.finish(&self.tokenizer, &sequence.generated)?;
                (sequence.text.end(decoded), true)
            } else if full {
                sequence.text.update(sequence.detokenizer.finish(&self.tokenizer, &sequence.generated)?)
            } else {
                sequence.text.update(sequence.detokenizer.next(&self.tokenizer, &sequence.generated)?)
            };
            if !delta.is_empty() || !end_of_text {
                let _ = sequence.events.send(GenerationEvent::Delta { text: delta, token, logprob });
            }
            if stopped || full {
                let tail = if stopped { String::new() } else { sequence.text.finish() };
                if !tail.is_empty() {
                    let _ = sequence.events.send(GenerationEvent::Delta { text: tail, token, logprob: None });
                }
                let first = sequence.first_token_at.unwrap_or(now);
                let timings = Timings {
                    queue_ms: millis(sequence.admitted_at - sequence.submitted_at),
                    first_token_ms: millis(first - sequence.submitted_at),
                    decode_ms: millis(now - first),
                };
                let usage = Usage { prompt_tokens: sequence.prompt.len(), completion_tokens: sequence.generated.len() };
                let reason = if stopped { FinishReason::Stop } else { FinishReason::Length };
                let _ = sequence.events.send(GenerationEvent::Done { reason, usage, timings, batch_size });
                finished.push(index);
            }
        }
        for index in finished.into_iter().rev() {
            self.active.swap_remove(index);
        }
        Ok(())
    }
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
