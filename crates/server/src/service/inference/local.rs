//! Answering on a local engine: the prompt is bounded and tokenized off the async workers,
//! submitted, and the engine's events become a whole [`Completion`] or a stream of
//! [`TokenEvent`]s, metered as they go. A full engine queue is a 429 with Retry-After.

use std::sync::Arc;

use factory_engine::{EngineError, FinishReason, GenerationEvent, GenerationRequest, Grammar, TokenLogprob, Usage};
use factory_tokenizer::Tokenizer;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;

use super::tools::{CallReader, FunctionCall, Piece, ToolCall, Tools};
use super::{
    invalid_param, reason_name, AnswerHead, Answered, ChatMessage, Choice, Completion, Sampling, TokenEvent,
    TokenLogprobs,
};
use crate::inference_log::Meter;
use crate::service_error::{ErrorKind, ServiceError};
use crate::serving::{Generator, LoadedModel};

/// The chat template for models whose tokenizer config has none: each message as a role tag
/// line and its content, then the assistant's tag.
pub const DEFAULT_CHAT_TEMPLATE: &str = concat!(
    "{% if tools %}<|system|>\nYou may call these tools. To call one, answer with <tool_call>\n",
    "{\"name\": NAME, \"arguments\": ARGUMENTS}\n</tool_call>\n",
    "{% for tool in tools %}{{ tool.function | tojson }}\n{% endfor %}{% endif %}",
    "{% for message in messages %}<|{{ message.role }}|>\n{{ message.content }}",
    "{% for call in message.tool_calls or [] %}<tool_call>\n",
    "{\"name\": {{ call.function.name | tojson }}, \"arguments\": {{ call.function.arguments | tojson }}}\n</tool_call>",
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
);

/// Bytes a prompt may spend per token of the model's context before it is refused untokenized.
const MAX_BYTES_PER_TOKEN: usize = 32;

pub fn generator<'a>(model: &'a LoadedModel, deployment: &str) -> Result<&'a Generator, ServiceError> {
    model.generator.as_ref().ok_or_else(|| {
        invalid_param("model", &format!("{deployment} serves embeddings ({}); call /v1/embeddings", model.reference))
    })
}

/// Renders the messages (and the tools offered) with the model's chat template (Jinja, as
/// Hugging Face writes them), sandboxed and on the blocking pool: the template is the
/// importer's code. A template that knows nothing of tools gets them, and the conversation's
/// calls and results, as text it does know (see [`plain_for_tools`]).
pub async fn render_chat(
    generator: &Generator,
    messages: &[ChatMessage],
    tools: Option<&Tools>,
) -> Result<String, ServiceError> {
    let template = generator.chat_template.clone().unwrap_or_else(|| DEFAULT_CHAT_TEMPLATE.to_string());
    let special = generator.special.clone();
    let knows_tools = template.contains("tools") && template.contains("tool_calls");
    let uses_tools = tools.is_some() || messages.iter().any(|m| !m.tool_calls.is_empty() || m.role == "tool");
    // What the template is given: the messages' texts and the tools' definitions.
    let tools_bytes = tools.map_or(0, |tools| tools.for_template().to_string().len());
    let text_bytes = messages.iter().map(ChatMessage::text_bytes).sum::<usize>() + tools_bytes;
    let (messages, tools) = match (uses_tools, knows_tools) {
        (true, false) => (plain_for_tools(messages, tools), None),
        _ => (template_messages(messages), tools.map(Tools::for_template)),
    };
    tokio::task::spawn_blocking(move || {
        let bos = special.bos.as_deref().unwrap_or("");
        let eos = special.eos.as_deref().unwrap_or(factory_tokenizer::END_OF_TEXT);
        crate::chat_template::render(&template, &messages, tools.as_ref(), text_bytes, bos, eos)
    })
    .await
    .map_err(|e| ServiceError::internal(format!("rendering the chat template: {e}")))?
    .map_err(|e| ServiceError::new(ErrorKind::BadChatTemplate, e.0))
}

/// Messages as Hugging Face templates take them: a call's arguments as a JSON value (OpenAI
/// sends them as text), so that templates writing `arguments | tojson` write JSON once.
fn template_messages(messages: &[ChatMessage]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|message| {
            let mut value = serde_json::to_value(message).unwrap_or_default();
            for call in value.get_mut("tool_calls").and_then(|c| c.as_array_mut()).into_iter().flatten() {
                if let Some(arguments) = call.pointer_mut("/function/arguments") {
                    if let Some(parsed) = arguments.as_str().and_then(|a| serde_json::from_str(a).ok()) {
                        *arguments = parsed;
                    }
                }
            }
            value
        })
        .collect()
}

/// For a template that knows nothing of tools: the tools as a system message that says how to
/// call them, an assistant's calls as the text of them, and a tool's result as a user message
/// (templates often refuse roles they do not know).
fn plain_for_tools(messages: &[ChatMessage], tools: Option<&Tools>) -> Vec<serde_json::Value> {
    let mut plain = Vec::with_capacity(messages.len() + 1);
    if let Some(tools) = tools {
        let mut system = "You may call these tools. To call one, answer with <tool_call>\n\
                          {\"name\": NAME, \"arguments\": ARGUMENTS}\n</tool_call>\n"
            .to_string();
        for tool in tools.for_template().as_array().into_iter().flatten() {
            system.push_str(&tool["function"].to_string());
            system.push('\n');
        }
        plain.push(serde_json::json!({ "role": "system", "content": system }));
    }
    for message in messages {
        let mut content = message.content.clone();
        for call in &message.tool_calls {
            let name = serde_json::Value::String(call.function.name.clone());
            content.push_str(&format!(
                "<tool_call>\n{{\"name\": {name}, \"arguments\": {}}}\n</tool_call>",
                call.function.arguments
            ));
        }
        let (role, content) = match message.role.as_str() {
            "tool" => ("user", format!("<tool_response>\n{content}\n</tool_response>")),
            role => (role, content),
        };
        plain.push(serde_json::json!({ "role": role, "content": content }));
    }
    plain
}

fn engine_error(error: EngineError) -> ServiceError {
    match error {
        EngineError::Overloaded => {
            ServiceError::new(ErrorKind::EngineOverloaded, "the model is at capacity; retry shortly").retry_after(1)
        }
        // The engine refuses a logit bias for a token the vocabulary lacks, or a prompt too long.
        EngineError::Invalid(message) if message.starts_with("logit_bias") => invalid_param("logit_bias", &message),
        EngineError::Invalid(message) => invalid_param("messages", &message),
        EngineError::Grammar(message) => {
            invalid_param("response_format", &format!("the schema cannot be enforced: {message}"))
        }
        EngineError::Stopped => ServiceError::new(ErrorKind::ModelUnavailable, "the engine stopped"),
    }
}

/// What an answer must be: within a grammar (a schema, the shape of tool calls), and whether
/// tool calls are read out of its text.
pub struct Shape {
    pub grammar: Option<Grammar>,
    pub reads_calls: bool,
    /// How many answers (`n`).
    pub choices: usize,
    /// Batch work waits for interactive work on the engine.
    pub priority: factory_engine::Priority,
}

/// Generates the answer to `prompt` on `model` in its `shape`: whole, or as a stream of events.
pub async fn generate(
    model: Arc<LoadedModel>,
    prompt: &str,
    sampling: &Sampling,
    shape: Shape,
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
        // Tokenizing and compiling a grammar are CPU work in proportion to the prompt and the
        // schema: off the async workers.
        let tokenizing = (model.clone(), prompt.to_string());
        let grammar = shape.grammar;
        let (ids, constraint) = tokio::task::spawn_blocking(move || {
            let (model, prompt) = tokenizing;
            let generator = model.generator.as_ref()?;
            let constraint = grammar.map(|grammar| generator.engine.constrain(&grammar)).transpose();
            Some((generator.tokenizer.encode(&prompt), constraint))
        })
        .await
        .map_err(|e| ServiceError::internal(format!("tokenizing: {e}")))?
        .ok_or_else(|| ServiceError::internal("the model lost its generator"))?;
        let ids = ids.map_err(|e| ServiceError::invalid(format!("prompt: {e}")))?;
        let constraint = constraint.map_err(engine_error)?;
        // A prompt that fills the context is refused by the engine, which names both lengths.
        let room = max_context.saturating_sub(ids.len()).max(1);
        Ok::<_, ServiceError>((generator, ids, sampling.params(room)?, constraint))
    }
    .await;
    let (generator, ids, params, constraint) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            meter.fail("refused");
            return Err(error);
        }
    };
    // Counted as the request goes, so a client that hangs up is still charged what it used.
    meter.record.prompt_tokens = ids.len() as i64;
    let wants_logprobs = params.logprobs.is_some();
    let request =
        GenerationRequest { prompt: ids, params, adapter: model.adapter.clone(), constraint, priority: shape.priority };
    let receivers = match generator.engine.submit_choices(request, shape.choices) {
        Ok(receivers) => receivers,
        Err(error) => {
            meter.fail(if error == EngineError::Overloaded { "overloaded" } else { "refused" });
            return Err(engine_error(error));
        }
    };
    let variant = model.reference.clone();
    let choices = receivers.len();
    let mut answering = Answering::new(meter, model, choices, shape.reads_calls);
    let mut events = merged(receivers);
    if stream {
        let events = futures::stream::unfold((events, answering), |(mut events, mut answering)| async move {
            if answering.finished() {
                return None;
            }
            let (index, event) = events.next().await?;
            let out = answering.on(index, event);
            Some((futures::stream::iter(out), (events, answering)))
        })
        .flatten();
        return Ok(Answered::Tokens { head, variant, choices, events: events.boxed() });
    }
    let mut answers = vec![Choice::default(); choices];
    while !answering.finished() {
        let Some((index, event)) = events.next().await else { break };
        for (index, event) in answering.on(index, event) {
            let choice = &mut answers[index];
            match event {
                TokenEvent::Delta { text, logprob } => {
                    choice.text.push_str(&text);
                    if let Some(logprob) = logprob {
                        choice.logprobs.get_or_insert_with(Vec::new).push(logprob);
                    }
                }
                TokenEvent::ToolCallStarted { id, name, .. } => choice.tool_calls.push(ToolCall {
                    id,
                    kind: "function".to_string(),
                    function: FunctionCall { name, arguments: String::new() },
                }),
                TokenEvent::ToolArguments { fragment, .. } => {
                    if let Some(call) = choice.tool_calls.last_mut() {
                        call.function.arguments.push_str(&fragment);
                    }
                }
                TokenEvent::Done { reason, called_tools, .. } => {
                    choice.finish_reason = Some(finish_name(reason, called_tools).to_string());
                }
                TokenEvent::Failed(message) => return Err(ServiceError::new(ErrorKind::GenerationFailed, message)),
                TokenEvent::Vanished => {
                    return Err(ServiceError::new(ErrorKind::ModelUnavailable, "the engine ended the generation"))
                }
            }
        }
    }
    if wants_logprobs {
        answers.iter_mut().for_each(|choice| _ = choice.logprobs.get_or_insert_with(Vec::new));
    }
    let usage = answering.usage;
    Ok(Answered::Whole(Completion { head, choices: answers, usage, variant, upstream_body: None, rewritten: false }))
}

/// Each choice's engine events, interleaved as they come, tagged with the choice's index; a
/// choice whose channel closes before it is done yields `None` once.
fn merged(
    receivers: Vec<UnboundedReceiver<GenerationEvent>>,
) -> futures::stream::SelectAll<futures::stream::BoxStream<'static, (usize, Option<GenerationEvent>)>> {
    futures::stream::select_all(receivers.into_iter().enumerate().map(|(index, receiver)| {
        futures::stream::unfold((receiver, false), move |(mut receiver, ended)| async move {
            if ended {
                return None;
            }
            match receiver.recv().await {
                Some(event) => {
                    let ended = matches!(event, GenerationEvent::Done { .. } | GenerationEvent::Failed(_));
                    Some(((index, Some(event)), (receiver, ended)))
                }
                None => Some(((index, None), (receiver, true))),
            }
        })
        .boxed()
    }))
}

/// A request's engine events turned into token events per choice, metered as they pass:
/// every delta counts a token, and the meter records once when every choice is done (the
/// prompt once, the choices' tokens summed), when one fails, or, dropped, as cancelled. With
/// `reads_calls`, each choice's text is read for tool calls, which become their own events.
struct Answering {
    meter: Meter,
    model: Arc<LoadedModel>,
    readers: Vec<Option<CallReader>>,
    /// Each choice's text so far, for the inference log (kept only when the policy samples).
    sent: Vec<String>,
    left: usize,
    failed: bool,
    usage: Usage,
    called_tools: Vec<serde_json::Value>,
}

impl Answering {
    fn new(meter: Meter, model: Arc<LoadedModel>, choices: usize, reads_calls: bool) -> Self {
        let readers = (0..choices).map(|_| reads_calls.then(CallReader::default)).collect();
        let prompt_tokens = meter.record.prompt_tokens.max(0) as usize;
        Answering {
            meter,
            model,
            readers,
            sent: vec![String::new(); choices],
            left: choices,
            failed: false,
            usage: Usage { prompt_tokens, completion_tokens: 0, cached_tokens: 0 },
            called_tools: Vec::new(),
        }
    }

    fn finished(&self) -> bool {
        self.failed || self.left == 0
    }

    fn on(&mut self, index: usize, event: Option<GenerationEvent>) -> Vec<(usize, TokenEvent)> {
        let Some(event) = event else {
            self.failed = true;
            self.meter.fail("failed");
            return vec![(index, TokenEvent::Vanished)];
        };
        let reader = self.readers.get_mut(index).and_then(Option::as_mut);
        match event {
            GenerationEvent::Delta { text, token, logprob } => {
                self.meter.record.completion_tokens += 1;
                if self.meter.keep_text.is_some() {
                    self.sent[index].push_str(&text);
                }
                match reader {
                    Some(reader) => pieces_as_events(index, reader.push(&text)),
                    None => {
                        let tokenizer = self.model.generator.as_ref().map(|generator| &generator.tokenizer);
                        let logprob = logprob
                            .zip(tokenizer)
                            .map(|(logprob, tokenizer)| token_logprobs(tokenizer, token, logprob));
                        vec![(index, TokenEvent::Delta { text, logprob })]
                    }
                }
            }
            GenerationEvent::Done { reason, usage, timings, batch_size } => {
                let mut out = Vec::new();
                let mut called_tools = false;
                if let Some(reader) = reader {
                    out = pieces_as_events(index, reader.finish());
                    called_tools = !reader.calls.is_empty();
                    if called_tools {
                        self.called_tools.push(serde_json::json!(reader.calls));
                    }
                }
                self.usage.completion_tokens += usage.completion_tokens;
                // The choices forked from one prefill: its cached tokens count once.
                self.usage.cached_tokens = usage.cached_tokens;
                self.left = self.left.saturating_sub(1);
                if self.left == 0 {
                    let sent = std::mem::take(&mut self.sent).join("\n");
                    self.meter.texts(None, Some(&sent));
                    if !self.called_tools.is_empty() {
                        let calls = std::mem::take(&mut self.called_tools);
                        self.meter.tool_calls(if calls.len() == 1 { calls[0].clone() } else { calls.into() });
                    }
                    self.meter.finish(Some(reason), &self.usage, &timings, batch_size);
                }
                out.push((index, TokenEvent::Done { reason, usage, called_tools }));
                out
            }
            GenerationEvent::Failed(message) => {
                self.failed = true;
                self.meter.fail("failed");
                vec![(index, TokenEvent::Failed(message))]
            }
        }
    }
}

fn pieces_as_events(index: usize, pieces: Vec<Piece>) -> Vec<(usize, TokenEvent)> {
    pieces
        .into_iter()
        .map(|piece| match piece {
            Piece::Content(text) => TokenEvent::Delta { text, logprob: None },
            Piece::CallStarted { index, id, name } => TokenEvent::ToolCallStarted { index, id, name },
            Piece::Arguments { index, fragment } => TokenEvent::ToolArguments { index, fragment },
        })
        .map(|event| (index, event))
        .collect()
}

/// The finish reason on the wire: `tool_calls` when an answer that ended by itself called tools.
pub fn finish_name(reason: FinishReason, called_tools: bool) -> &'static str {
    match reason {
        FinishReason::Stop if called_tools => "tool_calls",
        reason => reason_name(reason),
    }
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
