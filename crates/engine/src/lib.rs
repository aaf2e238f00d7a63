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
pub mod prefix;
mod sampling;
mod text;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use factory_grammar::Vocabulary;

use factory_model::{Decoder, KvCache, ServingAdapter, StepInput};
use factory_tokenizer::Tokenizer;
use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

pub use factory_grammar::{Constraint, Grammar};
pub use sampling::{
    adjusted, argmax, logprobs, sample, SamplingParams, TokenLogprob, MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS,
};

use crate::prefix::PrefixCache;
use crate::text::{Detokenizer, TextStream};

#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Requests waiting for a slot before new ones are refused.
    pub max_waiting: usize,
    /// Prompt tokens prefilled per step, across all sequences.
    pub prefill_chunk: usize,
    /// Bytes of prompts' keys and values kept for reuse by prompts that share a prefix with
    /// them (0 turns prefix caching off).
    pub prefix_cache_bytes: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { max_batch: 32, max_waiting: 64, prefill_chunk: 256, prefix_cache_bytes: 256 << 20 }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("the engine is at capacity; retry shortly")]
    Overloaded,
    #[error("{0}")]
    Invalid(String),
    /// The grammar or schema asked for cannot be enforced; the message says why.
    #[error("{0}")]
    Grammar(String),
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
    /// Prompt tokens whose keys and values came from the prefix cache instead of the model.
    pub cached_tokens: usize,
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
    /// What the answer must be (a JSON schema, a grammar), from [`Engine::constrain`]: only
    /// tokens it allows are sampled, and the answer ends when it is complete.
    pub constraint: Option<Constraint>,
    pub priority: Priority,
}

impl GenerationRequest {
    /// An interactive request for `prompt` on the base model, unconstrained.
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> Self {
        GenerationRequest { prompt, params, adapter: None, constraint: None, priority: Priority::Interactive }
    }
}

/// Which work an engine serves first. Batch work fills the slots interactive work leaves free:
/// it is admitted only while no interactive request waits, and its running sequences are
/// suspended (keys and values kept, resumed where they stopped) when interactive requests
/// need their slots, so a batch never delays an interactive answer by more than a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

/// What the engine is doing now, for metrics and load shedding.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub steps: AtomicUsize,
    /// Prompt tokens run through the model (a request's choices share theirs).
    pub prefilled_tokens: AtomicUsize,
    /// Prompt tokens taken from the prefix cache instead.
    pub cached_tokens: AtomicUsize,
    /// Requests that took some of their prompt from the prefix cache.
    pub prefix_hits: AtomicUsize,
    /// Batch sequences suspended to make room for interactive requests, since the start.
    pub suspensions: AtomicUsize,
    /// Bytes the prefix cache holds.
    pub prefix_cache_bytes: AtomicUsize,
}

struct Submitted {
    request: GenerationRequest,
    events: UnboundedSender<GenerationEvent>,
    /// The events of the request's other choices, which fork from it once its prompt is in.
    siblings: Vec<UnboundedSender<GenerationEvent>>,
    submitted_at: Instant,
}

/// A handle to the engine thread; dropping every handle stops it.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Submitted>,
    /// Batch requests submitted and not yet admitted: at most `max_waiting` of them, so the
    /// queue always has `max_waiting` places for interactive requests.
    batch_queued: Arc<AtomicUsize>,
    /// Interactive requests in the queue, not yet taken by the engine thread: at most
    /// `max_waiting`, as before there were batch requests.
    interactive_queued: Arc<AtomicUsize>,
    max_waiting: usize,
    pub stats: Arc<EngineStats>,
    max_context: usize,
    pub vocab_size: usize,
    grammar: Arc<GrammarVocabulary>,
}

/// The model's vocabulary as the grammar engine sees it, built on the first constrained request
/// (a prefix tree over every token's bytes: tens of milliseconds for a large vocabulary).
struct GrammarVocabulary {
    tokenizer: Tokenizer,
    vocab_size: usize,
    end: u32,
    built: OnceLock<Result<Vocabulary, String>>,
}

impl Engine {
    /// Starts the engine thread for `model` (see [`Decoder::new`]), whose sequences end at
    /// `<|endoftext|>` (the factory's own tokenizers) and at every token of `end_tokens` (the
    /// end-of-sequence and end-of-turn tokens a model declares).
    pub fn start(model: Decoder, tokenizer: Tokenizer, end_tokens: &[u32], settings: EngineSettings) -> Engine {
        let max_waiting = settings.max_waiting.max(1);
        let (queue, incoming) = std::sync::mpsc::sync_channel(max_waiting * 2);
        let batch_queued = Arc::new(AtomicUsize::new(0));
        let interactive_queued = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(EngineStats::default());
        let max_context = model.config().max_positions();
        let vocab_size = model.config().vocab_size;
        let mut end_tokens = end_tokens.to_vec();
        end_tokens.extend(tokenizer.token_id(factory_tokenizer::END_OF_TEXT));
        // The end a grammar allows once complete: the model's own first, or the factory's.
        let grammar = Arc::new(GrammarVocabulary {
            tokenizer: tokenizer.clone(),
            vocab_size,
            end: end_tokens.first().copied().unwrap_or_default(),
            built: OnceLock::new(),
        });
        end_tokens.sort_unstable();
        end_tokens.dedup();
        let settings_prefix_bytes = settings.prefix_cache_bytes;
        let scheduler = Scheduler {
            model,
            tokenizer,
            settings,
            incoming,
            batch_queued: batch_queued.clone(),
            interactive_queued: interactive_queued.clone(),
            stats: stats.clone(),
            waiting: VecDeque::new(),
            waiting_batch: VecDeque::new(),
            active: Vec::new(),
            suspended: Vec::new(),
            end_tokens,
            prefixes: PrefixCache::new(settings_prefix_bytes),
        };
        // The decoder brings its own threads for the parallel parts of a step; this one leads them.
        let started = std::thread::Builder::new().name("factory-engine".to_string()).spawn(move || scheduler.run());
        if let Err(error) = started {
            eprintln!("cannot start the engine's thread: {error}");
        }
        Engine { queue, batch_queued, interactive_queued, max_waiting, stats, max_context, vocab_size, grammar }
    }

    /// Compiles `grammar` against this model's vocabulary into a constraint for one request.
    /// Blocking (the vocabulary is built on first use, a schema compiles in milliseconds): call
    /// it off the async workers. Refuses what cannot be enforced, naming it.
    pub fn constrain(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        let shared = &self.grammar;
        let vocabulary = shared.built.get_or_init(|| {
            let json = shared.tokenizer.to_json().map_err(|e| e.to_string())?;
            Vocabulary::new(&json, shared.vocab_size, shared.end).map_err(|e| e.0)
        });
        let vocabulary = vocabulary.as_ref().map_err(|e| EngineError::Invalid(format!("structured output: {e}")))?;
        vocabulary.constrain(grammar).map_err(|e| EngineError::Grammar(e.0))
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request.
    pub fn submit(&self, request: GenerationRequest) -> Result<UnboundedReceiver<GenerationEvent>, EngineError> {
        let mut receivers = self.submit_choices(request, 1)?;
        receivers.pop().ok_or(EngineError::Stopped)
    }

    /// Queues a request for `choices` answers to one prompt: the prompt is prefilled once, and
    /// at its first token the sequence forks into `choices` (each with a copy of the prompt's
    /// keys and values, its own seed `seed + i` and its own constraint). Each choice's events
    /// arrive on its own receiver; dropping one cancels that choice.
    pub fn submit_choices(
        &self,
        request: GenerationRequest,
        choices: usize,
    ) -> Result<Vec<UnboundedReceiver<GenerationEvent>>, EngineError> {
        if choices == 0 {
            return Err(EngineError::Invalid("n must be at least 1".to_string()));
        }
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
        let mut receivers = vec![receiver];
        let mut siblings = Vec::with_capacity(choices - 1);
        for _ in 1..choices {
            let (sender, receiver) = unbounded_channel();
            siblings.push(sender);
            receivers.push(receiver);
        }
        // Each class has its own bound on what waits, so neither takes the other's places.
        let queued = match request.priority {
            Priority::Interactive => &self.interactive_queued,
            Priority::Batch => &self.batch_queued,
        };
        if queued.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            queued.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Overloaded);
        }
        // Counted before it is sent: the engine thread may take it (and count it out) at once.
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        let submitted = Submitted { request, events, siblings, submitted_at: Instant::now() };
        match self.queue.try_send(submitted) {
            Ok(()) => Ok(receivers),
            Err(error) => {
                queued.fetch_sub(1, Ordering::SeqCst);
                self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                match error {
                    TrySendError::Full(_) => Err(EngineError::Overloaded),
                    TrySendError::Disconnected(_) => Err(EngineError::Stopped),
                }
            }
        }
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }
}

struct Sequence {
    /// Choices still to fork from this one when its prompt is in (see [`Engine::submit_choices`]).
    siblings: Vec<UnboundedSender<GenerationEvent>>,
    prompt: Vec<u32>,
    adapter: Option<Arc<ServingAdapter>>,
    constraint: Option<Constraint>,
    priority: Priority,
    prefilled: usize,
    /// Prompt tokens restored from the prefix cache.
    cached: usize,
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

    /// Whether no one waits for this sequence's answers any more.
    fn abandoned(&self) -> bool {
        abandoned(&self.events, &self.siblings)
    }

    /// Choice `choice` of this sequence's request, forked after its prefill and before its
    /// first token: the same keys and values, seed `seed + choice`, a copy of the constraint.
    fn fork(&self, events: UnboundedSender<GenerationEvent>, choice: u64) -> Sequence {
        let mut params = self.params.clone();
        params.seed = params.seed.map(|seed| seed.wrapping_add(choice));
        Sequence {
            siblings: Vec::new(),
            prompt: self.prompt.clone(),
            adapter: self.adapter.clone(),
            constraint: self.constraint.as_ref().map(Constraint::fork),
            priority: self.priority,
            prefilled: self.prefilled,
            cached: self.cached,
            generated: Vec::new(),
            cache: self.cache.clone(),
            rng: params.rng(),
            text: TextStream::new(params.stop.clone()),
            params,
            events,
            detokenizer: Detokenizer::default(),
            submitted_at: self.submitted_at,
            admitted_at: self.admitted_at,
            first_token_at: None,
        }
    }
}

struct Scheduler {
    model: Decoder,
    tokenizer: Tokenizer,
    settings: EngineSettings,
    incoming: Receiver<Submitted>,
    batch_queued: Arc<AtomicUsize>,
    interactive_queued: Arc<AtomicUsize>,
    stats: Arc<EngineStats>,
    /// Interactive requests waiting for a slot, and batch requests (served after them).
    waiting: VecDeque<Submitted>,
    waiting_batch: VecDeque<Submitted>,
    active: Vec<Sequence>,
    /// Batch sequences that gave their slots to interactive requests, resumed first when
    /// slots free up again.
    suspended: Vec<Sequence>,
    /// Tokens that end a sequence (never sent as text).
    end_tokens: Vec<u32>,
    prefixes: PrefixCache,
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

    fn idle(&self) -> bool {
        self.active.is_empty() && self.waiting.is_empty() && self.waiting_batch.is_empty() && self.suspended.is_empty()
    }

    /// Takes what was submitted; blocks only when there is nothing else to do. False when every
    /// handle is gone and no work remains.
    fn receive(&mut self) -> bool {
        if self.idle() {
            match self.incoming.recv() {
                Ok(submitted) => self.sort_in(submitted),
                Err(_) => return false,
            }
        }
        // Only what the batch can take soon leaves the bounded channel, so a full channel is
        // what refuses new requests: the engine's memory stays bounded under any load. Batch
        // requests leave it whenever they are seen, so they never stand between an
        // interactive request and its slot; and the slots batch sequences hold count as free,
        // since an interactive request takes them.
        let interactive = self.active.iter().filter(|sequence| sequence.priority == Priority::Interactive).count();
        while self.waiting.len() < self.settings.max_batch.saturating_sub(interactive).max(1) {
            match self.incoming.try_recv() {
                Ok(submitted) => self.sort_in(submitted),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !self.idle(),
            }
        }
        true
    }

    fn sort_in(&mut self, submitted: Submitted) {
        match submitted.request.priority {
            Priority::Interactive => {
                self.interactive_queued.fetch_sub(1, Ordering::SeqCst);
                self.waiting.push_back(submitted);
            }
            Priority::Batch => self.waiting_batch.push_back(submitted),
        }
    }

    /// Fills free slots: interactive requests first (suspending running batch sequences when
    /// there are no free slots for them), then suspended batch sequences, then new batch
    /// requests, the last two only while no interactive request waits.
    fn admit(&mut self) {
        self.suspended.retain(|sequence| !sequence.abandoned());
        while self.active.len() + self.waiting.len() > self.settings.max_batch {
            // The batch sequence admitted last has the least invested in its slot.
            let Some(index) = self.active.iter().rposition(|sequence| sequence.priority == Priority::Batch) else {
                break;
            };
            let sequence = self.active.remove(index);
            self.suspended.push(sequence);
            self.stats.suspensions.fetch_add(1, Ordering::Relaxed);
        }
        self.admit_from(Priority::Interactive);
        while self.waiting.is_empty() && self.active.len() < self.settings.max_batch {
            let Some(sequence) = self.suspended.pop() else { break };
            self.active.push(sequence);
        }
        if self.waiting.is_empty() {
            self.admit_from(Priority::Batch);
        }
        self.stats.running.store(self.active.len(), Ordering::SeqCst);
    }

    fn admit_from(&mut self, priority: Priority) {
        while self.active.len() < self.settings.max_batch {
            let queue = match priority {
                Priority::Interactive => &mut self.waiting,
                Priority::Batch => &mut self.waiting_batch,
            };
            let Some(submitted) = queue.pop_front() else { break };
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            if priority == Priority::Batch {
                self.batch_queued.fetch_sub(1, Ordering::SeqCst);
            }
            if abandoned(&submitted.events, &submitted.siblings) {
                continue;
            }
            let request = submitted.request;
            let capacity =
                request.prompt.len().saturating_add(request.params.max_tokens).min(self.model.config().max_positions());
            // A prompt that shares a prefix with one kept starts from its keys and values
            // (an adapter's requests never: their keys differ from the base's).
            let restored = match request.adapter {
                None => self.prefixes.restore(&request.prompt, capacity),
                Some(_) => None,
            };
            let (cache, cached) = match restored {
                Some(restored) => restored,
                None => match KvCache::new(&self.model, capacity) {
                    Ok(cache) => (cache, 0),
                    Err(error) => {
                        let _ = submitted.events.send(GenerationEvent::Failed(error.to_string()));
                        continue;
                    }
                },
            };
            if cached > 0 {
                self.stats.cached_tokens.fetch_add(cached, Ordering::Relaxed);
                self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
            }
            self.active.push(Sequence {
                siblings: submitted.siblings,
                rng: request.params.rng(),
                detokenizer: Detokenizer::default(),
                text: TextStream::new(request.params.stop.clone()),
                prompt: request.prompt,
                adapter: request.adapter,
                constraint: request.constraint,
                priority: request.priority,
                prefilled: cached,
                cached,
                generated: Vec::new(),
                cache,
                params: request.params,
                events: submitted.events,
                submitted_at: submitted.submitted_at,
                admitted_at: Instant::now(),
                first_token_at: None,
            });
        }
    }

    /// One forward pass over every sequence that has work this step.
    fn step(&mut self) -> Result<(), String> {
        // Clients that hung up leave before any work is done for them.
        self.active.retain(|sequence| !sequence.abandoned());
        if self.active.is_empty() {
            return Ok(());
        }
        let mut budget = self.settings.prefill_chunk.max(1);
        // (index into active, tokens this step, whether this step ends its prefill); the
        // inputs borrow their tokens from the sequences themselves.
        let mut plan: Vec<(usize, usize, bool)> = Vec::with_capacity(self.active.len());
        let mut inputs = Vec::with_capacity(self.active.len());
        // Interactive prompts take the step's prefill budget before batch prompts do.
        let mut order: Vec<(usize, &mut Sequence)> = self.active.iter_mut().enumerate().collect();
        order.sort_by_key(|(_, sequence)| sequence.priority == Priority::Batch);
        for (index, sequence) in order {
            if sequence.prefilling() {
                if budget == 0 {
                    continue;
                }
                let take = (sequence.prompt.len() - sequence.prefilled).min(budget);
                budget -= take;
                self.stats.prefilled_tokens.fetch_add(take, Ordering::Relaxed);
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
        let mut buffers = (Vec::new(), Vec::new());
        for (row, (index, tokens, samples)) in plan.into_iter().enumerate() {
            let sequence = &mut self.active[index];
            if sequence.prefilling() {
                sequence.prefilled += tokens;
                // The prompt is in: kept for prompts that share a prefix with it.
                if !sequence.prefilling() && sequence.adapter.is_none() {
                    self.prefixes.keep(&sequence.prompt, &sequence.cache);
                    self.stats.prefix_cache_bytes.store(self.prefixes.bytes(), Ordering::Relaxed);
                }
            }
            if !samples {
                continue;
            }
            // The request's other choices fork here, prompt in, and draw their first tokens
            // from the same row.
            let siblings = std::mem::take(&mut sequence.siblings);
            let forks: Vec<Sequence> =
                siblings.into_iter().zip(1u64..).map(|(events, choice)| sequence.fork(events, choice)).collect();
            let context = StepContext { tokenizer: &self.tokenizer, end_tokens: &self.end_tokens, batch_size };
            if next_token(&mut self.active[index], logits.row(row), &context, &mut buffers)? {
                finished.push(index);
            }
            for fork in forks {
                self.active.push(fork);
                let at = self.active.len() - 1;
                if next_token(&mut self.active[at], logits.row(row), &context, &mut buffers)? {
                    finished.push(at);
                }
            }
        }
        finished.sort_unstable();
        for index in finished.into_iter().rev() {
            self.active.swap_remove(index);
        }
        Ok(())
    }
}

/// Whether no one waits for a request's answers any more (its choices' receivers all dropped).
fn abandoned(events: &UnboundedSender<GenerationEvent>, siblings: &[UnboundedSender<GenerationEvent>]) -> bool {
    events.is_closed() && siblings.iter().all(UnboundedSender::is_closed)
}

/// What every sequence of a step shares when it draws its next token.
struct StepContext<'a> {
    tokenizer: &'a Tokenizer,
    end_tokens: &'a [u32],
    batch_size: usize,
}

/// Draws `sequence`'s next token from its row of logits (penalties, bias and its grammar
/// applied), sends the text it completes, and says whether the sequence is finished (ended,
/// full, or failed: its client has been told). `buffers` are scratch rows reused across a step.
fn next_token(
    sequence: &mut Sequence,
    logits: &[f32],
    context: &StepContext,
    buffers: &mut (Vec<f32>, Vec<f32>),
) -> Result<bool, String> {
    let (scratch, masked) = buffers;
    let mut scores = adjusted(logits, &sequence.params, &sequence.generated, scratch);
    if let Some(constraint) = sequence.constraint.as_mut() {
        masked.clear();
        masked.extend_from_slice(scores);
        let left = sequence.params.max_tokens.saturating_sub(sequence.generated.len());
        let closing = left <= closing_window(sequence.params.max_tokens);
        if let Err(error) = constraint.mask_logits(masked, closing) {
            let _ = sequence.events.send(GenerationEvent::Failed(format!("structured output: {error}")));
            return Ok(true);
        }
        scores = masked;
    }
    let token = sample(scores, &sequence.params, &mut sequence.rng);
    let logprob = sequence.params.logprobs.map(|top| logprobs(scores, token, top));
    let now = Instant::now();
    sequence.first_token_at.get_or_insert(now);
    // A grammar's answer ends where the grammar does, whatever `ignore_eos` says.
    let mut end_of_text =
        context.end_tokens.contains(&token) && (!sequence.params.ignore_eos || sequence.constraint.is_some());
    if !end_of_text {
        sequence.generated.push(token);
    }
    if let Some(constraint) = sequence.constraint.as_mut() {
        if let Err(error) = constraint.commit(token) {
            let _ = sequence.events.send(GenerationEvent::Failed(format!("structured output: {error}")));
            return Ok(true);
        }
        // Complete: the end is all that could follow, so it ends here, a step sooner.
        end_of_text |= constraint.finished();
    }
    let tokenizer = context.tokenizer;
    let full =
        sequence.generated.len() >= sequence.params.max_tokens || sequence.cache.len() + 1 > sequence.cache.capacity();
    let (delta, stopped) = if end_of_text {
        let decoded = sequence.detokenizer.finish(tokenizer, &sequence.generated)?;
        (sequence.text.end(decoded), true)
    } else if full {
        sequence.text.update(sequence.detokenizer.finish(tokenizer, &sequence.generated)?)
    } else {
        sequence.text.update(sequence.detokenizer.next(tokenizer, &sequence.generated)?)
    };
    if !delta.is_empty() || !end_of_text {
        let _ = sequence.events.send(GenerationEvent::Delta { text: delta, token, logprob });
    }
    if !(stopped || full) {
        return Ok(false);
    }
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
    let usage = Usage {
        prompt_tokens: sequence.prompt.len(),
        completion_tokens: sequence.generated.len(),
        cached_tokens: sequence.cached,
    };
    let reason = if stopped { FinishReason::Stop } else { FinishReason::Length };
    let _ = sequence.events.send(GenerationEvent::Done { reason, usage, timings, batch_size: context.batch_size });
    Ok(true)
}

/// The last tokens of a constrained answer's budget, in which it is steered to close its
/// strings, arrays and objects (half the budget, 8 to 128 tokens: what the grammar still
/// requires, such as required keys, may take many), so that it ends within the budget and
/// parses even when the model would go on.
fn closing_window(max_tokens: usize) -> usize {
    (max_tokens / 2).clamp(8, 128)
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
