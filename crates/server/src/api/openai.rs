//! The OpenAI-compatible API: `/v1/models`, `/v1/completions` and `/v1/chat/completions`,
//! plain or streamed as server-sent events ending in `data: [DONE]`. `model` names a
//! deployment of the caller's tenant; each request is authorized (`deployment.invoke`), routed
//! to a variant by weight (or by `x-episode-id`, so an episode sticks to one variant), and run
//! on that variant's engine. A full engine queue answers 429 with Retry-After; a client that
//! hangs up cancels its generation at the engine's next step.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use factory_core::{AccessRequest, Action, Resource, TenantName};
use factory_engine::{EngineError, FinishReason, GenerationEvent, GenerationRequest, SamplingParams, Usage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;

use super::models::split_reference;
use crate::error::ApiError;
use crate::extract::{ApiJson, Caller};
use crate::guardrails::{Guardrails, Stage, Verdict};
use crate::inference_log::{Meter, Settlement};
use crate::limits::{LimitsSpec, Subject};
use crate::serving::{LoadedModel, UpstreamSpec, VariantRole, VariantSpec};
use crate::state::AppState;
use factory_store::inference::InferenceRecord;

/// The chat template for models whose tokenizer config has none: each message as a role tag
/// line and its content, then the assistant's tag.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for message in messages %}<|{{ message.role }}|>\n{{ message.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

const EPISODE_HEADER: &str = "x-episode-id";
const VARIANT_HEADER: &str = "x-factory-model";

/// The registered version a variant names (an alias is followed as it stands now) and its
/// engine. Invocation was authorized on the deployment, which was checked when deployed.
pub async fn load_variant(
    state: &AppState,
    tenant: &TenantName,
    variant: &VariantSpec,
) -> Result<Arc<LoadedModel>, ApiError> {
    let model = variant.model.as_deref().ok_or_else(|| ApiError::invalid("not a registered-model variant"))?;
    let (name, reference) = split_reference(model)?;
    let version = state.lookups.model_version(state, tenant, name, reference).await?.ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", format!("{model} is not registered"))
    })?;
    state.engines.get(state, &version).await
}

/// Starts measuring a request for the inference log and the metrics.
fn meter(state: &AppState, caller: &Caller, headers: &HeaderMap, deployment: &str, id: &str, kind: &str) -> Meter {
    let record = InferenceRecord {
        id: id.to_string(),
        tenant: caller.principal.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        deployment: deployment.to_string(),
        variant: String::new(),
        kind: kind.to_string(),
        request_id: caller.request_id.clone(),
        episode_id: headers.get(EPISODE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string),
        status: String::new(),
        finish_reason: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost: 0.0,
        queue_ms: 0.0,
        first_token_ms: 0.0,
        decode_ms: 0.0,
        total_ms: 0.0,
        created_at: factory_core::time::now_millis(),
        prompt_text: None,
        completion_text: None,
    };
    Meter {
        log: state.inference_log.clone(),
        metrics: state.metrics.clone(),
        record,
        price: (0.0, 0.0),
        started: std::time::Instant::now(),
        done: true,
        shadow: false,
        settle: None,
        keep_text: None,
    }
}

/// Arms the meter once the request reaches a model (refusals before that are not inferences).
fn arm(state: &AppState, meter: &mut Meter, model: &LoadedModel) {
    meter.record.variant = model.reference.clone();
    let name = model.reference.split('@').next().unwrap_or_default();
    meter.price = state.config.serving.prices.get(name).copied().unwrap_or((0.0, 0.0));
    meter.done = false;
}

/// Refuses (403, audited) a variant whose jurisdiction the tenant no longer allows or, for our
/// own models, that no serving site covers any more.
async fn check_residency(
    state: &AppState,
    caller: &Caller,
    deployment: &str,
    jurisdiction: &factory_core::Jurisdiction,
    ours: bool,
) -> Result<(), ApiError> {
    let tenant = tenant_key(caller)?;
    let (allowed, serving) =
        crate::registry::site_facts(state, &tenant, jurisdiction, factory_core::SiteKind::Serving).await?;
    let request =
        AccessRequest::new(&caller.principal, Action::DeploymentInvoke, Resource::deployment(&tenant, deployment))
            .with_context("jurisdiction_allowed", allowed)
            .with_context("serving_site", serving || !ours);
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    Ok(())
}

fn tenant_key(caller: &Caller) -> Result<TenantName, ApiError> {
    caller
        .principal
        .tenant
        .clone()
        .ok_or_else(|| ApiError::invalid("the OpenAI API serves a tenant's deployments: use a tenant's API key"))
}

/// A deterministic draw in [0, 1) for an episode, so its requests reach one variant.
fn episode_draw(episode: &str) -> f64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(episode.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Where a request goes: the primary drawn by weight (or by episode), the fallbacks in order,
/// and the shadows that get a copy.
struct Plan {
    primary: VariantSpec,
    fallbacks: Vec<VariantSpec>,
    shadows: Vec<VariantSpec>,
    /// The deployment's limits with the scope and caller they are kept under.
    limits: Option<(LimitsSpec, String, Subject)>,
    logging: Option<crate::serving::LoggingSpec>,
    guardrails: Arc<Guardrails>,
    tenant: TenantName,
}

async fn plan(state: &AppState, caller: &Caller, deployment: &str, headers: &HeaderMap) -> Result<Plan, ApiError> {
    let tenant = tenant_key(caller)?;
    let request =
        AccessRequest::new(&caller.principal, Action::DeploymentInvoke, Resource::deployment(&tenant, deployment));
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    let deployed = state.lookups.deployment(state, &tenant, deployment).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "model_not_found", format!("The model `{deployment}` does not exist"))
    })?;
    let spec = &deployed.spec;
    let draw = match headers.get(EPISODE_HEADER).and_then(|v| v.to_str().ok()) {
        Some(episode) => episode_draw(episode),
        // A v4 UUID is 122 random bits; 53 of them make a uniform draw.
        None => (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64,
    };
    let limits = spec.limits.clone().map(|limits| {
        let scope = format!("{tenant}/{deployment}");
        (limits, scope, Subject { key: caller.principal.id.clone(), tenant: tenant.to_string() })
    });
    if let Some((limits, scope, subject)) = &limits {
        if let Err(wait) = state.engines.limits.admit(limits, scope, subject) {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{deployment}: over its rate limit or budget; retry in {wait} s"),
            );
            error.retry_after_secs = Some(wait);
            return Err(error);
        }
    }
    // Rules that compare embeddings need this request's encoders, attached to a copy that
    // shares the compiled rules.
    let guardrails = if !deployed.guardrails.compares_embeddings() {
        deployed.guardrails.clone()
    } else {
        let mut guardrails = Guardrails::clone(&deployed.guardrails);
        attach_topic_encoders(state, &tenant, &mut guardrails).await?;
        Arc::new(guardrails)
    };
    Ok(Plan {
        primary: spec.pick(draw).clone(),
        fallbacks: spec.with_role(VariantRole::Fallback).cloned().collect(),
        shadows: spec.with_role(VariantRole::Shadow).cloned().collect(),
        limits,
        logging: spec.logging.clone(),
        guardrails,
        tenant,
    })
}

/// Loads the embedding models that denied topics compare texts under (verified, as any model),
/// with their examples' vectors computed once per model and examples.
async fn attach_topic_encoders(
    state: &AppState,
    tenant: &TenantName,
    guardrails: &mut Guardrails,
) -> Result<(), ApiError> {
    for (index, rule, model, examples) in guardrails.semantic_topics() {
        let unusable = |why: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "guardrail_unavailable", why);
        let (name, reference) = model.split_once('@').unwrap_or_default();
        let version = crate::api::models::version_of(state, tenant, name, reference)
            .await?
            .ok_or_else(|| unusable(format!("guardrail {rule}: embedding model {model} does not exist")))?;
        let loaded = state.engines.get(state, &version).await?;
        let embedder = loaded
            .embedder
            .clone()
            .ok_or_else(|| unusable(format!("guardrail {rule}: {model} is not an embedding model")))?;
        let vectors =
            state.engines.topic_vectors(&version.manifest_digest, &embedder, &examples).await.map_err(unusable)?;
        guardrails.attach(index, embedder, vectors);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct ModelObject {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: String,
}

pub async fn models(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let tenant = tenant_key(&caller)?;
    let request = AccessRequest::new(&caller.principal, Action::DeploymentRead, Resource::deployment(&tenant, "*"));
    state.store.authorize(state.pdp.as_ref(), &request, &caller.request_id).await?;
    let data: Vec<ModelObject> = state
        .store
        .deployments(&tenant)
        .await?
        .into_iter()
        .map(|d| ModelObject {
            id: d.name,
            object: "model",
            created: d.created_at / 1000,
            owned_by: tenant.to_string(),
        })
        .collect();
    Ok(Json(serde_json::json!({ "object": "list", "data": data })).into_response())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
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

/// The sampling fields both endpoints share. Other OpenAI fields are accepted and ignored, as
/// OpenAI-compatible servers do, except those that would change the answer's shape.
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
}

impl Sampling {
    fn params(&self, default_max: usize) -> Result<SamplingParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid_param("n", "only n = 1 is supported"));
        }
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            seed: self.seed,
            // Never past the model's context: the room left after the prompt.
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(default_max).min(default_max),
            stop: self.stop.clone().map(OneOrMany::into_vec).unwrap_or_default(),
            ignore_eos: self.ignore_eos,
        };
        params.validate().map_err(|message| {
            let field = message.split(' ').next().unwrap_or_default().to_string();
            invalid_param(&field, &message)
        })?;
        Ok(params)
    }

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

fn invalid_param(param: &str, message: &str) -> ApiError {
    let mut error = ApiError::invalid(message);
    error.param = Some(param.to_string());
    error
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// How a response is shaped: `text_completion` or `chat.completion`.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

struct Answer {
    id: String,
    kind: Kind,
    model: String,
    created: i64,
}

impl Answer {
    fn new(kind: Kind, model: &str) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        let id = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
        Answer { id, kind, model: model.to_string(), created: factory_core::time::now_millis() / 1000 }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn usage(usage: &Usage) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        })
    }

    fn whole(&self, text: String, reason: FinishReason, usage: &Usage) -> serde_json::Value {
        let choice = match self.kind {
            Kind::Completion => {
                serde_json::json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": reason })
            }
            Kind::Chat => serde_json::json!({
                "index": 0, "message": { "role": "assistant", "content": text }, "logprobs": null, "finish_reason": reason,
            }),
        };
        serde_json::json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "choices": [choice], "usage": Self::usage(usage),
        })
    }

    fn chunk(&self, text: Option<&str>, reason: Option<impl Serialize>, first: bool) -> serde_json::Value {
        let choice = match self.kind {
            Kind::Completion => {
                serde_json::json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": reason })
            }
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(text) = text {
                    delta.insert("content".into(), text.into());
                }
                serde_json::json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": reason })
            }
        };
        serde_json::json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice],
        })
    }

    fn usage_chunk(&self, usage: &Usage) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "choices": [], "usage": Self::usage(usage),
        })
    }
}

fn engine_error(error: EngineError) -> ApiError {
    match error {
        EngineError::Overloaded => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "engine_overloaded",
                "the model is at capacity; retry shortly",
            );
            error.retry_after_secs = Some(1);
            error
        }
        EngineError::Invalid(message) => invalid_param("messages", &message),
        EngineError::Stopped => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", "the engine stopped")
        }
    }
}

/// Bytes a prompt may spend per token of the model's context before it is refused untokenized.
const MAX_BYTES_PER_TOKEN: usize = 32;

fn generator<'a>(model: &'a LoadedModel, deployment: &str) -> Result<&'a crate::serving::Generator, ApiError> {
    model.generator.as_ref().ok_or_else(|| {
        invalid_param("model", &format!("{deployment} serves embeddings ({}); call /v1/embeddings", model.reference))
    })
}

async fn generate(
    model: Arc<LoadedModel>,
    prompt: &str,
    sampling: &Sampling,
    answer: Answer,
    mut meter: Meter,
) -> Result<Response, ApiError> {
    let prepared = async {
        let generator = generator(&model, &answer.model)?;
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
        .map_err(|e| ApiError::internal(format!("tokenizing: {e}")))?
        .ok_or_else(|| ApiError::internal("the model lost its generator"))?
        .map_err(|e| ApiError::invalid(format!("prompt: {e}")))?;
        // A prompt that fills the context is refused by the engine, which names both lengths.
        let room = max_context.saturating_sub(ids.len()).max(1);
        Ok::<_, ApiError>((generator, ids, sampling.params(room)?))
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
    let events = match generator.engine.submit(GenerationRequest { prompt: ids, params }) {
        Ok(events) => events,
        Err(error) => {
            meter.fail(if error == EngineError::Overloaded { "overloaded" } else { "refused" });
            return Err(engine_error(error));
        }
    };
    let variant = HeaderValue::from_str(&model.reference).unwrap_or(HeaderValue::from_static("-"));
    if sampling.stream {
        let body = Body::from_stream(sse(events, answer, sampling.include_usage(), meter));
        let headers = [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ];
        let mut response = (headers, body).into_response();
        response.headers_mut().insert(VARIANT_HEADER, variant);
        return Ok(response);
    }
    let mut events = events;
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Delta { text: delta, .. } => {
                meter.record.completion_tokens += 1;
                text.push_str(&delta);
            }
            GenerationEvent::Done { reason, usage, timings, batch_size } => {
                meter.texts(None, Some(&text));
                meter.finish(Some(reason), &usage, &timings, batch_size);
                let mut response = Json(answer.whole(text, reason, &usage)).into_response();
                response.headers_mut().insert(VARIANT_HEADER, variant);
                return Ok(response);
            }
            GenerationEvent::Failed(message) => {
                meter.fail("failed");
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "generation_failed", message));
            }
        }
    }
    meter.fail("failed");
    Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", "the engine ended the generation"))
}

fn data(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Engine events as server-sent events. Dropping the stream (the client hung up) drops the
/// receiver, which the engine notices at its next step.
fn sse(
    events: UnboundedReceiver<GenerationEvent>,
    answer: Answer,
    include_usage: bool,
    meter: Meter,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let state = (events, answer, true, false, meter, String::new());
    futures::stream::unfold(state, move |(mut events, answer, first, done, mut meter, mut sent)| async move {
        if done {
            return None;
        }
        let Some(event) = events.recv().await else {
            meter.fail("failed");
            return Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), (events, answer, first, true, meter, sent)));
        };
        let (bytes, first, done) = match event {
            GenerationEvent::Delta { text, .. } if text.is_empty() && !first => {
                meter.record.completion_tokens += 1;
                (Bytes::new(), first, false)
            }
            GenerationEvent::Delta { text, .. } => {
                meter.record.completion_tokens += 1;
                if meter.keep_text.is_some() {
                    sent.push_str(&text);
                }
                (data(&answer.chunk(Some(&text), None::<FinishReason>, first)), false, false)
            }
            GenerationEvent::Done { reason, usage, timings, batch_size } => {
                meter.texts(None, Some(&sent));
                meter.finish(Some(reason), &usage, &timings, batch_size);
                let mut out = data(&answer.chunk(None, Some(reason), first)).to_vec();
                if include_usage {
                    out.extend_from_slice(&data(&answer.usage_chunk(&usage)));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                (Bytes::from(out), false, true)
            }
            GenerationEvent::Failed(message) => {
                meter.fail("failed");
                let error = serde_json::json!({ "error": { "message": message, "type": "server_error", "code": "generation_failed" } });
                let mut out = data(&error).to_vec();
                out.extend_from_slice(b"data: [DONE]\n\n");
                (Bytes::from(out), first, true)
            }
        };
        Some((Ok(bytes), (events, answer, first, done, meter, sent)))
    })
    .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())))
}

/// A generation request in the form local models take; upstreams get the client's JSON.
#[derive(Clone)]
enum Call {
    Completion(String),
    Chat(Vec<ChatMessage>),
}

impl Call {
    fn kind(&self) -> Kind {
        match self {
            Call::Completion(_) => Kind::Completion,
            Call::Chat(_) => Kind::Chat,
        }
    }
}

/// The request as the client sent it (forwarded to upstreams) and its typed reading.
struct Incoming {
    raw: serde_json::Value,
    deployment: String,
    call: Call,
    sampling: Sampling,
    /// Sampled by the deployment's logging policy: keep the texts (masking PII if true).
    keep_text: Option<bool>,
}

fn invalid_body(error: serde_json::Error) -> ApiError {
    ApiError::invalid(format!("request body: {error}"))
}

pub async fn completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let body: CompletionRequest = serde_json::from_value(raw.clone()).map_err(invalid_body)?;
    let prompts = body.prompt.into_vec();
    let [prompt] = prompts.as_slice() else {
        return Err(invalid_param("prompt", "give one prompt (a string)"));
    };
    let incoming = Incoming {
        raw,
        deployment: body.model,
        call: Call::Completion(prompt.clone()),
        sampling: body.sampling,
        keep_text: None,
    };
    serve(&state, &caller, &headers, incoming).await
}

pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let body: ChatRequest = serde_json::from_value(raw.clone()).map_err(invalid_body)?;
    if body.messages.is_empty() {
        return Err(invalid_param("messages", "give at least one message"));
    }
    for (index, message) in body.messages.iter().enumerate() {
        if !matches!(message.role.as_str(), "system" | "user" | "assistant" | "developer" | "tool") {
            return Err(invalid_param(&format!("messages[{index}].role"), &format!("unknown role {:?}", message.role)));
        }
    }
    let incoming = Incoming {
        raw,
        deployment: body.model,
        call: Call::Chat(body.messages),
        sampling: body.sampling,
        keep_text: None,
    };
    serve(&state, &caller, &headers, incoming).await
}

/// Errors worth trying the next variant for: the variant failed, not the request.
fn retryable(error: &ApiError) -> bool {
    error.status.is_server_error() || error.status == StatusCode::TOO_MANY_REQUESTS
}

/// Guardrail token limits count tokens the common way for any model: four bytes each.
fn estimated_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// Audits every verdict (as the caller's invocation of the deployment) and counts it.
async fn record_verdicts(
    state: &AppState,
    caller: &Caller,
    tenant: &TenantName,
    deployment: &str,
    verdicts: &[Verdict],
) {
    for verdict in verdicts {
        let labels = crate::metrics::GuardrailLabels {
            deployment: deployment.to_string(),
            rule: verdict.rule.clone(),
            kind: verdict.kind.to_string(),
            action: format!("{:?}", verdict.action).to_lowercase(),
            stage: format!("{:?}", verdict.stage).to_lowercase(),
        };
        state.metrics.inference.guardrail_verdicts.get_or_create(&labels).inc();
        let request =
            AccessRequest::new(&caller.principal, Action::DeploymentInvoke, Resource::deployment(tenant, deployment));
        let details = serde_json::json!({ "deployment": deployment, "verdict": verdict });
        let recorded = async {
            let change = state.store.begin_change(state.pdp.as_ref(), request, &caller.request_id).await?;
            change.commit(details.clone(), factory_store::Event::new("guardrail.verdict", details)).await
        };
        if let Err(error) = recorded.await {
            tracing::warn!(%error, rule = %verdict.rule, "could not audit a guardrail verdict");
        }
    }
}

fn blocked(verdict: &Verdict) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::BAD_REQUEST,
        "guardrail_blocked",
        format!("the request was blocked by guardrail {} ({})", verdict.rule, verdict.kind),
    );
    error.param = Some(if verdict.stage == Stage::Input { "messages" } else { "output" }.to_string());
    error
}

/// Applies the input rules to the prompt (or each message), masking in place.
fn guard_input(guardrails: &Guardrails, incoming: &mut Incoming) -> (Vec<Verdict>, Option<Verdict>) {
    let mut verdicts = Vec::new();
    let mut first_block = None;
    let mut apply = |text: &mut String| {
        let checked = guardrails.check(Stage::Input, text, &estimated_tokens);
        *text = checked.text;
        verdicts.extend(checked.verdicts);
        if first_block.is_none() {
            first_block = checked.blocked;
        }
    };
    // Every other text the request carries (a message's `name`, `user`, `metadata`, `stop`,
    // ...) reaches the model or the upstream too: each is checked and masked like the prompt.
    guard_fields(&mut incoming.raw, incoming.call.kind(), &mut apply);
    match &mut incoming.call {
        Call::Completion(prompt) => {
            apply(prompt);
            incoming.raw["prompt"] = serde_json::Value::String(prompt.clone());
        }
        Call::Chat(messages) => {
            for (index, message) in messages.iter_mut().enumerate() {
                apply(&mut message.content);
                incoming.raw["messages"][index]["content"] = serde_json::Value::String(message.content.clone());
            }
            // Token limits apply to the conversation as a whole, not only to each message.
            let whole: String = messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
            if let Some(verdict) = guardrails.check_total(Stage::Input, &whole, &estimated_tokens) {
                if verdict.action == crate::guardrails::GuardAction::Block && first_block.is_none() {
                    first_block = Some(verdict.clone());
                }
                verdicts.push(verdict);
            }
        }
    }
    (verdicts, first_block)
}

/// Applies `apply` to every string of a request body except the deployment's name, roles, and
/// the text the typed call carries (a completion's `prompt`, a chat's message contents), which
/// is checked as the call and written back. A chat's stray `prompt` or a completion's stray
/// `messages` is checked here like any other field, since it is forwarded too.
fn guard_fields(raw: &mut serde_json::Value, kind: Kind, apply: &mut impl FnMut(&mut String)) {
    fn every_string(value: &mut serde_json::Value, apply: &mut impl FnMut(&mut String)) {
        match value {
            serde_json::Value::String(text) => apply(text),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|item| every_string(item, apply)),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(|field| every_string(field, apply)),
            _ => {}
        }
    }
    let Some(fields) = raw.as_object_mut() else { return };
    for (key, value) in fields.iter_mut() {
        match key.as_str() {
            "model" => {}
            "prompt" if kind == Kind::Completion => {}
            "messages" if kind == Kind::Chat => {
                for message in value.as_array_mut().into_iter().flatten() {
                    for (field, part) in message.as_object_mut().into_iter().flatten() {
                        if field != "content" && field != "role" {
                            every_string(part, apply);
                        }
                    }
                }
            }
            _ => every_string(value, apply),
        }
    }
}

async fn serve(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    mut incoming: Incoming,
) -> Result<Response, ApiError> {
    if incoming.sampling.n.is_some_and(|n| n != 1) {
        return Err(invalid_param("n", "only n = 1 is supported"));
    }
    let mut plan = plan(state, caller, &incoming.deployment, headers).await?;
    let guardrails = std::mem::replace(&mut plan.guardrails, Arc::new(Guardrails::empty()));
    let deployment = incoming.deployment.clone();
    if let Some(logging) = &plan.logging {
        let draw = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
        incoming.keep_text = (draw < logging.sample_rate).then_some(logging.redact_pii);
    }
    if !guardrails.is_empty() {
        // An encoder's work blocks: off the async workers with it.
        let (verdicts, block) = match guardrails.embeds() {
            true => tokio::task::block_in_place(|| guard_input(&guardrails, &mut incoming)),
            false => guard_input(&guardrails, &mut incoming),
        };
        record_verdicts(state, caller, &plan.tenant, &deployment, &verdicts).await;
        if let Some(verdict) = block {
            return Err(blocked(&verdict));
        }
    }
    // Output rules need the whole answer: it is generated whole and, if the client asked for a
    // stream, sent as one afterwards.
    let guard_output = guardrails.covers(Stage::Output);
    let wants_stream = incoming.sampling.stream;
    let include_usage = incoming.sampling.include_usage();
    if guard_output {
        incoming.sampling.stream = false;
        incoming.raw["stream"] = serde_json::Value::Bool(false);
        if let Some(fields) = incoming.raw.as_object_mut() {
            fields.remove("stream_options");
        }
    }
    let tenant = plan.tenant.clone();
    let response = answer(state, caller, headers, incoming, plan).await?;
    if !guard_output {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "upstream_failed", e.to_string()))?;
    let mut json: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(json) if parts.status.is_success() => json,
        _ => return Ok(Response::from_parts(parts, Body::from(bytes))),
    };
    let pointer = if json["object"] == "chat.completion" { "/choices/0/message/content" } else { "/choices/0/text" };
    let text = json.pointer(pointer).and_then(|t| t.as_str()).unwrap_or_default().to_string();
    let checked = match guardrails.embeds() {
        true => tokio::task::block_in_place(|| guardrails.check(Stage::Output, &text, &estimated_tokens)),
        false => guardrails.check(Stage::Output, &text, &estimated_tokens),
    };
    record_verdicts(state, caller, &tenant, &deployment, &checked.verdicts).await;
    let (text, filtered) = match &checked.blocked {
        Some(_) => (String::new(), true),
        None => (checked.text, false),
    };
    if let Some(slot) = json.pointer_mut(pointer) {
        *slot = serde_json::Value::String(text);
    }
    if filtered {
        json["choices"][0]["finish_reason"] = "content_filter".into();
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    if !wants_stream {
        return Ok(Response::from_parts(parts, Body::from(json.to_string())));
    }
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    Ok(Response::from_parts(parts, Body::from(whole_as_stream(&json, include_usage))))
}

/// A whole answer as the server-sent events a stream of it would have been.
fn whole_as_stream(json: &serde_json::Value, include_usage: bool) -> String {
    let kind = if json["object"] == "chat.completion" { Kind::Chat } else { Kind::Completion };
    let answer = Answer {
        id: json["id"].as_str().unwrap_or_default().to_string(),
        kind,
        model: json["model"].as_str().unwrap_or_default().to_string(),
        created: json["created"].as_i64().unwrap_or_default(),
    };
    let choice = &json["choices"][0];
    let text = choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap_or_default();
    let mut out = String::from_utf8_lossy(&data(&answer.chunk(Some(text), None::<&str>, true))).into_owned();
    out.push_str(&String::from_utf8_lossy(&data(&answer.chunk(None, choice["finish_reason"].as_str(), false))));
    if include_usage {
        let usage = Usage {
            prompt_tokens: json["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
            completion_tokens: json["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
        };
        out.push_str(&String::from_utf8_lossy(&data(&answer.usage_chunk(&usage))));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

/// Starts the shadows, then tries the primary and the fallbacks in order.
async fn answer(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    incoming: Incoming,
    plan: Plan,
) -> Result<Response, ApiError> {
    let incoming = Arc::new(incoming);
    for shadow in plan.shadows {
        let (state, caller, headers, incoming) = (state.clone(), caller.clone(), headers.clone(), incoming.clone());
        tokio::spawn(async move {
            if let Err(error) = attempt(&state, &caller, &headers, &incoming, &shadow, true, None).await {
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
        match attempt(state, caller, headers, &incoming, &variant, false, settle).await {
            Ok(response) => return Ok(response),
            Err(error) if retryable(&error) => {
                tracing::warn!(variant = %variant.label(), error = %error.message, "a variant failed; trying the next");
                last = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    Err(last
        .unwrap_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", "no variant answered")))
}

/// One variant's answer. A shadow answers whole (never streamed) and its answer is dropped.
async fn attempt(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    incoming: &Incoming,
    variant: &VariantSpec,
    shadow: bool,
    settle: Option<Settlement>,
) -> Result<Response, ApiError> {
    let kind = incoming.call.kind();
    let answer = Answer::new(kind, &incoming.deployment);
    let label = if kind == Kind::Chat { "chat" } else { "completion" };
    let mut meter = meter(state, caller, headers, &incoming.deployment, &answer.id, label);
    meter.shadow = shadow;
    meter.settle = settle;
    meter.keep_text = incoming.keep_text;
    if let Some(upstream) = &variant.upstream {
        check_residency(state, caller, &incoming.deployment, &upstream.jurisdiction, false).await?;
        meter.record.variant = variant.label();
        meter.done = false;
        let path = if kind == Kind::Chat { "/chat/completions" } else { "/completions" };
        return forward(state, upstream, path, incoming, meter, shadow).await;
    }
    let tenant = tenant_key(caller)?;
    let model = load_variant(state, &tenant, variant).await?;
    check_residency(state, caller, &incoming.deployment, &model.jurisdiction, true).await?;
    arm(state, &mut meter, &model);
    let prompt = match &incoming.call {
        Call::Completion(prompt) => prompt.clone(),
        Call::Chat(messages) => {
            let template =
                generator(&model, &incoming.deployment)?.chat_template.as_deref().unwrap_or(DEFAULT_CHAT_TEMPLATE);
            render_chat(template, messages).await?
        }
    };
    meter.texts(Some(&prompt), None);
    let mut sampling = incoming.sampling.clone();
    if shadow {
        sampling.stream = false;
    }
    generate(model, &prompt, &sampling, answer, meter).await
}

/// Relays an upstream's event stream event by event, metering as it goes: each content chunk
/// counts a token until the usage chunk gives the exact figures, which are passed on only if the
/// client asked for them. The meter records when the stream ends, or `cancelled` if the client
/// leaves first.
fn relay(
    upstream: impl futures::Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
    meter: Meter,
    include_usage: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let state = (Box::pin(upstream), meter, String::new(), false);
    futures::stream::unfold(state, move |(mut upstream, mut meter, mut pending, mut ended)| async move {
        loop {
            if let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let data = event.trim().strip_prefix("data:").map(str::trim).unwrap_or_default();
                if data == "[DONE]" {
                    finish_relay(&mut meter);
                } else if let Ok(chunk) = serde_json::from_str::<serde_json::Value>(data) {
                    if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
                        meter.record.prompt_tokens = usage["prompt_tokens"].as_i64().unwrap_or(0);
                        meter.record.completion_tokens = usage["completion_tokens"].as_i64().unwrap_or(0);
                        if !include_usage && chunk["choices"].as_array().is_some_and(|c| c.is_empty()) {
                            continue;
                        }
                    } else {
                        let choice = &chunk["choices"][0];
                        let text = choice["delta"]["content"].as_str().or(choice["text"].as_str()).unwrap_or_default();
                        if !text.is_empty() {
                            meter.record.completion_tokens += 1;
                        }
                    }
                }
                return Some((Ok(Bytes::from(event)), (upstream, meter, pending, ended)));
            }
            if ended {
                finish_relay(&mut meter);
                if pending.is_empty() {
                    return None;
                }
                let rest = std::mem::take(&mut pending);
                return Some((Ok(Bytes::from(rest)), (upstream, meter, pending, ended)));
            }
            match upstream.next().await {
                Some(Ok(bytes)) => pending.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Err(error)) => {
                    meter.fail("upstream_error");
                    return Some((Err(std::io::Error::other(error)), (upstream, meter, pending, true)));
                }
                None => ended = true,
            }
        }
    })
}

fn finish_relay(meter: &mut Meter) {
    if meter.done {
        return;
    }
    let elapsed = meter.started.elapsed().as_secs_f64() * 1000.0;
    let usage = Usage {
        prompt_tokens: meter.record.prompt_tokens.max(0) as usize,
        completion_tokens: meter.record.completion_tokens.max(0) as usize,
    };
    meter.finish(None, &usage, &factory_engine::Timings { queue_ms: 0.0, first_token_ms: elapsed, decode_ms: 0.0 }, 1);
}

/// Sends the client's request to an OpenAI-compatible upstream, under the variant's timeout
/// (to the first byte when streaming). Its 4xx answers are the client's to see; anything else
/// that fails is a reason to try the next variant.
async fn forward(
    state: &AppState,
    upstream: &UpstreamSpec,
    path: &str,
    incoming: &Incoming,
    mut meter: Meter,
    shadow: bool,
) -> Result<Response, ApiError> {
    let mut body = incoming.raw.clone();
    body["model"] = serde_json::Value::String(upstream.model.clone());
    if shadow || !incoming.sampling.stream {
        body["stream"] = serde_json::Value::Bool(false);
        if let Some(fields) = body.as_object_mut() {
            fields.remove("stream_options");
        }
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    if stream {
        // Usage arrives in a last chunk only when asked for; it is metered, and passed on only
        // if the client asked too.
        body["stream_options"] = serde_json::json!({ "include_usage": true });
    }
    // The allowlist and the tenant's grants are checked again here: configuration changes, and
    // the deployment was checked against the one in force when it was written.
    let url = format!("{}{path}", upstream.url.trim_end_matches('/'));
    let Some(target) = crate::egress::allowed_url(&state.config.serving.upstreams, &url) else {
        meter.fail("upstream_not_allowed");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "upstream_not_allowed",
            format!("{} is not among the upstreams this installation allows (serving.upstreams)", upstream.url),
        ));
    };
    let mut request = state.engines.upstream.post(target).json(&body);
    if let Some(name) = upstream.api_key_env.as_deref() {
        let granted = name.starts_with(crate::serving::UPSTREAM_KEY_PREFIX)
            && crate::egress::secret_granted(&state.config.secrets, &meter.record.tenant, name);
        if !granted {
            meter.fail("secret_not_granted");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "secret_not_granted",
                format!("upstream.api_key_env: {name} is not granted to this tenant ([secrets])"),
            ));
        }
        if let Ok(key) = std::env::var(name) {
            request = request.bearer_auth(key);
        }
    }
    let budget = std::time::Duration::from_millis(upstream.timeout_ms);
    let unavailable = |message: String| ApiError::new(StatusCode::BAD_GATEWAY, "upstream_failed", message);
    let response = match tokio::time::timeout(budget, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            meter.fail("upstream_error");
            return Err(unavailable(format!("{}: {error}", upstream.url)));
        }
        Err(_) => {
            meter.fail("upstream_timeout");
            return Err(unavailable(format!("{} did not answer within {} ms", upstream.url, upstream.timeout_ms)));
        }
    };
    let status = response.status();
    let label = HeaderValue::from_str(&meter.record.variant).unwrap_or(HeaderValue::from_static("-"));
    if status.is_success() && stream {
        let headers = [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ];
        let relayed = relay(response.bytes_stream(), meter, incoming.sampling.include_usage());
        let mut out = (headers, Body::from_stream(relayed)).into_response();
        out.headers_mut().insert(VARIANT_HEADER, label);
        return Ok(out);
    }
    let remaining = budget.saturating_sub(meter.started.elapsed());
    let text = match tokio::time::timeout(remaining, response.text()).await {
        Ok(Ok(text)) => text,
        _ => {
            meter.fail("upstream_timeout");
            return Err(unavailable(format!("{} did not finish its answer in time", upstream.url)));
        }
    };
    if !status.is_success() {
        // A request the upstream finds malformed is the client's to see; a refused key or a
        // rate limit says the upstream cannot serve now, which the next variant may.
        if status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 429) {
            meter.fail("refused");
            let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_REQUEST);
            return Ok((status, [(header::CONTENT_TYPE, "application/json")], text).into_response());
        }
        meter.fail("upstream_error");
        return Err(unavailable(format!("{} answered {status}", upstream.url)));
    }
    let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        meter.fail("upstream_error");
        unavailable(format!("{} answered with malformed JSON: {e}", upstream.url))
    })?;
    json["model"] = serde_json::Value::String(incoming.deployment.clone());
    // The id clients report feedback against is the one the inference log keeps.
    json["id"] = serde_json::Value::String(meter.record.id.clone());
    let usage = Usage {
        prompt_tokens: json["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
        completion_tokens: json["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
    };
    let reason = match json["choices"][0]["finish_reason"].as_str() {
        Some("length") => Some(FinishReason::Length),
        Some(_) => Some(FinishReason::Stop),
        None => None,
    };
    let elapsed = meter.started.elapsed().as_secs_f64() * 1000.0;
    meter.finish(
        reason,
        &usage,
        &factory_engine::Timings { queue_ms: 0.0, first_token_ms: elapsed, decode_ms: 0.0 },
        1,
    );
    let mut out = Json(json).into_response();
    out.headers_mut().insert(VARIANT_HEADER, label);
    Ok(out)
}

/// Renders the messages with the model's chat template (Jinja, as Hugging Face writes them),
/// sandboxed and on the blocking pool: the template is the importer's code.
pub async fn render_chat(template: &str, messages: &[ChatMessage]) -> Result<String, ApiError> {
    let (template, messages) = (template.to_string(), messages.to_vec());
    let text_bytes = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
    tokio::task::spawn_blocking(move || {
        crate::chat_template::render(&template, &messages, text_bytes, factory_tokenizer::END_OF_TEXT)
    })
    .await
    .map_err(|e| ApiError::internal(format!("rendering the chat template: {e}")))?
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_chat_template", e.0))
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: OneOrMany,
    /// `float` (default) or `base64` (little-endian f32, what the official SDKs ask for).
    pub encoding_format: Option<String>,
}

/// Inputs one embedding request may carry.
const MAX_EMBEDDING_INPUTS: usize = 256;

pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let inputs = body.input.into_vec();
    if inputs.is_empty() || inputs.len() > MAX_EMBEDDING_INPUTS {
        return Err(invalid_param("input", &format!("give 1 to {MAX_EMBEDDING_INPUTS} inputs")));
    }
    if let Some(index) = inputs.iter().position(|text| text.is_empty()) {
        return Err(invalid_param("input", &format!("input[{index}] is empty")));
    }
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(invalid_param("encoding_format", &format!("{other:?} is not float or base64"))),
    };
    let plan = plan(&state, &caller, &body.model, &headers).await?;
    if plan.primary.model.is_none() {
        return Err(invalid_param("model", "embeddings are served from registered models only"));
    }
    let model = load_variant(&state, &tenant_key(&caller)?, &plan.primary).await?;
    check_residency(&state, &caller, &body.model, &model.jurisdiction, true).await?;
    let embedder = model.embedder.clone().ok_or_else(|| {
        invalid_param("model", &format!("{} generates text ({}); it has no embeddings", body.model, model.reference))
    })?;
    let id = format!("emb-{}", uuid::Uuid::new_v4().simple());
    let mut meter = meter(&state, &caller, &headers, &body.model, &id, "embedding");
    arm(&state, &mut meter, &model);
    meter.settle = plan.limits.clone().map(|(spec, scope, subject)| Settlement {
        limits: state.engines.limits.clone(),
        spec,
        scope,
        subject,
    });
    let Ok(permit) = state.engines.embedding_permits.clone().try_acquire_owned() else {
        meter.fail("overloaded");
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "engine_overloaded",
            "embeddings are at capacity; retry shortly",
        );
        error.retry_after_secs = Some(1);
        return Err(error);
    };
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        embedder.embed(&inputs)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| invalid_param("input", &e.to_string()))?;
    let computed = meter.started.elapsed().as_secs_f64() * 1000.0;
    let usage = Usage { prompt_tokens: tokens, completion_tokens: 0 };
    meter.finish(None, &usage, &factory_engine::Timings { queue_ms: 0.0, first_token_ms: computed, decode_ms: 0.0 }, 1);
    let data: Vec<serde_json::Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                serde_json::Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
            } else {
                serde_json::json!(vector)
            };
            serde_json::json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let mut response = Json(serde_json::json!({
        "object": "list", "data": data, "model": body.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&model.reference) {
        response.headers_mut().insert(VARIANT_HEADER, value);
    }
    Ok(response)
}
