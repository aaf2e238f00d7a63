//! The OpenAI-compatible API on the wire: `/v1/models`, `/v1/completions`,
//! `/v1/chat/completions` and `/v1/embeddings`, plain or streamed as server-sent events ending
//! in `data: [DONE]`. `model` names a deployment of the caller's tenant. Each handler decodes
//! the body, calls one use case of `service::inference` (which authorizes, routes, guards,
//! answers and meters) and encodes its typed answer: OpenAI's JSON shapes, or its event stream.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use factory_engine::Usage;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{ApiJson, Caller};
use crate::service::inference::local::finish_name;
use crate::service::inference::plan::tenant_of_key;
use crate::service::inference::tools::Tools;
use crate::service::inference::ChatMessage;
use crate::service::inference::{
    self, invalid_param, AnswerHead, Answered, Call, CallKind, Choice, Completion, Embedding, Inference, OneOrMany,
    Sampling, TokenEvent, TokenLogprobs,
};
use crate::state::AppState;

const EPISODE_HEADER: &str = "x-episode-id";
const VARIANT_HEADER: &str = "x-factory-model";

#[derive(Debug, Serialize)]
struct ModelObject {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: String,
}

pub async fn models(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let tenant = tenant_of_key(&caller)?;
    let data: Vec<ModelObject> = crate::service::deployments::list(&state, &caller, &tenant)
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

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

fn invalid_body(error: serde_json::Error) -> ApiError {
    ApiError::invalid(format!("request body: {error}"))
}

fn episode(headers: &HeaderMap) -> Option<String> {
    headers.get(EPISODE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string)
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
        return Err(invalid_param("prompt", "give one prompt (a string)").into());
    };
    let request = Inference {
        deployment: body.model,
        call: Call::Completion(prompt.clone()),
        sampling: body.sampling,
        raw,
        episode: episode(&headers),
        tools: None,
    };
    complete(&state, &caller, request).await
}

pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let body: ChatRequest = serde_json::from_value(raw.clone()).map_err(invalid_body)?;
    if body.messages.is_empty() {
        return Err(invalid_param("messages", "give at least one message").into());
    }
    for (index, message) in body.messages.iter().enumerate() {
        if !matches!(message.role.as_str(), "system" | "user" | "assistant" | "developer" | "tool") {
            let field = format!("messages[{index}].role");
            return Err(invalid_param(&field, &format!("unknown role {:?}", message.role)).into());
        }
    }
    let tools = Tools::from_request(&raw)?;
    let request = Inference {
        deployment: body.model,
        call: Call::Chat(body.messages),
        sampling: body.sampling,
        raw,
        episode: episode(&headers),
        tools,
    };
    complete(&state, &caller, request).await
}

/// Calls the use case and encodes its answer as the client asked: JSON, or events.
async fn complete(state: &AppState, caller: &Caller, request: Inference) -> Result<Response, ApiError> {
    let wants_stream = request.sampling.stream;
    let include_usage = request.sampling.include_usage();
    let response = match inference::complete(state, caller, request).await? {
        Answered::Whole(completion) if wants_stream => {
            // Generated whole (output guardrails needed all of it), sent as its stream would
            // have been.
            let events = whole_as_events(&completion, include_usage);
            let mut response = ([(header::CONTENT_TYPE, "text/event-stream")], events).into_response();
            with_variant(&mut response, &completion.variant);
            response
        }
        Answered::Whole(completion) => {
            let variant = completion.variant.clone();
            let mut response = Json(whole_json(completion)).into_response();
            with_variant(&mut response, &variant);
            response
        }
        Answered::Tokens { head, variant, choices, events } => {
            event_stream(&variant, Body::from_stream(token_events(head, choices, events, include_usage)))
        }
        Answered::Relayed { variant, events } => event_stream(&variant, Body::from_stream(events)),
        Answered::Refused { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    };
    Ok(response)
}

fn with_variant(response: &mut Response, variant: &str) {
    let value = HeaderValue::from_str(variant).unwrap_or(HeaderValue::from_static("-"));
    response.headers_mut().insert(VARIANT_HEADER, value);
}

fn event_stream(variant: &str, body: Body) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    let mut response = (headers, body).into_response();
    with_variant(&mut response, variant);
    response
}

fn object(kind: CallKind, chunk: bool) -> &'static str {
    match (kind, chunk) {
        (CallKind::Completion, _) => "text_completion",
        (CallKind::Chat, false) => "chat.completion",
        (CallKind::Chat, true) => "chat.completion.chunk",
    }
}

fn usage_json(usage: &Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": usage.cached_tokens },
    })
}

/// A whole answer as OpenAI's `text_completion` or `chat.completion`. An upstream's own JSON is
/// passed on (with our id and model), with the text an output guardrail rewrote.
fn whole_json(completion: Completion) -> serde_json::Value {
    let Completion { head, choices, usage, upstream_body, rewritten, .. } = completion;
    if let Some(mut json) = upstream_body {
        if rewritten {
            for (index, choice) in choices.into_iter().enumerate() {
                let pointer = match head.kind {
                    CallKind::Chat => format!("/choices/{index}/message/content"),
                    CallKind::Completion => format!("/choices/{index}/text"),
                };
                if let Some(slot) = json.pointer_mut(&pointer) {
                    *slot = serde_json::Value::String(choice.text);
                }
                if choice.finish_reason.as_deref() == Some("content_filter") {
                    json["choices"][index]["finish_reason"] = "content_filter".into();
                }
            }
        }
        return json;
    }
    let choices: Vec<serde_json::Value> = choices
        .into_iter()
        .enumerate()
        .map(|(index, Choice { text, finish_reason, logprobs, tool_calls })| {
            let logprobs = logprobs_json(head.kind, logprobs.as_deref(), 0);
            match head.kind {
                CallKind::Completion => serde_json::json!({
                    "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason,
                }),
                CallKind::Chat => {
                    // OpenAI's shape: content null beside tool calls and no empty list without them.
                    let mut message = serde_json::json!({ "role": "assistant", "content": text });
                    if !tool_calls.is_empty() {
                        if text.is_empty() {
                            message["content"] = serde_json::Value::Null;
                        }
                        message["tool_calls"] = serde_json::json!(tool_calls);
                    }
                    serde_json::json!({
                        "index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason,
                    })
                }
            }
        })
        .collect();
    serde_json::json!({
        "id": head.id, "object": object(head.kind, false), "created": head.created, "model": head.model,
        "choices": choices, "usage": usage_json(&usage),
    })
}

/// Log-probabilities in the shape of the call's API: chat's `content` entries (each token with
/// its UTF-8 bytes and its alternatives), or the completions API's parallel lists (tokens, their
/// log-probabilities, alternatives by token, and each token's offset in the text from `offset`).
/// `null` when the request did not ask.
fn logprobs_json(kind: CallKind, entries: Option<&[TokenLogprobs]>, offset: usize) -> serde_json::Value {
    let Some(entries) = entries else { return serde_json::Value::Null };
    let described = |token: &str, logprob: f32| serde_json::json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() });
    match kind {
        CallKind::Chat => {
            let content: Vec<serde_json::Value> = entries
                .iter()
                .map(|entry| {
                    let mut described_entry = described(&entry.token, entry.logprob);
                    let top: Vec<serde_json::Value> =
                        entry.top.iter().map(|(token, logprob)| described(token, *logprob)).collect();
                    described_entry["top_logprobs"] = top.into();
                    described_entry
                })
                .collect();
            serde_json::json!({ "content": content })
        }
        CallKind::Completion => {
            let mut offsets = Vec::with_capacity(entries.len());
            let mut at = offset;
            for entry in entries {
                offsets.push(at);
                at += entry.token.len();
            }
            let top: Vec<serde_json::Map<String, serde_json::Value>> = entries
                .iter()
                .map(|entry| entry.top.iter().map(|(token, logprob)| (token.clone(), (*logprob).into())).collect())
                .collect();
            serde_json::json!({
                "tokens": entries.iter().map(|entry| entry.token.as_str()).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|entry| entry.logprob).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": offsets,
            })
        }
    }
}

/// One event of a streamed answer: a piece of text (with its tokens' log-probabilities when
/// asked), or the end with its finish reason.
fn chunk(
    head: &AnswerHead,
    index: usize,
    text: Option<&str>,
    reason: Option<&str>,
    first: bool,
    logprobs: serde_json::Value,
) -> serde_json::Value {
    let choice = match head.kind {
        CallKind::Completion => serde_json::json!({
            "index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason,
        }),
        CallKind::Chat => {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(text) = text {
                delta.insert("content".into(), text.into());
            }
            serde_json::json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason })
        }
    };
    serde_json::json!({
        "id": head.id, "object": object(head.kind, true), "created": head.created, "model": head.model,
        "choices": [choice],
    })
}

/// A streamed piece of a tool call: its start (id and name, empty arguments) or more arguments.
fn tool_call_chunk(head: &AnswerHead, index: usize, call: serde_json::Value, first: bool) -> serde_json::Value {
    let mut delta = serde_json::json!({ "tool_calls": [call] });
    if first {
        delta["role"] = "assistant".into();
    }
    serde_json::json!({
        "id": head.id, "object": object(head.kind, true), "created": head.created, "model": head.model,
        "choices": [{ "index": index, "delta": delta, "logprobs": null, "finish_reason": null }],
    })
}

fn usage_chunk(head: &AnswerHead, usage: &Usage) -> serde_json::Value {
    serde_json::json!({
        "id": head.id, "object": object(head.kind, true), "created": head.created, "model": head.model,
        "choices": [], "usage": usage_json(usage),
    })
}

fn data(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// A whole answer as the events a stream of it would have been.
fn whole_as_events(completion: &Completion, include_usage: bool) -> Bytes {
    let head = &completion.head;
    let mut out = Vec::new();
    for (index, choice) in completion.choices.iter().enumerate() {
        let logprobs = logprobs_json(head.kind, choice.logprobs.as_deref(), 0);
        out.extend_from_slice(&data(&chunk(head, index, Some(&choice.text), None, true, logprobs)));
        for (call_index, call) in choice.tool_calls.iter().enumerate() {
            let mut call = serde_json::json!(call);
            call["index"] = call_index.into();
            out.extend_from_slice(&data(&tool_call_chunk(head, index, call, false)));
        }
        let last = chunk(head, index, None, choice.finish_reason.as_deref(), false, serde_json::Value::Null);
        out.extend_from_slice(&data(&last));
    }
    if include_usage {
        out.extend_from_slice(&data(&usage_chunk(head, &completion.usage)));
    }
    out.extend_from_slice(DONE);
    Bytes::from(out)
}

/// Where each choice of a stream stands.
#[derive(Clone, Copy)]
struct ChoiceStream {
    /// No chunk of this choice was sent yet (its first carries the role).
    first: bool,
    /// The text's length so far: where the next token's offset starts.
    offset: usize,
}

/// A local engine's token events (each with its choice's index) as server-sent events; the
/// usage (the prompt once, every choice's tokens) and `[DONE]` follow the last choice's end.
/// Dropping the stream (the client hung up) drops the engine's receivers, which the engine
/// notices at its next step.
fn token_events(
    head: AnswerHead,
    choices: usize,
    events: BoxStream<'static, (usize, TokenEvent)>,
    include_usage: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let streams = vec![ChoiceStream { first: true, offset: 0 }; choices];
    // (events, head, each choice's state, choices not yet ended, the usage so far, ended)
    let state = (events, head, streams, choices, Usage::default(), false);
    futures::stream::unfold(state, move |(mut events, head, mut streams, mut left, mut usage, done)| async move {
        if done {
            return None;
        }
        let (index, event) = events.next().await?;
        let Some(stream) = streams.get_mut(index) else {
            return Some((Ok(Bytes::new()), (events, head, streams, left, usage, false)));
        };
        let first = stream.first;
        let mut done = false;
        let bytes = match event {
            TokenEvent::Delta { text, logprob: None } if text.is_empty() && !first => Bytes::new(),
            TokenEvent::Delta { text, logprob } => {
                let logprobs = logprobs_json(head.kind, logprob.as_ref().map(std::slice::from_ref), stream.offset);
                stream.offset += text.len();
                stream.first = false;
                data(&chunk(&head, index, Some(&text), None, first, logprobs))
            }
            TokenEvent::ToolCallStarted { index: call, id, name } => {
                let call = serde_json::json!({
                    "index": call, "id": id, "type": "function", "function": { "name": name, "arguments": "" },
                });
                stream.first = false;
                data(&tool_call_chunk(&head, index, call, first))
            }
            TokenEvent::ToolArguments { index: call, fragment } => {
                let call = serde_json::json!({ "index": call, "function": { "arguments": fragment } });
                stream.first = false;
                data(&tool_call_chunk(&head, index, call, first))
            }
            TokenEvent::Done { reason, usage: choice_usage, called_tools } => {
                let reason = finish_name(reason, called_tools);
                stream.first = false;
                let end = chunk(&head, index, None, Some(reason), first, serde_json::Value::Null);
                let mut out = data(&end).to_vec();
                usage.prompt_tokens = choice_usage.prompt_tokens;
                usage.cached_tokens = choice_usage.cached_tokens;
                usage.completion_tokens += choice_usage.completion_tokens;
                left = left.saturating_sub(1);
                if left == 0 {
                    if include_usage {
                        out.extend_from_slice(&data(&usage_chunk(&head, &usage)));
                    }
                    out.extend_from_slice(DONE);
                    done = true;
                }
                Bytes::from(out)
            }
            TokenEvent::Failed(message) => {
                let error = serde_json::json!({ "error": { "message": message, "type": "server_error", "code": "generation_failed" } });
                let mut out = data(&error).to_vec();
                out.extend_from_slice(DONE);
                done = true;
                Bytes::from(out)
            }
            TokenEvent::Vanished => {
                done = true;
                Bytes::from_static(DONE)
            }
        };
        Some((Ok(bytes), (events, head, streams, left, usage, done)))
    })
    .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())))
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: OneOrMany,
    /// `float` (default) or `base64` (little-endian f32, what the official SDKs ask for).
    pub encoding_format: Option<String>,
}

pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let inputs = body.input.into_vec();
    // The inputs are checked first, then the encoding: a request wrong in both names `input`.
    inference::check_embedding_inputs(&inputs)?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid_param("encoding_format", &format!("{other:?} is not float or base64")).into())
        }
    };
    let request = Embedding { deployment: body.model.clone(), inputs, episode: episode(&headers) };
    let embedded = inference::embed(&state, &caller, request).await?;
    let data: Vec<serde_json::Value> = embedded
        .vectors
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
    let tokens = embedded.prompt_tokens;
    let mut response = Json(serde_json::json!({
        "object": "list", "data": data, "model": body.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&embedded.variant) {
        response.headers_mut().insert(VARIANT_HEADER, value);
    }
    Ok(response)
}
