//! Answering a completion, as one typed flow:
//!
//! request -> [`plan`] (authorize `deployment.invoke`, route by weight or episode, admit under
//! the deployment's limits) -> [`guard`] the input -> answer on the chosen variant ([`local`]
//! engine or [`upstream`] relay; fallbacks in order, shadows beside) -> guard the output ->
//! meter (every attempt that reached a model is recorded once, in the inference log).
//!
//! The answer is typed: a whole [`Completion`], a stream of [`TokenEvent`]s from a local engine,
//! an upstream's event stream relayed as it comes, or an upstream's refusal for the client to
//! see. The handler encodes it as JSON or server-sent events; output guardrails look at the
//! typed text, never at an encoded response.

pub mod guard;
pub mod local;
pub mod plan;
pub mod tools;
pub mod upstream;
pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use factory_engine::{FinishReason, Grammar, SamplingParams, Usage};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::caller::Caller;
use crate::guardrails::{Guardrails, Stage};
use crate::inference_log::{Meter, MeteredRequest, Settlement};
use crate::service::deployments::load_variant;
use crate::service_error::{ErrorKind, ServiceError};
use crate::serving::VariantSpec;
use crate::state::AppState;

use self::plan::Plan;
use self::tools::{ToolCall, Tools};

/// A string or a list of them, as OpenAI's `prompt`, `stop` and `input` take.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// How to sample, as both OpenAI endpoints take it. Other OpenAI fields are accepted and
/// ignored, as OpenAI-compatible servers do, except those that would change the answer's shape.
#[derive(Debug, Clone, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<usize>,
    /// Keep generating past the end-of-text token, up to `max_tokens` (vLLM's extension, for
    /// benchmarks and tests that need answers of a known length).
    #[serde(default)]
    pub ignore_eos: bool,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string, OpenAI's JSON) to the bias added to its logit.
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Chat: `true` asks for each token's log-probability; completions: the number of
    /// alternatives to report with each.
    pub logprobs: Option<serde_json::Value>,
    /// Chat: the alternatives to report with each token (0 to 20), with `logprobs: true`.
    pub top_logprobs: Option<usize>,
    /// `{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {"name",
    /// "schema", "strict"}}`: enforced on local variants by constrained decoding.
    pub response_format: Option<serde_json::Value>,
}

impl Sampling {
    /// The engine's parameters, with at most `room` new tokens (what the context has left).
    pub fn params(&self, room: usize) -> Result<SamplingParams, ServiceError> {
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            seed: self.seed,
            // Never past the model's context: the room left after the prompt.
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(room).min(room),
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
            ignore_eos: self.ignore_eos,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias: self.logit_bias()?,
            logprobs: self.logprobs_wanted()?,
        };
        params.validate().map_err(|message| {
            let field = message.split(' ').next().unwrap_or_default().to_string();
            invalid_param(&field, &message)
        })?;
        Ok(params)
    }

    /// How many alternatives to report with each token's log-probability, if any: chat's
    /// `logprobs: true` with `top_logprobs`, or the completions API's `logprobs: N`.
    fn logprobs_wanted(&self) -> Result<Option<usize>, ServiceError> {
        let wanted = match &self.logprobs {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => None,
            Some(serde_json::Value::Bool(true)) => Some(self.top_logprobs.unwrap_or(0)),
            Some(serde_json::Value::Number(top)) => match top.as_u64() {
                Some(top) => Some(top as usize),
                None => return Err(invalid_param("logprobs", "give a whole number of alternatives")),
            },
            Some(_) => return Err(invalid_param("logprobs", "give true or false (chat) or a number (completions)")),
        };
        if wanted.is_none() && self.top_logprobs.is_some_and(|top| top > 0) {
            return Err(invalid_param("top_logprobs", "top_logprobs needs logprobs: true"));
        }
        Ok(wanted)
    }

    /// `logit_bias` by token id; a key that is not a token id is refused by name.
    fn logit_bias(&self) -> Result<Vec<(u32, f32)>, ServiceError> {
        let Some(biases) = &self.logit_bias else { return Ok(Vec::new()) };
        if biases.len() > factory_engine::MAX_LOGIT_BIAS {
            let message = format!("name at most {} tokens", factory_engine::MAX_LOGIT_BIAS);
            return Err(invalid_param("logit_bias", &message));
        }
        let id = |key: &String| {
            let shown: String = key.chars().take(32).collect();
            key.parse::<u32>().map_err(|_| invalid_param("logit_bias", &format!("{shown:?} is not a token id")))
        };
        biases.iter().map(|(key, bias)| Ok((id(key)?, *bias))).collect()
    }

    /// The grammar `response_format` asks for: none for text, any JSON object, or a schema.
    pub fn grammar(&self) -> Result<Option<Grammar>, ServiceError> {
        let Some(format) = &self.response_format else { return Ok(None) };
        let kind = format.get("type").and_then(serde_json::Value::as_str);
        match kind {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(Grammar::JsonObject)),
            Some("json_schema") => {
                let schema = format
                    .pointer("/json_schema/schema")
                    .ok_or_else(|| invalid_param("response_format.json_schema.schema", "json_schema needs a schema"))?;
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(invalid_param("response_format.json_schema.schema", "a schema is a JSON object"));
                }
                Ok(Some(Grammar::JsonSchema(schema.clone())))
            }
            _ => Err(invalid_param("response_format.type", "give text, json_object or json_schema")),
        }
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// How many answers the request asks for, refused by name past the configured maximum.
fn choices(n: Option<usize>, max: usize) -> Result<usize, ServiceError> {
    match n.unwrap_or(1) {
        n if (1..=max).contains(&n) => Ok(n),
        _ => Err(invalid_param("n", &format!("n must be between 1 and {max}"))),
    }
}

/// A refusal of the request naming the field at fault.
pub fn invalid_param(param: &str, message: &str) -> ServiceError {
    ServiceError::invalid(message).at_param(param)
}

/// A message of a conversation, as OpenAI's chat API takes it: text content (a string, text
/// parts, or none beside tool calls), an assistant's tool calls, a tool's result for a call.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default, deserialize_with = "content_text")]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// The message's bytes as a template sees them: content, and its calls' names and arguments.
    pub fn text_bytes(&self) -> usize {
        let calls: usize = self.tool_calls.iter().map(|c| c.function.name.len() + c.function.arguments.len()).sum();
        self.role.len() + self.content.len() + calls
    }
}

/// A message's content: a string, none, or a list of text parts (joined).
fn content_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    struct Part {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        text: String,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }
    match Option::<Content>::deserialize(deserializer)? {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => {
            if let Some(part) = parts.iter().find(|part| part.kind != "text") {
                return Err(serde::de::Error::custom(format!(
                    "content parts of type {:?} are not supported",
                    part.kind
                )));
            }
            Ok(parts.into_iter().map(|part| part.text).collect())
        }
    }
}

/// What is asked: a prompt to complete or a conversation to answer.
#[derive(Debug, Clone)]
pub enum Call {
    Completion(String),
    Chat(Vec<ChatMessage>),
}

/// How an answer is shaped: `text_completion` or `chat.completion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Completion,
    Chat,
}

impl Call {
    pub fn kind(&self) -> CallKind {
        match self {
            Call::Completion(_) => CallKind::Completion,
            Call::Chat(_) => CallKind::Chat,
        }
    }
}

/// A completion request.
pub struct Inference {
    /// The deployment the client names as `model`.
    pub deployment: String,
    pub call: Call,
    pub sampling: Sampling,
    /// The request as the client sent it: upstream variants are sent it (guarded, with their
    /// own model name), so fields this server does not read still reach them.
    pub raw: serde_json::Value,
    /// The client's episode (`x-episode-id`): an episode's requests reach one variant.
    pub episode: Option<String>,
    /// The tools a chat offers the model, and how it may call them.
    pub tools: Option<Tools>,
    /// Batch requests are served after interactive ones on a local engine.
    pub priority: factory_engine::Priority,
}

/// What names an answer, whatever form it takes.
#[derive(Debug, Clone)]
pub struct AnswerHead {
    /// The id feedback refers to; the inference log keeps it.
    pub id: String,
    pub kind: CallKind,
    /// The deployment, as the client named it.
    pub model: String,
    /// Seconds since the epoch.
    pub created: i64,
}

impl AnswerHead {
    fn new(kind: CallKind, model: &str) -> Self {
        let prefix = if kind == CallKind::Chat { "chatcmpl" } else { "cmpl" };
        let id = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
        AnswerHead { id, kind, model: model.to_string(), created: factory_core::time::now_millis() / 1000 }
    }
}

/// One of a whole answer's choices.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    pub text: String,
    /// `stop`, `length`, `tool_calls` or `content_filter` (an output guardrail withheld the
    /// text); none when an upstream gave none.
    pub finish_reason: Option<String>,
    /// Each generated token's log-probability, when the request asked (local variants).
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// The tools the model called (local variants; an upstream's are in its body). When there
    /// are any, `text` is what it wrote beside them, usually nothing.
    pub tool_calls: Vec<ToolCall>,
}

/// A whole answer: its choices (`n` of them), in order.
#[derive(Debug, Clone)]
pub struct Completion {
    pub head: AnswerHead,
    pub choices: Vec<Choice>,
    /// The prompt once, and the completion tokens of every choice.
    pub usage: Usage,
    /// The variant that answered (`name@version` or the upstream's label).
    pub variant: String,
    /// An upstream's answer as it sent it (with our id and model): fields this server does not
    /// read go back to the client unchanged.
    pub upstream_body: Option<serde_json::Value>,
    /// Whether an output guardrail changed a choice from what the variant answered.
    pub rewritten: bool,
}

/// A generated token's log-probability and the most likely alternatives with theirs, each
/// token as its text decoded alone (a token inside a character decodes to U+FFFD).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// The name a finish reason has on the wire and in the log.
pub fn reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// One step of a local engine's streamed answer.
#[derive(Debug, Clone)]
pub enum TokenEvent {
    /// Text of the next token (possibly empty: a token that completes no character yet), and
    /// its log-probability when the request asked.
    Delta {
        text: String,
        logprob: Option<TokenLogprobs>,
    },
    /// A tool call begins (its index among the answer's calls, id and function name).
    ToolCallStarted {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a tool call's arguments.
    ToolArguments {
        index: usize,
        fragment: String,
    },
    Done {
        reason: FinishReason,
        usage: Usage,
        /// The answer called tools: its finish reason is `tool_calls`.
        called_tools: bool,
    },
    Failed(String),
    /// The engine ended the generation without saying how.
    Vanished,
}

/// An answer in the form it comes.
pub enum Answered {
    Whole(Completion),
    /// A local engine's tokens as they are generated, each with the index of its choice,
    /// metered as they go; dropping the stream (the client hung up) cancels the generation at
    /// the engine's next step.
    Tokens {
        head: AnswerHead,
        variant: String,
        /// How many choices the stream interleaves.
        choices: usize,
        events: BoxStream<'static, (usize, TokenEvent)>,
    },
    /// An upstream's event stream, relayed event by event as it sent them.
    Relayed {
        variant: String,
        events: BoxStream<'static, Result<Bytes, std::io::Error>>,
    },
    /// An upstream found the request malformed: its status and body are the client's to see.
    Refused {
        status: u16,
        body: String,
    },
}

/// Guardrail token limits count tokens the common way for any model: four bytes each.
pub fn estimated_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// Answers `request` as `caller`: the whole flow, from plan to meter.
pub async fn complete(state: &AppState, caller: &Caller, mut request: Inference) -> Result<Answered, ServiceError> {
    choices(request.sampling.n, state.config.serving.max_choices)?;
    let offered: Vec<&str> =
        request.tools.iter().flat_map(|tools| tools.tools.iter().map(|t| t.name.as_str())).collect();
    let mut plan = plan::plan(state, caller, &request.deployment, request.episode.as_deref(), &offered).await?;
    let guardrails = std::mem::replace(&mut plan.guardrails, Arc::new(Guardrails::empty()));
    let keep_text = plan.logging.as_ref().and_then(|logging| {
        let draw = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
        (draw < logging.sample_rate).then_some(logging.redact_pii)
    });
    if !guardrails.is_empty() {
        // An encoder's work blocks: off the async workers with it.
        let (verdicts, block) = match guardrails.embeds() {
            true => tokio::task::block_in_place(|| guard::input(&guardrails, &mut request)),
            false => guard::input(&guardrails, &mut request),
        };
        guard::record(state, caller, &plan.tenant, &request.deployment, &verdicts).await;
        if let Some(verdict) = block {
            return Err(guard::blocked(&verdict));
        }
    }
    // Output rules need the whole answer: it is generated whole and, if the client asked for a
    // stream, sent as one afterwards.
    let guard_output = guardrails.covers(Stage::Output);
    if guard_output {
        request.sampling.stream = false;
        request.raw["stream"] = serde_json::Value::Bool(false);
        if let Some(fields) = request.raw.as_object_mut() {
            fields.remove("stream_options");
        }
    }
    let tenant = plan.tenant.clone();
    let deployment = request.deployment.clone();
    let answered = answer(state, caller, Arc::new(request), plan, keep_text).await?;
    match answered {
        Answered::Whole(mut completion) if guard_output => {
            let check = |text: &str| match guardrails.embeds() {
                true => tokio::task::block_in_place(|| guardrails.check(Stage::Output, text, &estimated_tokens)),
                false => guardrails.check(Stage::Output, text, &estimated_tokens),
            };
            for choice in &mut completion.choices {
                let checked = check(&choice.text);
                guard::record(state, caller, &tenant, &deployment, &checked.verdicts).await;
                let mut blocked = checked.blocked.is_some();
                if checked.text != choice.text {
                    choice.text = checked.text;
                    completion.rewritten = true;
                }
                // A call's arguments leave for the client's tools: checked like any answer.
                for call in &mut choice.tool_calls {
                    let checked = check(&call.function.arguments);
                    guard::record(state, caller, &tenant, &deployment, &checked.verdicts).await;
                    blocked |= checked.blocked.is_some();
                    if checked.text != call.function.arguments {
                        call.function.arguments = checked.text;
                        completion.rewritten = true;
                    }
                }
                if blocked {
                    choice.text = String::new();
                    choice.tool_calls.clear();
                    choice.finish_reason = Some("content_filter".to_string());
                    completion.rewritten = true;
                }
            }
            if completion.choices.iter().any(|choice| choice.finish_reason.as_deref() == Some("content_filter")) {
                state.inference_log.content_filtered(&completion.head.id);
            }
            Ok(Answered::Whole(completion))
        }
        answered => Ok(answered),
    }
}

/// Errors worth trying the next variant for: the variant failed, not the request.
fn worth_another_variant(error: &ServiceError) -> bool {
    matches!(
        error.kind,
        ErrorKind::Internal
            | ErrorKind::GenerationFailed
            | ErrorKind::Overloaded
            | ErrorKind::ModelUnavailable
            | ErrorKind::UpstreamFailed
            | ErrorKind::Timeout
            | ErrorKind::QuotaExceeded
            | ErrorKind::RateLimited
            | ErrorKind::EngineOverloaded
            | ErrorKind::TenantInFlightLimit
    )
}

/// Starts the shadows, then tries the primary and the fallbacks in order.
async fn answer(
    state: &AppState,
    caller: &Caller,
    request: Arc<Inference>,
    plan: Plan,
    keep_text: Option<bool>,
) -> Result<Answered, ServiceError> {
    for shadow in plan.shadows {
        let (state, caller, request) = (state.clone(), caller.clone(), request.clone());
        tokio::spawn(async move {
            let attempt = Attempt { request: &request, keep_text, shadow: true, settle: None };
            if let Err(error) = attempt.run(&state, &caller, &shadow).await {
                tracing::info!(variant = %shadow.label(), error = %error.message, "a shadow variant failed");
            }
        });
    }
    let mut last = None;
    for variant in std::iter::once(plan.primary).chain(plan.fallbacks) {
        let settle = plan.limits.clone().map(|(spec, scope, subject)| Settlement {
            limits: state.engines.limits.clone(),
            spec,
            scope,
            subject,
        });
        let attempt = Attempt { request: &request, keep_text, shadow: false, settle };
        match attempt.run(state, caller, &variant).await {
            Ok(answered) => return Ok(answered),
            Err(error) if worth_another_variant(&error) => {
                tracing::warn!(variant = %variant.label(), error = %error.message, "a variant failed; trying the next");
                last = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| ServiceError::new(ErrorKind::ModelUnavailable, "no variant answered")))
}

/// One variant's try at a request. A shadow answers whole (never streamed) and its answer is
/// dropped.
struct Attempt<'a> {
    request: &'a Inference,
    keep_text: Option<bool>,
    shadow: bool,
    settle: Option<Settlement>,
}

impl Attempt<'_> {
    async fn run(self, state: &AppState, caller: &Caller, variant: &VariantSpec) -> Result<Answered, ServiceError> {
        let request = self.request;
        let kind = request.call.kind();
        let head = AnswerHead::new(kind, &request.deployment);
        let label = if kind == CallKind::Chat { "chat" } else { "completion" };
        let mut meter = start_meter(state, caller, &request.deployment, request.episode.clone(), &head.id, label);
        meter.shadow = self.shadow;
        meter.settle = self.settle;
        meter.keep_text = self.keep_text;
        // What the request asks of the answer's shape is logged with its texts.
        let asked: serde_json::Map<String, serde_json::Value> = ["response_format", "tools", "tool_choice"]
            .into_iter()
            .filter_map(|field| request.raw.get(field).filter(|v| !v.is_null()).map(|v| (field.to_string(), v.clone())))
            .collect();
        meter.structure(serde_json::Value::Object(asked));
        if let Some(upstream) = &variant.upstream {
            plan::check_residency(state, caller, &request.deployment, &upstream.jurisdiction, false).await?;
            meter.arm(&variant.label(), (0.0, 0.0));
            return upstream::forward(state, upstream, request, head, meter, self.shadow).await;
        }
        if let Some(endpoint) = &variant.endpoint {
            let (upstream, outstanding) = upstream::endpoint_replica(state, endpoint)?;
            plan::check_residency(state, caller, &request.deployment, &upstream.jurisdiction, false).await?;
            meter.arm(&variant.label(), (0.0, 0.0));
            let answered = upstream::forward(state, &upstream, request, head, meter, self.shadow).await;
            if answered.as_ref().is_err_and(|error| error.kind == ErrorKind::UpstreamFailed) {
                outstanding.replica.mark_down();
            }
            return answered;
        }
        let tenant = plan::tenant_of_key(caller)?;
        let model = load_variant(state, &tenant, variant).await?;
        plan::check_residency(state, caller, &request.deployment, &model.jurisdiction, true).await?;
        arm(state, &mut meter, &model.reference);
        let tools = request.tools.as_ref();
        let prompt = match &request.call {
            Call::Completion(prompt) => prompt.clone(),
            Call::Chat(messages) => {
                local::render_chat(local::generator(&model, &request.deployment)?, messages, tools).await?
            }
        };
        meter.texts(Some(&prompt), None);
        let stream = request.sampling.stream && !self.shadow;
        let answer = request.sampling.grammar()?;
        let (grammar, reads_calls) = match tools {
            Some(tools) => (tools.grammar(answer.as_ref()), tools.may_call()),
            None => (answer, false),
        };
        let choices = choices(request.sampling.n, state.config.serving.max_choices)?;
        let shape = local::Shape { grammar, reads_calls, choices, priority: request.priority };
        local::generate(model, &prompt, &request.sampling, shape, stream, head, meter).await
    }
}

/// Starts measuring a request for the inference log and the metrics.
fn start_meter(
    state: &AppState,
    caller: &Caller,
    deployment: &str,
    episode: Option<String>,
    id: &str,
    kind: &str,
) -> Meter {
    let request = MeteredRequest {
        id: id.to_string(),
        tenant: caller.principal.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        deployment: deployment.to_string(),
        kind: kind.to_string(),
        request_id: caller.request_id.clone(),
        episode_id: episode,
    };
    Meter::new(state.inference_log.clone(), state.metrics.clone(), request)
}

/// Arms the meter once the request reaches a model, at the model's configured price.
fn arm(state: &AppState, meter: &mut Meter, reference: &str) {
    let name = reference.split('@').next().unwrap_or_default();
    let price = state.config.serving.prices.get(name).copied().unwrap_or((0.0, 0.0));
    meter.arm(reference, price);
}

/// Embeddings of `inputs` under the deployment's (registered, embedding) model.
pub struct Embedding {
    pub deployment: String,
    pub inputs: Vec<String>,
    pub episode: Option<String>,
}

/// Vectors, one per input, and the tokens they took.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    /// The model that embedded them (`name@version`).
    pub variant: String,
}

/// Inputs one embedding request may carry.
pub const MAX_EMBEDDING_INPUTS: usize = 256;

/// Refuses what no embedding request may carry: none or too many inputs, or an empty one.
pub fn check_embedding_inputs(inputs: &[String]) -> Result<(), ServiceError> {
    if inputs.is_empty() || inputs.len() > MAX_EMBEDDING_INPUTS {
        return Err(invalid_param("input", &format!("give 1 to {MAX_EMBEDDING_INPUTS} inputs")));
    }
    if let Some(index) = inputs.iter().position(|text| text.is_empty()) {
        return Err(invalid_param("input", &format!("input[{index}] is empty")));
    }
    Ok(())
}

/// Embeds `request.inputs` as `caller`: planned, admitted and metered like a completion.
pub async fn embed(state: &AppState, caller: &Caller, request: Embedding) -> Result<Embedded, ServiceError> {
    let Embedding { deployment, inputs, episode } = request;
    check_embedding_inputs(&inputs)?;
    let plan = plan::plan(state, caller, &deployment, episode.as_deref(), &[]).await?;
    if plan.primary.model.is_none() {
        return Err(invalid_param("model", "embeddings are served from registered models only"));
    }
    let model = load_variant(state, &plan::tenant_of_key(caller)?, &plan.primary).await?;
    plan::check_residency(state, caller, &deployment, &model.jurisdiction, true).await?;
    let embedder = model.embedder.clone().ok_or_else(|| {
        invalid_param("model", &format!("{deployment} generates text ({}); it has no embeddings", model.reference))
    })?;
    let id = format!("emb-{}", uuid::Uuid::new_v4().simple());
    let mut meter = start_meter(state, caller, &deployment, episode, &id, "embedding");
    arm(state, &mut meter, &model.reference);
    meter.settle = plan.limits.clone().map(|(spec, scope, subject)| Settlement {
        limits: state.engines.limits.clone(),
        spec,
        scope,
        subject,
    });
    let Ok(permit) = state.engines.embedding_permits.clone().try_acquire_owned() else {
        meter.fail("overloaded");
        return Err(
            ServiceError::new(ErrorKind::EngineOverloaded, "embeddings are at capacity; retry shortly").retry_after(1)
        );
    };
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        embedder.embed(&inputs)
    })
    .await
    .map_err(|e| ServiceError::internal(e.to_string()))?
    .map_err(|e| invalid_param("input", &e.to_string()))?;
    let computed = meter.started.elapsed().as_secs_f64() * 1000.0;
    let usage = Usage { prompt_tokens: tokens, completion_tokens: 0, cached_tokens: 0 };
    meter.finish(None, &usage, &factory_engine::Timings { queue_ms: 0.0, first_token_ms: computed, decode_ms: 0.0 }, 1);
    Ok(Embedded { vectors, prompt_tokens: tokens, variant: model.reference.clone() })
}
