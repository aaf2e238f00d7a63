//! Answering on a local engine: the prompt is bounded and tokenized off the async workers,
//! submitted, and the engine's events become a whole [`Completion`] or a stream of
//! [`TokenEvent`]s, metered as they go. A full engine queue is a 429 with Retry-After.

use std::sync::Arc;

use factory_engine::{EngineError, GenerationEvent, GenerationRequest, TokenLogprob};
use factory_tokenizer::Tokenizer;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{
    invalid_param, reason_name, AnswerHead, Answered, ChatMessage, Completion, Sampling, TokenEvent, TokenLogprobs,
};
use crate::inference_log::Meter;
use crate::service_error::{ErrorKind, ServiceError};
use crate::serving::{Generator, LoadedModel};

/// The chat template for models whose tokenizer config has none: each message as a role tag
/// line and its content, then the assistant's tag.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for message in messages %}<|{{ message.role }}|>\n{{ message.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// Bytes a prompt may spend per token of the model's context before it is refused untokenized.
const MAX_BYTES_PER_TOKEN: usize = 32;

pub fn generator<'a>(model: &'a LoadedModel, deployment: &str) -> Result<&'a Generator, ServiceError> {
    model.generator.as_ref().ok_or_else(|| {
        invalid_param("model", &format!("{deployment} serves embeddings ({}); call /v1/embeddings", model.reference))
    })
}

/// Renders the messages with the model's chat template (Jinja, as Hugging Face writes them),
/// sandboxed and on the blocking pool: the template is the importer's code.
pub async fn render_chat(generator: &Generator, messages: &[ChatMessage]) -> Result<String, ServiceError> {
    let template = generator.chat_template.clone().unwrap_or_else(|| DEFAULT_CHAT_TEMPLATE.to_string());
    let special = generator.special.clone();
    let messages = messages.to_vec();
    let text_bytes = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
    tokio::task::spawn_blocking(move || {
        let bos = special.bos.as_deref().unwrap_or("");
        let eos = special.eos.as_deref().unwrap_or(factory_tokenizer::END_OF_TEXT);
        crate::chat_template::render(&template, &messages, text_bytes, bos, eos)
    })
    .await
    .map_err(|e| ServiceError::internal(format!("rendering the chat template: {e}")))?
    .map_err(|e| ServiceError::new(ErrorKind::BadChatTemplate, e.0))
}

fn engine_error(error: EngineError) -> ServiceError {
    match error {
        EngineError::Overloaded => {
            ServiceError::new(ErrorKind::EngineOverloaded, "the model is at capacity; retry shortly").retry_after(1)
        }
        // The engine refuses a logit bias for a token the vocabulary lacks, or a prompt too long.
        EngineError::Invalid(message) if message.starts_with("logit_bias") => invalid_param("logit_bias", &message),
        EngineError::Invalid(message) => invalid_param("messages", &message),
        EngineError::Stopped => ServiceError::new(ErrorKind::ModelUnavailable, "the engine stopped"),
    }
}

/// Generates the answer to `prompt` on `model`: whole, or as a stream of token events.
pub async fn generate(
    model: Arc<LoadedModel>,
    prompt: &str,
    sampling: &Sampling,
    stream: bool,
    head: AnswerHead,
    mut meter: Meter,
) -> Result<Answered, ServiceError> {
    let prepared = async {
        let generator = generator(&model, &head.model)?;
        let max_context = generator.engine.max_context();
        // A token covers at least a byte, rarely more than a few dozen: a prompt this many
        // times the context cannot fit, and is refused before the tokenizer spends on it.
        let max_bytes = max_context.saturating_mul(MAX_BYTES_PER_TOKEN);
        if prompt.len() > max_bytes {
            return Err(invalid_param(
                "messages",
                &format!(
                    "the prompt is {} bytes; this model's context of {max_context} tokens takes at most {max_bytes}",
                    prompt.len()
                ),
            ));
        }
        // Tokenizing is CPU work in proportion to the prompt: off the async workers.
        let tokenizing = (model.clone(), prompt.to_string());
        let ids = tokio::task::spawn_blocking(move || {
            let (model, prompt) = tokenizing;
            model.generator.as_ref().map(|g| g.tokenizer.encode(&prompt))
        })
        .await
        .map_err(|e| ServiceError::internal(format!("tokenizing: {e}")))?
        .ok_or_else(|| ServiceError::internal("the model lost its generator"))?
        .map_err(|e| ServiceError::invalid(format!("prompt: {e}")))?;
        // A prompt that fills the context is refused by the engine, which names both lengths.
        let room = max_context.saturating_sub(ids.len()).max(1);
        Ok::<_, ServiceError>((generator, ids, sampling.params(room)?))
    }
    .await;
    let (generator, ids, params) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            meter.fail("refused");
            return Err(error);
        }
    };
    // Counted as the request goes, so a client that hangs up is still charged what it used.
    meter.record.prompt_tokens = ids.len() as i64;
    let wants_logprobs = params.logprobs.is_some();
    let events =
        match generator.engine.submit(GenerationRequest { prompt: ids, params, adapter: model.adapter.clone() }) {
            Ok(events) => events,
            Err(error) => {
                meter.fail(if error == EngineError::Overloaded { "overloaded" } else { "refused" });
                return Err(engine_error(error));
            }
        };
    let variant = model.reference.clone();
    if stream {
        return Ok(Answered::Tokens { head, variant, events: metered(events, meter, model).boxed() });
    }
    let mut events = events;
    let mut text = String::new();
    let mut logprobs = wants_logprobs.then(Vec::new);
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Delta { text: delta, token, logprob } => {
                meter.record.completion_tokens += 1;
                text.push_str(&delta);
                if let (Some(all), Some(logprob)) = (logprobs.as_mut(), logprob) {
                    all.push(token_logprobs(&generator.tokenizer, token, logprob));
                }
            }
            GenerationEvent::Done { reason, usage, timings, batch_size } => {
                meter.texts(None, Some(&text));
                meter.finish(Some(reason), &usage, &timings, batch_size);
                return Ok(Answered::Whole(Completion {
                    head,
                    text,
                    finish_reason: Some(reason_name(reason).to_string()),
                    usage,
                    variant,
                    upstream_body: None,
                    rewritten: false,
                    logprobs,
                }));
            }
            GenerationEvent::Failed(message) => {
                meter.fail("failed");
                return Err(ServiceError::new(ErrorKind::GenerationFailed, message));
            }
        }
    }
    meter.fail("failed");
    Err(ServiceError::new(ErrorKind::ModelUnavailable, "the engine ended the generation"))
}

/// The engine's events as token events, metered as they pass: every delta counts a token, and
/// the meter records when the generation ends (or, dropped, as cancelled).
fn metered(
    events: UnboundedReceiver<GenerationEvent>,
    meter: Meter,
    model: Arc<LoadedModel>,
) -> impl futures::Stream<Item = TokenEvent> + Send + 'static {
    let state = (events, meter, String::new(), false, model);
    futures::stream::unfold(state, |(mut events, mut meter, mut sent, done, model)| async move {
        if done {
            return None;
        }
        let Some(event) = events.recv().await else {
            meter.fail("failed");
            return Some((TokenEvent::Vanished, (events, meter, sent, true, model)));
        };
        let (event, done) = match event {
            GenerationEvent::Delta { text, token, logprob } => {
                meter.record.completion_tokens += 1;
                if meter.keep_text.is_some() {
                    sent.push_str(&text);
                }
                let tokenizer = model.generator.as_ref().map(|generator| &generator.tokenizer);
                let logprob =
                    logprob.zip(tokenizer).map(|(logprob, tokenizer)| token_logprobs(tokenizer, token, logprob));
                (TokenEvent::Delta { text, logprob }, false)
            }
            GenerationEvent::Done { reason, usage, timings, batch_size } => {
                meter.texts(None, Some(&sent));
                meter.finish(Some(reason), &usage, &timings, batch_size);
                (TokenEvent::Done { reason, usage }, true)
            }
            GenerationEvent::Failed(message) => {
                meter.fail("failed");
                (TokenEvent::Failed(message), true)
            }
        };
        Some((event, (events, meter, sent, done, model)))
    })
}

/// The engine's log-probabilities of `token` with each token as its text decoded alone.
fn token_logprobs(tokenizer: &Tokenizer, token: u32, logprob: TokenLogprob) -> TokenLogprobs {
    let text = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
    TokenLogprobs {
        token: text(token),
        logprob: logprob.logprob,
        top: logprob.top.into_iter().map(|(id, logprob)| (text(id), logprob)).collect(),
    }
}
